//! resourceVersions: the time-derived base a bus numbers from, and an event with the
//! number the bus gave it (its decimal digits kept, for the line's hole).

use super::*;
use tokio::time::Instant;

/// The epoch of time-derived resourceVersions: 2025-01-01T00:00:00Z, in microseconds
/// since 1970.
pub const EPOCH_MICROS: i128 = 1_735_689_600_000_000;
/// Bits of a time-derived resourceVersion below the time: 4096 numbers a microsecond.
pub const INDEX_BITS: u32 = 12;

/// Microseconds since `EPOCH_MICROS` at `unix_nanos` (0 before it).
pub fn micros_since_epoch(unix_nanos: i128) -> u64 {
    u64::try_from(unix_nanos / 1000 - EPOCH_MICROS).unwrap_or(0)
}

/// Where the memory bus of a server started now numbers from: above every
/// resourceVersion an earlier run of it gave out (unless that run gave out more than
/// 4096 a microsecond), so that after a restart an old resourceVersion is "too old" (410,
/// the client lists again) and never names another event. It fits an `i64` until 2096.
pub fn time_base() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    micros_since_epoch(nanos) << INDEX_BITS
}

/// An event with the resourceVersion the bus gave it. Shared by the window and every queue.
#[derive(Debug)]
pub struct Published {
    pub resource_version: u64,
    pub(super) digits: [u8; 20],
    pub(super) digits_len: u8,
    pub event: Event,
    /// When this bus published it: where a watch's delivery-stage latencies start
    /// (`watch::stages`). One clock reading per published batch, shared by its events;
    /// 16 bytes per event held, beside the event's ~1 KB or more.
    pub published_at: Instant,
}

impl Published {
    pub(super) fn new(resource_version: u64, event: Event, published_at: Instant) -> Self {
        let mut digits = [0; 20];
        let mut buf = itoa::Buffer::new();
        let text = buf.format(resource_version).as_bytes();
        digits[..text.len()].copy_from_slice(text);
        Published {
            resource_version,
            digits,
            digits_len: text.len() as u8,
            event,
            published_at,
        }
    }

    /// The resourceVersion as the decimal text that fills the event's hole.
    pub fn digits(&self) -> &[u8] {
        &self.digits[..usize::from(self.digits_len)]
    }

    /// Bytes this event puts on the wire in the given form.
    pub fn wire_len(&self, truncated: bool) -> usize {
        self.event.wire_len(truncated) + usize::from(self.digits_len)
    }

    /// Bytes of the event object alone (a LIST's item, a GET's answer) in the given form.
    pub fn object_len(&self, truncated: bool) -> usize {
        self.event.object_len(truncated) + usize::from(self.digits_len)
    }
}
