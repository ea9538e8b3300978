//! TLS, black-box: the serving certificate follows its files without a restart, and a
//! client certificate is not refused at the handshake.

mod support;

use support::server::TestServer;

/// The serving certificate is reloaded when its files change: new connections get the
/// new one, with no restart.
#[tokio::test]
async fn the_serving_certificate_is_reloaded_when_its_files_change() {
    let srv = TestServer::start(&[]).await;
    let rotated = support::pki::Ca::new("rotated-serving-ca");
    let trusts_new = support::client::Client::new(srv.addr, &rotated.pem(), None);
    assert!(srv.client(None).tls_session_ok().await);
    assert!(!trusts_new.tls_session_ok().await);

    let pem = rotated.server();
    std::fs::write(srv.dir.path().join("tls.key"), &pem.key).unwrap();
    std::fs::write(srv.dir.path().join("tls.crt"), &pem.cert).unwrap();
    support::eventually("the rotated serving certificate", || {
        let client = trusts_new.clone();
        async move { client.tls_session_ok().await }
    })
    .await;
    assert!(
        !srv.client(None).tls_session_ok().await,
        "the old certificate is no longer served"
    );
}

/// Client certificates are judged per request, not during the handshake (src/tls.rs): a
/// certificate from a CA the server knows nothing of still gets a session the server
/// answers on, and a request that relies on it alone is unauthenticated.
#[tokio::test]
async fn a_client_certificate_is_not_refused_at_the_handshake() {
    let srv = TestServer::start(&[]).await;
    let stranger = support::pki::Ca::new("unknown-client-ca").client("mallory", &[]);
    let client = srv.client(None).with_cert(stranger);
    assert!(client.tls_session_ok().await);
    assert!(client.clone().http2().tls_session_ok().await);
    let (code, _) = client.get("/apis/audit.k8s.io/v1alpha1/events").await;
    assert_eq!(code, http::StatusCode::UNAUTHORIZED);
}
