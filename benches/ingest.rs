//! Ingest decode benchmark: `event::decode_event_list` on webhook `EventList` bodies built
//! from the real audit fixtures, next to two serde_json baselines on the same bytes in the
//! same run:
//!
//! * `baseline_raw_split`: the bare envelope split into `Vec<&RawValue>` items;
//! * `baseline_split_route`: that split, then each item's routing fields (auditID, stage,
//!   level, verb, user.username, objectRef namespace/resource/name) read with a borrowing
//!   serde parse: the least a decoder that routes must do, and the performance issue's
//!   yardstick (decode should reach half its pace);
//! * `sonic_split_route`: the same split and the same routing fields with sonic-rs's lazy
//!   SIMD iterators (the checked ones, which validate every skipped value): issue #24's
//!   upper bound for a sonic-based decoder, to set beside `decode_event_list`; it checks
//!   once at start that it counts as many items as the serde split;
//! * `baseline_value_tree`: a full `serde_json::Value` parse, what a naive decoder does.
//!
//! Redaction at ingest (the tenants issue) beside them: `decode_event_list` runs with
//! every rule on, the server's default; `decode_redaction_off` is the same decode with
//! `--redact=` (no rule), and `decode_redaction_hmac` with `--redaction-key-file` (values
//! replaced by an HMAC). A Metadata event has no bodies, so on and off must cost the same
//! for `audit2rbac_demo`; for `all_events` the difference is what redaction costs.
//!
//! Counters are bytes and events per iteration, so divan prints MB/s and events/s.
//! Run with `cargo bench --bench ingest`.

use std::sync::LazyLock;

mod common;

use divan::counter::{BytesCount, ItemsCount};
use divan::{Bencher, black_box};
use kube_audit_stream::event::{Redaction, Rules, decode_event_list, decode_event_list_with};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Stands in for the clock, as ingest passes it for events with no timestamp at all.
const NOW: &str = "2026-01-01T00:00:00Z";
const SOURCE: &str = "bench-apiserver";

fn main() {
    divan::main();
}

/// A webhook body and the number of events in it.
struct Fixture {
    body: Vec<u8>,
    events: usize,
}

/// Wrap a JSON-lines audit log into one `audit.k8s.io/v1` `EventList`, as kube-apiserver's
/// webhook backend sends it, and check once that the decoder accepts all of it.
fn load(name: &str) -> Fixture {
    let (body, events) = common::event_list(name);
    let decoded = decode_event_list(&body, SOURCE, NOW)
        .unwrap_or_else(|e| panic!("fixture {name} is not a valid EventList: {e}"));
    assert_eq!(decoded.len(), events, "every line of {name} is an event");
    Fixture { body, events }
}

/// 186 events, 0.9 MB, mostly `RequestResponse` with request/response objects.
static ALL_EVENTS: LazyLock<Fixture> = LazyLock::new(|| load("all-events.jsonl"));
/// 37 small `Metadata` events (under 1 KB each).
static AUDIT2RBAC: LazyLock<Fixture> = LazyLock::new(|| load("audit2rbac-demo.log"));

/// The envelope only, items left as raw text.
#[derive(Deserialize)]
struct RawList<'a> {
    #[serde(borrow)]
    items: Vec<&'a RawValue>,
}

fn counted<'a, 'b>(bencher: Bencher<'a, 'b>, fixture: &Fixture) -> Bencher<'a, 'b> {
    bencher
        .counter(BytesCount::new(fixture.body.len()))
        .counter(ItemsCount::new(fixture.events))
}

fn decode(bencher: Bencher, fixture: &'static Fixture) {
    counted(bencher, fixture).bench(|| {
        decode_event_list(black_box(&fixture.body), SOURCE, NOW)
            .expect("the fixture decoded once at load")
    });
}

/// No redaction rule (`--redact=`).
static OFF: LazyLock<Redaction> = LazyLock::new(Redaction::off);
/// Every rule, values replaced by an HMAC under a key (`--redaction-key-file`).
static HMAC: LazyLock<Redaction> =
    LazyLock::new(|| Redaction::new(Rules::all(), Some(b"bench-redaction-key")));

fn decode_with(bencher: Bencher, fixture: &'static Fixture, redaction: &'static Redaction) {
    counted(bencher, fixture).bench(|| {
        decode_event_list_with(black_box(&fixture.body), SOURCE, NOW, redaction)
            .expect("the fixture decoded once at load")
    });
}

fn raw_split(bencher: Bencher, fixture: &'static Fixture) {
    counted(bencher, fixture).bench(|| {
        let list: RawList<'_> =
            serde_json::from_slice(black_box(&fixture.body)).expect("the fixture is JSON");
        list.items.len()
    });
}

/// The fields routing reads, borrowed where unescaped; everything else skipped.
#[derive(Deserialize)]
#[allow(dead_code)]
struct Routing<'a> {
    #[serde(borrow, rename = "auditID")]
    audit_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    stage: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    level: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    verb: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    user: Option<User<'a>>,
    #[serde(borrow, default, rename = "objectRef")]
    object_ref: Option<ObjectRef<'a>>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct User<'a> {
    #[serde(borrow, default)]
    username: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct ObjectRef<'a> {
    #[serde(borrow, default)]
    namespace: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    resource: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<std::borrow::Cow<'a, str>>,
}

fn split_route(bencher: Bencher, fixture: &'static Fixture) {
    counted(bencher, fixture).bench(|| {
        let list: RawList<'_> =
            serde_json::from_slice(black_box(&fixture.body)).expect("the fixture is JSON");
        list.items
            .iter()
            .map(|raw| {
                let r: Routing<'_> = serde_json::from_str(raw.get()).expect("an event");
                black_box(r).stage.len()
            })
            .sum::<usize>()
    });
}

