//! `ApiError`: every way a request can fail, and the one place that turns it into a
//! `meta.k8s.io/v1` `Status`, either as an HTTP response body or as a watch `ERROR` event.
//! Messages copy kube-apiserver's wording so that kubectl prints what users already know.

use bytes::Bytes;
use http::StatusCode;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    ListMeta, Status, StatusCause, StatusDetails,
};

/// What a 429 or a 503 asks the client to wait, in its `Retry-After` header and its
/// Status (kube-apiserver's max-in-flight filter asks for one second too).
pub const RETRY_AFTER_SECONDS: i32 = 1;

/// An error answered to a client. One variant per Kubernetes `reason`. This module knows
/// no other module of the crate: each layer converts its own errors into `ApiError` with
/// a `From` impl beside them (as `k8s.io/apimachinery`'s `apierrors` knows nothing above it).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Unauthorized")]
    Unauthorized,
    /// An authorization decision's denial: the message in kube-apiserver's words, and
    /// the `details` it gives (the authorizer's layer builds both).
    #[error("{message}")]
    Forbidden {
        message: String,
        details: Box<ForbiddenDetails>,
    },
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
            ApiError::Forbidden { .. } | ApiError::ForbiddenPlain(_) => {
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
            ApiError::Forbidden { details, .. } => Some(StatusDetails {
                group: details.group.clone(),
                kind: details.kind.clone(),
                name: details.name.clone(),
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
                retry_after_seconds: Some(RETRY_AFTER_SECONDS),
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

/// The `details` of a 403, as kube-apiserver fills them for a resource request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForbiddenDetails {
    pub group: Option<String>,
    pub kind: Option<String>,
    pub name: Option<String>,
}

/// Go's `%q` for the strings we print: a JSON string literal is the same for every
/// printable input and escapes quotes and control characters the same way.
pub(crate) fn go_quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_body_has_kind_api_version_and_failure() {
        let err = ApiError::Forbidden {
            message: "namespacedevents.audit.k8s.io is forbidden: no".into(),
            details: Box::new(ForbiddenDetails {
                group: Some("audit.k8s.io".into()),
                kind: Some("namespacedevents".into()),
                name: None,
            }),
        };
        let v: serde_json::Value = serde_json::from_slice(&err.to_json()).unwrap();
        assert_eq!(v["kind"], "Status");
        assert_eq!(v["apiVersion"], "v1");
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "Forbidden");
        assert_eq!(v["code"], 403);
        assert_eq!(
            v["message"],
            "namespacedevents.audit.k8s.io is forbidden: no"
        );
        assert_eq!(v["details"]["group"], "audit.k8s.io");
        assert_eq!(v["details"]["kind"], "namespacedevents");
        assert!(v["details"].get("name").is_none());
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
