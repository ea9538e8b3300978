//! `StallGuard`: wraps a connection's I/O and fails a write that has made no progress
//! for longer than a limit, so hyper closes the connection. This is how a watcher that
//! stopped reading its socket is disconnected: its data stops at the socket, hyper's
//! write stays pending, and nothing in HTTP/1.1 would ever time it out.
//! (An HTTP/2 stream stalled by its own flow-control window leaves the socket writable;
//! `watch` ends such a stream's watch itself, after the same limit.)

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

pub struct StallGuard<IO> {
    io: IO,
    limit: Duration,
    /// Armed while a write is pending; cleared by any progress.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<IO> StallGuard<IO> {
    pub fn new(io: IO, limit: Duration) -> Self {
        StallGuard {
            io,
            limit,
            stalled: None,
        }
    }

    /// Map a write-side poll: progress disarms the timer; pending arms it and fails
    /// once it has run out.
    fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match poll {
            Poll::Pending => {
                let limit = self.limit;
                let timer = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("peer has not read for {limit:?}"),
                    )));
                }
                Poll::Pending
            }
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for StallGuard<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for StallGuard<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_flush(cx);
        self.watch(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_stops_gets_cut_off_and_a_slow_one_does_not() {
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let mut guarded = StallGuard::new(ours, Duration::from_secs(60));
        let chunk = [7u8; 512];
        // A slow reader: reads a little every 30 s, so writes keep making progress.
        for _ in 0..6 {
            guarded.write_all(&chunk).await.unwrap();
            let mut buf = [0u8; 512];
            let read = async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                theirs.read_exact(&mut buf).await
            };
            let (w, r) = tokio::join!(guarded.write_all(&chunk), read);
            w.unwrap();
            r.unwrap();
            theirs.read_exact(&mut buf).await.unwrap();
        }
        // A reader that stops: the buffer fills and the write fails after the limit.
        let start = tokio::time::Instant::now();
        let err = loop {
            if let Err(e) = guarded.write_all(&chunk).await {
                break e;
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(start.elapsed() >= Duration::from_secs(60));
    }
}
