//! Prometheus counters of the broker, rendered in the text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

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
}

impl Outcome {
    const ALL: [Outcome; 7] = [
        Outcome::Ok,
        Outcome::MissingHeader,
        Outcome::UnknownToken,
        Outcome::ExpiredToken,
        Outcome::WrongSource,
        Outcome::StsUnavailable,
        Outcome::BadRequest,
    ];

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
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Tenant label for requests whose token matched no tenant.
pub const NO_TENANT: &str = "-";

#[derive(Default)]
struct StsStats {
    calls: u64,
    errors: u64,
    seconds_sum: f64,
}

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

/// The broker's counters; cheap to update from the request path.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<String, [u64; Outcome::ALL.len()]>>,
    sts: Mutex<BTreeMap<String, StsStats>>,
}

impl Metrics {
    /// Empty counters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one credentials request.
    pub fn request(&self, tenant: &str, outcome: Outcome) {
        let mut m = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        match m.get_mut(tenant) {
            Some(row) => row[outcome.index()] += 1,
            None => {
                let mut row = [0; Outcome::ALL.len()];
                row[outcome.index()] = 1;
                m.insert(tenant.to_owned(), row);
            }
        }
    }

    /// Counts one AssumeRole call and whether it failed.
    pub fn sts_call(&self, tenant: &str, ok: bool, latency: Duration) {
        let mut m = self.sts.lock().unwrap_or_else(|p| p.into_inner());
        let s = m.entry(tenant.to_owned()).or_default();
        s.calls += 1;
        if !ok {
            s.errors += 1;
        }
        s.seconds_sum += latency.as_secs_f64();
    }

    /// AssumeRole calls made for `tenant` so far.
    pub fn sts_calls(&self, tenant: &str) -> u64 {
        let m = self.sts.lock().unwrap_or_else(|p| p.into_inner());
        m.get(tenant).map(|s| s.calls).unwrap_or(0)
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self, cache: &[CacheGauge]) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP m8trx_broker_requests_total Credentials requests by tenant and outcome.\n",
        );
        out.push_str("# TYPE m8trx_broker_requests_total counter\n");
        {
            let m = self.requests.lock().unwrap_or_else(|p| p.into_inner());
            for (tenant, row) in m.iter() {
                for o in Outcome::ALL {
                    if row[o.index()] > 0 {
                        let _ = writeln!(
                            out,
                            "m8trx_broker_requests_total{{tenant=\"{}\",outcome=\"{}\"}} {}",
                            tenant,
                            o.as_str(),
                            row[o.index()]
                        );
                    }
                }
            }
        }
        {
            let m = self.sts.lock().unwrap_or_else(|p| p.into_inner());
            out.push_str("# HELP m8trx_broker_sts_calls_total STS AssumeRole calls by tenant.\n");
            out.push_str("# TYPE m8trx_broker_sts_calls_total counter\n");
            for (t, s) in m.iter() {
                let _ = writeln!(
                    out,
                    "m8trx_broker_sts_calls_total{{tenant=\"{t}\"}} {}",
                    s.calls
                );
            }
            out.push_str(
                "# HELP m8trx_broker_sts_errors_total Failed STS AssumeRole calls by tenant.\n",
            );
            out.push_str("# TYPE m8trx_broker_sts_errors_total counter\n");
            for (t, s) in m.iter() {
                let _ = writeln!(
                    out,
                    "m8trx_broker_sts_errors_total{{tenant=\"{t}\"}} {}",
                    s.errors
                );
            }
            out.push_str("# HELP m8trx_broker_sts_call_seconds_sum Total seconds spent in STS AssumeRole calls by tenant.\n");
            out.push_str("# TYPE m8trx_broker_sts_call_seconds_sum counter\n");
            for (t, s) in m.iter() {
                let _ = writeln!(
                    out,
                    "m8trx_broker_sts_call_seconds_sum{{tenant=\"{t}\"}} {:.6}",
                    s.seconds_sum
                );
            }
        }
        out.push_str("# HELP m8trx_broker_cached_credentials_age_seconds Age of each tenant's cached credentials.\n");
        out.push_str("# TYPE m8trx_broker_cached_credentials_age_seconds gauge\n");
        for g in cache {
            let _ = writeln!(
                out,
                "m8trx_broker_cached_credentials_age_seconds{{tenant=\"{}\"}} {:.3}",
                g.tenant,
                g.age.as_secs_f64()
            );
        }
        out.push_str("# HELP m8trx_broker_cached_credentials_remaining_seconds Time until each tenant's cached credentials expire.\n");
        out.push_str("# TYPE m8trx_broker_cached_credentials_remaining_seconds gauge\n");
        for g in cache {
            let _ = writeln!(
                out,
                "m8trx_broker_cached_credentials_remaining_seconds{{tenant=\"{}\"}} {:.3}",
                g.tenant,
                g.remaining.as_secs_f64()
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_by_tenant_and_outcome() {
        let m = Metrics::new();
        m.request("acme", Outcome::Ok);
        m.request("acme", Outcome::Ok);
        m.request(NO_TENANT, Outcome::UnknownToken);
        m.sts_call("acme", true, Duration::from_millis(20));
        m.sts_call("acme", false, Duration::from_millis(5));
        let text = m.render(&[CacheGauge {
            tenant: "acme".into(),
            age: Duration::from_secs(12),
            remaining: Duration::from_secs(3000),
        }]);
        assert!(
            text.contains("m8trx_broker_requests_total{tenant=\"acme\",outcome=\"ok\"} 2\n"),
            "{text}"
        );
        assert!(text
            .contains("m8trx_broker_requests_total{tenant=\"-\",outcome=\"unknown_token\"} 1\n"));
        assert!(text.contains("m8trx_broker_sts_calls_total{tenant=\"acme\"} 2\n"));
        assert!(text.contains("m8trx_broker_sts_errors_total{tenant=\"acme\"} 1\n"));
        assert!(
            text.contains("m8trx_broker_cached_credentials_age_seconds{tenant=\"acme\"} 12.000\n")
        );
        assert_eq!(m.sts_calls("acme"), 2);
        assert_eq!(m.sts_calls("beta"), 0);
    }
}
