//! hostd's HTTP/JSON API on a root-only unix socket, what `hostd ctl` talks to.
//! Long operations answer with a stream of JSON lines — `{"progress": "..."}` as each step
//! starts, then one `{"ok": ...}` or `{"error": "..."}` — so the CLI shows progress live.
//! Each request becomes one [`Action`] ([`crate::action`]); changes to one tenant are
//! serialised by that tenant's lock, and never wait for another tenant's. Errors carry a
//! `kind` (see [`ErrorKind`]) that decides the HTTP status and `hostd ctl`'s exit code.
//! `logs` and `images` talk to the tenant's engine directly: they change no record.

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
use tokio::sync::mpsc;

use crate::action::{Action, Outcome};
use crate::engine::Engine;
use crate::error::{ErrorKind, HostError};
use crate::host::{Host, Listed};
use crate::record::Record;
use crate::spec::TenantSpec;

/// Shared daemon state: the host, whose operations lock per tenant.
pub struct Daemon {
    host: Host,
}

impl Daemon {
    /// Wraps an opened host.
    pub fn new(host: Host) -> Arc<Self> {
        Arc::new(Self { host })
    }

    /// The host behind the API.
    pub fn host(&self) -> &Host {
        &self.host
    }
}

/// Restarts dead engines and refreshes broker tokens every `every`; a tenant being changed
/// is skipped that round. Runs for the daemon's life.
pub async fn supervise(d: Arc<Daemon>, every: std::time::Duration) {
    loop {
        tokio::time::sleep(every).await;
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

/// Serves hostd's Prometheus metrics (`GET /metrics`) on `listener` until the future is
/// dropped; per-tenant readings are refreshed in the background.
pub async fn serve_metrics(
    d: Arc<Daemon>,
    listener: tokio::net::TcpListener,
) -> std::io::Result<()> {
    tokio::spawn(crate::metrics::keep_fresh(Arc::clone(&d)));
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(d): State<Arc<Daemon>>| async move {
                match d.host.metrics.render() {
                    Ok(text) => (
                        [(
                            "content-type",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        text,
                    )
                        .into_response(),
                    Err(_) => error(ErrorKind::Failed, "encoding the metrics failed"),
                }
            }),
        )
        .with_state(d);
    axum::serve(listener, app).await
}

/// The API routes.
pub fn router(d: Arc<Daemon>) -> Router {
    Router::new()
        .route("/v1/tenants", get(list).post(create))
        .route("/v1/tenants/{name}", get(status).delete(destroy))
        .route("/v1/tenants/{name}/deploy", post(deploy))
        .route("/v1/tenants/{name}/stop", post(stop))
        .route("/v1/tenants/{name}/start", post(start))
        .route("/v1/tenants/{name}/freeze", post(freeze))
        .route("/v1/tenants/{name}/sleep", post(sleep))
        .route("/v1/tenants/{name}/wake", post(wake))
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

/// The JSON error line of a failure: its message and its kind.
fn error_line(kind: ErrorKind, message: impl Into<String>) -> Value {
    json!({ "error": message.into(), "kind": kind })
}

/// An error answered at once, with the kind's HTTP status.
fn error(kind: ErrorKind, message: impl Into<String>) -> Response {
    let status =
        StatusCode::from_u16(kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(error_line(kind, message))).into_response()
}

fn host_error(e: &HostError) -> Response {
    error(e.kind(), e.to_string())
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
        "power": crate::power::word(r.power),
        "power_settled": r.power_settled,
        "power_since": r.power_since,
        "wake_error": r.wake_error,
        "idle": r.spec.idle(),
        "subdomains": r.spec.subdomains,
        "deployment": r.deployment.as_ref().map(|dep| json!({
            "revision": dep.revision,
            "accepted_at": dep.accepted_at,
            "deployed_at": dep.deployed_at,
            "error": dep.error,
        })),
    })
}

/// Encodes what an action produced.
fn outcome(d: &Daemon, o: Outcome) -> Value {
    match o {
        Outcome::Tenant(r) => summary(d, &r),
        Outcome::Deployed { record, containers } => json!({
            "project": record.spec.name.compose_project(),
            "revision": record.deployment.as_ref().map(|dep| dep.revision),
            "containers": containers,
        }),
        Outcome::Rotated { tenant, restarted } => {
            json!({ "tenant": tenant, "restarted": restarted })
        }
        Outcome::Destroyed { tenant, wiped } => json!({ "destroyed": tenant, "wiped": wiped }),
    }
}

async fn list(State(d): State<Arc<Daemon>>) -> Response {
    match d.host.list() {
        Ok(entries) => Json(
            entries
                .iter()
                .map(|e| match e {
                    Listed::Tenant(r) => summary(&d, r),
                    Listed::Broken { name, reason } => json!({ "name": name, "broken": reason }),
                })
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => host_error(&e),
    }
}

async fn status(State(d): State<Arc<Daemon>>, UrlPath(name): UrlPath<String>) -> Response {
    match d.host.existing(&name) {
        Ok(r) => {
            let drift = d.host.drift(&r).await;
            // The checks may take seconds (an engine that stops answering as it is frozen):
            // the summary is of the record as it is after them, not as it was before.
            let r = d.host.existing(&name).unwrap_or(r);
            let mut v = summary(&d, &r);
            v["steps_not_in_place"] = json!(drift);
            Json(v).into_response()
        }
        Err(e) => host_error(&e),
    }
}

/// Runs `action` in the background, streaming its progress and then its outcome (or its
/// error with its kind) as JSON lines. The task runs to the end even if the client goes.
fn execute(d: Arc<Daemon>, action: Action) -> Response {
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    tokio::spawn(async move {
        let progress_tx = tx.clone();
        let mut progress = move |line: String| {
            let _ = progress_tx.send(Bytes::from(format!("{}\n", json!({ "progress": line }))));
        };
        let tenant = action.tenant().to_owned();
        let end = match d.host.execute(action, &mut progress).await {
            Ok(o) => json!({ "ok": outcome(&d, o) }),
            Err(e) => {
                tracing::warn!(%tenant, kind = ?e.kind(), "{e}");
                error_line(e.kind(), e.to_string())
            }
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
        .unwrap_or_else(|_| error(ErrorKind::Failed, "building the response failed"))
}

/// Answers at once when the tenant does not exist; the action re-reads it under its lock.
#[allow(clippy::result_large_err)] // the Err is the HTTP answer itself, returned at once
fn known(d: &Daemon, name: &str) -> Result<(), Response> {
    d.host
        .existing(name)
        .map(|_| ())
        .map_err(|e| host_error(&e))
}

async fn create(State(d): State<Arc<Daemon>>, body: String) -> Response {
    match TenantSpec::parse(&body) {
        Ok(spec) => execute(d, Action::Create(Box::new(spec))),
        Err(e) => error(ErrorKind::Refused, e.to_string()),
    }
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
    if let Err(resp) = known(&d, &name) {
        return resp;
    }
    execute(d, Action::Destroy { name, wipe: q.wipe })
}

async fn deploy(
    State(d): State<Arc<Daemon>>,
    UrlPath(name): UrlPath<String>,
    body: String,
) -> Response {
    let bundle: crate::compose::Bundle = match serde_json::from_str(&body) {
        Ok(b) => b,
        Err(e) => {
            return error(
                ErrorKind::Refused,
                format!("the deploy body must be JSON {{\"compose\": \"<compose file>\", \"env\": {{\"VAR\": \"value\"}}, \"files\": {{\"path\": \"<base64>\"}}}} (as `hostd ctl deploy` sends it): {e}"),
            )
        }
    };
    if let Err(resp) = known(&d, &name) {
        return resp;
    }
    // The policy runs in the executor, under the tenant's lock, with the tenant's limits.
    execute(d, Action::Deploy { name, bundle })
}

fn change(d: Arc<Daemon>, action: Action) -> Response {
    if let Err(resp) = known(&d, action.tenant()) {
        return resp;
    }
    execute(d, action)
}

async fn rotate_secrets(State(d): State<Arc<Daemon>>, UrlPath(name): UrlPath<String>) -> Response {
    change(d, Action::RotateSecrets(name))
}

async fn stop(State(d): State<Arc<Daemon>>, UrlPath(name): UrlPath<String>) -> Response {
    change(d, Action::Stop(name))
}

async fn start(State(d): State<Arc<Daemon>>, UrlPath(name): UrlPath<String>) -> Response {
    change(d, Action::Start(name))
}

async fn freeze(State(d): State<Arc<Daemon>>, UrlPath(name): UrlPath<String>) -> Response {
    change(d, Action::Freeze(name))
}

async fn sleep(State(d): State<Arc<Daemon>>, UrlPath(name): UrlPath<String>) -> Response {
    change(d, Action::Sleep(name))
}

async fn wake(State(d): State<Arc<Daemon>>, UrlPath(name): UrlPath<String>) -> Response {
    change(d, Action::Wake(name))
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
    change(
        d,
        if q.on {
            Action::Quarantine(name)
        } else {
            Action::Release(name)
        },
    )
}

/// A client for a tenant's running engine, or the error response to send.
/// The tenant's record and engine client; a frozen or sleeping tenant is woken first (an
/// operator at work counts as activity).
async fn tenant_engine(d: &Daemon, name: &str) -> Result<(Record, bollard::Docker), Response> {
    d.host.touch(name);
    let mut rec = d.host.existing(name).map_err(|e| host_error(&e))?;
    if rec.serving() && !rec.awake() {
        let mut say = |l: String| tracing::info!(target: "wake", "{l}");
        rec = d
            .host
            .wake(name, &mut say)
            .await
            .map_err(|e| host_error(&e))?;
    }
    let docker = d.host.docker(&rec).await.map_err(|e| host_error(&e))?;
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
        Err(e) => {
            return error(
                ErrorKind::Unavailable,
                format!("tenant {name}: listing containers: {e}"),
            )
        }
    };
    if containers.is_empty() {
        return error(
            ErrorKind::NotFound,
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
        .unwrap_or_else(|_| error(ErrorKind::Failed, "building the response failed"))
}

/// How long one image load may take.
const IMAGE_LOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

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
    // An image of a few hundred MB on a busy host takes longer than the engine client's
    // default request timeout: a load has its own bound.
    let docker = docker.with_timeout(IMAGE_LOAD_TIMEOUT);
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
                    return error(ErrorKind::Refused, format!("loading the image: {err}"));
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
            Err(bollard::errors::Error::RequestTimeoutError) => {
                return error(
                    ErrorKind::Failed,
                    format!(
                        "loading the image into tenant {name}'s engine did not finish within {} s; check the engine's log and the host's load, then retry",
                        IMAGE_LOAD_TIMEOUT.as_secs()
                    ),
                )
            }
            Err(e) => {
                return error(
                    ErrorKind::Refused,
                    format!("loading the image into tenant {name}'s engine: {e}; is it a `docker save` tarball?"),
                )
            }
        }
    }
    Json(json!({ "tenant": name, "loaded": loaded })).into_response()
}
