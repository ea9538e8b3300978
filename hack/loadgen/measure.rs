//! What the load generator measures besides the traffic itself: the run's clock, CPU time
//! and RSS from /proc (server process, this process, the whole machine), a latency
//! histogram, and the two baselines measured in the same run (serde_json split + routing
//! read on one core, and `openssl speed` AES-128-GCM).

use std::borrow::Cow;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::time::Instant;

/// The run's time points. `start` is also the epoch of the send times in the auditIDs.
#[derive(Clone, Copy)]
pub struct Clock {
    pub start: Instant,
    pub push_end: Instant,
    pub drain_end: Instant,
}

impl Clock {
    pub fn nanos_since_start(&self) -> u64 {
        self.nanos_at(Instant::now())
    }

    pub fn nanos_at(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.start).as_nanos()).unwrap_or(u64::MAX)
    }
}

// ---------------------------------------------------------------------------------------
// CPU and memory, from /proc.

/// Clock ticks per second of the utime/stime fields of /proc/PID/stat (USER_HZ). It is 100
/// on every mainstream Linux build; `getconf` says for sure, without a libc binding.
fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// utime + stime of a process (`None`: this one), all its threads, as seconds.
pub fn process_cpu(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After ')': state is field 3, utime field 14, stime field 15.
    let utime: f64 = fields.nth(11)?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// CPU seconds the whole machine spent busy (everything but idle and iowait), so that a
/// run disturbed by other processes says so.
pub fn machine_busy() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<f64> = line
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).unwrap_or(&0.0);
    Some((total - idle) / clock_ticks())
}

/// VmRSS and VmHWM (peak) of a process (`None`: this one), in KiB.
pub fn rss_kib(pid: Option<u32>) -> (Option<u64>, Option<u64>) {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".to_owned(),
    };
    let Ok(status) = std::fs::read_to_string(path) else {
        return (None, None);
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    (field("VmRSS:"), field("VmHWM:"))
}

pub fn cores_available() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

/// CPU counters at one instant.
#[derive(Clone, Copy, Debug)]
pub struct CpuSample {
    pub at: Instant,
    pub server: f64,
    pub generator: f64,
    pub machine: f64,
}

impl CpuSample {
    /// `server_pids`: every process of the server side (replicas, and NATS with them).
    pub fn take(server_pids: &[u32]) -> CpuSample {
        CpuSample {
            at: Instant::now(),
            server: server_pids
                .iter()
                .map(|&pid| process_cpu(Some(pid)).unwrap_or(0.0))
                .sum(),
            generator: process_cpu(None).unwrap_or(0.0),
            machine: machine_busy().unwrap_or(0.0),
        }
    }
}

/// CPU used between two samples.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuUse {
    pub wall: f64,
    /// CPU-seconds.
    pub server: f64,
    pub generator: f64,
    /// Everything else on the machine (other builds, other tenants).
    pub other: f64,
}

impl CpuUse {
    pub fn between(a: &CpuSample, b: &CpuSample) -> CpuUse {
        let server = (b.server - a.server).max(0.0);
        let generator = (b.generator - a.generator).max(0.0);
        CpuUse {
            wall: b.at.duration_since(a.at).as_secs_f64().max(1e-3),
            server,
            generator,
            other: (b.machine - a.machine - server - generator).max(0.0),
        }
    }

    pub fn server_cores(&self) -> f64 {
        self.server / self.wall
    }

    pub fn generator_cores(&self) -> f64 {
        self.generator / self.wall
    }

    pub fn other_cores(&self) -> f64 {
        self.other / self.wall
    }

    /// Why the figure may say more about the load generator, or about the machine, than
    /// about the server: the generator used nearly all the cores the server and other
    /// processes left it, or the machine was saturated with other processes' work.
    pub fn limits(&self) -> Vec<String> {
        let cores = cores_available();
        let (server, generator, other) = (
            self.server_cores(),
            self.generator_cores(),
            self.other_cores(),
        );
        let left = (cores - server - other).max(0.0);
        let saturated = server + generator + other >= 0.9 * cores;
        let mut out = Vec::new();
        if generator >= 0.85 * left && generator >= other {
            out.push(format!(
                "generator-limited: it used {generator:.2} cores of the {left:.2} left by the server ({server:.2}) and other processes ({other:.2}) on {cores} cores"
            ));
        }
        if saturated && other >= 0.25 {
            out.push(format!(
                "disturbed: other processes used {other:.2} of the {cores} cores (server {server:.2}, generator {generator:.2})"
            ));
        }
        out
    }
}

