//! The small HTTP/JSON API behind the dashboard's deploy form. Deploys and deletes run as
//! jobs (202 + job id); the dashboard polls `GET /v1/jobs/{id}?since=N` for progress lines.
//! Validation happens before a job starts, so a refused form gets 422 with per-field errors.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use m8trx_spec::CustomerName;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ControlError;
use crate::jobs::JobTable;
use crate::ops::Control;
use crate::progress::Progress;
use crate::request::{DeployRequest, FieldError};

/// Shared state of the API: the configured control and the job table.
#[derive(Clone)]
pub struct ApiState {
    /// Control operations.
    pub control: Arc<Control>,
    /// Running and finished jobs.
    pub jobs: JobTable,
}

/// All routes of the API.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"ok": true})) }))
        .route("/v1/validate", post(validate))
        .route("/v1/deployments", post(deploy))
        .route("/v1/deployments/{name}", get(status).delete(delete))
        .route("/v1/deployments/{name}/compose", post(deploy_compose))
        .route("/v1/jobs", get(list_jobs))
        .route("/v1/jobs/{id}", get(get_job))
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

fn started(id: u64) -> Response {
    (
        StatusCode::ACCEPTED,
        Json(json!({ "job": id, "poll": format!("/v1/jobs/{id}") })),
    )
        .into_response()
}

fn busy(customer: &str, id: u64) -> Response {
    (
        StatusCode::CONFLICT,
        Json(json!({
            "error": format!("{customer} already has a running job {id}; wait for it to finish"),
            "job": id,
        })),
    )
        .into_response()
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
    body: Result<Json<DeployRequest>, JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(rej) => return body_error(rej),
    };
    let spec = match req.validate() {
        Ok(s) => s,
        Err(errors) => return field_errors(StatusCode::UNPROCESSABLE_ENTITY, errors),
    };
    let customer = spec.name.to_string();
    let control = st.control.clone();
    match st
        .jobs
        .start("deploy", &customer, move |progress: Progress| async move {
            match control.deploy(&spec, &progress).await {
                Ok(outcome) => serde_json::to_value(outcome).map_err(|e| e.to_string()),
                Err(e) => {
                    progress.line(format!("deploy failed: {e}"));
                    Err(error_text(&e))
                }
            }
        }) {
        Ok(id) => started(id),
        Err(id) => busy(&customer, id),
    }
}

/// `POST /v1/deployments/{name}/compose`: the tenant's compose file, env file and files
/// (hostd's deploy body), forwarded to hostd on its shared host as a job. The body's size and
/// form are checked here; the compose policy runs on the host, with the tenant's limits.
async fn deploy_compose(
    State(st): State<ApiState>,
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
    let customer = name.to_string();
    let control = st.control.clone();
    match st
        .jobs
        .start("compose", &customer, move |progress: Progress| async move {
            match control.deploy_compose(&name, &bundle, &progress).await {
                Ok(outcome) => serde_json::to_value(outcome).map_err(|e| e.to_string()),
                Err(e) => {
                    progress.line(format!("compose deploy failed: {e}"));
                    Err(error_text(&e))
                }
            }
        }) {
        Ok(id) => started(id),
        Err(id) => busy(&customer, id),
    }
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
    Path(name): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> Response {
    let name = match parse_name(&name) {
        Ok(n) => n,
        Err(errors) => return field_errors(StatusCode::UNPROCESSABLE_ENTITY, errors),
    };
    let customer = name.to_string();
    let control = st.control.clone();
    match st
        .jobs
        .start("delete", &customer, move |progress: Progress| async move {
            match control.delete(&name, q.keep_volume, &progress).await {
                Ok(outcome) => serde_json::to_value(outcome).map_err(|e| e.to_string()),
                Err(e) => {
                    progress.line(format!("delete failed: {e}"));
                    Err(error_text(&e))
                }
            }
        }) {
        Ok(id) => started(id),
        Err(id) => busy(&customer, id),
    }
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

async fn list_jobs(State(st): State<ApiState>) -> Json<Value> {
    Json(json!({ "jobs": st.jobs.list() }))
}

/// Query of `GET /v1/jobs/{id}`.
#[derive(Debug, Deserialize)]
pub struct JobQuery {
    /// Return lines from this sequence number on.
    #[serde(default)]
    pub since: usize,
}

async fn get_job(
    State(st): State<ApiState>,
    Path(id): Path<u64>,
    Query(q): Query<JobQuery>,
) -> Response {
    match st.jobs.get(id, q.since) {
        Some(job) => Json(job).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": format!("no job {id} (jobs are kept in memory until the server restarts)") })),
        )
            .into_response(),
    }
}
