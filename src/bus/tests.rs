//! The bus alone: publish, fan-out by scope, queues that drop and count, the window and
//! its reads, going down and up.

use super::*;
use crate::event::decode_event_list;
use crate::selector::FieldSelector;

fn events(namespaces: &[Option<&str>]) -> Vec<Event> {
    let items: Vec<String> = namespaces
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            let ns = ns.map_or(String::new(), |n| format!(r#","namespace":"{n}""#));
            let verb = if i % 2 == 0 { "get" } else { "put" };
            format!(
                r#"{{"level":"Metadata","auditID":"id-{i}","stage":"ResponseComplete","verb":"{verb}","objectRef":{{"resource":"pods"{ns}}}}}"#
            )
        })
        .collect();
    let body = format!(
        r#"{{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{}]}}"#,
        items.join(",")
    );
    decode_event_list(body.as_bytes(), "test", "2026-01-01T00:00:00Z").unwrap()
}

fn config() -> Config {
    Config {
        window_events: 5,
        window_bytes: 1 << 20,
        subscriber_queue_events: 3,
        subscriber_queue_bytes: 1 << 20,
    }
}

fn scope(scope: Scope) -> Filter {
    Filter::scope(scope)
}

fn drain(sub: &mut Subscription) -> Vec<u64> {
    let waker = futures_util::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    let mut out = VecDeque::new();
    while let Poll::Ready(Some(_)) = sub.poll_take(&mut cx, &mut out) {}
    out.iter().map(|p| p.resource_version).collect()
}

#[test]
fn resource_versions_increase_and_scope_filters() {
    let bus = Bus::new(config());
    let mut all = bus.subscribe(scope(Scope::All), None).unwrap();
    let mut ns_a = bus
        .subscribe(scope(Scope::Namespace("a".into())), None)
        .unwrap();
    let mut any_ns = bus.subscribe(scope(Scope::AllNamespaces), None).unwrap();
    assert_eq!(bus.publish(events(&[Some("a"), None, Some("b")])), 3);
    assert_eq!(drain(&mut all), vec![1, 2, 3]);
    assert_eq!(drain(&mut ns_a), vec![1]);
    assert_eq!(drain(&mut any_ns), vec![1, 3]);
}

#[test]
fn the_selector_runs_before_the_queue() {
    let bus = Bus::new(config());
    let filter = Filter {
        scope: Scope::All,
        selector: FieldSelector::parse("verb=put").unwrap(),
    };
    let mut deletes = bus.subscribe(filter, None).unwrap();
    // Eight events, four puts: the queue of three loses one, not five.
    bus.publish(events(&[None; 8]));
    assert_eq!(drain(&mut deletes), vec![2, 4, 6]);
    assert_eq!(deletes.take_dropped(), 1);
}

#[test]
fn full_queue_drops_and_counts_without_blocking() {
    let bus = Bus::new(config());
    let mut slow = bus.subscribe(scope(Scope::All), None).unwrap();
    let mut fast = bus.subscribe(scope(Scope::All), None).unwrap();
    bus.publish(events(&[None, None]));
    assert_eq!(drain(&mut fast), vec![1, 2]);
    bus.publish(events(&[None, None, None]));
    assert_eq!(drain(&mut fast), vec![3, 4, 5]);
    assert_eq!(drain(&mut slow), vec![1, 2, 3]);
    assert_eq!(slow.take_dropped(), 2);
    assert_eq!(slow.take_dropped(), 0);
    assert_eq!(fast.take_dropped(), 0);
    assert_eq!(bus.stats().dropped_queue_full.load(Ordering::Relaxed), 2);
}

#[test]
fn a_closed_subscription_frees_its_queue_and_is_forgotten() {
    let bus = Bus::new(config());
    let mut sub = bus
        .subscribe(scope(Scope::Namespace("a".into())), Some(0))
        .unwrap();
    bus.publish(events(&[Some("a"), Some("a")]));
    let published = bus.lock().window[0].clone();
    assert_eq!(Arc::strong_count(&published), 3, "window, queue, here");
    let closer = sub.closer();
    assert!(closer.has_pending());
    closer.close();
    assert_eq!(Arc::strong_count(&published), 2, "the queue let go");
    assert!(!closer.has_pending());
    assert_eq!(drain(&mut sub), Vec::<u64>::new());
    assert!(
        bus.lock().index.namespaces.is_empty(),
        "taken off the index"
    );
    let waker = futures_util::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    assert_eq!(
        sub.poll_take(&mut cx, &mut VecDeque::new()),
        Poll::Ready(None)
    );
}

