//! The :443 listener: admit, read the ClientHello, route by SNI, PROXY v2, relay, log.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::clienthello::{read_client_hello, Hello, HelloError};
use crate::relay::{self, RelayEnd, Side};
use crate::routes::{Mode, Route};
use crate::wake::Held;
use crate::{proxy_protocol, terminate, State};

/// TLS alert record `unrecognized_name` (fatal), sent before closing an unroutable connection.
const ALERT_UNRECOGNIZED_NAME: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70];

/// Accepts :443 connections until `stop` turns true; each connection runs in its own task.
pub async fn serve(listener: TcpListener, state: Arc<State>, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => break,
        };
        let (sock, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: say so and give the system a moment.
                warn!(error = %e, "accept on :443 listener failed; retrying in 50 ms");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let table = state.routes.current();
        let l = &table.limits;
        let permit = match state.limiter.try_acquire(
            peer.ip(),
            l.max_connections,
            l.max_connections_per_ip,
            l.new_connections_per_second_per_ip,
        ) {
            Ok(p) => p,
            Err(hit) => {
                let (limit, max) = (hit.label(), hit.max());
                if let Some(refused) = state.limiter.log_refusal(hit) {
                    warn!(target: "limit", limit, max, refused, client = %peer, "limit hit: connection refused");
                }
                state.metrics.limit_hit(limit);
                state.metrics.connection("-", "refused_limit", 0, 0);
                continue;
            }
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            handle(sock, peer, &state).await;
            drop(permit);
        });
    }
}

/// What one connection ended as, for the access log and metrics.
struct Outcome {
    /// Counts the connection as its tenant's activity while it lives.
    _activity: Option<crate::activity::Open>,
    /// The route, once known (its name is the log's and the metrics' label).
    route: Option<Arc<Route>>,
    sni: Option<String>,
    alpn: String,
    backend: Option<SocketAddr>,
    outcome: &'static str,
    detail: Option<String>,
}

impl Outcome {
    /// The route's name, or `-` before routing.
    fn route_name(&self) -> &str {
        self.route.as_ref().map_or("-", |r| r.name.as_str())
    }
}

/// Runs one connection to the end and writes its access-log line.
async fn handle(mut client: TcpStream, peer: SocketAddr, state: &State) {
    let start = Instant::now();
    // In the task, not behind an Arc: an idle connection holds one allocation less.
    let bytes = relay::Bytes::default();
    // Boxed: routing state (the ClientHello parser, the connect) is freed before the long
    // relay, which keeps idle tasks small.
    let o = match Box::pin(route(&mut client, peer, state, &bytes, start)).await {
        Next::Done(o) => o,
        Next::Relay(mut o, route, backend, idle) => {
            match relay::relay(&client, &backend, idle, &bytes).await {
                RelayEnd::Closed => o.outcome = "closed",
                RelayEnd::Idle => {
                    warn!(target: "limit", limit = "idle_timeout", timeout_s = idle.as_secs(),
                          route = %route.name, client = %peer, "limit hit: connection idle, closing");
                    state.metrics.limit_hit("idle_timeout");
                    o.outcome = "idle_timeout";
                }
                RelayEnd::Error(side, e) => {
                    o.outcome = match side {
                        Side::Client => "client_error",
                        Side::Backend => {
                            state.metrics.backend_error(&route.name);
                            "backend_error"
                        }
                    };
                    o.detail = Some(e.to_string());
                }
            }
            o
        }
        Next::Terminate(mut o, route, hello, idle) => {
            let b = Arc::new(relay::Bytes::default());
            let t = &state.terminator;
            // Boxed: its state (TLS, HTTP) must not size every passthrough task.
            (o.outcome, o.detail) = Box::pin(terminate::serve(
                t,
                client,
                hello,
                &route,
                peer,
                idle,
                Arc::clone(&b),
            ))
            .await;
            let (up, down) = (b.up.load(Relaxed), b.down.load(Relaxed));
            bytes.up.fetch_add(up, Relaxed);
            bytes.down.fetch_add(down, Relaxed);
            o
        }
    };
    let up = bytes.up.load(Relaxed);
    let down = bytes.down.load(Relaxed);
    state
        .metrics
        .connection(o.route_name(), o.outcome, up, down);
    info!(
        target: "access",
        client = %peer,
        sni = o.sni.as_deref().unwrap_or("-"),
        alpn = %o.alpn,
        route = %o.route_name(),
        backend = %o.backend.map_or("-".to_string(), |b| b.to_string()),
        bytes_up = up,
        bytes_down = down,
        duration_ms = start.elapsed().as_millis() as u64,
        outcome = o.outcome,
        detail = o.detail.as_deref().unwrap_or(""),
        "connection"
    );
}

