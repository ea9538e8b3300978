//! The shared stream's record format (`event::wire`, `--bus=nats`) both ways. A body the
//! ingest decoder accepts is encoded and read back: every line must come back byte for
//! byte (the heads are made again on the reading side). Any other input is read as a
//! message's records, as a replica reads what NATS hands it: never a panic, and what it
//! accepts encodes back to a record that reads the same.
#![no_main]

use bytes::Bytes;
use kube_audit_stream::event::{Event, decode_event_list};
use libfuzzer_sys::fuzz_target;

const NOW: &str = "2026-01-01T00:00:00.123456Z";
/// Events per message at most, as the stream has them.
const MAX: usize = 4096;

fn encode(events: &[Event]) -> Bytes {
    let mut out = Vec::new();
    for e in events {
        let at = out.len();
        e.encode_wire(&mut out);
        assert_eq!(out.len() - at, e.record_len());
    }
    Bytes::from(out)
}

fn same(a: &[Event], b: &[Event]) {
    assert_eq!(a.len(), b.len());
    for (a, b) in a.iter().zip(b) {
        for truncated in [false, true] {
            assert_eq!(a.parts(truncated), b.parts(truncated));
            assert_eq!(a.wire_len(truncated), b.wire_len(truncated));
        }
        assert_eq!(a.metadata_parts(), b.metadata_parts());
        assert_eq!(a.can_truncate(), b.can_truncate());
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(events) = decode_event_list(data, "fuzz-source", NOW) {
        let back = Event::decode_records(&encode(&events), 0, usize::MAX).expect("reads back");
        same(&events, &back);
        return;
    }
    let Ok(events) = Event::decode_records(data, 0, MAX) else {
        return;
    };
    for e in &events {
        for truncated in [false, true] {
            let (head, tail) = e.parts(truncated);
            assert_eq!(head.len() + tail.len(), e.wire_len(truncated));
            let _ = e.object_parts(truncated);
        }
    }
    let again = Event::decode_records(&encode(&events), 0, MAX).expect("re-encoded reads back");
    same(&events, &again);
});
