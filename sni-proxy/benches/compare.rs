//! `make bench-proxy`: one TLS backend (nginx) reached directly and through HAProxy
//! (tcp mode, `req_ssl_sni`) at `nbthread 1` and `nbthread 2`, nginx stream `ssl_preread`,
//! sniproxy and this proxy at 1 and 2 workers, all on loopback in one run. Measures the
//! new-connection rate (TLS handshake + one `Connection: close` request) and its p99
//! latency, proxy CPU µs per connection (from /proc), RSS per idle established connection
//! (5,000 of them) and the throughput of a 1 GiB transfer, then prints a table with each
//! figure's ratio to HAProxy at the same thread count. Not part of `make test`.
//!
//! Knobs: BENCH_SECS (3), BENCH_ROUNDS (3), BENCH_CONCURRENCY (16), BENCH_IDLE (5000);
//! BENCH_PROFILE=<path> (e.g. `sni-proxy-1w`) only loads that path for BENCH_SECS and prints
//! its pid, for `perf record -p`.
#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark: a panic is the report

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const NAME: &str = "bench.test";
const GIB: u64 = 1024 * 1024 * 1024;

fn env_num(k: &str, default: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn sh(cmd: &str) {
    let st = Command::new("sh").arg("-c").arg(cmd).status().unwrap();
    assert!(st.success(), "failed: {cmd}");
}

/// A process of the benchmark, killed at the end.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(dir: &Path, name: &str, cmd: &mut Command) -> Proc {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    Proc(child)
}

fn wait_port(port: u16) {
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "nothing listens on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `pid` and all its descendants.
fn family(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let parent = all[i];
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            let after = &stat[stat.rfind(')').unwrap() + 2..];
            let ppid: u32 = after.split_whitespace().nth(1).unwrap().parse().unwrap();
            if ppid == parent && !all.contains(&p) {
                all.push(p);
            }
        }
        i += 1;
    }
    all
}

/// CPU time (user + system) of a process tree, in microseconds.
fn cpu_us(pid: u32) -> u64 {
    let tck = 100u64; // USER_HZ on Linux
    family(pid)
        .iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .map(|s| {
            let f: Vec<&str> = s[s.rfind(')').unwrap() + 2..].split_whitespace().collect();
            (f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()) * 1_000_000 / tck
        })
        .sum()
}

/// Resident memory of a process tree, in KiB.
fn rss_kib(pid: u32) -> u64 {
    family(pid)
        .iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .sum()
}

struct Target {
    name: &'static str,
    /// Threads the proxy serves with (1 or 2), to compare with HAProxy at the same count.
    threads: usize,
    addr: SocketAddr,
    /// The proxy process; `None` for the direct path.
    pid: Option<u32>,
}

#[derive(Default, Clone)]
struct Row {
    name: &'static str,
    conns_per_s: f64,
    p99_ms: f64,
    cpu_us_per_conn: Option<f64>,
    kib_per_idle: Option<f64>,
    mib_per_s: f64,
    errors: u64,
}

async fn one_request(tls: &TlsConnector, addr: SocketAddr) -> std::io::Result<()> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut s = tls
        .connect(ServerName::try_from(NAME).unwrap(), tcp)
        .await?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: bench.test\r\nConnection: close\r\n\r\n")
        .await?;
    let mut buf = Vec::with_capacity(512);
    let r = s.read_to_end(&mut buf).await;
    if buf.starts_with(b"HTTP/1.1 200") {
        Ok(())
    } else {
        r?;
        Err(std::io::Error::other("no 200"))
    }
}

/// What one rate phase measured on one path.
#[derive(Default)]
struct Sample {
    ok: u64,
    errors: u64,
    secs: f64,
    cpu_us: u64,
    /// Duration of each successful request (connect, handshake, request, response), in µs.
    latencies_us: Vec<u64>,
}

