//! Copies bytes both ways between client and backend until both sides have closed.
//!
//! Half-close is kept: when one side sends FIN the other side's write half is shut down and
//! the opposite direction goes on. A connection with no byte either way for the idle timeout
//! is closed. A buffer is held only while data flows (4 KiB, doubling up to 128 KiB for bulk flows),
//! so an idle connection costs no buffer.

use std::future::Future;
use std::io::{self, ErrorKind};
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::net::TcpStream;

/// First size of the copy buffer a direction takes when data arrives: handshakes and small
/// exchanges never need more, and many connections doing them at once stay cheap.
const BUF_MIN: usize = 4 * 1024;
/// The buffer doubles, up to this, each time a read fills it (bulk transfer).
const BUF_MAX: usize = 128 * 1024;

/// Which side of the relay failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The connection from the client.
    Client,
    /// The connection to the backend.
    Backend,
}

/// How a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// Both sides closed their sending half.
    Closed,
    /// No byte either way for the idle timeout.
    Idle,
    /// A read or write failed on one side.
    Error(Side, io::Error),
}

/// Byte counters of one connection, readable while it runs.
#[derive(Debug, Default)]
pub struct Bytes {
    /// Client to backend.
    pub up: AtomicU64,
    /// Backend to client.
    pub down: AtomicU64,
}

/// Writes all of `data` to `to`, waiting for the socket to be writable as needed.
pub async fn write_all(to: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        to.writable().await?;
        match to.try_write(data) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads from `s` into `buf`'s spare capacity: `Ok(0)` at end of stream.
///
/// A read that does not fill the buffer emptied the socket (TCP hands over everything
/// queued), so the socket's readiness is cleared as an EAGAIN would clear it, and the read
/// that would only answer EAGAIN is skipped (one syscall per burst). The read runs inside
/// `try_io`, which clears only the readiness seen *before* the read: bytes that arrive
/// during or after it keep the socket readable (tokio's tick), and end-of-stream (RDHUP)
/// is never cleared.
fn read_some(s: &TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    let room = buf.capacity() - buf.len();
    let mut got = None;
    let res = s.try_io(Interest::READABLE, || {
        let n = s.try_read_buf(buf)?;
        got = Some(n);
        if n > 0 && n < room {
            Err(ErrorKind::WouldBlock.into())
        } else {
            Ok(n)
        }
    });
    match (res, got) {
        (Err(e), Some(n)) if e.kind() == ErrorKind::WouldBlock => Ok(n),
        (res, _) => res,
    }
}

/// One direction of the relay: what was read and not yet written, and how far it got.
#[derive(Default)]
struct Dir {
    /// Copy buffer; no capacity while the source has nothing to read.
    buf: Vec<u8>,
    /// Bytes of `buf` already written.
    pos: usize,
    /// The source sent FIN.
    eof: bool,
    /// FIN passed on: this direction is finished.
    done: bool,
    /// Buffer size to take at the next read; grows with the flow, kept while idle.
    want: usize,
}

impl Dir {
    /// Moves bytes from `from` to `to` until both would block, or the direction ends.
    /// `last`: the other direction is finished, so this one's FIN goes with the close.
    #[allow(clippy::too_many_arguments)] // one direction's whole context, called twice
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        from: &TcpStream,
        to: &TcpStream,
        sides: (Side, Side),
        count: &AtomicU64,
        active: &mut bool,
        last: bool,
    ) -> Poll<Result<(), (Side, io::Error)>> {
        let (from_side, to_side) = sides;
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if self.pos < self.buf.len() {
                if let Err(e) = ready!(to.poll_write_ready(cx)) {
                    return Poll::Ready(Err((to_side, e)));
                }
                match to.try_write(&self.buf[self.pos..]) {
                    Ok(n) => {
                        self.pos += n;
                        count.fetch_add(n as u64, Ordering::Relaxed);
                        *active = true;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err((to_side, e))),
                }
                continue;
            }
            if self.eof {
                // FIN from `from`: pass it on, the other direction stays open. When the other
                // direction is over, the relay ends and closing `to` sends the FIN.
                self.done = true;
                if last {
                    return Poll::Ready(Ok(()));
                }
                return match socket2::SockRef::from(to).shutdown(Shutdown::Write) {
                    Ok(()) => Poll::Ready(Ok(())),
                    Err(e) if e.kind() == ErrorKind::NotConnected => Poll::Ready(Ok(())),
                    Err(e) => Poll::Ready(Err((to_side, e))),
                };
            }
            match from.poll_read_ready(cx) {
                // Everything read was written: idle connections hold no buffer.
                Poll::Pending => {
                    self.buf = Vec::new();
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err((from_side, e))),
                Poll::Ready(Ok(())) => {}
            }
            if self.buf.capacity() == 0 {
                self.want = self.want.max(BUF_MIN);
                self.buf = Vec::with_capacity(self.want);
            }
            self.buf.clear();
            self.pos = 0;
            match read_some(from, &mut self.buf) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    *active = true;
                    if n == self.buf.capacity() && self.want < BUF_MAX {
                        // A full read: the flow is bulk, a bigger buffer means fewer syscalls.
                        self.want *= 2;
                        self.buf.reserve_exact(self.want - n);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err((from_side, e))),
            }
        }
    }
}

/// Resolves once nothing was read for `idle` (as recorded in `last_ms`).
pub async fn idle_watch(last_ms: &AtomicU64, start: Instant, idle: Duration) {
    loop {
        let last = Duration::from_millis(last_ms.load(Ordering::Relaxed));
        let deadline = start + last + idle;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline.into()).await;
    }
}

