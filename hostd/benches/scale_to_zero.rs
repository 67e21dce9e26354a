//! `make bench-scale-to-zero`: what sleeping buys and what waking costs, measured in one run
//! on this machine with the real sni-proxy, hostd, tenant engines and the host's dockerd.
//!
//! 1. Wake latency: an agent-shaped tenant (its own Caddy behind sni-proxy in passthrough,
//!    an app, a worker) frozen, or asleep, before each of `M8TRX_BENCH_ROUNDS` requests;
//!    the time to the first byte of a TLS request through sni-proxy (curl's
//!    `time_starttransfer`), p50 and p99, beside the same request to the awake tenant and
//!    the peers: the same three containers on the host's plain dockerd, paused
//!    (`docker unpause` then the request) and stopped (`docker start` of the stack, then
//!    the request, retried until Caddy answers).
//! 2. Density: `M8TRX_BENCH_TENANTS` such tenants, all awake, then 90% asleep: the host
//!    memory they cost (PSS of their engines, shims and containers; PSS so that the
//!    dockerd binary's pages shared by all engines are counted once) and their CPU, and
//!    from it the tenants per t3.xlarge and the cost per tenant per month at the stated
//!    price and mix.
//!
//! Needs root, `make test`'s environment (dockerd, the Caddy image) and the release build of
//! sni-proxy (`make bench-scale-to-zero` builds it). Not part of `make test`.
#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark: a panic is the report

#[path = "../tests/support/mod.rs"]
mod support;

mod agent;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use agent::{caddyfile, deploy_agent, env_num, percentile, ttfb};
use support::proxy::Proxy;
use support::{env, require_root, text, Cleanup, Daemon};

/// t3.xlarge, us-east-1, on demand (2026 price list): 4 vCPU, 16 GiB.
const HOST_PRICE_MONTH: f64 = 0.1664 * 730.0;
const HOST_MEMORY: f64 = 16.0 * 1024.0 * 1024.0 * 1024.0;
/// What the host keeps for itself: OS, containerd, hostd, sni-proxy, cred-broker, agents.
const HOST_RESERVED: f64 = 1.5 * 1024.0 * 1024.0 * 1024.0;
/// t3 baseline: 40% of each of the 4 vCPUs sustained without burst credits.
const HOST_BASELINE_CPU: f64 = 4.0 * 0.4;
/// Nitro attachments left for tenant EBS volumes (28 minus root volume, ENI and headroom).
const EBS_ATTACHMENTS: f64 = 24.0;
/// A small tenant's 10 GiB gp3 volume.
const EBS_VOLUME_MONTH: f64 = 10.0 * 0.08;
/// The mix assumed: a tenth of the tenants awake at any time.
const AWAKE_SHARE: f64 = 0.1;

/// One row of the latency table.
struct Row {
    what: String,
    p50: f64,
    p99: f64,
    failed: usize,
}

fn row(what: &str, samples: Vec<Option<f64>>) -> Row {
    let failed = samples.iter().filter(|s| s.is_none()).count();
    let mut ok: Vec<f64> = samples.into_iter().flatten().collect();
    assert!(!ok.is_empty(), "{what}: every request failed");
    Row {
        what: what.into(),
        p50: percentile(&mut ok, 0.5),
        p99: percentile(&mut ok, 0.99),
        failed,
    }
}

