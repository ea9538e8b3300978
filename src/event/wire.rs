//! An event as the shared stream (`--bus=nats`) carries it: the line and the routing
//! fields exactly as the replica that took the push made them, so that every replica
//! serves the same bytes and none decodes JSON again. Records are read back with every
//! offset checked: a record that does not hold together is refused, never sliced.
//!
//! A record is little-endian `u32`s and bytes: the routing strings (length, bytes), their
//! `FIELD_COUNT` ends, the line (length, bytes), `head_len`, `meta_end`, the stage time
//! (`i64` microseconds, `i64::MIN` for none), then `0`, or `1`
//! and the truncation: two cuts and the edit's range (start, end each), the edit's index
//! in `EDITS`. Hand-written because it is a dozen integers around two byte strings, and
//! the reader must hand out slices of the received buffer without a copy.

use std::ops::Range;
use std::sync::OnceLock;

use bytes::Bytes;

use super::{EDITS, Event, FIELD_COUNT, LINE_END, META_START, OBJECT_START, Truncation};

/// `stage_micros` absent.
const NO_STAGE: i64 = i64::MIN;

/// Why a record from the stream was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed event record: {0}")]
pub struct WireError(&'static str);

impl WireError {
    pub fn new(reason: &'static str) -> Self {
        WireError(reason)
    }
}

impl Event {
    /// The bytes `encode_wire` appends.
    pub fn record_len(&self) -> usize {
        let fixed = 4 + 4 * FIELD_COUNT + 4 + 4 + 4 + 8 + 1;
        let truncation = if self.truncation.is_some() {
            6 * 4 + 1
        } else {
            0
        };
        fixed + self.strings.len() + self.line.len() + truncation
    }

    /// Append this event's record to `out`.
    pub fn encode_wire(&self, out: &mut Vec<u8>) {
        let put = |out: &mut Vec<u8>, n: usize| out.extend_from_slice(&(n as u32).to_le_bytes());
        put(out, self.strings.len());
        out.extend_from_slice(self.strings.as_bytes());
        for end in self.ends {
            put(out, end as usize);
        }
        put(out, self.line.len());
        out.extend_from_slice(&self.line);
        put(out, self.head_len);
        put(out, self.meta_end);
        out.extend_from_slice(&self.stage_micros.unwrap_or(NO_STAGE).to_le_bytes());
        match &self.truncation {
            None => out.push(0),
            Some(t) => {
                out.push(1);
                let (range, with) = &t.edit;
                for r in [&t.cut[0], &t.cut[1], range] {
                    put(out, r.start);
                    put(out, r.end);
                }
                let index = EDITS.iter().position(|e| e == with).unwrap_or(0);
                out.push(index as u8);
            }
        }
    }

    /// Read one record from `buf` at `*at`, moving `*at` past it. The line is a slice of
    /// `buf`, not a copy.
    pub fn decode_wire(buf: &Bytes, at: &mut usize) -> Result<Event, WireError> {
        let mut r = Reader { buf, at: *at };
        let strings_len = r.u32()?;
        let strings = std::str::from_utf8(r.bytes(strings_len)?)
            .map_err(|_| WireError("routing fields are not UTF-8"))?;
        let mut ends = [0u32; FIELD_COUNT];
        let mut prev = 0;
        for end in &mut ends {
            let e = r.u32()?;
            if e < prev || e > strings_len || !strings.is_char_boundary(e) {
                return Err(WireError("routing field bounds"));
            }
            *end = e as u32;
            prev = e;
        }
        let strings: Box<str> = strings.into();
        let line_len = r.u32()?;
        let line_at = r.at;
        r.bytes(line_len)?;
        let line = buf.slice(line_at..line_at + line_len);
        let head_len = r.u32()?;
        let meta_end = r.u32()?;
        let stage = r.bytes(8)?;
        let stage = i64::from_le_bytes(stage.try_into().map_err(|_| WireError("cut short"))?);
        // The line's frame: the object, the metadata and the hole for the digits inside
        // it, and the watch event's closing bytes after it.
        if head_len < META_START.max(OBJECT_START)
            || meta_end < head_len
            || meta_end + LINE_END > line_len
        {
            return Err(WireError("line bounds"));
        }
        let truncation = match r.u8()? {
            0 => None,
            1 => {
                let mut ranges = [0..0, 0..0, 0..0];
                for range in &mut ranges {
                    *range = r.u32()?..r.u32()?;
                }
                let with = *EDITS
                    .get(usize::from(r.u8()?))
                    .ok_or(WireError("unknown annotation edit"))?;
                let [c0, c1, edit] = ranges;
                Some(Box::new(truncation(
                    [c0, c1],
                    edit,
                    with,
                    meta_end,
                    line_len,
                )?))
            }
            _ => return Err(WireError("truncation flag")),
        };
        *at = r.at;
        Ok(Event {
            strings,
            ends,
            line,
            head_len,
            meta_end,
            stage_micros: (stage != NO_STAGE).then_some(stage),
            truncation,
            cells: OnceLock::new(),
        })
    }
}

/// A truncation whose ranges fit the line: cuts after the metadata and before the edit,
/// the edit before the line's closing bytes. Its length is computed, not trusted.
fn truncation(
    cut: [Range<usize>; 2],
    edit: Range<usize>,
    with: &'static [u8],
    meta_end: usize,
    line_len: usize,
) -> Result<Truncation, WireError> {
    let bad = WireError("truncation bounds");
    if edit.start > edit.end || edit.start < meta_end || edit.end + LINE_END > line_len {
        return Err(bad);
    }
    let (mut at, mut len) = (0, 0);
    for c in &cut {
        let empty = c.start == c.end;
        if c.start > c.end || c.end > edit.start || (!empty && c.start < meta_end) {
            return Err(bad);
        }
        len += c.start.max(at) - at;
        at = at.max(c.end);
    }
    len += edit.start - at + with.len() + (line_len - edit.end);
    Ok(Truncation {
        cut,
        edit: (edit, with),
        len,
        line: OnceLock::new(),
    })
}

struct Reader<'b> {
    buf: &'b [u8],
    at: usize,
}

