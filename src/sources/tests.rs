//! The sources alone: counting, silence, shares summed, objects and rows.

use super::object::{rate_text, run_start, time};
use super::*;

fn sources(silent_after: Duration) -> Sources {
    Sources::new(Settings { silent_after }, &Metrics::new())
}

fn accepted(events: u64) -> Push<'static> {
    Push::Accepted {
        events,
        duplicate_events: 0,
        bytes: events * 100,
    }
}

#[test]
fn pushes_are_counted_by_outcome() {
    let s = sources(DEFAULT_SILENT_AFTER);
    s.record("api-1", accepted(3));
    s.record("api-1", accepted(2));
    s.record(
        "api-1",
        Push::Refused {
            code: 400,
            message: "the body is not an audit EventList",
        },
    );
    s.record(
        "api-1",
        Push::Accepted {
            events: 0,
            duplicate_events: 2,
            bytes: 200,
        },
    );
    s.record(
        "api-2",
        Push::Refused {
            code: 413,
            message: "too large",
        },
    );
    let view = s.view();
    let one = &view.items["api-1"].object["status"];
    assert_eq!(one["acceptedEvents"], 5);
    assert_eq!(one["acceptedBatches"], 2);
    assert_eq!(one["acceptedBytes"], 500);
    assert_eq!(one["retriedBatches"], 1);
    assert_eq!(one["refusedBatches"], 1);
    assert_eq!(one["refusedByCode"], json!([{"code": 400, "batches": 1}]));
    assert_eq!(one["lastError"]["code"], 400);
    assert_eq!(one["conditions"][0]["status"], "True");
    assert_eq!(one["conditions"][0]["reason"], "Pushing");
    let two = &view.items["api-2"].object["status"];
    assert_eq!(two["conditions"][0]["status"], "False");
    assert_eq!(two["conditions"][0]["message"], "no push accepted yet");
    assert!(two.get("lastPushTime").is_none());
    assert_eq!(view.items["api-2"].object["kind"], "Source");
}

#[test]
fn a_view_changes_only_with_its_content() {
    let s = sources(DEFAULT_SILENT_AFTER);
    s.record("api-1", accepted(1));
    let first = s.view();
    let again = s.view();
    assert!(
        Arc::ptr_eq(&first, &again),
        "nothing changed: the same view"
    );
    s.record("api-1", accepted(1));
    let next = s.view();
    let (a, b) = (&first.items["api-1"], &next.items["api-1"]);
    assert!(b.resource_version > a.resource_version);
    assert_eq!(next.resource_version, b.resource_version);
    assert_eq!(
        b.object["metadata"]["resourceVersion"],
        b.resource_version.to_string()
    );
}

#[test]
fn a_silent_source_is_not_ready() {
    let s = sources(Duration::from_millis(1));
    s.record("api-1", accepted(1));
    std::thread::sleep(Duration::from_millis(5));
    let view = s.view();
    let c = &view.items["api-1"].object["status"]["conditions"][0];
    assert_eq!(
        (c["status"].as_str(), c["reason"].as_str()),
        (Some("False"), Some("Silent"))
    );
    assert!(!view.items["api-1"].ready());
}

#[test]
fn sources_are_bounded_and_the_longest_silent_goes() {
    let s = sources(DEFAULT_SILENT_AFTER);
    for i in 0..MAX_SOURCES {
        s.record(&format!("api-{i}"), accepted(1));
        std::thread::sleep(Duration::from_micros(2));
    }
    s.record("api-0", accepted(1));
    s.record("one-more", accepted(1));
    let view = s.view();
    assert_eq!(view.items.len(), MAX_SOURCES);
    assert!(view.items.contains_key("api-0"), "pushed again: kept");
    assert!(!view.items.contains_key("api-1"), "silent longest: gone");
    assert!(view.items.contains_key("one-more"));
    assert_eq!(s.inner.meters.evictions.get(), 1);
}

