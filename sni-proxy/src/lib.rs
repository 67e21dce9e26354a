//! sni-proxy: the public entry of an m8trx shared host. Routes TLS by SNI to each tenant's
//! own server without terminating it, and plain HTTP by Host (ACME challenges, redirects).
//! Each module owns one responsibility; `main.rs` wires them together.

pub mod activity;
pub mod admin;
pub mod clienthello;
pub mod http80;
pub mod limits;
pub mod metrics;
pub mod passthrough;
pub mod privilege;
pub mod proxy_protocol;
pub mod relay;
pub mod reload;
pub mod routes;
pub mod terminate;
pub mod wake;

use std::sync::Arc;

/// Everything the listeners share: the live routes, the connection limiter, the metrics, the
/// tenants' activity and the connections held for sleeping tenants.
#[derive(Debug)]
pub struct State {
    /// Routes file and live table.
    pub routes: Arc<reload::Routes>,
    /// Open-connection accounting for the limits.
    pub limiter: Arc<limits::ConnLimiter>,
    /// Prometheus counters.
    pub metrics: Arc<metrics::Metrics>,
    /// Certificates of terminate-mode routes.
    pub terminator: Arc<terminate::Terminator>,
    /// Per-tenant open connections and last activity, for hostd's idle decisions.
    pub activity: Arc<activity::Activity>,
    /// Connections held for sleeping tenants, and the wake asks to hostd.
    pub waker: Arc<wake::Waker>,
}
