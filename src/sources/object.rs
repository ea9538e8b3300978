//! A source as the API serves it: its figures summed over the replicas' shares, its
//! `Source` object (status, the `Ready` condition) and its Table row.

use super::*;

impl Sources {
    /// The object of `name` without its resourceVersion, and its row's figures.
    pub(super) fn content(&self, name: &str, f: &Figures, now: i64) -> (Value, Row) {
        let silent_after = self.inner.silent_after;
        let since = |t: i64| time(t, 0);
        let (ready, reason, message, transition) = match f.last_push {
            Some(last) if now - last <= silent_after => (
                true,
                "Pushing",
                format!(
                    "pushed within the last {} (--source-silent-after)",
                    self.inner.silent_after_text
                ),
                f.run_start.unwrap_or(last),
            ),
            Some(last) => (
                false,
                "Silent",
                format!(
                    "no push since {} (--source-silent-after={})",
                    since(last),
                    self.inner.silent_after_text
                ),
                last.saturating_add(silent_after),
            ),
            None => (
                false,
                "Silent",
                "no push accepted yet".to_owned(),
                f.first_seen,
            ),
        };
        let refused_total: u64 = f.refused.values().sum();
        let rate = rate_text(f.rate_milli);
        let mut status = json!({
            "acceptedEvents": f.events,
            "acceptedBatches": f.batches,
            "acceptedBytes": f.bytes,
            "retriedBatches": f.retried,
            "refusedBatches": refused_total,
            "eventsPerSecond": rate,
            "replicas": f.replicas,
            "conditions": [{
                "type": "Ready",
                "status": if ready { "True" } else { "False" },
                "reason": reason,
                "message": message,
                "lastTransitionTime": since(transition),
            }],
        });
        if let Some(t) = f.first_push {
            status["firstPushTime"] = Value::String(time(t, 6));
        }
        if let Some(t) = f.last_push {
            status["lastPushTime"] = Value::String(time(t, 6));
        }
        if !f.refused.is_empty() {
            status["refusedByCode"] = f
                .refused
                .iter()
                .map(|(code, n)| json!({"code": code, "batches": n}))
                .collect();
        }
        if let Some(e) = &f.last_error {
            status["lastError"] = json!({
                "code": e.code,
                "message": e.message,
                "time": time(e.time, 6),
            });
        }
        let object = json!({
            "kind": KIND,
            "apiVersion": GROUP_VERSION,
            "metadata": {
                "name": name,
                "creationTimestamp": since(f.first_seen),
            },
            "status": status,
        });
        let row = Row {
            ready,
            last_push: f.last_push,
            rate,
            retried: f.retried,
            events: f.events,
            batches: f.batches,
            refused: refused_total,
            last_error: f
                .last_error
                .as_ref()
                .map(|e| format!("{} {}", e.code, e.message))
                .unwrap_or_default(),
        };
        (object, row)
    }
}

/// The figures of one source, summed over the replicas' shares.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Figures {
    pub(super) first_seen: i64,
    pub(super) last_heard: i64,
    pub(super) first_push: Option<i64>,
    pub(super) last_push: Option<i64>,
    pub(super) run_start: Option<i64>,
    pub(super) events: u64,
    pub(super) batches: u64,
    pub(super) bytes: u64,
    pub(super) retried: u64,
    pub(super) refused: BTreeMap<u16, u64>,
    pub(super) last_error: Option<LastError>,
    pub(super) rate_milli: u64,
    /// How many replicas' shares count it.
    pub(super) replicas: usize,
}

