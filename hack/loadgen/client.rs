//! HTTPS clients of the server under test: the client PKI for mTLS pushers, TLS
//! configurations, HTTP/1.1 and HTTP/2 connections, and the request builder.
//!
//! Every connection goes through `tls_stream`, which refuses any address that is not a
//! loopback address: the load generator only ever talks to the server it started.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context as _, bail, ensure};
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The HTTP/2 settings a watcher's connection advertises: the largest frame it takes,
/// and its receive windows. They decide how the server must send (frames of 16 KiB cost
/// it far more than frames of 1 MiB), and the server has to serve every kind of client,
/// so the load generator offers the two common ones (`--h2-preset`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct H2Settings {
    pub max_frame: u32,
    pub stream_window: u32,
    pub connection_window: u32,
}

impl H2Settings {
    /// HTTP/2's own defaults (RFC 9113 §6.5.2), what a client that sets nothing
    /// advertises: 16 KiB frames, 65,535-byte windows (the smoke run's, for the most flow
    /// control; a window this small caps each stream at a window per round trip, which
    /// the client sets, not the server).
    pub const PROTOCOL_DEFAULTS: H2Settings = H2Settings {
        max_frame: 16 * 1024,
        stream_window: 65_535,
        connection_window: 65_535,
    };
    /// Go transports before 1.24 (client-go's, and most clients that raise their windows
    /// but not their frame size): 16 KiB frames, Go's 4 MiB stream window and 1 GiB
    /// connection window.
    pub const GO_BEFORE_1_24: H2Settings = H2Settings {
        max_frame: 16 * 1024,
        stream_window: 4 << 20,
        connection_window: 1 << 30,
    };
    /// Go 1.24 and later (kube-aggregator among them): 1 MiB frames, a 4 MiB stream
    /// window, and Go's 1 GiB connection window.
    pub const GO_1_24: H2Settings = H2Settings {
        max_frame: 1 << 20,
        stream_window: 4 << 20,
        connection_window: 1 << 30,
    };

    /// "16 KiB frames, windows 64 KiB / 64 KiB".
    pub fn describe(&self) -> String {
        format!(
            "{} frames, windows {} per stream / {} per connection",
            size(self.max_frame),
            size(self.stream_window),
            size(self.connection_window)
        )
    }
}

