//! hostd's HTTP/JSON API on a root-only unix socket, what `hostd ctl` talks to.
//! Long operations answer with a stream of JSON lines — `{"progress": "..."}` as each step
//! starts, then one `{"ok": ...}` or `{"error": "..."}` — so the CLI shows progress live.
//! Operations are serialised: one tenant change at a time on a host.

use std::path::Path;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Mutex};

use crate::engine::Engine;
use crate::lifecycle::{Host, Record};
use crate::spec::TenantSpec;

/// Shared daemon state: the host and the lock that serialises changes.
pub struct Daemon {
    host: Host,
    changes: Mutex<()>,
}

impl Daemon {
    /// Wraps an opened host.
    pub fn new(host: Host) -> Arc<Self> {
        Arc::new(Self {
            host,
            changes: Mutex::new(()),
        })
    }

    /// The host behind the API.
    pub fn host(&self) -> &Host {
        &self.host
    }
}

/// The API routes.
pub fn router(d: Arc<Daemon>) -> Router {
    Router::new()
        .route("/v1/tenants", get(list).post(create))
        .route("/v1/tenants/{name}", get(status).delete(destroy))
        .route("/v1/tenants/{name}/deploy", post(deploy))
        .with_state(d)
}

/// Serves the API on `socket` (mode 0600) until the future is dropped.
pub async fn serve(d: Arc<Daemon>, socket: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = tokio::net::UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    axum::serve(listener, router(d)).await
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

fn summary(d: &Daemon, r: &Record) -> Value {
    let engine = Engine::adopt(d.host.engine_config(r));
    json!({
        "name": r.spec.name,
        "template": r.spec.template,
        "slot": r.slot,
        "desired": r.desired,
        "steps_done": r.done,
        "engine_pid": engine.as_ref().map(Engine::pid),
        "engine_rss_bytes": engine.as_ref().and_then(Engine::rss_bytes),
        "subdomains": r.spec.subdomains,
    })
}

async fn list(State(d): State<Arc<Daemon>>) -> Response {
    match d.host.records() {
        Ok(rs) => Json(rs.iter().map(|r| summary(&d, r)).collect::<Vec<_>>()).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn status(State(d): State<Arc<Daemon>>, UrlPath(name): UrlPath<String>) -> Response {
    match d.host.record(&name) {
        Ok(Some(r)) => Json(summary(&d, &r)).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no tenant named {name:?}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Runs `op` in the background, streaming its progress and result as JSON lines.
fn stream<F>(d: Arc<Daemon>, op: F) -> Response
where
    F: for<'a> FnOnce(
            &'a Daemon,
            &'a mut (dyn FnMut(String) + Send),
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<Value, String>> + Send + 'a>,
        > + Send
        + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    tokio::spawn(async move {
        let _serial = d.changes.lock().await;
        let progress_tx = tx.clone();
        let mut progress = move |line: String| {
            let _ = progress_tx.send(Bytes::from(format!("{}\n", json!({ "progress": line }))));
        };
        let end = match op(&d, &mut progress).await {
            Ok(v) => json!({ "ok": v }),
            Err(e) => json!({ "error": e }),
        };
        let _ = tx.send(Bytes::from(format!("{end}\n")));
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| {
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "building the response failed",
            )
        })
}

async fn create(State(d): State<Arc<Daemon>>, body: String) -> Response {
    let spec = match TenantSpec::parse(&body) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    stream(d, move |d, progress| {
        Box::pin(async move {
            let r = d
                .host
                .create(spec, progress)
                .await
                .map_err(|e| e.to_string())?;
            Ok(summary(d, &r))
        })
    })
}

#[derive(Deserialize)]
struct DestroyQuery {
    #[serde(default)]
    wipe: bool,
}

async fn destroy(
    State(d): State<Arc<Daemon>>,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<DestroyQuery>,
) -> Response {
    match d.host.record(&name) {
        Ok(Some(_)) => {}
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("no tenant named {name:?}")),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
    stream(d, move |d, progress| {
        Box::pin(async move {
            d.host
                .destroy(&name, q.wipe, progress)
                .await
                .map_err(|e| e.to_string())?;
            Ok(json!({ "destroyed": name, "wiped": q.wipe }))
        })
    })
}

async fn deploy(
    State(d): State<Arc<Daemon>>,
    UrlPath(name): UrlPath<String>,
    body: String,
) -> Response {
    let doc = match crate::policy::check_compose(&body) {
        Ok(doc) => doc,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
    };
    let rec = match d.host.record(&name) {
        Ok(Some(r)) => r,
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("no tenant named {name:?}")),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    stream(d, move |d, progress| {
        Box::pin(async move {
            let engine = Engine::adopt(d.host.engine_config(&rec))
                .ok_or_else(|| format!("tenant {name}: engine is not running; run `hostd ctl create` again to resume it"))?;
            let docker = engine
                .connect()
                .await
                .ok_or_else(|| format!("tenant {name}: engine does not answer"))?;
            let hardening = d.host.hardening(&rec);
            let project =
                crate::compose::Project::new(&docker, rec.spec.name.compose_project(), hardening);
            let started = project
                .deploy(&doc, progress)
                .await
                .map_err(|e| e.to_string())?;
            Ok(json!({ "project": rec.spec.name.compose_project(), "containers": started }))
        })
    })
}
