//! The read endpoints of events: the query and its validation (kube-apiserver's list
//! options), `serve` that starts a WATCH (or a WatchList: the window first, then a
//! bookmark), LIST and GET (`list`), the streaming body (`body`) that writes the shared
//! event bytes of one bus subscription (or one-row Tables), and the registry of open
//! watches (`registry`): slots, the stall sweeper, shutdown. Never publishes and never
//! decides who may see what: the router authorized the request, and hands a watch a
//! `Recheck` to ask again.

pub mod access;
mod body;
mod list;
pub mod registry;
pub mod sources;

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
pub use list::{get, list};
pub use registry::Watches;

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
                        "labelSelector: audit events have no labels; use fieldSelector".into(),
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
        Err(full) => {
            // Who was turned away, at which limit, as the router logs a refusal.
            let (flag, limit) = match &full {
                registry::Full::Server(limit) => ("--max-watchers", *limit),
                registry::Full::User { limit, .. } => ("--max-watchers-per-user", *limit),
            };
            tracing::info!(
                user = %ctx.user,
                resource = %ctx.resource,
                namespace = %ctx.namespace,
                code = 429,
                flag,
                limit,
                reason = %full,
                "request refused"
            );
            return Err(full.into());
        }
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
pub(super) mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::metrics::Metrics;

    /// What this thread logs while it lives, for the test to read back.
    pub(super) struct Log {
        text: Arc<Mutex<Vec<u8>>>,
        _guard: tracing::subscriber::DefaultGuard,
    }

    /// Where the subscriber writes.
    #[derive(Clone)]
    struct Writer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Writer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Log {
        /// Start capturing. This thread's only: a current-thread test runtime polls its
        /// watches here.
        pub(super) fn capture() -> Log {
            let text = Arc::default();
            let out = Writer(Arc::clone(&text));
            let subscriber = tracing_subscriber::fmt()
                .with_writer(move || out.clone())
                .with_ansi(false)
                .without_time()
                .finish();
            Log {
                text,
                _guard: tracing::subscriber::set_default(subscriber),
            }
        }

        /// The one line with `msg`.
        pub(super) fn line(&self, msg: &str) -> String {
            let text = String::from_utf8(self.text.lock().unwrap().clone()).unwrap();
            let mut lines = text.lines().filter(|l| l.contains(msg));
            match (lines.next(), lines.next()) {
                (Some(line), None) => line.to_owned(),
                _ => panic!("not one {msg:?} line: {text}"),
            }
        }
    }

    pub(super) fn bus() -> Bus {
        Bus::new(crate::bus::Config {
            window_events: 10,
            window_bytes: 1 << 20,
            subscriber_queue_events: 10,
            subscriber_queue_bytes: 1 << 20,
        })
    }

    /// alice's watch of every event: no re-authorization, no budget.
    pub(super) fn alice() -> WatchCtx {
        WatchCtx {
            access: None,
            recheck: None,
            budget: Budget::new(
                crate::budget::Config {
                    bytes_per_second: 0,
                    burst_bytes: 0,
                },
                None,
                tokio::time::Instant::now(),
            ),
            lag_bytes: 1 << 20,
            guard: Metrics::new().watch_started("events"),
            format: None,
            user: "alice".into(),
            resource: "events",
            namespace: String::new(),
        }
    }

    #[tokio::test]
    async fn a_watch_over_a_limit_is_refused_and_logged() {
        let log = Log::capture();
        let bus = bus();
        let query = Query::parse(Some("watch=1")).unwrap();
        let watches = Watches::new(10, 1, Duration::from_secs(60));
        let first = serve(&bus, &watches, Scope::All, &query, alice()).unwrap();
        let refused = serve(&bus, &watches, Scope::All, &query, alice()).unwrap_err();
        assert_eq!(refused.code_reason().0, StatusCode::TOO_MANY_REQUESTS);
        let line = log.line("request refused");
        for field in [
            "user=alice",
            "code=429",
            "flag=\"--max-watchers-per-user\"",
            "limit=1",
        ] {
            assert!(line.contains(field), "{field}: {line}");
        }
        drop(first);
    }

    // Found by the watch_query fuzz target: `watch=1&watch=0` was authorized as a watch
    // (the first value) and served as a LIST (the last one).
    #[test]
    fn a_repeated_parameter_counts_by_its_first_value() {
        for query in [
            "watch=1&watch=0",
            "watch=0itialEvenus=trderThan&watch=0",
            "watch=false&watch=1",
        ] {
            let q = Query::parse(Some(query)).unwrap();
            assert_eq!(q.watch, is_watch(Some(query)), "{query}");
        }
        let q = Query::parse(Some("resourceVersion=5&resourceVersion=x&limit=2&limit=y")).unwrap();
        assert_eq!((q.resource_version, q.limit), (Some(5), 2));
    }

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
        // 0 is no timeout given, as kube-apiserver reads it: the default.
        let t = Query::parse(Some("timeoutSeconds=0")).unwrap().timeout();
        assert!(t >= Duration::from_secs(1620), "{t:?}");
        assert!(Query::parse(Some("fieldSelector=nope%3Dx")).is_err());
        assert!(Query::parse(Some("labelSelector=a%3Db")).is_err());
        assert!(Query::parse(Some("labelSelector=&limit=500")).is_ok());
        let q = Query::parse(Some("limit=2&continue=abc&includeObject=None")).unwrap();
        assert_eq!((q.limit, q.continue_token.as_deref()), (2, Some("abc")));
        assert_eq!(q.include_object, IncludeObject::None);
        assert_eq!(Query::parse(Some("limit=-1")).unwrap().limit, 0);
        assert!(Query::parse(Some("includeObject=Everything")).is_err());
        let q = Query::parse(Some(
            "watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true",
        ))
        .unwrap();
        assert!(q.sends_initial_events());
        let t = Query::parse(None).unwrap().timeout();
        assert!(
            t >= Duration::from_secs(1620) && t <= Duration::from_secs(1980),
            "{t:?}"
        );
    }

    /// kube-apiserver's `ValidateListOptions`: 422 Invalid, with its wording.
    #[test]
    fn list_options_validation() {
        for (query, message) in [
            (
                "resourceVersionMatch=Exact",
                "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
            ),
            (
                "resourceVersion=0&resourceVersionMatch=Exact",
                r#"resourceVersionMatch: Forbidden: resourceVersionMatch "exact" is forbidden for resourceVersion "0""#,
            ),
            (
                "resourceVersion=1&resourceVersionMatch=Newest",
                r#"resourceVersionMatch: Unsupported value: "Newest": supported values: "Exact", "NotOlderThan", """#,
            ),
            (
                "sendInitialEvents=true",
                "sendInitialEvents: Forbidden: sendInitialEvents is forbidden for list",
            ),
            (
                "watch=1&sendInitialEvents=true",
                "resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            ),
            (
                "watch=1&resourceVersionMatch=NotOlderThan",
                "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
            ),
        ] {
            let err = Query::parse(Some(query)).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(r#"ListOptions.meta.k8s.io "" is invalid: {message}"#),
                "{query}"
            );
            assert_eq!(err.code_reason().1, "Invalid");
        }
        let err = Query::parse(Some("resourceVersionMatch=Exact&continue=x")).unwrap_err();
        assert!(
            err.to_string().contains(
                "[resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless"
            ),
            "{err}"
        );
    }

    /// Found by hand: `timeoutSeconds=18446744073709551615` overflowed the deadline's
    /// `Instant` (a 500 from a caught panic). As kube-apiserver reads it: a value beyond
    /// 64 signed bits is a 400; any other is a watch, at most `MAX_WATCH_TIMEOUT` long.
    #[test]
    fn huge_numbers_are_read_as_kube_apiserver_reads_them() {
        let now = tokio::time::Instant::now();
        let err = Query::parse(Some("watch=1&timeoutSeconds=18446744073709551615")).unwrap_err();
        assert_eq!(err.code_reason().0, StatusCode::BAD_REQUEST);
        assert!(err.to_string().contains("9223372036854775807"), "{err}");
        for big in ["9223372036854775807", "9223372036", "9223372037"] {
            let q = Query::parse(Some(&format!("watch=1&timeoutSeconds={big}"))).unwrap();
            assert_eq!(q.timeout(), q.timeout().min(MAX_WATCH_TIMEOUT), "{big}");
            assert!(
                q.deadline(now) > now + Duration::from_secs(86_400 * 365),
                "{big}"
            );
        }
        let q = Query::parse(Some("timeoutSeconds=9223372036854775807")).unwrap();
        assert_eq!(q.timeout(), MAX_WATCH_TIMEOUT);
        assert_eq!(
            Query::parse(Some("timeoutSeconds=%2B5")).unwrap().timeout(),
            Duration::from_secs(5),
            "a sign, as Go's ParseInt takes it"
        );
        // limit and resourceVersion: the largest values parse, larger ones are 400s.
        let q = Query::parse(Some(
            "limit=9223372036854775807&resourceVersion=18446744073709551615",
        ))
        .unwrap();
        assert_eq!(
            (q.limit as u64, q.resource_version),
            (i64::MAX as u64, Some(u64::MAX))
        );
        for bad in [
            "limit=9223372036854775808",
            "resourceVersion=18446744073709551616",
        ] {
            let err = Query::parse(Some(bad)).unwrap_err();
            assert_eq!(err.code_reason().0, StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn initial_events_end_shape() {
        let v: serde_json::Value = serde_json::from_slice(&initial_events_end(7)).unwrap();
        assert_eq!(v["type"], "BOOKMARK");
        assert_eq!(v["object"]["kind"], "Event");
        assert_eq!(v["object"]["metadata"]["resourceVersion"], "7");
        assert_eq!(
            v["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
            "true"
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
