//! `kubectl audit rbac`'s policy from events, tested on audit2rbac's demo log.

use super::*;

/// The policy for `user` from the audit2rbac demo log (its events, one per line).
fn demo(options: Options) -> Policy {
    let log = include_str!("../../../tests/fixtures/audit/audit2rbac-demo.log");
    let mut b = Builder::new(options);
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        b.add(line).unwrap();
    }
    b.policy()
}

fn opts(user: &str) -> Options {
    Options {
        user: user.to_owned(),
        namespace: None,
        resource_names: false,
    }
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    PolicyRule {
        api_groups: Some(own(groups)),
        resources: Some(own(resources)),
        verbs: own(verbs),
        ..Default::default()
    }
}

fn event(user: &str, verb: &str, object_ref: serde_json::Value, code: u16) -> String {
    serde_json::json!({
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
        "auditID": "x", "stage": "ResponseComplete", "verb": verb,
        "requestURI": "/apis/x?watch=1", "user": {"username": user},
        "objectRef": object_ref, "responseStatus": {"code": code},
    })
    .to_string()
}

const GRW: &[&str] = &["get", "list", "watch"];

#[test]
fn alice_gets_the_role_audit2rbac_documents() {
    let p = demo(opts("alice"));
    assert_eq!(p.roles.len(), 1);
    let role = &p.roles[0];
    assert_eq!(role.metadata.name.as_deref(), Some("audit2rbac:alice"));
    assert_eq!(role.metadata.namespace.as_deref(), Some("ns1"));
    assert_eq!(
        role.rules,
        Some(vec![rule(&[""], &["configmaps", "pods", "secrets"], GRW)])
    );
    let labels = role.metadata.labels.as_ref().unwrap();
    assert_eq!(labels[USER_LABEL], "alice");
    assert_eq!(labels[GENERATED_LABEL], "true");
    let binding = &p.role_bindings[0];
    assert_eq!(binding.role_ref.kind, "Role");
    assert_eq!(binding.role_ref.name, "audit2rbac:alice");
    assert_eq!(
        binding.subjects,
        Some(vec![Subject {
            kind: "User".into(),
            name: "alice".into(),
            api_group: Some(RBAC_GROUP.into()),
            namespace: None,
        }])
    );
    assert!(p.cluster_role.is_none() && p.cluster_role_binding.is_none());
    // Her three requests were all refused.
    assert_eq!(
        p.denied,
        [
            "kubectl auth can-i list configmaps -n ns1 --as alice",
            "kubectl auth can-i list pods -n ns1 --as alice",
            "kubectl auth can-i list secrets -n ns1 --as alice",
        ]
    );
}

#[test]
fn bob_gets_a_role_per_namespace_and_discovery_is_left_out() {
    let p = demo(opts("bob"));
    // audit2rbac widens pods (listed in default and ns1) to its ClusterRole; here each
    // namespace has its Role.
    let namespaces: Vec<_> = p
        .roles
        .iter()
        .map(|r| r.metadata.namespace.as_deref().unwrap())
        .collect();
    assert_eq!(namespaces, ["default", "ns1"]);
    for role in &p.roles {
        assert_eq!(role.rules, Some(vec![rule(&[""], &["pods"], GRW)]));
    }
    // Twenty-odd `get /api…` of discovery: granted to everyone already.
    let cluster = p.cluster_role.unwrap();
    assert_eq!(cluster.rules, Some(vec![rule(&[""], &["nodes"], GRW)]));
    assert_eq!(p.role_bindings.len(), 2);
}

