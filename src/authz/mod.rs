//! May this user do this: request `Attributes` (as kube-apiserver's `authorizer.Attributes`),
//! how a request is read into them (`request`), the `Authorizer` trait and its
//! implementations. Knows nothing of HTTP types or of the bus: the router builds the
//! attributes and asks.

mod abac;
mod privileged;
mod request;
mod sar;

use std::sync::Arc;

use async_trait::async_trait;

pub use abac::{Abac, PolicyError};
pub use privileged::Privileged;
pub use request::request_attributes;
pub use sar::SubjectAccessReviewer;

use crate::authn::UserInfo;
use crate::status::{ApiError, ForbiddenDetails, go_quote};

/// What is being asked for, in kube-apiserver's terms.
#[derive(Debug, Clone, Default)]
pub struct Attributes {
    pub user: Arc<UserInfo>,
    pub verb: String,
    pub namespace: String,
    pub api_group: String,
    pub api_version: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
    /// `false` for non-resource URLs (`/metrics`, `/apis`), where `path` applies.
    pub resource_request: bool,
    pub path: String,
}

impl Attributes {
    /// `get`, `list` and `watch`, as `authorizer.AttributesRecord.IsReadOnly`.
    pub fn is_read_only(&self) -> bool {
        matches!(self.verb.as_str(), "get" | "list" | "watch")
    }

    /// The 403 for a denial of these attributes: kube-apiserver's `ForbiddenStatusError`
    /// message (`reason` is the authorizer's, empty when it gave none) and details.
    pub fn forbidden(&self, reason: &str) -> ApiError {
        ApiError::Forbidden {
            message: forbidden_message(self, reason),
            details: Box::new(ForbiddenDetails {
                group: self.resource_request.then(|| self.api_group.clone()),
                kind: self.resource_request.then(|| self.resource.clone()),
                name: (!self.name.is_empty()).then(|| self.name.clone()),
            }),
        }
    }
}

/// kube-apiserver's `ForbiddenStatusError` + `apierrors.NewForbidden` message.
fn forbidden_message(a: &Attributes, reason: &str) -> String {
    let mut msg = format!("User {} cannot {}", go_quote(&a.user.name), a.verb);
    if a.resource_request {
        let resource = if a.subresource.is_empty() {
            a.resource.clone()
        } else {
            format!("{}/{}", a.resource, a.subresource)
        };
        msg.push_str(&format!(
            " resource {} in API group {}",
            go_quote(&resource),
            go_quote(&a.api_group)
        ));
        if a.namespace.is_empty() {
            msg.push_str(" at the cluster scope");
        } else {
            msg.push_str(&format!(" in the namespace {}", go_quote(&a.namespace)));
        }
    } else {
        msg.push_str(&format!(" path {}", go_quote(&a.path)));
    }
    if !reason.is_empty() {
        msg.push_str(": ");
        msg.push_str(reason);
    }
    let qualified = match (a.resource_request, a.api_group.is_empty()) {
        (false, _) => String::new(),
        (true, true) => a.resource.clone(),
        (true, false) => format!("{}.{}", a.resource, a.api_group),
    };
    match (qualified.is_empty(), a.name.is_empty()) {
        (true, _) => format!("forbidden: {msg}"),
        (false, true) => format!("{qualified} is forbidden: {msg}"),
        (false, false) => format!("{qualified} {} is forbidden: {msg}", go_quote(&a.name)),
    }
}

/// An authorizer's answer. Anything but `Allow` is a denial; the string is the reason
/// shown to the user (empty when there is none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(String),
    NoOpinion(String),
}

/// The authorizer could not decide (its backend failed). Callers fail closed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("SubjectAccessReview failed: {0}")]
    Review(#[source] kube::Error),
    #[error("encoding the SubjectAccessReview: {0}")]
    Encode(#[source] serde_json::Error),
    /// The failure of a review another request was waiting for too (the cache shares it).
    #[error("{0}")]
    Shared(#[source] Arc<Error>),
}

/// An authorizer that cannot answer: the request fails closed, as a 500.
impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError::Internal(format!("authorization failed: {e}"))
    }
}

