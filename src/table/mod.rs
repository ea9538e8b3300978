//! Server-side printing: the `meta.k8s.io` `Table` that kubectl asks for with
//! `Accept: application/json;as=Table;v=v1;g=meta.k8s.io` (or `v1beta1`), for LIST, GET
//! and WATCH, as kube-apiserver builds it for a built-in resource.
//!
//! An event's cells are read from its object once, on first need, and kept with the
//! event (as its truncated form is), so a Table watch costs every watcher a copy, not a
//! parse. Rows and tables are glued around those bytes and the event's own; the only
//! JSON encoded per request is the request's own (resourceVersion, continue token).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::SystemTime;

use bytes::BufMut;
use serde::{Deserialize, Serialize};

use crate::bus::Published;
use crate::event::{Event, SOURCE_ANNOTATION};
use crate::status::ApiError;

/// The group/version of the Table a client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    /// What kubectl before 1.21 asks for; the same shape under another name.
    V1beta1,
}

impl Version {
    pub fn api_version(self) -> &'static str {
        match self {
            Version::V1 => "meta.k8s.io/v1",
            Version::V1beta1 => "meta.k8s.io/v1beta1",
        }
    }
}

/// Read the `Accept` header as kube-apiserver negotiates it for a resource: the first
/// media range we can serve wins, `Some` for a Table. We serve JSON only (no YAML or
/// protobuf) and no `PartialObjectMetadata`; a header naming nothing we serve is a 406.
pub fn negotiate(accept: Option<&str>) -> Result<Option<Version>, ApiError> {
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return Ok(None);
    };
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        if !matches!(media.as_str(), "application/json" | "application/*" | "*/*") {
            continue;
        }
        let (mut as_, mut g, mut v) = ("", "", "");
        for param in parts {
            match param.split_once('=') {
                Some(("as", x)) => as_ = x,
                Some(("g", x)) => g = x,
                Some(("v", x)) => v = x,
                _ => {}
            }
        }
        match (as_, g, v) {
            ("", _, _) => return Ok(None),
            ("Table", "meta.k8s.io", "v1") => return Ok(Some(Version::V1)),
            ("Table", "meta.k8s.io", "v1beta1") => return Ok(Some(Version::V1beta1)),
            _ => {}
        }
    }
    Err(ApiError::NotAcceptable(
        "only the following media types are accepted: application/json, application/json;as=Table;v=v1;g=meta.k8s.io, application/json;as=Table;v=v1beta1;g=meta.k8s.io".into(),
    ))
}

/// `includeObject`: what each row carries besides its cells.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    /// kube-apiserver's default: the object's metadata as `PartialObjectMetadata`
    /// (kubectl reads the namespace of `--all-namespaces` rows from it).
    #[default]
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(value: &str) -> Result<Self, ApiError> {
        match value {
            "None" => Ok(IncludeObject::None),
            "" | "Metadata" => Ok(IncludeObject::Metadata),
            "Object" => Ok(IncludeObject::Object),
            other => Err(ApiError::BadRequest(format!(
                "unrecognized includeObject value: {}",
                crate::status::go_quote(other)
            ))),
        }
    }
}

/// A Table response: its version and what rows include.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    pub version: Version,
    pub include: IncludeObject,
}

/// One column; `priority` above 0 is shown by `kubectl -o wide` only.
#[derive(Serialize)]
pub struct Column {
    name: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    format: &'static str,
    description: &'static str,
    priority: u8,
}

/// A string column.
pub const fn column(name: &'static str, description: &'static str, priority: u8) -> Column {
    Column {
        name,
        kind: "string",
        format: "",
        description,
        priority,
    }
}

/// An integer column.
pub const fn integer_column(name: &'static str, description: &'static str, priority: u8) -> Column {
    Column {
        kind: "integer",
        ..column(name, description, priority)
    }
}

/// The column of the object's name, as kube-apiserver marks it (`format: name`).
pub const fn name_column(name: &'static str, description: &'static str) -> Column {
    Column {
        format: "name",
        ..column(name, description, 0)
    }
}

/// A `columnDefinitions` array.
pub fn column_definitions(columns: &[Column]) -> Vec<u8> {
    serde_json::to_vec(columns).unwrap_or_else(|_| b"[]".to_vec())
}

