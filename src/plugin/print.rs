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
mod tests {
    use super::*;

    const EVENT: &str = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1alpha1","metadata":{"name":"a-responsecomplete","namespace":"team-a","resourceVersion":"4","creationTimestamp":"2026-01-01T10:00:02Z"},"level":"Metadata","auditID":"a","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/team-a/configmaps/cm","verb":"delete","user":{"username":"alice"},"sourceIPs":["10.0.0.1","::1"],"userAgent":"kubectl/v1.33","objectRef":{"resource":"configmaps","namespace":"team-a","name":"cm","apiVersion":"v1"},"responseStatus":{"code":200},"requestReceivedTimestamp":"2026-01-01T10:00:00.000000Z","stageTimestamp":"2026-01-01T10:00:00.012000Z","annotations":{"audit.k8s.io/source":"apiserver-1"}}"#;

    fn render(output: Output, colour: bool, raws: &[&str]) -> String {
        let items: Vec<Item> = raws.iter().map(|r| Item::new(r).unwrap()).collect();
        let mut p = Printer::with_colour(output, colour);
        let mut out = vec![];
        p.render(&items, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn table_rows_align_under_the_header() {
        let cluster = r#"{"metadata":{"resourceVersion":"5"},"verb":"list","user":{"username":"system:kube-controller-manager"},"requestURI":"/healthz","stageTimestamp":"2026-01-01T10:00:01Z"}"#;
        let text = render(Output::Table, false, &[EVENT, cluster]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "TIME                   SOURCE        USER                             VERB     RESOURCE     NAMESPACE/NAME         CODE   LATENCY",
                "2026-01-01T10:00:00Z   apiserver-1   alice                            delete   configmaps   team-a/cm              200    12ms",
                "2026-01-01T10:00:01Z                 system:kube-controller-manager   list     /healthz",
            ]
        );
    }

    #[test]
    fn wide_adds_stage_ips_agent_and_audit_id() {
        let text = render(Output::Wide, false, &[EVENT]);
        let header = text.lines().next().unwrap();
        assert!(
            header.ends_with("STAGE              SOURCE IPS     USER AGENT         AUDIT ID"),
            "{header}"
        );
        assert!(
            text.lines()
                .nth(1)
                .unwrap()
                .ends_with("ResponseComplete   10.0.0.1,::1   kubectl/v1.33      a")
        );
    }

    #[test]
    fn colour_on_verb_and_code_only_when_asked() {
        let plain = render(Output::Table, false, &[EVENT]);
        assert!(!plain.contains('\x1b'));
        let coloured = render(Output::Table, true, &[EVENT]);
        let red = AnsiColor::Red.on_default();
        let green = AnsiColor::Green.on_default();
        assert!(
            coloured.contains(&format!("{red}delete{red:#}")),
            "{coloured:?}"
        );
        assert!(
            coloured.contains(&format!("{green}200{green:#}")),
            "{coloured:?}"
        );
        // The header and the other cells are plain; alignment counts visible characters.
        assert!(coloured.lines().next().unwrap().starts_with("TIME "));
        let strip = coloured
            .replace(&format!("{red}"), "")
            .replace(&format!("{red:#}"), "")
            .replace(&format!("{green}"), "");
        assert_eq!(strip.replace(&format!("{green:#}"), ""), plain);
    }

    #[test]
    fn truncated_events_say_so() {
        let truncated = EVENT.replace(
            r#""annotations":{"#,
            r#""annotations":{"audit.k8s.io/truncated":"true","#,
        );
        let text = render(Output::Table, false, &[&truncated]);
        assert!(
            text.lines()
                .nth(1)
                .unwrap()
                .ends_with("12ms   (truncated: request/response objects left out)"),
            "{text}"
        );
    }

    #[test]
    fn redacted_events_say_so() {
        let redacted = EVENT.replace(
            r#""annotations":{"#,
            r#""annotations":{"audit.k8s.io/redacted":"true","#,
        );
        let text = render(Output::Table, false, &[&redacted]);
        assert!(
            text.lines()
                .nth(1)
                .unwrap()
                .ends_with("12ms   (redacted: secret values in request/response objects replaced)"),
            "{text}"
        );
        let both = redacted.replace(
            r#""annotations":{"#,
            r#""annotations":{"audit.k8s.io/truncated":"true","#,
        );
        let text = render(Output::Wide, true, &[&both]);
        assert!(
            text.lines().nth(1).unwrap().ends_with(
                "   a   (truncated: request/response objects left out)   (redacted: secret values in request/response objects replaced)"
            ),
            "{text}"
        );
        assert!(!Item::new(EVENT).unwrap().view.redacted());
        let not = EVENT.replace(
            r#""annotations":{"#,
            r#""annotations":{"audit.k8s.io/redacted":"false","#,
        );
        assert!(!render(Output::Table, false, &[&not]).contains("redacted"));
    }

    #[test]
    fn tables_print_the_escaped_form_and_stay_aligned() {
        let evil = "cm\x1b[2J\x1b]0;owned\x07\rx\u{9b}1m\x7f\n\ty";
        let mut v: serde_json::Value = serde_json::from_str(EVENT).unwrap();
        v["objectRef"]["name"] = evil.into();
        v["user"]["username"] = "bob\x1b[5m\0".into();
        v["verb"] = "del\x1bete".into();
        v["userAgent"] = "curl\x08\x08\x08\x08kubectl".into();
        v["auditID"] = "\u{85}id".into();
        v["sourceIPs"] = serde_json::json!(["10.0.0.1\r"]);
        v["annotations"]["audit.k8s.io/source"] = "api\x1bserver".into();
        let raw = v.to_string();
        for colour in [false, true] {
            let text = render(Output::Wide, colour, &[&raw, EVENT]);
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.len(), 3, "{text:?}");
            let row = lines[1];
            for shown in [
                "team-a/cm^[[2J^[]0;owned^G\\rx\\u009b1m^?\\n\\ty",
                "bob^[[5m^@",
                "del^[ete",
                "curl^H^H^H^Hkubectl",
                "\\u0085id",
                "10.0.0.1\\r",
                "api^[server",
            ] {
                assert!(row.contains(shown), "{shown}: {row:?}");
            }
            // Besides the plugin's own colours, no control character; the columns line up.
            let plain = if colour {
                let red = AnsiColor::Red.on_default();
                let cyan = AnsiColor::Cyan.on_default();
                let green = AnsiColor::Green.on_default();
                [red, cyan, green].iter().fold(text.clone(), |t, s| {
                    t.replace(&s.to_string(), "").replace(&format!("{s:#}"), "")
                })
            } else {
                text.clone()
            };
            assert!(
                !plain.chars().any(|c| c.is_control() && c != '\n'),
                "{plain:?}"
            );
            // Every column starts where its header does, after a space.
            let plain_lines: Vec<Vec<char>> = plain.lines().map(|l| l.chars().collect()).collect();
            let header: String = plain_lines[0].iter().collect();
            for name in Printer::headers(Output::Wide) {
                let at = header[..header.find(name).unwrap()].chars().count();
                for line in &plain_lines[1..] {
                    assert!(
                        at == 0 || (line[at - 1] == ' ' && line[at] != ' '),
                        "{name}: {plain}"
                    );
                }
            }
        }
        // JSON stays the object as sent; YAML parses back to it.
        assert_eq!(render(Output::Json, true, &[&raw]), format!("{raw}\n"));
        let yaml = render(Output::Yaml, true, &[&raw]);
        // YAML's double-quoted escapes keep it valid, and the terminal safe.
        assert!(
            !yaml.chars().any(|c| c.is_control() && c != '\n'),
            "{yaml:?}"
        );
        let back: Vec<serde_json::Value> = serde_saphyr::from_str_multiple(&yaml).unwrap();
        assert_eq!(back, [v]);
    }

    #[test]
    fn json_is_the_object_as_sent_and_yaml_a_document_each() {
        assert_eq!(
            render(Output::Json, true, &[EVENT, EVENT]),
            format!("{EVENT}\n{EVENT}\n")
        );
        let yaml = render(Output::Yaml, false, &[EVENT, EVENT]);
        assert_eq!(yaml.matches("---\n").count(), 2);
        assert!(yaml.contains("auditID: a\n"), "{yaml}");
        assert!(yaml.contains("  username: alice\n"), "{yaml}");
    }

    #[test]
    fn times() {
        let item = Item::new(EVENT).unwrap();
        assert_eq!(item.resource_version(), Some(4));
        assert_eq!(
            item.view.time().unwrap(),
            "2026-01-01T10:00:00.012Z".parse::<Timestamp>().unwrap()
        );
        let no_stage = EVENT.replace("stageTimestamp", "other");
        assert_eq!(
            Item::new(&no_stage).unwrap().view.time().unwrap(),
            "2026-01-01T10:00:02Z".parse::<Timestamp>().unwrap()
        );
        assert!(!item.view.truncated());
    }
}
