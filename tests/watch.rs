//! The WATCH endpoints, black-box: scoping by namespace and permission, resume, selectors,
//! timeouts, HTTP/2, and a watcher that never reads.

mod support;

use http::{Method, StatusCode};
use support::fixtures::{self, event, event_list};
use support::server::{ADMIN_TOKEN, ALICE_TOKEN, BOB_TOKEN, PUSH_TOKEN, TestServer};

const EVENTS: &str = "/apis/audit.k8s.io/v1alpha1/events";
const TEAM_A: &str = "/apis/audit.k8s.io/v1alpha1/namespaces/team-a/namespacedevents";
const TEAM_B: &str = "/apis/audit.k8s.io/v1alpha1/namespaces/team-b/namespacedevents";
const ALL_NS: &str = "/apis/audit.k8s.io/v1alpha1/namespacedevents";

fn mixed() -> Vec<String> {
    vec![
        event("a-1", Some("team-a"), "get"),
        event("b-1", Some("team-b"), "delete"),
        event("c-1", None, "list"),
        event("a-2", Some("team-a"), "delete"),
        event("b-2", Some("team-b"), "get"),
    ]
}

fn ids(objs: &[serde_json::Value]) -> Vec<&str> {
    objs.iter()
        .map(|o| o["auditID"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn each_user_sees_only_what_they_may() {
    let srv = TestServer::start(&[]).await;
    let mut alice = srv
        .client(Some(ALICE_TOKEN))
        .watch(&format!("{TEAM_A}?watch=1"))
        .await;
    let mut bob = srv
        .client(Some(BOB_TOKEN))
        .watch(&format!("{TEAM_B}?watch=true"))
        .await;
    let mut all_ns = srv
        .client(Some(ADMIN_TOKEN))
        .watch(&format!("{ALL_NS}?watch=1"))
        .await;
    let mut all = srv
        .client(Some(ADMIN_TOKEN))
        .watch(&format!("{EVENTS}?watch=1"))
        .await;
    srv.push_events(&mixed()).await;
    // A marker in each namespace: once it arrives, nothing else can still be on its way.
    srv.push_events(&[
        event("end-a", Some("team-a"), "get"),
        event("end-b", Some("team-b"), "get"),
    ])
    .await;

    assert_eq!(ids(&alice.added(3).await), ["a-1", "a-2", "end-a"]);
    assert_eq!(ids(&bob.added(3).await), ["b-1", "b-2", "end-b"]);
    assert_eq!(
        ids(&all_ns.added(6).await),
        ["a-1", "b-1", "a-2", "b-2", "end-a", "end-b"]
    );
    assert_eq!(
        ids(&all.added(7).await),
        ["a-1", "b-1", "c-1", "a-2", "b-2", "end-a", "end-b"]
    );
}

#[tokio::test]
async fn forbidden_and_unauthenticated_get_kube_style_status() {
    let srv = TestServer::start(&[]).await;
    let alice = srv.client(Some(ALICE_TOKEN));
    let (code, status) = alice.get_json(&format!("{TEAM_B}?watch=1")).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["apiVersion"], "v1");
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["reason"], "Forbidden");
    assert_eq!(status["details"]["group"], "audit.k8s.io");
    assert_eq!(status["details"]["kind"], "namespacedevents");
    assert_eq!(
        status["message"],
        r#"namespacedevents.audit.k8s.io is forbidden: User "alice" cannot watch resource "namespacedevents" in API group "audit.k8s.io" in the namespace "team-b": No policy matched."#
    );
    let (code, status) = alice.get_json(&format!("{EVENTS}?watch=1")).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    assert_eq!(
        status["message"],
        r#"events.audit.k8s.io is forbidden: User "alice" cannot watch resource "events" in API group "audit.k8s.io" at the cluster scope: No policy matched."#
    );
    let (code, _) = alice.get_json(&format!("{ALL_NS}?watch=1")).await;
    assert_eq!(code, StatusCode::FORBIDDEN);

    for token in [None, Some("wrong-token")] {
        let (code, status) = srv
            .client(token)
            .get_json(&format!("{TEAM_A}?watch=1"))
            .await;
        assert_eq!(code, StatusCode::UNAUTHORIZED);
        assert_eq!(status["reason"], "Unauthorized");
        assert_eq!(status["message"], "Unauthorized");
    }
    // Writing is forbidden to a read-only user before the method is even considered…
    let resp = alice.send(Method::POST, TEAM_A, &[], "{}").await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn unsupported_verbs_and_paths() {
    let srv = TestServer::start(&[]).await;
    let admin = srv.client(Some(ADMIN_TOKEN));
    for (method, path, code, reason) in [
        (
            Method::POST,
            EVENTS.to_owned(),
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
        ),
        (
            Method::DELETE,
            TEAM_A.to_owned(),
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
        ),
        // GET of a name the window does not hold (LIST and GET themselves: tests/list.rs).
        (
            Method::GET,
            format!("{EVENTS}/some-name"),
            StatusCode::NOT_FOUND,
            "NotFound",
        ),
        // A named path is a GET whatever its query says, as in kube-apiserver (a watch
        // of one event: tests below).
        (
            Method::GET,
            format!("{EVENTS}/some-name?watch=1"),
            StatusCode::NOT_FOUND,
            "NotFound",
        ),
        (
            Method::POST,
            "/apis/audit.k8s.io/v1alpha1/watch/events/some-name".into(),
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
        ),
        (
            Method::GET,
            "/apis/audit.k8s.io/v1alpha1/widgets?watch=1".into(),
            StatusCode::NOT_FOUND,
            "NotFound",
        ),
        (
            Method::GET,
            "/apis/audit.k8s.io/v1alpha1/namespaces/team-a/events?watch=1".into(),
            StatusCode::NOT_FOUND,
            "NotFound",
        ),
        (
            Method::GET,
            "/apis/audit.k8s.io/v1/events?watch=1".into(),
            StatusCode::NOT_FOUND,
            "NotFound",
        ),
        (
            Method::GET,
            "/nothing-here".into(),
            StatusCode::NOT_FOUND,
            "NotFound",
        ),
        (
            Method::GET,
            format!("{EVENTS}?watch=1&resourceVersion=abc"),
            StatusCode::BAD_REQUEST,
            "BadRequest",
        ),
        (
            Method::GET,
            format!("{EVENTS}?watch=1&fieldSelector=metadata.uid%3Dx"),
            StatusCode::BAD_REQUEST,
            "BadRequest",
        ),
    ] {
        let resp = admin.send(method.clone(), &path, &[], "").await;
        assert_eq!(resp.status(), code, "{method} {path}");
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status["reason"], reason, "{method} {path}");
        assert_eq!(status["kind"], "Status");
    }
}

#[tokio::test]
async fn resume_from_a_resource_version_and_expire() {
    let srv = TestServer::start(&["--window-events", "4"]).await;
    srv.push_events(&mixed()).await; // rv 1..=5; the window keeps 2..=5
    let admin = srv.client(Some(ADMIN_TOKEN));
    let mut from3 = admin
        .watch(&format!("{EVENTS}?watch=1&resourceVersion={}", srv.rv(3)))
        .await;
    assert_eq!(ids(&from3.added(2).await), ["a-2", "b-2"]);
    let mut alice_from0 = srv
        .client(Some(ALICE_TOKEN))
        .watch(&format!("{TEAM_A}?watch=1&resourceVersion=0"))
        .await;
    assert_eq!(
        ids(&alice_from0.added(1).await),
        ["a-2"],
        "team-a's events still in the window"
    );
    // Replay then live, no gap.
    srv.push_events(&[event("a-3", Some("team-a"), "get")])
        .await;
    assert_eq!(ids(&from3.added(1).await), ["a-3"]);
    assert_eq!(ids(&alice_from0.added(1).await), ["a-3"]);

    let mut expired = admin
        .watch(&format!("{EVENTS}?watch=1&resourceVersion={}", srv.rv(1)))
        .await;
    let err = expired.next().await.unwrap();
    assert_eq!(err["type"], "ERROR");
    assert_eq!(err["object"]["kind"], "Status");
    assert_eq!(err["object"]["code"], 410);
    assert_eq!(err["object"]["reason"], "Expired");
    assert!(
        expired.next().await.is_none(),
        "the stream ends after the ERROR"
    );
    // One an earlier run of the server gave out (a restart starts numbering higher, from
    // the clock): expired too, never taken for another event.
    let mut before_restart = admin
        .watch(&format!("{EVENTS}?watch=1&resourceVersion=3"))
        .await;
    assert_eq!(before_restart.next().await.unwrap()["object"]["code"], 410);

    // A resourceVersion the bus has not reached: waited for a moment (a replica behind
    // another catches up), then "too large", and the client lists again; an event that
    // arrives while it waits is delivered.
    let from7 = format!("{EVENTS}?watch=1&resourceVersion={}", srv.rv(7));
    let ahead = admin.watch(&from7);
    let push = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        srv.push_events(&[event("a-4", None, "get"), event("a-5", None, "get")])
            .await;
    };
    let (mut ahead, ()) = tokio::join!(ahead, push);
    assert_eq!(
        ids(&ahead.added(1).await),
        ["a-5"],
        "from rv 7 on: only rv 8"
    );
    let mut too_large = admin
        .watch(&format!("{EVENTS}?watch=1&resourceVersion={}", srv.rv(100)))
        .await;
    let err = too_large.next().await.unwrap();
    assert_eq!(err["type"], "ERROR");
    assert_eq!(err["object"]["code"], 504);
    assert_eq!(err["object"]["reason"], "Timeout");
    assert_eq!(
        err["object"]["details"]["causes"][0]["reason"],
        "ResourceVersionTooLarge"
    );
    assert!(too_large.next().await.is_none());
}