/// How long ago, as kubectl and kube-apiserver's printers write an age
/// (k8s.io/apimachinery's `duration.HumanDuration`): "45s", "5m10s", "3h", "12d".
pub fn human_duration(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    if secs < 120 {
        return format!("{secs}s");
    }
    let minutes = secs / 60;
    if minutes < 10 {
        return match secs % 60 {
            0 => format!("{minutes}m"),
            s => format!("{minutes}m{s}s"),
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        return match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        return match hours % 24 {
            0 => format!("{}d", hours / 24),
            h => format!("{}d{h}h", hours / 24),
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        return match (hours / 24) % 365 {
            0 => format!("{}y", hours / 24 / 365),
            d => format!("{}y{d}d", hours / 24 / 365),
        };
    }
    format!("{}y", hours / 24 / 365)
}

/// A row of a Table built from JSON values: a resource of a few dozen objects
/// (`sources`), encoded per request rather than kept with each object.
pub struct ValueRow<'a> {
    pub cells: serde_json::Value,
    pub object: &'a serde_json::Value,
}

/// The columns, in the order of each row's cells.
const COLUMNS: [Column; 13] = [
    column(
        "Time",
        "stageTimestamp: when the event's stage was reached.",
        0,
    ),
    column("Source", "The kube-apiserver that sent the event.", 0),
    column("User", "user.username: who made the request.", 0),
    column("Verb", "The request's verb.", 0),
    column(
        "Resource",
        "objectRef.resource (and /subresource); the request URI for non-resource requests.",
        0,
    ),
    column("Namespace", "objectRef.namespace.", 0),
    column("Name", "objectRef.name.", 0),
    Column {
        kind: "integer",
        ..column("Code", "responseStatus.code: the HTTP status answered.", 0)
    },
    column("Stage", "The request's stage.", 0),
    column(
        "Latency",
        "From requestReceivedTimestamp to stageTimestamp.",
        1,
    ),
    column("Source IPs", "sourceIPs: where the request came from.", 1),
    column("User Agent", "userAgent.", 1),
    column(
        "Event",
        "metadata.name of the event: what `kubectl get` takes.",
        1,
    ),
];

/// The `columnDefinitions` array, encoded once.
static COLUMN_DEFINITIONS: LazyLock<Vec<u8>> =
    LazyLock::new(|| serde_json::to_vec(&COLUMNS).unwrap_or_else(|_| b"[]".to_vec()));

/// The fields of an event object the cells read.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Source<'a> {
    #[serde(borrow)]
    stage_timestamp: Option<Cow<'a, str>>,
    /// `audit.k8s.io/v1beta1`'s name for it.
    #[serde(borrow)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(borrow)]
    request_received_timestamp: Option<Cow<'a, str>>,
    #[serde(rename = "requestURI", borrow)]
    request_uri: Option<Cow<'a, str>>,
    #[serde(rename = "sourceIPs", borrow)]
    source_ips: Option<Vec<Cow<'a, str>>>,
    #[serde(borrow)]
    user_agent: Option<Cow<'a, str>>,
    #[serde(borrow)]
    object_ref: Option<ObjectRef<'a>>,
    #[serde(borrow)]
    annotations: Option<BTreeMap<Cow<'a, str>, Cow<'a, str>>>,
    metadata: Option<Metadata<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ObjectRef<'a> {
    #[serde(borrow)]
    subresource: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Metadata<'a> {
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    creation_timestamp: Option<Cow<'a, str>>,
}

/// The cells of `ev`: encoded once per event and kept with it.
pub fn cells(ev: &Event) -> &[u8] {
    ev.cells(build_cells)
}

