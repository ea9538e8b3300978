//! The limits on what one client may hold or send, on a real socket with real TLS: a
//! handshake left unfinished and a request head that does not come are closed (HTTP/1.1
//! and HTTP/2), an oversized head gets 431 and a long URL 414 (with a Status), and a
//! pusher over its share of concurrent ingest requests gets 429 with Retry-After while
//! another pusher and a watcher carry on, and a push whose body does not come gets 504
//! and frees its slot.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use support::fixtures::{event, event_list};
use support::pki::Ca;
use support::server::{ADMIN_TOKEN, PUSH_TOKEN, TestServer};
use support::{DEADLINE, metric};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Read until the peer closes (EOF or an error); `false` if it is still open at the
/// deadline. Whatever the server sends first (its HTTP/2 SETTINGS, say) is read past.
async fn closed_by_server<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> bool {
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(DEADLINE, read_all).await.is_ok()
}

/// The value of `kube_audit_stream_server_refused_total{limit="…"}`.
async fn refused(srv: &TestServer, limit: &str) -> f64 {
    let (code, text) = srv.client(Some(ADMIN_TOKEN)).get("/metrics").await;
    assert_eq!(code, StatusCode::OK);
    metric(
        &text,
        &format!("kube_audit_stream_server_refused_total{{limit=\"{limit}\"}}"),
    )
    .unwrap_or(0.0)
}

/// The Status of an error answer, checked to carry `code` and `reason`.
async fn status_of(
    resp: http::Response<hyper::body::Incoming>,
    code: StatusCode,
    reason: &str,
) -> serde_json::Value {
    assert_eq!(resp.status(), code);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let status: serde_json::Value =
        serde_json::from_slice(&body).unwrap_or_else(|e| panic!("not a Status: {e}: {body:?}"));
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["code"], code.as_u16());
    assert_eq!(status["reason"], reason);
    status
}

#[tokio::test]
async fn an_unfinished_tls_handshake_is_closed() {
    let srv = TestServer::start(&["--tls-handshake-timeout", "1s"]).await;
    // Nothing at all, and a ClientHello cut off after its first bytes.
    let mut silent = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    let mut partial = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    partial
        .write_all(&[
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ])
        .await
        .unwrap();
    // Meanwhile, a client that completes its handshake is served.
    let (code, _) = srv.client(Some(ADMIN_TOKEN)).get("/healthz").await;
    assert_eq!(code, StatusCode::OK);
    assert!(
        closed_by_server(&mut silent).await,
        "silent client still connected"
    );
    assert!(
        closed_by_server(&mut partial).await,
        "half handshake still connected"
    );
    assert_eq!(refused(&srv, "tls_handshake_timeout").await, 2.0);
}

#[tokio::test]
async fn a_request_head_that_does_not_come_is_closed_over_http1() {
    let srv = TestServer::start(&["--request-header-timeout", "1s"]).await;
    let client = srv.client(Some(ADMIN_TOKEN));
    // A head a few bytes at a time, never finished (slowloris), and a connection that
    // sends nothing after its handshake.
    let mut slow = client.raw_tls().await;
    let mut idle = client.raw_tls().await;
    let trickle = async {
        for chunk in b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nx-a: ".chunks(3) {
            if slow.write_all(chunk).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Then silence: the head never ends.
        assert!(
            closed_by_server(&mut slow).await,
            "slow head still connected"
        );
    };
    let watch = async {
        // A watcher and a pusher on their own connections are not held up.
        let mut w = srv
            .client(Some(ADMIN_TOKEN))
            .watch("/apis/audit.k8s.io/v1alpha1/events?watch=1")
            .await;
        srv.push_events(&[event("slowloris-1", Some("team-a"), "get")])
            .await;
        assert_eq!(w.added(1).await[0]["auditID"], "slowloris-1");
    };
    tokio::join!(trickle, watch);
    assert!(
        closed_by_server(&mut idle).await,
        "idle connection still open"
    );
    assert!(refused(&srv, "request_header_timeout").await >= 2.0);
}