/// Samples the CPU counters every 100 ms until stopped, so that the figures can be taken
/// over any window afterwards (the push, or until the last event was delivered).
pub struct CpuSampler {
    samples: Arc<Mutex<Vec<CpuSample>>>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl CpuSampler {
    pub fn start(server_pids: Vec<u32>) -> CpuSampler {
        let samples = Arc::new(Mutex::new(vec![CpuSample::take(&server_pids)]));
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let shared = samples.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tick.tick() => {}
                }
                let s = CpuSample::take(&server_pids);
                shared.lock().unwrap_or_else(|e| e.into_inner()).push(s);
            }
        });
        CpuSampler {
            samples,
            stop,
            task,
        }
    }

    pub async fn finish(self, server_pids: &[u32]) -> Vec<CpuSample> {
        let _ = self.stop.send(());
        let _ = self.task.await;
        let mut samples =
            std::mem::take(&mut *self.samples.lock().unwrap_or_else(|e| e.into_inner()));
        samples.push(CpuSample::take(server_pids));
        samples
    }
}

/// CPU use between the samples nearest to `from` and `to`.
pub fn cpu_between(samples: &[CpuSample], from: Instant, to: Instant) -> CpuUse {
    let nearest = |t: Instant| {
        samples.iter().min_by_key(|s| {
            if s.at > t {
                s.at.duration_since(t)
            } else {
                t.duration_since(s.at)
            }
        })
    };
    match (nearest(from), nearest(to)) {
        (Some(a), Some(b)) if b.at > a.at => CpuUse::between(a, b),
        _ => CpuUse::default(),
    }
}

// ---------------------------------------------------------------------------------------
// Latency.

/// A log-linear histogram (32 buckets per power of two, so within about 3 %): fixed memory
/// however long the run.
pub struct Histogram {
    counts: Vec<u64>,
    pub count: u64,
    pub max: u64,
}

const SUB_BUCKET_BITS: u32 = 5;
const SUB_BUCKETS: u64 = 1 << SUB_BUCKET_BITS;

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; Self::index(u64::MAX) + 1],
            count: 0,
            max: 0,
        }
    }
}

impl Histogram {
    fn index(v: u64) -> usize {
        if v < SUB_BUCKETS {
            return v as usize;
        }
        let shift = 63 - v.leading_zeros() - SUB_BUCKET_BITS;
        (u64::from(shift) * SUB_BUCKETS + (v >> shift)) as usize
    }

    /// The middle of bucket `i`'s range.
    fn value(i: usize) -> u64 {
        let i = i as u64;
        if i < 2 * SUB_BUCKETS {
            return i;
        }
        let shift = i / SUB_BUCKETS - 1;
        let mantissa = i % SUB_BUCKETS + SUB_BUCKETS;
        (mantissa << shift) + (1 << shift) / 2
    }

    pub fn record(&mut self, v: u64) {
        self.counts[Self::index(v)] += 1;
        self.count += 1;
        self.max = self.max.max(v);
    }

    pub fn merge(&mut self, o: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.count += o.count;
        self.max = self.max.max(o.max);
    }

    pub fn percentile(&self, p: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((p / 100.0 * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Self::value(i).min(self.max));
            }
        }
        Some(self.max)
    }
}

// ---------------------------------------------------------------------------------------
// Baselines.

/// How long the one-core split+route baseline runs.
const BASELINE_TIME: Duration = Duration::from_secs(1);
/// Longest wait for `openssl speed`.
const OPENSSL_TIMEOUT: Duration = Duration::from_secs(20);

/// Events and bytes per second of the least work any ingest must do, on one core.
#[derive(Clone, Copy, Debug)]
pub struct SplitRoute {
    pub events_per_second: f64,
    pub bytes_per_second: f64,
}

/// serde_json split of the pushed bodies into `items: Vec<&RawValue>`, then per item a
/// borrowed parse of the fields any router needs (auditID, stage, level, verb,
/// user.username, objectRef.namespace/resource/name), on this thread. Run it on a blocking
/// thread, with the server idle.
pub fn split_route_baseline(bodies: &[Bytes]) -> Option<SplitRoute> {
    #[derive(Deserialize)]
    struct List<'a> {
        #[serde(borrow)]
        items: Vec<&'a RawValue>,
    }
    #[derive(Deserialize)]
    #[allow(dead_code)] // Read to be measured, never used.
    struct Routing<'a> {
        #[serde(rename = "auditID", borrow)]
        audit_id: Cow<'a, str>,
        #[serde(borrow)]
        stage: Cow<'a, str>,
        #[serde(borrow)]
        level: Cow<'a, str>,
        #[serde(borrow, default)]
        verb: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        user: Option<User<'a>>,
        #[serde(rename = "objectRef", borrow, default)]
        object_ref: Option<ObjectRef<'a>>,
    }
    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct User<'a> {
        #[serde(borrow, default)]
        username: Option<Cow<'a, str>>,
    }
    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct ObjectRef<'a> {
        #[serde(borrow, default)]
        namespace: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        resource: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        name: Option<Cow<'a, str>>,
    }
    if bodies.is_empty() {
        return None;
    }
    let started = std::time::Instant::now();
    let (mut bytes, mut events) = (0u64, 0u64);
    // Bounded by time, and by a round count in case the clock misbehaves.
    for _ in 0..1_000_000 {
        for body in bodies {
            let list: List<'_> = serde_json::from_slice(std::hint::black_box(body)).ok()?;
            for item in &list.items {
                let r: Routing<'_> = serde_json::from_str(item.get()).ok()?;
                std::hint::black_box(&r);
            }
            bytes += body.len() as u64;
            events += list.items.len() as u64;
        }
        if started.elapsed() >= BASELINE_TIME {
            break;
        }
    }
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    Some(SplitRoute {
        events_per_second: events as f64 / secs,
        bytes_per_second: bytes as f64 / secs,
    })
}