impl<'b> Reader<'b> {
    fn bytes(&mut self, n: usize) -> Result<&'b [u8], WireError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.buf.len())
            .ok_or(WireError("cut short"))?;
        let out = &self.buf[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u32(&mut self) -> Result<usize, WireError> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.bytes(1)?[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::decode_event_list;

    const WITH_BODIES: &str = r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[
        {"level":"RequestResponse","auditID":"a-1","stage":"ResponseComplete","verb":"create","user":{"username":"alice"},
         "objectRef":{"resource":"configmaps","namespace":"team-a","name":"cm"},"responseStatus":{"code":201},
         "requestObject":{"kind":"ConfigMap","data":{"k":"v"}},"responseObject":{"kind":"ConfigMap"},
         "annotations":{"zz":"1"},"stageTimestamp":"2026-01-01T00:00:00.000001Z"},
        {"level":"Metadata","auditID":"a-2","stage":"ResponseComplete","verb":"get","requestURI":"/healthz"}]}"#;

    fn round_trip(events: &[Event]) -> Vec<Event> {
        let mut out = Vec::new();
        for e in events {
            e.encode_wire(&mut out);
        }
        assert_eq!(
            out.len(),
            events.iter().map(Event::record_len).sum::<usize>()
        );
        let buf = Bytes::from(out);
        let mut at = 0;
        let mut back = Vec::new();
        while at < buf.len() {
            back.push(Event::decode_wire(&buf, &mut at).unwrap());
        }
        back
    }

    #[test]
    fn an_event_reads_back_the_same_in_every_form() {
        let events = decode_event_list(WITH_BODIES.as_bytes(), "api-1", "now").unwrap();
        let back = round_trip(&events);
        assert_eq!(back.len(), 2);
        for (a, b) in events.iter().zip(&back) {
            for truncated in [false, true] {
                assert_eq!(a.parts(truncated), b.parts(truncated));
                assert_eq!(a.object_parts(truncated), b.object_parts(truncated));
                assert_eq!(a.wire_len(truncated), b.wire_len(truncated));
            }
            assert_eq!(a.metadata_parts(), b.metadata_parts());
            assert_eq!(a.memory_len(), b.memory_len());
            assert_eq!(a.can_truncate(), b.can_truncate());
            assert_eq!(a.strings, b.strings);
            assert_eq!(a.stage_micros, b.stage_micros);
            assert_eq!(a.ends, b.ends);
        }
        assert_eq!(back[0].get(crate::event::Field::Namespace), "team-a");
        assert!(back[0].can_truncate() && !back[1].can_truncate());
    }

    #[test]
    fn every_cut_short_or_corrupt_record_is_refused_without_a_panic() {
        let events = decode_event_list(WITH_BODIES.as_bytes(), "api-1", "now").unwrap();
        let mut record = Vec::new();
        events[0].encode_wire(&mut record);
        for n in 0..record.len() {
            let buf = Bytes::copy_from_slice(&record[..n]);
            assert!(Event::decode_wire(&buf, &mut 0).is_err(), "cut at {n}");
        }
        // Every byte flipped in turn: refused, or read into an event whose every part
        // can be taken without a panic.
        for i in 0..record.len() {
            let mut bad = record.clone();
            bad[i] ^= 0xff;
            let buf = Bytes::from(bad);
            if let Ok(e) = Event::decode_wire(&buf, &mut 0) {
                for truncated in [false, true] {
                    let _ = e.object_parts(truncated);
                    let _ = e.wire_len(truncated);
                }
                let _ = e.metadata_parts();
                for f in FIELDS {
                    let _ = e.get(f);
                }
            }
        }
    }

    const FIELDS: [crate::event::Field; FIELD_COUNT] = {
        use crate::event::Field::*;
        [
            AuditId, Stage, Level, Verb, Username, Namespace, Resource, Name, ApiGroup, Code,
        ]
    };
}