fn docker(args: &[&str]) -> String {
    let o = Command::new("docker").args(args).output().unwrap();
    assert!(o.status.success(), "docker {args:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

/// The peer: the same three containers on the host's plain dockerd, Caddy reached directly.
struct Plain {
    net: String,
    names: [String; 3],
}

impl Plain {
    fn up(id: u32, host: &str, caddy: &str, busybox: &str) -> Plain {
        let net = format!("m8trx-bench-{id}");
        docker(&["network", "create", &net]);
        let names = [
            format!("m8trx-bench-{id}-app"),
            format!("m8trx-bench-{id}-worker"),
            format!("m8trx-bench-{id}-caddy"),
        ];
        docker(&[
            "run",
            "-d",
            "--init",
            "--name",
            &names[0],
            "--network",
            &net,
            "--network-alias",
            "app",
            busybox,
            "sh",
            "-c",
            "mkdir -p /tmp/w && echo app > /tmp/w/index.html && exec httpd -f -p 8080 -h /tmp/w",
        ]);
        docker(&[
            "run",
            "-d",
            "--init",
            "--name",
            &names[1],
            "--network",
            &net,
            busybox,
            "sleep",
            "2147483647",
        ]);
        let file = caddyfile(host, false);
        docker(&["run", "-d", "--name", &names[2], "--network", &net, "-e", &format!("CADDYFILE={file}"),
            "-e", "HOME=/tmp", "-e", "XDG_DATA_HOME=/tmp/data", "-e", "XDG_CONFIG_HOME=/tmp/config",
            "--entrypoint", "/bin/sh", caddy, "-c",
            "printf '%s' \"$CADDYFILE\" > /tmp/Caddyfile && exec caddy run --config /tmp/Caddyfile --adapter caddyfile"]);
        Plain { net, names }
    }

    fn caddy_ip(&self) -> String {
        docker(&[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &self.names[2],
        ])
    }

    /// Waits until Caddy answers, then returns how long since `since`.
    fn first_byte(&self, host: &str, since: Instant) -> Option<f64> {
        let deadline = since + Duration::from_secs(30);
        loop {
            if ttfb(host, &format!("{}:443", self.caddy_ip()), 2).is_some() {
                return Some(since.elapsed().as_secs_f64());
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Plain {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("docker").args(["rm", "-f", n]).output();
        }
        let _ = Command::new("docker")
            .args(["network", "rm", &self.net])
            .output();
    }
}

/// Proportional set size (KiB) and CPU ticks of a process.
fn pss_and_ticks(pid: u32) -> Option<(u64, u64)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let pss = smaps
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some((
        pss,
        f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?,
    ))
}

/// Every process that serves a tenant of this benchmark — its engine, its containers'
/// processes, its containers' shims — by tenant: (PSS KiB, CPU ticks).
fn tenant_processes(prefix: &str) -> HashMap<String, (u64, u64)> {
    let mut by: HashMap<String, (u64, u64)> = HashMap::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        let mut tenant = cg.lines().find_map(|l| {
            let path = l.splitn(3, ':').nth(2)?;
            let t = path.strip_prefix("/m8trx/")?.split('/').next()?;
            t.starts_with(prefix).then(|| t.to_owned())
        });
        if tenant.is_none() {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim().starts_with("containerd-shim") {
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                tenant = cmd
                    .split_whitespace()
                    .skip_while(|w| *w != "-namespace")
                    .nth(1)
                    .and_then(|ns| ns.strip_prefix("m8trx-"))
                    .filter(|t| t.starts_with(prefix))
                    .map(str::to_owned);
            }
        }
        if let (Some(t), Some((pss, ticks))) = (tenant, pss_and_ticks(pid)) {
            let v = by.entry(t).or_default();
            v.0 += pss;
            v.1 += ticks;
        }
    }
    by
}

/// What a tenant's cgroup still holds (page cache and kernel memory included), in bytes.
fn cgroup_memory(tenant: &str) -> u64 {
    [
        format!("/sys/fs/cgroup/memory/m8trx/{tenant}/memory.usage_in_bytes"),
        format!("/sys/fs/cgroup/m8trx/{tenant}/memory.current"),
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok()?.trim().parse().ok())
    .unwrap_or(0)
}

/// Memory (bytes, PSS) and CPU (cores) of the benchmark's tenants over `window`.
fn cost(prefix: &str, window: Duration) -> (f64, f64) {
    let hz = 100.0;
    let before = tenant_processes(prefix);
    std::thread::sleep(window);
    let after = tenant_processes(prefix);
    let pss: u64 = after.values().map(|v| v.0).sum();
    let ticks: u64 = after
        .iter()
        .map(|(t, v)| v.1.saturating_sub(before.get(t).map_or(0, |b| b.1)))
        .sum();
    (
        pss as f64 * 1024.0,
        ticks as f64 / hz / window.as_secs_f64(),
    )
}

fn main() {
    require_root();
    let rounds = env_num("M8TRX_BENCH_ROUNDS", 20) as usize;
    let n = env_num("M8TRX_BENCH_TENANTS", 10) as usize;
    let id = std::process::id();
    let dir = std::env::temp_dir().join(format!("m8trx-bench-s2z-{id}"));
    std::fs::create_dir_all(&dir).unwrap();
    let prefix = format!("bz{}", id % 10_000);
    let names: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    let proxy = Proxy::start(&dir);
    let _cleanup = Cleanup {
        dir: dir.clone(),
        names: names.clone(),
    };
    // Idle windows off: the benchmark alone decides when a tenant sleeps.
    let d = Daemon::start_with(&dir, &["--proxy-admin", proxy.admin.to_str().unwrap()]);
    let (caddy, busybox) = (env("M8TRX_IMAGE_CADDY"), env("M8TRX_IMAGE_BUSYBOX"));
    let tar = dir.join("images.tar");
    docker(&["save", "-o", tar.to_str().unwrap(), &caddy, &busybox]);
    let started = Instant::now();
    for name in &names {
        deploy_agent(
            &d,
            &dir,
            name,
            "cpu: 1, memory: 512Mi, pids: 512, disk: 1Gi",
            &tar,
            (&caddy, &busybox),
        );
    }
    println!(
        "{n} agent-shaped tenants up in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let host = format!("{}.m8trx.test", names[0]);
    let via_proxy = |max: u32| ttfb(&host, &proxy.tls, max);
    for _ in 0..3 {
        assert!(via_proxy(10).is_some(), "{host} answers through sni-proxy");
    }

    // 1. Wake latency.
    let awake = row(
        "awake, through sni-proxy",
        (0..rounds).map(|_| via_proxy(10)).collect(),
    );
    let frozen = row(
        "frozen → first byte, through sni-proxy",
        (0..rounds)
            .map(|_| {
                d.ok(&["freeze", &names[0]]);
                via_proxy(20)
            })
            .collect(),
    );
    let asleep = row(
        "asleep → first byte, through sni-proxy",
        (0..rounds)
            .map(|_| {
                d.ok(&["sleep", &names[0]]);
                via_proxy(20)
            })
            .collect(),
    );
    let plain = Plain::up(id, &host, &caddy, &busybox);
    assert!(
        plain.first_byte(&host, Instant::now()).is_some(),
        "the plain stack answers"
    );
    let paused = row(
        "plain dockerd: docker unpause → first byte",
        (0..rounds)
            .map(|_| {
                for c in &plain.names {
                    docker(&["pause", c]);
                }
                let t = Instant::now();
                for c in &plain.names {
                    docker(&["unpause", c]);
                }
                plain.first_byte(&host, t)
            })
            .collect(),
    );
    let cold = row(
        "plain dockerd: docker start (cold) → first byte",
        (0..rounds)
            .map(|_| {
                docker(&[
                    "stop",
                    "-t",
                    "2",
                    &plain.names[2],
                    &plain.names[1],
                    &plain.names[0],
                ]);
                let t = Instant::now();
                docker(&["start", &plain.names[0], &plain.names[1], &plain.names[2]]);
                plain.first_byte(&host, t)
            })
            .collect(),
    );
    drop(plain);
    println!();
    println!(
        "Wake latency, {rounds} rounds each, time to the first byte of GET / over TLS \
         (curl time_starttransfer; the plain rows from the first command until Caddy answers):"
    );
    println!("| path | p50 s | p99 s | vs cold docker start (p99) | failed |");
    println!("|---|---:|---:|---:|---:|");
    for r in [&awake, &frozen, &asleep, &paused, &cold] {
        println!(
            "| {} | {:.3} | {:.3} | {:.2}x | {} |",
            r.what,
            r.p50,
            r.p99,
            r.p99 / cold.p99,
            r.failed
        );
    }
    println!(
        "Goals: from frozen ≤ 0.100 s p99: {:.3} s ({}); from asleep ≤ 1.5 s p99: {:.3} s ({})",
        frozen.p99,
        if frozen.p99 <= 0.1 { "met" } else { "not met" },
        asleep.p99,
        if asleep.p99 <= 1.5 { "met" } else { "not met" }
    );

    // 2. Density.
    for name in &names {
        d.ok(&["wake", name]);
    }
    std::thread::sleep(Duration::from_secs(5));
    let window = Duration::from_secs(env_num("M8TRX_BENCH_WINDOW", 20));
    let (mem_awake, cpu_awake) = cost(&prefix, window);
    let sleepers = n - (n / 10).max(1);
    for name in names.iter().skip(n - sleepers) {
        d.ok(&["sleep", name]);
    }
    let (mem_mixed, cpu_mixed) = cost(&prefix, window);
    let awake_n = n - sleepers;
    let per_awake = mem_awake / n as f64;
    // A sleeping tenant's cost is its own: the processes it still has (none) and what its
    // cgroup still holds (not the shift of shared pages' PSS onto the awake ones).
    let procs = tenant_processes(&prefix);
    let asleep: Vec<&String> = names.iter().skip(n - sleepers).collect();
    let asleep_pss: u64 = asleep
        .iter()
        .filter_map(|t| procs.get(*t))
        .map(|v| v.0)
        .sum();
    let asleep_cg: u64 = asleep.iter().map(|t| cgroup_memory(t)).sum();
    let per_asleep = (asleep_pss as f64 * 1024.0 + asleep_cg as f64) / sleepers as f64;
    let cpu_per_awake = cpu_awake / n as f64;
    let mix_mem = AWAKE_SHARE * per_awake + (1.0 - AWAKE_SHARE) * per_asleep;
    let mix_cpu = AWAKE_SHARE * cpu_per_awake;
    let by_memory = (HOST_MEMORY - HOST_RESERVED) / mix_mem;
    let by_cpu = HOST_BASELINE_CPU / mix_cpu.max(1e-9);
    let dense = by_memory.min(by_cpu).floor();
    let ebs = dense.min(EBS_ATTACHMENTS);
    let mib = |b: f64| b / 1024.0 / 1024.0;
    println!();
    println!(
        "Density, {n} agent-shaped tenants (Caddy + app + worker), {}-s windows:",
        window.as_secs()
    );
    println!("| state | tenants' memory (PSS) | per tenant | tenants' CPU | per tenant |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| all {n} awake | {:.1} MiB | {:.1} MiB | {:.3} cores | {:.4} cores |",
        mib(mem_awake),
        mib(per_awake),
        cpu_awake,
        cpu_per_awake
    );
    println!(
        "| {awake_n} awake, {sleepers} asleep | {:.1} MiB | asleep: {:.3} MiB ({} processes, {:.0} KiB left in their cgroups) | {:.3} cores | |",
        mib(mem_mixed),
        mib(per_asleep),
        asleep.iter().filter(|t| procs.contains_key(**t)).count(),
        asleep_cg as f64 / 1024.0 / sleepers as f64,
        cpu_mixed
    );
    println!(
        "Per t3.xlarge (16 GiB, 4 vCPU at 40% baseline, ${HOST_PRICE_MONTH:.2}/month on demand; \
         {:.1} GiB kept for the host) at {:.0}% of tenants awake: {by_memory:.0} by memory, \
         {by_cpu:.0} by CPU baseline.",
        HOST_RESERVED / 1024.0 / 1024.0 / 1024.0,
        AWAKE_SHARE * 100.0
    );
    println!(
        "| volume kind | tenants per host | host $/tenant/month | + volume | total | goal ≤ $6 |"
    );
    println!("|---|---:|---:|---:|---:|---|");
    for (kind, count) in [
        ("EBS per tenant (24 attachments)", ebs),
        ("dense image (#20)", dense),
    ] {
        let host_share = HOST_PRICE_MONTH / count;
        let total = host_share + EBS_VOLUME_MONTH;
        println!(
            "| {kind} | {count:.0} | {host_share:.2} | {EBS_VOLUME_MONTH:.2} | {total:.2} | {} |",
            if total <= 6.0 { "met" } else { "not met" }
        );
    }
    for name in &names {
        d.ok(&["destroy", name, "--wipe"]);
    }
    drop(d);
    drop(proxy);
    let _ = std::fs::remove_dir_all(&dir);
}
