//! hostd's Prometheus metrics, served on `--metrics-listen` at `/metrics` (text format).
//!
//! Per tenant, from what the host sees: its cgroup envelope (CPU and throttled time, memory
//! now and at peak, OOM kills, processes, block I/O), its bridges (bytes and packets each
//! way), its engine (up, containers by state, restarts), its record (lifecycle state, power
//! state, last deploy), and what hostd did to it (power changes, wakes and their failures,
//! deploys). Readings of the kernel and of the engines are taken by a background refresh
//! (every `REFRESH`), never at scrape time, and never from a frozen or sleeping engine.
//! Names follow one scheme across the host's daemons: `m8trx_<component>_…`, here
//! `m8trx_tenant_…` for per-tenant series and `m8trx_hostd_…` for hostd's own.

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::cgroup::Stats;
use crate::record::{Desired, Power, Record};

/// How often the per-tenant readings are refreshed.
pub const REFRESH: Duration = Duration::from_secs(10);
/// A tenant's bandwidth limit is logged at most this often (seconds).
const LIMIT_LOG_EVERY: u64 = 600;

/// One tenant's readings.
#[derive(Debug, Clone, Default)]
pub struct TenantSample {
    /// Its name.
    pub name: String,
    /// Its cgroup envelope's usage (absent when the cgroup could not be read).
    pub cgroup: Option<Stats>,
    /// Its bridges, summed: bytes and packets the tenant sent (the bridges received) and
    /// received (the bridges sent).
    pub net: Net,
    /// Containers by state (`running`, `exited`, …), when its engine was asked.
    pub containers: Vec<(String, u64)>,
    /// Restarts of its containers, summed.
    pub restarts: u64,
    /// Times its egress and ingress token buckets ran dry (tc's `overlimits`).
    pub limited: (u64, u64),
    /// Whether its engine runs.
    pub engine_up: bool,
    /// Where it is going (`present`, `stopped`, `absent`) and whether it is quarantined.
    pub desired: Desired,
    /// Whether its networking is cut.
    pub quarantined: bool,
    /// Running, frozen or asleep.
    pub power: Power,
    /// When its last deploy completed or failed (seconds since the epoch), and whether it
    /// worked.
    pub deploy: Option<(u64, bool)>,
}

/// Bytes and packets on a tenant's bridges, from the tenant's side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Net {
    /// Sent by the tenant's containers (egress).
    pub tx_bytes: u64,
    /// Received by them (ingress).
    pub rx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Packets received.
    pub rx_packets: u64,
}

impl Net {
    /// Sums `/sys/class/net/<bridge>/statistics` over the bridges named `<prefix>…`. A
    /// bridge's own receive counters are what the containers sent.
    pub fn of_bridges(sys_class_net: &std::path::Path, prefix: &str) -> Net {
        let mut n = Net::default();
        let Ok(entries) = std::fs::read_dir(sys_class_net) else {
            return n;
        };
        for e in entries.flatten() {
            // The tenant's bridges only (its IFB devices are named `m8i-…`).
            if !e.file_name().to_string_lossy().starts_with(prefix)
                || !e.path().join("bridge").is_dir()
            {
                continue;
            }
            let stat = |f: &str| -> u64 {
                std::fs::read_to_string(e.path().join("statistics").join(f))
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(0)
            };
            n.tx_bytes += stat("rx_bytes");
            n.rx_bytes += stat("tx_bytes");
            n.tx_packets += stat("rx_packets");
            n.rx_packets += stat("tx_packets");
        }
        n
    }
}

/// What a sample shows of a record, before the kernel and the engine are read.
pub fn sample_of(rec: &Record) -> TenantSample {
    TenantSample {
        name: rec.name().to_owned(),
        desired: rec.desired,
        quarantined: rec.quarantined,
        power: rec.power,
        deploy: rec
            .deployment
            .as_ref()
            .and_then(|d| match (&d.error, d.deployed_at) {
                (Some(_), _) => Some((d.accepted_at, false)),
                (None, Some(at)) => Some((at, true)),
                (None, None) => None,
            }),
        ..TenantSample::default()
    }
}

