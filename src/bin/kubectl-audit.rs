//! The `kubectl-audit` binary, `kubectl audit` once on the PATH: flags → runtime →
//! `plugin::run`, and Ctrl-C → exit 0. Everything else lives in `kube_audit_stream::plugin`.

use std::process::ExitCode;

use clap::Parser;
use kube_audit_stream::plugin::{self, cli::Cli};

fn main() -> ExitCode {
    // clap prints --help, --version and usage errors itself (exit 0 and 2).
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("starting the async runtime: {e}")),
    };
    runtime.block_on(async {
        tokio::select! {
            result = plugin::run(cli) => match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            },
            // A person stopping `tail` is its normal end.
            _ = tokio::signal::ctrl_c() => ExitCode::SUCCESS,
        }
    })
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("{e}");
    ExitCode::FAILURE
}
