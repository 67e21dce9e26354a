//! Reads a TLS ClientHello without terminating TLS.
//!
//! The hello is reassembled from TLS records split anywhere across TCP segments, and every
//! byte read is kept so it can be replayed to the backend unchanged. The size of what is
//! buffered and the time to get it are bounded.
//!
//! Parsing is a walk to the two extensions routing needs (server_name, ALPN) over borrowed
//! bytes, in [`crate::hello_wire`]: rustls' `Acceptor` did a full, allocating parse of every
//! extension on each connection (measured: ~3 % of the proxy's CPU per connection; see
//! docs/benchmarks.md). The host name is validated by the same function rustls uses
//! (`pki_types::ServerName`), and a fuzz target checks that every hello rustls accepts is
//! read the same way here (`sni-proxy/fuzz`).

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::hello_wire::{self, Record};

/// What the proxy learned from a ClientHello, plus the bytes to replay.
#[derive(Debug)]
pub struct Hello {
    /// The SNI host name, if the client sent one.
    pub sni: Option<String>,
    /// ALPN protocols offered, in the client's order (e.g. `acme-tls/1`, `h2`).
    pub alpn: Vec<Vec<u8>>,
    /// Every byte received so far, to be sent to the backend first.
    pub buffered: Vec<u8>,
}

/// Why no ClientHello could be read; each maps to one outcome in logs and metrics.
#[derive(Debug, thiserror::Error)]
pub enum HelloError {
    /// The client did not send a complete ClientHello in time.
    #[error("no complete ClientHello within {0:?} ({1} bytes received)")]
    Timeout(Duration, usize),
    /// The ClientHello is bigger than the configured bound.
    #[error("ClientHello exceeds {0} bytes")]
    TooLarge(usize),
    /// The first byte is not a TLS handshake record: not TLS at all.
    #[error("not TLS (first byte 0x{0:02x})")]
    NotTls(u8),
    /// TLS records that do not hold a valid ClientHello.
    #[error("malformed ClientHello: {0}")]
    Malformed(String),
    /// The client closed before sending a complete ClientHello.
    #[error("client closed after {0} bytes, before a complete ClientHello")]
    Closed(usize),
    /// Reading from the client failed.
    #[error("reading the ClientHello: {0}")]
    Io(#[from] std::io::Error),
}

impl HelloError {
    /// Short label for metrics and access logs.
    pub fn outcome(&self) -> &'static str {
        match self {
            HelloError::Timeout(..) => "hello_timeout",
            HelloError::TooLarge(_) => "hello_too_large",
            HelloError::NotTls(_) => "not_tls",
            HelloError::Malformed(_) => "hello_malformed",
            HelloError::Closed(_) => "client_closed",
            HelloError::Io(_) => "client_error",
        }
    }
}

/// Incremental ClientHello reader: feed it bytes as they arrive.
pub struct HelloParser {
    /// Every byte received, for the replay.
    buf: Vec<u8>,
    /// Bytes of `buf` consumed as complete records.
    scanned: usize,
    /// The handshake bytes of the records so far, only when the hello spans several records.
    msg: Vec<u8>,
    max: usize,
}

impl HelloParser {
    /// A parser that refuses to buffer more than `max` bytes.
    pub fn new(max: usize) -> Self {
        HelloParser {
            buf: Vec::new(),
            scanned: 0,
            msg: Vec::new(),
            max,
        }
    }

    /// Bytes buffered so far.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Adds bytes; returns the Hello once it is complete, `None` while more are needed.
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<Hello>, HelloError> {
        let start = self.buf.len();
        self.buf.extend_from_slice(data);
        self.parse_from(start)
    }

