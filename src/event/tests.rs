//! Decoding real and hand-made EventLists, the line each event becomes, its truncated
//! form and its limits.

use super::*;

const NOW: &str = "2026-01-01T00:00:00Z";

fn line(ev: &Event, rv: u64, truncated: bool) -> serde_json::Value {
    let (head, tail) = ev.parts(truncated);
    let mut b = head.to_vec();
    b.extend_from_slice(rv.to_string().as_bytes());
    b.extend_from_slice(tail);
    assert_eq!(b.len(), ev.wire_len(truncated) + rv.to_string().len());
    let (head, tail) = ev.object_parts(truncated);
    assert_eq!(head.len() + tail.len(), ev.object_len(truncated));
    assert_eq!(b.last(), Some(&b'\n'));
    assert_eq!(b.iter().filter(|c| **c == b'\n').count(), 1, "one line");
    serde_json::from_slice(&b).expect("valid JSON")
}

fn list(items: &[&str]) -> String {
    format!(
        r#"{{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{{}},"items":[{}]}}"#,
        items.join(",")
    )
}

fn one(item: &str, source: &str) -> Event {
    decode_event_list(list(&[item]).as_bytes(), source, NOW)
        .unwrap()
        .remove(0)
}

const EV: &str = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"RequestResponse","auditID":"a-1","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/team-a/configmaps/x","verb":"delete","user":{"username":"bob","groups":["g"]},"objectRef":{"resource":"configmaps","namespace":"team-a","name":"x","apiVersion":"v1"},"responseStatus":{"metadata":{},"code":200},"requestObject":{"kind":"DeleteOptions"},"responseObject":{"kind":"Status"},"requestReceivedTimestamp":"2026-01-01T10:00:00.123456Z","stageTimestamp":"2026-01-01T10:00:01.654321Z","annotations":{"authorization.k8s.io/decision":"allow"}}"#;

#[test]
fn stage_timestamp_is_read_to_the_microsecond() {
    let ev = one(EV, "apiserver-1");
    let want: k8s_openapi::jiff::Timestamp = "2026-01-01T10:00:01.654321Z".parse().unwrap();
    assert_eq!(ev.stage_timestamp_micros(), Some(want.as_microsecond()));
    let none = one(
        r#"{"level":"Metadata","auditID":"b","stage":"ResponseComplete","stageTimestamp":"yesterday"}"#,
        "",
    );
    assert_eq!(none.stage_timestamp_micros(), None);
}

/// The object and its metadata are cut out of the line without re-encoding.
#[test]
fn object_and_metadata_are_slices_of_the_line() {
    let ev = one(EV, "apiserver-1");
    let glue = |(head, tail): (&[u8], &[u8])| {
        let mut b = head.to_vec();
        b.extend_from_slice(b"42");
        b.extend_from_slice(tail);
        serde_json::from_slice::<serde_json::Value>(&b).expect("valid JSON")
    };
    for truncated in [false, true] {
        assert_eq!(
            glue(ev.object_parts(truncated)),
            line(&ev, 42, truncated)["object"]
        );
    }
    assert_eq!(
        glue(ev.metadata_parts()),
        line(&ev, 42, false)["object"]["metadata"]
    );
    let cells = ev.cells(|e| e.audit_id().as_bytes().to_vec());
    assert_eq!(cells, b"a-1");
    assert_eq!(ev.cells(|_| unreachable!("built once")), b"a-1");
}

