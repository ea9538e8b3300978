//! Unit tests of `table`.

use super::*;
use crate::bus::{Bus, Config, Filter, ListRange, Scope};
use crate::event::decode_event_list;

const EV: &str = r#"{"level":"RequestResponse","auditID":"a-1","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/team-a/pods/p/exec","verb":"create","user":{"username":"bob"},"sourceIPs":["10.0.0.1","10.0.0.2"],"userAgent":"kubectl/v1.33","objectRef":{"resource":"pods","subresource":"exec","namespace":"team-a","name":"p"},"responseStatus":{"code":101},"requestObject":{"kind":"PodExecOptions"},"requestReceivedTimestamp":"2026-01-01T10:00:00.123456Z","stageTimestamp":"2026-01-01T10:00:00.135456Z"}"#;
const BARE: &str = r#"{"level":"Metadata","auditID":"b-2","stage":"RequestReceived","requestURI":"/healthz","verb":"get","timestamp":"2017-09-11T19:55:05Z"}"#;

fn published() -> Vec<std::sync::Arc<Published>> {
    let body =
        format!(r#"{{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{EV},{BARE}]}}"#);
    let bus = Bus::new(Config {
        window_events: 10,
        window_bytes: 1 << 20,
        subscriber_queue_events: 10,
        subscriber_queue_bytes: 1 << 20,
    });
    bus.publish(decode_event_list(body.as_bytes(), "apiserver-1", "2026-01-01T00:00:00Z").unwrap());
    bus.list(&Filter::scope(Scope::All), ListRange::default())
        .unwrap()
        .items
}

#[test]
fn cells_follow_the_columns() {
    let items = published();
    let got: serde_json::Value = serde_json::from_slice(cells(&items[0].event)).unwrap();
    assert_eq!(
        got,
        serde_json::json!([
            "2026-01-01T10:00:00.135456Z",
            "apiserver-1",
            "bob",
            "create",
            "pods/exec",
            "team-a",
            "p",
            101,
            "ResponseComplete",
            "12ms",
            "10.0.0.1,10.0.0.2",
            "kubectl/v1.33",
            "a-1-responsecomplete"
        ])
    );
    let bare: serde_json::Value = serde_json::from_slice(cells(&items[1].event)).unwrap();
    assert_eq!(bare[0], "2017-09-11T19:55:05Z", "v1beta1's timestamp");
    assert_eq!(bare[4], "/healthz", "a non-resource request shows its path");
    assert_eq!(bare[7], serde_json::Value::Null, "no code yet");
    assert_eq!(bare.as_array().unwrap().len(), COLUMNS.len());
}

#[test]
fn watch_lines_are_one_row_tables_of_the_length_promised() {
    let items = published();
    for include in [
        IncludeObject::None,
        IncludeObject::Metadata,
        IncludeObject::Object,
    ] {
        for version in [Version::V1, Version::V1beta1] {
            for (truncated, headers) in [(false, true), (true, false), (false, false)] {
                let f = Format { version, include };
                let mut out = Vec::new();
                f.write_watch_line(&mut out, &items[0], truncated, headers);
                assert_eq!(out.len(), f.watch_line_len(&items[0], truncated, headers));
                assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1);
                let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
                let t = &v["object"];
                assert_eq!(t["kind"], "Table");
                assert_eq!(t["apiVersion"], version.api_version());
                assert_eq!(t["metadata"]["resourceVersion"], "1");
                let columns = t["columnDefinitions"].as_array().unwrap().len();
                assert_eq!(columns, if headers { COLUMNS.len() } else { 0 });
                let row = &t["rows"][0];
                assert_eq!(row["cells"][2], "bob");
                match include {
                    IncludeObject::None => assert!(row.get("object").is_none()),
                    IncludeObject::Metadata => {
                        assert_eq!(row["object"]["kind"], "PartialObjectMetadata");
                        assert_eq!(row["object"]["apiVersion"], version.api_version());
                        assert_eq!(row["object"]["metadata"]["name"], "a-1-responsecomplete");
                        assert_eq!(row["object"]["metadata"]["namespace"], "team-a");
                    }
                    IncludeObject::Object => {
                        assert_eq!(row["object"]["kind"], "Event");
                        assert_eq!(row["object"]["metadata"]["resourceVersion"], "1");
                        assert_eq!(row["object"].get("requestObject").is_none(), truncated);
                    }
                }
            }
        }
    }
}

#[test]
fn list_tables_carry_the_page_metadata() {
    let items = published();
    let f = Format {
        version: Version::V1,
        include: IncludeObject::Metadata,
    };
    let mut out = Vec::new();
    f.write_table(&mut out, 7, Some("tok\"en"), true, &items);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["metadata"]["resourceVersion"], "7");
    assert_eq!(v["metadata"]["continue"], "tok\"en");
    assert_eq!(v["rows"].as_array().unwrap().len(), 2);
    assert_eq!(v["columnDefinitions"][0]["name"], "Time");
    assert_eq!(v["columnDefinitions"][7]["type"], "integer");
    let mut empty = Vec::new();
    f.write_table(&mut empty, 7, None, true, &[]);
    let v: serde_json::Value = serde_json::from_slice(&empty).unwrap();
    assert_eq!(v["rows"], serde_json::json!([]));
}

