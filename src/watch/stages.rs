//! Where a watch's delivery time goes, stage by stage, after the bus published an event:
//!
//! * `queue`: published → the watch's poll that writes it into a frame (waiting for the
//!   watch's task to run, or for the connection to take more: hyper polls a body only
//!   when its stream can send);
//! * `frame`: that poll → the frame handed to hyper (taking the queue, the checks, and
//!   the frame's segments: its events' shared lines, its own bytes);
//! * `socket`: handed to hyper → its last byte taken by the connection's writer (HTTP/2's
//!   stream scheduling and flow control, the connection's send buffer; for HTTP/1.1 hyper
//!   queues the frame and writes it on its next flush). The writer gathers a connection's
//!   writes for one TLS write at the next flush, a turn of the runtime later at most.
//!
//! The time before publishing is ingest's (`ingest_batch_duration_seconds`).
//!
//! Cost class: sampled, never per event × watcher beyond one comparison. One frame in
//! `SAMPLE_EVERY_FRAMES` of each watch is measured, by its oldest event (the first written
//! into it): two clock readings, three histogram observations (shared atomics) and one
//! stamp the frame carries, which observes `socket` when hyper drops it. The other frames
//! cost a counter decrement; each event written costs one comparison.

use prometheus::{Histogram, HistogramVec};
use tokio::time::Instant;

use crate::metrics::{self, Metrics};

/// A watch measures one frame in this many: at 100 watchers receiving 10 k events/s,
/// some thousands of observations a second, enough for a p99 in a 10 s run.
pub const SAMPLE_EVERY_FRAMES: u32 = 16;

/// From tens of microseconds (an idle watch woken by a publish) to seconds (a stalled
/// stream), closest around the 50 ms a fan-out's p99 should stay under: a quantile is
/// interpolated within its bucket, so a wide bucket there would blur the verdict.
const BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075,
    0.1, 0.15, 0.25, 0.5, 1.0, 1.5, 2.5, 5.0,
];

/// The stage histograms, shared by every watch (cheap to clone).
#[derive(Clone)]
pub struct StageMeters {
    queue: Histogram,
    frame: Histogram,
    socket: Histogram,
}

impl StageMeters {
    pub fn new(m: &Metrics) -> Self {
        let family = m.register(HistogramVec::new(
            metrics::histogram_opts(
                "watch",
                "delivery_stage_seconds",
                "Time a delivered event spent in each stage after the bus published it, sampled (one frame in 16 per watch, by its oldest event): queue (until its watch wrote it into a frame), frame (building the frame), socket (until the connection's writer took the frame's last byte).",
                BUCKETS,
            ),
            &["stage"],
        ));
        Self::of(&family)
    }

    /// Not in any registry: for a watch built by hand (unit tests, benches).
    pub fn unregistered() -> Self {
        let family = HistogramVec::new(
            prometheus::HistogramOpts::new("delivery_stage_seconds", "unregistered"),
            &["stage"],
        );
        // Constant name and label: only a programming error fails here.
        Self::of(&family.expect("valid metric definition"))
    }

    /// Every stage's series exists from the start, so that a scrape shows the family
    /// before the first sample.
    fn of(family: &HistogramVec) -> Self {
        StageMeters {
            queue: family.with_label_values(&["queue"]),
            frame: family.with_label_values(&["frame"]),
            socket: family.with_label_values(&["socket"]),
        }
    }
}

/// One watch's sampling: which frame is measured, and its oldest event's publish time.
pub(super) struct Sampler {
    meters: StageMeters,
    /// Frames until the next one is measured (0: the next frame that carries an event).
    left: u32,
    /// The measured frame's first event's publish time, once written.
    oldest: Option<Instant>,
}

impl Sampler {
    pub(super) fn new(meters: StageMeters) -> Self {
        Sampler {
            meters,
            // Watches that share a connection and a batch do not all measure the same frame.
            left: fastrand::u32(0..SAMPLE_EVERY_FRAMES),
            oldest: None,
        }
    }

    /// An event published at `published_at` is written into the current frame.
    #[inline]
    pub(super) fn event(&mut self, published_at: Instant) {
        if self.left == 0 && self.oldest.is_none() {
            self.oldest = Some(published_at);
        }
    }

    /// For the frame of a poll that began at `polled`, as hyper gets it: if it is the
    /// sampled one, the stamp it carries (its `socket` stage observed when hyper drops
    /// the frame).
    pub(super) fn frame(&mut self, polled: Instant) -> Option<Stamp> {
        let Some(oldest) = self.oldest.take() else {
            self.left = self.left.saturating_sub(1);
            return None;
        };
        self.left = SAMPLE_EVERY_FRAMES - 1;
        let handed = Instant::now();
        let m = &self.meters;
        m.queue
            .observe(polled.saturating_duration_since(oldest).as_secs_f64());
        m.frame
            .observe(handed.saturating_duration_since(polled).as_secs_f64());
        Some(Stamp {
            handed,
            socket: m.socket.clone(),
        })
    }
}

/// Carried by a measured frame: hyper drops the frame once the connection's writer has
/// taken its last byte (or the stream was reset, which ends the watch: one stray sample
/// at most).
pub(super) struct Stamp {
    handed: Instant,
    socket: Histogram,
}

impl Drop for Stamp {
    fn drop(&mut self) {
        self.socket.observe(self.handed.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(m: &StageMeters) -> [u64; 3] {
        [&m.queue, &m.frame, &m.socket].map(|h| h.get_sample_count())
    }

    #[tokio::test(start_paused = true)]
    async fn one_frame_in_n_is_measured_and_its_socket_stage_ends_when_dropped() {
        let meters = StageMeters::unregistered();
        let mut s = Sampler::new(meters.clone());
        s.left = 0;
        let published = Instant::now();
        tokio::time::advance(std::time::Duration::from_millis(3)).await;
        let polled = Instant::now();
        s.event(published);
        s.event(polled);
        let stamp = s.frame(polled);
        assert!(stamp.is_some(), "measured");
        assert_eq!(count(&meters), [1, 1, 0], "socket: not written yet");
        assert!(
            (meters.queue.get_sample_sum() - 0.003).abs() < 1e-6,
            "from the oldest"
        );
        drop(stamp);
        assert_eq!(count(&meters), [1, 1, 1]);
        // The next SAMPLE_EVERY_FRAMES - 1 frames are not measured.
        for _ in 0..SAMPLE_EVERY_FRAMES - 1 {
            s.event(polled);
            assert!(s.frame(polled).is_none());
        }
        assert_eq!(count(&meters), [1, 1, 1]);
        s.event(polled);
        drop(s.frame(polled));
        assert_eq!(count(&meters), [2, 2, 2]);
    }

    #[test]
    fn a_frame_without_events_is_not_measured_and_keeps_the_turn() {
        let meters = StageMeters::unregistered();
        let mut s = Sampler::new(meters.clone());
        s.left = 0;
        assert!(s.frame(Instant::now()).is_none(), "a bookmark's frame");
        assert_eq!(count(&meters), [0, 0, 0]);
        s.event(Instant::now());
        drop(s.frame(Instant::now()));
        assert_eq!(count(&meters), [1, 1, 1]);
    }
}
