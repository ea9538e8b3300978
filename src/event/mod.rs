//! An audit `Event` on its way through the server: decoded from a webhook `EventList` in
//! one pass, and serialised once into the watch line every watcher shares. Knows nothing
//! of HTTP, of the bus or of who may watch.
//!
//! The decoder walks the body once with serde_json: each item's members are taken as raw
//! text (validated as they are skipped), the routing fields read from that text, and the
//! line written by copying each value once, straight into one buffer for the batch's lines
//! that each line is then a slice of. Per event it makes one allocation that lives on (the
//! routing strings) and reuses its scratch space across a batch.
//!
//! The line is `head`, a hole for the resourceVersion, then `tail`: the bus assigns that
//! number under its lock, and serialising there would hold the lock for the whole encode.
//! The truncated form (no request/response objects, as kube-apiserver's truncate backend
//! makes it) is described by a few byte ranges at decode time and built from the full
//! line only when a watcher first needs it, then shared.
//!
//! Here: the model (`Event`, `Field`, the API's names). `decode`: the `EventList` reader;
//! `fields`: reading members by name as Go readers do (case variants refused), as raw text
//! borrowed from the body.
//! `json`: the line's writer. `truncate`: the truncated form and `--max-event-bytes`.
//! `wire`: an event as a record of the shared stream (`--bus=nats`).

use std::sync::OnceLock;

use bytes::Bytes;

mod decode;
mod fields;
mod json;
mod redact;
#[cfg(test)]
mod tests;
mod truncate;
mod wire;

pub use decode::{DecodeError, decode_event_list, decode_event_list_with};
use json::write_head;
pub use redact::{REDACTED_ANNOTATION, Redaction, Rule, Rules, Target};
pub use truncate::Limited;
use truncate::{Edit, Truncation};
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
/// Fields the truncated form leaves out (k8s.io/apiserver/plugin/pkg/audit/truncate).
const BODY_FIELDS: [&str; 2] = ["requestObject", "responseObject"];
const HEAD_PREFIX: &[u8] = br#"{"type":"ADDED","object":{"kind":"Event","apiVersion":"audit.k8s.io/v1alpha1","metadata":{"name":"#;
/// Where the event object starts in the line.
const OBJECT_START: usize = br#"{"type":"ADDED","object":"#.len();
/// Where the `metadata` object starts in the line: at its `{`, before `"name":`.
const META_START: usize = HEAD_PREFIX.len() - br#"{"name":"#.len();
/// What follows the event object on its line: the watch event's `}` and the newline.
const LINE_END: usize = 2;

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

impl Field {
    /// Every field, in declaration order: `ALL[f as usize] == f` (a unit test holds it).
    pub const ALL: [Field; 10] = [
        Field::AuditId,
        Field::Stage,
        Field::Level,
        Field::Verb,
        Field::Username,
        Field::Namespace,
        Field::Resource,
        Field::Name,
        Field::ApiGroup,
        Field::Code,
    ];
}

const FIELD_COUNT: usize = Field::ALL.len();

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
    /// The redaction rules that replaced something in this event, for ingest's metrics
    /// (the line says it in its `audit.k8s.io/redacted` annotation).
    redacted: Rules,
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

    /// The redaction rules that replaced something in this event at ingest.
    pub fn redacted(&self) -> Rules {
        self.redacted
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

    /// `object_parts`' bytes without the resourceVersion digits; known without building
    /// the truncated form.
    pub fn object_len(&self, truncated: bool) -> usize {
        self.wire_len(truncated) - OBJECT_START - LINE_END
    }

    /// What the event may hold in memory (the truncated form counted as if built), for
    /// the replay window's byte cap. Table cells, built only if a Table client asks, are
    /// left out: the value must not change between publish and eviction.
    pub fn memory_len(&self) -> usize {
        self.line.len() + self.strings.len() + self.truncation.as_ref().map_or(0, |t| t.len)
    }
}
