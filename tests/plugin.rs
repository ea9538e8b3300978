//! `kubectl audit`, black-box: the real `kubectl-audit` binary (and through the real
//! `kubectl audit`) against a real server, stand-alone and in cluster mode with the fake
//! kube-apiserver, with a kubeconfig written by the test and a HOME of its own (never the
//! user's ~/.kube): exactly the pushed events of its namespace and filters, JSON lines
//! equal to the raw stream, resumption across cut connections without duplicates or gaps,
//! a 410 reported and survived, a restarted server noticed, drops, truncation and
//! redaction shown, refusals (and revocation) with the server's message, `who`, `--since`,
//! plain tables in pipes and coloured ones on a terminal, one-line errors, Ctrl-C; control
//! characters in events and in the server's messages never reaching the terminal; `rbac`'s
//! policy from audit2rbac's demo log as audit2rbac documents it, parsed by kubectl.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

use support::fake_apiserver::{FakeApiServer, Rule};
use support::fixtures::{self, event};
use support::server::{ADMIN_TOKEN, ALICE_TOKEN, TestServer};
use support::{DEADLINE, eventually, metric};

const BIN: &str = env!("CARGO_BIN_EXE_kubectl-audit");

/// A kubeconfig and a HOME for the plugin: one context per (name, token, namespace), the
/// first current.
struct Kubeconfig {
    home: tempfile::TempDir,
}

impl Kubeconfig {
    fn new(server: &str, ca: &Path, users: &[(&str, &str, Option<&str>)]) -> Kubeconfig {
        let home = tempfile::tempdir().unwrap();
        let mut text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: audit\n  cluster:\n    server: {server}\n    certificate-authority: {}\nusers:\n",
            ca.display()
        );
        for (name, token, _) in users {
            text.push_str(&format!("- name: {name}\n  user:\n    token: {token}\n"));
        }
        text.push_str("contexts:\n");
        for (name, _, ns) in users {
            text.push_str(&format!(
                "- name: {name}\n  context:\n    cluster: audit\n    user: {name}\n"
            ));
            if let Some(ns) = ns {
                text.push_str(&format!("    namespace: {ns}\n"));
            }
        }
        text.push_str(&format!("current-context: {}\n", users[0].0));
        std::fs::write(home.path().join("kubeconfig"), text).unwrap();
        Kubeconfig { home }
    }

    fn path(&self) -> PathBuf {
        self.home.path().join("kubeconfig")
    }

    /// `program` (the plugin, or kubectl) with this kubeconfig, every stream piped.
    fn command(&self, program: &Path, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(program);
        c.args(args)
            .env("KUBECONFIG", self.path())
            .env("HOME", self.home.path())
            .env_remove("NO_COLOR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }

    /// Run the plugin to its end: (exit code, stdout, stderr).
    async fn run(&self, args: &[&str]) -> (i32, String, String) {
        run(self.command(Path::new(BIN), args)).await
    }

    fn spawn(&self, args: &[&str]) -> Running {
        Running::new(self.command(Path::new(BIN), args).spawn().unwrap())
    }
}

async fn run(mut command: tokio::process::Command) -> (i32, String, String) {
    let out = tokio::time::timeout(DEADLINE, command.output())
        .await
        .expect("the plugin did not finish")
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// A plugin process that keeps running (`tail`): its stdout read line by line, its
/// stderr gathered as it comes.
struct Running {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Running {
    fn new(mut child: Child) -> Running {
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut err_lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let sink = stderr.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = err_lines.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        Running {
            child,
            stdout,
            stderr,
        }
    }

    async fn line(&mut self) -> String {
        match tokio::time::timeout(DEADLINE, self.stdout.next_line()).await {
            Ok(Ok(Some(line))) => line,
            other => panic!(
                "no line from the plugin ({other:?}); its stderr: {:?}",
                self.stderr()
            ),
        }
    }

    /// The next `n` lines, each a JSON event.
    async fn events(&mut self, n: usize) -> Vec<Value> {
        let mut out = vec![];
        while out.len() < n {
            let line = self.line().await;
            out.push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}")));
        }
        out
    }

    fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Wait until a stderr line contains `text`; that line.
    async fn stderr_line(&self, text: &str) -> String {
        let mut found = String::new();
        eventually(&format!("stderr to say {text:?}"), || {
            let hit = self.stderr().into_iter().find(|l| l.contains(text));
            let done = hit.is_some();
            found = hit.unwrap_or_default();
            async move { done }
        })
        .await;
        found
    }
}

fn ids(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["auditID"].as_str().unwrap())
        .collect()
}

/// An event of `user` doing `verb` to `resource` `name` in `ns` at second `second` of
/// 10:00 (its stage 100 ms later).
fn event_of(
    id: &str,
    ns: &str,
    user: &str,
    verb: &str,
    resource: &str,
    name: &str,
    second: u32,
) -> String {
    let v: Value = serde_json::json!({
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "auditID": id,
        "stage": "ResponseComplete",
        "requestURI": format!("/api/v1/namespaces/{ns}/{resource}/{name}"),
        "verb": verb,
        "user": {"username": user, "groups": ["system:authenticated"]},
        "sourceIPs": ["10.0.0.7"],
        "userAgent": "kubectl/v1.33.0",
        "objectRef": {"resource": resource, "namespace": ns, "name": name, "apiVersion": "v1"},
        "responseStatus": {"metadata": {}, "code": if verb == "create" { 201 } else { 200 }},
        "requestReceivedTimestamp": format!("2026-01-01T10:00:{second:02}.000000Z"),
        "stageTimestamp": format!("2026-01-01T10:00:{second:02}.100000Z"),
    });
    v.to_string()
}

/// Wait until the server has `n` open `namespacedevents` watches.
async fn watchers(srv: &TestServer, n: usize) {
    let series = r#"kube_audit_stream_watch_watchers{resource="namespacedevents"}"#;
    eventually(&format!("{n} open watches"), || async {
        let (_, body) = srv.client(Some(ADMIN_TOKEN)).get("/metrics").await;
        metric(&body, series) == Some(n as f64)
    })
    .await;
}

fn alice(srv: &TestServer) -> Kubeconfig {
    Kubeconfig::new(
        &srv.url(),
        &srv.ca_path(),
        &[
            ("alice", ALICE_TOKEN, Some("team-a")),
            ("admin", ADMIN_TOKEN, None),
        ],
    )
}

#[tokio::test]
async fn tail_prints_exactly_the_events_of_its_namespace_and_filters() {
    let srv = TestServer::start(&[]).await;
    let kc = alice(&srv);
    // In the window before the plugin starts: one of each kind of miss, and two hits.
    srv.push_events(&[
        event_of("w1", "team-a", "bob", "delete", "configmaps", "cm", 1),
        event_of("w2", "team-b", "bob", "delete", "configmaps", "cm", 2),
        event_of("w3", "team-a", "bob", "get", "configmaps", "cm", 3),
        event_of("w4", "team-a", "carol", "update", "configmaps", "cm", 4),
        event_of("w5", "team-a", "bob", "update", "secrets", "s", 5),
        event_of("w6", "team-a", "bob", "update", "configmaps", "cm", 6),
    ])
    .await;
    // The raw stream, to compare the plugin's JSON with.
    let mut raw = srv
        .client(Some(ALICE_TOKEN))
        .watch("/apis/audit.k8s.io/v1alpha1/namespaces/team-a/namespacedevents?watch=1&resourceVersion=0")
        .await;
    let mut tail = kc.spawn(&[
        "tail",
        "--user",
        "bob",
        "--verb",
        "delete",
        "--verb",
        "update",
        "--resource",
        "configmaps",
        "-o",
        "json",
    ]);
    let held = tail.events(2).await;
    assert_eq!(ids(&held), ["w1", "w6"]);
    watchers(&srv, 2).await;

    srv.push_events(&[
        event_of("l1", "team-a", "bob", "update", "configmaps", "x", 7),
        event_of("l2", "team-b", "bob", "update", "configmaps", "x", 8),
        event_of("l3", "team-a", "bob", "patch", "configmaps", "x", 9),
        event_of("l4", "team-a", "alice", "delete", "configmaps", "x", 10),
        event_of("l5", "team-a", "bob", "delete", "pods", "x", 11),
        event_of("l6", "team-a", "bob", "delete", "configmaps", "x", 12),
    ])
    .await;
    let live = tail.events(2).await;
    assert_eq!(
        ids(&live),
        ["l1", "l6"],
        "the live events that match, in order"
    );

    // Each line is the event exactly as the raw stream gave it.
    let mut raw_events = vec![];
    while raw_events.len() < 10 {
        raw_events.extend(raw.added(1).await);
    }
    for ev in held.iter().chain(&live) {
        let same = raw_events
            .iter()
            .find(|r| r["auditID"] == ev["auditID"])
            .expect("in the raw stream");
        assert_eq!(ev, same);
    }
    // Nothing else was printed: the next line is the next match.
    srv.push_events(&[
        event_of("l7", "team-a", "carol", "delete", "configmaps", "x", 13),
        event_of("l8", "team-a", "bob", "update", "configmaps", "x", 14),
    ])
    .await;
    assert_eq!(ids(&tail.events(1).await), ["l8"]);
    assert!(tail.stderr().is_empty(), "{:?}", tail.stderr());
}

/// A TCP proxy that the test can cut (every open connection dropped) and hold shut
/// (connections accepted and dropped at once) to force the plugin to reconnect.
struct CutProxy {
    addr: SocketAddr,
    upstream: Arc<Mutex<SocketAddr>>,
    open: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl CutProxy {
    async fn start(upstream: SocketAddr) -> CutProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = CutProxy {
            addr: listener.local_addr().unwrap(),
            upstream: Arc::new(Mutex::new(upstream)),
            open: Arc::new(AtomicBool::new(true)),
            accepted: Arc::new(AtomicUsize::new(0)),
            conns: Arc::default(),
        };
        let (open, accepted, conns, upstream) = (
            proxy.open.clone(),
            proxy.accepted.clone(),
            proxy.conns.clone(),
            proxy.upstream.clone(),
        );
        tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                if !open.load(Ordering::SeqCst) {
                    continue;
                }
                accepted.fetch_add(1, Ordering::SeqCst);
                let upstream = *upstream.lock().unwrap();
                let task = tokio::spawn(async move {
                    if let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
                conns.lock().unwrap().push(task.abort_handle());
            }
        });
        proxy
    }

    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Drop every connection, and refuse new ones until `reopen`.
    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    fn reopen(&self) {
        self.open.store(true, Ordering::SeqCst);
    }

    /// From now on, connect to `upstream` (another server: a restart, as the client sees it).
    fn point_at(&self, upstream: SocketAddr) {
        *self.upstream.lock().unwrap() = upstream;
    }
}

