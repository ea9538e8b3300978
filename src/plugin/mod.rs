//! `kubectl audit`, the kubectl plugin (the `kubectl-audit` binary is a thin `main` over
//! this module): its flags (`cli`), the reads against the aggregated API through the
//! user's kubeconfig (`api`: LIST in pages, WATCH resumed from the last resourceVersion;
//! `sources`, as the server prints them), the printers (`print`: aligned table, JSON
//! lines, YAML), and `rbac`'s policy made from a user's events. A client of the server as
//! kubectl is: it shares with the server only the API's names and annotations (and the
//! latency format of its Table), never its internals.

pub mod api;
pub mod cli;
mod escape;
pub mod print;
pub mod rbac;

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use api::{Api, ApiFailure, Scope};
use cli::{Cli, Command, TailArgs, WhoArgs};
use print::{Printer, escape_terminal};

/// Why the plugin stopped before its work was done; `main` prints it and exits 1.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server refused: its `Status` message, as kubectl prints it, and a line that
    /// would check the permission (`kubectl auth can-i …`) for 401 and 403.
    #[error("{0}")]
    Server(String),
    /// A bad flag value or a kubeconfig that cannot be used.
    #[error("error: {0}")]
    Usage(String),
    /// The server could not be reached (fatal before it ever answered; afterwards an
    /// outage the tail waits out).
    #[error("error: {0}")]
    Connect(String),
    #[error("error: writing the output: {0}")]
    Output(#[from] std::io::Error),
}

/// Run one command to its end (`tail`, and `rbac -w`, only end on an error).
pub async fn run(mut cli: Cli) -> Result<(), Error> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let verb = match &cli.command {
        Command::Tail(_) => "watch",
        Command::Rbac(args) if args.watch => "watch",
        Command::Who(_) | Command::Sources(_) | Command::Rbac(_) => "list",
    };
    // A user's requests reach past one namespace (cluster-scoped ones, non-resource URLs,
    // other namespaces): without -n or -A, `rbac` reads every event, not the context's
    // namespace.
    if matches!(cli.command, Command::Rbac(_))
        && cli.kube.namespace.is_none()
        && !cli.kube.all_namespaces
    {
        cli.kube.all_events = true;
    }
    let api = Api::connect(&cli.kube, verb).await?;
    let mut printer = Printer::new(cli.kube.output);
    match &cli.command {
        Command::Tail(args) => tail(&api, &mut printer, args).await,
        Command::Who(args) => who(&api, &mut printer, args).await,
        Command::Sources(args) => sources(&api, cli.kube.output, args).await,
        Command::Rbac(args) => rbac(&api, cli.kube.output, args).await,
    }
}

/// How long each watch of `rbac -w` lasts before it is renewed (`tail`'s default).
const RBAC_WATCH_TIMEOUT_SECONDS: u32 = 290;

/// `kubectl audit rbac --user U`: the least policy that allows U's requests the window
/// holds, as YAML; with `-w`, printed again each time live events make it grow.
async fn rbac(api: &Api, output: cli::Output, args: &cli::RbacArgs) -> Result<(), Error> {
    if matches!(output, cli::Output::Json | cli::Output::Wide) {
        return Err(Error::Usage(
            "rbac prints YAML for kubectl apply -f - (-o yaml, the default)".to_owned(),
        ));
    }
    if args.user.is_empty() {
        return Err(Error::Usage("--user: a user name is needed".to_owned()));
    }
    let namespace = match api.scope() {
        Scope::Namespace(ns) => Some(ns.clone()),
        Scope::AllNamespaces | Scope::AllEvents => None,
    };
    let mut policy = PolicySink {
        builder: rbac::Builder::new(rbac::Options {
            user: args.user.clone(),
            namespace,
            resource_names: args.resource_names,
        }),
        cutoff: since_cutoff(args.since),
        printed: None,
    };
    // No field selector on the user: the server selects on user.username, and the requests
    // of an impersonated user (impersonatedUser) are that user's.
    let rv = api
        .list(None, |page| {
            policy.take(page);
            Ok(())
        })
        .await?;
    policy.print()?;
    if policy.printed.is_none() {
        policy.nothing(api.scope());
    }
    if !args.watch {
        return Ok(());
    }
    let mut state = Follow::default();
    follow(
        api,
        &mut policy,
        &mut state,
        None,
        rv,
        true,
        RBAC_WATCH_TIMEOUT_SECONDS,
    )
    .await
}

