//! Authentication delegated to the cluster, as every aggregated apiserver does it:
//! `AuthConfig` (the client CA and the front-proxy settings) read from the
//! `kube-system/extension-apiserver-authentication` ConfigMap, overridden by flags, and
//! kept current by watching the ConfigMap so that CA rotation needs no restart; and the
//! authenticators that read it (`RequestHeader`, `X509`).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::watcher;
use tokio_util::sync::CancellationToken;

use super::{Authenticator, Error, Request, UserInfo};
use crate::tls::ClientCa;

pub const CONFIG_MAP_NAMESPACE: &str = "kube-system";
pub const CONFIG_MAP_NAME: &str = "extension-apiserver-authentication";

/// Header names used when neither flags nor the ConfigMap name any (kube-aggregator's).
const DEFAULT_USERNAME_HEADERS: &str = "X-Remote-User";
const DEFAULT_GROUP_HEADERS: &str = "X-Remote-Group";
const DEFAULT_EXTRA_PREFIX: &str = "X-Remote-Extra-";

/// Front-proxy (request-header) authentication settings.
#[derive(Debug, Clone)]
pub struct RequestHeaderConfig {
    pub ca: ClientCa,
    /// Allowed client certificate CNs; empty: any certificate from `ca`.
    pub allowed_names: Vec<String>,
    pub username_headers: Vec<String>,
    pub group_headers: Vec<String>,
    pub extra_prefixes: Vec<String>,
}

/// The client-certificate settings in force.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    pub client_ca: Option<ClientCa>,
    pub request_header: Option<RequestHeaderConfig>,
}

/// Values given by flags; each one set wins over the ConfigMap's.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub client_ca_pem: Option<(String, String)>,
    pub requestheader_ca_pem: Option<(String, String)>,
    pub allowed_names: Vec<String>,
    pub username_headers: Vec<String>,
    pub group_headers: Vec<String>,
    pub extra_prefixes: Vec<String>,
}

impl Overrides {
    /// Build the config from the ConfigMap's data (if any) and these overrides.
    pub fn resolve(
        &self,
        data: Option<&BTreeMap<String, String>>,
    ) -> Result<AuthConfig, ConfigError> {
        let get = |key: &str| {
            data.and_then(|d| d.get(key))
                .filter(|v| !v.trim().is_empty())
        };
        let list = |flag: &Vec<String>,
                    key: &'static str,
                    default: Option<&str>|
         -> Result<Vec<String>, ConfigError> {
            if !flag.is_empty() {
                return Ok(flag.clone());
            }
            let from_map: Vec<String> = match get(key) {
                Some(json) => serde_json::from_str(json)
                    .map_err(|source| ConfigError::NotAList { key, source })?,
                None => vec![],
            };
            Ok(if from_map.is_empty() {
                default.map(|d| vec![d.to_owned()]).unwrap_or_default()
            } else {
                from_map
            })
        };
        let ca = |flag: &Option<(String, String)>,
                  key: &str|
         -> Result<Option<ClientCa>, ConfigError> {
            match (flag, get(key)) {
                (Some((pem, origin)), _) => Ok(Some(ClientCa::from_pem(pem.as_bytes(), origin)?)),
                (None, Some(pem)) => Ok(Some(ClientCa::from_pem(
                    pem.as_bytes(),
                    &format!("ConfigMap {CONFIG_MAP_NAME} key {key}"),
                )?)),
                (None, None) => Ok(None),
            }
        };
        let request_header = match ca(&self.requestheader_ca_pem, "requestheader-client-ca-file")? {
            Some(ca) => Some(RequestHeaderConfig {
                ca,
                allowed_names: list(&self.allowed_names, "requestheader-allowed-names", None)?,
                username_headers: list(
                    &self.username_headers,
                    "requestheader-username-headers",
                    Some(DEFAULT_USERNAME_HEADERS),
                )?,
                group_headers: list(
                    &self.group_headers,
                    "requestheader-group-headers",
                    Some(DEFAULT_GROUP_HEADERS),
                )?,
                extra_prefixes: list(
                    &self.extra_prefixes,
                    "requestheader-extra-headers-prefix",
                    Some(DEFAULT_EXTRA_PREFIX),
                )?,
            }),
            None => None,
        };
        Ok(AuthConfig {
            client_ca: ca(&self.client_ca_pem, "client-ca-file")?,
            request_header,
        })
    }
}

/// The client-certificate settings cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading ConfigMap {CONFIG_MAP_NAMESPACE}/{CONFIG_MAP_NAME}: {0}")]
    ConfigMap(#[source] kube::Error),
    #[error("ConfigMap {CONFIG_MAP_NAME} key {key}: not a JSON list of strings: {source}")]
    NotAList {
        key: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Ca(#[from] crate::tls::CaError),
}

/// The config in force, swapped whole when the ConfigMap changes.
#[derive(Clone, Default)]
pub struct SharedAuthConfig(Arc<RwLock<Arc<AuthConfig>>>);

impl SharedAuthConfig {
    pub fn new(config: AuthConfig) -> Self {
        SharedAuthConfig(Arc::new(RwLock::new(Arc::new(config))))
    }

    pub fn current(&self) -> Arc<AuthConfig> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, config: AuthConfig) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
    }
}

