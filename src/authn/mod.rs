//! Who is asking: `UserInfo` and the chain of authenticators tried in kube-apiserver's
//! order. Knows nothing of authorization, the bus or HTTP routing; sees only the request
//! headers and what the TLS layer learned about the peer.

pub mod delegated;
pub mod pusher;
mod token_file;
mod token_review;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use http::HeaderMap;

pub use delegated::{RequestHeader, SharedAuthConfig, X509};
pub use token_file::{TokenFile, TokenFileError};
pub use token_review::{REVIEW_SECONDS_BUCKETS, TokenReviewer};

use crate::tls::Peer;

/// The group kube-apiserver adds to every authenticated user.
pub const AUTHENTICATED_GROUP: &str = "system:authenticated";

/// An authenticated identity, as `k8s.io/apiserver/pkg/authentication/user.Info`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    pub fn new(name: &str, groups: &[&str]) -> Self {
        UserInfo {
            name: name.to_owned(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            ..Default::default()
        }
    }
}

/// What an authenticator may look at.
pub struct Request<'a> {
    pub headers: &'a HeaderMap,
    pub peer: &'a Peer,
}

impl Request<'_> {
    /// The bearer token, parsed as kube-apiserver's bearertoken authenticator does.
    pub fn bearer_token(&self) -> Option<&str> {
        bearer_token(self.headers)
    }
}

/// `Authorization: Bearer <token>`; any other scheme, or an empty token, is no token.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim();
    let mut parts = value.splitn(3, ' ');
    let scheme = parts.next()?;
    let token = parts.next()?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// What kind of credential a request carries, for the log: never the credential itself.
pub fn presented(headers: &HeaderMap, peer: &Peer) -> &'static str {
    match (bearer_token(headers).is_some(), peer.certs.is_some()) {
        (true, true) => "bearer token and client certificate",
        (true, false) => "bearer token",
        (false, true) => "client certificate",
        (false, false) => "none",
    }
}

/// Why authentication failed. Never carries a token.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid bearer token")]
    InvalidToken,
    #[error("TokenReview failed: {0}")]
    Review(#[source] kube::Error),
    /// The failure of a review another request was waiting for too (the cache shares it).
    #[error("{0}")]
    Shared(#[source] Arc<Error>),
}

impl Error {
    /// The backend could not answer (as opposed to: the credentials are bad).
    pub fn is_backend_failure(&self) -> bool {
        match self {
            Error::InvalidToken => false,
            Error::Review(_) => true,
            Error::Shared(inner) => inner.is_backend_failure(),
        }
    }
}

/// One way of authenticating. `Ok(None)`: this authenticator has nothing to say about the
/// request (no credentials of its kind); `Err`: it had credentials of its kind and they
/// are bad.
#[async_trait]
pub trait Authenticator: Send + Sync {
    async fn authenticate(&self, req: &Request<'_>) -> Result<Option<UserInfo>, Error>;
}

/// Authenticators tried in order; the first identity wins, as kube-apiserver's union.
#[derive(Clone, Default)]
pub struct Chain {
    authenticators: Vec<Arc<dyn Authenticator>>,
}

impl Chain {
    pub fn new(authenticators: Vec<Arc<dyn Authenticator>>) -> Self {
        Chain { authenticators }
    }

    /// The request's user, with `system:authenticated` added; `Ok(None)` when no
    /// authenticator recognised any credentials.
    pub async fn authenticate(&self, req: &Request<'_>) -> Result<Option<UserInfo>, Error> {
        let mut last_error = None;
        for a in &self.authenticators {
            match a.authenticate(req).await {
                Ok(Some(mut user)) => {
                    if !user.groups.iter().any(|g| g == AUTHENTICATED_GROUP) {
                        user.groups.push(AUTHENTICATED_GROUP.to_owned());
                    }
                    return Ok(Some(user));
                }
                Ok(None) => {}
                Err(e) => last_error = Some(e),
            }
        }
        last_error.map_or(Ok(None), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_str(auth).unwrap(),
        );
        h
    }

    #[test]
    fn bearer_token_parsing() {
        assert_eq!(bearer_token(&headers("Bearer abc")), Some("abc"));
        assert_eq!(bearer_token(&headers("bearer abc")), Some("abc"));
        assert_eq!(bearer_token(&headers("  Bearer abc  ")), Some("abc"));
        assert_eq!(bearer_token(&headers("Basic abc")), None);
        assert_eq!(bearer_token(&headers("Bearer")), None);
        assert_eq!(bearer_token(&headers("Bearer  abc")), None);
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }

    #[tokio::test]
    async fn chain_adds_authenticated_group_and_reports_bad_tokens() {
        let tokens = TokenFile::parse("t1,alice,uid-1,\"team-a,dev\"\n", "test").unwrap();
        let chain = Chain::new(vec![Arc::new(tokens)]);
        let peer = Peer::for_tests();
        let h = headers("Bearer t1");
        let user = chain
            .authenticate(&Request {
                headers: &h,
                peer: &peer,
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(user.name, "alice");
        assert_eq!(user.groups, vec!["team-a", "dev", AUTHENTICATED_GROUP]);

        let h = headers("Bearer nope");
        let err = chain
            .authenticate(&Request {
                headers: &h,
                peer: &peer,
            })
            .await;
        assert!(matches!(err, Err(Error::InvalidToken)));

        let h = HeaderMap::new();
        let none = chain
            .authenticate(&Request {
                headers: &h,
                peer: &peer,
            })
            .await;
        assert!(matches!(none, Ok(None)));
    }
}
