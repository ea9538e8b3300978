//! An audit `Event` on its way through the server: decoded from a webhook `EventList`
//! without building a value tree, and serialised once into the watch line every watcher
//! shares. Knows nothing of HTTP, of the bus or of who may watch.
//!
//! The line is kept as two halves around a hole for the resourceVersion, because the bus
//! assigns that number under its lock and serialising there would hold the lock for the
//! whole encode. A watcher writes `head`, the digits, then `tail` (or the truncated tail).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;
use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// The group/version we serve events as.
pub const API_GROUP: &str = "audit.k8s.io";
pub const API_VERSION: &str = "v1alpha1";
pub const GROUP_VERSION: &str = "audit.k8s.io/v1alpha1";
pub const KIND: &str = "Event";

/// Names the kube-apiserver replica that pushed the event.
pub const SOURCE_ANNOTATION: &str = "audit.k8s.io/source";
/// Set on an event whose request/response objects were dropped, as kube-apiserver's
/// truncate backend does.
pub const TRUNCATED_ANNOTATION: &str = "audit.k8s.io/truncated";
/// On a BOOKMARK: how many events this watcher lost since the last such bookmark.
pub const DROPPED_ANNOTATION: &str = "audit.k8s.io/dropped";

/// The audit API versions kube-apiserver's webhook backend sends.
const ACCEPTED_LIST_VERSIONS: [&str; 2] = ["audit.k8s.io/v1", "audit.k8s.io/v1beta1"];
/// Fields the truncated form leaves out (k8s.io/apiserver/plugin/pkg/audit/truncate).
const BODY_FIELDS: [&str; 2] = ["requestObject", "responseObject"];

/// Why a pushed body was refused. Nothing of a refused body reaches the bus.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error(
        "expected kind \"EventList\" with apiVersion audit.k8s.io/v1 or v1beta1, got kind {kind:?} apiVersion {api_version:?}"
    )]
    NotEventList { kind: String, api_version: String },
    #[error("items[{index}]: {reason}")]
    Item { index: usize, reason: String },
}

/// One decoded event: what routing and filtering look at, plus its shared wire bytes.
#[derive(Debug)]
pub struct Event {
    pub audit_id: Box<str>,
    pub stage: Box<str>,
    pub level: Box<str>,
    pub verb: Box<str>,
    pub username: Box<str>,
    /// `objectRef.namespace`; `None` for cluster-scoped and non-resource requests.
    pub namespace: Option<Box<str>>,
    pub resource: Box<str>,
    pub name: Box<str>,
    head: Bytes,
    tail: Bytes,
    /// The tail without request/response objects; `None` when the event has none, so the
    /// truncated form would be the same as the full one.
    truncated_tail: Option<Bytes>,
}

impl Event {
    /// The line up to the resourceVersion digits.
    pub fn head(&self) -> &Bytes {
        &self.head
    }

    /// The rest of the line, full or truncated.
    pub fn tail(&self, truncated: bool) -> &Bytes {
        match (&self.truncated_tail, truncated) {
            (Some(t), true) => t,
            _ => &self.tail,
        }
    }

    /// Whether a truncated form smaller than the full one exists.
    pub fn can_truncate(&self) -> bool {
        self.truncated_tail.is_some()
    }

    /// Bytes on the wire without the resourceVersion digits.
    pub fn wire_len(&self, truncated: bool) -> usize {
        self.head.len() + self.tail(truncated).len()
    }

    /// What the event holds in memory, for the replay window's byte cap.
    pub fn memory_len(&self) -> usize {
        self.head.len() + self.tail.len() + self.truncated_tail.as_ref().map_or(0, Bytes::len)
    }
}

/// An event checked against `--max-event-bytes`.
#[derive(Debug)]
pub enum Limited {
    Fits(Event),
    /// Too large whole: from now on it exists only in its truncated form, for everyone.
    Truncated(Event),
    /// Too large even truncated.
    TooLarge {
        audit_id: Box<str>,
    },
}

impl Event {
    /// Apply `--max-event-bytes` as kube-apiserver's truncate backend does: an event above
    /// it is truncated, and dropped if it is still above it.
    pub fn limit_size(self, max_bytes: usize) -> Limited {
        if self.wire_len(false) <= max_bytes {
            return Limited::Fits(self);
        }
        match self.truncated_tail {
            Some(t) if self.head.len() + t.len() <= max_bytes => Limited::Truncated(Event {
                tail: t,
                truncated_tail: None,
                ..self
            }),
            _ => Limited::TooLarge {
                audit_id: self.audit_id,
            },
        }
    }
}

