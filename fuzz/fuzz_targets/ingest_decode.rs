//! The ingest decoder on arbitrary bodies: never a panic, and every event it accepts has
//! consistent wire forms (full, truncated, size-limited) and a Table row that carries its
//! routing fields.
#![no_main]

use kube_audit_stream::event::{Field, Limited, decode_event_list};
use kube_audit_stream::table;
use libfuzzer_sys::fuzz_target;

const NOW: &str = "2026-01-01T00:00:00.123456Z";

fuzz_target!(|data: &[u8]| {
    let Ok(events) = decode_event_list(data, "fuzz-source", NOW) else {
        return;
    };
    for ev in events {
        for truncated in [false, true] {
            let (head, tail) = ev.parts(truncated);
            assert_eq!(head.len() + tail.len(), ev.wire_len(truncated));
            assert_eq!(tail.last(), Some(&b'\n'));
            let _ = ev.object_parts(truncated);
        }
        let _ = ev.metadata_parts();
        assert!(ev.memory_len() >= ev.wire_len(false));
        // The Table row is built from the line; a pushed field of an unexpected type must
        // not blank the row's routing columns.
        let cells: serde_json::Value =
            serde_json::from_slice(table::cells(&ev)).expect("cells are JSON");
        let user = cells.get(2).and_then(|c| c.as_str());
        assert_eq!(user, Some(ev.get(Field::Username)), "cells {cells}");
        let full = ev.wire_len(false);
        match ev.limit_size(full / 2) {
            Limited::Fits(_) => assert_eq!(full, 0),
            Limited::Truncated(t) => {
                let (h, tl) = t.parts(false);
                assert!(h.len() + tl.len() <= full / 2);
            }
            Limited::TooLarge { .. } => {}
        }
    }
});
