//! LIST, GET, Tables and WatchList, black-box over HTTP: what the window holds and
//! nothing older, paging that returns every event once, kube-apiserver's errors (410
//! for an expired continue token or resourceVersion, 404 for a name that left the
//! window, 422 for invalid list options), server-side Tables on LIST, GET and WATCH, and
//! a WatchList that ends its initial events with the annotated bookmark; LISTs streamed
//! and capped in flight.

mod support;

use std::collections::BTreeSet;

use http::StatusCode;
use support::fixtures::{self, event};
use support::server::{ADMIN_TOKEN, ALICE_TOKEN, BOB_TOKEN, TestServer};

const EVENTS: &str = "/apis/audit.k8s.io/v1alpha1/events";
const TEAM_A: &str = "/apis/audit.k8s.io/v1alpha1/namespaces/team-a/namespacedevents";
const TEAM_B: &str = "/apis/audit.k8s.io/v1alpha1/namespaces/team-b/namespacedevents";
const TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";

fn ids(list: &serde_json::Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items: {list}"))
        .iter()
        .map(|o| o["auditID"].as_str().unwrap().to_owned())
        .collect()
}

/// Every page of a LIST with `limit`, following `continue` to the end.
async fn pages(srv: &TestServer, path: &str, limit: usize) -> (Vec<String>, usize, String) {
    let admin = srv.client(Some(ADMIN_TOKEN));
    let (mut all, mut count, mut rv) = (vec![], 0, String::new());
    let mut token: Option<String> = None;
    loop {
        let mut url = format!("{path}?limit={limit}");
        if let Some(t) = &token {
            url.push_str(&format!("&continue={t}"));
        }
        let (code, page) = admin.get_json(&url).await;
        assert_eq!(code, StatusCode::OK, "{page}");
        assert!(page["items"].as_array().unwrap().len() <= limit);
        let page_rv = page["metadata"]["resourceVersion"].as_str().unwrap();
        if count > 0 {
            assert_eq!(
                page_rv, rv,
                "every page is of the first page's resourceVersion"
            );
        }
        rv = page_rv.to_owned();
        all.extend(ids(&page));
        count += 1;
        match page["metadata"]["continue"].as_str() {
            Some(t) => token = Some(t.to_owned()),
            None => return (all, count, rv),
        }
    }
}

#[tokio::test]
async fn list_returns_the_window_in_pages_each_event_once() {
    let srv = TestServer::start(&["--window-events", "20"]).await;
    let items: Vec<String> = (0..25)
        .map(|i| {
            let ns = ["team-a", "team-b"][i % 2];
            event(&format!("e-{i:02}"), Some(ns), "get")
        })
        .collect();
    srv.push_events(&items).await;

    // The window (the last 20), not history: e-00..e-04 are gone.
    let want: Vec<String> = (5..25).map(|i| format!("e-{i:02}")).collect();
    let (code, list) = srv.client(Some(ADMIN_TOKEN)).get_json(EVENTS).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(list["kind"], "EventList");
    assert_eq!(list["apiVersion"], "audit.k8s.io/v1alpha1");
    assert_eq!(list["metadata"]["resourceVersion"], srv.rv(25));
    assert!(list["metadata"].get("continue").is_none());
    assert_eq!(ids(&list), want);
    let first = &list["items"][0];
    assert_eq!(first["kind"], "Event");
    assert_eq!(first["metadata"]["name"], "e-05-responsecomplete");
    assert_eq!(first["metadata"]["resourceVersion"], srv.rv(6));

    for limit in [1, 3, 7, 20, 50] {
        let (got, count, rv) = pages(&srv, EVENTS, limit).await;
        assert_eq!(got, want, "limit {limit}");
        assert_eq!(count, want.len().div_ceil(limit).max(1), "limit {limit}");
        assert_eq!(rv, srv.rv(25));
    }
    // A page boundary while events keep arriving: the pages stay at their snapshot.
    let admin = srv.client(Some(ADMIN_TOKEN));
    let (_, page) = admin.get_json(&format!("{TEAM_A}?limit=4")).await;
    let token = page["metadata"]["continue"].as_str().unwrap().to_owned();
    srv.push_events(&[event("late", Some("team-a"), "get")])
        .await;
    let (_, rest) = admin
        .get_json(&format!("{TEAM_A}?limit=100&continue={token}"))
        .await;
    let mut team_a = ids(&page);
    team_a.extend(ids(&rest));
    let want_a: Vec<String> = (6..25).step_by(2).map(|i| format!("e-{i:02}")).collect();
    assert_eq!(team_a, want_a, "once each, nothing from after the snapshot");
    assert_eq!(rest["metadata"]["resourceVersion"], srv.rv(25));
    let set: BTreeSet<_> = team_a.iter().collect();
    assert_eq!(set.len(), team_a.len());
}

