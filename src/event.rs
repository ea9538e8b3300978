//! An audit `Event` on its way through the server: decoded from a webhook `EventList` in
//! one pass, and serialised once into the watch line every watcher shares. Knows nothing
//! of HTTP, of the bus or of who may watch.
//!
//! The decoder walks the body once with serde_json: each item's members are taken as raw
//! text (validated as they are skipped), the routing fields read from that text, and the
//! line written by copying each value once. Per event it makes two allocations that live
//! on (the line, the routing strings) and reuses its scratch space across a batch.
//!
//! The line is `head`, a hole for the resourceVersion, then `tail`: the bus assigns that
//! number under its lock, and serialising there would hold the lock for the whole encode.
//! The truncated form (no request/response objects, as kube-apiserver's truncate backend
//! makes it) is described by a few byte ranges at decode time and built from the full
//! line only when a watcher first needs it, then shared.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;
use std::ops::Range;
use std::sync::OnceLock;

use bytes::Bytes;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

mod wire;
pub use wire::WireError;

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
/// The annotation edits a truncation makes, by where it falls (see `decode_event`): no
/// annotations, before a key, a pushed value replaced, after the last key. Indexed, so
/// that the shared stream carries a number rather than the bytes (`wire`).
const EDITS: [&[u8]; 5] = [
    b"",
    br#","annotations":{"audit.k8s.io/truncated":"true"}"#,
    br#""audit.k8s.io/truncated":"true","#,
    br#""true""#,
    br#","audit.k8s.io/truncated":"true""#,
];
/// Fields the truncated form leaves out (k8s.io/apiserver/plugin/pkg/audit/truncate).
const BODY_FIELDS: [&str; 2] = ["requestObject", "responseObject"];
const HEAD_PREFIX: &[u8] = br#"{"type":"ADDED","object":{"kind":"Event","apiVersion":"audit.k8s.io/v1alpha1","metadata":{"name":"#;
/// Where the event object starts in the line: after `{"type":"ADDED","object":`.
const OBJECT_START: usize = 25;
/// Where the `metadata` object starts in the line: before `"name":`.
const META_START: usize = HEAD_PREFIX.len() - 8;
/// What follows the event object on its line: the watch event's `}` and the newline.
const LINE_END: usize = 2;

/// Why a pushed body was refused. Nothing of a refused body reaches the bus.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("malformed JSON: {0}")]
    Utf8(#[from] std::str::Utf8Error),
    #[error(
        "expected kind \"EventList\" with apiVersion audit.k8s.io/v1 or v1beta1, got kind {kind:?} apiVersion {api_version:?}"
    )]
    NotEventList { kind: String, api_version: String },
    #[error("items[{index}]: {reason}")]
    Item { index: usize, reason: String },
    /// `\ud800`…`\udfff` not in a pair: JSON's grammar lets it through, but it is no
    /// character, and strict readers (serde_json, so kube-rs watchers) refuse the line.
    #[error("malformed JSON: unpaired surrogate escape at byte {0}")]
    LoneSurrogate(usize),
}

/// The fields of an event that routing, field selectors and tables read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    AuditId,
    Stage,
    Level,
    Verb,
    Username,
    /// `objectRef.namespace`; empty for cluster-scoped and non-resource requests.
    Namespace,
    Resource,
    Name,
    ApiGroup,
    /// `responseStatus.code` as decimal text; empty when absent.
    Code,
}

const FIELD_COUNT: usize = 10;

/// One decoded event: its routing fields and its shared wire bytes.
#[derive(Debug)]
pub struct Event {
    /// Every routing field back to back: one allocation instead of one per field.
    strings: Box<str>,
    /// End of each `Field` in `strings`, in declaration order.
    ends: [u32; FIELD_COUNT],
    /// The whole line, resourceVersion left out: `line[..head_len]` comes before it.
    line: Bytes,
    head_len: usize,
    /// End of the `metadata` object in the line (same in both forms: the truncated form
    /// cuts only after it).
    meta_end: usize,
    /// `None` when the event has no request/response objects to drop.
    truncation: Option<Box<Truncation>>,
    /// The event's Table cells, built on first need (a Table watch or LIST) and then
    /// shared, as the truncated form is.
    cells: OnceLock<Box<[u8]>>,
    /// `stageTimestamp` in microseconds since the epoch, if the event has a valid one:
    /// ingest measures the audit delay from it.
    stage_micros: Option<i64>,
}