#[test]
fn byte_cap_bounds_a_queue() {
    let mut cfg = config();
    cfg.subscriber_queue_events = 100;
    let one = events(&[None]).pop().unwrap().wire_len(false) + 1;
    cfg.subscriber_queue_bytes = one * 2;
    let bus = Bus::new(cfg);
    let mut sub = bus.subscribe(scope(Scope::All), None).unwrap();
    bus.publish(events(&[None, None, None, None]));
    assert_eq!(drain(&mut sub), vec![1, 2]);
    assert_eq!(sub.take_dropped(), 2);
    // Once read, the queue takes events again.
    bus.publish(events(&[None]));
    assert_eq!(drain(&mut sub), vec![5]);
}

#[test]
fn every_subscriber_shares_the_same_bytes() {
    let bus = Bus::new(config());
    let mut a = bus.subscribe(scope(Scope::All), None).unwrap();
    let mut b = bus.subscribe(scope(Scope::All), None).unwrap();
    bus.publish(events(&[Some("x")]));
    let (mut qa, mut qb) = (VecDeque::new(), VecDeque::new());
    assert!(a.take(&mut qa) > 0 && b.take(&mut qb) > 0);
    assert!(Arc::ptr_eq(&qa[0], &qb[0]));
}

/// A subscriber is woken once per batch, however many of its events the batch holds.
#[test]
fn one_wake_per_batch() {
    struct Count(AtomicUsize);
    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
    let count = Arc::new(Count(AtomicUsize::new(0)));
    let waker = std::task::Waker::from(count.clone());
    let mut cx = Context::from_waker(&waker);
    let bus = Bus::new(config());
    let mut sub = bus.subscribe(scope(Scope::All), None).unwrap();
    let mut into = VecDeque::new();
    assert!(sub.poll_take(&mut cx, &mut into).is_pending());
    bus.publish(events(&[None, None, None]));
    assert_eq!(count.0.load(Ordering::Relaxed), 1);
    assert!(sub.poll_take(&mut cx, &mut into).is_ready());
    assert_eq!(into.len(), 3);
}

#[test]
fn window_replays_and_expires() {
    let bus = Bus::new(config());
    bus.publish(events(&[
        Some("a"),
        Some("b"),
        Some("a"),
        Some("b"),
        Some("a"),
        Some("b"),
        Some("a"),
    ]));
    // window_events = 5: rv 3..=7 kept.
    let mut from4 = bus
        .subscribe(scope(Scope::Namespace("a".into())), Some(4))
        .unwrap();
    assert_eq!(drain(&mut from4), vec![5, 7]);
    let mut from2 = bus.subscribe(scope(Scope::All), Some(2)).unwrap();
    assert_eq!(drain(&mut from2), vec![3, 4, 5, 6, 7]);
    assert_eq!(
        bus.subscribe(scope(Scope::All), Some(1)).err(),
        Some(Refused::Expired(Expired {
            requested: 1,
            oldest: 3
        }))
    );
    let mut from0 = bus.subscribe(scope(Scope::All), Some(0)).unwrap();
    assert_eq!(drain(&mut from0), vec![3, 4, 5, 6, 7]);
    let mut live = bus.subscribe(scope(Scope::All), Some(7)).unwrap();
    bus.publish(events(&[None]));
    assert_eq!(drain(&mut live), vec![8]);
}

