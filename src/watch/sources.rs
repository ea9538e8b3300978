//! LIST, GET and WATCH of `sources`: the objects `crate::sources` builds each tick, as a
//! `SourceList`, one `Source`, or a Table (`kubectl get sources.audit.k8s.io`).
//!
//! A watch sends `ADDED` for each source first, then `MODIFIED` when an object changes
//! (its content, so at most once a tick per source, and a watcher takes the newest view
//! at most once a tick), `DELETED` when one leaves (evicted past the cap), and bookmarks
//! as an events watch does. Its work per tick is one comparison per source; it holds one
//! pointer per source, and one of the server's watch slots.
//!
//! resourceVersion: a watch from R sends the sources that changed after R (as `ADDED` if
//! they were first seen after R, else `MODIFIED`), from "" or "0" every source. No
//! resourceVersion is too old: there is no history to lose, only the current objects.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::registry::{Registration, Stop, Watches};
use super::{BOOKMARK_INTERVAL, INITIAL_EVENTS_END_ANNOTATION, Query, Recheck, stream_response};
use crate::discovery::SOURCES;
use crate::event::{API_GROUP, GROUP_VERSION};
use crate::metrics::{WatchCounts, WatchGuard};
use crate::response::{self, Body, Chunk};
use crate::sources::{self, Item, KIND, Sources, View};
use crate::status::ApiError;
use crate::table::{self, Format, ValueRow};

/// `fieldSelector` on sources: `metadata.name` only (`=`, `==`, `!=`), which
/// kube-apiserver offers on every resource and `kubectl get NAME -w` sends.
#[derive(Debug, Clone, Default)]
pub struct NameSelector {
    /// (name, equal)
    terms: Vec<(String, bool)>,
}

impl NameSelector {
    /// Narrowed to `name` too: a named watch (`/sources/NAME?watch=1`, or the path form
    /// `/watch/sources/NAME`) is the collection's with `metadata.name=NAME`, as
    /// kube-apiserver serves it.
    pub fn require_name(&mut self, name: &str) {
        if name.is_empty() {
            return;
        }
        if !self.terms.iter().any(|(n, equal)| *equal && n == name) {
            self.terms.push((name.to_owned(), true));
        }
    }

    /// The `fieldSelector` of `query` (its first, as `Query` reads a repeated parameter).
    pub fn parse(query: Option<&str>) -> Result<NameSelector, ApiError> {
        let Some((_, value)) = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .find(|(k, _)| k == "fieldSelector")
        else {
            return Ok(NameSelector::default());
        };
        let mut terms = Vec::new();
        for term in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (label, name, equal) = if let Some((l, v)) = term.split_once("!=") {
                (l, v, false)
            } else if let Some((l, v)) = term.split_once("==") {
                (l, v, true)
            } else if let Some((l, v)) = term.split_once('=') {
                (l, v, true)
            } else {
                return Err(ApiError::BadRequest(format!(
                    "invalid field selector {term:?}: expected metadata.name=value, metadata.name==value or metadata.name!=value"
                )));
            };
            if label.trim() != "metadata.name" {
                return Err(ApiError::BadRequest(format!(
                    "field label not supported: {}",
                    label.trim()
                )));
            }
            terms.push((name.trim().to_owned(), equal));
        }
        Ok(NameSelector { terms })
    }

    fn matches(&self, name: &str) -> bool {
        self.terms.iter().all(|(n, equal)| (n == name) == *equal)
    }
}

/// Where the next page of a LIST starts: after this name.
#[derive(Serialize, Deserialize)]
struct Continue {
    v: String,
    r: String,
    after: String,
}

fn encode_continue(after: &str) -> String {
    super::encode_continue(&Continue {
        v: GROUP_VERSION.to_owned(),
        r: SOURCES.to_owned(),
        after: after.to_owned(),
    })
}

fn decode_continue(token: &str) -> Result<String, ApiError> {
    let c: Continue = super::decode_continue(token)?;
    if c.v != GROUP_VERSION || c.r != SOURCES {
        return Err(ApiError::BadRequest(
            "invalid continue token: not a token of sources".into(),
        ));
    }
    Ok(c.after)
}

