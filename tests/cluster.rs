//! Cluster mode, black-box, against a fake kube-apiserver (TokenReview,
//! SubjectAccessReview, the authentication ConfigMap) and a fake aggregator that proxies
//! with a front-proxy client certificate: who gets in, who is believed, what is cached,
//! and what happens when access is revoked.

mod support;

use http::{Method, StatusCode};
use support::cluster::{Cluster, FRONT_PROXY_CN};
use support::fake_apiserver::Rule;
use support::fixtures::{event, event_list};
use support::pki::Ca;
use support::server::TestServer;

const TEAM_A: &str = "/apis/audit.k8s.io/v1alpha1/namespaces/team-a/namespacedevents?watch=1";
const TEAM_B: &str = "/apis/audit.k8s.io/v1alpha1/namespaces/team-b/namespacedevents?watch=1";
const EVENTS: &str = "/apis/audit.k8s.io/v1alpha1/events?watch=1";
async fn push(srv: &TestServer) {
    push_as(srv, "").await;
}

/// The same three events, their auditIDs suffixed: another batch (pushing one batch
/// twice is a webhook retry, published once).
async fn push_as(srv: &TestServer, suffix: &str) {
    let items = vec![
        event(&format!("a-1{suffix}"), Some("team-a"), "delete"),
        event(&format!("b-1{suffix}"), Some("team-b"), "delete"),
        event(&format!("a-2{suffix}"), Some("team-a"), "get"),
    ];
    srv.push_events(&items).await;
}