/// Read the ConfigMap once (a missing ConfigMap is an empty one), for start-up.
pub async fn load(client: &kube::Client, overrides: &Overrides) -> Result<AuthConfig, ConfigError> {
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(client.clone(), CONFIG_MAP_NAMESPACE);
    let cm = api
        .get_opt(CONFIG_MAP_NAME)
        .await
        .map_err(ConfigError::ConfigMap)?;
    overrides.resolve(cm.as_ref().and_then(|c| c.data.as_ref()))
}

/// Keep `shared` current by watching the ConfigMap until `shutdown`. A change that does
/// not parse is logged and the previous config kept: a typo must not lock everyone out.
pub fn spawn_refresh(
    client: kube::Client,
    overrides: Overrides,
    shared: SharedAuthConfig,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let api: kube::Api<ConfigMap> = kube::Api::namespaced(client, CONFIG_MAP_NAMESPACE);
        let config = watcher::Config::default().fields(&format!("metadata.name={CONFIG_MAP_NAME}"));
        let mut events = watcher::watcher(api, config).boxed();
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => return,
                e = events.next() => e,
            };
            let cm = match event {
                Some(Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm))) => Some(cm),
                Some(Ok(watcher::Event::Delete(_))) => None,
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    // The watcher retries by itself; say so once per failure.
                    tracing::warn!(error = %e, "watching the authentication ConfigMap");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
                None => return,
            };
            match overrides.resolve(cm.as_ref().and_then(|c| c.data.as_ref())) {
                Ok(c) => {
                    shared.set(c);
                    tracing::info!(
                        "authentication config updated from ConfigMap {CONFIG_MAP_NAMESPACE}/{CONFIG_MAP_NAME}"
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, "ignoring an authentication ConfigMap that does not parse")
                }
            }
        }
    });
}

/// Front-proxy authentication: headers are believed only from a connection whose client
/// certificate chains to the request-header CA and has an allowed CN.
pub struct RequestHeader(pub SharedAuthConfig);

#[async_trait]
impl Authenticator for RequestHeader {
    async fn authenticate(&self, req: &Request<'_>) -> Result<Option<UserInfo>, Error> {
        let config = self.0.current();
        let (Some(rh), Some(certs)) = (&config.request_header, &req.peer.certs) else {
            return Ok(None);
        };
        let Ok(id) = rh.ca.verify(certs) else {
            return Ok(None);
        };
        if !rh.allowed_names.is_empty() && !rh.allowed_names.contains(&id.common_name) {
            tracing::debug!(cn = %id.common_name, "front-proxy certificate CN not allowed; headers ignored");
            return Ok(None);
        }
        Ok(identity_from_headers(
            req.headers,
            &rh.username_headers,
            &rh.group_headers,
            &rh.extra_prefixes,
        ))
    }
}

/// The identity a front proxy's headers carry: the first non-empty value of the user
/// name headers, every value of the group headers, and the extra attributes under the
/// prefixes (keys percent-decoded and lower-cased, as kube-apiserver reads them). `None`
/// without a user name. Only for a connection whose certificate `RequestHeader` verified;
/// public so that the fuzz targets can drive it with arbitrary headers.
pub fn identity_from_headers(
    headers: &http::HeaderMap,
    username_headers: &[String],
    group_headers: &[String],
    extra_prefixes: &[String],
) -> Option<UserInfo> {
    // Non-empty values, as kube-apiserver's requestheader reads them. UTF-8 is taken
    // (`HeaderValue::to_str` takes visible ASCII only, and would drop a user named José);
    // other bytes cannot be a Kubernetes user or group name.
    let values = |name: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| std::str::from_utf8(v.as_bytes()).ok())
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let name = username_headers.iter().flat_map(|h| values(h)).next()?;
    let groups = group_headers.iter().flat_map(|h| values(h)).collect();
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    // Prefix first, then headers: each key's values in kube-apiserver's order.
    for prefix in extra_prefixes {
        let prefix = prefix.to_ascii_lowercase();
        for (header, value) in headers {
            let Ok(value) = std::str::from_utf8(value.as_bytes()) else {
                continue;
            };
            if let Some(key) = header.as_str().strip_prefix(&prefix) {
                extra
                    .entry(unescape_extra_key(key))
                    .or_default()
                    .push(value.to_owned());
            }
        }
    }
    Some(UserInfo {
        name,
        uid: String::new(),
        groups,
        extra,
    })
}

