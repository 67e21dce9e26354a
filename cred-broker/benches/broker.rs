//! Benchmark of the broker (not part of `make test`): cached-credential latency p50/p99 at a
//! fixed 2,000 requests/s and peak requests/s on loopback (audit lines formatted as JSON into
//! a sink, as production formats them), each against a peer measured in the
//! same run (a bare hyper server answering a same-size static JSON body: the HTTP floor), and
//! STS AssumeRole calls per tenant under steady load at two very different request rates.
//!
//! Needs the moto server of the test environment:
//! `set -a; . /var/lib/m8trx-test/env; set +a; cargo bench -p cred-broker --bench broker`
#![allow(clippy::expect_used, clippy::unwrap_used)] // benchmark: a panic is the report

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cred_broker::server::serve_credentials;
use cred_broker::{Broker, CachePolicy, StsSettings, StsSource, TenantSpec};
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

fn spec(name: &str) -> TenantSpec {
    TenantSpec {
        name: m8trx_spec::CustomerName::parse(name).unwrap(),
        role_arn: format!("arn:aws:iam::123456789012:role/m8trx-customer-{name}"),
        external_id: format!("ext-{name}"),
        allowed_cidr: "127.0.0.0/8".parse().unwrap(),
    }
}

/// Starts a broker in its own 2-thread runtime (the machine has 2 cores); returns its
/// address, the broker, and the runtime (kept alive by the caller).
fn start_broker(
    moto: &str,
    duration: u64,
    policy: CachePolicy,
) -> (SocketAddr, Arc<Broker>, tokio::runtime::Runtime) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let settings = StsSettings {
        endpoint: Some(moto.to_owned()),
        region: Some("us-east-1".into()),
        host_id: "m8trx-bench-host".into(),
        duration: Duration::from_secs(duration),
        call_timeout: Duration::from_secs(10),
    };
    let (addr, broker) = rt.block_on(async {
        let source = StsSource::new(settings).await.unwrap();
        // Limits out of the way: this measures the serving path, not the per-tenant share.
        let limits = cred_broker::limits::Limits {
            max_connections: 1 << 20,
            max_connections_per_network: 1 << 20,
            requests_per_second: u32::MAX,
        };
        let broker = Arc::new(Broker::new(Arc::new(source), policy).with_limits(limits));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(serve_credentials(l, broker.clone()));
        (addr, broker)
    });
    (addr, broker, rt)
}

