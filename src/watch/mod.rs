//! The read endpoints of events: the query and its validation (kube-apiserver's list
//! options), `serve` that starts a WATCH (or a WatchList: the window first, then a
//! bookmark), LIST and GET (`list`), the streaming body (`body`) that writes the shared
//! event bytes of one bus subscription (or one-row Tables), and the registry of open
//! watches (`registry`): slots, the stall sweeper, shutdown. Never publishes and never
//! decides who may see what: the router authorized the request, and hands a watch a
//! `Recheck` to ask again.

pub mod access;
mod body;
mod frame;
mod list;
pub mod registry;
pub mod sources;
pub mod stages;

use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Response, StatusCode};
use http_body_util::BodyExt;

use crate::budget::Budget;
use crate::bus::{Bus, Filter, Scope};
use crate::event::{DROPPED_ANNOTATION, GROUP_VERSION, KIND};
use crate::metrics::WatchGuard;
use crate::response::Body;
pub use crate::selector::FieldSelector;
use crate::status::ApiError;
use crate::table::Format;
pub use crate::table::IncludeObject;
pub use list::{InFlight, enter as enter_list, get, list};
pub use registry::Watches;
pub use stages::StageMeters;

/// A field selector that does not parse: 400, as kube-apiserver answers it.
impl From<crate::selector::Error> for ApiError {
    fn from(e: crate::selector::Error) -> Self {
        ApiError::BadRequest(e.to_string())
    }
}

/// kube-apiserver's `--min-request-timeout` default: a watch without `timeoutSeconds`
/// lasts about this long (jittered so that reconnects do not come in waves).
pub const DEFAULT_WATCH_TIMEOUT_SECONDS: u64 = 1800;
/// The longest watch: what Go's `time.Duration` holds (2^63 - 1 ns, about 292 years),
/// so the longest kube-apiserver's watch handler can be given (`timeoutSeconds` × 1 s);
/// a longer one would wrap there, and overflowed the deadline's `Instant` here (a
/// panic, answered 500).
pub const MAX_WATCH_TIMEOUT: Duration = Duration::from_nanos(i64::MAX as u64);
/// A deadline for a platform whose clock cannot reach `MAX_WATCH_TIMEOUT` from now:
/// decades, as good as never for a watch.
const FAR_DEADLINE: Duration = Duration::from_secs(30 * 365 * 86_400);
/// How often a watcher that asked for bookmarks gets one; kube-apiserver sends them
/// about once a minute.
pub const BOOKMARK_INTERVAL: Duration = Duration::from_secs(60);

/// The query parameters of a LIST/WATCH request that we act on.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub watch: bool,
    pub resource_version: Option<u64>,
    pub resource_version_match: Option<ResourceVersionMatch>,
    pub timeout_seconds: Option<u64>,
    pub allow_watch_bookmarks: bool,
    /// `Some` when given at all: kube-apiserver's validation tells "false" from absent.
    pub send_initial_events: Option<bool>,
    pub field_selector: FieldSelector,
    /// LIST: at most this many events per page (0: all).
    pub limit: usize,
    pub continue_token: Option<String>,
    pub include_object: IncludeObject,
}

/// `resourceVersionMatch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceVersionMatch {
    Exact,
    NotOlderThan,
    /// Anything else: refused by validation with the value quoted.
    Other(String),
}

