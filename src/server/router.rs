//! Routing: authenticate, describe the request as kube-apiserver `Attributes`, authorize,
//! then pick the handler by path and verb. Only `/ingest` (its own pusher check) and the
//! always-allow paths skip authorization. Handlers get an already-allowed scope. Counts
//! every request (verb, resource, code) and every authentication and authorization
//! decision; logs each refusal once, never the credential.

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use prometheus::IntCounterVec;

use super::App;
use crate::authn::{self, UserInfo};
use crate::authz::{self, Attributes, Decision};
use crate::budget::Budget;
use crate::bus::{Down, Filter, ListRange, Scope};
use crate::config::Granularity;
use crate::discovery;
use crate::event::Event;
use crate::event::{API_GROUP, API_VERSION};
use crate::metrics::{self, Metrics};
use crate::response::{self, Body};
use crate::selector::FieldSelector;
use crate::status::ApiError;
use crate::table;
use crate::tls::Peer;
use crate::watch;
use crate::watch::access::{Access, ResourceCheck, ResourceKey};

impl App {
    /// Serve one request; every failure becomes a `Status` response, a panic too (a 500,
    /// logged and counted in `kube_audit_stream_server_panics_total`).
    pub async fn handle(&self, req: Request<Incoming>, peer: &Peer) -> Response<Body> {
        if let Err(e) = self.check_head(&req) {
            tracing::debug!(peer = %peer.remote_addr, error = %e, "request head refused");
            return response::error(&e);
        }
        let what = format!("{} {}", req.method(), req.uri().path());
        let panics = self.inner.metrics.panic_counter("handler");
        response::answer_panics(self.answer(req, peer), &panics, &what).await
    }

    /// The URL and head size limits, before anything reads the request. hyper and h2
    /// refuse heads above twice the limit themselves (see `accept`), with a bare 431;
    /// this check answers the rest with a Status.
    fn check_head(&self, req: &Request<Incoming>) -> Result<(), ApiError> {
        let limits = self.inner.limits;
        let url = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
        if url > limits.max_url_bytes {
            self.inner.metrics.refused("url_bytes");
            return Err(ApiError::RequestUriTooLong {
                limit: limits.max_url_bytes,
            });
        }
        if head_bytes(req) > limits.max_request_header_bytes {
            self.inner.metrics.refused("header_bytes");
            return Err(ApiError::RequestHeaderFieldsTooLarge {
                limit: limits.max_request_header_bytes,
            });
        }
        Ok(())
    }

    async fn answer(&self, req: Request<Incoming>, peer: &Peer) -> Response<Body> {
        let (method, path) = (req.method().clone(), req.uri().path().to_owned());
        let query = req.uri().query();
        let attrs = authz::request_attributes(
            method.as_str(),
            &path,
            watch::is_watch(query),
            watch::selected_name(query).as_deref(),
        );
        let (verb, resource) = labels(&attrs);
        let resp = self.route(req, peer, attrs).await.unwrap_or_else(|e| {
            match e {
                ApiError::Internal(_) => {
                    tracing::error!(%method, %path, error = %e, "request failed");
                }
                // Who was turned away, and why (never the credential itself). A failed
                // authentication was logged where it failed, with what was presented;
                // a refused push by ingest.
                ApiError::Forbidden { .. } | ApiError::ForbiddenPlain(_) if path != "/ingest" => {
                    tracing::info!(
                        %method, %path, peer = %peer.remote_addr, code = e.code_reason().0.as_u16(),
                        reason = %e, "request refused"
                    );
                }
                _ => {}
            }
            response::error(&e)
        });
        let code = resp.status().as_u16();
        self.inner.requests.request(verb, resource, code);
        tracing::debug!(%method, %path, code, peer = %peer.remote_addr, "request");
        resp
    }

