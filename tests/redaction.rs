//! What an unprivileged watcher may see: redaction at ingest, and a namespace's own
//! creation. RequestResponse pushes of a Secret's create, update, merge and JSON patch,
//! get and list, a TokenRequest and a TokenReview (the envelopes of the real fixtures,
//! the bodies in kube-apiserver's shapes) leave no secret value in any byte served (LIST,
//! Table, GET, WatchList, watch), in NATS's stream, or in the log; a key turns values
//! into HMACs (equal values, equal hashes); `--redact=` restores them; other events'
//! bodies are served byte for byte.

mod support;

use http::StatusCode;
use serde_json::Value;
use support::nats::NatsServer;
use support::process::ServerProcess;
use support::server::{ADMIN_TOKEN, ALICE_TOKEN, BOB_TOKEN, TestServer};
use support::{eventually, fixtures};

const EVENTS: &str = "/apis/audit.k8s.io/v1alpha1/events";
const TEAM_A: &str = "/apis/audit.k8s.io/v1alpha1/namespaces/team-a/namespacedevents";
const TEAM_B: &str = "/apis/audit.k8s.io/v1alpha1/namespaces/team-b/namespacedevents";
const TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io";

/// What must never be served: base64 values of `data`, plain `stringData`, tokens, and
/// the last-applied annotation's copy of the data.
const PASSWORD_B64: &str = "czNjcjN0LXBhc3N3b3JkLTE="; // "s3cr3t-password-1"
const PATCHED_B64: &str = "cGF0Y2hlZC1zM2NyM3Q="; // "patched-s3cr3t"
const JSON_PATCHED_B64: &str = "anNvbi1wYXRjaGVkLXMzY3IzdA=="; // "json-patched-s3cr3t"
const STRING_DATA: &str = "plain-string-s3cr3t";
/// A JSON Patch's value whose operation names `path` twice, the last a Secret's key.
const PATH_TWICE: &str = "path-twice-s3cr3t";
const SA_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.c2VydmljZWFjY291bnQtdG9rZW4.sig-0f1e2d";
const REVIEWED_TOKEN: &str = "reviewed-bearer-t0ken-8c7b";
const SECRETS: [&str; 7] = [
    PASSWORD_B64,
    PATCHED_B64,
    JSON_PATCHED_B64,
    STRING_DATA,
    PATH_TWICE,
    SA_TOKEN,
    REVIEWED_TOKEN,
];

/// The falco fixture's Secret create (Metadata level), raised to RequestResponse with
/// `bodies`, in namespace team-a, under another auditID and verb.
fn secret_event(audit_id: &str, verb: &str, name: Option<&str>, bodies: &str) -> String {
    let text = String::from_utf8(fixtures::read("falco/create_secret.json")).unwrap();
    let mut v: Value = serde_json::from_str(&text).unwrap();
    v["level"] = "RequestResponse".into();
    v["auditID"] = audit_id.into();
    v["verb"] = verb.into();
    v["objectRef"]["namespace"] = "team-a".into();
    v["requestURI"] = "/api/v1/namespaces/team-a/secrets".into();
    match name {
        Some(n) => v["objectRef"]["name"] = n.into(),
        None => {
            v["objectRef"].as_object_mut().unwrap().remove("name");
        }
    }
    let bodies: Value = serde_json::from_str(bodies).unwrap();
    for (k, body) in bodies.as_object().unwrap() {
        v[k] = body.clone();
    }
    v.to_string()
}

fn secret_object(password: &str) -> String {
    let applied = format!(
        r#"{{"apiVersion":"v1","data":{{"password":"{password}"}},"kind":"Secret","metadata":{{"annotations":{{}},"name":"example-secret","namespace":"team-a"}},"type":"Opaque"}}"#
    );
    serde_json::json!({
        "kind": "Secret",
        "apiVersion": "v1",
        "metadata": {
            "name": "example-secret",
            "namespace": "team-a",
            "uid": "0b6a4f1e-3a53-4c4c-9b3e-4f3c3e0a5d71",
            "resourceVersion": "4242",
            "creationTimestamp": "2020-04-21T17:57:05Z",
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": format!("{applied}\n")}
        },
        "data": {"password": password},
        "type": "Opaque"
    })
    .to_string()
}

