//! How `kubectl audit` prints events: an aligned table (colours by verb and code only on a
//! terminal), `-o wide` with more columns, `-o json` one event per line exactly as the
//! server sent it, `-o yaml` one document per event. Messages about the stream itself go
//! to stderr, so stdout stays the events alone. Every string of an event, and of a server's
//! answer, reaches a person's terminal only through `escape_terminal`: anyone who can make
//! a request names what the audit log records (a path, a user agent), and a terminal obeys
//! the control sequences in what it is sent.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};

use anstyle::{AnsiColor, Style};
use k8s_openapi::jiff::Timestamp;
use serde::Deserialize;

use super::cli::Output;
pub use super::escape::{escape_lines, escape_terminal};
use crate::event::{REDACTED_ANNOTATION, SOURCE_ANNOTATION, TRUNCATED_ANNOTATION};

/// One event: the object as the server sent it, and the fields the table reads.
#[derive(Debug, Clone)]
pub struct Item {
    raw: Box<str>,
    pub view: EventView,
}

impl Item {
    pub fn new(raw: &str) -> Result<Item, serde_json::Error> {
        Ok(Item {
            view: serde_json::from_str(raw)?,
            raw: raw.into(),
        })
    }

    pub fn raw(&self) -> &str {
        &self.raw
    }

    pub fn resource_version(&self) -> Option<u64> {
        self.view.metadata.resource_version.parse().ok()
    }
}

