//! `ApiError`: every way a request can fail, and the one place that turns it into a
//! `meta.k8s.io/v1` `Status`, either as an HTTP response body or as a watch `ERROR` event.
//! Messages copy kube-apiserver's wording so that kubectl prints what users already know.

use bytes::Bytes;
use http::StatusCode;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    ListMeta, Status, StatusCause, StatusDetails,
};

use crate::authz::Attributes;

/// An error answered to a client. One variant per Kubernetes `reason`.
/// What a 429 asks the client to wait, in its `Retry-After` header and its Status.
pub const RETRY_AFTER_SECONDS: i32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Unauthorized")]
    Unauthorized,
    #[error("{}", forbidden_message(.0, .1))]
    Forbidden(Box<Attributes>, String),
    /// A forbidden answer that is not about an authorization decision (e.g. an ingest
    /// client certificate whose CN is not allowed).
    #[error("forbidden: {0}")]
    ForbiddenPlain(String),
    #[error("{0}")]
    NotFound(String),
    /// A named object that is not there (any more), in kube-apiserver's words.
    #[error("{resource}.{group} {} not found", go_quote(.name))]
    ObjectNotFound {
        group: &'static str,
        resource: &'static str,
        name: String,
    },
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("too old resource version: {requested} ({oldest})")]
    Expired { requested: u64, oldest: u64 },
    /// A LIST at a resourceVersion the window no longer holds.
    #[error("The resourceVersion for the provided list is too old.")]
    ListExpired,
    /// A continue token whose next page has left the window. Carries the token that
    /// continues from the same place without the consistency promise, as kube-apiserver
    /// hands back.
    #[error(
        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list."
    )]
    ContinueExpired { inconsistent_continue: String },
    /// A resourceVersion newer than any event yet.
    #[error("Timeout: Too large resource version: {requested}, current: {current}")]
    TooLargeResourceVersion { requested: u64, current: u64 },
    /// Request options that fail validation (`kind` names what was invalid).
    #[error("{kind}.meta.k8s.io \"\" is invalid: {message}")]
    Invalid { kind: &'static str, message: String },
    #[error("{0}")]
    NotAcceptable(String),
    #[error("the request is too large: limit is {limit} bytes")]
    RequestEntityTooLarge { limit: u64 },
    #[error("{0}")]
    TooManyRequests(String),
    /// The request head is over `--max-request-header-bytes`. Kubernetes has no reason
    /// for 431 (Go's server answers it before any handler): named after the code.
    #[error("the request headers are too large: limit is {limit} bytes")]
    RequestHeaderFieldsTooLarge { limit: usize },
    /// The URL is over `--max-url-bytes`; 414, reason named after the code.
    #[error("the request URL is too long: limit is {limit} bytes")]
    RequestUriTooLong { limit: usize },
    /// The request did not complete in time, as kube-apiserver's timeout filter says it.
    #[error("Timeout: {0}")]
    Timeout(String),
    #[error("Internal error occurred: {0}")]
    Internal(String),
    /// This replica cannot serve now (its bus is down); another one can.
    #[error("{0}")]
    ServiceUnavailable(String),
}