#[tokio::test]
async fn a_cut_connection_resumes_without_duplicates_or_gaps() {
    let srv = TestServer::start(&[]).await;
    let proxy = CutProxy::start(srv.addr).await;
    let kc = Kubeconfig::new(
        &proxy.url(),
        &srv.ca_path(),
        &[("alice", ALICE_TOKEN, Some("team-a"))],
    );
    let batch = |round: u32| -> Vec<String> {
        (0..3)
            .map(|i| event(&format!("r{round}-{i}"), Some("team-a"), "get"))
            .collect()
    };
    // Watches renewed every second as well: the server's timeout is a clean end, resumed
    // the same way.
    let mut tail = kc.spawn(&["tail", "-o", "json", "--watch-timeout", "1s"]);
    watchers(&srv, 1).await;
    let mut want = vec![];
    let mut got = vec![];
    for round in 0..3 {
        srv.push_events(&batch(round)).await;
        want.extend((0..3).map(|i| format!("r{round}-{i}")));
        got.extend(tail.events(3).await);
        // Cut while nothing is in flight, push while the plugin cannot connect, let it in.
        proxy.cut();
        watchers(&srv, 0).await;
        srv.push_events(&batch(round + 10)).await;
        want.extend((0..3).map(|i| format!("r{}-{i}", round + 10)));
        proxy.reopen();
        got.extend(tail.events(3).await);
    }
    assert_eq!(ids(&got), want);
    // Nothing twice: the next line is the next event.
    srv.push_events(&[event("last", Some("team-a"), "get")])
        .await;
    assert_eq!(ids(&tail.events(1).await), ["last"]);
    assert!(proxy.accepted.load(Ordering::SeqCst) >= 4);
    tail.stderr_line("Watch interrupted").await;
    tail.stderr_line("Watch resumed from resourceVersion").await;
}

#[tokio::test]
async fn expired_history_is_reported_and_the_tail_goes_on() {
    let srv = TestServer::start(&["--window-events", "5"]).await;
    let proxy = CutProxy::start(srv.addr).await;
    let kc = Kubeconfig::new(
        &proxy.url(),
        &srv.ca_path(),
        &[("alice", ALICE_TOKEN, Some("team-a"))],
    );
    let mut tail = kc.spawn(&["tail", "-o", "json"]);
    watchers(&srv, 1).await;
    srv.push_events(&[event_of(
        "seen",
        "team-a",
        "bob",
        "get",
        "configmaps",
        "cm",
        0,
    )])
    .await;
    assert_eq!(ids(&tail.events(1).await), ["seen"]);

    // While the plugin cannot connect, ten more events: the window keeps the last five.
    proxy.cut();
    watchers(&srv, 0).await;
    let pushed: Vec<String> = (1..=10)
        .map(|i| {
            event_of(
                &format!("e{i}"),
                "team-a",
                "bob",
                "get",
                "configmaps",
                "cm",
                10 + i,
            )
        })
        .collect();
    srv.push_events(&pushed).await;
    proxy.reopen();

    // e1..e5 are gone: from the last seen (10:00:00.1) to the oldest held (e6, 10:00:16.1).
    let line = tail.stderr_line("Watch expired (410 Gone").await;
    assert!(line.contains("16 seconds of history skipped"), "{line}");
    assert_eq!(ids(&tail.events(5).await), ["e6", "e7", "e8", "e9", "e10"]);
    srv.push_events(&[event_of(
        "after",
        "team-a",
        "bob",
        "get",
        "configmaps",
        "cm",
        30,
    )])
    .await;
    assert_eq!(ids(&tail.events(1).await), ["after"]);
}

