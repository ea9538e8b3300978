//! `Coalesce`: gathers a connection's writes in TLS's own buffer, encrypted, and hands
//! them to the socket together when hyper flushes (or when that buffer is full).
//! tokio-rustls encrypts and writes to the socket on every `poll_write`, and HTTP/2
//! writes each frame on its own, so a connection carrying many watches made one system
//! call per frame: on loopback, the largest cost of fan-out. Coalesced, a round of frames
//! for many streams becomes one `writev` of many TLS records.
//!
//! Whole TLS records' worth of writes go straight into rustls (`ServerConnection::
//! writer`), which copies them into its records as it encrypts: the records are the
//! gathering buffer. Only what does not fill a record yet (16 KiB of plaintext) waits in
//! a small buffer of its own, so that small writes (HTTP/2 frame headers, small frames)
//! still share records instead of paying a record's overhead each. An earlier version
//! gathered all plaintext below 64 KiB per write in a buffer above TLS, one more copy of
//! every byte: with clients that take 16 KiB frames (HTTP/2's default, Go before 1.24),
//! 12 % of the server's CPU in the fan-out profile. At most `CAPACITY` of unsent records
//! is held: past it, a write first sends them, and waits for the socket if it is full.
//!
//! A flush of a little data first yields once (the task wakes itself and goes to the
//! back of its worker's queue), so that the streams woken by the same published batch
//! add their frames before the write: one pass through the run queue of delay, then the
//! data goes out. Without it, the connection's task runs right after each stream's and
//! flushes one frame at a time.
//!
//! Written here because tokio-rustls has no mode that defers its socket writes, and a
//! `BufWriter` below TLS would copy every byte once more.

use std::cell::RefCell;
use std::io::{self, IoSlice, Write as _};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::server::TlsStream;

/// Unsent TLS records held at most before a write sends them first.
const CAPACITY: usize = 64 * 1024;
/// A TLS record's plaintext at most (RFC 8446 §5.1): what is handed to rustls comes in
/// whole records, the rest waits for more.
const RECORD: usize = 16 * 1024;
/// A flush of less than this, gathered since the last one, waits one turn for more.
const YIELD_BELOW: usize = CAPACITY / 4;
/// Empty buffers kept per thread for the next connection that writes: an allocation per
/// flush was a tenth of the CPU when the buffer was 64 KiB.
const POOLED: usize = 16;

