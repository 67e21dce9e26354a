//! `make bench-fairness`: what a noisy neighbour costs a quiet tenant, measured in one run
//! on this machine with the real sni-proxy, hostd and tenant engines (issue #18).
//!
//! Two agent-shaped tenants, A and B (each its own Caddy behind sni-proxy, an app, a worker;
//! `cpu: 1`, `memory: 256Mi`, the default bandwidth). B's latency is the time to the first
//! byte of a TLS request through sni-proxy to B's own Caddy (curl's `time_starttransfer`),
//! `M8TRX_BENCH_ROUNDS` requests per phase: once with A idle (the baseline), then with A
//! saturating, in turn:
//!
//! - **cpu**: four busy loops in A's worker (A's cgroup holds them to one core);
//! - **memory**: A's worker allocating up to A's limit, OOM-killed, again and again;
//! - **io**: A's worker writing 256 MiB with fsync to its volume, again and again;
//! - **egress**: A's worker sending as fast as it can to four readers on the host (through
//!   A's bridge: network load only on the namespaces this benchmark made);
//! - **connections**: eight threads opening new TLS connections to A's name through
//!   sni-proxy as fast as they can (a ClientHello each, then a reset once the proxy refuses
//!   it or A's Caddy answers);
//! - **connection churn**: the same, reset right after the ClientHello (before the proxy has
//!   read it, so before it knows the tenant);
//!
//! and prints, for each, B's p50 and p99 and the p99's ratio to the baseline beside the goal
//! (≤ 1.2×). The broker's share is measured by cred-broker's own test and bench, not here.
//!
//! `M8TRX_BENCH_NOISES` (e.g. `cpu,connections`) runs only the named noises after the
//! baseline; all of them by default.
//!
//! Needs root, `make test`'s environment and the release build of sni-proxy (`make
//! bench-fairness` builds it). Not part of `make test`.
#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark: a panic is the report

#[path = "../tests/support/mod.rs"]
mod support;

mod agent;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use agent::{deploy_agent, env_num, percentile, ttfb};
use support::proxy::Proxy;
use support::{env, require_root, tenant_docker, text, Cleanup, Daemon};

/// The goal: B's p99 under any noise at most this times its idle-neighbour p99.
const GOAL: f64 = 1.2;

/// The ClientHello record curl sends for `sni` (a real one: the proxy parses it in full).
fn client_hello(sni: &str) -> Vec<u8> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let sni = sni.to_owned();
    let curl = std::thread::spawn(move || {
        let _ = Command::new("curl")
            .args(["-sk", "-o", "/dev/null", "--max-time", "2", "--resolve"])
            .arg(format!("{sni}:{port}:127.0.0.1"))
            .arg(format!("https://{sni}:{port}/"))
            .output();
    });
    let (mut s, _) = l.accept().unwrap();
    let mut head = [0u8; 5];
    s.read_exact(&mut head).unwrap();
    assert_eq!(head[0], 0x16, "a TLS handshake record");
    let mut rec = head.to_vec();
    rec.resize(5 + usize::from(u16::from_be_bytes([head[3], head[4]])), 0);
    s.read_exact(&mut rec[5..]).unwrap();
    drop(s);
    let _ = curl.join();
    rec
}

/// A connection to the proxy from 127.0.0.2 (the flood is another client than B's curl on
/// 127.0.0.1: the proxy's per-address cap is not what this measures) that resets on close
/// (no TIME_WAIT: a flood would otherwise run out of ports for everyone on the machine).
fn flood_connect(to: std::net::SocketAddr) -> Option<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
    s.bind(&std::net::SocketAddr::from(([127, 0, 0, 2], 0)).into())
        .ok()?;
    s.set_linger(Some(Duration::ZERO)).ok()?;
    s.connect(&to.into()).ok()?;
    Some(s.into())
}

/// Background load that runs until dropped.
struct Noise {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// A's worker to restart (ending whatever runs in it), if the noise runs there.
    worker: Option<(String, String)>,
    /// Work done, in the noise's own unit (bytes, connections), for the table.
    done: Arc<AtomicU64>,
}

