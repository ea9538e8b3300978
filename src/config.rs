//! Command-line flags (clap), grouped by concern with k8s.io/apiserver's names, and their
//! validation into `Settings`: everything the server needs, checked before it binds.
//! `--dev` is the embedded stand-alone preset. Reads no files; `server::App::new` does.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::source::Source;
use crate::{budget, bus, nats, tls};

/// The `--dev` example token file (kube-apiserver's static token CSV).
pub const DEV_TOKENS: &str = include_str!("../deploy/dev/tokens.csv");
/// The `--dev` example ABAC policy.
pub const DEV_POLICY: &str = include_str!("../deploy/dev/abac-policy.jsonl");

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
    pub ingest: Ingest,
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
#[command(next_help_heading = "Secure serving")]
pub struct SecureServing {
    /// The port on which to serve HTTPS.
    #[arg(long, default_value_t = 8443)]
    pub secure_port: u16,
    /// The IP address on which to listen [default: 0.0.0.0; 127.0.0.1 with --dev].
    #[arg(long)]
    pub bind_address: Option<IpAddr>,
    /// Serving certificate (PEM, may include intermediates). Reloaded when it changes.
    #[arg(long)]
    pub tls_cert_file: Option<PathBuf>,
    /// Serving private key (PEM) matching --tls-cert-file.
    #[arg(long)]
    pub tls_private_key_file: Option<PathBuf>,
    /// Where the self-signed certificate is kept when --tls-cert-file is not given.
    #[arg(long)]
    pub cert_dir: Option<PathBuf>,
    /// Largest request head (request line and headers), in bytes; a larger one is
    /// answered 431. kube-apiserver's (Go's default MaxHeaderBytes): a front proxy's
    /// X-Remote-Group headers for a user in many groups must fit.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_request_header_bytes: usize,
    /// Longest request URL (path and query), in bytes; a longer one is answered 414. The
    /// longest URL this API means is a watch with a field selector on every field and a
    /// continue token, under 2 KiB; longer is not a request but a payload.
    #[arg(long, default_value_t = 16 << 10)]
    pub max_url_bytes: usize,
    /// A client that has not finished the TLS handshake in this long is disconnected.
    /// Handshakes take milliseconds; the rest is a client holding a connection slot.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub tls_handshake_timeout: Duration,
    /// A client must send each request head (HTTP/1.1), or its connection's first request
    /// (HTTP/2), within this long after it may, else it is disconnected (slowloris).
    /// kube-apiserver's ReadHeaderTimeout.
    #[arg(long, default_value = "32s", value_parser = parse_duration)]
    pub request_header_timeout: Duration,
}

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Authentication")]
pub struct Authentication {
    /// kubeconfig for reaching kube-apiserver (TokenReview, SubjectAccessReview, the
    /// extension-apiserver-authentication ConfigMap). Absent: in-cluster config.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// kubeconfig for TokenReview and the ConfigMap, overriding --kubeconfig.
    #[arg(long)]
    pub authentication_kubeconfig: Option<PathBuf>,
    /// CA bundle for x509 client-certificate authentication (else from the ConfigMap).
    #[arg(long)]
    pub client_ca_file: Option<PathBuf>,
    /// CA bundle that front-proxy (aggregator) client certificates must chain to.
    #[arg(long)]
    pub requestheader_client_ca_file: Option<PathBuf>,
    /// Common names allowed for front-proxy client certificates (empty: any).
    #[arg(long, value_delimiter = ',')]
    pub requestheader_allowed_names: Vec<String>,
    /// Headers carrying the user name from the front proxy.
    #[arg(long, value_delimiter = ',')]
    pub requestheader_username_headers: Vec<String>,
    /// Headers carrying the groups from the front proxy.
    #[arg(long, value_delimiter = ',')]
    pub requestheader_group_headers: Vec<String>,
    /// Header prefixes carrying extra user attributes from the front proxy.
    #[arg(long, value_delimiter = ',')]
    pub requestheader_extra_headers_prefix: Vec<String>,
    /// How long TokenReview answers are cached.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub authentication_token_webhook_cache_ttl: Duration,
    /// Static bearer tokens, kube-apiserver's CSV format: token,user,uid,"group1,group2".
    #[arg(long)]
    pub token_auth_file: Option<PathBuf>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorizationMode {
    #[value(name = "Webhook")]
    Webhook,
    #[value(name = "ABAC")]
    Abac,
    #[value(name = "AlwaysAllow")]
    AlwaysAllow,
}

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Authorization")]
pub struct Authorization {
    /// kubeconfig for SubjectAccessReview, overriding --kubeconfig.
    #[arg(long)]
    pub authorization_kubeconfig: Option<PathBuf>,
    /// How requests are authorized.
    #[arg(long, value_enum, default_value = "Webhook", ignore_case = true)]
    pub authorization_mode: AuthorizationMode,
    /// ABAC policy, kube-apiserver's JSON-lines format (with --authorization-mode=ABAC).
    #[arg(long)]
    pub authorization_policy_file: Option<PathBuf>,
    /// Paths served without authentication or authorization (a trailing * is a prefix).
    #[arg(long, value_delimiter = ',', default_value = "/healthz,/readyz,/livez")]
    pub authorization_always_allow_paths: Vec<String>,
    /// How long an "allowed" SubjectAccessReview answer is cached.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub authorization_webhook_cache_authorized_ttl: Duration,
    /// How long a "denied" SubjectAccessReview answer is cached.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub authorization_webhook_cache_unauthorized_ttl: Duration,
}

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Ingest (who may push audit events)")]
pub struct Ingest {
    /// CA bundle that pushing kube-apiservers' client certificates must chain to.
    #[arg(long)]
    pub ingest_client_ca_file: Option<PathBuf>,
    /// Common names of client certificates allowed to push (with --ingest-client-ca-file).
    #[arg(long, value_delimiter = ',')]
    pub ingest_allowed_names: Vec<String>,
    /// Bearer tokens allowed to push, in the --token-auth-file CSV format.
    #[arg(long)]
    pub ingest_token_file: Option<PathBuf>,
    /// Largest accepted ingest body, in bytes.
    #[arg(long, default_value_t = 32 << 20)]
    pub max_request_bytes: u64,
    /// Ingest requests handled at once, all pushers together; one more is answered 429
    /// with Retry-After (kube-apiserver's --max-mutating-requests-inflight; the webhook
    /// backend retries). Three apiservers at the webhook's default throttle burst (15
    /// batches each) fit; each request in flight may hold --max-request-bytes.
    #[arg(long, default_value_t = 64)]
    pub max_ingest_inflight: usize,
    /// Ingest requests at once from one pusher (certificate CN, token user, or address),
    /// so that one apiserver retrying in a loop cannot take every slot from the others.
    #[arg(long, default_value_t = 16)]
    pub max_ingest_inflight_per_pusher: usize,
}

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Stream")]
pub struct Stream {
    /// Events kept in memory for resuming watches.
    #[arg(long, default_value_t = 10_000)]
    pub window_events: usize,
    /// Bytes kept in memory for resuming watches.
    #[arg(long, default_value_t = 64 << 20)]
    pub window_bytes: usize,
    /// Each watcher's sustained byte budget; over it, events are sent truncated, then
    /// dropped (and the watcher told). The default carries three apiservers at the audit
    /// webhook's ceiling (12 k Metadata events/s). 0: unlimited.
    #[arg(long, default_value_t = 16 << 20)]
    pub watcher_bytes_per_second: u64,
    /// Bytes a watcher may receive at once above its sustained rate.
    #[arg(long, default_value_t = 16 << 20)]
    pub watcher_burst_bytes: u64,
    /// Server-wide egress budget for all watchers together, shared equally by the
    /// watches that have something to send. 0: no server-wide cap.
    #[arg(long, default_value_t = 0)]
    pub max_egress_bytes_per_second: u64,
    /// Events larger than this reach every watcher truncated (kube-apiserver's truncate
    /// backend default).
    #[arg(long, default_value_t = 100 * 1024)]
    pub max_event_bytes: usize,
    /// Open watches at most, all users together; one more gets 429 with Retry-After.
    /// Each costs a queue and a few KiB.
    #[arg(long, default_value_t = 5_000)]
    pub max_watchers: usize,
    /// Open watches at most per user, so that one user (or one runaway script) cannot
    /// take every slot; one more gets 429 with Retry-After.
    #[arg(long, default_value_t = 100)]
    pub max_watchers_per_user: usize,
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

#[derive(Debug, Clone)]
pub enum AuthzSettings {
    AlwaysAllow,
    Abac(Source),
    /// SubjectAccessReview, answers cached for these TTLs.
    Webhook {
        authorized_ttl: Duration,
        unauthorized_ttl: Duration,
    },
}

/// Cluster mode: kubeconfigs (`None`: in-cluster) for each concern.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub authentication_kubeconfig: Option<PathBuf>,
    pub authorization_kubeconfig: Option<PathBuf>,
    pub token_cache_ttl: Duration,
}

/// Client-certificate authentication from flags; in cluster mode, unset values come from
/// the extension-apiserver-authentication ConfigMap.
#[derive(Debug, Clone, Default)]
pub struct ClientCertSettings {
    pub client_ca_file: Option<PathBuf>,
    pub requestheader_client_ca_file: Option<PathBuf>,
    pub requestheader_allowed_names: Vec<String>,
    pub requestheader_username_headers: Vec<String>,
    pub requestheader_group_headers: Vec<String>,
    pub requestheader_extra_headers_prefix: Vec<String>,
}

/// Who may push.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    /// `--dev`: any client on a loopback address may push.
    pub open_on_loopback: bool,
    pub token_file: Option<PathBuf>,
    pub client_ca_file: Option<PathBuf>,
    pub allowed_names: Vec<String>,
    pub max_request_bytes: u64,
    /// Ingest requests in flight at most, in all and per pusher.
    pub max_inflight: usize,
    pub max_inflight_per_pusher: usize,
    /// How long a push's body may take to arrive (no flag: kube-apiserver's default
    /// request timeout, 60 s; tests shorten it).
    pub body_timeout: Duration,
}

