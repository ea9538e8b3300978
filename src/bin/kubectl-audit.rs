//! The `kubectl-audit` binary, `kubectl audit` once on the PATH: flags → runtime →
//! `plugin::run`, and Ctrl-C → exit 0. Everything else lives in `kube_audit_stream::plugin`.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use kube_audit_stream::plugin::{self, cli::Cli};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        // `kubectl audit` alone: the help, as a usage error.
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            return ExitCode::from(2);
        }
        // One line, as kubectl's: clap's first names the bad flag, the rest is usage.
        Err(e) => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            return fail(format!("{first} (see kubectl audit --help)"));
        }
    };
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

/// Print `e` and fail. Escaped for the terminal, line by line: an error can quote what the
/// server or the connection said.
fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("{}", plugin::print::escape_lines(&e.to_string()));
    ExitCode::FAILURE
}