/// `rbac`'s reader: the events taken into the policy, and the policy last printed.
struct PolicySink {
    builder: rbac::Builder,
    cutoff: Option<Timestamp>,
    /// The YAML last printed; `None` before any.
    printed: Option<String>,
}

impl PolicySink {
    /// Take events into the policy; whether it grew.
    fn take(&mut self, items: &[print::Item]) -> bool {
        let mut grew = false;
        for item in items {
            if self
                .cutoff
                .is_some_and(|c| item.view.time().is_some_and(|t| t < c))
            {
                continue;
            }
            match self.builder.add(item.raw()) {
                Ok(g) => grew |= g,
                // The server sent it as an event; one this reader cannot read is said, not
                // dropped silently.
                Err(e) => eprintln!(
                    "Left out event {}: {e}",
                    escape_terminal(&item.view.metadata.name)
                ),
            }
        }
        grew
    }

    /// Print the policy when it has objects and differs from the one printed last.
    fn print(&mut self) -> std::io::Result<()> {
        let policy = self.builder.policy();
        if policy.is_empty() {
            return Ok(());
        }
        let yaml = policy
            .to_yaml(&self.builder.options().user)
            .map_err(std::io::Error::other)?;
        if self.printed.as_ref() == Some(&yaml) {
            return Ok(());
        }
        let mut out = String::new();
        if self.printed.is_some() {
            // A reader of the stream sees where the new whole policy starts.
            out.push_str("\n# The policy grew: all of it again.\n");
        }
        out.push_str(&yaml);
        print::print(out.as_bytes())?;
        self.printed = Some(yaml);
        Ok(())
    }

    /// Say on stderr why nothing was printed.
    fn nothing(&self, scope: &Scope) {
        let user = escape_terminal(&self.builder.options().user);
        match self.builder.events() {
            0 => eprintln!(
                "No audit events of user \"{user}\" {} in the server's window: no policy.",
                scope.describe()
            ),
            n => eprintln!(
                "{n} audit {} of user \"{user}\", all of discovery every user may read already: no policy.",
                if n == 1 { "event" } else { "events" }
            ),
        }
    }
}

impl Sink for PolicySink {
    fn batch(&mut self, items: &[print::Item]) -> std::io::Result<()> {
        if self.take(items) {
            self.print()?;
        }
        Ok(())
    }
}

/// `kubectl audit sources [NAME]`: what `kubectl get sources.audit.k8s.io` prints (the
/// server's own Table), or the objects as JSON lines or YAML.
async fn sources(api: &Api, output: cli::Output, args: &cli::SourcesArgs) -> Result<(), Error> {
    let table = matches!(output, cli::Output::Table | cli::Output::Wide);
    let body = api.sources(args.name.as_deref(), table).await?;
    let unreadable = |e: serde_json::Error| Error::Server(format!("the server's answer: {e}"));
    if !table {
        return Ok(print::print(
            &print::objects(&body, output).map_err(unreadable)?,
        )?);
    }
    match print::server_table(&body, output == cli::Output::Wide).map_err(unreadable)? {
        Some(text) => print::print(&text)?,
        // kubectl's words for an empty list, on stderr so that stdout stays the rows.
        None => eprintln!("No resources found"),
    }
    Ok(())
}

