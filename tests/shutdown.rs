//! Graceful shutdown, black-box: `run` returns, the port is closed, and open watches
//! end cleanly after their last event.

mod support;

use support::fixtures::{event, event_list};
use support::server::{ADMIN_TOKEN, ALICE_TOKEN, PUSH_TOKEN, TestServer};

#[tokio::test]
async fn shutdown_ends_every_watch_and_returns() {
    let srv = TestServer::start(&[]).await;
    let mut admin = srv
        .client(Some(ADMIN_TOKEN))
        .watch("/apis/audit.k8s.io/v1alpha1/events?watch=1")
        .await;
    let mut alice = srv
        .client(Some(ALICE_TOKEN))
        .http2()
        .watch("/apis/audit.k8s.io/v1alpha1/namespaces/team-a/namespacedevents?watch=1")
        .await;
    let (code, _) = srv
        .client(Some(PUSH_TOKEN))
        .push(
            "",
            event_list("audit.k8s.io/v1", &[event("s-1", Some("team-a"), "get")]),
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(admin.added(1).await[0]["auditID"], "s-1");
    assert_eq!(alice.added(1).await[0]["auditID"], "s-1");

    let addr = srv.addr;
    srv.stop().await;
    // Nothing listens any more: a new connection is refused, not left in a backlog.
    let refused = tokio::net::TcpStream::connect(addr)
        .await
        .expect_err("the port still takes connections after the server stopped");
    assert_eq!(
        refused.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{refused}"
    );
    // Both streams end with a clean end of body (HTTP/1.1 chunked terminator, HTTP/2 END_STREAM).
    assert!(admin.next().await.is_none());
    assert!(alice.next().await.is_none());
}