/// An extra key from a header name (already lower case): percent-decoded as Go's
/// `url.PathUnescape`, kept as it is when that fails, as kube-apiserver's
/// `unescapeExtraKey`. By hand because `form_urlencoded` reads `+` as a space and stops
/// at `&`, and `percent_encoding` passes a bad escape through half-decoded.
fn unescape_extra_key(key: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
    }
    let bytes = key.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let pair = bytes
                .get(i + 1)
                .copied()
                .and_then(hex)
                .zip(bytes.get(i + 2).copied().and_then(hex));
            let Some((hi, lo)) = pair else {
                return key.to_owned();
            };
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| key.to_owned())
}

/// x509 client certificates: CN is the user, O the groups.
pub struct X509(pub SharedAuthConfig);

#[async_trait]
impl Authenticator for X509 {
    async fn authenticate(&self, req: &Request<'_>) -> Result<Option<UserInfo>, Error> {
        let config = self.0.current();
        let (Some(ca), Some(certs)) = (&config.client_ca, &req.peer.certs) else {
            return Ok(None);
        };
        match ca.verify(certs) {
            Ok(id) if !id.common_name.is_empty() => Ok(Some(UserInfo {
                name: id.common_name,
                uid: String::new(),
                groups: id.organizations,
                extra: BTreeMap::new(),
            })),
            // A certificate from another CA (a front proxy's, say) is not ours to judge.
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec![]).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.self_signed(&key).unwrap().pem()
    }

    fn names(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| (*s).to_owned()).collect()
    }

    fn header_identity(pairs: &[(&str, &[u8])]) -> Option<UserInfo> {
        let mut headers = http::HeaderMap::new();
        for (k, v) in pairs {
            headers.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_bytes(v).unwrap(),
            );
        }
        identity_from_headers(
            &headers,
            &names(&["X-Remote-User"]),
            &names(&["X-Remote-Group"]),
            &names(&["X-Remote-Extra-"]),
        )
    }

    // Divergences from kube-apiserver's requestheader, found while writing the
    // request_identity fuzz target's model of it.
    #[test]
    fn header_identity_reads_as_kube_apiserver() {
        // Empty values are skipped, for the user name and the groups alike.
        let u = header_identity(&[
            ("x-remote-user", b""),
            ("x-remote-user", b"alice"),
            ("x-remote-group", b""),
            ("x-remote-group", b"devs"),
        ])
        .unwrap();
        assert_eq!((u.name.as_str(), u.groups), ("alice", names(&["devs"])));
        // UTF-8 names are names, not missing.
        let u = header_identity(&[("x-remote-user", "José".as_bytes())]).unwrap();
        assert_eq!(u.name, "José");
        assert!(header_identity(&[("x-remote-user", b"\xff")]).is_none());
        assert!(header_identity(&[("x-remote-group", b"devs")]).is_none());
        // Extra keys: Go's PathUnescape, `+` and `&` kept, a bad escape kept whole.
        let u = header_identity(&[
            ("x-remote-user", b"alice"),
            ("x-remote-extra-a+b&c", b"1"),
            ("x-remote-extra-scopes%2fread", b"2"),
            ("x-remote-extra-bad%zz%41", b"3"),
        ])
        .unwrap();
        let keys: Vec<&str> = u.extra.keys().map(String::as_str).collect();
        assert_eq!(keys, ["a+b&c", "bad%zz%41", "scopes/read"]);
    }

    #[test]
    fn config_map_values_and_flag_overrides() {
        let mut data = BTreeMap::new();
        data.insert("client-ca-file".to_owned(), ca_pem());
        data.insert("requestheader-client-ca-file".to_owned(), ca_pem());
        data.insert(
            "requestheader-allowed-names".to_owned(),
            r#"["front-proxy-client"]"#.to_owned(),
        );
        data.insert(
            "requestheader-username-headers".to_owned(),
            r#"["X-Remote-User"]"#.to_owned(),
        );
        data.insert(
            "requestheader-group-headers".to_owned(),
            r#"["X-Remote-Group"]"#.to_owned(),
        );
        data.insert(
            "requestheader-extra-headers-prefix".to_owned(),
            r#"["X-Remote-Extra-"]"#.to_owned(),
        );
        let c = Overrides::default().resolve(Some(&data)).unwrap();
        assert!(c.client_ca.is_some());
        let rh = c.request_header.unwrap();
        assert_eq!(rh.allowed_names, ["front-proxy-client"]);
        assert_eq!(rh.username_headers, ["X-Remote-User"]);

        let o = Overrides {
            allowed_names: vec!["aggregator".into()],
            ..Default::default()
        };
        assert_eq!(
            o.resolve(Some(&data))
                .unwrap()
                .request_header
                .unwrap()
                .allowed_names,
            ["aggregator"]
        );
        // Nothing configured: no client-certificate authentication at all.
        let none = Overrides::default().resolve(None).unwrap();
        assert!(none.client_ca.is_none() && none.request_header.is_none());
        data.insert(
            "requestheader-allowed-names".to_owned(),
            "not json".to_owned(),
        );
        assert!(Overrides::default().resolve(Some(&data)).is_err());
    }
}