#[test]
fn shares_sum_and_the_condition_comes_from_them() {
    let s = sources(Duration::from_secs(60));
    s.record("api-1", accepted(2));
    let now = now_micros();
    let other = Share {
        v: SHARE_VERSION,
        sources: BTreeMap::from([(
            "api-1".to_owned(),
            Tally {
                first_seen: now - 10_000_000,
                first_push: Some(now - 10_000_000),
                last_push: Some(now - 1_000_000),
                run_start: Some(now - 10_000_000),
                events: 5,
                batches: 1,
                retried: 1,
                refused: BTreeMap::from([(429, 2)]),
                ..Tally::default()
            },
        )]),
    };
    s.remote_share("other-replica", Some(&serde_json::to_vec(&other).unwrap()));
    // Its own share read back is left out: it is counted from memory.
    s.remote_share(&s.inner.replica.clone(), Some(&s.share_bytes()));
    let view = s.view();
    let st = &view.items["api-1"].object["status"];
    assert_eq!(st["acceptedEvents"], 7);
    assert_eq!(st["retriedBatches"], 1);
    assert_eq!(st["refusedByCode"], json!([{"code": 429, "batches": 2}]));
    assert_eq!(st["replicas"], 2);
    assert_eq!(
        st["conditions"][0]["lastTransitionTime"],
        time(now - 10_000_000, 0),
        "ready since the other replica's run began"
    );
    s.remote_share("other-replica", None);
    assert_eq!(
        s.view().items["api-1"].object["status"]["acceptedEvents"],
        2
    );
    // A share past the cap is cut to the most recently heard.
    let many = Share {
        v: SHARE_VERSION,
        sources: (0..MAX_SOURCES as i64 + 10)
            .map(|i| (format!("many-{i:03}"), Tally::new(now + i)))
            .collect(),
    };
    s.remote_share("many", Some(&serde_json::to_vec(&many).unwrap()));
    {
        let remote = lock(&s.inner.remote);
        let kept = &remote["many"];
        assert_eq!(kept.len(), MAX_SOURCES);
        assert!(kept.contains_key("many-073") && !kept.contains_key("many-009"));
    }
    s.remote_share("many", None);
    // A share of another format is left out.
    s.remote_share("odd", Some(br#"{"v":9,"sources":{"x":{}}}"#));
    s.remote_share("bad", Some(b"nope"));
    assert!(!s.view().items.contains_key("x"));
}

#[test]
fn runs_join_across_replicas() {
    let t = |run: i64, last: i64| Tally {
        run_start: Some(run),
        last_push: Some(last),
        ..Tally::default()
    };
    let (a, b, c) = (t(200, 300), t(100, 150), t(5, 110));
    assert_eq!(run_start(&[&a, &b, &c], 60), Some(5));
    // A gap of more than 60 between b and a: a's run stands alone.
    assert_eq!(run_start(&[&a, &t(100, 130)], 60), Some(200));
    assert_eq!(run_start(&[], 60), None);
}

#[test]
fn rates_over_the_last_minute() {
    let mut own = Own {
        tally: Tally::default(),
        samples: VecDeque::from([(0, 0)]),
    };
    own.tally.events = 120;
    own.sample(60_000_000);
    assert_eq!(own.tally.rate_milli, 2_000);
    own.sample(120_000_000);
    assert_eq!(own.tally.rate_milli, 0, "nothing in the last minute");
    assert!(own.samples.len() <= 62);
    assert_eq!(rate_text(2_000), "2");
    assert_eq!(rate_text(12_500), "12.5");
    assert_eq!(rate_text(16), "0.016");
}

#[test]
fn names_for_the_bucket() {
    assert_eq!(bucket_name("KUBE_AUDIT"), "KUBE_AUDIT_sources");
    assert_eq!(bucket_name("a:b"), "a_b_sources");
    assert_eq!(cut("ééé", 3), "é");
}
