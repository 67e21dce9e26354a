//! The API's authentication: every request but `/healthz` carries `Authorization: Bearer
//! <token>`; no token or an unknown or revoked one is 401, a token without the route's scope
//! is 403. Each decision is logged with the token's name, never its secret.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::store::Store;
use crate::tokens::{self, Scope};

/// Who made a request, for the handlers (idempotency keys are per token).
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's name.
    pub token: String,
}

/// The scope a route needs; None for the unauthenticated health check.
pub fn required_scope(method: &Method, path: &str) -> Option<Scope> {
    if path == "/healthz" {
        return None;
    }
    Some(match *method {
        Method::GET | Method::HEAD => Scope::Read,
        Method::DELETE => Scope::Delete,
        Method::POST if path == "/v1/validate" => Scope::Read,
        Method::POST if path.ends_with("/move") || path.starts_with("/v1/hosts/") => Scope::Move,
        _ => Scope::Deploy,
    })
}

fn refuse(status: StatusCode, message: String) -> Response {
    let mut r = (status, Json(json!({ "error": message }))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"m8trx-control\""),
        );
    }
    r
}

/// Middleware: checks the bearer token against the store before the route runs.
pub async fn require(State(store): State<Arc<Store>>, mut req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let Some(scope) = required_scope(&method, &path) else {
        return next.run(req).await;
    };
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned());
    let Some(bearer) = bearer else {
        tracing::warn!(%method, %path, "refused (401): no bearer token");
        return refuse(
            StatusCode::UNAUTHORIZED,
            "this API needs `Authorization: Bearer <token>`; an operator makes one with `control token create NAME --scope …`".into(),
        );
    };
    let info = match tokens::verify(&store, &bearer).await {
        Ok(Some(info)) => info,
        Ok(None) => {
            tracing::warn!(%method, %path, "refused (401): unknown or revoked token");
            return refuse(
                StatusCode::UNAUTHORIZED,
                "the bearer token is unknown or revoked; ask the operator for a new one".into(),
            );
        }
        Err(e) => {
            tracing::error!(%method, %path, "token check failed: {e}");
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot check the token: {e}"),
            );
        }
    };
    if !info.scopes.contains(&scope) {
        tracing::warn!(%method, %path, token = %info.name, needs = %scope, "refused (403): scope missing");
        return refuse(
            StatusCode::FORBIDDEN,
            format!(
                "token {} lacks scope {scope}, which {method} {path} needs; use a token made with --scope {scope}",
                info.name
            ),
        );
    }
    req.extensions_mut().insert(Caller {
        token: info.name.clone(),
    });
    let resp = next.run(req).await;
    tracing::info!(%method, %path, token = %info.name, status = resp.status().as_u16(), "request");
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_but_health_needs_a_scope() {
        assert_eq!(required_scope(&Method::GET, "/healthz"), None);
        assert_eq!(
            required_scope(&Method::GET, "/v1/jobs/3"),
            Some(Scope::Read)
        );
        assert_eq!(
            required_scope(&Method::POST, "/v1/validate"),
            Some(Scope::Read)
        );
        assert_eq!(
            required_scope(&Method::POST, "/v1/deployments"),
            Some(Scope::Deploy)
        );
        assert_eq!(
            required_scope(&Method::DELETE, "/v1/deployments/acme"),
            Some(Scope::Delete)
        );
        assert_eq!(
            required_scope(&Method::POST, "/v1/deployments/acme/move"),
            Some(Scope::Move)
        );
        assert_eq!(
            required_scope(&Method::POST, "/v1/hosts/i-1/drain"),
            Some(Scope::Move)
        );
        assert_eq!(
            required_scope(&Method::PUT, "/v1/anything"),
            Some(Scope::Deploy)
        );
    }
}
