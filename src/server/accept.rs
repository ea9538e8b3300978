//! The accept loop: TLS connections in, HTTP/1.1 and HTTP/2 served on each (every request
//! goes to `App::handle`), a bounded number open at once, and a graceful drain on
//! shutdown that first ends every watch (a watch never ends on its own).
//!
//! What one connection may hold (`config::ConnectionLimits`): the TLS handshake and the
//! first request head each have a deadline (a client that connects and trickles, or
//! sends nothing, is disconnected), later HTTP/1.1 heads too (hyper's header read
//! timeout), and a request head has a size cap in both protocols. HTTP/2 connections are
//! pinged, so that a peer that vanished does not hold its streams.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use super::App;
use super::stalled_write::StallGuard;
use super::write_coalescing::Coalesce;
use crate::tls::Peer;

/// Open connections at most; the accept loop waits for a free slot beyond this.
const MAX_CONNECTIONS: usize = 10_000;
/// Concurrent HTTP/2 streams (watches) one connection may carry.
const MAX_STREAMS_PER_CONNECTION: u32 = 1_000;
/// HTTP/2 send buffer per stream: four of a watch's 64 KiB frames in flight. Measured
/// (BENCHMARKS.md, 100 watchers on 10 connections): 64 KiB cost ~20 % more CPU per
/// delivered byte; 256 KiB to 1 MiB cost the same and kept p99 under 60 ms. Kept at the
/// low end because a stream whose client stopped reading holds this much until the
/// stall sweeper ends it.
const H2_SEND_BUFFER_BYTES: usize = 256 * 1024;
/// Headers one HTTP/1.1 request may have (hyper's default is 100, refused 431 above): a
/// front proxy sends one X-Remote-Group header per group, and kube-apiserver counts
/// bytes, not headers. The byte cap still bounds the whole head. (Above 100, hyper
/// keeps a request's headers on the heap: an allocation per request, hyper measures ~5 %.)
const MAX_HEADERS: usize = 1_000;
/// HTTP/2 pings: a peer that answers none for `H2_KEEP_ALIVE_TIMEOUT` after one is sent
/// (every `H2_KEEP_ALIVE_INTERVAL`) is gone, and its connection is closed. Go's HTTP/2
/// server reads the same way (ReadIdleTimeout, PingTimeout).
const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long shutdown waits for in-flight requests after watches were told to end.
const SHUTDOWN_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest pause between retries of a failing `accept` (e.g. out of file descriptors).
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Serve until `shutdown` completes; then stop accepting, end every watch, and wait
/// (bounded) for in-flight requests. The caller binds the listener.
pub async fn run(app: App, listener: TcpListener, shutdown: impl Future) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(app.tls_config());
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut backoff = Duration::from_millis(5);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => tokio::select! {
                    _ = &mut shutdown => break,
                    r = listener.accept() => r.map(|(s, a)| (s, a, permit)),
                },
                Err(_) => break,
            },
        };
        let (stream, remote_addr, permit) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, ?backoff, "accept failed; backing off");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                continue;
            }
        };
        backoff = Duration::from_millis(5);
        let (app, acceptor, watcher) = (app.clone(), acceptor.clone(), graceful.watcher());
        tokio::spawn(async move {
            serve_connection(app, acceptor, stream, remote_addr, watcher).await;
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!("shutting down: ending watches and draining connections");
    app.shut_down();
    if tokio::time::timeout(SHUTDOWN_DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {SHUTDOWN_DRAIN_TIMEOUT:?}; closing them");
    }
    Ok(())
}

async fn serve_connection(
    app: App,
    acceptor: TlsAcceptor,
    stream: TcpStream,
    remote_addr: std::net::SocketAddr,
    watcher: hyper_util::server::graceful::Watcher,
) {
    let _ = stream.set_nodelay(true);
    let _open = app.metrics().connection_opened();
    let limits = app.limits();
    let tls = match tokio::time::timeout(
        limits.tls_handshake_timeout,
        acceptor.accept(StallGuard::new(stream, app.stall_limit())),
    )
    .await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(peer = %remote_addr, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(peer = %remote_addr, "TLS handshake timed out");
            app.metrics().refused("tls_handshake_timeout");
            return;
        }
    };
    let certs = tls.get_ref().1.peer_certificates().map(|c| {
        c.iter()
            .map(|c| c.clone().into_owned())
            .collect::<Vec<_>>()
            .into()
    });
    let peer = Peer { remote_addr, certs };
    let metrics_app = app.clone();
    // Set by the first request's arrival: until then the connection is on its deadline.
    let requested = Arc::new(AtomicBool::new(false));
    let seen = requested.clone();
    let service = service_fn(move |req| {
        seen.store(true, Ordering::Relaxed);
        let (app, peer) = (app.clone(), peer.clone());
        // The handler's state (about 5.5 KiB: every route's futures nested in it) is boxed
        // when the request's task first runs, and freed when it answers. Hyper keeps this
        // future inline in each HTTP/2 stream's task, which lives as long as the response
        // body: inline, an idle watch held that much for nothing (and each HTTP/1.1
        // connection as much, in hyper's slot for the request in flight). Boxed as this
        // closure returns instead, a burst of watch requests (hyper accepts every stream
        // already read before any of them runs) held one box each at once, pages the
        // allocator keeps after they are freed. One allocation per request, none per
        // event.
        async move { Ok::<_, Infallible>(Box::pin(app.handle(req, &peer)).await) }
    });
    // hyper and h2 refuse a head above twice the limit on their own, with a bare 431 and
    // without buffering more of it; `App::handle` answers the heads in between with a
    // Status (hyper's read buffer must be at least 8 KiB).
    let head_cap = limits.max_request_header_bytes.saturating_mul(2).max(8192);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.request_header_timeout)
        .max_buf_size(head_cap)
        .max_headers(MAX_HEADERS);
    builder
        .http2()
        .timer(TokioTimer::new())
        // Behind the aggregator every watch is a stream of one shared connection:
        // kube-apiserver's own default (--http2-max-streams-per-connection), not
        // hyper's 200, so the 201st watch on a connection is not refused.
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        // Bytes hyper buffers per stream before it stops polling the body (see the
        // constant).
        .max_send_buf_size(H2_SEND_BUFFER_BYTES)
        // hyper's default is 16 KiB: a request HTTP/1.1 takes would be refused over h2.
        .max_header_list_size(u32::try_from(head_cap).unwrap_or(u32::MAX))
        .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
    let io = TokioIo::new(Coalesce::new(tls));
    let conn = watcher.watch(builder.serve_connection(io, service).into_owned());
    tokio::pin!(conn);
    // The first request's head must come within the header timeout: hyper times out only
    // HTTP/1.1 heads, and an HTTP/2 client could otherwise hold the connection with a
    // preface and nothing else, or with headers sent a byte at a time.
    let deadline = tokio::time::sleep(limits.request_header_timeout);
    tokio::pin!(deadline);
    let result = tokio::select! {
        r = &mut conn => r,
        () = &mut deadline => {
            if requested.load(Ordering::Relaxed) {
                conn.await
            } else {
                tracing::debug!(peer = %remote_addr, "no request head within the header timeout; closing");
                metrics_app.metrics().refused("request_header_timeout");
                return;
            }
        }
    };
    if let Err(e) = result {
        if e.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_timeout)
        {
            metrics_app.metrics().refused("request_header_timeout");
        }
        tracing::debug!(peer = %remote_addr, error = %e, "connection ended with an error");
    }
}