/// An event's field as a selector reads it: text, a number as its decimal text, absent
/// as "".
fn field(event: &serde_json::Value, path: &str) -> String {
    let v = path.split('.').fold(event, |v, key| &v[key]);
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Whether an event should match a selector, read from its JSON.
type Oracle = fn(&serde_json::Value) -> bool;

fn is(event: &serde_json::Value, path: &str, value: &str) -> bool {
    field(event, path) == value
}

/// Field selectors on a LIST, over the real events of many users, verbs, namespaces and
/// codes: each returns exactly the events whose fields match, in order, and no other.
#[tokio::test]
async fn field_selectors_list_exactly_the_matching_events() {
    let srv = TestServer::start(&[]).await;
    let lines = fixtures::lines("all-events.jsonl");
    let events: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    srv.push_events(&lines).await;
    let admin = srv.client(Some(ADMIN_TOKEN));
    let identity = |v: &serde_json::Value| format!("{}/{}", field(v, "auditID"), field(v, "stage"));
    let cases: [(&str, Oracle); 7] = [
        ("verb=delete", |e| is(e, "verb", "delete")),
        ("responseStatus.code=403", |e| {
            is(e, "responseStatus.code", "403")
        }),
        ("objectRef.namespace=default,responseStatus.code=200", |e| {
            is(e, "objectRef.namespace", "default") && is(e, "responseStatus.code", "200")
        }),
        ("user.username=system:admin,verb!=get", |e| {
            is(e, "user.username", "system:admin") && !is(e, "verb", "get")
        }),
        (
            "responseStatus.code!=200,objectRef.resource=configmaps",
            |e| !is(e, "responseStatus.code", "200") && is(e, "objectRef.resource", "configmaps"),
        ),
        ("verb in (patch,update),level=RequestResponse", |e| {
            (is(e, "verb", "patch") || is(e, "verb", "update")) && is(e, "level", "RequestResponse")
        }),
        ("stage=ResponseStarted", |e| {
            is(e, "stage", "ResponseStarted")
        }),
    ];
    for (selector, matches) in cases {
        let want: Vec<String> = events.iter().filter(|e| matches(e)).map(identity).collect();
        // Neither everything nor nothing: a selector that matched all, or none, would fail.
        assert!(
            !want.is_empty() && want.len() < events.len(),
            "{selector}: {} of {}",
            want.len(),
            events.len()
        );
        let query: String = form_urlencoded::byte_serialize(selector.as_bytes()).collect();
        let (code, list) = admin
            .get_json(&format!("{EVENTS}?fieldSelector={query}"))
            .await;
        assert_eq!(code, StatusCode::OK, "{selector}: {list}");
        let got: Vec<String> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(identity)
            .collect();
        assert_eq!(got, want, "{selector}");
    }
}

#[tokio::test]
async fn expired_continue_and_resource_versions_get_kube_apiserver_errors() {
    let srv = TestServer::start(&["--window-events", "4"]).await;
    let admin = srv.client(Some(ADMIN_TOKEN));
    srv.push_events(
        &(0..4)
            .map(|i| event(&format!("x-{i}"), None, "get"))
            .collect::<Vec<_>>(),
    )
    .await;
    let (_, page) = admin.get_json(&format!("{EVENTS}?limit=1")).await;
    assert_eq!(ids(&page), ["x-0"]);
    let token = page["metadata"]["continue"].as_str().unwrap().to_owned();
    // Four more: the window moved past the page's end.
    srv.push_events(
        &(4..8)
            .map(|i| event(&format!("x-{i}"), None, "get"))
            .collect::<Vec<_>>(),
    )
    .await;
    let (code, status) = admin
        .get_json(&format!("{EVENTS}?limit=1&continue={token}"))
        .await;
    assert_eq!(code, StatusCode::GONE);
    assert_eq!(status["reason"], "Expired");
    assert!(
        status["message"].as_str().unwrap().starts_with(
            "The provided continue parameter is too old to display a consistent list result."
        ),
        "{status}"
    );
    // The token it hands back continues, inconsistently, from what is left.
    let inconsistent = status["metadata"]["continue"].as_str().unwrap();
    let (code, rest) = admin
        .get_json(&format!("{EVENTS}?continue={inconsistent}"))
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(ids(&rest), ["x-4", "x-5", "x-6", "x-7"]);

    for (query, code, reason) in [
        (
            format!("resourceVersion={}", srv.rv(2)),
            StatusCode::GONE,
            "Expired",
        ),
        (
            format!("resourceVersion={}&resourceVersionMatch=Exact", srv.rv(2)),
            StatusCode::GONE,
            "Expired",
        ),
        // From before this run (a restarted server's): too old, never another event.
        ("resourceVersion=7".into(), StatusCode::GONE, "Expired"),
        (
            format!("resourceVersion={}", srv.rv(99)),
            StatusCode::GATEWAY_TIMEOUT,
            "Timeout",
        ),
        (
            "resourceVersionMatch=Exact".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
        ),
        (
            "continue=garbage".into(),
            StatusCode::BAD_REQUEST,
            "BadRequest",
        ),
        (
            "fieldSelector=spec.nodeName%3Dx".into(),
            StatusCode::BAD_REQUEST,
            "BadRequest",
        ),
    ] {
        let (got, status) = admin.get_json(&format!("{EVENTS}?{query}")).await;
        assert_eq!(
            (got, status["reason"].as_str()),
            (code, Some(reason)),
            "{query}: {status}"
        );
        assert_eq!(status["kind"], "Status");
    }
    let (_, status) = admin
        .get_json(&format!("{EVENTS}?resourceVersion={}", srv.rv(2)))
        .await;
    assert_eq!(
        status["message"],
        "The resourceVersion for the provided list is too old."
    );
    // "" and "0": what is there now; an Exact resourceVersion in the window: the window
    // as it was then.
    let exact = format!("resourceVersion={}", srv.rv(6));
    for query in ["resourceVersion=0", "resourceVersion=", &exact] {
        let (code, list) = admin.get_json(&format!("{EVENTS}?{query}")).await;
        assert_eq!(code, StatusCode::OK, "{query}");
        assert_eq!(ids(&list), ["x-4", "x-5", "x-6", "x-7"], "{query}");
        assert_eq!(list["metadata"]["resourceVersion"], srv.rv(8));
    }
    let (_, then) = admin
        .get_json(&format!(
            "{EVENTS}?resourceVersion={}&resourceVersionMatch=Exact",
            srv.rv(6)
        ))
        .await;
    assert_eq!(ids(&then), ["x-4", "x-5"]);
    assert_eq!(then["metadata"]["resourceVersion"], srv.rv(6));
}

#[tokio::test]
async fn get_by_name_while_in_the_window() {
    let srv = TestServer::start(&["--window-events", "3"]).await;
    srv.push_events(&[
        event("g-1", Some("team-a"), "get"),
        event("g-2", Some("team-b"), "get"),
    ])
    .await;
    let alice = srv.client(Some(ALICE_TOKEN));
    let (code, ev) = alice
        .get_json(&format!("{TEAM_A}/g-1-responsecomplete"))
        .await;
    assert_eq!(code, StatusCode::OK, "{ev}");
    assert_eq!(ev["kind"], "Event");
    assert_eq!(ev["auditID"], "g-1");
    assert_eq!(ev["metadata"]["resourceVersion"], srv.rv(1));
    // Another namespace's event is not in this one.
    let (code, status) = alice
        .get_json(&format!("{TEAM_A}/g-2-responsecomplete"))
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_eq!(
        status["message"],
        r#"namespacedevents.audit.k8s.io "g-2-responsecomplete" not found"#
    );
    assert_eq!(
        status["details"],
        serde_json::json!({"name": "g-2-responsecomplete", "group": "audit.k8s.io", "kind": "namespacedevents"})
    );
    let (code, status) = alice
        .get_json(&format!("{TEAM_B}/g-2-responsecomplete"))
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    assert_eq!(
        status["message"],
        r#"namespacedevents.audit.k8s.io "g-2-responsecomplete" is forbidden: User "alice" cannot get resource "namespacedevents" in API group "audit.k8s.io" in the namespace "team-b": No policy matched."#
    );
    // Once it leaves the window: 404, in kube-apiserver's words.
    srv.push_events(
        &(0..3)
            .map(|i| event(&format!("later-{i}"), None, "get"))
            .collect::<Vec<_>>(),
    )
    .await;
    let (code, status) = srv
        .client(Some(ADMIN_TOKEN))
        .get_json(&format!("{EVENTS}/g-1-responsecomplete"))
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_eq!(
        (status["reason"].as_str(), status["code"].as_u64()),
        (Some("NotFound"), Some(404))
    );
    assert_eq!(
        status["message"],
        r#"events.audit.k8s.io "g-1-responsecomplete" not found"#
    );
}

#[tokio::test]
async fn tables_on_list_get_and_watch() {
    let srv = TestServer::start(&[]).await;
    srv.push_events(&[
        event("t-1", Some("team-a"), "get"),
        event("t-2", Some("team-a"), "delete"),
    ])
    .await;
    let alice = srv.client(Some(ALICE_TOKEN));
    let (code, table) = alice.get_json_with(TEAM_A, &[("accept", TABLE)]).await;
    assert_eq!(code, StatusCode::OK, "{table}");
    assert_eq!(table["kind"], "Table");
    assert_eq!(table["apiVersion"], "meta.k8s.io/v1");
    assert_eq!(table["metadata"]["resourceVersion"], srv.rv(2));
    let columns: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["priority"] == 0)
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        columns,
        [
            "Time",
            "Source",
            "User",
            "Verb",
            "Resource",
            "Namespace",
            "Name",
            "Code",
            "Stage"
        ]
    );
    let rows = table["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        rows[1]["cells"],
        serde_json::json!([
            "2026-01-01T10:00:00.100000Z",
            "apiserver-1",
            "bob",
            "delete",
            "configmaps",
            "team-a",
            "cm",
            200,
            "ResponseComplete",
            "100ms",
            "",
            "",
            "t-2-responsecomplete"
        ])
    );
    // includeObject: Metadata by default, as kube-apiserver.
    assert_eq!(rows[0]["object"]["kind"], "PartialObjectMetadata");
    assert_eq!(rows[0]["object"]["metadata"]["namespace"], "team-a");
    let (_, full) = alice
        .get_json_with(
            &format!("{TEAM_A}?includeObject=Object&limit=1"),
            &[("accept", TABLE)],
        )
        .await;
    assert_eq!(full["rows"][0]["object"]["auditID"], "t-1");
    assert!(full["metadata"]["continue"].is_string());
    let (_, none) = alice
        .get_json_with(
            &format!("{TEAM_A}?includeObject=None"),
            &[("accept", TABLE)],
        )
        .await;
    assert!(none["rows"][0].get("object").is_none());
    // The v1beta1 form older kubectl asks for, and GET of one name.
    let (_, beta) = alice
        .get_json_with(
            &format!("{TEAM_A}/t-1-responsecomplete"),
            &[(
                "accept",
                "application/json;as=Table;v=v1beta1;g=meta.k8s.io",
            )],
        )
        .await;
    assert_eq!(beta["apiVersion"], "meta.k8s.io/v1beta1");
    assert_eq!(beta["metadata"]["resourceVersion"], srv.rv(1));
    assert_eq!(beta["rows"].as_array().unwrap().len(), 1);
    let (code, status) = alice
        .get_json_with(TEAM_A, &[("accept", "application/yaml")])
        .await;
    assert_eq!(
        (code, status["reason"].as_str()),
        (StatusCode::NOT_ACCEPTABLE, Some("NotAcceptable"))
    );

    // A Table watch: one-row Tables, the column definitions with the first only.
    let mut watch = alice
        .watch_with(
            &format!("{TEAM_A}?watch=1&resourceVersion=0"),
            &[("accept", TABLE)],
        )
        .await;
    srv.push_events(&[event("t-3", Some("team-a"), "get")])
        .await;
    let mut names = vec![];
    for i in 0..3 {
        let line = watch.next().await.unwrap();
        assert_eq!(line["type"], "ADDED");
        let t = &line["object"];
        assert_eq!(t["kind"], "Table");
        assert_eq!(t["rows"].as_array().unwrap().len(), 1);
        assert_eq!(t["metadata"]["resourceVersion"], srv.rv(i + 1));
        let defs = t["columnDefinitions"].as_array().unwrap().len();
        assert_eq!(
            defs > 0,
            i == 0,
            "column definitions on the first event only"
        );
        names.push(t["rows"][0]["object"]["metadata"]["name"].clone());
    }
    assert_eq!(names[2], "t-3-responsecomplete");
}

