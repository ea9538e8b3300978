//! The server under test, in its own process, so that its CPU time and RSS are measured
//! apart from the load generator's.
//!
//! The load generator runs itself again (`current_exe`) with the hidden `__serve`
//! subcommand, its run's name and log level: that child builds the real server from the
//! flags that follow, binds a free loopback port, prints the address on stdout, and
//! serves until its stdin closes (the parent ended or dropped it: a crashed load
//! generator cannot leave a server behind) or it gets SIGTERM.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use clap::Parser as _;
use kube_audit_stream::config::{Cli, Command};
use kube_audit_stream::server::{self, App};
use tokio::io::AsyncBufReadExt as _;

use crate::client;

// The tests' own lookup of nats-server (one file, compiled into both), so that the
// generator starts the binary `hack/test` checked.
#[path = "../../tests/support/nats_server.rs"]
mod nats_server;

/// The hidden subcommand the child runs.
pub const SERVE_SUBCOMMAND: &str = "__serve";
/// The child's first stdout line: this prefix and the bound address.
const LISTENING: &str = "listening on ";
/// How long the server may take to start, or to stop once asked.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// The child's side: `args` are the server's `serve` flags.
pub fn child_main(args: Vec<String>, log_level: &str) -> anyhow::Result<()> {
    let argv = ["kube-audit-stream".to_owned(), "serve".to_owned()]
        .into_iter()
        .chain(args);
    let Command::Serve(args) = Cli::try_parse_from(argv)?.command;
    let settings = args.validate()?;
    ensure!(
        settings.listen.ip().is_loopback(),
        "the load generator only runs the server on loopback, not {}",
        settings.listen
    );
    init_tracing(log_level);

    // Stdin is read on a plain thread: a tokio stdin read would keep the runtime from
    // shutting down after a SIGTERM.
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        let _ = closed_tx.send(());
    });

    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let app = App::new(&settings).await?;
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("binding {}", settings.listen))?;
        let addr = listener.local_addr()?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{LISTENING}{addr}")?;
        out.flush()?;
        drop(out);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let shutdown = async move {
            tokio::select! {
                _ = closed_rx => {}
                _ = term.recv() => {}
            }
        };
        server::run(app, listener, shutdown).await?;
        anyhow::Ok(())
    })?;
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// How a generator's run ended, for `generator_main`.
#[derive(Clone, Copy)]
pub struct Verdict {
    /// The run's name, which starts its last line and its server child's errors.
    pub name: &'static str,
    /// The log filter without `RUST_LOG`, for the generator and its server child.
    pub log_level: &'static str,
    /// Printed when the run passed, if anything.
    pub passed: Option<&'static str>,
    pub failed: &'static str,
}

/// The running generator's verdict, set once its flags are parsed. Which run it is (the
/// load generator's or the soak's) is only known then, and its server children are
/// started deep inside the run: they read their name and log level from here rather than
/// through every phase's arguments.
static RUNNING: OnceLock<Verdict> = OnceLock::new();

