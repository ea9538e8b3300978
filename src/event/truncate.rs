//! The truncated form of an event (no request/response objects, `audit.k8s.io/truncated`
//! set, as kube-apiserver's truncate backend makes it): described by a few byte ranges of
//! the full line at decode time, built from it only when a watcher first needs it.

use std::ops::Range;
use std::sync::OnceLock;

use bytes::Bytes;

use super::Event;

/// The one edit of the annotations a truncation makes, by where it falls (see
/// `decode_event`). The shared stream carries its number (`wire`), not its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Edit {
    /// None: the line has nothing to truncate, or the edit is not needed.
    Nothing,
    /// The event has no annotations: add the map with the one key.
    AddAnnotations,
    /// Before the first key that sorts after ours.
    InsertBefore,
    /// The pushed event has the key already: its value becomes "true".
    ReplaceValue,
    /// After the last key.
    Append,
}

impl Edit {
    /// Every edit, by its number on the wire.
    const ALL: [Edit; 5] = [
        Edit::Nothing,
        Edit::AddAnnotations,
        Edit::InsertBefore,
        Edit::ReplaceValue,
        Edit::Append,
    ];

    /// What replaces the edit's range.
    pub(super) fn bytes(self) -> &'static [u8] {
        match self {
            Edit::Nothing => b"",
            Edit::AddAnnotations => br#","annotations":{"audit.k8s.io/truncated":"true"}"#,
            Edit::InsertBefore => br#""audit.k8s.io/truncated":"true","#,
            Edit::ReplaceValue => br#""true""#,
            Edit::Append => br#","audit.k8s.io/truncated":"true""#,
        }
    }

    pub(super) fn wire_number(self) -> u8 {
        self as u8
    }

    pub(super) fn from_wire_number(n: u8) -> Option<Edit> {
        Edit::ALL.get(usize::from(n)).copied()
    }
}

/// How to make the truncated line from the full one, and the line once made.
#[derive(Debug)]
pub(super) struct Truncation {
    /// Ranges of the full line left out (`,"requestObject":{…}`, …), in order.
    pub(super) cut: [Range<usize>; 2],
    /// Then one edit of the annotations, after both cuts: replace this range with that.
    pub(super) edit: (Range<usize>, Edit),
    pub(super) len: usize,
    pub(super) line: OnceLock<Bytes>,
}

impl Truncation {
    pub(super) fn build(&self, full: &[u8]) -> Bytes {
        let mut out = Vec::with_capacity(self.len);
        let mut at = 0;
        for cut in &self.cut {
            out.extend_from_slice(&full[at..cut.start.max(at)]);
            at = at.max(cut.end);
        }
        let (range, with) = &self.edit;
        out.extend_from_slice(&full[at..range.start]);
        out.extend_from_slice(with.bytes());
        out.extend_from_slice(&full[range.end..]);
        debug_assert_eq!(out.len(), self.len);
        Bytes::from(out)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::TRUNCATED_ANNOTATION;

    #[test]
    fn edits_keep_their_wire_numbers_and_name_the_annotation() {
        for (n, edit) in Edit::ALL.iter().enumerate() {
            assert_eq!(usize::from(edit.wire_number()), n);
            assert_eq!(Edit::from_wire_number(n as u8), Some(*edit));
            let text = std::str::from_utf8(edit.bytes()).unwrap();
            assert!(
                *edit == Edit::Nothing
                    || *edit == Edit::ReplaceValue
                    || text.contains(TRUNCATED_ANNOTATION),
                "{text}"
            );
        }
        assert_eq!(Edit::from_wire_number(5), None);
    }
}
