//! The server: `App` holds the shared handles (bus, authenticators, authorizer, ingest
//! gate, discovery documents, metrics); `run(app, listener, shutdown)` accepts TLS
//! connections, serves HTTP/1.1 and HTTP/2 on them, and drains on shutdown.
//!
//! Every request but `/ingest` and the always-allow paths is authenticated, described as
//! kube-apiserver `Attributes`, and authorized here, before any handler runs: handlers
//! receive an already-allowed scope and never learn which authorizer was asked.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::authn::{self, SharedAuthConfig, UserInfo, delegated};
use crate::authz::{self, AlwaysAllowPaths, Attributes, Authorizer, Decision};
use crate::budget::{self, Budget, EgressShare};
use crate::bus::{Bus, Scope};
use crate::coalesce::Coalesce;
use crate::config::{AuthzSettings, Settings};
use crate::discovery::{self, Discovery};
use crate::event::{API_GROUP, API_VERSION};
use crate::ingest::{self, Ingest};
use crate::metrics::Metrics;
use crate::reply::{self, Body};
use crate::stall::StallGuard;
use crate::status::ApiError;
use crate::tls::{self, Peer};
use crate::watch::{self, Watches};

/// Open connections at most; the accept loop waits for a free slot beyond this.
const MAX_CONNECTIONS: usize = 10_000;
/// Open watches at most; one more gets 429. Each costs a queue and a few KiB of memory,
/// and a runaway client should not be able to take them all.
const MAX_WATCHES: usize = 5_000;
/// Concurrent HTTP/2 streams (watches) one connection may carry.
const MAX_STREAMS_PER_CONNECTION: u32 = 1_000;
/// HTTP/2 send buffer per stream: four of a watch's 64 KiB frames in flight. Measured
/// (BENCHMARKS.md, 100 watchers on 10 connections): 64 KiB cost ~20 % more CPU per
/// delivered byte; 256 KiB to 1 MiB cost the same and kept p99 under 60 ms. Kept at the
/// low end because a stream whose client stopped reading holds this much until the
/// stall sweeper ends it.
const H2_SEND_BUFFER_BYTES: usize = 256 * 1024;
/// A client that has not finished the TLS handshake by then is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for in-flight requests after watches were told to end.
const SHUTDOWN_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest pause between retries of a failing `accept` (e.g. out of file descriptors).
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Start-up failures after flag validation: files that do not load.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Tls(#[from] tls::Error),
    #[error("{0}")]
    Load(String),
}

/// The shared handles, cheap to clone into every connection.
#[derive(Clone)]
pub struct App {
    inner: Arc<Inner>,
}

struct Inner {
    tls: Arc<ServerConfig>,
    bus: Bus,
    authn: authn::Chain,
    authz: Arc<dyn Authorizer>,
    always_allow: AlwaysAllowPaths,
    ingest: Ingest,
    discovery: Discovery,
    metrics: Arc<Metrics>,
    watches: Watches,
    budget: budget::Config,
    /// The server-wide egress cap, if any, shared by every watch's budget.
    egress: Option<Arc<EgressShare>>,
    lag_bytes: usize,
    recheck_interval: Duration,
    /// A connection whose writes make no progress for this long is closed, and so is a
    /// watch whose client took nothing for this long: the peer stopped reading.
    stall_limit: Duration,
    /// Cancelled on shutdown: ends every watch stream and background task.
    shutdown: CancellationToken,
}