fn build_cells(ev: &Event) -> Vec<u8> {
    use crate::event::Field;
    let (head, tail) = ev.object_parts(false);
    let mut object = Vec::with_capacity(head.len() + 1 + tail.len());
    object.extend_from_slice(head);
    object.push(b'0');
    object.extend_from_slice(tail);
    // The object was validated at ingest; a failure here can only leave cells empty.
    let src: Source<'_> = serde_json::from_slice(&object).unwrap_or_default();

    let resource = match (ev.get(Field::Resource), src.object_ref.as_ref()) {
        ("", _) => src.request_uri.as_deref().unwrap_or_default().to_owned(),
        (
            r,
            Some(ObjectRef {
                subresource: Some(sub),
            }),
        ) if !sub.is_empty() => {
            format!("{r}/{sub}")
        }
        (r, _) => r.to_owned(),
    };
    let code: Option<i64> = ev.get(Field::Code).parse().ok();
    let latency = match (&src.request_received_timestamp, &src.stage_timestamp) {
        (Some(from), Some(to)) => latency(from, to).unwrap_or_default(),
        _ => String::new(),
    };
    let source = src
        .annotations
        .as_ref()
        .and_then(|a| a.get(SOURCE_ANNOTATION))
        .map_or("", |s| s);
    let metadata = src.metadata.unwrap_or_default();
    // The stage's time; else the older name for it; else the time the event was taken in.
    let time = [
        &src.stage_timestamp,
        &src.timestamp,
        &metadata.creation_timestamp,
    ]
    .into_iter()
    .find_map(|t| t.as_deref())
    .unwrap_or_default();
    let cells = serde_json::json!([
        time,
        source,
        ev.get(Field::Username),
        ev.get(Field::Verb),
        resource,
        ev.get(Field::Namespace),
        ev.get(Field::Name),
        code,
        ev.get(Field::Stage),
        latency,
        src.source_ips.unwrap_or_default().join(","),
        src.user_agent.as_deref().unwrap_or_default(),
        metadata.name.as_deref().unwrap_or_default(),
    ]);
    serde_json::to_vec(&cells).unwrap_or_else(|_| b"[]".to_vec())
}

/// The time between two RFC 3339 timestamps, in the unit that reads best.
pub fn latency(from: &str, to: &str) -> Option<String> {
    let parse = |s: &str| humantime::parse_rfc3339_weak(s.trim_end_matches('Z')).ok();
    let (from, to): (SystemTime, SystemTime) = (parse(from)?, parse(to)?);
    let d = to.duration_since(from).ok()?;
    Some(if d.as_millis() < 1 {
        format!("{}µs", d.as_micros())
    } else if d.as_secs() < 1 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.3}s", d.as_secs_f64())
    })
}

/// What closes a Table after its last row.
pub const TABLE_TAIL: &[u8] = b"]}";

