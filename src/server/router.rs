//! Routing: authenticate, describe the request as kube-apiserver `Attributes`, authorize,
//! then pick the handler by path and verb. Only `/ingest` (its own pusher check) and the
//! always-allow paths skip authorization. Handlers get an already-allowed scope.

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::App;
use crate::authn::{self, UserInfo};
use crate::authz::{self, Attributes, Decision};
use crate::budget::Budget;
use crate::bus::Scope;
use crate::discovery;
use crate::event::{API_GROUP, API_VERSION};
use crate::reply::{self, Body};
use crate::status::ApiError;
use crate::table;
use crate::tls::Peer;
use crate::watch;

impl App {
    /// Serve one request; every failure becomes a `Status` response, a panic too (a 500,
    /// logged and counted in `kube_audit_stream_server_panics_total`).
    pub async fn handle(&self, req: Request<Incoming>, peer: &Peer) -> Response<Body> {
        if let Err(e) = self.check_head(&req) {
            tracing::debug!(peer = %peer.remote_addr, error = %e, "request head refused");
            return reply::error(&e);
        }
        let what = format!("{} {}", req.method(), req.uri().path());
        let panics = self.inner.metrics.panic_counter("handler");
        reply::answer_panics(self.answer(req, peer), &panics, &what).await
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
        let resp = self.route(req, peer).await.unwrap_or_else(|e| {
            match e {
                ApiError::Internal(_) => {
                    tracing::error!(%method, %path, error = %e, "request failed");
                }
                // Who was turned away, and why (never the credential itself).
                ApiError::Unauthorized | ApiError::Forbidden(..) | ApiError::ForbiddenPlain(_) => {
                    tracing::info!(
                        %method, %path, peer = %peer.remote_addr, code = e.code_reason().0.as_u16(),
                        reason = %e, "request refused"
                    );
                }
                _ => {}
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
        let watch = watch::is_watch(req.uri().query());
        let mut attrs = authz::request_attributes(req.method().as_str(), &path, watch);
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
                Err(e.into())
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
            Err(e) => Err(e.into()),
        }
    }

    fn dispatch(
        &self,
        req: Request<Incoming>,
        attrs: Attributes,
    ) -> Result<Response<Body>, ApiError> {
        let app = &*self.inner;
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

        self.resource(req, attrs)
    }

    /// A resource request: which resource and scope the path names, then the verb.
    fn resource(
        &self,
        req: Request<Incoming>,
        attrs: Attributes,
    ) -> Result<Response<Body>, ApiError> {
        let app = &*self.inner;
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
        let query = watch::Query::parse(req.uri().query())?;
        let accept = req
            .headers()
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok());
        let format = table::negotiate(accept)?.map(|version| table::Format {
            version,
            include: query.include_object,
        });
        match (attrs.verb.as_str(), attrs.name.is_empty()) {
            ("list", true) => watch::list(&app.bus, scope, &query, format),
            ("get", false) => watch::get(&app.bus, scope, resource, &attrs.name, format),
            ("watch", true) => self.watch(attrs, scope, resource, &query, format),
            // kube-apiserver's answer for a verb its resource does not serve.
            _ => Err(ApiError::MethodNotAllowed(
                "the server does not allow this method on the requested resource".into(),
            )),
        }
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
            format,
            user: attrs.user.name.as_str().into(),
        };
        watch::serve(&app.bus, &app.watches, scope, query, ctx)
    }
}

fn not_found() -> ApiError {
    ApiError::NotFound("the server could not find the requested resource".into())
}

/// Members are allowed everything without asking the authorizer.
const PRIVILEGED_GROUP: &str = "system:masters";

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
