//! :443 passthrough against a real Caddy tenant backend with its own certificate and the
//! `proxy_protocol` listener wrapper. Needs M8TRX_CADDY_BIN (written by scripts/test-env).
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

const NAME: &str = "acme.test";

fn routes(caddy: &Caddy, limits: &str) -> String {
    format!(
        "[limits]\n{limits}\n\n[[route]]\nsni = \"{NAME}\"\nbackend = \"127.0.0.1:{}\"\nproxy_protocol = true\n",
        caddy.port
    )
}

#[test]
fn curl_and_openssl_see_the_tenant_cert_and_caddy_sees_the_client() {
    let dir = TempDir::new("cert");
    let caddy = Caddy::start(&dir, NAME, 0);
    let proxy = Proxy::start(&dir, &routes(&caddy, ""), &[]);

    // curl from 127.0.0.2 verifies the tenant's own certificate through the proxy.
    let out = curl(
        proxy.tls,
        NAME,
        "/",
        &caddy.cert,
        &["--interface", "127.0.0.2"],
    );
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("hello from {NAME}")
    );

    // Caddy learned the real client address from the PROXY v2 header (the proxy itself
    // connects from 127.0.0.1).
    let start = Instant::now();
    let entry = loop {
        if let Some(e) = caddy
            .access_lines()
            .into_iter()
            .find(|e| e["request"]["uri"] == "/")
        {
            break e;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no Caddy access-log entry"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(entry["request"]["remote_ip"], "127.0.0.2", "{entry}");

    // The proxy's access-log line names route, client, bytes and outcome.
    let line = proxy.proc.wait_log(
        &["access", "127.0.0.2", "route=acme.test"],
        Duration::from_secs(5),
    );
    assert!(
        line.contains("outcome=\"closed\"") || line.contains("outcome=\"client_error\""),
        "{line}"
    );
    assert!(!line.contains("bytes_down=0 "), "{line}");

    // openssl s_client sees exactly the certificate Caddy was given.
    let (ok, text) = s_client(
        proxy.tls,
        Some(NAME),
        &[
            "-verify_return_error",
            "-CAfile",
            caddy.cert.to_str().unwrap(),
        ],
    );
    assert!(ok, "openssl s_client failed:\n{text}");
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    let pem = std::fs::read_to_string(&caddy.cert).unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let shown: String = text.lines().map(str::trim).collect();
    assert!(
        shown.contains(&body),
        "the served certificate is not the tenant's own:\n{text}"
    );

    // A wildcard-covered name under another route pattern also reaches Caddy's cert path.
    // ALPN acme-tls/1 is routed to the tenant like any other connection.
    let (_ok, _text) = s_client(proxy.tls, Some(NAME), &["-alpn", "acme-tls/1"]);
    let line = proxy.proc.wait_log(
        &["alpn=acme-tls/1", "route=acme.test"],
        Duration::from_secs(5),
    );
    assert!(
        !line.contains("bytes_down=0 "),
        "the tenant answered the acme-tls/1 hello: {line}"
    );

    // Metrics count these connections by route.
    let m = proxy.metrics_text();
    assert!(
        m.contains("m8trx_proxy_connections_total{route=\"acme.test\""),
        "{m}"
    );
    assert!(m.contains("m8trx_proxy_client_hello_seconds_count"), "{m}");
}

#[test]
fn fragmented_client_hello_reaches_caddy_intact() {
    let dir = TempDir::new("frag");
    let caddy = Caddy::start(&dir, NAME, 0);
    let proxy = Proxy::start(&dir, &routes(&caddy, ""), &[]);
    let der = cert_der(&caddy.cert);
    let hello = capture_client_hello(NAME);
    // 40-byte TLS records, each sent as several small TCP segments with pauses between.
    let wire = reframe(&hello, 40);
    assert!(
        wire.len() > hello.len() + 5 * 3,
        "split into several records"
    );
    let mut s = TcpStream::connect(proxy.tls).unwrap();
    s.set_nodelay(true).unwrap();
    for seg in wire.chunks(17) {
        s.write_all(seg).unwrap();
        std::thread::sleep(Duration::from_millis(3));
    }
    // TLS 1.2: the server's Certificate message comes back in clear; it must be the tenant's.
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        if got.windows(der.len()).any(|w| w == der) {
            break;
        }
    }
    assert_eq!(
        got.first(),
        Some(&0x16),
        "Caddy answered with a handshake record: {got:02x?}"
    );
    assert!(
        got.windows(der.len()).any(|w| w == der),
        "the tenant certificate came back through the proxy ({} bytes)",
        got.len()
    );
    drop(s); // the access line is written when the connection ends
    proxy.proc.wait_log(
        &["access", "sni=\"acme.test\"", "route=acme.test"],
        Duration::from_secs(5),
    );
}

