//! The flags' validation: every bad flag named in one line, the presets, the bus flags.

use super::*;

fn serve(args: &[&str]) -> Result<Settings, String> {
    let mut argv = vec!["kube-audit-stream", "serve"];
    argv.extend_from_slice(args);
    let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
    let Command::Serve(s) = cli.command;
    s.validate().map_err(|e| e.to_string())
}

#[test]
fn dev_is_loopback_with_embedded_auth() {
    let s = serve(&["--dev"]).unwrap();
    assert_eq!(s.listen, "127.0.0.1:8443".parse().unwrap());
    assert!(matches!(s.token_auth, Some(Source::Embedded { .. })));
    assert!(matches!(
        s.authorization,
        AuthzSettings::Abac(Source::Embedded { .. })
    ));
    assert!(s.ingest.gate.open_on_loopback);
    assert!(matches!(s.cert, tls::CertSource::SelfSigned { .. }));
    let e = serve(&["--dev", "--bind-address", "0.0.0.0"]).unwrap_err();
    assert!(e.starts_with("--bind-address:"), "{e}");
}

#[test]
fn the_embedded_dev_files_parse() {
    assert!(
        crate::authn::TokenFile::parse(DEV_TOKENS, "dev")
            .unwrap()
            .lookup("alice-dev-token")
            .is_some()
    );
    crate::authz::Abac::parse(DEV_POLICY, "dev").unwrap();
}

#[test]
fn bad_flags_name_the_flag() {
    for (args, flag) in [
        (vec!["--dev", "--window-bytes", "0"], "--window-bytes:"),
        (
            vec!["--dev", "--tls-cert-file", "x"],
            "--tls-private-key-file:",
        ),
        (
            vec!["--dev", "--watcher-burst-bytes", "0"],
            "--watcher-burst-bytes:",
        ),
        (
            vec!["--dev", "--max-watchers-per-user", "0"],
            "--max-watchers-per-user: must be > 0",
        ),
        (
            vec!["--dev", "--max-request-header-bytes", "100"],
            "--max-request-header-bytes: must be from 4096",
        ),
        (
            vec!["--dev", "--max-url-bytes", "10"],
            "--max-url-bytes: must be at least 256",
        ),
        (
            vec!["--dev", "--request-header-timeout", "0s"],
            "--request-header-timeout: must be > 0",
        ),
        (
            vec!["--dev", "--tls-handshake-timeout", "soon"],
            "error: invalid value 'soon' for '--tls-handshake-timeout",
        ),
        (
            vec!["--dev", "--max-ingest-inflight-per-pusher", "0"],
            "--max-ingest-inflight-per-pusher: must be > 0",
        ),
        (
            vec!["--dev", "--ingest-client-ca-file", "ca"],
            "--ingest-allowed-names:",
        ),
        (
            vec![
                "--token-auth-file",
                "t",
                "--authorization-mode",
                "AlwaysAllow",
            ],
            "--ingest-token-file:",
        ),
        (
            vec![
                "--authorization-mode",
                "AlwaysAllow",
                "--token-auth-file",
                "t",
                "--authorization-policy-file",
                "p",
                "--ingest-token-file",
                "i",
            ],
            "--authorization-policy-file:",
        ),
        (
            vec![
                "--ingest-token-file",
                "i",
                "--authorization-mode",
                "AlwaysAllow",
            ],
            "--token-auth-file:",
        ),
        (
            vec![
                "--authorization-mode",
                "ABAC",
                "--token-auth-file",
                "t",
                "--ingest-token-file",
                "i",
            ],
            "--authorization-policy-file:",
        ),
        (
            vec!["--dev", "--bus=kafka"],
            "error: invalid value 'kafka' for '--bus",
        ),
        (
            vec!["--dev", "--bus=nats", "--nats-url=http://a:4222"],
            "--nats-url:",
        ),
        (
            vec!["--dev", "--bus=nats", "--nats-url=a:4222"],
            "--nats-url:",
        ),
        (
            vec!["--dev", "--bus=nats", "--nats-stream=a.b"],
            "--nats-stream:",
        ),
        (
            vec!["--dev", "--bus=nats", "--nats-stream="],
            "--nats-stream:",
        ),
        (
            vec!["--dev", "--bus=nats", "--nats-creds-file=/nonexistent"],
            "--nats-creds-file:",
        ),
        (vec!["--dev", "--nats-ca-file=ca.pem"], "--nats-ca-file:"),
        (
            vec!["--dev", "--namespace-burst-bytes", "1000000"],
            "--namespace-burst-bytes: only used with --namespace-bytes-per-second",
        ),
        (
            vec!["--dev", "--namespace-bytes-per-second", "1000000"],
            "--namespace-burst-bytes: must be > 0",
        ),
        (
            vec![
                "--dev",
                "--namespace-bytes-per-second",
                "1000000",
                "--namespace-burst-bytes",
                "50000",
            ],
            "--namespace-burst-bytes: must be at least --max-event-bytes (102400)",
        ),
        (
            vec!["--dev", "--namespace-bytes-per-second=lots"],
            "error: invalid value 'lots' for '--namespace-bytes-per-second",
        ),
    ] {
        let e = serve(&args).unwrap_err();
        assert!(e.starts_with(flag), "{args:?}: {e}");
    }
}