impl App {
    /// Load what the settings name (certificates, token files, policies). Must run inside
    /// a tokio runtime: certificate reloading is a background task.
    pub async fn new(settings: &Settings) -> Result<App, Error> {
        let shutdown = CancellationToken::new();
        let tls = tls::server_config(&settings.cert, shutdown.clone())?;
        let authn = authenticators(settings, &shutdown).await?;
        let authz: Arc<dyn Authorizer> = match &settings.authorization {
            AuthzSettings::AlwaysAllow => Arc::new(authz::AlwaysAllow),
            AuthzSettings::Abac(source) => {
                let (text, origin) = source.read().map_err(Error::Load)?;
                Arc::new(authz::Abac::parse(&text, &origin).map_err(Error::Load)?)
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
                ))
            }
        };
        let bus = Bus::new(settings.bus.clone());
        let metrics = Arc::new(Metrics::new());
        let watches = Watches::new(MAX_WATCHES, settings.stall_limit);
        watches.spawn_sweeper(shutdown.clone());
        Ok(App {
            inner: Arc::new(Inner {
                tls,
                bus: bus.clone(),
                authn,
                authz,
                always_allow: AlwaysAllowPaths::new(&settings.always_allow_paths),
                ingest: Ingest {
                    gate: ingest::Gate::new(&settings.ingest, shutdown.clone())
                        .map_err(Error::Load)?,
                    bus,
                    metrics: metrics.clone(),
                    max_request_bytes: settings.ingest.max_request_bytes,
                    max_event_bytes: settings.max_event_bytes,
                },
                discovery: Discovery::new(),
                metrics,
                watches,
                budget: settings.budget,
                egress: (settings.max_egress_bytes_per_second > 0)
                    .then(|| EgressShare::new(settings.max_egress_bytes_per_second)),
                // A watcher with half its queue's byte cap waiting is falling behind:
                // it gets truncated events until it catches up.
                lag_bytes: settings.bus.subscriber_queue_bytes / 2,
                recheck_interval: settings.recheck_interval,
                stall_limit: settings.stall_limit,
                shutdown,
            }),
        })
    }

    pub fn bus(&self) -> &Bus {
        &self.inner.bus
    }

    /// Serve one request; every failure becomes a `Status` response.
    pub async fn handle(&self, req: Request<Incoming>, peer: &Peer) -> Response<Body> {
        let (method, path) = (req.method().clone(), req.uri().path().to_owned());
        let resp = self.route(req, peer).await.unwrap_or_else(|e| {
            if matches!(e, ApiError::Internal(_)) {
                tracing::error!(%method, %path, error = %e, "request failed");
            }
            reply::error(&e)
        });
        tracing::debug!(%method, %path, code = resp.status().as_u16(), peer = %peer.remote_addr, "request");
        resp
    }

    async fn route(&self, req: Request<Incoming>, peer: &Peer) -> Result<Response<Body>, ApiError> {
        let app = &*self.inner;
        let path = req.uri().path().to_owned();
        if path == "/ingest" {
            return app.ingest.handle(req, peer).await;
        }
        let mut attrs = request_attributes(req.method(), &path, req.uri().query());
        if !app.always_allow.contains(&path) {
            attrs.user = Arc::new(self.authenticate(&req, peer).await?);
            self.authorize(&attrs).await?;
        }
        self.dispatch(req, attrs)
    }

    async fn authenticate(
        &self,
        req: &Request<Incoming>,
        peer: &Peer,
    ) -> Result<UserInfo, ApiError> {
        let authn_req = authn::Request {
            headers: req.headers(),
            peer,
        };
        match self.inner.authn.authenticate(&authn_req).await {
            Ok(Some(user)) => Ok(user),
            Ok(None) => Err(ApiError::Unauthorized),
            Err(e) => {
                tracing::debug!(error = %e, peer = %peer.remote_addr, "authentication failed");
                Err(ApiError::Unauthorized)
            }
        }
    }

    async fn authorize(&self, attrs: &Attributes) -> Result<(), ApiError> {
        // As k8s.io/apiserver's delegated authorization: this group is never asked about.
        if attrs.user.groups.iter().any(|g| g == PRIVILEGED_GROUP) {
            return Ok(());
        }
        match self.inner.authz.authorize(attrs).await {
            Ok(Decision::Allow) => Ok(()),
            Ok(Decision::Deny(reason) | Decision::NoOpinion(reason)) => {
                Err(ApiError::Forbidden(Box::new(attrs.clone()), reason))
            }
            // Fail closed: an authorizer that cannot answer never allows.
            Err(e) => Err(ApiError::Internal(format!("authorization failed: {e}"))),
        }
    }

    fn dispatch(
        &self,
        req: Request<Incoming>,
        attrs: Attributes,
    ) -> Result<Response<Body>, ApiError> {
        let app = &*self.inner;
        let not_found =
            || ApiError::NotFound("the server could not find the requested resource".into());
        let not_allowed = || {
            ApiError::MethodNotAllowed(
                "the server does not allow this method on the requested resource".into(),
            )
        };

        if !attrs.resource_request {
            let resp = match attrs.path.as_str() {
                "/healthz" | "/livez" | "/readyz" => {
                    reply::bytes(StatusCode::OK, "text/plain; charset=utf-8", "ok")
                }
                "/metrics" => reply::bytes(
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    app.metrics.render(app.bus.stats()),
                ),
                path => {
                    let accept = req
                        .headers()
                        .get(http::header::ACCEPT)
                        .and_then(|v| v.to_str().ok());
                    let doc = app.discovery.document(path, accept).ok_or_else(not_found)?;
                    let mut resp = reply::bytes(StatusCode::OK, &doc.content_type, doc.body);
                    resp.headers_mut()
                        .insert(http::header::VARY, http::HeaderValue::from_static("Accept"));
                    resp
                }
            };
            return match *req.method() {
                Method::GET | Method::HEAD => Ok(resp),
                _ => Err(not_allowed()),
            };
        }

        if attrs.api_group != API_GROUP
            || attrs.api_version != API_VERSION
            || !attrs.subresource.is_empty()
        {
            return Err(not_found());
        }
        let (scope, resource) = match (attrs.resource.as_str(), attrs.namespace.as_str()) {
            (discovery::EVENTS, "") => (Scope::All, discovery::EVENTS),
            (discovery::NAMESPACED_EVENTS, "") => {
                (Scope::AllNamespaces, discovery::NAMESPACED_EVENTS)
            }
            (discovery::NAMESPACED_EVENTS, ns) => {
                (Scope::Namespace(ns.into()), discovery::NAMESPACED_EVENTS)
            }
            _ => return Err(not_found()),
        };
        if attrs.verb != "watch" || !attrs.name.is_empty() {
            return Err(ApiError::MethodNotAllowed(format!(
                "the server does not allow this method on the requested resource: only watch is served (verb {:?})",
                attrs.verb
            )));
        }
        let query = watch::Query::parse(req.uri().query())?;
        tracing::info!(user = %attrs.user.name, resource, namespace = %attrs.namespace, "watch started");
        let recheck: watch::Recheck = {
            let (app, attrs) = (self.clone(), attrs.clone());
            Arc::new(move || {
                let (app, attrs) = (app.clone(), attrs.clone());
                Box::pin(async move { app.authorize(&attrs).await })
            })
        };
        let ctx = watch::WatchCtx {
            recheck: Some((recheck, app.recheck_interval)),
            budget: Budget::new(app.budget, app.egress.clone(), tokio::time::Instant::now()),
            lag_bytes: app.lag_bytes,
            guard: app.metrics.watch_started(resource),
        };
        watch::serve(&app.bus, &app.watches, scope, &query, ctx)
    }
}