#[tokio::test]
async fn a_request_head_that_does_not_come_is_closed_over_http2() {
    let srv = TestServer::start(&["--request-header-timeout", "1s"]).await;
    let client = srv.client(Some(ADMIN_TOKEN)).http2();
    // The HTTP/2 preface and an empty SETTINGS frame, then no HEADERS ever.
    let mut s = client.raw_tls().await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    // Another HTTP/2 client is served meanwhile.
    let (code, _) = client.get("/healthz").await;
    assert_eq!(code, StatusCode::OK);
    assert!(
        closed_by_server(&mut s).await,
        "preface-only connection still open"
    );
    assert_eq!(refused(&srv, "request_header_timeout").await, 1.0);
}

#[tokio::test]
async fn an_oversized_request_head_gets_431() {
    let srv = TestServer::start(&["--max-request-header-bytes", "8192"]).await;
    let big = "x".repeat(10_000);
    for client in [
        srv.client(Some(ADMIN_TOKEN)),
        srv.client(Some(ADMIN_TOKEN)).http2(),
    ] {
        let resp = client
            .send(
                Method::GET,
                "/healthz",
                &[("x-padding", &big)],
                Bytes::new(),
            )
            .await;
        let status = status_of(
            resp,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "RequestHeaderFieldsTooLarge",
        )
        .await;
        assert_eq!(
            status["message"],
            "the request headers are too large: limit is 8192 bytes"
        );
        // Far above the limit, the HTTP library refuses it before it is read whole.
        let huge = "x".repeat(40_000);
        let resp = client
            .send(
                Method::GET,
                "/healthz",
                &[("x-padding", &huge)],
                Bytes::new(),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }
    // Many small headers (a front proxy's one per group) are not refused for their number.
    let groups: Vec<(String, String)> = (0..300)
        .map(|i| ("x-group".to_owned(), format!("g{i}")))
        .collect();
    let headers: Vec<(&str, &str)> = groups
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let resp = srv
        .client(Some(ADMIN_TOKEN))
        .send(Method::GET, "/healthz", &headers, Bytes::new())
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(refused(&srv, "header_bytes").await, 2.0);
}

#[tokio::test]
async fn a_long_url_gets_414() {
    let srv = TestServer::start(&["--max-url-bytes", "1024"]).await;
    let long = format!(
        "/apis/audit.k8s.io/v1alpha1/events?fieldSelector=verb%3D{}",
        "a".repeat(2000)
    );
    for client in [
        srv.client(Some(ADMIN_TOKEN)),
        srv.client(Some(ADMIN_TOKEN)).http2(),
    ] {
        let resp = client.send(Method::GET, &long, &[], Bytes::new()).await;
        status_of(resp, StatusCode::URI_TOO_LONG, "RequestURITooLong").await;
        // One just under the limit is served.
        let (code, _) = client
            .get("/apis/audit.k8s.io/v1alpha1/events?fieldSelector=verb%3Dget")
            .await;
        assert_eq!(code, StatusCode::OK);
    }
    assert_eq!(refused(&srv, "url_bytes").await, 2.0);
}

/// One pusher over its share of concurrent pushes gets kube-apiserver's max-in-flight
/// answer; another pusher's pushes and a watcher carry on; the share comes back when the
/// held push ends.
#[tokio::test]
async fn a_pusher_over_its_concurrent_share_gets_429_and_others_carry_on() {
    let other_ca = Ca::new("other-pushers-ca");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ingest-ca.crt");
    std::fs::write(&ca_file, other_ca.pem()).unwrap();
    let srv = TestServer::start(&[
        "--max-ingest-inflight-per-pusher",
        "1",
        "--ingest-client-ca-file",
        ca_file.to_str().unwrap(),
        "--ingest-allowed-names",
        "apiserver-2",
    ])
    .await;
    let mut watch = srv
        .client(Some(ADMIN_TOKEN))
        .watch("/apis/audit.k8s.io/v1alpha1/events?watch=1")
        .await;

    // apiserver-1 (the push token) starts a push and sends half its body.
    let body = event_list("audit.k8s.io/v1", &[event("held-1", Some("team-a"), "get")]);
    let mut held = srv.client(None).raw_tls().await;
    let head = format!(
        "POST /ingest HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {PUSH_TOKEN}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    held.write_all(head.as_bytes()).await.unwrap();
    held.write_all(&body.as_bytes()[..body.len() / 2])
        .await
        .unwrap();

    // Its next push is over its share: 429, Retry-After, a Status that says so.
    let pusher1 = srv.client(Some(PUSH_TOKEN));
    let over = event_list("audit.k8s.io/v1", &[event("over-1", Some("team-a"), "get")]);
    // Polled: the held push takes its slot once the server has read its head.
    let started = tokio::time::Instant::now();
    let resp = loop {
        let resp = pusher1
            .send(
                Method::POST,
                "/ingest",
                &[("content-type", "application/json")],
                over.clone(),
            )
            .await;
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            break resp;
        }
        // An early push was accepted before the held one got its slot: it is not the
        // one under test, but the watcher sees it.
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(watch.added(1).await[0]["auditID"], "over-1");
        assert!(
            started.elapsed() < DEADLINE,
            "the held push never took its slot"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(resp.headers()[http::header::RETRY_AFTER], "1");
    let status = status_of(resp, StatusCode::TOO_MANY_REQUESTS, "TooManyRequests").await;
    assert_eq!(
        status["message"],
        "Too many requests, please try again later."
    );
    assert_eq!(status["details"]["retryAfterSeconds"], 1);

    // apiserver-2 pushes meanwhile, and the watcher gets its event.
    let pusher2 = srv
        .client(None)
        .with_cert(other_ca.client("apiserver-2", &[]));
    let (code, status) = pusher2
        .push(
            "",
            event_list(
                "audit.k8s.io/v1",
                &[event("other-1", Some("team-a"), "get")],
            ),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{status}");
    let got = watch.added(1).await;
    assert_eq!(got[0]["auditID"], "other-1");

    // The held push finishes: accepted, and apiserver-1 may push again.
    held.write_all(&body.as_bytes()[body.len() / 2..])
        .await
        .unwrap();
    let mut answer = vec![0u8; 1024];
    let n = tokio::time::timeout(DEADLINE, held.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(
        answer[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );
    assert_eq!(watch.added(1).await[0]["auditID"], "held-1");
    let (code, status) = pusher1.push("", over).await;
    assert_eq!(code, StatusCode::OK, "{status}");
    assert_eq!(watch.added(1).await[0]["auditID"], "over-1");
    assert!(refused(&srv, "ingest_inflight").await >= 1.0);
}

#[tokio::test]
async fn a_push_body_that_does_not_come_gets_504_and_frees_its_slot() {
    // kube-apiserver's 60 s, shortened: the server's own setting, which no flag reaches.
    let srv = TestServer::start_tuned(&["--max-ingest-inflight-per-pusher", "1"], |s| {
        s.ingest.body_timeout = Duration::from_millis(500)
    })
    .await;
    let body = event_list("audit.k8s.io/v1", &[event("slow", Some("team-a"), "get")]);
    let mut slow = srv.client(None).raw_tls().await;
    let head = format!(
        "POST /ingest HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {PUSH_TOKEN}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(&body.as_bytes()[..body.len() / 2])
        .await
        .unwrap();

    // The answer comes while the rest of the body never does.
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let complete = |a: &[u8]| {
        let text = String::from_utf8_lossy(a);
        let (head, body) = text.split_once("\r\n\r\n")?;
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().to_owned())
            })?
            .parse()
            .ok()?;
        (body.len() >= len).then(|| (head.to_owned(), body[..len].to_owned()))
    };
    let (head, body) = tokio::time::timeout(DEADLINE, async {
        loop {
            if let Some(done) = complete(&answer) {
                return done;
            }
            let n = slow.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed without an answer: {answer:?}");
            answer.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("an answer within the deadline");
    assert!(head.starts_with("HTTP/1.1 504"), "{head}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["code"], 504);
    assert_eq!(status["reason"], "Timeout");
    assert_eq!(refused(&srv, "ingest_body_timeout").await, 1.0);

    // Its in-flight slot is free again: the same pusher's next push goes through.
    let (code, status) = srv
        .client(Some(PUSH_TOKEN))
        .push(
            "",
            event_list("audit.k8s.io/v1", &[event("next", Some("team-a"), "get")]),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{status}");
}