#[tokio::test]
async fn watch_list_sends_the_window_then_the_annotated_bookmark() {
    let srv = TestServer::start(&["--window-events", "3"]).await;
    srv.push_events(
        &(0..5)
            .map(|i| event(&format!("w-{i}"), Some("team-a"), "get"))
            .collect::<Vec<_>>(),
    )
    .await;
    let alice = srv.client(Some(ALICE_TOKEN));
    let mut watch = alice
        .watch(&format!(
            "{TEAM_A}?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&resourceVersion={}",
            srv.rv(1)
        ))
        .await;
    let initial = watch.added(3).await;
    let got: Vec<&str> = initial
        .iter()
        .map(|o| o["auditID"].as_str().unwrap())
        .collect();
    assert_eq!(
        got,
        ["w-2", "w-3", "w-4"],
        "the window, however old the bound"
    );
    let bookmark = watch.next().await.unwrap();
    assert_eq!(bookmark["type"], "BOOKMARK", "{bookmark}");
    assert_eq!(bookmark["object"]["metadata"]["resourceVersion"], srv.rv(5));
    assert_eq!(
        bookmark["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    srv.push_events(&[event("w-live", Some("team-a"), "get")])
        .await;
    let live = watch.added(1).await;
    assert_eq!(live[0]["auditID"], "w-live");
    assert_eq!(live[0]["metadata"]["resourceVersion"], srv.rv(6));

    // An empty window: the bookmark alone, at the current resourceVersion.
    let mut empty = srv
        .client(Some(ADMIN_TOKEN))
        .watch(&format!(
            "{TEAM_B}?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"
        ))
        .await;
    let first = empty.next().await.unwrap();
    assert_eq!(first["type"], "BOOKMARK");
    assert_eq!(first["object"]["metadata"]["resourceVersion"], srv.rv(6));

    let (code, status) = alice
        .get_json(&format!("{TEAM_A}?watch=1&sendInitialEvents=true"))
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        status["message"],
        r#"ListOptions.meta.k8s.io "" is invalid: resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan"#
    );
}

/// A WatchList with a Table's `Accept`, served as kube-apiserver serves it (it does not
/// refuse the pair): each initial event a one-row Table (column definitions with the
/// first), then the bookmark, a one-row Table whose row keeps the bookmark's metadata
/// and so its `k8s.io/initial-events-end` annotation (kube-apiserver keeps that
/// metadata even under `includeObject=None`), then live events. No kubectl sends this:
/// `kubectl get -w` lists then watches, and the commands that use WatchList semantics
/// (`rollout status`, `wait`) read objects, not Tables.
#[tokio::test]
async fn watch_list_with_a_table_ends_its_initial_events_with_an_annotated_row() {
    let srv = TestServer::start(&[]).await;
    srv.push_events(&[
        event("t-1", Some("team-a"), "get"),
        event("t-2", Some("team-a"), "delete"),
    ])
    .await;
    let alice = srv.client(Some(ALICE_TOKEN));
    let query =
        "watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true";
    for include in ["Metadata", "None", "Object"] {
        let mut watch = alice
            .watch_with(
                &format!("{TEAM_A}?{query}&includeObject={include}"),
                &[("accept", TABLE)],
            )
            .await;
        for (i, id) in ["t-1", "t-2"].into_iter().enumerate() {
            let line = watch.next().await.unwrap();
            assert_eq!(line["type"], "ADDED", "{include}: {line}");
            let table = &line["object"];
            assert_eq!(table["kind"], "Table");
            let columns = table["columnDefinitions"].as_array().unwrap().len();
            assert_eq!(
                columns > 0,
                i == 0,
                "{include}: headers with the first only"
            );
            assert_eq!(
                table["rows"][0]["cells"][12],
                format!("{id}-responsecomplete"),
                "{include}"
            );
        }
        let end = watch.next().await.unwrap();
        assert_eq!(end["type"], "BOOKMARK", "{include}: {end}");
        let table = &end["object"];
        assert_eq!(table["kind"], "Table");
        assert_eq!(table["metadata"]["resourceVersion"], srv.rv(2));
        assert_eq!(table["columnDefinitions"], serde_json::json!([]));
        let object = &table["rows"][0]["object"];
        let kind = if include == "Object" {
            "Event"
        } else {
            "PartialObjectMetadata"
        };
        assert_eq!(object["kind"], kind, "{include}: {end}");
        assert_eq!(object["metadata"]["resourceVersion"], srv.rv(2));
        assert_eq!(
            object["metadata"]["annotations"]["k8s.io/initial-events-end"], "true",
            "{include}: {end}"
        );
    }

    // An empty window: the bookmark is the first line, and carries the headers.
    let mut empty = srv
        .client(Some(ADMIN_TOKEN))
        .watch_with(&format!("{TEAM_B}?{query}"), &[("accept", TABLE)])
        .await;
    let first = empty.next().await.unwrap();
    assert_eq!(first["type"], "BOOKMARK");
    let table = &first["object"];
    assert!(!table["columnDefinitions"].as_array().unwrap().is_empty());
    assert_eq!(
        table["rows"][0]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    srv.push_events(&[event("b-live", Some("team-b"), "get")])
        .await;
    let live = empty.next().await.unwrap();
    assert_eq!(live["type"], "ADDED");
    assert_eq!(
        live["object"]["columnDefinitions"],
        serde_json::json!([]),
        "headers once"
    );
}

#[tokio::test]
async fn list_is_authorized_with_the_list_verb() {
    let srv = TestServer::start(&[]).await;
    let (code, status) = srv.client(Some(ALICE_TOKEN)).get_json(TEAM_B).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    assert_eq!(
        status["message"],
        r#"namespacedevents.audit.k8s.io is forbidden: User "alice" cannot list resource "namespacedevents" in API group "audit.k8s.io" in the namespace "team-b": No policy matched."#
    );
    let (code, list) = srv.client(Some(ALICE_TOKEN)).get_json(TEAM_A).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(list["items"], serde_json::json!([]));
    assert_eq!(list["metadata"]["resourceVersion"], srv.rv(0));
}

/// A LIST of a large window goes out a frame at a time (the server holds the page's
/// references and one frame, not the whole body), and reads back as the same EventList.
#[tokio::test]
async fn a_large_list_is_written_a_frame_at_a_time() {
    use http_body_util::BodyExt;
    let srv = TestServer::start(&[]).await;
    let lines = fixtures::lines("all-events.jsonl");
    srv.push_events(&lines).await;
    // An EventList, and a Table (rows with their objects, the largest form).
    for (accept, kind, items) in [
        ("application/json", "EventList", "items"),
        (TABLE, "Table", "rows"),
    ] {
        let resp = srv
            .client(Some(ADMIN_TOKEN))
            .send(
                http::Method::GET,
                &format!("{EVENTS}?includeObject=Object"),
                &[("accept", accept)],
                bytes::Bytes::new(),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::OK, "{kind}");
        assert_eq!(resp.headers()["content-type"], "application/json");
        // Streamed: no length known up front (a body built whole would have one).
        assert!(
            resp.headers().get("content-length").is_none(),
            "{kind}: {:?}",
            resp.headers()
        );
        let mut body = resp.into_body();
        let (mut frames, mut all) = (0, Vec::new());
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                assert!(data.len() < 2 << 20, "one frame of {} bytes", data.len());
                frames += 1;
                all.extend_from_slice(&data);
            }
        }
        assert!(
            all.len() > 256 << 10,
            "the window holds the fixture: {} bytes",
            all.len()
        );
        assert!(
            frames > 1,
            "{kind}: {frames} frames for {} bytes",
            all.len()
        );
        let list: serde_json::Value = serde_json::from_slice(&all).unwrap();
        assert_eq!(list["kind"], kind);
        assert_eq!(list[items].as_array().unwrap().len(), lines.len(), "{kind}");
        if kind == "Table" {
            let row = &list["rows"][0];
            assert!(row["cells"].as_array().is_some_and(|c| !c.is_empty()));
            assert_eq!(row["object"]["kind"], "Event");
        }
    }
}