impl Noise {
    fn none() -> Noise {
        Noise {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            worker: None,
            done: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A shell script run detached in A's worker.
    fn in_worker(tenant: &str, worker: &str, script: &str) -> Noise {
        let o = tenant_docker(tenant, &["exec", "-d", worker, "sh", "-c", script]);
        assert!(o.status.success(), "noise in {worker}: {}", text(&o));
        let mut n = Noise::none();
        n.worker = Some((tenant.to_owned(), worker.to_owned()));
        n
    }

    /// `n` threads running `f` until the noise is dropped.
    fn threads(
        mut self,
        n: usize,
        f: impl Fn(&AtomicBool, &AtomicU64) + Send + Sync + 'static,
    ) -> Noise {
        let f = Arc::new(f);
        for _ in 0..n {
            let (f, stop, done) = (
                Arc::clone(&f),
                Arc::clone(&self.stop),
                Arc::clone(&self.done),
            );
            self.threads
                .push(std::thread::spawn(move || f(&stop, &done)));
        }
        self
    }
}

impl Drop for Noise {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Some((tenant, worker)) = &self.worker {
            let o = tenant_docker(tenant, &["restart", "-t", "0", worker]);
            assert!(o.status.success(), "restart {worker}: {}", text(&o));
        }
    }
}

/// B's latencies over one phase: (p50, p99, failed requests).
fn phase(tls: &str, host: &str, rounds: usize) -> (f64, f64, usize) {
    let samples: Vec<Option<f64>> = (0..rounds).map(|_| ttfb(host, tls, 10)).collect();
    let failed = samples.iter().filter(|s| s.is_none()).count();
    let mut ok: Vec<f64> = samples.into_iter().flatten().collect();
    assert!(!ok.is_empty(), "every request to {host} failed");
    (percentile(&mut ok, 0.5), percentile(&mut ok, 0.99), failed)
}

fn main() {
    require_root();
    let rounds = env_num("M8TRX_BENCH_ROUNDS", 300) as usize;
    let id = std::process::id();
    let dir = std::env::temp_dir().join(format!("m8trx-bench-fair-{id}"));
    std::fs::create_dir_all(&dir).unwrap();
    let prefix = format!("fr{}", id % 10_000);
    let (a, b) = (format!("{prefix}-a"), format!("{prefix}-b"));
    let proxy = Proxy::start(&dir);
    let _cleanup = Cleanup {
        dir: dir.clone(),
        names: vec![a.clone(), b.clone()],
    };
    let d = Daemon::start_with(&dir, &["--proxy-admin", proxy.admin.to_str().unwrap()]);
    let (caddy, busybox) = (env("M8TRX_IMAGE_CADDY"), env("M8TRX_IMAGE_BUSYBOX"));
    let tar = dir.join("images.tar");
    let o = Command::new("docker")
        .args(["save", "-o", tar.to_str().unwrap(), &caddy, &busybox])
        .output()
        .unwrap();
    assert!(o.status.success(), "docker save: {}", text(&o));
    for name in [&a, &b] {
        deploy_agent(
            &d,
            &dir,
            name,
            "cpu: 1, memory: 256Mi, pids: 512, disk: 2Gi",
            &tar,
            (&caddy, &busybox),
        );
    }
    let (host_a, host_b) = (format!("{a}.m8trx.test"), format!("{b}.m8trx.test"));
    let started = Instant::now();
    while ttfb(&host_b, &proxy.tls, 10).is_none() || ttfb(&host_a, &proxy.tls, 10).is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "A and B answer through sni-proxy"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for _ in 0..20 {
        ttfb(&host_b, &proxy.tls, 10); // warm: Caddy's first handshakes, the page cache
    }
    let worker = format!("m8trx-{a}-worker-1");
    // Asked anew each time: a restart (how each noise ends) may give the worker a new one.
    let worker_ip = || {
        let o = tenant_docker(
            &a,
            &[
                "inspect",
                "-f",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                &worker,
            ],
        );
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    };

    type Make<'a> = Box<dyn Fn() -> Noise + 'a>;
    let hello = Arc::new(client_hello(&host_a));
    let tls: std::net::SocketAddr = proxy.tls.parse().unwrap();
    let phases: Vec<(&str, &str, Make)> = vec![
        ("idle neighbour", "", Box::new(Noise::none)),
        (
            "cpu",
            "",
            Box::new(|| {
                Noise::in_worker(
                    &a,
                    &worker,
                    "for i in 1 2 3 4; do (while :; do :; done) & done; wait",
                )
            }),
        ),
        (
            "memory",
            "",
            Box::new(|| Noise::in_worker(&a, &worker, "while :; do tail /dev/zero; done")),
        ),
        (
            "io",
            "",
            Box::new(|| {
                Noise::in_worker(
                    &a,
                    &worker,
                    "while :; do dd if=/dev/zero of=/tmp/f bs=1M count=256 conv=fsync 2>/dev/null; \
                     rm -f /tmp/f; done",
                )
            }),
        ),
        (
            "egress",
            "MiB sent",
            Box::new(|| {
                let n = Noise::in_worker(
                    &a,
                    &worker,
                    "for p in 9001 9002 9003 9004; do \
                     (while :; do busybox nc -l -p $p < /dev/zero; done) & done; wait",
                );
                std::thread::sleep(Duration::from_millis(500));
                let ip = worker_ip();
                let port = AtomicU64::new(9001);
                n.threads(4, move |stop, done| {
                    let p = port.fetch_add(1, Ordering::SeqCst);
                    let mut buf = vec![0u8; 1 << 16];
                    while !stop.load(Ordering::SeqCst) {
                        let Ok(mut s) = TcpStream::connect((ip.as_str(), p as u16)) else {
                            std::thread::sleep(Duration::from_millis(100));
                            continue;
                        };
                        s.set_read_timeout(Some(Duration::from_millis(500)))
                            .unwrap();
                        while !stop.load(Ordering::SeqCst) {
                            match s.read(&mut buf) {
                                Ok(0) => break,
                                Ok(k) => {
                                    done.fetch_add(k as u64, Ordering::Relaxed);
                                }
                                Err(_) => break,
                            }
                        }
                    }
                })
            }),
        ),
        (
            "connections",
            "connections opened",
            Box::new(|| {
                let hello = Arc::clone(&hello);
                Noise::none().threads(8, move |stop, done| {
                    let mut buf = [0u8; 512];
                    while !stop.load(Ordering::SeqCst) {
                        if let Some(mut s) = flood_connect(tls) {
                            let _ = s.write_all(&hello);
                            // Until the proxy refuses it or A's Caddy answers (its
                            // ServerHello), then reset.
                            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                            let _ = s.read(&mut buf);
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            }),
        ),
        (
            "connection churn",
            "connections opened",
            Box::new(|| {
                let hello = Arc::clone(&hello);
                Noise::none().threads(8, move |stop, done| {
                    while !stop.load(Ordering::SeqCst) {
                        if let Some(mut s) = flood_connect(tls) {
                            let _ = s.write_all(&hello);
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            }),
        ),
    ];

    println!(
        "fairness: B's time to first byte through sni-proxy, {rounds} requests per phase, \
         A noisy in turn (2-core machine, both tenants cpu: 1)"
    );
    println!(
        "| A is | B p50 ms | B p99 ms | B p99 / baseline | goal | met | B failed | A's work |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut baseline = None;
    let only = std::env::var("M8TRX_BENCH_NOISES").ok();
    let chosen = |what: &str| {
        what == "idle neighbour"
            || only
                .as_deref()
                .is_none_or(|o| o.split(',').any(|n| n.trim() == what))
    };
    for (what, unit, make) in phases.iter().filter(|(w, _, _)| chosen(w)) {
        let noise = make();
        std::thread::sleep(Duration::from_secs(3)); // the noise at full strength
        let t = Instant::now();
        let before = noise.done.load(Ordering::Relaxed);
        let (p50, p99, failed) = phase(&proxy.tls, &host_b, rounds);
        let work = noise.done.load(Ordering::Relaxed) - before;
        let secs = t.elapsed().as_secs_f64();
        let work = match *unit {
            "MiB sent" => format!("{:.1} MiB/s sent", work as f64 / secs / 1048576.0),
            "connections opened" => format!("{:.0} connections/s", work as f64 / secs),
            _ => "-".into(),
        };
        drop(noise);
        let base = *baseline.get_or_insert(p99);
        let ratio = p99 / base;
        println!(
            "| {what} | {:.1} | {:.1} | {ratio:.2}× | ≤ {GOAL}× | {} | {failed} | {work} |",
            p50 * 1000.0,
            p99 * 1000.0,
            if ratio <= GOAL { "yes" } else { "no" },
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    let log = std::fs::read_to_string(dir.join("proxy.log")).unwrap_or_default();
    println!(
        "sni-proxy's refusal lines (one per limit and interval): {} past the tenant's share, \
         {} at accept (per source or in total)",
        log.matches("limit hit: tenant connection refused").count(),
        log.matches("limit hit: connection refused").count()
    );
    for name in [&a, &b] {
        d.ok(&["destroy", name, "--wipe"]);
    }
    drop(d);
    drop(proxy);
    let _ = std::fs::remove_dir_all(&dir);
}
