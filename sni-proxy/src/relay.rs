//! Copies bytes both ways between client and backend until both sides have closed.
//!
//! Half-close is kept: when one side sends FIN the other side's write half is shut down and
//! the opposite direction goes on. A connection with no byte either way for the idle timeout
//! is closed. A buffer is held only while data flows, so an idle connection costs no buffer.

use std::io::{self, ErrorKind};
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

/// Size of the copy buffer a direction holds while data flows.
const BUF: usize = 64 * 1024;

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

/// One direction: read from `from`, write to `to`, shut `to`'s write half at EOF.
async fn pipe(
    from: &TcpStream,
    to: &TcpStream,
    count: &AtomicU64,
    last_ms: &AtomicU64,
    start: Instant,
    from_side: Side,
) -> Result<(), (Side, io::Error)> {
    let to_side = match from_side {
        Side::Client => Side::Backend,
        Side::Backend => Side::Client,
    };
    let mut buf: Vec<u8> = Vec::new();
    loop {
        from.readable().await.map_err(|e| (from_side, e))?;
        if buf.capacity() == 0 {
            buf = Vec::with_capacity(BUF);
        }
        buf.clear();
        match from.try_read_buf(&mut buf) {
            Ok(0) => {
                // FIN from `from`: pass it on, keep the other direction open.
                return match socket2::SockRef::from(to).shutdown(Shutdown::Write) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == ErrorKind::NotConnected => Ok(()),
                    Err(e) => Err((to_side, e)),
                };
            }
            Ok(n) => {
                last_ms.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
                write_all(to, &buf[..n]).await.map_err(|e| (to_side, e))?;
                count.fetch_add(n as u64, Ordering::Relaxed);
            }
            // Drained: give the buffer back while waiting, idle connections hold none.
            Err(e) if e.kind() == ErrorKind::WouldBlock => buf = Vec::new(),
            Err(e) => return Err((from_side, e)),
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

/// Relays between `client` and `backend` until both close, one fails, or they go idle.
pub async fn relay(
    client: &TcpStream,
    backend: &TcpStream,
    idle: Duration,
    bytes: &Bytes,
) -> RelayEnd {
    let start = Instant::now();
    let last_ms = AtomicU64::new(0);
    let up = pipe(client, backend, &bytes.up, &last_ms, start, Side::Client);
    let down = pipe(backend, client, &bytes.down, &last_ms, start, Side::Backend);
    tokio::select! {
        r = async { tokio::try_join!(up, down) } => match r {
            Ok(_) => RelayEnd::Closed,
            Err((side, e)) => RelayEnd::Error(side, e),
        },
        _ = idle_watch(&last_ms, start, idle) => RelayEnd::Idle,
    }
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
        let big = vec![42u8; 3 * BUF + 17];
        backend_app.write_all(&big).await.unwrap(); // answers after the client's FIN
        backend_app.shutdown().await.unwrap();
        let mut back = Vec::new();
        client_app.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, big);
        let (end, up, down) = relay.await.unwrap();
        assert!(matches!(end, RelayEnd::Closed), "{end:?}");
        assert_eq!((up, down), (7, big.len() as u64));
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