#[tokio::test]
async fn dropped_events_are_counted_and_truncated_ones_marked() {
    // 200 kB at once, then 20 kB/s: the 100 OpenShift events (810 kB, mostly bodies)
    // come whole, then truncated, then dropped.
    let srv = TestServer::start(&[
        "--watcher-bytes-per-second",
        "20000",
        "--watcher-burst-bytes",
        "200000",
    ])
    .await;
    let kc = alice(&srv);
    let lines = fixtures::lines("openshift-audit_in.log");
    let namespaced = lines
        .iter()
        .filter(|l| serde_json::from_str::<Value>(l).unwrap()["objectRef"]["namespace"].is_string())
        .count();
    let mut tail = kc.spawn(&["--context", "admin", "tail", "-A", "-o", "json"]);
    watchers(&srv, 1).await;
    srv.push_events(&lines).await;

    let dropped = |tail: &Running| -> usize {
        tail.stderr()
            .iter()
            .map(|l| {
                let n = l.strip_suffix(" dropped: over your bandwidth budget");
                let n = n.unwrap_or_else(|| panic!("an unexpected message: {l}"));
                n.split(' ').next().unwrap().parse::<usize>().unwrap()
            })
            .sum()
    };
    // Every event is printed or counted in a drop line, which the server sends before the
    // next event it delivers, or when its budget allows once the stream is idle.
    let (mut whole, mut truncated) = (0, 0);
    let start = tokio::time::Instant::now();
    while whole + truncated + dropped(&tail) < namespaced {
        assert!(
            start.elapsed() < DEADLINE,
            "{whole} + {truncated} + {:?}",
            tail.stderr()
        );
        tokio::select! {
            line = tail.stdout.next_line() => {
                let line = line.unwrap().expect("the plugin ended");
                let ev: Value = serde_json::from_str(&line).unwrap();
                if ev["annotations"]["audit.k8s.io/truncated"] == "true" {
                    assert!(ev.get("responseObject").is_none() && ev.get("requestObject").is_none());
                    truncated += 1;
                } else {
                    whole += 1;
                }
            }
            _ = tokio::time::sleep(std::time::Duration::from_millis(20)) => {}
        }
    }
    assert!(
        whole > 0 && truncated > 0,
        "{whole} whole, {truncated} truncated"
    );
    assert_eq!(whole + truncated + dropped(&tail), namespaced);
    let (_, metrics) = srv.client(Some(ADMIN_TOKEN)).get("/metrics").await;
    let counted: f64 = ["budget", "queue_full"]
        .iter()
        .filter_map(|reason| {
            metric(
                &metrics,
                &format!(
                    r#"kube_audit_stream_watch_dropped_events_total{{reason="{reason}",resource="namespacedevents"}}"#
                ),
            )
        })
        .sum();
    assert!(counted > 0.0);
    assert_eq!(dropped(&tail) as f64, counted);
}

#[tokio::test]
async fn who_finds_the_create_and_delete_of_an_object() {
    let srv = TestServer::start(&[]).await;
    let kc = alice(&srv);
    let mut received = serde_json::from_str::<Value>(&event_of(
        "c1",
        "team-a",
        "bob",
        "create",
        "configmaps",
        "settings",
        1,
    ))
    .unwrap();
    received["stage"] = "RequestReceived".into();
    srv.push_events(&[
        received.to_string(),
        event_of("c1", "team-a", "bob", "create", "configmaps", "settings", 1),
        event_of("o1", "team-a", "bob", "delete", "configmaps", "other", 2),
        event_of("g1", "team-a", "alice", "get", "configmaps", "settings", 3),
        event_of("s1", "team-a", "carol", "delete", "secrets", "settings", 4),
        event_of(
            "b1",
            "team-b",
            "carol",
            "delete",
            "configmaps",
            "settings",
            5,
        ),
        event_of(
            "d1",
            "team-a",
            "carol",
            "delete",
            "configmaps",
            "settings",
            6,
        ),
        // Pushed late (another apiserver's batch), told in its place.
        event_of(
            "u1",
            "team-a",
            "dave",
            "update",
            "configmaps",
            "settings",
            2,
        ),
    ])
    .await;
    let (code, out, err) = kc
        .run(&["who", "settings", "--resource", "configmaps"])
        .await;
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        [
            "TIME",
            "SOURCE",
            "USER",
            "VERB",
            "RESOURCE",
            "NAMESPACE/NAME",
            "CODE",
            "LATENCY"
        ]
    );
    let who_what: Vec<(&str, &str, &str)> = rows[1..].iter().map(|r| (r[2], r[3], r[5])).collect();
    assert_eq!(
        who_what,
        [
            ("bob", "create", "team-a/settings"),
            ("dave", "update", "team-a/settings"),
            ("alice", "get", "team-a/settings"),
            ("carol", "delete", "team-a/settings"),
        ],
        "{out}"
    );
    assert_eq!(rows[1][6], "201");
    assert_eq!(rows[1][7], "100ms");

    // JSON lines and YAML documents: the same events, in the same order.
    let (code, json, err) = kc.run(&["who", "settings", "-o", "json"]).await;
    assert_eq!(code, 0, "{err}");
    let json: Vec<Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Without --resource, the Secret of the same name too.
    assert_eq!(ids(&json), ["c1", "u1", "g1", "s1", "d1"]);
    let (code, yaml, err) = kc.run(&["who", "settings", "-o", "yaml"]).await;
    assert_eq!(code, 0, "{err}");
    let yaml: Vec<Value> = serde_saphyr::from_str_multiple(&yaml).unwrap();
    assert_eq!(yaml, json);

    let (code, out, err) = kc.run(&["who", "nothing-here", "-o", "json"]).await;
    assert_eq!((code, out.as_str()), (0, ""));
    assert!(
        err.contains(r#"No audit events for "nothing-here" in namespace team-a"#),
        "{err}"
    );
}

