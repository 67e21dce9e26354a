//! A tenant's bandwidth, all of its networks together, enforced live and visible in hostd's
//! metrics: two services on two compose networks sending to the host as fast as they can
//! get the tenant's one `limits.egress` between them; the host sending to both as fast as
//! it can gets `limits.ingress`; `/metrics` counts the bytes on the tenant's bridges and the
//! times the buckets ran dry, and hostd logs the limit once.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test fixture: a panic is the failure report

mod support;

use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{busybox_tarball, require_root, tenant_docker, text, Cleanup, Daemon};

const EGRESS: u64 = 2 << 20;
const INGRESS: u64 = 3 << 20;
const SECS: u64 = 6;

fn sh(script: &str) -> String {
    let o = Command::new("sh").args(["-c", script]).output().unwrap();
    assert!(o.status.success(), "{script}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A metric's value from hostd's `/metrics`.
fn metric(addr: &str, series: &str) -> f64 {
    let body = scrape(addr);
    body.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{body}"))
}

/// hostd's `/metrics` response, headers included.
fn scrape(addr: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

/// Bytes per second the host pulled from each `addr` at once, reading for `SECS` seconds:
/// the container's server sends as fast as it can, so this is the tenant's egress.
fn pulled_rate(addrs: &[String]) -> f64 {
    let readers: Vec<_> = addrs
        .iter()
        .map(|a| {
            let a = a.clone();
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(&a).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let (mut n, mut buf, t) = (0u64, vec![0u8; 1 << 16], Instant::now());
                while t.elapsed() < Duration::from_secs(SECS) {
                    match s.read(&mut buf) {
                        Ok(0) => break,
                        Ok(k) => n += k as u64,
                        Err(e) => panic!("reading from {a}: {e}"),
                    }
                }
                n as f64 / t.elapsed().as_secs_f64()
            })
        })
        .collect();
    readers.into_iter().map(|r| r.join().unwrap()).sum()
}

/// Bytes per second pushed to each `addr` at once for `SECS` seconds, counted by the
/// receivers in the containers (`/tmp/in`), over the time until the last byte was taken.
fn pushed_rate(name: &str, to: &[(String, String)]) -> f64 {
    let writers: Vec<_> = to
        .iter()
        .map(|(_, a)| {
            let a = a.clone();
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(&a).unwrap();
                let (buf, t) = (vec![0u8; 1 << 16], Instant::now());
                while t.elapsed() < Duration::from_secs(SECS) {
                    s.write_all(&buf).unwrap();
                }
                // The receiver closes once it has read everything: the drain counts.
                s.shutdown(std::net::Shutdown::Write).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                let _ = s.read(&mut [0u8; 1]);
                t.elapsed().as_secs_f64()
            })
        })
        .collect();
    let secs = writers
        .into_iter()
        .map(|w| w.join().unwrap())
        .fold(0.0, f64::max);
    // `wc` appends its count once nc has exited, a moment after the close.
    let count = |container: &str| -> Option<f64> {
        let o = tenant_docker(name, &["exec", container, "cat", "/tmp/in"]);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        (o.status.success() && !out.trim().is_empty()).then(|| {
            out.lines()
                .map(|l| l.trim().parse::<f64>().unwrap())
                .sum::<f64>()
        })
    };
    let counts: Vec<f64> = to
        .iter()
        .map(|(container, _)| {
            let t = Instant::now();
            loop {
                match count(container) {
                    Some(n) => break n,
                    None if t.elapsed() < Duration::from_secs(10) => {
                        std::thread::sleep(Duration::from_millis(200))
                    }
                    None => panic!("{container} never counted what it received"),
                }
            }
        })
        .collect();
    let received: f64 = counts.iter().sum();
    println!("bandwidth: {counts:?} bytes received in {secs:.2} s (sending stopped at {SECS} s)");
    received / secs
}