/// kube-apiserver's shape: one row, its object the bookmark's metadata, which keeps
/// the annotations a Table has no other place for; the note is the first cell.
#[test]
fn bookmarks_are_one_row_tables_that_keep_their_metadata() {
    let object = serde_json::json!({
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1alpha1",
        "metadata": {"resourceVersion": "9", "annotations": {"audit.k8s.io/dropped": "3"}},
    });
    let plain = serde_json::json!({"kind": "Event", "metadata": {"resourceVersion": "9"}});
    for include in [
        IncludeObject::None,
        IncludeObject::Metadata,
        IncludeObject::Object,
    ] {
        for version in [Version::V1, Version::V1beta1] {
            let f = Format { version, include };
            let line = f.bookmark(&object, "Warning: 3 events dropped", false);
            assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
            let b: serde_json::Value = serde_json::from_slice(&line).unwrap();
            assert_eq!(b["type"], "BOOKMARK");
            let t = &b["object"];
            assert_eq!(t["kind"], "Table");
            assert_eq!(t["apiVersion"], version.api_version());
            assert_eq!(t["metadata"]["resourceVersion"], "9");
            assert_eq!(t["columnDefinitions"], serde_json::json!([]));
            let row = &t["rows"][0];
            assert_eq!(t["rows"].as_array().unwrap().len(), 1);
            assert_eq!(row["cells"].as_array().unwrap().len(), COLUMNS.len());
            assert_eq!(row["cells"][0], "Warning: 3 events dropped");
            let meta = &row["object"]["metadata"];
            assert_eq!(
                meta["annotations"]["audit.k8s.io/dropped"], "3",
                "{include:?}"
            );
            assert_eq!(meta["resourceVersion"], "9");
            let kind = if include == IncludeObject::Object {
                "Event"
            } else {
                "PartialObjectMetadata"
            };
            assert_eq!(row["object"]["kind"], kind);
            let plain: serde_json::Value =
                serde_json::from_slice(&f.bookmark(&plain, "", true)).unwrap();
            let row = &plain["object"]["rows"][0];
            assert_eq!(row["cells"][0], "");
            assert_eq!(
                row.get("object").is_none(),
                include == IncludeObject::None,
                "{include:?}: nothing to keep"
            );
            let columns = plain["object"]["columnDefinitions"]
                .as_array()
                .unwrap()
                .len();
            assert_eq!(columns, COLUMNS.len(), "headers when asked");
        }
    }
}

#[test]
fn accept_negotiation() {
    let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
    assert_eq!(negotiate(Some(kubectl)).unwrap(), Some(Version::V1));
    assert_eq!(
        negotiate(Some(
            "application/json;as=Table;v=v1beta1;g=meta.k8s.io, application/json"
        ))
        .unwrap(),
        Some(Version::V1beta1)
    );
    for json in [
        None,
        Some(""),
        Some("application/json"),
        Some("*/*"),
        Some("application/vnd.kubernetes.protobuf, application/json"),
    ] {
        assert_eq!(negotiate(json).unwrap(), None, "{json:?}");
    }
    assert_eq!(
        negotiate(Some(
            "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io,application/json"
        ))
        .unwrap(),
        None
    );
    let e = negotiate(Some("application/yaml")).unwrap_err();
    assert_eq!(
        e.code_reason(),
        (http::StatusCode::NOT_ACCEPTABLE, "NotAcceptable")
    );
}

#[test]
fn ages_as_kubectl_prints_them() {
    let d = std::time::Duration::from_secs;
    for (secs, want) in [
        (0, "0s"),
        (119, "119s"),
        (120, "2m"),
        (310, "5m10s"),
        (1800, "30m"),
        (3 * 3600 + 60 * 5, "3h5m"),
        (20 * 3600, "20h"),
        (3 * 86400 + 3600, "3d1h"),
        (30 * 86400, "30d"),
        (3 * 365 * 86400 + 86400, "3y1d"),
        (10 * 365 * 86400, "10y"),
    ] {
        assert_eq!(human_duration(d(secs)), want, "{secs}");
    }
}

#[test]
fn value_tables_and_watch_lines() {
    let columns = column_definitions(&[name_column("Name", "n"), integer_column("N", "n", 1)]);
    let object =
        serde_json::json!({"kind": "Source", "metadata": {"name": "a", "resourceVersion": "5"}});
    let row = ValueRow {
        cells: serde_json::json!(["a", 1]),
        object: &object,
    };
    for include in [
        IncludeObject::None,
        IncludeObject::Metadata,
        IncludeObject::Object,
    ] {
        let f = Format {
            version: Version::V1,
            include,
        };
        let t: serde_json::Value =
            serde_json::from_slice(&f.value_table(5, None, &columns, std::slice::from_ref(&row)))
                .unwrap();
        assert_eq!(t["kind"], "Table");
        assert_eq!(t["metadata"]["resourceVersion"], "5");
        assert_eq!(t["columnDefinitions"][0]["format"], "name");
        assert_eq!(t["columnDefinitions"][1]["type"], "integer");
        assert_eq!(t["rows"][0]["cells"], serde_json::json!(["a", 1]));
        match include {
            IncludeObject::None => assert!(t["rows"][0].get("object").is_none()),
            IncludeObject::Metadata => {
                assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
                assert_eq!(t["rows"][0]["object"]["metadata"]["name"], "a");
            }
            IncludeObject::Object => assert_eq!(t["rows"][0]["object"], object),
        }
        let line = f.value_watch_line("MODIFIED", 5, None, &row);
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        let l: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(l["type"], "MODIFIED");
        assert_eq!(l["object"]["columnDefinitions"], serde_json::json!([]));
        assert_eq!(l["object"]["rows"][0]["cells"][0], "a");
    }
}

#[test]
fn include_object_values() {
    assert_eq!(IncludeObject::parse("").unwrap(), IncludeObject::Metadata);
    assert_eq!(IncludeObject::parse("None").unwrap(), IncludeObject::None);
    assert!(IncludeObject::parse("All").is_err());
}
