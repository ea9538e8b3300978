//! `FakeApiServer`: a fake kube-apiserver over TLS for the tests, with the real API shapes:
//! TokenReview, SubjectAccessReview, and GET, LIST and WATCH of the
//! `kube-system/extension-apiserver-authentication` ConfigMap. Also `TlsServer`, the TLS
//! serving loop (HTTP/1.1 and HTTP/2) that the fakes share.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewStatus, UserInfo};
use k8s_openapi::api::authorization::v1::{SubjectAccessReview, SubjectAccessReviewStatus};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ListMeta, ObjectMeta, Status, WatchEvent};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use serde::Serialize;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, Interval};
use tokio_rustls::TlsAcceptor;

use super::pki::{Ca, Pem};

/// The bearer token the kubeconfig carries; every other request gets 401.
pub const CLIENT_TOKEN: &str = "fake-apiserver-client-token";
pub const AUTH_CONFIG_NAMESPACE: &str = "kube-system";
pub const AUTH_CONFIG_NAME: &str = "extension-apiserver-authentication";

const TOKEN_REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
const SUBJECT_ACCESS_REVIEWS: &str = "/apis/authorization.k8s.io/v1/subjectaccessreviews";
const CONFIGMAPS: &str = "/api/v1/namespaces/kube-system/configmaps";
const AUTH_CONFIG: &str =
    "/api/v1/namespaces/kube-system/configmaps/extension-apiserver-authentication";
/// How often a watch that asked for bookmarks gets one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(1);

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A response body, whole or streamed.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A TLS server on 127.0.0.1:0 answering every request with `handler`, over HTTP/1.1 or
/// HTTP/2 (ALPN); with `client_ca`, clients must present a certificate it signed. Dropping
/// it stops the server and closes every connection, open watches included.
pub struct TlsServer {
    pub addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl TlsServer {
    pub async fn start<H, F>(serving: &Pem, client_ca: Option<&str>, handler: H) -> TlsServer
    where
        H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
        F: Future<Output = Response<Body>> + Send + 'static,
    {
        let acceptor = tls_acceptor(serving, client_ca);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handler = Arc::new(handler);
        let (stop, mut stopped) = oneshot::channel();
        tokio::spawn(async move {
            // Dropping the set when the loop ends aborts every connection.
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    Some(_) = conns.join_next() => {}
                    Ok((tcp, _)) = listener.accept() => {
                        let (acceptor, handler) = (acceptor.clone(), handler.clone());
                        conns.spawn(async move {
                            let Ok(tls) = acceptor.accept(tcp).await else { return };
                            let service = service_fn(move |req| {
                                let answer = handler(req);
                                async move { Ok::<_, Infallible>(answer.await) }
                            });
                            let _ = auto::Builder::new(TokioExecutor::new())
                                .serve_connection(TokioIo::new(tls), service)
                                .await;
                        });
                    }
                }
            }
        });
        TlsServer { addr, _stop: stop }
    }
}

pub fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(Result::unwrap)
        .collect()
}

pub fn roots(ca_pem: &str) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca_pem) {
        roots.add(c).unwrap();
    }
    roots
}

fn tls_acceptor(serving: &Pem, client_ca: Option<&str>) -> TlsAcceptor {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)), provider)
                .build()
                .unwrap(),
        ),
        None => builder.with_no_client_auth(),
    };
    let key = PrivateKeyDer::from_pem_slice(serving.key.as_bytes()).unwrap();
    let mut config = builder.with_single_cert(certs(&serving.cert), key).unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    TlsAcceptor::from(Arc::new(config))
}

/// A JSON answer.
pub fn json(code: StatusCode, body: &impl Serialize) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(
            Full::new(Bytes::from(serde_json::to_vec(body).unwrap()))
                .map_err(|e| match e {})
                .boxed_unsync(),
        )
        .unwrap()
}