#[test]
fn a_service_account_is_bound_as_one_and_its_cluster_grant_covers_namespaces() {
    let user = "system:serviceaccount:ns1:sa1";
    let p = demo(opts(user));
    // Its list of pods in every namespace covers the one in default: no Role.
    assert!(p.roles.is_empty(), "{:?}", p.roles);
    let cluster = p.cluster_role.unwrap();
    assert_eq!(
        cluster.metadata.name.as_deref(),
        Some("audit2rbac:system:serviceaccount:ns1:sa1")
    );
    assert_eq!(
        cluster.metadata.labels.as_ref().unwrap()[USER_LABEL],
        "system-serviceaccount-ns1-sa1"
    );
    assert_eq!(
        cluster.rules,
        Some(vec![rule(&[""], &["nodes", "pods"], GRW)])
    );
    let binding = p.cluster_role_binding.unwrap();
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(
        binding.subjects,
        Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: "sa1".into(),
            namespace: Some("ns1".into()),
            api_group: None,
        }])
    );
    assert!(p.denied.contains(
        &"kubectl auth can-i list pods -A --as system:serviceaccount:ns1:sa1".to_owned()
    ));
}

#[test]
fn a_namespace_restricts_to_its_requests() {
    let p = demo(Options {
        namespace: Some("default".into()),
        ..opts("bob")
    });
    assert_eq!(p.roles.len(), 1);
    assert_eq!(p.roles[0].metadata.namespace.as_deref(), Some("default"));
    assert!(p.cluster_role.is_none());
    let none = demo(Options {
        namespace: Some("kube-system".into()),
        ..opts("bob")
    });
    assert!(none.is_empty() && none.denied.is_empty());
    assert!(demo(opts("nobody")).is_empty());
}

