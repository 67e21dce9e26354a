//! The small HTTP/JSON API behind the dashboard's deploy form. Every route but `/healthz`
//! needs a bearer token with the route's scope (`auth`). Deploys and deletes run as durable
//! jobs (202 + job id); the dashboard polls `GET /v1/jobs/{id}?since=N` for progress lines.
//! Validation happens before a job starts, so a refused form gets 422 with per-field errors.
//! An `Idempotency-Key` header makes a re-sent submission return the job it already made.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use m8trx_spec::CustomerName;
use serde::Deserialize;
use serde_json::json;

use crate::auth::Caller;
use crate::error::ControlError;
use crate::job_action::JobAction;
use crate::jobs::{Idempotency, JobFilter, JobTable, SubmitError, Submitted};
use crate::ops::Control;
use crate::request::{DeployRequest, FieldError};
use crate::store::{Store, StoreError};

/// Shared state of the API: the configured control, the job table and the state file.
#[derive(Clone)]
pub struct ApiState {
    /// Control operations.
    pub control: Arc<Control>,
    /// Running and finished jobs.
    pub jobs: JobTable,
    /// The state file (tokens).
    pub store: Arc<Store>,
}

/// All routes of the API, each behind the bearer-token check (`/healthz` excepted).
pub fn router(state: ApiState) -> Router {
    let auth = axum::middleware::from_fn_with_state(state.store.clone(), crate::auth::require);
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"ok": true})) }))
        .route("/v1/validate", post(validate))
        .route("/v1/deployments", post(deploy))
        .route("/v1/deployments/{name}", get(status).delete(delete))
        .route("/v1/deployments/{name}/compose", post(deploy_compose))
        .route("/v1/deployments/{name}/move", post(move_tenant))
        .route("/v1/hosts/{id}/drain", post(drain_host))
        .route("/v1/jobs", get(list_jobs))
        .route("/v1/jobs/{id}", get(get_job))
        .layer(auth)
        .with_state(state)
}

fn field_errors(status: StatusCode, errors: Vec<FieldError>) -> Response {
    (status, Json(json!({ "errors": errors }))).into_response()
}

fn body_error(rej: JsonRejection) -> Response {
    field_errors(
        StatusCode::BAD_REQUEST,
        vec![FieldError {
            field: "body".to_owned(),
            message: rej.body_text(),
        }],
    )
}

fn parse_name(name: &str) -> Result<CustomerName, Vec<FieldError>> {
    CustomerName::parse(name).map_err(|e| {
        vec![FieldError {
            field: "name".to_owned(),
            message: e.to_string(),
        }]
    })
}

fn started(submitted: Submitted) -> Response {
    let (id, replayed) = match submitted {
        Submitted::Started(id) => (id, false),
        Submitted::Replayed(id) => (id, true),
    };
    (
        StatusCode::ACCEPTED,
        Json(json!({ "job": id, "poll": format!("/v1/jobs/{id}"), "replayed": replayed })),
    )
        .into_response()
}

/// The `Idempotency-Key` header, when given: 1–255 visible ASCII characters.
#[allow(clippy::result_large_err)] // the Err is the HTTP answer itself, returned at once
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Response> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(k.to_owned()))
        }
        _ => Err(field_errors(
            StatusCode::BAD_REQUEST,
            vec![FieldError {
                field: "Idempotency-Key".to_owned(),
                message: "1–255 visible ASCII characters, e.g. a UUID the dashboard makes per form submission".to_owned(),
            }],
        )),
    }
}

/// Records `action` as a job (or finds the one its idempotency key already made).
async fn submit(
    st: &ApiState,
    caller: &Caller,
    headers: &HeaderMap,
    action: JobAction,
) -> Response {
    let key = match idempotency_key(headers) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let idempotency = key.map(|key| Idempotency {
        token: caller.token.clone(),
        key,
        request_hash: crate::tokens::sha256_hex(&serde_json::to_vec(&action).unwrap_or_default()),
    });
    let customer = action.customer();
    match st
        .jobs
        .submit(st.control.clone(), action, Some(caller.token.clone()), idempotency)
        .await
    {
        Ok(s) => started(s),
        Err(SubmitError::Busy(id)) => (
            StatusCode::CONFLICT,
            Json(json!({
                "error": format!("{customer} already has a running job {id}; wait for it to finish"),
                "job": id,
            })),
        )
            .into_response(),
        Err(e @ SubmitError::KeyReused(_)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "errors": [{"field": "Idempotency-Key", "message": e.to_string()}] })),
        )
            .into_response(),
        Err(e @ SubmitError::Store(_)) => {
            tracing::error!("{e}");
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "error": e.to_string() }))).into_response()
        }
    }
}

