//! Prometheus metrics, kept in memory and rendered in the text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the ClientHello wait histogram.
const HELLO_BUCKETS: [f64; 10] = [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];

#[derive(Debug, Default)]
struct Labelled {
    /// (route, outcome) → connections.
    connections: BTreeMap<(String, &'static str), u64>,
    /// route → (bytes up, bytes down).
    bytes: BTreeMap<String, (u64, u64)>,
    /// route → backend connect/relay errors.
    backend_errors: BTreeMap<String, u64>,
    /// limit → times hit.
    limits: BTreeMap<&'static str, u64>,
    /// (listener, outcome) → HTTP requests on :80.
    http: BTreeMap<(&'static str, &'static str), u64>,
    /// (tenant, outcome) → connections held for a sleeping tenant.
    wakes: BTreeMap<(String, &'static str), u64>,
}

/// Every metric the proxy exports.
#[derive(Debug, Default)]
pub struct Metrics {
    labelled: Mutex<Labelled>,
    hello_buckets: [AtomicU64; HELLO_BUCKETS.len()],
    hello_count: AtomicU64,
    hello_sum_ns: AtomicU64,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
}

impl Metrics {
    fn with<F: FnOnce(&mut Labelled)>(&self, f: F) {
        f(&mut self.labelled.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Records a finished :443 connection.
    pub fn connection(&self, route: &str, outcome: &'static str, up: u64, down: u64) {
        self.with(|l| {
            *l.connections
                .entry((route.to_owned(), outcome))
                .or_default() += 1;
            let b = l.bytes.entry(route.to_owned()).or_default();
            b.0 += up;
            b.1 += down;
        });
    }

    /// Records a failure to reach or talk to a backend.
    pub fn backend_error(&self, route: &str) {
        self.with(|l| *l.backend_errors.entry(route.to_owned()).or_default() += 1);
    }

    /// Records a limit hit.
    pub fn limit_hit(&self, limit: &'static str) {
        self.with(|l| *l.limits.entry(limit).or_default() += 1);
    }

    /// Records how a connection held for a sleeping tenant ended (woken, timed out, …).
    pub fn wake(&self, tenant: &str, outcome: &'static str) {
        self.with(|l| *l.wakes.entry((tenant.to_owned(), outcome)).or_default() += 1);
    }

    /// Records a request on :80.
    pub fn http_request(&self, action: &'static str, outcome: &'static str) {
        self.with(|l| *l.http.entry((action, outcome)).or_default() += 1);
    }

    /// Records how long a complete ClientHello took to arrive and parse.
    pub fn hello_time(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, le) in HELLO_BUCKETS.iter().enumerate() {
            if s <= *le {
                self.hello_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.hello_count.fetch_add(1, Ordering::Relaxed);
        self.hello_sum_ns
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Records a routes reload attempt.
    pub fn reload(&self, ok: bool) {
        let c = if ok {
            &self.reloads_ok
        } else {
            &self.reloads_failed
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Renders everything in the Prometheus text format; `open` and `routes` are gauges.
    pub fn render(&self, open: usize, routes: usize) -> String {
        let mut o = String::new();
        let l = self.labelled.lock().unwrap_or_else(|p| p.into_inner());
        let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let _ = writeln!(
            o,
            "# HELP sni_proxy_connections_total Finished :443 connections by route and outcome."
        );
        let _ = writeln!(o, "# TYPE sni_proxy_connections_total counter");
        for ((route, outcome), n) in &l.connections {
            let _ = writeln!(
                o,
                "sni_proxy_connections_total{{route=\"{}\",outcome=\"{outcome}\"}} {n}",
                esc(route)
            );
        }
        let _ = writeln!(
            o,
            "# HELP sni_proxy_bytes_total Bytes relayed by route and direction."
        );
        let _ = writeln!(o, "# TYPE sni_proxy_bytes_total counter");
        for (route, (up, down)) in &l.bytes {
            let r = esc(route);
            let _ = writeln!(
                o,
                "sni_proxy_bytes_total{{route=\"{r}\",direction=\"up\"}} {up}"
            );
            let _ = writeln!(
                o,
                "sni_proxy_bytes_total{{route=\"{r}\",direction=\"down\"}} {down}"
            );
        }
        let _ = writeln!(
            o,
            "# HELP sni_proxy_backend_errors_total Failures to connect to or talk to a backend."
        );
        let _ = writeln!(o, "# TYPE sni_proxy_backend_errors_total counter");
        for (route, n) in &l.backend_errors {
            let _ = writeln!(
                o,
                "sni_proxy_backend_errors_total{{route=\"{}\"}} {n}",
                esc(route)
            );
        }
        let _ = writeln!(o, "# HELP sni_proxy_limit_hits_total Connections refused or closed by a limit or timeout.");
        let _ = writeln!(o, "# TYPE sni_proxy_limit_hits_total counter");
        for (limit, n) in &l.limits {
            let _ = writeln!(o, "sni_proxy_limit_hits_total{{limit=\"{limit}\"}} {n}");
        }
        let _ = writeln!(
            o,
            "# HELP sni_proxy_http_requests_total Requests on the plain HTTP listener."
        );
        let _ = writeln!(o, "# TYPE sni_proxy_http_requests_total counter");
        for ((action, outcome), n) in &l.http {
            let _ = writeln!(
                o,
                "sni_proxy_http_requests_total{{action=\"{action}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        let _ = writeln!(
            o,
            "# HELP sni_proxy_wake_holds_total Connections held for a sleeping tenant, by how the hold ended."
        );
        let _ = writeln!(o, "# TYPE sni_proxy_wake_holds_total counter");
        for ((tenant, outcome), n) in &l.wakes {
            let _ = writeln!(
                o,
                "sni_proxy_wake_holds_total{{tenant=\"{}\",outcome=\"{outcome}\"}} {n}",
                esc(tenant)
            );
        }
        drop(l);
        let _ = writeln!(o, "# HELP sni_proxy_client_hello_seconds Time from accept to a complete, parsed ClientHello.");
        let _ = writeln!(o, "# TYPE sni_proxy_client_hello_seconds histogram");
        for (i, le) in HELLO_BUCKETS.iter().enumerate() {
            let n = self.hello_buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(
                o,
                "sni_proxy_client_hello_seconds_bucket{{le=\"{le}\"}} {n}"
            );
        }
        let count = self.hello_count.load(Ordering::Relaxed);
        let sum = self.hello_sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(
            o,
            "sni_proxy_client_hello_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(o, "sni_proxy_client_hello_seconds_sum {sum}");
        let _ = writeln!(o, "sni_proxy_client_hello_seconds_count {count}");
        let _ = writeln!(
            o,
            "# HELP sni_proxy_open_connections :443 connections open now."
        );
        let _ = writeln!(o, "# TYPE sni_proxy_open_connections gauge");
        let _ = writeln!(o, "sni_proxy_open_connections {open}");
        let _ = writeln!(o, "# HELP sni_proxy_routes Routes in the table now.");
        let _ = writeln!(o, "# TYPE sni_proxy_routes gauge");
        let _ = writeln!(o, "sni_proxy_routes {routes}");
        let _ = writeln!(
            o,
            "# HELP sni_proxy_reloads_total Routes reloads by result."
        );
        let _ = writeln!(o, "# TYPE sni_proxy_reloads_total counter");
        let ok = self.reloads_ok.load(Ordering::Relaxed);
        let failed = self.reloads_failed.load(Ordering::Relaxed);
        let _ = writeln!(o, "sni_proxy_reloads_total{{result=\"ok\"}} {ok}");
        let _ = writeln!(o, "sni_proxy_reloads_total{{result=\"failed\"}} {failed}");
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histogram() {
        let m = Metrics::default();
        m.connection("a.example.com", "closed", 10, 20);
        m.connection("a.example.com", "closed", 1, 2);
        m.limit_hit("max_connections_per_ip");
        m.hello_time(Duration::from_millis(2));
        let t = m.render(3, 1);
        assert!(
            t.contains("sni_proxy_connections_total{route=\"a.example.com\",outcome=\"closed\"} 2")
        );
        assert!(t.contains("sni_proxy_bytes_total{route=\"a.example.com\",direction=\"down\"} 22"));
        assert!(t.contains("sni_proxy_limit_hits_total{limit=\"max_connections_per_ip\"} 1"));
        assert!(t.contains("sni_proxy_client_hello_seconds_bucket{le=\"0.001\"} 0"));
        assert!(t.contains("sni_proxy_client_hello_seconds_bucket{le=\"0.005\"} 1"));
        assert!(t.contains("sni_proxy_open_connections 3"));
    }
}