/// `items` split with sonic-rs: the top level walked with the checked object iterator
/// (every member validated, as serde_json's envelope parse does), `items` with the checked
/// array iterator. Returns the raw item slices.
fn sonic_items(body: &[u8]) -> Vec<sonic_rs::LazyValue<'_>> {
    let mut items = None;
    for member in sonic_rs::to_object_iter(body) {
        let (key, value) = member.expect("the fixture is JSON");
        if key == "items" {
            let split = value
                .into_array_iter()
                .expect("items is an array")
                .collect::<Result<Vec<_>, _>>()
                .expect("the fixture is JSON");
            items = Some(split);
        }
    }
    items.expect("the fixture has items")
}

/// A string field as `Routing` reads it: unescaped only when needed.
fn sonic_str<'a>(value: &'a sonic_rs::LazyValue<'_>) -> &'a str {
    use sonic_rs::JsonValueTrait;
    value.as_str().expect("a string")
}

/// `Routing`'s fields, read from one item with sonic-rs's lazy object iterator (the item
/// was validated by the split; the iterator skips the members routing does not read).
fn sonic_route(item: sonic_rs::LazyValue<'_>) -> usize {
    let (mut audit_id, mut stage, mut level, mut verb) = (0, None, 0, 0);
    let (mut username, mut namespace, mut resource, mut name) = (0, 0, 0, 0);
    for member in item.into_object_iter().expect("an event") {
        let (key, value) = member.expect("an event");
        match &*key {
            "auditID" => audit_id = sonic_str(&value).len(),
            "stage" => stage = Some(sonic_str(&value).len()),
            "level" => level = sonic_str(&value).len(),
            "verb" => verb = sonic_str(&value).len(),
            "user" => {
                for member in value.into_object_iter().into_iter().flatten() {
                    let (key, value) = member.expect("an event");
                    if key == "username" {
                        username = sonic_str(&value).len();
                    }
                }
            }
            "objectRef" => {
                for member in value.into_object_iter().into_iter().flatten() {
                    let (key, value) = member.expect("an event");
                    match &*key {
                        "namespace" => namespace = sonic_str(&value).len(),
                        "resource" => resource = sonic_str(&value).len(),
                        "name" => name = sonic_str(&value).len(),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    black_box((audit_id, level, verb, username, namespace, resource, name));
    stage.expect("an event has a stage")
}

fn sonic_split_route_on(bencher: Bencher, fixture: &'static Fixture) {
    // One-off check: sonic splits as many items as serde_json does.
    let list: RawList<'_> = serde_json::from_slice(&fixture.body).expect("the fixture is JSON");
    let sonic = sonic_items(&fixture.body).len();
    assert_eq!(
        sonic,
        list.items.len(),
        "sonic-rs and serde_json split differently"
    );
    assert_eq!(sonic, fixture.events, "sonic-rs split every event");
    counted(bencher, fixture).bench(|| {
        sonic_items(black_box(&fixture.body))
            .into_iter()
            .map(sonic_route)
            .sum::<usize>()
    });
}

fn value_tree(bencher: Bencher, fixture: &'static Fixture) {
    counted(bencher, fixture).bench(|| {
        serde_json::from_slice::<serde_json::Value>(black_box(&fixture.body))
            .expect("the fixture is JSON")
    });
}

/// tests/fixtures/audit/all-events.jsonl as one EventList.
mod all_events {
    use super::*;

    #[divan::bench]
    fn decode_event_list(bencher: Bencher) {
        decode(bencher, &ALL_EVENTS);
    }

    #[divan::bench]
    fn decode_redaction_off(bencher: Bencher) {
        decode_with(bencher, &ALL_EVENTS, &OFF);
    }

    #[divan::bench]
    fn decode_redaction_hmac(bencher: Bencher) {
        decode_with(bencher, &ALL_EVENTS, &HMAC);
    }

    #[divan::bench]
    fn baseline_raw_split(bencher: Bencher) {
        raw_split(bencher, &ALL_EVENTS);
    }

    #[divan::bench]
    fn baseline_split_route(bencher: Bencher) {
        split_route(bencher, &ALL_EVENTS);
    }

    #[divan::bench]
    fn sonic_split_route(bencher: Bencher) {
        sonic_split_route_on(bencher, &ALL_EVENTS);
    }

    #[divan::bench]
    fn baseline_value_tree(bencher: Bencher) {
        value_tree(bencher, &ALL_EVENTS);
    }
}

/// tests/fixtures/audit/audit2rbac-demo.log (small events) as one EventList.
mod audit2rbac_demo {
    use super::*;

    #[divan::bench]
    fn decode_event_list(bencher: Bencher) {
        decode(bencher, &AUDIT2RBAC);
    }

    #[divan::bench]
    fn decode_redaction_off(bencher: Bencher) {
        decode_with(bencher, &AUDIT2RBAC, &OFF);
    }

    #[divan::bench]
    fn decode_redaction_hmac(bencher: Bencher) {
        decode_with(bencher, &AUDIT2RBAC, &HMAC);
    }

    #[divan::bench]
    fn baseline_raw_split(bencher: Bencher) {
        raw_split(bencher, &AUDIT2RBAC);
    }

    #[divan::bench]
    fn baseline_split_route(bencher: Bencher) {
        split_route(bencher, &AUDIT2RBAC);
    }

    #[divan::bench]
    fn sonic_split_route(bencher: Bencher) {
        sonic_split_route_on(bencher, &AUDIT2RBAC);
    }

    #[divan::bench]
    fn baseline_value_tree(bencher: Bencher) {
        value_tree(bencher, &AUDIT2RBAC);
    }
}
