//! An event as the shared stream (`--bus=nats`) carries it: the routing fields and the
//! line exactly as the replica that took the push made them, so that every replica
//! serves the same bytes and none decodes JSON again. Records are read back with every
//! offset checked: a record that does not hold together is refused, never sliced.
//!
//! The line's head (up to the resourceVersion's digits) is not sent: it is made of three
//! routing fields (`write_head`), and left out it is a quarter of a Metadata event's
//! bytes, which NATS copies several times per replica (profiled: NATS's cost is per
//! byte). Each replica makes the heads of a message's events again into one buffer, and
//! the lines are slices of it.
//!
//! A record is LEB128 varints (`v`), bytes and one little-endian `i64`: the routing
//! strings (`v` length, bytes), each field's length (`v` × `FIELD_COUNT`), the line after
//! its head (`v` length, bytes), where the metadata ends in it (`v`), the stage time (`i64`
//! microseconds, `i64::MIN` for none), then `0`, or `1` and the truncation: two cuts and
//! the edit's range (start, end each, `v`, from the head's end; an empty cut as `0, 0`),
//! the edit's number (`Edit`, one byte). Hand-written because it is a dozen integers
//! around two byte strings, and the reader must put a message's lines in one buffer, not
//! one allocation per event.

use std::ops::Range;
use std::sync::OnceLock;

use bytes::Bytes;

use super::{Edit, Event, FIELD_COUNT, LINE_END, Truncation, write_head};

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
        let tail = self.line.len() - self.head_len;
        let mut n = varint_len(self.strings.len()) + self.strings.len();
        n += self.field_lens().map(varint_len).sum::<usize>();
        n += varint_len(tail) + tail + varint_len(self.meta_end - self.head_len) + 8 + 1;
        if let Some(t) = &self.truncation {
            n += self.truncation_ranges(t).map(varint_len).sum::<usize>() + 1;
        }
        n
    }

    /// Append this event's record to `out`.
    pub fn encode_wire(&self, out: &mut Vec<u8>) {
        put_varint(out, self.strings.len());
        out.extend_from_slice(self.strings.as_bytes());
        for len in self.field_lens() {
            put_varint(out, len);
        }
        let tail = &self.line[self.head_len..];
        put_varint(out, tail.len());
        out.extend_from_slice(tail);
        put_varint(out, self.meta_end - self.head_len);
        out.extend_from_slice(&self.stage_micros.unwrap_or(NO_STAGE).to_le_bytes());
        match &self.truncation {
            None => out.push(0),
            Some(t) => {
                out.push(1);
                for n in self.truncation_ranges(t) {
                    put_varint(out, n);
                }
                out.push(t.edit.1.wire_number());
            }
        }
    }

    fn field_lens(&self) -> impl Iterator<Item = usize> + '_ {
        let starts = std::iter::once(0).chain(self.ends);
        self.ends.iter().zip(starts).map(|(e, s)| (e - s) as usize)
    }

    /// The truncation's ranges as the record holds them: from the head's end.
    fn truncation_ranges<'t>(&self, t: &'t Truncation) -> impl Iterator<Item = usize> + 't {
        let head = self.head_len;
        let [c0, c1] = &t.cut;
        [c0, c1, &t.edit.0].into_iter().flat_map(move |r| {
            let r = if r.is_empty() && r.start < head {
                0..0
            } else {
                r.start - head..r.end - head
            };
            [r.start, r.end]
        })
    }

    /// Read a message's records, at most `max` of them, from `buf` after `at`. Each
    /// event's line is its head made again followed by its record's bytes, all in one
    /// new buffer that the lines are slices of.
    pub fn decode_records(buf: &[u8], at: usize, max: usize) -> Result<Vec<Event>, WireError> {
        let mut r = Reader { buf, at };
        // The heads add about a third to the records' bytes.
        let mut lines = Vec::with_capacity(buf.len() + buf.len() / 2);
        // Sized for Metadata events (~0.7 KB a record): grown by doubling, these lists
        // took 7 % of reading a message (profiled).
        let guess = (buf.len() / 512).clamp(1, max);
        let (mut events, mut ranges) = (Vec::with_capacity(guess), Vec::with_capacity(guess));
        while r.at < buf.len() {
            if events.len() == max {
                return Err(WireError("too many events in one message"));
            }
            let (event, range) = r.record(&mut lines)?;
            events.push(event);
            ranges.push(range);
        }
        // Held as long as one of its events is in the window: no spare capacity.
        lines.shrink_to_fit();
        let lines = Bytes::from(lines);
        for (event, range) in events.iter_mut().zip(ranges) {
            event.line = lines.slice(range);
        }
        Ok(events)
    }
}

