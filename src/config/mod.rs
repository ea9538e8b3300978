//! Command-line flags (clap), grouped by concern with k8s.io/apiserver's names, and their
//! validation into `Settings`: everything the server needs, checked before it binds.
//! Each group of flags sits in a file of its own (`serving`, `auth`, `stream`), `--dev`'s
//! preset in `dev`. Builds each module's own settings type (`bus::Config`,
//! `ingest::Settings`, `nats::Settings`, `sources::Settings`, `tls::CertSource`); no
//! module below imports this one. Reads no files; `server::App::new` does.

mod auth;
mod dev;
mod serving;
mod stream;
#[cfg(test)]
mod tests;

use dev::dev_policy;
use serving::self_signed_hosts;

pub use auth::{
    Authentication, Authorization, AuthorizationMode, AuthzSettings, ClientCertSettings, Cluster,
    Granularity,
};
pub use dev::{DEV_POLICY, DEV_TOKENS};
pub use serving::{ConnectionLimits, SecureServing};
pub use stream::{BusKind, IngestFlags, ScaleOut, Stream};

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::source::Source;
use crate::{budget, bus, ingest, nats, sources, tls};

/// One webhook batch is at most 400 events by default; a queue holds a few batches from
/// each of three apiservers so a watcher keeps up through a burst without dropping.
pub const SUBSCRIBER_QUEUE_EVENTS: usize = 4096;
/// Bytes a watcher may have queued and not yet written. The queue holds shared
/// references, so this bounds how far a watcher may lag, not memory it owns.
pub const SUBSCRIBER_QUEUE_BYTES: usize = 8 << 20;

/// Re-authorizing a watch more often than this buys nothing but load.
const MIN_RECHECK_INTERVAL: Duration = Duration::from_secs(1);

/// A start-up error: one line naming the flag and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Error(pub String);

fn err(flag: &str, msg: impl std::fmt::Display) -> Error {
    Error(format!("{flag}: {msg}"))
}

#[derive(Parser, Debug)]
#[command(
    name = "kube-audit-stream",
    version,
    about = "Kubernetes audit events from every kube-apiserver replica, as an authorized WATCH stream (aggregated API audit.k8s.io/v1alpha1)",
    // Every description under its flag: flag names as long as kube-apiserver's leave no
    // room beside them, and clap would otherwise pick a layout per section.
    next_line_help = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server.
    #[command(next_line_help = true)]
    Serve(Box<ServeArgs>),
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub serving: SecureServing,
    #[command(flatten)]
    pub authentication: Authentication,
    #[command(flatten)]
    pub authorization: Authorization,
    #[command(flatten)]
    pub ingest: IngestFlags,
    #[command(flatten)]
    pub stream: Stream,
    #[command(flatten)]
    pub scale_out: ScaleOut,
    #[command(flatten)]
    pub logging: Logging,
    /// Stand-alone mode for trying it on one machine: loopback only, self-signed
    /// certificate, the example tokens and ABAC policy of deploy/dev, ingest open on
    /// loopback. Never needs a cluster.
    #[arg(long, help_heading = "Stand-alone")]
    pub dev: bool,
}

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Logging")]
pub struct Logging {
    /// Log format on stderr: text (one readable line per event) or json (one object per
    /// line with k8s.io/component-base's keys: ts, caller, msg, v, then the fields; err
    /// on error lines). --logging-format is component-base's name for it.
    #[arg(
        long,
        visible_alias = "logging-format",
        value_name = "FORMAT",
        default_value = "text",
        value_parser = crate::logging::parse_format
    )]
    pub log_format: crate::logging::Format,
    /// Log verbosity, as klog's -v (also --v=N): 0 to 3 log what an operator needs (start,
    /// each watch's start and end, refused requests and pushes); 4 adds debug lines (one
    /// per request); 5 and above add trace. Warnings and errors are always logged. Only
    /// this server's lines change: RUST_LOG, when set, replaces this filter with its own
    /// directives (tracing-subscriber's syntax, e.g. info,hyper=debug).
    #[arg(
        short = 'v',
        long = "v",
        value_name = "LEVEL",
        default_value = "0",
        value_parser = crate::logging::parse_verbosity
    )]
    pub v: u32,
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub limits: ConnectionLimits,
    pub cert: tls::CertSource,
    pub token_auth: Option<Source>,
    pub client_certs: ClientCertSettings,
    /// Set in cluster mode: how to reach kube-apiserver.
    pub cluster: Option<Cluster>,
    pub authorization: AuthzSettings,
    /// How often a long watch is authorized again.
    pub recheck_interval: Duration,
    /// `--authorization-granularity`.
    pub granularity: Granularity,
    pub always_allow_paths: Vec<String>,
    pub ingest: ingest::Settings,
    /// `--source-silent-after`.
    pub sources: sources::Settings,
    pub bus: bus::Config,
    pub max_event_bytes: usize,
    pub budget: budget::Config,
    pub max_egress_bytes_per_second: u64,
    /// The share of all watches of one namespace together; a rate of 0: no cap.
    pub namespace_budget: budget::Config,
    /// Open watches at most, in all and per user.
    pub max_watchers: usize,
    pub max_watchers_per_user: usize,
    /// How long a client may take nothing before its connection (HTTP/1.1) or its watch
    /// (HTTP/2 stream) is closed. No flag: tests shorten it.
    pub stall_limit: Duration,
    /// `--bus=nats`: the shared stream; `None`: the bus is this process's memory.
    pub nats: Option<nats::Settings>,
    pub dev: bool,
}

