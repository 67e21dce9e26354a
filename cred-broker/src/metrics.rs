//! Prometheus metrics of the broker (the `prometheus-client` crate), rendered in the
//! OpenMetrics text format. Names follow the host's one scheme, `m8trx_broker_…` (hostd's
//! are `m8trx_tenant_…`/`m8trx_hostd_…`, sni-proxy's `m8trx_proxy_…`).

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// How one credentials request ended; the `outcome` label and the audit line use its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 200 with credentials.
    Ok,
    /// 400: no Authorization header.
    MissingHeader,
    /// 401: token unknown or revoked.
    UnknownToken,
    /// 401: token past its TTL.
    ExpiredToken,
    /// 403: valid token from outside the tenant's network.
    WrongSource,
    /// 503: STS failing and no usable cached credentials.
    StsUnavailable,
    /// 404/405: not the credentials endpoint.
    BadRequest,
    /// 429: the tenant's requests per second used up.
    RateLimited,
}

impl Outcome {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::MissingHeader => "missing_header",
            Outcome::UnknownToken => "unknown_token",
            Outcome::ExpiredToken => "expired_token",
            Outcome::WrongSource => "wrong_source",
            Outcome::StsUnavailable => "sts_unavailable",
            Outcome::BadRequest => "bad_request",
            Outcome::RateLimited => "rate_limited",
        }
    }
}

/// Tenant label for requests whose token matched no tenant.
pub const NO_TENANT: &str = "-";

/// Cached-credential facts for one tenant at scrape time.
#[derive(Debug, Clone)]
pub struct CacheGauge {
    /// Tenant name.
    pub tenant: String,
    /// Seconds since the broker received the cached credentials.
    pub age: Duration,
    /// Seconds until they expire.
    pub remaining: Duration,
}

type Labels1 = [(&'static str, String); 1];
type Labels2 = [(&'static str, String); 2];

/// The broker's metrics; cheap to update from the request path.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<Labels2, Counter>,
    cache: Family<Labels2, Counter>,
    sts_calls: Family<Labels1, Counter>,
    sts_errors: Family<Labels1, Counter>,
    sts_seconds: Family<Labels1, Counter<f64, std::sync::atomic::AtomicU64>>,
    refused: Family<Labels1, Counter>,
    cache_age: Family<Labels1, Gauge<f64, std::sync::atomic::AtomicU64>>,
    cache_remaining: Family<Labels1, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Empty metrics, registered.
    pub fn new() -> Self {
        let mut r = Registry::default();
        let m = Self {
            registry: Mutex::new(Registry::default()),
            requests: Family::default(),
            cache: Family::default(),
            sts_calls: Family::default(),
            sts_errors: Family::default(),
            sts_seconds: Family::default(),
            refused: Family::default(),
            cache_age: Family::default(),
            cache_remaining: Family::default(),
        };
        r.register(
            "m8trx_broker_requests",
            "Credentials requests by tenant and outcome",
            m.requests.clone(),
        );
        r.register(
            "m8trx_broker_cache",
            "Credentials served by tenant, from the cache (hit) or after an STS call (miss)",
            m.cache.clone(),
        );
        r.register(
            "m8trx_broker_sts_calls",
            "STS AssumeRole calls by tenant",
            m.sts_calls.clone(),
        );
        r.register(
            "m8trx_broker_sts_errors",
            "Failed STS AssumeRole calls by tenant",
            m.sts_errors.clone(),
        );
        r.register(
            "m8trx_broker_sts_call_seconds",
            "Seconds spent in STS AssumeRole calls by tenant",
            m.sts_seconds.clone(),
        );
        r.register(
            "m8trx_broker_connections_refused",
            "Connections refused by a limit (max_connections, max_connections_per_network)",
            m.refused.clone(),
        );
        r.register(
            "m8trx_broker_cached_credentials_age_seconds",
            "Age of each tenant's cached credentials",
            m.cache_age.clone(),
        );
        r.register(
            "m8trx_broker_cached_credentials_remaining_seconds",
            "Time until each tenant's cached credentials expire",
            m.cache_remaining.clone(),
        );
        Self {
            registry: Mutex::new(r),
            ..m
        }
    }

    /// Counts one credentials request.
    pub fn request(&self, tenant: &str, outcome: Outcome) {
        self.requests
            .get_or_create(&[
                ("tenant", tenant.to_owned()),
                ("outcome", outcome.as_str().to_owned()),
            ])
            .inc();
    }

    /// Counts credentials served to `tenant` as a cache `hit` or `miss`.
    pub fn served(&self, tenant: &str, cache: &'static str) {
        self.cache
            .get_or_create(&[("tenant", tenant.to_owned()), ("result", cache.to_owned())])
            .inc();
    }

    /// Counts one connection refused by `limit`.
    pub fn connection_refused(&self, limit: &'static str) {
        self.refused
            .get_or_create(&[("limit", limit.to_owned())])
            .inc();
    }

    /// Counts one AssumeRole call and whether it failed.
    pub fn sts_call(&self, tenant: &str, ok: bool, latency: Duration) {
        let t = [("tenant", tenant.to_owned())];
        self.sts_calls.get_or_create(&t).inc();
        if !ok {
            self.sts_errors.get_or_create(&t).inc();
        }
        self.sts_seconds
            .get_or_create(&t)
            .inc_by(latency.as_secs_f64());
    }

    /// AssumeRole calls made for `tenant` so far.
    pub fn sts_calls(&self, tenant: &str) -> u64 {
        self.sts_calls
            .get(&[("tenant", tenant.to_owned())])
            .map_or(0, |c| c.get())
    }

    /// Renders every metric in the OpenMetrics text format, with the cache's gauges now.
    pub fn render(&self, cache: &[CacheGauge]) -> String {
        self.cache_age.clear();
        self.cache_remaining.clear();
        for g in cache {
            let t = [("tenant", g.tenant.clone())];
            self.cache_age.get_or_create(&t).set(g.age.as_secs_f64());
            self.cache_remaining
                .get_or_create(&t)
                .set(g.remaining.as_secs_f64());
        }
        let mut out = String::new();
        let r = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &r);
        out
    }
}

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_by_tenant_and_outcome() {
        let m = Metrics::new();
        m.request("acme", Outcome::Ok);
        m.request("acme", Outcome::Ok);
        m.request(NO_TENANT, Outcome::UnknownToken);
        m.served("acme", "hit");
        m.sts_call("acme", true, Duration::from_millis(20));
        m.sts_call("acme", false, Duration::from_millis(5));
        let text = m.render(&[CacheGauge {
            tenant: "acme".into(),
            age: Duration::from_secs(12),
            remaining: Duration::from_secs(3000),
        }]);
        for want in [
            "m8trx_broker_requests_total{tenant=\"acme\",outcome=\"ok\"} 2\n",
            "m8trx_broker_requests_total{tenant=\"-\",outcome=\"unknown_token\"} 1\n",
            "m8trx_broker_cache_total{tenant=\"acme\",result=\"hit\"} 1\n",
            "m8trx_broker_sts_calls_total{tenant=\"acme\"} 2\n",
            "m8trx_broker_sts_errors_total{tenant=\"acme\"} 1\n",
            "m8trx_broker_cached_credentials_age_seconds{tenant=\"acme\"} 12.0\n",
        ] {
            assert!(text.contains(want), "{want} missing:\n{text}");
        }
        assert_eq!(m.sts_calls("acme"), 2);
        assert_eq!(m.sts_calls("beta"), 0);
    }
}
