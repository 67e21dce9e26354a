//! What hostd reads to decide that a tenant is idle: per tenant, the connections open now
//! (a long-lived WebSocket keeps its tenant awake) and when one last opened or closed, over
//! :443 and :80 together. A route belongs to the tenant its `tenant` field names (hostd
//! sets it), or to its own name.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde::Serialize;

/// One tenant's counters.
#[derive(Debug, Default)]
pub struct Counters {
    open: AtomicU64,
    /// Seconds since the epoch of the last open or close.
    last: AtomicU64,
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

    /// Counts a connection of `tenant` open until the guard drops.
    pub fn open(&self, tenant: &str) -> Open {
        let c = self.counters(tenant);
        c.open.fetch_add(1, Ordering::Relaxed);
        c.last.store(now(), Ordering::Relaxed);
        Open(c)
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
    fn open_connections_and_their_times_are_counted_per_tenant() {
        let a = Activity::default();
        let one = a.open("acme");
        let two = a.open("acme");
        let _b = a.open("beta");
        assert_eq!(a.snapshot()["acme"].open, 2);
        drop(one);
        drop(two);
        let s = a.snapshot();
        assert_eq!(s["acme"].open, 0);
        assert!(s["acme"].last_active >= now() - 1);
        assert_eq!(s["beta"].open, 1);
    }
}