/// LISTs in flight are capped in all and per user under the watches' flags, apart from
/// watches, with kube-apiserver's max-in-flight answer (429, `Retry-After`); a LIST whose
/// client stopped reading is ended after the stall limit and gives its slot back.
#[tokio::test]
async fn lists_in_flight_are_capped_and_an_unread_one_gives_its_slot_back() {
    use http::Method;
    use http_body_util::BodyExt;
    const STALL: std::time::Duration = std::time::Duration::from_secs(2);
    let srv = TestServer::start_tuned(
        &["--max-watchers", "3", "--max-watchers-per-user", "2"],
        |s| s.stall_limit = STALL,
    )
    .await;
    srv.push_events(&fixtures::lines("all-events.jsonl")).await;
    let team_b: Vec<String> = (0..100)
        .map(|i| event(&format!("b-{i}"), Some("team-b"), "update"))
        .collect();
    srv.push_events(&team_b).await;

    let admin = srv.client(Some(ADMIN_TOKEN)).http2();
    let bob = srv.client(Some(BOB_TOKEN)).http2();
    // One connection each with a stream window of 4 KiB: a LIST nobody reads stops
    // there, in flight.
    let mut admin_conn = admin.http2_connection(4096).await;
    let mut bob_conn = bob.http2_connection(4096).await;
    let mut stuck = Vec::new();
    for _ in 0..2 {
        let resp = admin_conn
            .send_request(admin.request(Method::GET, EVENTS, &[], ""))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        stuck.push(resp);
    }
    let refused = |resp: http::Response<hyper::body::Incoming>, what: &'static str| async move {
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS, "{what}");
        assert_eq!(resp.headers()[http::header::RETRY_AFTER], "1", "{what}");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status["reason"], "TooManyRequests", "{what}");
        status["message"].as_str().unwrap().to_owned()
    };
    let third = admin_conn
        .send_request(admin.request(Method::GET, EVENTS, &[], ""))
        .await
        .unwrap();
    let message = refused(third, "admin's third").await;
    assert!(
        message.contains(r#"LISTs in flight for user "admin" (limit 2)"#),
        "{message}"
    );
    // Watches are held apart: one still opens.
    let watch = admin_conn
        .send_request(admin.request(Method::GET, &format!("{EVENTS}?watch=1"), &[], ""))
        .await
        .unwrap();
    assert_eq!(watch.status(), StatusCode::OK);
    // Another user gets a slot, up to the server's limit.
    let bobs = bob_conn
        .send_request(bob.request(Method::GET, TEAM_B, &[], ""))
        .await
        .unwrap();
    assert_eq!(bobs.status(), StatusCode::OK);
    let fourth = bob_conn
        .send_request(bob.request(Method::GET, TEAM_B, &[], ""))
        .await
        .unwrap();
    let message = refused(fourth, "the fourth in all").await;
    assert!(message.contains("LISTs in flight (limit 3)"), "{message}");
    let scrape = || async {
        let body = srv.client(Some(ADMIN_TOKEN)).get("/metrics").await.1;
        (
            support::metric(
                &body,
                r#"kube_audit_stream_list_in_flight{resource="events"}"#,
            ),
            support::metric(
                &body,
                r#"kube_audit_stream_list_stalled_total{resource="events"}"#,
            ),
        )
    };
    assert_eq!(scrape().await.0, Some(2.0));

    // Unread for the stall limit, the LISTs are ended and their slots given back.
    support::eventually("the unread LISTs to end", || async {
        scrape().await == (Some(0.0), Some(2.0))
    })
    .await;
    let resp = admin_conn
        .send_request(admin.request(Method::GET, EVENTS, &[], ""))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // Read late, an ended LIST stops short: its client sees a broken body, not a
    // shorter list that looks whole.
    let late = tokio::time::timeout(support::DEADLINE, stuck.remove(0).into_body().collect())
        .await
        .expect("the ended LIST's stream ends")
        .unwrap()
        .to_bytes();
    assert!(serde_json::from_slice::<serde_json::Value>(&late).is_err());
    drop((watch, bobs, resp));
}