/// The `columnDefinitions` of a sources Table.
fn columns() -> Vec<u8> {
    table::column_definitions(&sources::COLUMNS)
}

/// LIST: every source (the selected ones), in name order, in pages of `limit`.
pub fn list(
    sources: &Sources,
    query: &Query,
    selector: &NameSelector,
    format: Option<Format>,
) -> Result<Response<Body>, ApiError> {
    let after = query
        .continue_token
        .as_deref()
        .map(decode_continue)
        .transpose()?;
    let view = sources.view();
    let mut items: Vec<&Arc<Item>> = view
        .items
        .values()
        .filter(|i| after.as_ref().is_none_or(|a| i.name > *a))
        .filter(|i| selector.matches(&i.name))
        .collect();
    let mut next = None;
    if query.limit > 0 && items.len() > query.limit {
        items.truncate(query.limit);
        next = items.last().map(|i| encode_continue(&i.name));
    }
    let body = match format {
        Some(f) => {
            let now = sources::now();
            let rows: Vec<ValueRow<'_>> = items
                .iter()
                .map(|i| ValueRow {
                    cells: i.cells(now),
                    object: &i.object,
                })
                .collect();
            f.value_table(view.resource_version, next.as_deref(), &columns(), &rows)
        }
        None => {
            let mut metadata = json!({ "resourceVersion": view.resource_version.to_string() });
            if let Some(token) = &next {
                metadata["continue"] = Value::String(token.clone());
            }
            let list = json!({
                "kind": format!("{KIND}List"),
                "apiVersion": GROUP_VERSION,
                "metadata": metadata,
                "items": items.iter().map(|i| &i.object).collect::<Vec<_>>(),
            });
            serde_json::to_vec(&list).unwrap_or_default()
        }
    };
    Ok(response::json(StatusCode::OK, body))
}

/// GET one source, as an object or a one-row Table.
pub fn get(
    sources: &Sources,
    name: &str,
    format: Option<Format>,
) -> Result<Response<Body>, ApiError> {
    let view = sources.view();
    let item = view
        .items
        .get(name)
        .ok_or_else(|| ApiError::ObjectNotFound {
            group: API_GROUP,
            resource: SOURCES,
            name: name.to_owned(),
        })?;
    let body = match format {
        Some(f) => f.value_table(
            item.resource_version,
            None,
            &columns(),
            &[ValueRow {
                cells: item.cells(sources::now()),
                object: &item.object,
            }],
        ),
        None => serde_json::to_vec(&item.object).unwrap_or_default(),
    };
    Ok(response::json(StatusCode::OK, body))
}

/// What a sources watch needs besides its query.
pub struct WatchCtx {
    /// Re-authorization and how often to do it.
    pub recheck: Option<(Recheck, Duration)>,
    pub guard: WatchGuard,
    /// `Some` for a Table watch.
    pub format: Option<Format>,
    /// Who watches, for the per-user limit on open watches and the log.
    pub user: Arc<str>,
}

/// How the registry ends a sources watch, and whether it has something to send: a view
/// newer than the one it last sent.
struct SourceStop {
    stop: CancellationToken,
    sent: Arc<AtomicU64>,
    view: watch::Receiver<Arc<View>>,
}

impl Stop for SourceStop {
    fn close(&self) {
        self.stop.cancel();
    }

    fn has_pending(&self) -> bool {
        self.view.borrow().resource_version > self.sent.load(Ordering::Relaxed)
    }
}