/// How to make the truncated line from the full one, and the line once made.
#[derive(Debug)]
struct Truncation {
    /// Ranges of the full line left out (`,"requestObject":{…}`, …), in order.
    cut: [Range<usize>; 2],
    /// Then one edit of the annotations, after both cuts: replace this range with that.
    edit: (Range<usize>, &'static [u8]),
    len: usize,
    line: OnceLock<Bytes>,
}

impl Truncation {
    fn build(&self, full: &[u8]) -> Bytes {
        let mut out = Vec::with_capacity(self.len);
        let mut at = 0;
        for cut in &self.cut {
            out.extend_from_slice(&full[at..cut.start.max(at)]);
            at = at.max(cut.end);
        }
        let (range, with) = &self.edit;
        out.extend_from_slice(&full[at..range.start]);
        out.extend_from_slice(with);
        out.extend_from_slice(&full[range.end..]);
        debug_assert_eq!(out.len(), self.len);
        Bytes::from(out)
    }
}

impl Event {
    pub fn get(&self, field: Field) -> &str {
        let i = field as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.strings[start..self.ends[i] as usize]
    }

    pub fn audit_id(&self) -> &str {
        self.get(Field::AuditId)
    }

    /// `objectRef.namespace`; `None` for cluster-scoped and non-resource requests.
    pub fn namespace(&self) -> Option<&str> {
        Some(self.get(Field::Namespace)).filter(|ns| !ns.is_empty())
    }

    /// The line before and after the resourceVersion digits, full or truncated.
    pub fn parts(&self, truncated: bool) -> (&[u8], &[u8]) {
        let line: &[u8] = match (&self.truncation, truncated) {
            (Some(t), true) => t.line.get_or_init(|| t.build(&self.line)),
            _ => &self.line,
        };
        line.split_at(self.head_len)
    }

    /// The event object alone (as a LIST or GET returns it) before and after the
    /// resourceVersion digits: the line without the watch event around it.
    pub fn object_parts(&self, truncated: bool) -> (&[u8], &[u8]) {
        let (head, tail) = self.parts(truncated);
        (&head[OBJECT_START..], &tail[..tail.len() - LINE_END])
    }

    /// The event's `metadata` object before and after the resourceVersion digits.
    pub fn metadata_parts(&self) -> (&[u8], &[u8]) {
        let (head, tail) = self.parts(false);
        (&head[META_START..], &tail[..self.meta_end - self.head_len])
    }

    /// The Table cells of this event, built by `build` the first time they are asked for.
    pub fn cells(&self, build: impl FnOnce(&Event) -> Vec<u8>) -> &[u8] {
        self.cells.get_or_init(|| build(self).into_boxed_slice())
    }

    /// The event's `stageTimestamp`, in microseconds since the epoch.
    pub fn stage_timestamp_micros(&self) -> Option<i64> {
        self.stage_micros
    }

    /// Whether a truncated form smaller than the full one exists.
    pub fn can_truncate(&self) -> bool {
        self.truncation.is_some()
    }

    /// Bytes on the wire without the resourceVersion digits; known without building the
    /// truncated form.
    pub fn wire_len(&self, truncated: bool) -> usize {
        match (&self.truncation, truncated) {
            (Some(t), true) => t.len,
            _ => self.line.len(),
        }
    }

