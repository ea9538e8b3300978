//! `sources.audit.k8s.io`, black-box: every pusher accounted for. Pushes from two sources
//! (the pusher's token, and one that names its own `?source=`), a refused push counted for
//! its source, GET, LIST and WATCH as objects and Tables, the real `kubectl get` (rows,
//! `-o json`, `-w`, `api-resources`, Forbidden), a silent source turning `Ready=False`,
//! authorization like any resource, and with `--bus=nats` three replicas of the real
//! binary answering with the same figures, a retried batch recognised as one.

mod support;

use http::StatusCode;
use serde_json::Value;
use tokio::io::AsyncBufReadExt;

use support::client::Client;
use support::fixtures::{event, event_list};
use support::kubectl::Kubectl;
use support::nats::NatsServer;
use support::process::ServerProcess;
use support::server::{ADMIN_TOKEN, ALICE_TOKEN, PUSH_TOKEN, TestServer};
use support::{DEADLINE, eventually, metric};

const SOURCES: &str = "/apis/audit.k8s.io/v1alpha1/sources";
const TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";

fn batch(ids: &[&str]) -> String {
    let items: Vec<String> = ids
        .iter()
        .map(|id| event(id, Some("team-a"), "get"))
        .collect();
    event_list("audit.k8s.io/v1", &items)
}

async fn push(client: &Client, query: &str, body: String) -> StatusCode {
    client.push(query, body).await.0
}

/// The Ready condition of a source object: (status, reason).
fn ready(source: &Value) -> (String, String) {
    let c = source["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .unwrap_or_else(|| panic!("no Ready condition: {source}"));
    (
        c["status"].as_str().unwrap().to_owned(),
        c["reason"].as_str().unwrap().to_owned(),
    )
}

/// Two sources (the push token's `apiserver-1`, and `apiserver-2` by `?source=`), one
/// refused push each way it can be refused after the pusher is known.
async fn two_sources(srv: &TestServer) {
    let pusher = srv.client(Some(PUSH_TOKEN));
    assert_eq!(
        push(&pusher, "", batch(&["a-1", "a-2"])).await,
        StatusCode::OK
    );
    assert_eq!(
        push(&pusher, "?source=apiserver-2", batch(&["b-1"])).await,
        StatusCode::OK
    );
    // Malformed: a 400, counted for the source it named.
    assert_eq!(
        push(&pusher, "?source=apiserver-2", "{not json".to_owned()).await,
        StatusCode::BAD_REQUEST
    );
    // A push nobody admitted is nobody's source.
    let stranger = srv.client(Some("not-a-push-token"));
    assert_eq!(
        push(&stranger, "?source=intruder", batch(&["x"])).await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn each_source_is_counted_and_served_as_objects_and_tables() {
    let srv = TestServer::start(&[]).await;
    two_sources(&srv).await;
    let admin = srv.client(Some(ADMIN_TOKEN));

    let (code, list) = admin.get_json(SOURCES).await;
    assert_eq!(code, StatusCode::OK, "{list}");
    assert_eq!(list["kind"], "SourceList");
    assert_eq!(list["apiVersion"], "audit.k8s.io/v1alpha1");
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["apiserver-1", "apiserver-2"], "no intruder");
    let list_rv: u64 = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    let (code, one) = admin.get_json(&format!("{SOURCES}/apiserver-1")).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(one["kind"], "Source");
    let st = &one["status"];
    assert_eq!(st["acceptedEvents"], 2);
    assert_eq!(st["acceptedBatches"], 1);
    assert!(st["acceptedBytes"].as_u64().unwrap() > 100, "{st}");
    assert_eq!(st["refusedBatches"], 0);
    assert_eq!(st["retriedBatches"], 0);
    assert!(st["firstPushTime"].is_string() && st["lastPushTime"].is_string());
    assert_eq!(ready(&one), ("True".into(), "Pushing".into()));
    let rv: u64 = one["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(rv <= list_rv);

    let (_, two) = admin.get_json(&format!("{SOURCES}/apiserver-2")).await;
    let st = &two["status"];
    assert_eq!(st["acceptedEvents"], 1);
    assert_eq!(st["refusedBatches"], 1);
    assert_eq!(
        st["refusedByCode"],
        serde_json::json!([{"code": 400, "batches": 1}])
    );
    assert_eq!(st["lastError"]["code"], 400);
    assert!(
        st["lastError"]["message"]
            .as_str()
            .unwrap()
            .contains("not an audit EventList"),
        "{st}"
    );

    // Not there, and not namespaced: kube-apiserver's NotFound.
    let (code, status) = admin.get_json(&format!("{SOURCES}/nope")).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_eq!(
        status["message"],
        r#"sources.audit.k8s.io "nope" not found"#
    );
    let (code, _) = admin
        .get_json("/apis/audit.k8s.io/v1alpha1/namespaces/team-a/sources")
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    // Read-only.
    let resp = admin
        .send(
            http::Method::DELETE,
            &format!("{SOURCES}/apiserver-1"),
            &[],
            "",
        )
        .await;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);

    // The Table kubectl asks for.
    let (code, table) = admin.get_json_with(SOURCES, &[("accept", TABLE)]).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(table["kind"], "Table");
    let columns: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["priority"] == 0)
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        columns,
        ["Name", "Ready", "Last Push", "Events/s", "Retries", "Age"]
    );
    assert_eq!(table["rows"][1]["cells"][0], "apiserver-2");
    assert_eq!(table["rows"][1]["cells"][1], "True");
    assert_eq!(
        table["rows"][1]["object"]["metadata"]["name"],
        "apiserver-2"
    );

    // The gauge of each.
    let (_, m) = admin.get("/metrics").await;
    for name in ["apiserver-1", "apiserver-2"] {
        let series = format!("kube_audit_stream_source_ready{{source=\"{name}\"}}");
        assert_eq!(metric(&m, &series), Some(1.0), "{series}");
    }
}

