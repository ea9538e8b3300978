//! Fan-out benchmark: `bus::Bus::publish` of one decoded batch (every event of
//! tests/fixtures/audit/all-events.jsonl, size-limited as ingest does) to 1, 100 and 1000
//! subscribers, with the same publish to no subscriber as the baseline measured in the
//! same run (assigning resourceVersions and keeping the replay window).
//!
//! Two shapes of audience:
//! * `full_stream`: every subscriber watches `events`, so each event is queued N times
//!   (the cost per event × watcher, which must stay tiny);
//! * `namespaces`: the batch's events spread over 1000 namespaces and each subscriber
//!   watches one of them, as namespace owners do: publish should cost the subscribers
//!   an event matches, not every subscriber.
//!
//! Every subscriber has a real waker (counting its wake-ups, registered before each
//! publish as a waiting watch registers it), so the bench pays for the wake-ups a server
//! pays for. `Event` is not `Clone`, so each iteration gets a freshly decoded batch from
//! divan's `with_inputs`, outside the timed section; the input generator also drains
//! every subscriber, so no queue ever fills and the bench never measures the drop path
//! (checked at the end of each bench).
//!
//! Counters are the batch's events and wire bytes per publish, so divan prints published
//! events/s and MB/s. Run with `cargo bench --bench fanout`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Wake, Waker};

use divan::Bencher;
use divan::counter::{BytesCount, ItemsCount};
use kube_audit_stream::bus::{self, Bus, Filter, Scope, Subscription};
use kube_audit_stream::config::{SUBSCRIBER_QUEUE_BYTES, SUBSCRIBER_QUEUE_EVENTS};

/// Namespaces the `namespaces` batch spreads its events over.
const NAMESPACES: usize = 1000;

mod common;

use common::{Fixture, batch};

fn main() {
    divan::main();
}

/// all-events.jsonl as it is (16 namespaces, some events cluster-scoped).
static ALL_EVENTS: LazyLock<Fixture> =
    LazyLock::new(|| Fixture::new(common::event_list("all-events.jsonl").0));

/// all-events.jsonl with event i in namespace `ns-{i % 1000}` (its objectRef rewritten,
/// one added where it had none).
static SPREAD: LazyLock<Fixture> = LazyLock::new(|| {
    let (body, _) = common::event_list("all-events.jsonl");
    let mut list: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    let items = list["items"].as_array_mut().expect("items");
    for (i, item) in items.iter_mut().enumerate() {
        let object_ref = item
            .as_object_mut()
            .expect("an event")
            .entry("objectRef")
            .or_insert_with(|| serde_json::json!({"resource": "pods"}));
        object_ref["namespace"] = format!("ns-{}", i % NAMESPACES).into();
    }
    Fixture::new(serde_json::to_vec(&list).expect("JSON"))
});

/// The server's default window and per-subscriber queue sizes.
fn config() -> bus::Config {
    bus::Config {
        window_events: 10_000,
        window_bytes: 64 << 20,
        subscriber_queue_events: SUBSCRIBER_QUEUE_EVENTS,
        subscriber_queue_bytes: SUBSCRIBER_QUEUE_BYTES,
    }
}

/// Counts wake-ups, as a task's waker would schedule it.
#[derive(Default)]
struct CountingWaker(AtomicU64);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// A subscriber as a waiting watch holds it: drained, its waker registered.
struct Watcher {
    sub: Subscription,
    waker: Waker,
    taken: VecDeque<Arc<bus::Published>>,
}

impl Watcher {
    fn wait(&mut self) {
        let mut cx = Context::from_waker(&self.waker);
        while self.sub.poll_take(&mut cx, &mut self.taken).is_ready() {
            self.taken.clear();
        }
    }
}

fn publish(bencher: Bencher, fixture: &Fixture, scopes: impl Iterator<Item = Scope>) {
    let bus = Bus::new(config());
    let wakes = Arc::new(CountingWaker::default());
    let mut watchers: Vec<Watcher> = scopes
        .map(|scope| Watcher {
            sub: bus
                .subscribe(Filter::scope(scope), None)
                .expect("a live subscription cannot be expired"),
            waker: Waker::from(wakes.clone()),
            taken: VecDeque::new(),
        })
        .collect();
    bencher
        .counter(ItemsCount::new(fixture.events))
        .counter(BytesCount::new(fixture.wire_bytes))
        .with_inputs(|| {
            watchers.iter_mut().for_each(Watcher::wait);
            batch(&fixture.body)
        })
        .bench_local_values(|events| bus.publish(events));
    let dropped = bus.stats().dropped_queue_full.load(Ordering::Relaxed);
    assert_eq!(
        dropped, 0,
        "a subscriber queue filled: the bench measured drops"
    );
    if !watchers.is_empty() {
        assert!(
            wakes.0.load(Ordering::Relaxed) > 0,
            "subscribers were woken"
        );
    }
}

/// One sample is one publish, so the input generator drains the queues before each.
#[divan::bench_group(sample_size = 1)]
mod full_stream {
    use super::*;

    /// Nobody subscribed: resourceVersions, counters and the replay window only.
    #[divan::bench]
    fn baseline_no_subscribers(bencher: Bencher) {
        publish(bencher, &ALL_EVENTS, std::iter::empty());
    }

    #[divan::bench(args = [1, 100, 1000])]
    fn subscribers(bencher: Bencher, n: usize) {
        publish(bencher, &ALL_EVENTS, std::iter::repeat_n(Scope::All, n));
    }
}

/// Events over 1000 namespaces, one subscriber per namespace for the first N.
#[divan::bench_group(sample_size = 1)]
mod namespaces {
    use super::*;

    #[divan::bench]
    fn baseline_no_subscribers(bencher: Bencher) {
        publish(bencher, &SPREAD, std::iter::empty());
    }

    #[divan::bench(args = [1, 100, 1000])]
    fn subscribers(bencher: Bencher, n: usize) {
        let scopes = (0..n).map(|i| Scope::Namespace(format!("ns-{i}").into()));
        publish(bencher, &SPREAD, scopes);
    }
}