/// The relay as one hand-written future: small, so many idle connections cost little.
struct Relay<'a> {
    client: &'a TcpStream,
    backend: &'a TcpStream,
    up: Dir,
    down: Dir,
    bytes: &'a Bytes,
    idle: Duration,
    last: Instant,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl Future for Relay<'_> {
    type Output = RelayEnd;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<RelayEnd> {
        let this = self.get_mut();
        let mut active = false;
        let up = this.up.poll(
            cx,
            this.client,
            this.backend,
            (Side::Client, Side::Backend),
            &this.bytes.up,
            &mut active,
            this.down.done,
        );
        if let Poll::Ready(Err((side, e))) = up {
            return Poll::Ready(RelayEnd::Error(side, e));
        }
        let down = this.down.poll(
            cx,
            this.backend,
            this.client,
            (Side::Backend, Side::Client),
            &this.bytes.down,
            &mut active,
            this.up.done,
        );
        if let Poll::Ready(Err((side, e))) = down {
            return Poll::Ready(RelayEnd::Error(side, e));
        }
        if up.is_ready() && down.is_ready() {
            return Poll::Ready(RelayEnd::Closed);
        }
        if active {
            this.last = Instant::now();
        }
        // The timer is moved only when it fires: activity just records the time.
        while this.timer.as_mut().poll(cx).is_ready() {
            let deadline = this.last + this.idle;
            if Instant::now() >= deadline {
                return Poll::Ready(RelayEnd::Idle);
            }
            this.timer.as_mut().reset(deadline.into());
        }
        Poll::Pending
    }
}

/// Relays between `client` and `backend` until both close, one fails, or they go idle.
pub async fn relay(
    client: &TcpStream,
    backend: &TcpStream,
    idle: Duration,
    bytes: &Bytes,
) -> RelayEnd {
    let last = Instant::now();
    Relay {
        client,
        backend,
        up: Dir::default(),
        down: Dir::default(),
        bytes,
        idle,
        last,
        timer: Box::pin(tokio::time::sleep_until((last + idle).into())),
    }
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    #[tokio::test]
    async fn half_close_keeps_the_other_direction() {
        // client_app <-> (c_out, c_in) relay (b_out, b_in) <-> backend_app
        let (mut client_app, c_in) = pair().await;
        let (b_out, mut backend_app) = pair().await;
        let bytes = Bytes::default();
        let relay = tokio::spawn(async move {
            let bytes = bytes;
            let end = relay(&c_in, &b_out, Duration::from_secs(5), &bytes).await;
            (end, bytes.up.into_inner(), bytes.down.into_inner())
        });
        client_app.write_all(b"request").await.unwrap();
        client_app.shutdown().await.unwrap(); // half-close: done sending
        let mut got = Vec::new();
        backend_app.read_to_end(&mut got).await.unwrap(); // sees EOF after the request
        assert_eq!(got, b"request");
        let big = vec![42u8; 3 * BUF_MAX + 17];
        backend_app.write_all(&big).await.unwrap(); // answers after the client's FIN
        backend_app.shutdown().await.unwrap();
        let mut back = Vec::new();
        client_app.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, big);
        let (end, up, down) = relay.await.unwrap();
        assert!(matches!(end, RelayEnd::Closed), "{end:?}");
        assert_eq!((up, down), (7, big.len() as u64));
    }

    /// Reads that do not fill the buffer skip the EAGAIN read (`read_some`): bytes that
    /// arrive right after such a read must still wake the relay, in both directions.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bursts_right_after_a_short_read_are_not_lost() {
        let (mut client_app, c_in) = pair().await;
        let (b_out, mut backend_app) = pair().await;
        let relay = tokio::spawn(async move {
            relay(&c_in, &b_out, Duration::from_secs(5), &Bytes::default()).await
        });
        let sizes: Vec<usize> = (0..2000).map(|i| 1 + (i * 7919) % 3000).collect();
        let total: usize = sizes.iter().sum();
        let up_sizes = sizes.clone();
        let writer = tokio::spawn(async move {
            for (i, n) in up_sizes.into_iter().enumerate() {
                client_app
                    .write_all(&vec![(i % 251) as u8; n])
                    .await
                    .unwrap();
                if i % 3 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            let mut back = Vec::new();
            client_app.shutdown().await.unwrap();
            client_app.read_to_end(&mut back).await.unwrap();
            back.len()
        });
        let mut got = Vec::with_capacity(total);
        let mut buf = vec![0u8; 4096];
        while got.len() < total {
            let n = tokio::time::timeout(Duration::from_secs(10), backend_app.read(&mut buf))
                .await
                .expect("the relay stalled")
                .unwrap();
            assert!(n > 0, "EOF after {} of {total} bytes", got.len());
            got.extend_from_slice(&buf[..n]);
            // Echo each piece back at once: the other direction sees the same pattern.
            backend_app.write_all(&buf[..n]).await.unwrap();
        }
        backend_app.shutdown().await.unwrap();
        let want: Vec<u8> = sizes
            .iter()
            .enumerate()
            .flat_map(|(i, n)| std::iter::repeat_n((i % 251) as u8, *n))
            .collect();
        assert!(got == want, "bytes arrived changed or out of order");
        assert_eq!(writer.await.unwrap(), total, "every echoed byte came back");
        assert!(matches!(relay.await.unwrap(), RelayEnd::Closed));
    }

    #[tokio::test]
    async fn idle_connections_are_closed() {
        let (_client_app, c_in) = pair().await;
        let (b_out, _backend_app) = pair().await;
        let t = Instant::now();
        let end = relay(&c_in, &b_out, Duration::from_millis(200), &Bytes::default()).await;
        assert!(matches!(end, RelayEnd::Idle), "{end:?}");
        assert!(t.elapsed() >= Duration::from_millis(200));
    }
}
