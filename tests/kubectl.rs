//! The real kubectl against the server, with a temporary HOME and kubeconfig (never the
//! user's ~/.kube): `get --raw` watches as alice, Status errors as kubectl prints them,
//! across every kubectl version installed beside the default one.

mod support;

use std::path::PathBuf;
use std::process::Stdio;

use support::fixtures::{event, event_list};
use support::server::{ALICE_TOKEN, PUSH_TOKEN, TestServer};

const TEAM_A: &str = "/apis/audit.k8s.io/v1alpha1/namespaces/team-a/namespacedevents?watch=1";

/// `kubectl` from PATH, then any `kubectl.1.NN` beside the file it resolves to.
fn kubectls() -> Vec<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let main = std::env::split_paths(&path)
        .map(|d| d.join("kubectl"))
        .find(|p| p.is_file())
        .expect("kubectl must be on PATH for these tests");
    let mut all = vec![main.clone()];
    if let Some(dir) = std::fs::canonicalize(&main)
        .ok()
        .and_then(|p| p.parent().map(PathBuf::from))
    {
        let mut versions: Vec<PathBuf> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("kubectl.1."))
            })
            .collect();
        versions.sort();
        all.extend(versions);
    }
    all
}

struct Kubectl<'a> {
    bin: PathBuf,
    srv: &'a TestServer,
    home: tempfile::TempDir,
}

impl<'a> Kubectl<'a> {
    fn new(bin: PathBuf, srv: &'a TestServer) -> Self {
        Kubectl {
            bin,
            srv,
            home: tempfile::tempdir().unwrap(),
        }
    }

    fn command(&self, token: Option<&str>, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.bin);
        c.arg("--server").arg(self.srv.url());
        c.arg("--certificate-authority").arg(self.srv.ca_path());
        if let Some(t) = token {
            c.args(["--token", t]);
        }
        c.args(args)
            .env("KUBECONFIG", self.home.path().join("kubeconfig"))
            .env("HOME", self.home.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }

    /// Run to completion: (success, stdout, stderr).
    async fn run(&self, token: Option<&str>, args: &[&str]) -> (bool, String, String) {
        let out = tokio::time::timeout(support::DEADLINE, self.command(token, args).output())
            .await
            .expect("kubectl hung")
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }
}

#[tokio::test]
async fn alice_watches_her_namespace_with_every_kubectl() {
    let srv = TestServer::start(&[]).await;
    for (round, bin) in kubectls().into_iter().enumerate() {
        let k = Kubectl::new(bin.clone(), &srv);
        let mut child = k
            .command(Some(ALICE_TOKEN), &["get", "--raw", TEAM_A])
            .spawn()
            .unwrap();
        support::eventually("kubectl's watch to open", || async {
            let (_, body) = srv
                .client(Some(support::server::ADMIN_TOKEN))
                .get("/metrics")
                .await;
            String::from_utf8_lossy(&body)
                .contains("kube_audit_stream_watch_watchers{resource=\"namespacedevents\"} 1")
        })
        .await;
        let ids = [
            format!("a-{round}"),
            format!("b-{round}"),
            format!("a2-{round}"),
        ];
        let items = [
            event(&ids[0], Some("team-a"), "get"),
            event(&ids[1], Some("team-b"), "get"),
            event(&ids[2], Some("team-a"), "delete"),
        ];
        let (code, _) = srv
            .client(Some(PUSH_TOKEN))
            .push("", event_list("audit.k8s.io/v1", &items))
            .await;
        assert_eq!(code, 200);

        let got: Vec<String> = support::json_lines(child.stdout.take().unwrap(), 2)
            .await
            .iter()
            .map(|v| v["object"]["auditID"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            got,
            [ids[0].clone(), ids[2].clone()],
            "{}: team-a only, in order",
            bin.display()
        );
        child.kill().await.unwrap();
        support::eventually("the watch to close", || async {
            let (_, body) = srv
                .client(Some(support::server::ADMIN_TOKEN))
                .get("/metrics")
                .await;
            String::from_utf8_lossy(&body)
                .contains("kube_audit_stream_watch_watchers{resource=\"namespacedevents\"} 0")
        })
        .await;
    }
}

#[tokio::test]
async fn kubectl_prints_our_status_errors() {
    let srv = TestServer::start(&[]).await;
    let k = Kubectl::new(kubectls().remove(0), &srv);
    let team_b = "/apis/audit.k8s.io/v1alpha1/namespaces/team-b/namespacedevents?watch=1";
    let (ok, _, stderr) = k.run(Some(ALICE_TOKEN), &["get", "--raw", team_b]).await;
    assert!(!ok);
    assert!(
        stderr.contains(r#"Error from server (Forbidden): namespacedevents.audit.k8s.io is forbidden: User "alice" cannot watch resource "namespacedevents" in API group "audit.k8s.io" in the namespace "team-b""#),
        "{stderr}"
    );
    // (Without any credentials kubectl prompts for a user name instead of asking.)
    let (ok, _, stderr) = k.run(Some("wrong-token"), &["get", "--raw", TEAM_A]).await;
    assert!(!ok);
    assert!(
        stderr.contains("You must be logged in to the server (Unauthorized)"),
        "{stderr}"
    );
    let (ok, stdout, _) = k
        .run(
            Some(ALICE_TOKEN),
            &["get", "--raw", "/apis/audit.k8s.io/v1alpha1"],
        )
        .await;
    assert!(ok);
    assert!(stdout.contains("\"namespacedevents\""));
}