fn ids(objs: &[serde_json::Value]) -> Vec<&str> {
    objs.iter()
        .map(|o| o["auditID"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn namespace_user_through_the_aggregator_sees_only_their_namespace() {
    let cluster = Cluster::new().await;
    let srv = cluster.server(&[]).await;
    let agg = cluster.aggregator(&srv).await;
    let alice = support::client::Client::new(agg.addr, &agg.ca_pem(), Some("alice-at-aggregator"));
    let mut w = alice.watch(TEAM_A).await;
    push(&srv).await;
    assert_eq!(ids(&w.added(2).await), ["a-1", "a-2"]);

    let (code, status) = alice.get_json(TEAM_B).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    assert_eq!(
        status["message"],
        r#"namespacedevents.audit.k8s.io is forbidden: User "alice" cannot watch resource "namespacedevents" in API group "audit.k8s.io" in the namespace "team-b""#
    );
    assert_eq!(status["reason"], "Forbidden");
    assert_eq!(status["code"], 403);
    // The review asked is kube-apiserver's shape, with the front proxy's identity.
    let sar = cluster.fake.last_subject_access_review().unwrap();
    assert_eq!(sar["spec"]["user"], "alice");
    assert!(
        sar["spec"]["groups"]
            .as_array()
            .unwrap()
            .contains(&"team-a-devs".into())
    );
    assert!(
        sar["spec"]["groups"]
            .as_array()
            .unwrap()
            .contains(&"system:authenticated".into())
    );
    assert_eq!(sar["spec"]["resourceAttributes"]["verb"], "watch");
    assert_eq!(sar["spec"]["resourceAttributes"]["group"], "audit.k8s.io");
    assert_eq!(sar["spec"]["resourceAttributes"]["version"], "v1alpha1");
    assert_eq!(
        sar["spec"]["resourceAttributes"]["resource"],
        "namespacedevents"
    );
    assert_eq!(sar["spec"]["resourceAttributes"]["namespace"], "team-b");

    // system:masters is allowed without a review.
    let before = cluster.fake.subject_access_reviews();
    let admin = support::client::Client::new(agg.addr, &agg.ca_pem(), Some("admin-at-aggregator"));
    let mut all = admin.watch(EVENTS).await;
    push_as(&srv, "-again").await;
    assert_eq!(all.added(3).await.len(), 3);
    assert_eq!(cluster.fake.subject_access_reviews(), before);
}

#[tokio::test]
async fn identities_cannot_be_forged() {
    let cluster = Cluster::new().await;
    let srv = cluster.server(&[]).await;
    let forged = [
        ("X-Remote-User", "admin"),
        ("X-Remote-Group", "system:masters"),
    ];
    let get = |client: support::client::Client| async move {
        let resp = client.send(Method::GET, EVENTS, &forged, "").await;
        resp.status()
    };
    // No credentials at all.
    assert_eq!(get(srv.client(None)).await, StatusCode::UNAUTHORIZED);
    // Headers on a connection without a front-proxy certificate are ignored: still alice.
    assert_eq!(
        get(srv.client(Some("alice-token"))).await,
        StatusCode::FORBIDDEN
    );
    // A "front proxy" certificate from a CA nobody trusts.
    let rogue = Ca::new("rogue-ca");
    assert_eq!(
        get(srv
            .client(None)
            .with_cert(rogue.client(FRONT_PROXY_CN, &[])))
        .await,
        StatusCode::UNAUTHORIZED
    );
    // The right CA, but a CN that is not an allowed front proxy.
    let intruder = cluster.front_proxy_ca.client("intruder", &[]);
    assert_eq!(
        get(srv.client(None).with_cert(intruder)).await,
        StatusCode::UNAUTHORIZED
    );
    // The real front proxy is believed.
    let proxy = cluster.front_proxy_ca.client(FRONT_PROXY_CN, &[]);
    assert_eq!(get(srv.client(None).with_cert(proxy)).await, StatusCode::OK);
}

#[tokio::test]
async fn x509_users_and_ca_rotation_from_the_config_map() {
    let cluster = Cluster::new().await;
    cluster.fake.allow(Rule::group(
        "team-c",
        &["watch"],
        Some("team-c"),
        "audit.k8s.io",
        "namespacedevents",
    ));
    let srv = cluster.server(&[]).await;
    let path = "/apis/audit.k8s.io/v1alpha1/namespaces/team-c/namespacedevents?watch=1";
    let carol = srv
        .client(None)
        .with_cert(cluster.client_ca.client("carol", &["team-c"]));
    let resp = carol.send(Method::GET, path, &[], "").await;
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "CN is the user, O the groups"
    );
    drop(resp);

    // Rotate the client CA in the ConfigMap: the new CA's users get in, without a restart.
    let rotated = Ca::new("client-ca-2");
    let dave = srv
        .client(None)
        .with_cert(rotated.client("dave", &["team-c"]));
    assert_eq!(
        dave.send(Method::GET, path, &[], "").await.status(),
        StatusCode::UNAUTHORIZED
    );
    cluster.publish_auth_config(&rotated.pem());
    support::eventually("the rotated client CA to be used", || {
        let dave = dave.clone();
        async move { dave.send(Method::GET, path, &[], "").await.status() == StatusCode::OK }
    })
    .await;
    assert_eq!(
        carol.send(Method::GET, path, &[], "").await.status(),
        StatusCode::UNAUTHORIZED,
        "the old CA is gone"
    );
}

#[tokio::test]
async fn token_reviews_and_access_reviews_are_cached_and_coalesced() {
    let cluster = Cluster::new().await;
    let srv = cluster.server(&[]).await;
    let alice = srv.client(Some("alice-token"));
    let watches = futures_util::future::join_all((0..100).map(|_| {
        let alice = alice.clone();
        async move { alice.send(Method::GET, TEAM_A, &[], "").await }
    }))
    .await;
    assert!(watches.iter().all(|r| r.status() == StatusCode::OK));
    assert_eq!(
        cluster.fake.token_reviews(),
        1,
        "one TokenReview for 100 requests with one token"
    );
    assert_eq!(
        cluster.fake.subject_access_reviews(),
        1,
        "one SubjectAccessReview for 100 identical watches"
    );

    let (code, _) = srv.client(Some("unknown-token")).get_json(TEAM_A).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    // A token the cluster knows still cannot push.
    let (code, _) = srv
        .client(Some("alice-token"))
        .push(
            "",
            event_list("audit.k8s.io/v1", &[event("x", None, "get")]),
        )
        .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn revoking_access_ends_a_live_watch_with_403() {
    let cluster = Cluster::new().await;
    let srv = cluster
        .server(&["--authorization-webhook-cache-authorized-ttl", "1s"])
        .await;
    let mut w = srv.client(Some("alice-token")).watch(TEAM_A).await;
    push(&srv).await;
    assert_eq!(ids(&w.added(2).await), ["a-1", "a-2"]);
    cluster.fake.revoke_user("alice");
    let err = loop {
        let ev = w.next().await.expect("the stream ends only after an ERROR");
        if ev["type"] == "ERROR" {
            break ev;
        }
    };
    assert_eq!(err["object"]["code"], 403);
    assert_eq!(err["object"]["reason"], "Forbidden");
    assert!(w.next().await.is_none(), "and the stream ends");
}

#[tokio::test]
async fn kubectl_through_the_aggregator_and_directly_with_a_token() {
    let cluster = Cluster::new().await;
    // What kube-apiserver's system:discovery role gives every authenticated user.
    cluster
        .fake
        .allow(Rule::non_resource("system:authenticated", "/apis*"));
    let srv = cluster.server(&[]).await;
    let agg = cluster.aggregator(&srv).await;
    let home = tempfile::tempdir().unwrap();
    let ca = home.path().join("aggregator-ca.crt");
    std::fs::write(&ca, agg.ca_pem()).unwrap();
    let srv_ca = srv.ca_path();
    let via = |direct: bool| {
        if direct {
            (srv.url(), srv_ca.clone())
        } else {
            (agg.url(), ca.clone())
        }
    };
    let kubectl_to = |direct: bool, token: &str, path: &str| {
        let (server, ca) = via(direct);
        let mut c = tokio::process::Command::new("kubectl");
        c.args([
            "--server",
            &server,
            "--certificate-authority",
            ca.to_str().unwrap(),
            "--token",
            token,
            "get",
            "--raw",
            path,
        ])
        .env("KUBECONFIG", home.path().join("none"))
        .env("HOME", home.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
        c
    };
    let kubectl = |token: &str, path: &str| kubectl_to(false, token, path);
    // Through the aggregator (front-proxy headers) and directly (TokenReview): same answer.
    for (direct, token) in [(false, "alice-at-aggregator"), (true, "alice-token")] {
        let out = kubectl_to(direct, token, TEAM_B).output().await.unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(r#"Error from server (Forbidden): namespacedevents.audit.k8s.io is forbidden: User "alice" cannot watch resource "namespacedevents" in API group "audit.k8s.io" in the namespace "team-b""#),
            "direct={direct}: {stderr}"
        );
        let out = kubectl_to(direct, token, "/apis/audit.k8s.io/v1alpha1")
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "direct={direct}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("\"namespacedevents\""));
    }

    let mut child = kubectl("alice-at-aggregator", TEAM_A).spawn().unwrap();
    support::eventually("kubectl's watch to open", || async {
        let (_, body) = srv
            .client(None)
            .with_cert(
                cluster
                    .client_ca
                    .client("metrics-reader", &["system:masters"]),
            )
            .get("/metrics")
            .await;
        String::from_utf8_lossy(&body)
            .contains("kube_audit_stream_watch_watchers{resource=\"namespacedevents\"} 1")
    })
    .await;
    push(&srv).await;
    let got: Vec<String> = support::json_lines(child.stdout.take().unwrap(), 2)
        .await
        .iter()
        .map(|v| v["object"]["auditID"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(got, ["a-1", "a-2"]);
}
