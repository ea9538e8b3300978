//! The accept loop: TLS connections in, HTTP/1.1 and HTTP/2 served on each (every request
//! goes to `App::handle`), a bounded number open at once, and a graceful drain on
//! shutdown that first ends every watch (a watch never ends on its own).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use super::App;
use crate::coalesce::Coalesce;
use crate::stall::StallGuard;
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
/// A client that has not finished the TLS handshake by then is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
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
    let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(peer = %remote_addr, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(peer = %remote_addr, "TLS handshake timed out");
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
    let stall_limit = app.stall_limit();
    let service = service_fn(move |req| {
        let (app, peer) = (app.clone(), peer.clone());
        async move { Ok::<_, Infallible>(app.handle(req, &peer).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        // Behind the aggregator every watch is a stream of one shared connection:
        // kube-apiserver's own default (--http2-max-streams-per-connection), not
        // hyper's 200, so the 201st watch on a connection is not refused.
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        // Bytes hyper buffers per stream before it stops polling the body (see the
        // constant).
        .max_send_buf_size(H2_SEND_BUFFER_BYTES);
    let io = TokioIo::new(Coalesce::new(StallGuard::new(tls, stall_limit)));
    let conn = builder.serve_connection(io, service).into_owned();
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(peer = %remote_addr, error = %e, "connection ended with an error");
    }
}
