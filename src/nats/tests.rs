//! Unit tests of `nats`.

use super::follow::decode_message;
use super::publish::{fit_record, message_id};
use super::*;
use crate::event::decode_event_list;

/// `Nats::start` with `settings`, which must fail before reaching for NATS.
async fn start_error(settings: Settings) -> Error {
    let bus = Bus::new(bus::Config {
        window_events: 10,
        window_bytes: 1 << 20,
        subscriber_queue_events: 10,
        subscriber_queue_bytes: 1 << 20,
    });
    let metrics = Metrics::new();
    let started = Nats::start(
        &settings,
        bus,
        (10, 1 << 20),
        &metrics,
        CancellationToken::new(),
    );
    started.await.err().expect("refused at start")
}

#[tokio::test]
async fn start_failures_name_their_flag() {
    let settings = |url: &str, creds: Option<&str>| Settings {
        urls: vec![url.to_owned()],
        stream: "audit".into(),
        ca_file: None,
        creds_file: creds.map(PathBuf::from),
    };
    let err = start_error(settings("http://127.0.0.1:4222", None)).await;
    assert!(matches!(err, Error::Connect(_)), "{err}");
    assert!(err.to_string().starts_with("--nats-url: "), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.creds");
    let err = start_error(settings("nats://127.0.0.1:4222", missing.to_str())).await;
    assert!(matches!(err, Error::Creds(_)), "{err}");
    assert!(err.to_string().starts_with("--nats-creds-file: "), "{err}");
}

#[test]
fn resource_versions_grow_across_messages_and_a_new_stream() {
    let created = 60_000_000_000_000; // 2026, in microseconds since 2025
    let a = resource_version(created, 1, 0);
    assert!(a < resource_version(created, 1, 4095));
    assert!(resource_version(created, 1, 4095) < resource_version(created, 2, 0));
    // A stream made one second later, its sequences started over: still above
    // everything the old one could have numbered in that second.
    assert!(resource_version(created + 1_000_000, 1, 0) > resource_version(created, 999_999, 4095));
    // Fits an i64 until 2096 (71 years of microseconds, and 2^40 messages).
    let year_2096 = 71 * 365 * 86_400 * 1_000_000;
    assert!(resource_version(year_2096, 1 << 40, 4095) < i64::MAX as u64);
}

#[test]
fn a_message_reads_back_and_a_bad_one_is_refused() {
    let body = r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[
        {"level":"Metadata","auditID":"x","stage":"ResponseComplete","verb":"get","objectRef":{"resource":"pods","namespace":"a"}},
        {"level":"Metadata","auditID":"x","stage":"ResponseComplete","verb":"delete","objectRef":{"resource":"pods","namespace":"a"}}]}"#;
    let events = decode_event_list(body.as_bytes(), "api-1", "now").unwrap();
    let mut payload = vec![WIRE_VERSION];
    for e in &events {
        e.encode_wire(&mut payload);
    }
    let back = decode_message(&Bytes::from(payload.clone())).unwrap();
    assert_eq!(back.len(), 2);
    assert_eq!(back[1].get(crate::event::Field::Verb), "delete");
    // The first record format, and a message without events.
    assert!(decode_message(&Bytes::from_static(b"\x01")).is_err());
    assert!(decode_message(&Bytes::from(vec![WIRE_VERSION])).is_err());
    assert!(decode_message(&Bytes::from(payload[..payload.len() - 1].to_vec())).is_err());
    assert!(decode_message(&Bytes::new()).is_err());
}

#[test]
fn an_event_too_large_for_a_message_is_truncated_to_fit_or_dropped() {
    let event = |bodies: &str| {
        let body = format!(
            r#"{{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[
            {{"level":"Request","auditID":"x","stage":"ResponseComplete","verb":"create",{bodies}
             "requestURI":"/api/v1/namespaces/a/configmaps/{}"}}]}}"#,
            "n".repeat(3000)
        );
        decode_event_list(body.as_bytes(), "api-1", "now")
            .unwrap()
            .remove(0)
    };
    let big = format!(r#""requestObject":{{"data":"{}"}},"#, "d".repeat(20_000));
    let whole = event(&big).record_len();
    let Limited::Fits(e) = fit_record(event(&big), whole, whole) else {
        panic!("a record of exactly the limit fits");
    };
    assert_eq!(e.record_len(), whole);
    let Limited::Truncated(e) = fit_record(event(&big), whole, whole - 1) else {
        panic!("one byte over: truncated");
    };
    assert!(e.record_len() < 5_000, "{}", e.record_len());
    let small = event("");
    let len = small.record_len();
    let Limited::TooLarge { audit_id } = fit_record(small, len, 1_000) else {
        panic!("no bodies to drop: dropped");
    };
    assert_eq!(&*audit_id, "x");
}

#[test]
fn message_ids_follow_bytes_and_source_never_the_audit_id() {
    let one = |verb: &str, source: &str| {
        let body = format!(
            r#"{{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{{"level":"Metadata","auditID":"same","stage":"ResponseComplete","verb":"{verb}"}}]}}"#
        );
        let events = decode_event_list(body.as_bytes(), source, "now").unwrap();
        let mut payload = vec![WIRE_VERSION];
        events[0].encode_wire(&mut payload);
        message_id(source, &payload)
    };
    assert_eq!(
        one("get", "a"),
        one("get", "a"),
        "a retry is the same message"
    );
    assert_ne!(
        one("get", "a"),
        one("delete", "a"),
        "same auditID, other event"
    );
    assert_ne!(one("get", "a"), one("get", "b"), "same event, other source");
}