    /// `attrs`: the request read as kube-apiserver's `RequestInfo` (no user yet).
    async fn route(
        &self,
        req: Request<Incoming>,
        peer: &Peer,
        mut attrs: Attributes,
    ) -> Result<Response<Body>, ApiError> {
        let app = &*self.inner;
        if attrs.path == "/ingest" {
            return app.ingest.handle(req, peer).await;
        }
        if !app.always_allow.contains(&attrs.path) {
            attrs.user = Arc::new(self.authenticate(&req, peer).await?);
            self.authorize(&attrs).await?;
        }
        let mut query = None;
        // Sources number their objects by time, not by the bus: nothing to wait for.
        if attrs.verb == "watch" && attrs.resource_request && attrs.resource != discovery::SOURCES {
            // As kube-apiserver does, a watch from a resourceVersion not reached yet waits
            // a moment for it (a replica a few events behind another, with --bus=nats);
            // still not reached, it is answered "too large" and the client lists again.
            let mut q = watch::Query::parse(req.uri().query())?;
            // `/watch/…` is a watch without `watch=1`, validated as its query reads (as
            // kube-apiserver's `forceWatch`), served as one.
            q.watch = true;
            if let Some(rv) = q.resource_version.filter(|_| !q.sends_initial_events()) {
                app.bus
                    .wait_for(rv, watch::FUTURE_RESOURCE_VERSION_WAIT)
                    .await;
            }
            query = Some(q);
        }
        self.dispatch(req, attrs, query).await
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
        let meters = &self.inner.requests;
        let why = match self.inner.authn.authenticate(&authn_req).await {
            Ok(Some(user)) => {
                meters.authenticated("authenticated");
                return Ok(user);
            }
            Ok(None) => {
                meters.authenticated("no_credentials");
                "no credentials any authenticator accepts".to_owned()
            }
            Err(e) => {
                meters.authenticated(if e.is_backend_failure() {
                    "error"
                } else {
                    "invalid"
                });
                e.to_string()
            }
        };
        // The one line a failed authentication leaves: what kind of credential came,
        // never the credential.
        tracing::info!(
            method = %req.method(),
            path = %req.uri().path(),
            peer = %peer.remote_addr,
            code = 401,
            credential = authn::presented(req.headers(), peer),
            reason = %why,
            "request refused"
        );
        Err(ApiError::Unauthorized)
    }

    async fn authorize(&self, attrs: &Attributes) -> Result<(), ApiError> {
        let meters = &self.inner.requests;
        match self.inner.authz.authorize(attrs).await {
            Ok(Decision::Allow) => {
                meters.authorized("allow");
                Ok(())
            }
            Ok(Decision::Deny(reason)) => {
                meters.authorized("deny");
                Err(attrs.forbidden(&reason))
            }
            Ok(Decision::NoOpinion(reason)) => {
                meters.authorized("no_opinion");
                Err(attrs.forbidden(&reason))
            }
            // Fail closed: an authorizer that cannot answer never allows.
            Err(e) => {
                meters.authorized("error");
                Err(e.into())
            }
        }
    }

    /// `query`: the request's options when `route` has already read them (a watch).
    async fn dispatch(
        &self,
        req: Request<Incoming>,
        attrs: Attributes,
        query: Option<watch::Query>,
    ) -> Result<Response<Body>, ApiError> {
        let app = &*self.inner;
        if !attrs.resource_request {
            let resp = match attrs.path.as_str() {
                // Alive while the bus is down: the replica recovers by itself, and a
                // restart would not bring NATS back.
                "/healthz" | "/livez" => {
                    response::bytes(StatusCode::OK, "text/plain; charset=utf-8", "ok")
                }
                "/readyz" => readyz(app.bus.down().as_ref().map(Down::reason), req.uri().query()),
                "/metrics" => {
                    // Each source's Ready as of now, not as of the last tick.
                    app.sources.refresh_metrics();
                    response::bytes(
                        StatusCode::OK,
                        "text/plain; version=0.0.4",
                        app.metrics
                            .render(app.bus.stats(), app.bus.down().is_none()),
                    )
                }
                path => {
                    let accept = req
                        .headers()
                        .get(http::header::ACCEPT)
                        .and_then(|v| v.to_str().ok());
                    let doc = app.discovery.document(path, accept).ok_or_else(not_found)?;
                    let mut resp = response::bytes(StatusCode::OK, &doc.content_type, doc.body);
                    resp.headers_mut()
                        .insert(http::header::VARY, http::HeaderValue::from_static("Accept"));
                    resp
                }
            };
            return match *req.method() {
                Method::GET | Method::HEAD => Ok(resp),
                _ => Err(method_not_allowed()),
            };
        }

        self.resource(req, attrs, query).await
    }