/// Every Secret shape kube-apiserver records, a TokenRequest, a TokenReview.
fn sensitive_events() -> Vec<String> {
    let secret = secret_object(PASSWORD_B64);
    let created = format!(
        r#"{{"kind":"Secret","apiVersion":"v1","metadata":{{"name":"example-secret","namespace":"team-a","creationTimestamp":null}},"data":{{"password":"{PASSWORD_B64}"}},"stringData":{{"extra":"{STRING_DATA}"}},"type":"Opaque"}}"#
    );
    let list = format!(
        r#"{{"kind":"SecretList","apiVersion":"v1","metadata":{{"resourceVersion":"4243"}},"items":[{secret}]}}"#
    );
    let token_request = format!(
        r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"RequestResponse","auditID":"tokenrequest-1","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/team-a/serviceaccounts/builder/token","verb":"create","user":{{"username":"system:kube-controller-manager","groups":["system:authenticated"]}},"sourceIPs":["10.0.0.7"],"objectRef":{{"resource":"serviceaccounts","namespace":"team-a","name":"builder","apiVersion":"v1","subresource":"token"}},"responseStatus":{{"metadata":{{}},"code":201}},"requestObject":{{"kind":"TokenRequest","apiVersion":"authentication.k8s.io/v1","metadata":{{"creationTimestamp":null}},"spec":{{"audiences":["https://kubernetes.default.svc"],"expirationSeconds":3607,"boundObjectRef":null}},"status":{{"token":"","expirationTimestamp":null}}}},"responseObject":{{"kind":"TokenRequest","apiVersion":"authentication.k8s.io/v1","metadata":{{"name":"builder","namespace":"team-a","creationTimestamp":"2026-01-01T10:00:00Z"}},"spec":{{"audiences":["https://kubernetes.default.svc"],"expirationSeconds":3607,"boundObjectRef":null}},"status":{{"token":"{SA_TOKEN}","expirationTimestamp":"2026-01-01T11:00:07Z"}}}},"requestReceivedTimestamp":"2026-01-01T10:00:00.000000Z","stageTimestamp":"2026-01-01T10:00:00.002000Z"}}"#
    );
    let token_review = format!(
        r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"RequestResponse","auditID":"tokenreview-1","stage":"ResponseComplete","requestURI":"/apis/authentication.k8s.io/v1/tokenreviews","verb":"create","user":{{"username":"system:serviceaccount:kube-system:metrics-server","groups":["system:authenticated"]}},"sourceIPs":["10.0.0.8"],"objectRef":{{"resource":"tokenreviews","apiGroup":"authentication.k8s.io","apiVersion":"v1"}},"responseStatus":{{"metadata":{{}},"code":201}},"requestObject":{{"kind":"TokenReview","apiVersion":"authentication.k8s.io/v1","metadata":{{"creationTimestamp":null}},"spec":{{"token":"{REVIEWED_TOKEN}"}},"status":{{"user":{{}}}}}},"responseObject":{{"kind":"TokenReview","apiVersion":"authentication.k8s.io/v1","metadata":{{"creationTimestamp":null}},"spec":{{"token":"{REVIEWED_TOKEN}"}},"status":{{"authenticated":true,"user":{{"username":"alice","groups":["system:authenticated"]}}}}}},"requestReceivedTimestamp":"2026-01-01T10:00:01.000000Z","stageTimestamp":"2026-01-01T10:00:01.002000Z"}}"#
    );
    vec![
        secret_event(
            "secret-create",
            "create",
            None,
            &format!(r#"{{"requestObject":{created},"responseObject":{secret}}}"#),
        ),
        secret_event(
            "secret-update",
            "update",
            Some("example-secret"),
            &format!(r#"{{"requestObject":{secret},"responseObject":{secret}}}"#),
        ),
        secret_event(
            "secret-merge-patch",
            "patch",
            Some("example-secret"),
            &format!(
                r#"{{"requestObject":{{"data":{{"password":"{PATCHED_B64}"}}}},"responseObject":{}}}"#,
                secret_object(PATCHED_B64)
            ),
        ),
        secret_event(
            "secret-json-patch",
            "patch",
            Some("example-secret"),
            &format!(
                r#"{{"requestObject":[{{"op":"replace","path":"/data/password","value":"{JSON_PATCHED_B64}"}}],"responseObject":{}}}"#,
                secret_object(JSON_PATCHED_B64)
            ),
        ),
        secret_event(
            "secret-get",
            "get",
            Some("example-secret"),
            &format!(r#"{{"responseObject":{secret}}}"#),
        ),
        secret_event(
            "secret-list",
            "list",
            None,
            &format!(r#"{{"responseObject":{list}}}"#),
        ),
        token_request,
        token_review,
        // Last, so that the tests' indexes of the others hold. Its request body is put in
        // as text: a JSON value would keep one of the two `path`s.
        {
            let mut event = secret_event(
                "secret-json-patch-path-twice",
                "patch",
                Some("example-secret"),
                &format!(r#"{{"responseObject":{secret}}}"#),
            );
            event.insert_str(
                1,
                &format!(
                    r#""requestObject":[{{"op":"add","path":"/metadata/labels/x","path":"/stringData/extra","value":"{PATH_TWICE}"}}],"#
                ),
            );
            event
        },
    ]
}

fn assert_clean(what: &str, served: &str) {
    for s in SECRETS {
        assert!(!served.contains(s), "{what} serves {s:?}");
    }
}

/// Everything an admin and alice can be served of the window: LIST, a Table with the
/// objects, every event by name, WatchList, and a watch from the start.
async fn everything_served(server: &TestServer, n: usize) -> String {
    let mut out = String::new();
    for token in [ADMIN_TOKEN, ALICE_TOKEN] {
        let client = server.client(Some(token));
        let path = if token == ADMIN_TOKEN { EVENTS } else { TEAM_A };
        let (code, body) = client.get(path).await;
        assert_eq!(code, StatusCode::OK);
        out.push_str(std::str::from_utf8(&body).unwrap());
        let list: Value = serde_json::from_slice(&body).unwrap();
        for item in list["items"].as_array().unwrap() {
            let name = item["metadata"]["name"].as_str().unwrap();
            if let Some(ns) = item["metadata"]["namespace"].as_str() {
                let (code, one) = client
                    .get(&format!(
                        "/apis/audit.k8s.io/v1alpha1/namespaces/{ns}/namespacedevents/{name}"
                    ))
                    .await;
                if token == ADMIN_TOKEN || ns == "team-a" {
                    assert_eq!(code, StatusCode::OK, "{name}");
                }
                out.push_str(&String::from_utf8_lossy(&one));
            }
        }
        let resp = client
            .send(
                http::Method::GET,
                &format!("{path}?includeObject=Object"),
                &[("accept", TABLE)],
                bytes::Bytes::new(),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        let table = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        let table_text = String::from_utf8(table.to_vec()).unwrap();
        assert!(table_text.contains("\"rows\""), "{table_text}");
        out.push_str(&table_text);
        let mut watch = client
            .watch(&format!(
                "{path}?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"
            ))
            .await;
        loop {
            let ev = watch.next().await.expect("watch list ended");
            out.push_str(&ev.to_string());
            if ev["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"] == "true" {
                break;
            }
        }
        let mut watch = client
            .watch(&format!("{path}?watch=1&resourceVersion={}", server.rv(0)))
            .await;
        let want = if token == ADMIN_TOKEN { n } else { 7 };
        for ev in watch.added(want).await {
            out.push_str(&ev.to_string());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_value_is_served_and_everything_else_is_byte_for_byte() {
    let server = TestServer::start(&[]).await;
    let sensitive = sensitive_events();
    // Real events around them: their bodies must come out as they went in.
    let others: Vec<String> = fixtures::lines("all-events.jsonl")
        .into_iter()
        .filter(|l| {
            ![
                "last-applied-configuration",
                "\"secrets\"",
                "tokenreviews",
                "\"token\"",
            ]
            .iter()
            .any(|s| l.contains(s))
        })
        .take(40)
        .collect();
    let mut all = sensitive.clone();
    all.extend(others.iter().cloned());
    server.push_events(&all).await;

    let served = everything_served(&server, all.len()).await;
    assert_clean("the server", &served);

    // Each sensitive event says it was redacted, and keeps what is not secret.
    let (_, list) = server.client(Some(ADMIN_TOKEN)).get_json(EVENTS).await;
    let items = list["items"].as_array().unwrap();
    for item in &items[..sensitive.len()] {
        assert_eq!(
            item["annotations"]["audit.k8s.io/redacted"], "true",
            "{}",
            item["auditID"]
        );
    }
    assert_eq!(items[0]["requestObject"]["data"]["password"], "<redacted>");
    assert_eq!(
        items[0]["requestObject"]["stringData"]["extra"],
        "<redacted>"
    );
    assert_eq!(items[0]["responseObject"]["type"], "Opaque");
    assert_eq!(
        items[0]["responseObject"]["metadata"]["uid"],
        "0b6a4f1e-3a53-4c4c-9b3e-4f3c3e0a5d71"
    );
    assert_eq!(items[3]["requestObject"][0]["path"], "/data/password");
    assert_eq!(items[6]["responseObject"]["status"]["token"], "<redacted>");
    assert_eq!(
        items[6]["responseObject"]["status"]["expirationTimestamp"],
        "2026-01-01T11:00:07Z"
    );
    assert_eq!(items[7]["requestObject"]["spec"]["token"], "<redacted>");
    assert_eq!(
        items[7]["responseObject"]["status"]["user"]["username"],
        "alice"
    );

    // The other events: not marked, and each body's bytes are in the served bytes.
    let (_, raw) = server.client(Some(ADMIN_TOKEN)).get(EVENTS).await;
    let raw = String::from_utf8(raw.to_vec()).unwrap();
    for (line, item) in others.iter().zip(&items[sensitive.len()..]) {
        assert!(item["annotations"].get("audit.k8s.io/redacted").is_none());
        let original: serde_json::Map<String, Value> = serde_json::from_str(line).unwrap();
        for body in ["requestObject", "responseObject"] {
            if let Some(v) = original.get(body) {
                assert_eq!(&item[body], v);
                let text = raw_member(line, body);
                assert!(
                    raw.contains(text),
                    "{body} of {} not byte for byte",
                    item["auditID"]
                );
            }
        }
    }
    let metrics = String::from_utf8(
        server
            .client(Some(ADMIN_TOKEN))
            .get("/metrics")
            .await
            .1
            .to_vec(),
    )
    .unwrap();
    for (rule, n) in [
        ("secret-data", 7),
        ("tokens", 2),
        ("last-applied-configuration", 7),
    ] {
        let series =
            format!("kube_audit_stream_ingest_redacted_events_total{{rule=\"{rule}\"}} {n}");
        assert!(metrics.contains(&series), "{series} in\n{metrics}");
    }
}

/// The raw text of a member of a JSON object line, as pushed.
fn raw_member<'a>(line: &'a str, key: &str) -> &'a str {
    let members: std::collections::HashMap<String, &serde_json::value::RawValue> =
        serde_json::from_str(line).unwrap();
    let raw = members[key].get();
    let start = line.find(raw).unwrap();
    &line[start..start + raw.len()]
}

#[tokio::test]
async fn a_key_hashes_values_and_an_empty_list_turns_redaction_off() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("redaction.key");
    std::fs::write(&key, "a-long-random-key\n").unwrap();
    let hashing = TestServer::start(&["--redaction-key-file", key.to_str().unwrap()]).await;
    let events = sensitive_events();
    hashing.push_events(&events).await;
    let (_, list) = hashing.client(Some(ADMIN_TOKEN)).get_json(EVENTS).await;
    assert_clean("the hashing server", &list.to_string());
    let items = list["items"].as_array().unwrap();
    let hash = |v: &Value| v.as_str().unwrap().to_owned();
    let created = hash(&items[0]["requestObject"]["data"]["password"]);
    assert!(
        created.starts_with("hmac-sha256:") && created.len() == 76,
        "{created}"
    );
    // The same value in another event and another body: the same hash.
    assert_eq!(
        created,
        hash(&items[4]["responseObject"]["data"]["password"])
    );
    assert_eq!(
        created,
        hash(&items[5]["responseObject"]["items"][0]["data"]["password"])
    );
    // Another value: another hash.
    assert_ne!(
        created,
        hash(&items[2]["requestObject"]["data"]["password"])
    );

    let off = TestServer::start(&["--redact="]).await;
    off.push_events(&events).await;
    let (_, list) = off.client(Some(ADMIN_TOKEN)).get_json(EVENTS).await;
    let text = list.to_string();
    for s in SECRETS {
        assert!(text.contains(s), "--redact= keeps {s:?}");
    }
    assert!(!text.contains("audit.k8s.io/redacted"));
}

#[tokio::test]
async fn bad_redaction_flags_fail_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.key");
    std::fs::write(&empty, "\n").unwrap();
    for (args, want) in [
        (
            vec!["--redact=secrets"],
            "--redact: unknown rule \"secrets\"",
        ),
        (
            vec!["--redaction-key-file", "/nonexistent/key"],
            "reading /nonexistent/key",
        ),
        (
            vec!["--redaction-key-file", empty.to_str().unwrap()],
            "--redaction-key-file: ",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kube-audit-stream"))
            .arg("serve")
            .arg("--dev")
            .arg("--secure-port=0")
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
}

/// A namespace's create (the fixture's shape: a name, no namespace) reaches that
/// namespace's owner, by watch and LIST, and nobody else's namespace.
#[tokio::test]
async fn a_namespace_create_reaches_its_owners() {
    let server = TestServer::start(&[]).await;
    let text =
        String::from_utf8(fixtures::read("falco/some-user_creates_namespace_foo.json")).unwrap();
    let create = text.trim().replace(r#""name":"foo""#, r#""name":"team-a""#);
    assert!(
        create
            .contains(r#""objectRef":{"resource":"namespaces","name":"team-a","apiVersion":"v1"}"#)
    );
    let mut alice = server
        .client(Some(ALICE_TOKEN))
        .watch(&format!("{TEAM_A}?watch=1"))
        .await;
    server
        .push_events(&[create, fixtures::event("after", Some("team-b"), "get")])
        .await;
    let got = alice.added(1).await;
    assert_eq!(got[0]["verb"], "create");
    assert_eq!(got[0]["metadata"]["namespace"], "team-a");
    assert!(got[0]["objectRef"].get("namespace").is_none());
    let (code, list) = server.client(Some(ALICE_TOKEN)).get_json(TEAM_A).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let (_, list) = server.client(Some(BOB_TOKEN)).get_json(TEAM_B).await;
    let verbs: Vec<&Value> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| &i["verb"])
        .collect();
    assert_eq!(verbs, ["get"], "team-b sees only its own event");
}

/// With `--bus=nats`, what NATS stores is redacted too (read back from the stream), and
/// the server's log carries no value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_and_the_log_hold_no_secret_value() {
    let nats = NatsServer::start();
    let replica = ServerProcess::start(&["--bus=nats", "--nats-url", &nats.url(), "-v", "5"]);
    let admin = replica.client(Some("admin-dev-token"));
    eventually("the replica to be ready", || async {
        admin.get("/readyz").await.0 == StatusCode::OK
    })
    .await;
    let events = sensitive_events();
    let (code, status) = replica
        .client(None)
        .push("", fixtures::event_list("audit.k8s.io/v1", &events))
        .await;
    assert_eq!(code, StatusCode::OK, "{status}");
    let (_, list) = admin.get_json(EVENTS).await;
    assert_eq!(list["items"].as_array().unwrap().len(), events.len());

    let client = async_nats::connect(nats.url()).await.unwrap();
    let stream = async_nats::jetstream::new(client)
        .get_stream("KUBE_AUDIT")
        .await
        .unwrap();
    let (first, last) = {
        let info = stream.get_info().await.unwrap();
        (info.state.first_sequence, info.state.last_sequence)
    };
    assert!(last >= first && last > 0, "the stream holds the push");
    let mut stored = Vec::new();
    for seq in first..=last {
        stored.extend_from_slice(&stream.get_raw_message(seq).await.unwrap().payload);
    }
    assert!(
        memchr::memmem::find(&stored, b"<redacted>").is_some(),
        "the stream holds the redacted events"
    );
    for s in SECRETS {
        assert!(
            memchr::memmem::find(&stored, s.as_bytes()).is_none(),
            "NATS holds {s:?}"
        );
    }
    assert_clean("the log", &replica.log().join("\n"));
}
