//! `Coalesce`: gathers a connection's small writes and hands them to TLS together when
//! hyper flushes. tokio-rustls encrypts and writes to the socket on every `poll_write`,
//! and HTTP/2 writes each frame on its own (a frame header and its payload), so a
//! connection carrying many watches made one system call per frame: on loopback, the
//! largest cost of fan-out. Coalesced, a round of frames for many streams becomes a few
//! TLS records and one `writev`.
//!
//! A flush of a small buffer first yields once (the task wakes itself and goes to the
//! back of its worker's queue), so that the streams woken by the same published batch
//! add their frames before the write: one pass through the run queue of delay, then the
//! data goes out. Without it, the connection's task runs right after each stream's and
//! flushes one frame at a time.
//!
//! Written here rather than using `tokio::io::BufWriter`, which allocates its buffer up
//! front and keeps it for the connection's life: this one holds a buffer only while data
//! waits for a flush, so thousands of idle watch connections hold none. The buffers come
//! from a small per-thread pool: a 64 KiB allocation per flush was a tenth of the CPU.

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Writes are gathered up to this size; a write this large goes straight through.
const CAPACITY: usize = 64 * 1024;
/// A flush of less than this waits one turn for more.
const YIELD_BELOW: usize = CAPACITY / 4;
/// Empty buffers kept per thread for the next connection that writes.
const POOLED: usize = 16;

thread_local! {
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

fn take_buffer() -> Vec<u8> {
    POOL.with_borrow_mut(Vec::pop)
        .unwrap_or_else(|| Vec::with_capacity(CAPACITY))
}

fn give_back(mut buf: Vec<u8>) {
    if buf.capacity() == CAPACITY {
        buf.clear();
        POOL.with_borrow_mut(|pool| {
            if pool.len() < POOLED {
                pool.push(buf);
            }
        });
    }
}

pub struct Coalesce<IO> {
    io: IO,
    buf: Vec<u8>,
    /// How much of `buf` the inner writer has taken.
    written: usize,
    /// This flush already yielded once.
    yielded: bool,
}

impl<IO> Coalesce<IO> {
    pub fn new(io: IO) -> Self {
        Coalesce {
            io,
            buf: Vec::new(),
            written: 0,
            yielded: false,
        }
    }
}

impl<IO: AsyncWrite + Unpin> Coalesce<IO> {
    /// Hand everything gathered to the inner writer; the buffer is freed once empty.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        give_back(std::mem::take(&mut self.buf));
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    /// Room for `len` more bytes, draining first if they would not fit.
    fn poll_room(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<()>> {
        if self.buf.len() + len > CAPACITY {
            ready!(self.poll_drain(cx))?;
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Coalesce<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Coalesce<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_room(cx, data.len()))?;
        if data.len() >= CAPACITY {
            return Pin::new(&mut self.io).poll_write(cx, data);
        }
        if self.buf.capacity() == 0 {
            self.buf = take_buffer();
        }
        self.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        ready!(self.poll_room(cx, len))?;
        if len >= CAPACITY {
            return Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        }
        if self.buf.capacity() == 0 {
            self.buf = take_buffer();
        }
        for b in bufs {
            self.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.yielded && !self.buf.is_empty() && self.buf.len() < YIELD_BELOW {
            self.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.yielded = false;
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Counts the writes that reach it.
    struct Counting {
        writes: usize,
        data: Vec<u8>,
    }

    impl AsyncWrite for Counting {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.writes += 1;
            self.data.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn small_writes_reach_the_inner_writer_together_at_flush() {
        let mut c = Coalesce::new(Counting {
            writes: 0,
            data: vec![],
        });
        for i in 0..100u8 {
            c.write_all(&[i; 9]).await.unwrap();
            let n = c
                .write_vectored(&[IoSlice::new(&[i; 3]), IoSlice::new(&[i; 4])])
                .await
                .unwrap();
            assert_eq!(n, 7);
        }
        assert_eq!(c.io.writes, 0, "nothing before the flush");
        c.flush().await.unwrap();
        assert_eq!(c.io.writes, 1);
        assert_eq!(c.io.data.len(), 1600);
        assert_eq!(c.buf.capacity(), 0, "no buffer held while idle");
        // Large writes go straight through, after what was gathered, in order.
        c.write_all(b"a").await.unwrap();
        c.write_all(&vec![b'b'; CAPACITY]).await.unwrap();
        c.flush().await.unwrap();
        assert_eq!(&c.io.data[1600..1602], b"ab");
        assert_eq!(c.io.data.len(), 1601 + CAPACITY);
    }

    #[tokio::test]
    async fn back_pressure_reaches_the_writer_when_the_buffer_is_full() {
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let mut c = Coalesce::new(ours);
        let chunk = [7u8; 1000];
        let mut accepted = 0;
        let write = async {
            loop {
                c.write_all(&chunk).await.unwrap();
                accepted += chunk.len();
            }
        };
        // The reader never reads: the writer stalls once the buffer and the pipe are full.
        let stalled = tokio::time::timeout(std::time::Duration::from_millis(100), write).await;
        assert!(stalled.is_err());
        assert!(accepted <= CAPACITY + 1024, "{accepted}");
        let mut got = vec![0u8; 1024];
        theirs.read_exact(&mut got).await.unwrap();
    }
}