/// The real events, with every third one's user renamed bob: bob among the many other
/// users of the fixtures, with and without deletes on either side.
fn bob_among_others() -> Vec<String> {
    fixtures::lines("all-events.jsonl")
        .iter()
        .enumerate()
        .map(|(i, line)| {
            if i % 3 != 0 {
                return line.clone();
            }
            let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
            v["user"]["username"] = "bob".into();
            v.to_string()
        })
        .collect()
}

/// (auditID, stage): which event an object is.
fn identity(v: &serde_json::Value) -> (String, String) {
    (
        v["auditID"].as_str().unwrap().to_owned(),
        v["stage"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn field_selector_sends_exactly_the_matching_events() {
    let srv = TestServer::start(&[]).await;
    let mut bobs_deletes = srv
        .client(Some(ADMIN_TOKEN))
        .watch(&format!(
            "{EVENTS}?watch=1&fieldSelector=verb%3Ddelete,user.username%3Dbob"
        ))
        .await;
    let lines = bob_among_others();
    let events: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let count = |bob: bool, delete: bool| {
        events
            .iter()
            .filter(|e| {
                (e["user"]["username"] == "bob") == bob && (e["verb"] == "delete") == delete
            })
            .count()
    };
    // Each term of the selector has something to exclude, and something is left.
    assert!(count(true, true) >= 2, "bob's deletes");
    assert!(count(true, false) > 0, "bob's other verbs");
    assert!(count(false, true) > 0, "others' deletes");
    let want: Vec<(String, String)> = events
        .iter()
        .filter(|e| e["user"]["username"] == "bob" && e["verb"] == "delete")
        .map(identity)
        .collect();

    srv.push_events(&lines).await;
    // A last match: once it arrives, every event pushed before it has been considered.
    srv.push_events(&[event("the-end", None, "delete")]).await;
    let mut got = vec![];
    loop {
        let ev = bobs_deletes.next().await.expect("the watch ended");
        assert_eq!(ev["type"], "ADDED", "{ev}");
        if ev["object"]["auditID"] == "the-end" {
            break;
        }
        got.push(identity(&ev["object"]));
    }
    assert_eq!(got, want, "bob's deletes, in order, and nothing else");
}

#[tokio::test]
async fn timeout_ends_the_stream() {
    let srv = TestServer::start(&[]).await;
    let mut short = srv
        .client(Some(ADMIN_TOKEN))
        .watch(&format!("{EVENTS}?watch=1&timeoutSeconds=2"))
        .await;
    let opened = std::time::Instant::now();
    srv.push_events(&mixed()).await;
    // Every pushed event, then the end of the stream: the deadline ended it, not an error.
    let mut seen = vec![];
    while let Some(ev) = short.next().await {
        assert_eq!(ev["type"], "ADDED");
        seen.push(ev["object"].clone());
    }
    assert_eq!(ids(&seen), ["a-1", "b-1", "c-1", "a-2", "b-2"]);
    assert!(
        opened.elapsed() >= std::time::Duration::from_millis(1500),
        "ended by timeoutSeconds, not before"
    );
}

/// `timeoutSeconds` as kube-apiserver reads it: a 64-bit signed integer (a larger one is
/// a 400, as there, where it was a 500 from an overflowed deadline here), 0 for no
/// timeout given, and any other a watch that lasts at most what Go's `time.Duration`
/// holds (about 292 years).
#[tokio::test]
async fn timeouts_too_large_or_zero_are_read_as_kube_apiserver_reads_them() {
    let srv = TestServer::start(&[]).await;
    let admin = srv.client(Some(ADMIN_TOKEN));
    let (code, status) = admin
        .get_json(&format!(
            "{EVENTS}?watch=1&timeoutSeconds=18446744073709551615"
        ))
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{status}");
    assert_eq!(status["reason"], "BadRequest");
    let mut watches = vec![];
    for seconds in ["9223372036854775807", "9223372037", "0"] {
        watches.push(
            admin
                .watch(&format!("{EVENTS}?watch=1&timeoutSeconds={seconds}"))
                .await,
        );
    }
    // Still open a moment later (0 ended at once before), and serving.
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    srv.push_events(&mixed()).await;
    for w in &mut watches {
        assert_eq!(ids(&w.added(5).await), ["a-1", "b-1", "c-1", "a-2", "b-2"]);
    }
    let (_, metrics) = admin.get("/metrics").await;
    assert_eq!(
        support::metric(
            &metrics,
            "kube_audit_stream_server_panics_total{where=\"handler\"}"
        ),
        Some(0.0),
        "no panic"
    );
}

#[tokio::test]
async fn http2_watch_works() {
    let srv = TestServer::start(&[]).await;
    let mut w = srv
        .client(Some(ALICE_TOKEN))
        .http2()
        .watch(&format!("{TEAM_A}?watch=1"))
        .await;
    srv.push_events(&mixed()).await;
    assert_eq!(ids(&w.added(2).await), ["a-1", "a-2"]);
}

/// A watch's frames are the bus's own lines, handed to the connection as slices: read
/// through a stream window smaller than one line (h2 sends part of a frame, keeps the
/// rest and sends it later), an HTTP/2 watch gets every event exactly as an HTTP/1.1 watch
/// of the same stream does.
#[tokio::test]
async fn an_http2_watch_through_a_tiny_window_gets_the_same_events_as_http1() {
    let srv = TestServer::start(&["--watcher-bytes-per-second", "0"]).await;
    let admin = srv.client(Some(ADMIN_TOKEN));
    let path = format!("{EVENTS}?watch=1");
    let mut http1 = admin.watch(&path).await;
    let h2 = admin.clone().http2();
    let mut conn = h2.http2_connection(512).await;
    let mut tiny = h2.watch_on(&mut conn, &path).await;
    let mut roomy = h2.watch(&path).await;

    let pusher = srv.client(Some(PUSH_TOKEN));
    let mut n = 0;
    for name in [
        "audit2rbac-demo.log",
        "all-events.jsonl",
        "openshift-audit_in.log",
    ] {
        let lines = fixtures::lines(name);
        n += lines.len();
        let (code, _) = pusher.push("", event_list("audit.k8s.io/v1", &lines)).await;
        assert_eq!(code, StatusCode::OK, "{name}");
    }
    let want = http1.added(n).await;
    assert_eq!(want.len(), n);
    assert!(
        tiny.added(n).await == want,
        "the tiny window's events differ"
    );
    assert!(
        roomy.added(n).await == want,
        "the HTTP/2 watch's events differ"
    );
}

/// A watcher that never reads its socket loses events; ingest and the other watchers do
/// not notice, and the loss is counted.
#[tokio::test]
async fn a_watcher_that_never_reads_slows_no_one() {
    // No byte budget here: this is about the queue, not the budget.
    let srv = TestServer::start(&["--watcher-bytes-per-second", "0"]).await;
    let admin = srv.client(Some(ADMIN_TOKEN));
    // The stuck watcher: headers read, body never polled.
    let stuck = admin
        .send(Method::GET, &format!("{EVENTS}?watch=1"), &[], "")
        .await;
    assert_eq!(stuck.status(), StatusCode::OK);
    let fast = admin.watch(&format!("{EVENTS}?watch=1")).await;

    let lines = fixtures::lines("all-events.jsonl");
    let rounds = 40; // ~37 MB through the bus: far more than socket buffers and the queue hold
    let (progress, received) = tokio::sync::watch::channel(0usize);
    let reader = tokio::spawn(read_added(fast, rounds * lines.len(), progress));
    let pusher = srv.client(Some(PUSH_TOKEN));
    for round in 0..rounds {
        // Keep the fast watcher within a round of ingest, whatever the machine's speed.
        let mut received = received.clone();
        let want = round.saturating_sub(1) * lines.len();
        tokio::time::timeout(support::DEADLINE, received.wait_for(|n| *n >= want))
            .await
            .unwrap()
            .unwrap();
        // A source of its own each round: the same body from the same source again
        // would be a webhook retry, published once.
        for batch in lines.chunks(400) {
            let (code, _) = pusher
                .push(
                    &format!("?source=round-{round}"),
                    event_list("audit.k8s.io/v1", batch),
                )
                .await;
            assert_eq!(code, StatusCode::OK);
        }
    }
    let (added, bookmarks) = reader.await.unwrap();
    assert_eq!(
        added,
        rounds * lines.len(),
        "the fast watcher got everything"
    );
    assert_eq!(bookmarks, 0, "and was never told of a drop");
    support::eventually("drops counted for the stuck watcher", || async {
        let (_, body) = admin.get("/metrics").await;
        support::metric(&body, "kube_audit_stream_bus_dropped_events_total").unwrap_or(0.0) > 0.0
    })
    .await;
    drop(stuck);
}

/// Read `n` ADDED events, publishing progress; returns (ADDED, BOOKMARK) counts.
async fn read_added(
    mut w: support::client::WatchReader,
    n: usize,
    progress: tokio::sync::watch::Sender<usize>,
) -> (usize, usize) {
    let (mut added, mut bookmarks) = (0, 0);
    while added < n {
        let ev = w.next().await.expect("stream ended early");
        match ev["type"].as_str() {
            Some("ADDED") => added += 1,
            Some("BOOKMARK") => bookmarks += 1,
            other => panic!("unexpected {other:?}"),
        }
        if added % 100 == 0 {
            progress.send_replace(added);
        }
    }
    progress.send_replace(added);
    (added, bookmarks)
}

/// Open watches are limited in all and per user, with kube-apiserver's answer to a client
/// over its share: 429, `Retry-After`, and a Status that says so.
#[tokio::test]
async fn watch_slots_are_limited_per_user_and_in_all() {
    let srv = TestServer::start(&["--max-watchers", "3", "--max-watchers-per-user", "2"]).await;
    let alice = srv.client(Some(ALICE_TOKEN));
    let bob = srv.client(Some(BOB_TOKEN));
    let path = format!("{TEAM_A}?watch=1");
    let refused = |resp: http::Response<hyper::body::Incoming>, what: &'static str| async move {
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS, "{what}");
        assert_eq!(resp.headers()[http::header::RETRY_AFTER], "1", "{what}");
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status["reason"], "TooManyRequests", "{what}");
        assert_eq!(status["details"]["retryAfterSeconds"], 1, "{what}");
        status["message"].as_str().unwrap().to_owned()
    };

    let first = alice.watch(&path).await;
    let _second = alice.watch(&path).await;
    let message = refused(
        alice.send(Method::GET, &path, &[], "").await,
        "alice's third",
    )
    .await;
    assert!(message.contains(r#"user "alice""#), "{message}");
    // Another user still gets a slot, up to the server's limit.
    let _bob = bob.watch(&format!("{TEAM_B}?watch=1")).await;
    let message = refused(
        bob.send(Method::GET, &format!("{TEAM_B}?watch=1"), &[], "")
            .await,
        "the fourth in all",
    )
    .await;
    assert!(message.contains("limit 3"), "{message}");

    // A watch that ends gives its slot back.
    drop(first);
    support::eventually("alice's slot is released", || async {
        let resp = alice.send(Method::GET, &path, &[], "").await;
        resp.status() == StatusCode::OK
    })
    .await;
}

/// A watch of one event, every way a client asks for it, as kube-apiserver serves them:
/// `fieldSelector=metadata.name=NAME` on the collection (`kubectl get NAME -w`, client-go),
/// and the named path under `/watch/` (kube-apiserver's verb-in-path form), both the
/// collection's watch with that selector and authorized as `watch` with the name. The
/// named path with `?watch=1` is a GET of the event, as kube-apiserver answers it.
#[tokio::test]
async fn a_watch_of_one_event_by_name() {
    let srv = TestServer::start(&[]).await;
    srv.push_events(&mixed()).await;
    let alice = srv.client(Some(ALICE_TOKEN));
    let name = "a-2-responsecomplete";
    let by_path =
        format!("/apis/audit.k8s.io/v1alpha1/watch/namespaces/team-a/namespacedevents/{name}");
    for path in [
        format!("{by_path}?resourceVersion=0"),
        format!("{TEAM_A}?watch=1&resourceVersion=0&fieldSelector=metadata.name%3D{name}"),
        format!("{by_path}?resourceVersion=0&fieldSelector=metadata.name%3D{name}%2Cverb%3Ddelete"),
    ] {
        let mut w = alice.watch(&path).await;
        assert_eq!(ids(&w.added(1).await), ["a-2"], "{path}");
        // Another event of the namespace is not this one's: the next line is the one
        // pushed under the same name.
        srv.push_events(&[
            event("a-3", Some("team-a"), "get"),
            event("a-2", Some("team-a"), "delete"),
        ])
        .await;
        let next = w.added(1).await;
        assert_eq!(
            (
                next[0]["auditID"].as_str(),
                next[0]["metadata"]["name"].as_str()
            ),
            (Some("a-2"), Some(name)),
            "{path}"
        );
    }

    // The selector must name the same event, as kube-apiserver checks.
    let (code, status) = alice
        .get_json(&format!("{by_path}?fieldSelector=verb%3Dget"))
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert_eq!(
        status["message"],
        "fieldSelector metadata.name doesn't match requested name"
    );

    // Authorized as `watch` with the name, either way: 403 names it.
    let team_b =
        "/apis/audit.k8s.io/v1alpha1/watch/namespaces/team-b/namespacedevents/b-1-responsecomplete";
    let by_selector =
        format!("{TEAM_B}?watch=1&fieldSelector=metadata.name%3Db-1-responsecomplete");
    for path in [team_b, &by_selector] {
        let (code, status) = alice.get_json(path).await;
        assert_eq!(code, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(status["details"]["name"], "b-1-responsecomplete", "{path}");
        assert_eq!(
            status["message"],
            r#"namespacedevents.audit.k8s.io "b-1-responsecomplete" is forbidden: User "alice" cannot watch resource "namespacedevents" in API group "audit.k8s.io" in the namespace "team-b": No policy matched."#,
            "{path}"
        );
    }

    // `…/NAME?watch=1`: the event itself, once, as a GET.
    let (code, got) = alice.get_json(&format!("{TEAM_A}/{name}?watch=1")).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        (got["kind"].as_str(), got["auditID"].as_str()),
        (Some("Event"), Some("a-2"))
    );
}