    /// A resource request: which resource and scope the path names, then the verb.
    async fn resource(
        &self,
        req: Request<Incoming>,
        attrs: Attributes,
        query: Option<watch::Query>,
    ) -> Result<Response<Body>, ApiError> {
        let app = &*self.inner;
        if attrs.api_group != API_GROUP
            || attrs.api_version != API_VERSION
            || !attrs.subresource.is_empty()
        {
            return Err(not_found());
        }
        if attrs.resource == discovery::SOURCES && attrs.namespace.is_empty() {
            return self.sources(req, attrs, query);
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
        let (query, format) = read_options(&req, query)?;
        let readable = matches!(*req.method(), Method::GET | Method::HEAD);
        match (attrs.verb.as_str(), attrs.name.is_empty()) {
            // A LIST's name, if any, is its selector's (authorization's only).
            ("list", _) => {
                let guard = app.metrics.list_started(resource);
                let slot = watch::enter_list(
                    &app.lists,
                    &attrs.user.name,
                    resource,
                    &attrs.namespace,
                    guard,
                )?;
                let visible = self.visible(&attrs, &scope, &query.field_selector).await;
                watch::list(&app.bus, scope, &query, format, &*visible, slot)
            }
            ("get", false) => {
                // Only the events of that name are asked about, not the whole window.
                let named = FieldSelector::name(&attrs.name);
                let visible = self.visible(&attrs, &scope, &named).await;
                watch::get(&app.bus, scope, resource, &attrs.name, format, &*visible)
            }
            ("watch", true) if readable => self.watch(attrs, scope, resource, &query, format),
            // One event's watch: the path's name (`/watch/…/NAME`), or the selector's.
            ("watch", false) if readable => {
                let mut query = query;
                watch::name_selector(&mut query, &attrs.name)?;
                self.watch(attrs, scope, resource, &query, format)
            }
            _ => Err(method_not_allowed()),
        }
    }

    /// `sources`: GET, LIST, WATCH, as objects or Tables; cluster-scoped, already
    /// authorized like any resource.
    fn sources(
        &self,
        req: Request<Incoming>,
        attrs: Attributes,
        query: Option<watch::Query>,
    ) -> Result<Response<Body>, ApiError> {
        let app = &*self.inner;
        let (query, format) = read_options(&req, query)?;
        let mut selector = watch::sources::NameSelector::parse(req.uri().query())?;
        match (attrs.verb.as_str(), attrs.name.is_empty()) {
            // A LIST's or a watch's name, if any, is its selector's or its path's: the
            // collection's, narrowed to that name.
            ("list", _) => {
                selector.require_name(&attrs.name);
                watch::sources::list(&app.sources, &query, &selector, format)
            }
            ("get", false) => watch::sources::get(&app.sources, &attrs.name, format),
            ("watch", _) => {
                selector.require_name(&attrs.name);
                let ctx = watch::sources::WatchCtx {
                    recheck: Some((self.recheck(&attrs), app.recheck_interval)),
                    guard: app.metrics.watch_started(discovery::SOURCES),
                    format,
                    user: attrs.user.name.as_str().into(),
                };
                watch::sources::serve(&app.sources, &app.watches, &query, selector, ctx)
            }
            _ => Err(method_not_allowed()),
        }
    }

    /// Authorize `attrs` again: what a long watch does every recheck interval.
    fn recheck(&self, attrs: &Attributes) -> watch::Recheck {
        let (app, attrs) = (self.clone(), attrs.clone());
        Arc::new(move || {
            let (app, attrs) = (app.clone(), attrs.clone());
            Box::pin(async move { app.authorize(&attrs).await })
        })
    }

    fn watch(
        &self,
        attrs: Attributes,
        scope: Scope,
        resource: &'static str,
        query: &watch::Query,
        format: Option<table::Format>,
    ) -> Result<Response<Body>, ApiError> {
        let app = &*self.inner;
        let recheck = self.recheck(&attrs);
        let access = self
            .resource_check(&attrs)
            .map(|check| Access::new(check, app.recheck_interval));
        // Only a watch of one namespace is held to that namespace's share: a cluster-wide
        // watch is not one namespace's, and a LIST is one answer, bounded by the window,
        // not a stream that a budget paces (no watcher's budget applies to it either).
        let namespace = match (&scope, &app.namespaces) {
            (Scope::Namespace(ns), Some(shares)) => Some(shares.get(ns)),
            _ => None,
        };
        let ctx = watch::WatchCtx {
            access,
            recheck: Some((recheck, app.recheck_interval)),
            budget: Budget::new(app.budget, app.egress.clone(), tokio::time::Instant::now())
                .in_namespace(namespace),
            lag_bytes: app.lag_bytes,
            guard: app.metrics.watch_started(resource),
            format,
            user: attrs.user.name.as_str().into(),
            resource,
            namespace: attrs.namespace.clone(),
            stages: app.stages.clone(),
        };
        watch::serve(&app.bus, &app.watches, scope, query, ctx)
    }
}

impl App {
    /// `--authorization-granularity=resource`: the question each event asks for this
    /// user, `get` on its resource where it is, put to the same authorizer (through its
    /// cache) as the request's own.
    fn resource_check(&self, attrs: &Attributes) -> Option<ResourceCheck> {
        if self.inner.granularity != Granularity::Resource {
            return None;
        }
        let (app, user) = (self.clone(), attrs.user.clone());
        Some(Arc::new(move |key: ResourceKey| {
            let (app, user) = (app.clone(), user.clone());
            Box::pin(async move {
                let attrs = Attributes {
                    user,
                    verb: "get".into(),
                    namespace: key.namespace.into(),
                    api_group: key.api_group.into(),
                    resource: key.resource.into(),
                    resource_request: true,
                    ..Attributes::default()
                };
                match app.inner.authz.authorize(&attrs).await {
                    Ok(Decision::Allow) => Ok(true),
                    Ok(Decision::Deny(_) | Decision::NoOpinion(_)) => Ok(false),
                    Err(e) => Err(ApiError::from(e)),
                }
            })
        }))
    }