/// Members are allowed everything without asking the authorizer.
const PRIVILEGED_GROUP: &str = "system:masters";

/// A client for kube-apiserver from a kubeconfig, or the in-cluster config.
async fn kube_client(
    kubeconfig: Option<&std::path::Path>,
    flag: &str,
) -> Result<kube::Client, Error> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| Error::Load(format!("{flag}: {}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| Error::Load(format!("{flag}: {}: {e}", path.display())))?
        }
        None => kube::Config::incluster().map_err(|e| {
            Error::Load(format!("{flag}: not given, and no in-cluster config: {e}"))
        })?,
    };
    kube::Client::try_from(config).map_err(|e| Error::Load(format!("{flag}: {e}")))
}

/// The authenticator chain, in kube-apiserver's order: front proxy, x509, static tokens,
/// TokenReview. In cluster mode the client-certificate settings come from the
/// authentication ConfigMap (flags override) and follow its changes.
async fn authenticators(
    settings: &Settings,
    shutdown: &CancellationToken,
) -> Result<authn::Chain, Error> {
    let certs = &settings.client_certs;
    let read = |p: &Option<std::path::PathBuf>| -> Result<Option<(String, String)>, Error> {
        p.as_ref()
            .map(|p| {
                std::fs::read_to_string(p)
                    .map(|pem| (pem, p.display().to_string()))
                    .map_err(|e| Error::Load(format!("reading {}: {e}", p.display())))
            })
            .transpose()
    };
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
            let config = delegated::load(&client, &overrides)
                .await
                .map_err(Error::Load)?;
            let shared = SharedAuthConfig::new(config);
            delegated::spawn_refresh(client.clone(), overrides, shared.clone(), shutdown.clone());
            token_review = Some(authn::TokenReviewer::new(client, cluster.token_cache_ttl));
            shared
        }
        None => SharedAuthConfig::new(overrides.resolve(None).map_err(Error::Load)?),
    };
    let mut chain: Vec<Arc<dyn authn::Authenticator>> = vec![
        Arc::new(authn::RequestHeader(shared.clone())),
        Arc::new(authn::X509(shared)),
    ];
    if let Some(source) = &settings.token_auth {
        let (text, origin) = source.read().map_err(Error::Load)?;
        chain.push(Arc::new(
            authn::TokenFile::parse(&text, &origin).map_err(Error::Load)?,
        ));
    }
    if let Some(t) = token_review {
        chain.push(Arc::new(t));
    }
    Ok(authn::Chain::new(chain))
}