#[test]
fn keeps_every_field_and_adds_metadata() {
    let ev = one(EV, "apiserver-1");
    let v = line(&ev, 42, false);
    assert_eq!(v["type"], "ADDED");
    let o = &v["object"];
    assert_eq!(o["apiVersion"], "audit.k8s.io/v1alpha1");
    assert_eq!(o["kind"], "Event");
    assert_eq!(o["metadata"]["name"], "a-1-responsecomplete");
    assert_eq!(o["metadata"]["namespace"], "team-a");
    assert_eq!(o["metadata"]["resourceVersion"], "42");
    assert_eq!(o["metadata"]["creationTimestamp"], "2026-01-01T10:00:01Z");
    assert_eq!(o["annotations"]["audit.k8s.io/source"], "apiserver-1");
    assert_eq!(o["annotations"]["authorization.k8s.io/decision"], "allow");
    let original: serde_json::Value = serde_json::from_str(EV).unwrap();
    for (k, want) in original.as_object().unwrap() {
        if !["kind", "apiVersion", "annotations"].contains(&k.as_str()) {
            assert_eq!(&o[k], want, "field {k}");
        }
    }
    assert_eq!(ev.get(Field::Username), "bob");
    assert_eq!(ev.namespace(), Some("team-a"));
    assert_eq!(ev.get(Field::Verb), "delete");
    assert_eq!(ev.get(Field::Resource), "configmaps");
    assert_eq!(ev.get(Field::Name), "x");
    assert_eq!(ev.get(Field::ApiGroup), "");
    assert_eq!(ev.get(Field::Code), "200");
    assert_eq!(ev.get(Field::Stage), "ResponseComplete");
    assert_eq!(ev.get(Field::Level), "RequestResponse");
    assert_eq!(ev.audit_id(), "a-1");
}

#[test]
fn truncated_form_drops_bodies_only() {
    let ev = one(EV, "s");
    assert!(ev.can_truncate());
    let full = line(&ev, 1, false);
    let t = line(&ev, 1, true);
    assert!(t["object"].get("requestObject").is_none());
    assert!(t["object"].get("responseObject").is_none());
    assert_eq!(t["object"]["annotations"]["audit.k8s.io/truncated"], "true");
    for (k, want) in full["object"].as_object().unwrap() {
        if !["requestObject", "responseObject", "annotations"].contains(&k.as_str()) {
            assert_eq!(&t["object"][k], want, "field {k}");
        }
    }
    assert!(ev.wire_len(true) < ev.wire_len(false));
    // Built once, then shared.
    assert_eq!(ev.parts(true).1.as_ptr(), ev.parts(true).1.as_ptr());
}