/// Where a connection goes after routing: done here, or on to terminate mode.
enum Next {
    /// Refused or failed; nothing left to do.
    Done(Box<Outcome>),
    /// Connected, first bytes sent: relay until the end.
    Relay(Box<Outcome>, Arc<Route>, TcpStream, Duration),
    /// The route terminates TLS here: the socket and the hello go to `terminate::serve`.
    Terminate(Box<Outcome>, Arc<Route>, Hello, Duration),
}

/// Admits nothing new: reads the hello, routes, connects and sends the first bytes.
async fn route(
    client: &mut TcpStream,
    peer: SocketAddr,
    state: &State,
    bytes: &relay::Bytes,
    start: Instant,
) -> Next {
    // Boxed: it lives as long as the connection, in every connection's task.
    let mut o = Box::new(Outcome {
        _activity: None,
        route: None,
        sni: None,
        alpn: String::new(),
        backend: None,
        outcome: "closed",
        detail: None,
    });
    let _ = client.set_nodelay(true);
    let table = state.routes.current();
    let limits = table.limits.clone();
    let hello = match read_client_hello(
        client,
        limits.max_client_hello_bytes,
        limits.client_hello_timeout(),
    )
    .await
    {
        Ok(h) => h,
        Err(e) => {
            if let HelloError::Timeout(t, got) = &e {
                warn!(target: "limit", limit = "client_hello_timeout", timeout_ms = t.as_millis() as u64,
                      received = got, client = %peer, "limit hit: no complete ClientHello in time, closing");
                state.metrics.limit_hit("client_hello_timeout");
            } else if let HelloError::TooLarge(max) = &e {
                warn!(target: "limit", limit = "max_client_hello_bytes", max, client = %peer,
                      "limit hit: ClientHello too large, closing");
                state.metrics.limit_hit("max_client_hello_bytes");
            }
            o.outcome = e.outcome();
            o.detail = Some(e.to_string());
            return Next::Done(o);
        }
    };
    state.metrics.hello_time(start.elapsed());
    o.sni = hello.sni.clone();
    o.alpn = hello
        .alpn
        .iter()
        .map(|p| String::from_utf8_lossy(p))
        .collect::<Vec<_>>()
        .join(",");
    let Some(route) = table.route_for(hello.sni.as_deref()).map(Arc::clone) else {
        o.outcome = if hello.sni.is_some() {
            "unknown_sni"
        } else {
            "no_sni"
        };
        let _ = relay::write_all(client, &ALERT_UNRECOGNIZED_NAME).await;
        return Next::Done(o);
    };
    drop(table);
    o.route = Some(Arc::clone(&route));
    o._activity = state.admit_tenant(&route.tenant, &limits, peer, "connection");
    if o._activity.is_none() {
        o.outcome = "refused_tenant_limit";
        return Next::Done(o);
    }
    let route = if route.asleep {
        let held = state
            .waker
            .hold(
                &route,
                hello.sni.as_deref(),
                &state.routes,
                limits.wake_queue_per_tenant,
                limits.wake_timeout(),
            )
            .await;
        state.metrics.wake(&route.tenant, held.outcome());
        match held {
            Held::Awake(r) => r,
            Held::QueueFull(max) => {
                warn!(target: "limit", limit = "wake_queue_per_tenant", max, tenant = %route.tenant,
                      client = %peer, "limit hit: too many connections waiting for a sleeping tenant, closing");
                state.metrics.limit_hit("wake_queue_per_tenant");
                o.outcome = "wake_queue_full";
                return Next::Done(o);
            }
            Held::TimedOut(t) => {
                warn!(target: "limit", limit = "wake_timeout", timeout_ms = t.as_millis() as u64,
                      tenant = %route.tenant, client = %peer,
                      "limit hit: the tenant did not wake in time, closing");
                state.metrics.limit_hit("wake_timeout");
                o.outcome = "wake_timeout";
                return Next::Done(o);
            }
            other @ Held::Gone => {
                o.outcome = other.outcome();
                return Next::Done(o);
            }
        }
    } else {
        route
    };
    o.backend = Some(route.backend);
    if route.mode == Mode::Terminate {
        return Next::Terminate(o, route, hello, limits.idle_timeout());
    }
    let mut first = Vec::with_capacity(52 + hello.buffered.len());
    if route.proxy_protocol {
        let dst = client.local_addr().unwrap_or(peer);
        first.extend_from_slice(&proxy_protocol::v2_header(peer, dst));
    }
    first.extend_from_slice(&hello.buffered);
    drop(hello);
    let backend = match connect(&route, &first, limits.connect_timeout()).await {
        Ok(b) => b,
        Err(e) => {
            let unreachable =
                e.kind() == std::io::ErrorKind::TimedOut || e.raw_os_error().is_some_and(refused);
            if e.kind() == std::io::ErrorKind::TimedOut {
                warn!(target: "limit", limit = "connect_timeout", route = %route.name,
                      backend = %route.backend, client = %peer,
                      "limit hit: backend did not accept in time, closing");
                state.metrics.limit_hit("connect_timeout");
            }
            state.metrics.backend_error(&route.name);
            o.outcome = if unreachable {
                "backend_unreachable"
            } else {
                "backend_error"
            };
            o.detail = Some(e.to_string());
            return Next::Done(o);
        }
    };
    bytes
        .up
        .store(first.len() as u64, std::sync::atomic::Ordering::Relaxed);
    drop(first);
    Next::Relay(o, route, backend, limits.idle_timeout())
}