#[tokio::test]
async fn sources_are_authorized_like_any_resource() {
    let srv = TestServer::start(&[]).await;
    two_sources(&srv).await;
    let alice = srv.client(Some(ALICE_TOKEN));
    for (path, verb) in [
        (SOURCES.to_owned(), "list"),
        (format!("{SOURCES}/apiserver-1"), "get"),
        (format!("{SOURCES}?watch=1"), "watch"),
    ] {
        let (code, status) = alice.get_json(&path).await;
        assert_eq!(code, StatusCode::FORBIDDEN, "{path}: {status}");
        let message = status["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!(
                r#"sources.audit.k8s.io{} is forbidden: User "alice" cannot {verb} resource "sources" in API group "audit.k8s.io" at the cluster scope"#,
                if verb == "get" { " \"apiserver-1\"" } else { "" }
            )),
            "{message}"
        );
    }
    // Anonymous: 401.
    let (code, _) = srv.client(None).get_json(SOURCES).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_watch_sends_each_source_then_its_changes() {
    let srv = TestServer::start(&[]).await;
    let admin = srv.client(Some(ADMIN_TOKEN));
    let pusher = srv.client(Some(PUSH_TOKEN));
    assert_eq!(push(&pusher, "", batch(&["a-1"])).await, StatusCode::OK);

    let mut w = admin
        .watch(&format!("{SOURCES}?watch=1&allowWatchBookmarks=true"))
        .await;
    let first = w.next().await.unwrap();
    assert_eq!(first["type"], "ADDED");
    assert_eq!(first["object"]["metadata"]["name"], "apiserver-1");
    assert_eq!(first["object"]["status"]["acceptedEvents"], 1);

    assert_eq!(
        push(&pusher, "", batch(&["a-2", "a-3"])).await,
        StatusCode::OK
    );
    assert_eq!(
        push(&pusher, "?source=apiserver-2", batch(&["b-1"])).await,
        StatusCode::OK
    );
    // apiserver-1 MODIFIED with its new count, apiserver-2 ADDED (in one tick or two).
    let mut seen_modified = false;
    let mut seen_added = false;
    while !(seen_modified && seen_added) {
        let ev = w.next().await.expect("the watch goes on");
        let name = ev["object"]["metadata"]["name"]
            .as_str()
            .unwrap_or_default();
        match (ev["type"].as_str().unwrap(), name) {
            ("MODIFIED", "apiserver-1") if ev["object"]["status"]["acceptedEvents"] == 3 => {
                seen_modified = true
            }
            ("ADDED", "apiserver-2") => seen_added = true,
            ("MODIFIED", _) | ("BOOKMARK", _) => {}
            other => panic!("unexpected {other:?}: {ev}"),
        }
    }

    // From a LIST's resourceVersion: nothing already listed is sent again; the next
    // change is.
    let (_, list) = admin.get_json(SOURCES).await;
    let rv = list["metadata"]["resourceVersion"].as_str().unwrap();
    let mut from = admin
        .watch(&format!("{SOURCES}?watch=1&resourceVersion={rv}"))
        .await;
    assert_eq!(
        push(&pusher, "?source=apiserver-2", batch(&["b-2"])).await,
        StatusCode::OK
    );
    // (Each source's rate also moves, a tick at a time, for a minute after it pushed.)
    loop {
        let ev = from.next().await.unwrap();
        assert_eq!(ev["type"], "MODIFIED", "{ev}");
        if ev["object"]["metadata"]["name"] == "apiserver-2"
            && ev["object"]["status"]["acceptedEvents"] == 2
        {
            break;
        }
    }

    // A WatchList: every source, then the bookmark that ends the initial events.
    let mut list_watch = admin
        .watch(&format!(
            "{SOURCES}?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"
        ))
        .await;
    let added = [
        list_watch.next().await.unwrap(),
        list_watch.next().await.unwrap(),
    ];
    assert!(added.iter().all(|e| e["type"] == "ADDED"));
    let end = list_watch.next().await.unwrap();
    assert_eq!(end["type"], "BOOKMARK");
    assert_eq!(
        end["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    assert_eq!(end["object"]["kind"], "Source");

    // One source by name, as `kubectl get NAME -w` asks; other fields are refused.
    let mut one = admin
        .watch(&format!(
            "{SOURCES}?watch=1&fieldSelector=metadata.name%3Dapiserver-2"
        ))
        .await;
    let ev = one.next().await.unwrap();
    assert_eq!(ev["object"]["metadata"]["name"], "apiserver-2");
    let (code, _) = admin
        .get_json(&format!("{SOURCES}?fieldSelector=verb%3Dget"))
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    // timeoutSeconds ends it.
    let mut short = admin
        .watch(&format!("{SOURCES}?watch=1&timeoutSeconds=1"))
        .await;
    short.added(2).await;
    while short.next().await.is_some() {}
}

#[tokio::test]
async fn a_silent_source_turns_not_ready() {
    let srv = TestServer::start(&["--source-silent-after", "1s"]).await;
    let admin = srv.client(Some(ADMIN_TOKEN));
    let pusher = srv.client(Some(PUSH_TOKEN));
    assert_eq!(push(&pusher, "", batch(&["a-1"])).await, StatusCode::OK);
    let mut w = admin.watch(&format!("{SOURCES}?watch=1")).await;
    let added = w.next().await.unwrap();
    assert_eq!(ready(&added["object"]), ("True".into(), "Pushing".into()));
    // Once a second has passed without a push: MODIFIED, Ready False, reason Silent.
    let silent = loop {
        let ev = w.next().await.expect("the watch goes on");
        if ready(&ev["object"]).0 == "False" {
            break ev;
        }
    };
    assert_eq!(silent["type"], "MODIFIED");
    assert_eq!(ready(&silent["object"]).1, "Silent");
    let condition = &silent["object"]["status"]["conditions"][0];
    assert!(
        condition["message"]
            .as_str()
            .unwrap()
            .contains("--source-silent-after=1s"),
        "{condition}"
    );
    assert!(
        condition["lastTransitionTime"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    let (_, m) = admin.get("/metrics").await;
    assert_eq!(
        metric(
            &m,
            r#"kube_audit_stream_source_ready{source="apiserver-1"}"#
        ),
        Some(0.0)
    );
    // It pushes again: Ready again.
    assert_eq!(push(&pusher, "", batch(&["a-2"])).await, StatusCode::OK);
    eventually("the source to be ready again", || async {
        let (_, s) = admin.get_json(&format!("{SOURCES}/apiserver-1")).await;
        ready(&s).0 == "True"
    })
    .await;
}

#[tokio::test]
async fn kubectl_gets_sources_as_a_built_in_resource() {
    let srv = TestServer::start(&[]).await;
    two_sources(&srv).await;
    let k = Kubectl::new("kubectl".into(), &srv);

    let (ok, out, err) = k
        .run(
            Some(ADMIN_TOKEN),
            &["api-resources", "--api-group=audit.k8s.io"],
        )
        .await;
    assert!(ok, "{err}");
    assert!(
        out.lines().any(|l| l.starts_with("sources ")
            && l.contains("audit.k8s.io/v1alpha1")
            && l.contains("false")
            && l.ends_with("Source")),
        "{out}"
    );

    let (ok, out, err) = k
        .run(Some(ADMIN_TOKEN), &["get", "sources.audit.k8s.io"])
        .await;
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    let header: Vec<&str> = lines[0]
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        header,
        ["NAME", "READY", "LAST PUSH", "EVENTS/S", "RETRIES", "AGE"],
        "{out}"
    );
    assert_eq!(lines.len(), 3, "{out}");
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(&row[..2], ["apiserver-1", "True"], "{out}");
    assert!(row[2].ends_with('s'), "LAST PUSH is an age: {out}");
    assert_eq!(row[4], "0", "no retries: {out}");
    assert!(lines[2].starts_with("apiserver-2 "), "{out}");

    let (ok, out, err) = k
        .run(
            Some(ADMIN_TOKEN),
            &["get", "sources.audit.k8s.io", "-o", "wide"],
        )
        .await;
    assert!(ok, "{err}");
    assert!(out.lines().next().unwrap().contains("LAST ERROR"), "{out}");
    assert!(
        out.contains("400 the body is not an audit EventList"),
        "{out}"
    );

    let (ok, out, err) = k
        .run(
            Some(ADMIN_TOKEN),
            &["get", "sources.audit.k8s.io", "apiserver-2", "-o", "json"],
        )
        .await;
    assert!(ok, "{err}");
    let object: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(object["kind"], "Source");
    assert_eq!(object["status"]["refusedBatches"], 1);

    // alice may not list sources.
    let (ok, _, err) = k
        .run(Some(ALICE_TOKEN), &["get", "sources.audit.k8s.io"])
        .await;
    assert!(!ok);
    assert!(
        err.contains(r#"Error from server (Forbidden): sources.audit.k8s.io is forbidden: User "alice" cannot list resource "sources" in API group "audit.k8s.io" at the cluster scope"#),
        "{err}"
    );

    // -w: the rows, then a row for the new source.
    let mut child = k
        .command(Some(ADMIN_TOKEN), &["get", "sources.audit.k8s.io", "-w"])
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async || {
        tokio::time::timeout(DEADLINE, lines.next_line())
            .await
            .expect("a line from kubectl get -w")
            .unwrap()
            .expect("kubectl get -w ended")
    };
    assert!(next().await.starts_with("NAME"));
    assert!(next().await.starts_with("apiserver-1 "));
    assert!(next().await.starts_with("apiserver-2 "));
    let pusher = srv.client(Some(PUSH_TOKEN));
    assert_eq!(
        push(&pusher, "?source=apiserver-3", batch(&["c-1"])).await,
        StatusCode::OK
    );
    loop {
        let line = next().await;
        if line.starts_with("apiserver-3 ") {
            assert!(line.contains(" True "), "{line}");
            break;
        }
    }
    child.kill().await.unwrap();
}

/// The figures of a source that must be the same on every replica.
fn figures(source: &Value) -> Value {
    let st = &source["status"];
    let condition = &st["conditions"][0];
    serde_json::json!({
        "name": source["metadata"]["name"],
        "created": source["metadata"]["creationTimestamp"],
        "events": st["acceptedEvents"],
        "batches": st["acceptedBatches"],
        "bytes": st["acceptedBytes"],
        "retried": st["retriedBatches"],
        "refused": st["refusedBatches"],
        "byCode": st["refusedByCode"],
        "lastError": st["lastError"],
        "first": st["firstPushTime"],
        "last": st["lastPushTime"],
        "replicas": st["replicas"],
        "ready": condition["status"],
        "since": condition["lastTransitionTime"],
    })
}

/// The `--dev` example administrator.
const DEV_ADMIN: &str = "admin-dev-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_answer_with_the_same_figures() {
    let nats = NatsServer::start();
    let rs: Vec<ServerProcess> = (0..3)
        .map(|_| ServerProcess::start(&["--bus=nats", "--nats-url", &nats.url()]))
        .collect();
    for r in &rs {
        let probe = r.client(None);
        eventually("the replica to be ready", || async {
            probe.get("/readyz").await.0 == StatusCode::OK
        })
        .await;
    }
    // --dev: pushes on loopback need no credentials; each names its source.
    let client = |i: usize| rs[i].client(None);
    let one = batch(&["n-1", "n-2"]);
    assert_eq!(
        push(&client(0), "?source=api-a", one.clone()).await,
        StatusCode::OK
    );
    assert_eq!(
        push(&client(1), "?source=api-b", batch(&["n-3"])).await,
        StatusCode::OK
    );
    // The webhook retries api-a's batch on another replica: JetStream recognises it.
    assert_eq!(push(&client(2), "?source=api-a", one).await, StatusCode::OK);
    // Refused on the third replica only.
    assert_eq!(
        push(&client(2), "?source=api-b", "[]".to_owned()).await,
        StatusCode::BAD_REQUEST
    );

    let expected = |figures: &[Value]| {
        figures.len() == 2
            && figures[0]["events"] == 2
            && figures[0]["batches"] == 1
            && figures[0]["retried"] == 1
            && figures[0]["refused"] == 0
            && figures[1]["events"] == 1
            && figures[1]["refused"] == 1
            && figures[1]["byCode"] == serde_json::json!([{"code": 400, "batches": 1}])
    };
    let list = async |r: &ServerProcess| -> Vec<Value> {
        let (code, list) = r.client(Some(DEV_ADMIN)).get_json(SOURCES).await;
        assert_eq!(code, StatusCode::OK, "{list}");
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(figures)
            .collect()
    };
    let start = tokio::time::Instant::now();
    for r in &rs {
        loop {
            let got = list(r).await;
            if expected(&got) {
                break;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "a replica's figures: {got:#?}\n{}",
                r.log().join("\n")
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    // Taken again once every replica has them all: the same figures everywhere.
    let mut again = Vec::new();
    for r in &rs {
        again.push(list(r).await);
    }
    assert_eq!(again[0], again[1], "replicas 1 and 2");
    assert_eq!(again[0], again[2], "replicas 1 and 3");
    assert!(expected(&again[0]), "{:#?}", again[0]);
    assert_eq!(again[0][0]["ready"], "True");
    assert_eq!(again[0][0]["replicas"], 2, "api-a pushed to two replicas");
}