/// What one connection and one request head may take.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_request_header_bytes: usize,
    pub max_url_bytes: usize,
    pub tls_handshake_timeout: Duration,
    pub request_header_timeout: Duration,
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
    pub always_allow_paths: Vec<String>,
    pub ingest: IngestSettings,
    pub bus: bus::Config,
    pub max_event_bytes: usize,
    pub budget: budget::Config,
    pub max_egress_bytes_per_second: u64,
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
        Ok(Settings {
            listen,
            limits: self.serving.limits()?,
            cert,
            token_auth,
            client_certs,
            cluster,
            authorization,
            recheck_interval,
            always_allow_paths: authz.authorization_always_allow_paths.clone(),
            ingest,
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
            max_watchers: self.stream.max_watchers,
            max_watchers_per_user: self.stream.max_watchers_per_user,
            stall_limit: DEFAULT_STALL_LIMIT,
            nats,
            dev,
        })
    }
}

fn dev_policy() -> Source {
    Source::Embedded {
        name: "deploy/dev/abac-policy.jsonl (embedded)",
        text: DEV_POLICY,
    }
}

/// Names the self-signed certificate is valid for.
fn self_signed_hosts(ip: IpAddr) -> Vec<String> {
    let mut hosts = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if !ip.is_unspecified() && !ip.is_loopback() {
        hosts.push(ip.to_string());
    }
    hosts
}