#[test]
fn list_pages_and_expires() {
    let bus = Bus::new(config());
    bus.publish(events(&[
        Some("a"),
        None,
        Some("a"),
        None,
        Some("a"),
        None,
        Some("a"),
    ]));
    // window_events = 5: rv 3..=7 kept.
    let all = Filter::scope(Scope::All);
    let rvs = |p: &Page| {
        p.items
            .iter()
            .map(|p| p.resource_version)
            .collect::<Vec<_>>()
    };
    let page = bus.list(&all, ListRange::default()).unwrap();
    assert_eq!(
        (rvs(&page), page.resource_version, page.more),
        (vec![3, 4, 5, 6, 7], 7, false)
    );
    let first = ListRange {
        limit: 2,
        ..Default::default()
    };
    let page = bus.list(&all, first).unwrap();
    assert_eq!((rvs(&page), page.more), (vec![3, 4], true));
    let next = ListRange {
        after: 4,
        after_must_be_kept: true,
        at: At::Exact(7),
        limit: 2,
    };
    assert_eq!(rvs(&bus.list(&all, next).unwrap()), vec![5, 6]);
    // A snapshot: what came later is left out, however much is asked for.
    bus.publish(events(&[None]));
    let at7 = ListRange {
        after: 6,
        after_must_be_kept: true,
        at: At::Exact(7),
        limit: 0,
    };
    let page = bus.list(&all, at7).unwrap();
    assert_eq!(
        (rvs(&page), page.resource_version, page.more),
        (vec![7], 7, false)
    );
    // Exactly full: no further page is promised.
    let ns_a = Filter::scope(Scope::Namespace("a".into()));
    let page = bus
        .list(
            &ns_a,
            ListRange {
                limit: 2,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!((rvs(&page), page.more), (vec![5, 7], false));
    // rv 4..=8 kept now: a continuation after 2 lost rv 3.
    let lost = ListRange {
        after: 2,
        after_must_be_kept: true,
        at: At::Now,
        limit: 2,
    };
    assert_eq!(
        bus.list(&all, lost).err(),
        Some(ListError::Expired(Expired {
            requested: 2,
            oldest: 4
        }))
    );
    let inconsistent = ListRange {
        after_must_be_kept: false,
        ..lost
    };
    assert_eq!(rvs(&bus.list(&all, inconsistent).unwrap()), vec![4, 5]);
    let old = ListRange {
        at: At::NotOlderThan(1),
        ..Default::default()
    };
    assert!(matches!(bus.list(&all, old), Err(ListError::Expired(_))));
    let new = ListRange {
        at: At::Exact(9),
        ..Default::default()
    };
    assert_eq!(
        bus.list(&all, new).err(),
        Some(ListError::TooLarge {
            requested: 9,
            current: 8
        })
    );
    let newer = ListRange {
        at: At::NotOlderThan(5),
        ..Default::default()
    };
    assert_eq!(bus.list(&all, newer).unwrap().resource_version, 8);
    let found = bus
        .find(|e| e.audit_id() == "id-4")
        .unwrap()
        .map(|p| p.resource_version);
    assert_eq!(found, Some(5));
    assert!(
        bus.find(|e| e.audit_id() == "id-1").unwrap().is_none(),
        "evicted"
    );
    assert!(bus.set_down("NATS lost"), "it was up");
    assert!(!bus.set_down("NATS still lost"), "already down");
    assert_eq!(
        bus.find(|_| true).err().as_ref().map(Down::reason),
        Some("NATS still lost")
    );
    assert!(bus.set_up(), "it was down");
    assert!(!bus.set_up(), "already up");
}

#[test]
fn window_byte_cap_evicts() {
    let mut cfg = config();
    cfg.window_events = 100;
    let one = events(&[None]).pop().unwrap().memory_len();
    cfg.window_bytes = one * 2;
    let bus = Bus::new(cfg);
    bus.publish(events(&[None, None, None]));
    assert_eq!(bus.stats().window_events.load(Ordering::Relaxed), 2);
    assert!(bus.subscribe(scope(Scope::All), Some(1)).is_ok());
    assert!(bus.subscribe(scope(Scope::All), Some(0)).is_ok());
}

#[test]
fn dropped_subscribers_are_removed() {
    let bus = Bus::new(config());
    let a = bus.subscribe(scope(Scope::All), None).unwrap();
    let b = bus
        .subscribe(scope(Scope::Namespace("x".into())), None)
        .unwrap();
    drop((a, b));
    let st = bus.lock();
    assert!(st.index.all.is_empty() && st.index.namespaces.is_empty());
}

#[tokio::test(start_paused = true)]
async fn wait_for_wakes_on_the_publish_that_reaches_it() {
    let bus = Bus::new(config());
    let waiter = {
        let bus = bus.clone();
        tokio::spawn(async move {
            bus.wait_for(2, std::time::Duration::from_secs(3600)).await;
            tokio::time::Instant::now()
        })
    };
    let start = tokio::time::Instant::now();
    tokio::task::yield_now().await;
    bus.publish(events(&[Some("a")]));
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished(), "rv 1 is not rv 2");
    bus.publish(events(&[Some("a")]));
    // Paused time: had it slept in steps, time would have moved on.
    assert_eq!(waiter.await.unwrap(), start);
    // Already reached, or never within the timeout: returns either way.
    bus.wait_for(1, std::time::Duration::ZERO).await;
    bus.wait_for(99, std::time::Duration::from_millis(5)).await;
}