    /// What the event may hold in memory (the truncated form counted as if built), for
    /// the replay window's byte cap. Table cells, built only if a Table client asks, are
    /// left out: the value must not change between publish and eviction.
    pub fn memory_len(&self) -> usize {
        self.line.len() + self.strings.len() + self.truncation.as_ref().map_or(0, |t| t.len)
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
        match &self.truncation {
            Some(t) if t.len <= max_bytes => {
                let line = t.build(&self.line);
                Limited::Truncated(Event {
                    line,
                    truncation: None,
                    ..self
                })
            }
            _ => Limited::TooLarge {
                audit_id: self.audit_id().into(),
            },
        }
    }
}

/// Decode a webhook body (`audit.k8s.io/v1` or `v1beta1` `EventList`) into events ready
/// for the bus. `source` names the pushing apiserver; `now` (RFC 3339) stands in for an
/// event that carries no timestamp at all.
pub fn decode_event_list(body: &[u8], source: &str, now: &str) -> Result<Vec<Event>, DecodeError> {
    let ctx = Ctx {
        source,
        now,
        multiline: memchr::memchr2(b'\n', b'\r', body).is_some(),
        item_error: RefCell::new(None),
        scratch: RefCell::new(Scratch::default()),
    };
    // Checked once here, so that serde_json reads a `str` and checks no string again.
    let text = std::str::from_utf8(body)?;
    // Values are copied as raw text, which serde_json checks for syntax only; a string
    // escape that is half a surrogate pair would reach every watcher. kube-apiserver
    // never writes one (Go escapes bad UTF-8 as \ufffd), so the search is all it costs.
    if let Some(at) = lone_surrogate(text) {
        return Err(DecodeError::LoneSurrogate(at));
    }
    let mut de = serde_json::Deserializer::from_str(text);
    // `end`: nothing but whitespace may follow the list, as for any JSON reader
    // (kube-apiserver's too); without it a body with trailing garbage was taken.
    let envelope = match ListSeed(&ctx)
        .deserialize(&mut de)
        .and_then(|env| de.end().map(|()| env))
    {
        Ok(envelope) => envelope,
        Err(e) => return Err(ctx.item_error.take().unwrap_or(DecodeError::Json(e))),
    };
    let kind = envelope.kind.as_deref().unwrap_or_default();
    let api_version = envelope.api_version.as_deref().unwrap_or_default();
    if kind != "EventList" || !ACCEPTED_LIST_VERSIONS.contains(&api_version) {
        return Err(DecodeError::NotEventList {
            kind: kind.to_owned(),
            api_version: api_version.to_owned(),
        });
    }
    Ok(envelope.items)
}

/// The byte offset of the first `\uXXXX` escape that is half a surrogate pair without its
/// other half; `None` when there is none (at once when no `\u` is followed by `d`).
/// Written by hand: serde_json has no strict check that keeps the text as it is.
fn lone_surrogate(text: &str) -> Option<usize> {
    let b = text.as_bytes();
    let maybe =
        memchr::memmem::find_iter(b, br"\u").any(|i| matches!(b.get(i + 2), Some(b'd' | b'D')));
    if !maybe {
        return None;
    }
    let hex4 = |i: usize| -> Option<u16> {
        let s = text.get(i..i + 4)?;
        u16::from_str_radix(s, 16).ok()
    };
    let (mut i, mut in_string) = (0, false);
    while i < b.len() {
        match (in_string, b[i]) {
            (false, b'"') => in_string = true,
            (true, b'"') => in_string = false,
            (true, b'\\') if b.get(i + 1) == Some(&b'u') => {
                let unit = hex4(i + 2).unwrap_or(0);
                match unit {
                    0xD800..=0xDBFF => {
                        let low = (b.get(i + 6) == Some(&b'\\') && b.get(i + 7) == Some(&b'u'))
                            .then(|| hex4(i + 8))
                            .flatten();
                        if !matches!(low, Some(0xDC00..=0xDFFF)) {
                            return Some(i);
                        }
                        i += 12;
                        continue;
                    }
                    0xDC00..=0xDFFF => return Some(i),
                    _ => {
                        i += 6;
                        continue;
                    }
                }
            }
            // Any other escape is two bytes; skipping both keeps `\\` from starting one.
            (true, b'\\') => {
                i += 2;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// What a batch's decode shares: the push's constants, the first item error (serde only
/// carries strings, and an item error must not read as malformed JSON), and scratch
/// space reused by every item.
struct Ctx<'s> {
    source: &'s str,
    now: &'s str,
    /// Whether the body has a line break at all: only then may a value span lines.
    multiline: bool,
    item_error: RefCell<Option<DecodeError>>,
    scratch: RefCell<Scratch>,
}

#[derive(Default)]
struct Scratch {
    out: Vec<u8>,
    strings: String,
}

struct Envelope<'a> {
    kind: Option<Cow<'a, str>>,
    api_version: Option<Cow<'a, str>>,
    items: Vec<Event>,
}

struct ListSeed<'c, 's>(&'c Ctx<'s>);

impl<'de> DeserializeSeed<'de> for ListSeed<'_, '_> {
    type Value = Envelope<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ListSeed<'_, '_> {
    type Value = Envelope<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an audit EventList object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut env = Envelope {
            kind: None,
            api_version: None,
            items: Vec::new(),
        };
        let mut seen_items = false;
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            match &*key {
                "kind" => env.kind = map.next_value()?,
                "apiVersion" => env.api_version = map.next_value()?,
                "items" if seen_items => return Err(de::Error::duplicate_field("items")),
                "items" => {
                    seen_items = true;
                    if let Some(items) = map.next_value_seed(ItemsSeed(self.0))? {
                        env.items = items;
                    }
                }
                _ => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        Ok(env)
    }
}

/// `items`: `null` or an array, each element decoded as it is reached.
struct ItemsSeed<'c, 's>(&'c Ctx<'s>);

impl<'de> DeserializeSeed<'de> for ItemsSeed<'_, '_> {
    type Value = Option<Vec<Event>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for ItemsSeed<'_, '_> {
    type Value = Option<Vec<Event>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of audit Events")
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(64));
        // One item's members at a time, in one buffer for the whole batch.
        let mut members = Vec::with_capacity(32);
        let mut annotations = Vec::with_capacity(8);
        while let Some(is_object) = seq.next_element_seed(MembersSeed(&mut members))? {
            let index = out.len();
            if !is_object {
                return Err(self.fail(index, "expected an audit Event object".into()));
            }
            match decode_event(&members, &mut annotations, self.0) {
                Ok(ev) => out.push(ev),
                Err(reason) => return Err(self.fail(index, reason)),
            }
        }
        Ok(Some(out))
    }
}

impl ItemsSeed<'_, '_> {
    /// Keep the item's error for the caller; serde only needs to stop.
    fn fail<E: de::Error>(&self, index: usize, reason: String) -> E {
        *self.0.item_error.borrow_mut() = Some(DecodeError::Item { index, reason });
        E::custom("invalid item")
    }
}

/// One item's members in their order, values as raw text, into a reused buffer; `false`
/// when the item is not an object.
struct MembersSeed<'m, 'a>(&'m mut Vec<(Key<'a>, &'a RawValue)>);

impl<'de> DeserializeSeed<'de> for MembersSeed<'_, 'de> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        self.0.clear();
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for MembersSeed<'_, 'de> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an audit Event object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        while let Some(key) = map.next_key::<Key<'de>>()? {
            self.0.push((key, map.next_value::<&'de RawValue>()?));
        }
        Ok(true)
    }
    // Anything but an object is the item's error, not the body's.
    fn visit_bool<E>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_i64<E>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_u64<E>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_f64<E>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_str<E>(self, _: &str) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_unit<E>(self) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<de::IgnoredAny>()?.is_some() {}
        Ok(false)
    }
}

/// A map key borrowed from the body when it has no escapes (serde's own `Cow<str>`
/// always allocates).
#[derive(Debug)]
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

/// A string borrowed from the body when it has no escapes.
#[derive(Deserialize, Default)]
#[serde(transparent)]
struct Str<'a>(#[serde(borrow)] Cow<'a, str>);

#[derive(Deserialize, Default)]
struct UserRef<'a> {
    #[serde(borrow, default)]
    username: Option<Str<'a>>,
}