/// Runs `concurrency` clients for `secs` against `t`.
async fn rate(tls: &TlsConnector, t: &Target, secs: u64, concurrency: usize) -> Sample {
    let ok = Arc::new(AtomicU64::new(0));
    let err = Arc::new(AtomicU64::new(0));
    let cpu0 = t.pid.map_or(0, cpu_us);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (tls, addr, ok, err) = (tls.clone(), t.addr, Arc::clone(&ok), Arc::clone(&err));
            tokio::spawn(async move {
                let mut lat = Vec::new();
                loop {
                    let t0 = Instant::now();
                    if t0 >= deadline {
                        break lat;
                    }
                    match one_request(&tls, addr).await {
                        Ok(()) => {
                            lat.push(t0.elapsed().as_micros() as u64);
                            ok.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(_) => err.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    let mut latencies_us = Vec::new();
    for t in tasks {
        latencies_us.extend(t.await.unwrap());
    }
    Sample {
        ok: ok.load(Ordering::Relaxed),
        errors: err.load(Ordering::Relaxed),
        secs: start.elapsed().as_secs_f64(),
        cpu_us: t.pid.map_or(0, cpu_us) - cpu0,
        latencies_us,
    }
}

/// The `q` quantile (0..=1) of `v`, in milliseconds.
fn quantile_ms(v: &mut [u64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v[i] as f64 / 1000.0
}

async fn idle(tls: &TlsConnector, t: &Target, n: usize) -> Option<f64> {
    let pid = t.pid?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid);
    let conns: Vec<_> = stream::iter(0..n)
        .map(|_| {
            let tls = tls.clone();
            let addr = t.addr;
            async move {
                let tcp = TcpStream::connect(addr).await.ok()?;
                tls.connect(ServerName::try_from(NAME).unwrap(), tcp)
                    .await
                    .ok()
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let open = conns.iter().filter(|c| c.is_some()).count();
    assert!(
        open >= n * 99 / 100,
        "{}: only {open} of {n} idle connections opened",
        t.name
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after = rss_kib(pid);
    drop(conns);
    tokio::time::sleep(Duration::from_millis(500)).await;
    Some(after.saturating_sub(before) as f64 / open as f64)
}

async fn bulk(tls: &TlsConnector, t: &Target) -> f64 {
    let tcp = TcpStream::connect(t.addr).await.unwrap();
    let mut s = tls
        .connect(ServerName::try_from(NAME).unwrap(), tcp)
        .await
        .unwrap();
    let start = Instant::now();
    s.write_all(b"GET /1g HTTP/1.1\r\nHost: bench.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n as u64,
        }
    }
    let secs = start.elapsed().as_secs_f64();
    assert!(
        total >= GIB,
        "{}: only {total} bytes of the 1 GiB body",
        t.name
    );
    GIB as f64 / (1024.0 * 1024.0) / secs
}

fn make_certs(dir: &Path) -> PathBuf {
    let d = dir.display();
    std::fs::write(dir.join("ext.cnf"), format!("subjectAltName=DNS:{NAME}\n")).unwrap();
    sh(&format!(
        "cd {d} && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
         -subj /CN=bench-ca -keyout ca.key -out ca.pem 2>/dev/null && \
         openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN={NAME} \
         -keyout leaf.key -out leaf.csr 2>/dev/null && \
         openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
         -extfile ext.cnf -out leaf.pem 2>/dev/null && chmod 644 leaf.key"
    ));
    dir.join("ca.pem")
}

fn main() {
    let secs = env_num("BENCH_SECS", 3);
    let rounds = env_num("BENCH_ROUNDS", 3);
    let concurrency = env_num("BENCH_CONCURRENCY", 16) as usize;
    let idle_n = env_num("BENCH_IDLE", 5000) as usize;
    // Every process here needs a descriptor per idle connection (the proxies two).
    let nofile = nix::sys::resource::Resource::RLIMIT_NOFILE;
    let (_, hard) = nix::sys::resource::getrlimit(nofile).unwrap();
    nix::sys::resource::setrlimit(nofile, hard, hard).unwrap();
    assert!(
        hard as usize > 2 * idle_n + 1000,
        "the open-file limit {hard} is too low for {idle_n} idle connections; lower BENCH_IDLE"
    );
    let dir = std::env::temp_dir().join(format!("sni-proxy-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.display().to_string();
    let ca = make_certs(&dir);
    sh(&format!(
        "truncate -s 1G {d}/1g.bin && chmod 644 {d}/1g.bin && chmod 755 {d}"
    ));

    // The one TLS backend: nginx, 2 workers, TLS 1.3 with a P-256 certificate.
    let (b, h, n, s, p) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let common = format!(
        "daemon off; worker_rlimit_nofile {hard}; events {{ worker_connections {}; }}\n",
        hard - 100
    );
    std::fs::write(
        dir.join("backend.conf"),
        format!(
            "worker_processes 2; pid {d}/backend.pid; error_log {d}/backend.err warn; {common}
http {{ access_log off; client_body_temp_path {d}/cb; proxy_temp_path {d}/pt;
  fastcgi_temp_path {d}/ft; uwsgi_temp_path {d}/ut; scgi_temp_path {d}/st;
  keepalive_timeout 600s;
  server {{ listen 127.0.0.1:{b} ssl backlog=4096; ssl_protocols TLSv1.3;
    ssl_certificate {d}/leaf.pem; ssl_certificate_key {d}/leaf.key;
    location = / {{ return 200 \"ok\\n\"; }}
    location = /1g {{ alias {d}/1g.bin; }} }} }}\n"
        ),
    )
    .unwrap();
    let backend = spawn(
        &dir,
        "backend",
        Command::new("nginx")
            .args(["-p", &d, "-c"])
            .arg(dir.join("backend.conf")),
    );
    // HAProxy at one and two threads: the fair peer of each of our worker counts.
    let haproxy_at = |threads: usize, port: u16| {
        let cfg = dir.join(format!("haproxy-{threads}t.cfg"));
        std::fs::write(
            &cfg,
            format!(
                "global\n  maxconn {}\n  nbthread {threads}\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 600s\n  timeout server 600s\n\
                 frontend fe\n  bind 127.0.0.1:{port}\n  tcp-request inspect-delay 5s\n  tcp-request content accept if {{ req_ssl_hello_type 1 }}\n  use_backend be if {{ req_ssl_sni -i {NAME} }}\n\
                 backend be\n  server s1 127.0.0.1:{b}\n",
                hard / 2 - 100
            ),
        )
        .unwrap();
        spawn(
            &dir,
            &format!("haproxy-{threads}t"),
            Command::new("haproxy").arg("-db").arg("-f").arg(&cfg),
        )
    };
    let h1 = free_port();
    let haproxy1 = haproxy_at(1, h1);
    let haproxy2 = haproxy_at(2, h);
    std::fs::write(
        dir.join("stream.conf"),
        format!(
            "load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes 2; pid {d}/stream.pid; error_log {d}/stream.err warn; {common}
stream {{ map $ssl_preread_server_name $be {{ {NAME} 127.0.0.1:{b}; default 127.0.0.1:1; }}
  server {{ listen 127.0.0.1:{n} backlog=4096; ssl_preread on; proxy_pass $be; }} }}\n"
        ),
    )
    .unwrap();
    let stream_nginx = spawn(
        &dir,
        "nginx-stream",
        Command::new("nginx")
            .args(["-p", &d, "-c"])
            .arg(dir.join("stream.conf")),
    );
    std::fs::write(
        dir.join("sniproxy.conf"),
        format!(
            "pidfile {d}/sniproxy.pid\nerror_log {{\n  filename {d}/sniproxy.err\n  priority notice\n}}\n\
             listener 127.0.0.1:{s} {{\n  protocol tls\n  table t\n}}\ntable t {{\n  ^bench\\.test$ 127.0.0.1:{b}\n}}\n"
        ),
    )
    .unwrap();
    let sniproxy = spawn(
        &dir,
        "sniproxy",
        Command::new("sniproxy")
            .args(["-f", "-c"])
            .arg(dir.join("sniproxy.conf")),
    );
    std::fs::write(
        dir.join("routes.toml"),
        format!(
            "[limits]\nmax_connections = 100000\nmax_connections_per_ip = 100000\nnew_connections_per_second_per_ip = 1000000\n\
             max_connections_per_tenant = 100000\nnew_connections_per_second_per_tenant = 1000000\n\n\
             [[route]]\nsni = \"{NAME}\"\nbackend = \"127.0.0.1:{b}\"\n"
        ),
    )
    .unwrap();
    let ours_at = |workers: usize, port: u16| {
        spawn(
            &dir,
            &format!("sni-proxy-{workers}w"),
            Command::new(env!("CARGO_BIN_EXE_sni-proxy"))
                .arg("--routes")
                .arg(dir.join("routes.toml"))
                .args([
                    "--listen-tls",
                    &format!("127.0.0.1:{port}"),
                    "--no-http",
                    "--watch-interval-ms",
                    "0",
                    "--workers",
                    &workers.to_string(),
                ])
                .env("RUST_LOG", "warn"),
        )
    };
    let p1 = free_port();
    let ours1 = ours_at(1, p1);
    let ours2 = ours_at(2, p);
    for port in [b, h, h1, n, s, p, p1] {
        wait_port(port);
    }

    let target = |name, threads, port: u16, proc_: Option<&Proc>| Target {
        name,
        threads,
        addr: ([127, 0, 0, 1], port).into(),
        pid: proc_.map(|p| p.0.id()),
    };
    let targets = [
        target("direct", 2, b, None),
        target("haproxy-1t", 1, h1, Some(&haproxy1)),
        target("haproxy-2t", 2, h, Some(&haproxy2)),
        target("nginx-stream", 2, n, Some(&stream_nginx)),
        target("sniproxy", 1, s, Some(&sniproxy)),
        target("sni-proxy-1w", 1, p1, Some(&ours1)),
        target("sni-proxy-2w", 2, p, Some(&ours2)),
    ];
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&ca).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tls = TlsConnector::from(Arc::new(cfg));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    println!(
        "sni-proxy benchmark: loopback, {} cores, backend nginx (TLS 1.3, P-256), \
         rate {rounds} rounds x {secs} s x {concurrency} clients, {idle_n} idle connections, 1 GiB transfer",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    // The machine may be shared: the rate phase goes round-robin over the paths, `rounds`
    // times, so that load from elsewhere falls on all of them alike.
    // BENCH_PROFILE=<path>: only load that path for BENCH_SECS, for a profiler to attach to.
    if let Ok(name) = std::env::var("BENCH_PROFILE") {
        let t = targets
            .iter()
            .find(|t| t.name == name)
            .expect("BENCH_PROFILE names a path");
        println!(
            "profiling {name}: pid {}, {secs} s of load",
            t.pid.unwrap_or(0)
        );
        let m = rt.block_on(rate(&tls, t, secs, concurrency));
        println!(
            "{} requests, {} errors, {:.1} µs CPU each",
            m.ok,
            m.errors,
            m.cpu_us as f64 / m.ok.max(1) as f64
        );
        return;
    }
    let mut sums: Vec<Sample> = targets.iter().map(|_| Sample::default()).collect();
    rt.block_on(async {
        for t in &targets {
            // Warm-up, so that lazily allocated pools do not count as per-connection cost.
            let _ = rate(&tls, t, 1, concurrency).await;
        }
        for _ in 0..rounds {
            for (i, t) in targets.iter().enumerate() {
                let m = rate(&tls, t, secs, concurrency).await;
                let s = &mut sums[i];
                s.ok += m.ok;
                s.errors += m.errors;
                s.secs += m.secs;
                s.cpu_us += m.cpu_us;
                s.latencies_us.extend(m.latencies_us);
            }
        }
    });
    let mut rows = Vec::new();
    for (t, mut m) in targets.iter().zip(sums) {
        rt.block_on(async {
            let kib_per_idle = idle(&tls, t, idle_n).await;
            let mib_per_s = bulk(&tls, t).await;
            let row = Row {
                name: t.name,
                conns_per_s: m.ok as f64 / m.secs,
                p99_ms: quantile_ms(&mut m.latencies_us, 0.99),
                cpu_us_per_conn: t.pid.map(|_| m.cpu_us as f64 / m.ok.max(1) as f64),
                kib_per_idle,
                mib_per_s,
                errors: m.errors,
            };
            eprintln!(
                "{:<13} {:>9.0} conn/s  p99 {:>6.1} ms  cpu {:>7} us/conn  idle {:>7} KiB/conn  {:>7.0} MiB/s  errors {}",
                row.name,
                row.conns_per_s,
                row.p99_ms,
                row.cpu_us_per_conn.map_or("-".into(), |v| format!("{v:.1}")),
                row.kib_per_idle.map_or("-".into(), |v| format!("{v:.2}")),
                row.mib_per_s,
                row.errors
            );
            rows.push(row);
        });
    }
    let find = |name: &str| rows.iter().find(|r| r.name == name).cloned().unwrap();
    // Each path is compared with HAProxy at its own thread count.
    let peer = |t: &Target| {
        find(if t.threads == 1 {
            "haproxy-1t"
        } else {
            "haproxy-2t"
        })
    };
    let ratio = |v: Option<f64>, base: Option<f64>| match (v, base) {
        (Some(v), Some(b)) if b > 0.0 => format!("{:.2}x", v / b),
        _ => "-".into(),
    };
    let opt = |v: Option<f64>, prec: usize| v.map_or("-".into(), |v| format!("{v:.prec$}"));
    println!();
    println!(
        "Ratios are to HAProxy at the path's own thread count (1: haproxy-1t, 2: haproxy-2t)."
    );
    println!();
    println!("| path | threads | new conn/s | vs HAProxy | p99 ms | vs HAProxy | proxy CPU µs/conn | vs HAProxy | RSS KiB/idle conn | vs HAProxy | 1 GiB MiB/s | vs direct | errors |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let direct = find("direct");
    for (t, r) in targets.iter().zip(&rows) {
        let hap = peer(t);
        println!(
            "| {} | {} | {:.0} | {} | {:.1} | {} | {} | {} | {} | {} | {:.0} | {} | {} |",
            r.name,
            t.threads,
            r.conns_per_s,
            ratio(Some(r.conns_per_s), Some(hap.conns_per_s)),
            r.p99_ms,
            ratio(Some(r.p99_ms), Some(hap.p99_ms)),
            opt(r.cpu_us_per_conn, 1),
            ratio(r.cpu_us_per_conn, hap.cpu_us_per_conn),
            opt(r.kib_per_idle, 2),
            ratio(r.kib_per_idle, hap.kib_per_idle),
            r.mib_per_s,
            ratio(Some(r.mib_per_s), Some(direct.mib_per_s)),
            r.errors
        );
    }
    println!();
    println!("Goals for sni-proxy (measured in this run):");
    let goal = |what: &str, v: f64, target: &str, met: bool| {
        println!(
            "- {what}: {v:.2} (goal {target}) {}",
            if met { "MET" } else { "NOT MET" }
        );
    };
    for (ours, hap) in [
        ("sni-proxy-1w", "haproxy-1t"),
        ("sni-proxy-2w", "haproxy-2t"),
    ] {
        let (o, h) = (find(ours), find(hap));
        let nan = f64::NAN;
        let cpu = o.cpu_us_per_conn.unwrap_or(nan) / h.cpu_us_per_conn.unwrap_or(nan);
        goal(
            &format!("{ours} CPU per connection vs {hap}"),
            cpu,
            "<= 0.7",
            cpu <= 0.7,
        );
        let r = o.conns_per_s / h.conns_per_s;
        goal(
            &format!("{ours} new-connection rate vs {hap}"),
            r,
            ">= 1.0",
            r >= 1.0,
        );
        let m = o.kib_per_idle.unwrap_or(nan) / h.kib_per_idle.unwrap_or(nan);
        goal(
            &format!("{ours} memory per idle connection vs {hap}"),
            m,
            "<= 0.5",
            m <= 0.5,
        );
        let l = o.p99_ms / h.p99_ms;
        goal(
            &format!("{ours} p99 connection latency vs {hap}"),
            l,
            "<= 1.2",
            l <= 1.2,
        );
        let t = o.mib_per_s / direct.mib_per_s;
        goal(
            &format!("{ours} bulk throughput vs direct"),
            t,
            ">= 0.95",
            t >= 0.95,
        );
    }
    drop((
        ours1,
        ours2,
        sniproxy,
        stream_nginx,
        haproxy1,
        haproxy2,
        backend,
    ));
    let _ = std::fs::remove_dir_all(&dir);
}