/// The per-tenant readings, encoded at each scrape from the last refresh.
#[derive(Debug, Default)]
struct Tenants(Arc<RwLock<Vec<TenantSample>>>);

/// Every metric hostd exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    samples: Arc<RwLock<Vec<TenantSample>>>,
    /// Power changes made, by tenant and state reached.
    pub power_changes: Family<[(&'static str, String); 2], Counter>,
    /// Wakes, by tenant, state woken from and result (`ok`, `failed`).
    pub wakes: Family<[(&'static str, String); 3], Counter>,
    /// Deploys, by tenant and result (`ok`, `failed`, `refused`).
    pub deploys: Family<[(&'static str, String); 2], Counter>,
    /// When a tenant's bandwidth limit was last logged (seconds since the epoch).
    limit_logged: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let power_changes = Family::default();
        let wakes = Family::default();
        let deploys = Family::default();
        registry.register(
            "m8trx_hostd_power_changes",
            "Tenants frozen, put to sleep or woken, by state reached",
            power_changes.clone(),
        );
        registry.register(
            "m8trx_hostd_wakes",
            "Wakes by the state woken from and their result (failed: put back to sleep)",
            wakes.clone(),
        );
        registry.register(
            "m8trx_hostd_deploys",
            "Compose deploys by result",
            deploys.clone(),
        );
        let samples = Arc::new(RwLock::new(Vec::new()));
        registry.register_collector(Box::new(Tenants(Arc::clone(&samples))));
        Self {
            registry,
            samples,
            power_changes,
            wakes,
            deploys,
            limit_logged: Default::default(),
        }
    }
}

impl Metrics {
    /// Replaces the per-tenant readings (the background refresh calls it); a tenant whose
    /// bandwidth bucket ran dry since the last reading gets one log line (at most one every
    /// `LIMIT_LOG_EVERY` seconds per tenant).
    pub fn set_samples(&self, samples: Vec<TenantSample>) {
        let mut old = self.samples.write().unwrap_or_else(|p| p.into_inner());
        let now = crate::record::now_secs();
        let mut logged = self.limit_logged.lock().unwrap_or_else(|p| p.into_inner());
        for s in &samples {
            let Some(before) = old.iter().find(|o| o.name == s.name) else {
                continue;
            };
            let (eg, inn) = (
                s.limited.0.saturating_sub(before.limited.0),
                s.limited.1.saturating_sub(before.limited.1),
            );
            let last = logged.get(&s.name).copied().unwrap_or(0);
            if (eg > 0 || inn > 0) && now >= last + LIMIT_LOG_EVERY {
                logged.insert(s.name.clone(), now);
                tracing::warn!(target: "limit", tenant = %s.name, egress_held = eg, ingress_held = inn,
                    "limit hit: bandwidth (limits.egress / limits.ingress); packets held back since the last reading");
            }
        }
        *old = samples;
    }

    /// Counts a power change of `tenant` to `to`.
    pub fn power_changed(&self, tenant: &str, to: Power) {
        self.power_changes
            .get_or_create(&[
                ("tenant", tenant.to_owned()),
                ("to", crate::power::word(to).to_owned()),
            ])
            .inc();
    }

    /// Counts a wake of `tenant` from `from` and whether it worked.
    pub fn woke(&self, tenant: &str, from: Power, ok: bool) {
        self.wakes
            .get_or_create(&[
                ("tenant", tenant.to_owned()),
                ("from", crate::power::word(from).to_owned()),
                ("result", if ok { "ok" } else { "failed" }.to_owned()),
            ])
            .inc();
    }

    /// Counts a deploy of `tenant` ending in `result` (`ok`, `failed`, `refused`).
    pub fn deployed(&self, tenant: &str, result: &str) {
        self.deploys
            .get_or_create(&[("tenant", tenant.to_owned()), ("result", result.to_owned())])
            .inc();
    }

    /// The text exposition of everything.
    pub fn render(&self) -> Result<String, fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// One per-tenant family: its name, help, type and each tenant's labelled values.
fn family<V: Copy>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[TenantSample],
    values: impl Fn(&TenantSample) -> Vec<(Vec<(&'static str, String)>, V)>,
    encode: impl Fn(V, prometheus_client::encoding::MetricEncoder) -> fmt::Result,
    metric_type: MetricType,
) -> fmt::Result {
    let mut m = encoder.encode_descriptor(name, help, None, metric_type)?;
    for s in samples {
        for (mut labels, v) in values(s) {
            labels.insert(0, ("tenant", s.name.clone()));
            encode(v, m.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

fn counter(v: u64, e: prometheus_client::encoding::MetricEncoder) -> fmt::Result {
    ConstCounter::new(v).encode(e)
}

fn seconds(v: f64, e: prometheus_client::encoding::MetricEncoder) -> fmt::Result {
    ConstCounter::new(v).encode(e)
}

fn gauge(v: i64, e: prometheus_client::encoding::MetricEncoder) -> fmt::Result {
    ConstGauge::new(v).encode(e)
}

/// A value from the cgroup, or nothing when it was not read.
fn cg<V>(s: &TenantSample, f: impl Fn(&Stats) -> V) -> Vec<(Vec<(&'static str, String)>, V)> {
    s.cgroup
        .as_ref()
        .map(|c| (Vec::new(), f(c)))
        .into_iter()
        .collect()
}

fn both<V>(out: V, inn: V) -> Vec<(Vec<(&'static str, String)>, V)> {
    vec![
        (vec![("direction", "egress".to_owned())], out),
        (vec![("direction", "ingress".to_owned())], inn),
    ]
}

fn rw<V>(read: V, write: V) -> Vec<(Vec<(&'static str, String)>, V)> {
    vec![
        (vec![("direction", "read".to_owned())], read),
        (vec![("direction", "write".to_owned())], write),
    ]
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Collector for Tenants {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        let samples = self.0.read().unwrap_or_else(|p| p.into_inner());
        let s = samples.as_slice();
        use MetricType::{Counter as C, Gauge as G};
        let ns = |v: u64| v as f64 / 1e9;
        family(
            &mut e,
            "m8trx_tenant_cpu_seconds",
            "CPU time used by the tenant's envelope (engine and containers)",
            s,
            |t| cg(t, |c| ns(c.cpu_ns)),
            seconds,
            C,
        )?;
        family(
            &mut e,
            "m8trx_tenant_cpu_throttled_seconds",
            "Time the tenant was held back by its CPU limit",
            s,
            |t| cg(t, |c| ns(c.throttled_ns)),
            seconds,
            C,
        )?;
        family(
            &mut e,
            "m8trx_tenant_memory_bytes",
            "Memory charged to the tenant now (page cache included)",
            s,
            |t| cg(t, |c| clamp(c.memory)),
            gauge,
            G,
        )?;
        family(
            &mut e,
            "m8trx_tenant_memory_peak_bytes",
            "The most memory ever charged to the tenant",
            s,
            |t| cg(t, |c| clamp(c.memory_peak)),
            gauge,
            G,
        )?;
        family(
            &mut e,
            "m8trx_tenant_oom_kills",
            "Processes of the tenant the kernel OOM-killed",
            s,
            |t| cg(t, |c| c.oom_kills),
            counter,
            C,
        )?;
        family(
            &mut e,
            "m8trx_tenant_pids",
            "Processes and threads of the tenant now",
            s,
            |t| cg(t, |c| clamp(c.pids)),
            gauge,
            G,
        )?;
        family(
            &mut e,
            "m8trx_tenant_io_bytes",
            "Bytes the tenant read from and wrote to block devices",
            s,
            |t| {
                t.cgroup
                    .map(|c| rw(c.io_read_bytes, c.io_write_bytes))
                    .unwrap_or_default()
            },
            counter,
            C,
        )?;
        family(
            &mut e,
            "m8trx_tenant_io_operations",
            "Block I/O operations of the tenant",
            s,
            |t| {
                t.cgroup
                    .map(|c| rw(c.io_reads, c.io_writes))
                    .unwrap_or_default()
            },
            counter,
            C,
        )?;
        family(&mut e, "m8trx_tenant_network_bytes", "Bytes the tenant's containers sent (egress) and received (ingress) through its bridges", s,
            |t| both(t.net.tx_bytes, t.net.rx_bytes), counter, C)?;
        family(
            &mut e,
            "m8trx_tenant_network_packets",
            "Packets through the tenant's bridges",
            s,
            |t| both(t.net.tx_packets, t.net.rx_packets),
            counter,
            C,
        )?;
        family(&mut e, "m8trx_tenant_bandwidth_limited", "Packets held back because the tenant's egress or ingress bucket was empty (its limits.egress / limits.ingress)", s,
            |t| both(t.limited.0, t.limited.1), counter, C)?;
        family(
            &mut e,
            "m8trx_tenant_containers",
            "The tenant's containers by state (its engine asked while awake)",
            s,
            |t| {
                t.containers
                    .iter()
                    .map(|(st, n)| (vec![("state", st.clone())], clamp(*n)))
                    .collect()
            },
            gauge,
            G,
        )?;
        family(
            &mut e,
            "m8trx_tenant_container_restarts",
            "Restarts of the tenant's containers, summed",
            s,
            |t| vec![(Vec::new(), t.restarts)],
            counter,
            C,
        )?;
        family(
            &mut e,
            "m8trx_tenant_engine_up",
            "1 when the tenant's engine runs",
            s,
            |t| vec![(Vec::new(), i64::from(t.engine_up))],
            gauge,
            G,
        )?;
        family(
            &mut e,
            "m8trx_tenant_state",
            "1 for the tenant's lifecycle state (present, stopped, absent, quarantined)",
            s,
            |t| {
                let state = match (t.desired, t.quarantined) {
                    (_, true) => "quarantined",
                    (Desired::Present, _) => "present",
                    (Desired::Stopped, _) => "stopped",
                    (Desired::Absent, _) => "absent",
                };
                vec![(vec![("state", state.to_owned())], 1)]
            },
            gauge,
            G,
        )?;
        family(
            &mut e,
            "m8trx_tenant_power",
            "1 for the tenant's power state (active, frozen, asleep)",
            s,
            |t| vec![(vec![("power", crate::power::word(t.power).to_owned())], 1)],
            gauge,
            G,
        )?;
        family(
            &mut e,
            "m8trx_tenant_last_deploy_timestamp_seconds",
            "When the tenant's last deploy completed or failed",
            s,
            |t| {
                t.deploy
                    .map(|(at, _)| (Vec::new(), clamp(at)))
                    .into_iter()
                    .collect()
            },
            gauge,
            G,
        )?;
        family(
            &mut e,
            "m8trx_tenant_last_deploy_success",
            "1 when the tenant's last deploy worked, 0 when it failed",
            s,
            |t| {
                t.deploy
                    .map(|(_, ok)| (Vec::new(), i64::from(ok)))
                    .into_iter()
                    .collect()
            },
            gauge,
            G,
        )?;
        Ok(())
    }
}

/// Reads every tenant's cgroup, bridges and (awake) engine and replaces the samples.
pub async fn refresh(host: &crate::host::Host) {
    let Ok(records) = host.records() else {
        return;
    };
    let mut samples = Vec::with_capacity(records.len());
    for rec in &records {
        let mut s = sample_of(rec);
        let cg = host.cgroups.tenant(rec.name());
        let prefix = format!("m8t-{}-", rec.slot);
        let fw = host.cfg.firewall.clone();
        let slot = rec.slot;
        let (stats, net, limited) = tokio::task::spawn_blocking(move || {
            (
                cg.exists().then(|| cg.stats().ok()).flatten(),
                Net::of_bridges(std::path::Path::new("/sys/class/net"), &prefix),
                crate::shaping::limited(&fw, slot),
            )
        })
        .await
        .unwrap_or_default();
        s.cgroup = stats;
        s.net = net;
        s.limited = limited;
        s.engine_up = crate::engine::Engine::adopt(host.engine_config(rec)).is_some();
        if rec.awake() && s.engine_up {
            if let Ok(docker) = host.docker_to_read(rec).await {
                (s.containers, s.restarts) = containers(&docker, rec).await;
            }
        }
        samples.push(s);
    }
    host.metrics.set_samples(samples);
}

/// The project's containers by state, and their restarts summed.
async fn containers(docker: &bollard::Docker, rec: &Record) -> (Vec<(String, u64)>, u64) {
    use bollard::query_parameters::{InspectContainerOptions, ListContainersOptionsBuilder};
    let filter = crate::compose::project_filter(&rec.spec.name.compose_project(), None);
    let Ok(list) = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filter)
                .build(),
        ))
        .await
    else {
        return (Vec::new(), 0);
    };
    let mut by_state: std::collections::BTreeMap<String, u64> = Default::default();
    let mut restarts = 0;
    for c in list {
        let state = c.state.map_or("unknown".into(), |s| s.to_string());
        *by_state.entry(state).or_default() += 1;
        if let Some(id) = c.id {
            if let Ok(info) = docker
                .inspect_container(&id, None::<InspectContainerOptions>)
                .await
            {
                restarts += u64::try_from(info.restart_count.unwrap_or(0)).unwrap_or(0);
            }
        }
    }
    (by_state.into_iter().collect(), restarts)
}

/// Refreshes the per-tenant samples every [`REFRESH`], for the daemon's life.
pub async fn keep_fresh(d: std::sync::Arc<crate::api::Daemon>) {
    loop {
        refresh(d.host()).await;
        tokio::time::sleep(REFRESH).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_tenant_series_and_events_render_in_one_scheme() {
        let m = Metrics::default();
        m.set_samples(vec![TenantSample {
            name: "acme".into(),
            cgroup: Some(Stats {
                cpu_ns: 1_500_000_000,
                memory: 4096,
                oom_kills: 2,
                io_write_bytes: 10,
                ..Stats::default()
            }),
            net: Net {
                tx_bytes: 7,
                rx_bytes: 9,
                ..Net::default()
            },
            containers: vec![("running".into(), 3)],
            engine_up: true,
            desired: Desired::Present,
            power: Power::Frozen,
            deploy: Some((1_700_000_000, true)),
            ..TenantSample::default()
        }]);
        m.woke("acme", Power::Asleep, false);
        m.power_changed("acme", Power::Frozen);
        let text = m.render().unwrap();
        for want in [
            r#"m8trx_tenant_cpu_seconds_total{tenant="acme"} 1.5"#,
            r#"m8trx_tenant_memory_bytes{tenant="acme"} 4096"#,
            r#"m8trx_tenant_oom_kills_total{tenant="acme"} 2"#,
            r#"m8trx_tenant_io_bytes_total{tenant="acme",direction="write"} 10"#,
            r#"m8trx_tenant_network_bytes_total{tenant="acme",direction="egress"} 7"#,
            r#"m8trx_tenant_network_bytes_total{tenant="acme",direction="ingress"} 9"#,
            r#"m8trx_tenant_containers{tenant="acme",state="running"} 3"#,
            r#"m8trx_tenant_engine_up{tenant="acme"} 1"#,
            r#"m8trx_tenant_state{tenant="acme",state="present"} 1"#,
            r#"m8trx_tenant_power{tenant="acme",power="frozen"} 1"#,
            r#"m8trx_tenant_last_deploy_success{tenant="acme"} 1"#,
            r#"m8trx_hostd_wakes_total{tenant="acme",from="asleep",result="failed"} 1"#,
            r#"m8trx_hostd_power_changes_total{tenant="acme",to="frozen"} 1"#,
        ] {
            assert!(text.contains(want), "{want} missing:\n{text}");
        }
    }

    #[test]
    fn bridges_are_summed_from_the_tenant_side() {
        let root = std::env::temp_dir().join(format!("m8trx-net-{}", std::process::id()));
        for (dev, rx, tx) in [
            ("m8t-3-0", 100, 5),
            ("m8t-3-1", 20, 1),
            ("m8t-4-0", 999, 999),
        ] {
            let s = root.join(dev).join("statistics");
            std::fs::create_dir_all(&s).unwrap();
            std::fs::create_dir_all(root.join(dev).join("bridge")).unwrap();
            for (f, v) in [
                ("rx_bytes", rx),
                ("tx_bytes", tx),
                ("rx_packets", 1),
                ("tx_packets", 1),
            ] {
                std::fs::write(s.join(f), format!("{v}\n")).unwrap();
            }
        }
        let n = Net::of_bridges(&root, "m8t-3-");
        assert_eq!((n.tx_bytes, n.rx_bytes, n.tx_packets), (120, 6, 2));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