/// The peer: a bare hyper HTTP/1.1 server answering every request with `body`.
fn start_peer(body: String) -> (SocketAddr, tokio::runtime::Runtime) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let body = Bytes::from(body);
    let addr = rt.block_on(async {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                let _ = s.set_nodelay(true);
                let body = body.clone();
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                            let body = body.clone();
                            async move {
                                let mut r = Response::new(Full::new(body));
                                r.headers_mut().insert(
                                    hyper::header::CONTENT_TYPE,
                                    "application/json".parse().unwrap(),
                                );
                                Ok::<_, Infallible>(r)
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        addr
    });
    (addr, rt)
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(addr: SocketAddr) -> Sender {
    let s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn one(sender: &mut Sender, addr: SocketAddr, token: &str) -> (u16, Bytes) {
    sender.ready().await.unwrap();
    let req = Request::builder()
        .uri("/v1/credentials")
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::AUTHORIZATION, token)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

/// Open-loop load at `rate` req/s for `secs` over `conns` keep-alive connections; returns
/// sorted latencies. Every request must answer 200.
async fn fixed_rate(
    addr: SocketAddr,
    token: &str,
    rate: u64,
    secs: u64,
    conns: u64,
) -> Vec<Duration> {
    let per_conn = Duration::from_secs_f64(conns as f64 / rate as f64);
    let n = rate * secs / conns;
    let mut tasks = Vec::new();
    for c in 0..conns {
        let token = token.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(addr).await;
            // Stagger the connections across one interval.
            tokio::time::sleep(per_conn.mul_f64(c as f64 / conns as f64)).await;
            let mut tick = tokio::time::interval(per_conn);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut lat = Vec::with_capacity(n as usize);
            for _ in 0..n {
                tick.tick().await;
                let t = Instant::now();
                let (status, _) = one(&mut sender, addr, &token).await;
                lat.push(t.elapsed());
                assert_eq!(status, 200);
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    all
}

/// Closed-loop load for `secs` over `conns` connections; returns requests per second.
async fn peak(addr: SocketAddr, token: &str, secs: u64, conns: usize) -> f64 {
    let end = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let token = token.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(addr).await;
            let mut n = 0u64;
            while Instant::now() < end {
                assert_eq!(one(&mut sender, addr, &token).await.0, 200);
                n += 1;
            }
            n
        }));
    }
    let start = Instant::now();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / start.elapsed().as_secs_f64().max(secs as f64)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let moto = std::env::var("M8TRX_MOTO_ENDPOINT").expect(
        "M8TRX_MOTO_ENDPOINT is not set: source /var/lib/m8trx-test/env (scripts/test-env) first",
    );
    // The broker's own credentials, for the default aws-config chain.
    std::env::set_var("AWS_ACCESS_KEY_ID", "AKIDM8TRXBENCH");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "bench-secret");
    // Audit lines are formatted as in production (JSON) and written to a sink.
    tracing_subscriber::fmt()
        .event_format(cred_broker::json_log::JsonLines)
        .with_writer(std::io::sink)
        .init();
    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // --- 1. cached latency and peak throughput, broker vs. bare hyper peer -------------
    let (addr, broker, _brt) = start_broker(&moto, 3600, CachePolicy::default());
    broker.register(spec("bench")).unwrap();
    let token = broker
        .mint("bench", Duration::from_secs(3600), None)
        .unwrap()
        .token
        .expose_secret()
        .to_owned();
    let body = client.block_on(async {
        let mut s = connect(addr).await;
        let (status, body) = one(&mut s, addr, &token).await; // the one miss, warms the cache
        assert_eq!(status, 200);
        body
    });
    let (peer_addr, _prt) = start_peer(String::from_utf8(body.to_vec()).unwrap());

    println!(
        "cred-broker benchmark ({} cores; broker and load generator share them)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!(
        "load average at start: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    // 0. The broker's own work per cached request, without the network: authenticate (SHA-256
    // + constant-time scan), cache lookup, JSON body, metrics, audit line.
    {
        let peer: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        // BENCH_IN_PROCESS_ONLY=N: N requests of this part, then stop (for `perf record`).
        let only: Option<u32> = std::env::var("BENCH_IN_PROCESS_ONLY")
            .ok()
            .and_then(|v| v.parse().ok());
        let n = only.unwrap_or(200_000);
        let (per_req, per_hash) = _brt.block_on(async {
            let t = Instant::now();
            for _ in 0..n {
                let a = broker.credentials(Some(&token), peer).await;
                assert_eq!(a.status, 200);
            }
            let per_req = t.elapsed() / n;
            let t = Instant::now();
            for _ in 0..n {
                std::hint::black_box(cred_broker::token::TokenHash::of(std::hint::black_box(
                    &token,
                )));
            }
            (per_req, t.elapsed() / n)
        });
        println!(
            "\n0. in-process handler, {n} cached requests: {:.1} µs per request (of which SHA-256 of the token {:.2} µs)",
            us(per_req),
            us(per_hash)
        );
        if only.is_some() {
            return;
        }
    }

    println!("\n1. cached credentials, 2000 req/s over 16 keep-alive connections; 3 rounds of 5 s, servers alternating");
    println!(
        "{:<22} {:>6} {:>10} {:>10} {:>10} {:>10}",
        "server", "round", "p50 µs", "p99 µs", "p99.9 µs", "max µs"
    );
    let mut p99s: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for round in 1..=3 {
        for (i, (name, a)) in [("cred-broker", addr), ("peer (bare hyper)", peer_addr)]
            .into_iter()
            .enumerate()
        {
            let lat = client.block_on(fixed_rate(a, &token, 2000, 5, 16));
            println!(
                "{:<22} {:>6} {:>10.0} {:>10.0} {:>10.0} {:>10.0}   ({} requests)",
                name,
                round,
                us(pct(&lat, 0.50)),
                us(pct(&lat, 0.99)),
                us(pct(&lat, 0.999)),
                us(*lat.last().unwrap()),
                lat.len()
            );
            p99s[i].push(us(pct(&lat, 0.99)));
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (b99, p99) = (median(&mut p99s[0]), median(&mut p99s[1]));
    println!(
        "median p99: cred-broker {b99:.0} µs, peer {p99:.0} µs, ratio {:.2}",
        b99 / p99
    );

    println!("\n2. peak throughput, closed loop, 32 connections, 5 s");
    let b = client.block_on(peak(addr, &token, 5, 32));
    let p = client.block_on(peak(peer_addr, &token, 5, 32));
    println!(
        "cred-broker: {b:.0} req/s; peer: {p:.0} req/s; ratio {:.2}",
        b / p
    );
    println!(
        "STS AssumeRole calls during parts 0-2: {} (tenant bench)",
        broker.metrics().sts_calls("bench")
    );

    // --- 3. STS calls per tenant under steady load ----------------------------------------
    // Compressed time: 900 s sessions refreshed once 870 s remain, i.e. every 30 s. Each run
    // lasts 65 s, so the expectation is 1 initial call + 2 refreshes per tenant at ANY rate.
    println!("\n3. STS calls per tenant under steady load (900 s sessions, refresh when < 870 s left = every 30 s; 65 s per run, 3 tenants)");
    for rate in [30u64, 900] {
        let policy = CachePolicy {
            refresh_before: Duration::from_secs(870),
            min_remaining: Duration::from_secs(300),
            retry_after_failure: Duration::from_secs(1),
        };
        let (addr, broker, _rt) = start_broker(&moto, 900, policy);
        let names = ["steady-a", "steady-b", "steady-c"];
        let tokens: Vec<String> = names
            .iter()
            .map(|n| {
                broker.register(spec(n)).unwrap();
                broker
                    .mint(n, Duration::from_secs(3600), None)
                    .unwrap()
                    .token
                    .expose_secret()
                    .to_owned()
            })
            .collect();
        let started = Instant::now();
        client.block_on(async {
            let mut tasks = Vec::new();
            for t in &tokens {
                let t = t.clone();
                tasks.push(tokio::spawn(async move {
                    fixed_rate(addr, &t, rate / 3, 65, 2).await.len()
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        });
        let secs = started.elapsed().as_secs_f64();
        let calls: Vec<u64> = names
            .iter()
            .map(|n| broker.metrics().sts_calls(n))
            .collect();
        println!(
            "{rate:>4} req/s total for {secs:.0} s: STS calls per tenant {calls:?} (expected 3 each: 1 initial + 2 refreshes)"
        );
    }
    println!(
        "\nAt production settings (3600 s sessions, refresh when < 900 s left) that is one AssumeRole per tenant every 2700 s: \
         {:.2} calls per tenant per hour, whatever the request rate.",
        3600.0 / 2700.0
    );
}
