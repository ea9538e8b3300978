//! POST /ingest, black-box: real fixtures in, the exact events out; bad bodies, size
//! limits and pusher authentication answered with Status.

mod support;

use http::{Method, StatusCode};
use support::fixtures;
use support::server::{ADMIN_TOKEN, ALICE_TOKEN, PUSH_TOKEN, TestServer};

#[tokio::test]
async fn every_fixture_event_arrives_once_in_order() {
    let srv = TestServer::start(&[]).await;
    let mut watch = srv
        .client(Some(ADMIN_TOKEN))
        .watch("/apis/audit.k8s.io/v1alpha1/events?watch=1")
        .await;
    let pusher = srv.client(Some(PUSH_TOKEN));
    let lines = fixtures::lines("all-events.jsonl");
    for batch in lines.chunks(400) {
        let (code, status) = pusher
            .push(
                "?source=apiserver-a",
                fixtures::event_list("audit.k8s.io/v1", batch),
            )
            .await;
        assert_eq!(code, StatusCode::OK, "{status}");
        assert_eq!(status["status"], "Success");
    }
    let got = watch.added(lines.len()).await;
    let want = fixtures::ids(&lines);
    let got_ids: Vec<(String, String)> = got
        .iter()
        .map(|o| {
            (
                o["auditID"].as_str().unwrap().to_owned(),
                o["stage"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(got_ids, want, "every event, once, in push order");
    let mut last_rv = 0u64;
    for (o, line) in got.iter().zip(&lines) {
        assert_eq!(o["apiVersion"], "audit.k8s.io/v1alpha1");
        assert_eq!(o["kind"], "Event");
        assert_eq!(o["annotations"]["audit.k8s.io/source"], "apiserver-a");
        let rv: u64 = o["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(rv > last_rv, "resourceVersions increase");
        last_rv = rv;
        let name = format!(
            "{}-{}",
            o["auditID"].as_str().unwrap(),
            o["stage"].as_str().unwrap().to_lowercase()
        );
        assert_eq!(o["metadata"]["name"], name.as_str());
        let original: serde_json::Value = serde_json::from_str(line).unwrap();
        let object_ref = &original["objectRef"];
        // A namespace's create names it only in objectRef.name: it belongs to it.
        let namespace = match (object_ref["resource"].as_str(), &object_ref["namespace"]) {
            (Some("namespaces"), serde_json::Value::Null)
                if object_ref.get("apiGroup").is_none() =>
            {
                &object_ref["name"]
            }
            (_, ns) => ns,
        };
        assert_eq!(&o["metadata"]["namespace"], namespace, "{name}");
        // Every field of the received event is kept (bodies of the >100 KiB ones aside,
        // and redacted ones: tests/redaction.rs checks what is kept of those).
        let truncated = o["annotations"]["audit.k8s.io/truncated"] == "true"
            || o["annotations"]["audit.k8s.io/redacted"] == "true";
        for (k, v) in original.as_object().unwrap() {
            if ["apiVersion", "kind", "annotations", "metadata"].contains(&k.as_str())
                || (truncated && ["requestObject", "responseObject"].contains(&k.as_str()))
            {
                continue;
            }
            assert_eq!(&o[k], v, "field {k} of {name}");
        }
    }
    // The two OpenShift events above --max-event-bytes (100 KiB) reach watchers truncated.
    let truncated: Vec<_> = got
        .iter()
        .filter(|o| o["annotations"]["audit.k8s.io/truncated"] == "true")
        .collect();
    assert_eq!(truncated.len(), 2);
    assert!(truncated.iter().all(|o| o.get("responseObject").is_none()));
}

#[tokio::test]
async fn malformed_bodies_get_400_and_the_server_stays_healthy() {
    let srv = TestServer::start(&[]).await;
    let pusher = srv.client(Some(PUSH_TOKEN));
    let mut watch = srv
        .client(Some(ADMIN_TOKEN))
        .watch("/apis/audit.k8s.io/v1alpha1/events?watch=1")
        .await;
    for body in [
        fixtures::read("falco/fal_01_003.json"),
        b"{\"kind\":\"EventList\",\"apiVersion\":\"audit.k8s.io/v1\",\"items\":[".to_vec(),
        fixtures::read("falco/create_secret.json"), // one Event, not an EventList
        b"\xff\xfe not json".to_vec(),
        // Found by fuzzing: a valid list with something after it, and an event whose
        // responseObject is there twice (its truncated form would keep one).
        format!(
            "{} {{}}",
            fixtures::event_list(
                "audit.k8s.io/v1",
                &[fixtures::event("trailing-1", None, "get")]
            )
        )
        .into_bytes(),
        fixtures::event_list(
            "audit.k8s.io/v1",
            &[fixtures::event("twice-1", None, "get").replacen(
                '{',
                r#"{"responseObject":{},"responseObject":{"a":1},"#,
                1,
            )],
        )
        .into_bytes(),
        // And a string escape that is half a surrogate pair (strict readers refuse it).
        fixtures::event_list(
            "audit.k8s.io/v1",
            &[fixtures::event("half-1", None, "get").replacen('{', r#"{"note":"\udadd","#, 1)],
        )
        .into_bytes(),
    ] {
        let (code, status) = pusher.push("", body).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{status}");
        assert_eq!(status["kind"], "Status");
        assert_eq!(status["reason"], "BadRequest");
        assert_eq!(status["code"], 400);
    }
    // A batch with one bad item publishes nothing of it.
    let good = fixtures::event("good-1", Some("team-a"), "get");
    let (code, _) = pusher
        .push(
            "",
            fixtures::event_list(
                "audit.k8s.io/v1",
                &[good.clone(), "{\"auditID\":\"x\"}".into()],
            ),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);

    assert_eq!(
        srv.client(None).get("/healthz").await,
        (StatusCode::OK, "ok".into())
    );
    let (code, _) = pusher
        .push(
            "",
            fixtures::event_list("audit.k8s.io/v1", &[fixtures::event("good-2", None, "get")]),
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    let first = watch.added(1).await;
    assert_eq!(
        first[0]["auditID"], "good-2",
        "nothing of the refused batches was published"
    );
}

#[tokio::test]
async fn v1beta1_event_lists_are_accepted() {
    let srv = TestServer::start(&[]).await;
    let mut watch = srv
        .client(Some(ADMIN_TOKEN))
        .watch("/apis/audit.k8s.io/v1alpha1/events?watch=1")
        .await;
    let lines = fixtures::lines("audit2rbac-demo-v1beta1.log");
    let (code, _) = srv
        .client(Some(PUSH_TOKEN))
        .push("", fixtures::event_list("audit.k8s.io/v1beta1", &lines))
        .await;
    assert_eq!(code, StatusCode::OK);
    let got = watch.added(lines.len()).await;
    assert!(
        got.iter()
            .all(|o| o["apiVersion"] == "audit.k8s.io/v1alpha1")
    );
    // v1beta1's own `timestamp` field is kept.
    assert!(got[0].get("timestamp").is_some());
    assert_eq!(got.len(), 37);
}

#[tokio::test]
async fn bodies_above_the_limit_get_413() {
    let srv = TestServer::start(&["--max-request-bytes", "2000"]).await;
    let pusher = srv.client(Some(PUSH_TOKEN));
    let lines = fixtures::lines("audit2rbac-demo.log");
    let big = fixtures::event_list("audit.k8s.io/v1", &lines);
    assert!(big.len() > 2000);
    let (code, status) = pusher.push("", big).await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(status["reason"], "RequestEntityTooLarge");
    assert_eq!(status["code"], 413);
    let (code, _) = pusher
        .push("", fixtures::event_list("audit.k8s.io/v1", &lines[..1]))
        .await;
    assert_eq!(code, StatusCode::OK);
}

#[tokio::test]
async fn only_pushers_may_push_and_the_source_is_theirs() {
    let srv = TestServer::start(&[]).await;
    let body = || fixtures::event_list("audit.k8s.io/v1", &[fixtures::event("p-1", None, "get")]);
    for token in [None, Some(ALICE_TOKEN), Some(ADMIN_TOKEN), Some("made-up")] {
        let (code, status) = srv.client(token).push("", body()).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED, "token {token:?}");
        assert_eq!(status["reason"], "Unauthorized");
    }
    // A pusher's token does not open the watch endpoints either.
    let (code, _) = srv
        .client(Some(PUSH_TOKEN))
        .get("/apis/audit.k8s.io/v1alpha1/events?watch=1")
        .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);

    let mut watch = srv
        .client(Some(ADMIN_TOKEN))
        .watch("/apis/audit.k8s.io/v1alpha1/events?watch=1")
        .await;
    let pusher = srv.client(Some(PUSH_TOKEN));
    assert_eq!(pusher.push("", body()).await.0, StatusCode::OK);
    assert_eq!(
        pusher.push("?source=node-2", body()).await.0,
        StatusCode::OK
    );
    let got = watch.added(2).await;
    assert_eq!(
        got[0]["annotations"]["audit.k8s.io/source"], "apiserver-1",
        "token user by default"
    );
    assert_eq!(got[1]["annotations"]["audit.k8s.io/source"], "node-2");
    let (code, status) = pusher.push("?source=%22quoted%22", body()).await;
    assert_eq!(
        (code, status["reason"].as_str()),
        (StatusCode::BAD_REQUEST, Some("BadRequest"))
    );

    let resp = pusher.send(Method::GET, "/ingest", &[], "").await;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn ingest_by_client_certificate() {
    let ingest_ca = support::pki::Ca::new("ingest-ca");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ingest-ca.crt");
    std::fs::write(&ca_file, ingest_ca.pem()).unwrap();
    let srv = TestServer::start(&[
        "--ingest-client-ca-file",
        ca_file.to_str().unwrap(),
        "--ingest-allowed-names",
        "apiserver-1,apiserver-2",
    ])
    .await;
    let mut watch = srv
        .client(Some(ADMIN_TOKEN))
        .watch("/apis/audit.k8s.io/v1alpha1/events?watch=1")
        .await;
    let body = || fixtures::event_list("audit.k8s.io/v1", &[fixtures::event("c-1", None, "get")]);

    let allowed = srv
        .client(None)
        .with_cert(ingest_ca.client("apiserver-2", &[]));
    assert_eq!(allowed.push("", body()).await.0, StatusCode::OK);
    let got = watch.added(1).await;
    assert_eq!(
        got[0]["annotations"]["audit.k8s.io/source"], "apiserver-2",
        "the CN names the source"
    );

    // Two CNs: the last one is the pusher, as Go's x509 (so kube-apiserver) reads it.
    let (code, status) = srv
        .client(None)
        .with_cert(ingest_ca.client_two_cns("apiserver-1", "intruder"))
        .push("", body())
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{status}");
    assert!(
        status["message"].as_str().unwrap().contains("\"intruder\""),
        "{status}"
    );
    let two = srv
        .client(None)
        .with_cert(ingest_ca.client_two_cns("intruder", "apiserver-1"));
    assert_eq!(two.push("", body()).await.0, StatusCode::OK);
    let got = watch.added(1).await;
    assert_eq!(got[0]["annotations"]["audit.k8s.io/source"], "apiserver-1");

    let (code, status) = srv
        .client(None)
        .with_cert(ingest_ca.client("intruder", &[]))
        .push("", body())
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    assert!(
        status["message"].as_str().unwrap().contains("\"intruder\""),
        "{status}"
    );

    let other_ca = support::pki::Ca::new("other-ca");
    let (code, _) = srv
        .client(None)
        .with_cert(other_ca.client("apiserver-1", &[]))
        .push("", body())
        .await;
    assert_eq!(
        code,
        StatusCode::UNAUTHORIZED,
        "a certificate from another CA is not trusted"
    );
    // The serving CA is not the ingest CA either.
    let (code, _) = srv
        .client(None)
        .with_cert(srv.ca.client("apiserver-1", &[]))
        .push("", body())
        .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
}

/// A refused push over HTTP/2 still gets its whole Status (curl, like the apiservers'
/// Go client, reports a reset stream if the server drops the unread body first).
#[tokio::test]
async fn refused_http2_pushes_get_their_status() {
    let srv = TestServer::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("batch.json");
    let lines = fixtures::lines("openshift-audit_in.log");
    std::fs::write(&body, fixtures::event_list("audit.k8s.io/v1", &lines)).unwrap();
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, srv.ca.pem()).unwrap();
    for _ in 0..10 {
        let out = tokio::process::Command::new("curl")
            .args(["--http2", "-sS", "--cacert", ca.to_str().unwrap()])
            .args(["-H", "Authorization: Bearer not-a-pusher", "--data-binary"])
            .arg(format!("@{}", body.display()))
            .arg(format!("https://localhost:{}/ingest", srv.addr.port()))
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "curl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(status["code"], 401);
        assert_eq!(status["reason"], "Unauthorized");
    }
}

/// Rotating the ingest CA is a change of its file: no restart.
#[tokio::test]
async fn the_ingest_ca_file_is_reloaded_when_it_changes() {
    let (old_ca, new_ca) = (
        support::pki::Ca::new("ingest-ca-1"),
        support::pki::Ca::new("ingest-ca-2"),
    );
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ingest-ca.crt");
    std::fs::write(&ca_file, old_ca.pem()).unwrap();
    let srv = TestServer::start(&[
        "--ingest-client-ca-file",
        ca_file.to_str().unwrap(),
        "--ingest-allowed-names",
        "apiserver-1",
    ])
    .await;
    let body = || fixtures::event_list("audit.k8s.io/v1", &[fixtures::event("r-1", None, "get")]);
    let old = srv
        .client(None)
        .with_cert(old_ca.client("apiserver-1", &[]));
    let new = srv
        .client(None)
        .with_cert(new_ca.client("apiserver-1", &[]));
    assert_eq!(old.push("", body()).await.0, StatusCode::OK);
    assert_eq!(new.push("", body()).await.0, StatusCode::UNAUTHORIZED);

    std::fs::write(&ca_file, new_ca.pem()).unwrap();
    support::eventually("the new ingest CA to be in force", || {
        let new = new.clone();
        async move { new.push("", body()).await.0 == StatusCode::OK }
    })
    .await;
    assert_eq!(
        old.push("", body()).await.0,
        StatusCode::UNAUTHORIZED,
        "the old CA is gone"
    );
}

/// kube-apiserver's webhook backend retries a batch it got no answer for in time: the
/// retry is answered as accepted and its events published once, as JetStream's duplicate
/// window does with `--bus=nats`. The key is the body, never the auditID, which a
/// client can set (kubernetes/kubernetes#101597): two batches sharing one both arrive.
#[tokio::test]
async fn a_retried_batch_is_published_once() {
    let srv = TestServer::start(&[]).await;
    let admin = srv.client(Some(ADMIN_TOKEN));
    let mut watch = admin
        .watch("/apis/audit.k8s.io/v1alpha1/events?watch=1")
        .await;
    let pusher = srv.client(Some(PUSH_TOKEN));
    let batch = fixtures::event_list("audit.k8s.io/v1", &[fixtures::event("r-1", None, "get")]);
    for attempt in ["first", "retry"] {
        let (code, status) = pusher.push("", batch.clone()).await;
        assert_eq!(code, StatusCode::OK, "{attempt}: {status}");
        assert_eq!(status["message"], "1 events accepted", "{attempt}");
    }
    // The same auditID in two different batches (a client-chosen ID, another verb).
    for verb in ["create", "delete"] {
        let same_id =
            fixtures::event_list("audit.k8s.io/v1", &[fixtures::event("chosen", None, verb)]);
        assert_eq!(pusher.push("", same_id).await.0, StatusCode::OK);
    }
    // The same body from another source is another apiserver's batch.
    assert_eq!(
        pusher.push("?source=apiserver-2", batch).await.0,
        StatusCode::OK
    );
    srv.push_events(&[fixtures::event("end", None, "get")])
        .await;
    let got = watch.added(5).await;
    let seen: Vec<(&str, &str, &str)> = got
        .iter()
        .map(|o| {
            (
                o["auditID"].as_str().unwrap(),
                o["verb"].as_str().unwrap(),
                o["annotations"]["audit.k8s.io/source"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("r-1", "get", "apiserver-1"),
            ("chosen", "create", "apiserver-1"),
            ("chosen", "delete", "apiserver-1"),
            ("r-1", "get", "apiserver-2"),
            ("end", "get", "apiserver-1"),
        ],
        "the retry once, both batches sharing an auditID"
    );
    let (_, metrics) = admin.get("/metrics").await;
    let series = |result: &str| {
        support::metric(
            &metrics,
            &format!("kube_audit_stream_nats_published_messages_total{{result=\"{result}\"}}"),
        )
    };
    assert_eq!(series("duplicate"), Some(1.0), "the retry counted");
    assert_eq!(series("stored"), Some(5.0));
    assert_eq!(
        support::metric(
            &metrics,
            "kube_audit_stream_ingest_events_total{source=\"apiserver-1\"}"
        ),
        Some(4.0),
        "events on the bus: the retry's are not counted again"
    );
}

/// Go's encoding/json matches keys to fields without regard to case: `Namespace` after
/// `namespace` is team-b to a Go reader and team-a to the router. Such an event is
/// refused as a repeated key is: 400, nothing of its batch published.
#[tokio::test]
async fn an_event_whose_keys_differ_only_in_case_is_refused() {
    let srv = TestServer::start(&[]).await;
    let mut watch = srv
        .client(Some(ALICE_TOKEN))
        .watch("/apis/audit.k8s.io/v1alpha1/namespaces/team-a/namespacedevents?watch=1")
        .await;
    let pusher = srv.client(Some(PUSH_TOKEN));
    let two_namespaces = fixtures::event("case-1", Some("team-a"), "get").replace(
        r#""namespace":"team-a""#,
        r#""namespace":"team-a","Namespace":"team-b""#,
    );
    let (code, status) = pusher
        .push(
            "",
            fixtures::event_list(
                "audit.k8s.io/v1",
                &[
                    fixtures::event("fine-1", Some("team-a"), "get"),
                    two_namespaces,
                ],
            ),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{status}");
    assert_eq!(status["reason"], "BadRequest");
    let message = status["message"].as_str().unwrap();
    assert!(
        message.contains(
            r#"items[1]: objectRef: field "Namespace" differs from "namespace" only in case"#
        ),
        "{message}"
    );
    srv.push_events(&[fixtures::event("after-1", Some("team-a"), "get")])
        .await;
    assert_eq!(
        watch.added(1).await[0]["auditID"],
        "after-1",
        "nothing of the refused batch was published"
    );
}
