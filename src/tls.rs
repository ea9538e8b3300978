//! TLS for the one HTTPS port: the rustls `ServerConfig` (HTTP/2 and HTTP/1.1 by ALPN), the
//! serving certificate (from files, reloaded when they change, or self-signed), and what a
//! connection's peer proved about itself (`Peer`), with the chain check callers use.
//!
//! Client certificates are optional and not judged during the handshake: the same port
//! serves bearer-token users, front-proxy requests and ingest pushes, each trusting a
//! different CA that may rotate at run time. The handshake only proves the client holds the
//! key of the certificate it sent; `ClientCa::verify` then checks the chain against the CA
//! that matters for the request. A certificate is never used without that check.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, TrustAnchor, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

/// How often certificate and CA files are checked for changes. Certificates rotate
/// on the scale of hours; a few seconds of delay costs nothing and a poll needs no
/// file-notification machinery that behaves differently on every volume type.
const CERT_RELOAD_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("self-signed certificate: {0}")]
    SelfSigned(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A client CA bundle that does not load.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error(transparent)]
    Read(#[from] crate::source::ReadError),
    #[error("{origin}: {source}")]
    Pem {
        origin: String,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{origin}: {source}")]
    Anchor {
        origin: String,
        #[source]
        source: webpki::Error,
    },
    #[error("{origin}: no CA certificate found")]
    Empty { origin: String },
}

fn file_err(path: &Path, reason: impl ToString) -> Error {
    Error::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Where the serving certificate comes from.
#[derive(Debug, Clone)]
pub enum CertSource {
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
    /// Generated at start for these host names and IPs; written to `cert_dir` if given
    /// (and reused from there if already present).
    SelfSigned {
        hosts: Vec<String>,
        cert_dir: Option<PathBuf>,
    },
}

/// What the TLS layer learned about a connection's peer.
#[derive(Debug, Clone)]
pub struct Peer {
    pub remote_addr: SocketAddr,
    /// The client certificate chain (leaf first), not yet verified against any CA.
    pub certs: Option<Arc<[CertificateDer<'static>]>>,
}

impl Peer {
    #[cfg(test)]
    pub(crate) fn for_tests() -> Self {
        Peer {
            remote_addr: SocketAddr::from(([127, 0, 0, 1], 1)),
            certs: None,
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Build the server config. A reload task for file certificates runs until `shutdown`.
pub fn server_config(
    source: &CertSource,
    shutdown: CancellationToken,
) -> Result<Arc<ServerConfig>, Error> {
    let provider = provider();
    let resolver = Arc::new(Resolver {
        current: RwLock::new(Arc::new(load_certified_key(source, &provider)?)),
    });
    if let CertSource::Files { cert, key } = source {
        let (resolver, cert, key, provider) = (
            resolver.clone(),
            cert.clone(),
            key.clone(),
            provider.clone(),
        );
        let files = vec![cert.clone(), key.clone()];
        spawn_file_watch(files, "serving certificate", shutdown, move || {
            let ck = certified_key_from_files(&cert, &key, &provider).map_err(|e| e.to_string())?;
            *resolver.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ck);
            Ok(())
        });
    }
    let verifier = Arc::new(AnyClientCert {
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn load_certified_key(
    source: &CertSource,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, Error> {
    match source {
        CertSource::Files { cert, key } => certified_key_from_files(cert, key, provider),
        CertSource::SelfSigned { hosts, cert_dir } => {
            let (cert_pem, key_pem) = self_signed(hosts, cert_dir.as_deref())?;
            let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Error::SelfSigned(rcgen::Error::PemError(e.to_string())))?;
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
                .map_err(|e| Error::SelfSigned(rcgen::Error::PemError(e.to_string())))?;
            Ok(CertifiedKey::from_der(certs, key, provider)?)
        }
    }
}

fn certified_key_from_files(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, Error> {
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_err(cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(cert, e))?;
    if certs.is_empty() {
        return Err(file_err(cert, "no certificate in file"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, e))?;
    CertifiedKey::from_der(certs, key_der, provider).map_err(|e| file_err(key, e))
}

/// A self-signed serving certificate, as PEM (certificate, key). With a `cert_dir`, reuse
/// `apiserver.crt`/`apiserver.key` from there or write fresh ones (k8s.io/apiserver's names).
fn self_signed(hosts: &[String], cert_dir: Option<&Path>) -> Result<(String, String), Error> {
    if let Some(dir) = cert_dir {
        let (crt, key) = (dir.join("apiserver.crt"), dir.join("apiserver.key"));
        if crt.exists() && key.exists() {
            let read = |p: &Path| match crate::source::read_text(p) {
                Ok((text, _)) => Ok(text),
                Err(e) => Err(file_err(p, e.source)),
            };
            return Ok((read(&crt)?, read(&key)?));
        }
        let generated = rcgen::generate_simple_self_signed(hosts.to_vec())?;
        let (cert_pem, key_pem) = (generated.cert.pem(), generated.signing_key.serialize_pem());
        std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
        std::fs::write(&crt, &cert_pem).map_err(|e| file_err(&crt, e))?;
        write_private(&key, &key_pem)?;
        return Ok((cert_pem, key_pem));
    }
    let generated = rcgen::generate_simple_self_signed(hosts.to_vec())?;
    Ok((generated.cert.pem(), generated.signing_key.serialize_pem()))
}

fn write_private(path: &Path, contents: &str) -> Result<(), Error> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(path).map_err(|e| file_err(path, e))?;
    f.write_all(contents.as_bytes())
        .map_err(|e| file_err(path, e))
}

/// Hands out the current serving certificate; swapped by the reload task.
#[derive(Debug)]
struct Resolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

fn modified(paths: &[PathBuf]) -> Option<Vec<SystemTime>> {
    paths
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

/// Poll `files` until `shutdown` and call `reload` when any of them changes (Secret
/// volumes swap files by symlink, which a modification time follows). A reload that fails,
/// say on a half-written pair, keeps what is in force and is retried at the next tick.
pub fn spawn_file_watch(
    files: Vec<PathBuf>,
    what: &'static str,
    shutdown: CancellationToken,
    mut reload: impl FnMut() -> Result<(), String> + Send + 'static,
) {
    tokio::spawn(async move {
        let mut seen = modified(&files);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(CERT_RELOAD_INTERVAL) => {}
            }
            let now = modified(&files);
            if now.is_none() || now == seen {
                continue;
            }
            match reload() {
                Ok(()) => {
                    seen = now;
                    tracing::info!(file = %files[0].display(), "reloaded {what}");
                }
                Err(e) => tracing::warn!(error = %e, "{what} changed but does not load yet"),
            }
        }
    });
}

/// Accepts any client certificate whose holder proves possession of the key; see the
/// module comment for why the chain is checked later, per request.
#[derive(Debug)]
struct AnyClientCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCert {
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A CA bundle that client certificates are checked against.
#[derive(Debug, Clone)]
pub struct ClientCa {
    anchors: Vec<TrustAnchor<'static>>,
    /// Recent answers by chain: a connection's requests (every push of an apiserver on
    /// its kept-alive connection) would each be a signature check otherwise, the largest
    /// cost of ingest after decoding. A reloaded CA is a new `ClientCa`, with none.
    verified: Arc<Mutex<HashMap<[u8; 32], Verified>>>,
}

/// When a chain was checked, and the answer.
type Verified = (std::time::Instant, Result<CertIdentity, String>);

/// How long an answer is reused: a certificate that expires is refused this much late
/// at most.
const VERIFIED_TTL: Duration = Duration::from_secs(10);
/// Answers kept at most; the cache starts over beyond (chains sent to fill it cost their
/// sender a handshake each).
const VERIFIED_MAX: usize = 4096;

/// The identity in a verified client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertIdentity {
    pub common_name: String,
    pub organizations: Vec<String>,
}

impl ClientCa {
    pub fn from_pem(pem: &[u8], origin: &str) -> Result<Self, CaError> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| CaError::Pem {
                origin: origin.to_owned(),
                source,
            })?;
        let anchors = certs
            .iter()
            .map(|c| webpki::anchor_from_trusted_cert(c).map(|a| a.to_owned()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| CaError::Anchor {
                origin: origin.to_owned(),
                source,
            })?;
        if anchors.is_empty() {
            return Err(CaError::Empty {
                origin: origin.to_owned(),
            });
        }
        Ok(ClientCa {
            anchors,
            verified: Arc::default(),
        })
    }

    pub fn load(path: &Path) -> Result<Self, CaError> {
        let pem = crate::source::read(path)?;
        Self::from_pem(&pem, &path.display().to_string())
    }

    /// Check the peer's chain against this CA for client authentication (an EKU, if the
    /// certificate has any, must allow clientAuth), then read its subject; the answer is
    /// reused for `VERIFIED_TTL`.
    pub fn verify(&self, chain: &[CertificateDer<'static>]) -> Result<CertIdentity, String> {
        let mut hash = Sha256::new();
        for cert in chain {
            hash.update((cert.len() as u64).to_be_bytes());
            hash.update(cert);
        }
        let key: [u8; 32] = hash.finalize().into();
        let now = std::time::Instant::now();
        let cached = {
            let cache = self.verified.lock().unwrap_or_else(|e| e.into_inner());
            cache
                .get(&key)
                .filter(|(at, _)| now.duration_since(*at) < VERIFIED_TTL)
                .map(|(_, answer)| answer.clone())
        };
        if let Some(answer) = cached {
            return answer;
        }
        let answer = self.verify_now(chain);
        let mut cache = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= VERIFIED_MAX {
            cache.clear();
        }
        cache.insert(key, (now, answer.clone()));
        answer
    }

    fn verify_now(&self, chain: &[CertificateDer<'static>]) -> Result<CertIdentity, String> {
        let (leaf, intermediates) = chain.split_first().ok_or("no client certificate")?;
        let cert = webpki::EndEntityCert::try_from(leaf).map_err(|e| e.to_string())?;
        cert.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &self.anchors,
            intermediates,
            UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| format!("client certificate not trusted: {e}"))?;
        subject_identity(leaf)
    }
}

/// The subject as Go's crypto/x509 reads it (`pkix.Name.FillFromRDNSequence`), which is
/// what kube-apiserver's x509 authenticator and requestheader check use: with several
/// CNs, the last one (each overwrites `CommonName`), skipping a value that is not a
/// string; every O, in order. A certificate with two CNs is one user to kube-apiserver
/// and must not be another one here.
fn subject_identity(der: &CertificateDer<'_>) -> Result<CertIdentity, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let subject = cert.subject();
    let common_name = subject
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .last()
        .unwrap_or_default()
        .to_owned();
    let organizations = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_owned))
        .collect();
    Ok(CertIdentity {
        common_name,
        organizations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

    fn ca() -> (rcgen::Certificate, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec![]).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, "test-ca");
        (p.self_signed(&key).unwrap(), key)
    }

    fn client(
        issuer: &(rcgen::Certificate, KeyPair),
        cn: &str,
        eku: Option<rcgen::ExtendedKeyUsagePurpose>,
    ) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec![]).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.distinguished_name
            .push(DnType::OrganizationName, "team-a");
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = eku.into_iter().collect();
        let issuer = rcgen::Issuer::from_ca_cert_der(issuer.0.der(), &issuer.1).unwrap();
        p.signed_by(&key, &issuer).unwrap().der().clone()
    }

    #[test]
    fn verifies_chain_usage_and_reads_subject() {
        let good = ca();
        let other = ca();
        let bundle = ClientCa::from_pem(good.0.pem().as_bytes(), "ca").unwrap();
        let id = bundle
            .verify(&[client(
                &good,
                "apiserver-1",
                Some(rcgen::ExtendedKeyUsagePurpose::ClientAuth),
            )])
            .unwrap();
        assert_eq!(id.common_name, "apiserver-1");
        assert_eq!(id.organizations, vec!["team-a"]);
        // No EKU at all: allowed, as Go's x509 does.
        assert!(bundle.verify(&[client(&good, "x", None)]).is_ok());
        // Wrong CA, or a server-only certificate: refused.
        assert!(bundle.verify(&[client(&other, "x", None)]).is_err());
        assert!(
            bundle
                .verify(&[client(
                    &good,
                    "x",
                    Some(rcgen::ExtendedKeyUsagePurpose::ServerAuth)
                )])
                .is_err()
        );
        assert!(bundle.verify(&[]).is_err());
    }

    /// Answers are reused per chain, good and bad alike, and a reloaded CA starts afresh.
    #[test]
    fn answers_are_cached_per_chain() {
        let (good, other) = (ca(), ca());
        let bundle = ClientCa::from_pem(good.0.pem().as_bytes(), "ca").unwrap();
        let (trusted, stranger) = (client(&good, "a", None), client(&other, "b", None));
        for _ in 0..3 {
            assert_eq!(
                bundle
                    .verify(std::slice::from_ref(&trusted))
                    .unwrap()
                    .common_name,
                "a"
            );
            assert!(bundle.verify(std::slice::from_ref(&stranger)).is_err());
        }
        assert_eq!(bundle.verified.lock().unwrap().len(), 2);
        // The same chain under another CA: that CA's own answer.
        let reloaded = ClientCa::from_pem(other.0.pem().as_bytes(), "ca").unwrap();
        assert!(reloaded.verify(std::slice::from_ref(&trusted)).is_err());
        assert_eq!(reloaded.verify(&[stranger]).unwrap().common_name, "b");
    }

    /// Go's `Subject.CommonName` is the last CN of the sequence: so is ours.
    #[test]
    fn the_last_common_name_counts_as_in_go() {
        let issuer = ca();
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec![]).unwrap();
        p.distinguished_name.push(DnType::CommonName, "first");
        // rcgen keeps one value per attribute type: the second CN under its OID.
        p.distinguished_name
            .push(DnType::CustomDnType(vec![2, 5, 4, 3]), "second");
        p.distinguished_name.push(DnType::OrganizationName, "o-1");
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let signer = rcgen::Issuer::from_ca_cert_der(issuer.0.der(), &issuer.1).unwrap();
        let der = p.signed_by(&key, &signer).unwrap().der().clone();
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(parsed.subject().iter_common_name().count(), 2, "two CNs");
        let id = subject_identity(&der).unwrap();
        assert_eq!(id.common_name, "second");
        assert_eq!(id.organizations, ["o-1"]);
    }

    #[test]
    fn self_signed_is_written_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = vec!["localhost".to_owned()];
        let first = self_signed(&hosts, Some(dir.path())).unwrap();
        let second = self_signed(&hosts, Some(dir.path())).unwrap();
        assert_eq!(first, second);
        assert!(ClientCa::from_pem(b"not pem", "x").is_err());
    }
}
