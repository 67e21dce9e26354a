//! Connections to a frozen or sleeping tenant: held in a bounded per-tenant queue (still
//! without terminating TLS: the ClientHello bytes wait with the connection) while hostd is
//! asked to wake the tenant, then routed as usual once hostd marks the route awake. hostd
//! listens for the asks on the admin socket (`watch-wakes`); the proxy only asks, hostd
//! decides. Past the queue's size or its deadline a connection is closed cleanly.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;
use tracing::{info, warn};

use crate::reload::Routes;
use crate::routes::Route;

/// How often a held connection asks again while its tenant stays asleep (hostd may have
/// restarted and missed the first ask).
const ASK_AGAIN: Duration = Duration::from_secs(2);

/// How holding a connection ended.
#[derive(Debug)]
pub enum Held {
    /// The tenant is awake: route the connection here.
    Awake(Arc<Route>),
    /// The tenant already has this many connections held.
    QueueFull(usize),
    /// The tenant did not wake within the deadline.
    TimedOut(Duration),
    /// The route went away while the connection waited (tenant stopped or removed).
    Gone,
}

impl Held {
    /// The access log's outcome for a connection that was not routed.
    pub fn outcome(&self) -> &'static str {
        match self {
            Held::Awake(_) => "woken",
            Held::QueueFull(_) => "wake_queue_full",
            Held::TimedOut(_) => "wake_timeout",
            Held::Gone => "wake_route_gone",
        }
    }
}

#[derive(Debug, Default)]
struct Queue {
    held: usize,
    asked: Option<Instant>,
}

/// The per-tenant queues and the channel hostd's wake listeners read.
#[derive(Debug)]
pub struct Waker {
    asks: broadcast::Sender<String>,
    queues: Mutex<HashMap<String, Queue>>,
}

impl Default for Waker {
    fn default() -> Self {
        Self {
            asks: broadcast::Sender::new(256),
            queues: Mutex::new(HashMap::new()),
        }
    }
}

/// Takes a connection out of its tenant's queue when dropped.
struct Slot<'a> {
    waker: &'a Waker,
    tenant: &'a str,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut q = self.waker.queues.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = q.get_mut(self.tenant) {
            e.held = e.held.saturating_sub(1);
            if e.held == 0 {
                q.remove(self.tenant);
            }
        }
    }
}

impl Waker {
    /// Holds a connection routed to sleeping `route` (found for `sni`) until the route is
    /// awake, at most `limit` connections per tenant and `timeout` each.
    pub async fn hold(
        &self,
        route: &Route,
        sni: Option<&str>,
        routes: &Routes,
        limit: usize,
        timeout: Duration,
    ) -> Held {
        let tenant = route.tenant.as_str();
        {
            let mut q = self.queues.lock().unwrap_or_else(|p| p.into_inner());
            let e = q.entry(tenant.to_owned()).or_default();
            if e.held >= limit {
                return Held::QueueFull(limit);
            }
            e.held += 1;
            if e.asked.is_none_or(|t| t.elapsed() >= ASK_AGAIN) {
                e.asked = Some(Instant::now());
                self.ask(tenant);
            }
        }
        let _slot = Slot {
            waker: self,
            tenant,
        };
        let mut version = routes.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match routes.current().route_for(sni) {
                Some(r) if r.tenant == tenant && !r.asleep => return Held::Awake(Arc::clone(r)),
                Some(r) if r.tenant == tenant => {}
                _ => return Held::Gone,
            }
            tokio::select! {
                _ = version.changed() => {}
                _ = tokio::time::sleep_until(deadline) => return Held::TimedOut(timeout),
                _ = tokio::time::sleep(ASK_AGAIN) => self.ask_again(tenant),
            }
        }
    }

    fn ask_again(&self, tenant: &str) {
        let mut q = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = q.get_mut(tenant) {
            if e.asked.is_none_or(|t| t.elapsed() >= ASK_AGAIN) {
                e.asked = Some(Instant::now());
                self.ask(tenant);
            }
        }
    }

    fn ask(&self, tenant: &str) {
        match self.asks.send(tenant.to_owned()) {
            Ok(n) => info!(tenant, listeners = n, "asked hostd to wake the tenant"),
            Err(_) => warn!(
                tenant,
                "a connection waits for a sleeping tenant but no hostd listens for wake requests \
                 (admin socket `watch-wakes`); it is closed at its deadline"
            ),
        }
    }

    /// A listener for wake asks, and the tenants that have connections held right now (a
    /// listener that just connected has missed their asks).
    pub fn listen(&self) -> (broadcast::Receiver<String>, Vec<String>) {
        let rx = self.asks.subscribe();
        let q = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        (rx, q.keys().cloned().collect())
    }

    /// Connections held now, per tenant (for the admin socket and metrics).
    pub fn held(&self) -> HashMap<String, usize> {
        self.queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(t, q)| (t.clone(), q.held))
            .collect()
    }
}