/// Start a watch of the sources, taking one of the server's watch slots.
pub fn serve(
    sources: &Sources,
    watches: &Watches,
    query: &Query,
    selector: NameSelector,
    ctx: WatchCtx,
) -> Result<Response<Body>, ApiError> {
    let stop = CancellationToken::new();
    let sent = Arc::new(AtomicU64::new(0));
    // Up to date now, so that the first lines are.
    sources.view();
    let mut view = sources.subscribe();
    let closer = SourceStop {
        stop: stop.clone(),
        sent: sent.clone(),
        view: view.clone(),
    };
    let registration = watches.register(&ctx.user, closer, ctx.guard.stalled_counter())?;
    let now = Instant::now();
    let current = view.borrow_and_update().clone();
    let mut w = SourceWatch {
        view,
        sent_items: HashMap::new(),
        sent,
        selector,
        format: ctx.format,
        headers: ctx.format.is_some(),
        deadline: now + query.timeout(),
        next_bookmark: query.allow_watch_bookmarks.then(|| now + BOOKMARK_INTERVAL),
        next_recheck: ctx.recheck.as_ref().map(|(_, every)| now + *every),
        recheck: ctx.recheck,
        stop,
        registration,
        guard: ctx.guard,
        counts: WatchCounts::default(),
        last_change: now,
        first: None,
        ended: false,
        logged: false,
        user: ctx.user,
        started: now,
    };
    let since = match (query.sends_initial_events(), query.resource_version) {
        (true, _) | (false, None | Some(0)) => 0,
        (false, Some(rv)) => rv,
    };
    let mut first = w.initial(&current, since);
    if query.sends_initial_events() {
        first.extend_from_slice(&w.initial_events_end(current.resource_version));
    }
    w.first = (!first.is_empty()).then(|| Bytes::from(first));
    tracing::info!(user = %w.user, resource = SOURCES, resource_version = since, "watch started");
    let panics = w.guard.panic_counter();
    let stream = futures_util::stream::unfold(w, |mut w| async move {
        let frame = w.next().await?;
        Some((Ok::<_, Infallible>(Frame::data(Chunk::Bytes(frame))), w))
    });
    let body = StreamBody::new(Box::pin(stream));
    Ok(stream_response(
        response::Guarded::new(body, panics).boxed_unsync(),
    ))
}

/// One open watch of the sources.
struct SourceWatch {
    view: watch::Receiver<Arc<View>>,
    /// Each source as last sent.
    sent_items: HashMap<String, Arc<Item>>,
    /// The resourceVersion of the view last sent (the sweeper reads it).
    sent: Arc<AtomicU64>,
    selector: NameSelector,
    format: Option<Format>,
    /// A Table watch whose column definitions have not gone out yet.
    headers: bool,
    deadline: Instant,
    next_bookmark: Option<Instant>,
    recheck: Option<(Recheck, Duration)>,
    next_recheck: Option<Instant>,
    stop: CancellationToken,
    registration: Registration,
    guard: WatchGuard,
    counts: WatchCounts,
    /// When the last change went out: the next no sooner than a tick later.
    last_change: Instant,
    /// The first lines, not yet handed over.
    first: Option<Bytes>,
    /// Nothing more to send (the next poll ends the stream).
    ended: bool,
    /// The end has been logged.
    logged: bool,
    user: Arc<str>,
    started: Instant,
}

impl SourceWatch {
    /// The next frame; `None` at the end.
    async fn next(&mut self) -> Option<Bytes> {
        if self.ended {
            self.end();
            return None;
        }
        let out = self.step().await;
        if let Some(b) = &out {
            self.counts.sent_bytes += b.len() as u64;
        }
        self.guard.flush(&mut self.counts);
        if out.is_none() {
            self.end();
        }
        out
    }