#[tokio::test]
async fn a_forbidden_namespace_prints_the_servers_message_and_fails() {
    // Cluster mode: alice's token and permissions are the (fake) kube-apiserver's.
    let fake = FakeApiServer::start().await;
    fake.add_token("alice-cluster-token", "alice", "uid-alice", &[]);
    fake.allow(Rule::namespaced(
        "alice",
        &["get", "list", "watch"],
        "team-a",
        "audit.k8s.io",
        "namespacedevents",
    ));
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start_cluster(&fake.kubeconfig(dir.path()), &[]).await;
    let kc = Kubeconfig::new(
        &srv.url(),
        &srv.ca_path(),
        &[
            ("alice", "alice-cluster-token", Some("team-a")),
            ("nobody", "bad-token", None),
        ],
    );
    srv.push_events(&[event("a-1", Some("team-a"), "delete")])
        .await;
    let (code, out, err) = kc.run(&["who", "cm"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("team-a/cm"), "{out}");

    let (code, out, err) = kc.run(&["tail", "-n", "team-b"]).await;
    assert_eq!(code, 1);
    assert_eq!(out, "");
    assert_eq!(
        err,
        "Error from server (Forbidden): namespacedevents.audit.k8s.io is forbidden: User \"alice\" cannot list resource \"namespacedevents\" in API group \"audit.k8s.io\" in the namespace \"team-b\"\n\
         Check with: kubectl auth can-i watch namespacedevents.audit.k8s.io -n team-b\n"
    );
    let (code, _, err) = kc.run(&["--context", "nobody", "tail"]).await;
    assert_eq!(code, 1);
    assert!(
        err.starts_with("Error from server (Unauthorized): Unauthorized\n"),
        "{err}"
    );
    assert!(
        err.contains(
            "kubectl auth can-i watch namespacedevents.audit.k8s.io -n default --context nobody"
        ),
        "{err}"
    );
}

#[tokio::test]
async fn through_kubectl_a_piped_table_is_plain_and_ctrl_c_exits_zero() {
    let srv = TestServer::start(&[]).await;
    let kc = alice(&srv);
    srv.push_events(&[
        event_of("p1", "team-a", "bob", "create", "configmaps", "cm", 1),
        event_of("p2", "team-a", "bob", "delete", "configmaps", "cm", 2),
    ])
    .await;
    // kubectl finds kubectl-audit on PATH and runs it with the rest of the line.
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = std::env::join_paths(std::iter::once(bin_dir.to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .unwrap();
    let kubectl = |args: &[&str]| {
        let mut c = kc.command(Path::new("kubectl"), args);
        c.env("PATH", &path);
        c
    };
    let (code, out, err) = run(kubectl(&["audit", "who", "cm"])).await;
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains('\x1b'), "no colour in a pipe: {out:?}");
    assert_eq!(out.lines().count(), 3, "{out}");
    assert_eq!(
        out.lines()
            .nth(2)
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        [
            "2026-01-01T10:00:02Z",
            "apiserver-1",
            "bob",
            "delete",
            "configmaps",
            "team-a/cm",
            "200",
            "100ms"
        ],
    );
    let (code, out, _) = run(kubectl(&["audit", "--help"])).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("Usage: kubectl audit") && out.contains("Examples:"),
        "{out}"
    );
    let (code, out, _) = run(kubectl(&["audit", "tail", "--help"])).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("kubectl audit tail -n team-a --user alice"),
        "{out}"
    );

    // A tail runs until Ctrl-C, which is its normal end.
    let mut tail = kc.spawn(&["tail"]);
    assert!(tail.line().await.starts_with("TIME "));
    watchers(&srv, 1).await;
    let pid = tail.child.id().unwrap().to_string();
    // SIGINT, as Ctrl-C sends; python3 (which the tests need anyway) rather than a kill
    // binary that a minimal image may lack.
    let status = std::process::Command::new("python3")
        .args([
            "-c",
            "import os, signal, sys; os.kill(int(sys.argv[1]), signal.SIGINT)",
            &pid,
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(DEADLINE, tail.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.code(), Some(0));

    // On a terminal (a pseudo-terminal from python3's pty module), verbs and codes are
    // coloured: create green, delete red, 2xx green.
    let mut on_tty = kc.command(
        Path::new("python3"),
        &[
            "-c",
            "import pty, sys; pty.spawn(sys.argv[1:])",
            BIN,
            "who",
            "cm",
        ],
    );
    on_tty.env("TERM", "xterm");
    let (code, out, err) = run(on_tty).await;
    assert_eq!(code, 0, "{err}");
    let (green, red) = (
        anstyle::AnsiColor::Green.on_default(),
        anstyle::AnsiColor::Red.on_default(),
    );
    assert!(out.contains(&format!("{green}create{green:#}")), "{out:?}");
    assert!(out.contains(&format!("{red}delete{red:#}")), "{out:?}");
    assert!(out.contains(&format!("{green}201{green:#}")), "{out:?}");
}

#[tokio::test]
async fn bad_flags_and_an_unreachable_server_fail_with_one_line() {
    // A port nothing listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("https://127.0.0.1:{port}");
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), support::pki::Ca::new("unused").pem()).unwrap();
    let kc = Kubeconfig::new(&url, ca.path(), &[("alice", ALICE_TOKEN, Some("team-a"))]);
    for (args, starts) in [
        (
            &["tail", "--bogus"][..],
            "error: unexpected argument '--bogus' found",
        ),
        (
            &["tail", "-n", "Team_A"],
            "error: -n/--namespace: \"Team_A\"",
        ),
        (&["tail", "--user", "a,b"], "error: --user: \"a,b\""),
        (&["who", "x", "--context", "nope"], "error: kubeconfig: "),
        (&["tail"], &format!("error: {url}: ")),
        (&["tail", "--since-rv", "3"], &format!("error: {url}: ")),
    ] {
        let (code, out, err) = kc.run(args).await;
        assert_eq!((code, out.as_str()), (1, ""), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with(starts), "{args:?}: {err}");
    }
}

#[tokio::test]
async fn revoked_access_ends_the_tail_with_the_servers_message() {
    let fake = FakeApiServer::start().await;
    fake.add_token("alice-cluster-token", "alice", "uid-alice", &[]);
    // For the metrics (system:masters is allowed without a SubjectAccessReview).
    fake.add_token(ADMIN_TOKEN, "admin", "uid-admin", &["system:masters"]);
    fake.allow(Rule::namespaced(
        "alice",
        &["list", "watch"],
        "team-a",
        "audit.k8s.io",
        "namespacedevents",
    ));
    let dir = tempfile::tempdir().unwrap();
    // Open watches are authorized again every second.
    let srv = TestServer::start_cluster(
        &fake.kubeconfig(dir.path()),
        &["--authorization-webhook-cache-authorized-ttl", "1s"],
    )
    .await;
    let kc = Kubeconfig::new(
        &srv.url(),
        &srv.ca_path(),
        &[("alice", "alice-cluster-token", Some("team-a"))],
    );
    let mut tail = kc.spawn(&["tail", "-o", "json"]);
    watchers(&srv, 1).await;
    srv.push_events(&[event("before", Some("team-a"), "get")])
        .await;
    assert_eq!(ids(&tail.events(1).await), ["before"]);

    fake.revoke_user("alice");
    let exit = tokio::time::timeout(DEADLINE, tail.child.wait())
        .await
        .expect("the tail ends")
        .unwrap();
    assert_eq!(exit.code(), Some(1));
    let err = tail.stderr_line("Error from server (Forbidden): ").await;
    assert!(
        err.contains(r#"User "alice" cannot watch resource "namespacedevents""#),
        "{err}"
    );
    tail.stderr_line(
        "Check with: kubectl auth can-i watch namespacedevents.audit.k8s.io -n team-a",
    )
    .await;
}

#[tokio::test]
async fn since_starts_with_the_held_events_of_that_last_stretch() {
    let srv = TestServer::start(&[]).await;
    let kc = alice(&srv);
    let at = |id: &str, t: String| {
        let mut v: Value =
            serde_json::from_str(&event_of(id, "team-a", "bob", "get", "configmaps", "cm", 0))
                .unwrap();
        v["requestReceivedTimestamp"] = t.clone().into();
        v["stageTimestamp"] = t.into();
        v.to_string()
    };
    let now = k8s_openapi::jiff::Timestamp::now();
    let ago = |minutes: i64| {
        format!(
            "{:.6}",
            now - k8s_openapi::jiff::SignedDuration::from_mins(minutes)
        )
    };
    srv.push_events(&[
        at("old", ago(60)),
        at("recent", ago(5)),
        at("older", ago(20)),
        at("now", ago(0)),
    ])
    .await;
    let mut tail = kc.spawn(&["tail", "--since", "10m", "-o", "json"]);
    assert_eq!(ids(&tail.events(2).await), ["recent", "now"]);
    watchers(&srv, 1).await;
    // Live events are not filtered by time.
    srv.push_events(&[at("live-old", ago(90))]).await;
    assert_eq!(ids(&tail.events(1).await), ["live-old"]);
}

#[tokio::test]
async fn a_restarted_server_is_noticed_and_read_from_its_start() {
    // Three servers behind one address (the proxy's), as the plugin sees one server
    // restarted twice: `later` numbers from a later clock than `first` (a restart), and
    // `earlier` from an earlier one (a restart after the clock was set back).
    let earlier = TestServer::start(&[]).await;
    let first = TestServer::start(&[]).await;
    let later = TestServer::start(&[]).await;
    assert!(earlier.base < first.base && first.base + 5 < later.base);
    let proxy = CutProxy::start(first.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let cas = dir.path().join("cas.crt");
    let pems = [&earlier, &first, &later].map(|s| s.ca.pem()).concat();
    std::fs::write(&cas, pems).unwrap();
    let kc = Kubeconfig::new(
        &proxy.url(),
        &cas,
        &[("alice", ALICE_TOKEN, Some("team-a"))],
    );
    let mut tail = kc.spawn(&["tail", "-o", "json"]);
    watchers(&first, 1).await;
    let batch: Vec<String> = (0..5)
        .map(|i| event(&format!("a{i}"), Some("team-a"), "get"))
        .collect();
    first.push_events(&batch).await;
    assert_eq!(ids(&tail.events(5).await), ["a0", "a1", "a2", "a3", "a4"]);

    // Restarted: the last resourceVersion seen is older than anything it holds.
    proxy.cut();
    proxy.point_at(later.addr);
    later
        .push_events(&[
            event("b0", Some("team-a"), "get"),
            event("b1", Some("team-a"), "get"),
        ])
        .await;
    proxy.reopen();
    let line = tail.stderr_line("Watch expired (410 Gone").await;
    assert!(line.contains("going on from there"), "{line}");
    assert_eq!(ids(&tail.events(2).await), ["b0", "b1"]);
    watchers(&later, 1).await;
    later
        .push_events(&[event("b2", Some("team-a"), "get")])
        .await;
    assert_eq!(ids(&tail.events(1).await), ["b2"]);

    // Numbering went back: the resourceVersion is one the server has not reached.
    proxy.cut();
    proxy.point_at(earlier.addr);
    earlier
        .push_events(&[event("c0", Some("team-a"), "get")])
        .await;
    proxy.reopen();
    let line = tail.stderr_line("resourceVersion went back").await;
    assert!(
        line.contains(&format!("from {} to {}", later.rv(3), earlier.rv(1))),
        "{line}"
    );
    assert_eq!(ids(&tail.events(1).await), ["c0"]);
}

#[tokio::test]
async fn all_events_reaches_cluster_scoped_requests_for_those_allowed() {
    let srv = TestServer::start(&[]).await;
    let kc = alice(&srv);
    // `event` with no namespace: a cluster-scoped request on an object named cm.
    srv.push_events(&[
        event("cluster", None, "delete"),
        event("ns", Some("team-a"), "delete"),
    ])
    .await;
    let (code, out, err) = kc
        .run(&[
            "who",
            "cm",
            "--all-events",
            "--context",
            "admin",
            "-o",
            "json",
        ])
        .await;
    assert_eq!(code, 0, "{err}");
    let events: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(ids(&events), ["cluster", "ns"]);
    let (code, out, _) = kc
        .run(&["who", "cm", "-A", "--context", "admin", "-o", "json"])
        .await;
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 1, "-A: namespaced events only: {out}");

    let (code, _, err) = kc.run(&["who", "cm", "--all-events"]).await;
    assert_eq!(code, 1);
    assert!(
        err.starts_with(
            "Error from server (Forbidden): events.audit.k8s.io is forbidden: User \"alice\""
        ),
        "{err}"
    );
    assert!(
        err.ends_with("\nCheck with: kubectl auth can-i list events.audit.k8s.io\n"),
        "{err}"
    );
}

/// `args` for the plugin on a terminal: a pseudo-terminal from python3's pty module, with
/// `stty -onlcr` so that the terminal does not turn each "\n" into "\r\n" (what the test
/// reads is then what the plugin wrote). The plugin's stderr goes to the same terminal.
fn on_tty(kc: &Kubeconfig, args: &[&str]) -> tokio::process::Command {
    let mut argv = vec![
        "-c",
        "import pty, sys; pty.spawn(sys.argv[1:])",
        "sh",
        "-c",
        r#"stty -onlcr && exec "$0" "$@""#,
        BIN,
    ];
    argv.extend_from_slice(args);
    let mut c = kc.command(Path::new("python3"), &argv);
    c.env("TERM", "xterm");
    c
}

/// `text` less the plugin's own colour sequences (every style it uses: four colours,
/// plain or bold, and the reset). The events of the tests below hold no sequence of these.
fn without_colours(text: &str) -> String {
    use anstyle::AnsiColor::{Cyan, Green, Red, Yellow};
    let mut out = text.to_owned();
    for colour in [Green, Yellow, Red, Cyan] {
        // Bold first: its sequence ends with the plain one's.
        for style in [colour.on_default().bold(), colour.on_default()] {
            out = out
                .replace(&style.to_string(), "")
                .replace(&format!("{style:#}"), "");
        }
    }
    out
}

/// The control characters in `text` other than the newlines that end lines.
fn controls(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_control() && *c != '\n')
        .collect()
}