thread_local! {
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

fn take_buffer() -> Vec<u8> {
    POOL.with_borrow_mut(Vec::pop)
        .unwrap_or_else(|| Vec::with_capacity(RECORD))
}

fn give_back(mut buf: Vec<u8>) {
    if buf.capacity() == RECORD {
        buf.clear();
        POOL.with_borrow_mut(|pool| {
            if pool.len() < POOLED {
                pool.push(buf);
            }
        });
    }
}

pub struct Coalesce<IO> {
    tls: TlsStream<IO>,
    /// Plaintext not yet a whole record, after everything TLS holds. No buffer is held
    /// while nothing waits, so thousands of idle watch connections hold none.
    staged: Vec<u8>,
    /// Bytes handed to TLS since it last sent what it held.
    unsent: usize,
    /// Bytes written since the last flush.
    gathered: usize,
    /// This flush already yielded once.
    yielded: bool,
}

impl<IO> Coalesce<IO> {
    pub fn new(mut tls: TlsStream<IO>) -> Self {
        // `CAPACITY` bounds what rustls holds: it takes every write whole.
        tls.get_mut().1.set_buffer_limit(None);
        Coalesce {
            tls,
            staged: Vec::new(),
            unsent: 0,
            gathered: 0,
            yielded: false,
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Coalesce<IO> {
    /// Take `bufs` (`len` bytes): whole records into TLS, the rest staged.
    fn poll_gather(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
        len: usize,
    ) -> Poll<io::Result<usize>> {
        if self.unsent >= CAPACITY {
            ready!(Pin::new(&mut self.tls).poll_flush(cx))?;
            self.unsent = 0;
        }
        self.gathered += len;
        let staged = self.staged.len();
        if staged + len < RECORD {
            if self.staged.capacity() == 0 {
                self.staged = take_buffer();
            }
            for b in bufs {
                self.staged.extend_from_slice(b);
            }
            return Poll::Ready(Ok(len));
        }
        // The staged bytes and the new ones up to the last whole record, in one vectored
        // write (rustls cuts records across slices); the remainder is staged.
        let mut handed = (staged + len) / RECORD * RECORD - staged;
        let mut slices = Vec::with_capacity(bufs.len() + 1);
        slices.push(IoSlice::new(&self.staged));
        let mut rest: &[IoSlice<'_>] = bufs;
        let mut tail: &[u8] = &[];
        while let Some((b, more)) = rest.split_first() {
            rest = more;
            if b.len() <= handed {
                slices.push(IoSlice::new(b));
                handed -= b.len();
            } else {
                slices.push(IoSlice::new(&b[..handed]));
                tail = &b[handed..];
                break;
            }
        }
        let n = self.tls.get_mut().1.writer().write_vectored(&slices)?;
        self.unsent += n;
        self.staged.clear();
        self.staged.extend_from_slice(tail);
        for b in rest {
            self.staged.extend_from_slice(b);
        }
        if self.staged.is_empty() {
            give_back(std::mem::take(&mut self.staged));
        }
        Poll::Ready(Ok(len))
    }

    /// Hand the staged bytes to TLS (a record shorter than a whole one).
    fn hand_staged(&mut self) -> io::Result<()> {
        if !self.staged.is_empty() {
            self.unsent += self.tls.get_mut().1.writer().write(&self.staged)?;
            give_back(std::mem::take(&mut self.staged));
        }
        Ok(())
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for Coalesce<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Coalesce<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_gather(cx, &[IoSlice::new(data)], data.len())
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len = bufs.iter().map(|b| b.len()).sum();
        self.poll_gather(cx, bufs, len)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.yielded && self.gathered > 0 && self.gathered < YIELD_BELOW {
            self.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.yielded = false;
        self.hand_staged()?;
        ready!(Pin::new(&mut self.tls).poll_flush(cx))?;
        self.unsent = 0;
        self.gathered = 0;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.hand_staged()?;
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;

    /// One end of a pipe that counts the writes reaching it.
    struct Counting {
        pipe: DuplexStream,
        writes: Arc<AtomicUsize>,
    }

    impl AsyncRead for Counting {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.pipe).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Counting {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = ready!(Pin::new(&mut self.pipe).poll_write(cx, buf))?;
            self.writes.fetch_add(1, Ordering::Relaxed);
            Poll::Ready(Ok(n))
        }
        /// One write of all the slices, as `writev` on a socket.
        fn poll_write_vectored(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            self.poll_write(cx, &all)
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.pipe).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.pipe).poll_shutdown(cx)
        }
    }

    /// A TLS connection over a pipe of `pipe` bytes: the server's end coalesced, the
    /// count of its writes to the pipe, and the client's end.
    async fn tls_pair(
        pipe: usize,
    ) -> (
        Coalesce<Counting>,
        Arc<AtomicUsize>,
        tokio_rustls::client::TlsStream<DuplexStream>,
    ) {
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = generated.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            generated.signing_key.serialize_der(),
        ));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let (ours, theirs) = tokio::io::duplex(pipe);
        let writes = Arc::new(AtomicUsize::new(0));
        let ours = Counting {
            pipe: ours,
            writes: writes.clone(),
        };
        let name = ServerName::try_from("localhost").unwrap();
        let (server, client) = tokio::join!(
            tokio_rustls::TlsAcceptor::from(Arc::new(server)).accept(ours),
            tokio_rustls::TlsConnector::from(Arc::new(client)).connect(name, theirs),
        );
        (Coalesce::new(server.unwrap()), writes, client.unwrap())
    }

    #[tokio::test]
    async fn writes_reach_the_socket_together_at_flush_in_order() {
        let (mut c, writes, mut client) = tls_pair(1 << 20).await;
        let before = writes.load(Ordering::Relaxed);
        let mut sent = Vec::new();
        for i in 0..100u8 {
            c.write_all(&[i; 9]).await.unwrap();
            let n = c
                .write_vectored(&[IoSlice::new(&[i; 3]), IoSlice::new(&[i; 4])])
                .await
                .unwrap();
            assert_eq!(n, 7);
            sent.extend_from_slice(&[i; 9]);
            sent.extend_from_slice(&[i; 7]);
        }
        assert_eq!(
            writes.load(Ordering::Relaxed),
            before,
            "nothing before the flush"
        );
        c.flush().await.unwrap();
        assert_eq!(writes.load(Ordering::Relaxed), before + 1, "one write");
        // Past TLS's buffer limit, what it holds goes out first; all arrives in order.
        let large = vec![b'b'; 200 * 1024];
        c.write_all(&large).await.unwrap();
        c.flush().await.unwrap();
        sent.extend_from_slice(&large);
        let mut got = vec![0u8; sent.len()];
        client.read_exact(&mut got).await.unwrap();
        assert!(got == sent, "the bytes arrive as written");
    }

    #[tokio::test]
    async fn back_pressure_reaches_the_writer_when_tls_and_the_socket_are_full() {
        let (mut c, _, _client) = tls_pair(1024).await;
        let chunk = [7u8; 1000];
        let mut accepted = 0;
        let write = async {
            loop {
                c.write_all(&chunk).await.unwrap();
                accepted += chunk.len();
            }
        };
        // The client never reads: the writer stalls once what it holds and the pipe are
        // full, without holding more than its capacity and a record.
        let stalled = tokio::time::timeout(std::time::Duration::from_millis(100), write).await;
        assert!(stalled.is_err());
        assert!(accepted <= CAPACITY + RECORD + 1024, "{accepted}");
        assert!(accepted >= 32 * 1024, "{accepted}");
    }
}
