//! The binary itself: `--help` lists the contract's flags, bad flags fail with one line,
//! and `serve --dev` works end to end with the README's own commands, then stops on SIGTERM.

mod support;

use std::process::{Command, Stdio};

use tokio::io::{AsyncBufReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_kube-audit-stream");

/// Every flag the contract names.
const CONTRACT_FLAGS: &[&str] = &[
    "--secure-port",
    "--bind-address",
    "--tls-cert-file",
    "--tls-private-key-file",
    "--cert-dir",
    "--kubeconfig",
    "--authentication-kubeconfig",
    "--authorization-kubeconfig",
    "--client-ca-file",
    "--requestheader-client-ca-file",
    "--requestheader-allowed-names",
    "--requestheader-username-headers",
    "--requestheader-group-headers",
    "--requestheader-extra-headers-prefix",
    "--authentication-token-webhook-cache-ttl",
    "--authorization-webhook-cache-authorized-ttl",
    "--authorization-webhook-cache-unauthorized-ttl",
    "--authorization-always-allow-paths",
    "--authorization-mode",
    "--authorization-policy-file",
    "--token-auth-file",
    "--ingest-client-ca-file",
    "--ingest-allowed-names",
    "--ingest-token-file",
    "--max-request-bytes",
    "--window-events",
    "--window-bytes",
    "--watcher-bytes-per-second",
    "--watcher-burst-bytes",
    "--namespace-bytes-per-second",
    "--namespace-burst-bytes",
    "--max-event-bytes",
    "--max-watchers",
    "--max-watchers-per-user",
    "--redact",
    "--redaction-key-file",
    "--authorization-granularity",
    "--bus",
    "--nats-url",
    "--nats-stream",
    "--nats-ca-file",
    "--nats-creds-file",
    "--source-silent-after",
    "--dev",
];

#[test]
fn help_lists_every_contract_flag() {
    let out = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in CONTRACT_FLAGS {
        assert!(
            help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
            "--help lacks {flag}"
        );
    }
}

#[test]
fn bad_flags_fail_with_one_clear_line() {
    for (args, expect) in [
        (
            vec!["serve", "--nope"],
            "kube-audit-stream: unexpected argument '--nope'",
        ),
        (
            vec!["serve", "--dev", "--window-bytes", "0"],
            "kube-audit-stream: --window-bytes: must be > 0",
        ),
        (
            vec!["serve", "--dev", "--window-events", "many"],
            "kube-audit-stream: invalid value 'many'",
        ),
        (
            vec!["serve", "--dev", "--bind-address", "0.0.0.0"],
            "kube-audit-stream: --bind-address:",
        ),
        (
            vec!["serve", "--dev", "--authorization-mode", "RBAC"],
            "kube-audit-stream: invalid value 'RBAC'",
        ),
        (vec!["serve"], "kube-audit-stream: --ingest-token-file:"),
        (
            vec!["serve", "--dev", "--namespace-bytes-per-second", "1000000"],
            "kube-audit-stream: --namespace-burst-bytes: must be > 0 while --namespace-bytes-per-second is set",
        ),
        (
            vec!["serve", "--dev", "--log-format=xml"],
            "kube-audit-stream: invalid value 'xml' for '--log-format <FORMAT>': must be text or json",
        ),
        (
            vec!["serve", "--dev", "-v=loud"],
            "kube-audit-stream: invalid value 'loud' for '--v <LEVEL>': must be a non-negative integer",
        ),
        (
            vec!["serve", "--dev", "--v=-1"],
            "kube-audit-stream: invalid value '-1' for '--v <LEVEL>': must be a non-negative integer",
        ),
        (
            vec![
                "serve",
                "--ingest-token-file",
                "i",
                "--authorization-mode",
                "AlwaysAllow",
            ],
            "kube-audit-stream: --token-auth-file:",
        ),
        (
            vec!["serve", "--ingest-token-file", "/nope.csv"],
            "kube-audit-stream: --authentication-kubeconfig: not given, and no in-cluster config",
        ),
        (
            vec!["serve", "--dev", "--token-auth-file", "/does/not/exist.csv"],
            "kube-audit-stream: reading /does/not/exist.csv",
        ),
        (
            vec![
                "serve",
                "--dev",
                "--tls-cert-file",
                "/nope.crt",
                "--tls-private-key-file",
                "/nope.key",
            ],
            "kube-audit-stream: /nope.crt:",
        ),
    ] {
        let out = Command::new(BIN)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(
            stderr.lines().count(),
            1,
            "{args:?}: one line, got {stderr:?}"
        );
        assert!(stderr.starts_with(expect), "{args:?}: {stderr:?}");
    }
}

#[tokio::test]
async fn dev_mode_end_to_end_as_the_readme_says() {
    let home = tempfile::tempdir().unwrap();
    let mut server = tokio::process::Command::new(BIN)
        .args(["serve", "--dev", "--secure-port", "0"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(server.stderr.take().unwrap()).lines();
    let url = tokio::time::timeout(support::DEADLINE, async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            if let Some(rest) = line.split("is serving on ").nth(1) {
                return rest.split_whitespace().next().unwrap().to_owned();
            }
        }
        panic!("server exited before serving");
    })
    .await
    .expect("no banner");
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");

    let mut watch = tokio::process::Command::new("kubectl")
        .args([
            "--server",
            &url,
            "--insecure-skip-tls-verify",
            "--token",
            "alice-dev-token",
            "get",
            "--raw",
        ])
        .arg("/apis/audit.k8s.io/v1alpha1/namespaces/team-a/namespacedevents?watch=1")
        .env("KUBECONFIG", home.path().join("none"))
        .env("HOME", home.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("kubectl on PATH");
    // The watch is open once the server has a watcher; push only then.
    let root = env!("CARGO_MANIFEST_DIR");
    support::eventually("alice's watch to open", || async {
        let out = tokio::process::Command::new("curl")
            .args([
                "-sk",
                "-H",
                "Authorization: Bearer admin-dev-token",
                &format!("{url}/metrics"),
            ])
            .output()
            .await
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .contains("kube_audit_stream_watch_watchers{resource=\"namespacedevents\"} 1")
    })
    .await;
    let push = tokio::process::Command::new("python3")
        .arg(format!("{root}/hack/push-events.py"))
        .args(["--server", &url])
        .arg(format!("{root}/deploy/dev/sample-events.jsonl"))
        .output()
        .await
        .unwrap();
    assert!(
        push.status.success(),
        "push: {}",
        String::from_utf8_lossy(&push.stderr)
    );
    // A file with no events is a failed push, not "pushed 0 events".
    let empty = tempfile::NamedTempFile::new().unwrap();
    let nothing = tokio::process::Command::new("python3")
        .arg(format!("{root}/hack/push-events.py"))
        .args(["--server", &url])
        .arg(empty.path())
        .output()
        .await
        .unwrap();
    assert_eq!(nothing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&nothing.stderr).contains("no audit events"));

    for v in support::json_lines(watch.stdout.take().unwrap(), 4).await {
        assert_eq!(
            v["object"]["metadata"]["namespace"], "team-a",
            "alice sees team-a only"
        );
    }

    // SIGTERM: the server ends alice's watch, so kubectl exits, and the server exits 0.
    let pid = server.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(support::DEADLINE, server.wait())
        .await
        .expect("server did not stop")
        .unwrap();
    assert!(status.success(), "exit status {status}");
    let kubectl = tokio::time::timeout(support::DEADLINE, watch.wait())
        .await
        .expect("kubectl did not end")
        .unwrap();
    assert!(
        kubectl.success(),
        "kubectl saw a clean end of stream: {kubectl}"
    );
}

/// The log a refused request leaves: one line saying who was turned away and why, never
/// the credential, and no terminal colour codes in a log that is not a terminal.
#[tokio::test]
async fn refused_requests_are_logged_plainly() {
    let srv = support::process::ServerProcess::start(&[]);
    let events = "/apis/audit.k8s.io/v1alpha1/events";
    let (code, _) = srv.client(None).get(events).await;
    assert_eq!(code, http::StatusCode::UNAUTHORIZED);
    let (code, _) = srv.client(Some("not-a-real-token")).get(events).await;
    assert_eq!(code, http::StatusCode::UNAUTHORIZED);
    let (code, _) = srv.client(Some("alice-dev-token")).get(events).await;
    assert_eq!(code, http::StatusCode::FORBIDDEN);
    support::eventually("three refusals logged", || {
        let n = srv
            .log()
            .iter()
            .filter(|l| l.contains("request refused"))
            .count();
        async move { n == 3 }
    })
    .await;
    let log = srv.log().join("\n");
    assert!(
        log.contains("code=401") && log.contains("code=403"),
        "{log}"
    );
    assert!(log.contains(r#"User "alice" cannot list"#), "{log}");
    assert!(
        !log.contains("not-a-real-token"),
        "a token in the log: {log}"
    );
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a piped log: {log}"
    );
}
