//! Fan-out benchmark: `bus::Bus::publish` of one decoded batch (every event of
//! tests/fixtures/audit/all-events.jsonl, size-limited as ingest does) to 1, 100 and 1000
//! `Scope::All` subscribers, with the same publish to no subscriber as the baseline
//! measured in the same run (assigning resourceVersions and keeping the replay window).
//!
//! `Event` is not `Clone`, so each iteration gets a freshly decoded batch from divan's
//! `with_inputs`, outside the timed section. The bus uses the server's real queue sizes;
//! every sample is a single iteration and the input generator first drains every
//! subscriber, so no queue ever fills and the bench never measures the drop path (checked
//! at the end of each bench).
//!
//! Counters are the batch's events and wire bytes per publish, so divan prints published
//! events/s and MB/s; each subscriber receives all of them. Run with
//! `cargo bench --bench fanout`.

use std::sync::LazyLock;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};

use divan::Bencher;
use divan::counter::{BytesCount, ItemsCount};
use kube_audit_stream::bus::{self, Bus, Scope, Subscription};
use kube_audit_stream::config::{SUBSCRIBER_QUEUE_BYTES, SUBSCRIBER_QUEUE_EVENTS};
use kube_audit_stream::event::{Event, Limited, decode_event_list};

const NOW: &str = "2026-01-01T00:00:00Z";
const SOURCE: &str = "bench-apiserver";
/// `--max-event-bytes` default: ingest truncates events above it before publishing.
const MAX_EVENT_BYTES: usize = 100 * 1024;

mod common;

fn main() {
    divan::main();
}

/// The webhook body, and the batch's size once decoded (events, wire bytes).
struct Fixture {
    body: Vec<u8>,
    events: usize,
    wire_bytes: usize,
}

static ALL_EVENTS: LazyLock<Fixture> = LazyLock::new(|| {
    let (body, _) = common::event_list("all-events.jsonl");
    let batch = batch(&body);
    Fixture {
        events: batch.len(),
        wire_bytes: batch.iter().map(|e| e.wire_len(false)).sum(),
        body,
    }
});

/// Decode and size-limit a batch, as `POST /ingest` does before `Bus::publish`.
fn batch(body: &[u8]) -> Vec<Event> {
    decode_event_list(body, SOURCE, NOW)
        .expect("all-events.jsonl is a valid EventList")
        .into_iter()
        .filter_map(|ev| match ev.limit_size(MAX_EVENT_BYTES) {
            Limited::Fits(ev) | Limited::Truncated(ev) => Some(ev),
            Limited::TooLarge { .. } => None,
        })
        .collect()
}

/// The server's default window and per-subscriber queue sizes.
fn config() -> bus::Config {
    bus::Config {
        window_events: 10_000,
        window_bytes: 64 << 20,
        subscriber_queue_events: SUBSCRIBER_QUEUE_EVENTS,
        subscriber_queue_bytes: SUBSCRIBER_QUEUE_BYTES,
    }
}

/// Take everything queued for `sub` without waiting.
fn drain(sub: &mut Subscription) {
    let mut cx = Context::from_waker(Waker::noop());
    while let Poll::Ready(Some(_)) = sub.poll_next(&mut cx) {}
}

fn publish(bencher: Bencher, subscribers: usize) {
    let fixture = &*ALL_EVENTS;
    let bus = Bus::new(config());
    let mut subs: Vec<Subscription> = (0..subscribers)
        .map(|_| {
            bus.subscribe(Scope::All, None)
                .expect("a live subscription cannot be expired")
        })
        .collect();
    bencher
        .counter(ItemsCount::new(fixture.events))
        .counter(BytesCount::new(fixture.wire_bytes))
        .with_inputs(|| {
            subs.iter_mut().for_each(drain);
            batch(&fixture.body)
        })
        .bench_local_values(|events| bus.publish(events));
    let dropped = bus.stats().dropped_queue_full.load(Ordering::Relaxed);
    assert_eq!(
        dropped, 0,
        "a subscriber queue filled: the bench measured drops"
    );
    drop(subs);
}

/// One sample is one publish, so the input generator drains the queues before each.
#[divan::bench_group(sample_size = 1)]
mod publish_all_events {
    use super::*;

    /// Nobody subscribed: resourceVersions, counters and the replay window only.
    #[divan::bench]
    fn baseline_no_subscribers(bencher: Bencher) {
        publish(bencher, 0);
    }

    #[divan::bench(args = [1, 100, 1000])]
    fn subscribers(bencher: Bencher, n: usize) {
        publish(bencher, n);
    }
}