/// Below this no client's ordinary request head fits (a bearer token and a few headers);
/// above it HTTP/2's header list size setting (a u32, with room for the check's margin)
/// cannot say it.
const REQUEST_HEADER_BYTES: std::ops::RangeInclusive<usize> = 4096..=(256 << 20);

impl SecureServing {
    fn limits(&self) -> Result<ConnectionLimits, Error> {
        if !REQUEST_HEADER_BYTES.contains(&self.max_request_header_bytes) {
            return Err(err(
                "--max-request-header-bytes",
                format!(
                    "must be from {} to {}",
                    REQUEST_HEADER_BYTES.start(),
                    REQUEST_HEADER_BYTES.end()
                ),
            ));
        }
        // (A URL above --max-request-header-bytes meets that limit first.)
        if self.max_url_bytes < 256 {
            return Err(err("--max-url-bytes", "must be at least 256"));
        }
        for (flag, d) in [
            ("--tls-handshake-timeout", self.tls_handshake_timeout),
            ("--request-header-timeout", self.request_header_timeout),
        ] {
            if d.is_zero() {
                return Err(err(flag, "must be > 0"));
            }
        }
        Ok(ConnectionLimits {
            max_request_header_bytes: self.max_request_header_bytes,
            max_url_bytes: self.max_url_bytes,
            tls_handshake_timeout: self.tls_handshake_timeout,
            request_header_timeout: self.request_header_timeout,
        })
    }

