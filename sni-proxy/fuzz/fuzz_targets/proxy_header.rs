//! The PROXY v2 header sni-proxy writes before a tenant's bytes: for any pair of addresses it
//! must be a well-formed header that an independent reader (the `ppp` crate) decodes to the
//! same client and destination. The tenant's Caddy trusts it for the client's address.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use ppp::v2;

/// An address from fuzz bytes: the first byte picks IPv4 or IPv6.
fn addr(b: &[u8]) -> Option<SocketAddr> {
    let (&kind, rest) = b.split_first()?;
    let port = u16::from_be_bytes([*rest.first()?, *rest.get(1)?]);
    let rest = &rest[2..];
    let ip = if kind % 2 == 0 {
        IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(rest.get(..4)?).ok()?))
    } else {
        IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(rest.get(..16)?).ok()?))
    };
    Some(SocketAddr::new(ip, port))
}

/// The IPv6 form the header uses when the families differ.
fn v6(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 38 {
        return;
    }
    let (Some(src), Some(dst)) = (addr(&data[..19]), addr(&data[19..38])) else {
        return;
    };
    let h = sni_proxy::proxy_protocol::v2_header(src, dst);
    let parsed = v2::Header::try_from(h.as_slice()).expect("a well-formed PROXY v2 header");
    assert_eq!(parsed.command, v2::Command::Proxy);
    assert_eq!(parsed.protocol, v2::Protocol::Stream);
    assert_eq!(parsed.len(), h.len(), "nothing but the header");
    let (want_src, want_dst) = if src.is_ipv4() && dst.is_ipv4() {
        (src, dst)
    } else {
        (v6(src), v6(dst))
    };
    let (got_src, got_dst) = match parsed.addresses {
        v2::Addresses::IPv4(a) => (
            SocketAddr::from((a.source_address, a.source_port)),
            SocketAddr::from((a.destination_address, a.destination_port)),
        ),
        v2::Addresses::IPv6(a) => (
            SocketAddr::from((a.source_address, a.source_port)),
            SocketAddr::from((a.destination_address, a.destination_port)),
        ),
        other => panic!("unexpected addresses {other:?}"),
    };
    // Same family as sent (IPv4 only when both ends are), same addresses and ports.
    assert_eq!((got_src, got_dst), (want_src, want_dst));
});
