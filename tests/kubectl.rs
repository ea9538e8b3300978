//! The real kubectl against the server, with a temporary HOME and kubeconfig (never the
//! user's ~/.kube): `get --raw` watches as alice, Status errors as kubectl prints them,
//! and `kubectl get` as with a built-in resource (rows from server-side Tables, `-w`,
//! `-o wide`, `-o json`, `--field-selector`, `get NAME`, Forbidden), across every
//! kubectl version installed beside the default one.

mod support;

use std::path::PathBuf;

use tokio::io::AsyncBufReadExt;

use support::fixtures::{event, event_list};
use support::kubectl::Kubectl;
use support::server::{ALICE_TOKEN, PUSH_TOKEN, TestServer};

const TEAM_A: &str = "/apis/audit.k8s.io/v1alpha1/namespaces/team-a/namespacedevents?watch=1";

/// `kubectl` from PATH, then any `kubectl.1.NN` beside the file it resolves to.
fn kubectls() -> Vec<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let main = std::env::split_paths(&path)
        .map(|d| d.join("kubectl"))
        .find(|p| p.is_file())
        .expect("kubectl must be on PATH for these tests");
    let mut all = vec![main.clone()];
    if let Some(dir) = std::fs::canonicalize(&main)
        .ok()
        .and_then(|p| p.parent().map(PathBuf::from))
    {
        let mut versions: Vec<PathBuf> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("kubectl.1."))
            })
            .collect();
        versions.sort();
        all.extend(versions);
    }
    all
}

