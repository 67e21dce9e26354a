//! sni-proxy: the public entry of an m8trx shared host. Routes TLS by SNI to each tenant's
//! own server without terminating it, and plain HTTP by Host (ACME challenges, redirects).
//! Each module owns one responsibility; `main.rs` wires them together.

pub mod activity;
pub mod admin;
pub mod clienthello;
pub mod hello_wire;
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

impl State {
    /// Admits a new connection (`what`: "connection" on :443, "request" on :80) of
    /// `tenant` within its share, or refuses it: counted, and logged once per interval.
    pub fn admit_tenant(
        &self,
        tenant: &str,
        limits: &routes::Limits,
        peer: std::net::SocketAddr,
        what: &'static str,
    ) -> Option<activity::Open> {
        match self.activity.admit(
            tenant,
            limits.max_connections_per_tenant,
            limits.new_connections_per_second_per_tenant,
        ) {
            Ok(open) => Some(open),
            Err(hit) => {
                if let Some(n) = self.activity.log_refusal(tenant) {
                    tracing::warn!(target: "limit", limit = hit.label(), max = hit.max(), tenant,
                                   refused = n, client = %peer, "limit hit: tenant {what} refused");
                }
                self.metrics.limit_hit(hit.label());
                self.metrics.tenant_limit_hit(tenant, hit.label());
                None
            }
        }
    }
}
