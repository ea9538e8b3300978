//! The server's log on stderr: `--log-format` (text, or JSON with k8s.io/component-base's
//! keys) and `-v` (klog's verbosity, mapped onto tracing's levels). `RUST_LOG`, when set,
//! replaces the filter `-v` stands for. Knows nothing of what is logged.

use std::fmt;
use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// tracing's text line: time, level, module, message, `key=value` fields.
    Text,
    /// One JSON object per line: `ts`, `caller`, `msg`, `v`, then the fields.
    Json,
}

/// `--log-format`'s value, with the allowed ones in the same line when it is wrong.
pub fn parse_format(s: &str) -> Result<Format, String> {
    match s {
        "text" => Ok(Format::Text),
        "json" => Ok(Format::Json),
        _ => Err("must be text or json".to_owned()),
    }
}

/// `-v`'s value: klog's verbosity is a non-negative integer (component-base's
/// `VerbosityLevel` is a uint32).
pub fn parse_verbosity(s: &str) -> Result<u32, String> {
    s.parse()
        .map_err(|_| "must be a non-negative integer, as klog's -v".to_owned())
}

/// The filter `-v=N` stands for, after the Kubernetes logging conventions: up to 3 the
/// operator's lines (info: watch start and end, refusals, start-up); 4 is debug (one line
/// per request); 5 and above trace. Only this crate's lines get more verbose: a
/// dependency's debug output is `RUST_LOG`'s to ask for.
pub fn directives(v: u32) -> &'static str {
    match v {
        0..=3 => "info",
        4 => "info,kube_audit_stream=debug",
        _ => "info,kube_audit_stream=trace",
    }
}

/// The klog verbosity a line of this level needs; errors have none (`err` says it).
fn verbosity(level: &Level) -> Option<u8> {
    match *level {
        Level::ERROR => None,
        Level::WARN | Level::INFO => Some(0),
        Level::DEBUG => Some(4),
        Level::TRACE => Some(5),
    }
}

/// Install the process's logger. A `RUST_LOG` that does not parse is reported once and
/// ignored, as before these flags existed it fell back to the default.
pub fn init(format: Format, v: u32) {
    let (filter, bad_rust_log) = match std::env::var("RUST_LOG") {
        Ok(s) if !s.trim().is_empty() => match EnvFilter::try_new(&s) {
            Ok(f) => (f, None),
            Err(e) => (EnvFilter::new(directives(v)), Some(e.to_string())),
        },
        _ => (EnvFilter::new(directives(v)), None),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests) keeps the first logger.
    let _ = match format {
        // Colour for a person at a terminal, never escape codes in a log file or pipe.
        Format::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        Format::Json => builder.with_ansi(false).event_format(Json).try_init(),
    };
    if let Some(e) = bad_rust_log {
        tracing::warn!(error = %e, verbosity = v, "RUST_LOG ignored: it does not parse; -v applies");
    }
}

/// component-base's JSON line: `{"ts":1732900000.123456,"caller":"watch/body.rs:120",
/// "msg":"watch ended","v":0,"user":"alice",…}`. Written by hand because
/// tracing-subscriber's JSON format has keys of its own (`timestamp`, `level`,
/// `fields.message`) that log pipelines built for Kubernetes components do not read.
struct Json;

impl<S, N> FormatEvent<S, N> for Json
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let caller = match (meta.file(), meta.line()) {
            (Some(file), Some(line)) => format!("{}:{line}", short_caller(file)),
            _ => meta.target().to_owned(),
        };
        let mut line = String::with_capacity(256);
        line.push_str(&format!("{{\"ts\":{ts:.6},\"caller\":"));
        push_json(&mut line, &caller);
        line.push_str(",\"msg\":");
        push_json(&mut line, &fields.message);
        if let Some(v) = verbosity(meta.level()) {
            line.push_str(&format!(",\"v\":{v}"));
        }
        for (key, value) in &fields.pairs {
            line.push(',');
            push_json(&mut line, key);
            line.push(':');
            line.push_str(value);
        }
        line.push('}');
        writeln!(writer, "{line}")
    }
}

fn push_json(out: &mut String, s: &str) {
    // Serialising a string cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

/// `src/watch/body.rs` → `watch/body.rs`; a dependency's path from its crate's `src/` on.
fn short_caller(file: &str) -> &str {
    match file.rfind("/src/") {
        Some(i) => &file[i + 5..],
        None => file.strip_prefix("src/").unwrap_or(file),
    }
}

/// An event's message and its other fields, each value already JSON.
#[derive(Default)]
struct Fields {
    message: String,
    pairs: Vec<(&'static str, String)>,
}

impl Fields {
    fn add(&mut self, field: &Field, value: String) {
        match field.name() {
            // Bridged `log` records carry their origin as fields: not the event's own.
            name if name.starts_with("log.") => {}
            // component-base's key for the error of an error line.
            "error" => self.pairs.push(("err", value)),
            name => self.pairs.push((name, value)),
        }
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            self.add(field, serde_json::to_string(&text).unwrap_or_default());
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.add(field, serde_json::to_string(value).unwrap_or_default());
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.add(field, value.to_string());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.add(field, value.to_string());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        let v = serde_json::Number::from_f64(value).map_or("null".to_owned(), |n| n.to_string());
        self.add(field, v);
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.add(field, value.to_string());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.add(
            field,
            serde_json::to_string(&value.to_string()).unwrap_or_default(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn flag_values() {
        assert_eq!(parse_format("json"), Ok(Format::Json));
        assert_eq!(parse_format("text"), Ok(Format::Text));
        assert!(
            parse_format("JSON")
                .unwrap_err()
                .contains("must be text or json")
        );
        assert_eq!(parse_verbosity("4"), Ok(4));
        assert!(parse_verbosity("-1").is_err());
        assert!(parse_verbosity("high").is_err());
        assert_eq!(directives(0), "info");
        assert_eq!(directives(3), "info");
        assert_eq!(directives(4), "info,kube_audit_stream=debug");
        assert_eq!(directives(9), "info,kube_audit_stream=trace");
        assert_eq!(short_caller("src/watch/body.rs"), "watch/body.rs");
        assert_eq!(
            short_caller("/x/hyper-1.7.0/src/proto/h1.rs"),
            "proto/h1.rs"
        );
    }

    /// A writer the test reads back.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_have_component_base_keys() {
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new("trace"))
            .with_writer(move || out.clone())
            .event_format(Json)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(user = "al\"ice", sent = 3u64, ok = true, "watch ended");
            tracing::debug!(path = %"/metrics", "request");
            let e = std::io::Error::other("boom");
            tracing::error!(error = %e, "request failed");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0]["msg"], "watch ended");
        assert_eq!(lines[0]["v"], 0);
        assert_eq!(lines[0]["user"], "al\"ice");
        assert_eq!(lines[0]["sent"], 3);
        assert_eq!(lines[0]["ok"], true);
        assert!(lines[0]["ts"].as_f64().unwrap() > 1.7e9);
        assert!(
            lines[0]["caller"]
                .as_str()
                .unwrap()
                .starts_with("logging.rs:")
        );
        assert_eq!(lines[1]["v"], 4);
        assert_eq!(lines[1]["path"], "/metrics");
        assert!(lines[2].get("v").is_none());
        assert_eq!(lines[2]["err"], "boom");
        // Keys in component-base's order.
        assert!(text.starts_with("{\"ts\":"), "{text}");
        assert!(text.lines().next().unwrap().contains(r#","caller":"#));
    }
}