impl ApiError {
    /// HTTP code and Kubernetes `reason`, as `k8s.io/apimachinery/pkg/api/errors` pairs them.
    pub fn code_reason(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "Unauthorized"),
            ApiError::Forbidden(..) | ApiError::ForbiddenPlain(_) => {
                (StatusCode::FORBIDDEN, "Forbidden")
            }
            ApiError::NotFound(_) | ApiError::ObjectNotFound { .. } => {
                (StatusCode::NOT_FOUND, "NotFound")
            }
            ApiError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "BadRequest"),
            ApiError::Expired { .. } | ApiError::ListExpired | ApiError::ContinueExpired { .. } => {
                (StatusCode::GONE, "Expired")
            }
            ApiError::TooLargeResourceVersion { .. } => (StatusCode::GATEWAY_TIMEOUT, "Timeout"),
            ApiError::Invalid { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "Invalid"),
            ApiError::NotAcceptable(_) => (StatusCode::NOT_ACCEPTABLE, "NotAcceptable"),
            ApiError::RequestEntityTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge")
            }
            ApiError::TooManyRequests(_) => (StatusCode::TOO_MANY_REQUESTS, "TooManyRequests"),
            ApiError::RequestHeaderFieldsTooLarge { .. } => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "RequestHeaderFieldsTooLarge",
            ),
            ApiError::RequestUriTooLong { .. } => (StatusCode::URI_TOO_LONG, "RequestURITooLong"),
            ApiError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "Timeout"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
            ApiError::ServiceUnavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable")
            }
        }
    }

    pub fn to_status(&self) -> Status {
        let (code, reason) = self.code_reason();
        let details = match self {
            ApiError::Forbidden(attrs, _) => Some(StatusDetails {
                group: attrs.resource_request.then(|| attrs.api_group.clone()),
                kind: attrs.resource_request.then(|| attrs.resource.clone()),
                name: (!attrs.name.is_empty()).then(|| attrs.name.clone()),
                ..Default::default()
            }),
            ApiError::ObjectNotFound {
                group,
                resource,
                name,
            } => Some(StatusDetails {
                group: Some((*group).to_owned()),
                kind: Some((*resource).to_owned()),
                name: Some(name.clone()),
                ..Default::default()
            }),
            ApiError::TooLargeResourceVersion { .. } => Some(StatusDetails {
                causes: Some(vec![StatusCause {
                    reason: Some("ResourceVersionTooLarge".to_owned()),
                    message: Some("Too large resource version".to_owned()),
                    field: None,
                }]),
                retry_after_seconds: Some(1),
                ..Default::default()
            }),
            // As kube-apiserver's max-in-flight filter answers: come back in a second.
            ApiError::TooManyRequests(_) | ApiError::ServiceUnavailable(_) => Some(StatusDetails {
                retry_after_seconds: Some(RETRY_AFTER_SECONDS),
                ..Default::default()
            }),
            ApiError::Invalid { kind, .. } => Some(StatusDetails {
                group: Some("meta.k8s.io".to_owned()),
                kind: Some((*kind).to_owned()),
                ..Default::default()
            }),
            _ => None,
        };
        let metadata = match self {
            ApiError::ContinueExpired {
                inconsistent_continue,
            } => ListMeta {
                continue_: Some(inconsistent_continue.clone()),
                ..Default::default()
            },
            _ => ListMeta::default(),
        };
        Status {
            code: Some(i32::from(code.as_u16())),
            details,
            message: Some(self.to_string()),
            metadata,
            reason: Some(reason.to_owned()),
            status: Some("Failure".to_owned()),
        }
    }

    /// The `Status` as a JSON body.
    pub fn to_json(&self) -> Bytes {
        // Serialising a k8s-openapi Status cannot fail: it holds only strings and integers.
        Bytes::from(serde_json::to_vec(&self.to_status()).unwrap_or_default())
    }

    /// The `Status` as a watch `ERROR` event line, for errors found after the 200 went out.
    pub fn to_watch_event(&self) -> Bytes {
        let line = serde_json::json!({ "type": "ERROR", "object": self.to_status() });
        let mut out = serde_json::to_vec(&line).unwrap_or_default();
        out.push(b'\n');
        Bytes::from(out)
    }
}

impl From<crate::bus::Refused> for ApiError {
    fn from(e: crate::bus::Refused) -> Self {
        match e {
            crate::bus::Refused::Expired(e) => e.into(),
            crate::bus::Refused::Unavailable(reason) => {
                ApiError::ServiceUnavailable(reason.to_string())
            }
        }
    }
}

impl From<crate::bus::Expired> for ApiError {
    fn from(e: crate::bus::Expired) -> Self {
        ApiError::Expired {
            requested: e.requested,
            oldest: e.oldest,
        }
    }
}

impl From<crate::selector::Error> for ApiError {
    fn from(e: crate::selector::Error) -> Self {
        ApiError::BadRequest(e.to_string())
    }
}

impl From<crate::watch::registry::Full> for ApiError {
    fn from(e: crate::watch::registry::Full) -> Self {
        ApiError::TooManyRequests(e.to_string())
    }
}

/// Bad credentials: a plain 401, as kube-apiserver gives no reason.
impl From<crate::authn::Error> for ApiError {
    fn from(_: crate::authn::Error) -> Self {
        ApiError::Unauthorized
    }
}

