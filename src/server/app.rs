//! Wiring: `App`, the handles every request shares, built once from `Settings`: the
//! serving certificate, the authenticator chain (in kube-apiserver's order), the
//! authorizer, the ingest gate, the bus, the sources, discovery documents, metrics and the
//! registry of open watches. Start-up failures are one typed `Error` that `main` prints on
//! one line.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use tokio_util::sync::CancellationToken;

use crate::authn::{self, SharedAuthConfig, delegated};
use crate::authz::{self, AlwaysAllowPaths, Authorizer};
use crate::budget::{self, EgressShare, NamespaceShares};
use crate::bus::Bus;
use crate::config::{AuthzSettings, ConnectionLimits, Granularity, Settings};
use crate::discovery::Discovery;
use crate::event::Redaction;
use crate::ingest::{self, Ingest};
use crate::metrics::Metrics;
use crate::nats::Nats;
use crate::source::{self, ReadError};
use crate::sources::Sources;
use crate::tls;
use crate::watch::Watches;

/// Start-up failures after flag validation: files that do not load, a kube-apiserver that
/// cannot be reached. Each keeps its cause; the message names the flag or file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Tls(#[from] tls::Error),
    #[error("{flag}: {}: {source}", path.display())]
    Kubeconfig {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("{flag}: not given, and no in-cluster config: {source}")]
    InCluster {
        flag: &'static str,
        #[source]
        source: kube::config::InClusterError,
    },
    #[error("{flag}: {source}")]
    Client {
        flag: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("--redaction-key-file: {}: the file is empty", .0.display())]
    RedactionKey(PathBuf),
    #[error(transparent)]
    Policy(#[from] authz::PolicyError),
    #[error(transparent)]
    Tokens(#[from] authn::TokenFileError),
    #[error(transparent)]
    AuthConfig(#[from] delegated::ConfigError),
    #[error(transparent)]
    Pushers(#[from] authn::pusher::GateError),
    #[error(transparent)]
    Nats(#[from] crate::nats::Error),
}

/// The shared handles, cheap to clone into every connection.
#[derive(Clone)]
pub struct App {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) tls: Arc<ServerConfig>,
    pub(super) bus: Bus,
    pub(super) authn: authn::Chain,
    pub(super) authz: Arc<dyn Authorizer>,
    pub(super) always_allow: AlwaysAllowPaths,
    pub(super) ingest: Ingest,
    pub(super) discovery: Discovery,
    /// `sources.audit.k8s.io`: each pusher's figures (ingest counts into the same one).
    pub(super) sources: Sources,
    pub(super) metrics: Arc<Metrics>,
    /// Requests, authentication and authorization decisions, counted by the router.
    pub(super) requests: super::router::RequestMeters,
    /// Watches' delivery-stage latencies (sampled), shared by every watch.
    pub(super) stages: crate::watch::StageMeters,
    pub(super) watches: Watches,
    /// LISTs in flight, held apart from watches under the same limits.
    pub(super) lists: Watches,
    pub(super) budget: budget::Config,
    /// The server-wide egress cap, if any, shared by every watch's budget.
    pub(super) egress: Option<Arc<EgressShare>>,
    /// The namespaces' shares, if capped: watches of one namespace share one.
    pub(super) namespaces: Option<Arc<NamespaceShares>>,
    pub(super) lag_bytes: usize,
    pub(super) recheck_interval: Duration,
    pub(super) granularity: Granularity,
    /// Request head, URL and timeouts for each connection.
    pub(super) limits: ConnectionLimits,
    /// A connection whose writes make no progress for this long is closed, and so is a
    /// watch whose client took nothing for this long: the peer stopped reading.
    pub(super) stall_limit: Duration,
    /// Cancelled on shutdown: ends every watch stream and background task.
    pub(super) shutdown: CancellationToken,
}

impl App {
    /// Load what the settings name (certificates, token files, policies). Must run inside
    /// a tokio runtime: certificate reloading is a background task.
    pub async fn new(settings: &Settings) -> Result<App, Error> {
        let shutdown = CancellationToken::new();
        let metrics = Arc::new(Metrics::new());
        let tls = tls::server_config(&settings.cert, shutdown.clone())?;
        let authn = authenticators(settings, &shutdown, &metrics).await?;
        let mode: Arc<dyn Authorizer> = match &settings.authorization {
            AuthzSettings::AlwaysAllow => Arc::new(authz::AlwaysAllow),
            AuthzSettings::Abac(source) => {
                let (text, origin) = source.read()?;
                Arc::new(authz::Abac::parse(&text, &origin)?)
            }
            AuthzSettings::Webhook {
                authorized_ttl,
                unauthorized_ttl,
            } => {
                let kubeconfig = settings
                    .cluster
                    .as_ref()
                    .and_then(|c| c.authorization_kubeconfig.as_deref());
                let client = kube_client(kubeconfig, "--authorization-kubeconfig").await?;
                Arc::new(authz::SubjectAccessReviewer::new(
                    client,
                    *authorized_ttl,
                    *unauthorized_ttl,
                    &metrics,
                ))
            }
        };
        let authz: Arc<dyn Authorizer> = Arc::new(authz::Privileged::new(mode));
        let bus = Bus::new(settings.bus.clone());
        let sources = Sources::new(settings.sources, &metrics);
        sources.spawn_ticker(shutdown.clone());
        let nats = match &settings.nats {
            None => {
                // The stream numbers `--bus=nats`'s events; this process numbers its own,
                // after a time-derived base, so that a restart never reuses a number.
                bus.reset(crate::bus::time_base());
                None
            }
            Some(nats) => {
                let window = (settings.bus.window_events, settings.bus.window_bytes);
                let started = Nats::start(nats, bus.clone(), window, &metrics, shutdown.clone());
                let nats_handle = started.await?;
                // Every replica answers with the same figures: each shares its own counts
                // in a bucket beside the stream, and sums the others'.
                sources.share(
                    nats_handle.jetstream(),
                    crate::sources::bucket_name(&nats.stream),
                    shutdown.clone(),
                );
                Some(nats_handle)
            }
        };
        let watches = Watches::new(
            settings.max_watchers,
            settings.max_watchers_per_user,
            settings.stall_limit,
        );
        watches.spawn_sweeper(shutdown.clone());
        let lists = Watches::lists(
            settings.max_watchers,
            settings.max_watchers_per_user,
            settings.stall_limit,
        );
        lists.spawn_sweeper(shutdown.clone());
        Ok(App {
            inner: Arc::new(Inner {
                tls,
                bus: bus.clone(),
                authn,
                authz,
                always_allow: AlwaysAllowPaths::new(&settings.always_allow_paths),
                ingest: Ingest {
                    gate: ingest::Gate::new(&settings.ingest.gate, shutdown.clone())?,
                    bus,
                    nats,
                    meters: ingest::Meters::new(&metrics),
                    metrics: metrics.clone(),
                    max_request_bytes: settings.ingest.max_request_bytes,
                    max_event_bytes: settings.max_event_bytes,
                    inflight: ingest::InFlight::new(
                        settings.ingest.max_inflight,
                        settings.ingest.max_inflight_per_pusher,
                    ),
                    body_timeout: settings.ingest.body_timeout,
                    redaction: Arc::new(redaction(&settings.ingest)?),
                    recent: ingest::RecentBatches::default(),
                    published: metrics.published(),
                    sources: sources.clone(),
                },
                discovery: Discovery::new(),
                sources,
                requests: super::router::RequestMeters::new(&metrics),
                stages: crate::watch::StageMeters::new(&metrics),
                metrics,
                watches,
                lists,
                budget: settings.budget,
                egress: (settings.max_egress_bytes_per_second > 0)
                    .then(|| EgressShare::new(settings.max_egress_bytes_per_second)),
                namespaces: NamespaceShares::new(settings.namespace_budget),
                // A watcher with half its queue's byte cap waiting is falling behind:
                // it gets truncated events until it catches up.
                lag_bytes: settings.bus.subscriber_queue_bytes / 2,
                recheck_interval: settings.recheck_interval,
                granularity: settings.granularity,
                limits: settings.limits,
                stall_limit: settings.stall_limit,
                shutdown,
            }),
        })
    }

    pub fn bus(&self) -> &Bus {
        &self.inner.bus
    }

    pub(super) fn tls_config(&self) -> Arc<ServerConfig> {
        self.inner.tls.clone()
    }

    pub(super) fn metrics(&self) -> &crate::metrics::Metrics {
        &self.inner.metrics
    }

    pub(super) fn limits(&self) -> ConnectionLimits {
        self.inner.limits
    }

    pub(super) fn stall_limit(&self) -> Duration {
        self.inner.stall_limit
    }

    /// End every watch and background task: the first step of a graceful shutdown.
    pub(super) fn shut_down(&self) {
        self.inner.watches.shut_down();
        self.inner.shutdown.cancel();
    }
}

/// `--redact` with the key of `--redaction-key-file`, if any (its bytes, less a trailing
/// line break; an empty key would make every HMAC guessable).
fn redaction(settings: &ingest::Settings) -> Result<Redaction, Error> {
    let key = match &settings.redaction_key_file {
        None => None,
        Some(path) => {
            let mut key = source::read(path)?;
            while key.last().is_some_and(|b| matches!(b, b'\n' | b'\r')) {
                key.pop();
            }
            if key.is_empty() {
                return Err(Error::RedactionKey(path.clone()));
            }
            Some(key)
        }
    };
    Ok(Redaction::new(settings.redact, key.as_deref()))
}

/// A client for kube-apiserver from a kubeconfig, or the in-cluster config.
async fn kube_client(kubeconfig: Option<&Path>, flag: &'static str) -> Result<kube::Client, Error> {
    let config = match kubeconfig {
        Some(path) => {
            let bad = |source| Error::Kubeconfig {
                flag,
                path: path.to_owned(),
                source,
            };
            let file = kube::config::Kubeconfig::read_from(path).map_err(bad)?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(bad)?
        }
        None => kube::Config::incluster().map_err(|source| Error::InCluster { flag, source })?,
    };
    kube::Client::try_from(config).map_err(|source| Error::Client { flag, source })
}

/// The authenticator chain, in kube-apiserver's order: front proxy, x509, static tokens,
/// TokenReview. In cluster mode the client-certificate settings come from the
/// authentication ConfigMap (flags override) and follow its changes.
async fn authenticators(
    settings: &Settings,
    shutdown: &CancellationToken,
    metrics: &Metrics,
) -> Result<authn::Chain, Error> {
    let certs = &settings.client_certs;
    let read = |p: &Option<PathBuf>| p.as_deref().map(source::read_text).transpose();
    let overrides = delegated::Overrides {
        client_ca_pem: read(&certs.client_ca_file)?,
        requestheader_ca_pem: read(&certs.requestheader_client_ca_file)?,
        allowed_names: certs.requestheader_allowed_names.clone(),
        username_headers: certs.requestheader_username_headers.clone(),
        group_headers: certs.requestheader_group_headers.clone(),
        extra_prefixes: certs.requestheader_extra_headers_prefix.clone(),
    };
    let mut token_review = None;
    let shared = match &settings.cluster {
        Some(cluster) => {
            let kubeconfig = cluster.authentication_kubeconfig.as_deref();
            let client = kube_client(kubeconfig, "--authentication-kubeconfig").await?;
            let config = delegated::load(&client, &overrides).await?;
            let shared = SharedAuthConfig::new(config);
            delegated::spawn_refresh(client.clone(), overrides, shared.clone(), shutdown.clone());
            token_review = Some(authn::TokenReviewer::new(
                client,
                cluster.token_cache_ttl,
                metrics,
            ));
            shared
        }
        None => SharedAuthConfig::new(overrides.resolve(None)?),
    };
    let mut chain: Vec<Arc<dyn authn::Authenticator>> = vec![
        Arc::new(authn::RequestHeader(shared.clone())),
        Arc::new(authn::X509(shared)),
    ];
    if let Some(source) = &settings.token_auth {
        let (text, origin) = source.read()?;
        chain.push(Arc::new(authn::TokenFile::parse(&text, &origin)?));
    }
    if let Some(t) = token_review {
        chain.push(Arc::new(t));
    }
    Ok(authn::Chain::new(chain))
}
