//! Idleness, from what the host sees, and the wakes sni-proxy asks for.
//!
//! Every `--idle-interval` hostd reads each tenant's activity from sni-proxy (connections
//! open now, the last one opened or closed, over all its names and both listeners) and
//! samples the CPU of its workload cgroup (its containers; the engine's own work, much of it
//! answering hostd, is left out). A tenant is idle while it has no open connection, none opened
//! or closed, its CPU stays below its policy's `cpu_below`, and no `wake_at` time came; idle
//! for `freeze_after` it is frozen, idle for `sleep_after` it is put to sleep (see
//! `crate::power`). The clock starts when hostd first sees a tenant, so a restarted hostd
//! gives every tenant a full window again. Without sni-proxy nothing could wake a tenant,
//! so nothing is put to sleep.
//!
//! sni-proxy asks for wakes on a `watch-wakes` session hostd keeps open: each ask wakes
//! its tenant (once at a time per tenant); the proxy forwards the connections it holds as
//! soon as the routes are awake again.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use m8trx_spec::idle::Idle;

use crate::api::Daemon;
use crate::host::Host;
use crate::proxy_routes::{Activity, ProxyAdmin};
use crate::record::{now_secs, Power, Record};

/// What the idle policy asks of a tenant now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Freeze it (idle for `freeze_after`).
    Freeze,
    /// Put it to sleep (idle for `sleep_after`).
    Sleep,
    /// Wake it (a `wake_at` time came, or connections wait for it).
    Wake,
}

/// The transition `policy` asks for a tenant in `power`, idle for `idle_for` seconds;
/// `wake_due` when a `wake_at` time came or connections are held for it.
pub fn decide(power: Power, policy: &Idle, idle_for: u64, wake_due: bool) -> Option<Transition> {
    let (freeze, sleep) = (policy.freeze_after.0, policy.sleep_after.0);
    let reached = |w: u64| w != 0 && idle_for >= w;
    match power {
        _ if wake_due => (power != Power::Active).then_some(Transition::Wake),
        Power::Active if reached(sleep) => Some(Transition::Sleep),
        Power::Active if reached(freeze) => Some(Transition::Freeze),
        Power::Frozen if reached(sleep) => Some(Transition::Sleep),
        _ => None,
    }
}

/// Whether one of `patterns` names a minute in (`after`, `until`] (seconds since the epoch).
pub fn wake_due(patterns: &[String], after: u64, until: u64) -> bool {
    let (Some(from), Ok(until)) = (
        chrono::DateTime::from_timestamp(i64::try_from(after).unwrap_or(i64::MAX), 0),
        i64::try_from(until),
    ) else {
        return false;
    };
    patterns.iter().any(|p| {
        m8trx_spec::idle::parse_cron(p)
            .ok()
            .and_then(|c| c.find_next_occurrence(&from, false).ok())
            .is_some_and(|next| next.timestamp() <= until)
    })
}

#[derive(Debug)]
struct Seen {
    /// Seconds since the epoch of the last sign of life.
    last_active: u64,
    /// The last CPU sample of the envelope while awake: when, and nanoseconds used.
    cpu: Option<(Instant, u64)>,
}

/// The idle bookkeeping of one hostd.
#[derive(Debug, Default)]
pub struct Idler {
    seen: HashMap<String, Seen>,
    last_round: Option<u64>,
}