/// kube-apiserver's `RequestInfo`, as authorization `Attributes` (user left empty).
pub fn request_attributes(method: &Method, path: &str, query: Option<&str>) -> Attributes {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let non_resource = || Attributes {
        verb: method.as_str().to_ascii_lowercase(),
        path: path.to_owned(),
        ..Default::default()
    };
    // /apis/{group}/{version}/{...}; shorter /apis paths are discovery.
    let ["apis", group, version, rest @ ..] = segments.as_slice() else {
        return non_resource();
    };
    if rest.is_empty() || rest == [""] {
        return non_resource();
    }
    let (namespace, parts): (&str, &[&str]) = match rest {
        ["namespaces", ns, tail @ ..] if !tail.is_empty() => (ns, tail),
        _ => ("", rest),
    };
    let resource = parts.first().copied().unwrap_or_default();
    let name = parts.get(1).copied().unwrap_or_default();
    let subresource = parts.get(2).copied().unwrap_or_default();
    let watch = watch::is_watch(query);
    let verb = match *method {
        Method::GET | Method::HEAD if watch => "watch",
        Method::GET | Method::HEAD if name.is_empty() => "list",
        Method::GET | Method::HEAD => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if name.is_empty() => "deletecollection",
        Method::DELETE => "delete",
        _ => {
            return Attributes {
                resource_request: true,
                ..non_resource()
            };
        }
    };
    Attributes {
        verb: verb.to_owned(),
        namespace: namespace.to_owned(),
        api_group: (*group).to_owned(),
        api_version: (*version).to_owned(),
        resource: resource.to_owned(),
        subresource: subresource.to_owned(),
        name: name.to_owned(),
        resource_request: true,
        path: path.to_owned(),
        ..Default::default()
    }
}

