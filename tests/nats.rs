//! `--bus=nats`: several replicas, separate processes of the real binary, share one
//! stream through a real NATS JetStream server on loopback. Every watcher on every
//! replica sees every event once, in one order, with the same resourceVersions, and the
//! same bytes as the memory bus serves; retries are stored once; NATS going away and a
//! replica dying are survived as the contract says.

mod support;

use std::collections::HashSet;

use http::StatusCode;
use serde_json::Value;
use support::client::Client;
use support::nats::NatsServer;
use support::process::ServerProcess;
use support::{eventually, fixtures};

const EVENTS: &str = "/apis/audit.k8s.io/v1alpha1/events";
/// The `--dev` example administrator.
const ADMIN_TOKEN: &str = "admin-dev-token";

fn replica(nats: &NatsServer) -> ServerProcess {
    ServerProcess::start(&["--bus=nats", "--nats-url", &nats.url()])
}

async fn ready(client: &Client) -> bool {
    client.get("/readyz").await.0 == StatusCode::OK
}

async fn wait_ready(replicas: &[&ServerProcess]) {
    for r in replicas {
        let admin = r.client(Some(ADMIN_TOKEN));
        eventually("the replica to be ready", || ready(&admin)).await;
    }
}

/// (auditID, stage, verb, resourceVersion) of each event: what must be the same everywhere.
fn identities(objects: &[Value]) -> Vec<(String, String, String, u64)> {
    objects
        .iter()
        .map(|o| {
            let rv = o["metadata"]["resourceVersion"].as_str().unwrap();
            (
                o["auditID"].as_str().unwrap().to_owned(),
                o["stage"].as_str().unwrap().to_owned(),
                o["verb"].as_str().unwrap().to_owned(),
                rv.parse().unwrap(),
            )
        })
        .collect()
}

