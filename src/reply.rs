//! The response body type every handler returns, and the few ways of building a response.
//! Errors go through `status::ApiError`; this is for everything else.

use std::convert::Infallible;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};

use crate::status::ApiError;

/// One body type for plain and streaming answers alike.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

pub fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed_unsync()
}

/// A complete response with a content type.
pub fn bytes(code: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = code;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(CONTENT_TYPE, v);
    }
    resp
}

pub fn json(code: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    bytes(code, "application/json", body)
}

/// The `Status` response for an error.
pub fn error(e: &ApiError) -> Response<Body> {
    let code = e.code_reason().0;
    let mut resp = json(code, e.to_json());
    if code == StatusCode::TOO_MANY_REQUESTS {
        resp.headers_mut().insert(
            http::header::RETRY_AFTER,
            HeaderValue::from(crate::status::RETRY_AFTER_SECONDS),
        );
    }
    resp
}