/// Decode a webhook body (`audit.k8s.io/v1` or `v1beta1` `EventList`) into events ready
/// for the bus. `source` names the pushing apiserver; `now` (RFC 3339) stands in for an
/// event that carries no timestamp at all.
pub fn decode_event_list(body: &[u8], source: &str, now: &str) -> Result<Vec<Event>, DecodeError> {
    #[derive(Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow, default)]
        kind: Option<Cow<'a, str>>,
        #[serde(borrow, default, rename = "apiVersion")]
        api_version: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        items: Option<Vec<&'a RawValue>>,
    }
    let list: Envelope<'_> = serde_json::from_slice(body)?;
    let kind = list.kind.as_deref().unwrap_or_default();
    let api_version = list.api_version.as_deref().unwrap_or_default();
    if kind != "EventList" || !ACCEPTED_LIST_VERSIONS.contains(&api_version) {
        return Err(DecodeError::NotEventList {
            kind: kind.to_owned(),
            api_version: api_version.to_owned(),
        });
    }
    let items = list.items.unwrap_or_default();
    items
        .iter()
        .enumerate()
        .map(|(index, raw)| {
            decode_event(raw, source, now).map_err(|reason| DecodeError::Item { index, reason })
        })
        .collect()
}

/// A JSON object's members in their original order, values left as raw text.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> Members<'a> {
    fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }
}

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an audit Event object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(20));
                while let Some((k, v)) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                    out.push((k.0, v));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// A map key borrowed from the body when it has no escapes (serde's own `Cow<str>`
/// always allocates).
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

#[derive(Deserialize, Default)]
struct UserRef<'a> {
    #[serde(borrow, default)]
    username: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Default)]
struct ObjectRef<'a> {
    #[serde(borrow, default)]
    namespace: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    resource: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
}

fn field<'a, T: Deserialize<'a>>(m: &Members<'a>, key: &str) -> Result<Option<T>, String> {
    match m.get(key) {
        None => Ok(None),
        Some(raw) if raw.get() == "null" => Ok(None),
        Some(raw) => serde_json::from_str(raw.get())
            .map(Some)
            .map_err(|e| format!("{key}: {e}")),
    }
}

fn required<'a>(m: &Members<'a>, key: &str) -> Result<Cow<'a, str>, String> {
    #[derive(Deserialize)]
    struct S<'a>(#[serde(borrow)] Cow<'a, str>);
    match field::<S<'a>>(m, key)? {
        Some(S(s)) if !s.is_empty() => Ok(s),
        _ => Err(format!("{key} is required")),
    }
}

fn optional<'a>(m: &Members<'a>, key: &str) -> Result<Cow<'a, str>, String> {
    #[derive(Deserialize)]
    struct S<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(field::<S<'a>>(m, key)?.map(|s| s.0).unwrap_or_default())
}

