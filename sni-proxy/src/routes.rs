//! The routes file: TOML, parsed and validated into a lookup table that the listeners share.
//!
//! The table is swapped as a whole on reload; a connection keeps the `Arc<Route>` it was
//! routed with, so a reload never touches connections already established.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Why a routes file was refused; the old table stays in force when this happens.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read routes file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys.
    #[error("routes file {path} is not valid: {source}")]
    Parse {
        /// The file.
        path: String,
        /// The TOML error.
        source: toml::de::Error,
    },
    /// A value makes no sense (duplicate name, bad pattern, zero limit, …).
    #[error("routes file {path}: {msg}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong and how to fix it.
        msg: String,
    },
}

/// What :80 does for a route's non-ACME requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum HttpMode {
    /// Answer 308 to the same URL on https (default).
    #[default]
    Redirect,
    /// Forward the request to `http_backend`.
    Forward,
}

/// How :443 serves a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Relay the TLS bytes to the tenant's own TLS server (default).
    #[default]
    Passthrough,
    /// Terminate TLS here with an ACME certificate and forward HTTP to `backend`.
    Terminate,
}

/// ACME account settings for terminate-mode routes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeSettings {
    /// ACME directory URL.
    pub directory: String,
    /// Account contacts, e.g. `mailto:ops@example.com`.
    #[serde(default)]
    pub contact: Vec<String>,
    /// Where accounts and certificates are cached (one sub-directory per name).
    pub cache_dir: std::path::PathBuf,
    /// Extra CA certificates (PEM) trusted for the directory's HTTPS, e.g. a test CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<std::path::PathBuf>,
}

/// One route as written in the TOML file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Server name: `host.example.com` exactly, or `*.zone.example.com` for any name under the zone.
    pub sni: String,
    /// Where :443 connections for this name go (the tenant's TLS server), `ip:port`.
    pub backend: SocketAddr,
    /// Send a PROXY protocol v2 header first, so the backend sees the real client.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Where :80 requests for this name go (ACME HTTP-01 challenges, and `http = "forward"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_backend: Option<SocketAddr>,
    /// What :80 does with requests that are not ACME challenges.
    #[serde(default)]
    pub http: HttpMode,
    /// `passthrough` (default) or `terminate` (then `backend` is the tenant's plain HTTP port).
    #[serde(default)]
    pub mode: Mode,
    /// The tenant the route belongs to (hostd sets it): activity is counted, and a sleeping
    /// tenant is woken, per tenant over all its names. Defaults to the route's own name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The tenant is frozen or asleep: connections are held while hostd is asked to wake
    /// it (see `[limits] wake_*`), then routed once hostd clears this.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub asleep: bool,
}

/// Limits and timeouts; every field has a default, so the section may be left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Connections open at once on :443, over all clients.
    pub max_connections: usize,
    /// Connections open at once on :443 from one source IP.
    pub max_connections_per_ip: usize,
    /// New :443 connections accepted per second from one source IP (counted per one-second
    /// window); more are closed at accept, before any byte is read.
    pub new_connections_per_second_per_ip: usize,
    /// Bytes of TLS records buffered while waiting for a complete ClientHello.
    pub max_client_hello_bytes: usize,
    /// Time a client has to send its complete ClientHello, in milliseconds.
    pub client_hello_timeout_ms: u64,
    /// A relayed connection with no byte either way for this long is closed, in seconds.
    pub idle_timeout_secs: u64,
    /// Time to establish the TCP connection to a backend, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Connections (:443 and :80) open at once for one tenant, over all its names.
    pub max_connections_per_tenant: usize,
    /// New connections (:443 and :80) admitted per second for one tenant (a burst of one
    /// second's worth).
    pub new_connections_per_second_per_tenant: usize,
    /// Connections held at once for one sleeping tenant while it wakes; more are closed.
    pub wake_queue_per_tenant: usize,
    /// How long a held connection waits for its tenant to wake, in milliseconds.
    pub wake_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 20_000,
            max_connections_per_ip: 256,
            new_connections_per_second_per_ip: 200,
            max_client_hello_bytes: 16 * 1024,
            client_hello_timeout_ms: 5_000,
            idle_timeout_secs: 600,
            connect_timeout_ms: 3_000,
            max_connections_per_tenant: 2_000,
            new_connections_per_second_per_tenant: 500,
            wake_queue_per_tenant: 64,
            wake_timeout_ms: 15_000,
        }
    }
}