    /// Parses the bytes appended to the buffer from `start` on. Each byte is looked at once
    /// (a hello sent one byte per segment costs linear time, not quadratic).
    fn parse_from(&mut self, start: usize) -> Result<Option<Hello>, HelloError> {
        if start == 0 {
            match self.buf.first() {
                Some(&hello_wire::HANDSHAKE) | None => {}
                Some(&b) => return Err(HelloError::NotTls(b)),
            }
        }
        let bad = |e: hello_wire::Error| HelloError::Malformed(e.to_string());
        loop {
            let (from, end) = match hello_wire::record(&self.buf[self.scanned..]).map_err(bad)? {
                Record::Incomplete => break,
                Record::Complete { payload, len } => {
                    let end = self.scanned + len;
                    (end - payload.len(), end)
                }
            };
            self.scanned = end;
            // The usual case, the whole hello in the first record, is read where it lies;
            // a hello spread over records is joined in `msg`.
            let body = if self.msg.is_empty() {
                match hello_wire::message(&self.buf[from..end]).map_err(bad)? {
                    Some(body) => Some(body),
                    None => {
                        self.msg.extend_from_slice(&self.buf[from..end]);
                        None
                    }
                }
            } else {
                self.msg.extend_from_slice(&self.buf[from..end]);
                hello_wire::message(&self.msg).map_err(bad)?
            };
            let Some(body) = body else { continue };
            let fields = hello_wire::client_hello(body).map_err(bad)?;
            // One spelling for routes, logs and metrics: names are case-insensitive (RFC 4343)
            // and sent without the root's dot (RFC 6066), as rustls reads them.
            let sni = fields
                .sni
                .map(|n| n.strip_suffix('.').unwrap_or(n).to_ascii_lowercase());
            let alpn = fields.alpn().map(<[u8]>::to_vec).collect();
            self.msg = Vec::new();
            return Ok(Some(Hello {
                sni,
                alpn,
                buffered: std::mem::take(&mut self.buf),
            }));
        }
        if self.buf.len() >= self.max {
            return Err(HelloError::TooLarge(self.max));
        }
        Ok(None)
    }

    /// Reads from `r` until the ClientHello is complete, the size bound is hit, or `r` ends.
    async fn read_from<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> Result<Hello, HelloError> {
        loop {
            let start = self.buf.len();
            let want = (self.max - start).clamp(1, 2048);
            self.buf.reserve(want);
            let n = (&mut *r).take(want as u64).read_buf(&mut self.buf).await?;
            if n == 0 {
                return Err(HelloError::Closed(start));
            }
            if let Some(h) = self.parse_from(start)? {
                return Ok(h);
            }
        }
    }
}

/// Reads a complete ClientHello from `r` within `timeout`, buffering at most `max` bytes.
pub async fn read_client_hello<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
    timeout: Duration,
) -> Result<Hello, HelloError> {
    let mut parser = HelloParser::new(max);
    match tokio::time::timeout(timeout, parser.read_from(r)).await {
        Ok(res) => res,
        Err(_) => Err(HelloError::Timeout(timeout, parser.buffered())),
    }
}

