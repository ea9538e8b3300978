//! Watch writer benchmark: the streaming body of one watch (`watch::serve`'s response)
//! turning a published batch into frames, polled with a real waker as hyper polls it,
//! each frame then read into one buffer as the connection's writer reads it into TLS;
//! next to a baseline measured in the same run: copying the same events' bytes
//! (head, resourceVersion digits, tail) into one buffer, the least any writer must do.
//!
//! Each sample publishes one decoded batch in the input generator (outside the timed
//! section), then times polling the body until it has nothing more to send. The budget
//! is unlimited, as with `--watcher-bytes-per-second=0`, and the delivery-stage sampling
//! is on, as in the server. Counters are the batch's events and wire bytes. Run with
//! `cargo bench --bench writer`.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, BytesMut};
use divan::Bencher;
use divan::counter::{BytesCount, ItemsCount};
use http_body::Body as _;
use kube_audit_stream::budget::{self, Budget};
use kube_audit_stream::bus::{self, Bus, Filter, Published, Scope};
use kube_audit_stream::config::{SUBSCRIBER_QUEUE_BYTES, SUBSCRIBER_QUEUE_EVENTS};
use kube_audit_stream::metrics::Metrics;
use kube_audit_stream::watch::{self, Query, WatchCtx, Watches};

mod common;

use common::{Fixture, batch};

fn main() {
    divan::main();
}

fn load(name: &str) -> Fixture {
    Fixture::new(common::event_list(name).0)
}

static ALL_EVENTS: LazyLock<Fixture> = LazyLock::new(|| load("all-events.jsonl"));
static AUDIT2RBAC: LazyLock<Fixture> = LazyLock::new(|| load("audit2rbac-demo.log"));

fn bus() -> Bus {
    Bus::new(bus::Config {
        window_events: 10_000,
        window_bytes: 64 << 20,
        subscriber_queue_events: SUBSCRIBER_QUEUE_EVENTS,
        subscriber_queue_bytes: SUBSCRIBER_QUEUE_BYTES,
    })
}

fn counted<'a, 'b>(bencher: Bencher<'a, 'b>, fixture: &Fixture) -> Bencher<'a, 'b> {
    bencher
        .counter(ItemsCount::new(fixture.events))
        .counter(BytesCount::new(fixture.wire_bytes))
}

fn write(bencher: Bencher, fixture: &Fixture) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let _entered = rt.enter();
    let (bus, watches, metrics) = (
        bus(),
        Watches::new(10, 10, std::time::Duration::from_secs(60)),
        Metrics::new(),
    );
    let query = Query::parse(Some("watch=1")).expect("a valid query");
    let ctx = WatchCtx {
        access: None,
        recheck: None,
        budget: Budget::new(
            budget::Config {
                bytes_per_second: 0,
                burst_bytes: 0,
            },
            None,
            tokio::time::Instant::now(),
        ),
        lag_bytes: SUBSCRIBER_QUEUE_BYTES / 2,
        guard: metrics.watch_started("events"),
        format: None,
        user: "bench".into(),
        resource: "events",
        namespace: String::new(),
        // As the server runs it: one frame in 16 measured stage by stage.
        stages: watch::StageMeters::new(&metrics),
    };
    let resp = watch::serve(&bus, &watches, Scope::All, &query, ctx).expect("a watch");
    let mut body = std::pin::pin!(resp.into_body());
    let waker = Waker::noop();
    let mut cx = Context::from_waker(waker);
    let mut out = BytesMut::with_capacity(64 * 1024);
    counted(bencher, fixture)
        .with_inputs(|| {
            bus.publish(batch(&fixture.body));
        })
        .bench_local_values(|()| {
            let mut bytes = 0;
            while let Poll::Ready(Some(Ok(frame))) = body.as_mut().poll_frame(&mut cx) {
                if let Ok(data) = frame.into_data() {
                    bytes += read(&mut out, data);
                }
            }
            bytes
        });
}

/// A frame read as the connection's writer reads it: HTTP/2 hands it over at most 16
/// slices at a time (`bytes`' `Take`), and TLS copies them into its records.
fn read(out: &mut BytesMut, mut data: impl Buf) -> usize {
    let len = data.remaining();
    out.clear();
    while data.has_remaining() {
        let mut slices = [IoSlice::new(&[]); 16];
        let n = data.chunks_vectored(&mut slices);
        let mut took = 0;
        for s in &slices[..n] {
            out.extend_from_slice(s);
            took += s.len();
        }
        data.advance(took);
    }
    len
}

fn copy(bencher: Bencher, fixture: &Fixture) {
    let bus = bus();
    let mut sub = bus
        .subscribe(Filter::scope(Scope::All), None)
        .expect("a live subscription");
    let mut taken: VecDeque<Arc<Published>> = VecDeque::new();
    counted(bencher, fixture)
        .with_inputs(|| {
            taken.clear();
            bus.publish(batch(&fixture.body));
            sub.take(&mut taken);
            std::mem::take(&mut taken)
        })
        .bench_local_values(|taken| {
            let mut out = BytesMut::with_capacity(64 * 1024);
            let mut frames = 0;
            for p in &taken {
                let (head, tail) = p.event.parts(false);
                out.extend_from_slice(head);
                out.extend_from_slice(p.digits());
                out.extend_from_slice(tail);
                if out.len() >= 64 * 1024 {
                    frames += out.split().freeze().len();
                }
            }
            frames + out.len()
        });
}

/// One sample is one batch: the input generator publishes it.
#[divan::bench_group(sample_size = 1)]
mod all_events {
    use super::*;

    #[divan::bench]
    fn watch_body(bencher: Bencher) {
        write(bencher, &ALL_EVENTS);
    }

    #[divan::bench]
    fn baseline_copy(bencher: Bencher) {
        copy(bencher, &ALL_EVENTS);
    }
}

#[divan::bench_group(sample_size = 1)]
mod audit2rbac_demo {
    use super::*;

    #[divan::bench]
    fn watch_body(bencher: Bencher) {
        write(bencher, &AUDIT2RBAC);
    }

    #[divan::bench]
    fn baseline_copy(bencher: Bencher) {
        copy(bencher, &AUDIT2RBAC);
    }
}
