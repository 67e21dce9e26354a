//! One lock per tenant: a change to tenant A (a deploy waiting on a slow healthcheck, a
//! destroy) never waits for tenant B. Reads (`list`, `status`) take no lock: records are
//! replaced atomically, so a reader sees the state before or after a step, never half.
//! Locks are never removed: one waiting on a destroyed tenant's lock must not race a new one
//! made for the same name, and an entry costs a few dozen bytes per name ever used.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

/// The per-tenant change locks of one host.
#[derive(Debug, Default)]
pub struct TenantLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Held while one operation changes one tenant.
pub type TenantGuard = OwnedMutexGuard<()>;

impl TenantLocks {
    fn entry(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        // A poisoned map only means another thread panicked while inserting; the map itself
        // is still a valid map of locks.
        let mut map = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(name.to_owned()).or_default().clone()
    }

    /// Waits for the tenant's lock.
    pub async fn lock(&self, name: &str) -> TenantGuard {
        self.entry(name).lock_owned().await
    }

    /// The tenant's lock if nobody holds it: the supervisor skips a tenant being changed.
    pub fn try_lock(&self, name: &str) -> Option<TenantGuard> {
        self.entry(name).try_lock_owned().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_tenants_lock_does_not_hold_another() {
        let locks = TenantLocks::default();
        let _a = locks.lock("a").await;
        assert!(locks.try_lock("a").is_none(), "a is held");
        assert!(locks.try_lock("b").is_some(), "b is free while a is held");
        let b = tokio::time::timeout(std::time::Duration::from_secs(1), locks.lock("b")).await;
        assert!(b.is_ok(), "locking b does not wait for a");
    }
}
