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

/// Restarts dead engines every `every`, taking the change lock so it never races a
/// create, stop or destroy. Runs for the daemon's life.
pub async fn supervise(d: Arc<Daemon>, every: std::time::Duration) {
    loop {
        tokio::time::sleep(every).await;
        let _serial = d.changes.lock().await;
        let (restarted, errors) = d
            .host
            .supervise(&mut |line| tracing::warn!(target: "supervise", "{line}"))
            .await;
        for name in restarted {
            tracing::info!(target: "supervise", tenant = %name, "engine restarted");
        }
        for e in errors {
            tracing::error!(target: "supervise", "{e}");
        }
    }
}

/// The API routes.
pub fn router(d: Arc<Daemon>) -> Router {
    Router::new()
        .route("/v1/tenants", get(list).post(create))
        .route("/v1/tenants/{name}", get(status).delete(destroy))
        .route("/v1/tenants/{name}/deploy", post(deploy))
        .route("/v1/tenants/{name}/stop", post(stop))
        .route("/v1/tenants/{name}/start", post(start))
        .route("/v1/tenants/{name}/quarantine", post(quarantine))
        .route("/v1/tenants/{name}/logs", get(logs))
        .route("/v1/tenants/{name}/images", post(load_image))
        .route("/v1/tenants/{name}/rotate-secrets", post(rotate_secrets))
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

/// The tenant's record, or the 404/500 response to send instead.
#[allow(clippy::result_large_err)] // the Err is the HTTP answer itself, returned at once
fn existing(d: &Daemon, name: &str) -> Result<Record, Response> {
    match d.host.record(name) {
        Ok(Some(r)) => Ok(r),
        Ok(None) => Err(error(
            StatusCode::NOT_FOUND,
            format!("no tenant named {name:?}"),
        )),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
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
        "quarantined": r.quarantined,
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
    match existing(&d, &name) {
        Ok(r) => Json(summary(&d, &r)).into_response(),
        Err(resp) => resp,
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
    if let Err(resp) = existing(&d, &name) {
        return resp;
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
    let mut doc = match crate::policy::check_compose(&body) {
        Ok(doc) => doc,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
    };
    let rec = match existing(&d, &name) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    if rec.spec.template == crate::spec::Template::Agent {
        if let Some(ts) = d.host.tailscale() {
            if let Err(e) = crate::tailscale::add_sidecar(&mut doc, ts, rec.spec.name.as_str()) {
                return error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string());
            }
        }
    }
    stream(d, move |d, progress| {
        Box::pin(async move {
            let engine = Engine::adopt(d.host.engine_config(&rec))
                .ok_or_else(|| format!("tenant {name}: engine is not running; run `hostd ctl create` again to resume it"))?;
            let docker = engine
                .connect()
                .await
                .ok_or_else(|| format!("tenant {name}: engine does not answer"))?;
            let hardening = d.host.hardening(&rec).map_err(|e| e.to_string())?;
            let project =
                crate::compose::Project::new(&docker, rec.spec.name.compose_project(), hardening);
            let started = project
                .deploy(&doc, progress)
                .await
                .map_err(|e| e.to_string())?;
            d.host.sync_routes(&rec, progress).await?;
            Ok(json!({ "project": rec.spec.name.compose_project(), "containers": started }))
        })
    })
}

/// Which lifecycle change a plain POST asks for.
#[derive(Clone, Copy)]
enum Change {
    Stop,
    Start,
    Quarantine(bool),
}

fn change(d: Arc<Daemon>, name: String, what: Change) -> Response {
    if let Err(resp) = existing(&d, &name) {
        return resp;
    }
    stream(d, move |d, progress| {
        Box::pin(async move {
            let r = match what {
                Change::Stop => d.host.stop(&name, progress).await,
                Change::Start => d.host.start(&name, progress).await,
                Change::Quarantine(on) => d.host.quarantine(&name, on, progress).await,
            }
            .map_err(|e| e.to_string())?;
            Ok(summary(d, &r))
        })
    })
}

async fn rotate_secrets(State(d): State<Arc<Daemon>>, UrlPath(name): UrlPath<String>) -> Response {
    if let Err(resp) = existing(&d, &name) {
        return resp;
    }
    stream(d, move |d, progress| {
        Box::pin(async move {
            let restarted = d
                .host
                .rotate_secrets(&name, progress)
                .await
                .map_err(|e| e.to_string())?;
            Ok(json!({ "tenant": name, "restarted": restarted }))
        })
    })
}

async fn stop(State(d): State<Arc<Daemon>>, UrlPath(name): UrlPath<String>) -> Response {
    change(d, name, Change::Stop)
}

async fn start(State(d): State<Arc<Daemon>>, UrlPath(name): UrlPath<String>) -> Response {
    change(d, name, Change::Start)
}

#[derive(Deserialize)]
struct QuarantineQuery {
    /// `false` lifts the quarantine.
    #[serde(default = "yes")]
    on: bool,
}

fn yes() -> bool {
    true
}

async fn quarantine(
    State(d): State<Arc<Daemon>>,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<QuarantineQuery>,
) -> Response {
    change(d, name, Change::Quarantine(q.on))
}

/// A client for a tenant's running engine, or the error response to send.
async fn tenant_engine(d: &Daemon, name: &str) -> Result<(Record, bollard::Docker), Response> {
    let rec = existing(d, name)?;
    let engine = Engine::adopt(d.host.engine_config(&rec)).ok_or_else(|| {
        error(
            StatusCode::CONFLICT,
            format!("tenant {name}: engine is not running (stopped? run `hostd ctl start {name}`)"),
        )
    })?;
    let docker = engine.connect().await.ok_or_else(|| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("tenant {name}: engine does not answer; see its log"),
        )
    })?;
    Ok((rec, docker))
}

#[derive(Deserialize)]
struct LogsQuery {
    service: Option<String>,
    #[serde(default)]
    follow: bool,
    /// Lines from the end of each container's log (`all` by default).
    tail: Option<String>,
}

/// Streams the logs of the tenant's project containers (or one service's) as JSON lines
/// `{"container": ..., "log": ...}`. Not serialised with changes: `--follow` runs for long.
async fn logs(
    State(d): State<Arc<Daemon>>,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<LogsQuery>,
) -> Response {
    use bollard::container::LogOutput;
    use bollard::query_parameters::{ListContainersOptionsBuilder, LogsOptionsBuilder};
    use futures_util::StreamExt;
    let (rec, docker) = match tenant_engine(&d, &name).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let filter =
        crate::compose::project_filter(&rec.spec.name.compose_project(), q.service.as_deref());
    let list = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filter)
        .build();
    let containers = match docker.list_containers(Some(list)).await {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_GATEWAY, format!("listing containers: {e}")),
    };
    if containers.is_empty() {
        return error(
            StatusCode::NOT_FOUND,
            match &q.service {
                Some(s) => format!("tenant {name} has no container of service {s:?}"),
                None => format!("tenant {name} has no containers; deploy a project first"),
            },
        );
    }
    let mut streams = Vec::new();
    for c in containers {
        let Some(id) = c.id else { continue };
        let cname = c
            .names
            .and_then(|n| n.first().map(|n| n.trim_start_matches('/').to_owned()))
            .unwrap_or_else(|| id.clone());
        let opts = LogsOptionsBuilder::default()
            .follow(q.follow)
            .stdout(true)
            .stderr(true)
            .tail(q.tail.as_deref().unwrap_or("all"))
            .build();
        let s = docker.logs(&id, Some(opts)).map(move |item| {
            let line = match item {
                Ok(LogOutput::StdOut { message } | LogOutput::StdErr { message })
                | Ok(LogOutput::Console { message }) => {
                    json!({ "container": cname, "log": String::from_utf8_lossy(&message) })
                }
                Ok(LogOutput::StdIn { .. }) => return Bytes::new(),
                Err(e) => json!({ "error": format!("{cname}: {e}") }),
            };
            Bytes::from(format!("{line}\n"))
        });
        streams.push(s.boxed());
    }
    let body = futures_util::stream::select_all(streams)
        .filter(|b| std::future::ready(!b.is_empty()))
        .map(Ok::<_, std::convert::Infallible>);
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

