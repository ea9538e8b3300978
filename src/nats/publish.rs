//! Publishing a decoded batch to the stream: events packed into messages under NATS's
//! payload limit, each message named by its content (JetStream's duplicate detection
//! recognises a webhook retry), and the acknowledgements awaited.

use super::*;

impl Nats {
    /// Publish a decoded batch and wait until JetStream has stored all of it. The events
    /// reach the local bus, as every other replica's, by the stream. Says how many events
    /// were new and how many JetStream recognised as a retry (their message was stored
    /// already).
    pub async fn publish(&self, source: &str, events: Vec<Event>) -> Result<Published, ApiError> {
        let inner = &*self.inner;
        if let Some(down) = inner.bus.down() {
            return Err(down.into());
        }
        let limit = match inner.client.server_info().max_payload {
            0 => MAX_MESSAGE_BYTES,
            n => n.min(MAX_MESSAGE_BYTES),
        }
        .saturating_sub(HEADERS_ROOM);
        let mut acks = Vec::new();
        let mut payload = Vec::new();
        let mut count = 0;
        // Each message's buffer is sized once: grown by doubling, it was copied as often
        // as it was written (profiled). What the events hold is more than their records
        // (the heads are left out), and cheaper to add up.
        let mut left: usize = events.iter().map(Event::memory_len).sum();
        for event in events {
            let Some((event, len)) = inner.fit(event, limit) else {
                continue;
            };
            if count == MAX_EVENTS_PER_MESSAGE || (count > 0 && payload.len() + len > limit) {
                acks.push((
                    inner.send(source, std::mem::take(&mut payload)).await?,
                    count,
                ));
                count = 0;
            }
            if payload.is_empty() {
                payload.reserve_exact(1 + left.min(limit).max(len));
                payload.push(WIRE_VERSION);
            }
            event.encode_wire(&mut payload);
            left = left.saturating_sub(len);
            count += 1;
        }
        if count > 0 {
            acks.push((inner.send(source, payload).await?, count));
        }
        let mut published = Published::default();
        for (ack, count) in acks {
            match ack.await {
                Ok(ack) => {
                    inner.metrics.published.count(ack.duplicate);
                    match ack.duplicate {
                        true => published.duplicate_events += count as u64,
                        false => published.events += count as u64,
                    }
                }
                Err(e) => {
                    inner.metrics.publish_errors.inc();
                    return Err(unavailable(&format!(
                        "NATS did not confirm the events: {e}"
                    )));
                }
            }
        }
        Ok(published)
    }
}

/// What `publish` stored.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Events in messages JetStream stored.
    pub events: u64,
    /// Events in messages JetStream recognised as already stored: a retried batch.
    pub duplicate_events: u64,
}

pub(super) fn unavailable(reason: &str) -> ApiError {
    bus::Down::new(reason).into()
}

impl Inner {
    /// An event whose record would not fit in one message: truncated, or dropped (and
    /// counted) if even that is too large, as `--max-event-bytes` does.
    /// The event that goes in a message, and its record's length.
    pub(super) fn fit(&self, event: Event, limit: usize) -> Option<(Event, usize)> {
        let len = event.record_len();
        if len <= limit {
            return Some((event, len));
        }
        match fit_record(event, len, limit) {
            Limited::Fits(e) => Some((e, len)),
            Limited::Truncated(e) => {
                self.metrics
                    .oversized
                    .with_label_values(&["truncated"])
                    .inc();
                let len = e.record_len();
                Some((e, len))
            }
            Limited::TooLarge { audit_id } => {
                tracing::warn!(%audit_id, limit, "event too large for a NATS message even truncated; dropped");
                self.metrics.oversized.with_label_values(&["dropped"]).inc();
                None
            }
        }
    }

    pub(super) async fn send(
        &self,
        source: &str,
        payload: Vec<u8>,
    ) -> Result<jetstream::context::PublishAckFuture, ApiError> {
        let id = message_id(source, &payload);
        let publish = jetstream::message::PublishMessage::build()
            .payload(Bytes::from(payload))
            .message_id(id);
        self.js
            .send_publish(self.subject.clone(), publish)
            .await
            .map_err(|e| {
                self.metrics.publish_errors.inc();
                unavailable(&format!("publishing to NATS: {e}"))
            })
    }
}

/// `limit_size` for an event whose record of `len` bytes must be at most `limit`. A
/// record is its line less the head, plus the routing strings and numbers: either side
/// may be the larger.
pub(super) fn fit_record(event: Event, len: usize, limit: usize) -> Limited {
    let line_limit = (limit + event.wire_len(false)).saturating_sub(len);
    event.limit_size(line_limit)
}

/// What a webhook retry is recognised by, on either bus: the bytes it carries and the
/// source that sent them, never an `auditID` (a client can choose its own). A
/// cryptographic hash, so that no one who can shape an audited request can make it
/// collide with another's and hide it; BLAKE3 rather than SHA-256 because it is the
/// largest per-byte cost of a publish (profiled: SHA-256 took 0.5 us of a 0.6 KB event).
/// NATS hashes each message's payload (`message_id`), the memory bus a push's body.
pub fn content_key(source: &str, bytes: &[u8]) -> [u8; 32] {
    *blake3::Hasher::new()
        .update(source.as_bytes())
        .update(&[0])
        .update(bytes)
        .finalize()
        .as_bytes()
}

/// A message's id for JetStream's duplicate detection: its `content_key`.
pub(super) fn message_id(source: &str, payload: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(content_key(source, payload))
}
