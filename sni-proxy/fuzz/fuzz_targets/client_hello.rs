//! The bytes a client sends first on :443. sni-proxy's ClientHello reader must never panic,
//! must read the same hello however the bytes are split into segments, and must read every
//! hello rustls accepts the same way rustls does (host name and ALPN list): the proxy
//! routes on what it reads, the tenant's TLS server answers what it reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sni_proxy::clienthello::{Hello, HelloError, HelloParser};

/// What a reading ended in, comparable across readings.
fn summary(
    r: Result<Option<Hello>, HelloError>,
) -> Result<Option<(Option<String>, Vec<Vec<u8>>, Vec<u8>)>, &'static str> {
    r.map(|h| h.map(|h| (h.sni, h.alpn, h.buffered)))
        .map_err(|e| e.outcome())
}

fuzz_target!(|data: &[u8]| {
    // The first byte chooses the segment size of the split reading (1..=64).
    let Some((&seg, wire)) = data.split_first() else {
        return;
    };
    let max = 16384;
    let whole = summary(HelloParser::new(max).feed(wire));
    let mut p = HelloParser::new(max);
    let mut split = Ok(None);
    for piece in wire.chunks(usize::from(seg % 64) + 1) {
        split = summary(p.feed(piece));
        if !matches!(split, Ok(None)) {
            break;
        }
    }
    // Split or whole, the same hello; a split read may stop early on an error found sooner.
    match (&whole, &split) {
        (Ok(Some(a)), Ok(Some(b))) => assert_eq!(a.0, b.0, "sni differs when split"),
        (Ok(Some(_)), other) => panic!("whole read a hello, split read {other:?}"),
        (Err(_), Ok(Some(_))) => panic!("split read a hello the whole read refused"),
        _ => {}
    }
    if let Ok(Some((sni, alpn, buffered))) = &whole {
        assert_eq!(
            buffered.as_slice(),
            wire,
            "every byte is kept for the replay"
        );
        let _ = (sni, alpn);
    }

    // rustls as the reference: what it accepts, we read alike.
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rest = wire;
    while !rest.is_empty() {
        match acceptor.read_tls(&mut rest) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    if let Ok(Some(accepted)) = acceptor.accept() {
        let ch = accepted.client_hello();
        let theirs_sni = ch.server_name().map(str::to_owned);
        let theirs_alpn: Vec<Vec<u8>> = ch
            .alpn()
            .map(|it| it.map(<[u8]>::to_vec).collect())
            .unwrap_or_default();
        match &whole {
            Ok(Some((sni, alpn, _))) => {
                assert_eq!(sni, &theirs_sni, "host name differs from rustls'");
                assert_eq!(alpn, &theirs_alpn, "ALPN differs from rustls'");
            }
            other => panic!("rustls accepted a hello we read as {other:?}"),
        }
    }
});
