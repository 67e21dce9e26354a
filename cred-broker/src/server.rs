//! HTTP front ends: the credentials listener tenants reach, the admin API on a unix socket
//! for hostd, and an optional loopback listener for Prometheus.

use std::convert::Infallible;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, UnixListener};

use crate::broker::{AuditRecord, Broker, ErrorBody};
use crate::metrics::{Outcome, NO_TENANT};
use crate::registry::{RegisterOutcome, RegistryError, TenantSpec};
use crate::sts::rfc3339;

/// Path of the credentials endpoint (the full URI is `http://<listen address>/v1/credentials`).
pub const CREDENTIALS_PATH: &str = "/v1/credentials";
/// Largest admin request body accepted.
const MAX_ADMIN_BODY: usize = 64 * 1024;

type Body = Full<Bytes>;

fn respond(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(CONTENT_TYPE, v);
    }
    r
}

fn json_error(status: u16, code: &'static str, message: String) -> Response<Body> {
    let body = serde_json::to_string(&ErrorBody { code, message }).unwrap_or_default();
    respond(status, "application/json", body)
}

fn json<T: Serialize>(status: u16, value: &T) -> Response<Body> {
    match serde_json::to_string(value) {
        Ok(body) => respond(status, "application/json", body),
        Err(e) => json_error(
            500,
            "InternalError",
            format!("encoding the answer failed: {e}"),
        ),
    }
}

fn refuse_other(
    broker: &Broker,
    peer: IpAddr,
    status: u16,
    code: &'static str,
    message: String,
) -> Response<Body> {
    broker.metrics().request(NO_TENANT, Outcome::BadRequest);
    AuditRecord {
        tenant: NO_TENANT.to_owned(),
        token_id: NO_TENANT.to_owned(),
        source: peer,
        outcome: Outcome::BadRequest,
        status,
        cache: "-",
        sts_latency: None,
    }
    .emit();
    json_error(status, code, message)
}

async fn credentials_request(
    broker: Arc<Broker>,
    req: Request<Incoming>,
    peer: IpAddr,
) -> Response<Body> {
    if req.uri().path() != CREDENTIALS_PATH {
        return refuse_other(
            &broker,
            peer,
            404,
            "NotFound",
            format!("the only endpoint is GET {CREDENTIALS_PATH}"),
        );
    }
    if req.method() != Method::GET {
        return refuse_other(
            &broker,
            peer,
            405,
            "MethodNotAllowed",
            format!("use GET {CREDENTIALS_PATH}"),
        );
    }
    let auth = req
        .headers()
        .get(AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or(""));
    let answer = broker.credentials(auth, peer).await;
    respond(answer.status, "application/json", answer.body)
}

/// Serves `GET /v1/credentials` on `listener` until the task is dropped.
pub async fn serve_credentials(listener: TcpListener, broker: Arc<Broker>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: wait a moment rather than spin.
                tracing::warn!(error = %e, "accepting a credentials connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let admitted = match broker.gate().connect(peer.ip()) {
            Ok(a) => a,
            Err(refused) => {
                let network = crate::limits::network(peer.ip()).to_string();
                if let Some(n) = broker.gate().log_refusal(&network) {
                    tracing::warn!(target: "limit", limit = refused.label(), client = %peer, refused = n,
                        "limit hit: credentials connection refused");
                }
                broker.metrics().connection_refused(refused.label());
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let broker = broker.clone();
        tokio::spawn(async move {
            let _admitted = admitted;
            let svc = service_fn(move |req| {
                let broker = broker.clone();
                async move { Ok::<_, Infallible>(credentials_request(broker, req, peer.ip()).await) }
            });
            if let Err(e) = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(error = %e, %peer, "credentials connection ended with an error");
            }
        });
    }
}

/// Serves `GET /metrics` on a TCP listener (meant for loopback) until the task is dropped.
pub async fn serve_metrics(listener: TcpListener, broker: Arc<Broker>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let broker = broker.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let broker = broker.clone();
                async move {
                    Ok::<_, Infallible>(if req.uri().path() == "/metrics" {
                        respond(200, crate::metrics::CONTENT_TYPE, broker.render_metrics())
                    } else {
                        json_error(404, "NotFound", "the only endpoint is GET /metrics".into())
                    })
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Body of `PUT /v1/tenants/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// The customer's IAM role.
    pub role_arn: String,
    /// ExternalId its trust policy requires.
    pub external_id: String,
    /// The tenant's bridge subnet, e.g. `10.250.3.0/24`.
    pub allowed_cidr: ipnet::IpNet,
}

/// Answer of `PUT /v1/tenants/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterResponse {
    /// `created`, `updated` or `role_changed` (cached credentials dropped).
    pub outcome: String,
}

/// Body of `POST /v1/tenants/{name}/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MintRequest {
    /// Lifetime of the new token in seconds.
    pub ttl_secs: u64,
    /// Rotation: cut every other token of the tenant to expire this many seconds from now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retire_others_after_secs: Option<u64>,
}

/// Answer of `POST /v1/tenants/{name}/tokens`: the only time the token is shown.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MintResponse {
    /// Tenant name.
    pub tenant: String,
    /// Public token id.
    pub id: String,
    /// The secret token.
    pub token: String,
    /// RFC 3339 expiry.
    pub expires_at: String,
    /// Unix seconds expiry.
    pub expires_at_unix: u64,
}

