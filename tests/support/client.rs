//! A small HTTPS client on hyper + tokio-rustls: one connection per request, HTTP/1.1 or
//! HTTP/2 (ALPN), optional bearer token and client certificate. `WatchReader` reads a
//! watch stream line by line.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::TlsConnector;

use super::DEADLINE;
use super::pki::Pem;

#[derive(Clone)]
pub struct Client {
    addr: SocketAddr,
    ca_pem: String,
    token: Option<String>,
    client_cert: Option<Arc<Pem>>,
    http2: bool,
}

impl Client {
    pub fn new(addr: SocketAddr, ca_pem: &str, token: Option<&str>) -> Client {
        Client {
            addr,
            ca_pem: ca_pem.to_owned(),
            token: token.map(str::to_owned),
            client_cert: None,
            http2: false,
        }
    }

    pub fn http2(mut self) -> Self {
        self.http2 = true;
        self
    }

    pub fn with_cert(mut self, pem: Pem) -> Self {
        self.client_cert = Some(Arc::new(pem));
        self
    }

    fn connector(&self) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match &self.client_cert {
            Some(pem) => {
                let chain = CertificateDer::pem_slice_iter(pem.cert.as_bytes())
                    .map(|c| c.unwrap())
                    .collect();
                let key = PrivateKeyDer::from_pem_slice(pem.key.as_bytes()).unwrap();
                builder.with_client_auth_cert(chain, key).unwrap()
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![if self.http2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        TlsConnector::from(Arc::new(config))
    }

    /// Whether this client gets a TLS session the server answers on: this client trusts
    /// the server's certificate, and the server accepted the session, this client's
    /// certificate included. The client's side of a TLS 1.3 handshake completes before
    /// the server has judged the client's certificate (a refusal comes as an alert,
    /// afterwards), so a completed handshake alone shows only the first half: this sends
    /// a request on the session (`GET /livez`, open to anyone) and waits for the answer.
    pub async fn tls_session_ok(&self) -> bool {
        let session = async {
            let tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            let Ok(tls) = self.connector().connect(name, tcp).await else {
                return false;
            };
            let io = TokioIo::new(tls);
            let req = self.request(Method::GET, "/livez", &[], Bytes::new());
            if self.http2 {
                let Ok((mut sender, conn)) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await
                else {
                    return false;
                };
                tokio::spawn(conn);
                sender.send_request(req).await.is_ok()
            } else {
                let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(io).await else {
                    return false;
                };
                tokio::spawn(conn);
                sender.send_request(req).await.is_ok()
            }
        };
        tokio::time::timeout(DEADLINE, session)
            .await
            .expect("no answer and no refusal within the deadline")
    }

    /// A request with this client's token.
    pub fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Request<Full<Bytes>> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("https://localhost:{}{path}", self.addr.port()));
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(Full::new(body.into())).unwrap()
    }

    async fn tls(&self) -> TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let tls = self
            .connector()
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        TokioIo::new(tls)
    }

    /// A TLS connection with this client's ALPN and nothing sent on it yet: for tests
    /// that write raw bytes (a request head a byte at a time, a bare HTTP/2 preface).
    pub async fn raw_tls(&self) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        self.tls().await.into_inner()
    }

    /// One HTTP/2 connection for several requests, each stream's receive window
    /// `stream_window` bytes (a body nobody reads stops the stream after that much).
    pub async fn http2_connection(
        &self,
        stream_window: u32,
    ) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
        assert!(self.http2, "an HTTP/2 client");
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(stream_window)
            .handshake(self.tls().await)
            .await
            .unwrap();
        tokio::spawn(conn);
        sender
    }

    /// Send one request on a fresh connection.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> http::Response<Incoming> {
        let req = self.request(method, path, headers, body);
        let io = self.tls().await;
        if self.http2 {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .unwrap();
            tokio::spawn(conn);
            sender.send_request(req).await.unwrap()
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            sender.send_request(req).await.unwrap()
        }
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Bytes) {
        let resp = self.send(Method::GET, path, &[], Bytes::new()).await;
        let code = resp.status();
        (code, resp.into_body().collect().await.unwrap().to_bytes())
    }

    pub async fn get_json(&self, path: &str) -> (StatusCode, serde_json::Value) {
        self.get_json_with(path, &[]).await
    }

    /// GET with extra request headers, the body as JSON.
    pub async fn get_json_with(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, serde_json::Value) {
        let resp = self.send(Method::GET, path, headers, Bytes::new()).await;
        let code = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (
            code,
            serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body:?}")),
        )
    }

    /// POST an ingest body; the answer's code and Status.
    pub async fn push(
        &self,
        query: &str,
        body: impl Into<Bytes>,
    ) -> (StatusCode, serde_json::Value) {
        let resp = self
            .send(
                Method::POST,
                &format!("/ingest{query}"),
                &[("content-type", "application/json")],
                body,
            )
            .await;
        let code = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (
            code,
            serde_json::from_slice(&body)
                .unwrap_or_else(|e| panic!("ingest answer: {e}: {body:?}")),
        )
    }

    /// Open a watch; panics unless the answer is 200.
    pub async fn watch(&self, path: &str) -> WatchReader {
        self.watch_with(path, &[]).await
    }

    /// Open a watch as one more stream of the HTTP/2 connection `conn` (see
    /// `http2_connection`); panics unless the answer is 200.
    pub async fn watch_on(
        &self,
        conn: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
        path: &str,
    ) -> WatchReader {
        let resp = conn
            .send_request(self.request(Method::GET, path, &[], Bytes::new()))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "watch {path}");
        WatchReader {
            body: resp.into_body(),
            buf: BytesMut::new(),
        }
    }

    /// Open a watch with extra request headers (an `Accept` for Tables, say).
    pub async fn watch_with(&self, path: &str, headers: &[(&str, &str)]) -> WatchReader {
        let resp = self.send(Method::GET, path, headers, Bytes::new()).await;
        assert_eq!(resp.status(), StatusCode::OK, "watch {path}");
        assert_eq!(resp.headers()["content-type"], "application/json");
        WatchReader {
            body: resp.into_body(),
            buf: BytesMut::new(),
        }
    }
}

pub struct WatchReader {
    body: Incoming,
    buf: BytesMut,
}

impl WatchReader {
    /// The next line as JSON; `None` when the stream ended. Fails the test after `DEADLINE`.
    pub async fn next(&mut self) -> Option<serde_json::Value> {
        tokio::time::timeout(DEADLINE, self.next_line())
            .await
            .expect("no watch event within the deadline")
    }

    async fn next_line(&mut self) -> Option<serde_json::Value> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line = self.buf.split_to(i + 1);
                return Some(
                    serde_json::from_slice(&line)
                        .unwrap_or_else(|e| panic!("watch line is not JSON: {e}: {line:?}")),
                );
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => panic!("watch stream failed: {e}"),
                None => {
                    assert!(
                        self.buf.is_empty(),
                        "stream ended inside a line: {:?}",
                        self.buf
                    );
                    return None;
                }
            }
        }
    }

    /// The next `n` ADDED events (skipping bookmarks).
    pub async fn added(&mut self, n: usize) -> Vec<serde_json::Value> {
        let mut out = vec![];
        while out.len() < n {
            let ev = self.next().await.expect("stream ended early");
            if ev["type"] == "ADDED" {
                out.push(ev["object"].clone());
            }
        }
        out
    }
}
