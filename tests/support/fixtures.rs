//! The real audit data in tests/fixtures/audit, and webhook bodies built from it.

use std::path::PathBuf;

pub fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/audit")
        .join(name)
}

pub fn read(name: &str) -> Vec<u8> {
    std::fs::read(path(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// The events of a JSON-lines audit log, as raw lines.
pub fn lines(name: &str) -> Vec<String> {
    String::from_utf8(read(name))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// An EventList body, as kube-apiserver's webhook backend sends it.
pub fn event_list(api_version: &str, lines: &[String]) -> String {
    format!(
        r#"{{"kind":"EventList","apiVersion":"{api_version}","metadata":{{}},"items":[{}]}}"#,
        lines.join(",")
    )
}

/// (auditID, stage) of each line, the identity of an event.
pub fn ids(lines: &[String]) -> Vec<(String, String)> {
    lines
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["auditID"].as_str().unwrap().to_owned(),
                v["stage"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// A small event in a namespace (`None`: cluster-scoped).
pub fn event(audit_id: &str, namespace: Option<&str>, verb: &str) -> String {
    let ns = namespace.map_or(String::new(), |n| format!(r#","namespace":"{n}""#));
    format!(
        r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"{audit_id}","stage":"ResponseComplete","requestURI":"/api/v1/configmaps","verb":"{verb}","user":{{"username":"bob","groups":["system:authenticated"]}},"objectRef":{{"resource":"configmaps","name":"cm"{ns},"apiVersion":"v1"}},"responseStatus":{{"metadata":{{}},"code":200}},"requestReceivedTimestamp":"2026-01-01T10:00:00.000000Z","stageTimestamp":"2026-01-01T10:00:00.100000Z"}}"#
    )
}