#[async_trait]
pub trait Authorizer: Send + Sync {
    async fn authorize(&self, attrs: &Attributes) -> Result<Decision, Error>;
}

/// `--authorization-mode=AlwaysAllow`.
pub struct AlwaysAllow;

#[async_trait]
impl Authorizer for AlwaysAllow {
    async fn authorize(&self, _: &Attributes) -> Result<Decision, Error> {
        Ok(Decision::Allow)
    }
}

/// `--authorization-always-allow-paths`: exact paths, or prefixes written with a trailing `*`.
#[derive(Debug, Clone, Default)]
pub struct AlwaysAllowPaths {
    exact: Vec<String>,
    prefixes: Vec<String>,
}

impl AlwaysAllowPaths {
    pub fn new(paths: &[String]) -> Self {
        let mut out = AlwaysAllowPaths::default();
        for p in paths.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
            match p.strip_suffix('*') {
                Some(prefix) => out.prefixes.push(prefix.to_owned()),
                None => out.exact.push(p.to_owned()),
            }
        }
        out
    }

    pub fn contains(&self, path: &str) -> bool {
        self.exact.iter().any(|p| p == path) || self.prefixes.iter().any(|p| path.starts_with(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::UserInfo;

    /// A resource request of `user` in group audit.k8s.io, for the authorizers' tests.
    pub(crate) fn request(user: UserInfo, verb: &str, ns: &str, resource: &str) -> Attributes {
        Attributes {
            user: user.into(),
            verb: verb.into(),
            namespace: ns.into(),
            api_group: "audit.k8s.io".into(),
            api_version: "v1alpha1".into(),
            resource: resource.into(),
            resource_request: true,
            ..Default::default()
        }
    }

    fn attrs(ns: &str, resource: &str) -> Attributes {
        request(UserInfo::new("alice", &[]), "watch", ns, resource)
    }

    #[test]
    fn forbidden_in_namespace_matches_kube_apiserver() {
        let err = attrs("team-b", "namespacedevents").forbidden("");
        assert_eq!(
            err.to_string(),
            r#"namespacedevents.audit.k8s.io is forbidden: User "alice" cannot watch resource "namespacedevents" in API group "audit.k8s.io" in the namespace "team-b""#
        );
    }

    #[test]
    fn forbidden_cluster_scope_and_path() {
        let err = attrs("", "events").forbidden("no policy");
        assert_eq!(
            err.to_string(),
            r#"events.audit.k8s.io is forbidden: User "alice" cannot watch resource "events" in API group "audit.k8s.io" at the cluster scope: no policy"#
        );
        let mut a = attrs("", "");
        a.resource_request = false;
        a.verb = "get".into();
        a.path = "/metrics".into();
        let err = a.forbidden("");
        assert_eq!(
            err.to_string(),
            r#"forbidden: User "alice" cannot get path "/metrics""#
        );
    }

    /// The Status's own shape is `status`'s test; here, the details a denial fills.
    #[test]
    fn a_denial_names_group_and_resource_in_its_details() {
        let v: serde_json::Value =
            serde_json::from_slice(&attrs("team-b", "namespacedevents").forbidden("").to_json())
                .unwrap();
        assert_eq!(
            (v["code"].as_u64(), v["reason"].as_str()),
            (Some(403), Some("Forbidden"))
        );
        assert_eq!(v["details"]["group"], "audit.k8s.io");
        assert_eq!(v["details"]["kind"], "namespacedevents");
    }

    #[test]
    fn quotes_in_user_names_stay_inside_the_string() {
        let mut a = attrs("ns", "events");
        a.user = UserInfo::new("ev\"il", &[]).into();
        let msg = a.forbidden("").to_string();
        assert!(msg.contains(r#"User "ev\"il" cannot"#), "{msg}");
    }

    #[test]
    fn always_allow_paths_exact_and_prefix() {
        let p = AlwaysAllowPaths::new(&["/healthz".into(), "/debug/*".into(), " ".into()]);
        assert!(p.contains("/healthz"));
        assert!(!p.contains("/healthz/x"));
        assert!(p.contains("/debug/pprof"));
        assert!(!p.contains("/metrics"));
        assert!(!p.contains(""));
    }
}