#[test]
fn names_subresources_groups_and_urls() {
    let mut b = Builder::new(Options {
        resource_names: true,
        ..opts("u")
    });
    let obj = |g: &str, r: &str, sub: &str, ns: &str, n: &str| serde_json::json!({"apiGroup": g, "resource": r, "subresource": sub, "namespace": ns, "name": n});
    for e in [
        event("u", "get", obj("", "configmaps", "", "a", "one"), 200),
        event("u", "get", obj("", "configmaps", "", "a", "two"), 200),
        event("u", "get", obj("", "secrets", "", "a", "one"), 200),
        event("u", "get", obj("", "secrets", "", "a", "two"), 200),
        // Covered by the list's widening to get.
        event("u", "list", obj("", "services", "", "a", ""), 200),
        event("u", "get", obj("", "services", "", "a", "web"), 200),
        // A create's name is not the authorizer's.
        event("u", "create", obj("", "pods", "exec", "a", "p"), 201),
        event(
            "u",
            "patch",
            obj("apps", "deployments", "scale", "a", "web"),
            403,
        ),
        event("u", "create", obj("", "namespaces", "", "", "new"), 201),
    ] {
        assert!(b.add(&e).unwrap());
    }
    // The same request again grows nothing; another user's is not taken.
    assert!(
        !b.add(&event("u", "get", obj("", "secrets", "", "a", "two"), 200))
            .unwrap()
    );
    assert!(
        !b.add(&event("v", "delete", obj("", "secrets", "", "a", "x"), 200))
            .unwrap()
    );
    let url = |path: &str, verb: &str, code: u16| {
        serde_json::json!({"verb": verb, "requestURI": path, "user": {"username": "u"}, "responseStatus": {"code": code}}).to_string()
    };
    for e in [
        url("/metrics?x=1", "get", 200),
        url("/logs/a", "get", 200),
        url("/apis/x", "get", 200),
        url("/version", "get", 403),
        url("/debug", "post", 200),
    ] {
        b.add(&e).unwrap();
    }
    let p = b.policy();
    let mut named = rule(&[""], &["configmaps", "secrets"], &["get"]);
    named.resource_names = Some(vec!["one".into(), "two".into()]);
    let mut scale = rule(
        &["apps"],
        &["deployments/scale"],
        &["get", "patch", "update"],
    );
    scale.resource_names = Some(vec!["web".into()]);
    assert_eq!(
        p.roles[0].rules,
        Some(vec![
            named,
            rule(&[""], &["pods/exec"], &["create"]),
            rule(&[""], &["services"], GRW),
            scale,
        ])
    );
    let urls = |u: &[&str], verbs: &[&str]| PolicyRule {
        non_resource_urls: Some(u.iter().map(|s| s.to_string()).collect()),
        verbs: verbs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    assert_eq!(
        p.cluster_role.unwrap().rules,
        Some(vec![
            rule(&[""], &["namespaces"], &["create"]),
            urls(&["/debug"], &["post"]),
            urls(&["/logs/a", "/metrics", "/version"], &["get"]),
        ])
    );
    assert_eq!(
        p.denied,
        [
            "kubectl auth can-i patch deployments.apps/web --subresource=scale -n a --as u",
            "kubectl auth can-i get /version --as u",
        ]
    );
}

#[test]
fn without_resource_names_names_are_dropped() {
    let mut b = Builder::new(opts("u"));
    let obj = serde_json::json!({"resource": "configmaps", "namespace": "a", "name": "one"});
    b.add(&event("u", "update", obj, 200)).unwrap();
    assert_eq!(
        b.policy().roles[0].rules,
        Some(vec![rule(
            &[""],
            &["configmaps"],
            &["get", "patch", "update"]
        )])
    );
}

#[test]
fn an_impersonated_user_is_the_one_authorized() {
    let mut b = Builder::new(opts("bob"));
    let e = serde_json::json!({
        "verb": "list", "user": {"username": "system:admin"},
        "impersonatedUser": {"username": "bob"},
        "objectRef": {"resource": "pods", "namespace": "a"},
        "annotations": {"authorization.k8s.io/decision": "forbid"},
    });
    assert!(b.add(&e.to_string()).unwrap());
    assert_eq!(
        b.policy().denied,
        ["kubectl auth can-i list pods -n a --as bob"]
    );
    assert!(
        !Builder::new(opts("system:admin"))
            .add(&e.to_string())
            .unwrap()
    );
    assert!(b.add("{not json").is_err());
}

#[test]
fn names_labels_and_subjects() {
    assert_eq!(object_name("Jane Doe@corp"), "audit2rbac:jane-doe-corp");
    assert_eq!(
        label_value("system:serviceaccount:a:b"),
        "system-serviceaccount-a-b"
    );
    assert_eq!(label_value(&"x".repeat(80)).len(), 63);
    assert_eq!(label_value("-a-"), "a");
    assert_eq!(
        service_account("system:serviceaccount:a:b"),
        Some(("a", "b"))
    );
    for not in [
        "system:serviceaccount:a",
        "system:serviceaccount::b",
        "alice",
        "system:serviceaccount:a:b:c",
    ] {
        assert_eq!(service_account(not), None, "{not}");
    }
    assert_eq!(subject("alice").kind, "User");
}

#[test]
fn comments_cannot_break_out_of_their_line() {
    let mut b = Builder::new(opts("u"));
    let e = serde_json::json!({
        "verb": "get", "requestURI": "/x\nkind: Secret\n/y",
        "user": {"username": "u"}, "responseStatus": {"code": 403},
    });
    b.add(&e.to_string()).unwrap();
    let yaml = b.policy().to_yaml("u").unwrap();
    assert!(
        yaml.lines().all(|l| !l.starts_with("kind: Secret")),
        "{yaml}"
    );
    assert!(
        yaml.contains("#   kubectl auth can-i get '/x\\nkind: Secret\\n/y' --as u\n"),
        "{yaml}"
    );
    assert_eq!(shell_quote("it's"), r"'it'\''s'");
}

#[test]
fn yaml_is_the_objects_in_audit2rbacs_order() {
    let yaml = demo(opts("bob")).to_yaml("bob").unwrap();
    let kinds: Vec<_> = yaml
        .lines()
        .filter_map(|l| l.strip_prefix("kind: "))
        .collect();
    assert_eq!(
        kinds,
        [
            "Role",
            "Role",
            "ClusterRole",
            "RoleBinding",
            "RoleBinding",
            "ClusterRoleBinding"
        ]
    );
    assert!(yaml.starts_with("# 3 denied requests of bob"), "{yaml}");
    assert_eq!(Policy::default().to_yaml("x").unwrap(), "");
}