#[test]
fn unknown_and_missing_sni_garbage_and_slow_clients_are_closed() {
    let dir = TempDir::new("refuse");
    let caddy = Caddy::start(&dir, NAME, 0);
    let proxy = Proxy::start(&dir, &routes(&caddy, "client_hello_timeout_ms = 700"), &[]);

    let (ok, text) = s_client(proxy.tls, Some("other.test"), &[]);
    assert!(!ok, "unknown SNI must be refused:\n{text}");
    assert!(
        text.contains("unrecognized name"),
        "the client is told why:\n{text}"
    );
    proxy.proc.wait_log(
        &["sni=\"other.test\"", "outcome=\"unknown_sni\""],
        Duration::from_secs(5),
    );

    let (ok, text) = s_client(proxy.tls, None, &[]);
    assert!(
        !ok,
        "no SNI and no default backend must be refused:\n{text}"
    );
    proxy
        .proc
        .wait_log(&["outcome=\"no_sni\""], Duration::from_secs(5));

    // Garbage: closed at once, without waiting for the ClientHello timeout.
    let mut s = TcpStream::connect(proxy.tls).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: acme.test\r\n\r\n")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 64];
    let r = s.read(&mut buf);
    assert!(matches!(r, Ok(0) | Err(_)), "garbage got an answer: {r:?}");
    assert!(t.elapsed() < Duration::from_millis(500));
    proxy
        .proc
        .wait_log(&["outcome=\"not_tls\""], Duration::from_secs(5));

    // Slow client: a partial hello, then silence; closed after the 700 ms bound.
    let hello = capture_client_hello(NAME);
    let mut s = TcpStream::connect(proxy.tls).unwrap();
    s.write_all(&hello[..20]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t = Instant::now();
    let r = s.read(&mut buf);
    let waited = t.elapsed();
    assert!(
        matches!(r, Ok(0) | Err(_)),
        "slow client got an answer: {r:?}"
    );
    assert!(
        waited >= Duration::from_millis(600) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    let line = proxy.proc.wait_log(
        &["limit hit", "client_hello_timeout"],
        Duration::from_secs(5),
    );
    assert!(line.contains("received=20"), "{line}");

    // None of these reached the tenant.
    assert!(caddy.access_lines().is_empty(), "Caddy saw a request");
    let m = proxy.metrics_text();
    assert!(
        m.contains("m8trx_proxy_limit_hits_total{limit=\"client_hello_timeout\"} 1"),
        "{m}"
    );
    assert!(m.contains("outcome=\"unknown_sni\"} 1"), "{m}");
}

#[test]
fn default_backend_takes_missing_and_unknown_sni() {
    let dir = TempDir::new("default");
    let caddy = Caddy::start(&dir, NAME, 0);
    let file = format!(
        "{}\n[default]\nbackend = \"127.0.0.1:{}\"\nproxy_protocol = true\n",
        routes(&caddy, ""),
        caddy.port
    );
    let proxy = Proxy::start(&dir, &file, &[]);
    // Unknown name: Caddy gets it (it has no certificate for it, but it is Caddy that answers).
    let _ = s_client(proxy.tls, Some("other.test"), &[]);
    let line = proxy.proc.wait_log(
        &["sni=\"other.test\"", "route=default"],
        Duration::from_secs(5),
    );
    assert!(
        !line.contains("bytes_down=0 "),
        "the default backend answered: {line}"
    );
    let _ = s_client(proxy.tls, None, &[]);
    proxy
        .proc
        .wait_log(&["sni=\"-\"", "route=default"], Duration::from_secs(5));
}