/// AES-128-GCM bytes per second on one core, the largest block size of
/// `openssl speed -evp aes-128-gcm` (single-threaded, so also bytes per CPU-second).
/// Measured once per load generator run; `Err` says why there is no figure.
pub async fn openssl_aes_gcm() -> Result<f64, String> {
    static RESULT: tokio::sync::OnceCell<Result<f64, String>> = tokio::sync::OnceCell::const_new();
    RESULT
        .get_or_init(|| async {
            // One block size keeps it to one second; older openssl lacks `-bytes`.
            let mut last = String::new();
            for args in [
                &[
                    "speed",
                    "-evp",
                    "aes-128-gcm",
                    "-seconds",
                    "1",
                    "-bytes",
                    "16384",
                ][..],
                &["speed", "-evp", "aes-128-gcm", "-seconds", "1"][..],
            ] {
                match run_openssl(args).await {
                    Ok(v) => return Ok(v),
                    Err(e) => last = e,
                }
            }
            Err(last)
        })
        .await
        .clone()
}

async fn run_openssl(args: &[&str]) -> Result<f64, String> {
    let child = tokio::process::Command::new("openssl")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(OPENSSL_TIMEOUT, child).await {
        Err(_) => return Err(format!("openssl speed took over {OPENSSL_TIMEOUT:?}")),
        Ok(Err(e)) => return Err(format!("openssl not runnable: {e}")),
        Ok(Ok(out)) => out,
    };
    let text = String::from_utf8_lossy(&out.stdout);
    parse_openssl_speed(&text).ok_or_else(|| "no AES-128-GCM line in openssl speed's output".into())
}

/// The last column of the `AES-128-GCM` line: "4185688.59k" is 1000s of bytes/s.
fn parse_openssl_speed(text: &str) -> Option<f64> {
    let line = text
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("aes-128-gcm"))?;
    let last = line.split_whitespace().last()?;
    let k: f64 = last.strip_suffix('k')?.parse().ok()?;
    Some(k * 1000.0)
}

// ---------------------------------------------------------------------------------------
// The server's own histograms, from a scrape of /metrics.

/// One series of a Prometheus histogram read from a scrape's text: cumulative counts by
/// upper bound, in the order the server writes them (ascending, `+Inf` last).
#[derive(Clone, Debug, Default)]
pub struct PromHistogram {
    buckets: Vec<(f64, f64)>,
    /// Observations in all (the `+Inf` bucket).
    pub count: f64,
}

impl PromHistogram {
    /// The series of `family` whose labels include `label` (`stage="queue"`; "" for a
    /// family without labels). `None` when the scrape has no such series.
    pub fn parse(text: &str, family: &str, label: &str) -> Option<PromHistogram> {
        let prefix = format!("{family}_bucket{{");
        let mut buckets = Vec::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(&prefix) else {
                continue;
            };
            let Some((labels, value)) = rest.split_once("} ") else {
                continue;
            };
            if !labels.split(',').any(|l| l == label) && !label.is_empty() {
                continue;
            }
            let le = labels
                .split(',')
                .find_map(|l| l.strip_prefix("le=\""))
                .and_then(|v| v.strip_suffix('"'));
            let bound = match le {
                Some("+Inf") => f64::INFINITY,
                Some(v) => match v.parse() {
                    Ok(b) => b,
                    Err(_) => continue,
                },
                None => continue,
            };
            if let Ok(n) = value.trim().parse::<f64>() {
                buckets.push((bound, n));
            }
        }
        let count = buckets.last().map(|b| b.1)?;
        Some(PromHistogram { buckets, count })
    }

    /// The `q` quantile (0..=1), as Prometheus's `histogram_quantile` estimates it:
    /// linear within the bucket it falls in; the highest finite bound when it falls
    /// in `+Inf`. `None` without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count <= 0.0 {
            return None;
        }
        let rank = q * self.count;
        let (mut lower, mut below) = (0.0, 0.0);
        for &(upper, cumulative) in &self.buckets {
            if cumulative >= rank {
                if upper.is_infinite() {
                    return Some(lower);
                }
                let inside = cumulative - below;
                let share = if inside > 0.0 {
                    (rank - below) / inside
                } else {
                    1.0
                };
                return Some(lower + (upper - lower) * share);
            }
            (lower, below) = (upper, cumulative);
        }
        Some(lower)
    }
}
