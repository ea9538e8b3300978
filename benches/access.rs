//! Per-resource authorization benchmark: what `--authorization-granularity=resource` adds
//! per event × watcher. A watch asks the authorizer once per (group, resource,
//! namespace) and keeps the answers (`watch::access::Access`); once warm, each event
//! should cost it one hash lookup. Measured over every event of a fixture, beside two
//! baselines in the same run:
//!
//! * `baseline_namespace_granularity`: the default granularity. The watch body checks
//!   nothing per event; the bus finds an event's namespace watchers with one hash lookup
//!   per event (shared by all of them), which is what this measures;
//! * `baseline_one_hash_lookup`: the goal's yardstick, one lookup per event of a map
//!   keyed by a hash of the event's group, resource and namespace.
//!
//! Counters are events per iteration, so divan prints events/s.
//! Run with `cargo bench --bench access`.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Waker};
use std::time::Duration;

use divan::counter::ItemsCount;
use divan::{Bencher, black_box};
use kube_audit_stream::event::{Event, Field};
use kube_audit_stream::watch::access::{Access, ResourceCheck, ResourceKey, Verdict};
use tokio::time::Instant;

mod common;

fn main() {
    divan::main();
}

/// Longer than any bench: the warm answers are never forgotten while measured.
const FORGET_EVERY: Duration = Duration::from_secs(3600);

/// all-events.jsonl: 186 events of many resources in 16 namespaces.
static MIXED: LazyLock<Vec<Event>> =
    LazyLock::new(|| common::batch(&common::event_list("all-events.jsonl").0));
/// audit2rbac-demo.log: 37 Metadata events.
static METADATA: LazyLock<Vec<Event>> =
    LazyLock::new(|| common::batch(&common::event_list("audit2rbac-demo.log").0));

/// An authorizer that answers at once: anything but secrets.
fn check() -> ResourceCheck {
    Arc::new(|key: ResourceKey| Box::pin(std::future::ready(Ok(&*key.resource != "secrets"))))
}

/// A watch's answers, warmed by one pass over `events` (every key asked and answered).
fn warm(events: &[Event], now: Instant) -> Access {
    let mut access = Access::new(check(), FORGET_EVERY);
    let mut cx = Context::from_waker(Waker::noop());
    for ev in events {
        let verdict = access.verdict(ev, &mut cx, now);
        assert_ne!(verdict, Verdict::Pending, "the check answers at once");
    }
    access
}

fn resource_warm(bencher: Bencher, events: &'static [Event]) {
    let now = Instant::now();
    let mut access = warm(events, now);
    let mut cx = Context::from_waker(Waker::noop());
    bencher
        .counter(ItemsCount::new(events.len()))
        .bench_local(|| {
            events
                .iter()
                .filter(|ev| access.verdict(black_box(ev), &mut cx, now) == Verdict::Send)
                .count()
        });
}

fn namespace_granularity(bencher: Bencher, events: &'static [Event]) {
    // The bus's index: a namespace's watchers by name.
    let index: HashMap<Box<str>, usize> = events
        .iter()
        .filter_map(Event::namespace)
        .enumerate()
        .map(|(i, ns)| (ns.into(), i))
        .collect();
    bencher
        .counter(ItemsCount::new(events.len()))
        .bench_local(|| {
            events
                .iter()
                .filter_map(|ev| black_box(ev).namespace())
                .filter_map(|ns| index.get(ns))
                .count()
        });
}

fn key_hash(ev: &Event) -> u64 {
    let mut h = DefaultHasher::new();
    ev.get(Field::ApiGroup).hash(&mut h);
    ev.get(Field::Resource).hash(&mut h);
    ev.get(Field::Namespace).hash(&mut h);
    h.finish()
}

fn one_hash_lookup(bencher: Bencher, events: &'static [Event]) {
    let answers: HashMap<u64, bool> = events.iter().map(|ev| (key_hash(ev), true)).collect();
    bencher
        .counter(ItemsCount::new(events.len()))
        .bench_local(|| {
            events
                .iter()
                .filter(|ev| answers.get(&key_hash(black_box(ev))) == Some(&true))
                .count()
        });
}

/// all-events.jsonl, each event checked for one watcher.
mod mixed {
    use super::*;

    #[divan::bench]
    fn resource_granularity_warm(bencher: Bencher) {
        resource_warm(bencher, &MIXED);
    }

    #[divan::bench]
    fn baseline_namespace_granularity(bencher: Bencher) {
        namespace_granularity(bencher, &MIXED);
    }

    #[divan::bench]
    fn baseline_one_hash_lookup(bencher: Bencher) {
        one_hash_lookup(bencher, &MIXED);
    }
}

/// audit2rbac-demo.log (Metadata events), each event checked for one watcher.
mod metadata {
    use super::*;

    #[divan::bench]
    fn resource_granularity_warm(bencher: Bencher) {
        resource_warm(bencher, &METADATA);
    }

    #[divan::bench]
    fn baseline_namespace_granularity(bencher: Bencher) {
        namespace_granularity(bencher, &METADATA);
    }

    #[divan::bench]
    fn baseline_one_hash_lookup(bencher: Bencher) {
        one_hash_lookup(bencher, &METADATA);
    }
}