/// The annotation edit in every place it can fall: no annotations, before, between,
/// after other keys, and over a pushed value.
#[test]
fn truncated_annotation_lands_in_order() {
    let with = |annotations: &str, source: &str| {
        let item = format!(
            r#"{{"level":"Request","auditID":"t","stage":"ResponseComplete","requestObject":{{"a":1}}{annotations}}}"#
        );
        let ev = one(&item, source);
        let t = line(&ev, 1, true);
        let keys: Vec<String> = t["object"]["annotations"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        (t["object"]["annotations"].clone(), keys)
    };
    let (a, _) = with("", "");
    assert_eq!(a, serde_json::json!({"audit.k8s.io/truncated": "true"}));
    let (a, _) = with(r#","annotations":{"a":"1","z":"2"}"#, "");
    assert_eq!(
        a,
        serde_json::json!({"a":"1","audit.k8s.io/truncated":"true","z":"2"})
    );
    let (a, _) = with(r#","annotations":{"a":"1"}"#, "");
    assert_eq!(
        a,
        serde_json::json!({"a":"1","audit.k8s.io/truncated":"true"})
    );
    let (a, _) = with(r#","annotations":{"zz":"1"}"#, "src");
    assert_eq!(
        a,
        serde_json::json!({"audit.k8s.io/source":"src","audit.k8s.io/truncated":"true","zz":"1"})
    );
    let (a, _) = with(r#","annotations":{"audit.k8s.io/truncated":"no\"pe"}"#, "");
    assert_eq!(a, serde_json::json!({"audit.k8s.io/truncated":"true"}));
}

#[test]
fn cluster_scoped_event_has_no_namespace() {
    let ev = one(
        r#"{"level":"Metadata","auditID":"b","stage":"ResponseComplete","verb":"get","objectRef":{"resource":"nodes"}}"#,
        "",
    );
    assert_eq!(ev.namespace(), None);
    let v = line(&ev, 7, false);
    assert!(v["object"]["metadata"].get("namespace").is_none());
    assert_eq!(v["object"]["metadata"]["creationTimestamp"], NOW);
    assert!(v["object"].get("annotations").is_none());
    assert!(!ev.can_truncate());
}

#[test]
fn pretty_printed_input_still_makes_one_line() {
    let body = "{\"kind\":\"EventList\",\"apiVersion\":\"audit.k8s.io/v1beta1\",\"items\":[\n {\"level\":\"Metadata\",\n \"auditID\":\"c\",\"stage\":\"ResponseComplete\",\n \"user\": {\n \"username\": \"x\", \"groups\" : [ \"a b\",\r\n \"c\\\"\\n d\" ]\n },\"n\": 1.50\n }\n]}";
    let evs = decode_event_list(body.as_bytes(), "s", NOW).unwrap();
    let v = line(&evs[0], 1, false);
    assert_eq!(v["object"]["user"]["username"], "x");
    assert_eq!(v["object"]["user"]["groups"][1], "c\"\n d");
    let (_, tail) = evs[0].parts(false);
    let tail = std::str::from_utf8(tail).unwrap();
    assert!(
        tail.contains(r#""user":{"username":"x","groups":["a b","c\"\n d"]},"n":1.50"#),
        "compacted byte for byte: {tail}"
    );
}

#[test]
fn escaped_strings_are_read_and_written_back() {
    let ev = one(
        r#"{"level":"Metadata","auditID":"e\"1","stage":"Response\u0043omplete","user":{"username":"sys\u003aadmin"},"objectRef":{"namespace":"n\\s"},"annotations":{"k\n":"v\t"}}"#,
        "",
    );
    assert_eq!(ev.get(Field::Username), "sys:admin");
    assert_eq!(ev.audit_id(), "e\"1");
    assert_eq!(ev.namespace(), Some("n\\s"));
    let v = line(&ev, 1, false);
    assert_eq!(v["object"]["metadata"]["name"], "e\"1-responsecomplete");
    assert_eq!(v["object"]["metadata"]["namespace"], "n\\s");
    assert_eq!(v["object"]["annotations"]["k\n"], "v\t");
}

#[test]
fn pusher_cannot_forge_the_source() {
    let ev = one(
        r#"{"level":"Metadata","auditID":"d","stage":"ResponseComplete","annotations":{"audit.k8s.io/source":"forged","z":"1","a":"2","a":"3"}}"#,
        "real",
    );
    let v = line(&ev, 1, false);
    assert_eq!(
        v["object"]["annotations"],
        serde_json::json!({"a":"3","audit.k8s.io/source":"real","z":"1"})
    );
}

#[test]
fn refuses_what_is_not_an_event_list() {
    for (body, want) in [
        (r#"{"kind": 0}"#, "malformed JSON"),
        (
            r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1"}"#,
            "expected kind",
        ),
        (
            r#"{"kind":"EventList","apiVersion":"v1","items":[]}"#,
            "expected kind",
        ),
        (
            r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[1]}"#,
            "items[0]: expected an audit Event object",
        ),
        (
            r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{"auditID":"x"}]}"#,
            "items[0]: stage is required",
        ),
        (
            r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{"auditID":"x","stage":"a","level":"b","annotations":{"k":1}}]}"#,
            "items[0]: annotations",
        ),
        (
            r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{"auditID":"x","stage":"a","level":"b","objectRef":{"namespace":"a"},"objectRef":{"namespace":"b"}}]}"#,
            "items[0]: duplicate field \"objectRef\"",
        ),
        (
            r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{"auditID":"x","stage":"a","level":"b","kind":"Pod"}]}"#,
            "kind must be",
        ),
        (
            r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[],"items":[]}"#,
            "duplicate field",
        ),
        (
            r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{"auditID":"x","stage":"a","level":"b"},{"auditID":1}]}"#,
            "items[1]: auditID: invalid type",
        ),
        (
            r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{"auditID":"x","stage":"a","level":"b"}"#,
            "malformed JSON",
        ),
        ("{", "malformed JSON"),
        ("", "malformed JSON"),
    ] {
        let err = decode_event_list(body.as_bytes(), "", NOW)
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{body}: {err}");
    }
}

