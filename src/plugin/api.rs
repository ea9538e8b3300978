//! The plugin's reads of `audit.k8s.io/v1alpha1`, through a `kube::Client` built from the
//! user's kubeconfig and context: LIST in pages (`limit`/`continue`), WATCH from a
//! resourceVersion read line by line, and the server's `Status` answers turned into what
//! kubectl would print. Events are kept as the bytes the server sent.

use std::time::Duration;

use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use http_body_util::BodyExt;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube_core::params::{ListParams, WatchParams};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio_util::codec::{FramedRead, LinesCodec};
use tokio_util::io::StreamReader;

use super::Error;
use super::cli::KubeFlags;
use super::print::{Item, escape_terminal};
use crate::discovery::SOURCES;
use crate::event::{API_GROUP, DROPPED_ANNOTATION, GROUP_VERSION};

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;

/// What kubectl asks for to print a resource: the server's Table, else the objects.
const TABLE_ACCEPT: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";
/// Events per LIST page: kubectl's `--chunk-size` default.
const LIST_PAGE_EVENTS: u32 = 500;
/// A read that waits longer than this means the connection is dead. Watches ask for a
/// bookmark a minute (the server's interval), so a live one is never this quiet.
const READ_TIMEOUT: Duration = Duration::from_secs(150);

/// Which events: one namespace's, every namespace's, or every event (cluster-scoped
/// requests too: the `events` resource).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Namespace(String),
    AllNamespaces,
    AllEvents,
}

impl Scope {
    fn path(&self) -> String {
        match self {
            Scope::Namespace(ns) => {
                format!("/apis/{GROUP_VERSION}/namespaces/{ns}/namespacedevents")
            }
            Scope::AllNamespaces => format!("/apis/{GROUP_VERSION}/namespacedevents"),
            Scope::AllEvents => format!("/apis/{GROUP_VERSION}/events"),
        }
    }

    /// The kubectl line that checks whether the user may `verb` this scope.
    fn can_i(&self, verb: &str, context: Option<&str>) -> String {
        let what = match self {
            Scope::Namespace(ns) => format!("namespacedevents.audit.k8s.io -n {ns}"),
            Scope::AllNamespaces => "namespacedevents.audit.k8s.io --all-namespaces".to_owned(),
            Scope::AllEvents => "events.audit.k8s.io".to_owned(),
        };
        let context = context.map_or(String::new(), |c| format!(" --context {c}"));
        format!("kubectl auth can-i {verb} {what}{context}")
    }
}

/// A request that failed: the server's refusal (a `Status`), or no answer at all.
#[derive(Debug)]
pub enum ApiFailure {
    Refused(Box<Status>),
    Transport(String),
}

/// One line of a watch.
#[derive(Debug)]
pub enum WatchEvent {
    Added(Box<Item>),
    /// A bookmark: where the stream is, and how many events this watcher lost since the
    /// last such count.
    Bookmark {
        rv: Option<u64>,
        dropped: Option<u64>,
    },
    Error(Box<Status>),
}

/// The cluster, the scope, and the kubeconfig context and verb (for the `can-i` line).
pub struct Api {
    client: kube::Client,
    /// The server's URL, for messages.
    url: String,
    scope: Scope,
    context: Option<String>,
    verb: &'static str,
}

