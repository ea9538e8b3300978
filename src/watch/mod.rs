//! The WATCH endpoints: the query (`watch`, `resourceVersion`, `timeoutSeconds`,
//! `allowWatchBookmarks`, `fieldSelector`), `serve` that starts a watch, the streaming
//! body (`body`) that writes the shared event bytes of one bus subscription, and the
//! registry of open watches (`registry`): slots, the stall sweeper, shutdown. Never
//! publishes and never decides who may see what: the router authorized the watch, and
//! hands it a `Recheck` to ask again.

mod body;
pub mod registry;

use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Response, StatusCode};
use http_body_util::BodyExt;

use crate::budget::Budget;
use crate::bus::{Bus, Filter, Scope};
use crate::event::{DROPPED_ANNOTATION, GROUP_VERSION, KIND};
use crate::metrics::WatchGuard;
use crate::reply::Body;
pub use crate::selector::FieldSelector;
use crate::status::ApiError;
pub use registry::Watches;

/// kube-apiserver's `--min-request-timeout` default: a watch without `timeoutSeconds`
/// lasts about this long (jittered so that reconnects do not come in waves).
pub const DEFAULT_WATCH_TIMEOUT_SECONDS: u64 = 1800;
/// How often a watcher that asked for bookmarks gets one; kube-apiserver sends them
/// about once a minute.
pub const BOOKMARK_INTERVAL: Duration = Duration::from_secs(60);

/// The query parameters of a LIST/WATCH request that we act on.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub watch: bool,
    pub resource_version: Option<u64>,
    pub timeout_seconds: Option<u64>,
    pub allow_watch_bookmarks: bool,
    pub field_selector: FieldSelector,
}

impl Query {
    pub fn parse(query: Option<&str>) -> Result<Query, ApiError> {
        let mut q = Query::default();
        for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            match &*key {
                "watch" => q.watch = query_bool(&value),
                "allowWatchBookmarks" => q.allow_watch_bookmarks = query_bool(&value),
                "resourceVersion" if value.is_empty() => {}
                "resourceVersion" => {
                    q.resource_version = Some(value.parse().map_err(|_| {
                        ApiError::BadRequest(format!(
                            "resourceVersion: Invalid value: {value:?}: must be a decimal number"
                        ))
                    })?)
                }
                "timeoutSeconds" if value.is_empty() => {}
                "timeoutSeconds" => q.timeout_seconds = Some(value.parse().map_err(|_| {
                    ApiError::BadRequest(format!(
                        "timeoutSeconds: Invalid value: {value:?}: must be a non-negative integer"
                    ))
                })?),
                "fieldSelector" => {
                    q.field_selector = FieldSelector::parse(&value)
                        .map_err(|e| ApiError::BadRequest(e.to_string()))?
                }
                "labelSelector" if !value.trim().is_empty() => {
                    return Err(ApiError::BadRequest(
                        "labelSelector: audit events have no labels; use fieldSelector".into(),
                    ));
                }
                // Other list options (limit, continue, resourceVersionMatch, …) do not
                // change a watch; kube-apiserver ignores unknown parameters too.
                _ => {}
            }
        }
        Ok(q)
    }

    fn timeout(&self) -> Duration {
        match self.timeout_seconds {
            Some(s) => Duration::from_secs(s),
            // 1800 s ± 10 %.
            None => Duration::from_secs(DEFAULT_WATCH_TIMEOUT_SECONDS)
                .mul_f64(0.9 + fastrand::f64() * 0.2),
        }
    }
}

/// Whether the query asks for a watch, read on its own as kube-apiserver's RequestInfo
/// does (the verb is decided before the other parameters are checked).
pub fn is_watch(query: Option<&str>) -> bool {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "watch")
        .is_some_and(|(_, v)| query_bool(&v))
}

/// kube-apiserver's bool query conversion: "", "0" and "false" are false, anything else true.
fn query_bool(v: &str) -> bool {
    !(v.is_empty() || v == "0" || v.eq_ignore_ascii_case("false"))
}

/// Authorize the watch again; an error ends it with that error as an `ERROR` event.
pub type Recheck =
    std::sync::Arc<dyn Fn() -> BoxFuture<'static, Result<(), ApiError>> + Send + Sync>;

