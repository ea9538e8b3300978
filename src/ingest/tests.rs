//! Unit tests of `ingest`.

use super::meters::{MAX_SOURCE_LABELS, OTHER_SOURCE, SourceLabels};
use super::*;

#[test]
fn source_labels_are_bounded() {
    let labels = SourceLabels::default();
    for i in 0..MAX_SOURCE_LABELS {
        assert_eq!(
            &*labels.label(&format!("apiserver-{i}")),
            format!("apiserver-{i}")
        );
    }
    assert_eq!(&*labels.label("one-too-many"), OTHER_SOURCE);
    // Names already known keep their label.
    assert_eq!(&*labels.label("apiserver-0"), "apiserver-0");
}

#[test]
fn in_flight_slots_in_all_and_per_pusher() {
    let f = InFlight::new(3, 2);
    let a1 = f.enter("a").expect("a's first");
    let _a2 = f.enter("a").expect("a's second");
    assert!(f.enter("a").is_none(), "a's share is 2");
    let b1 = f.enter("b").expect("b is not held up by a");
    assert!(f.enter("c").is_none(), "3 in all");
    drop(a1);
    let _a3 = f.enter("a").expect("a's slot came back");
    drop(b1);
    assert!(!f.state.lock().unwrap().by_pusher.contains_key("b"));
    let _c = f.enter("c").expect("b's slot came back");
}

#[test]
fn recent_batches_are_bounded_in_time_and_count() {
    let start = tokio::time::Instant::now();
    let recent = RecentBatches::new(Duration::from_secs(10), 2);
    let key = |n: u8| nats::content_key("api-1", &[n]);
    assert!(!recent.seen(key(1), start), "first push");
    assert!(
        recent.seen(key(1), start + Duration::from_secs(9)),
        "a retry"
    );
    assert!(
        !recent.seen(key(1), start + Duration::from_secs(10)),
        "forgotten after the window"
    );
    assert!(!recent.seen(key(2), start + Duration::from_secs(10)));
    assert!(!recent.seen(key(3), start + Duration::from_secs(10)));
    assert_eq!(
        recent.state.lock().unwrap().order.len(),
        2,
        "at most 2 kept"
    );
    assert!(
        !recent.seen(key(1), start + Duration::from_secs(11)),
        "the oldest went first"
    );
    assert!(recent.seen(key(3), start + Duration::from_secs(11)));
    assert_ne!(
        nats::content_key("api-1", b"x"),
        nats::content_key("api-2", b"x"),
        "the same body from another source is another batch"
    );
}

#[test]
fn source_from_query() {
    assert_eq!(query_source(None).unwrap(), None);
    assert_eq!(query_source(Some("a=b")).unwrap(), None);
    assert_eq!(
        query_source(Some("source=node-1.example"))
            .unwrap()
            .as_deref(),
        Some("node-1.example")
    );
    assert!(query_source(Some("source=")).is_err());
    assert!(query_source(Some("source=a%22b")).is_err());
}
