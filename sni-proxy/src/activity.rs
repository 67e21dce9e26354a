//! Per tenant, over :443 and :80 together: the connections open now and when one last
//! opened or closed — what hostd reads to decide that a tenant is idle (a long-lived
//! WebSocket keeps its tenant awake) — and the tenant's share of the proxy: at most
//! `max_connections_per_tenant` open at once and `new_connections_per_second_per_tenant`
//! admitted per second (a token bucket holding one second's worth), so one tenant's flood
//! cannot take the connection table or the accept loop from the others. A route belongs to
//! the tenant its `tenant` field names (hostd sets it), or to its own name.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use serde::Serialize;

/// One tenant's counters.
#[derive(Debug, Default)]
pub struct Counters {
    open: AtomicU64,
    /// Seconds since the epoch of the last open or close.
    last: AtomicU64,
    /// New connections admitted this second: (tokens left, when last refilled).
    bucket: Mutex<Option<(f64, Instant)>>,
    /// Refusals, and when a line about them was last logged.
    refusals: crate::limits::RefusalLog,
}

/// Which per-tenant limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantLimit {
    /// `max_connections_per_tenant` open already.
    Open(usize),
    /// `new_connections_per_second_per_tenant` used up this second.
    Rate(usize),
}

impl TenantLimit {
    /// The limit's name in the routes file, for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            TenantLimit::Open(_) => "max_connections_per_tenant",
            TenantLimit::Rate(_) => "new_connections_per_second_per_tenant",
        }
    }

    /// The limit's value.
    pub fn max(&self) -> usize {
        match self {
            TenantLimit::Open(n) | TenantLimit::Rate(n) => *n,
        }
    }
}

/// What the admin socket's `activity` answers for one tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Seen {
    /// Connections (and :80 requests) in progress.
    pub open: u64,
    /// Seconds since the epoch of the last connection opened or closed; 0: none yet.
    pub last_active: u64,
}

/// Every tenant's counters; looked up once per connection, written without a lock.
#[derive(Debug, Default)]
pub struct Activity {
    tenants: RwLock<HashMap<String, Arc<Counters>>>,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Activity {
    fn counters(&self, tenant: &str) -> Arc<Counters> {
        if let Some(c) = self
            .tenants
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
        {
            return Arc::clone(c);
        }
        let mut w = self.tenants.write().unwrap_or_else(|p| p.into_inner());
        Arc::clone(w.entry(tenant.to_owned()).or_default())
    }

    /// Admits a new connection of `tenant` within its limits, counted open until the guard
    /// drops; a refused one is not counted (but is activity all the same).
    pub fn admit(
        &self,
        tenant: &str,
        max_open: usize,
        per_second: usize,
    ) -> Result<Open, TenantLimit> {
        let c = self.counters(tenant);
        c.last.store(now(), Ordering::Relaxed);
        {
            let mut b = c.bucket.lock().unwrap_or_else(|p| p.into_inner());
            let rate = per_second as f64;
            let (tokens, at) = b.get_or_insert((rate, Instant::now()));
            let refill = at.elapsed().as_secs_f64() * rate;
            *tokens = (*tokens + refill).min(rate);
            *at = Instant::now();
            if *tokens < 1.0 {
                return Err(TenantLimit::Rate(per_second));
            }
            *tokens -= 1.0;
        }
        let open = c.open.fetch_add(1, Ordering::Relaxed);
        if open >= max_open as u64 {
            c.open.fetch_sub(1, Ordering::Relaxed);
            return Err(TenantLimit::Open(max_open));
        }
        Ok(Open(c))
    }

    /// Whether a refusal of `tenant` should be logged now: at most once every
    /// 10 s (see `RefusalLog`), giving the refusals the line stands for (this one included).
    pub fn log_refusal(&self, tenant: &str) -> Option<u64> {
        self.counters(tenant).refusals.refused()
    }

    /// Every tenant seen since the proxy started.
    pub fn snapshot(&self) -> HashMap<String, Seen> {
        self.tenants
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(t, c)| {
                (
                    t.clone(),
                    Seen {
                        open: c.open.load(Ordering::Relaxed),
                        last_active: c.last.load(Ordering::Relaxed),
                    },
                )
            })
            .collect()
    }
}

/// An open connection of one tenant; closing it counts as activity too.
#[derive(Debug)]
pub struct Open(Arc<Counters>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        self.0.last.store(now(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_gets_its_open_and_rate_limits_and_no_more() {
        let a = Activity::default();
        let first = a.admit("acme", 2, 100).unwrap();
        let _second = a.admit("acme", 2, 100).unwrap();
        assert_eq!(a.admit("acme", 2, 100).unwrap_err(), TenantLimit::Open(2));
        assert!(
            a.admit("beta", 2, 100).is_ok(),
            "another tenant is not held back"
        );
        drop(first);
        let _third = a.admit("acme", 2, 100).unwrap();
        // A second's worth of new connections, then refused until the bucket refills.
        let burst: Vec<_> = (0..5).map(|_| a.admit("flood", 1000, 5)).collect();
        assert!(burst.iter().all(Result::is_ok));
        assert_eq!(a.admit("flood", 1000, 5).unwrap_err(), TenantLimit::Rate(5));
        std::thread::sleep(std::time::Duration::from_millis(250));
        assert!(
            a.admit("flood", 1000, 5).is_ok(),
            "refilled at 5 per second"
        );
    }

    #[test]
    fn open_connections_and_their_times_are_counted_per_tenant() {
        let a = Activity::default();
        let one = a.admit("acme", 10, 10).unwrap();
        let two = a.admit("acme", 10, 10).unwrap();
        let _b = a.admit("beta", 10, 10).unwrap();
        assert_eq!(a.snapshot()["acme"].open, 2);
        drop(one);
        drop(two);
        let s = a.snapshot();
        assert_eq!(s["acme"].open, 0);
        assert!(s["acme"].last_active >= now() - 1);
        assert_eq!(s["beta"].open, 1);
    }
}