#[derive(Deserialize, Default)]
struct ObjectRef<'a> {
    #[serde(borrow, default)]
    namespace: Option<Str<'a>>,
    #[serde(borrow, default)]
    resource: Option<Str<'a>>,
    #[serde(borrow, default)]
    name: Option<Str<'a>>,
    #[serde(borrow, default, rename = "apiGroup")]
    api_group: Option<Str<'a>>,
}

#[derive(Deserialize, Default)]
struct ResponseStatus {
    #[serde(default)]
    code: Option<i64>,
}

/// Read a member's value as `T`; `None` for absent or `null`.
fn parse<'a, T: Deserialize<'a>>(
    key: &str,
    raw: Option<&'a RawValue>,
) -> Result<Option<T>, String> {
    match raw.map(RawValue::get) {
        None | Some("null") => Ok(None),
        Some(text) => serde_json::from_str(text)
            .map(Some)
            .map_err(|e| format!("{key}: {e}")),
    }
}

/// A string member. Most are plain (no escapes): read straight from the raw text.
fn string<'a>(key: &str, raw: Option<&'a RawValue>) -> Result<Cow<'a, str>, String> {
    if let Some(text) = raw.map(RawValue::get)
        && text.len() >= 2
        && text.starts_with('"')
        && !text.contains('\\')
    {
        return Ok(Cow::Borrowed(&text[1..text.len() - 1]));
    }
    Ok(parse::<Str<'a>>(key, raw)?.unwrap_or_default().0)
}