impl Limits {
    /// ClientHello deadline as a Duration.
    pub fn client_hello_timeout(&self) -> Duration {
        Duration::from_millis(self.client_hello_timeout_ms)
    }
    /// Idle timeout as a Duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }
    /// Backend connect timeout as a Duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    /// How long a held connection waits for its tenant to wake, as a Duration.
    pub fn wake_timeout(&self) -> Duration {
        Duration::from_millis(self.wake_timeout_ms)
    }
}

/// Where a connection with no SNI, or an SNI no route matches, goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultBackend {
    /// The backend, `ip:port`.
    pub backend: SocketAddr,
    /// Send a PROXY protocol v2 header first.
    #[serde(default)]
    pub proxy_protocol: bool,
}

/// The whole routes file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RoutesFile {
    /// Limits and timeouts.
    #[serde(default)]
    pub limits: Limits,
    /// Optional backend for unknown or missing SNI; without it such connections are closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<DefaultBackend>,
    /// ACME settings, needed when any route is in terminate mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acme: Option<AcmeSettings>,
    /// The routes.
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteSpec>,
}

/// A route ready for use: its spec plus the name it is known by in logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The pattern as written (`acme.example.com`, `*.acme.example.com`, or `default`).
    pub name: String,
    /// :443 backend.
    pub backend: SocketAddr,
    /// Send PROXY v2 first.
    pub proxy_protocol: bool,
    /// :80 backend.
    pub http_backend: Option<SocketAddr>,
    /// :80 behaviour.
    pub http: HttpMode,
    /// :443 behaviour.
    pub mode: Mode,
    /// The tenant it belongs to (its own name when the file names none).
    pub tenant: String,
    /// Connections wait for the tenant to wake.
    pub asleep: bool,
}

/// The validated table the listeners look names up in.
#[derive(Debug, Default)]
pub struct RouteTable {
    exact: HashMap<String, Arc<Route>>,
    /// Keyed by the zone without the `*.` prefix.
    wildcard: HashMap<String, Arc<Route>>,
    default: Option<Arc<Route>>,
    /// Limits in force for new connections.
    pub limits: Limits,
    /// The file as parsed, for the admin socket's `show` and edits.
    pub source: RoutesFile,
}

/// Checks a DNS name as used in SNI: labels of `[a-z0-9-_]`, 1–63 bytes, 253 in all.
fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        })
}