/// The fields of an audit event (`audit.k8s.io/v1`, as the server serves it) the printers
/// and the tail read; every one may be absent.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct EventView {
    pub metadata: Metadata,
    #[serde(rename = "auditID")]
    pub audit_id: String,
    pub stage: String,
    pub verb: String,
    #[serde(rename = "requestURI")]
    pub request_uri: String,
    pub user: User,
    #[serde(rename = "sourceIPs")]
    pub source_ips: Vec<String>,
    pub user_agent: String,
    pub object_ref: ObjectRef,
    pub response_status: ResponseStatus,
    pub request_received_timestamp: String,
    pub stage_timestamp: String,
    /// `audit.k8s.io/v1beta1`'s name for the stage's time.
    pub timestamp: String,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Metadata {
    pub name: String,
    pub resource_version: String,
    /// The event's time at second precision (the server's clock for an event without one).
    pub creation_timestamp: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct User {
    pub username: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ObjectRef {
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ResponseStatus {
    pub code: Option<i64>,
}

impl EventView {
    /// The event's own time: its stage's, else when the server took it in.
    pub fn time(&self) -> Option<Timestamp> {
        [
            &self.stage_timestamp,
            &self.timestamp,
            &self.metadata.creation_timestamp,
        ]
        .into_iter()
        .find(|t| !t.is_empty())
        .and_then(|t| t.parse().ok())
    }

    /// Whether the server sent it without its request/response objects.
    pub fn truncated(&self) -> bool {
        self.annotations
            .get(TRUNCATED_ANNOTATION)
            .is_some_and(|v| v == "true")
    }

    /// Whether the server replaced secret values in its request/response objects.
    pub fn redacted(&self) -> bool {
        self.annotations
            .get(REDACTED_ANNOTATION)
            .is_some_and(|v| v == "true")
    }

    /// The cells of a table row, `wide` adding the last four, each escaped for the
    /// terminal (before the columns' widths are measured, so escaped cells stay aligned).
    fn cells(&self, wide: bool) -> Vec<String> {
        let time = match self.time() {
            Some(t) => format!("{t:.0}"),
            None => String::new(),
        };
        let r = &self.object_ref;
        let resource = match (r.resource.as_str(), r.subresource.as_str()) {
            ("", _) => self.request_uri.clone(),
            (res, "") => res.to_owned(),
            (res, sub) => format!("{res}/{sub}"),
        };
        let object = match (r.namespace.as_str(), r.name.as_str()) {
            ("", name) => name.to_owned(),
            (ns, "") => ns.to_owned(),
            (ns, name) => format!("{ns}/{name}"),
        };
        let latency =
            if self.request_received_timestamp.is_empty() || self.stage_timestamp.is_empty() {
                String::new()
            } else {
                crate::table::latency(&self.request_received_timestamp, &self.stage_timestamp)
                    .unwrap_or_default()
            };
        let mut cells = vec![
            time,
            self.annotations
                .get(SOURCE_ANNOTATION)
                .cloned()
                .unwrap_or_default(),
            self.user.username.clone(),
            self.verb.clone(),
            resource,
            object,
            self.response_status
                .code
                .map_or(String::new(), |c| c.to_string()),
            latency,
        ];
        if wide {
            cells.extend([
                self.stage.clone(),
                self.source_ips.join(","),
                self.user_agent.clone(),
                self.audit_id.clone(),
            ]);
        }
        for cell in &mut cells {
            if let Cow::Owned(escaped) = escape_terminal(cell) {
                *cell = escaped;
            }
        }
        cells
    }
}

const HEADERS: [&str; 8] = [
    "TIME",
    "SOURCE",
    "USER",
    "VERB",
    "RESOURCE",
    "NAMESPACE/NAME",
    "CODE",
    "LATENCY",
];
const WIDE_HEADERS: [&str; 4] = ["STAGE", "SOURCE IPS", "USER AGENT", "AUDIT ID"];
/// Starting widths that fit common values (a timestamp, a verb, "ResponseComplete", a
/// UUID): a tail that starts with nothing held prints its header before any row, and
/// live rows should line up under it.
const MIN_WIDTHS: [usize; 12] = [20, 11, 14, 6, 10, 20, 4, 7, 16, 12, 16, 36];
/// What ends the row of an event the server cut or redacted (the JSON and YAML carry the
/// annotation itself).
const TRUNCATED_MARK: &str = "(truncated: request/response objects left out)";
const REDACTED_MARK: &str = "(redacted: secret values in request/response objects replaced)";
/// Columns are kubectl's distance apart.
const GAP: &str = "   ";
/// Where the verb and the code are in a row.
const VERB_COLUMN: usize = 3;
const CODE_COLUMN: usize = 6;

/// Prints events to stdout in one format.
pub struct Printer {
    output: Output,
    colour: bool,
    /// The table's column widths so far: they grow to fit each batch, and live rows use
    /// them, so a stream stays aligned unless a later value is wider.
    widths: Vec<usize>,
    header_done: bool,
}

impl Printer {
    pub fn new(output: Output) -> Printer {
        Printer::with_colour(output, colour_wanted())
    }

    fn with_colour(output: Output, colour: bool) -> Printer {
        let headers = Self::headers(output);
        Printer {
            output,
            colour,
            widths: headers
                .iter()
                .zip(MIN_WIDTHS)
                .map(|(h, min)| h.len().max(min))
                .collect(),
            header_done: false,
        }
    }

    fn headers(output: Output) -> Vec<&'static str> {
        let mut h = HEADERS.to_vec();
        if output == Output::Wide {
            h.extend(WIDE_HEADERS);
        }
        h
    }

    /// Print `items` and flush. A reader that went away (`| head`) is not an error.
    pub fn batch(&mut self, items: &[Item]) -> std::io::Result<()> {
        let mut out = Vec::with_capacity(items.len() * 160);
        self.render(items, &mut out);
        write_stdout(&out)
    }

    /// Before live events: a table shows its header now, even when nothing was held.
    pub fn start_live(&mut self) -> std::io::Result<()> {
        if matches!(self.output, Output::Table | Output::Wide) && !self.header_done {
            let mut out = vec![];
            self.header(&mut out);
            return write_stdout(&out);
        }
        Ok(())
    }

    fn render(&mut self, items: &[Item], out: &mut Vec<u8>) {
        match self.output {
            Output::Json => {
                for item in items {
                    out.extend_from_slice(item.raw().as_bytes());
                    out.push(b'\n');
                }
            }
            Output::Yaml => {
                for item in items {
                    // The raw object parses (it was parsed once already), and a JSON value
                    // always has a YAML form; an error would leave the document empty.
                    let value: serde_json::Value =
                        serde_json::from_str(item.raw()).unwrap_or_default();
                    out.extend_from_slice(b"---\n");
                    out.extend_from_slice(
                        serde_saphyr::to_string(&value)
                            .unwrap_or_default()
                            .as_bytes(),
                    );
                }
            }
            Output::Table | Output::Wide => {
                let wide = self.output == Output::Wide;
                let rows: Vec<(Vec<String>, &EventView)> = items
                    .iter()
                    .map(|i| (i.view.cells(wide), &i.view))
                    .collect();
                for (cells, _) in &rows {
                    for (w, c) in self.widths.iter_mut().zip(cells) {
                        *w = (*w).max(c.chars().count());
                    }
                }
                if !rows.is_empty() {
                    self.header(out);
                }
                for (cells, view) in &rows {
                    self.row(out, cells, view);
                }
            }
        }
    }

    fn header(&mut self, out: &mut Vec<u8>) {
        if self.header_done {
            return;
        }
        self.header_done = true;
        let headers: Vec<String> = Self::headers(self.output)
            .into_iter()
            .map(str::to_owned)
            .collect();
        self.line(out, &headers, &[]);
    }

    fn row(&self, out: &mut Vec<u8>, cells: &[String], view: &EventView) {
        let mut styles = vec![Style::new(); cells.len()];
        if self.colour {
            styles[VERB_COLUMN] = verb_style(&view.verb);
            styles[CODE_COLUMN] = code_style(view.response_status.code);
        }
        self.line(out, cells, &styles);
        let marks = [
            (view.truncated(), TRUNCATED_MARK),
            (view.redacted(), REDACTED_MARK),
        ];
        if marks.iter().any(|(on, _)| *on) {
            // After the last column, so the columns stay aligned.
            out.pop();
            for (_, mark) in marks.iter().filter(|(on, _)| *on) {
                out.extend_from_slice(GAP.as_bytes());
                out.extend_from_slice(mark.as_bytes());
            }
            out.push(b'\n');
        }
    }

    /// One line: every cell but the last padded to its column's width.
    fn line(&self, out: &mut Vec<u8>, cells: &[String], styles: &[Style]) {
        let last = cells.len().saturating_sub(1);
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let padded = if i == last {
                cell.clone()
            } else {
                let pad = self.widths[i].saturating_sub(cell.chars().count());
                format!("{cell}{:pad$}{GAP}", "")
            };
            match styles.get(i).filter(|s| **s != Style::new()) {
                // Colour the text only, not the padding after it.
                Some(style) => {
                    let (word, rest) = padded.split_at(cell.len());
                    text.push_str(&format!("{style}{word}{style:#}{rest}"));
                }
                None => text.push_str(&padded),
            }
        }
        let text = text.trim_end();
        out.extend_from_slice(text.as_bytes());
        out.push(b'\n');
    }
}

/// A Table the server printed, aligned as kubectl prints it: the columns of priority 0
/// (every column with `wide`), named in capitals, cells escaped for the terminal, a
/// missing cell `<none>`. `None` when it has no rows.
pub fn server_table(table: &[u8], wide: bool) -> Result<Option<Vec<u8>>, serde_json::Error> {
    #[derive(Deserialize)]
    struct Table {
        #[serde(rename = "columnDefinitions", default)]
        columns: Vec<Column>,
        #[serde(default)]
        rows: Vec<Row>,
    }
    #[derive(Deserialize)]
    struct Column {
        name: String,
        #[serde(default)]
        priority: u8,
    }
    #[derive(Deserialize)]
    struct Row {
        #[serde(default)]
        cells: Vec<serde_json::Value>,
    }
    let table: Table = serde_json::from_slice(table)?;
    if table.rows.is_empty() {
        return Ok(None);
    }
    let shown: Vec<usize> = (0..table.columns.len())
        .filter(|i| wide || table.columns[*i].priority == 0)
        .collect();
    let mut lines: Vec<Vec<String>> = vec![
        shown
            .iter()
            .map(|i| escape_terminal(&table.columns[*i].name.to_uppercase()).into_owned())
            .collect(),
    ];
    for row in &table.rows {
        lines.push(
            shown
                .iter()
                .map(|i| match row.cells.get(*i) {
                    None | Some(serde_json::Value::Null) => "<none>".to_owned(),
                    Some(serde_json::Value::String(s)) => escape_terminal(s).into_owned(),
                    Some(other) => other.to_string(),
                })
                .collect(),
        );
    }
    let mut widths = vec![0; shown.len()];
    for line in &lines {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = Vec::new();
    for line in &lines {
        let mut text = String::new();
        for (cell, w) in line.iter().zip(&widths) {
            let pad = w.saturating_sub(cell.chars().count());
            text.push_str(&format!("{cell}{:pad$}{GAP}", ""));
        }
        out.extend_from_slice(text.trim_end().as_bytes());
        out.push(b'\n');
    }
    Ok(Some(out))
}

/// Objects the server sent (a list's items, or one object) as JSON lines or YAML
/// documents, as `tail` prints events.
pub fn objects(body: &[u8], output: Output) -> Result<Vec<u8>, serde_json::Error> {
    let value: serde_json::Value = serde_json::from_slice(body)?;
    let items = match value.get("items").and_then(|i| i.as_array()) {
        Some(items) if value["kind"].as_str().is_some_and(|k| k.ends_with("List")) => items.clone(),
        _ => vec![value],
    };
    let mut out = Vec::new();
    for item in &items {
        if output == Output::Yaml {
            out.extend_from_slice(b"---\n");
            out.extend_from_slice(serde_saphyr::to_string(item).unwrap_or_default().as_bytes());
        } else {
            out.extend_from_slice(&serde_json::to_vec(item)?);
            out.push(b'\n');
        }
    }
    Ok(out)
}

/// Print what `server_table` or `objects` made.
pub fn print(bytes: &[u8]) -> std::io::Result<()> {
    write_stdout(bytes)
}

/// Colour only for a person at a terminal: never in a pipe or file, nor with `NO_COLOR`
/// set or a dumb terminal.
fn colour_wanted() -> bool {
    std::io::stdout().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::env::var("TERM").is_ok_and(|t| t != "dumb")
}

/// Reads plain, writes yellow, deletes red.
fn verb_style(verb: &str) -> Style {
    let colour = match verb {
        "create" => AnsiColor::Green,
        "update" | "patch" | "apply" => AnsiColor::Yellow,
        "delete" | "deletecollection" => AnsiColor::Red,
        "get" | "list" | "watch" => return Style::new(),
        _ => AnsiColor::Cyan,
    };
    colour.on_default()
}

/// 2xx green, 4xx yellow (401 and 403 bold), 5xx red.
fn code_style(code: Option<i64>) -> Style {
    match code {
        Some(200..=299) => AnsiColor::Green.on_default(),
        Some(401 | 403) => AnsiColor::Yellow.on_default().bold(),
        Some(400..=499) => AnsiColor::Yellow.on_default(),
        Some(500..) => AnsiColor::Red.on_default().bold(),
        _ => Style::new(),
    }
}

/// Write to stdout; `| head` closing the pipe ends the plugin quietly, as kubectl does.
fn write_stdout(bytes: &[u8]) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        r => r,
    }
}

#[cfg(test)]
mod tests;