fn decode_event(raw: &RawValue, source: &str, now: &str) -> Result<Event, String> {
    let members: Members<'_> = serde_json::from_str(raw.get()).map_err(|e| e.to_string())?;
    let kind = optional(&members, "kind")?;
    if !kind.is_empty() && kind != "Event" {
        return Err(format!("kind must be \"Event\", got {kind:?}"));
    }
    let audit_id = required(&members, "auditID")?;
    let stage = required(&members, "stage")?;
    let level = required(&members, "level")?;
    let verb = optional(&members, "verb")?;
    let user: UserRef<'_> = field(&members, "user")?.unwrap_or_default();
    let object_ref: ObjectRef<'_> = field(&members, "objectRef")?.unwrap_or_default();
    let mut annotations: BTreeMap<String, String> =
        field(&members, "annotations")?.unwrap_or_default();
    if !source.is_empty() {
        // Ours wins: a pusher must not be able to pose as another apiserver.
        annotations.insert(SOURCE_ANNOTATION.to_owned(), source.to_owned());
    }
    let timestamp = ["stageTimestamp", "requestReceivedTimestamp", "timestamp"]
        .iter()
        .map(|k| optional(&members, k))
        .find(|t| t.as_ref().is_ok_and(|t| !t.is_empty()))
        .transpose()?
        .unwrap_or(Cow::Borrowed(now));
    let namespace = object_ref.namespace.filter(|ns| !ns.is_empty());
    let name = format!("{}-{}", audit_id, stage.to_ascii_lowercase());

    // Sized to fit: `Bytes::from(Vec)` keeps the whole allocation for as long as the
    // event lives in the window.
    let mut head = Vec::with_capacity(160 + name.len() + namespace.as_ref().map_or(0, |n| n.len()));
    head.extend_from_slice(br#"{"type":"ADDED","object":{"kind":"Event","apiVersion":"audit.k8s.io/v1alpha1","metadata":{"name":"#);
    write_json_str(&mut head, &name);
    if let Some(ns) = &namespace {
        head.extend_from_slice(br#","namespace":"#);
        write_json_str(&mut head, ns);
    }
    head.extend_from_slice(br#","resourceVersion":""#);

    let has_bodies = BODY_FIELDS.iter().any(|k| field_present(&members, k));
    let tail = encode_tail(&members, &seconds(&timestamp), &annotations, false);
    let truncated_tail = has_bodies.then(|| {
        let mut annotations = annotations.clone();
        annotations.insert(TRUNCATED_ANNOTATION.to_owned(), "true".to_owned());
        Bytes::from(encode_tail(
            &members,
            &seconds(&timestamp),
            &annotations,
            true,
        ))
    });

    Ok(Event {
        audit_id: audit_id.into(),
        stage: stage.into(),
        level: level.into(),
        verb: verb.into(),
        username: user.username.unwrap_or_default().into(),
        namespace: namespace.map(Into::into),
        resource: object_ref.resource.unwrap_or_default().into(),
        name: object_ref.name.unwrap_or_default().into(),
        head: Bytes::from(head),
        tail: Bytes::from(tail),
        truncated_tail,
    })
}

fn field_present(m: &Members<'_>, key: &str) -> bool {
    m.get(key).is_some_and(|v| v.get() != "null")
}

/// Everything after the resourceVersion digits: the rest of `metadata`, every field of
/// the received event in its order (bar the ones we own), then `annotations`.
fn encode_tail(
    members: &Members<'_>,
    creation_timestamp: &str,
    annotations: &BTreeMap<String, String>,
    truncated: bool,
) -> Vec<u8> {
    let kept = |key: &str| {
        let ours = matches!(key, "kind" | "apiVersion" | "metadata" | "annotations");
        let body = truncated && BODY_FIELDS.contains(&key);
        !(ours || body)
    };
    let capacity = 64
        + creation_timestamp.len()
        + members
            .0
            .iter()
            .filter(|(k, _)| kept(k))
            .map(|(k, v)| k.len() + v.get().len() + 4)
            .sum::<usize>()
        + annotations
            .iter()
            .map(|(k, v)| k.len() + v.len() + 6)
            .sum::<usize>();
    let mut out = Vec::with_capacity(capacity);
    out.extend_from_slice(br#"","creationTimestamp":"#);
    write_json_str(&mut out, creation_timestamp);
    out.push(b'}');
    for (key, value) in members.0.iter().filter(|(k, _)| kept(k)) {
        out.push(b',');
        write_json_str(&mut out, key);
        out.push(b':');
        write_raw(&mut out, value);
    }
    if !annotations.is_empty() {
        out.extend_from_slice(br#","annotations":"#);
        // A map of strings cannot fail to serialise.
        let _ = serde_json::to_writer(&mut out, annotations);
    }
    out.extend_from_slice(b"}}\n");
    out
}

fn write_json_str(out: &mut Vec<u8>, s: &str) {
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(out, s);
}

/// Copy a raw value, re-encoding it compactly only when it spans lines (a pretty-printed
/// push): the watch protocol is one object per line.
fn write_raw(out: &mut Vec<u8>, value: &RawValue) {
    let text = value.get();
    if text.bytes().any(|b| b == b'\n' || b == b'\r')
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(text)
    {
        let _ = serde_json::to_writer(out, &v);
        return;
    }
    out.extend_from_slice(text.as_bytes());
}

/// `metav1.Time` has second precision; audit timestamps are `MicroTime`.
fn seconds(ts: &str) -> Cow<'_, str> {
    match ts.find('.') {
        Some(dot) => {
            let frac_end = ts[dot + 1..]
                .find(|c: char| !c.is_ascii_digit())
                .map_or(ts.len(), |i| dot + 1 + i);
            Cow::Owned(format!("{}{}", &ts[..dot], &ts[frac_end..]))
        }
        None => Cow::Borrowed(ts),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2026-01-01T00:00:00Z";

    fn line(ev: &Event, rv: u64, truncated: bool) -> serde_json::Value {
        let mut b = ev.head().to_vec();
        b.extend_from_slice(rv.to_string().as_bytes());
        b.extend_from_slice(ev.tail(truncated));
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

    const EV: &str = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"RequestResponse","auditID":"a-1","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/team-a/configmaps/x","verb":"delete","user":{"username":"bob","groups":["g"]},"objectRef":{"resource":"configmaps","namespace":"team-a","name":"x","apiVersion":"v1"},"requestObject":{"kind":"DeleteOptions"},"responseObject":{"kind":"Status"},"requestReceivedTimestamp":"2026-01-01T10:00:00.123456Z","stageTimestamp":"2026-01-01T10:00:01.654321Z","annotations":{"authorization.k8s.io/decision":"allow"}}"#;

    #[test]
    fn keeps_every_field_and_adds_metadata() {
        let evs = decode_event_list(list(&[EV]).as_bytes(), "apiserver-1", NOW).unwrap();
        let v = line(&evs[0], 42, false);
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
        assert_eq!(&*evs[0].username, "bob");
        assert_eq!(evs[0].namespace.as_deref(), Some("team-a"));
    }

    #[test]
    fn truncated_form_drops_bodies_only() {
        let evs = decode_event_list(list(&[EV]).as_bytes(), "s", NOW).unwrap();
        assert!(evs[0].can_truncate());
        let full = line(&evs[0], 1, false);
        let t = line(&evs[0], 1, true);
        assert!(t["object"].get("requestObject").is_none());
        assert!(t["object"].get("responseObject").is_none());
        assert_eq!(t["object"]["annotations"]["audit.k8s.io/truncated"], "true");
        for (k, want) in full["object"].as_object().unwrap() {
            if !["requestObject", "responseObject", "annotations"].contains(&k.as_str()) {
                assert_eq!(&t["object"][k], want, "field {k}");
            }
        }
        assert!(evs[0].wire_len(true) < evs[0].wire_len(false));
    }

    #[test]
    fn cluster_scoped_event_has_no_namespace() {
        let ev = r#"{"level":"Metadata","auditID":"b","stage":"ResponseComplete","verb":"get","objectRef":{"resource":"nodes"}}"#;
        let evs = decode_event_list(list(&[ev]).as_bytes(), "", NOW).unwrap();
        assert_eq!(evs[0].namespace, None);
        let v = line(&evs[0], 7, false);
        assert!(v["object"]["metadata"].get("namespace").is_none());
        assert_eq!(v["object"]["metadata"]["creationTimestamp"], NOW);
        assert!(!evs[0].can_truncate());
    }

    #[test]
    fn pretty_printed_input_still_makes_one_line() {
        let body = "{\"kind\":\"EventList\",\"apiVersion\":\"audit.k8s.io/v1beta1\",\"items\":[\n {\"level\":\"Metadata\",\n \"auditID\":\"c\",\"stage\":\"ResponseComplete\",\n \"user\": {\n \"username\": \"x\"\n }}\n]}";
        let evs = decode_event_list(body.as_bytes(), "s", NOW).unwrap();
        let v = line(&evs[0], 1, false);
        assert_eq!(v["object"]["user"]["username"], "x");
    }

    #[test]
    fn pusher_cannot_forge_the_source() {
        let ev = r#"{"level":"Metadata","auditID":"d","stage":"ResponseComplete","annotations":{"audit.k8s.io/source":"forged"}}"#;
        let evs = decode_event_list(list(&[ev]).as_bytes(), "real", NOW).unwrap();
        assert_eq!(
            line(&evs[0], 1, false)["object"]["annotations"]["audit.k8s.io/source"],
            "real"
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
                "items[0]",
            ),
            (
                r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{"auditID":"x"}]}"#,
                "items[0]: stage is required",
            ),
            (
                r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{"auditID":"x","stage":"a","level":"b","annotations":{"k":1}}]}"#,
                "annotations",
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

    #[test]
    fn empty_and_null_items_are_an_empty_batch() {
        for body in [
            r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":null}"#,
            r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{}}"#,
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
        let one = |max| {
            decode_event_list(list(&[EV]).as_bytes(), "s", NOW)
                .unwrap()
                .remove(0)
                .limit_size(max)
        };
        let full = decode_event_list(list(&[EV]).as_bytes(), "s", NOW)
            .unwrap()
            .remove(0);
        let (whole, cut) = (full.wire_len(false), full.wire_len(true));
        assert!(matches!(one(whole), Limited::Fits(_)));
        let Limited::Truncated(t) = one(whole - 1) else {
            panic!("expected truncated")
        };
        assert!(!t.can_truncate());
        let v = line(&t, 1, false);
        assert_eq!(v["object"]["annotations"]["audit.k8s.io/truncated"], "true");
        assert!(v["object"].get("requestObject").is_none());
        assert!(matches!(one(cut - 1), Limited::TooLarge { .. }));
    }

    #[test]
    fn seconds_drops_the_fraction_only() {
        assert_eq!(
            seconds("2026-01-01T10:00:01.654321Z"),
            "2026-01-01T10:00:01Z"
        );
        assert_eq!(
            seconds("2026-01-01T10:00:01.5+02:00"),
            "2026-01-01T10:00:01+02:00"
        );
        assert_eq!(seconds("2026-01-01T10:00:01Z"), "2026-01-01T10:00:01Z");
    }
}