/// A `Status` failure, as the apiserver sends it.
pub fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    let body = Status {
        code: Some(code.as_u16().into()),
        message: Some(message.to_owned()),
        reason: Some(reason.to_owned()),
        status: Some("Failure".to_owned()),
        ..Status::default()
    };
    json(code, &body)
}

/// A permission for `SubjectAccessReview`s. It applies to `user`, or to members of `group`;
/// either a resource rule (`non_resource_path` is `None`) or a non-resource one.
#[derive(Clone, Debug)]
pub struct Rule {
    pub user: Option<String>,
    pub group: Option<String>,
    /// `"*"` is any verb.
    pub verbs: Vec<String>,
    /// `None`: any namespace, and cluster scope.
    pub namespace: Option<String>,
    /// The API group (`""` core); `"*"` any.
    pub group_name: String,
    /// `"*"` any; a subresource is `resource/subresource`.
    pub resource: String,
    /// An exact path, or a prefix ending in `*`.
    pub non_resource_path: Option<String>,
}

impl Rule {
    fn base(user: Option<&str>, group: Option<&str>, verbs: &[&str]) -> Rule {
        Rule {
            user: user.map(str::to_owned),
            group: group.map(str::to_owned),
            verbs: verbs.iter().map(|v| v.to_string()).collect(),
            namespace: None,
            group_name: "*".to_owned(),
            resource: "*".to_owned(),
            non_resource_path: None,
        }
    }

    /// `user` may `verbs` `api_group`/`resource` in namespace `ns`.
    pub fn namespaced(
        user: &str,
        verbs: &[&str],
        ns: &str,
        api_group: &str,
        resource: &str,
    ) -> Rule {
        Rule {
            namespace: Some(ns.to_owned()),
            ..Rule::cluster(user, verbs, api_group, resource)
        }
    }

    /// `user` may `verbs` `api_group`/`resource` in every namespace and at cluster scope.
    pub fn cluster(user: &str, verbs: &[&str], api_group: &str, resource: &str) -> Rule {
        Rule {
            group_name: api_group.to_owned(),
            resource: resource.to_owned(),
            ..Rule::base(Some(user), None, verbs)
        }
    }

    /// Members of `group` may `verbs` `api_group`/`resource` in `ns` (`None`: everywhere).
    pub fn group(
        group: &str,
        verbs: &[&str],
        ns: Option<&str>,
        api_group: &str,
        resource: &str,
    ) -> Rule {
        Rule {
            namespace: ns.map(str::to_owned),
            group_name: api_group.to_owned(),
            resource: resource.to_owned(),
            ..Rule::base(None, Some(group), verbs)
        }
    }

    /// The user or the members of the group named `user_or_group` may `get` `path`.
    pub fn non_resource(user_or_group: &str, path: &str) -> Rule {
        Rule {
            non_resource_path: Some(path.to_owned()),
            ..Rule::base(Some(user_or_group), Some(user_or_group), &["get"])
        }
    }

    fn allows(&self, review: &SubjectAccessReview) -> bool {
        let spec = &review.spec;
        let by_user = self.user.is_some() && self.user == spec.user;
        let by_group = spec
            .groups
            .iter()
            .flatten()
            .any(|g| Some(g) == self.group.as_ref());
        let is =
            |want: &str, got: &Option<String>| want == "*" || want == got.as_deref().unwrap_or("");
        let attrs_match = match (
            &self.non_resource_path,
            &spec.resource_attributes,
            &spec.non_resource_attributes,
        ) {
            (None, Some(ra), _) => {
                let resource = match ra.subresource.as_deref() {
                    None | Some("") => ra.resource.clone(),
                    Some(sub) => Some(format!("{}/{sub}", ra.resource.as_deref().unwrap_or(""))),
                };
                self.verbs.iter().any(|v| is(v, &ra.verb))
                    && (self.namespace.is_none() || self.namespace == ra.namespace)
                    && is(&self.group_name, &ra.group)
                    && is(&self.resource, &resource)
            }
            (Some(want), None, Some(nra)) => {
                let path = nra.path.as_deref().unwrap_or("");
                self.verbs.iter().any(|v| is(v, &nra.verb))
                    && match want.strip_suffix('*') {
                        Some(prefix) => path.starts_with(prefix),
                        None => path == want,
                    }
            }
            _ => false,
        };
        (by_user || by_group) && attrs_match
    }
}