/// An object name as a request path can carry one: a CSI that clears the screen, an OSC
/// that retitles the window (ended by BEL), backspace, CR, a C1 CSI (U+009B), DEL and
/// more C0 controls (none at its ends, which `who` would refuse as spaces, and no NUL,
/// which no command line can carry).
const EVIL_NAME: &str =
    "cm\u{1b}[2J\u{1b}]0;owned\u{7}\u{8}x\ry\u{9b}5m\u{7f}\u{1}\u{b}\u{c}\u{1f}z";
/// How the plugin shows it: ESC as ^[ and CR as \r as kubectl does, the rest spelled too.
const EVIL_NAME_SHOWN: &str = r"cm^[[2J^[]0;owned^G^Hx\ry\u009b5m^?^A^K^L^_z";
const EVIL_USER: &str = "bob\u{1b}[5m\u{0}\u{85}\t";
const EVIL_USER_SHOWN: &str = r"bob^[[5m^@\u0085\t";
const EVIL_AGENT: &str = "curl\u{8}\u{8}\u{8}\u{8}kubectl\n";
const EVIL_AGENT_SHOWN: &str = r"curl^H^H^H^Hkubectl\n";
/// A non-resource request: the table shows its path.
const EVIL_URI: &str = "/healthz\u{1b}[H\u{1b}[2J\u{9b}?1049h\u{7}";
const EVIL_URI_SHOWN: &str = r"/healthz^[[H^[[2J\u009b?1049h^G";

#[tokio::test]
async fn control_characters_in_events_never_reach_the_terminal() {
    let srv = TestServer::start(&[]).await;
    let kc = alice(&srv);
    let mut named: Value = serde_json::from_str(&event_of(
        "evil-name",
        "team-a",
        "bob",
        "delete",
        "configmaps",
        EVIL_NAME,
        1,
    ))
    .unwrap();
    named["user"]["username"] = EVIL_USER.into();
    named["userAgent"] = EVIL_AGENT.into();
    let path: Value = serde_json::json!({
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "auditID": "evil-path",
        "stage": "ResponseComplete",
        "requestURI": EVIL_URI,
        "verb": "get",
        "user": {"username": "system:anonymous", "groups": ["system:unauthenticated"]},
        "sourceIPs": ["10.0.0.9"],
        "responseStatus": {"metadata": {}, "code": 403},
        "requestReceivedTimestamp": "2026-01-01T10:00:02.000000Z",
        "stageTimestamp": "2026-01-01T10:00:02.100000Z",
    });
    srv.push_events(&[named.to_string(), path.to_string()])
        .await;

    // `who` on a terminal: colour on, and no control character but the plugin's colours.
    let (code, out, err) = run(on_tty(&kc, &["who", EVIL_NAME])).await;
    assert_eq!(code, 0, "{err}");
    let red = anstyle::AnsiColor::Red.on_default();
    assert!(out.contains(&format!("{red}delete{red:#}")), "{out:?}");
    assert_eq!(controls(&without_colours(&out)), "", "{out:?}");
    assert_eq!(out.lines().count(), 2, "{out:?}");
    let row = out.lines().nth(1).unwrap();
    assert!(
        row.contains(&format!("team-a/{EVIL_NAME_SHOWN}")),
        "{row:?}"
    );
    assert!(row.contains(EVIL_USER_SHOWN), "{row:?}");

    // `tail` on a terminal, every event (the path's too).
    let mut tail = Running::new(
        on_tty(
            &kc,
            &["tail", "--all-events", "--context", "admin", "-o", "wide"],
        )
        .spawn()
        .unwrap(),
    );
    let lines = [tail.line().await, tail.line().await, tail.line().await];
    drop(tail);
    assert!(lines[0].starts_with("TIME "), "{lines:?}");
    for line in &lines {
        assert_eq!(controls(&without_colours(line)), "", "{lines:?}");
    }
    for shown in [EVIL_NAME_SHOWN, EVIL_USER_SHOWN, EVIL_AGENT_SHOWN] {
        assert!(lines[1].contains(shown), "{shown}: {lines:?}");
    }
    assert!(lines[2].contains(EVIL_URI_SHOWN), "{lines:?}");

    // In a pipe: no colour, so no control character at all.
    let mut tail = kc.spawn(&["tail", "-o", "wide"]);
    let lines = [tail.line().await, tail.line().await];
    assert!(lines[1].contains(EVIL_NAME_SHOWN), "{lines:?}");
    assert_eq!(controls(&lines.concat()), "", "{lines:?}");
    drop(tail);

    // JSON and YAML are exact: the original strings, byte for byte.
    let (code, json, err) = kc.run(&["who", EVIL_NAME, "-o", "json"]).await;
    assert_eq!(code, 0, "{err}");
    let events: Vec<Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(ids(&events), ["evil-name"]);
    let exact = |ev: &Value| {
        for field in ["objectRef", "user", "userAgent", "requestURI"] {
            assert_eq!(ev[field], named[field], "{field}");
        }
    };
    exact(&events[0]);
    let (code, yaml, err) = kc.run(&["who", EVIL_NAME, "-o", "yaml"]).await;
    assert_eq!(code, 0, "{err}");
    let yaml: Vec<Value> = serde_saphyr::from_str_multiple(&yaml).unwrap();
    assert_eq!(yaml, events);
    let mut tail = kc.spawn(&["tail", "--all-events", "--context", "admin", "-o", "json"]);
    let held = tail.events(2).await;
    exact(&held[0]);
    assert_eq!(held[1]["requestURI"], EVIL_URI);
}

