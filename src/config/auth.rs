//! `Authentication` and `Authorization` flags, and what they become: the authenticators'
//! and the authorizer's settings.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::parse_duration;
use crate::source::Source;

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Authentication")]
pub struct Authentication {
    /// kubeconfig for reaching kube-apiserver (TokenReview, SubjectAccessReview, the
    /// extension-apiserver-authentication ConfigMap). Absent: in-cluster config.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// kubeconfig for TokenReview and the ConfigMap, overriding --kubeconfig.
    #[arg(long)]
    pub authentication_kubeconfig: Option<PathBuf>,
    /// CA bundle for x509 client-certificate authentication (else from the ConfigMap).
    #[arg(long)]
    pub client_ca_file: Option<PathBuf>,
    /// CA bundle that front-proxy (aggregator) client certificates must chain to.
    #[arg(long)]
    pub requestheader_client_ca_file: Option<PathBuf>,
    /// Common names allowed for front-proxy client certificates (empty: any).
    #[arg(long, value_delimiter = ',')]
    pub requestheader_allowed_names: Vec<String>,
    /// Headers carrying the user name from the front proxy.
    #[arg(long, value_delimiter = ',')]
    pub requestheader_username_headers: Vec<String>,
    /// Headers carrying the groups from the front proxy.
    #[arg(long, value_delimiter = ',')]
    pub requestheader_group_headers: Vec<String>,
    /// Header prefixes carrying extra user attributes from the front proxy.
    #[arg(long, value_delimiter = ',')]
    pub requestheader_extra_headers_prefix: Vec<String>,
    /// How long TokenReview answers are cached.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub authentication_token_webhook_cache_ttl: Duration,
    /// Static bearer tokens, kube-apiserver's CSV format: token,user,uid,"group1,group2".
    #[arg(long)]
    pub token_auth_file: Option<PathBuf>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorizationMode {
    #[value(name = "Webhook")]
    Webhook,
    #[value(name = "ABAC")]
    Abac,
    #[value(name = "AlwaysAllow")]
    AlwaysAllow,
}

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Authorization")]
pub struct Authorization {
    /// kubeconfig for SubjectAccessReview, overriding --kubeconfig.
    #[arg(long)]
    pub authorization_kubeconfig: Option<PathBuf>,
    /// How requests are authorized.
    #[arg(long, value_enum, default_value = "Webhook", ignore_case = true)]
    pub authorization_mode: AuthorizationMode,
    /// ABAC policy, kube-apiserver's JSON-lines format (with --authorization-mode=ABAC).
    #[arg(long)]
    pub authorization_policy_file: Option<PathBuf>,
    /// Paths served without authentication or authorization (a trailing * is a prefix).
    #[arg(long, value_delimiter = ',', default_value = "/healthz,/readyz,/livez")]
    pub authorization_always_allow_paths: Vec<String>,
    /// How long an "allowed" SubjectAccessReview answer is cached.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub authorization_webhook_cache_authorized_ttl: Duration,
    /// How long a "denied" SubjectAccessReview answer is cached.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub authorization_webhook_cache_unauthorized_ttl: Duration,
    /// What a watcher of a namespace must be allowed to see an event. namespace: watch
    /// (list, get) on namespacedevents there, and then every event of it. resource: also
    /// get on each event's objectRef resource (the parent of a subresource) in the
    /// event's namespace, cluster-wide for cluster-scoped objects: one question per user,
    /// group, resource and namespace, cached and asked again with the watch's
    /// re-authorization; an event whose answer fails is withheld.
    #[arg(long, value_enum, default_value = "namespace")]
    pub authorization_granularity: Granularity,
}

/// `--authorization-granularity`.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Granularity {
    /// Who may watch a namespace's events sees all of them.
    #[default]
    Namespace,
    /// Each event also needs `get` on the resource it is about.
    Resource,
}

#[derive(Debug, Clone)]
pub enum AuthzSettings {
    AlwaysAllow,
    Abac(Source),
    /// SubjectAccessReview, answers cached for these TTLs.
    Webhook {
        authorized_ttl: Duration,
        unauthorized_ttl: Duration,
    },
}

/// Cluster mode: kubeconfigs (`None`: in-cluster) for each concern.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub authentication_kubeconfig: Option<PathBuf>,
    pub authorization_kubeconfig: Option<PathBuf>,
    pub token_cache_ttl: Duration,
}

/// Client-certificate authentication from flags; in cluster mode, unset values come from
/// the extension-apiserver-authentication ConfigMap.
#[derive(Debug, Clone, Default)]
pub struct ClientCertSettings {
    pub client_ca_file: Option<PathBuf>,
    pub requestheader_client_ca_file: Option<PathBuf>,
    pub requestheader_allowed_names: Vec<String>,
    pub requestheader_username_headers: Vec<String>,
    pub requestheader_group_headers: Vec<String>,
    pub requestheader_extra_headers_prefix: Vec<String>,
}