impl Idler {
    /// One round: read activity, sample CPU, apply each serving tenant's policy. Returns
    /// the transitions made (or attempted: failures are logged).
    pub async fn round(&mut self, host: &Host) -> Vec<(String, Transition)> {
        let Some(sock) = host.cfg().proxy_admin.clone() else {
            return Vec::new();
        };
        let now = now_secs();
        let after = self.last_round.replace(now).unwrap_or(now);
        let activity = match ProxyAdmin::new(sock).activity().await {
            Ok(a) => a,
            Err(e) => {
                // Without the proxy's view nothing is known to be idle: no transition.
                tracing::warn!(target: "idle", error = %e, "cannot read sni-proxy's activity; no tenant changes power this round");
                return Vec::new();
            }
        };
        let Ok(records) = host.records() else {
            return Vec::new();
        };
        self.seen
            .retain(|n, _| records.iter().any(|r| r.name() == n && r.serving()));
        let cpu = cpu_samples(host, &records).await;
        let mut todo = Vec::new();
        for rec in records.iter().filter(|r| r.serving()) {
            let policy = rec.spec.idle();
            let a = activity.get(rec.name()).copied().unwrap_or_default();
            let seen = self.seen.entry(rec.name().to_owned()).or_insert(Seen {
                last_active: now,
                cpu: None,
            });
            let due = wake_due(&policy.wake_at, after, now);
            observe(
                seen,
                rec,
                &policy,
                a,
                cpu.get(rec.name()).copied(),
                now,
                due,
            );
            if let Some(t) = host.touched(rec.name()) {
                seen.last_active = seen.last_active.max(t.min(now));
            }
            let idle_for = now.saturating_sub(seen.last_active);
            if let Some(t) = decide(rec.power, &policy, idle_for, due || a.held > 0) {
                tracing::info!(target: "idle", tenant = %rec.name(), ?t, idle_for, "idle policy");
                todo.push((rec.name().to_owned(), t));
            }
        }
        for (name, t) in &todo {
            let mut say = |l: String| tracing::info!(target: "idle", "{l}");
            let r = match t {
                Transition::Freeze => host
                    .idle_to(name, Power::Frozen, &mut say)
                    .await
                    .map(|_| ()),
                Transition::Sleep => host
                    .idle_to(name, Power::Asleep, &mut say)
                    .await
                    .map(|_| ()),
                Transition::Wake => host.wake(name, &mut say).await.map(|_| ()),
            };
            if let Err(e) = r {
                tracing::error!(target: "idle", tenant = %name, ?t, "{e}");
            }
        }
        todo
    }
}

/// Updates a tenant's last sign of life from the proxy's activity, its CPU and its power.
fn observe(
    seen: &mut Seen,
    rec: &Record,
    policy: &Idle,
    a: Activity,
    cpu_ns: Option<u64>,
    now: u64,
    due: bool,
) {
    if a.open > 0 || due {
        seen.last_active = now;
    }
    seen.last_active = seen.last_active.max(a.last_active.min(now));
    if rec.power != Power::Active {
        seen.cpu = None;
        return;
    }
    // A tenant just woken (or started) has a full window again.
    seen.last_active = seen.last_active.max(rec.power_since.min(now));
    let Some(ns) = cpu_ns else { return };
    if let Some((at, before)) = seen.cpu {
        let cores = ns.saturating_sub(before) as f64 / at.elapsed().as_nanos().max(1) as f64;
        tracing::debug!(target: "idle", tenant = %rec.name(), cores, open = a.open, "sampled");
        if cores >= policy.cpu_below {
            seen.last_active = now;
        }
    }
    seen.cpu = Some((Instant::now(), ns));
}

/// The CPU time of every awake tenant's workload, read off the async runtime.
async fn cpu_samples(host: &Host, records: &[Record]) -> HashMap<String, u64> {
    let cgroups: Vec<_> = records
        .iter()
        .filter(|r| r.awake())
        .map(|r| host.cgroups.tenant(r.name()))
        .collect();
    tokio::task::spawn_blocking(move || {
        cgroups
            .into_iter()
            .filter_map(|cg| Some((cg.name().to_owned(), cg.cpu_usage_ns().ok()?)))
            .collect()
    })
    .await
    .unwrap_or_default()
}

/// Applies the idle policies every `every`, for the daemon's life.
pub async fn watch(d: Arc<Daemon>, every: Duration) {
    let mut idler = Idler::default();
    loop {
        tokio::time::sleep(every).await;
        idler.round(d.host()).await;
    }
}

