//! sni-proxy's admin socket as hostd drives it (one JSON line in, one out): a tenant's
//! subdomains point at its ingress container while it runs, and at nothing while it is
//! stopped, quarantined or gone.

use std::path::PathBuf;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// A refused or failed route change; names the socket or the proxy's own words.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The socket could not be used.
    #[error(
        "sni-proxy admin socket {path}: {source}; is sni-proxy running with --admin-socket {path}?"
    )]
    Socket {
        /// The socket.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The proxy answered `ok: false` (or something that is not JSON).
    #[error("sni-proxy refused {command}: {message}")]
    Refused {
        /// The command.
        command: String,
        /// The proxy's error.
        message: String,
    },
}

/// Where a subdomain goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRoute {
    /// The public name.
    pub sni: String,
    /// `ip:port` of the ingress container.
    pub backend: String,
    /// `ip:port` for ACME HTTP-01 on :80 (passthrough).
    pub http_backend: Option<String>,
    /// sni-proxy terminates TLS (baseline) instead of passing it through.
    pub terminate: bool,
}

impl TenantRoute {
    /// The route as sni-proxy's routes file spells it; passthrough routes carry PROXY v2 so
    /// the tenant's Caddy sees the real client.
    fn to_json(&self) -> Value {
        let mut r = json!({ "sni": self.sni, "backend": self.backend });
        if self.terminate {
            r["mode"] = json!("terminate");
        } else {
            r["proxy_protocol"] = json!(true);
        }
        if let Some(h) = &self.http_backend {
            r["http_backend"] = json!(h);
        }
        r
    }
}

/// Client of one sni-proxy's admin socket.
#[derive(Debug, Clone)]
pub struct ProxyAdmin {
    socket: PathBuf,
}

impl ProxyAdmin {
    /// A client for the socket at `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    async fn call(&self, cmd: Value) -> Result<Value, RouteError> {
        let sock_err = |source| RouteError::Socket {
            path: self.socket.clone(),
            source,
        };
        let s = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(sock_err)?;
        let (r, mut w) = s.into_split();
        w.write_all(format!("{cmd}\n").as_bytes())
            .await
            .map_err(sock_err)?;
        let line = BufReader::new(r)
            .lines()
            .next_line()
            .await
            .map_err(sock_err)?
            .unwrap_or_default();
        let answer: Value = serde_json::from_str(&line).map_err(|_| RouteError::Refused {
            command: cmd["cmd"].to_string(),
            message: format!("unreadable answer {line:?}"),
        })?;
        if answer["ok"] == json!(true) {
            Ok(answer)
        } else {
            Err(RouteError::Refused {
                command: cmd["cmd"].to_string(),
                message: answer["error"]
                    .as_str()
                    .unwrap_or("no reason given")
                    .to_owned(),
            })
        }
    }

    /// Adds or replaces the route for `route.sni`.
    pub async fn set(&self, route: &TenantRoute) -> Result<(), RouteError> {
        self.call(json!({ "cmd": "set-route", "route": route.to_json() }))
            .await
            .map(|_| ())
    }

    /// Removes the route for `sni`; a route that is already gone is not an error.
    pub async fn remove(&self, sni: &str) -> Result<(), RouteError> {
        match self
            .call(json!({ "cmd": "remove-route", "sni": sni }))
            .await
        {
            Err(RouteError::Refused { message, .. })
                if message.starts_with("no route with sni") =>
            {
                Ok(())
            }
            other => other.map(|_| ()),
        }
    }

    /// The backend each current route points at, by name.
    pub async fn backends(&self) -> Result<Vec<(String, String)>, RouteError> {
        let status = self.call(json!({ "cmd": "status" })).await?;
        Ok(status["routes"]["route"]
            .as_array()
            .map(|routes| {
                routes
                    .iter()
                    .filter_map(|r| {
                        Some((
                            r["sni"].as_str()?.to_owned(),
                            r["backend"].as_str()?.to_owned(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passthrough_routes_carry_proxy_v2_and_terminate_routes_do_not() {
        let p = TenantRoute {
            sni: "acme.m8trx.test".into(),
            backend: "10.250.1.2:443".into(),
            http_backend: Some("10.250.1.2:80".into()),
            terminate: false,
        };
        assert_eq!(
            p.to_json(),
            json!({"sni": "acme.m8trx.test", "backend": "10.250.1.2:443",
                   "proxy_protocol": true, "http_backend": "10.250.1.2:80"})
        );
        let t = TenantRoute {
            terminate: true,
            http_backend: None,
            ..p
        };
        assert_eq!(
            t.to_json(),
            json!({"sni": "acme.m8trx.test", "backend": "10.250.1.2:443", "mode": "terminate"})
        );
    }
}
