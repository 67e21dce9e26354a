//! Connection limits: in total and per source IP. A permit is held for a connection's life.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Which limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitHit {
    /// `max_connections` reached.
    Total(usize),
    /// `max_connections_per_ip` reached for this source.
    PerIp(usize),
}

impl LimitHit {
    /// Label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            LimitHit::Total(_) => "max_connections",
            LimitHit::PerIp(_) => "max_connections_per_ip",
        }
    }
}

/// Counts open connections; shared by every accept loop.
#[derive(Debug, Default)]
pub struct ConnLimiter {
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// Proof that a connection was admitted; dropping it frees the slot.
#[derive(Debug)]
pub struct Permit {
    limiter: Arc<ConnLimiter>,
    ip: IpAddr,
}

impl ConnLimiter {
    /// Connections open now.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Admits a connection from `ip` unless a limit is reached.
    pub fn try_acquire(
        self: &Arc<Self>,
        ip: IpAddr,
        max_total: usize,
        max_per_ip: usize,
    ) -> Result<Permit, LimitHit> {
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if self.total.load(Ordering::Relaxed) >= max_total {
            return Err(LimitHit::Total(max_total));
        }
        let n = per_ip.entry(ip).or_insert(0);
        if *n >= max_per_ip {
            return Err(LimitHit::PerIp(max_per_ip));
        }
        *n += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(Permit {
            limiter: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut per_ip = self
            .limiter
            .per_ip
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
        self.limiter.total.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn total_and_per_ip_limits_and_release() {
        let l = Arc::new(ConnLimiter::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let p1 = l.try_acquire(a, 3, 2).unwrap();
        let _p2 = l.try_acquire(a, 3, 2).unwrap();
        assert_eq!(l.try_acquire(a, 3, 2).unwrap_err(), LimitHit::PerIp(2));
        let _p3 = l.try_acquire(b, 3, 2).unwrap();
        assert_eq!(l.try_acquire(b, 3, 2).unwrap_err(), LimitHit::Total(3));
        assert_eq!(l.open(), 3);
        drop(p1);
        assert_eq!(l.open(), 2);
        let _p4 = l.try_acquire(a, 3, 2).unwrap();
    }
}
