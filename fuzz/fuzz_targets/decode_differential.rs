//! The decoder against serde_json: for a body serde_json reads as an EventList, every
//! event the decoder accepts is written as one line of valid JSON that keeps every
//! member of the pushed event with the same value (serde_json's reading of both), adds
//! only `kind`, `apiVersion`, `metadata` and the source annotation, and routes by the
//! values serde_json reads. Bodies serde_json refuses must be refused by the decoder
//! too. The truncated form is the same minus the request and response objects.
#![no_main]

use kube_audit_stream::event::{
    Event, Field, Redaction, SOURCE_ANNOTATION, TRUNCATED_ANNOTATION, decode_event_list_with,
};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

const SOURCE: &str = "fuzz-source";
const NOW: &str = "2026-01-01T00:00:00Z";
const RV: &str = "42";

fn line(ev: &Event, truncated: bool) -> Vec<u8> {
    let (head, tail) = ev.parts(truncated);
    [head, RV.as_bytes(), tail].concat()
}

/// The watch line as serde_json reads it, checked to be one line of one object.
fn object(line: &[u8]) -> Map<String, Value> {
    assert_eq!(line.last(), Some(&b'\n'), "line ends in a newline");
    let body = &line[..line.len() - 1];
    assert!(
        !body.contains(&b'\n') && !body.contains(&b'\r'),
        "one line: {}",
        String::from_utf8_lossy(line)
    );
    let v: Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("line is not JSON ({e}): {}", String::from_utf8_lossy(line)));
    assert_eq!(v["type"], "ADDED");
    match v.get("object") {
        Some(Value::Object(o)) => o.clone(),
        _ => panic!("no object: {v}"),
    }
}

fn str_at<'v>(v: &'v Value, path: &[&str]) -> &'v str {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn check(item: &Map<String, Value>, ev: &Event) {
    let item_v = Value::Object(item.clone());
    for truncated in [false, true] {
        let out = object(&line(ev, truncated));
        assert_eq!(out["kind"], "Event");
        assert_eq!(out["apiVersion"], "audit.k8s.io/v1alpha1");
        assert_eq!(out["metadata"]["resourceVersion"], RV);
        for (key, value) in item {
            if matches!(
                key.as_str(),
                "kind" | "apiVersion" | "metadata" | "annotations"
            ) {
                continue;
            }
            if truncated
                && ev.can_truncate()
                && matches!(key.as_str(), "requestObject" | "responseObject")
            {
                assert!(!out.contains_key(key), "{key} left in the truncated form");
                continue;
            }
            assert_eq!(out.get(key), Some(value), "member {key:?} changed");
        }
        for key in out.keys() {
            assert!(
                item.contains_key(key)
                    || matches!(
                        key.as_str(),
                        "kind" | "apiVersion" | "metadata" | "annotations"
                    ),
                "member {key:?} added"
            );
        }
        let mut want = match item.get("annotations") {
            Some(Value::Object(a)) => a.clone(),
            _ => Map::new(),
        };
        want.insert(SOURCE_ANNOTATION.into(), SOURCE.into());
        if truncated && ev.can_truncate() {
            want.insert(TRUNCATED_ANNOTATION.into(), "true".into());
        }
        assert_eq!(
            out.get("annotations"),
            Some(&Value::Object(want)),
            "annotations"
        );
    }
    for (field, path) in [
        (Field::AuditId, &["auditID"][..]),
        (Field::Stage, &["stage"]),
        (Field::Level, &["level"]),
        (Field::Verb, &["verb"]),
        (Field::Username, &["user", "username"]),
        (Field::Resource, &["objectRef", "resource"]),
        (Field::Name, &["objectRef", "name"]),
        (Field::ApiGroup, &["objectRef", "apiGroup"]),
    ] {
        assert_eq!(ev.get(field), str_at(&item_v, path), "{field:?}");
    }
    // A namespace's create is recorded with its name and no namespace: it is routed to
    // that namespace too (the decoder's one rule beyond reading the field).
    let mut namespace = str_at(&item_v, &["objectRef", "namespace"]);
    if namespace.is_empty()
        && str_at(&item_v, &["objectRef", "apiGroup"]).is_empty()
        && str_at(&item_v, &["objectRef", "resource"]) == "namespaces"
    {
        namespace = str_at(&item_v, &["objectRef", "name"]);
    }
    assert_eq!(ev.get(Field::Namespace), namespace, "objectRef.namespace");
    let code = item_v
        .get("responseStatus")
        .and_then(|s| s.get("code"))
        .and_then(Value::as_i64)
        .map(|c| c.to_string())
        .unwrap_or_default();
    assert_eq!(ev.get(Field::Code), code, "responseStatus.code");
}

fuzz_target!(|data: &[u8]| {
    // Redaction off: the differential is against what was pushed, field for field.
    let decoded = decode_event_list_with(data, SOURCE, NOW, &Redaction::off());
    let reference: Result<Value, _> = serde_json::from_slice(data);
    let Ok(events) = decoded else {
        return;
    };
    let reference = match reference {
        Ok(r) => r,
        // JSON puts no bound on numbers (RFC 8259); serde_json refuses one beyond f64,
        // the decoder keeps it as the text it was, as kube-apiserver keeps an event's
        // objects as raw JSON.
        Err(e) if e.to_string().starts_with("number out of range") => return,
        Err(e) => panic!(
            "the decoder took a body serde_json refuses ({e}): {:?}",
            String::from_utf8_lossy(data)
        ),
    };
    let items: Vec<Map<String, Value>> = match reference.get("items") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_object()
                    .cloned()
                    .expect("every accepted item is an object")
            })
            .collect(),
        _ => vec![],
    };
    assert_eq!(items.len(), events.len(), "every item is an event");
    for (item, ev) in items.iter().zip(&events) {
        check(item, ev);
    }
});
