//! Bearer tokens checked with a `TokenReview` against kube-apiserver, answers cached for
//! `--authentication-token-webhook-cache-ttl` under a hash of the token (the token itself
//! is never kept nor logged). Concurrent checks of one token make one review.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::PostParams;
use sha2::{Digest, Sha256};

use super::{Authenticator, Error, Request, UserInfo};

/// Cached answers at most; beyond this the least recently used go first.
const CACHE_ENTRIES: u64 = 10_000;

pub struct TokenReviewer {
    api: kube::Api<TokenReview>,
    /// `None`: the token is not valid (cached like a valid one, as kube-apiserver does).
    cache: moka::future::Cache<[u8; 32], Option<Arc<UserInfo>>>,
}

impl TokenReviewer {
    pub fn new(client: kube::Client, ttl: Duration) -> Self {
        TokenReviewer {
            api: kube::Api::all(client),
            cache: moka::future::Cache::builder()
                .max_capacity(CACHE_ENTRIES)
                .time_to_live(ttl.max(Duration::from_millis(1)))
                .build(),
        }
    }

    async fn review(&self, token: &str) -> Result<Option<Arc<UserInfo>>, Error> {
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
        let answer = self
            .cache
            .try_get_with(key, self.review(token))
            .await
            .map_err(Error::Shared)?;
        match answer {
            Some(user) => Ok(Some((*user).clone())),
            None => Err(Error::InvalidToken),
        }
    }
}