    fn validate(&self, dev: bool) -> Result<SocketAddr, Error> {
        let ip = match (self.bind_address, dev) {
            (Some(ip), true) if !ip.is_loopback() => {
                return Err(err(
                    "--bind-address",
                    format!("{ip} is not a loopback address; --dev serves loopback only"),
                ));
            }
            (Some(ip), _) => ip,
            (None, true) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            (None, false) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        };
        Ok(SocketAddr::new(ip, self.secure_port))
    }
}

impl Ingest {
    fn validate(&self, dev: bool) -> Result<IngestSettings, Error> {
        if self.max_request_bytes == 0 {
            return Err(err("--max-request-bytes", "must be > 0"));
        }
        for (flag, value) in [
            ("--max-ingest-inflight", self.max_ingest_inflight),
            (
                "--max-ingest-inflight-per-pusher",
                self.max_ingest_inflight_per_pusher,
            ),
        ] {
            if value == 0 {
                return Err(err(flag, "must be > 0"));
            }
        }
        match (
            &self.ingest_client_ca_file,
            self.ingest_allowed_names.is_empty(),
        ) {
            (Some(_), true) => {
                return Err(err(
                    "--ingest-allowed-names",
                    "required with --ingest-client-ca-file",
                ));
            }
            (None, false) => {
                return Err(err(
                    "--ingest-client-ca-file",
                    "required with --ingest-allowed-names",
                ));
            }
            _ => {}
        }
        if !dev && self.ingest_client_ca_file.is_none() && self.ingest_token_file.is_none() {
            return Err(err(
                "--ingest-token-file",
                "no ingest authentication configured: set --ingest-token-file and/or --ingest-client-ca-file with --ingest-allowed-names",
            ));
        }
        Ok(IngestSettings {
            open_on_loopback: dev,
            token_file: self.ingest_token_file.clone(),
            client_ca_file: self.ingest_client_ca_file.clone(),
            allowed_names: self.ingest_allowed_names.clone(),
            max_request_bytes: self.max_request_bytes,
            max_inflight: self.max_ingest_inflight,
            max_inflight_per_pusher: self.max_ingest_inflight_per_pusher,
            body_timeout: crate::ingest::BODY_TIMEOUT,
        })
    }
}