/// What a watch needs besides its query: re-authorization, its budget, how much backlog
/// counts as lagging, and its metrics.
pub struct WatchCtx {
    /// Re-authorization and how often to do it.
    pub recheck: Option<(Recheck, Duration)>,
    pub budget: Budget,
    /// Taken-but-unsent bytes above which the watcher is lagging and gets truncated
    /// events.
    pub lag_bytes: usize,
    pub guard: WatchGuard,
}

/// Start a watch of `scope`, taking one of the server's watch slots. Errors found before
/// the stream starts are plain `Status` responses, except an expired resourceVersion,
/// which kube-apiserver sends as a 200 with one `ERROR` event.
pub fn serve(
    bus: &Bus,
    watches: &Watches,
    scope: Scope,
    query: &Query,
    ctx: WatchCtx,
) -> Result<Response<Body>, ApiError> {
    let filter = Filter {
        scope,
        selector: query.field_selector.clone(),
    };
    let sub = match bus.subscribe(filter, query.resource_version) {
        Ok(sub) => sub,
        Err(expired) => {
            let e = ApiError::Expired {
                requested: expired.requested,
                oldest: expired.oldest,
            };
            return Ok(stream_response(crate::reply::full(e.to_watch_event())));
        }
    };
    let registration = watches
        .register(sub.closer(), ctx.guard.stalled_counter())
        .map_err(|full| ApiError::TooManyRequests(full.to_string()))?;
    let body = body::WatchBody::new(sub, registration, query, ctx);
    Ok(stream_response(body.boxed_unsync()))
}

fn stream_response(body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// A `BOOKMARK` line; with `dropped`, the count of events lost since the last one.
pub fn bookmark(resource_version: u64, dropped: Option<u64>) -> Bytes {
    let mut metadata = serde_json::json!({ "resourceVersion": resource_version.to_string() });
    if let Some(n) = dropped {
        metadata["annotations"] = serde_json::json!({ DROPPED_ANNOTATION: n.to_string() });
    }
    let line = serde_json::json!({
        "type": "BOOKMARK",
        "object": { "kind": KIND, "apiVersion": GROUP_VERSION, "metadata": metadata },
    });
    let mut out = serde_json::to_vec(&line).unwrap_or_default();
    out.push(b'\n');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        let q = Query::parse(Some(
            "watch=1&resourceVersion=42&timeoutSeconds=5&allowWatchBookmarks=true",
        ))
        .unwrap();
        assert!(q.watch && q.allow_watch_bookmarks);
        assert_eq!(q.resource_version, Some(42));
        assert_eq!(q.timeout(), Duration::from_secs(5));
        assert!(Query::parse(Some("watch=true")).unwrap().watch);
        assert!(!Query::parse(Some("watch=false")).unwrap().watch);
        assert!(!Query::parse(Some("watch=0")).unwrap().watch);
        assert!(!Query::parse(None).unwrap().watch);
        assert!(Query::parse(Some("resourceVersion=abc")).is_err());
        assert!(Query::parse(Some("timeoutSeconds=-1")).is_err());
        assert!(Query::parse(Some("fieldSelector=nope%3Dx")).is_err());
        assert!(Query::parse(Some("labelSelector=a%3Db")).is_err());
        assert!(Query::parse(Some("labelSelector=&limit=500")).is_ok());
        let t = Query::parse(None).unwrap().timeout();
        assert!(
            t >= Duration::from_secs(1620) && t <= Duration::from_secs(1980),
            "{t:?}"
        );
    }

    #[test]
    fn bookmark_shapes() {
        let v: serde_json::Value = serde_json::from_slice(&bookmark(7, Some(3))).unwrap();
        assert_eq!(v["type"], "BOOKMARK");
        assert_eq!(v["object"]["apiVersion"], "audit.k8s.io/v1alpha1");
        assert_eq!(v["object"]["kind"], "Event");
        assert_eq!(v["object"]["metadata"]["resourceVersion"], "7");
        assert_eq!(
            v["object"]["metadata"]["annotations"]["audit.k8s.io/dropped"],
            "3"
        );
        let v: serde_json::Value = serde_json::from_slice(&bookmark(7, None)).unwrap();
        assert!(v["object"]["metadata"].get("annotations").is_none());
    }
}