/// A server on loopback, in plain HTTP, that answers each request with what `answer`
/// makes of its request line (a status code and a JSON body), then closes the
/// connection: just enough of a server to say what a real one would not.
async fn scripted(answer: impl Fn(&str) -> (u16, Value) + Send + Sync + 'static) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let (read, mut write) = conn.into_split();
                let mut lines = BufReader::new(read).lines();
                let Ok(Some(request)) = lines.next_line().await else {
                    return;
                };
                // The headers, to the empty line: the plugin's GETs have no body.
                while let Ok(Some(header)) = lines.next_line().await {
                    if header.is_empty() {
                        break;
                    }
                }
                let (code, body) = answer(&request);
                let body = format!("{body}\n");
                let head = format!(
                    "HTTP/1.1 {code} Scripted\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = write.write_all(head.as_bytes()).await;
                let _ = write.write_all(body.as_bytes()).await;
                let _ = write.shutdown().await;
            });
        }
    });
    url
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "status": "Failure",
        "code": code, "reason": reason, "message": message,
    })
}

#[tokio::test]
async fn control_characters_in_the_servers_messages_never_reach_the_terminal() {
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), support::pki::Ca::new("unused").pem()).unwrap();
    let kc = |url: &str| Kubeconfig::new(url, ca.path(), &[("alice", ALICE_TOKEN, Some("team-a"))]);

    // A refusal whose reason and message hold escapes, and a line break that would pass
    // off the rest as the plugin's own line.
    let refusing = scripted(|_| {
        (
            403,
            status(
                403,
                "Forbidden\u{1b}[2J",
                "no\u{1b}]0;owned\u{7} way\u{9b}H\nCheck with: rm -rf ~",
            ),
        )
    })
    .await;
    let (code, out, err) = kc(&refusing).run(&["who", "cm"]).await;
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(
        err,
        "Error from server (Forbidden^[[2J): no^[]0;owned^G way\\u009bH\\nCheck with: rm -rf ~\n\
         Check with: kubectl auth can-i list namespacedevents.audit.k8s.io -n team-a\n"
    );

    // A server error, which ends `who` as an unreachable server does (a 500: kube's client
    // retries a 503 for many minutes before the plugin hears of it).
    let failing = scripted(|_| (500, status(500, "InternalError", "down\u{1b}[2J\u{7f}"))).await;
    let (code, _, err) = kc(&failing).run(&["who", "cm"]).await;
    assert_eq!(code, 1);
    assert!(
        err.ends_with(": 500 Internal Server Error: down^[[2J^?\n"),
        "{err:?}"
    );
    assert_eq!(controls(&err), "", "{err:?}");

    // Errors in a watch: history expired (410), then a failed watch, every time after.
    let watches = Arc::new(AtomicUsize::new(0));
    let counted = watches.clone();
    let watching = scripted(move |request| {
        if !request.contains("watch=true") {
            let list = serde_json::json!({
                "kind": "EventList", "apiVersion": "audit.k8s.io/v1alpha1",
                "metadata": {"resourceVersion": "5"}, "items": [],
            });
            return (200, list);
        }
        let error = if counted.fetch_add(1, Ordering::SeqCst) == 0 {
            status(410, "Expired", "gone\u{1b}[2J\u{85}")
        } else {
            status(500, "InternalError", "boom\u{1b}]0;owned\u{7}\r")
        };
        (200, serde_json::json!({"type": "ERROR", "object": error}))
    })
    .await;
    // Kept until the end: the plugin reads its kubeconfig after it starts.
    let watcher = kc(&watching);
    let tail = watcher.spawn(&["tail", "-o", "json"]);
    let expired = tail.stderr_line("Watch expired").await;
    assert!(
        expired.starts_with(r"Watch expired (410 Gone: gone^[[2J\u0085): "),
        "{expired:?}"
    );
    let interrupted = tail.stderr_line("Watch interrupted").await;
    assert_eq!(
        interrupted,
        r"Watch interrupted (error from server: boom^[]0;owned^G\r); resuming from resourceVersion 5."
    );
    assert!(watches.load(Ordering::SeqCst) >= 2);
    for line in tail.stderr() {
        assert_eq!(controls(&line), "", "{line:?}");
    }
}

#[tokio::test]
async fn redacted_events_are_marked() {
    // Redaction is on by default: a Secret's data is replaced at ingest, and the event
    // carries audit.k8s.io/redacted: "true".
    let srv = TestServer::start(&[]).await;
    let kc = alice(&srv);
    let mut secret: Value = serde_json::from_str(&event_of(
        "redacted", "team-a", "bob", "create", "secrets", "s", 1,
    ))
    .unwrap();
    secret["level"] = "Request".into();
    secret["requestObject"] = serde_json::json!({
        "kind": "Secret", "apiVersion": "v1",
        "metadata": {"name": "s", "namespace": "team-a"},
        "data": {"password": "czNjcjN0"},
    });
    srv.push_events(&[
        secret.to_string(),
        event_of("plain", "team-a", "bob", "delete", "secrets", "s", 2),
    ])
    .await;
    let (code, out, err) = kc.run(&["who", "s"]).await;
    assert_eq!(code, 0, "{err}");
    let rows: Vec<&str> = out.lines().collect();
    assert_eq!(rows.len(), 3, "{out}");
    assert!(
        rows[1].ends_with("100ms   (redacted: secret values in request/response objects replaced)"),
        "{out}"
    );
    assert!(rows[2].ends_with("100ms"), "{out}");
    let (code, json, err) = kc.run(&["who", "s", "-o", "json"]).await;
    assert_eq!(code, 0, "{err}");
    let first: Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(first["annotations"]["audit.k8s.io/redacted"], "true");
    assert_eq!(first["requestObject"]["data"]["password"], "<redacted>");
}

