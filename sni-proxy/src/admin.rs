//! Admin interfaces: a unix socket that hostd drives (one JSON command per line, one JSON
//! answer per line; `watch-wakes` turns a session into a stream of wake asks) and an HTTP
//! address serving Prometheus `/metrics`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tracing::warn;

use crate::routes::RouteSpec;
use crate::State;

/// A command on the admin socket.
#[derive(Debug, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Command {
    /// Re-read the routes file.
    Reload,
    /// The routes file as the proxy holds it now, plus open connections.
    Status,
    /// Add a route, or replace the route with the same `sni`; writes the file.
    SetRoute {
        /// The route.
        route: RouteSpec,
    },
    /// Remove the route with this `sni`; writes the file.
    RemoveRoute {
        /// The pattern as written in the file.
        sni: String,
    },
    /// Per tenant: connections open now, the last time one opened or closed, and the
    /// connections held while it wakes (what hostd's idle decisions read).
    Activity,
    /// Turns the session into a stream of `{"wake":"<tenant>"}` lines, one each time a
    /// connection arrives for a sleeping tenant (first the tenants with connections held
    /// now); hostd keeps one open and wakes the tenants it names.
    WatchWakes,
}

/// Serves the admin unix socket forever.
pub async fn serve_socket(listener: UnixListener, state: Arc<State>) {
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                let state = Arc::clone(&state);
                tokio::spawn(async move {
                    if let Err(e) = session(s, &state).await {
                        warn!(error = %e, "admin socket session failed");
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "admin socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn session(s: UnixStream, state: &State) -> std::io::Result<()> {
    let (r, mut w) = s.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Some(line) = lines.next_line().await? {
        if line.trim().is_empty() {
            continue;
        }
        let answer = match serde_json::from_str::<Command>(&line) {
            Ok(Command::WatchWakes) => {
                let (mut asks, pending) = state.waker.listen();
                w.write_all(b"{\"ok\":true}\n").await?;
                for t in pending {
                    w.write_all(format!("{}\n", json!({ "wake": t })).as_bytes())
                        .await?;
                }
                loop {
                    tokio::select! {
                        ask = asks.recv() => match ask {
                            Ok(t) => w.write_all(format!("{}\n", json!({ "wake": t })).as_bytes()).await?,
                            // Fell behind: the held connections ask again every 2 s.
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
                        },
                        // The listener hung up (or sent something: this session only streams).
                        line = lines.next_line() => if !matches!(line, Ok(Some(_))) { return Ok(()) },
                    }
                }
            }
            Ok(cmd) => run(cmd, state).await,
            Err(e) => json!({"ok": false, "error": format!("bad command: {e}")}),
        };
        w.write_all(format!("{answer}\n").as_bytes()).await?;
    }
    Ok(())
}

/// Runs one admin command and returns its JSON answer.
pub async fn run(cmd: Command, state: &State) -> serde_json::Value {
    let routes = &state.routes;
    let m = &state.metrics;
    let res = match cmd {
        Command::Reload => routes.reload("admin", m).await.map_err(|e| e.to_string()),
        Command::Status => {
            let t = routes.current();
            return json!({"ok": true, "routes": t.source, "open_connections": state.limiter.open()});
        }
        Command::Activity => {
            let held = state.waker.held();
            let tenants: serde_json::Map<String, serde_json::Value> = state
                .activity
                .snapshot()
                .into_iter()
                .map(|(t, s)| {
                    let h = held.get(&t).copied().unwrap_or(0);
                    (
                        t,
                        json!({"open": s.open, "last_active": s.last_active, "held": h}),
                    )
                })
                .collect();
            return json!({"ok": true, "tenants": tenants});
        }
        Command::WatchWakes => {
            return json!({"ok": false, "error": "watch-wakes streams; send it as the first line of its own session"});
        }
        Command::SetRoute { route } => {
            let edit = move |f: &mut crate::routes::RoutesFile| {
                let key = route.sni.to_ascii_lowercase();
                f.routes.retain(|r| r.sni.to_ascii_lowercase() != key);
                f.routes.push(route);
                Ok(())
            };
            routes.edit(edit, m).await
        }
        Command::RemoveRoute { sni } => {
            let edit = move |f: &mut crate::routes::RoutesFile| {
                let key = sni.to_ascii_lowercase();
                let before = f.routes.len();
                f.routes.retain(|r| r.sni.to_ascii_lowercase() != key);
                if f.routes.len() == before {
                    return Err(format!("no route with sni {sni:?}"));
                }
                Ok(())
            };
            routes.edit(edit, m).await
        }
    };
    match res {
        Ok(n) => json!({"ok": true, "routes": n}),
        Err(e) => json!({"ok": false, "error": e}),
    }
}

/// Serves `GET /metrics` (Prometheus text format) on the admin HTTP address.
pub async fn serve_metrics(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((s, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let state = Arc::clone(&state);
                async move {
                    let resp = if req.uri().path() == "/metrics" {
                        let body = state
                            .metrics
                            .render(state.limiter.open(), state.routes.current().len());
                        Response::builder()
                            .header("content-type", crate::metrics::CONTENT_TYPE)
                            .body(Full::new(Bytes::from(body)))
                    } else {
                        Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body(Full::new(Bytes::from_static(b"only /metrics here\n")))
                    };
                    Ok::<_, Infallible>(resp.unwrap_or_default())
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(s), svc)
                .await;
        });
    }
}
