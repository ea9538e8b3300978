//! The `kube-audit-stream` binary: flags → tracing → bind → `server::run` → exit code.
//! Everything else lives in the library.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use kube_audit_stream::config::{Cli, Command, Settings};
use kube_audit_stream::logging;
use kube_audit_stream::server::{self, App};

/// Every event is a few allocations that live as long as the replay window holds it, and
/// every watch frame is allocated on one thread and freed on another. glibc's allocator
/// spent a sixth of ingest's CPU freeing; mimalloc halved fan-out's bytes per CPU-second;
/// jemalloc did neither (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version are not errors.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            return ExitCode::FAILURE;
        }
        // One line: clap's first line names the bad flag; the rest is usage text.
        Err(e) => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            return fail(first.trim_start_matches("error: "));
        }
    };
    let Command::Serve(args) = cli.command;
    let settings = match args.validate() {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    logging::init(args.logging.log_format, args.logging.v);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(format!("starting the async runtime: {e}")),
    };
    match runtime.block_on(serve(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

async fn serve(settings: Settings) -> Result<(), String> {
    let app = App::new(&settings).await.map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| format!("--secure-port: binding {}: {e}", settings.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(%addr, "serving HTTPS");
    if settings.dev {
        eprintln!("{}", dev_banner(addr));
    }
    server::run(app, listener, shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}

/// SIGTERM (how Kubernetes stops a pod) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn dev_banner(addr: std::net::SocketAddr) -> String {
    let server = format!("https://{addr}");
    format!(
        "
kube-audit-stream --dev is serving on {server} (self-signed certificate; example users from deploy/dev)

  Push the sample audit events, as a kube-apiserver webhook would:
    python3 hack/push-events.py --server {server} deploy/dev/sample-events.jsonl

  Watch namespace team-a as alice (may read team-a only), as rows or as the raw stream:
    kubectl --server {server} --insecure-skip-tls-verify --token alice-dev-token \\
      get namespacedevents.audit.k8s.io -n team-a -w
    kubectl --server {server} --insecure-skip-tls-verify --token alice-dev-token \\
      get --raw '/apis/audit.k8s.io/v1alpha1/namespaces/team-a/namespacedevents?watch=1'

  Watch everything as admin:
    curl -sNk -H 'Authorization: Bearer admin-dev-token' '{server}/apis/audit.k8s.io/v1alpha1/events?watch=1'
"
    )
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("kube-audit-stream: {e}");
    ExitCode::FAILURE
}
