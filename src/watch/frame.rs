//! A watch's frame: the lines of the bus's events, shared, not copied, between the bytes
//! the watch writes itself (bookmarks, errors, truncated lines, Table rows). Every watcher
//! of an event sends the same line, so a hundred watchers hold one copy of it instead of a
//! hundred, and the connection's writer reads it straight into TLS, from memory the other
//! watchers keep in cache: +20-30 % bytes per CPU-second in the fan-out to clients that
//! take 1 MiB HTTP/2 frames. (Clients of 16 KiB frames gain nothing: h2 hands the writer
//! 16 slices at a time, fewer bytes than a TLS record, and the writer stages them, a copy.)
//!
//! Cost by class: per event, one segment (the `Arc` the watch took from its queue, moved
//! here) and three slices when written (the line's head, its resourceVersion digits,
//! its tail); per frame, one vector of segments and one box.
//!
//! Written by hand because `bytes` chains two buffers, not a run of them, and an event's
//! line is three slices of one shared value (`Published`), not a `Bytes` of its own.

use std::io::IoSlice;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};

use super::stages::Stamp;
use crate::bus::Published;

/// One piece of a frame.
enum Segment {
    /// Bytes the watch wrote.
    Own(Bytes),
    /// An event's watch line as the bus holds it.
    Line(Arc<Published>),
}

/// An event's watch line as three slices: before its resourceVersion, the digits, after.
fn line_parts(p: &Published, truncated: bool) -> [&[u8]; 3] {
    let (head, tail) = p.event.parts(truncated);
    [head, p.digits(), tail]
}

impl Segment {
    /// The segment's bytes as up to three slices.
    fn parts(&self) -> [&[u8]; 3] {
        match self {
            Segment::Own(b) => [b, &[], &[]],
            Segment::Line(p) => line_parts(p, false),
        }
    }

    fn len(&self) -> usize {
        match self {
            Segment::Own(b) => b.len(),
            Segment::Line(p) => p.wire_len(false),
        }
    }
}

/// A frame being written: the watch's own bytes gathered until the next line.
#[derive(Default)]
pub(super) struct Builder {
    segments: Vec<Segment>,
    own: BytesMut,
    len: usize,
}

impl Builder {
    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Bytes of the watch's own.
    pub(super) fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.own.extend_from_slice(bytes);
        self.len += bytes.len();
    }

    /// Room for `n` more bytes of the watch's own, which it writes through `own`.
    pub(super) fn own(&mut self, n: usize) -> &mut BytesMut {
        self.own.reserve(n);
        &mut self.own
    }

    /// Count `n` bytes written through `own`.
    pub(super) fn wrote(&mut self, n: usize) {
        self.len += n;
    }

    /// Room for `n` more events' segments.
    pub(super) fn reserve(&mut self, n: usize) {
        self.segments.reserve(n);
    }

    /// An event's line, shared; its length. (Only the full one: the truncated form is
    /// the watch's own to copy, since sharing it would hold the whole event while the
    /// frame waits.)
    pub(super) fn line(&mut self, p: Arc<Published>) -> usize {
        self.end_own();
        let len = p.wire_len(false);
        self.len += len;
        self.segments.push(Segment::Line(p));
        len
    }

    /// An event's line copied, as the watch's own bytes; its length.
    pub(super) fn copy_line(&mut self, p: &Published, truncated: bool) -> usize {
        let len = p.wire_len(truncated);
        self.own.reserve(len);
        for part in line_parts(p, truncated) {
            self.own.extend_from_slice(part);
        }
        self.len += len;
        len
    }

    fn end_own(&mut self) {
        if !self.own.is_empty() {
            self.segments.push(Segment::Own(self.own.split().freeze()));
        }
    }

    /// The frame as hyper takes it; `stamp`, if any, is dropped with it (once the
    /// connection's writer took its last byte).
    pub(super) fn finish(mut self, stamp: Option<Stamp>) -> Frame {
        self.end_own();
        Frame {
            segments: self.segments,
            next: 0,
            offset: 0,
            remaining: self.len,
            _stamp: stamp,
        }
    }
}

/// A frame as hyper sends it: a `Buf` over its segments.
pub(super) struct Frame {
    segments: Vec<Segment>,
    /// The first segment not wholly sent, and how much of it was.
    next: usize,
    offset: usize,
    remaining: usize,
    _stamp: Option<Stamp>,
}