impl Api {
    /// A client from `--kubeconfig` (else `$KUBECONFIG`, else `~/.kube/config`, else the
    /// pod's service account) and `--context`, as kubectl picks them.
    /// `verb` is what the command needs of the scope (`watch` for a tail, `list` for
    /// `who`): what the `can-i` line of a refusal asks.
    pub async fn connect(flags: &KubeFlags, verb: &'static str) -> Result<Api, Error> {
        let options = KubeConfigOptions {
            context: flags.context.clone(),
            ..Default::default()
        };
        let bad = |e: &dyn std::error::Error| Error::Usage(format!("kubeconfig: {}", chain(e)));
        let mut config = match &flags.kubeconfig {
            Some(path) => {
                let kc = Kubeconfig::read_from(path)
                    .map_err(|e| Error::Usage(format!("--kubeconfig {}: {e}", path.display())))?;
                kube::Config::from_custom_kubeconfig(kc, &options)
                    .await
                    .map_err(|e| bad(&e))?
            }
            None => match kube::Config::from_kubeconfig(&options).await {
                Ok(c) => c,
                Err(e) if flags.context.is_some() => return Err(bad(&e)),
                Err(e) => kube::Config::incluster().map_err(|_| bad(&e))?,
            },
        };
        config.read_timeout = Some(READ_TIMEOUT);
        let scope = if flags.all_events {
            Scope::AllEvents
        } else if flags.all_namespaces {
            Scope::AllNamespaces
        } else {
            let ns = flags
                .namespace
                .clone()
                .unwrap_or_else(|| config.default_namespace.clone());
            if !is_dns_label(&ns) {
                return Err(Error::Usage(format!(
                    "-n/--namespace: {ns:?} is not a namespace name (lower-case letters, digits and '-', at most 63)"
                )));
            }
            Scope::Namespace(ns)
        };
        let url = config.cluster_url.to_string();
        let url = url.trim_end_matches('/').to_owned();
        let client = kube::Client::try_from(config).map_err(|e| bad(&e))?;
        Ok(Api {
            client,
            url,
            scope,
            context: flags.context.clone(),
            verb,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// The error a refusal ends the plugin with: the server's message, as kubectl prints
    /// it, and for 401 and 403 the line that checks the permission. The server's words are
    /// escaped for the terminal (a line break in them too, so that the lines after the
    /// first are the plugin's).
    pub fn refused(&self, status: &Status) -> Error {
        self.refused_on(
            status,
            &self.scope.can_i(self.verb, self.context.as_deref()),
        )
    }

    /// `refused`, with the `can-i` line that checks the permission asked for.
    fn refused_on(&self, status: &Status, can_i: &str) -> Error {
        let reason = status
            .reason
            .as_deref()
            .filter(|r| !r.is_empty())
            .map(escape_terminal);
        let message = escape_terminal(status.message.as_deref().unwrap_or("(no message)"));
        let mut out = match reason {
            Some(r) => format!("Error from server ({r}): {message}"),
            None => format!("Error from server: {message}"),
        };
        if matches!(status.code, Some(401 | 403)) {
            out.push_str(&format!("\nCheck with: {can_i}"));
        }
        Error::Server(out)
    }

    /// `sources.audit.k8s.io`: every source (or the one named), as the server prints it
    /// (a Table, with `table`) or as the objects themselves (a `SourceList`, or one).
    pub async fn sources(&self, name: Option<&str>, table: bool) -> Result<bytes::Bytes, Error> {
        let mut path = format!("/apis/{GROUP_VERSION}/{SOURCES}");
        if let Some(name) = name {
            // What ingest takes as a source name; anything else would not be a segment.
            if !crate::sources::is_name(name) {
                return Err(Error::Usage(format!(
                    "NAME: {name:?} is not a source name (letters, digits, '-', '.', '_' or ':')"
                )));
            }
            path = format!("{path}/{name}");
        }
        let mut request = http::Request::get(path);
        if table {
            request = request.header(http::header::ACCEPT, TABLE_ACCEPT);
        }
        let request = request
            .body(Vec::new())
            .map_err(|e| Error::Usage(e.to_string()))?;
        let verb = if name.is_some() { "get" } else { "list" };
        let context = self
            .context
            .as_deref()
            .map_or(String::new(), |c| format!(" --context {c}"));
        let can_i = format!("kubectl auth can-i {verb} {SOURCES}.{API_GROUP}{context}");
        let body = match self.send(request).await {
            Ok(body) => body,
            Err(ApiFailure::Refused(s)) => return Err(self.refused_on(&s, &can_i)),
            Err(ApiFailure::Transport(e)) => {
                return Err(Error::Connect(format!("{}: {e}", self.url)));
            }
        };
        Ok(body
            .collect()
            .await
            .map_err(|e| {
                Error::Connect(format!("{}: reading the answer: {}", self.url, chain(&e)))
            })?
            .to_bytes())
    }

    /// LIST every page of the window's events that `selector` selects, oldest first,
    /// handing each page to `each`; returns the list's resourceVersion (to watch from).
    pub async fn list(
        &self,
        selector: Option<&str>,
        mut each: impl FnMut(&[Item]) -> std::io::Result<()>,
    ) -> Result<u64, Error> {
        let mut token: Option<String> = None;
        let mut first_rv = None;
        loop {
            let page = self
                .list_page(selector, LIST_PAGE_EVENTS, token.as_deref())
                .await?;
            first_rv.get_or_insert(page.resource_version);
            each(&page.items)?;
            match page.continue_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => break,
            }
        }
        Ok(first_rv.unwrap_or(0))
    }

    /// The oldest event the server holds in this scope (whatever the filters), to say how
    /// much history a too-old resourceVersion skipped.
    pub async fn oldest_kept(&self) -> Result<Option<Item>, Error> {
        Ok(self
            .list_page(None, 1, None)
            .await?
            .items
            .into_iter()
            .next())
    }

    /// The server's resourceVersion now (a LIST of one event).
    pub async fn current_resource_version(&self) -> Result<u64, Error> {
        Ok(self.list_page(None, 1, None).await?.resource_version)
    }

    async fn list_page(
        &self,
        selector: Option<&str>,
        limit: u32,
        token: Option<&str>,
    ) -> Result<Page, Error> {
        let params = ListParams {
            field_selector: selector.map(str::to_owned),
            limit: Some(limit),
            continue_token: token.map(str::to_owned),
            ..Default::default()
        };
        let request = kube_core::Request::new(self.scope.path())
            .list(&params)
            .map_err(|e| Error::Usage(e.to_string()))?;
        let body = match self.send(request).await {
            Ok(body) => body,
            Err(ApiFailure::Refused(s)) => return Err(self.refused(&s)),
            Err(ApiFailure::Transport(e)) => {
                return Err(Error::Connect(format!("{}: {e}", self.url)));
            }
        };
        let bytes = body
            .collect()
            .await
            .map_err(|e| Error::Connect(format!("{}: reading the list: {}", self.url, chain(&e))))?
            .to_bytes();
        Page::parse(&bytes).map_err(|e| Error::Server(format!("the server's list: {e}")))
    }

    /// Open a WATCH of the events after `rv` that `selector` selects.
    pub async fn watch(
        &self,
        selector: Option<&str>,
        rv: u64,
        timeout_seconds: u32,
    ) -> Result<Watch, ApiFailure> {
        let params = WatchParams {
            field_selector: selector.map(str::to_owned),
            timeout: Some(timeout_seconds),
            bookmarks: true,
            ..Default::default()
        };
        let request = kube_core::Request::new(self.scope.path())
            .watch(&params, &rv.to_string())
            .map_err(|e| ApiFailure::Transport(e.to_string()))?;
        Ok(Watch::new(self.send(request).await?))
    }

    /// Send a request; a non-2xx answer is the server's `Status` (or one made from the
    /// HTTP status, for a body that is not one).
    async fn send(
        &self,
        request: http::Request<Vec<u8>>,
    ) -> Result<kube::client::Body, ApiFailure> {
        let response = self
            .client
            .send(request.map(kube::client::Body::from))
            .await
            .map_err(|e| match e {
                kube::Error::Api(s) => ApiFailure::Refused(Box::new(status_of(*s))),
                e => ApiFailure::Transport(chain(&e)),
            })?;
        let code = response.status();
        if code.is_success() {
            return Ok(response.into_body());
        }
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let status = serde_json::from_slice::<Status>(&body)
            .ok()
            .filter(|s| s.code.is_some() || s.message.is_some())
            .unwrap_or_else(|| Status {
                code: Some(i32::from(code.as_u16())),
                message: Some(String::from_utf8_lossy(&body).trim().to_owned()),
                reason: code.canonical_reason().map(|r| r.replace(' ', "")),
                ..Default::default()
            });
        // Throttling and server errors pass; the rest is the server's final word.
        if code.is_server_error() || code == http::StatusCode::TOO_MANY_REQUESTS {
            return Err(ApiFailure::Transport(format!(
                "{code}: {}",
                escape_terminal(status.message.as_deref().unwrap_or_default())
            )));
        }
        Err(ApiFailure::Refused(Box::new(status)))
    }
}

/// An error and its causes on one line: kube's own message ("client error (Connect)")
/// says nothing of why.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// kube's error body as a k8s-openapi `Status`.
fn status_of(s: kube_core::Status) -> Status {
    Status {
        code: Some(i32::from(s.code)),
        message: Some(s.message),
        reason: Some(s.reason),
        ..Default::default()
    }
}

/// kube-apiserver's rule for a namespace name (a DNS-1123 label); anything else would not
/// be a path segment.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// One LIST page.
struct Page {
    resource_version: u64,
    continue_token: Option<String>,
    items: Vec<Item>,
}

impl Page {
    fn parse(bytes: &[u8]) -> Result<Page, serde_json::Error> {
        #[derive(Deserialize)]
        struct List<'a> {
            #[serde(default)]
            metadata: ListMeta,
            #[serde(borrow, default)]
            items: Vec<&'a RawValue>,
        }
        #[derive(Deserialize, Default)]
        #[serde(default, rename_all = "camelCase")]
        struct ListMeta {
            resource_version: String,
            #[serde(rename = "continue")]
            continue_token: Option<String>,
        }
        let list: List<'_> = serde_json::from_slice(bytes)?;
        Ok(Page {
            resource_version: list.metadata.resource_version.parse().unwrap_or(0),
            continue_token: list.metadata.continue_token,
            items: list
                .items
                .into_iter()
                .map(|raw| Item::new(raw.get()))
                .collect::<Result<_, _>>()?,
        })
    }
}

/// The body of a watch as lines (tokio-util's codec, as kube's own watcher reads them).
type Lines = FramedRead<
    StreamReader<BoxStream<'static, std::io::Result<bytes::Bytes>>, bytes::Bytes>,
    LinesCodec,
>;

/// An open watch, read a line at a time.
pub struct Watch {
    lines: Lines,
}

impl Watch {
    fn new(body: kube::client::Body) -> Watch {
        let data = body
            .into_data_stream()
            .map_err(|e| std::io::Error::other(chain(&e)))
            .boxed();
        Watch {
            lines: FramedRead::new(StreamReader::new(data), LinesCodec::new()),
        }
    }

