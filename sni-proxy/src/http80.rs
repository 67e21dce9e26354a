//! The :80 listener (hyper): routes by Host. ACME HTTP-01 challenges go to the tenant's HTTP
//! backend; everything else gets a 308 to https, or is forwarded when the route says so.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, HOST, LOCATION};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::routes::HttpMode;
use crate::State;

/// Path prefix of ACME HTTP-01 challenges (RFC 8555 section 8.3).
const ACME_PREFIX: &str = "/.well-known/acme-challenge/";

/// Response body: a small fixed answer, or the backend's streamed body.
pub type Body = Either<Full<Bytes>, Incoming>;

/// Accepts :80 connections until `stop` turns true.
pub async fn serve(listener: TcpListener, state: Arc<State>, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => break,
        };
        let Ok((sock, peer)) = accepted else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        tokio::spawn(serve_connection(
            TokioIo::new(sock),
            peer,
            Arc::clone(&state),
        ));
    }
}

/// Serves the HTTP/1.1 requests of one :80 connection (a socket, or any byte stream: the
/// fuzz target drives it with arbitrary bytes).
pub async fn serve_connection<I>(io: I, peer: SocketAddr, state: Arc<State>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let state = Arc::clone(&state);
        async move { Ok::<_, Infallible>(handle(req, peer, &state).await) }
    });
    // A client gets 10 s to send each request head (no slowloris on :80).
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(10))
        .serve_connection(io, svc)
        .await;
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(Either::Left(Full::new(Bytes::from_static(text.as_bytes()))));
    *r.status_mut() = status;
    r
}

/// The host name of a request, lowercased, without port.
fn host_of(req: &Request<Incoming>) -> Option<String> {
    let raw = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())?;
    let host = match raw.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => raw,
    };
    Some(host.to_ascii_lowercase())
}

async fn handle(req: Request<Incoming>, peer: SocketAddr, state: &State) -> Response<Body> {
    let start = Instant::now();
    let host = host_of(&req);
    let path = req.uri().path().to_owned();
    let table = state.routes.current();
    let mut route = host.as_deref().and_then(|h| table.lookup(h).cloned());
    let limits = table.limits.clone();
    drop(table);
    let _activity = match &route {
        Some(r) => match state.admit_tenant(&r.tenant, &limits, peer, "request") {
            Some(open) => Some(open),
            None => {
                state.metrics.http_request("tenant_limit", "refused");
                return plain(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many requests for this site\n",
                );
            }
        },
        None => None,
    };
    // A sleeping tenant's request waits for it to wake, as a :443 connection does.
    if let Some(r) = route.clone().filter(|r| r.asleep) {
        let held = state
            .waker
            .hold(
                &r,
                host.as_deref(),
                &state.routes,
                limits.wake_queue_per_tenant,
                limits.wake_timeout(),
            )
            .await;
        state.metrics.wake(&r.tenant, held.outcome());
        match held {
            crate::wake::Held::Awake(awake) => route = Some(awake),
            other => {
                warn!(target: "limit", limit = other.outcome(), tenant = %r.tenant, client = %peer,
                      "limit hit: request for a sleeping tenant not served");
                state.metrics.http_request("wake", "error");
                return plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the site is waking up; try again in a moment\n",
                );
            }
        }
    }
    let (action, resp) = match (&route, host.as_deref()) {
        (None, _) | (_, None) => (
            "none",
            plain(StatusCode::NOT_FOUND, "no route for this host\n"),
        ),
        (Some(r), Some(host)) => {
            let acme = path.starts_with(ACME_PREFIX);
            match r.http_backend {
                Some(b) if acme || r.http == HttpMode::Forward => {
                    let action = if acme { "acme" } else { "forward" };
                    (action, forward(req, peer, b, "http").await)
                }
                None if acme => (
                    "acme",
                    plain(
                        StatusCode::NOT_FOUND,
                        "this route has no http_backend for ACME\n",
                    ),
                ),
                _ => {
                    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
                    let mut r = plain(StatusCode::PERMANENT_REDIRECT, "");
                    if let Ok(v) = HeaderValue::from_str(&format!("https://{host}{pq}")) {
                        r.headers_mut().insert(LOCATION, v);
                    }
                    ("redirect", r)
                }
            }
        }
    };
    let outcome = if resp.status().is_server_error() {
        "error"
    } else {
        "ok"
    };
    state.metrics.http_request(action, outcome);
    info!(
        target: "access",
        listener = "http",
        client = %peer,
        host = host.as_deref().unwrap_or("-"),
        path = %path,
        route = route.as_ref().map_or("-", |r| r.name.as_str()),
        action,
        status = resp.status().as_u16(),
        duration_ms = start.elapsed().as_millis() as u64,
        "request"
    );
    resp
}

/// Sends the request (HTTP/1.1 or HTTP/2) to `backend` as HTTP/1.1 over a fresh connection
/// and returns its answer; `proto` is what the client used (`X-Forwarded-Proto`).
pub async fn forward(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    backend: SocketAddr,
    proto: &'static str,
) -> Response<Body> {
    // HTTP/2 carries the host in the URI authority; HTTP/1.1 wants it in Host, origin-form URI.
    if !req.headers().contains_key(HOST) {
        if let Some(v) = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            req.headers_mut().insert(HOST, v);
        }
    }
    if let Some(pq) = req.uri().path_and_query().cloned() {
        *req.uri_mut() = hyper::Uri::from(pq);
    }
    *req.version_mut() = hyper::Version::HTTP_11;
    let conn = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        TcpStream::connect(backend),
    )
    .await;
    let stream = match conn {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            warn!(%backend, error = %e, "http backend unreachable");
            return plain(StatusCode::BAD_GATEWAY, "tenant backend unreachable\n");
        }
        Err(_) => {
            warn!(target: "limit", limit = "connect_timeout", %backend, "limit hit: http backend did not accept in time");
            return plain(
                StatusCode::GATEWAY_TIMEOUT,
                "tenant backend did not answer\n",
            );
        }
    };
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    {
        Ok(x) => x,
        Err(e) => {
            warn!(%backend, error = %e, "http backend handshake failed");
            return plain(StatusCode::BAD_GATEWAY, "tenant backend failed\n");
        }
    };
    tokio::spawn(conn);
    if let Ok(v) = HeaderValue::from_str(&peer.ip().to_string()) {
        req.headers_mut().insert("x-forwarded-for", v);
    }
    req.headers_mut()
        .insert("x-forwarded-proto", HeaderValue::from_static(proto));
    match sender.send_request(req).await {
        Ok(resp) => resp.map(Either::Right),
        Err(e) => {
            warn!(%backend, error = %e, "http backend request failed");
            plain(StatusCode::BAD_GATEWAY, "tenant backend failed\n")
        }
    }
}