/// The fake kube-apiserver; stops when dropped.
pub struct FakeApiServer {
    pub addr: SocketAddr,
    ca: Ca,
    state: Arc<State>,
    _server: TlsServer,
}

struct State {
    inner: Mutex<Inner>,
    /// The latest resourceVersion; watches wait for it to change.
    version: watch::Sender<u64>,
}

#[derive(Default)]
struct Inner {
    tokens: HashMap<String, UserInfo>,
    rules: Vec<Rule>,
    token_reviews: usize,
    subject_access_reviews: usize,
    /// SubjectAccessReviews about these resources fail (a 500, as an overloaded
    /// kube-apiserver answers).
    failing_resources: Vec<String>,
    /// (user, resource) of every resource SubjectAccessReview, in order.
    resource_reviews: Vec<(String, String)>,
    last_subject_access_review: Option<serde_json::Value>,
    requests: Vec<String>,
    resource_version: u64,
    auth_config: Option<ConfigMap>,
    /// Every change of the ConfigMap with its resourceVersion, oldest first.
    history: Vec<(u64, WatchEvent<ConfigMap>)>,
}

impl State {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap()
    }
}

impl FakeApiServer {
    pub async fn start() -> FakeApiServer {
        let ca = Ca::new("fake-apiserver-ca");
        let resource_version = 1000;
        let state = Arc::new(State {
            inner: Mutex::new(Inner {
                resource_version,
                ..Inner::default()
            }),
            version: watch::Sender::new(resource_version),
        });
        let shared = state.clone();
        let server =
            TlsServer::start(&ca.server(), None, move |req| handle(shared.clone(), req)).await;
        FakeApiServer {
            addr: server.addr,
            ca,
            state,
            _server: server,
        }
    }

    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Write a kubeconfig for this server (bearer `CLIENT_TOKEN`) into `dir`; its path.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let ca = serde_json::to_value(k8s_openapi::ByteString(self.ca.pem().into_bytes())).unwrap();
        let text = format!(
            "apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: {url}
    certificate-authority-data: {ca}
users:
- name: fake
  user:
    token: {CLIENT_TOKEN}
contexts:
- name: fake
  context:
    cluster: fake
    user: fake
current-context: fake
",
            url = self.url(),
            ca = ca.as_str().unwrap(),
        );
        let path = dir.join("kubeconfig");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// TokenReviews of `token` answer `user`; like kube-apiserver, the groups get
    /// `system:authenticated` added.
    pub fn add_token(&self, token: &str, user: &str, uid: &str, groups: &[&str]) {
        let mut groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        groups.push("system:authenticated".to_owned());
        let info = UserInfo {
            username: Some(user.to_owned()),
            uid: Some(uid.to_owned()),
            groups: Some(groups),
            extra: None,
        };
        self.state.lock().tokens.insert(token.to_owned(), info);
    }

    pub fn token_reviews(&self) -> usize {
        self.state.lock().token_reviews
    }

    pub fn allow(&self, rule: Rule) {
        self.state.lock().rules.push(rule);
    }

    /// Remove every rule naming `user`.
    pub fn revoke_user(&self, user: &str) {
        self.state
            .lock()
            .rules
            .retain(|r| r.user.as_deref() != Some(user));
    }

    /// Remove the rules `pred` picks.
    pub fn revoke_where(&self, pred: impl Fn(&Rule) -> bool) {
        self.state.lock().rules.retain(|r| !pred(r));
    }