    /// The next event; `None` when the server ended the stream, an error when the
    /// connection broke.
    pub async fn next(&mut self) -> Result<Option<WatchEvent>, String> {
        loop {
            return match self.lines.next().await {
                Some(Ok(line)) if line.trim().is_empty() => continue,
                Some(Ok(line)) => parse_line(line.as_bytes())
                    .map(Some)
                    .map_err(|e| format!("a watch line that is not an event: {e}")),
                Some(Err(e)) => Err(chain(&e)),
                None => Ok(None),
            };
        }
    }
}

fn parse_line(line: &[u8]) -> Result<WatchEvent, serde_json::Error> {
    #[derive(Deserialize)]
    struct Line<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        #[serde(borrow)]
        object: &'a RawValue,
    }
    #[derive(Deserialize, Default)]
    #[serde(default, rename_all = "camelCase")]
    struct Meta {
        resource_version: String,
        annotations: std::collections::BTreeMap<String, String>,
    }
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Bookmark {
        metadata: Meta,
    }
    let line: Line<'_> = serde_json::from_slice(line)?;
    Ok(match line.kind {
        "BOOKMARK" => {
            let b: Bookmark = serde_json::from_str(line.object.get())?;
            WatchEvent::Bookmark {
                rv: b.metadata.resource_version.parse().ok(),
                dropped: b
                    .metadata
                    .annotations
                    .get(DROPPED_ANNOTATION)
                    .and_then(|n| n.parse().ok()),
            }
        }
        "ERROR" => WatchEvent::Error(Box::new(serde_json::from_str(line.object.get())?)),
        // ADDED: the only change an audit event has; MODIFIED or DELETED would be read
        // the same way.
        _ => WatchEvent::Added(Box::new(Item::new(line.object.get())?)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_lines() {
        let added = br#"{"type":"ADDED","object":{"kind":"Event","metadata":{"name":"a-responsecomplete","resourceVersion":"7"},"auditID":"a","verb":"get"}}"#;
        match parse_line(added).unwrap() {
            WatchEvent::Added(item) => {
                assert_eq!(item.resource_version(), Some(7));
                assert!(item.raw().starts_with(r#"{"kind":"Event""#));
                assert!(item.raw().ends_with(r#""verb":"get"}"#));
            }
            other => panic!("{other:?}"),
        }
        let dropped = br#"{"type":"BOOKMARK","object":{"kind":"Event","apiVersion":"audit.k8s.io/v1alpha1","metadata":{"resourceVersion":"9","annotations":{"audit.k8s.io/dropped":"12"}}}}"#;
        assert!(matches!(
            parse_line(dropped).unwrap(),
            WatchEvent::Bookmark {
                rv: Some(9),
                dropped: Some(12)
            }
        ));
        let plain = br#"{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"10"}}}"#;
        assert!(matches!(
            parse_line(plain).unwrap(),
            WatchEvent::Bookmark {
                rv: Some(10),
                dropped: None
            }
        ));
        let gone = br#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","status":"Failure","message":"too old resource version: 1 (5)","reason":"Expired","code":410}}"#;
        match parse_line(gone).unwrap() {
            WatchEvent::Error(s) => assert_eq!(s.code, Some(410)),
            other => panic!("{other:?}"),
        }
        assert!(parse_line(b"{nope").is_err());
    }

    #[test]
    fn list_pages() {
        let page = Page::parse(br#"{"kind":"EventList","metadata":{"resourceVersion":"42","continue":"abc"},"items":[{"metadata":{"resourceVersion":"3"},"auditID":"x"}]}"#).unwrap();
        assert_eq!(page.resource_version, 42);
        assert_eq!(page.continue_token.as_deref(), Some("abc"));
        assert_eq!(
            page.items[0].raw(),
            r#"{"metadata":{"resourceVersion":"3"},"auditID":"x"}"#
        );
        let empty =
            Page::parse(br#"{"kind":"EventList","metadata":{"resourceVersion":"5"},"items":[]}"#)
                .unwrap();
        assert!(empty.items.is_empty() && empty.continue_token.is_none());
    }

    #[test]
    fn scopes() {
        assert_eq!(
            Scope::Namespace("team-a".into()).path(),
            "/apis/audit.k8s.io/v1alpha1/namespaces/team-a/namespacedevents"
        );
        assert_eq!(
            Scope::AllNamespaces.path(),
            "/apis/audit.k8s.io/v1alpha1/namespacedevents"
        );
        assert_eq!(
            Scope::Namespace("team-b".into()).can_i("watch", None),
            "kubectl auth can-i watch namespacedevents.audit.k8s.io -n team-b"
        );
        assert_eq!(
            Scope::AllEvents.path(),
            "/apis/audit.k8s.io/v1alpha1/events"
        );
        assert_eq!(
            Scope::AllEvents.can_i("list", None),
            "kubectl auth can-i list events.audit.k8s.io"
        );
        assert_eq!(
            Scope::AllNamespaces.can_i("watch", Some("prod")),
            "kubectl auth can-i watch namespacedevents.audit.k8s.io --all-namespaces --context prod"
        );
        for (ns, ok) in [
            ("team-a", true),
            ("", false),
            ("a/b", false),
            ("A", false),
            ("-a", false),
        ] {
            assert_eq!(is_dns_label(ns), ok, "{ns}");
        }
    }
}
