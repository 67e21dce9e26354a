//! Client of the admin unix socket, for hostd and the `cred-broker admin` commands.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use crate::registry::{TenantInfo, TenantSpec};
use crate::server::{MintRequest, MintResponse, RegisterRequest, RegisterResponse};

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot connect to the broker's admin socket {path}: {source}; is cred-broker running with --admin-socket {path}?")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("admin HTTP exchange failed: {0}")]
    Http(String),
    #[error("broker refused the call ({status} {code}): {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("broker answered something unexpected: {0}")]
    Decode(String),
}

/// Talks to one broker's admin socket.
#[derive(Debug, Clone)]
pub struct AdminClient {
    socket: PathBuf,
}

impl AdminClient {
    /// A client for the socket at `socket`.
    pub fn new(socket: impl AsRef<Path>) -> Self {
        Self {
            socket: socket.as_ref().to_owned(),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<(u16, Bytes), AdminError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| AdminError::Connect {
                    path: self.socket.clone(),
                    source,
                })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| AdminError::Http(e.to_string()))?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, "cred-broker")
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| AdminError::Http(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| AdminError::Http(e.to_string()))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| AdminError::Http(e.to_string()))?
            .to_bytes();
        if status >= 300 {
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            return Err(AdminError::Api {
                status,
                code: v["code"].as_str().unwrap_or("?").to_owned(),
                message: v["message"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned()),
            });
        }
        Ok((status, bytes))
    }

    async fn call_json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<T, AdminError> {
        let (_, bytes) = self.call(method, path, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| AdminError::Decode(e.to_string()))
    }

    /// Registers or updates a tenant; returns `created`, `updated` or `role_changed`.
    pub async fn register(&self, spec: &TenantSpec) -> Result<String, AdminError> {
        let body = serde_json::to_string(&RegisterRequest {
            role_arn: spec.role_arn.clone(),
            external_id: spec.external_id.clone(),
            allowed_cidr: spec.allowed_cidr,
        })
        .map_err(|e| AdminError::Decode(e.to_string()))?;
        let r: RegisterResponse = self
            .call_json(
                Method::PUT,
                &format!("/v1/tenants/{}", spec.name),
                Some(body),
            )
            .await?;
        Ok(r.outcome)
    }

    /// Removes a tenant with its tokens and cached credentials.
    pub async fn deregister(&self, name: &str) -> Result<(), AdminError> {
        self.call(Method::DELETE, &format!("/v1/tenants/{name}"), None)
            .await
            .map(|_| ())
    }

    /// Mints a token; with `retire_others_after`, a rotation (others expire after the overlap).
    pub async fn mint(
        &self,
        name: &str,
        ttl: Duration,
        retire_others_after: Option<Duration>,
    ) -> Result<MintResponse, AdminError> {
        let body = serde_json::to_string(&MintRequest {
            ttl_secs: ttl.as_secs(),
            retire_others_after_secs: retire_others_after.map(|d| d.as_secs()),
        })
        .map_err(|e| AdminError::Decode(e.to_string()))?;
        self.call_json(
            Method::POST,
            &format!("/v1/tenants/{name}/tokens"),
            Some(body),
        )
        .await
    }

    /// Revokes one token by id.
    pub async fn revoke(&self, name: &str, token_id: &str) -> Result<(), AdminError> {
        self.call(
            Method::DELETE,
            &format!("/v1/tenants/{name}/tokens/{token_id}"),
            None,
        )
        .await
        .map(|_| ())
    }

    /// Revokes every token of a tenant.
    pub async fn revoke_all(&self, name: &str) -> Result<(), AdminError> {
        self.call(Method::DELETE, &format!("/v1/tenants/{name}/tokens"), None)
            .await
            .map(|_| ())
    }

    /// Lists tenants and their tokens' public facts.
    pub async fn list(&self) -> Result<Vec<TenantInfo>, AdminError> {
        self.call_json(Method::GET, "/v1/tenants", None).await
    }

    /// The broker's Prometheus metrics text.
    pub async fn metrics(&self) -> Result<String, AdminError> {
        let (_, bytes) = self.call(Method::GET, "/metrics", None).await?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}