/// An authorizer that cannot answer: the request fails closed, as a 500.
impl From<crate::authz::Error> for ApiError {
    fn from(e: crate::authz::Error) -> Self {
        ApiError::Internal(format!("authorization failed: {e}"))
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

/// Go's `%q` for the strings we print: a JSON string literal is the same for every
/// printable input and escapes quotes and control characters the same way.
pub(crate) fn go_quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::UserInfo;

    fn attrs(ns: &str, resource: &str) -> Attributes {
        Attributes {
            user: UserInfo::new("alice", &[]).into(),
            verb: "watch".into(),
            namespace: ns.into(),
            api_group: "audit.k8s.io".into(),
            api_version: "v1alpha1".into(),
            resource: resource.into(),
            resource_request: true,
            ..Default::default()
        }
    }

    #[test]
    fn forbidden_in_namespace_matches_kube_apiserver() {
        let err = ApiError::Forbidden(Box::new(attrs("team-b", "namespacedevents")), String::new());
        assert_eq!(
            err.to_string(),
            r#"namespacedevents.audit.k8s.io is forbidden: User "alice" cannot watch resource "namespacedevents" in API group "audit.k8s.io" in the namespace "team-b""#
        );
    }

    #[test]
    fn forbidden_cluster_scope_and_path() {
        let err = ApiError::Forbidden(Box::new(attrs("", "events")), "no policy".into());
        assert_eq!(
            err.to_string(),
            r#"events.audit.k8s.io is forbidden: User "alice" cannot watch resource "events" in API group "audit.k8s.io" at the cluster scope: no policy"#
        );
        let mut a = attrs("", "");
        a.resource_request = false;
        a.verb = "get".into();
        a.path = "/metrics".into();
        let err = ApiError::Forbidden(Box::new(a), String::new());
        assert_eq!(
            err.to_string(),
            r#"forbidden: User "alice" cannot get path "/metrics""#
        );
    }

    #[test]
    fn status_body_has_kind_api_version_and_failure() {
        let err = ApiError::Forbidden(Box::new(attrs("team-b", "namespacedevents")), String::new());
        let v: serde_json::Value = serde_json::from_slice(&err.to_json()).unwrap();
        assert_eq!(v["kind"], "Status");
        assert_eq!(v["apiVersion"], "v1");
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "Forbidden");
        assert_eq!(v["code"], 403);
        assert_eq!(v["details"]["group"], "audit.k8s.io");
        assert_eq!(v["details"]["kind"], "namespacedevents");
    }

    #[test]
    fn quotes_in_user_names_stay_inside_the_string() {
        let mut a = attrs("ns", "events");
        a.user = UserInfo::new("ev\"il", &[]).into();
        let msg = ApiError::Forbidden(Box::new(a), String::new()).to_string();
        assert!(msg.contains(r#"User "ev\"il" cannot"#), "{msg}");
    }

    #[test]
    fn list_errors_match_kube_apiserver() {
        let v: serde_json::Value = serde_json::from_slice(
            &ApiError::ObjectNotFound {
                group: "audit.k8s.io",
                resource: "namespacedevents",
                name: "a-1-responsecomplete".into(),
            }
            .to_json(),
        )
        .unwrap();
        assert_eq!(
            v["message"],
            r#"namespacedevents.audit.k8s.io "a-1-responsecomplete" not found"#
        );
        assert_eq!(
            (v["code"].as_u64(), v["reason"].as_str()),
            (Some(404), Some("NotFound"))
        );
        assert_eq!(
            v["details"],
            serde_json::json!({"name": "a-1-responsecomplete", "group": "audit.k8s.io", "kind": "namespacedevents"})
        );
        let v: serde_json::Value = serde_json::from_slice(
            &ApiError::ContinueExpired {
                inconsistent_continue: "next".into(),
            }
            .to_json(),
        )
        .unwrap();
        assert_eq!(
            (v["code"].as_u64(), v["reason"].as_str()),
            (Some(410), Some("Expired"))
        );
        assert_eq!(v["metadata"]["continue"], "next");
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .starts_with("The provided continue parameter is too old")
        );
        let v: serde_json::Value = serde_json::from_slice(
            &ApiError::TooLargeResourceVersion {
                requested: 9,
                current: 3,
            }
            .to_json(),
        )
        .unwrap();
        assert_eq!(
            (v["code"].as_u64(), v["reason"].as_str()),
            (Some(504), Some("Timeout"))
        );
        assert_eq!(
            v["message"],
            "Timeout: Too large resource version: 9, current: 3"
        );
        assert_eq!(
            v["details"]["causes"][0]["reason"],
            "ResourceVersionTooLarge"
        );
        let e = ApiError::Invalid {
            kind: "ListOptions",
            message: "resourceVersionMatch: Forbidden: x".into(),
        };
        assert_eq!(
            e.to_string(),
            r#"ListOptions.meta.k8s.io "" is invalid: resourceVersionMatch: Forbidden: x"#
        );
        assert_eq!(e.code_reason().0, StatusCode::UNPROCESSABLE_ENTITY);
    }

    #[test]
    fn watch_error_event_is_one_line() {
        let line = ApiError::Expired {
            requested: 3,
            oldest: 10,
        }
        .to_watch_event();
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["type"], "ERROR");
        assert_eq!(v["object"]["code"], 410);
        assert_eq!(v["object"]["reason"], "Expired");
    }
}
