//! Real client libraries against the server: the python `kubernetes` client (LIST with
//! `list_namespaced_custom_object`, then `watch.Watch().stream` over it), and a kube-rs
//! `kube::runtime::watcher` on `DynamicObject` (LIST then WATCH, or a WatchList) that
//! receives every pushed event across a forced disconnect, without gap or duplicate.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, InitialListStrategy};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::io::AsyncBufReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use support::fixtures::event;
use support::server::{ADMIN_TOKEN, ALICE_TOKEN, TestServer};

async fn push(srv: &TestServer, ids: &[&str]) {
    let items: Vec<String> = ids
        .iter()
        .map(|id| event(id, Some("team-a"), "get"))
        .collect();
    srv.push_events(&items).await;
}

/// The number of open watches on `namespacedevents`, from the metrics page.
async fn open_watches(srv: &TestServer) -> f64 {
    let (_, body) = srv.client(Some(ADMIN_TOKEN)).get("/metrics").await;
    support::metric(
        &body,
        "kube_audit_stream_watch_watchers{resource=\"namespacedevents\"}",
    )
    .unwrap_or(0.0)
}

const PYTHON_CLIENT: &str = r#"
import json, sys
from kubernetes import client, watch

host, ca, token = sys.argv[1:4]
cfg = client.Configuration()
cfg.host = host
cfg.ssl_ca_cert = ca
cfg.api_key = {"authorization": "Bearer " + token}
api = client.CustomObjectsApi(client.ApiClient(cfg))
args = ("audit.k8s.io", "v1alpha1", "team-a", "namespacedevents")

# LIST in pages of two, as a paging client does.
ids, token_ = [], None
while True:
    page = api.list_namespaced_custom_object(*args, limit=2, _continue=token_)
    ids += [item["auditID"] for item in page["items"]]
    token_ = page["metadata"].get("continue")
    if not token_:
        break
rv = page["metadata"]["resourceVersion"]
print(json.dumps({"list": ids, "kind": page["kind"], "resourceVersion": rv}), flush=True)

for ev in watch.Watch().stream(api.list_namespaced_custom_object, *args,
                               resource_version=rv, timeout_seconds=60):
    print(json.dumps({"type": ev["type"], "id": ev["object"].get("auditID")}), flush=True)
"#;

#[tokio::test]
async fn python_kubernetes_client_lists_and_watches() {
    let srv = TestServer::start(&[]).await;
    push(&srv, &["p-1", "p-2", "p-3"]).await;
    let script = srv.dir.path().join("client.py");
    std::fs::write(&script, PYTHON_CLIENT).unwrap();
    let mut child = tokio::process::Command::new("python3")
        .arg(&script)
        .arg(srv.url())
        .arg(srv.ca_path())
        .arg(ALICE_TOKEN)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect(
            "python3 must be installed, with the `kubernetes` package (pip install kubernetes)",
        );
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async || -> serde_json::Value {
        let line = tokio::time::timeout(support::DEADLINE, lines.next_line())
            .await
            .expect("no output from the python client within the deadline")
            .unwrap()
            .expect("the python client ended early (is `kubernetes` installed?)");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    };
    let listed = next().await;
    assert_eq!(listed["list"], serde_json::json!(["p-1", "p-2", "p-3"]));
    assert_eq!(listed["kind"], "EventList");
    assert_eq!(listed["resourceVersion"], srv.rv(3));
    support::eventually("the python watch to open", || async {
        open_watches(&srv).await == 1.0
    })
    .await;
    push(&srv, &["p-4", "p-5"]).await;
    assert_eq!(
        next().await,
        serde_json::json!({"type": "ADDED", "id": "p-4"})
    );
    assert_eq!(
        next().await,
        serde_json::json!({"type": "ADDED", "id": "p-5"})
    );
    child.kill().await.unwrap();
}