impl Query {
    pub fn parse(query: Option<&str>) -> Result<Query, ApiError> {
        let mut q = Query::default();
        // A repeated parameter counts once, by its first value, as kube-apiserver's query
        // conversion reads it (and as `is_watch` decides the verb that was authorized: a
        // later `watch=0` must not turn an authorized watch into an unauthorized list).
        let mut seen: Vec<std::borrow::Cow<'_, str>> = Vec::new();
        for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            if seen.contains(&key) {
                continue;
            }
            seen.push(key.clone());
            match &*key {
                "watch" => q.watch = query_bool(&value),
                "allowWatchBookmarks" => q.allow_watch_bookmarks = query_bool(&value),
                "sendInitialEvents" => q.send_initial_events = Some(query_bool(&value)),
                "resourceVersion" if value.is_empty() => {}
                "resourceVersion" => {
                    q.resource_version = Some(value.parse().map_err(|_| {
                        ApiError::BadRequest(format!(
                            "resourceVersion: Invalid value: {value:?}: must be a decimal number"
                        ))
                    })?)
                }
                "resourceVersionMatch" => {
                    q.resource_version_match = match &*value {
                        "" => None,
                        "Exact" => Some(ResourceVersionMatch::Exact),
                        "NotOlderThan" => Some(ResourceVersionMatch::NotOlderThan),
                        other => Some(ResourceVersionMatch::Other(other.to_owned())),
                    }
                }
                "timeoutSeconds" if value.is_empty() => {}
                "timeoutSeconds" => {
                    // Read as kube-apiserver reads it, a 64-bit signed integer: a value
                    // beyond that is refused there too (its parameter conversion's
                    // strconv.ParseInt). Negative ones stay refused here.
                    let seconds = value
                        .parse::<i64>()
                        .ok()
                        .and_then(|s| u64::try_from(s).ok())
                        .ok_or_else(|| {
                            ApiError::BadRequest(format!(
                                "timeoutSeconds: Invalid value: {value:?}: must be an integer from 0 to {}",
                                i64::MAX
                            ))
                        })?;
                    q.timeout_seconds = Some(seconds);
                }
                "limit" if value.is_empty() => {}
                "limit" => {
                    // kube-apiserver reads a negative limit as no limit.
                    let limit: i64 = value.parse().map_err(|_| {
                        ApiError::BadRequest(format!(
                            "limit: Invalid value: {value:?}: must be an integer"
                        ))
                    })?;
                    q.limit = usize::try_from(limit).unwrap_or(0);
                }
                "continue" if value.is_empty() => {}
                "continue" => q.continue_token = Some(value.into_owned()),
                "includeObject" => q.include_object = IncludeObject::parse(&value)?,
                "fieldSelector" => q.field_selector = FieldSelector::parse(&value)?,
                "labelSelector" if !value.trim().is_empty() => {
                    return Err(ApiError::BadRequest(
                        "labelSelector: audit events and sources have no labels; use fieldSelector"
                            .into(),
                    ));
                }
                // Other options do not change what we answer; kube-apiserver ignores
                // unknown parameters too.
                _ => {}
            }
        }
        q.validate()?;
        Ok(q)
    }

    /// kube-apiserver's `ValidateListOptions`, with its messages.
    fn validate(&self) -> Result<(), ApiError> {
        use ResourceVersionMatch::*;
        let mut errs: Vec<String> = Vec::new();
        let forbidden = |what: &str, why: &str| format!("{what}: Forbidden: {why}");
        let unsupported = |v: &str, supported: &str| {
            format!("resourceVersionMatch: Unsupported value: {v:?}: supported values: {supported}")
        };
        let rv_match = self.resource_version_match.as_ref();
        if self.watch {
            if self.send_initial_events.is_some() && rv_match != Some(&NotOlderThan) {
                errs.push(forbidden(
                    "resourceVersionMatch",
                    "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
                ));
            }
            if let Some(m) = rv_match {
                if self.send_initial_events.is_none() {
                    errs.push(forbidden(
                        "resourceVersionMatch",
                        "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
                    ));
                }
                match m {
                    NotOlderThan => {}
                    Exact => errs.push(unsupported("Exact", r#""NotOlderThan""#)),
                    Other(v) => errs.push(unsupported(v, r#""NotOlderThan""#)),
                }
                if self.continue_token.is_some() {
                    errs.push(forbidden(
                        "resourceVersionMatch",
                        "resourceVersionMatch is forbidden when continue is provided",
                    ));
                }
            }
        } else {
            if let Some(m) = rv_match {
                if self.resource_version.is_none() {
                    errs.push(forbidden(
                        "resourceVersionMatch",
                        "resourceVersionMatch is forbidden unless resourceVersion is provided",
                    ));
                }
                if self.continue_token.is_some() {
                    errs.push(forbidden(
                        "resourceVersionMatch",
                        "resourceVersionMatch is forbidden when continue is provided",
                    ));
                }
                if let Other(v) = m {
                    errs.push(unsupported(v, r#""Exact", "NotOlderThan", """#));
                }
                if *m == Exact && self.resource_version == Some(0) {
                    errs.push(forbidden(
                        "resourceVersionMatch",
                        r#"resourceVersionMatch "exact" is forbidden for resourceVersion "0""#,
                    ));
                }
            }
            if self.send_initial_events.is_some() {
                errs.push(forbidden(
                    "sendInitialEvents",
                    "sendInitialEvents is forbidden for list",
                ));
            }
        }
        let message = match errs.len() {
            0 => return Ok(()),
            1 => errs.remove(0),
            _ => format!("[{}]", errs.join(", ")),
        };
        Err(ApiError::Invalid {
            kind: "ListOptions",
            message,
        })
    }

    /// A WatchList: the window's events first, then the initial-events-end bookmark.
    pub fn sends_initial_events(&self) -> bool {
        self.watch && self.send_initial_events == Some(true)
    }

    /// How long the watch lasts: `timeoutSeconds`, at most `MAX_WATCH_TIMEOUT`; without
    /// it, or with 0 (kube-apiserver's "no timeout given"), the default.
    fn timeout(&self) -> Duration {
        match self.timeout_seconds {
            Some(s) if s > 0 => Duration::from_secs(s).min(MAX_WATCH_TIMEOUT),
            // 1800 s ± 10 %.
            _ => Duration::from_secs(DEFAULT_WATCH_TIMEOUT_SECONDS)
                .mul_f64(0.9 + fastrand::f64() * 0.2),
        }
    }

    /// When a watch started at `now` ends. Never a panic, whatever the query asked: a
    /// deadline the clock cannot represent (its range depends on the platform) is
    /// `FAR_DEADLINE` from now instead, or now itself if even that is not (a clock
    /// at the end of its range).
    pub fn deadline(&self, now: tokio::time::Instant) -> tokio::time::Instant {
        now.checked_add(self.timeout())
            .or_else(|| now.checked_add(FAR_DEADLINE))
            .unwrap_or(now)
    }
}

/// Whether the query asks for a watch, read on its own as kube-apiserver's RequestInfo
/// does (the verb is decided before the other parameters are checked).
pub fn is_watch(query: Option<&str>) -> bool {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "watch")
        .is_some_and(|(_, v)| query_bool(&v))
}

/// The name the query's `fieldSelector` requires (`metadata.name=NAME`), read on its own
/// for authorization as kube-apiserver's RequestInfo does; `None` when the selector
/// names none or does not parse (the request is refused later for that).
pub fn selected_name(query: Option<&str>) -> Option<String> {
    let (_, value) = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "fieldSelector")?;
    FieldSelector::parse(&value)
        .ok()?
        .exact_name()
        .map(str::to_owned)
}

/// A watch of one event (`/watch/…/NAME`): the collection's watch with
/// `metadata.name=NAME`, as kube-apiserver treats a name in the path. A selector of its
/// own must require that name too, else 400 with kube-apiserver's message.
pub fn name_selector(query: &mut Query, name: &str) -> Result<(), ApiError> {
    if query.field_selector.is_empty() {
        query.field_selector = FieldSelector::name(name);
        return Ok(());
    }
    if query.field_selector.exact_name() != Some(name) {
        return Err(ApiError::BadRequest(
            "fieldSelector metadata.name doesn't match requested name".into(),
        ));
    }
    Ok(())
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
    /// `Some` for a Table watch (`Accept: …;as=Table;…`).
    pub format: Option<Format>,
    /// Who watches, for the per-user limit on open watches and the log.
    pub user: std::sync::Arc<str>,
    /// What is watched, for the log: the resource and the namespace ("" for all).
    pub resource: &'static str,
    pub namespace: String,
    /// `--authorization-granularity=resource`: each event's own check.
    pub access: Option<access::Access>,
    /// Where the watch's delivery time goes (sampled).
    pub stages: StageMeters,
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
    // A WatchList's resourceVersion bounds how old its state may be; a watch's is where it
    // starts. Either way, one this bus has not reached (after the router's wait) is too
    // large: the client lists again. That is a replica behind the stream for longer than
    // the wait, or a server restarted with its clock set back (numbering starts from the
    // clock, so after a plain restart an old resourceVersion is too old instead: 410).
    let current = bus.resource_version();
    if let Some(requested) = query.resource_version.filter(|rv| *rv > current) {
        let e = ApiError::TooLargeResourceVersion { requested, current };
        return Ok(stream_response(crate::response::full(e.to_watch_event())));
    }
    let since = if query.sends_initial_events() {
        Some(0)
    } else {
        query.resource_version
    };
    let sub = match bus.subscribe(filter, since) {
        Ok(sub) => sub,
        Err(crate::bus::Refused::Unavailable(down)) => return Err(down.into()),
        Err(crate::bus::Refused::Expired(expired)) => {
            let e = ApiError::from(expired);
            return Ok(stream_response(crate::response::full(e.to_watch_event())));
        }
    };
    let registration = match watches.register(&ctx.user, sub.closer(), ctx.guard.stalled_counter())
    {
        Ok(registration) => registration,
        Err(full) => return Err(full.refuse(&ctx.user, ctx.resource, &ctx.namespace)),
    };
    let panics = ctx.guard.panic_counter();
    let body = body::WatchBody::new(sub, registration, query, ctx);
    Ok(stream_response(
        crate::response::Guarded::new(body, panics).boxed_unsync(),
    ))
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

/// A continue token: the page's position, as URL-safe base64 of its JSON (opaque to
/// clients, as kube-apiserver's are).
pub(super) fn encode_continue<T: serde::Serialize>(token: &T) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(token).unwrap_or_default())
}

/// A continue token back, or 400 saying why it is not one.
pub(super) fn decode_continue<T: serde::de::DeserializeOwned>(token: &str) -> Result<T, ApiError> {
    use base64::Engine;
    let invalid = |why: String| ApiError::BadRequest(format!("invalid continue token: {why}"));
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|e| invalid(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))
}

/// How long a watch from a resourceVersion not reached yet waits for it (kube-apiserver
/// waits up to 3 s for its cache to catch up).
pub const FUTURE_RESOURCE_VERSION_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// A bookmark's object: an `Event` with only its metadata, the resourceVersion and
/// these annotations (none: no `annotations` at all).
pub(crate) fn bookmark_object(
    resource_version: u64,
    annotations: &[(&str, &str)],
) -> serde_json::Value {
    let mut metadata = serde_json::json!({ "resourceVersion": resource_version.to_string() });
    if !annotations.is_empty() {
        metadata["annotations"] = annotations
            .iter()
            .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v)))
            .collect::<serde_json::Map<_, _>>()
            .into();
    }
    serde_json::json!({ "kind": KIND, "apiVersion": GROUP_VERSION, "metadata": metadata })
}

