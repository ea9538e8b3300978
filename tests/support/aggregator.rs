//! `FakeAggregator`: a fake kube-aggregator front proxy over TLS. It authenticates bearer
//! tokens from a table, replaces any `X-Remote-*` and `Authorization` headers with
//! `X-Remote-User`/`X-Remote-Group`, and forwards to the backend over TLS with the
//! front-proxy client certificate, streaming the answer back as it comes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, ServerName};
use tokio_rustls::TlsConnector;

use super::fake_apiserver::{Body, BoxError, TlsServer, certs, roots, status};
use super::pki::{Ca, Pem};

/// Connection-level headers a proxy must not pass on.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The fake aggregator; stops when dropped.
pub struct FakeAggregator {
    pub addr: SocketAddr,
    ca: Ca,
    _server: TlsServer,
}

struct Proxy {
    backend: SocketAddr,
    connector: TlsConnector,
    /// token → (user, groups)
    users: HashMap<String, (String, Vec<String>)>,
}

impl FakeAggregator {
    /// Proxy to `backend` (serving certificate signed by `backend_ca_pem`), presenting
    /// `front_proxy_client`. `users` are (token, user, groups); like kube-apiserver, the
    /// groups get `system:authenticated` added.
    pub async fn start(
        backend: SocketAddr,
        backend_ca_pem: &str,
        front_proxy_client: Pem,
        users: &[(&str, &str, &[&str])],
    ) -> FakeAggregator {
        let ca = Ca::new("fake-aggregator-ca");
        let users = users.iter().map(|(token, user, groups)| {
            let mut groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
            groups.push("system:authenticated".to_owned());
            (token.to_string(), (user.to_string(), groups))
        });
        let proxy = Arc::new(Proxy {
            backend,
            connector: connector(backend_ca_pem, &front_proxy_client),
            users: users.collect(),
        });
        let server =
            TlsServer::start(&ca.server(), None, move |req| proxy.clone().handle(req)).await;
        FakeAggregator {
            addr: server.addr,
            ca,
            _server: server,
        }
    }

    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

fn connector(ca_pem: &str, client: &Pem) -> TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = PrivateKeyDer::from_pem_slice(client.key.as_bytes()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(ca_pem))
        .with_client_auth_cert(certs(&client.cert), key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(config))
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

impl Proxy {
    async fn handle(self: Arc<Self>, mut req: Request<Incoming>) -> Response<Body> {
        let token = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let Some((user, groups)) = token.and_then(|t| self.users.get(t)) else {
            return status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
        };
        let headers = req.headers_mut();
        let forged: Vec<HeaderName> = headers
            .keys()
            .filter(|k| k.as_str().starts_with("x-remote-"))
            .cloned()
            .collect();
        for name in forged {
            headers.remove(name);
        }
        headers.remove(header::AUTHORIZATION);
        strip_hop_by_hop(headers);
        headers.insert("x-remote-user", HeaderValue::from_str(user).unwrap());
        for g in groups {
            headers.append("x-remote-group", HeaderValue::from_str(g).unwrap());
        }
        headers.insert(
            header::HOST,
            HeaderValue::from_str(&self.backend.to_string()).unwrap(),
        );
        *req.version_mut() = Version::HTTP_11;
        *req.uri_mut() = req
            .uri()
            .path_and_query()
            .unwrap()
            .as_str()
            .parse()
            .unwrap();
        match self.forward(req).await {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, body.map_err(BoxError::from).boxed_unsync())
            }
            Err(e) => status(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                &format!("error trying to reach service: {e}"),
            ),
        }
    }

    /// Send `req` on a fresh HTTP/1.1 connection; the answer's body streams as it arrives.
    async fn forward(&self, req: Request<Incoming>) -> Result<Response<Incoming>, BoxError> {
        let tcp = tokio::net::TcpStream::connect(self.backend).await?;
        let name = ServerName::IpAddress(self.backend.ip().into());
        let tls = self.connector.connect(name, tcp).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        Ok(sender.send_request(req).await?)
    }
}