/// The container's address on its one network or the first of several.
fn address(name: &str, container: &str) -> String {
    let o = tenant_docker(
        name,
        &[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
            container,
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn a_tenants_networks_share_its_egress_and_ingress_budget() {
    require_root();
    let id = std::process::id();
    let name = format!("bw-{id}");
    let dir = std::env::temp_dir().join(format!("m8trx-hostd-bw-{id}"));
    std::fs::create_dir_all(&dir).unwrap();
    let _cleanup = Cleanup {
        dir: dir.clone(),
        names: vec![name.clone()],
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics = format!("127.0.0.1:{port}");
    let d = Daemon::start_with(&dir, &["--metrics-listen", &metrics]);
    let spec = dir.join("spec.yml");
    std::fs::write(
        &spec,
        format!(
            "version: 1\nname: {name}\ntemplate: baseline\nsubdomains: [{name}.m8trx.test]\n\
             limits: {{ cpu: 1, memory: 256Mi, pids: 256, disk: 1Gi, egress: {EGRESS}, ingress: {INGRESS} }}\n\
             volume: {{ loop_image: {} }}\n\
             role: {{ arn: \"arn:aws:iam::123456789012:role/m8trx-customer\", external_id: ext-1 }}\n",
            dir.join("vol.img").display()
        ),
    )
    .unwrap();
    d.ok(&["create", "-f", spec.to_str().unwrap()]);
    let (image, tar) = busybox_tarball(&dir);
    d.ok(&["load", &name, "-i", tar.to_str().unwrap()]);
    // Two networks, one service on each; each serves zeros on 9001 and counts what it is
    // sent on 9000 (busybox nc is fast as a listener, not as a client).
    let serve = "(while true; do busybox nc -l -p 9001 < /dev/zero; done) & \
                 while true; do busybox nc -l -p 9000 | wc -c >> /tmp/in; done";
    let compose = dir.join("compose.yml");
    std::fs::write(
        &compose,
        format!(
            "services:\n  front:\n    image: {image}\n    command: [sh, -c, '{serve}']\n    networks: [default]\n  \
             back:\n    image: {image}\n    command: [sh, -c, '{serve}']\n    networks: [extra]\n\
             networks:\n  extra: {{}}\n"
        ),
    )
    .unwrap();
    d.ok(&["deploy", &name, "-f", compose.to_str().unwrap()]);
    let st = d.status(&name);
    let slot = st["slot"].as_u64().unwrap();
    assert!(
        st["steps_not_in_place"].as_array().unwrap().is_empty(),
        "{st}\n{}",
        sh(&format!(
            "tc -j qdisc show; for b in $(ip -o link show type bridge | grep -o 'm8t-{slot}-[0-9]*' | sort -u); \
             do echo $b; tc filter show dev $b ingress; tc filter show dev $b egress; done"
        ))
    );
    let bridges = sh(&format!(
        "ip -o link show type bridge | grep -o 'm8t-{slot}-[0-9]*' | sort -u"
    ));
    assert_eq!(
        bridges.lines().count(),
        2,
        "two networks, two bridges: {bridges}"
    );
    for br in bridges.lines() {
        let f = sh(&format!("tc filter show dev {br} egress"));
        assert!(f.contains(&format!("m8i-{slot}-in")), "{br} egress: {f}");
        let ports = sh(&format!(
            "ip -o link show master {br} | awk -F': ' '{{print $2}}' | cut -d@ -f1"
        ));
        assert_eq!(ports.lines().count(), 1, "one container on {br}: {ports}");
        for p in ports.lines() {
            let f = sh(&format!("tc filter show dev {p} ingress"));
            assert!(f.contains(&format!("m8i-{slot}-eg")), "{p} ingress: {f}");
        }
    }

    let egress_bytes = |d: &str| {
        metric(
            d,
            &format!("m8trx_tenant_network_bytes_total{{tenant=\"{name}\",direction=\"egress\"}}"),
        )
    };
    std::thread::sleep(Duration::from_secs(11)); // one metrics refresh with the bridges in
    let before = egress_bytes(&metrics);
    let containers = [
        format!("m8trx-{name}-front-1"),
        format!("m8trx-{name}-back-1"),
    ];
    let ips: Vec<String> = containers.iter().map(|c| address(&name, c)).collect();

    // Egress: both services send as fast as they can at once, each through its own bridge;
    // together they get the tenant's one budget.
    let eg = pulled_rate(
        &ips.iter()
            .map(|ip| format!("{ip}:9001"))
            .collect::<Vec<_>>(),
    );
    println!(
        "bandwidth: egress {:.2} MiB/s from two networks together (limit {:.2})",
        eg / 1048576.0,
        EGRESS as f64 / 1048576.0
    );
    assert!(
        eg > EGRESS as f64 * 0.6 && eg < EGRESS as f64 * 1.25,
        "egress held to its limit: {eg} B/s against {EGRESS}"
    );

    // Ingress: the host sends to both at once as fast as it can.
    let to: Vec<(String, String)> = containers
        .iter()
        .zip(&ips)
        .map(|(c, ip)| (c.clone(), format!("{ip}:9000")))
        .collect();
    let into = pushed_rate(&name, &to);
    println!(
        "bandwidth: ingress {:.2} MiB/s to two networks together (limit {:.2})",
        into / 1048576.0,
        INGRESS as f64 / 1048576.0
    );
    assert!(
        into > INGRESS as f64 * 0.6 && into < INGRESS as f64 * 1.25,
        "ingress held to its limit: {into} B/s against {INGRESS}"
    );

    // A container its engine restarts gets a new veth; supervision shapes it.
    let o = tenant_docker(&name, &["restart", "-t", "1", &containers[0]]);
    assert!(o.status.success(), "{}", text(&o));
    let shaped = || {
        sh(&format!(
            "for p in $(ip -o link show master m8t-{slot}-0 | awk -F': ' '{{print $2}}' | cut -d@ -f1); \
             do tc filter show dev $p ingress 2>/dev/null | grep -c 'm8i-{slot}-eg' || echo 0; done"
        ))
    };
    let all_shaped = || {
        let s = shaped();
        !s.trim().is_empty() && s.lines().all(|l| l.trim() != "0")
    };
    let t = Instant::now();
    while !all_shaped() && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        all_shaped(),
        "the restarted container's port shaped by supervision: {}",
        shaped()
    );

    // The metrics moved: bytes on the bridges, and the buckets ran dry.
    std::thread::sleep(Duration::from_secs(11));
    let after = egress_bytes(&metrics);
    assert!(
        after - before > EGRESS as f64 * SECS as f64 * 0.5,
        "egress bytes {before} -> {after}"
    );
    let dry = metric(
        &metrics,
        &format!("m8trx_tenant_bandwidth_limited_total{{tenant=\"{name}\",direction=\"egress\"}}"),
    );
    assert!(dry > 0.0, "the egress bucket ran dry");
    let log = std::fs::read_to_string(dir.join("hostd.log")).unwrap();
    assert!(
        log.contains("limit hit: bandwidth"),
        "one log line for the limit:\n{log}"
    );
    let m = metric(
        &metrics,
        &format!("m8trx_tenant_memory_bytes{{tenant=\"{name}\"}}"),
    );
    assert!(m > 0.0);
    // The tenant's series as an operator scrapes them (the closing note quotes this).
    for l in scrape(&metrics).lines().filter(|l| l.contains(&name)) {
        println!("scrape: {l}");
    }

    d.ok(&["destroy", &name, "--wipe"]);
    assert!(
        !sh("ip -o link show").contains(&format!("m8i-{slot}-")),
        "the tenant's IFBs are gone with it"
    );
    drop(d);
    std::fs::remove_dir_all(&dir).unwrap();
}