async fn push_ok(r: &ServerProcess, body: String) {
    let (code, status) = r.client(None).push("", body).await;
    assert_eq!(code, StatusCode::OK, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_serve_one_stream_in_one_order() {
    let nats = NatsServer::start();
    let rs = [replica(&nats), replica(&nats), replica(&nats)];
    wait_ready(&[&rs[0], &rs[1], &rs[2]]).await;
    let mut watchers = Vec::new();
    for r in &rs {
        watchers.push(
            r.client(Some(ADMIN_TOKEN))
                .watch(&format!("{EVENTS}?watch=1"))
                .await,
        );
    }

    // Real events, pushed in three batches, one to each replica.
    let lines = fixtures::lines("all-events.jsonl");
    let third = lines.len().div_ceil(3);
    for (r, batch) in rs.iter().zip(lines.chunks(third)) {
        push_ok(r, fixtures::event_list("audit.k8s.io/v1", batch)).await;
    }
    // A webhook retry of the first batch, to another replica: stored once.
    push_ok(
        &rs[1],
        fixtures::event_list("audit.k8s.io/v1", &lines[..third]),
    )
    .await;
    // Two different events that share an auditID (a client chose its Audit-ID): both.
    let twins = [
        fixtures::event("chosen-id", Some("team-a"), "get"),
        fixtures::event("chosen-id", Some("team-a"), "delete"),
    ];
    push_ok(&rs[2], fixtures::event_list("audit.k8s.io/v1", &twins[..1])).await;
    push_ok(&rs[0], fixtures::event_list("audit.k8s.io/v1", &twins[1..])).await;
    // Then a last event, so that a duplicate would show up before it.
    let last = [fixtures::event("the-end", None, "get")];
    push_ok(&rs[1], fixtures::event_list("audit.k8s.io/v1", &last)).await;

    let expected = lines.len() + 3;
    let mut seen = Vec::new();
    for w in &mut watchers {
        seen.push(identities(&w.added(expected).await));
    }
    let first = &seen[0];
    assert_eq!(
        first.last().unwrap().0,
        "the-end",
        "nothing doubled before the end"
    );
    for other in &seen[1..] {
        assert_eq!(
            first, other,
            "every replica: the same events, order and resourceVersions"
        );
    }
    assert!(
        first.windows(2).all(|w| w[0].3 < w[1].3),
        "resourceVersions increase"
    );
    let pushed: HashSet<_> = fixtures::ids(&lines).into_iter().collect();
    let got: HashSet<_> = first
        .iter()
        .map(|(a, s, ..)| (a.clone(), s.clone()))
        .collect();
    assert!(pushed.is_subset(&got), "every pushed event arrived");
    let twins_seen: Vec<_> = first
        .iter()
        .filter(|e| e.0 == "chosen-id")
        .map(|e| e.2.as_str())
        .collect();
    assert_eq!(twins_seen, ["get", "delete"]);

    // LIST on any replica: the same window.
    let (code, list) = rs[2].client(Some(ADMIN_TOKEN)).get_json(EVENTS).await;
    assert_eq!(code, StatusCode::OK);
    let items = list["items"].as_array().unwrap();
    assert_eq!(identities(items), *first);
    let (_, metrics) = rs[1].client(Some(ADMIN_TOKEN)).get("/metrics").await;
    let dup = r#"kube_audit_stream_nats_published_messages_total{result="duplicate"}"#;
    assert_eq!(
        support::metric(&metrics, dup),
        Some(1.0),
        "the retry was one duplicate message"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_watcher_resumes_on_another_without_a_gap() {
    let nats = NatsServer::start();
    let (mut doomed, survivor) = (replica(&nats), replica(&nats));
    wait_ready(&[&doomed, &survivor]).await;
    let mut w = doomed
        .client(Some(ADMIN_TOKEN))
        .watch(&format!("{EVENTS}?watch=1"))
        .await;
    let before: Vec<String> = (0..5)
        .map(|i| fixtures::event(&format!("before-{i}"), Some("a"), "get"))
        .collect();
    push_ok(&survivor, fixtures::event_list("audit.k8s.io/v1", &before)).await;
    let seen = identities(&w.added(5).await);
    let last_rv = seen.last().unwrap().3;

    doomed.kill();
    drop(w);
    let after: Vec<String> = (0..5)
        .map(|i| fixtures::event(&format!("after-{i}"), Some("a"), "get"))
        .collect();
    push_ok(&survivor, fixtures::event_list("audit.k8s.io/v1", &after)).await;

    // The client re-watches on the other replica from the last resourceVersion it saw.
    let mut w = survivor
        .client(Some(ADMIN_TOKEN))
        .watch(&format!("{EVENTS}?watch=1&resourceVersion={last_rv}"))
        .await;
    let resumed = identities(&w.added(5).await);
    let ids: Vec<_> = resumed.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(ids, ["after-0", "after-1", "after-2", "after-3", "after-4"]);
    assert!(resumed[0].3 > last_rv);
    // And from the start of the window: the same resourceVersions the dead replica gave.
    let (_, list) = survivor.client(Some(ADMIN_TOKEN)).get_json(EVENTS).await;
    assert_eq!(identities(&list["items"].as_array().unwrap()[..5]), seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_nats_is_visible_and_survived() {
    let mut nats = NatsServer::start();
    let r = replica(&nats);
    wait_ready(&[&r]).await;
    let admin = r.client(Some(ADMIN_TOKEN));
    let mut w = admin.watch(&format!("{EVENTS}?watch=1")).await;
    push_ok(
        &r,
        fixtures::event_list("audit.k8s.io/v1", &[fixtures::event("one", None, "get")]),
    )
    .await;
    let old_rv = identities(&w.added(1).await)[0].3;

    nats.kill();
    // The open watch ends with an ERROR, so that its client re-watches elsewhere.
    let error = loop {
        let ev = w
            .next()
            .await
            .expect("an ERROR before the end of the stream");
        if ev["type"] == "ERROR" {
            break ev;
        }
    };
    assert_eq!(error["object"]["code"], 503, "{error}");
    assert!(w.next().await.is_none(), "the stream ends after the ERROR");
    eventually("readyz to fail", || async { !ready(&admin).await }).await;
    let (code, body) = admin.get("/readyz?verbose").await;
    assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        String::from_utf8_lossy(&body).contains("[-]bus failed"),
        "{body:?}"
    );
    assert_eq!(
        admin.get("/livez").await.0,
        StatusCode::OK,
        "alive: it recovers by itself"
    );
    let (code, status) = r
        .client(None)
        .push(
            "",
            fixtures::event_list("audit.k8s.io/v1", &[fixtures::event("lost", None, "get")]),
        )
        .await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{status}");
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "ServiceUnavailable");
    let (code, _) = admin.get(&format!("{EVENTS}?watch=1")).await;
    assert_eq!(
        code,
        StatusCode::SERVICE_UNAVAILABLE,
        "no new watch while down"
    );
    let (code, status) = admin
        .get_json(&format!("{EVENTS}/one-responsecomplete"))
        .await;
    assert_eq!(
        code,
        StatusCode::SERVICE_UNAVAILABLE,
        "GET by name: {status}"
    );
    let (_, metrics) = admin.get("/metrics").await;
    assert_eq!(
        support::metric(&metrics, "kube_audit_stream_bus_up"),
        Some(0.0)
    );
    assert!(
        r.log().iter().any(|l| l.contains("bus down")),
        "a log line says so"
    );

    // NATS comes back, its in-memory stream gone: ready again without a restart, and
    // resourceVersions go on upwards; a watch from before the loss is told to re-list.
    nats.restart();
    eventually("readyz to pass again", || ready(&admin)).await;
    let mut w = admin.watch(&format!("{EVENTS}?watch=1")).await;
    push_ok(
        &r,
        fixtures::event_list("audit.k8s.io/v1", &[fixtures::event("two", None, "get")]),
    )
    .await;
    let new = identities(&w.added(1).await);
    assert_eq!(new[0].0, "two");
    assert!(new[0].3 > old_rv, "resourceVersions never go backwards");
    let mut stale = admin
        .watch(&format!("{EVENTS}?watch=1&resourceVersion={old_rv}"))
        .await;
    let gone = stale.next().await.unwrap();
    assert_eq!(
        (gone["type"].as_str(), gone["object"]["code"].as_i64()),
        (Some("ERROR"), Some(410))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_before_nats_waits_not_ready_then_serves() {
    let mut nats = NatsServer::not_started();
    let r = replica(&nats);
    let admin = r.client(Some(ADMIN_TOKEN));
    let (code, body) = admin.get("/readyz").await;
    assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR, "{body:?}");
    let (code, status) = r
        .client(None)
        .push(
            "",
            fixtures::event_list("audit.k8s.io/v1", &[fixtures::event("early", None, "get")]),
        )
        .await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{status}");
    let (code, list) = admin.get_json(EVENTS).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{list}");

    nats.restart();
    eventually("the replica to be ready once NATS is up", || ready(&admin)).await;
    push_ok(
        &r,
        fixtures::event_list("audit.k8s.io/v1", &[fixtures::event("late", None, "get")]),
    )
    .await;
    let (_, list) = admin.get_json(EVENTS).await;
    let items = list["items"].as_array().unwrap();
    assert_eq!(
        items.len(),
        1,
        "the refused push left nothing behind: {list}"
    );
    assert_eq!(items[0]["auditID"], "late");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_serves_the_bytes_a_memory_bus_serves() {
    // The stream carries each line without its head, and every replica makes the head
    // again: what a replica serves must be, byte for byte, what the memory bus serves for
    // the same push (the resourceVersions aside).
    let nats = NatsServer::start();
    let replica = replica(&nats);
    let memory = ServerProcess::start(&[]);
    wait_ready(&[&replica, &memory]).await;
    let mut lines = fixtures::lines("all-events.jsonl");
    lines.extend(fixtures::lines("openshift-audit_in.log"));
    let body = fixtures::event_list("audit.k8s.io/v1", &lines);
    for server in [&replica, &memory] {
        let (code, status) = server
            .client(None)
            .push("?source=apiserver-1", body.clone())
            .await;
        assert_eq!(code, StatusCode::OK, "{status}");
    }
    let (_, list) = memory
        .client(Some(ADMIN_TOKEN))
        .get_json(&format!("{EVENTS}?limit=1000"))
        .await;
    let names: HashSet<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap())
        .collect();
    // The OpenShift events are in all-events too: GET finds the newest of a name.
    assert_eq!(list["items"].as_array().unwrap().len(), lines.len());
    assert_eq!(names.len(), 186);
    // `"resourceVersion":"<digits>"` left out.
    let without_rv = |bytes: &[u8]| {
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        let at = text.find(r#""resourceVersion":""#).unwrap() + 19;
        let end = at + text[at..].find('"').unwrap();
        format!("{}{}", &text[..at], &text[end..])
    };
    for name in names {
        let path = format!("{EVENTS}/{name}");
        let (code, from_replica) = replica.client(Some(ADMIN_TOKEN)).get(&path).await;
        assert_eq!(code, StatusCode::OK, "{name}");
        let (_, from_memory) = memory.client(Some(ADMIN_TOKEN)).get(&path).await;
        assert_eq!(
            without_rv(&from_replica),
            without_rv(&from_memory),
            "{name}"
        );
    }
}
