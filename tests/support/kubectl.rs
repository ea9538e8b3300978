//! A real `kubectl` (any installed version) against a `TestServer`: the server and CA
//! given by flag, a HOME and kubeconfig of its own (never the user's `~/.kube`).

use std::path::PathBuf;
use std::process::Stdio;

use super::server::TestServer;

pub struct Kubectl<'a> {
    bin: PathBuf,
    srv: &'a TestServer,
    home: tempfile::TempDir,
}

impl<'a> Kubectl<'a> {
    pub fn new(bin: PathBuf, srv: &'a TestServer) -> Self {
        Kubectl {
            bin,
            srv,
            home: tempfile::tempdir().unwrap(),
        }
    }

    pub fn command(&self, token: Option<&str>, args: &[&str]) -> tokio::process::Command {
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
    pub async fn run(&self, token: Option<&str>, args: &[&str]) -> (bool, String, String) {
        let out = tokio::time::timeout(super::DEADLINE, self.command(token, args).output())
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
