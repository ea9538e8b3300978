//! The scenarios' results, and the performance table printed from them (issue 24's rows,
//! each figure beside its same-run baseline).

use crate::outcome::{Outcome, STAGES};

/// A scenario's result: its figures against the table's targets.
pub(crate) struct ScenarioResult {
    pub(crate) name: &'static str,
    pub(crate) figures: String,
    /// `None`: no verdict possible (e.g. no openssl).
    pub(crate) met: Option<bool>,
    pub(crate) limits: Vec<String>,
    /// Its row of the performance table, for the scenarios that are one.
    pub(crate) row: Option<TableRow>,
}

/// A row of the performance table (issue 24): the figure as the ratio the table states,
/// its baseline from the same run, the goal.
pub(crate) struct TableRow {
    pub(crate) figure: String,
    pub(crate) result: String,
    pub(crate) baseline: String,
    pub(crate) goal: &'static str,
    /// For the rows with watchers: where the time went.
    pub(crate) latency: Option<LatencyCells>,
}

/// p50 / p99 of each part of an event's way, for the rows with watchers.
pub(crate) struct LatencyCells {
    /// The generator's push → watcher, every event of the fast watchers.
    end_to_end: String,
    /// The server's push → bus, per batch.
    pub(crate) ingest: String,
    /// The server's delivery stages, sampled: queue, frame, socket.
    pub(crate) stages: [String; 3],
}

impl LatencyCells {
    pub(crate) fn of(o: &Outcome) -> LatencyCells {
        let lat = o.latency();
        let end_to_end = match (lat.percentile(50.0), lat.percentile(99.0)) {
            (Some(a), Some(b)) => format!("{:.2} / {:.2} ms", a as f64 / 1e6, b as f64 / 1e6),
            _ => "?".to_owned(),
        };
        let ingest = o
            .server
            .ingest_batch
            .as_ref()
            .and_then(|h| Some((h.quantile(0.5)?, h.quantile(0.99)?)))
            .map_or("?".to_owned(), |(a, b)| {
                format!("{:.2} / {:.2} ms", a * 1e3, b * 1e3)
            });
        LatencyCells {
            end_to_end,
            ingest,
            stages: STAGES.map(|s| o.server.stage_cell(s)),
        }
    }
}

impl ScenarioResult {
    pub(crate) fn line(&self) -> String {
        let verdict = match self.met {
            Some(true) => "MET",
            Some(false) => "MISSED",
            None => "NO VERDICT",
        };
        let limited = if self.limits.is_empty() {
            "not limited by the generator or other load".to_owned()
        } else {
            format!("LIMITED: {}", self.limits.join("; "))
        };
        format!(
            "RESULT {}: {}; {verdict}; {limited}",
            self.name, self.figures
        )
    }
}

pub(crate) fn print_summary(results: &[ScenarioResult]) {
    println!("== summary");
    println!();
    println!("| scenario | result | target met | limited by the generator or other load |");
    println!("|---|---|---|---|");
    for r in results {
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "no",
            None => "n/a",
        };
        let limited = if r.limits.is_empty() {
            "no".to_owned()
        } else {
            format!("yes: {}", r.limits.join("; "))
        };
        println!("| {} | {} | {met} | {limited} |", r.name, r.figures);
    }
    println!();
}

/// The performance table (issue 24) of the scenarios that are one of its rows, as
/// markdown for BENCHMARKS.md; then where the watcher rows' time went.
pub(crate) fn print_table(results: &[ScenarioResult]) {
    let rows: Vec<(&ScenarioResult, &TableRow)> = results
        .iter()
        .filter_map(|r| r.row.as_ref().map(|row| (r, row)))
        .collect();
    if rows.is_empty() {
        return;
    }
    println!("== the performance table (for BENCHMARKS.md)");
    println!();
    println!(
        "| figure | result | baseline (same run) | goal | met | limited by the generator or other load |"
    );
    println!("|---|---|---|---|---|---|");
    for (r, row) in &rows {
        let met = match r.met {
            Some(true) => "met",
            Some(false) => "not met",
            None => "no verdict",
        };
        let limited = if r.limits.is_empty() {
            "no".to_owned()
        } else {
            format!("yes: {}", r.limits.join("; "))
        };
        println!(
            "| {} | {} | {} | {} | {met} | {limited} |",
            row.figure, row.result, row.baseline, row.goal
        );
    }
    let latency: Vec<(&str, &LatencyCells)> = rows
        .iter()
        .filter_map(|(r, row)| row.latency.as_ref().map(|l| (r.name, l)))
        .collect();
    if latency.is_empty() {
        return;
    }
    println!();
    println!(
        "Where the time goes, p50 / p99 (the server's stages sampled, one frame in 16 per watch):"
    );
    println!();
    println!(
        "| scenario | push → watcher (generator) | push → bus (server, per batch) | queue | frame | socket |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, l) in latency {
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            l.end_to_end, l.ingest, l.stages[0], l.stages[1], l.stages[2]
        );
    }
    println!();
}
