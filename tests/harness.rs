//! Checks the test fakes against real clients: `FakeApiServer` with the `kube` crate (reviews,
//! the auth ConfigMap, `kube::runtime::watcher`) and with raw watches, and `FakeAggregator`
//! in front of a small TLS backend.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
    SubjectAccessReviewStatus,
};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use support::DEADLINE;
use support::aggregator::FakeAggregator;
use support::client::Client;
use support::fake_apiserver::{
    AUTH_CONFIG_NAME, BoxError, CLIENT_TOKEN, FakeApiServer, Rule, TlsServer, json,
};
use support::pki::Ca;
use tokio::sync::mpsc;
use tokio::time::timeout;

async fn kube_client(api: &FakeApiServer, dir: &std::path::Path) -> kube::Client {
    let kubeconfig = Kubeconfig::read_from(api.kubeconfig(dir)).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

fn auth_config(user_header: &str) -> BTreeMap<String, String> {
    let ca = Ca::new("front-proxy-ca").pem();
    [
        ("client-ca-file", Ca::new("client-ca").pem()),
        ("requestheader-client-ca-file", ca),
        (
            "requestheader-allowed-names",
            r#"["front-proxy-client"]"#.into(),
        ),
        (
            "requestheader-username-headers",
            format!(r#"["{user_header}"]"#),
        ),
        (
            "requestheader-group-headers",
            r#"["X-Remote-Group"]"#.into(),
        ),
        (
            "requestheader-extra-headers-prefix",
            r#"["X-Remote-Extra-"]"#.into(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

async fn review(client: &kube::Client, token: &str) -> TokenReview {
    let tr = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_owned()),
            ..TokenReviewSpec::default()
        },
        ..TokenReview::default()
    };
    Api::all(client.clone())
        .create(&PostParams::default(), &tr)
        .await
        .unwrap()
}

async fn access(client: &kube::Client, spec: SubjectAccessReviewSpec) -> SubjectAccessReviewStatus {
    let sar = SubjectAccessReview {
        spec,
        ..SubjectAccessReview::default()
    };
    let answer = Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &sar)
        .await
        .unwrap();
    answer.status.unwrap()
}

fn resource_spec(user: &str, groups: &[&str], ns: &str, verb: &str) -> SubjectAccessReviewSpec {
    SubjectAccessReviewSpec {
        user: Some(user.to_owned()),
        groups: Some(groups.iter().map(|g| g.to_string()).collect()),
        resource_attributes: Some(ResourceAttributes {
            namespace: Some(ns.to_owned()),
            verb: Some(verb.to_owned()),
            group: Some("audit.k8s.io".to_owned()),
            resource: Some("namespacedevents".to_owned()),
            ..ResourceAttributes::default()
        }),
        ..SubjectAccessReviewSpec::default()
    }
}

#[tokio::test]
async fn reviews_through_the_kube_client() {
    let api = FakeApiServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let client = kube_client(&api, dir.path()).await;
    api.add_token("alice-token", "alice", "uid-alice", &["team-a"]);

    let status = review(&client, "alice-token").await.status.unwrap();
    assert_eq!(status.authenticated, Some(true));
    let user = status.user.unwrap();
    assert_eq!(user.username.as_deref(), Some("alice"));
    assert_eq!(user.uid.as_deref(), Some("uid-alice"));
    assert_eq!(
        user.groups.unwrap(),
        ["team-a", "system:authenticated"].map(String::from)
    );
    let status = review(&client, "nope").await.status.unwrap();
    assert_eq!(status.authenticated, Some(false));
    assert_eq!(status.error.as_deref(), Some("invalid token"));
    assert!(status.user.is_none());
    assert_eq!(api.token_reviews(), 2);

    api.allow(Rule::namespaced(
        "alice",
        &["get", "list", "watch"],
        "team-a",
        "audit.k8s.io",
        "namespacedevents",
    ));
    api.allow(Rule::group("ops", &["*"], None, "*", "*"));
    api.allow(Rule::non_resource("system:authenticated", "/apis/*"));
    let allowed = async |spec| access(&client, spec).await.allowed;
    let answer = access(&client, resource_spec("alice", &[], "team-a", "watch")).await;
    assert!(answer.allowed);
    assert!(answer.reason.unwrap().contains("alice"));
    assert_eq!(
        api.last_subject_access_review().unwrap()["spec"]["resourceAttributes"]["namespace"],
        "team-a"
    );
    let denied = access(&client, resource_spec("alice", &[], "team-b", "watch")).await;
    assert_eq!((denied.allowed, denied.reason), (false, None));
    assert!(!allowed(resource_spec("alice", &[], "team-a", "delete")).await);
    assert!(allowed(resource_spec("bob", &["ops"], "team-b", "delete")).await);
    let discovery = |path: &str| SubjectAccessReviewSpec {
        user: Some("carol".to_owned()),
        groups: Some(vec!["system:authenticated".to_owned()]),
        non_resource_attributes: Some(NonResourceAttributes {
            path: Some(path.to_owned()),
            verb: Some("get".to_owned()),
        }),
        ..SubjectAccessReviewSpec::default()
    };
    assert!(allowed(discovery("/apis/audit.k8s.io/v1")).await);
    assert!(!allowed(discovery("/metrics")).await);

    api.revoke_user("alice");
    assert!(!allowed(resource_spec("alice", &[], "team-a", "watch")).await);
    assert_eq!(api.subject_access_reviews(), 7);
    assert!(
        api.requests()
            .contains(&"POST /apis/authorization.k8s.io/v1/subjectaccessreviews".to_owned())
    );
}

#[tokio::test]
async fn auth_config_get_and_watcher() {
    let api = FakeApiServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let configmaps =
        Api::<ConfigMap>::namespaced(kube_client(&api, dir.path()).await, "kube-system");
    assert!(
        configmaps
            .get_opt(AUTH_CONFIG_NAME)
            .await
            .unwrap()
            .is_none()
    );

    let data = auth_config("X-Remote-User");
    api.set_auth_config(data.clone());
    let cm = configmaps.get(AUTH_CONFIG_NAME).await.unwrap();
    assert_eq!(cm.data.unwrap(), data);

    // Both ways the watcher starts: LIST then WATCH, and a streaming-list WATCH.
    let config = watcher::Config::default().fields(&format!("metadata.name={AUTH_CONFIG_NAME}"));
    let user_header = |cm: ConfigMap| cm.data.unwrap()["requestheader-username-headers"].clone();
    let mut current = r#"["X-Remote-User"]"#.to_owned();
    for (config, header) in [
        (config.clone(), "X-User-2"),
        (config.streaming_lists(), "X-User-3"),
    ] {
        let mut events = std::pin::pin!(watcher(configmaps.clone(), config));
        let mut next = async || {
            let event = timeout(DEADLINE, events.next()).await;
            event.expect("no watch event").unwrap().unwrap()
        };
        assert!(matches!(next().await, watcher::Event::Init));
        let watcher::Event::InitApply(cm) = next().await else {
            panic!("no InitApply")
        };
        assert_eq!(user_header(cm), current);
        assert!(matches!(next().await, watcher::Event::InitDone));
        api.set_auth_config(auth_config(header));
        current = format!(r#"["{header}"]"#);
        let watcher::Event::Apply(cm) = next().await else {
            panic!("no Apply")
        };
        assert_eq!(user_header(cm), current);
    }
    let lists = api
        .requests()
        .iter()
        .filter(|r| r.ends_with("/configmaps"))
        .count();
    assert!(lists >= 3, "a LIST and a WATCH, then a WATCH");
}

#[tokio::test]
async fn raw_watch_list_and_errors() {
    let api = FakeApiServer::start().await;
    let client = Client::new(api.addr, &api.ca_pem(), Some(CLIENT_TOKEN)).http2();
    let configmaps = "/api/v1/namespaces/kube-system/configmaps";

    let (code, body) = client
        .get_json("/api/v1/namespaces/kube-system/secrets")
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_eq!(
        (body["kind"].as_str(), body["reason"].as_str()),
        (Some("Status"), Some("NotFound"))
    );
    let anonymous = Client::new(api.addr, &api.ca_pem(), None);
    assert_eq!(anonymous.get(configmaps).await.0, StatusCode::UNAUTHORIZED);

    api.set_auth_config(auth_config("A"));
    api.set_auth_config(auth_config("B"));
    let (code, list) = client
        .get_json(&format!(
            "{configmaps}?fieldSelector=metadata.name%3D{AUTH_CONFIG_NAME}"
        ))
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(list["kind"], "ConfigMapList");
    let rv: u64 = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        list["items"][0]["metadata"]["resourceVersion"],
        rv.to_string()
    );
    let (_, none) = client
        .get_json(&format!("{configmaps}?fieldSelector=metadata.name%3Dother"))
        .await;
    assert_eq!(none["items"], serde_json::json!([]));

    // From the first version: the second arrives as MODIFIED, then bookmarks, then the end.
    let mut watch = client
        .watch(&format!(
            "{configmaps}?watch=1&resourceVersion={}&allowWatchBookmarks=true&timeoutSeconds=1",
            rv - 1
        ))
        .await;
    let event = watch.next().await.unwrap();
    assert_eq!(event["type"], "MODIFIED");
    assert_eq!(
        event["object"]["metadata"]["resourceVersion"],
        rv.to_string()
    );
    let mut last = None;
    while let Some(event) = watch.next().await {
        assert_eq!(event["type"], "BOOKMARK");
        assert_eq!(event["object"]["kind"], "ConfigMap");
        last = Some(event);
    }
    assert_eq!(
        last.unwrap()["object"]["metadata"]["resourceVersion"],
        rv.to_string()
    );

    // Without a resourceVersion: the current state as ADDED, then changes.
    let mut watch = client.watch(&format!("{configmaps}?watch=true")).await;
    let event = watch.next().await.unwrap();
    assert_eq!(
        (
            event["type"].as_str(),
            event["object"]["metadata"]["resourceVersion"].as_str()
        ),
        (Some("ADDED"), Some(rv.to_string().as_str()))
    );
    api.set_auth_config(auth_config("C"));
    let event = watch.next().await.unwrap();
    assert_eq!(event["type"], "MODIFIED");
    assert_eq!(
        event["object"]["data"]["requestheader-username-headers"],
        r#"["C"]"#
    );
}

/// A backend that requires the front-proxy client certificate: `/stream` streams what the
/// test sends on its channel; anything else answers the request's identity headers,
/// method, URI and body.
async fn backend(front_proxy_ca: &str, serving: &Ca, stream: mpsc::Receiver<Bytes>) -> TlsServer {
    let stream = Arc::new(Mutex::new(Some(stream)));
    TlsServer::start(&serving.server(), Some(front_proxy_ca), move |req| {
        let stream = stream.clone();
        async move {
            if req.uri().path() == "/stream" {
                let rx = stream.lock().unwrap().take().expect("one stream");
                let frames = futures_util::stream::unfold(rx, |mut rx| async {
                    let data = rx.recv().await?;
                    Some((Ok::<_, BoxError>(Frame::data(data)), rx))
                });
                return Response::new(StreamBody::new(frames).boxed_unsync());
            }
            let all = |name: &str| -> Vec<String> {
                let values = req.headers().get_all(name).iter();
                values.map(|v| v.to_str().unwrap().to_owned()).collect()
            };
            let mut seen = serde_json::json!({
                "user": all("x-remote-user"),
                "group": all("x-remote-group"),
                "extra": all("x-remote-extra-scopes"),
                "authorization": all("authorization"),
                "uri": req.uri().to_string(),
                "method": req.method().as_str(),
            });
            let body = req.into_body().collect().await.unwrap().to_bytes();
            seen["body"] = String::from_utf8(body.to_vec()).unwrap().into();
            json(StatusCode::OK, &seen)
        }
    })
    .await
}

#[tokio::test]
async fn aggregator_forwards_identity_and_streams() {
    let (front_proxy_ca, backend_ca) = (Ca::new("front-proxy-ca"), Ca::new("backend-ca"));
    let (tx, rx) = mpsc::channel(4);
    let backend = backend(&front_proxy_ca.pem(), &backend_ca, rx).await;
    let client_cert = front_proxy_ca.client("front-proxy-client", &[]);
    let groups: &[&str] = &["team-a", "devs"];
    let agg = FakeAggregator::start(
        backend.addr,
        &backend_ca.pem(),
        client_cert,
        &[("alice-token", "alice", groups)],
    )
    .await;
    assert!(agg.url().starts_with("https://127.0.0.1:"));

    for client in [
        Client::new(agg.addr, &agg.ca_pem(), Some("alice-token")),
        Client::new(agg.addr, &agg.ca_pem(), Some("alice-token")).http2(),
    ] {
        let forged = [
            ("X-Remote-User", "admin"),
            ("x-remote-group", "system:masters"),
            ("X-Remote-Extra-Scopes", "all"),
        ];
        let uri = "/headers?watch=true&x=%2F";
        let resp = client.send(Method::POST, uri, &forged, "{}").await;
        assert_eq!(resp.status(), StatusCode::OK);
        let seen: serde_json::Value =
            serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(
            seen,
            serde_json::json!({
                "user": ["alice"],
                "group": ["team-a", "devs", "system:authenticated"],
                "extra": [],
                "authorization": [],
                "uri": "/headers?watch=true&x=%2F",
                "method": "POST",
                "body": "{}",
            })
        );
    }

    let unauthorized = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "Unauthorized", "reason": "Unauthorized", "code": 401,
    });
    for token in [None, Some("wrong-token")] {
        let (code, body) = Client::new(agg.addr, &agg.ca_pem(), token)
            .get_json("/headers")
            .await;
        assert_eq!(
            (code, body),
            (StatusCode::UNAUTHORIZED, unauthorized.clone())
        );
    }

    // Each piece arrives while the backend still holds the stream open.
    let resp = Client::new(agg.addr, &agg.ca_pem(), Some("alice-token"))
        .send(Method::GET, "/stream", &[], Bytes::new())
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    for piece in ["{\"n\":1}\n", "{\"n\":2}\n"] {
        tx.send(Bytes::from(piece)).await.unwrap();
        let mut got = Vec::new();
        while got.len() < piece.len() {
            let frame = timeout(DEADLINE, body.frame())
                .await
                .expect("piece not forwarded");
            got.extend_from_slice(&frame.unwrap().unwrap().into_data().unwrap());
        }
        assert_eq!(got, piece.as_bytes());
    }
    drop(tx);
    let end = timeout(DEADLINE, body.frame())
        .await
        .expect("stream did not end");
    assert!(end.is_none());

    // A client certificate the backend does not trust: the backend is unreachable.
    let stranger = Ca::new("other-ca").client("front-proxy-client", &[]);
    let agg = FakeAggregator::start(
        backend.addr,
        &backend_ca.pem(),
        stranger,
        &[("t", "u", &[])],
    )
    .await;
    let (code, body) = Client::new(agg.addr, &agg.ca_pem(), Some("t"))
        .get_json("/headers")
        .await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["reason"], "ServiceUnavailable");
}
