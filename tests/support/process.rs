//! The real binary, `serve --dev` on an ephemeral port, in a process of its own: for what
//! only a separate process shows (its memory, its log on stderr).

use std::io::BufRead;
use std::sync::{Arc, Mutex};

use super::DEADLINE;

/// The server process; killed when dropped.
pub struct ServerProcess {
    child: std::process::Child,
    /// Every line it wrote to stderr so far.
    log: Arc<Mutex<Vec<String>>>,
    addr: std::net::SocketAddr,
    ca_pem: String,
    _dir: tempfile::TempDir,
}

impl ServerProcess {
    pub fn start(flags: &[&str]) -> ServerProcess {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kube-audit-stream"))
            .args(["serve", "--dev", "--secure-port", "0", "--cert-dir"])
            .arg(dir.path())
            .args(flags)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // "kube-audit-stream --dev is serving on https://127.0.0.1:PORT (...)", on stderr,
        // which is then drained for as long as the server lives.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                lines.lock().unwrap().push(line.clone());
                let addr = line
                    .split_once("serving on https://")
                    .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok());
                if let Some(addr) = addr {
                    let _ = tx.send(addr);
                }
            }
        });
        let addr: std::net::SocketAddr = rx
            .recv_timeout(DEADLINE)
            .expect("the server says where it serves");
        let ca_pem = std::fs::read_to_string(dir.path().join("apiserver.crt")).unwrap();
        ServerProcess {
            child,
            log,
            addr,
            ca_pem,
            _dir: dir,
        }
    }

    /// Kill it at once, as a node failure would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// What it has logged so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn client(&self, token: Option<&str>) -> super::client::Client {
        super::client::Client::new(self.addr, &self.ca_pem, token)
    }

    pub fn rss_bytes(&self) -> i64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kb: i64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap();
        kb * 1024
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
