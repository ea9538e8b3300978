//! `kubectl audit`'s flags: kubectl's own for reaching the cluster (`--kubeconfig`,
//! `--context`, `-n`, `-A`, `-o`), then one subcommand (`tail`, `who`, `sources`, `rbac`), each with examples
//! in its help. Filters become field selector terms here, checked before any request.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const EXAMPLES: &str = "\
Examples:
  # Follow namespace team-a's audit events: what the server still holds, then live
  kubectl audit tail -n team-a

  # Who deleted my ConfigMap?
  kubectl audit who my-config -n team-a --resource configmaps

  # Every namespace's deletions, as JSON lines for jq
  kubectl audit tail -A --verb delete -o json | jq -r '.user.username'

  # Is every apiserver pushing its audit events?
  kubectl audit sources

  # The least RBAC a service account needs, from what it did
  kubectl audit rbac --user system:serviceaccount:team-a:builder | kubectl apply -f -

Install: put the kubectl-audit binary in a directory on PATH (cargo install --path . --bin
kubectl-audit puts it in ~/.cargo/bin); kubectl finds it as `kubectl audit`.";

const TAIL_EXAMPLES: &str = "\
Examples:
  # The window's events of the current namespace, then live ones, as an aligned table
  kubectl audit tail

  # Deletions and updates by one user in team-a over the last 10 minutes, then live
  kubectl audit tail -n team-a --user alice --verb delete --verb update --since 10m

  # One ConfigMap's events, with user agents, source IPs and audit IDs
  kubectl audit tail -n team-a --resource configmaps --name my-config -o wide

  # Every namespace, as JSON lines (the events as the server sends them)
  kubectl audit tail -A -o json | jq -c '{user: .user.username, verb, uri: .requestURI}'

  # Pick up where an earlier run stopped (its last resourceVersion)
  kubectl audit tail -n team-a --since-rv 1234

The filters are sent to the server as a field selector: only matching events are sent.
After a lost connection the watch resumes from the last resourceVersion seen; when the
server no longer holds that history it says how much was skipped and goes on.";

const WHO_EXAMPLES: &str = "\
Examples:
  # Who did what to ConfigMap my-config in team-a, oldest first
  kubectl audit who my-config -n team-a --resource configmaps

  # Anything named web, in any namespace, as YAML
  kubectl audit who web -A -o yaml

  # Who changed a cluster-scoped object (needs list on events.audit.k8s.io)
  kubectl audit who cluster-admin --resource clusterrolebindings --all-events

Only what the server's in-memory window still holds is searched: it is a debugging stream,
not a durable audit log.";

const SOURCES_EXAMPLES: &str = "\
Examples:
  # Is every apiserver pushing? NAME, READY, LAST PUSH, EVENTS/S, RETRIES, AGE
  kubectl audit sources

  # With the counts of events, batches and refusals, and the last error
  kubectl audit sources -o wide

  # One source's figures and conditions, as YAML
  kubectl audit sources apiserver-1 -o yaml

The same as kubectl get sources.audit.k8s.io (needs list, or get, on it). A source is
Ready while it has pushed within the server's --source-silent-after.";

const RBAC_EXAMPLES: &str = "\
Examples:
  # The Roles, ClusterRole and bindings that allow every request of a service account
  kubectl audit rbac --user system:serviceaccount:team-a:builder

  # Only its requests in team-a (a Role and RoleBinding there), over the last 10 minutes
  kubectl audit rbac --user system:serviceaccount:team-a:builder -n team-a --since 10m

  # Keep reading: the policy is printed again each time it grows; apply it when done
  kubectl audit rbac --user alice -w

  # Grant only the objects it used, by name, and apply the result
  kubectl audit rbac --user alice --resource-names | kubectl apply -f -

Without -n, every event is read (events.audit.k8s.io, an administrator's permission), so
that cluster-scoped requests and non-resource URLs get their ClusterRole. The requests of
an impersonated user are that user's. Denied requests (403) are listed first as comments,
each with the kubectl auth can-i line that checks it: the policy grants them too, as they
are what the user was missing. Discovery (get /api*, /version, /healthz…) is left out:
every user may read it already. Only what the server's window still holds is read: run
the workload, then this.";

#[derive(Parser, Debug)]
#[command(
    name = "kubectl-audit",
    bin_name = "kubectl audit",
    version,
    about = "Kubernetes audit events from kube-audit-stream (audit.k8s.io/v1alpha1): follow them, find who changed an object, see every apiserver pushing them, or make the least RBAC a user needs",
    after_help = EXAMPLES
)]
pub struct Cli {
    #[command(flatten)]
    pub kube: KubeFlags,
    #[command(subcommand)]
    pub command: Command,
}