#[test]
fn the_namespace_budget_is_off_unless_asked() {
    let off = serve(&["--dev"]).unwrap().namespace_budget;
    assert_eq!(off.bytes_per_second, 0, "no cap by default");
    let s = serve(&[
        "--dev",
        "--namespace-bytes-per-second",
        "2000000",
        "--namespace-burst-bytes",
        "4000000",
    ])
    .unwrap();
    assert_eq!(
        s.namespace_budget,
        budget::Config {
            bytes_per_second: 2_000_000,
            burst_bytes: 4_000_000,
        }
    );
    // A smaller --max-event-bytes lowers the smallest burst with it.
    serve(&[
        "--dev",
        "--namespace-bytes-per-second",
        "1000",
        "--namespace-burst-bytes",
        "2000",
        "--max-event-bytes",
        "2000",
    ])
    .unwrap();
}

#[test]
fn webhook_mode_is_cluster_mode() {
    let s = serve(&[
        "--ingest-token-file",
        "i",
        "--kubeconfig",
        "kc",
        "--authorization-kubeconfig",
        "akc",
        "--authorization-webhook-cache-authorized-ttl",
        "3s",
    ])
    .unwrap();
    let c = s.cluster.expect("cluster mode");
    assert_eq!(
        c.authentication_kubeconfig.as_deref(),
        Some(std::path::Path::new("kc"))
    );
    assert_eq!(
        c.authorization_kubeconfig.as_deref(),
        Some(std::path::Path::new("akc"))
    );
    assert!(matches!(s.authorization, AuthzSettings::Webhook { .. }));
    assert_eq!(s.recheck_interval, Duration::from_secs(3));
    // In-cluster (no kubeconfig) is cluster mode too; ABAC with a token file is not.
    assert!(
        serve(&["--ingest-token-file", "i"])
            .unwrap()
            .cluster
            .is_some()
    );
    let abac = serve(&[
        "--ingest-token-file",
        "i",
        "--token-auth-file",
        "t",
        "--authorization-mode",
        "ABAC",
        "--authorization-policy-file",
        "p",
    ])
    .unwrap();
    assert!(abac.cluster.is_none());
}

#[test]
fn cluster_style_flags_validate() {
    let s = serve(&[
        "--token-auth-file",
        "t.csv",
        "--authorization-mode",
        "abac",
        "--authorization-policy-file",
        "p.jsonl",
        "--ingest-client-ca-file",
        "ca.pem",
        "--ingest-allowed-names",
        "apiserver-1,apiserver-2",
        "--bind-address",
        "10.0.0.1",
        "--authentication-token-webhook-cache-ttl",
        "1m30s",
    ])
    .unwrap();
    assert_eq!(s.listen, "10.0.0.1:8443".parse().unwrap());
    assert_eq!(
        s.ingest.gate.allowed_names,
        vec!["apiserver-1", "apiserver-2"]
    );
    assert!(!s.ingest.gate.open_on_loopback);
    assert_eq!(s.always_allow_paths, vec!["/healthz", "/readyz", "/livez"]);
    assert!(parse_duration("ten").is_err());
}

#[test]
fn the_bus_flags() {
    assert!(
        serve(&["--dev"]).unwrap().nats.is_none(),
        "memory by default"
    );
    let s = serve(&["--dev", "--bus=nats"]).unwrap();
    let nats = s.nats.unwrap();
    assert_eq!(nats.urls, ["nats://127.0.0.1:4222"]);
    assert_eq!(nats.stream, "KUBE_AUDIT");
    let s = serve(&[
        "--dev",
        "--bus",
        "nats",
        "--nats-url",
        "nats://a:4222, tls://b:4222",
        "--nats-stream",
        "AUDIT_2",
    ])
    .unwrap();
    assert_eq!(s.nats.unwrap().urls, ["nats://a:4222", "tls://b:4222"]);
}