// Found by the decode_differential fuzz target: a second `responseObject` was left
// in the truncated form, which promises none.
#[test]
fn refuses_a_repeated_body_field() {
    for field in BODY_FIELDS {
        let item = EV.replacen('{', &format!(r#"{{"{field}":{{"a":1}},"#), 1);
        let e = decode_event_list(list(&[&item]).as_bytes(), "s", NOW).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("items[0]: duplicate field {field:?}"),
            "{field}"
        );
    }
}

// Found by the decode_differential fuzz target: the list's closing brace ended the
// read, and whatever followed it was never looked at.
#[test]
fn refuses_trailing_garbage() {
    let body = format!("{} {{\"x\":1}}", list(&[EV]));
    let e = decode_event_list(body.as_bytes(), "s", NOW).unwrap_err();
    assert!(matches!(e, DecodeError::Json(_)), "{e}");
    let spaced = format!("{}\n \t", list(&[EV]));
    assert_eq!(
        decode_event_list(spaced.as_bytes(), "s", NOW)
            .unwrap()
            .len(),
        1
    );
}

// Found by the decode_differential fuzz target, and kept: JSON puts no bound on
// numbers, kube-apiserver keeps an event's objects as raw JSON, and so does the line
// (serde_json's `Value` cannot hold 1e999; a client that needs it reads it as text).
#[test]
fn numbers_beyond_f64_are_kept_as_sent() {
    let item = EV.replace(r#"{"kind":"DeleteOptions"}"#, r#"{"n":2.5e99999}"#);
    let ev = one(&item, "s");
    let (head, tail) = ev.parts(false);
    let line = String::from_utf8([head, b"1", tail].concat()).unwrap();
    assert!(
        line.contains(r#""requestObject":{"n":2.5e99999}"#),
        "{line}"
    );
}

// Found by the decode_differential fuzz target: a lone `\udadd` went out in the line,
// which serde_json (kube-rs) then refused to read.
#[test]
fn refuses_an_unpaired_surrogate_escape() {
    for (value, bad) in [
        (r#""\udadd""#, true),
        (r#""x\uDC00""#, true),
        (r#""\ud83d\u0041""#, true),
        (r#""\ud83d\ude00 ok""#, false),
        (r#""\\udadd is text""#, false),
        (r#""\u00e9""#, false),
    ] {
        let item = EV.replace(
            r#""verb":"delete""#,
            &format!(r#""verb":"delete","note":{value}"#),
        );
        let got = decode_event_list(list(&[&item]).as_bytes(), "s", NOW);
        assert_eq!(
            matches!(got, Err(DecodeError::LoneSurrogate(_))),
            bad,
            "{value}: {got:?}"
        );
    }
}

#[test]
fn refuses_invalid_utf8() {
    let err = decode_event_list(b"{\"kind\":\"Ev\xffent\"}", "", NOW)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("malformed JSON: invalid utf-8"), "{err}");
}

#[test]
fn empty_and_null_items_are_an_empty_batch() {
    for body in [
        r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":null}"#,
        r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{}}"#,
        r#"{"items":[],"apiVersion":"audit.k8s.io/v1","kind":"EventList"}"#,
    ] {
        assert!(
            decode_event_list(body.as_bytes(), "", NOW)
                .unwrap()
                .is_empty()
        );
    }
}

#[test]
fn limit_size_truncates_then_drops() {
    let full = one(EV, "s");
    let (whole, cut) = (full.wire_len(false), full.wire_len(true));
    assert!(matches!(one(EV, "s").limit_size(whole), Limited::Fits(_)));
    let Limited::Truncated(t) = one(EV, "s").limit_size(whole - 1) else {
        panic!("expected truncated")
    };
    assert!(!t.can_truncate());
    assert_eq!(t.wire_len(false), cut);
    let v = line(&t, 1, false);
    assert_eq!(v["object"]["annotations"]["audit.k8s.io/truncated"], "true");
    assert!(v["object"].get("requestObject").is_none());
    assert!(matches!(
        one(EV, "s").limit_size(cut - 1),
        Limited::TooLarge { .. }
    ));
}

/// Every real fixture: each line is valid JSON carrying every field of the pushed
/// event, and the truncated form is the full one less its bodies.
#[test]
fn real_fixtures_round_trip() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/audit");
    for name in [
        "all-events.jsonl",
        "audit2rbac-demo.log",
        "openshift-audit_in.log",
    ] {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        let items: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        // Redaction off: every field must come out as it went in.
        let evs =
            decode_event_list_with(list(&items).as_bytes(), "src", NOW, &Redaction::off()).unwrap();
        assert_eq!(evs.len(), items.len(), "{name}");
        for (item, ev) in items.iter().zip(&evs) {
            let original: serde_json::Value = serde_json::from_str(item).unwrap();
            let v = line(ev, 9, false);
            for (k, want) in original.as_object().unwrap() {
                if !["kind", "apiVersion", "annotations", "metadata"].contains(&k.as_str()) {
                    assert_eq!(&v["object"][k], want, "{name}: field {k}");
                }
            }
            if ev.can_truncate() {
                let mut t = line(ev, 9, true);
                let mut f = v.clone();
                for o in [&mut t["object"], &mut f["object"]] {
                    let o = o.as_object_mut().unwrap();
                    o.remove("requestObject");
                    o.remove("responseObject");
                    o["annotations"]
                        .as_object_mut()
                        .unwrap()
                        .remove(TRUNCATED_ANNOTATION);
                }
                assert_eq!(t, f, "{name}");
            }
        }
    }
}

#[test]
fn every_field_is_listed_in_its_place() {
    for (i, f) in Field::ALL.iter().enumerate() {
        assert_eq!(*f as usize, i, "{f:?}");
    }
}

/// With the default rules, a real event carrying kubectl's last-applied annotation (a
/// ClusterRole update in `all-events.jsonl`) loses that value, says so in its own
/// annotations, in key order, and keeps everything else; its truncated form too.
#[test]
fn redaction_marks_the_event_and_keeps_the_rest() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/audit");
    let text = std::fs::read_to_string(dir.join("all-events.jsonl")).unwrap();
    let item = text
        .lines()
        .find(|l| l.contains("last-applied-configuration"))
        .expect("a fixture event with the annotation");
    let ev = one(item, "src");
    assert_eq!(
        ev.redacted(),
        Rules::default().with(Rule::LastAppliedConfiguration)
    );
    for truncated in [false, true] {
        let v = line(&ev, 7, truncated);
        let annotations = v["object"]["annotations"].as_object().unwrap();
        assert_eq!(annotations[REDACTED_ANNOTATION], "true");
        let keys: Vec<&String> = annotations.keys().collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted, "Go writes a map's keys sorted");
    }
    let v = line(&ev, 7, false);
    let original: serde_json::Value = serde_json::from_str(item).unwrap();
    let body = &v["object"]["requestObject"];
    assert_eq!(
        body["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"],
        "<redacted>"
    );
    assert_eq!(body["rules"], original["requestObject"]["rules"]);

    // A pushed `audit.k8s.io/redacted` is not the server's word: dropped.
    let forged = r#"{"level":"Metadata","auditID":"f","stage":"ResponseComplete","verb":"get","annotations":{"audit.k8s.io/redacted":"true"}}"#;
    let v = line(&one(forged, "src"), 1, false);
    assert!(
        v["object"]["annotations"]
            .get(REDACTED_ANNOTATION)
            .is_none()
    );
}

/// A namespace's create names it only in `objectRef.name`: it is routed to that namespace.
#[test]
fn a_namespace_create_belongs_to_that_namespace() {
    let create = r#"{"level":"Metadata","auditID":"n","stage":"ResponseComplete","verb":"create","objectRef":{"resource":"namespaces","name":"team-a","apiVersion":"v1"}}"#;
    let ev = one(create, "src");
    assert_eq!(ev.namespace(), Some("team-a"));
    let v = line(&ev, 1, false);
    assert_eq!(v["object"]["metadata"]["namespace"], "team-a");
    assert!(
        v["object"]["objectRef"].get("namespace").is_none(),
        "the event as received"
    );
    // Another cluster-scoped object with a name: still cluster-scoped.
    let node = create.replace("namespaces", "nodes");
    assert_eq!(one(&node, "src").namespace(), None);
    let grouped = create.replace(r#""name":"team-a""#, r#""name":"team-a","apiGroup":"x.io""#);
    assert_eq!(one(&grouped, "src").namespace(), None);
}

/// Go's encoding/json reads a key that differs from a field's name only in case as that
/// field (the last such key winning); client-go and serde read the exact name. An event
/// whose keys would route it one way and read another, at the top or in a sub-object the
/// server reads by name, is refused; maps are case-sensitive in Go too.
#[test]
fn refuses_keys_that_differ_from_a_read_field_only_in_case() {
    let refused = |item: &str, want: &str| {
        let err = decode_event_list(list(&[item]).as_bytes(), "s", NOW)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("items[0]: "), "{item}: {err}");
        assert!(err.contains(want), "{item}: {err}");
        assert!(err.contains("only in case"), "{item}: {err}");
    };
    // The issue's own: team-a here, team-b to a Go reader.
    refused(
        &EV.replace(
            r#""namespace":"team-a""#,
            r#""namespace":"team-a","Namespace":"team-b""#,
        ),
        r#"objectRef: field "Namespace" differs from "namespace""#,
    );
    // Alone too: routed as no namespace, read by Go as team-b.
    refused(
        &EV.replace(r#""namespace":"team-a""#, r#""NAMESPACE":"team-b""#),
        r#""NAMESPACE""#,
    );
    for (from, to, want) in [
        (
            r#""verb":"delete""#,
            r#""verb":"delete","Verb":"get""#,
            r#""Verb""#,
        ),
        (
            r#""user":{"username":"bob""#,
            r#""user":{"username":"bob","userName":"eve""#,
            r#"user: field "userName""#,
        ),
        (
            r#""code":200"#,
            r#""code":200,"Code":403"#,
            r#"responseStatus: field "Code""#,
        ),
        (
            r#""apiVersion":"v1"}"#,
            r#""apiVersion":"v1","apigroup":"apps"}"#,
            r#""apigroup""#,
        ),
        (
            r#""kind":"Event""#,
            r#""kind":"Event","Metadata":{"namespace":"x"}"#,
            r#""Metadata""#,
        ),
        (
            r#""kind":"Event""#,
            r#""kind":"Event","Annotations":{"a":"b"}"#,
            r#""Annotations""#,
        ),
        (
            r#""kind":"Event""#,
            r#""kind":"Event","requestUri":"/x""#,
            r#""requestUri""#,
        ),
        // Unicode's other spellings of k and s: KELVIN SIGN, LONG S.
        (
            r#""kind":"Event""#,
            "\"\u{212A}ind\":\"Event\"",
            "\u{212A}ind",
        ),
        (
            r#""stage":"ResponseComplete""#,
            r#""stage":"ResponseComplete","\u017ftage":"x""#,
            "\u{17F}tage",
        ),
    ] {
        assert!(EV.contains(from), "{from}");
        refused(&EV.replacen(from, to, 1), want);
    }
    // A repeated code is as ambiguous as a case variant of it; a malformed status is kept.
    let twice = EV.replace(r#""code":200"#, r#""code":200,"code":403"#);
    let err = decode_event_list(list(&[&twice]).as_bytes(), "s", NOW).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"items[0]: responseStatus: duplicate field "code""#
    );
    let kept = one(&EV.replace(r#""code":200"#, r#""code":"200""#), "s");
    assert_eq!(kept.get(Field::Code), "");

    // Not folded: annotations' keys (a map), names the server does not read in a
    // sub-object, and keys that fold to no field at all.
    for item in [
        EV.replace(
            r#""authorization.k8s.io/decision":"allow""#,
            r#""authorization.k8s.io/decision":"allow","Authorization.k8s.io/decision":"x""#,
        ),
        EV.replace(
            r#""apiVersion":"v1"}"#,
            r#""apiVersion":"v1","APIVersion":"v2","UID":"u"}"#,
        ),
        EV.replace(r#""groups":["g"]"#, r#""groups":["g"],"Groups":["h"]"#),
        EV.replacen('{', r#"{"verbs":"x","ıd":"y","Kind2":1,"#, 1),
    ] {
        let ev = one(&item, "s");
        assert_eq!(ev.get(Field::Namespace), "team-a", "{item}");
    }
}

#[test]
fn case_variants_fold_as_go_does() {
    use super::fields::{Names, case_variant_of};
    let names = Names::new(["namespace", "kind", "stage", "apiGroup"]);
    for (key, want) in [
        ("namespace", None),
        ("Namespace", Some("namespace")),
        ("NAMESPACE", Some("namespace")),
        ("APIGROUP", Some("apiGroup")),
        ("\u{212A}IND", Some("kind")),
        ("\u{17F}tage", Some("stage")),
        // Dotless i, and a letter that looks alike, fold to no ASCII name.
        ("k\u{131}nd", None),
        ("n\u{430}mespace", None),
        ("namespaces", None),
        ("", None),
    ] {
        assert_eq!(case_variant_of(key, &names), want, "{key:?}");
    }
}