    /// SubjectAccessReviews about `resource` fail from now on.
    pub fn fail_reviews_of(&self, resource: &str) {
        self.state
            .lock()
            .failing_resources
            .push(resource.to_owned());
    }

    /// How many SubjectAccessReviews asked about `user` and `resource`.
    pub fn resource_reviews(&self, user: &str, resource: &str) -> usize {
        let s = self.state.lock();
        s.resource_reviews
            .iter()
            .filter(|(u, r)| u == user && r == resource)
            .count()
    }

    pub fn subject_access_reviews(&self) -> usize {
        self.state.lock().subject_access_reviews
    }

    /// The body of the latest SubjectAccessReview, as sent.
    pub fn last_subject_access_review(&self) -> Option<serde_json::Value> {
        self.state.lock().last_subject_access_review.clone()
    }

    /// Every request so far, as `"METHOD /path"` (no query).
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().requests.clone()
    }

    /// Create or replace `kube-system/extension-apiserver-authentication` with `data`,
    /// under a new resourceVersion; watches see ADDED or MODIFIED.
    pub fn set_auth_config(&self, data: BTreeMap<String, String>) {
        let mut s = self.state.lock();
        s.resource_version += 1;
        let rv = s.resource_version;
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(AUTH_CONFIG_NAME.to_owned()),
                namespace: Some(AUTH_CONFIG_NAMESPACE.to_owned()),
                uid: Some("6d1c3b0e-5c1f-4a53-9a53-2f3b8d0c7e11".to_owned()),
                resource_version: Some(rv.to_string()),
                ..ObjectMeta::default()
            },
            data: Some(data),
            ..ConfigMap::default()
        };
        let event = match s.auth_config.replace(cm.clone()) {
            Some(_) => WatchEvent::Modified(cm),
            None => WatchEvent::Added(cm),
        };
        s.history.push((rv, event));
        drop(s);
        self.state.version.send_replace(rv);
    }
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    state.lock().requests.push(format!("{method} {path}"));
    let bearer = format!("Bearer {CLIENT_TOKEN}");
    if req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        != Some(bearer.as_bytes())
    {
        return status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    }
    let query: HashMap<String, String> =
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    match (method, path.as_str()) {
        (Method::POST, TOKEN_REVIEWS) => match read_json::<TokenReview>(req).await {
            Ok((review, _)) => token_review(&state, review),
            Err(bad) => bad,
        },
        (Method::POST, SUBJECT_ACCESS_REVIEWS) => match read_json::<SubjectAccessReview>(req).await
        {
            Ok((review, raw)) => subject_access_review(&state, review, raw),
            Err(bad) => bad,
        },
        (Method::GET, AUTH_CONFIG) => match state.lock().auth_config.clone() {
            Some(cm) => json(StatusCode::OK, &cm),
            None => status(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("configmaps \"{AUTH_CONFIG_NAME}\" not found"),
            ),
        },
        (Method::GET, CONFIGMAPS) => list_or_watch(state, &query)
            .unwrap_or_else(|message| status(StatusCode::BAD_REQUEST, "BadRequest", &message)),
        _ => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        ),
    }
}

/// The body as `T`, and as raw JSON; a 400 Status if it is neither.
async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
) -> Result<(T, serde_json::Value), Response<Body>> {
    let bad =
        |e: &dyn std::fmt::Display| status(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string());
    let body = req
        .into_body()
        .collect()
        .await
        .map_err(|e| bad(&e))?
        .to_bytes();
    let raw: serde_json::Value = serde_json::from_slice(&body).map_err(|e| bad(&e))?;
    let typed = serde_json::from_value(raw.clone()).map_err(|e| bad(&e))?;
    Ok((typed, raw))
}