impl Figures {
    pub(super) fn merge(parts: &[&Tally], silent_after: i64) -> Figures {
        let mut f = Figures {
            first_seen: parts.iter().map(|t| t.first_seen).min().unwrap_or_default(),
            last_heard: parts
                .iter()
                .map(|t| t.last_heard())
                .max()
                .unwrap_or_default(),
            first_push: parts.iter().filter_map(|t| t.first_push).min(),
            last_push: parts.iter().filter_map(|t| t.last_push).max(),
            run_start: run_start(parts, silent_after),
            replicas: parts.len(),
            ..Figures::default()
        };
        for t in parts {
            f.events += t.events;
            f.batches += t.batches;
            f.bytes += t.bytes;
            f.retried += t.retried;
            f.rate_milli += t.rate_milli;
            for (code, n) in &t.refused {
                *f.refused.entry(*code).or_default() += n;
            }
        }
        // The newest error; of two at one time, the same one on every replica.
        f.last_error = parts
            .iter()
            .filter_map(|t| t.last_error.as_ref())
            .max_by(|a, b| (a.time, a.code, &a.message).cmp(&(b.time, b.code, &b.message)))
            .cloned();
        f
    }
}

/// When the source last became ready, from the replicas' runs of pushes (each a stretch
/// without a gap of `silent_after`): the start of the run that holds the last push,
/// joined with every run that overlaps it or ends less than `silent_after` before it.
pub(super) fn run_start(parts: &[&Tally], silent_after: i64) -> Option<i64> {
    let runs: Vec<(i64, i64)> = parts
        .iter()
        .filter_map(|t| Some((t.run_start?, t.last_push?)))
        .collect();
    let (mut start, _) = runs.iter().copied().max_by_key(|(s, l)| (*l, *s))?;
    loop {
        let before = start;
        for (s, l) in &runs {
            if *s < start && l.saturating_add(silent_after) >= start {
                start = *s;
            }
        }
        if start == before {
            return Some(start);
        }
    }
}

/// RFC 3339 in UTC with `digits` of the second (0: kube's `Time`, 6: `MicroTime`).
pub(super) fn time(micros: i64, digits: usize) -> String {
    match Timestamp::from_microsecond(micros) {
        Ok(t) if digits == 0 => format!("{t:.0}"),
        Ok(t) => format!("{t:.6}"),
        Err(_) => String::new(),
    }
}

/// Thousandths as a decimal, without trailing zeros: "12.5", "0.016", "3".
pub(super) fn rate_text(milli: u64) -> String {
    let (whole, frac) = (milli / 1000, milli % 1000);
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:03}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

/// The columns of a sources Table, in the order of each row's cells.
pub const COLUMNS: [Column; 10] = [
    table::name_column("Name", "The source: the pusher's name, or its ?source=."),
    table::column(
        "Ready",
        "Whether it pushed within --source-silent-after (its Ready condition).",
        0,
    ),
    table::column("Last Push", "Time since its last accepted push.", 0),
    table::column(
        "Events/s",
        "Accepted events a second over the last minute.",
        0,
    ),
    table::integer_column(
        "Retries",
        "Pushes recognised as a retry of a batch already taken.",
        0,
    ),
    table::column("Age", "Time since it was first seen.", 0),
    table::integer_column("Events", "Events accepted.", 1),
    table::integer_column("Batches", "Pushes accepted.", 1),
    table::integer_column("Refused", "Pushes refused, any code.", 1),
    table::column("Last Error", "Its last refused push: code and message.", 1),
];

impl Item {
    /// The cells of its table row at `now` (microseconds).
    pub fn cells(&self, now: i64) -> Value {
        let ago = |t: i64| {
            table::human_duration(Duration::from_micros(u64::try_from(now - t).unwrap_or(0)))
        };
        let r = &self.row;
        json!([
            self.name,
            if r.ready { "True" } else { "False" },
            r.last_push.map_or("<none>".to_owned(), ago),
            r.rate,
            r.retried,
            ago(self.created),
            r.events,
            r.batches,
            r.refused,
            r.last_error,
        ])
    }

    /// Whether its Ready condition is True.
    pub fn ready(&self) -> bool {
        self.row.ready
    }
}

/// Now, in microseconds, for cells.
pub fn now() -> i64 {
    now_micros()
}