/// How to reach the cluster and what to print, as kubectl takes them.
#[derive(Args, Debug, Clone)]
pub struct KubeFlags {
    /// Path to the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// The namespace (default: the context's, else "default").
    #[arg(short = 'n', long, global = true, value_name = "NS")]
    pub namespace: Option<String>,
    /// Every namespace's events (cluster-scoped requests have none and are left out).
    #[arg(short = 'A', long, global = true, conflicts_with = "namespace")]
    pub all_namespaces: bool,
    /// Every event, cluster-scoped requests included (ClusterRoles, nodes, /healthz…):
    /// the cluster-wide events.audit.k8s.io, an administrator's permission.
    #[arg(long, global = true, conflicts_with_all = ["namespace", "all_namespaces"])]
    pub all_events: bool,
    /// Output format: an aligned table, more columns, one JSON event per line, or YAML
    /// documents.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Table,
    Wide,
    Json,
    Yaml,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the matching events the server still holds, then follow live ones.
    #[command(after_help = TAIL_EXAMPLES)]
    Tail(TailArgs),
    /// Who did what to one object while the server's window holds its events, oldest first.
    #[command(after_help = WHO_EXAMPLES)]
    Who(WhoArgs),
    /// Every kube-apiserver that pushes audit events (sources.audit.k8s.io): whether it is
    /// Ready, when it last pushed, its rate, retries and refusals.
    #[command(after_help = SOURCES_EXAMPLES)]
    Sources(SourcesArgs),
    /// The least RBAC (Role per namespace, ClusterRole, and their bindings) that allows
    /// every request one user made, as YAML for kubectl apply -f -.
    #[command(after_help = RBAC_EXAMPLES)]
    Rbac(RbacArgs),
}

#[derive(Args, Debug)]
pub struct RbacArgs {
    /// The user whose requests to allow, as the audit events name it (a service account
    /// is system:serviceaccount:NAMESPACE:NAME and is bound as a ServiceAccount).
    #[arg(long, value_name = "USER")]
    pub user: String,
    /// Only the held events of this last stretch of time (e.g. 10m, 1h), by the events'
    /// own time; default: everything the server holds.
    #[arg(long, value_name = "DURATION")]
    pub since: Option<humantime::Duration>,
    /// Then follow live events, printing the policy again each time it grows.
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// Allow only the objects used, by name (resourceNames), instead of every object of
    /// the resource.
    #[arg(long)]
    pub resource_names: bool,
}

#[derive(Args, Debug)]
pub struct SourcesArgs {
    /// Only this source (its name: the pushing apiserver's).
    pub name: Option<String>,
}

#[derive(Args, Debug)]
pub struct TailArgs {
    /// Only this user's requests (user.username).
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Only requests with this verb; repeat for several (get, list, watch, create,
    /// update, patch, delete, deletecollection, …).
    #[arg(long, value_name = "VERB")]
    pub verb: Vec<String>,
    /// Only requests on this resource (objectRef.resource, e.g. configmaps).
    #[arg(long, value_name = "RESOURCE")]
    pub resource: Option<String>,
    /// Only requests on objects of this name (objectRef.name).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Start with the held events of this last stretch of time (e.g. 10m, 1h), by the
    /// events' own time; default: everything the server holds.
    #[arg(long, value_name = "DURATION", conflicts_with = "since_rv")]
    pub since: Option<humantime::Duration>,
    /// Start after this resourceVersion (the last one an earlier run saw) instead.
    #[arg(long, value_name = "RV")]
    pub since_rv: Option<u64>,
    /// How long each watch request lasts before it is renewed (from where it ended).
    #[arg(long, value_name = "DURATION", default_value = "290s")]
    pub watch_timeout: humantime::Duration,
}

impl TailArgs {
    /// The filters as a field selector; `None` for none.
    pub fn field_selector(&self) -> Result<Option<String>, super::Error> {
        let mut terms = vec![];
        if let Some(u) = &self.user {
            terms.push(format!("user.username={}", selector_value("--user", u)?));
        }
        match self.verb.as_slice() {
            [] => {}
            [one] => terms.push(format!("verb={}", selector_value("--verb", one)?)),
            several => {
                let values = several
                    .iter()
                    .map(|v| selector_value("--verb", v))
                    .collect::<Result<Vec<_>, _>>()?;
                terms.push(format!("verb in ({})", values.join(",")));
            }
        }
        if let Some(r) = &self.resource {
            terms.push(format!(
                "objectRef.resource={}",
                selector_value("--resource", r)?
            ));
        }
        if let Some(n) = &self.name {
            terms.push(format!("objectRef.name={}", selector_value("--name", n)?));
        }
        Ok((!terms.is_empty()).then(|| terms.join(",")))
    }

