//! The numbers of a watch or LIST query (`timeoutSeconds`, `limit`, `resourceVersion`,
//! and those a continue token carries), from arbitrary integers in every spelling a
//! client can send (beyond 64 bits, signed, zero-padded, empty): parsing, the watch's
//! deadline and a LIST of a small window never panic. A refused query is a 4xx `Status`;
//! a LIST answers, or refuses with a 4xx or kube-apiserver's 504 for a resourceVersion
//! not reached. (`timeoutSeconds=18446744073709551615` overflowed the deadline: a 500.)
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use kube_audit_stream::bus::{Bus, Config, Scope};
use kube_audit_stream::event::decode_event_list;
use kube_audit_stream::metrics::Metrics;
use kube_audit_stream::watch::{self, Query, Watches};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

/// A LIST's slot: one of a registry that never fills.
fn slot() -> watch::InFlight {
    static LISTS: OnceLock<(Watches, Metrics)> = OnceLock::new();
    let (lists, metrics) = LISTS.get_or_init(|| {
        let lists = Watches::lists(usize::MAX, usize::MAX, Duration::from_secs(60));
        (lists, Metrics::new())
    });
    match watch::enter_list(lists, "fuzz", "events", "", metrics.list_started("events")) {
        Ok(slot) => slot,
        Err(e) => panic!("no slot: {e:?}"),
    }
}

/// A window of four events, resourceVersions 1 to 4: small numbers land inside it.
fn bus() -> &'static Bus {
    static BUS: OnceLock<Bus> = OnceLock::new();
    BUS.get_or_init(|| {
        let bus = Bus::new(Config {
            window_events: 4,
            window_bytes: 1 << 20,
            subscriber_queue_events: 4,
            subscriber_queue_bytes: 1 << 20,
        });
        let item = |id: u8| {
            format!(
                r#"{{"level":"Metadata","auditID":"{id}","stage":"ResponseComplete","verb":"get"}}"#
            )
        };
        let body = format!(
            r#"{{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{}]}}"#,
            (1..=5).map(item).collect::<Vec<_>>().join(",")
        );
        let events = decode_event_list(body.as_bytes(), "fuzz", "2026-01-01T00:00:00Z")
            .expect("the seed window decodes");
        bus.publish(events);
        bus
    })
}

/// An integer as some client may spell it.
fn number(u: &mut Unstructured) -> Result<String> {
    Ok(match u.int_in_range(0..=7u8)? {
        0 => u.int_in_range(0..=8u64)?.to_string(),
        1 => u.arbitrary::<u64>()?.to_string(),
        2 => u.arbitrary::<i64>()?.to_string(),
        3 => u.arbitrary::<u128>()?.to_string(),
        4 => format!("%2B{}", u.arbitrary::<u64>()?),
        5 => format!("000{}", u.arbitrary::<u32>()?),
        6 => String::new(),
        _ => [
            u64::MAX,
            i64::MAX as u64,
            i64::MAX as u64 + 1,
            9_223_372_036,
            9_223_372_037,
        ][u.int_in_range(0..=4usize)?]
        .to_string(),
    })
}

fn query(u: &mut Unstructured) -> Result<String> {
    let mut q = vec![
        format!("watch={}", u.int_in_range(0..=1u8)?),
        format!("timeoutSeconds={}", number(u)?),
        format!("limit={}", number(u)?),
        format!("resourceVersion={}", number(u)?),
    ];
    match u.int_in_range(0..=3u8)? {
        0 => {}
        1 => q.push("resourceVersionMatch=Exact".into()),
        2 => q.push("resourceVersionMatch=NotOlderThan".into()),
        _ => q.push(
            "sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"
                .into(),
        ),
    }
    if u.arbitrary::<bool>()? {
        let token = format!(
            r#"{{"v":"audit.k8s.io/v1alpha1","rv":{},"after":{}}}"#,
            number(u)?.trim_start_matches("%2B"),
            number(u)?.trim_start_matches("%2B"),
        );
        q.push(format!("continue={}", URL_SAFE_NO_PAD.encode(token)));
    }
    Ok(q.join("&"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = query(&mut Unstructured::new(data)) else {
        return;
    };
    let q = match Query::parse(Some(&text)) {
        Ok(q) => q,
        Err(e) => {
            let (code, _) = e.code_reason();
            assert!(code.is_client_error(), "{text:?}: {code}");
            return;
        }
    };
    let now = tokio::time::Instant::now();
    let deadline = q.deadline(now);
    assert!(deadline >= now, "{text:?}");
    if !q.watch
        && let Err(e) = watch::list(bus(), Scope::All, &q, None, &|_| true, slot())
    {
        let (code, _) = e.code_reason();
        assert!(
            code.is_client_error() || code == http::StatusCode::GATEWAY_TIMEOUT,
            "{text:?}: {code}"
        );
    }
});