    /// What a LIST or GET may show: everything, or (by resource) what the answers for
    /// the resources of the window's events that `selector` picks allow, each asked once.
    async fn visible(
        &self,
        attrs: &Attributes,
        scope: &Scope,
        selector: &FieldSelector,
    ) -> Box<dyn Fn(&Event) -> bool + Send + Sync> {
        let Some(check) = self.resource_check(attrs) else {
            return Box::new(|_| true);
        };
        let filter = Filter {
            scope: scope.clone(),
            selector: selector.clone(),
        };
        // A bus that is down answers the LIST itself with its 503.
        let held = self
            .inner
            .bus
            .list(&filter, ListRange::default())
            .map(|page| page.items)
            .unwrap_or_default();
        let keys = held.iter().map(|p| ResourceKey::of(&p.event));
        Box::new(watch::access::visible(&check, keys).await)
    }
}

/// A read's options (`query`: when `route` has read them already, for a watch) and the
/// Table format its `Accept` header asks for, if any.
fn read_options(
    req: &Request<Incoming>,
    query: Option<watch::Query>,
) -> Result<(watch::Query, Option<table::Format>), ApiError> {
    let query = match query {
        Some(q) => q,
        None => watch::Query::parse(req.uri().query())?,
    };
    let accept = req
        .headers()
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let format = table::negotiate(accept)?.map(|version| table::Format {
        version,
        include: query.include_object,
    });
    Ok((query, format))
}

/// What the router counts. Every label comes from a closed set.
pub struct RequestMeters {
    requests: IntCounterVec,
    authentication: IntCounterVec,
    authorization: IntCounterVec,
}

impl RequestMeters {
    pub fn new(m: &Metrics) -> Self {
        RequestMeters {
            requests: m.register(IntCounterVec::new(
                metrics::opts(
                    "http",
                    "requests_total",
                    "HTTP requests by verb (kube-apiserver's: get, list, watch, create, …; other), resource (events, namespacedevents, sources, ingest, metrics, health, discovery, other) and code.",
                ),
                &["verb", "resource", "code"],
            )),
            authentication: m.register(IntCounterVec::new(
                metrics::opts(
                    "authentication",
                    "decisions_total",
                    "Authentication of requests (not pushes) by result: authenticated, no_credentials, invalid (bad credentials), error (TokenReview failed).",
                ),
                &["result"],
            )),
            authorization: m.register(IntCounterVec::new(
                metrics::opts(
                    "authorization",
                    "decisions_total",
                    "Authorization of requests (and of long watches again) by decision: allow, deny, no_opinion (refused too), error (the authorizer could not answer: 500).",
                ),
                &["decision"],
            )),
        }
    }

    fn request(&self, verb: &str, resource: &str, code: u16) {
        self.requests
            .with_label_values(&[verb, resource, itoa::Buffer::new().format(code)])
            .inc();
    }

    fn authenticated(&self, result: &str) {
        self.authentication.with_label_values(&[result]).inc();
    }