impl RouteTable {
    /// Reads, parses and validates a routes file.
    pub fn load(path: &Path) -> Result<RouteTable, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates routes-file text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<RouteTable, ConfigError> {
        let file: RoutesFile = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: origin.to_owned(),
            source,
        })?;
        Self::build(file, origin)
    }

    /// Validates an already parsed file into a table.
    pub fn build(file: RoutesFile, origin: &str) -> Result<RouteTable, ConfigError> {
        let invalid = |msg: String| ConfigError::Invalid {
            path: origin.to_owned(),
            msg,
        };
        let l = &file.limits;
        for (name, v) in [
            ("max_connections", l.max_connections as u64),
            ("max_connections_per_ip", l.max_connections_per_ip as u64),
            (
                "new_connections_per_second_per_ip",
                l.new_connections_per_second_per_ip as u64,
            ),
            ("max_client_hello_bytes", l.max_client_hello_bytes as u64),
            ("client_hello_timeout_ms", l.client_hello_timeout_ms),
            ("idle_timeout_secs", l.idle_timeout_secs),
            ("connect_timeout_ms", l.connect_timeout_ms),
            (
                "max_connections_per_tenant",
                l.max_connections_per_tenant as u64,
            ),
            (
                "new_connections_per_second_per_tenant",
                l.new_connections_per_second_per_tenant as u64,
            ),
            ("wake_queue_per_tenant", l.wake_queue_per_tenant as u64),
            ("wake_timeout_ms", l.wake_timeout_ms),
        ] {
            if v == 0 {
                return Err(invalid(format!("[limits] {name} must be greater than 0")));
            }
        }
        if l.max_client_hello_bytes < 512 {
            return Err(invalid(
                "[limits] max_client_hello_bytes below 512 would refuse ordinary clients".into(),
            ));
        }
        let mut table = RouteTable {
            limits: file.limits.clone(),
            ..RouteTable::default()
        };
        for spec in &file.routes {
            let pattern = spec.sni.to_ascii_lowercase();
            let route = Arc::new(Route {
                name: pattern.clone(),
                backend: spec.backend,
                proxy_protocol: spec.proxy_protocol,
                http_backend: spec.http_backend,
                http: spec.http,
                mode: spec.mode,
                tenant: spec.tenant.clone().unwrap_or_else(|| pattern.clone()),
                asleep: spec.asleep,
            });
            if spec.mode == Mode::Terminate {
                if pattern.starts_with("*.") {
                    return Err(invalid(format!(
                        "route {pattern:?}: terminate mode needs an exact name (TLS-ALPN-01 issues no wildcard)"
                    )));
                }
                if file.acme.is_none() {
                    return Err(invalid(format!(
                        "route {pattern:?} is in terminate mode but the file has no [acme] section"
                    )));
                }
            }
            if spec.http == HttpMode::Forward && spec.http_backend.is_none() {
                return Err(invalid(format!(
                    "route {pattern:?} has http = \"forward\" but no http_backend"
                )));
            }
            let (map, key) = match pattern.strip_prefix("*.") {
                Some(zone) => (&mut table.wildcard, zone.to_owned()),
                None => (&mut table.exact, pattern.clone()),
            };
            if !valid_hostname(&key) {
                return Err(invalid(format!(
                    "route sni {pattern:?} is not a host name or a `*.zone` pattern"
                )));
            }
            if map.insert(key, route).is_some() {
                return Err(invalid(format!("route sni {pattern:?} appears twice")));
            }
        }
        table.default = file.default.as_ref().map(|d| {
            Arc::new(Route {
                name: "default".into(),
                backend: d.backend,
                proxy_protocol: d.proxy_protocol,
                http_backend: None,
                http: HttpMode::Redirect,
                mode: Mode::Passthrough,
                tenant: "default".into(),
                asleep: false,
            })
        });
        table.source = file;
        Ok(table)
    }

    /// The route for a server name: exact match first, then the longest `*.zone` the name is under.
    pub fn lookup(&self, name: &str) -> Option<&Arc<Route>> {
        let lower;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = name.to_ascii_lowercase();
            lower.as_str()
        } else {
            name
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        if let Some(r) = self.exact.get(name) {
            return Some(r);
        }
        let mut rest = name;
        while let Some((_, zone)) = rest.split_once('.') {
            if let Some(r) = self.wildcard.get(zone) {
                return Some(r);
            }
            rest = zone;
        }
        None
    }

    /// The route for a connection: the name's route, else the default backend if one is set.
    pub fn route_for(&self, name: Option<&str>) -> Option<&Arc<Route>> {
        name.and_then(|n| self.lookup(n)).or(self.default.as_ref())
    }

    /// Routes in terminate mode (always exact names).
    pub fn terminate_routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.exact.values().filter(|r| r.mode == Mode::Terminate)
    }

    /// Number of routes (exact and wildcard), for logs.
    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }

    /// True when no route is configured.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[limits]
max_connections = 10
client_hello_timeout_ms = 200

[default]
backend = "127.0.0.1:9"