/// Serve until `shutdown` completes; then stop accepting, end every watch, and wait
/// (bounded) for in-flight requests. The caller binds the listener.
pub async fn run(app: App, listener: TcpListener, shutdown: impl Future) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(app.inner.tls.clone());
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut backoff = Duration::from_millis(5);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => tokio::select! {
                    _ = &mut shutdown => break,
                    r = listener.accept() => r.map(|(s, a)| (s, a, permit)),
                },
                Err(_) => break,
            },
        };
        let (stream, remote_addr, permit) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, ?backoff, "accept failed; backing off");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                continue;
            }
        };
        backoff = Duration::from_millis(5);
        let (app, acceptor, watcher) = (app.clone(), acceptor.clone(), graceful.watcher());
        tokio::spawn(async move {
            serve_connection(app, acceptor, stream, remote_addr, watcher).await;
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!("shutting down: ending watches and draining connections");
    app.inner.watches.shut_down();
    app.inner.shutdown.cancel();
    if tokio::time::timeout(SHUTDOWN_DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {SHUTDOWN_DRAIN_TIMEOUT:?}; closing them");
    }
    Ok(())
}

async fn serve_connection(
    app: App,
    acceptor: TlsAcceptor,
    stream: TcpStream,
    remote_addr: std::net::SocketAddr,
    watcher: hyper_util::server::graceful::Watcher,
) {
    let _ = stream.set_nodelay(true);
    let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(peer = %remote_addr, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(peer = %remote_addr, "TLS handshake timed out");
            return;
        }
    };
    let certs = tls.get_ref().1.peer_certificates().map(|c| {
        c.iter()
            .map(|c| c.clone().into_owned())
            .collect::<Vec<_>>()
            .into()
    });
    let peer = Peer { remote_addr, certs };
    let stall_limit = app.inner.stall_limit;
    let service = service_fn(move |req| {
        let (app, peer) = (app.clone(), peer.clone());
        async move { Ok::<_, Infallible>(app.handle(req, &peer).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        // Behind the aggregator every watch is a stream of one shared connection:
        // kube-apiserver's own default (--http2-max-streams-per-connection), not
        // hyper's 200, so the 201st watch on a connection is not refused.
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        // Bytes hyper buffers per stream before it stops polling the body (see the
        // constant).
        .max_send_buf_size(H2_SEND_BUFFER_BYTES);
    let io = TokioIo::new(Coalesce::new(StallGuard::new(tls, stall_limit)));
    let conn = builder.serve_connection(io, service).into_owned();
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(peer = %remote_addr, error = %e, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(method: Method, path: &str, query: Option<&str>) -> Attributes {
        request_attributes(&method, path, query)
    }

    #[test]
    fn request_info_like_kube_apiserver() {
        let a = attrs(
            Method::GET,
            "/apis/audit.k8s.io/v1alpha1/namespaces/team-a/namespacedevents",
            Some("watch=1"),
        );
        assert!(a.resource_request);
        assert_eq!(
            (a.verb.as_str(), a.namespace.as_str(), a.resource.as_str()),
            ("watch", "team-a", "namespacedevents")
        );
        assert_eq!(
            (a.api_group.as_str(), a.api_version.as_str()),
            ("audit.k8s.io", "v1alpha1")
        );

        let a = attrs(Method::GET, "/apis/audit.k8s.io/v1alpha1/events", None);
        assert_eq!(
            (a.verb.as_str(), a.namespace.as_str(), a.resource.as_str()),
            ("list", "", "events")
        );
        let a = attrs(Method::GET, "/apis/audit.k8s.io/v1alpha1/events/x", None);
        assert_eq!((a.verb.as_str(), a.name.as_str()), ("get", "x"));
        let a = attrs(
            Method::DELETE,
            "/apis/audit.k8s.io/v1alpha1/namespaces/ns/namespacedevents",
            None,
        );
        assert_eq!(a.verb, "deletecollection");
        let a = attrs(Method::POST, "/apis/audit.k8s.io/v1alpha1/events", None);
        assert_eq!(a.verb, "create");
        // `namespaces/{ns}` alone names the namespace object, as kube-apiserver reads it.
        let a = attrs(
            Method::GET,
            "/apis/audit.k8s.io/v1alpha1/namespaces/ns",
            None,
        );
        assert_eq!((a.resource.as_str(), a.name.as_str()), ("namespaces", "ns"));

        for p in [
            "/apis",
            "/apis/audit.k8s.io",
            "/apis/audit.k8s.io/v1alpha1",
            "/apis/audit.k8s.io/v1alpha1/",
            "/metrics",
            "/",
        ] {
            let a = attrs(Method::GET, p, None);
            assert!(!a.resource_request, "{p}");
            assert_eq!((a.verb.as_str(), a.path.as_str()), ("get", p));
        }
    }
}
