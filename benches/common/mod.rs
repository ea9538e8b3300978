//! What every bench reads: a fixture of tests/fixtures/audit wrapped into the EventList
//! body kube-apiserver's audit webhook sends.

use std::path::PathBuf;

use kube_audit_stream::event::{Event, Limited, decode_event_list};

/// The webhook body for fixture `name` (one JSON event per line), and its event count.
pub fn event_list(name: &str) -> (Vec<u8>, usize) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/audit")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()));
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let body = format!(
        r#"{{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{{}},"items":[{}]}}"#,
        lines.join(",")
    );
    (body.into_bytes(), lines.len())
}

/// `--max-event-bytes` default: ingest truncates events above it before publishing.
const MAX_EVENT_BYTES: usize = 100 * 1024;

/// Decode and size-limit a batch, as `POST /ingest` does before `Bus::publish`.
#[allow(dead_code)] // not every bench publishes
pub fn batch(body: &[u8]) -> Vec<Event> {
    decode_event_list(body, "bench-apiserver", "2026-01-01T00:00:00Z")
        .expect("the fixture is a valid EventList")
        .into_iter()
        .filter_map(|ev| match ev.limit_size(MAX_EVENT_BYTES) {
            Limited::Fits(ev) | Limited::Truncated(ev) => Some(ev),
            Limited::TooLarge { .. } => None,
        })
        .collect()
}

/// A webhook body, and its batch's size once decoded (events, wire bytes).
#[allow(dead_code)]
pub struct Fixture {
    pub body: Vec<u8>,
    pub events: usize,
    pub wire_bytes: usize,
}

#[allow(dead_code)]
impl Fixture {
    pub fn new(body: Vec<u8>) -> Self {
        let batch = batch(&body);
        Fixture {
            events: batch.len(),
            wire_bytes: batch.iter().map(|e| e.wire_len(false)).sum(),
            body,
        }
    }
}
