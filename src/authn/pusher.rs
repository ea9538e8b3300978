//! Who may push audit events: the ingest tokens, an ingest client certificate whose CN
//! is allowed, or (in `--dev`) any client on loopback. Never the watchers' credentials:
//! a watcher cannot push, a pusher cannot watch.

use std::sync::{Arc, RwLock};

use tokio_util::sync::CancellationToken;

use crate::authn::{TokenFile, bearer_token};
use crate::status::ApiError;
use crate::tls::{self, ClientCa, Peer};

/// Who may push, as the flags say (`--ingest-*`).
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// `--dev`: any client on a loopback address may push.
    pub open_on_loopback: bool,
    pub token_file: Option<std::path::PathBuf>,
    pub client_ca_file: Option<std::path::PathBuf>,
    pub allowed_names: Vec<String>,
}

/// Who may push.
pub struct Gate {
    open_on_loopback: bool,
    tokens: Option<TokenFile>,
    /// Swapped by a file watch when the CA file changes.
    ca: Option<Arc<RwLock<ClientCa>>>,
    allowed_names: Vec<String>,
}

/// Why a push was refused: which credential failed, and how. Never the credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No token, no client certificate, and not an anonymous push on an open loopback.
    #[error("no credentials")]
    NoCredentials,
    /// A client certificate this gate cannot verify (not signed by the CA, or no CA is
    /// given), and no token.
    #[error("client certificate not signed by --ingest-client-ca-file")]
    CertNotVerified,
    /// A verified client certificate whose CN is not in `--ingest-allowed-names`, and no
    /// token.
    #[error("client certificate CN {cn:?} is not allowed to push audit events")]
    CertNotAllowed { cn: String },
    /// A bearer token not in `--ingest-token-file` (or no token file is given).
    #[error("bearer token not in --ingest-token-file")]
    UnknownToken,
}

impl Refusal {
    /// The answer: kube-apiserver's bare 401 for credentials it cannot believe, 403 with
    /// the reason for a pusher it knows but does not allow.
    pub fn answer(&self) -> ApiError {
        match self {
            Refusal::CertNotAllowed { .. } => ApiError::ForbiddenPlain(self.to_string()),
            Refusal::NoCredentials | Refusal::CertNotVerified | Refusal::UnknownToken => {
                ApiError::Unauthorized
            }
        }
    }
}

/// Who may push cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("--ingest-client-ca-file: {0}")]
    Ca(#[from] crate::tls::CaError),
    #[error("--ingest-token-file: {0}")]
    Tokens(#[from] super::token_file::TokenFileError),
}

impl Gate {
    /// Load the token file and CA; the CA is reloaded when its file changes, until `shutdown`.
    pub fn new(settings: &Settings, shutdown: CancellationToken) -> Result<Self, GateError> {
        let ca = match &settings.client_ca_file {
            Some(path) => {
                let ca = Arc::new(RwLock::new(ClientCa::load(path)?));
                let (shared, file) = (ca.clone(), path.clone());
                tls::spawn_file_watch(
                    vec![path.clone()],
                    "ingest client CA",
                    shutdown,
                    move || {
                        *shared.write().unwrap_or_else(|e| e.into_inner()) =
                            ClientCa::load(&file).map_err(|e| e.to_string())?;
                        Ok(())
                    },
                );
                Some(ca)
            }
            None => None,
        };
        Ok(Gate {
            open_on_loopback: settings.open_on_loopback,
            tokens: settings
                .token_file
                .as_deref()
                .map(TokenFile::load)
                .transpose()?,
            ca,
            allowed_names: settings.allowed_names.clone(),
        })
    }

    /// The pusher's name (client certificate CN or token user; empty for an anonymous
    /// loopback push in `--dev`), or why it may not push. The client certificate is
    /// checked first, and admits at once if its CN is allowed; otherwise a bearer token,
    /// when there is one, decides alone; only a push with neither is anonymous.
    pub fn admit(&self, headers: &http::HeaderMap, peer: &Peer) -> Result<String, Refusal> {
        let refused_cert = match (&self.ca, &peer.certs) {
            (Some(ca), Some(certs)) => {
                let verified = ca.read().unwrap_or_else(|e| e.into_inner()).verify(certs);
                match verified {
                    Ok(id) if self.allowed_names.contains(&id.common_name) => {
                        return Ok(id.common_name);
                    }
                    Ok(id) => Some(Refusal::CertNotAllowed { cn: id.common_name }),
                    Err(reason) => {
                        tracing::debug!(%reason, peer = %peer.remote_addr, "ingest client certificate refused");
                        Some(Refusal::CertNotVerified)
                    }
                }
            }
            // Without a CA, or without a certificate, there is none to refuse.
            _ => None,
        };
        if let Some(token) = bearer_token(headers) {
            return match self.tokens.as_ref().and_then(|t| t.lookup(token)) {
                Some(user) => Ok(user.name.clone()),
                None => Err(Refusal::UnknownToken),
            };
        }
        match refused_cert {
            Some(refusal) => Err(refusal),
            None if self.open_on_loopback && peer.remote_addr.ip().is_loopback() => {
                Ok(String::new())
            }
            // A certificate with no CA to check it against.
            None if peer.certs.is_some() => Err(Refusal::CertNotVerified),
            None => Err(Refusal::NoCredentials),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(open: bool, tokens: &str) -> Gate {
        Gate {
            open_on_loopback: open,
            tokens: Some(TokenFile::parse(tokens, "t").unwrap()),
            ca: None,
            allowed_names: vec![],
        }
    }

    fn headers(token: Option<&str>) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        if let Some(t) = token {
            h.insert(
                http::header::AUTHORIZATION,
                format!("Bearer {t}").parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn pushers_by_token_or_loopback() {
        let g = gate(false, "push-token,apiserver-1,uid\n");
        let local = Peer::for_tests();
        assert_eq!(
            g.admit(&headers(Some("push-token")), &local).unwrap(),
            "apiserver-1"
        );
        assert_eq!(
            g.admit(&headers(Some("other")), &local),
            Err(Refusal::UnknownToken)
        );
        assert_eq!(g.admit(&headers(None), &local), Err(Refusal::NoCredentials));
        assert!(matches!(
            Refusal::UnknownToken.answer(),
            ApiError::Unauthorized
        ));
        // A pusher known but not allowed is told why.
        let not_allowed = Refusal::CertNotAllowed {
            cn: "kubelet".into(),
        }
        .answer();
        assert_eq!(not_allowed.code_reason().0, http::StatusCode::FORBIDDEN);
        assert_eq!(
            not_allowed.to_string(),
            r#"forbidden: client certificate CN "kubelet" is not allowed to push audit events"#
        );
        let open = gate(true, "push-token,apiserver-1,uid\n");
        assert_eq!(open.admit(&headers(None), &local).unwrap(), "");
        // A wrong token is refused even where loopback is open.
        assert_eq!(
            open.admit(&headers(Some("other")), &local),
            Err(Refusal::UnknownToken)
        );
        let remote = Peer {
            remote_addr: "10.1.2.3:5555".parse().unwrap(),
            certs: None,
        };
        assert_eq!(
            open.admit(&headers(None), &remote),
            Err(Refusal::NoCredentials)
        );
    }
}
