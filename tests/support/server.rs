//! `TestServer`: `server::run` on 127.0.0.1:0 with real TLS and the real flags, stopped on
//! drop. Users: admin (system:masters), alice (team-a), bob (team-b); pusher `apiserver-1`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use kube_audit_stream::config::{Cli, Command, Settings};
use kube_audit_stream::server::{self, App};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::client::Client;
use super::fixtures::event_list;
use super::pki::Ca;

pub const ADMIN_TOKEN: &str = "admin-token";
pub const ALICE_TOKEN: &str = "alice-token";
pub const BOB_TOKEN: &str = "bob-token";
pub const PUSH_TOKEN: &str = "push-token";

const TOKENS: &str = "admin-token,admin,uid-admin,\"system:masters\"\nalice-token,alice,uid-alice\nbob-token,bob,uid-bob,\"team-b-owners\"\n";
const INGEST_TOKENS: &str = "push-token,apiserver-1,uid-apiserver-1\n";
const POLICY: &str = r#"{"apiVersion": "abac.authorization.kubernetes.io/v1beta1", "kind": "Policy", "spec": {"group": "system:masters", "namespace": "*", "resource": "*", "apiGroup": "*", "nonResourcePath": "*"}}
{"apiVersion": "abac.authorization.kubernetes.io/v1beta1", "kind": "Policy", "spec": {"user": "alice", "namespace": "team-a", "resource": "namespacedevents", "apiGroup": "audit.k8s.io", "readonly": true}}
{"apiVersion": "abac.authorization.kubernetes.io/v1beta1", "kind": "Policy", "spec": {"group": "team-b-owners", "namespace": "team-b", "resource": "namespacedevents", "apiGroup": "audit.k8s.io", "readonly": true}}
{"apiVersion": "abac.authorization.kubernetes.io/v1beta1", "kind": "Policy", "spec": {"group": "system:authenticated", "readonly": true, "nonResourcePath": "/api*"}}
"#;

pub struct TestServer {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub ca: Ca,
    pub app: App,
    /// Where this run numbers from: its n-th event has resourceVersion `base + n`.
    pub base: u64,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    /// Stand-alone mode: the standard test users (static tokens, ABAC) plus `extra` flags.
    pub async fn start(extra: &[&str]) -> TestServer {
        Self::start_mode(false, extra, |_| {}).await
    }

    /// `start`, with settings no flag reaches (time limits a test cannot wait out).
    pub async fn start_tuned(extra: &[&str], tune: impl FnOnce(&mut Settings)) -> TestServer {
        Self::start_mode(false, extra, tune).await
    }

    /// Cluster mode: authentication and authorization delegated to the kube-apiserver
    /// that `kubeconfig` names, plus `extra` flags.
    pub async fn start_cluster(kubeconfig: &std::path::Path, extra: &[&str]) -> TestServer {
        let mut args = vec!["--kubeconfig", kubeconfig.to_str().unwrap()];
        args.extend_from_slice(extra);
        Self::start_mode(true, &args, |_| {}).await
    }

    async fn start_mode(
        cluster: bool,
        extra: &[&str],
        tune: impl FnOnce(&mut Settings),
    ) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("test-serving-ca");
        let serving = ca.server();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p.display().to_string()
        };
        let cert = write("tls.crt", &serving.cert);
        let key = write("tls.key", &serving.key);
        let ingest_tokens = write("ingest-tokens.csv", INGEST_TOKENS);
        let mut argv: Vec<String> = [
            "kube-audit-stream",
            "serve",
            "--bind-address",
            "127.0.0.1",
            "--secure-port",
            "0",
            "--tls-cert-file",
            &cert,
            "--tls-private-key-file",
            &key,
            "--ingest-token-file",
            &ingest_tokens,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if !cluster {
            let tokens = write("tokens.csv", TOKENS);
            let policy = write("policy.jsonl", POLICY);
            argv.extend(
                [
                    "--token-auth-file",
                    &tokens,
                    "--authorization-mode",
                    "ABAC",
                    "--authorization-policy-file",
                    &policy,
                ]
                .iter()
                .map(|s| s.to_string()),
            );
        }
        argv.extend(extra.iter().map(|s| s.to_string()));
        Self::launch(dir, ca, argv, tune).await
    }

    /// The server with exactly `args` (what follows the program name, `serve` first), and
    /// nothing added: for a command line a test must run as given (the Deployment's).
    /// `ca` is the CA of the serving certificate `args` name, `dir` holds the test's files.
    pub async fn start_args(dir: tempfile::TempDir, ca: Ca, args: &[String]) -> TestServer {
        let argv = std::iter::once("kube-audit-stream".to_owned())
            .chain(args.iter().cloned())
            .collect();
        Self::launch(dir, ca, argv, |_| {}).await
    }

    async fn launch(
        dir: tempfile::TempDir,
        ca: Ca,
        argv: Vec<String>,
        tune: impl FnOnce(&mut Settings),
    ) -> TestServer {
        let Command::Serve(args) = Cli::try_parse_from(argv).unwrap().command;
        let mut settings = args.validate().unwrap();
        tune(&mut settings);
        let app = App::new(&settings).await.unwrap();
        let base = app.bus().resource_version();
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(server::run(app.clone(), listener, async {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            dir,
            ca,
            app,
            base,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    /// The resourceVersion of this run's `n`-th event, as the API writes it.
    pub fn rv(&self, n: u64) -> String {
        (self.base + n).to_string()
    }

    pub fn ca_path(&self) -> PathBuf {
        let p = self.dir.path().join("ca.crt");
        std::fs::write(&p, self.ca.pem()).unwrap();
        p
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// An HTTP/1.1 client trusting the serving CA, with a bearer token.
    pub fn client(&self, token: Option<&str>) -> Client {
        Client::new(self.addr, &self.ca.pem(), token)
    }

    /// Push `items` (audit Event JSON) as one `audit.k8s.io/v1` EventList with the ingest
    /// token, and check it was accepted.
    pub async fn push_events(&self, items: &[String]) {
        let (code, status) = self
            .client(Some(PUSH_TOKEN))
            .push("", event_list("audit.k8s.io/v1", items))
            .await;
        assert_eq!(code, http::StatusCode::OK, "{status}");
    }

    /// Ask the server to stop and wait until `run` has returned; the test fails if that
    /// takes longer than `DEADLINE`. What a stopped server should look like from outside
    /// (its port closed, its watches ended) is for the caller to check: `run` returns
    /// `Ok` on every path, so its result says nothing (an `Err`, should one appear,
    /// fails here).
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let handle = self.handle.take().unwrap();
        let ran = tokio::time::timeout(super::DEADLINE, handle)
            .await
            .expect("server did not stop")
            .expect("the server's task panicked");
        if let Err(e) = ran {
            panic!("server::run failed: {e}");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