/// `kubectl audit who NAME`: every event of that object the window holds, oldest first.
async fn who(api: &Api, printer: &mut Printer, args: &WhoArgs) -> Result<(), Error> {
    let mut selector = vec![format!(
        "objectRef.name={}",
        cli::selector_value("NAME", &args.name)?
    )];
    if let Some(r) = &args.resource {
        selector.push(format!(
            "objectRef.resource={}",
            cli::selector_value("--resource", r)?
        ));
    }
    // A request's RequestReceived event says who and what as its ResponseComplete does,
    // without the outcome: one row per request.
    selector.push("stage!=RequestReceived".to_owned());
    let selector = selector.join(",");
    let mut found: Vec<print::Item> = vec![];
    api.list(Some(&selector), |page| {
        found.extend_from_slice(page);
        Ok(())
    })
    .await?;
    // The window is in arrival order; the story is told in the events' own time (several
    // apiservers push, each a little late). Stable: same-time events keep arrival order.
    found.sort_by_key(|e| e.view.time());
    printer.batch(&found)?;
    if found.is_empty() {
        eprintln!(
            "No audit events for {:?} {} in the server's window.",
            args.name,
            api.scope().describe()
        );
    }
    Ok(())
}

/// Where the events of a read go: the printer (`tail`), or the policy being built
/// (`rbac -w`); `follow` feeds either the same way.
trait Sink {
    fn batch(&mut self, items: &[print::Item]) -> std::io::Result<()>;
    /// Before the first live event (a table prints its header).
    fn start_live(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Sink for Printer {
    fn batch(&mut self, items: &[print::Item]) -> std::io::Result<()> {
        Printer::batch(self, items)
    }

    fn start_live(&mut self) -> std::io::Result<()> {
        Printer::start_live(self)
    }
}

/// The start of `--since`'s stretch of time, by the events' own time.
fn since_cutoff(since: Option<humantime::Duration>) -> Option<Timestamp> {
    since.map(|d| {
        let d = k8s_openapi::jiff::SignedDuration::try_from(*d).unwrap_or_default();
        Timestamp::now() - d
    })
}

/// `kubectl audit tail`: the window's matching events, then live ones, until Ctrl-C.
async fn tail(api: &Api, printer: &mut Printer, args: &TailArgs) -> Result<(), Error> {
    let selector = args.field_selector()?;
    let selector = selector.as_deref();
    let cutoff = since_cutoff(args.since);
    let mut state = Follow::default();
    let rv = match args.since_rv {
        Some(rv) => rv,
        None => {
            api.list(selector, |page| {
                let page: Vec<_> = page
                    .iter()
                    .filter(|e| cutoff.is_none_or(|c| e.view.time().is_none_or(|t| t >= c)))
                    .cloned()
                    .collect();
                state.seen(&page);
                printer.batch(&page)
            })
            .await?
        }
    };
    // Whether the server ever answered: until it has, an unreachable one is an error, as
    // for kubectl, not an outage to wait out.
    let answered = args.since_rv.is_none();
    let timeout = args.watch_timeout_seconds();
    follow(api, printer, &mut state, selector, rv, answered, timeout).await
}

/// Watch from `rv` until Ctrl-C (or a refusal), handing each event to `sink`: resumed
/// after a lost connection from the last resourceVersion seen, and after expired history
/// or a restarted server from what the window still holds. `answered`: whether the
/// server has answered already (until it has, an unreachable one is an error).
async fn follow(
    api: &Api,
    sink: &mut impl Sink,
    state: &mut Follow,
    selector: Option<&str>,
    mut rv: u64,
    mut answered: bool,
    timeout_seconds: u32,
) -> Result<(), Error> {
    let mut backoff = Backoff::default();
    loop {
        let mut watch = match api.watch(selector, rv, timeout_seconds).await {
            Ok(w) => w,
            Err(ApiFailure::Refused(status)) => return Err(api.refused(&status)),
            Err(ApiFailure::Transport(e)) if !answered => {
                return Err(Error::Connect(format!("{}: {e}", api.url())));
            }
            Err(ApiFailure::Transport(e)) => {
                state.lost(&e, rv);
                tokio::time::sleep(backoff.next()).await;
                continue;
            }
        };
        if state.outage {
            eprintln!("Watch resumed from resourceVersion {rv}.");
            state.outage = false;
        }
        answered = true;
        // A table's header, before any live row, even when nothing was held.
        sink.start_live()?;
        let mut lines = 0usize;
        loop {
            let next = watch.next().await;
            lines += 1;
            if matches!(next, Ok(Some(_))) {
                backoff.reset();
            }
            match next {
                Ok(Some(api::WatchEvent::Added(ev))) => {
                    rv = ev.resource_version().unwrap_or(rv);
                    state.seen(std::slice::from_ref(&*ev));
                    sink.batch(std::slice::from_ref(&*ev))?;
                }
                Ok(Some(api::WatchEvent::Bookmark { rv: at, dropped })) => {
                    rv = at.unwrap_or(rv);
                    if let Some(n) = dropped.filter(|n| *n > 0) {
                        eprintln!(
                            "{n} {} dropped: over your bandwidth budget",
                            if n == 1 { "event" } else { "events" }
                        );
                    }
                }
                Ok(Some(api::WatchEvent::Error(status))) if status.code == Some(410) => {
                    match resume_after_gone(api, sink, state, selector, &status, rv).await {
                        Ok(now) => rv = now,
                        // The next watch from the same place meets the same 410.
                        Err(Error::Connect(e)) => {
                            state.lost(&e, rv);
                            tokio::time::sleep(backoff.next()).await;
                        }
                        Err(e) => return Err(e),
                    }
                    break;
                }
                // A resourceVersion the server has not reached, even after waiting for it:
                // its numbering went back (it restarted with its clock set back, as a
                // restart numbers from the clock; a restart otherwise meets the 410
                // above). With several replicas, one a moment behind waits instead, so a
                // replica that lags is never taken for this.
                Ok(Some(api::WatchEvent::Error(status))) if status.code == Some(504) => {
                    match restarted(api, sink, state, selector, rv).await {
                        Ok(Some(now)) => rv = now,
                        Ok(None) => {}
                        Err(Error::Connect(e)) => {
                            state.lost(&e, rv);
                            tokio::time::sleep(backoff.next()).await;
                        }
                        Err(e) => return Err(e),
                    }
                    break;
                }
                // Revoked access, or a request the server will never take: the end.
                Ok(Some(api::WatchEvent::Error(status)))
                    if status.code.is_some_and(|c| (400..500).contains(&c)) =>
                {
                    return Err(api.refused(&status));
                }
                // The server failed this watch (it is shutting down, say): watch again.
                Ok(Some(api::WatchEvent::Error(status))) => {
                    let message = status.message.as_deref().unwrap_or_default();
                    state.lost(&format!("error from server: {message}"), rv);
                    tokio::time::sleep(backoff.next()).await;
                    break;
                }
                // The server ended the watch (its timeout, or it is shutting down); one
                // that ends at once, again and again, is not renewed at full speed.
                Ok(None) => {
                    if lines == 1 {
                        tokio::time::sleep(backoff.next()).await;
                    }
                    break;
                }
                Err(e) => {
                    state.lost(&e, rv);
                    tokio::time::sleep(backoff.next()).await;
                    break;
                }
            }
        }
    }
}

/// The history a resumed watch can no longer replay: say how much was skipped, print what
/// the window still holds, and return the resourceVersion to watch from.
async fn resume_after_gone(
    api: &Api,
    sink: &mut impl Sink,
    state: &mut Follow,
    selector: Option<&str>,
    status: &api::Status,
    rv: u64,
) -> Result<u64, Error> {
    let oldest = api.oldest_kept().await?;
    let skipped = skipped(
        state.last_time,
        oldest.as_ref().and_then(|e| e.view.time()),
        rv,
        Timestamp::now(),
    );
    eprintln!(
        "Watch expired (410 Gone: {}): {skipped}; going on from there.",
        escape_terminal(status.message.as_deref().unwrap_or("Expired"))
    );
    let rv = api
        .list(selector, |page| {
            state.seen(page);
            sink.batch(page)
        })
        .await?;
    Ok(rv)
}

/// After a watch was answered "too large resourceVersion": a server whose numbering went
/// back (restarted with its clock set back) has lost its in-memory history. Then say so,
/// print what it holds, and return where to watch from.
async fn restarted(
    api: &Api,
    sink: &mut impl Sink,
    state: &mut Follow,
    selector: Option<&str>,
    rv: u64,
) -> Result<Option<u64>, Error> {
    let current = api.current_resource_version().await?;
    if current >= rv {
        return Ok(None);
    }
    eprintln!(
        "The server's resourceVersion went back from {rv} to {current}: it restarted, and its in-memory history with it; going on from the oldest event it holds."
    );
    let now = api
        .list(selector, |page| {
            state.seen(page);
            sink.batch(page)
        })
        .await?;
    Ok(Some(now))
}

/// How much history a 410 skipped: from the last event seen (else from resourceVersion
/// `rv`) to the oldest event the server still holds in this scope (else to `now`).
fn skipped(last: Option<Timestamp>, oldest: Option<Timestamp>, rv: u64, now: Timestamp) -> String {
    match (last, oldest) {
        (Some(last), Some(oldest)) => format!(
            "{} seconds of history skipped (the last event seen is from {last:.0}, the oldest the server still holds from {oldest:.0})",
            oldest.duration_since(last).as_secs().max(0)
        ),
        (Some(last), None) => format!(
            "{} seconds of history skipped (the last event seen is from {last:.0}, and the server holds none since)",
            now.duration_since(last).as_secs().max(0)
        ),
        (None, Some(oldest)) => format!(
            "the events after resourceVersion {rv} and before {oldest:.0} (the oldest the server still holds) are skipped"
        ),
        (None, None) => {
            format!("the events after resourceVersion {rv} are skipped (the server holds none now)")
        }
    }
}

/// What the tail has seen, for the messages about outages and expired history.
#[derive(Default)]
struct Follow {
    /// The time of the last event seen.
    last_time: Option<Timestamp>,
    /// Between a lost connection and the next watch that opens.
    outage: bool,
}

impl Follow {
    fn seen(&mut self, events: &[print::Item]) {
        if let Some(t) = events.iter().rev().find_map(|e| e.view.time()) {
            self.last_time = Some(t);
        }
    }

    /// One line per outage, not one per retry. `e` may quote the server (its error
    /// message), so it is escaped here, the one place every such message passes.
    fn lost(&mut self, e: &str, rv: u64) {
        if !self.outage {
            let e = escape_terminal(e);
            eprintln!("Watch interrupted ({e}); resuming from resourceVersion {rv}.");
            self.outage = true;
        }
    }
}

/// Retry delays after a failed watch: 250 ms doubling to 8 s, back to the start once a
/// watch delivers something. Short at first because the usual cause (a restart, a dropped connection)
/// is over at once; capped because a user is waiting at the terminal.
struct Backoff(Duration);

const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(8);

impl Default for Backoff {
    fn default() -> Self {
        Backoff(BACKOFF_FIRST)
    }
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
        d
    }

    fn reset(&mut self) {
        self.0 = BACKOFF_FIRST;
    }
}

impl Scope {
    /// "in namespace team-a", "in any namespace".
    pub fn describe(&self) -> String {
        match self {
            Scope::Namespace(ns) => format!("in namespace {ns}"),
            Scope::AllNamespaces => "in any namespace".to_owned(),
            Scope::AllEvents => "anywhere".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skipped_history() {
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        let (last, oldest, now) = (
            t("2026-01-01T10:00:00.1Z"),
            t("2026-01-01T10:00:16.1Z"),
            t("2026-01-01T10:01:00Z"),
        );
        assert_eq!(
            skipped(Some(last), Some(oldest), 3, now),
            "16 seconds of history skipped (the last event seen is from 2026-01-01T10:00:00Z, the oldest the server still holds from 2026-01-01T10:00:16Z)"
        );
        assert!(skipped(Some(last), None, 3, now).starts_with("59 seconds of history skipped"));
        assert_eq!(
            skipped(None, Some(oldest), 3, now),
            "the events after resourceVersion 3 and before 2026-01-01T10:00:16Z (the oldest the server still holds) are skipped"
        );
        assert!(skipped(None, None, 3, now).contains("after resourceVersion 3"));
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::default();
        let first: Vec<_> = (0..7).map(|_| b.next().as_millis()).collect();
        assert_eq!(first, [250, 500, 1000, 2000, 4000, 8000, 8000]);
        b.reset();
        assert_eq!(b.next(), BACKOFF_FIRST);
    }
}
