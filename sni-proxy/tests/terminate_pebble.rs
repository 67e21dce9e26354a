//! Terminate mode end to end: pebble (Debian's ACME test CA) on loopback issues the route's
//! certificate through TLS-ALPN-01 answered on the proxy's own TLS port; curl then speaks
//! HTTP/1.1 and HTTP/2 to the proxy, which forwards to a plain-HTTP backend (Caddy).
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// A CA and a leaf for `localhost`/127.0.0.1 it signed: pebble's own HTTPS identity.
fn pebble_identity(dir: &TempDir) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let p = |n: &str| dir.join(n).display().to_string();
    let steps: Vec<Vec<String>> = vec![
        format!("req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=pebble-test-ca -keyout {} -out {}", p("ca.key"), p("ca.pem")),
        format!("req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost -keyout {} -out {}", p("pebble.key"), p("pebble.csr")),
        format!("x509 -req -in {} -CA {} -CAkey {} -CAcreateserial -days 2 -extfile {} -out {}", p("pebble.csr"), p("ca.pem"), p("ca.key"), p("ext.cnf"), p("pebble.pem")),
    ]
    .into_iter()
    .map(|s| s.split(' ').map(str::to_owned).collect())
    .collect();
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    for args in steps {
        let out = run(Command::new("openssl").args(&args), Duration::from_secs(20));
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (
        dir.join("ca.pem"),
        dir.join("pebble.pem"),
        dir.join("pebble.key"),
    )
}

#[test]
fn terminate_mode_gets_a_pebble_certificate_and_forwards_http1_and_http2() {
    let dir = TempDir::new("terminate");
    let (ca, pebble_cert, pebble_key) = pebble_identity(&dir);
    let (acme_port, mgmt_port, dns_port, chall_mgmt, tls_port) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );

    // DNS for the validation: every name resolves to 127.0.0.1 (and no AAAA).
    let chall = Proc::spawn(Command::new("pebble-challtestsrv").args([
        "-dns01",
        &format!("127.0.0.1:{dns_port}"),
        "-http01",
        "",
        "-https01",
        "",
        "-tlsalpn01",
        "",
        "-management",
        &format!("127.0.0.1:{chall_mgmt}"),
        "-defaultIPv6",
        "",
    ]));
    let config = serde_json::json!({"pebble": {
        "listenAddress": format!("127.0.0.1:{acme_port}"),
        "managementListenAddress": format!("127.0.0.1:{mgmt_port}"),
        "certificate": pebble_cert, "privateKey": pebble_key,
        "httpPort": free_port(), "tlsPort": tls_port,
        "ocspResponderURL": "", "externalAccountBindingRequired": false,
    }});
    std::fs::write(dir.join("pebble.json"), config.to_string()).unwrap();
    let pebble = Proc::spawn(
        Command::new("pebble")
            .arg("-config")
            .arg(dir.join("pebble.json"))
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0"),
    );
    // Both must answer before the proxy's first order, or rustls-acme backs off for a while.
    wait_port(chall_mgmt, &chall);
    wait_port(acme_port, &pebble);
    wait_port(mgmt_port, &pebble);
    let caddy = Caddy::start(&dir, "shop.test", 300 * 1024);
    let routes = format!(
        r#"[acme]
directory = "https://127.0.0.1:{acme_port}/dir"
contact = ["mailto:ops@shop.test"]
cache_dir = "{cache}"
ca_file = "{ca}"

[[route]]
sni = "shop.test"
mode = "terminate"
backend = "127.0.0.1:{http}"
"#,
        cache = dir.join("acme-cache").display(),
        ca = ca.display(),
        http = caddy.http_port,
    );
    let tls_addr = format!("127.0.0.1:{tls_port}");
    let proxy = Proxy::start_on(&dir, &routes, &tls_addr, &[]);
    let wait = |p: &Proc, what: &str| {
        format!(
            "{what}; pebble:\n{}\nchalltestsrv:\n{}",
            p.log(),
            chall.log()
        )
    };
    let issued = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        proxy.proc.wait_log(
            &["new certificate issued", "shop.test"],
            Duration::from_secs(90),
        )
    }));
    assert!(issued.is_ok(), "{}", wait(&pebble, "no certificate"));
    // Pebble validated through the proxy's own :443, with ALPN acme-tls/1.
    proxy.proc.wait_log(
        &["alpn=acme-tls/1", "outcome=\"acme_challenge\""],
        Duration::from_secs(5),
    );

    // The issuing root, from pebble's management API.
    let root = dir.join("pebble-root.pem");
    let out = run(
        Command::new("curl")
            .args(["-sS", "--fail", "--cacert"])
            .arg(&ca)
            .arg("-o")
            .arg(&root)
            .arg(format!("https://127.0.0.1:{mgmt_port}/roots/0")),
        Duration::from_secs(20),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let want = std::fs::read(dir.join("www/big.bin")).unwrap();
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let body = dir.join(&format!("body-{version}"));
        let out = curl(
            proxy.tls,
            "shop.test",
            "/big.bin",
            &root,
            &[
                flag,
                "-w",
                "%{http_version} %{http_code}",
                "-o",
                body.to_str().unwrap(),
            ],
        );
        assert!(
            out.status.success(),
            "curl {flag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{version} 200"),
            "{flag}"
        );
        assert!(
            std::fs::read(&body).unwrap() == want,
            "{flag}: body differs"
        );
    }
    let line = proxy
        .proc
        .wait_log(&["route=shop.test", "alpn=h2"], Duration::from_secs(5));
    assert!(!line.contains("bytes_down=0 "), "{line}");
    drop(chall);
}
