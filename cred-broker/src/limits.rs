//! Each tenant's share of the broker (issue #18): connections open at once from one
//! tenant network (a /24: hostd gives every tenant its own), credentials requests per second
//! per tenant (a token bucket holding one second's worth), and a cap on all connections. A
//! tenant that floods the broker gets refusals; the others keep being served. Each refusal is
//! counted; a flood is logged once per tenant every ten seconds with its count.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The limits, from the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once, all tenants together.
    pub max_connections: usize,
    /// Connections open at once from one tenant network (/24).
    pub max_connections_per_network: usize,
    /// Credentials requests per second per tenant.
    pub requests_per_second: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_connections_per_network: 256,
            requests_per_second: 100,
        }
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnRefused {
    /// `max_connections` open already.
    Total(usize),
    /// `max_connections_per_network` open already from that network.
    Network(usize),
}

impl ConnRefused {
    /// The limit's name, for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ConnRefused::Total(_) => "max_connections",
            ConnRefused::Network(_) => "max_connections_per_network",
        }
    }
}

/// The network a connection comes from: its /24 (IPv4) or /64 (IPv6).
pub fn network(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v) => {
            let [a, b, c, _] = v.octets();
            IpAddr::from([a, b, c, 0])
        }
        IpAddr::V6(v) => {
            let s = v.segments();
            IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
        }
    }
}

/// Open connections, in total and per network.
#[derive(Debug, Default)]
pub struct Gate {
    limits: Limits,
    total: AtomicUsize,
    per_network: Mutex<HashMap<IpAddr, usize>>,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
    logged: Mutex<HashMap<String, (Instant, u64)>>,
}

/// An admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Admitted {
    gate: Arc<Gate>,
    network: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut m = self
            .gate
            .per_network
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.network) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.network);
            }
        }
        self.gate.total.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Gate {
    /// A gate enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Admits a connection from `peer` unless a connection limit is reached.
    pub fn connect(self: &Arc<Self>, peer: IpAddr) -> Result<Admitted, ConnRefused> {
        let network = network(peer);
        let mut m = self.per_network.lock().unwrap_or_else(|p| p.into_inner());
        if self.total.load(Ordering::Relaxed) >= self.limits.max_connections {
            return Err(ConnRefused::Total(self.limits.max_connections));
        }
        let n = m.entry(network).or_insert(0);
        if *n >= self.limits.max_connections_per_network {
            return Err(ConnRefused::Network(
                self.limits.max_connections_per_network,
            ));
        }
        *n += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(Admitted {
            gate: Arc::clone(self),
            network,
        })
    }

    /// Whether `tenant` may make one more credentials request now.
    pub fn request(&self, tenant: &str) -> bool {
        let rate = f64::from(self.limits.requests_per_second);
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        // No allocation once a tenant has its bucket: this is every request's path.
        if !b.contains_key(tenant) {
            b.insert(tenant.to_owned(), (rate, Instant::now()));
        }
        let Some((tokens, at)) = b.get_mut(tenant) else {
            return true;
        };
        *tokens = (*tokens + at.elapsed().as_secs_f64() * rate).min(rate);
        *at = Instant::now();
        if *tokens < 1.0 {
            return false;
        }
        *tokens -= 1.0;
        true
    }

    /// Whether a refusal for `key` (a tenant or a network) should be logged now: at most once
    /// every ten seconds, with the refusals the line stands for.
    pub fn log_refusal(&self, key: &str) -> Option<u64> {
        let mut m = self.logged.lock().unwrap_or_else(|p| p.into_inner());
        let e = m
            .entry(key.to_owned())
            .or_insert((Instant::now() - std::time::Duration::from_secs(3600), 0));
        e.1 += 1;
        (e.0.elapsed().as_secs() >= 10).then(|| {
            let n = e.1;
            *e = (Instant::now(), 0);
            n
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_network_gets_its_share_and_no_more() {
        let g = Arc::new(Gate::new(Limits {
            max_connections: 3,
            max_connections_per_network: 2,
            requests_per_second: 5,
        }));
        let a1: IpAddr = "10.250.1.2".parse().unwrap();
        let a2: IpAddr = "10.250.1.3".parse().unwrap();
        let b: IpAddr = "10.250.2.2".parse().unwrap();
        let first = g.connect(a1).unwrap();
        let _second = g.connect(a2).unwrap();
        assert_eq!(g.connect(a1).unwrap_err(), ConnRefused::Network(2));
        let _third = g.connect(b).unwrap();
        assert_eq!(g.connect(b).unwrap_err(), ConnRefused::Total(3));
        drop(first);
        assert!(g.connect(a1).is_ok());
    }

    #[test]
    fn a_tenant_gets_its_request_rate_and_a_flood_is_logged_once() {
        let g = Gate::new(Limits {
            requests_per_second: 5,
            ..Limits::default()
        });
        let admitted = (0..20).filter(|_| g.request("acme")).count();
        assert_eq!(admitted, 5, "one second's worth");
        assert!(g.request("beta"), "another tenant has its own bucket");
        assert_eq!(g.log_refusal("acme"), Some(1));
        assert_eq!(g.log_refusal("acme"), None);
        std::thread::sleep(std::time::Duration::from_millis(250));
        assert!(g.request("acme"), "refilled");
    }
}