fn required<'a>(key: &str, raw: Option<&'a RawValue>) -> Result<Cow<'a, str>, String> {
    match string(key, raw)? {
        s if s.is_empty() => Err(format!("{key} is required")),
        s => Ok(s),
    }
}

/// The members an event's decoding reads, found in one walk over its members.
#[derive(Default)]
struct Known<'a> {
    kind: Option<&'a RawValue>,
    audit_id: Option<&'a RawValue>,
    stage: Option<&'a RawValue>,
    level: Option<&'a RawValue>,
    verb: Option<&'a RawValue>,
    user: Option<&'a RawValue>,
    object_ref: Option<&'a RawValue>,
    response_status: Option<&'a RawValue>,
    annotations: Option<&'a RawValue>,
    timestamps: [Option<&'a RawValue>; 3],
    has_bodies: bool,
    /// Which of `BODY_FIELDS` were seen.
    bodies_seen: [bool; 2],
}

impl<'a> Known<'a> {
    fn find(members: &[(Key<'a>, &'a RawValue)]) -> Result<Self, String> {
        let mut k = Known::default();
        for (Key(key), raw) in members {
            let slot = match &**key {
                "kind" => &mut k.kind,
                "auditID" => &mut k.audit_id,
                "stage" => &mut k.stage,
                "level" => &mut k.level,
                "verb" => &mut k.verb,
                "user" => &mut k.user,
                "objectRef" => &mut k.object_ref,
                "responseStatus" => &mut k.response_status,
                "annotations" => &mut k.annotations,
                "stageTimestamp" => &mut k.timestamps[0],
                "requestReceivedTimestamp" => &mut k.timestamps[1],
                "timestamp" => &mut k.timestamps[2],
                b if BODY_FIELDS.contains(&b) => {
                    // Twice, the truncated form would keep one copy: refused, as a
                    // routed field twice is.
                    let i = usize::from(b == BODY_FIELDS[1]);
                    if std::mem::replace(&mut k.bodies_seen[i], true) {
                        return Err(format!("duplicate field {key:?}"));
                    }
                    k.has_bodies |= raw.get() != "null";
                    continue;
                }
                _ => continue,
            };
            // Routed by one value and read by clients as another: refused.
            if slot.replace(raw).is_some() {
                return Err(format!("duplicate field {key:?}"));
            }
        }
        Ok(k)
    }
}

