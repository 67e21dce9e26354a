//! Prometheus metrics (the `prometheus-client` crate), rendered in the OpenMetrics text format.
//! Names follow the host's one scheme, `m8trx_<component>_…`: here `m8trx_proxy_…` (hostd's
//! are `m8trx_tenant_…`/`m8trx_hostd_…`, the broker's `m8trx_broker_…`).

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upper bounds (seconds) of the ClientHello wait histogram.
const HELLO_BUCKETS: [f64; 10] = [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];

type Labels2 = [(&'static str, String); 2];
type Labels1 = [(&'static str, String); 1];

/// Every metric the proxy exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    connections: Family<Labels2, Counter>,
    bytes: Family<Labels2, Counter>,
    backend_errors: Family<Labels1, Counter>,
    limits: Family<Labels1, Counter>,
    tenant_limits: Family<Labels2, Counter>,
    wakes: Family<Labels2, Counter>,
    http: Family<Labels2, Counter>,
    hello: Histogram,
    open: Gauge,
    routes: Gauge,
    reloads: Family<Labels1, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let m = Self {
            connections: Family::default(),
            bytes: Family::default(),
            backend_errors: Family::default(),
            limits: Family::default(),
            tenant_limits: Family::default(),
            wakes: Family::default(),
            http: Family::default(),
            hello: Histogram::new(HELLO_BUCKETS),
            open: Gauge::default(),
            routes: Gauge::default(),
            reloads: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "m8trx_proxy_connections",
            "Finished :443 connections by route and outcome",
            m.connections.clone(),
        );
        registry.register(
            "m8trx_proxy_bytes",
            "Bytes relayed by route and direction (up: client to tenant)",
            m.bytes.clone(),
        );
        registry.register(
            "m8trx_proxy_backend_errors",
            "Failures to connect to or talk to a tenant backend, by route",
            m.backend_errors.clone(),
        );
        registry.register(
            "m8trx_proxy_limit_hits",
            "Connections refused or closed by a limit or timeout (client_hello_timeout among them)",
            m.limits.clone(),
        );
        registry.register(
            "m8trx_proxy_tenant_limit_hits",
            "Connections refused by a per-tenant limit",
            m.tenant_limits.clone(),
        );
        registry.register(
            "m8trx_proxy_wake_holds",
            "Connections held for a sleeping tenant, by how the hold ended",
            m.wakes.clone(),
        );
        registry.register(
            "m8trx_proxy_http_requests",
            "Requests on the plain HTTP listener by action and outcome",
            m.http.clone(),
        );
        registry.register(
            "m8trx_proxy_client_hello_seconds",
            "Time from accept to a complete, parsed ClientHello",
            m.hello.clone(),
        );
        registry.register(
            "m8trx_proxy_open_connections",
            ":443 connections open now",
            m.open.clone(),
        );
        registry.register(
            "m8trx_proxy_routes",
            "Routes in the table now",
            m.routes.clone(),
        );
        registry.register(
            "m8trx_proxy_reloads",
            "Routes reloads by result",
            m.reloads.clone(),
        );
        Self { registry, ..m }
    }
}

impl Metrics {
    /// Records a finished :443 connection.
    pub fn connection(&self, route: &str, outcome: &'static str, up: u64, down: u64) {
        self.connections
            .get_or_create(&[("route", route.to_owned()), ("outcome", outcome.to_owned())])
            .inc();
        for (direction, n) in [("up", up), ("down", down)] {
            self.bytes
                .get_or_create(&[
                    ("route", route.to_owned()),
                    ("direction", direction.to_owned()),
                ])
                .inc_by(n);
        }
    }

    /// Records a failure to reach or talk to a backend.
    pub fn backend_error(&self, route: &str) {
        self.backend_errors
            .get_or_create(&[("route", route.to_owned())])
            .inc();
    }

    /// Records a limit hit.
    pub fn limit_hit(&self, limit: &'static str) {
        self.limits
            .get_or_create(&[("limit", limit.to_owned())])
            .inc();
    }

    /// Records a connection of `tenant` refused by the per-tenant `limit`.
    pub fn tenant_limit_hit(&self, tenant: &str, limit: &'static str) {
        self.tenant_limits
            .get_or_create(&[("tenant", tenant.to_owned()), ("limit", limit.to_owned())])
            .inc();
    }

    /// Records how a connection held for a sleeping tenant ended (woken, timed out, …).
    pub fn wake(&self, tenant: &str, outcome: &'static str) {
        self.wakes
            .get_or_create(&[
                ("tenant", tenant.to_owned()),
                ("outcome", outcome.to_owned()),
            ])
            .inc();
    }

    /// Records a request on :80.
    pub fn http_request(&self, action: &'static str, outcome: &'static str) {
        self.http
            .get_or_create(&[
                ("action", action.to_owned()),
                ("outcome", outcome.to_owned()),
            ])
            .inc();
    }

    /// Records how long a complete ClientHello took to arrive and parse.
    pub fn hello_time(&self, d: Duration) {
        self.hello.observe(d.as_secs_f64());
    }

    /// Records a routes reload attempt.
    pub fn reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.reloads
            .get_or_create(&[("result", result.to_owned())])
            .inc();
    }

    /// Renders everything in the OpenMetrics text format; `open` and `routes` are the
    /// gauges' values now.
    pub fn render(&self, open: usize, routes: usize) -> String {
        self.open.set(i64::try_from(open).unwrap_or(i64::MAX));
        self.routes.set(i64::try_from(routes).unwrap_or(i64::MAX));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histogram() {
        let m = Metrics::default();
        m.connection("a.example.com", "closed", 10, 20);
        m.connection("a.example.com", "closed", 1, 2);
        m.limit_hit("max_connections_per_ip");
        m.hello_time(Duration::from_micros(300));
        m.reload(true);
        m.wake("acme", "woken");
        let text = m.render(3, 7);
        for want in [
            r#"m8trx_proxy_connections_total{route="a.example.com",outcome="closed"} 2"#,
            r#"m8trx_proxy_bytes_total{route="a.example.com",direction="up"} 11"#,
            r#"m8trx_proxy_bytes_total{route="a.example.com",direction="down"} 22"#,
            r#"m8trx_proxy_limit_hits_total{limit="max_connections_per_ip"} 1"#,
            r#"m8trx_proxy_client_hello_seconds_bucket{le="0.0005"} 1"#,
            r#"m8trx_proxy_client_hello_seconds_count 1"#,
            r#"m8trx_proxy_open_connections 3"#,
            r#"m8trx_proxy_routes 7"#,
            r#"m8trx_proxy_reloads_total{result="ok"} 1"#,
            r#"m8trx_proxy_wake_holds_total{tenant="acme",outcome="woken"} 1"#,
        ] {
            assert!(text.contains(want), "{want} missing:\n{text}");
        }
    }
}