    async fn step(&mut self) -> Option<Bytes> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        loop {
            let now = Instant::now();
            // Ended from outside: shutdown, or the sweeper found it stalled.
            if !self.registration.polled(now) || now >= self.deadline {
                return None;
            }
            let bookmark_at = self.next_bookmark.unwrap_or(self.deadline);
            let recheck_at = self.next_recheck.unwrap_or(self.deadline);
            tokio::select! {
                _ = self.stop.cancelled() => return None,
                _ = tokio::time::sleep_until(self.deadline) => return None,
                changed = self.view.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                    // At most one change a tick reaches a watcher: then the newest view.
                    let calm = self.last_change + sources::TICK;
                    if calm > Instant::now() {
                        tokio::select! {
                            _ = self.stop.cancelled() => return None,
                            _ = tokio::time::sleep_until(calm) => {}
                        }
                    }
                    let view = self.view.borrow_and_update().clone();
                    let out = self.changes(&view);
                    if !out.is_empty() {
                        self.last_change = Instant::now();
                        return Some(Bytes::from(out));
                    }
                }
                _ = tokio::time::sleep_until(bookmark_at), if self.next_bookmark.is_some() => {
                    self.next_bookmark = Some(Instant::now() + BOOKMARK_INTERVAL);
                    let rv = self.sent.load(Ordering::Relaxed);
                    return Some(Bytes::from(self.bookmark(rv, false)));
                }
                _ = tokio::time::sleep_until(recheck_at), if self.next_recheck.is_some() => {
                    let Some((recheck, every)) = &self.recheck else { continue };
                    match recheck().await {
                        Ok(()) => self.next_recheck = Some(Instant::now() + *every),
                        Err(e) => {
                            tracing::info!(user = %self.user, error = %e, "watch no longer authorized; ending it");
                            self.ended = true;
                            return Some(e.to_watch_event());
                        }
                    }
                }
            }
        }
    }

    /// The first lines: `ADDED` for every source, or, from resourceVersion `since`, the
    /// sources changed after it.
    fn initial(&mut self, view: &View, since: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, item) in &view.items {
            if !self.selector.matches(name) {
                continue;
            }
            if item.resource_version > since {
                let created_after = u64::try_from(item.created).unwrap_or(0) > since;
                let kind = if since == 0 || created_after {
                    "ADDED"
                } else {
                    "MODIFIED"
                };
                self.line(&mut out, kind, item, item.resource_version, &item.object);
            }
            self.sent_items.insert(name.clone(), item.clone());
        }
        self.sent.store(view.resource_version, Ordering::Relaxed);
        out
    }

    /// The lines that bring this watcher from what it was sent to `view`.
    fn changes(&mut self, view: &View) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, item) in &view.items {
            if !self.selector.matches(name) {
                continue;
            }
            let kind = match self.sent_items.get(name) {
                None => "ADDED",
                Some(old) if old.resource_version != item.resource_version => "MODIFIED",
                Some(_) => continue,
            };
            self.line(&mut out, kind, item, item.resource_version, &item.object);
            self.sent_items.insert(name.clone(), item.clone());
        }
        let gone: Vec<String> = self
            .sent_items
            .keys()
            .filter(|k| !view.items.contains_key(*k))
            .cloned()
            .collect();
        for name in gone {
            if let Some(item) = self.sent_items.remove(&name) {
                let mut object = item.object.clone();
                object["metadata"]["resourceVersion"] =
                    Value::String(view.resource_version.to_string());
                self.line(&mut out, "DELETED", &item, view.resource_version, &object);
            }
        }
        self.sent.store(view.resource_version, Ordering::Relaxed);
        out
    }

    /// One watch line for `item` (whose object, as sent, is `object`).
    fn line(&mut self, out: &mut Vec<u8>, kind: &str, item: &Item, rv: u64, object: &Value) {
        match self.format {
            Some(f) => {
                let columns = self.headers.then(columns);
                self.headers = false;
                let row = ValueRow {
                    cells: item.cells(sources::now()),
                    object,
                };
                out.extend_from_slice(&f.value_watch_line(kind, rv, columns.as_deref(), &row));
            }
            None => {
                let line = json!({ "type": kind, "object": object });
                out.extend_from_slice(&serde_json::to_vec(&line).unwrap_or_default());
                out.push(b'\n');
            }
        }
        self.counts.sent += 1;
    }

    /// A `BOOKMARK` at `rv`; `end` marks the end of a WatchList's initial events.
    fn bookmark(&self, rv: u64, end: bool) -> Vec<u8> {
        if let Some(f) = self.format {
            return f.bookmark_without_rows(rv);
        }
        let mut metadata = json!({ "resourceVersion": rv.to_string() });
        if end {
            metadata["annotations"] = json!({ INITIAL_EVENTS_END_ANNOTATION: "true" });
        }
        let line = json!({
            "type": "BOOKMARK",
            "object": { "kind": KIND, "apiVersion": GROUP_VERSION, "metadata": metadata },
        });
        let mut out = serde_json::to_vec(&line).unwrap_or_default();
        out.push(b'\n');
        out
    }

    fn initial_events_end(&self, rv: u64) -> Vec<u8> {
        self.bookmark(rv, true)
    }

    /// The end of the stream: logged once.
    fn end(&mut self) {
        self.ended = true;
        if std::mem::replace(&mut self.logged, true) {
            return;
        }
        tracing::info!(
            user = %self.user,
            resource = SOURCES,
            duration_seconds = self.started.elapsed().as_millis() as f64 / 1000.0,
            "watch ended"
        );
    }
}