    pub fn watch_timeout_seconds(&self) -> u32 {
        u32::try_from(self.watch_timeout.as_secs().max(1)).unwrap_or(u32::MAX)
    }
}

#[derive(Args, Debug)]
pub struct WhoArgs {
    /// The object's name (objectRef.name).
    pub name: String,
    /// Only this resource (e.g. configmaps), when several kinds share the name.
    #[arg(long, value_name = "RESOURCE")]
    pub resource: Option<String>,
}

/// A filter value as it can stand in a field selector: the server's grammar has no
/// escapes, so a value with a separator in it cannot be asked for.
pub fn selector_value<'a>(flag: &str, value: &'a str) -> Result<&'a str, super::Error> {
    if value.is_empty() || value.contains([',', '(', ')', '=', '!']) || value.trim() != value {
        return Err(super::Error::Usage(format!(
            "{flag}: {value:?} cannot be sent as a field selector value (empty, or has spaces around it or one of , ( ) = !)"
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tail(args: &[&str]) -> TailArgs {
        let mut argv = vec!["kubectl-audit", "tail"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Tail(t) => t,
            Command::Who(_) | Command::Sources(_) | Command::Rbac(_) => {
                unreachable!("parsed tail")
            }
        }
    }

    #[test]
    fn filters_become_one_field_selector() {
        assert_eq!(tail(&[]).field_selector().unwrap(), None);
        assert_eq!(
            tail(&["--verb", "delete"])
                .field_selector()
                .unwrap()
                .as_deref(),
            Some("verb=delete")
        );
        assert_eq!(
            tail(&[
                "--user",
                "alice",
                "--verb",
                "delete",
                "--verb",
                "update",
                "--resource",
                "configmaps",
                "--name",
                "cm"
            ])
            .field_selector()
            .unwrap()
            .as_deref(),
            Some(
                "user.username=alice,verb in (delete,update),objectRef.resource=configmaps,objectRef.name=cm"
            )
        );
        // Every selector the plugin builds is one the server parses.
        let sel = tail(&["--verb", "get", "--verb", "list", "--user", "system:admin"])
            .field_selector()
            .unwrap()
            .unwrap();
        crate::selector::FieldSelector::parse(&sel).unwrap();
    }

    #[test]
    fn values_the_grammar_cannot_carry_are_refused() {
        for bad in ["a,b", "", " a", "x=y", "in (a)"] {
            let e = tail(&["--user", bad]).field_selector().unwrap_err();
            assert!(e.to_string().starts_with("error: --user: "), "{e}");
        }
    }

    #[test]
    fn kubectl_flags_and_conflicts() {
        let cli = Cli::try_parse_from(["kubectl-audit", "who", "cm", "-n", "team-a", "-o", "json"])
            .unwrap();
        assert_eq!(cli.kube.namespace.as_deref(), Some("team-a"));
        assert_eq!(cli.kube.output, Output::Json);
        assert!(Cli::try_parse_from(["kubectl-audit", "tail", "-A", "-n", "x"]).is_err());
        assert!(Cli::try_parse_from(["kubectl-audit", "tail", "-A", "--all-events"]).is_err());
        assert!(Cli::try_parse_from(["kubectl-audit", "who", "x", "--all-events"]).is_ok());
        assert!(
            Cli::try_parse_from(["kubectl-audit", "tail", "--since", "1m", "--since-rv", "3"])
                .is_err()
        );
        assert_eq!(tail(&["--watch-timeout", "2s"]).watch_timeout_seconds(), 2);
        assert_eq!(tail(&[]).watch_timeout_seconds(), 290);
    }

    #[test]
    fn help_has_examples() {
        use clap::CommandFactory;
        let mut cmd = Cli::command();
        assert!(cmd.render_long_help().to_string().contains("Examples:"));
        for sub in ["tail", "who", "sources", "rbac"] {
            let help = cmd
                .find_subcommand_mut(sub)
                .unwrap()
                .render_long_help()
                .to_string();
            assert!(help.contains("Examples:\n  # "), "{sub}: {help}");
        }
    }
}
