//! Bearer tokens checked with a `TokenReview` against kube-apiserver, answers cached for
//! `--authentication-token-webhook-cache-ttl` under a hash of the token (the token itself
//! is never kept nor logged). Concurrent checks of one token make one review. Counts
//! its cache's hits and misses and times each review.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::PostParams;
use prometheus::{HistogramVec, IntCounterVec};
use sha2::{Digest, Sha256};

use super::{Authenticator, Error, Request, UserInfo};
use crate::metrics::{self, Metrics};

/// Cached answers at most; beyond this the least recently used go first.
const CACHE_ENTRIES: u64 = 10_000;
/// A review is a round trip to kube-apiserver: milliseconds, seconds when it struggles
/// (client-go's default timeout is far above the last bucket).
pub const REVIEW_SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

pub struct TokenReviewer {
    api: kube::Api<TokenReview>,
    /// `None`: the token is not valid (cached like a valid one, as kube-apiserver does).
    cache: moka::future::Cache<[u8; 32], Option<Arc<UserInfo>>>,
    /// Lookups by `hit` (answered from the cache, or by a review another request made)
    /// and `miss` (this lookup made the review).
    cache_lookups: IntCounterVec,
    /// Review round trips by `result`: `ok` (kube-apiserver answered) or `error`.
    review_seconds: HistogramVec,
}

impl TokenReviewer {
    pub fn new(client: kube::Client, ttl: Duration, m: &Metrics) -> Self {
        TokenReviewer {
            api: kube::Api::all(client),
            cache: moka::future::Cache::builder()
                .max_capacity(CACHE_ENTRIES)
                .time_to_live(ttl.max(Duration::from_millis(1)))
                .build(),
            cache_lookups: m.register(IntCounterVec::new(
                metrics::opts(
                    "authentication",
                    "token_cache_requests_total",
                    "TokenReview cache lookups by result: hit (no review made) or miss (a TokenReview sent).",
                ),
                &["result"],
            )),
            review_seconds: m.register(HistogramVec::new(
                metrics::histogram_opts(
                    "authentication",
                    "token_review_duration_seconds",
                    "TokenReview round trips to kube-apiserver by result: ok, or error (no answer: the request is refused).",
                    REVIEW_SECONDS_BUCKETS,
                ),
                &["result"],
            )),
        }
    }

    async fn review(&self, token: &str) -> Result<Option<Arc<UserInfo>>, Error> {
        let timer = tokio::time::Instant::now();
        let answer = self.send(token).await;
        let result = if answer.is_ok() { "ok" } else { "error" };
        self.review_seconds
            .with_label_values(&[result])
            .observe(timer.elapsed().as_secs_f64());
        answer
    }

    async fn send(&self, token: &str) -> Result<Option<Arc<UserInfo>>, Error> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: None,
            },
            ..Default::default()
        };
        let answer = self
            .api
            .create(&PostParams::default(), &review)
            .await
            .map_err(Error::Review)?;
        let Some(status) = answer.status.filter(|s| s.authenticated == Some(true)) else {
            return Ok(None);
        };
        let user = status.user.unwrap_or_default();
        Ok(Some(Arc::new(UserInfo {
            name: user.username.unwrap_or_default(),
            uid: user.uid.unwrap_or_default(),
            groups: user.groups.unwrap_or_default(),
            extra: user.extra.unwrap_or_default().into_iter().collect(),
        })))
    }
}

#[async_trait]
impl Authenticator for TokenReviewer {
    async fn authenticate(&self, req: &Request<'_>) -> Result<Option<UserInfo>, Error> {
        let Some(token) = req.bearer_token() else {
            return Ok(None);
        };
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let review = self.review(token);
        let answer = crate::metrics::cached(&self.cache, key, review, &self.cache_lookups)
            .await
            .map_err(Error::Shared)?;
        match answer {
            Some(user) => Ok(Some((*user).clone())),
            None => Err(Error::InvalidToken),
        }
    }
}