impl Buf for Frame {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        let Some(segment) = self.segments.get(self.next) else {
            return &[];
        };
        let mut offset = self.offset;
        for part in segment.parts() {
            if offset < part.len() {
                return &part[offset..];
            }
            offset -= part.len();
        }
        &[]
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        let mut offset = self.offset;
        for segment in self.segments.iter().skip(self.next) {
            for part in segment.parts() {
                if offset >= part.len() {
                    offset -= part.len();
                    continue;
                }
                let Some(slot) = dst.get_mut(n) else {
                    return n;
                };
                *slot = IoSlice::new(&part[offset..]);
                offset = 0;
                n += 1;
            }
        }
        n
    }

    fn advance(&mut self, mut n: usize) {
        assert!(n <= self.remaining, "advance past the frame's end");
        self.remaining -= n;
        while n > 0 {
            let Some(segment) = self.segments.get(self.next) else {
                return;
            };
            let left = segment.len() - self.offset;
            if n < left {
                self.offset += n;
                return;
            }
            n -= left;
            self.next += 1;
            self.offset = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything a `Buf` hands out, read through `chunks_vectored` with `room` slices
    /// at a time and advanced by `step` bytes at most, as a writer takes it.
    fn drain(mut frame: Frame, room: usize, step: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while frame.has_remaining() {
            let mut slices = vec![IoSlice::new(&[]); room];
            let n = frame.chunks_vectored(&mut slices);
            assert!(n > 0, "data left, slices given");
            let mut took = 0;
            for s in &slices[..n] {
                let s = &s[..s.len().min(step - took)];
                out.extend_from_slice(s);
                took += s.len();
                if took == step {
                    break;
                }
            }
            assert_eq!(frame.chunk().first(), slices[0].first());
            frame.advance(took);
        }
        out
    }

    #[test]
    fn a_frame_reads_as_the_bytes_it_was_built_of() {
        let mut b = Builder::default();
        b.extend_from_slice(b"one,");
        b.extend_from_slice(b"two,");
        b.own(8).extend_from_slice(b"three,");
        b.wrote(6);
        let own = b"one,two,three,";
        assert_eq!(b.len(), own.len());
        let frame = b.finish(None);
        assert_eq!(frame.remaining(), own.len());
        for (room, step) in [(1, 1), (2, 3), (64, 5), (64, 1 << 20)] {
            let mut b = Builder::default();
            b.extend_from_slice(own);
            assert_eq!(drain(b.finish(None), room, step), own, "{room} {step}");
        }
        assert_eq!(Builder::default().finish(None).chunk(), b"");
    }

    #[test]
    fn shared_lines_read_as_their_copies_would_between_the_watchs_own_bytes() {
        let bus = crate::watch::tests::bus();
        let mut sub = bus
            .subscribe(crate::bus::Filter::scope(crate::bus::Scope::All), None)
            .unwrap();
        let item = |id: u8| {
            format!(
                r#"{{"level":"Metadata","auditID":"a{id}","stage":"ResponseComplete","verb":"get"}}"#
            )
        };
        let body = format!(
            r#"{{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{}]}}"#,
            (1..=3).map(item).collect::<Vec<_>>().join(",")
        );
        let events =
            crate::event::decode_event_list(body.as_bytes(), "test", "2026-01-01T00:00:00Z")
                .unwrap();
        bus.publish(events);
        let mut taken = std::collections::VecDeque::new();
        sub.take(&mut taken);
        assert_eq!(taken.len(), 3);
        let copy = |p: &Published| line_parts(p, false).concat();
        let want = [
            b"own,".to_vec(),
            copy(&taken[0]),
            copy(&taken[1]),
            b"bookmark,".to_vec(),
            copy(&taken[2]),
        ]
        .concat();
        for (room, step) in [(1, 1), (2, 7), (3, 100), (64, 1 << 20)] {
            let mut b = Builder::default();
            b.extend_from_slice(b"own,");
            assert_eq!(b.line(taken[0].clone()), taken[0].wire_len(false));
            // A copied line among the shared ones reads the same.
            assert_eq!(b.copy_line(&taken[1], false), taken[1].wire_len(false));
            b.extend_from_slice(b"bookmark,");
            b.line(taken[2].clone());
            assert_eq!(b.len(), want.len());
            assert_eq!(drain(b.finish(None), room, step), want, "{room} {step}");
        }
    }
}
