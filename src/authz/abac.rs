//! `--authorization-mode=ABAC`: kube-apiserver's attribute-based policy file, one
//! `abac.authorization.kubernetes.io/v1beta1` `Policy` JSON object per line, matched with
//! the rules of `k8s.io/kubernetes/pkg/auth/authorizer/abac`.

use async_trait::async_trait;
use serde::Deserialize;

use super::{Attributes, Authorizer, Decision, Error};

const POLICY_API_VERSION: &str = "abac.authorization.kubernetes.io/v1beta1";

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PolicyLine {
    api_version: String,
    kind: String,
    spec: Spec,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Spec {
    #[serde(default)]
    user: String,
    #[serde(default)]
    group: String,
    #[serde(default)]
    readonly: bool,
    #[serde(default)]
    api_group: String,
    #[serde(default)]
    resource: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    non_resource_path: String,
}

/// A loaded ABAC policy.
#[derive(Debug, Clone)]
pub struct Abac {
    policies: Vec<Spec>,
}

impl Abac {
    /// Parse the policy text; blank lines and `#` comments are skipped as kube-apiserver does.
    pub fn parse(text: &str, origin: &str) -> Result<Self, PolicyError> {
        let mut policies = vec![];
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let p: PolicyLine = serde_json::from_str(line).map_err(|source| PolicyError::Json {
                origin: origin.to_owned(),
                line: n + 1,
                source,
            })?;
            if p.api_version != POLICY_API_VERSION || p.kind != "Policy" {
                return Err(PolicyError::Kind {
                    origin: origin.to_owned(),
                    line: n + 1,
                    api_version: p.api_version,
                    kind: p.kind,
                });
            }
            policies.push(p.spec);
        }
        Ok(Abac { policies })
    }

    pub fn load(path: &std::path::Path) -> Result<Self, PolicyError> {
        let (text, name) = crate::source::read_text(path)?;
        Self::parse(&text, &name)
    }
}

/// A policy file that does not load.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(transparent)]
    Read(#[from] crate::source::ReadError),
    #[error("policy file {origin:?}, line {line}: {source}")]
    Json {
        origin: String,
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "policy file {origin:?}, line {line}: want apiVersion {POLICY_API_VERSION} kind Policy, got {api_version} {kind}"
    )]
    Kind {
        origin: String,
        line: usize,
        api_version: String,
        kind: String,
    },
}

#[async_trait]
impl Authorizer for Abac {
    async fn authorize(&self, a: &Attributes) -> Result<Decision, Error> {
        if self.policies.iter().any(|p| matches(p, a)) {
            Ok(Decision::Allow)
        } else {
            Ok(Decision::NoOpinion("No policy matched.".into()))
        }
    }
}

fn matches(p: &Spec, a: &Attributes) -> bool {
    subject_matches(p, a)
        && verb_matches(p, a)
        && (resource_matches(p, a) || non_resource_matches(p, a))
}

fn subject_matches(p: &Spec, a: &Attributes) -> bool {
    // Each field the policy sets must match; a policy that sets neither matches no one.
    let user = (!p.user.is_empty()).then(|| p.user == "*" || p.user == a.user.name);
    let group = (!p.group.is_empty()).then(|| p.group == "*" || a.user.groups.contains(&p.group));
    match (user, group) {
        (None, None) => false,
        (u, g) => u.unwrap_or(true) && g.unwrap_or(true),
    }
}

fn verb_matches(p: &Spec, a: &Attributes) -> bool {
    a.is_read_only() || !p.readonly
}

fn resource_matches(p: &Spec, a: &Attributes) -> bool {
    a.resource_request
        && (p.namespace == "*" || p.namespace == a.namespace)
        && (p.resource == "*" || p.resource == a.resource)
        && (p.api_group == "*" || p.api_group == a.api_group)
}

fn non_resource_matches(p: &Spec, a: &Attributes) -> bool {
    if a.resource_request {
        return false;
    }
    let path = &p.non_resource_path;
    path == "*"
        || *path == a.path
        || (path.ends_with('*') && a.path.starts_with(path.trim_end_matches('*')))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::UserInfo;

    const POLICY: &str = r#"
# admin may do anything
{"apiVersion": "abac.authorization.kubernetes.io/v1beta1", "kind": "Policy", "spec": {"group": "system:masters", "namespace": "*", "resource": "*", "apiGroup": "*", "nonResourcePath": "*"}}
{"apiVersion": "abac.authorization.kubernetes.io/v1beta1", "kind": "Policy", "spec": {"user": "alice", "namespace": "team-a", "resource": "namespacedevents", "apiGroup": "audit.k8s.io", "readonly": true}}
{"apiVersion": "abac.authorization.kubernetes.io/v1beta1", "kind": "Policy", "spec": {"group": "system:authenticated", "readonly": true, "nonResourcePath": "/apis*"}}
"#;

    use crate::authz::tests::request as attrs;

    fn path(user: UserInfo, verb: &str, path: &str) -> Attributes {
        Attributes {
            user: user.into(),
            verb: verb.into(),
            path: path.into(),
            ..Default::default()
        }
    }

    async fn allowed(abac: &Abac, a: Attributes) -> bool {
        abac.authorize(&a).await.unwrap() == Decision::Allow
    }

    #[tokio::test]
    async fn namespace_user_sees_only_their_namespace() {
        let abac = Abac::parse(POLICY, "p").unwrap();
        let alice = || UserInfo::new("alice", &["system:authenticated"]);
        assert!(allowed(&abac, attrs(alice(), "watch", "team-a", "namespacedevents")).await);
        assert!(!allowed(&abac, attrs(alice(), "watch", "team-b", "namespacedevents")).await);
        assert!(!allowed(&abac, attrs(alice(), "watch", "", "events")).await);
        assert!(
            !allowed(
                &abac,
                attrs(alice(), "create", "team-a", "namespacedevents")
            )
            .await
        );
        assert!(allowed(&abac, path(alice(), "get", "/apis/audit.k8s.io")).await);
        assert!(!allowed(&abac, path(alice(), "get", "/metrics")).await);
        assert!(!allowed(&abac, path(alice(), "post", "/apis")).await);
    }

    #[tokio::test]
    async fn group_policy_and_unknown_users() {
        let abac = Abac::parse(POLICY, "p").unwrap();
        let admin = UserInfo::new("admin", &["system:masters"]);
        assert!(allowed(&abac, attrs(admin.clone(), "watch", "", "events")).await);
        assert!(allowed(&abac, path(admin, "get", "/metrics")).await);
        let bob = UserInfo::new("bob", &[]);
        assert!(
            !allowed(
                &abac,
                attrs(bob.clone(), "watch", "team-a", "namespacedevents")
            )
            .await
        );
        assert!(!allowed(&abac, path(bob, "get", "/apis")).await);
    }

    #[test]
    fn bad_lines_are_errors_with_line_numbers() {
        let err = Abac::parse(
            "\n{\"apiVersion\":\"v1\",\"kind\":\"Policy\",\"spec\":{}}",
            "p",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("line 2"), "{err}");
        let err = Abac::parse("{not json", "p").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
        let err = Abac::parse(
            r#"{"apiVersion":"abac.authorization.kubernetes.io/v1beta1","kind":"Policy","spec":{"usr":"x"}}"#,
            "p",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown field"), "{err}");
    }
}
