//! May this user do this: request `Attributes` (as kube-apiserver's `authorizer.Attributes`),
//! how a request is read into them (`request`), the `Authorizer` trait and its
//! implementations. Knows nothing of HTTP types or of the bus: the router builds the
//! attributes and asks.

mod abac;
mod request;
mod sar;

use std::sync::Arc;

use async_trait::async_trait;

pub use abac::{Abac, PolicyError};
pub use request::request_attributes;
pub use sar::SubjectAccessReviewer;

use crate::authn::UserInfo;

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
