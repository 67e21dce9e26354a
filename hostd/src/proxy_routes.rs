//! sni-proxy's admin socket as hostd drives it (one JSON line in, one out): a tenant's
//! subdomains point at its ingress container while it runs, are marked asleep (the proxy
//! holds their connections and asks for a wake) while it is frozen or asleep, and point at
//! nothing while it is stopped, quarantined or gone. hostd also reads each tenant's
//! activity there and listens for the proxy's wake asks (`watch-wakes`).

use std::collections::HashMap;
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
    /// The tenant it belongs to (activity and wakes are per tenant).
    pub tenant: String,
    /// The tenant is frozen or asleep: hold connections and ask hostd to wake it.
    pub asleep: bool,
}

impl TenantRoute {
    /// The route as sni-proxy's routes file spells it; passthrough routes carry PROXY v2 so
    /// the tenant's Caddy sees the real client.
    fn to_json(&self) -> Value {
        let mut r = json!({ "sni": self.sni, "backend": self.backend, "tenant": self.tenant });
        if self.asleep {
            r["asleep"] = json!(true);
        }
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

    /// The backend each current route points at, and whether it is asleep, by name.
    pub async fn backends(&self) -> Result<Vec<(String, String, bool)>, RouteError> {
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
                            r["asleep"].as_bool().unwrap_or(false),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Every tenant's connections open now and last activity, as the proxy counts them.
    pub async fn activity(&self) -> Result<HashMap<String, Activity>, RouteError> {
        let a = self.call(json!({ "cmd": "activity" })).await?;
        Ok(a["tenants"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(t, v)| {
                        let n = |k: &str| v[k].as_u64().unwrap_or(0);
                        (
                            t.clone(),
                            Activity {
                                open: n("open"),
                                last_active: n("last_active"),
                                held: n("held"),
                            },
                        )
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Opens a `watch-wakes` session: each line read from it names a tenant the proxy holds
    /// connections for. Ends when the proxy goes away.
    pub async fn watch_wakes(&self) -> Result<WakeAsks, RouteError> {
        let sock_err = |source| RouteError::Socket {
            path: self.socket.clone(),
            source,
        };
        let s = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(sock_err)?;
        let (r, mut w) = s.into_split();
        w.write_all(b"{\"cmd\":\"watch-wakes\"}\n")
            .await
            .map_err(sock_err)?;
        let mut lines = BufReader::new(r).lines();
        let first = lines.next_line().await.map_err(sock_err)?;
        if first.as_deref().map(str::trim) != Some(r#"{"ok":true}"#) {
            return Err(RouteError::Refused {
                command: "watch-wakes".into(),
                message: format!("unexpected answer {first:?} (an older sni-proxy?)"),
            });
        }
        Ok(WakeAsks { lines, _writer: w })
    }
}

/// One tenant's activity as sni-proxy reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Activity {
    /// Connections (and :80 requests) open now, held ones included.
    pub open: u64,
    /// Seconds since the epoch of the last connection opened or closed (0: none yet).
    pub last_active: u64,
    /// Connections waiting for the tenant to wake.
    pub held: u64,
}

/// The stream of wake asks of one `watch-wakes` session.
pub struct WakeAsks {
    lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    _writer: tokio::net::unix::OwnedWriteHalf,
}

impl WakeAsks {
    /// The next tenant to wake; `None` when the proxy closed the session.
    pub async fn next(&mut self) -> Option<String> {
        loop {
            let line = self.lines.next_line().await.ok()??;
            if let Some(t) = serde_json::from_str::<Value>(&line)
                .ok()
                .and_then(|v| v["wake"].as_str().map(str::to_owned))
            {
                return Some(t);
            }
        }
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
            tenant: "acme".into(),
            asleep: false,
        };
        assert_eq!(
            p.to_json(),
            json!({"sni": "acme.m8trx.test", "backend": "10.250.1.2:443", "tenant": "acme",
                   "proxy_protocol": true, "http_backend": "10.250.1.2:80"})
        );
        let t = TenantRoute {
            terminate: true,
            http_backend: None,
            asleep: true,
            ..p
        };
        assert_eq!(
            t.to_json(),
            json!({"sni": "acme.m8trx.test", "backend": "10.250.1.2:443", "tenant": "acme",
                   "mode": "terminate", "asleep": true})
        );
    }
}
