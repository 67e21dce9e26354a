//! Connection limits at accept, before a byte is read: open connections in total and per
//! source IP, and new connections per second per source IP. A permit is held for a
//! connection's life. A refused connection costs an accept and a close, nothing more: no
//! ClientHello parse, no backend connect.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Which limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitHit {
    /// `max_connections` reached.
    Total(usize),
    /// `max_connections_per_ip` reached for this source.
    PerIp(usize),
    /// `new_connections_per_second_per_ip` used up by this source in the current second.
    PerIpRate(usize),
}

impl LimitHit {
    /// Label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            LimitHit::Total(_) => "max_connections",
            LimitHit::PerIp(_) => "max_connections_per_ip",
            LimitHit::PerIpRate(_) => "new_connections_per_second_per_ip",
        }
    }

    /// The limit's value.
    pub fn max(&self) -> usize {
        match self {
            LimitHit::Total(n) | LimitHit::PerIp(n) | LimitHit::PerIpRate(n) => *n,
        }
    }

    fn index(&self) -> usize {
        match self {
            LimitHit::Total(_) => 0,
            LimitHit::PerIp(_) => 1,
            LimitHit::PerIpRate(_) => 2,
        }
    }
}

/// A flood of refusals is logged once every this many seconds, with the count it stands for.
const LOG_EVERY_SECS: u64 = 10;

/// Refusals of one limit (or one tenant's limits) and when a line about them was last
/// logged, so that a flood gives one log line per interval instead of one per refusal.
#[derive(Debug, Default)]
pub struct RefusalLog {
    /// Seconds since the Unix epoch of the last line; 0: none yet.
    logged: AtomicU64,
    /// Refusals since that line.
    unlogged: AtomicU64,
}

impl RefusalLog {
    /// Counts a refusal; returns how many refusals a line should report when one is due
    /// (the first refusal, then at most one line every `LOG_EVERY_SECS`).
    pub fn refused(&self) -> Option<u64> {
        let n = self.unlogged.fetch_add(1, Ordering::Relaxed) + 1;
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.logged.load(Ordering::Relaxed);
        (t >= last + LOG_EVERY_SECS
            && self
                .logged
                .compare_exchange(last, t, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok())
        .then(|| {
            self.unlogged.fetch_sub(n, Ordering::Relaxed);
            n
        })
    }

    /// Refusals not reported by a line yet.
    pub fn unlogged(&self) -> u64 {
        self.unlogged.load(Ordering::Relaxed)
    }
}

/// Per-source state, under one lock.
#[derive(Debug)]
struct Sources {
    /// Connections open now, per source.
    open: HashMap<IpAddr, usize>,
    /// Connections admitted per source in the current one-second window.
    started: HashMap<IpAddr, usize>,
    /// When the current window began; the counts are dropped as a whole when it ends, so
    /// the map holds only the sources of the last second.
    window: Instant,
}

impl Default for Sources {
    fn default() -> Self {
        Sources {
            open: HashMap::new(),
            started: HashMap::new(),
            window: Instant::now(),
        }
    }
}

/// Counts open connections; shared by every accept loop.
#[derive(Debug, Default)]
pub struct ConnLimiter {
    total: AtomicUsize,
    per_ip: Mutex<Sources>,
    /// Refusals per limit (see `LimitHit::index`).
    refusals: [RefusalLog; 3],
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
        per_ip_per_second: usize,
    ) -> Result<Permit, LimitHit> {
        let mut src = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if self.total.load(Ordering::Relaxed) >= max_total {
            return Err(LimitHit::Total(max_total));
        }
        if src.window.elapsed() >= Duration::from_secs(1) {
            src.window = Instant::now();
            src.started.clear();
        }
        let started = src.started.get(&ip).copied().unwrap_or(0);
        if started >= per_ip_per_second {
            return Err(LimitHit::PerIpRate(per_ip_per_second));
        }
        let n = src.open.entry(ip).or_insert(0);
        if *n >= max_per_ip {
            return Err(LimitHit::PerIp(max_per_ip));
        }
        *n += 1;
        src.started.insert(ip, started + 1);
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(Permit {
            limiter: Arc::clone(self),
            ip,
        })
    }
}

impl ConnLimiter {
    /// Counts a refusal by `hit`; how many refusals of that limit a log line should report,
    /// when one is due (see [`RefusalLog`]).
    pub fn log_refusal(&self, hit: LimitHit) -> Option<u64> {
        self.refusals[hit.index()].refused()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut src = self
            .limiter
            .per_ip
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = src.open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                src.open.remove(&self.ip);
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
        let p1 = l.try_acquire(a, 3, 2, 100).unwrap();
        let _p2 = l.try_acquire(a, 3, 2, 100).unwrap();
        assert_eq!(l.try_acquire(a, 3, 2, 100).unwrap_err(), LimitHit::PerIp(2));
        let _p3 = l.try_acquire(b, 3, 2, 100).unwrap();
        assert_eq!(l.try_acquire(b, 3, 2, 100).unwrap_err(), LimitHit::Total(3));
        assert_eq!(l.open(), 3);
        drop(p1);
        assert_eq!(l.open(), 2);
        let _p4 = l.try_acquire(a, 3, 2, 100).unwrap();
    }

    #[test]
    fn new_connections_per_second_per_source() {
        let l = Arc::new(ConnLimiter::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        // Short connections: each closes before the next, the rate still counts them.
        for _ in 0..3 {
            drop(l.try_acquire(a, 100, 100, 3).unwrap());
        }
        assert_eq!(
            l.try_acquire(a, 100, 100, 3).unwrap_err(),
            LimitHit::PerIpRate(3)
        );
        drop(l.try_acquire(b, 100, 100, 3).unwrap());
        std::thread::sleep(Duration::from_millis(1050));
        drop(l.try_acquire(a, 100, 100, 3).unwrap());
        assert_eq!(l.open(), 0);
    }

    #[test]
    fn a_flood_of_refusals_is_logged_once_per_interval() {
        let l = ConnLimiter::default();
        let hit = LimitHit::PerIpRate(3);
        assert_eq!(l.log_refusal(hit), Some(1), "the first refusal is logged");
        assert_eq!(l.log_refusal(hit), None);
        assert_eq!(l.log_refusal(hit), None);
        assert_eq!(
            l.log_refusal(LimitHit::PerIp(2)),
            Some(1),
            "each limit on its own"
        );
        assert_eq!(l.refusals[hit.index()].unlogged(), 2);
    }
}