/// `kubectl audit sources`: what `kubectl get sources.audit.k8s.io` prints, from the
/// server's own Table; `-o wide`, one source by name, JSON lines and YAML; a refusal with
/// the line that checks the permission.
#[tokio::test]
async fn sources_prints_every_pusher_as_kubectl_get_does() {
    let srv = TestServer::start(&[]).await;
    let kc = Kubeconfig::new(
        &srv.url(),
        &srv.ca_path(),
        &[
            ("admin", ADMIN_TOKEN, None),
            ("alice", ALICE_TOKEN, Some("team-a")),
        ],
    );
    let (code, out, err) = kc.run(&["sources"]).await;
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    assert_eq!(err, "No resources found\n");

    srv.push_events(&[event("s-1", Some("team-a"), "get")])
        .await;
    let pusher = srv.client(Some(support::server::PUSH_TOKEN));
    let body = fixtures::event_list("audit.k8s.io/v1", &[event("s-2", None, "get")]);
    assert_eq!(pusher.push("?source=apiserver-2", body).await.0, 200);
    assert_eq!(
        pusher
            .push("?source=apiserver-2", "{\"kind\":".to_owned())
            .await
            .0,
        400
    );

    let (code, out, err) = kc.run(&["sources"]).await;
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| {
            l.split("   ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect()
        })
        .collect();
    assert_eq!(
        rows[0],
        ["NAME", "READY", "LAST PUSH", "EVENTS/S", "RETRIES", "AGE"],
        "{out}"
    );
    assert_eq!(rows.len(), 3, "{out}");
    assert_eq!(rows[1][..2], ["apiserver-1", "True"], "{out}");
    assert_eq!(rows[2][..2], ["apiserver-2", "True"], "{out}");
    assert_eq!(rows[2][4], "0", "{out}");
    // The same rows kubectl prints, column for column.
    let kubectl = kc
        .command(Path::new("kubectl"), &["get", "sources.audit.k8s.io"])
        .output()
        .await
        .unwrap();
    let kubectl_rows: Vec<Vec<String>> = String::from_utf8_lossy(&kubectl.stdout)
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect();
    let ours: Vec<Vec<String>> = out
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect();
    // Ages may have moved on by a second between the two: NAME, READY and RETRIES.
    let pick = |rows: &[Vec<String>]| -> Vec<(String, String, String)> {
        rows.iter()
            .skip(1)
            .map(|r| (r[0].clone(), r[1].clone(), r[r.len() - 2].clone()))
            .collect()
    };
    assert_eq!(pick(&ours), pick(&kubectl_rows), "{out}");

    let (code, out, err) = kc.run(&["sources", "-o", "wide"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().next().unwrap().ends_with("LAST ERROR"), "{out}");
    assert!(
        out.contains("400 the body is not an audit EventList"),
        "{out}"
    );

    let (code, out, err) = kc.run(&["sources", "apiserver-2", "-o", "json"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    let object: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(object["kind"], "Source");
    assert_eq!(object["status"]["refusedByCode"][0]["code"], 400);
    let (code, out, _) = kc.run(&["sources", "-o", "json"]).await;
    assert_eq!(code, 0);
    let names: Vec<String> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["metadata"]["name"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(names, ["apiserver-1", "apiserver-2"]);
    let (code, out, _) = kc.run(&["sources", "apiserver-1", "-o", "yaml"]).await;
    assert_eq!(code, 0);
    assert!(
        out.starts_with("---\n") && out.contains("kind: Source"),
        "{out}"
    );

    let (code, _, err) = kc.run(&["sources", "nope"]).await;
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "Error from server (NotFound): sources.audit.k8s.io \"nope\" not found\n"
    );
    let (code, out, err) = kc.run(&["--context", "alice", "sources"]).await;
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(
        err,
        "Error from server (Forbidden): sources.audit.k8s.io is forbidden: User \"alice\" cannot list resource \"sources\" in API group \"audit.k8s.io\" at the cluster scope: No policy matched.\n\
         Check with: kubectl auth can-i list sources.audit.k8s.io --context alice\n"
    );
}

// `kubectl audit rbac`.

/// The objects of `yaml` as kubectl reads a manifest (`kubectl label --local` parses it
/// without a server, as `apply -f -` would, and prints what it read as JSON).
async fn kubectl_reads(yaml: &str) -> Vec<Value> {
    // A HOME and kubeconfig of its own, never the user's; --local reads neither.
    let home = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new("kubectl")
        .args([
            "label",
            "--local",
            "-f",
            "-",
            "kubectl-audit.test/parsed=true",
            "-o",
            "json",
        ])
        .env("KUBECONFIG", home.path().join("kubeconfig"))
        .env("HOME", home.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(yaml.as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .expect("kubectl hung")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "kubectl cannot read it: {stderr}\n{yaml}"
    );
    // One JSON object per object read, one after the other.
    serde_json::Deserializer::from_slice(&out.stdout)
        .into_iter::<Value>()
        .map(|o| {
            // As kubectl read it, less the label it was asked to add.
            let mut o = o.unwrap();
            let labels = o["metadata"]["labels"].as_object_mut().unwrap();
            labels.remove("kubectl-audit.test/parsed");
            o
        })
        .collect()
}

/// The policy's objects, typed: each must be the RBAC object its kind says.
fn typed(objects: &[Value]) -> Vec<String> {
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
    objects
        .iter()
        .map(|o| {
            let kind = o["kind"].as_str().unwrap().to_owned();
            let fits = match kind.as_str() {
                "Role" => serde_json::from_value::<Role>(o.clone()).is_ok(),
                "ClusterRole" => serde_json::from_value::<ClusterRole>(o.clone()).is_ok(),
                "RoleBinding" => serde_json::from_value::<RoleBinding>(o.clone()).is_ok(),
                "ClusterRoleBinding" => {
                    serde_json::from_value::<ClusterRoleBinding>(o.clone()).is_ok()
                }
                _ => false,
            };
            assert!(fits, "not an rbac.authorization.k8s.io/v1 object: {o}");
            let ns = o["metadata"]["namespace"].as_str().unwrap_or("-");
            format!("{kind} {ns}")
        })
        .collect()
}

/// The objects of a YAML text without its comments.
fn without_comments(yaml: &str) -> String {
    yaml.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn admin(srv: &TestServer) -> Kubeconfig {
    Kubeconfig::new(
        &srv.url(),
        &srv.ca_path(),
        &[
            ("admin", ADMIN_TOKEN, None),
            ("alice", ALICE_TOKEN, Some("team-a")),
        ],
    )
}

#[tokio::test]
async fn rbac_makes_the_roles_audit2rbac_documents_for_its_demo_log() {
    let srv = TestServer::start(&[]).await;
    let kc = admin(&srv);
    srv.push_events(&fixtures::lines("audit2rbac-demo.log"))
        .await;

    // alice: the lines audit2rbac's README shows for this log (its Role and RoleBinding),
    // every one the same; audit2rbac prints no comments, nor a `---` before the first
    // document.
    let (code, out, err) = kc.run(&["rbac", "--user", "alice"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        without_comments(&out),
        r#"---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  labels:
    audit2rbac.liggitt.net/generated: "true"
    audit2rbac.liggitt.net/user: alice
  name: audit2rbac:alice
  namespace: ns1
rules:
- apiGroups:
  - ""
  resources:
  - configmaps
  - pods
  - secrets
  verbs:
  - get
  - list
  - watch
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  labels:
    audit2rbac.liggitt.net/generated: "true"
    audit2rbac.liggitt.net/user: alice
  name: audit2rbac:alice
  namespace: ns1
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: audit2rbac:alice
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: alice
"#
    );
    // Her three requests were refused: what she needs, listed first.
    let comments: Vec<&str> = out.lines().take_while(|l| l.starts_with('#')).collect();
    assert_eq!(
        comments,
        [
            r#"# 3 denied requests of alice (HTTP 403, or an authorizer's "forbid"), which the policy below grants;"#,
            "# check each once it is applied:",
            "#   kubectl auth can-i list configmaps -n ns1 --as alice",
            "#   kubectl auth can-i list pods -n ns1 --as alice",
            "#   kubectl auth can-i list secrets -n ns1 --as alice",
        ]
    );
    assert_eq!(
        typed(&kubectl_reads(&out).await),
        ["Role ns1", "RoleBinding ns1"]
    );

    // The service account: bound as one; its list of pods in every namespace is the
    // ClusterRole audit2rbac makes (nodes and pods), which also covers its list in default.
    let sa = "system:serviceaccount:ns1:sa1";
    let (code, out, err) = kc.run(&["rbac", "--user", sa]).await;
    assert_eq!(code, 0, "{err}");
    let objects = kubectl_reads(&out).await;
    assert_eq!(typed(&objects), ["ClusterRole -", "ClusterRoleBinding -"]);
    assert_eq!(
        objects[0]["rules"],
        serde_json::json!([{"apiGroups": [""], "resources": ["nodes", "pods"], "verbs": ["get", "list", "watch"]}])
    );
    assert_eq!(
        objects[1]["subjects"],
        serde_json::json!([{"kind": "ServiceAccount", "name": "sa1", "namespace": "ns1"}])
    );
    assert_eq!(
        objects[1]["metadata"]["name"],
        "audit2rbac:system:serviceaccount:ns1:sa1"
    );

    // bob: audit2rbac puts his list of pods (in default and in ns1) in its ClusterRole
    // with nodes (--expand-multi-namespace, on by default); here each namespace keeps
    // its own Role, the least that allows it. His discovery requests (get /api, /apis/…)
    // every user may make already: no rule, as in audit2rbac.
    let (code, out, err) = kc.run(&["rbac", "--user", "bob"]).await;
    assert_eq!(code, 0, "{err}");
    let objects = kubectl_reads(&out).await;
    assert_eq!(
        typed(&objects),
        [
            "Role default",
            "Role ns1",
            "ClusterRole -",
            "RoleBinding default",
            "RoleBinding ns1",
            "ClusterRoleBinding -"
        ]
    );
    assert_eq!(
        objects[2]["rules"],
        serde_json::json!([{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}])
    );
    for role in &objects[..2] {
        assert_eq!(
            role["rules"],
            serde_json::json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}])
        );
    }

    // -n: bob's requests in default alone, read from that namespace's events.
    let (code, out, err) = kc.run(&["rbac", "--user", "bob", "-n", "default"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        typed(&kubectl_reads(&out).await),
        ["Role default", "RoleBinding default"]
    );
    assert!(
        out.contains("#   kubectl auth can-i list pods -n default --as bob\n"),
        "{out}"
    );
    assert!(!out.contains("nodes"), "{out}");

    // A user the window has no event of: no policy, and why on stderr.
    let (code, out, err) = kc.run(&["rbac", "--user", "carol"]).await;
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    assert_eq!(
        err,
        "No audit events of user \"carol\" anywhere in the server's window: no policy.\n"
    );
    let (code, out, err) = kc.run(&["rbac", "--user", "alice", "-n", "default"]).await;
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    assert!(err.contains("in namespace default"), "{err}");
}

#[tokio::test]
async fn rbac_of_a_service_account_in_its_namespace_with_names_and_live() {
    let srv = TestServer::start(&[]).await;
    let kc = admin(&srv);
    let builder = "system:serviceaccount:team-a:builder";
    let mut denied: Value = serde_json::from_str(&event_of(
        "e3", "team-a", builder, "get", "secrets", "token", 3,
    ))
    .unwrap();
    denied["responseStatus"] = serde_json::json!({"code": 403, "reason": "Forbidden"});
    srv.push_events(&[
        event_of("e1", "team-a", builder, "get", "configmaps", "settings", 1),
        event_of(
            "e2",
            "team-a",
            builder,
            "update",
            "configmaps",
            "settings",
            2,
        ),
        denied.to_string(),
        event_of("e4", "team-b", builder, "get", "configmaps", "other", 4),
    ])
    .await;

    // As alice, who may read team-a's events only: her namespace's Role.
    let (code, out, err) = kc
        .run(&[
            "rbac",
            "--user",
            builder,
            "--context",
            "alice",
            "-n",
            "team-a",
            "--resource-names",
        ])
        .await;
    assert_eq!(code, 0, "{err}");
    let objects = kubectl_reads(&out).await;
    assert_eq!(typed(&objects), ["Role team-a", "RoleBinding team-a"]);
    assert_eq!(
        objects[0]["rules"],
        serde_json::json!([
            {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["settings"], "verbs": ["get", "patch", "update"]},
            {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["token"], "verbs": ["get"]},
        ])
    );
    assert_eq!(
        objects[1]["subjects"],
        serde_json::json!([{"kind": "ServiceAccount", "name": "builder", "namespace": "team-a"}])
    );
    assert!(
        out.starts_with(
            "# 1 denied request of system:serviceaccount:team-a:builder (HTTP 403, or an authorizer's \"forbid\"), which the policy below grants;\n# check each once it is applied:\n#   kubectl auth can-i get secrets/token -n team-a --as system:serviceaccount:team-a:builder\n---\n"
        ),
        "{out}"
    );
    // Without --resource-names, rules for every object of the resource.
    let (code, out, _) = kc
        .run(&[
            "rbac",
            "--user",
            builder,
            "--context",
            "alice",
            "-n",
            "team-a",
        ])
        .await;
    assert_eq!(code, 0);
    assert!(!out.contains("resourceNames"), "{out}");
    // Every event: team-b's get of a configmap too.
    let (_, out, _) = kc.run(&["rbac", "--user", builder]).await;
    assert_eq!(
        typed(&kubectl_reads(&out).await),
        [
            "Role team-a",
            "Role team-b",
            "RoleBinding team-a",
            "RoleBinding team-b"
        ]
    );
    // YAML only, and every event needs an administrator's permission.
    let (code, _, err) = kc.run(&["rbac", "--user", builder, "-o", "json"]).await;
    assert_eq!(code, 1);
    assert!(err.starts_with("error: rbac prints YAML"), "{err}");
    let (code, _, err) = kc
        .run(&["rbac", "--user", builder, "--context", "alice", "-A"])
        .await;
    assert_eq!(code, 1);
    assert!(
        err.ends_with("Check with: kubectl auth can-i list namespacedevents.audit.k8s.io --all-namespaces --context alice\n"),
        "{err}"
    );

    // -w: the policy, then the whole policy again once a new request makes it grow.
    let mut live = kc.spawn(&["rbac", "--user", builder, "-n", "team-a", "-w"]);
    let first = policy_lines(&mut live).await;
    assert!(
        first.contains("  - configmaps\n") && !first.contains("pods"),
        "{first}"
    );
    watchers(&srv, 1).await;
    // The same request again: no new policy; a new one: all of it again.
    srv.push_events(&[
        event_of("e5", "team-a", builder, "get", "configmaps", "settings", 5),
        event_of("e6", "team-a", builder, "create", "pods", "build-1", 6),
    ])
    .await;
    assert_eq!(live.line().await, "");
    assert_eq!(live.line().await, "# The policy grew: all of it again.");
    let second = policy_lines(&mut live).await;
    assert!(second.starts_with("# 1 denied request"), "{second}");
    let objects = kubectl_reads(&second).await;
    assert_eq!(
        objects[0]["rules"],
        serde_json::json!([
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "patch", "update"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]},
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
        ])
    );
    assert!(live.stderr().is_empty(), "{:?}", live.stderr());
}

/// The lines of one whole policy of one namespace a running `rbac -w` prints, up to the
/// last line of its RoleBinding (its subject's namespace, a ServiceAccount's last field).
async fn policy_lines(running: &mut Running) -> String {
    let mut text = String::new();
    let mut in_subjects = false;
    loop {
        let line = running.line().await;
        in_subjects |= line == "subjects:";
        text.push_str(&line);
        text.push('\n');
        if in_subjects && line.starts_with("  namespace: ") {
            return text;
        }
    }
}
