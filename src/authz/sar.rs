//! `--authorization-mode=Webhook`: ask kube-apiserver with a `SubjectAccessReview`.
//! Answers are cached, "allowed" and "denied" each for their own TTL; concurrent
//! identical questions make one review; a failed review is never cached and never allows.
//! Counts its cache's hits and misses and times each review.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::PostParams;
use prometheus::{HistogramVec, IntCounterVec};

use super::{Attributes, Authorizer, Decision, Error};
use crate::authn::REVIEW_SECONDS_BUCKETS;
use crate::metrics::{self, Metrics};

/// Cached answers at most; beyond this the least recently used go first.
const CACHE_ENTRIES: u64 = 10_000;

pub struct SubjectAccessReviewer {
    api: kube::Api<SubjectAccessReview>,
    cache: moka::future::Cache<String, Decision>,
    /// Lookups by `hit` (answered from the cache, or by a review another request made)
    /// and `miss` (this lookup made the review).
    cache_lookups: IntCounterVec,
    /// Review round trips by `result`: `ok` (kube-apiserver answered) or `error`.
    review_seconds: HistogramVec,
}

/// Per-entry lifetime: how long the decision in it may be trusted.
struct DecisionExpiry {
    authorized: Duration,
    unauthorized: Duration,
}

impl moka::Expiry<String, Decision> for DecisionExpiry {
    fn expire_after_create(&self, _: &String, value: &Decision, _: Instant) -> Option<Duration> {
        Some(match value {
            Decision::Allow => self.authorized,
            _ => self.unauthorized,
        })
    }
}

impl SubjectAccessReviewer {
    pub fn new(
        client: kube::Client,
        authorized_ttl: Duration,
        unauthorized_ttl: Duration,
        m: &Metrics,
    ) -> Self {
        SubjectAccessReviewer {
            cache_lookups: m.register(IntCounterVec::new(
                metrics::opts(
                    "authorization",
                    "cache_requests_total",
                    "SubjectAccessReview cache lookups by result: hit (no review made) or miss (a SubjectAccessReview sent).",
                ),
                &["result"],
            )),
            review_seconds: m.register(HistogramVec::new(
                metrics::histogram_opts(
                    "authorization",
                    "subject_access_review_duration_seconds",
                    "SubjectAccessReview round trips to kube-apiserver by result: ok, or error (no answer: the request fails closed with a 500).",
                    REVIEW_SECONDS_BUCKETS,
                ),
                &["result"],
            )),
            api: kube::Api::all(client),
            cache: moka::future::Cache::builder()
                .max_capacity(CACHE_ENTRIES)
                .expire_after(DecisionExpiry {
                    authorized: authorized_ttl,
                    unauthorized: unauthorized_ttl,
                })
                .build(),
        }
    }

    async fn review(&self, spec: SubjectAccessReviewSpec) -> Result<Decision, Error> {
        let timer = tokio::time::Instant::now();
        let answer = self.send(spec).await;
        let result = if answer.is_ok() { "ok" } else { "error" };
        self.review_seconds
            .with_label_values(&[result])
            .observe(timer.elapsed().as_secs_f64());
        answer
    }

    async fn send(&self, spec: SubjectAccessReviewSpec) -> Result<Decision, Error> {
        let review = SubjectAccessReview {
            spec,
            ..Default::default()
        };
        let answer = self
            .api
            .create(&PostParams::default(), &review)
            .await
            .map_err(Error::Review)?;
        let status = answer.status.unwrap_or_default();
        let reason = status.reason.unwrap_or_default();
        Ok(if status.allowed {
            Decision::Allow
        } else if status.denied == Some(true) {
            Decision::Deny(reason)
        } else {
            Decision::NoOpinion(reason)
        })
    }
}

/// The review's spec for `a`, as k8s.io/apiserver's webhook authorizer builds it.
pub fn spec(a: &Attributes) -> SubjectAccessReviewSpec {
    let mut spec = SubjectAccessReviewSpec {
        user: Some(a.user.name.clone()),
        uid: (!a.user.uid.is_empty()).then(|| a.user.uid.clone()),
        groups: Some(a.user.groups.clone()),
        extra: (!a.user.extra.is_empty()).then(|| a.user.extra.clone().into_iter().collect()),
        ..Default::default()
    };
    if a.resource_request {
        // Empty values are left out, as Go's `omitempty` does in kube-apiserver's own reviews.
        let set = |s: &String| (!s.is_empty()).then(|| s.clone());
        spec.resource_attributes = Some(ResourceAttributes {
            namespace: set(&a.namespace),
            verb: set(&a.verb),
            group: set(&a.api_group),
            version: set(&a.api_version),
            resource: set(&a.resource),
            subresource: set(&a.subresource),
            name: set(&a.name),
            ..Default::default()
        });
    } else {
        spec.non_resource_attributes = Some(NonResourceAttributes {
            path: Some(a.path.clone()),
            verb: Some(a.verb.clone()),
        });
    }
    spec
}

#[async_trait]
impl Authorizer for SubjectAccessReviewer {
    async fn authorize(&self, a: &Attributes) -> Result<Decision, Error> {
        let spec = spec(a);
        // The spec names everything the answer depends on, so it is the cache key.
        let key = serde_json::to_string(&spec).map_err(Error::Encode)?;
        let review = self.review(spec);
        crate::metrics::cached(&self.cache, key, review, &self.cache_lookups)
            .await
            .map_err(Error::Shared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::UserInfo;

    #[test]
    fn spec_carries_user_and_attributes() {
        let mut user = UserInfo::new("alice", &["team-a", "system:authenticated"]);
        user.uid = "u-1".into();
        user.extra.insert("scopes".into(), vec!["x".into()]);
        let a = Attributes {
            user: user.into(),
            verb: "watch".into(),
            namespace: "team-a".into(),
            api_group: "audit.k8s.io".into(),
            api_version: "v1alpha1".into(),
            resource: "namespacedevents".into(),
            resource_request: true,
            ..Default::default()
        };
        let v = serde_json::to_value(spec(&a)).unwrap();
        assert_eq!(v["user"], "alice");
        assert_eq!(v["uid"], "u-1");
        assert_eq!(
            v["groups"],
            serde_json::json!(["team-a", "system:authenticated"])
        );
        assert_eq!(v["extra"]["scopes"], serde_json::json!(["x"]));
        assert_eq!(
            v["resourceAttributes"],
            serde_json::json!({"namespace": "team-a", "verb": "watch", "group": "audit.k8s.io", "version": "v1alpha1", "resource": "namespacedevents"})
        );
        assert!(v.get("nonResourceAttributes").is_none());

        let a = Attributes {
            user: UserInfo::new("bob", &[]).into(),
            verb: "get".into(),
            path: "/metrics".into(),
            ..Default::default()
        };
        let v = serde_json::to_value(spec(&a)).unwrap();
        assert_eq!(
            v["nonResourceAttributes"],
            serde_json::json!({"path": "/metrics", "verb": "get"})
        );
        assert!(v.get("resourceAttributes").is_none());
    }
}
