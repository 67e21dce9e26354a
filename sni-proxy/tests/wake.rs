//! Connections to a sleeping tenant: held (the ClientHello bytes kept, nothing terminated)
//! while the proxy asks hostd — here the test, on the admin socket's `watch-wakes` stream —
//! to wake the tenant; forwarded byte for byte once the route is marked awake; closed
//! cleanly past the per-tenant queue or the deadline. `activity` counts open connections.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::*;

const NAME: &str = "sleepy.test";

fn admin(sock: &std::path::Path, cmd: &str) -> serde_json::Value {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    writeln!(s, "{cmd}").unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("admin answer {line:?}: {e}"))
}

fn route(backend: u16, asleep: bool) -> String {
    format!(
        r#"{{"cmd":"set-route","route":{{"sni":"{NAME}","backend":"127.0.0.1:{backend}","tenant":"sleepy","asleep":{asleep}}}}}"#
    )
}

/// A `watch-wakes` session: the lines hostd would read.
fn watch(sock: &std::path::Path) -> BufReader<UnixStream> {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    writeln!(s, r#"{{"cmd":"watch-wakes"}}"#).unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), r#"{"ok":true}"#);
    r
}

fn next_wake(r: &mut BufReader<UnixStream>) -> String {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    v["wake"].as_str().unwrap().to_owned()
}

#[test]
fn a_sleeping_tenant_is_woken_and_its_held_connection_forwarded() {
    let dir = TempDir::new("wake");
    let sock = dir.join("admin.sock");
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = backend.local_addr().unwrap().port();
    let proxy = Proxy::start(
        &dir,
        "[limits]\nwake_queue_per_tenant = 2\nwake_timeout_ms = 3000\n",
        &["--admin-socket", sock.to_str().unwrap()],
    );
    assert_eq!(admin(&sock, &route(port, true))["ok"], true);
    let mut wakes = watch(&sock);

    // A client arrives: held, and hostd is asked once for the tenant.
    let hello = capture_client_hello(NAME);
    let mut client = TcpStream::connect(proxy.tls).unwrap();
    client.write_all(&reframe(&hello, 100)).unwrap();
    assert_eq!(next_wake(&mut wakes), "sleepy");
    let act = admin(&sock, r#"{"cmd":"activity"}"#);
    assert_eq!(act["tenants"]["sleepy"]["open"], 1, "{act}");
    assert_eq!(act["tenants"]["sleepy"]["held"], 1, "{act}");
    backend.set_nonblocking(true).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        backend.accept().is_err(),
        "nothing reaches the backend while the tenant sleeps"
    );

    // "hostd" wakes the tenant: the held bytes reach the backend as the client sent them.
    let woken = Instant::now();
    assert_eq!(admin(&sock, &route(port, false))["ok"], true);
    backend.set_nonblocking(false).unwrap();
    let (mut b, _) = backend.accept().unwrap();
    b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = vec![0u8; reframe(&hello, 100).len()];
    b.read_exact(&mut got).unwrap();
    assert_eq!(got, reframe(&hello, 100), "the ClientHello, byte for byte");
    println!(
        "wake: held connection forwarded {:?} after the route woke",
        woken.elapsed()
    );
    b.write_all(b"from-backend").unwrap();
    let mut reply = [0u8; 12];
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"from-backend");
    drop((b, client));

    // Asleep again: the queue holds two, the third is closed at once.
    assert_eq!(admin(&sock, &route(port, true))["ok"], true);
    let held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut c = TcpStream::connect(proxy.tls).unwrap();
            c.write_all(&hello).unwrap();
            c
        })
        .collect();
    assert_eq!(next_wake(&mut wakes), "sleepy");
    std::thread::sleep(Duration::from_millis(300));
    let mut third = TcpStream::connect(proxy.tls).unwrap();
    third.write_all(&hello).unwrap();
    assert!(
        closed_within(&mut third, Duration::from_secs(2)),
        "past the queue: closed"
    );
    // Nobody wakes it: the held ones are closed at the deadline (3 s), cleanly.
    for mut c in held {
        assert!(
            closed_within(&mut c, Duration::from_secs(6)),
            "closed at the deadline"
        );
    }
    let metrics = proxy.metrics_text();
    for want in [
        r#"m8trx_proxy_wake_holds_total{tenant="sleepy",outcome="woken"} 1"#,
        r#"m8trx_proxy_wake_holds_total{tenant="sleepy",outcome="wake_queue_full"} 1"#,
        r#"m8trx_proxy_wake_holds_total{tenant="sleepy",outcome="wake_timeout"} 2"#,
    ] {
        assert!(metrics.contains(want), "{want} missing:\n{metrics}");
    }
    let act = admin(&sock, r#"{"cmd":"activity"}"#);
    assert_eq!(act["tenants"]["sleepy"]["open"], 0, "{act}");
    assert!(act["tenants"]["sleepy"]["last_active"].as_u64().unwrap() > 0);
}

#[test]
fn a_listener_that_connects_late_learns_of_held_connections() {
    let dir = TempDir::new("wake-late");
    let sock = dir.join("admin.sock");
    let proxy = Proxy::start(
        &dir,
        "[limits]\nwake_timeout_ms = 5000\n",
        &["--admin-socket", sock.to_str().unwrap()],
    );
    assert_eq!(admin(&sock, &route(9, true))["ok"], true);
    let mut c = TcpStream::connect(proxy.tls).unwrap();
    c.write_all(&capture_client_hello(NAME)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(proxy
        .proc
        .log()
        .contains("no hostd listens for wake requests"));
    // hostd (re)starts and subscribes: it is told at once.
    let mut wakes = watch(&sock);
    assert_eq!(next_wake(&mut wakes), "sleepy");
}