impl Stream {
    fn validate(&self) -> Result<(), Error> {
        for (flag, value) in [
            ("--window-events", self.window_events),
            ("--window-bytes", self.window_bytes),
            ("--max-event-bytes", self.max_event_bytes),
            ("--max-watchers", self.max_watchers),
            ("--max-watchers-per-user", self.max_watchers_per_user),
        ] {
            if value == 0 {
                return Err(err(flag, "must be > 0"));
            }
        }
        if self.watcher_bytes_per_second > 0 && self.watcher_burst_bytes == 0 {
            return Err(err(
                "--watcher-burst-bytes",
                "must be > 0 while --watcher-bytes-per-second is set (0 there means unlimited)",
            ));
        }
        Ok(())
    }
}

/// Where events meet.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusKind {
    /// This process's memory: one replica.
    Memory,
    /// A NATS JetStream stream shared by every replica.
    Nats,
}

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Scale-out")]
pub struct ScaleOut {
    /// Where events meet: this process's memory (one replica), or a NATS JetStream
    /// stream that every replica publishes to and reads in one order (several replicas
    /// act as one server).
    #[arg(long, value_enum, default_value = "memory")]
    pub bus: BusKind,
    /// The NATS server(s) to use with --bus=nats, comma-separated (nats:// or tls://).
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// The JetStream stream every replica shares (created in memory if missing, sized by
    /// --window-events and --window-bytes).
    #[arg(long, default_value = "KUBE_AUDIT")]
    pub nats_stream: String,
    /// CA bundle to verify the NATS servers' certificates with (TLS to NATS).
    #[arg(long)]
    pub nats_ca_file: Option<PathBuf>,
    /// NATS credentials file (JWT and NKey seed) to connect with.
    #[arg(long)]
    pub nats_creds_file: Option<PathBuf>,
}

impl ScaleOut {
    fn validate(&self) -> Result<Option<nats::Settings>, Error> {
        if self.bus == BusKind::Memory {
            for (flag, set) in [
                ("--nats-ca-file", self.nats_ca_file.is_some()),
                ("--nats-creds-file", self.nats_creds_file.is_some()),
            ] {
                if set {
                    return Err(err(flag, "only used with --bus=nats"));
                }
            }
            return Ok(None);
        }
        // JetStream stream names: no whitespace, no subject tokens, no path separators.
        let name = &self.nats_stream;
        if name.is_empty()
            || name.len() > 255
            || name
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || ".*>/\\".contains(c))
        {
            return Err(err(
                "--nats-stream",
                format!(
                    "{name:?} is not a JetStream stream name (no spaces, '.', '*', '>', '/' or '\\')"
                ),
            ));
        }
        let mut urls = Vec::new();
        for url in self.nats_url.split(',').map(str::trim) {
            let scheme = url.split_once("://").map(|(s, _)| s);
            if !matches!(scheme, Some("nats" | "tls")) || url.parse::<http::Uri>().is_err() {
                return Err(err(
                    "--nats-url",
                    format!("{url:?} is not a URL like nats://host:4222 or tls://host:4222"),
                ));
            }
            urls.push(url.to_owned());
        }
        for (flag, path) in [
            ("--nats-ca-file", &self.nats_ca_file),
            ("--nats-creds-file", &self.nats_creds_file),
        ] {
            if let Some(path) = path
                && !path.is_file()
            {
                return Err(err(flag, format!("{}: no such file", path.display())));
            }
        }
        Ok(Some(nats::Settings {
            urls,
            stream: name.clone(),
            ca_file: self.nats_ca_file.clone(),
            creds_file: self.nats_creds_file.clone(),
        }))
    }
}

/// Go-style durations as kube-apiserver flags take them: `10s`, `1m30s`, `500ms`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration like 10s or 1m30s: {e}"))
}

#[cfg(test)]
mod tests {
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
        assert!(s.ingest.open_on_loopback);
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
        ] {
            let e = serve(&args).unwrap_err();
            assert!(e.starts_with(flag), "{args:?}: {e}");
        }
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
        assert_eq!(s.ingest.allowed_names, vec!["apiserver-1", "apiserver-2"]);
        assert!(!s.ingest.open_on_loopback);
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
}
