//! The response body type every handler returns, and the few ways of building a response.
//! Errors go through `status::ApiError`; this is for everything else. Also where a panic
//! stops: in a handler it becomes a 500 Status, in a streaming body the end of the stream,
//! logged and counted either way, so one bad request never takes its connection or the
//! process down.

use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::FutureExt;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use prometheus::IntCounter;

use crate::status::ApiError;

/// One body type for plain and streaming answers alike.
pub type Body = UnsyncBoxBody<Chunk, Infallible>;

/// A body's piece of data: bytes of its own, or bytes it shares with others, gathered
/// from where they are (a watch's frame is the lines of the bus's events, not a copy of
/// them: with a hundred watchers, one copy of each line instead of a hundred, and the
/// connection's writer reads them straight into TLS).
pub enum Chunk {
    Bytes(Bytes),
    Shared(Box<dyn Buf + Send>),
}

impl std::fmt::Debug for Chunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Chunk::Bytes(_) => "Bytes",
            Chunk::Shared(_) => "Shared",
        };
        write!(f, "{kind}({} bytes)", self.remaining())
    }
}

impl From<Bytes> for Chunk {
    fn from(b: Bytes) -> Self {
        Chunk::Bytes(b)
    }
}

impl Buf for Chunk {
    fn remaining(&self) -> usize {
        match self {
            Chunk::Bytes(b) => b.remaining(),
            Chunk::Shared(s) => s.remaining(),
        }
    }

    fn chunk(&self) -> &[u8] {
        match self {
            Chunk::Bytes(b) => b.chunk(),
            Chunk::Shared(s) => s.chunk(),
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [std::io::IoSlice<'a>]) -> usize {
        match self {
            Chunk::Bytes(b) => b.chunks_vectored(dst),
            Chunk::Shared(s) => s.chunks_vectored(dst),
        }
    }

    fn advance(&mut self, n: usize) {
        match self {
            Chunk::Bytes(b) => b.advance(n),
            Chunk::Shared(s) => s.advance(n),
        }
    }

    fn copy_to_bytes(&mut self, len: usize) -> Bytes {
        match self {
            Chunk::Bytes(b) => b.copy_to_bytes(len),
            Chunk::Shared(s) => s.copy_to_bytes(len),
        }
    }
}

pub fn full(body: impl Into<Bytes>) -> Body {
    Full::new(Chunk::Bytes(body.into())).boxed_unsync()
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
    if code == StatusCode::TOO_MANY_REQUESTS || code == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut().insert(
            http::header::RETRY_AFTER,
            HeaderValue::from(crate::status::RETRY_AFTER_SECONDS),
        );
    }
    resp
}

/// Await a handler; a panic in it is logged, counted in `panics`, and answered 500.
/// (Not an `async fn`: that would hold the handler's future twice, as its argument and
/// as the future it awaits, and this one is the largest of the server.)
pub fn answer_panics<'a, F>(
    handler: F,
    panics: &'a IntCounter,
    what: &'a str,
) -> impl Future<Output = Response<Body>> + 'a
where
    F: Future<Output = Response<Body>> + 'a,
{
    AssertUnwindSafe(handler)
        .catch_unwind()
        .map(move |answer| match answer {
            Ok(resp) => resp,
            Err(panic) => {
                panics.inc();
                tracing::error!(
                    request = what,
                    panic = panic_message(&*panic),
                    "request handler panicked"
                );
                error(&ApiError::Internal(
                    "the server could not handle the request".into(),
                ))
            }
        })
}

/// A streaming body whose panic ends the stream (logged and counted) instead of its
/// connection's task.
pub struct Guarded<B> {
    inner: B,
    panics: IntCounter,
    ended: bool,
}

impl<B> Guarded<B> {
    pub fn new(inner: B, panics: IntCounter) -> Self {
        Guarded {
            inner,
            panics,
            ended: false,
        }
    }
}

impl<B> http_body::Body for Guarded<B>
where
    B: http_body::Body<Data = Chunk, Error = Infallible> + Unpin,
{
    type Data = Chunk;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Chunk>, Infallible>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        match std::panic::catch_unwind(AssertUnwindSafe(|| {
            Pin::new(&mut this.inner).poll_frame(cx)
        })) {
            Ok(poll) => poll,
            Err(panic) => {
                this.ended = true;
                this.panics.inc();
                tracing::error!(
                    panic = panic_message(&*panic),
                    "watch stream panicked; ending it"
                );
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter() -> IntCounter {
        IntCounter::new("p", "p").unwrap()
    }

    #[tokio::test]
    async fn a_panicking_handler_is_answered_500() {
        let panics = counter();
        let resp = answer_panics(async { panic!("boom") }, &panics, "GET /x").await;
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status["kind"], "Status");
        assert_eq!(status["code"], 500);
        assert_eq!(panics.get(), 1);
        let fine = answer_panics(async { json(StatusCode::OK, "{}") }, &panics, "GET /y").await;
        assert_eq!(fine.status(), StatusCode::OK);
        assert_eq!(panics.get(), 1);
    }

    #[tokio::test]
    async fn a_panicking_stream_ends_and_is_counted() {
        struct Boom(u8);
        impl http_body::Body for Boom {
            type Data = Chunk;
            type Error = Infallible;
            fn poll_frame(
                mut self: Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Chunk>, Infallible>>> {
                self.0 += 1;
                assert!(self.0 < 2, "the second frame panics");
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"line\n").into()))))
            }
        }
        let panics = counter();
        let mut body = Guarded::new(Boom(0), panics.clone());
        let mut line = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(line.copy_to_bytes(line.remaining()), "line\n");
        assert!(body.frame().await.is_none(), "the panic ends the stream");
        assert!(http_body::Body::is_end_stream(&body));
        assert!(body.frame().await.is_none());
        assert_eq!(panics.get(), 1);
    }
}
