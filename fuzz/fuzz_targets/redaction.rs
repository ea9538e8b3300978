//! Redaction on arbitrary bodies: any JSON as a Secret event's `requestObject` and
//! `responseObject` comes out as valid JSON, never a panic, and with no value left under
//! `data` or `stringData` in any shape a Secret takes (an object, a list's items, a
//! Table's row objects, a JSON Patch's values under `/data` and `/stringData`).
#![no_main]

use kube_audit_stream::event::decode_event_list;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use serde_json::value::RawValue;

const NOW: &str = "2026-01-01T00:00:00.123456Z";
const REDACTED: &str = "<redacted>";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(body) = serde_json::from_str::<&RawValue>(text) else {
        return;
    };
    let item = format!(
        r#"{{"level":"RequestResponse","auditID":"f","stage":"ResponseComplete","verb":"update","objectRef":{{"resource":"secrets","namespace":"ns","name":"s","apiVersion":"v1"}},"requestObject":{0},"responseObject":{0}}}"#,
        body.get()
    );
    let list = format!(r#"{{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{item}]}}"#);
    // Refused bodies (half a surrogate pair, a number serde_json will not read) publish
    // nothing: nothing to check.
    let Ok(events) = decode_event_list(list.as_bytes(), "fuzz", NOW) else {
        return;
    };
    // A number beyond f64's range (`6E443`, deep in a body) is JSON, and is passed on as
    // received, but serde_json's `Value` does not hold it: such a body's line is checked
    // as JSON text only.
    let in_range = serde_json::from_str::<Value>(body.get()).is_ok();
    for ev in events {
        for truncated in [false, true] {
            let (head, tail) = ev.parts(truncated);
            let line = [head, b"1", tail].concat();
            serde_json::from_slice::<&RawValue>(&line).expect("a redacted line is JSON");
            let v: Value = match serde_json::from_slice(&line) {
                Ok(v) => v,
                Err(_) if !in_range => continue,
                Err(e) => panic!("a redacted line is a JSON value: {e}"),
            };
            for body in ["requestObject", "responseObject"] {
                check(&v["object"][body]);
            }
        }
    }
});

/// Every value under `data`/`stringData` of every Secret shape is redacted (or null).
fn check(v: &Value) {
    match v {
        Value::Object(m) => {
            for key in ["data", "stringData"] {
                if let Some(Value::Object(values)) = m.get(key) {
                    for value in values.values() {
                        assert!(value.is_null() || value == REDACTED, "{key}: {value}");
                    }
                }
            }
            if let Some(Value::Array(items)) = m.get("items") {
                items.iter().for_each(check);
            }
            if let Some(Value::Array(rows)) = m.get("rows") {
                for row in rows {
                    check(&row["object"]);
                }
            }
        }
        Value::Array(ops) => {
            for op in ops {
                let Some(path) = op.get("path").and_then(Value::as_str) else {
                    continue;
                };
                let whole = path == "/data" || path == "/stringData";
                let under = path.starts_with("/data/") || path.starts_with("/stringData/");
                match op.get("value") {
                    Some(Value::Object(values)) if whole => {
                        for value in values.values() {
                            assert!(value.is_null() || value == REDACTED, "{path}: {value}");
                        }
                    }
                    Some(value) if whole || under => {
                        assert!(value.is_null() || value == REDACTED, "{path}: {value}");
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
}