fn token_review(state: &State, mut review: TokenReview) -> Response<Body> {
    let mut s = state.lock();
    s.token_reviews += 1;
    let user = review
        .spec
        .token
        .as_ref()
        .and_then(|t| s.tokens.get(t))
        .cloned();
    review.status = Some(TokenReviewStatus {
        authenticated: Some(user.is_some()),
        error: user.is_none().then(|| "invalid token".to_owned()),
        audiences: review.spec.audiences.clone().filter(|a| !a.is_empty()),
        user,
    });
    json(StatusCode::CREATED, &review)
}

fn subject_access_review(
    state: &State,
    mut review: SubjectAccessReview,
    raw: serde_json::Value,
) -> Response<Body> {
    let mut s = state.lock();
    s.subject_access_reviews += 1;
    s.last_subject_access_review = Some(raw);
    if let Some(attrs) = &review.spec.resource_attributes {
        let resource = attrs.resource.clone().unwrap_or_default();
        let user = review.spec.user.clone().unwrap_or_default();
        s.resource_reviews.push((user, resource.clone()));
        if s.failing_resources.contains(&resource) {
            return status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "Internal error occurred: the authorizer is overloaded",
            );
        }
    }
    let rule = s.rules.iter().find(|r| r.allows(&review));
    review.status = Some(SubjectAccessReviewStatus {
        allowed: rule.is_some(),
        reason: rule.map(|r| format!("allowed by {r:?}")),
        ..SubjectAccessReviewStatus::default()
    });
    json(StatusCode::CREATED, &review)
}

/// A LIST or, with `watch`, a WATCH of the kube-system ConfigMaps; `Err` is a bad request.
fn list_or_watch(
    state: Arc<State>,
    query: &HashMap<String, String>,
) -> Result<Response<Body>, String> {
    let flag = |name: &str| {
        matches!(
            query.get(name).map(String::as_str),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True")
        )
    };
    let selector = FieldSelector::parse(query.get("fieldSelector"))?;
    if query.get("labelSelector").is_some_and(|s| !s.is_empty()) {
        return Err("labelSelector is not supported by the fake apiserver".to_owned());
    }
    if !flag("watch") {
        let s = state.lock();
        let list = k8s_openapi::List::<ConfigMap> {
            items: s
                .auth_config
                .iter()
                .filter(|cm| selector.matches(cm))
                .cloned()
                .collect(),
            metadata: ListMeta {
                resource_version: Some(s.resource_version.to_string()),
                ..ListMeta::default()
            },
        };
        return Ok(json(StatusCode::OK, &list));
    }
    let since = match query.get("resourceVersion").map(String::as_str) {
        None | Some("" | "0") => None,
        Some(rv) => Some(
            rv.parse()
                .map_err(|_| format!("invalid resource version: {rv}"))?,
        ),
    };
    let timeout = query.get("timeoutSeconds").and_then(|t| t.parse().ok());
    let watch = Watch::start(
        state,
        selector,
        since,
        flag("allowWatchBookmarks"),
        flag("sendInitialEvents"),
        timeout.map(|t| Instant::now() + Duration::from_secs(t)),
    );
    let lines = futures_util::stream::unfold(watch, Watch::next);
    let frames = futures_util::StreamExt::map(lines, |line| Ok::<_, BoxError>(Frame::data(line)));
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(StreamBody::new(frames).boxed_unsync())
        .unwrap())
}

/// `metadata.name` and `metadata.namespace` terms, with `=`, `==` or `!=`.
struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    fn parse(text: Option<&String>) -> Result<FieldSelector, String> {
        let terms = text.map(String::as_str).unwrap_or("").split(',');
        let terms = terms.filter(|t| !t.is_empty()).map(|term| {
            let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, true, v.strip_prefix('=').unwrap_or(v))
            } else {
                return Err(format!("invalid selector: '{term}'"));
            };
            match field {
                "metadata.name" | "metadata.namespace" => {
                    Ok((field.to_owned(), equal, value.to_owned()))
                }
                _ => Err(format!("field label not supported: {field}")),
            }
        });
        Ok(FieldSelector(terms.collect::<Result<_, _>>()?))
    }

    fn matches(&self, cm: &ConfigMap) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let got = match field.as_str() {
                "metadata.name" => &cm.metadata.name,
                _ => &cm.metadata.namespace,
            };
            (got.as_deref() == Some(value)) == *equal
        })
    }
}

