//! What every bench reads: a fixture of tests/fixtures/audit wrapped into the EventList
//! body kube-apiserver's audit webhook sends.

use std::path::PathBuf;

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