/// Where a Table starts: kind, apiVersion and the opening of its metadata.
fn open(out: &mut impl BufMut, version: Version) {
    out.put_slice(br#"{"kind":"Table","apiVersion":""#);
    out.put_slice(version.api_version().as_bytes());
    out.put_slice(br#"","metadata":{"resourceVersion":""#);
}

impl Format {
    /// A whole Table: a row for each of `items`, metadata from the rest.
    pub fn write_table(
        &self,
        out: &mut Vec<u8>,
        resource_version: u64,
        continue_token: Option<&str>,
        headers: bool,
        items: &[std::sync::Arc<Published>],
    ) {
        self.write_table_head(out, resource_version, continue_token, headers);
        for (i, p) in items.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            self.write_row(out, p, false);
        }
        out.extend_from_slice(TABLE_TAIL);
    }

    /// A Table up to its first row, for a writer that adds the rows (`write_row`, a comma
    /// between two) and then `TABLE_TAIL` as its client reads.
    pub fn write_table_head(
        &self,
        out: &mut Vec<u8>,
        resource_version: u64,
        continue_token: Option<&str>,
        headers: bool,
    ) {
        open(out, self.version);
        out.extend_from_slice(itoa::Buffer::new().format(resource_version).as_bytes());
        out.push(b'"');
        if let Some(token) = continue_token {
            out.extend_from_slice(br#","continue":"#);
            out.extend_from_slice(&serde_json::to_vec(token).unwrap_or_default());
        }
        out.extend_from_slice(br#"},"columnDefinitions":"#);
        if headers {
            out.extend_from_slice(&COLUMN_DEFINITIONS);
        } else {
            out.extend_from_slice(b"[]");
        }
        out.extend_from_slice(br#","rows":["#);
    }

    /// One row: the cells and, as `includeObject` asks, the object or its metadata.
    pub fn write_row(&self, out: &mut impl BufMut, p: &Published, truncated: bool) {
        out.put_slice(br#"{"cells":"#);
        out.put_slice(cells(&p.event));
        let (head, tail) = match self.include {
            IncludeObject::None => {
                out.put_u8(b'}');
                return;
            }
            IncludeObject::Metadata => {
                out.put_slice(br#","object":{"kind":"PartialObjectMetadata","apiVersion":""#);
                out.put_slice(self.version.api_version().as_bytes());
                out.put_slice(br#"","metadata":"#);
                p.event.metadata_parts()
            }
            IncludeObject::Object => {
                out.put_slice(br#","object":"#);
                p.event.object_parts(truncated)
            }
        };
        out.put_slice(head);
        out.put_slice(p.digits());
        out.put_slice(tail);
        if self.include == IncludeObject::Metadata {
            out.put_u8(b'}');
        }
        out.put_u8(b'}');
    }

    /// The length `write_row` writes, known before writing (the budget needs it).
    pub fn row_len(&self, p: &Published, truncated: bool) -> usize {
        let digits = p.digits().len();
        let base = r#"{"cells":"#.len() + cells(&p.event).len() + 1;
        match self.include {
            IncludeObject::None => base,
            IncludeObject::Metadata => {
                let (head, tail) = p.event.metadata_parts();
                base + r#","object":{"kind":"PartialObjectMetadata","apiVersion":""#.len()
                    + self.version.api_version().len()
                    + r#"","metadata":"#.len()
                    + head.len()
                    + digits
                    + tail.len()
                    + 1
            }
            IncludeObject::Object => base + r#","object":"#.len() + p.object_len(truncated),
        }
    }

    /// A watch line whose object is a one-row Table, with the column definitions only
    /// when `headers` (kube-apiserver sends them with the first event of a watch only).
    pub fn write_watch_line(
        &self,
        out: &mut impl BufMut,
        p: &Published,
        truncated: bool,
        headers: bool,
    ) {
        out.put_slice(br#"{"type":"ADDED","object":"#);
        open(out, self.version);
        out.put_slice(p.digits());
        out.put_slice(br#""},"columnDefinitions":"#);
        out.put_slice(if headers {
            &COLUMN_DEFINITIONS
        } else {
            &b"[]"[..]
        });
        out.put_slice(br#","rows":["#);
        self.write_row(out, p, truncated);
        out.put_slice(b"]}}\n");
    }

    /// The length `write_watch_line` writes.
    pub fn watch_line_len(&self, p: &Published, truncated: bool, headers: bool) -> usize {
        r#"{"type":"ADDED","object":"#.len()
            + r#"{"kind":"Table","apiVersion":""#.len()
            + self.version.api_version().len()
            + r#"","metadata":{"resourceVersion":""#.len()
            + p.digits().len()
            + r#""},"columnDefinitions":"#.len()
            + if headers { COLUMN_DEFINITIONS.len() } else { 2 }
            + r#","rows":["#.len()
            + self.row_len(p, truncated)
            + "]}}\n".len()
    }

    /// A bookmark as a Table without rows, at `resource_version`: for a Table watch of
    /// `sources`, whose rows are not events and whose bookmarks carry no drop count.
    pub fn bookmark_without_rows(&self, resource_version: u64) -> Vec<u8> {
        let mut out = br#"{"type":"BOOKMARK","object":"#.to_vec();
        open(&mut out, self.version);
        out.extend_from_slice(itoa::Buffer::new().format(resource_version).as_bytes());
        out.extend_from_slice(br#""},"columnDefinitions":[],"rows":[]}}"#);
        out.push(b'\n');
        out
    }

    /// A bookmark of a Table watch, in kube-apiserver's shape: its watch handler prints
    /// the bookmark object as every other (`asTable`), so the Table has one row, whose
    /// object is the bookmark's metadata (`PartialObjectMetadata`; the bookmark object
    /// itself with `includeObject=Object`). That metadata is the only place a Table has
    /// for annotations: `metadata` is the bookmark's (resourceVersion and annotations:
    /// the dropped count, the end of a WatchList's initial events). Under
    /// `includeObject=None` a bookmark with annotations keeps its metadata all the same,
    /// as kube-apiserver keeps it for the initial-events-end one (else it would be lost).
    ///
    /// `object`: the bookmark object (`kind`, `apiVersion`, `metadata`). `note`: the first
    /// cell, what `kubectl get -w` prints of the line (it prints every event it gets,
    /// bookmarks included, as a row of the table): a warning for a drop, else empty.
    /// `headers`: the column definitions go with it, when it is the watch's first line.
    pub fn bookmark(&self, object: &serde_json::Value, note: &str, headers: bool) -> Vec<u8> {
        let metadata = &object["metadata"];
        let mut cells = vec![serde_json::Value::from(""); COLUMNS.len()];
        cells[0] = note.into();
        // Code is the integer column: no code.
        cells[7] = serde_json::Value::Null;
        let mut row = serde_json::json!({ "cells": cells });
        let annotated = metadata.get("annotations").is_some();
        match self.include {
            IncludeObject::Object => row["object"] = object.clone(),
            IncludeObject::None if !annotated => {}
            IncludeObject::Metadata | IncludeObject::None => {
                row["object"] = serde_json::json!({
                    "kind": "PartialObjectMetadata",
                    "apiVersion": self.version.api_version(),
                    "metadata": metadata,
                });
            }
        }
        let mut out = br#"{"type":"BOOKMARK","object":"#.to_vec();
        open(&mut out, self.version);
        out.extend_from_slice(
            metadata["resourceVersion"]
                .as_str()
                .unwrap_or_default()
                .as_bytes(),
        );
        out.extend_from_slice(br#""},"columnDefinitions":"#);
        if headers {
            out.extend_from_slice(&COLUMN_DEFINITIONS);
        } else {
            out.extend_from_slice(b"[]");
        }
        out.extend_from_slice(br#","rows":["#);
        out.extend_from_slice(&serde_json::to_vec(&row).unwrap_or_default());
        out.extend_from_slice(b"]}}\n");
        out
    }
}

impl Format {
    /// A whole Table of value rows: a LIST (or GET) of a small resource.
    pub fn value_table(
        &self,
        resource_version: u64,
        continue_token: Option<&str>,
        columns: &[u8],
        rows: &[ValueRow<'_>],
    ) -> Vec<u8> {
        let mut out = Vec::new();
        open(&mut out, self.version);
        out.extend_from_slice(itoa::Buffer::new().format(resource_version).as_bytes());
        out.push(b'"');
        if let Some(token) = continue_token {
            out.extend_from_slice(br#","continue":"#);
            out.extend_from_slice(&serde_json::to_vec(token).unwrap_or_default());
        }
        out.extend_from_slice(br#"},"columnDefinitions":"#);
        out.extend_from_slice(columns);
        out.extend_from_slice(br#","rows":"#);
        let rows: Vec<serde_json::Value> = rows.iter().map(|r| self.value_row(r)).collect();
        out.extend_from_slice(&serde_json::to_vec(&rows).unwrap_or_else(|_| b"[]".to_vec()));
        out.push(b'}');
        out
    }

    /// A watch line (`kind`: ADDED, MODIFIED, DELETED) whose object is a one-row Table;
    /// `columns` with the first line of a watch only, as kube-apiserver sends them.
    pub fn value_watch_line(
        &self,
        kind: &str,
        resource_version: u64,
        columns: Option<&[u8]>,
        row: &ValueRow<'_>,
    ) -> Vec<u8> {
        let mut out = br#"{"type":"#.to_vec();
        out.extend_from_slice(&serde_json::to_vec(kind).unwrap_or_default());
        out.extend_from_slice(br#","object":"#);
        open(&mut out, self.version);
        out.extend_from_slice(itoa::Buffer::new().format(resource_version).as_bytes());
        out.extend_from_slice(br#""},"columnDefinitions":"#);
        out.extend_from_slice(columns.unwrap_or(b"[]"));
        out.extend_from_slice(br#","rows":["#);
        out.extend_from_slice(&serde_json::to_vec(&self.value_row(row)).unwrap_or_default());
        out.extend_from_slice(b"]}}\n");
        out
    }

    /// One value row: the cells and, as `includeObject` asks, the object or its metadata.
    fn value_row(&self, row: &ValueRow<'_>) -> serde_json::Value {
        let mut out = serde_json::json!({ "cells": row.cells });
        match self.include {
            IncludeObject::None => {}
            IncludeObject::Metadata => {
                out["object"] = serde_json::json!({
                    "kind": "PartialObjectMetadata",
                    "apiVersion": self.version.api_version(),
                    "metadata": row.object["metadata"],
                });
            }
            IncludeObject::Object => out["object"] = row.object.clone(),
        }
        out
    }
}

#[cfg(test)]
mod tests;