fn error_text(e: &ControlError) -> String {
    e.to_string()
}

async fn validate(body: Result<Json<DeployRequest>, JsonRejection>) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(rej) => return body_error(rej),
    };
    match req.validate() {
        Ok(spec) => Json(json!({
            "valid": true,
            "name": spec.name,
            "template": spec.template,
            "hosting": spec.hosting,
            "instance_type": spec.instance.name,
            "volume_size_gb": spec.volume_size_gb,
            "subdomain": spec.subdomain,
        }))
        .into_response(),
        Err(errors) => field_errors(StatusCode::UNPROCESSABLE_ENTITY, errors),
    }
}

async fn deploy(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Result<Json<DeployRequest>, JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(rej) => return body_error(rej),
    };
    if let Err(errors) = req.validate() {
        return field_errors(StatusCode::UNPROCESSABLE_ENTITY, errors);
    }
    submit(
        &st,
        &caller,
        &headers,
        JobAction::Deploy {
            request: Box::new(req),
        },
    )
    .await
}

/// `POST /v1/deployments/{name}/compose`: the tenant's compose file, env file and files
/// (hostd's deploy body), forwarded to hostd on its shared host as a job. The body's size and
/// form are checked here; the compose policy runs on the host, with the tenant's limits.
async fn deploy_compose(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let name = match parse_name(&name) {
        Ok(n) => n,
        Err(errors) => return field_errors(StatusCode::UNPROCESSABLE_ENTITY, errors),
    };
    if body.len() > crate::hostd::MAX_FORWARDED_BUNDLE {
        return field_errors(
            StatusCode::PAYLOAD_TOO_LARGE,
            vec![FieldError {
                field: "body".to_owned(),
                message: format!(
                    "{} bytes; control forwards bundles of at most {} bytes (SSM RunCommand bounds its parameters): deploy larger ones on the host with `hostd ctl deploy`",
                    body.len(),
                    crate::hostd::MAX_FORWARDED_BUNDLE
                ),
            }],
        );
    }
    let bundle: m8trx_spec::bundle::Bundle = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return field_errors(
                StatusCode::BAD_REQUEST,
                vec![FieldError {
                    field: "body".to_owned(),
                    message: format!("the body must be JSON {{\"compose\": \"<compose file>\", \"env\": {{\"VAR\": \"value\"}}, \"files\": {{\"path\": \"<base64>\"}}}}: {e}"),
                }],
            )
        }
    };
    let mut problems = m8trx_spec::bundle::check_files(&bundle.files);
    if bundle.compose.trim().is_empty() {
        problems.push("compose: the compose file is empty".to_owned());
    }
    if !problems.is_empty() {
        let errors = problems
            .into_iter()
            .map(|message| FieldError {
                field: "files".to_owned(),
                message,
            })
            .collect();
        return field_errors(StatusCode::UNPROCESSABLE_ENTITY, errors);
    }
    submit(&st, &caller, &headers, JobAction::Compose { name, bundle }).await
}

/// Body of `POST /v1/deployments/{name}/move`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoveRequest {
    /// Where to: `shared` (another shared host). Moves to and from dedicated are not built.
    pub to: String,
    /// The target shared host; the best fit in the volume's zone when absent.
    #[serde(default)]
    pub host: Option<String>,
}

