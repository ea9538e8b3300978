//! A real NATS server with JetStream on a loopback port of its own, for the `--bus=nats`
//! tests: started, killed and started again on the same port by the test.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

use super::DEADLINE;
use super::nats_server;

pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl NatsServer {
    /// Start `nats-server -js` on a free loopback port. Fails the test, saying what to
    /// install, when there is no `nats-server` on the PATH: these tests are never skipped.
    pub fn start() -> NatsServer {
        let mut nats = NatsServer::not_started();
        nats.restart();
        nats
    }

    /// A free port where NATS will run once `restart` is called.
    pub fn not_started() -> NatsServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        NatsServer {
            child: None,
            port,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kill it: its in-memory streams are gone with it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it (again) on the same port, and wait until it takes connections.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new(nats_server::binary())
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{}", nats_server::cannot_start(&e)));
        self.child = Some(child);
        let start = std::time::Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(start.elapsed() < DEADLINE, "nats-server did not start");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
