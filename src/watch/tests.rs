//! Unit tests of `watch`.

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
        stages: crate::watch::StageMeters::unregistered(),
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
        err.to_string()
            .contains("[resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless"),
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
