//! Operating the proxy with a real Caddy behind it: limits and timeouts, reload during a long
//! download (file watch, SIGHUP, admin socket), SIGTERM drain, :80 routing, JSON logs,
//! privilege drop.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const NAME: &str = "acme.test";

fn route(caddy: &Caddy, sni: &str) -> String {
    format!(
        "[[route]]\nsni = \"{sni}\"\nbackend = \"127.0.0.1:{}\"\nproxy_protocol = true\nhttp_backend = \"127.0.0.1:{}\"\n",
        caddy.port, caddy.http_port
    )
}

/// Starts curl downloading /big.bin through the proxy at `rate`, writing to `out`.
fn start_download(
    proxy: SocketAddr,
    caddy: &Caddy,
    out: &std::path::Path,
    rate: &str,
) -> std::process::Child {
    Command::new("curl")
        .args([
            "-sS",
            "--http1.1",
            "--max-time",
            "60",
            "--limit-rate",
            rate,
            "--cacert",
        ])
        .arg(&caddy.cert)
        .arg("--resolve")
        .arg(format!("{NAME}:{}:127.0.0.1", proxy.port()))
        .arg("-o")
        .arg(out)
        .arg(format!("https://{NAME}:{}/big.bin", proxy.port()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn admin(sock: &std::path::Path, cmd: &str) -> serde_json::Value {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    writeln!(s, "{cmd}").unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("admin answer {line:?}: {e}"))
}

#[test]
fn reload_by_file_sighup_and_admin_leaves_a_long_download_intact() {
    let dir = TempDir::new("reload");
    let size = 48 * 1024 * 1024;
    let caddy = Caddy::start(&dir, NAME, size);
    let sock = dir.join("admin.sock");
    let proxy = Proxy::start(
        &dir,
        &route(&caddy, NAME),
        &["--admin-socket", sock.to_str().unwrap()],
    );
    let out = dir.join("download.bin");
    let mut curl = start_download(proxy.tls, &caddy, &out, "12M"); // about 4 s
    std::thread::sleep(Duration::from_millis(500));

    // 1. The file changes: a new route appears, picked up by the watch.
    let mut file = route(&caddy, NAME);
    file.push_str(&route(&caddy, "*.alias.test"));
    std::fs::write(&proxy.routes, &file).unwrap();
    proxy.proc.wait_log(
        &["routes reloaded", "file-watch", "routes=2"],
        Duration::from_secs(5),
    );
    // 2. SIGHUP.
    proxy.proc.signal("HUP");
    proxy
        .proc
        .wait_log(&["routes reloaded", "SIGHUP"], Duration::from_secs(5));
    // 3. An invalid file is refused and the routes stay.
    std::fs::write(&proxy.routes, "[[route]]\nsni = 'broken'\n").unwrap();
    proxy
        .proc
        .wait_log(&["routes reload refused"], Duration::from_secs(5));
    std::fs::write(&proxy.routes, &file).unwrap();
    proxy.proc.wait_log(
        &["routes reloaded", "file-watch", "routes=2"],
        Duration::from_secs(5),
    );
    // 4. The admin socket: reload, add a route, remove one, status.
    assert_eq!(admin(&sock, r#"{"cmd":"reload"}"#)["ok"], true);
    let set = format!(
        r#"{{"cmd":"set-route","route":{{"sni":"new.test","backend":"127.0.0.1:{}","proxy_protocol":true}}}}"#,
        caddy.port
    );
    assert_eq!(
        admin(&sock, &set),
        serde_json::json!({"ok": true, "routes": 3})
    );
    assert_eq!(
        admin(&sock, r#"{"cmd":"remove-route","sni":"*.alias.test"}"#)["routes"],
        2
    );
    let missing = admin(&sock, r#"{"cmd":"remove-route","sni":"nope.test"}"#);
    assert_eq!(missing["ok"], false, "{missing}");
    let status = admin(&sock, r#"{"cmd":"status"}"#);
    assert_eq!(
        status["open_connections"], 1,
        "the download is still open: {status}"
    );
    let snis: Vec<_> = status["routes"]["route"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["sni"].clone())
        .collect();
    assert_eq!(snis, vec!["acme.test", "new.test"], "{status}");
    assert!(
        std::fs::read_to_string(&proxy.routes)
            .unwrap()
            .contains("new.test"),
        "edits are written to the file"
    );
    assert_eq!(admin(&sock, "nonsense")["ok"], false);

    // The new route serves new connections at once.
    let _ = s_client(proxy.tls, Some("new.test"), &[]);
    proxy.proc.wait_log(
        &["sni=\"new.test\"", "route=new.test"],
        Duration::from_secs(5),
    );

    // The download that was in flight through all of it is complete and exact.
    let t = Instant::now();
    let status = loop {
        if let Some(s) = curl.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "download hangs");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(curl.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(status.success(), "curl failed: {err}");
    let got = std::fs::read(&out).unwrap();
    let want = std::fs::read(dir.join("www/big.bin")).unwrap();
    assert_eq!(got.len(), size);
    assert!(got == want, "downloaded bytes differ from the served file");
    let m = proxy.metrics_text();
    assert!(
        m.contains("m8trx_proxy_reloads_total{result=\"failed\"} 1"),
        "{m}"
    );
}

#[test]
fn sigterm_drains_open_connections_then_exits() {
    let dir = TempDir::new("drain");
    let caddy = Caddy::start(&dir, NAME, 16 * 1024 * 1024);
    let mut proxy = Proxy::start(&dir, &route(&caddy, NAME), &["--drain-timeout-secs", "20"]);
    let out = dir.join("download.bin");
    let mut curl = start_download(proxy.tls, &caddy, &out, "8M"); // about 2 s
    std::thread::sleep(Duration::from_millis(400));
    proxy.proc.signal("TERM");
    proxy
        .proc
        .wait_log(&["listeners closed"], Duration::from_secs(5));
    assert!(
        TcpStream::connect(proxy.tls).is_err(),
        "no new connection once draining"
    );
    assert!(
        curl.wait().unwrap().success(),
        "the in-flight download finished"
    );
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 16 * 1024 * 1024);
    let st = proxy.proc.child.wait().unwrap();
    assert!(st.success(), "exit status {st:?}");
    assert!(proxy.proc.log().contains("drained; exiting"));

    // With a connection that never ends, the deadline ends the process.
    let dir = TempDir::new("drain-deadline");
    let caddy = Caddy::start(&dir, NAME, 16 * 1024 * 1024);
    let mut proxy = Proxy::start(&dir, &route(&caddy, NAME), &["--drain-timeout-secs", "1"]);
    let mut slow = start_download(proxy.tls, &caddy, &dir.join("slow.bin"), "20K");
    std::thread::sleep(Duration::from_millis(400));
    let t = Instant::now();
    proxy.proc.signal("TERM");
    let st = proxy.proc.child.wait().unwrap();
    let took = t.elapsed();
    assert!(st.success());
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    proxy.proc.wait_log(
        &["drain deadline reached", "left=1"],
        Duration::from_secs(2),
    );
    let _ = slow.kill();
    let _ = slow.wait();
}

#[test]
fn connection_limits_and_timeouts_each_log_one_line() {
    let dir = TempDir::new("limits");
    let caddy = Caddy::start(&dir, NAME, 0);
    // A backend whose accept queue is full: SYNs are dropped, connects hang.
    let stuck = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    stuck
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    stuck.listen(0).unwrap();
    let stuck_addr = stuck.local_addr().unwrap().as_socket().unwrap();
    let _fill: Vec<_> = (0..3)
        .filter_map(|_| {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
            s.set_nonblocking(true).ok()?;
            let _ = s.connect(&stuck_addr.into());
            Some(s)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let file = format!(
        "[limits]\nmax_connections = 3\nmax_connections_per_ip = 2\nidle_timeout_secs = 1\nconnect_timeout_ms = 300\n\n{}\n[[route]]\nsni = \"stuck.test\"\nbackend = \"{stuck_addr}\"\n",
        route(&caddy, NAME)
    );
    let proxy = Proxy::start(&dir, &file, &[]);
    let hello = capture_client_hello(NAME);

    // Two from 127.0.0.1 are relayed to Caddy; the third from the same IP is refused.
    let mut a1 = connect_from("127.0.0.1", proxy.tls);
    let mut a2 = connect_from("127.0.0.1", proxy.tls);
    a1.write_all(&hello).unwrap();
    a2.write_all(&hello).unwrap();
    let mut a3 = connect_from("127.0.0.1", proxy.tls);
    assert!(
        closed_within(&mut a3, Duration::from_secs(2)),
        "third connection from one IP is refused"
    );
    proxy.proc.wait_log(
        &["limit hit", "max_connections_per_ip", "max=2"],
        Duration::from_secs(2),
    );
    // Another IP still gets in, then the total is full for everyone.
    let mut b1 = connect_from("127.0.0.2", proxy.tls);
    assert!(
        !closed_within(&mut b1, Duration::from_millis(300)),
        "another IP is admitted"
    );
    let mut c1 = connect_from("127.0.0.3", proxy.tls);
    assert!(
        closed_within(&mut c1, Duration::from_secs(2)),
        "over max_connections is refused"
    );
    proxy.proc.wait_log(
        &["limit hit", "limit=\"max_connections\"", "max=3"],
        Duration::from_secs(2),
    );

    // The relayed ones go quiet after Caddy's first flight: the idle timeout closes them.
    let line = proxy
        .proc
        .wait_log(&["limit hit", "idle_timeout"], Duration::from_secs(5));
    assert!(line.contains("route=acme.test"), "{line}");
    proxy.proc.wait_log(
        &["access", "outcome=\"idle_timeout\""],
        Duration::from_secs(5),
    );
    drop((a1, a2, b1));

    // A backend that does not accept in time.
    std::thread::sleep(Duration::from_millis(300));
    let (ok, _) = s_client(proxy.tls, Some("stuck.test"), &[]);
    assert!(!ok);
    proxy.proc.wait_log(
        &["limit hit", "connect_timeout", "stuck.test"],
        Duration::from_secs(5),
    );
    proxy
        .proc
        .wait_log(&["outcome=\"backend_unreachable\""], Duration::from_secs(5));

    let m = proxy.metrics_text();
    for limit in [
        "max_connections",
        "max_connections_per_ip",
        "idle_timeout",
        "connect_timeout",
    ] {
        assert!(
            m.contains(&format!(
                "m8trx_proxy_limit_hits_total{{limit=\"{limit}\"}}"
            )),
            "{limit}: {m}"
        );
    }
    let per_ip_lines = proxy
        .proc
        .log()
        .lines()
        .filter(|l| l.contains("limit=\"max_connections_per_ip\""))
        .count();
    assert_eq!(per_ip_lines, 1, "one line per limit hit");
}

#[test]
fn port_80_serves_acme_challenges_and_redirects_the_rest() {
    let dir = TempDir::new("http80");
    let caddy = Caddy::start(&dir, NAME, 1024);
    let file = format!(
        "{}\n[[route]]\nsni = \"*.fwd.test\"\nbackend = \"127.0.0.1:{}\"\nhttp_backend = \"127.0.0.1:{}\"\nhttp = \"forward\"\n",
        route(&caddy, NAME),
        caddy.port,
        caddy.http_port
    );
    let proxy = Proxy::start(&dir, &file, &[]);
    let http = proxy.http.unwrap();
    let (head, body) = http_get(http, "/.well-known/acme-challenge/tok123", "acme.test");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"tok123.thumbprint");
    let (head, _) = http_get(http, "/some/page?x=1", "ACME.test:80");
    assert!(head.starts_with("HTTP/1.1 308"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("location: https://acme.test/some/page?x=1"),
        "{head}"
    );
    let (head, body) = http_get(http, "/big.bin", "www.fwd.test");
    assert!(head.starts_with("HTTP/1.1 200"), "forwarded: {head}");
    assert_eq!(body.len(), 1024);
    let (head, _) = http_get(http, "/.well-known/acme-challenge/tok123", "unknown.test");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    proxy.proc.wait_log(
        &["listener=\"http\"", "action=\"redirect\"", "status=308"],
        Duration::from_secs(2),
    );
    let m = proxy.metrics_text();
    assert!(
        m.contains("m8trx_proxy_http_requests_total{action=\"acme\",outcome=\"ok\"} 1"),
        "{m}"
    );
}

#[test]
fn json_log_format_gives_one_object_per_line() {
    let dir = TempDir::new("json");
    let proxy = Proxy::start(&dir, "", &["--log-format", "json"]);
    let mut s = TcpStream::connect(proxy.tls).unwrap();
    s.write_all(b"\x00garbage").unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(2)));
    let line = proxy.proc.wait_log(&["not_tls"], Duration::from_secs(5));
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
    assert_eq!(v["target"], "access");
    assert_eq!(v["outcome"], "not_tls");
    assert_eq!(v["route"], "-");
    assert!(
        v["client"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{v}"
    );
    assert!(v["duration_ms"].is_u64(), "{v}");
}

#[test]
fn runs_as_user_with_only_cap_net_bind_service() {
    let uid = std::fs::read_to_string("/proc/self/status").unwrap();
    assert!(
        uid.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0")),
        "this test must run as root (make test does) to see the privilege drop"
    );
    let dir = TempDir::new("caps");
    let proxy = Proxy::start(&dir, "", &["--user", "nobody"]);
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", proxy.proc.child.id())).unwrap();
    let field = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_owned()
    };
    let nobody = String::from_utf8(
        Command::new("id")
            .args(["-u", "nobody"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(field("Uid:"), nobody.trim(), "{status}");
    // CAP_NET_BIND_SERVICE is bit 10: 0x400.
    assert_eq!(field("CapEff:"), "0000000000000400", "{status}");
    assert_eq!(field("CapPrm:"), "0000000000000400", "{status}");
    assert_eq!(field("CapInh:"), "0000000000000000", "{status}");
    assert_eq!(field("CapBnd:"), "0000000000000400", "{status}");
    // Every thread, not only the main one, carries the reduced set.
    for t in std::fs::read_dir(format!("/proc/{}/task", proxy.proc.child.id())).unwrap() {
        let s = std::fs::read_to_string(t.unwrap().path().join("status")).unwrap();
        assert!(s.lines().any(|l| l == "CapEff:\t0000000000000400"), "{s}");
    }
    // It still serves.
    let mut s = TcpStream::connect(proxy.tls).unwrap();
    s.write_all(b"x").unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(2)));
}
