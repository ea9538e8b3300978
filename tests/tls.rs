//! TLS, black-box: the serving certificate follows its files without a restart.

mod support;

use support::server::TestServer;

/// The serving certificate is reloaded when its files change: new connections get the
/// new one, with no restart.
#[tokio::test]
async fn the_serving_certificate_is_reloaded_when_its_files_change() {
    let srv = TestServer::start(&[]).await;
    let rotated = support::pki::Ca::new("rotated-serving-ca");
    let trusts_new = support::client::Client::new(srv.addr, &rotated.pem(), None);
    assert!(srv.client(None).handshake_ok().await);
    assert!(!trusts_new.handshake_ok().await);

    let pem = rotated.server();
    std::fs::write(srv.dir.path().join("tls.key"), &pem.key).unwrap();
    std::fs::write(srv.dir.path().join("tls.crt"), &pem.cert).unwrap();
    support::eventually("the rotated serving certificate", || {
        let client = trusts_new.clone();
        async move { client.handshake_ok().await }
    })
    .await;
    assert!(
        !srv.client(None).handshake_ok().await,
        "the old certificate is no longer served"
    );
}
