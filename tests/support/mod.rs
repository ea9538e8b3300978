//! Shared helpers for the black-box tests: certificates, a server on a real socket with
//! real TLS, an HTTPS client that speaks HTTP/1.1 or HTTP/2, and the audit fixtures.
#![allow(dead_code)] // each test file uses its own part of the helpers

pub mod aggregator;
pub mod client;
pub mod cluster;
pub mod fake_apiserver;
pub mod fixtures;
pub mod kubectl;
pub mod nats;
pub mod nats_server;
pub mod pki;
pub mod process;
pub mod server;
pub mod yaml;

use std::future::Future;
use std::time::Duration;

/// The one deadline tests wait under; it exists only to fail a test that hangs.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Poll `check` until it holds, failing the test after `DEADLINE`.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    while !check().await {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The first `n` JSON lines a child process prints (a `kubectl get --raw` watch, say).
pub async fn json_lines(stdout: tokio::process::ChildStdout, n: usize) -> Vec<serde_json::Value> {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let line = tokio::time::timeout(DEADLINE, lines.next_line())
            .await
            .expect("no line within the deadline")
            .expect("reading the process's output")
            .expect("the process ended early");
        out.push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {e}: {line}")));
    }
    out
}

/// The value of one series (`name{labels}` exactly as rendered) on a Prometheus text page.
pub fn metric(text: &[u8], series: &str) -> Option<f64> {
    String::from_utf8_lossy(text)
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}
