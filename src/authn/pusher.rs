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
    /// loopback push in `--dev`), or why it may not push.
    pub fn admit(&self, headers: &http::HeaderMap, peer: &Peer) -> Result<String, ApiError> {
        let mut refusal = None;
        if let (Some(ca), Some(certs)) = (&self.ca, &peer.certs) {
            let verified = ca.read().unwrap_or_else(|e| e.into_inner()).verify(certs);
            match verified {
                Ok(id) if self.allowed_names.contains(&id.common_name) => return Ok(id.common_name),
                Ok(id) => {
                    refusal = Some(ApiError::ForbiddenPlain(format!(
                        "client certificate CN {:?} is not allowed to push audit events",
                        id.common_name
                    )))
                }
                Err(reason) => {
                    tracing::debug!(%reason, peer = %peer.remote_addr, "ingest client certificate refused");
                    refusal = Some(ApiError::Unauthorized);
                }
            }
        }
        if let Some(token) = bearer_token(headers) {
            return match self.tokens.as_ref().and_then(|t| t.lookup(token)) {
                Some(user) => Ok(user.name.clone()),
                None => Err(ApiError::Unauthorized),
            };
        }
        if self.open_on_loopback && peer.remote_addr.ip().is_loopback() && refusal.is_none() {
            return Ok(String::new());
        }
        Err(refusal.unwrap_or(ApiError::Unauthorized))
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
        assert!(matches!(
            g.admit(&headers(Some("other")), &local),
            Err(ApiError::Unauthorized)
        ));
        assert!(matches!(
            g.admit(&headers(None), &local),
            Err(ApiError::Unauthorized)
        ));
        let open = gate(true, "push-token,apiserver-1,uid\n");
        assert_eq!(open.admit(&headers(None), &local).unwrap(), "");
        // A wrong token is refused even where loopback is open.
        assert!(open.admit(&headers(Some("other")), &local).is_err());
        let remote = Peer {
            remote_addr: "10.1.2.3:5555".parse().unwrap(),
            certs: None,
        };
        assert!(open.admit(&headers(None), &remote).is_err());
    }
}