/// A TCP relay whose connections can all be cut at once: a forced disconnect that
/// neither end asked for.
struct Relay {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (c, a) = (conns.clone(), accepted.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                a.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let handle = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                c.lock().unwrap().push(handle.abort_handle());
            }
        });
        Relay {
            addr,
            conns,
            accepted,
            task,
        }
    }

    fn cut(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

/// What the watcher task reports: each object applied (listed or watched), and each
/// (re)start of its list.
#[derive(Debug, PartialEq)]
enum Seen {
    Init,
    Id(String),
    InitDone,
}

async fn watcher_across_a_disconnect(strategy: InitialListStrategy) {
    let srv = TestServer::start(&[]).await;
    push(&srv, &["k-1", "k-2", "k-3"]).await;
    let relay = Relay::start(srv.addr).await;

    let mut config = kube::Config::new(format!("https://{}", relay.addr).parse().unwrap());
    config.root_cert = Some(
        CertificateDer::pem_slice_iter(srv.ca.pem().as_bytes())
            .map(|c| c.unwrap().to_vec())
            .collect(),
    );
    config.auth_info.token = Some(ALICE_TOKEN.to_owned().into());
    let client = kube::Client::try_from(config).unwrap();
    let resource = ApiResource {
        group: "audit.k8s.io".into(),
        version: "v1alpha1".into(),
        api_version: "audit.k8s.io/v1alpha1".into(),
        kind: "NamespacedEvent".into(),
        plural: "namespacedevents".into(),
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client, "team-a", &resource);
    let config = watcher::Config {
        initial_list_strategy: strategy.clone(),
        // Pages of two: the initial LIST follows continue tokens.
        page_size: Some(2),
        ..watcher::Config::default()
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut stream = watcher::watcher(api, config).default_backoff().boxed();
        while let Some(ev) = stream.next().await {
            let seen = match ev {
                Ok(watcher::Event::Init) => Seen::Init,
                Ok(watcher::Event::InitDone) => Seen::InitDone,
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                    Seen::Id(o.data["auditID"].as_str().unwrap_or_default().to_owned())
                }
                Ok(watcher::Event::Delete(o)) => panic!("no event is ever deleted: {o:?}"),
                // Reconnects after the cut; the watcher retries with backoff.
                Err(_) => continue,
            };
            if tx.send(seen).is_err() {
                return;
            }
        }
    });
    let mut seen = vec![];
    let mut until = async |want: Seen| {
        loop {
            let s = tokio::time::timeout(support::DEADLINE, rx.recv())
                .await
                .unwrap_or_else(|_| panic!("{want:?} not seen within the deadline"))
                .expect("the watcher ended");
            let done = s == want;
            seen.push(s);
            if done {
                return;
            }
        }
    };
    until(Seen::InitDone).await;
    support::eventually("the watch to open", || async {
        open_watches(&srv).await == 1.0
    })
    .await;
    push(&srv, &["k-4", "k-5"]).await;
    until(Seen::Id("k-5".into())).await;

    // Cut every connection, and push while the watcher is away.
    let before = relay.accepted();
    relay.cut();
    push(&srv, &["k-6", "k-7"]).await;
    until(Seen::Id("k-7".into())).await;
    assert!(relay.accepted() > before, "the watcher reconnected");
    push(&srv, &["k-8"]).await;
    until(Seen::Id("k-8".into())).await;
    task.abort();

    let ids: Vec<&str> = seen
        .iter()
        .filter_map(|s| match s {
            Seen::Id(id) => Some(id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        ids,
        ["k-1", "k-2", "k-3", "k-4", "k-5", "k-6", "k-7", "k-8"],
        "{strategy:?}: every event once, in order: {seen:?}"
    );
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), ids.len());
    assert_eq!(
        seen.iter().filter(|s| **s == Seen::Init).count(),
        1,
        "{strategy:?}: resumed from its resourceVersion, never re-listed: {seen:?}"
    );
}

#[tokio::test]
async fn kube_rs_watcher_list_then_watch_across_a_disconnect() {
    watcher_across_a_disconnect(InitialListStrategy::ListWatch).await;
}

#[tokio::test]
async fn kube_rs_watcher_streaming_list_across_a_disconnect() {
    watcher_across_a_disconnect(InitialListStrategy::StreamingList).await;
}