/// A `BOOKMARK` line of `object` (`bookmark_object`).
fn bookmark_line(object: serde_json::Value) -> Bytes {
    let line = serde_json::json!({ "type": "BOOKMARK", "object": object });
    let mut out = serde_json::to_vec(&line).unwrap_or_default();
    out.push(b'\n');
    Bytes::from(out)
}

/// A `BOOKMARK` line; with `dropped`, the count of events lost since the last one.
pub fn bookmark(resource_version: u64, dropped: Option<u64>) -> Bytes {
    let count = dropped.map(|n| n.to_string());
    let annotations: Vec<(&str, &str)> = count
        .as_deref()
        .map(|n| (DROPPED_ANNOTATION, n))
        .into_iter()
        .collect();
    bookmark_line(bookmark_object(resource_version, &annotations))
}

/// The `BOOKMARK` that ends a WatchList's initial events.
pub fn initial_events_end(resource_version: u64) -> Bytes {
    bookmark_line(bookmark_object(
        resource_version,
        &[(INITIAL_EVENTS_END_ANNOTATION, "true")],
    ))
}

/// Marks the bookmark after a WatchList's initial events (k8s.io/apiserver's
/// `metav1.InitialEventsAnnotationKey`).
pub const INITIAL_EVENTS_END_ANNOTATION: &str = "k8s.io/initial-events-end";

#[cfg(test)]
pub(super) mod tests;