/// Errors of a first write that mean the backend was never reached.
fn refused(errno: i32) -> bool {
    use nix::errno::Errno;
    [
        Errno::ECONNREFUSED,
        Errno::EHOSTUNREACH,
        Errno::ENETUNREACH,
        Errno::ECONNRESET,
    ]
    .contains(&Errno::from_raw(errno))
}

/// Connects to a route's backend and sends `first` (PROXY header and ClientHello), all
/// within `timeout`. The connect's outcome is learned from the first write: no separate
/// SO_ERROR query per connection, as `TcpStream::connect` makes.
async fn connect(route: &Route, first: &[u8], timeout: Duration) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let addr = route.backend;
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM.nonblocking(), None)?;
    match sock.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EINPROGRESS as i32) => {}
        Err(e) => return Err(e),
    }
    let _ = sock.set_nodelay(true);
    let s = TcpStream::from_std(std::net::TcpStream::from(sock))?;
    tokio::time::timeout(timeout, relay::write_all(&s, first))
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connect to {addr} timed out after {timeout:?}"),
            )
        })??;
    Ok(s)
}

#[cfg(test)]
mod tests {
    /// An idle relayed connection costs its task's future: keep it small (see benches/compare.rs).
    #[tokio::test]
    async fn connection_task_stays_small() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        let c = tokio::net::TcpStream::connect(a).await.unwrap();
        let p = std::env::temp_dir().join(format!("size-probe-{}.toml", std::process::id()));
        std::fs::write(&p, "").unwrap();
        let routes = std::sync::Arc::new(crate::reload::Routes::load(&p).unwrap());
        let _ = std::fs::remove_file(&p);
        let state = crate::State {
            routes,
            limiter: Default::default(),
            metrics: Default::default(),
            terminator: Default::default(),
            activity: Default::default(),
            waker: Default::default(),
        };
        let f = super::handle(c, a, &state);
        let size = std::mem::size_of_val(&f);
        assert!(size <= 700, "connection future grew to {size} bytes");
        let c2 = tokio::net::TcpStream::connect(a).await.unwrap();
        let b = crate::relay::Bytes::default();
        let r = crate::relay::relay(&c2, &c2, std::time::Duration::from_secs(1), &b);
        let size = std::mem::size_of_val(&r);
        assert!(size <= 256, "relay future grew to {size} bytes");
    }
}