/// The server binary's allocator, so that the server child measures as it ships.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Logs on stderr at `level` (`RUST_LOG` overrides it).
fn init_tracing(level: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// The generator's whole `main` (for the load generator's runs and the soak's): the
/// server child when run as one, else `start` (which parses the flags, so that `--help`
/// exits before a runtime exists, and says which run it is) driven to its end:
/// `Ok(true)` passed, `Ok(false)` a check failed.
pub fn generator_main<F>(start: impl FnOnce() -> (Verdict, F)) -> std::process::ExitCode
where
    F: std::future::Future<Output = anyhow::Result<bool>>,
{
    use std::process::ExitCode;
    let mut args = std::env::args();
    if args.nth(1).as_deref() == Some(SERVE_SUBCOMMAND) {
        // `__serve NAME LOG_LEVEL FLAGS…`, as `ServerProcess::start` runs it.
        let name = args.next().unwrap_or_default();
        let log_level = args.next().unwrap_or_default();
        return match child_main(args.collect(), &log_level) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{name} server: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let (verdict, run) = start();
    let name = verdict.name;
    let _ = RUNNING.set(verdict);
    init_tracing(verdict.log_level);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{name}: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run) {
        Ok(true) => {
            if let Some(line) = verdict.passed {
                println!("{name}: {line}");
            }
            ExitCode::SUCCESS
        }
        Ok(false) => {
            println!("{name}: {}", verdict.failed);
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The parent's handle on the server process.
pub struct ServerProcess {
    pub addr: SocketAddr,
    pub pid: u32,
    child: tokio::process::Child,
}

impl ServerProcess {
    /// Start the server with these `serve` flags and wait until it listens.
    pub async fn start(args: &[String]) -> anyhow::Result<ServerProcess> {
        let exe = std::env::current_exe().context("finding the load generator's executable")?;
        let running = RUNNING
            .get()
            .context("a server started outside generator_main")?;
        let mut child = tokio::process::Command::new(exe)
            .args([SERVE_SUBCOMMAND, running.name, running.log_level])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // Only ever this child, which we started.
            .kill_on_drop(true)
            .spawn()
            .context("starting the server process")?;
        let pid = child.id().context("the server process has no id")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = match tokio::time::timeout(START_TIMEOUT, lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => {
                bail!("the server process exited before listening (see its error above)")
            }
            Ok(Err(e)) => bail!("reading the server's address: {e}"),
            Err(_) => bail!("the server did not listen within {START_TIMEOUT:?}"),
        };
        let addr: SocketAddr = line
            .strip_prefix(LISTENING)
            .with_context(|| format!("unexpected line from the server: {line:?}"))?
            .parse()
            .with_context(|| format!("unexpected address from the server: {line:?}"))?;
        ensure!(
            addr.ip().is_loopback(),
            "the server listens on {addr}, not loopback"
        );
        Ok(ServerProcess { addr, pid, child })
    }

    /// Close its stdin (it ends its watches and drains), wait; kill it if it hangs.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        drop(self.child.stdin.take());
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => bail!("the server process ended with {status}"),
            Ok(Err(e)) => bail!("waiting for the server process: {e}"),
            Err(_) => {
                let _ = self.child.kill().await;
                bail!("the server process did not stop within {STOP_TIMEOUT:?}; killed it")
            }
        }
    }
}

/// A NATS server with JetStream on a free loopback port, for `--bus=nats` runs: the
/// generator's child, killed with it.
pub struct NatsProcess {
    pub url: String,
    pub pid: u32,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl NatsProcess {
    pub async fn start() -> anyhow::Result<NatsProcess> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = tempfile::tempdir()?;
        let child = tokio::process::Command::new(nats_server::binary())
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| anyhow::anyhow!(nats_server::cannot_start(&e)))?;
        let pid = child.id().context("nats-server has no id")?;
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            ensure!(
                tokio::time::Instant::now() < deadline,
                "nats-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(NatsProcess {
            url: format!("nats://127.0.0.1:{port}"),
            pid,
            _child: child,
            _dir: dir,
        })
    }
}

/// The server's flags for a run: loopback, `token` for the watchers (user `watcher`),
/// every pusher of `pki` allowed, AlwaysAllow; then `extra`.
pub(crate) fn server_argv(
    dir: &Path,
    pki: &client::Pki,
    token: &str,
    watcher: &str,
    extra: &[String],
) -> anyhow::Result<Vec<String>> {
    let write = |name: &str, text: &str| -> anyhow::Result<String> {
        let p = dir.join(name);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
        Ok(p.display().to_string())
    };
    let token_file = write("tokens.csv", &format!("{token},{watcher},uid-{watcher}\n"))?;
    let ca_file = write("ingest-ca.crt", &pki.ca_pem)?;
    let names: Vec<&str> = pki.pushers.iter().map(|p| p.name.as_str()).collect();
    let mut argv: Vec<String> = [
        "--bind-address",
        "127.0.0.1",
        "--secure-port",
        "0",
        "--token-auth-file",
        &token_file,
        "--authorization-mode",
        "AlwaysAllow",
        "--ingest-client-ca-file",
        &ca_file,
        "--ingest-allowed-names",
        &names.join(","),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    argv.extend(extra.iter().cloned());
    Ok(argv)
}