/// Test helpers: ClientHellos built by hand, split into records as a client might.
#[cfg(test)]
pub(crate) mod testdata {
    /// A minimal TLS 1.2/1.3 ClientHello handshake message (no record header).
    pub fn client_hello_msg(sni: Option<&str>, alpn: &[&str]) -> Vec<u8> {
        let mut exts = Vec::new();
        if let Some(name) = sni {
            let mut list = vec![0u8];
            list.extend_from_slice(&(name.len() as u16).to_be_bytes());
            list.extend_from_slice(name.as_bytes());
            let mut ext = (list.len() as u16).to_be_bytes().to_vec();
            ext.extend_from_slice(&list);
            exts.extend_from_slice(&[0, 0]);
            exts.extend_from_slice(&(ext.len() as u16).to_be_bytes());
            exts.extend_from_slice(&ext);
        }
        if !alpn.is_empty() {
            let mut list = Vec::new();
            for p in alpn {
                list.push(p.len() as u8);
                list.extend_from_slice(p.as_bytes());
            }
            let mut ext = (list.len() as u16).to_be_bytes().to_vec();
            ext.extend_from_slice(&list);
            exts.extend_from_slice(&[0, 16]);
            exts.extend_from_slice(&(ext.len() as u16).to_be_bytes());
            exts.extend_from_slice(&ext);
        }
        // signature_algorithms: rustls requires it, as every TLS 1.2+ client sends it.
        exts.extend_from_slice(&[0, 13, 0, 6, 0, 4, 0x04, 0x03, 0x08, 0x04]);
        // A padding extension makes the hello big enough to split in interesting places.
        exts.extend_from_slice(&[0, 21, 0, 200]);
        exts.extend_from_slice(&[0u8; 200]);
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7u8; 32]); // random
        body.push(0); // session id
        body.extend_from_slice(&[0, 4, 0x13, 0x01, 0xc0, 0x2f]); // cipher suites
        body.extend_from_slice(&[1, 0]); // compression: null
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        let mut msg = vec![1u8];
        msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        msg
    }

    /// Wraps a handshake message into TLS records of at most `chunk` bytes of payload each.
    pub fn records(msg: &[u8], chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for part in msg.chunks(chunk) {
            out.extend_from_slice(&[0x16, 3, 1]);
            out.extend_from_slice(&(part.len() as u16).to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::testdata::*;
    use super::*;

    #[test]
    fn one_record_in_one_piece() {
        let wire = records(&client_hello_msg(Some("acme.example.com"), &["h2"]), 16384);
        let mut p = HelloParser::new(16384);
        let h = p.feed(&wire).unwrap().unwrap();
        assert_eq!(h.sni.as_deref(), Some("acme.example.com"));
        assert_eq!(h.alpn, vec![b"h2".to_vec()]);
        assert_eq!(h.buffered, wire, "every byte is kept for replay");
    }

    #[test]
    fn split_across_records_and_segments() {
        let msg = client_hello_msg(Some("frag.example.com"), &["acme-tls/1"]);
        for record_size in [1, 7, 50, 100] {
            let wire = records(&msg, record_size);
            for seg in [1, 3, 64] {
                let mut p = HelloParser::new(16384);
                let mut got = None;
                for (i, piece) in wire.chunks(seg).enumerate() {
                    let r = p.feed(piece).unwrap();
                    if r.is_some() {
                        assert!((i + 1) * seg >= wire.len(), "complete only at the end");
                        got = r;
                    }
                }
                let h = got.unwrap_or_else(|| panic!("record {record_size} seg {seg}: no hello"));
                assert_eq!(h.sni.as_deref(), Some("frag.example.com"));
                assert_eq!(h.alpn, vec![b"acme-tls/1".to_vec()]);
                assert_eq!(h.buffered, wire);
            }
        }
    }

    #[test]
    fn no_sni_is_a_hello_without_name() {
        let wire = records(&client_hello_msg(None, &[]), 16384);
        let h = HelloParser::new(16384).feed(&wire).unwrap().unwrap();
        assert_eq!(h.sni, None);
        assert!(h.alpn.is_empty());
    }

    #[test]
    fn garbage_and_oversize_are_refused() {
        let e = HelloParser::new(16384)
            .feed(b"GET / HTTP/1.1\r\n")
            .unwrap_err();
        assert!(matches!(e, HelloError::NotTls(b'G')), "{e}");
        let e = HelloParser::new(16384)
            .feed(&[0x16, 3, 1, 0, 5, 2, 0, 0, 1, 0])
            .unwrap_err();
        assert!(
            matches!(e, HelloError::Malformed(_)),
            "a ServerHello is no ClientHello: {e}"
        );
        // 1-byte records: the hello never completes within 600 bytes.
        let wire = records(&client_hello_msg(Some("big.example.com"), &[]), 1);
        let mut p = HelloParser::new(600);
        let e = wire
            .chunks(100)
            .map(|c| p.feed(c))
            .find_map(|r| r.err())
            .expect("must refuse");
        assert!(matches!(e, HelloError::TooLarge(600)), "{e}");
    }

    #[tokio::test]
    async fn async_reader_reports_close_and_timeout() {
        let wire = records(&client_hello_msg(Some("a.example.com"), &[]), 16384);
        let mut half = &wire[..40];
        let e = read_client_hello(&mut half, 16384, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(e, HelloError::Closed(40)), "{e}");
        let (mut client, mut server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, &wire[..10])
            .await
            .unwrap();
        let e = read_client_hello(&mut server, 16384, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(e, HelloError::Timeout(_, 10)), "{e}");
        let mut full = &wire[..];
        let h = read_client_hello(&mut full, 16384, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(h.sni.as_deref(), Some("a.example.com"));
    }
}