[[route]]
sni = "acme.example.com"
backend = "127.0.0.1:1001"
proxy_protocol = true

[[route]]
sni = "*.example.com"
backend = "127.0.0.1:1002"

[[route]]
sni = "*.apps.example.com"
backend = "127.0.0.1:1003"
http_backend = "127.0.0.1:8080"
http = "forward"
"#;

    fn port(t: &RouteTable, name: &str) -> Option<u16> {
        t.lookup(name).map(|r| r.backend.port())
    }

    #[test]
    fn exact_beats_wildcard_and_longest_zone_wins() {
        let t = RouteTable::parse(FILE, "test").unwrap();
        assert_eq!(port(&t, "acme.example.com"), Some(1001));
        assert_eq!(port(&t, "ACME.Example.COM."), Some(1001));
        assert_eq!(port(&t, "other.example.com"), Some(1002));
        assert_eq!(port(&t, "a.b.example.com"), Some(1002));
        assert_eq!(port(&t, "x.apps.example.com"), Some(1003));
        assert_eq!(
            port(&t, "example.com"),
            None,
            "a wildcard does not match its zone apex"
        );
        assert_eq!(port(&t, "example.org"), None);
        assert_eq!(t.route_for(Some("example.org")).unwrap().name, "default");
        assert_eq!(t.route_for(None).unwrap().name, "default");
        assert_eq!(t.limits.max_connections, 10);
        assert_eq!(
            t.limits.max_connections_per_ip, 256,
            "defaults fill the rest"
        );
        assert!(t.lookup("acme.example.com").unwrap().proxy_protocol);
    }

    #[test]
    fn refuses_bad_files_with_a_reason() {
        let dup = "[[route]]\nsni='a.b'\nbackend='127.0.0.1:1'\n[[route]]\nsni='A.b'\nbackend='127.0.0.1:2'\n";
        assert!(RouteTable::parse(dup, "t")
            .unwrap_err()
            .to_string()
            .contains("twice"));
        let bad = "[[route]]\nsni='a.*.b'\nbackend='127.0.0.1:1'\n";
        assert!(RouteTable::parse(bad, "t")
            .unwrap_err()
            .to_string()
            .contains("not a host name"));
        let unknown = "[[route]]\nsni='a.b'\nbackend='127.0.0.1:1'\nbogus=1\n";
        assert!(matches!(
            RouteTable::parse(unknown, "t"),
            Err(ConfigError::Parse { .. })
        ));
        let zero = "[limits]\nmax_connections = 0\n";
        assert!(RouteTable::parse(zero, "t")
            .unwrap_err()
            .to_string()
            .contains("max_connections"));
        let term = "[[route]]\nsni='a.b'\nbackend='127.0.0.1:1'\nmode='terminate'\n";
        assert!(RouteTable::parse(term, "t")
            .unwrap_err()
            .to_string()
            .contains("[acme]"));
        let acme = "[acme]\ndirectory='https://127.0.0.1:1/dir'\ncache_dir='/tmp/x'\n";
        let wild = format!("{acme}[[route]]\nsni='*.b'\nbackend='127.0.0.1:1'\nmode='terminate'\n");
        assert!(RouteTable::parse(&wild, "t")
            .unwrap_err()
            .to_string()
            .contains("exact name"));
        let ok = format!("{acme}{term}");
        assert_eq!(
            RouteTable::parse(&ok, "t")
                .unwrap()
                .terminate_routes()
                .count(),
            1
        );
        let fwd = "[[route]]\nsni='a.b'\nbackend='127.0.0.1:1'\nhttp='forward'\n";
        assert!(RouteTable::parse(fwd, "t")
            .unwrap_err()
            .to_string()
            .contains("http_backend"));
    }

    #[test]
    fn empty_file_closes_everything() {
        let t = RouteTable::parse("", "t").unwrap();
        assert!(t.is_empty());
        assert!(t.route_for(Some("a.b")).is_none());
        assert!(t.route_for(None).is_none());
    }
}