/// Loads an image tarball (`docker save` format) into the tenant's engine: how images
/// arrive on hosts without a registry. The body streams; nothing is buffered whole.
async fn load_image(
    State(d): State<Arc<Daemon>>,
    UrlPath(name): UrlPath<String>,
    body: Body,
) -> Response {
    use bollard::query_parameters::ImportImageOptionsBuilder;
    use futures_util::StreamExt;
    let (_, docker) = match tenant_engine(&d, &name).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let mut load = docker.import_image_stream(
        ImportImageOptionsBuilder::default().quiet(true).build(),
        body.into_data_stream(),
        None,
    );
    let mut loaded = Vec::new();
    while let Some(step) = load.next().await {
        match step {
            Ok(info) => {
                if let Some(err) = info.error_detail.and_then(|e| e.message) {
                    return error(StatusCode::UNPROCESSABLE_ENTITY, format!("loading the image: {err}"));
                }
                if let Some(s) = info.stream {
                    let s = s.trim();
                    if let Some(img) = s
                        .strip_prefix("Loaded image: ")
                        .or_else(|| s.strip_prefix("Loaded image ID: "))
                    {
                        loaded.push(img.to_owned());
                    }
                }
            }
            Err(e) => {
                return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("loading the image into tenant {name}'s engine: {e}; is it a `docker save` tarball?"),
                )
            }
        }
    }
    Json(json!({ "tenant": name, "loaded": loaded })).into_response()
}
