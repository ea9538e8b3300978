//! A fake cluster for cluster-mode tests: a fake kube-apiserver publishing the
//! authentication ConfigMap (client CA, front-proxy CA and headers), alice with a token
//! and a RoleBinding-style rule to watch team-a, and the server and fake aggregator
//! pointed at it.

use std::collections::BTreeMap;

use super::aggregator::FakeAggregator;
use super::fake_apiserver::{FakeApiServer, Rule};
use super::pki::Ca;
use super::server::TestServer;

pub const FRONT_PROXY_CN: &str = "front-proxy-client";

/// A fake cluster: CAs, the ConfigMap, alice (token and RoleBinding-style rule in team-a).
pub struct Cluster {
    pub fake: FakeApiServer,
    pub front_proxy_ca: Ca,
    pub client_ca: Ca,
    pub dir: tempfile::TempDir,
}

impl Cluster {
    pub async fn new() -> Cluster {
        let fake = FakeApiServer::start().await;
        let cluster = Cluster {
            fake,
            front_proxy_ca: Ca::new("front-proxy-ca"),
            client_ca: Ca::new("client-ca"),
            dir: tempfile::tempdir().unwrap(),
        };
        cluster.publish_auth_config(&cluster.client_ca.pem());
        cluster
            .fake
            .add_token("alice-token", "alice", "uid-alice", &["team-a-devs"]);
        cluster.fake.allow(Rule::namespaced(
            "alice",
            &["watch"],
            "team-a",
            "audit.k8s.io",
            "namespacedevents",
        ));
        cluster
    }

    pub fn publish_auth_config(&self, client_ca_pem: &str) {
        let mut data = BTreeMap::new();
        data.insert("client-ca-file".to_owned(), client_ca_pem.to_owned());
        data.insert(
            "requestheader-client-ca-file".to_owned(),
            self.front_proxy_ca.pem(),
        );
        data.insert(
            "requestheader-allowed-names".to_owned(),
            format!(r#"["{FRONT_PROXY_CN}"]"#),
        );
        data.insert(
            "requestheader-username-headers".to_owned(),
            r#"["X-Remote-User"]"#.to_owned(),
        );
        data.insert(
            "requestheader-group-headers".to_owned(),
            r#"["X-Remote-Group"]"#.to_owned(),
        );
        data.insert(
            "requestheader-extra-headers-prefix".to_owned(),
            r#"["X-Remote-Extra-"]"#.to_owned(),
        );
        self.fake.set_auth_config(data);
    }

    pub async fn server(&self, extra: &[&str]) -> TestServer {
        TestServer::start_cluster(&self.fake.kubeconfig(self.dir.path()), extra).await
    }

    pub async fn aggregator(&self, srv: &TestServer) -> FakeAggregator {
        FakeAggregator::start(
            srv.addr,
            &srv.ca.pem(),
            self.front_proxy_ca.client(FRONT_PROXY_CN, &[]),
            &[
                ("alice-at-aggregator", "alice", &["team-a-devs"]),
                ("admin-at-aggregator", "admin", &["system:masters"]),
            ],
        )
        .await
    }
}
