//! The flags of the data path: who may push (`Ingest`), the window, budgets and watch
//! limits (`Stream`), and `--bus` (`Scale-out`), each validated into the settings of the
//! module it configures.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::{Error, err};
use crate::authn::pusher;
use crate::event::Rules;
use crate::{ingest, nats, sources};

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Ingest (who may push audit events)")]
pub struct IngestFlags {
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
    /// Redaction at ingest, before the bus (so before the window, NATS, LIST or any
    /// watcher): the rules, comma-separated. secret-data: the values under data and
    /// stringData of core secrets in request and response objects; tokens: status.token
    /// of serviceaccounts/token responses and spec.token of tokenreviews; last-applied-
    /// configuration: kubectl's annotation of that name on any object. A redacted value
    /// becomes "<redacted>" and the event gets audit.k8s.io/redacted: "true". Empty
    /// (--redact=) turns redaction off, for a cluster whose audit policy already keeps
    /// Secrets at Metadata.
    #[arg(
        long,
        value_name = "RULES",
        default_value = "secret-data,tokens,last-applied-configuration"
    )]
    pub redact: String,
    /// A file holding a secret key: redacted values become "hmac-sha256:<hex>" of the
    /// value under it instead of "<redacted>", so that a reader can see that a value
    /// changed, or equals another, without seeing it. Keep it from readers of the stream.
    #[arg(long)]
    pub redaction_key_file: Option<PathBuf>,
    /// A source (a pushing apiserver, sources.audit.k8s.io) that has not pushed for this
    /// long is not Ready (reason Silent), and kube_audit_stream_source_ready says 0. The
    /// audit webhook pushes at least every few seconds even on an idle cluster (it audits
    /// its own leases and probes).
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = super::parse_duration)]
    pub source_silent_after: std::time::Duration,
}

impl IngestFlags {
    /// `--source-silent-after`: at least a second, the objects' tick.
    pub(super) fn sources(&self) -> Result<sources::Settings, Error> {
        if self.source_silent_after < sources::TICK {
            return Err(err("--source-silent-after", "must be at least 1s"));
        }
        Ok(sources::Settings {
            silent_after: self.source_silent_after,
        })
    }

    pub(super) fn validate(&self, dev: bool) -> Result<ingest::Settings, Error> {
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
        Ok(ingest::Settings {
            gate: pusher::Settings {
                open_on_loopback: dev,
                token_file: self.ingest_token_file.clone(),
                client_ca_file: self.ingest_client_ca_file.clone(),
                allowed_names: self.ingest_allowed_names.clone(),
            },
            max_request_bytes: self.max_request_bytes,
            max_inflight: self.max_ingest_inflight,
            max_inflight_per_pusher: self.max_ingest_inflight_per_pusher,
            body_timeout: ingest::BODY_TIMEOUT,
            redact: Rules::parse(&self.redact).map_err(|e| err("--redact", e))?,
            redaction_key_file: self.redaction_key_file.clone(),
        })
    }
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
    /// Byte budget for all watchers of one namespace together (watches of
    /// namespaces/NAMESPACE/namespacedevents; cluster-wide ones are not counted), shared
    /// equally by those that have something to send: however many watchers a team opens,
    /// together they take no more. Over it, events are sent truncated, then dropped (and
    /// the watcher told), as over a watcher's own budget. 0: no cap.
    #[arg(long, default_value_t = 0)]
    pub namespace_bytes_per_second: u64,
    /// Bytes all watchers of one namespace together may receive at once above its rate,
    /// split among them (at least 64 KiB each). At least --max-event-bytes; required with
    /// --namespace-bytes-per-second.
    #[arg(long, default_value_t = 0)]
    pub namespace_burst_bytes: u64,
    /// Events larger than this reach every watcher truncated (kube-apiserver's truncate
    /// backend default).
    #[arg(long, default_value_t = 100 * 1024)]
    pub max_event_bytes: usize,
    /// Open watches at most, all users together; one more gets 429 with Retry-After.
    /// Each costs a queue and a few KiB. LISTs in flight are held to it apart.
    #[arg(long, default_value_t = 5_000)]
    pub max_watchers: usize,
    /// Open watches at most per user, so that one user (or one runaway script) cannot
    /// take every slot; one more gets 429 with Retry-After. LISTs in flight are held to
    /// it apart.
    #[arg(long, default_value_t = 100)]
    pub max_watchers_per_user: usize,
}

impl Stream {
    pub(super) fn validate(&self) -> Result<(), Error> {
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
        match (self.namespace_bytes_per_second, self.namespace_burst_bytes) {
            (0, 0) => {}
            (0, _) => {
                return Err(err(
                    "--namespace-burst-bytes",
                    "only used with --namespace-bytes-per-second",
                ));
            }
            (_, 0) => {
                return Err(err(
                    "--namespace-burst-bytes",
                    "must be > 0 while --namespace-bytes-per-second is set",
                ));
            }
            // Below that, an event as large as ingest lets through could never reach a
            // namespace's watcher whole, even its only one, in a namespace quiet for hours.
            (_, burst) if burst < self.max_event_bytes as u64 => {
                return Err(err(
                    "--namespace-burst-bytes",
                    format!(
                        "must be at least --max-event-bytes ({}), so that one event fits whole",
                        self.max_event_bytes
                    ),
                ));
            }
            _ => {}
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
    pub(super) fn validate(&self) -> Result<Option<nats::Settings>, Error> {
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