fn decode_event<'a>(
    members: &[(Key<'a>, &'a RawValue)],
    annotations: &mut Vec<(Str<'a>, Str<'a>)>,
    ctx: &Ctx<'_>,
) -> Result<Event, String> {
    let k = Known::find(members)?;
    let kind = string("kind", k.kind)?;
    if !kind.is_empty() && kind != "Event" {
        return Err(format!("kind must be \"Event\", got {kind:?}"));
    }
    let audit_id = required("auditID", k.audit_id)?;
    let stage = required("stage", k.stage)?;
    let level = required("level", k.level)?;
    let verb = string("verb", k.verb)?;
    let user: UserRef<'_> = parse("user", k.user)?.unwrap_or_default();
    let object_ref: ObjectRef<'_> = parse("objectRef", k.object_ref)?.unwrap_or_default();
    // Read only for selectors and tables: a malformed one is kept as sent, not refused.
    let code = parse::<ResponseStatus>("responseStatus", k.response_status)
        .ok()
        .flatten()
        .and_then(|s| s.code);
    annotations.clear();
    if let Some(text) = k.annotations.map(RawValue::get).filter(|t| *t != "null") {
        let mut de = serde_json::Deserializer::from_str(text);
        AnnotationsSeed(annotations)
            .deserialize(&mut de)
            .and_then(|()| de.end())
            .map_err(|e| format!("annotations: {e}"))?;
    }
    let stage_micros = string("stageTimestamp", k.timestamps[0])
        .ok()
        .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
        .map(|t| t.as_microsecond());
    let mut timestamp = Cow::Borrowed(ctx.now);
    for raw in k.timestamps {
        let t = string("timestamp", raw)?;
        if !t.is_empty() {
            timestamp = t;
            break;
        }
    }
    let namespace = object_ref.namespace.map(|s| s.0).unwrap_or_default();

    let mut scratch = ctx.scratch.borrow_mut();
    let Scratch { out, strings } = &mut *scratch;

    // The routing strings, one allocation.
    strings.clear();
    let mut ends = [0u32; FIELD_COUNT];
    let mut code_digits = itoa::Buffer::new();
    let code = code.map_or("", |c| code_digits.format(c));
    let fields: [&str; FIELD_COUNT] = [
        &audit_id,
        &stage,
        &level,
        &verb,
        user.username.as_ref().map_or("", |s| &s.0),
        &namespace,
        object_ref.resource.as_ref().map_or("", |s| &s.0),
        object_ref.name.as_ref().map_or("", |s| &s.0),
        object_ref.api_group.as_ref().map_or("", |s| &s.0),
        code,
    ];
    for (end, s) in ends.iter_mut().zip(fields) {
        strings.push_str(s);
        *end = u32::try_from(strings.len()).map_err(|_| "event too large".to_owned())?;
    }

    // The line.
    out.clear();
    write_head(out, &audit_id, &stage, &namespace);
    let head_len = out.len();
    out.extend_from_slice(br#"","creationTimestamp":"#);
    write_seconds(out, &timestamp);
    out.push(b'}');
    let meta_end = out.len();
    let mut cut = [0..0, 0..0];
    let mut cuts = 0;
    for (member, value) in members {
        let key = &*member.0;
        if matches!(key, "kind" | "apiVersion" | "metadata" | "annotations") {
            continue;
        }
        let start = out.len();
        out.push(b',');
        write_key(out, member);
        out.push(b':');
        write_raw(out, value, ctx.multiline);
        if k.has_bodies && BODY_FIELDS.contains(&key) {
            // Two body fields at most: `Known::find` refused a repeated one.
            if let Some(slot) = cut.get_mut(cuts) {
                *slot = start..out.len();
                cuts += 1;
            }
        }
    }

    // Annotations: ours set, sorted by key as Go's encoder writes a map; a repeated key
    // keeps its last value, as a map would.
    let ours = (!ctx.source.is_empty()).then_some(ctx.source);
    if ours.is_some() {
        annotations.retain(|(key, _)| key.0 != SOURCE_ANNOTATION);
    }
    annotations.sort_by(|a, b| a.0.0.cmp(&b.0.0));
    annotations.dedup_by(|later, earlier| {
        let same = later.0.0 == earlier.0.0;
        if same {
            std::mem::swap(later, earlier);
        }
        same
    });
    let split = ours.map_or(usize::MAX, |_| {
        annotations.partition_point(|(key, _)| &*key.0 < SOURCE_ANNOTATION)
    });
    let pairs = annotations.iter().map(|(k, v)| (&*k.0, &*v.0));
    let merged = pairs
        .clone()
        .take(split)
        .chain(ours.map(|source| (SOURCE_ANNOTATION, source)))
        .chain(pairs.skip(split));
    let mut edit = None;
    if annotations.is_empty() && ours.is_none() {
        let at = out.len();
        edit = Some((at..at, EDITS[1]));
    } else {
        out.extend_from_slice(br#","annotations":{"#);
        for (i, (key, value)) in merged.enumerate() {
            if i > 0 {
                out.push(b',');
            }
            if edit.is_none() && key > TRUNCATED_ANNOTATION {
                let at = out.len();
                edit = Some((at..at, EDITS[2]));
            }
            write_str(out, key);
            out.push(b':');
            let value_at = out.len();
            write_str(out, value);
            if key == TRUNCATED_ANNOTATION {
                // Pushed with a value of its own: the truncated form says "true".
                edit = Some((value_at..out.len(), EDITS[3]));
            }
        }
        if edit.is_none() {
            let at = out.len();
            edit = Some((at..at, EDITS[4]));
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"}}\n");

    let truncation = k.has_bodies.then(|| {
        let (range, with) = edit.unwrap_or((out.len()..out.len(), EDITS[0]));
        let cut_len: usize = cut.iter().map(|c| c.len()).sum();
        Box::new(Truncation {
            len: out.len() - cut_len - range.len() + with.len(),
            cut,
            edit: (range, with),
            line: OnceLock::new(),
        })
    });
    Ok(Event {
        strings: strings.as_str().into(),
        ends,
        // Copied out of the scratch buffer at its exact size: `Bytes` keeps its whole
        // allocation for as long as the event lives in the window.
        line: Bytes::copy_from_slice(out),
        head_len,
        meta_end,
        truncation,
        cells: OnceLock::new(),
        stage_micros,
    })
}

/// The line up to the resourceVersion's digits: made of three routing fields alone, so
/// that the shared stream need not carry it (`wire` makes it again on each replica).
fn write_head(out: &mut Vec<u8>, audit_id: &str, stage: &str, namespace: &str) {
    out.extend_from_slice(HEAD_PREFIX);
    out.push(b'"');
    write_str_content(out, audit_id);
    out.push(b'-');
    if plain(stage) {
        out.extend(stage.bytes().map(|b| b.to_ascii_lowercase()));
    } else {
        write_str_content(out, &stage.to_ascii_lowercase());
    }
    out.push(b'"');
    if !namespace.is_empty() {
        out.extend_from_slice(br#","namespace":"#);
        write_str(out, namespace);
    }
    out.extend_from_slice(br#","resourceVersion":""#);
}

/// `annotations`: a map of strings, read as pairs in their order into a reused buffer.
struct AnnotationsSeed<'v, 'a>(&'v mut Vec<(Str<'a>, Str<'a>)>);

impl<'de> DeserializeSeed<'de> for AnnotationsSeed<'_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for AnnotationsSeed<'_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map of strings")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(entry) = map.next_entry::<Str<'de>, Str<'de>>()? {
            self.0.push(entry);
        }
        Ok(())
    }
}

/// A member's key: one borrowed from the body had no escapes, so it goes out as it came.
fn write_key(out: &mut Vec<u8>, Key(key): &Key<'_>) {
    match key {
        Cow::Borrowed(k) => {
            out.push(b'"');
            out.extend_from_slice(k.as_bytes());
            out.push(b'"');
        }
        Cow::Owned(k) => write_str(out, k),
    }
}

/// Whether `s` can go between quotes as it is.
fn plain(s: &str) -> bool {
    !s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20)
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    write_str_content(out, s);
    out.push(b'"');
}

/// A string's escaped content, without the quotes.
fn write_str_content(out: &mut Vec<u8>, s: &str) {
    if plain(s) {
        out.extend_from_slice(s.as_bytes());
    } else {
        // serde_json writes the quotes too; keep what is between them. Writing a &str
        // into a Vec cannot fail.
        let at = out.len();
        let _ = serde_json::to_writer(&mut *out, s);
        out.pop();
        out.remove(at);
    }
}

/// Copy a raw value, compacted when it spans lines (a pretty-printed push): the watch
/// protocol is one object per line.
fn write_raw(out: &mut Vec<u8>, value: &RawValue, multiline: bool) {
    let text = value.get().as_bytes();
    if multiline && memchr::memchr2(b'\n', b'\r', text).is_some() {
        compact(out, text);
    } else {
        out.extend_from_slice(text);
    }
}

/// Copy validated JSON without the whitespace between tokens, every token byte for byte
/// (re-serialising through `serde_json::Value` would reorder keys and rewrite numbers).
/// Written here because it is a dozen lines on text serde_json has already validated.
fn compact(out: &mut Vec<u8>, text: &[u8]) {
    let (mut in_string, mut escaped) = (false, false);
    for &b in text {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            out.push(b);
            in_string = b == b'"';
        }
    }
}

/// `metav1.Time` has second precision; audit timestamps are `MicroTime`: write `ts`
/// as a JSON string without its fraction of a second.
fn write_seconds(out: &mut Vec<u8>, ts: &str) {
    out.push(b'"');
    match ts.find('.') {
        Some(dot) => {
            let frac_end = ts[dot + 1..]
                .find(|c: char| !c.is_ascii_digit())
                .map_or(ts.len(), |i| dot + 1 + i);
            write_str_content(out, &ts[..dot]);
            write_str_content(out, &ts[frac_end..]);
        }
        None => write_str_content(out, ts),
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2026-01-01T00:00:00Z";

    fn line(ev: &Event, rv: u64, truncated: bool) -> serde_json::Value {
        let (head, tail) = ev.parts(truncated);
        let mut b = head.to_vec();
        b.extend_from_slice(rv.to_string().as_bytes());
        b.extend_from_slice(tail);
        assert_eq!(b.len(), ev.wire_len(truncated) + rv.to_string().len());
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
            let evs = decode_event_list(list(&items).as_bytes(), "src", NOW).unwrap();
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
}