#[tokio::test]
async fn alice_watches_her_namespace_with_every_kubectl() {
    let srv = TestServer::start(&[]).await;
    for (round, bin) in kubectls().into_iter().enumerate() {
        let k = Kubectl::new(bin.clone(), &srv);
        let mut child = k
            .command(Some(ALICE_TOKEN), &["get", "--raw", TEAM_A])
            .spawn()
            .unwrap();
        support::eventually("kubectl's watch to open", || async {
            let (_, body) = srv
                .client(Some(support::server::ADMIN_TOKEN))
                .get("/metrics")
                .await;
            String::from_utf8_lossy(&body)
                .contains("kube_audit_stream_watch_watchers{resource=\"namespacedevents\"} 1")
        })
        .await;
        let ids = [
            format!("a-{round}"),
            format!("b-{round}"),
            format!("a2-{round}"),
        ];
        let items = [
            event(&ids[0], Some("team-a"), "get"),
            event(&ids[1], Some("team-b"), "get"),
            event(&ids[2], Some("team-a"), "delete"),
        ];
        let (code, _) = srv
            .client(Some(PUSH_TOKEN))
            .push("", event_list("audit.k8s.io/v1", &items))
            .await;
        assert_eq!(code, 200);

        let got: Vec<String> = support::json_lines(child.stdout.take().unwrap(), 2)
            .await
            .iter()
            .map(|v| v["object"]["auditID"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            got,
            [ids[0].clone(), ids[2].clone()],
            "{}: team-a only, in order",
            bin.display()
        );
        child.kill().await.unwrap();
        support::eventually("the watch to close", || async {
            let (_, body) = srv
                .client(Some(support::server::ADMIN_TOKEN))
                .get("/metrics")
                .await;
            String::from_utf8_lossy(&body)
                .contains("kube_audit_stream_watch_watchers{resource=\"namespacedevents\"} 0")
        })
        .await;
    }
}

#[tokio::test]
async fn kubectl_prints_our_status_errors() {
    let srv = TestServer::start(&[]).await;
    let k = Kubectl::new(kubectls().remove(0), &srv);
    let team_b = "/apis/audit.k8s.io/v1alpha1/namespaces/team-b/namespacedevents?watch=1";
    let (ok, _, stderr) = k.run(Some(ALICE_TOKEN), &["get", "--raw", team_b]).await;
    assert!(!ok);
    assert!(
        stderr.contains(r#"Error from server (Forbidden): namespacedevents.audit.k8s.io is forbidden: User "alice" cannot watch resource "namespacedevents" in API group "audit.k8s.io" in the namespace "team-b""#),
        "{stderr}"
    );
    // (Without any credentials kubectl prompts for a user name instead of asking.)
    let (ok, _, stderr) = k.run(Some("wrong-token"), &["get", "--raw", TEAM_A]).await;
    assert!(!ok);
    assert!(
        stderr.contains("You must be logged in to the server (Unauthorized)"),
        "{stderr}"
    );
    let (ok, stdout, _) = k
        .run(
            Some(ALICE_TOKEN),
            &["get", "--raw", "/apis/audit.k8s.io/v1alpha1"],
        )
        .await;
    assert!(ok);
    assert!(stdout.contains("\"namespacedevents\""));
    // Discovery tells the truth: `kubectl api-resources -o wide` lists the verbs served.
    let (ok, stdout, stderr) = k
        .run(
            Some(ALICE_TOKEN),
            &["api-resources", "--api-group=audit.k8s.io", "-o", "wide"],
        )
        .await;
    assert!(ok, "{stderr}");
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    // events, namespacedevents and sources.
    assert_eq!(rows.len(), 3, "{stdout}");
    for row in rows {
        assert!(row.contains(&"get,list,watch"), "{stdout}");
    }
}

/// Read a child's output lines until one contains `want`; the lines read.
async fn lines_until(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    want: &str,
) -> Vec<String> {
    let mut seen = vec![];
    loop {
        let line = tokio::time::timeout(support::DEADLINE, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no line with {want:?} within the deadline: {seen:?}"))
            .expect("reading kubectl's output")
            .unwrap_or_else(|| panic!("kubectl ended before printing {want:?}: {seen:?}"));
        let done = line.contains(want);
        seen.push(line);
        if done {
            return seen;
        }
    }
}

#[tokio::test]
async fn kubectl_get_works_as_for_a_built_in_resource_with_every_kubectl() {
    let srv = TestServer::start(&[]).await;
    let pusher = srv.client(Some(PUSH_TOKEN));
    let resource = "namespacedevents.audit.k8s.io";
    for (round, bin) in kubectls().into_iter().enumerate() {
        let v = bin.display().to_string();
        let k = Kubectl::new(bin, &srv);
        let (get, del, other) = (
            format!("get-{round}"),
            format!("del-{round}"),
            format!("b-{round}"),
        );
        let items = [
            event(&get, Some("team-a"), "get"),
            event(&del, Some("team-a"), "delete"),
            event(&other, Some("team-b"), "get"),
        ];
        let (code, _) = pusher.push("", event_list("audit.k8s.io/v1", &items)).await;
        assert_eq!(code, 200);
        let get_name = format!("{get}-responsecomplete");
        let del_name = format!("{del}-responsecomplete");

        // `get`: a header and rows, from the server's Table.
        let (ok, out, err) = k
            .run(Some(ALICE_TOKEN), &["get", resource, "-n", "team-a"])
            .await;
        assert!(ok, "{v}: {err}");
        let mut rows = out.lines();
        let header: Vec<&str> = rows.next().unwrap_or_default().split_whitespace().collect();
        assert_eq!(
            header,
            [
                "TIME",
                "SOURCE",
                "USER",
                "VERB",
                "RESOURCE",
                "NAMESPACE",
                "NAME",
                "CODE",
                "STAGE"
            ],
            "{v}: {out}"
        );
        let row: Vec<&str> = rows.next().unwrap_or_default().split_whitespace().collect();
        assert_eq!(
            row,
            [
                "2026-01-01T10:00:00.100000Z",
                "apiserver-1",
                "bob",
                "get",
                "configmaps",
                "team-a",
                "cm",
                "200",
                "ResponseComplete"
            ],
            "{v}: {out}"
        );
        // Each earlier round left two team-a events and one from its `-w`.
        let want = 1 + 3 * round + 2;
        assert_eq!(out.lines().count(), want, "{v}: team-a only: {out}");

        // `--chunk-size`: pages of one, followed to the end, print the same rows.
        let (ok, chunked, err) = k
            .run(
                Some(ALICE_TOKEN),
                &["get", resource, "-n", "team-a", "--chunk-size=1"],
            )
            .await;
        assert!(ok, "{v}: {err}");
        assert_eq!(chunked, out, "{v}");

        // `-o wide`: the wider columns, the event's name among them.
        let (ok, out, err) = k
            .run(
                Some(ALICE_TOKEN),
                &["get", resource, "-n", "team-a", "-o", "wide"],
            )
            .await;
        assert!(ok, "{v}: {err}");
        assert!(
            out.lines().next().unwrap_or_default().contains("LATENCY"),
            "{v}: {out}"
        );
        assert!(
            out.contains(&get_name) && out.contains("100ms"),
            "{v}: {out}"
        );

        // `-o json`: the events themselves.
        let (ok, out, err) = k
            .run(
                Some(ALICE_TOKEN),
                &["get", resource, "-n", "team-a", "-o", "json"],
            )
            .await;
        assert!(ok, "{v}: {err}");
        let list: serde_json::Value = serde_json::from_str(&out).unwrap();
        let ids: Vec<&str> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["auditID"].as_str().unwrap())
            .collect();
        assert!(
            ids.contains(&get.as_str()) && !ids.contains(&other.as_str()),
            "{v}: {ids:?}"
        );

        // `--field-selector verb=delete`.
        let (ok, out, err) = k
            .run(
                Some(ALICE_TOKEN),
                &[
                    "get",
                    resource,
                    "-n",
                    "team-a",
                    "--field-selector",
                    "verb=delete",
                    "-o",
                    "wide",
                ],
            )
            .await;
        assert!(ok, "{v}: {err}");
        assert!(
            out.contains(&del_name) && !out.contains(&get_name),
            "{v}: {out}"
        );
        assert!(
            out.lines().skip(1).all(|l| l.contains(" delete ")),
            "{v}: {out}"
        );

        // `-o yaml`.
        let (ok, out, err) = k
            .run(
                Some(ALICE_TOKEN),
                &["get", resource, "-n", "team-a", &del_name, "-o", "yaml"],
            )
            .await;
        assert!(ok, "{v}: {err}");
        assert!(out.contains(&format!("auditID: {del}")), "{v}: {out}");

        // `get NAME`.
        let (ok, out, err) = k
            .run(
                Some(ALICE_TOKEN),
                &["get", resource, "-n", "team-a", &del_name, "-o", "wide"],
            )
            .await;
        assert!(ok, "{v}: {err}");
        assert_eq!(out.lines().count(), 2, "{v}: {out}");
        assert!(out.contains(&del_name), "{v}: {out}");

        // A namespace alice may not read: kubectl's usual Forbidden line.
        let (ok, _, err) = k
            .run(Some(ALICE_TOKEN), &["get", resource, "-n", "team-b"])
            .await;
        assert!(!ok);
        assert!(
            err.contains(r#"Error from server (Forbidden): namespacedevents.audit.k8s.io is forbidden: User "alice" cannot list resource "namespacedevents" in API group "audit.k8s.io" in the namespace "team-b""#),
            "{v}: {err}"
        );

        // `get -w`: the rows there are, then a new row for each event pushed.
        let mut child = k
            .command(
                Some(ALICE_TOKEN),
                &[
                    "get",
                    resource,
                    "-n",
                    "team-a",
                    "-w",
                    "-o",
                    "wide",
                    "--request-timeout=60s",
                ],
            )
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let listed = lines_until(&mut lines, &del_name).await;
        assert!(listed[0].contains("TIME"), "{v}: {listed:?}");
        let live = format!("live-{round}");
        let live_name = format!("{live}-responsecomplete");
        let (code, _) = pusher
            .push(
                "",
                event_list(
                    "audit.k8s.io/v1",
                    &[
                        event(&format!("x-{round}"), Some("team-b"), "get"),
                        event(&live, Some("team-a"), "patch"),
                    ],
                ),
            )
            .await;
        assert_eq!(code, 200);
        let watched = lines_until(&mut lines, &live_name).await;
        assert_eq!(
            watched.len(),
            1,
            "{v}: one new row, no header again: {watched:?}"
        );
        assert!(watched[0].contains(" patch "), "{v}: {watched:?}");
        child.kill().await.unwrap();

        // `get NAME -w --output-watch-events`: the event, as an ADDED row (the watch
        // selects it with metadata.name).
        let mut child = k
            .command(
                Some(ALICE_TOKEN),
                &[
                    "get",
                    resource,
                    "-n",
                    "team-a",
                    &del_name,
                    "-w",
                    "--output-watch-events",
                ],
            )
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let rows = lines_until(&mut lines, "ADDED").await;
        assert!(rows[0].starts_with("EVENT"), "{v}: {rows:?}");
        assert!(rows.last().unwrap().contains(" delete "), "{v}: {rows:?}");
        child.kill().await.unwrap();
    }
}

/// One event watched by name with the real kubectl: `get NAME -w` (which sends
/// `fieldSelector=metadata.name=NAME`, authorized with the name) prints its row, then a
/// row for each later event of that name and none for the others; `get --raw` on the
/// `/watch/…/NAME` path (kube-apiserver's named watch) streams the same event.
#[tokio::test]
async fn kubectl_watches_one_event_by_name() {
    let srv = TestServer::start(&[]).await;
    let k = Kubectl::new(kubectls().remove(0), &srv);
    let pusher = srv.client(Some(PUSH_TOKEN));
    let push = |items: Vec<String>| {
        let pusher = pusher.clone();
        async move {
            let (code, _) = pusher.push("", event_list("audit.k8s.io/v1", &items)).await;
            assert_eq!(code, 200);
        }
    };
    push(vec![
        event("one", Some("team-a"), "get"),
        event("other", Some("team-a"), "get"),
    ])
    .await;
    let name = "one-responsecomplete";
    let mut child = k
        .command(
            Some(ALICE_TOKEN),
            &[
                "get",
                "namespacedevents.audit.k8s.io",
                name,
                "-n",
                "team-a",
                "-w",
                "-o",
                "wide",
            ],
        )
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines_until(&mut lines, name).await;
    assert!(first[0].contains("TIME"), "{first:?}");
    // Another event of the namespace, then the same name again (its retried request,
    // say): one new row, the second.
    push(vec![
        event("other-2", Some("team-a"), "get"),
        event("one", Some("team-a"), "update"),
    ])
    .await;
    let next = lines_until(&mut lines, name).await;
    assert_eq!(next.len(), 1, "no row for other events: {next:?}");
    assert!(next[0].contains(" update "), "{next:?}");
    child.kill().await.unwrap();

    let path = format!(
        "/apis/audit.k8s.io/v1alpha1/watch/namespaces/team-a/namespacedevents/{name}?resourceVersion=0"
    );
    let mut raw = k
        .command(Some(ALICE_TOKEN), &["get", "--raw", &path])
        .spawn()
        .unwrap();
    let got = support::json_lines(raw.stdout.take().unwrap(), 2).await;
    let verbs: Vec<&str> = got
        .iter()
        .map(|l| l["object"]["verb"].as_str().unwrap())
        .collect();
    assert_eq!(verbs, ["get", "update"], "{got:?}");
    assert!(got.iter().all(|l| l["object"]["metadata"]["name"] == name));
    raw.kill().await.unwrap();
}

/// `kubectl get -w` prints every watch event it gets as a row, bookmarks included. A
/// Table watch's bookmark is a one-row Table, as kube-apiserver prints it, whose row
/// keeps the bookmark's metadata (the dropped count) and whose first cell says what was
/// lost: the user sees one warning line where the events are missing, and no blank row.
#[tokio::test]
async fn kubectl_get_w_is_told_of_dropped_events() {
    // About one row's worth of budget a second: a burst of pushed events is mostly lost.
    let srv = TestServer::start(&[
        "--watcher-bytes-per-second",
        "1000",
        "--watcher-burst-bytes",
        "4000",
    ])
    .await;
    let k = Kubectl::new(kubectls().remove(0), &srv);
    let pusher = srv.client(Some(PUSH_TOKEN));
    let (code, _) = pusher
        .push(
            "",
            event_list("audit.k8s.io/v1", &[event("listed", Some("team-a"), "get")]),
        )
        .await;
    assert_eq!(code, 200);
    let mut child = k
        .command(
            Some(ALICE_TOKEN),
            &[
                "get",
                "namespacedevents.audit.k8s.io",
                "-n",
                "team-a",
                "-w",
                "-o",
                "wide",
            ],
        )
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let listed = lines_until(&mut lines, "listed").await;
    assert!(listed[0].starts_with("TIME"), "{listed:?}");
    support::eventually("kubectl's watch to open", || async {
        let (_, body) = srv
            .client(Some(support::server::ADMIN_TOKEN))
            .get("/metrics")
            .await;
        String::from_utf8_lossy(&body)
            .contains("kube_audit_stream_watch_watchers{resource=\"namespacedevents\"} 1")
    })
    .await;
    let burst: Vec<String> = (0..30)
        .map(|i| event(&format!("burst-{i}"), Some("team-a"), "get"))
        .collect();
    let (code, _) = pusher.push("", event_list("audit.k8s.io/v1", &burst)).await;
    assert_eq!(code, 200);
    let seen = lines_until(&mut lines, "dropped").await;
    let warning = seen.last().unwrap();
    assert!(
        warning.trim_end().starts_with("Warning: ")
            && warning.contains(" audit events dropped here"),
        "{seen:?}"
    );
    let rows = &seen[..seen.len() - 1];
    assert!(
        rows.iter().all(|r| r.contains("burst-")),
        "only event rows before it, none blank: {seen:?}"
    );
    let dropped: u64 = warning
        .trim_start_matches("Warning: ")
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a count: {warning}"));
    assert!(dropped > 0 && rows.len() as u64 + dropped <= 30, "{seen:?}");
    child.kill().await.unwrap();
}
