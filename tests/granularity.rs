//! `--authorization-granularity=resource` against the fake kube-apiserver: a user who may
//! get pods but not secrets in team-a sees pod events and no secret event (watch, LIST,
//! GET, Table); a review that fails withholds; revoking `get secrets` mid-watch stops
//! secret events within the re-authorization period; one user's reviews are cached.

mod support;

use http::StatusCode;
use serde_json::Value;
use support::cluster::Cluster;
use support::fake_apiserver::Rule;
use support::server::TestServer;

const TEAM_A: &str = "/apis/audit.k8s.io/v1alpha1/namespaces/team-a/namespacedevents";

/// An event about `resource` in team-a (the fixtures' small event, another resource).
fn event(id: &str, resource: &str) -> String {
    support::fixtures::event(id, Some("team-a"), "get").replace(
        r#""resource":"configmaps""#,
        &format!(r#""resource":"{resource}""#),
    )
}

fn ids(objects: &[Value]) -> Vec<&str> {
    objects
        .iter()
        .map(|o| o["auditID"].as_str().unwrap())
        .collect()
}

async fn alice_may_read(cluster: &Cluster, resources: &[&str]) {
    cluster.fake.allow(Rule::namespaced(
        "alice",
        &["get", "list", "watch"],
        "team-a",
        "audit.k8s.io",
        "namespacedevents",
    ));
    for r in resources {
        cluster
            .fake
            .allow(Rule::namespaced("alice", &["get"], "team-a", "", r));
    }
}

/// `ttl`: how long answers are cached, and so how often a watch asks again.
async fn server(cluster: &Cluster, ttl: &str) -> TestServer {
    cluster
        .server(&[
            "--authorization-granularity=resource",
            "--authorization-webhook-cache-authorized-ttl",
            ttl,
            "--authorization-webhook-cache-unauthorized-ttl",
            ttl,
        ])
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_but_not_secrets() {
    let cluster = Cluster::new().await;
    alice_may_read(&cluster, &["pods"]).await;
    let srv = server(&cluster, "10m").await;
    let alice = srv.client(Some("alice-token"));
    let mut w = alice.watch(&format!("{TEAM_A}?watch=1")).await;
    let batch: Vec<String> = (0..20)
        .map(|i| {
            event(
                &format!("e-{i}"),
                if i % 2 == 0 { "pods" } else { "secrets" },
            )
        })
        .chain([event("last", "pods")])
        .collect();
    srv.push_events(&batch).await;
    let want: Vec<String> = (0..20)
        .step_by(2)
        .map(|i| format!("e-{i}"))
        .chain(["last".to_owned()])
        .collect();
    // In order, the pods only: the last pod event arrives after every earlier pod one
    // and no secret one came between.
    assert_eq!(ids(&w.added(want.len()).await), want);

    let (code, list) = alice.get_json(TEAM_A).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(ids(list["items"].as_array().unwrap()), want);
    // A page's limit counts what may be seen.
    let (_, page) = alice.get_json(&format!("{TEAM_A}?limit=3")).await;
    assert_eq!(
        ids(page["items"].as_array().unwrap()),
        ["e-0", "e-2", "e-4"]
    );
    assert!(page["metadata"]["continue"].is_string());
    // A secret event by name is not there for alice; a pod event is.
    let (code, _) = alice.get(&format!("{TEAM_A}/e-1-responsecomplete")).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (code, _) = alice.get(&format!("{TEAM_A}/e-0-responsecomplete")).await;
    assert_eq!(code, StatusCode::OK);

    // One review per (user, resource, namespace), however many events and reads.
    assert_eq!(cluster.fake.resource_reviews("alice", "pods"), 1);
    assert_eq!(cluster.fake.resource_reviews("alice", "secrets"), 1);

    cluster
        .fake
        .add_token("admin-token", "admin", "uid-admin", &["system:masters"]);
    let metrics = String::from_utf8(
        srv.client(Some("admin-token"))
            .get("/metrics")
            .await
            .1
            .to_vec(),
    )
    .unwrap();
    assert!(
        metrics.contains(
            r#"kube_audit_stream_watch_withheld_events_total{reason="denied",resource="namespacedevents"} 10"#
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_review_withholds_and_revoking_stops_secret_events() {
    let cluster = Cluster::new().await;
    alice_may_read(&cluster, &["pods", "secrets"]).await;
    cluster.fake.fail_reviews_of("configmaps");
    let srv = server(&cluster, "1s").await;
    let mut w = srv
        .client(Some("alice-token"))
        .watch(&format!("{TEAM_A}?watch=1"))
        .await;
    srv.push_events(&[
        event("cm-1", "configmaps"),
        event("secret-1", "secrets"),
        event("pod-1", "pods"),
    ])
    .await;
    assert_eq!(
        ids(&w.added(2).await),
        ["secret-1", "pod-1"],
        "the configmap withheld"
    );

    cluster
        .fake
        .revoke_where(|r| r.resource == "secrets" && r.user.as_deref() == Some("alice"));
    // Within the re-authorization period (1 s here), secret events stop; pods go on.
    let mut n = 0;
    loop {
        n += 1;
        srv.push_events(&[
            event(&format!("s-{n}"), "secrets"),
            event(&format!("p-{n}"), "pods"),
        ])
        .await;
        let got = w.added(1).await;
        let id = got[0]["auditID"].as_str().unwrap().to_owned();
        if id == format!("p-{n}") {
            // The secret event just before it was withheld: revoked.
            break;
        }
        assert_eq!(id, format!("s-{n}"));
        assert_eq!(ids(&w.added(1).await), [format!("p-{n}")]);
        assert!(n < 200, "secret events still arrive after 200 rounds");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // And they stay stopped.
    srv.push_events(&[event("s-after", "secrets"), event("p-after", "pods")])
        .await;
    assert_eq!(ids(&w.added(1).await), ["p-after"]);
}