/// Long enough for any live client's hiccup, short enough that a stuck watcher does not
/// hold its queue and its slot for long.
pub const DEFAULT_STALL_LIMIT: Duration = Duration::from_secs(60);

impl ServeArgs {
    /// Check the flags together and resolve the `--dev` preset.
    pub fn validate(&self) -> Result<Settings, Error> {
        let dev = self.dev;
        let listen = self.serving.validate(dev)?;
        self.stream.validate()?;
        let nats = self.scale_out.validate()?;

        let cert = match (
            &self.serving.tls_cert_file,
            &self.serving.tls_private_key_file,
        ) {
            (Some(cert), Some(key)) => tls::CertSource::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            (None, None) => tls::CertSource::SelfSigned {
                hosts: self_signed_hosts(listen.ip()),
                cert_dir: self.serving.cert_dir.clone(),
            },
            (Some(_), None) => {
                return Err(err(
                    "--tls-private-key-file",
                    "required with --tls-cert-file",
                ));
            }
            (None, Some(_)) => {
                return Err(err(
                    "--tls-cert-file",
                    "required with --tls-private-key-file",
                ));
            }
        };

        let authn = &self.authentication;
        let authz = &self.authorization;
        // Cluster mode: kube-apiserver is asked (TokenReview, SubjectAccessReview, the
        // authentication ConfigMap). Chosen by the default Webhook mode or by naming a
        // kubeconfig; never in --dev.
        let any_kubeconfig = authn.kubeconfig.is_some()
            || authn.authentication_kubeconfig.is_some()
            || authz.authorization_kubeconfig.is_some();
        if dev && any_kubeconfig {
            return Err(err(
                "--dev",
                "never talks to a cluster: drop --kubeconfig and friends",
            ));
        }
        let cluster = (!dev
            && (authz.authorization_mode == AuthorizationMode::Webhook || any_kubeconfig))
            .then(|| Cluster {
                authentication_kubeconfig: authn
                    .authentication_kubeconfig
                    .clone()
                    .or_else(|| authn.kubeconfig.clone()),
                authorization_kubeconfig: authz
                    .authorization_kubeconfig
                    .clone()
                    .or_else(|| authn.kubeconfig.clone()),
                token_cache_ttl: authn.authentication_token_webhook_cache_ttl,
            });

        let token_auth = match (&authn.token_auth_file, dev) {
            (Some(p), _) => Some(Source::File(p.clone())),
            (None, true) => Some(Source::Embedded {
                name: "deploy/dev/tokens.csv (embedded)",
                text: DEV_TOKENS,
            }),
            (None, false) => None,
        };
        let client_certs = ClientCertSettings {
            client_ca_file: authn.client_ca_file.clone(),
            requestheader_client_ca_file: authn.requestheader_client_ca_file.clone(),
            requestheader_allowed_names: authn.requestheader_allowed_names.clone(),
            requestheader_username_headers: authn.requestheader_username_headers.clone(),
            requestheader_group_headers: authn.requestheader_group_headers.clone(),
            requestheader_extra_headers_prefix: authn.requestheader_extra_headers_prefix.clone(),
        };
        if cluster.is_none()
            && token_auth.is_none()
            && client_certs.client_ca_file.is_none()
            && client_certs.requestheader_client_ca_file.is_none()
        {
            return Err(err(
                "--token-auth-file",
                "no authenticator configured: set --token-auth-file, --client-ca-file or --requestheader-client-ca-file, or run in cluster mode (--authorization-mode=Webhook)",
            ));
        }

        let authorization = match (authz.authorization_mode, dev) {
            (AuthorizationMode::AlwaysAllow, _) => AuthzSettings::AlwaysAllow,
            (AuthorizationMode::Abac, _) => match &authz.authorization_policy_file {
                Some(p) => AuthzSettings::Abac(Source::File(p.clone())),
                None if dev => AuthzSettings::Abac(dev_policy()),
                None => {
                    return Err(err(
                        "--authorization-policy-file",
                        "required with --authorization-mode=ABAC",
                    ));
                }
            },
            // Webhook is the default mode; --dev swaps it for the example ABAC policy.
            (AuthorizationMode::Webhook, true) => {
                AuthzSettings::Abac(match &authz.authorization_policy_file {
                    Some(p) => Source::File(p.clone()),
                    None => dev_policy(),
                })
            }
            (AuthorizationMode::Webhook, false) => AuthzSettings::Webhook {
                authorized_ttl: authz.authorization_webhook_cache_authorized_ttl,
                unauthorized_ttl: authz.authorization_webhook_cache_unauthorized_ttl,
            },
        };
        if authz.authorization_policy_file.is_some()
            && authz.authorization_mode != AuthorizationMode::Abac
            && !dev
        {
            return Err(err(
                "--authorization-policy-file",
                "only used with --authorization-mode=ABAC",
            ));
        }
        // A long watch is authorized again this often: no staler than a cached answer.
        let recheck_interval = authz
            .authorization_webhook_cache_authorized_ttl
            .max(MIN_RECHECK_INTERVAL);

        let ingest = self.ingest.validate(dev)?;
        let sources = self.ingest.sources()?;
        Ok(Settings {
            listen,
            limits: self.serving.limits()?,
            cert,
            token_auth,
            client_certs,
            cluster,
            authorization,
            recheck_interval,
            granularity: authz.authorization_granularity,
            always_allow_paths: authz.authorization_always_allow_paths.clone(),
            ingest,
            sources,
            bus: bus::Config {
                window_events: self.stream.window_events,
                window_bytes: self.stream.window_bytes,
                subscriber_queue_events: SUBSCRIBER_QUEUE_EVENTS,
                subscriber_queue_bytes: SUBSCRIBER_QUEUE_BYTES,
            },
            max_event_bytes: self.stream.max_event_bytes,
            budget: budget::Config {
                bytes_per_second: self.stream.watcher_bytes_per_second,
                burst_bytes: self.stream.watcher_burst_bytes,
            },
            max_egress_bytes_per_second: self.stream.max_egress_bytes_per_second,
            namespace_budget: budget::Config {
                bytes_per_second: self.stream.namespace_bytes_per_second,
                burst_bytes: self.stream.namespace_burst_bytes,
            },
            max_watchers: self.stream.max_watchers,
            max_watchers_per_user: self.stream.max_watchers_per_user,
            stall_limit: DEFAULT_STALL_LIMIT,
            nats,
            dev,
        })
    }
}

/// Go-style durations as kube-apiserver flags take them: `10s`, `1m30s`, `500ms`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration like 10s or 1m30s: {e}"))
}