/// 16384 → "16 KiB", 65535 → "64 KiB - 1".
fn size(n: u32) -> String {
    let n = u64::from(n);
    for (unit, name) in [(1u64 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")] {
        if n >= unit && n % unit == 0 {
            return format!("{} {name}", n / unit);
        }
        if n + 1 >= unit && (n + 1) % unit == 0 {
            return format!("{} {name} - 1", (n + 1) / unit);
        }
    }
    format!("{n} B")
}

pub type H1 = hyper::client::conn::http1::SendRequest<Full<Bytes>>;
pub type H2 = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

/// A CA and one client certificate per pusher (CN `loadgen-apiserver-N`), as a
/// kube-apiserver's audit webhook presents it.
pub struct Pki {
    pub ca_pem: String,
    pub pushers: Vec<ClientCert>,
}

pub struct ClientCert {
    pub name: String,
    cert: CertificateDer<'static>,
    key: Vec<u8>,
}

impl Pki {
    pub fn generate(pushers: usize) -> anyhow::Result<Pki> {
        let ca_key = KeyPair::generate()?;
        let mut p = CertificateParams::new(vec![])?;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, "loadgen-ingest-ca");
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = p.self_signed(&ca_key)?;
        let issuer = Issuer::from_ca_cert_der(ca.der(), &ca_key)?;
        let pushers = (0..pushers)
            .map(|i| {
                let name = format!("loadgen-apiserver-{i}");
                let key = KeyPair::generate()?;
                let mut p = CertificateParams::new(vec![])?;
                p.distinguished_name.push(DnType::CommonName, &name);
                p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
                let cert = p.signed_by(&key, &issuer)?;
                Ok(ClientCert {
                    name,
                    cert: cert.der().clone(),
                    key: key.serialize_der(),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Pki {
            ca_pem: ca.pem(),
            pushers,
        })
    }
}

/// Accepts any server certificate. The load generator talks only to the server it started
/// itself, on a loopback address, whose freshly generated self-signed certificate it has
/// no other way to trust; `tls_stream` refuses any other address. Handshake signatures
/// are still checked, so the peer must hold the certificate's key. Never use this
/// elsewhere.
#[derive(Debug)]
struct AcceptAnyCertOnLoopback(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertOnLoopback {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS connector offering `alpn`, presenting `client_cert` if given, and the cipher
/// suites in Go's order (`crypto/tls`'s TLS 1.3 default on AES hardware: AES-128-GCM
/// first), because the server's real clients are Go: kube-apiserver's webhook, the
/// aggregator, client-go. The server takes the client's order, and rustls's own puts
/// AES-256-GCM first, about a tenth dearer per byte (`openssl speed` here: 4.0 against
/// 4.4 GB/s at 16 KiB blocks).
pub fn connector(alpn: &[u8], client_cert: Option<&ClientCert>) -> anyhow::Result<TlsConnector> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|s| go_preference(s.suite()));
    let provider = Arc::new(provider);
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertOnLoopback(provider)));
    let mut config = match client_cert {
        Some(c) => builder.with_client_auth_cert(
            vec![c.cert.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(c.key.clone())),
        )?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Go's TLS 1.3 preference (then rustls's order, for TLS 1.2).
fn go_preference(suite: rustls::CipherSuite) -> u8 {
    match suite {
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => 1,
        rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => 2,
        _ => 3,
    }
}

/// TCP + TLS to `addr`, which must be loopback; `recv_buffer` sets SO_RCVBUF.
async fn tls_stream(
    tls: &TlsConnector,
    addr: SocketAddr,
    recv_buffer: Option<u32>,
) -> anyhow::Result<TlsStream<TcpStream>> {
    ensure!(
        addr.ip().is_loopback(),
        "refusing to connect to {addr}: the load generator only talks to loopback"
    );
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size)?;
    }
    let tcp = socket
        .connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    tcp.set_nodelay(true)?;
    let stream = tls
        .connect(ServerName::from(addr.ip()), tcp)
        .await
        .context("TLS handshake")?;
    // The figures per byte are against AES-128-GCM: the cipher must be that one.
    let suite = stream.get_ref().1.negotiated_cipher_suite();
    ensure!(
        suite.map(|s| s.suite()) == Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256),
        "the server chose {suite:?}, not TLS13_AES_128_GCM_SHA256"
    );
    Ok(stream)
}

/// One HTTP/1.1 connection (the connector must offer `http/1.1`).
pub async fn connect_h1(
    tls: &TlsConnector,
    addr: SocketAddr,
    recv_buffer: Option<u32>,
) -> anyhow::Result<H1> {
    let stream = tls_stream(tls, addr, recv_buffer).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // Ends when the sender and the last body are dropped, or on an I/O error, which the
    // request or the body reading reports.
    tokio::spawn(conn);
    Ok(sender)
}

/// One HTTP/2 connection for many watches (the connector must offer `h2`), the way the
/// kube-apiserver aggregator multiplexes watches onto a few connections, advertising
/// `settings` (no adaptive window: the client's windows stay what it advertised).
pub async fn connect_h2(
    tls: &TlsConnector,
    addr: SocketAddr,
    settings: H2Settings,
) -> anyhow::Result<H2> {
    let stream = tls_stream(tls, addr, None).await?;
    if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
        bail!("the server did not agree to HTTP/2 (ALPN h2)");
    }
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(settings.stream_window)
        .initial_connection_window_size(settings.connection_window)
        .max_frame_size(settings.max_frame)
        .adaptive_window(false)
        .handshake(TokioIo::new(stream))
        .await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// A request to the server at `addr`: an absolute URI (HTTP/2 needs the authority; an
/// HTTP/1.1 server takes the absolute form too), a bearer token if given.
pub fn request(
    method: Method,
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    body: Bytes,
) -> anyhow::Result<Request<Full<Bytes>>> {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("https://{addr}{path}"));
    if let Some(t) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    if !body.is_empty() {
        req = req.header(http::header::CONTENT_TYPE, "application/json");
    }
    Ok(req.body(Full::new(body))?)
}