/// A watch dropped before its end (its client went away) still leaves its end line.
impl Drop for SourceWatch {
    fn drop(&mut self) {
        self.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::sources::{Push, Settings};

    fn sources() -> Sources {
        let s = Sources::new(Settings::default(), &Metrics::new());
        for (name, events) in [("api-1", 3), ("api-2", 1)] {
            s.record(
                name,
                Push::Accepted {
                    events,
                    duplicate_events: 0,
                    bytes: 10,
                },
            );
        }
        s
    }

    async fn body(resp: Response<Body>) -> Value {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn lists_in_pages_and_gets_by_name() {
        let s = sources();
        let q = Query::parse(Some("limit=1")).unwrap();
        let page = body(list(&s, &q, &NameSelector::default(), None).unwrap()).await;
        assert_eq!(page["kind"], "SourceList");
        assert_eq!(page["items"].as_array().unwrap().len(), 1);
        assert_eq!(page["items"][0]["metadata"]["name"], "api-1");
        let token = page["metadata"]["continue"].as_str().unwrap();
        let q = Query::parse(Some(&format!("limit=1&continue={token}"))).unwrap();
        let page = body(list(&s, &q, &NameSelector::default(), None).unwrap()).await;
        assert_eq!(page["items"][0]["metadata"]["name"], "api-2");
        assert!(page["metadata"].get("continue").is_none());
        let q = Query::parse(Some("continue=bm9wZQ")).unwrap();
        assert!(list(&s, &q, &NameSelector::default(), None).is_err());

        let one = body(get(&s, "api-2", None).unwrap()).await;
        assert_eq!(one["status"]["acceptedEvents"], 1);
        let e = get(&s, "nope", None).unwrap_err();
        assert_eq!(e.to_string(), r#"sources.audit.k8s.io "nope" not found"#);

        let sel = NameSelector::parse(Some("fieldSelector=metadata.name%3Dapi-2")).unwrap();
        let page = body(list(&s, &Query::default(), &sel, None).unwrap()).await;
        assert_eq!(page["items"].as_array().unwrap().len(), 1);
        assert!(NameSelector::parse(Some("fieldSelector=verb%3Dget")).is_err());
        let not = NameSelector::parse(Some("fieldSelector=metadata.name!%3Dapi-2")).unwrap();
        assert!(not.matches("api-1") && !not.matches("api-2"));
    }

    #[tokio::test]
    async fn tables_have_the_columns_kubectl_shows() {
        let s = sources();
        let f = Format {
            version: table::Version::V1,
            include: table::IncludeObject::Metadata,
        };
        let t = body(list(&s, &Query::default(), &NameSelector::default(), Some(f)).unwrap()).await;
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            &names[..6],
            ["Name", "Ready", "Last Push", "Events/s", "Retries", "Age"]
        );
        let row = &t["rows"][0];
        assert_eq!(row["cells"][0], "api-1");
        assert_eq!(row["cells"][1], "True");
        assert_eq!(row["object"]["metadata"]["name"], "api-1");
    }
}
