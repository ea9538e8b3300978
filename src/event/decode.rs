//! Decoding a webhook `EventList` in one pass: each item's members are taken as raw text
//! (validated as they are skipped), the routing fields read from that text, and the line
//! written by copying each value once (`json` writes it).

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;
use std::sync::OnceLock;

use bytes::Bytes;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::fields::{
    Code, EVENT_FIELDS, Fields, FieldsError, Key, MembersSeed, OBJECT_REF_FIELDS,
    RESPONSE_STATUS_FIELDS, Str, USER_FIELDS, case_variant_error, case_variant_of,
};
use super::json::{write_raw, write_seconds, write_str, write_text};
use super::truncate::{Edit, Truncation};
use super::*;

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

/// Decode a webhook body (`audit.k8s.io/v1` or `v1beta1` `EventList`) into events ready
/// for the bus, every redaction rule on (the server's default). `source` names the pushing
/// apiserver; `now` (RFC 3339) stands in for an event that carries no timestamp at all.
pub fn decode_event_list(body: &[u8], source: &str, now: &str) -> Result<Vec<Event>, DecodeError> {
    decode_event_list_with(body, source, now, &Redaction::default())
}

/// `decode_event_list` with these redaction rules (`--redact`, `--redaction-key-file`).
pub fn decode_event_list_with(
    body: &[u8],
    source: &str,
    now: &str,
    redaction: &Redaction,
) -> Result<Vec<Event>, DecodeError> {
    let ctx = Ctx {
        source,
        now,
        redaction,
        multiline: memchr::memchr2(b'\n', b'\r', body).is_some(),
        item_error: RefCell::new(None),
        shared_lines: body.len() <= SHARED_LINES_BODY_MAX,
        // The batch's lines: Metadata lines are ~1.3 × their pushed text (the head and
        // our annotations added), so this is rarely grown.
        scratch: RefCell::new(Scratch {
            lines: Vec::with_capacity(if body.len() <= SHARED_LINES_BODY_MAX {
                body.len() + body.len() / 2
            } else {
                0
            }),
            strings: String::new(),
        }),
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
    let mut lines = ctx.scratch.into_inner().lines;
    // Held as long as one of the batch's events is (the window evicts in order, so about
    // one batch more than the window counts): no spare capacity kept with it.
    lines.shrink_to_fit();
    let lines = Bytes::from(lines);
    let mut events = envelope.items;
    for (event, range) in &mut events {
        if let Some(range) = range.take() {
            event.line = lines.slice(range);
        }
    }
    Ok(events.into_iter().map(|(event, _)| event).collect())
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
    redaction: &'s Redaction,
    /// Whether the body has a line break at all: only then may a value span lines.
    multiline: bool,
    item_error: RefCell<Option<DecodeError>>,
    /// Whether lines stay in the batch's buffer (`SHARED_LINES_BODY_MAX`).
    shared_lines: bool,
    scratch: RefCell<Scratch>,
}

/// Lines up to this size are written straight into the batch's buffer and sliced from
/// it; a larger one is copied out into its own, so that a big event (one that
/// `--max-event-bytes` truncates, or a rare huge body) never keeps a batch's buffer alive.
const SHARED_LINE_MAX: usize = 64 * 1024;
/// Bodies up to this size have their lines in one buffer. A larger body's buffer (1.5 × a
/// 2 MB body) was fresh memory on each batch: its page faults and the shrink's copy cost
/// more than the copies it saved (the mixed fixture's bench 25 % slower), so each of its
/// lines is copied out of the scratch buffer as before.
const SHARED_LINES_BODY_MAX: usize = 256 * 1024;

struct Scratch {
    /// Every line of the batch, back to back (a larger one only while it is written).
    lines: Vec<u8>,
    strings: String,
}

/// A decoded item: its line is `Scratch::lines[range]` until the batch is done, when the
/// line becomes a slice of that buffer; `None` when the event has its line already.
type Item = (Event, Option<std::ops::Range<usize>>);

struct Envelope<'a> {
    kind: Option<Cow<'a, str>>,
    api_version: Option<Cow<'a, str>>,
    items: Vec<Item>,
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
    type Value = Option<Vec<Item>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for ItemsSeed<'_, '_> {
    type Value = Option<Vec<Item>>;
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
                Ok(item) => out.push(item),
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
                // The other members of an Event, exactly so: nothing to fold.
                "apiVersion" | "metadata" | "requestURI" | "sourceIPs" | "userAgent"
                | "impersonatedUser" => continue,
                other => match case_variant_of(other, &EVENT_FIELDS) {
                    Some(name) => return Err(case_variant_error(other, name)),
                    None => continue,
                },
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
) -> Result<Item, String> {
    let k = Known::find(members)?;
    let kind = string("kind", k.kind)?;
    if !kind.is_empty() && kind != "Event" {
        return Err(format!("kind must be \"Event\", got {kind:?}"));
    }
    let audit_id = required("auditID", k.audit_id)?;
    let stage = required("stage", k.stage)?;
    let level = required("level", k.level)?;
    let verb = string("verb", k.verb)?;
    let user: Fields<Option<Str<'_>>, 1> =
        Fields::read("user", &USER_FIELDS, k.user).map_err(String::from)?;
    let object_ref: Fields<Option<Str<'_>>, 5> =
        Fields::read("objectRef", &OBJECT_REF_FIELDS, k.object_ref).map_err(String::from)?;
    let (resource, name, api_group) = (
        object_ref.str("resource"),
        object_ref.str("name"),
        object_ref.str("apiGroup"),
    );
    let mut namespace = object_ref
        .get("namespace")
        .and_then(Option::as_ref)
        .map_or(Cow::Borrowed(""), |s| s.0.clone());
    // Read only for selectors and tables: a malformed one (not an object, a code that is
    // not an integer) is kept as sent, not refused; an ambiguous one (`code` twice, or
    // as `Code` too) is refused, as every field the server reads.
    let status: Result<Fields<Code, 1>, _> =
        Fields::read("responseStatus", &RESPONSE_STATUS_FIELDS, k.response_status);
    let code = match status {
        Ok(status) => status.get("code").and_then(|c| c.0),
        Err(FieldsError::Ambiguous(why)) => return Err(why),
        Err(FieldsError::Malformed(_)) => None,
    };
    annotations.clear();
    if let Some(text) = k.annotations.map(RawValue::get).filter(|t| *t != "null") {
        let mut de = serde_json::Deserializer::from_str(text);
        AnnotationsSeed(annotations)
            .deserialize(&mut de)
            .and_then(|()| de.end())
            .map_err(|e| format!("annotations: {e}"))?;
    }
    // An absent or empty one is not parsed: a failed parse builds (and frees) an error,
    // which was 2 % of ingest for events without the field (v1beta1's, profiled).
    let stage_micros = string("stageTimestamp", k.timestamps[0])
        .ok()
        .filter(|t| !t.is_empty())
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
    // kube-apiserver records a namespace's create with its name and no namespace (its
    // get, patch and delete carry both): served in that namespace too, so that its owners
    // can see who created it.
    if namespace.is_empty() && api_group.is_empty() && resource == "namespaces" {
        namespace = Cow::Borrowed(name);
    }

    let mut scratch = ctx.scratch.borrow_mut();
    let Scratch {
        lines: out,
        strings,
    } = &mut *scratch;

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
        user.str("username"),
        &namespace,
        resource,
        name,
        api_group,
        code,
    ];
    for (end, s) in ends.iter_mut().zip(fields) {
        strings.push_str(s);
        *end = u32::try_from(strings.len()).map_err(|_| "event too large".to_owned())?;
    }

    // The line, after the batch's earlier ones: offsets below are from `base` on.
    let base = out.len();
    write_head(out, &audit_id, &stage, &namespace);
    let head_len = out.len() - base;
    out.extend_from_slice(br#"","creationTimestamp":"#);
    write_seconds(out, &timestamp);
    out.push(b'}');
    let meta_end = out.len() - base;
    let mut cut = [0..0, 0..0];
    let mut cuts = 0;
    let mut redacted = Rules::default();
    // Read only for an event with bodies to redact (`serviceaccounts/token`): a Metadata
    // event does not pay for the field.
    let subresource = if k.has_bodies && !ctx.redaction.is_off() {
        object_ref.str("subresource")
    } else {
        ""
    };
    let target = Target {
        api_group,
        resource,
        subresource,
    };
    for (member, value) in members {
        let key = &*member.0;
        if matches!(key, "kind" | "apiVersion" | "metadata" | "annotations") {
            continue;
        }
        let start = out.len();
        out.push(b',');
        write_key(out, member);
        out.push(b':');
        let body = k.has_bodies && BODY_FIELDS.contains(&key);
        match body.then(|| ctx.redaction.body(target, value)).flatten() {
            Some((text, rules)) => {
                redacted = redacted.with_all(rules);
                write_text(out, &text, ctx.multiline);
            }
            None => write_raw(out, value, ctx.multiline),
        }
        if body {
            // Two body fields at most: `Known::find` refused a repeated one.
            if let Some(slot) = cut.get_mut(cuts) {
                *slot = start - base..out.len() - base;
                cuts += 1;
            }
        }
    }

    // Annotations: ours set, sorted by key as Go's encoder writes a map; a repeated key
    // keeps its last value, as a map would. A pushed `redacted` is never kept: only this
    // server says what it redacted.
    let redacted_pair = (!redacted.is_empty()).then_some((REDACTED_ANNOTATION, "true"));
    let source_pair = (!ctx.source.is_empty()).then_some((SOURCE_ANNOTATION, ctx.source));
    annotations.retain(|(key, _)| {
        key.0 != REDACTED_ANNOTATION && (source_pair.is_none() || key.0 != SOURCE_ANNOTATION)
    });
    annotations.sort_by(|a, b| a.0.0.cmp(&b.0.0));
    annotations.dedup_by(|later, earlier| {
        let same = later.0.0 == earlier.0.0;
        if same {
            std::mem::swap(later, earlier);
        }
        same
    });
    // Ours go where they sort (`redacted` < `source`): no allocation, per event.
    let before = |ours: Option<_>, key: &str| {
        ours.map_or(0, |_| annotations.partition_point(|(k, _)| &*k.0 < key))
    };
    let before_redacted = before(redacted_pair, REDACTED_ANNOTATION);
    let before_source = before(source_pair, SOURCE_ANNOTATION).max(before_redacted);
    let pairs = annotations.iter().map(|(k, v)| (&*k.0, &*v.0));
    let merged = pairs
        .clone()
        .take(before_redacted)
        .chain(redacted_pair)
        .chain(pairs.clone().take(before_source).skip(before_redacted))
        .chain(source_pair)
        .chain(pairs.skip(before_source));
    let ours_empty = redacted_pair.is_none() && source_pair.is_none();
    let mut edit = None;
    if annotations.is_empty() && ours_empty {
        let at = out.len() - base;
        edit = Some((at..at, Edit::AddAnnotations));
    } else {
        out.extend_from_slice(br#","annotations":{"#);
        for (i, (key, value)) in merged.enumerate() {
            if i > 0 {
                out.push(b',');
            }
            if edit.is_none() && key > TRUNCATED_ANNOTATION {
                let at = out.len() - base;
                edit = Some((at..at, Edit::InsertBefore));
            }
            write_str(out, key);
            out.push(b':');
            let value_at = out.len() - base;
            write_str(out, value);
            if key == TRUNCATED_ANNOTATION {
                // Pushed with a value of its own: the truncated form says "true".
                edit = Some((value_at..out.len() - base, Edit::ReplaceValue));
            }
        }
        if edit.is_none() {
            let at = out.len() - base;
            edit = Some((at..at, Edit::Append));
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"}}\n");
    let line_len = out.len() - base;

    let truncation = k.has_bodies.then(|| {
        let (range, with) = edit.unwrap_or((line_len..line_len, Edit::Nothing));
        let cut_len: usize = cut.iter().map(|c| c.len()).sum();
        Box::new(Truncation {
            len: line_len - cut_len - range.len() + with.bytes().len(),
            cut,
            edit: (range, with),
            line: OnceLock::new(),
        })
    });
    // Most lines stay where they were written (a slice of the batch's buffer once it is
    // done): copying each out was 3 % (Metadata) to 5 % (mixed) of ingest, profiled.
    let (line, range) = if !ctx.shared_lines || line_len > SHARED_LINE_MAX {
        let line = Bytes::copy_from_slice(&out[base..]);
        out.truncate(base);
        (line, None)
    } else {
        (Bytes::new(), Some(base..base + line_len))
    };
    let event = Event {
        strings: strings.as_str().into(),
        ends,
        line,
        head_len,
        meta_end,
        truncation,
        cells: OnceLock::new(),
        stage_micros,
        redacted,
    };
    Ok((event, range))
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
