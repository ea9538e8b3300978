//! Discovery and health, black-box: the documents kubectl and the aggregator read.

mod support;

use http::{Method, StatusCode};
use support::server::{ALICE_TOKEN, TestServer};

#[tokio::test]
async fn discovery_documents() {
    let srv = TestServer::start(&[]).await;
    let alice = srv.client(Some(ALICE_TOKEN));
    let (code, list) = alice.get_json("/apis").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(list["kind"], "APIGroupList");
    assert_eq!(list["groups"][0]["name"], "audit.k8s.io");
    let (_, group) = alice.get_json("/apis/audit.k8s.io").await;
    assert_eq!(group["kind"], "APIGroup");
    assert_eq!(group["preferredVersion"]["version"], "v1alpha1");
    let (_, resources) = alice.get_json("/apis/audit.k8s.io/v1alpha1").await;
    assert_eq!(resources["kind"], "APIResourceList");
    assert_eq!(resources["groupVersion"], "audit.k8s.io/v1alpha1");
    let names: Vec<(&str, bool, &str)> = resources["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap(),
                r["namespaced"].as_bool().unwrap(),
                r["kind"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("events", false, "Event"),
            // A kind of its own in discovery, so that kubectl's resource -> kind ->
            // resource mapping does not turn `events` into `namespacedevents`.
            ("namespacedevents", true, "NamespacedEvent"),
            // One object per pushing apiserver.
            ("sources", false, "Source")
        ]
    );
    assert!(
        resources["resources"][0].get("shortNames").is_none(),
        "no short names"
    );
}

#[tokio::test]
async fn aggregated_discovery_by_accept_header() {
    let srv = TestServer::start(&[]).await;
    let resp = srv
        .client(Some(ALICE_TOKEN))
        .send(
            Method::GET,
            "/apis",
            &[("accept", "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json")],
            "",
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-type"],
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    );
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let doc: kube_core::discovery::v2::APIGroupDiscoveryList =
        serde_json::from_slice(&body).unwrap();
    let group = &doc.items[0];
    assert_eq!(
        group.metadata.as_ref().unwrap().name.as_deref(),
        Some("audit.k8s.io")
    );
    let scopes: Vec<_> = group.versions[0]
        .resources
        .iter()
        .map(|r| (r.resource.clone().unwrap(), r.scope.clone().unwrap()))
        .collect();
    assert_eq!(
        scopes,
        [
            ("events".into(), "Cluster".into()),
            ("namespacedevents".into(), "Namespaced".into()),
            ("sources".into(), "Cluster".into())
        ]
    );
}

#[tokio::test]
async fn health_needs_no_credentials_and_the_rest_does() {
    let srv = TestServer::start(&[]).await;
    let anonymous = srv.client(None);
    for path in ["/healthz", "/livez", "/readyz"] {
        assert_eq!(
            anonymous.get(path).await,
            (StatusCode::OK, "ok".into()),
            "{path}"
        );
    }
    for path in ["/apis", "/metrics"] {
        let (code, status) = anonymous.get_json(path).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(status["reason"], "Unauthorized");
    }
    // alice may read discovery but not metrics (a non-resource URL).
    let (code, status) = srv.client(Some(ALICE_TOKEN)).get_json("/metrics").await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    assert_eq!(
        status["message"],
        r#"forbidden: User "alice" cannot get path "/metrics": No policy matched."#
    );
}