async fn move_tenant(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Json<MoveRequest>, JsonRejection>,
) -> Response {
    let name = match parse_name(&name) {
        Ok(n) => n,
        Err(errors) => return field_errors(StatusCode::UNPROCESSABLE_ENTITY, errors),
    };
    let Json(req) = match body {
        Ok(b) => b,
        Err(rej) => return body_error(rej),
    };
    if req.to != "shared" {
        return field_errors(
            StatusCode::UNPROCESSABLE_ENTITY,
            vec![FieldError {
                field: "to".to_owned(),
                message: format!(
                    "{:?}: only \"shared\" (to another shared host) is built; moves to and from dedicated are not yet (delete and deploy with the other hosting instead)",
                    req.to
                ),
            }],
        );
    }
    if let Some(h) = req.host.as_deref().filter(|h| !valid_instance_id(h)) {
        return field_errors(
            StatusCode::UNPROCESSABLE_ENTITY,
            vec![FieldError {
                field: "host".to_owned(),
                message: format!("{h:?} is not an EC2 instance id (i-…)"),
            }],
        );
    }
    // The target is decided now and recorded in the job, so a resumed job finishes this
    // move rather than starting another.
    let c = &st.control;
    let silent = crate::progress::Progress::silent();
    let to = match crate::moves::choose_target(
        &c.clients,
        &c.config,
        &name,
        req.host.as_deref(),
        &silent,
    )
    .await
    {
        Ok(t) => t,
        Err(e) => {
            let status = match e {
                ControlError::Missing(_) => StatusCode::NOT_FOUND,
                ControlError::Aws { .. } | ControlError::Timeout { .. } => StatusCode::BAD_GATEWAY,
                _ => StatusCode::CONFLICT,
            };
            return (status, Json(json!({ "error": e.to_string() }))).into_response();
        }
    };
    let action = JobAction::Move {
        name,
        host: Some(to),
    };
    submit(&st, &caller, &headers, action).await
}

fn valid_instance_id(s: &str) -> bool {
    s.strip_prefix("i-")
        .is_some_and(|h| (8..=17).contains(&h.len()) && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

async fn drain_host(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !valid_instance_id(&id) {
        return field_errors(
            StatusCode::UNPROCESSABLE_ENTITY,
            vec![FieldError {
                field: "host".to_owned(),
                message: format!("{id:?} is not an EC2 instance id (i-…)"),
            }],
        );
    }
    submit(&st, &caller, &headers, JobAction::Drain { host: id }).await
}

/// Query of `DELETE /v1/deployments/{name}`.
#[derive(Debug, Deserialize)]
pub struct DeleteQuery {
    /// Detach and keep the tenant volume (or dedicated root volume) instead of deleting it.
    #[serde(default)]
    pub keep_volume: bool,
}

async fn delete(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> Response {
    let name = match parse_name(&name) {
        Ok(n) => n,
        Err(errors) => return field_errors(StatusCode::UNPROCESSABLE_ENTITY, errors),
    };
    let action = JobAction::Delete {
        name,
        keep_volume: q.keep_volume,
    };
    submit(&st, &caller, &headers, action).await
}

async fn status(State(st): State<ApiState>, Path(name): Path<String>) -> Response {
    let name = match parse_name(&name) {
        Ok(n) => n,
        Err(errors) => return field_errors(StatusCode::UNPROCESSABLE_ENTITY, errors),
    };
    match st.control.status(&name).await {
        Ok(s) => Json(s).into_response(),
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            Json(json!({ "error": error_text(&e) })),
        )
            .into_response(),
    }
}

async fn list_jobs(State(st): State<ApiState>, Query(f): Query<JobFilter>) -> Response {
    match st.jobs.list(f).await {
        Ok(jobs) => Json(json!({ "jobs": jobs })).into_response(),
        Err(e) => unavailable(&e),
    }
}

fn unavailable(e: &StoreError) -> Response {
    tracing::error!("{e}");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "error": e.to_string() })),
    )
        .into_response()
}

/// Query of `GET /v1/jobs/{id}`.
#[derive(Debug, Deserialize)]
pub struct JobQuery {
    /// Return lines from this sequence number on.
    #[serde(default)]
    pub since: i64,
}

async fn get_job(
    State(st): State<ApiState>,
    Path(id): Path<i64>,
    Query(q): Query<JobQuery>,
) -> Response {
    match st.jobs.get(id, q.since).await {
        Ok(Some(job)) => Json(job).into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": format!("no job {id} (finished jobs are kept for the retention window, --job-retention-hours)") })),
        )
            .into_response(),
        Err(e) => unavailable(&e),
    }
}
