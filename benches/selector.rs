//! `fieldSelector` benchmark: `selector::FieldSelector::matches` over every decoded event of
//! tests/fixtures/audit/all-events.jsonl, with a baseline in the same run that compares
//! the same fields of the same events to the same values by hand (the least a filter
//! can cost). Counters are events per iteration, so divan prints events/s. One pass takes
//! well under a microsecond, so each sample runs 256 of them to stay clear of the timer's
//! precision.
//! Run with `cargo bench --bench selector`.

use std::sync::LazyLock;

use divan::counter::ItemsCount;
use divan::{Bencher, black_box};
use kube_audit_stream::event::{Event, Field, decode_event_list};
use kube_audit_stream::selector::FieldSelector;

mod common;

fn main() {
    divan::main();
}

static EVENTS: LazyLock<Vec<Event>> = LazyLock::new(|| {
    let (body, _) = common::event_list("all-events.jsonl");
    decode_event_list(&body, "bench-apiserver", "2026-01-01T00:00:00Z")
        .expect("all-events.jsonl is a valid EventList")
});

fn parse(selector: &str) -> FieldSelector {
    FieldSelector::parse(selector).expect("the bench's selectors are valid")
}

/// Count the events `keep` lets through, with the events' count as the counter.
fn filter(bencher: Bencher, keep: impl Fn(&Event) -> bool + Sync) {
    let events = &*EVENTS;
    bencher
        .counter(ItemsCount::new(events.len()))
        .bench(|| black_box(events).iter().filter(|e| keep(e)).count());
}

/// `user.username=system:admin` (37 of 186 events match).
#[divan::bench_group(sample_size = 256)]
mod one_term {
    use super::*;

    #[divan::bench]
    fn field_selector(bencher: Bencher) {
        let selector = parse("user.username=system:admin");
        filter(bencher, |e| black_box(&selector).matches(e));
    }

    #[divan::bench]
    fn baseline_str_eq(bencher: Bencher) {
        let user = String::from("system:admin");
        filter(bencher, |e| e.get(Field::Username) == black_box(&user));
    }
}

/// `verb=create,objectRef.resource=pods,stage!=ResponseStarted`: three terms, AND.
#[divan::bench_group(sample_size = 256)]
mod three_terms {
    use super::*;

    #[divan::bench]
    fn field_selector(bencher: Bencher) {
        let selector = parse("verb=create,objectRef.resource=pods,stage!=ResponseStarted");
        filter(bencher, |e| black_box(&selector).matches(e));
    }

    #[divan::bench]
    fn baseline_str_eq(bencher: Bencher) {
        let (verb, resource, stage) = (
            String::from("create"),
            String::from("pods"),
            String::from("ResponseStarted"),
        );
        filter(bencher, |e| {
            let (verb, resource, stage) = black_box((&verb, &resource, &stage));
            e.get(Field::Verb) == verb
                && e.get(Field::Resource) == resource
                && e.get(Field::Stage) != stage
        });
    }
}
