//! One tenant's share of the proxy: at most `max_connections_per_tenant` open and
//! `new_connections_per_second_per_tenant` admitted per second, over all its names, while
//! another tenant is admitted as usual; a flood is logged once (with its count), and each
//! refusal is counted per tenant. One source's share: `new_connections_per_second_per_ip`,
//! refused at accept while another source is admitted.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use common::*;

fn routes(backend: u16, open: usize, rate: usize) -> String {
    format!(
        "[limits]\nmax_connections_per_tenant = {open}\nnew_connections_per_second_per_tenant = {rate}\n\
         [[route]]\nsni = \"a.busy.test\"\nbackend = \"127.0.0.1:{backend}\"\ntenant = \"busy\"\n\
         [[route]]\nsni = \"b.busy.test\"\nbackend = \"127.0.0.1:{backend}\"\ntenant = \"busy\"\n\
         [[route]]\nsni = \"calm.test\"\nbackend = \"127.0.0.1:{backend}\"\ntenant = \"calm\"\n"
    )
}

/// A connection that sent its ClientHello for `name`.
fn hello(proxy: &Proxy, record: &[u8]) -> TcpStream {
    let mut c = TcpStream::connect(proxy.tls).unwrap();
    c.write_all(record).unwrap();
    c
}

/// Accepts (and keeps) every connection the proxy makes to the backend.
fn backend() -> (u16, std::sync::mpsc::Receiver<TcpStream>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            if tx.send(s).is_err() {
                break;
            }
        }
    });
    (port, rx)
}

/// 40 connections at once from 127.0.0.1 against a rate of 5 per second: about a second's
/// worth must reach the backend. Returns the connections (kept open) and that count.
fn flood(
    proxy: &Proxy,
    record: &[u8],
    accepted: &std::sync::mpsc::Receiver<TcpStream>,
) -> (Vec<TcpStream>, usize) {
    let conns: Vec<TcpStream> = (0..40).map(|_| hello(proxy, record)).collect();
    std::thread::sleep(Duration::from_secs(1));
    let mut admitted = 0;
    while accepted.try_recv().is_ok() {
        admitted += 1;
    }
    assert!(
        (5..=10).contains(&admitted),
        "about a second's worth (5) of 40 admitted, got {admitted}"
    );
    (conns, admitted)
}

#[test]
fn a_tenant_gets_its_share_of_open_connections_over_all_its_names() {
    let dir = TempDir::new("tenant-open");
    let (port, accepted) = backend();
    let proxy = Proxy::start(&dir, &routes(port, 2, 1000), &[]);
    let (a, b, calm) = (
        capture_client_hello("a.busy.test"),
        capture_client_hello("b.busy.test"),
        capture_client_hello("calm.test"),
    );
    let _one = hello(&proxy, &a);
    let _two = hello(&proxy, &b);
    // Held open: a backend that closed would end the relays and free the tenant's share.
    let _held: Vec<TcpStream> = (0..2)
        .map(|_| accepted.recv_timeout(Duration::from_secs(5)).unwrap())
        .collect();
    let mut three = hello(&proxy, &a);
    assert!(
        closed_within(&mut three, Duration::from_secs(2)),
        "a third connection of the same tenant is refused"
    );
    let _other = hello(&proxy, &calm);
    accepted
        .recv_timeout(Duration::from_secs(5))
        .expect("another tenant is admitted as usual");
    let m = proxy.metrics_text();
    assert!(
        m.contains(r#"m8trx_proxy_tenant_limit_hits_total{tenant="busy",limit="max_connections_per_tenant"} 1"#),
        "{m}"
    );
    assert!(proxy
        .proc
        .log()
        .contains("limit hit: tenant connection refused"));
}

#[test]
fn a_flood_of_new_connections_is_cut_to_the_tenants_rate_and_logged_once() {
    let dir = TempDir::new("tenant-rate");
    let (port, accepted) = backend();
    let proxy = Proxy::start(&dir, &routes(port, 1000, 5), &[]);
    let a = capture_client_hello("a.busy.test");
    let (conns, admitted) = flood(&proxy, &a, &accepted);
    let log = proxy.proc.log();
    assert_eq!(
        log.matches("limit hit: tenant connection refused").count(),
        1,
        "one line for the flood:\n{log}"
    );
    let m = proxy.metrics_text();
    let refused = m
        .lines()
        .find(|l| l.starts_with(r#"m8trx_proxy_tenant_limit_hits_total{tenant="busy",limit="new_connections_per_second_per_tenant"}"#))
        .and_then(|l| l.rsplit(' ').next()?.parse::<usize>().ok())
        .unwrap();
    assert_eq!(refused + admitted, 40, "{m}");
    drop(conns);
}

#[test]
fn a_flood_from_one_source_is_cut_at_accept_while_another_source_is_admitted() {
    let dir = TempDir::new("source-rate");
    let (port, accepted) = backend();
    let routes = routes(port, 1000, 1000).replace(
        "[limits]\n",
        "[limits]\nnew_connections_per_second_per_ip = 5\n",
    );
    let proxy = Proxy::start(&dir, &routes, &[]);
    let calm = capture_client_hello("calm.test");
    let (conns, admitted) = flood(&proxy, &calm, &accepted);
    // Another source address (loopback's 127.0.0.2) has its own share.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(
        &"127.0.0.2:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    sock.connect(&proxy.tls.into()).unwrap();
    let mut other: TcpStream = sock.into();
    other.write_all(&calm).unwrap();
    accepted
        .recv_timeout(Duration::from_secs(5))
        .expect("a connection from another source is admitted");
    let log = proxy.proc.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("limit=\"new_connections_per_second_per_ip\""))
        .collect();
    assert_eq!(lines.len(), 1, "one line for the flood:\n{log}");
    let m = proxy.metrics_text();
    let refused = m
        .lines()
        .find(|l| {
            l.starts_with(
                r#"m8trx_proxy_limit_hits_total{limit="new_connections_per_second_per_ip"}"#,
            )
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<usize>().ok())
        .unwrap_or_else(|| panic!("no refusal counted: {m}"));
    assert_eq!(refused + admitted, 40, "every refusal counted: {m}");
    drop((conns, other));
}