    fn authorized(&self, decision: &str) {
        self.authorization.with_label_values(&[decision]).inc();
    }
}

/// A request's `verb` and `resource` labels, from closed sets: kube-apiserver's verbs
/// and our resources, and for other paths what they are for.
fn labels(attrs: &Attributes) -> (&'static str, &'static str) {
    const VERBS: &[&str] = &[
        "get",
        "list",
        "watch",
        "create",
        "update",
        "patch",
        "delete",
        "deletecollection",
        "post",
        "put",
        "head",
        "options",
    ];
    let path = attrs.path.as_str();
    let verb = VERBS
        .iter()
        .find(|v| **v == attrs.verb)
        .copied()
        .unwrap_or("other");
    let resource = match attrs.resource.as_str() {
        _ if path == "/ingest" => "ingest",
        _ if !attrs.resource_request => match path {
            "/metrics" => "metrics",
            "/healthz" | "/livez" | "/readyz" => "health",
            p if p == "/api"
                || p == "/apis"
                || p.starts_with("/apis/")
                || p.starts_with("/api/") =>
            {
                "discovery"
            }
            _ => "other",
        },
        discovery::EVENTS => discovery::EVENTS,
        discovery::NAMESPACED_EVENTS => discovery::NAMESPACED_EVENTS,
        discovery::SOURCES => discovery::SOURCES,
        _ => "other",
    };
    (verb, resource)
}

fn not_found() -> ApiError {
    ApiError::NotFound("the server could not find the requested resource".into())
}

/// kube-apiserver's answer for a verb its resource does not serve.
fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed(
        "the server does not allow this method on the requested resource".into(),
    )
}

/// The request head's size as HTTP/1.1 writes it: the request line, then `name: value`
/// and a line break per header (what Go's MaxHeaderBytes counts, near enough).
fn head_bytes<B>(req: &Request<B>) -> usize {
    let target = req.uri().path_and_query().map_or(1, |pq| pq.as_str().len());
    let line = req.method().as_str().len() + target + 12;
    req.headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + line
}

/// `/readyz` as k8s.io/apiserver words it: `ok`, or with `?verbose` (and always on
/// failure, with 500) one line per check. The `bus` check fails while NATS is out of
/// reach or the stream is not read up to date, so that the Service and the aggregator
/// send requests to another replica.
fn readyz(bus_down: Option<&str>, query: Option<&str>) -> Response<Body> {
    let verbose = query.is_some_and(|q| {
        form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == "verbose" && v != "false")
    });
    let text = "text/plain; charset=utf-8";
    match bus_down {
        None if !verbose => response::bytes(StatusCode::OK, text, "ok"),
        None => response::bytes(
            StatusCode::OK,
            text,
            "[+]ping ok\n[+]bus ok\nreadyz check passed\n",
        ),
        Some(reason) => {
            tracing::debug!(%reason, "readyz: bus check failed");
            response::bytes(
                StatusCode::INTERNAL_SERVER_ERROR,
                text,
                "[+]ping ok\n[-]bus failed: reason withheld\nreadyz check failed\n",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_labels_come_from_closed_sets() {
        let l = |m: Method, p: &str, q: Option<&str>| {
            labels(&authz::request_attributes(
                m.as_str(),
                p,
                watch::is_watch(q),
                None,
            ))
        };
        let ns = "/apis/audit.k8s.io/v1alpha1/namespaces/team-a/namespacedevents";
        assert_eq!(
            l(Method::GET, ns, Some("watch=1")),
            ("watch", "namespacedevents")
        );
        assert_eq!(l(Method::GET, ns, None), ("list", "namespacedevents"));
        assert_eq!(
            l(Method::GET, "/apis/audit.k8s.io/v1alpha1/events/x", None),
            ("get", "events")
        );
        assert_eq!(
            l(
                Method::GET,
                "/apis/audit.k8s.io/v1alpha1/sources",
                Some("watch=1")
            ),
            ("watch", "sources")
        );
        assert_eq!(
            l(Method::GET, "/apis/audit.k8s.io/v1alpha1/secrets", None),
            ("list", "other")
        );
        assert_eq!(l(Method::POST, "/ingest", None), ("post", "ingest"));
        assert_eq!(l(Method::GET, "/metrics", None), ("get", "metrics"));
        assert_eq!(l(Method::GET, "/readyz", None), ("get", "health"));
        assert_eq!(
            l(Method::GET, "/apis/audit.k8s.io", None),
            ("get", "discovery")
        );
        assert_eq!(l(Method::GET, "/random/path", None), ("get", "other"));
        let odd = Method::from_bytes(b"BREW").unwrap();
        assert_eq!(l(odd, "/metrics", None).0, "other");
    }
}