fn registry_error(e: RegistryError) -> Response<Body> {
    match e {
        RegistryError::UnknownTenant(_) | RegistryError::UnknownToken { .. } => {
            json_error(404, "NotFound", e.to_string())
        }
        RegistryError::Invalid(_) => json_error(400, "InvalidRequest", e.to_string()),
        RegistryError::TooManyTokens(_) => json_error(409, "TooManyTokens", e.to_string()),
        RegistryError::Random(_) => json_error(500, "InternalError", e.to_string()),
    }
}

async fn read_json<T: for<'de> Deserialize<'de>>(
    req: Request<Incoming>,
) -> Result<T, Response<Body>> {
    let bytes = Limited::new(req.into_body(), MAX_ADMIN_BODY)
        .collect()
        .await
        .map_err(|e| {
            json_error(
                400,
                "InvalidRequest",
                format!("reading the request body failed: {e}"),
            )
        })?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| {
        json_error(
            400,
            "InvalidRequest",
            format!("the request body is not valid JSON for this call: {e}"),
        )
    })
}

async fn admin_request(broker: Arc<Broker>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    let resp = match (&method, segs.as_slice()) {
        (&Method::GET, ["metrics"]) => {
            respond(200, crate::metrics::CONTENT_TYPE, broker.render_metrics())
        }
        (&Method::GET, ["healthz"]) => respond(200, "text/plain", "ok\n"),
        (&Method::GET, ["v1", "tenants"]) => json(200, &broker.list()),
        (&Method::PUT, ["v1", "tenants", name]) => {
            let name = (*name).to_owned();
            match read_json::<RegisterRequest>(req).await {
                Err(r) => r,
                Ok(body) => match m8trx_spec::CustomerName::parse(&name) {
                    Err(e) => json_error(400, "InvalidRequest", e.to_string()),
                    Ok(cn) => {
                        let spec = TenantSpec {
                            name: cn,
                            role_arn: body.role_arn,
                            external_id: body.external_id,
                            allowed_cidr: body.allowed_cidr,
                        };
                        match broker.register(spec) {
                            Ok(o) => json(
                                200,
                                &RegisterResponse {
                                    outcome: match o {
                                        RegisterOutcome::Created => "created",
                                        RegisterOutcome::Updated => "updated",
                                        RegisterOutcome::RoleChanged => "role_changed",
                                    }
                                    .to_owned(),
                                },
                            ),
                            Err(e) => registry_error(e),
                        }
                    }
                },
            }
        }
        (&Method::DELETE, ["v1", "tenants", name]) => match broker.deregister(name) {
            Ok(()) => json(200, &serde_json::json!({ "deregistered": name })),
            Err(e) => registry_error(e),
        },
        (&Method::POST, ["v1", "tenants", name, "tokens"]) => {
            let name = (*name).to_owned();
            match read_json::<MintRequest>(req).await {
                Err(r) => r,
                Ok(body) => match broker.mint(
                    &name,
                    Duration::from_secs(body.ttl_secs),
                    body.retire_others_after_secs.map(Duration::from_secs),
                ) {
                    Ok(m) => json(
                        201,
                        &MintResponse {
                            tenant: name,
                            id: m.id,
                            token: m.token.expose_secret().to_owned(),
                            expires_at: rfc3339(m.expires_at),
                            expires_at_unix: crate::registry::unix_secs(m.expires_at),
                        },
                    ),
                    Err(e) => registry_error(e),
                },
            }
        }
        (&Method::DELETE, ["v1", "tenants", name, "tokens"]) => match broker.revoke_all(name) {
            Ok(n) => json(200, &serde_json::json!({ "revoked": n })),
            Err(e) => registry_error(e),
        },
        (&Method::DELETE, ["v1", "tenants", name, "tokens", id]) => match broker.revoke(name, id) {
            Ok(()) => json(200, &serde_json::json!({ "revoked": 1 })),
            Err(e) => registry_error(e),
        },
        _ => json_error(
            404,
            "NotFound",
            format!("no admin endpoint {method} {path}; see cred-broker/README.md"),
        ),
    };
    tracing::info!(target: "admin", method = %method, path = %path, status = resp.status().as_u16(), "admin request");
    resp
}

/// Binds the admin unix socket at `path` (replacing a stale one) with mode 0600.
pub fn bind_admin_socket(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves the admin API on `listener` until the task is dropped.
pub async fn serve_admin(listener: UnixListener, broker: Arc<Broker>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accepting an admin connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let broker = broker.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let broker = broker.clone();
                async move { Ok::<_, Infallible>(admin_request(broker, req).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