/// One WATCH: the state behind its stream of JSON lines.
struct Watch {
    state: Arc<State>,
    changes: watch::Receiver<u64>,
    selector: FieldSelector,
    /// The resourceVersion sent up to.
    seen: u64,
    queue: VecDeque<Bytes>,
    bookmarks: Option<Interval>,
    deadline: Option<Instant>,
    done: bool,
}

impl Watch {
    fn start(
        state: Arc<State>,
        selector: FieldSelector,
        since: Option<u64>,
        bookmarks: bool,
        send_initial_events: bool,
        deadline: Option<Instant>,
    ) -> Watch {
        // Subscribe before reading, so no change falls between the two.
        let changes = state.version.subscribe();
        let mut w = Watch {
            changes,
            selector,
            seen: since.unwrap_or(0),
            queue: VecDeque::new(),
            bookmarks: bookmarks
                .then(|| tokio::time::interval_at(Instant::now() + BOOKMARK_EVERY, BOOKMARK_EVERY)),
            deadline,
            done: false,
            state,
        };
        if since.is_none() || send_initial_events {
            // The current state as ADDED, then the changes after it.
            let s = w.state.lock();
            w.seen = s.resource_version;
            if let Some(cm) = s.auth_config.clone().filter(|cm| w.selector.matches(cm)) {
                w.queue.push_back(line(&WatchEvent::Added(cm)));
            }
            drop(s);
            if send_initial_events && bookmarks {
                let end = [("k8s.io/initial-events-end".to_owned(), "true".to_owned())];
                w.queue.push_back(w.bookmark(end.into()));
            }
        }
        w.catch_up();
        w
    }

    /// Queue the changes after `seen` that the selector picks.
    fn catch_up(&mut self) {
        let s = self.state.lock();
        let since = self.seen;
        for (rv, event) in s.history.iter().filter(|(rv, _)| *rv > since) {
            let (WatchEvent::Added(cm) | WatchEvent::Modified(cm) | WatchEvent::Deleted(cm)) =
                event
            else {
                continue;
            };
            if self.selector.matches(cm) {
                self.queue.push_back(line(event));
            }
            self.seen = *rv;
        }
    }

    fn bookmark(&self, annotations: BTreeMap<String, String>) -> Bytes {
        let event = WatchEvent::<ConfigMap>::Bookmark {
            annotations,
            resource_version: self.seen.to_string(),
        };
        // k8s-openapi leaves out the kind and apiVersion the apiserver sends.
        let mut event = serde_json::to_value(event).unwrap();
        event["object"]["kind"] = "ConfigMap".into();
        event["object"]["apiVersion"] = "v1".into();
        line(&event)
    }

    async fn next(mut self) -> Option<(Bytes, Watch)> {
        loop {
            if let Some(line) = self.queue.pop_front() {
                return Some((line, self));
            }
            if self.done {
                return None;
            }
            let deadline = self.deadline;
            let timeout = async move {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            let tick = async {
                match &mut self.bookmarks {
                    Some(interval) => interval.tick().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = self.changes.changed() => match changed {
                    Ok(()) => self.catch_up(),
                    Err(_) => self.done = true,
                },
                _ = tick => {
                    let bookmark = self.bookmark(BTreeMap::new());
                    self.queue.push_back(bookmark);
                }
                _ = timeout => {
                    if self.bookmarks.is_some() {
                        let bookmark = self.bookmark(BTreeMap::new());
                        self.queue.push_back(bookmark);
                    }
                    self.done = true;
                }
            }
        }
    }
}

fn line(value: &impl Serialize) -> Bytes {
    let mut line = serde_json::to_vec(value).unwrap();
    line.push(b'\n');
    line.into()
}