/// Keeps a `watch-wakes` session open to sni-proxy and wakes each tenant it names (one wake
/// at a time per tenant), for the daemon's life; reconnects when the proxy restarts.
pub async fn listen_for_wakes(d: Arc<Daemon>) {
    let Some(sock) = d.host().cfg().proxy_admin.clone() else {
        return;
    };
    let admin = ProxyAdmin::new(sock);
    let waking: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut warned = false;
    loop {
        match admin.watch_wakes().await {
            Ok(mut asks) => {
                tracing::info!(target: "wake", "listening for sni-proxy's wake asks");
                warned = false;
                while let Some(tenant) = asks.next().await {
                    if !waking
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(tenant.clone())
                    {
                        continue;
                    }
                    let (d, waking) = (Arc::clone(&d), Arc::clone(&waking));
                    tokio::spawn(async move {
                        let started = Instant::now();
                        let mut say = |l: String| tracing::info!(target: "wake", "{l}");
                        match d.host().wake(&tenant, &mut say).await {
                            Ok(_) => tracing::info!(target: "wake", %tenant,
                                ms = started.elapsed().as_millis() as u64, "woken for a connection"),
                            Err(e) => {
                                tracing::error!(target: "wake", %tenant, "wake asked by sni-proxy failed: {e}")
                            }
                        }
                        waking
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&tenant);
                    });
                }
                tracing::warn!(target: "wake", "sni-proxy closed the wake stream; reconnecting");
            }
            Err(e) if !warned => {
                tracing::warn!(target: "wake", error = %e, "cannot listen for sni-proxy's wake asks; retrying every second");
                warned = true;
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use m8trx_spec::idle::Window;

    fn policy(freeze: u64, sleep: u64) -> Idle {
        Idle {
            freeze_after: Window(freeze),
            sleep_after: Window(sleep),
            ..Idle::default()
        }
    }

    #[test]
    fn the_policy_freezes_then_sleeps_and_wakes_when_due() {
        let p = policy(60, 600);
        assert_eq!(decide(Power::Active, &p, 59, false), None);
        assert_eq!(
            decide(Power::Active, &p, 60, false),
            Some(Transition::Freeze)
        );
        assert_eq!(decide(Power::Frozen, &p, 60, false), None);
        assert_eq!(
            decide(Power::Frozen, &p, 600, false),
            Some(Transition::Sleep)
        );
        // Idle past both windows while active (hostd was busy): straight to sleep.
        assert_eq!(
            decide(Power::Active, &p, 700, false),
            Some(Transition::Sleep)
        );
        assert_eq!(decide(Power::Asleep, &p, 10_000, false), None);
        assert_eq!(
            decide(Power::Asleep, &p, 10_000, true),
            Some(Transition::Wake)
        );
        assert_eq!(decide(Power::Frozen, &p, 0, true), Some(Transition::Wake));
        assert_eq!(
            decide(Power::Active, &p, 10_000, true),
            None,
            "due keeps it awake"
        );
        // 0 turns a window off.
        assert_eq!(decide(Power::Active, &policy(0, 0), 1 << 40, false), None);
        assert_eq!(
            decide(Power::Active, &policy(0, 600), 600, false),
            Some(Transition::Sleep)
        );
        assert_eq!(decide(Power::Frozen, &policy(60, 0), 1 << 40, false), None);
    }

    #[test]
    fn a_wake_at_time_is_due_once_in_the_round_that_passes_it() {
        // 2026-12-07 07:00:00 UTC.
        let seven = 1_796_626_800;
        let at = vec!["0 7 * * *".to_owned()];
        assert!(wake_due(&at, seven - 30, seven));
        assert!(wake_due(&at, seven - 30, seven + 30));
        assert!(
            !wake_due(&at, seven, seven + 30),
            "already passed last round"
        );
        assert!(!wake_due(&at, seven - 120, seven - 60));
        assert!(!wake_due(&["not cron".to_owned()], 0, u64::MAX));
    }

    #[test]
    fn cpu_above_the_threshold_and_open_connections_count_as_activity() {
        let spec = m8trx_spec::tenant::TenantSpec::parse(
            "version: 1\nname: acme\ntemplate: baseline\nsubdomains: [a.m8trx.test]\n\
             limits: { cpu: 1, memory: 256Mi, pids: 64, disk: 1Gi }\nvolume: { loop_image: /x }\n\
             role: { arn: \"arn:aws:iam::1:role/r\", external_id: ext-1 }\n",
        )
        .unwrap();
        let mut rec = Record::new(spec, 1);
        rec.power_since = 0;
        let p = rec.spec.idle();
        let mut seen = Seen {
            last_active: 100,
            cpu: Some((Instant::now() - Duration::from_secs(1), 0)),
        };
        // A tenth of a core over the last second: busy (threshold 0.05).
        observe(
            &mut seen,
            &rec,
            &p,
            Activity::default(),
            Some(100_000_000),
            1000,
            false,
        );
        assert_eq!(seen.last_active, 1000);
        seen.last_active = 100;
        seen.cpu = Some((Instant::now() - Duration::from_secs(1), 0));
        observe(
            &mut seen,
            &rec,
            &p,
            Activity::default(),
            Some(1_000_000),
            1000,
            false,
        );
        assert_eq!(seen.last_active, 100, "a thousandth of a core is idle");
        let open = Activity {
            open: 1,
            ..Activity::default()
        };
        observe(&mut seen, &rec, &p, open, None, 2000, false);
        assert_eq!(
            seen.last_active, 2000,
            "an open connection (a WebSocket) is activity"
        );
        let closed = Activity {
            open: 0,
            last_active: 2500,
            held: 0,
        };
        observe(&mut seen, &rec, &p, closed, None, 3000, false);
        assert_eq!(seen.last_active, 2500);
    }
}