impl Reader<'_> {
    /// One record: the event, its line still empty, and where its line is in `lines`.
    fn record(&mut self, lines: &mut Vec<u8>) -> Result<(Event, Range<usize>), WireError> {
        let strings_len = self.varint()?;
        let strings = std::str::from_utf8(self.bytes(strings_len)?)
            .map_err(|_| WireError("routing fields are not UTF-8"))?;
        let mut ends = [0u32; FIELD_COUNT];
        let mut end = 0usize;
        for slot in &mut ends {
            end = end.saturating_add(self.varint()?);
            if end > strings_len || !strings.is_char_boundary(end) {
                return Err(WireError("routing field bounds"));
            }
            *slot = end as u32;
        }
        let strings: Box<str> = strings.into();
        let tail_len = self.varint()?;
        let tail = self.bytes(tail_len)?;
        let start = lines.len();
        let mut event = Event {
            strings,
            ends,
            line: Bytes::new(),
            head_len: 0,
            meta_end: 0,
            stage_micros: None,
            truncation: None,
            cells: OnceLock::new(),
            // Counted by the replica that took the push; the line says it to everyone.
            redacted: super::Rules::default(),
        };
        write_head(
            lines,
            event.audit_id(),
            event.get(super::Field::Stage),
            event.get(super::Field::Namespace),
        );
        let head_len = lines.len() - start;
        lines.extend_from_slice(tail);
        let line_len = lines.len() - start;
        let meta_end = head_len.saturating_add(self.varint()?);
        let stage = self.bytes(8)?;
        let stage = i64::from_le_bytes(stage.try_into().map_err(|_| WireError("cut short"))?);
        // The metadata closes in the record's bytes, before the watch event's closing ones.
        if meta_end.saturating_add(LINE_END) > line_len {
            return Err(WireError("line bounds"));
        }
        let truncation = match self.u8()? {
            0 => None,
            1 => {
                let mut ranges = [0..0, 0..0, 0..0];
                for range in &mut ranges {
                    let (s, e) = (self.varint()?, self.varint()?);
                    *range = head_len.saturating_add(s)..head_len.saturating_add(e);
                }
                let with = Edit::from_wire_number(self.u8()?)
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
        event.head_len = head_len;
        event.meta_end = meta_end;
        event.stage_micros = (stage != NO_STAGE).then_some(stage);
        event.truncation = truncation;
        Ok((event, start..start + line_len))
    }
}

fn put_varint(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn varint_len(n: usize) -> usize {
    1 + (usize::BITS - 1 - (n | 1).leading_zeros()) as usize / 7
}

/// A truncation whose ranges fit the line: cuts after the metadata and before the edit,
/// the edit before the line's closing bytes. Its length is computed, not trusted.
fn truncation(
    cut: [Range<usize>; 2],
    edit: Range<usize>,
    with: Edit,
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
    len += edit.start - at + with.bytes().len() + (line_len - edit.end);
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

    /// A LEB128 varint of at most 32 bits: every length and offset fits a `u32`.
    fn varint(&mut self) -> Result<usize, WireError> {
        let mut n = 0u64;
        for shift in (0..35).step_by(7) {
            let b = self.u8()?;
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return u32::try_from(n)
                    .map(|n| n as usize)
                    .map_err(|_| WireError("number out of range"));
            }
        }
        Err(WireError("number out of range"))
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
        Event::decode_records(&Bytes::from(out), 0, usize::MAX).unwrap()
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

    /// Every real fixture, and strings that need escapes in the rebuilt head: each line
    /// reads back byte for byte, and the records leave the heads out.
    #[test]
    fn real_fixtures_read_back_byte_for_byte_and_without_their_heads() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/audit");
        let escaped = r#"{"level":"Metadata","auditID":"e\"1\u00e9","stage":"Response\u0043omplete","objectRef":{"namespace":"n\\s"}}"#;
        for name in [
            "all-events.jsonl",
            "audit2rbac-demo.log",
            "openshift-audit_in.log",
            "",
        ] {
            let text = match name {
                "" => escaped.to_owned(),
                _ => std::fs::read_to_string(dir.join(name)).unwrap(),
            };
            let items: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            let body = format!(
                r#"{{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{}]}}"#,
                items.join(",")
            );
            let events = decode_event_list(body.as_bytes(), "api-1", "now").unwrap();
            let back = round_trip(&events);
            assert_eq!(back.len(), events.len(), "{name}");
            let (mut records, mut held) = (0, 0);
            for (a, b) in events.iter().zip(&back) {
                for truncated in [false, true] {
                    assert_eq!(a.parts(truncated), b.parts(truncated), "{name}");
                }
                assert_eq!(a.strings, b.strings);
                records += a.record_len();
                held += a.line.len() + a.strings.len();
            }
            if name == "audit2rbac-demo.log" {
                // Metadata events: without the heads a record is 82 % of what the event
                // holds (its line and routing strings); with them it was 108 %.
                assert!(
                    records * 100 < held * 85,
                    "{records} record bytes for {held}"
                );
            }
        }
    }

    #[test]
    fn every_cut_short_or_corrupt_record_is_refused_without_a_panic() {
        let events = decode_event_list(WITH_BODIES.as_bytes(), "api-1", "now").unwrap();
        let mut record = Vec::new();
        events[0].encode_wire(&mut record);
        for n in 1..record.len() {
            let buf = Bytes::copy_from_slice(&record[..n]);
            assert!(Event::decode_records(&buf, 0, 9).is_err(), "cut at {n}");
        }
        // Every byte flipped in turn: refused, or read into an event whose every part
        // can be taken without a panic.
        for i in 0..record.len() {
            let mut bad = record.clone();
            bad[i] ^= 0xff;
            let buf = Bytes::from(bad);
            for e in Event::decode_records(&buf, 0, 9).unwrap_or_default() {
                for truncated in [false, true] {
                    let _ = e.object_parts(truncated);
                    let _ = e.wire_len(truncated);
                }
                let _ = e.metadata_parts();
                for f in crate::event::Field::ALL {
                    let _ = e.get(f);
                }
            }
        }
    }
}
