//! The TLS wire formats a ClientHello arrives in (RFC 8446 sections 4.1.2 and 5.1, RFC 6066
//! section 3, RFC 7301 section 3.1), read over borrowed bytes without allocating.
//!
//! Only what routing needs is extracted: the host name and the ALPN list. Everything on the
//! way to them is length-checked, so a hello this module accepts is structurally a
//! ClientHello; the checks of the rest (versions, suites, other extensions) are the
//! backend's, which receives the bytes unchanged.

use rustls::pki_types::ServerName;

/// Record content type of handshake messages.
pub const HANDSHAKE: u8 = 22;
/// Handshake message type of a ClientHello.
const CLIENT_HELLO: u8 = 1;
/// Largest record payload accepted (2^14 plus the 2,048 bytes of expansion TLS 1.2 allows).
pub const MAX_RECORD: usize = 16384 + 2048;
/// Extension type of server_name (RFC 6066).
const EXT_SERVER_NAME: u16 = 0;
/// Extension type of application_layer_protocol_negotiation (RFC 7301).
const EXT_ALPN: u16 = 16;

/// Why bytes are not a ClientHello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A record that is not a handshake record came before the hello was complete.
    #[error("record of content type {0} before the ClientHello was complete")]
    NotHandshake(u8),
    /// TLS forbids empty handshake records.
    #[error("empty handshake record")]
    EmptyRecord,
    /// A record longer than TLS allows.
    #[error("record of {0} bytes exceeds the TLS limit")]
    RecordTooLarge(usize),
    /// The first handshake message is not a ClientHello.
    #[error("handshake message of type {0} where a ClientHello belongs")]
    NotClientHello(u8),
    /// A length runs past the end of what encloses it.
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// A field breaks its own rule (empty list, wrong size, duplicate).
    #[error("invalid {0}")]
    Invalid(&'static str),
}

/// A TLS record at the start of some bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Record<'a> {
    /// More bytes are needed to hold the whole record.
    Incomplete,
    /// The record's payload, and the length of the record with its header.
    Complete {
        /// The record's payload.
        payload: &'a [u8],
        /// Header and payload.
        len: usize,
    },
}

/// Reads the handshake record at the start of `b`.
pub fn record(b: &[u8]) -> Result<Record<'_>, Error> {
    let [typ, _, _, hi, lo, ..] = *b else {
        return Ok(Record::Incomplete);
    };
    if typ != HANDSHAKE {
        return Err(Error::NotHandshake(typ));
    }
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    if len == 0 {
        return Err(Error::EmptyRecord);
    }
    if len > MAX_RECORD {
        return Err(Error::RecordTooLarge(len));
    }
    Ok(match b.get(5..5 + len) {
        Some(payload) => Record::Complete {
            payload,
            len: 5 + len,
        },
        None => Record::Incomplete,
    })
}

/// The body of the ClientHello that opens the handshake bytes `b`, once all of it is there.
pub fn message(b: &[u8]) -> Result<Option<&[u8]>, Error> {
    match b {
        [] => Ok(None),
        [t, ..] if *t != CLIENT_HELLO => Err(Error::NotClientHello(*t)),
        [_, a, b2, c, body @ ..] => {
            let len = u32::from_be_bytes([0, *a, *b2, *c]) as usize;
            Ok(body.get(..len))
        }
        _ => Ok(None),
    }
}

/// What routing reads from a ClientHello, borrowed from it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Fields<'a> {
    /// The host name, when the client sent a valid DNS name (not an IP address).
    pub sni: Option<&'a str>,
    /// The ALPN protocol list as sent (each name prefixed by its length), validated.
    alpn: &'a [u8],
}

impl<'a> Fields<'a> {
    /// The ALPN protocols offered, in the client's order.
    pub fn alpn(&self) -> impl Iterator<Item = &'a [u8]> {
        let mut rest = self.alpn;
        std::iter::from_fn(move || {
            let (&n, tail) = rest.split_first()?;
            let (name, tail) = tail.split_at_checked(usize::from(n))?;
            rest = tail;
            Some(name)
        })
    }
}

/// Reads a ClientHello body (after the 4-byte handshake header).
pub fn client_hello(body: &[u8]) -> Result<Fields<'_>, Error> {
    let mut r = Reader(body);
    r.take(2, "legacy_version")?;
    r.take(32, "random")?;
    if r.vec8("legacy_session_id")?.len() > 32 {
        return Err(Error::Invalid("legacy_session_id (over 32 bytes)"));
    }
    let suites = r.vec16("cipher_suites")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(Error::Invalid("cipher_suites"));
    }
    if r.vec8("legacy_compression_methods")?.is_empty() {
        return Err(Error::Invalid("legacy_compression_methods (empty)"));
    }
    let mut fields = Fields::default();
    if r.0.is_empty() {
        return Ok(fields); // no extensions at all (TLS 1.2 allows it)
    }
    let mut exts = Reader(r.vec16("extensions")?);
    if !r.0.is_empty() {
        return Err(Error::Invalid("ClientHello (bytes after the extensions)"));
    }
    let (mut seen_sni, mut seen_alpn) = (false, false);
    while !exts.0.is_empty() {
        let typ = exts.u16("extension type")?;
        let data = exts.vec16("extension")?;
        match typ {
            // A second copy could be read differently by the backend than by the router.
            EXT_SERVER_NAME if seen_sni => return Err(Error::Invalid("server_name (twice)")),
            EXT_ALPN if seen_alpn => return Err(Error::Invalid("ALPN (twice)")),
            EXT_SERVER_NAME => {
                seen_sni = true;
                fields.sni = server_name(data)?;
            }
            EXT_ALPN => {
                seen_alpn = true;
                fields.alpn = alpn(data)?;
            }
            _ => {}
        }
    }
    Ok(fields)
}

/// The host name of a server_name extension, as rustls reads it: the first entry must be a
/// host_name; a valid DNS name is the name, an IP address or an invalid name is none.
fn server_name(data: &[u8]) -> Result<Option<&str>, Error> {
    let mut r = Reader(data);
    let mut list = Reader(r.vec16("server_name list")?);
    if !r.0.is_empty() {
        return Err(Error::Invalid("server_name (bytes after the list)"));
    }
    if list.0.is_empty() {
        return Err(Error::Invalid("server_name (empty list)"));
    }
    let mut found = None;
    while !list.0.is_empty() {
        if list.u8("server_name type")? != 0 {
            break; // an unknown name type has no known length: nothing after it is read
        }
        let name = list.vec16("host_name")?;
        if name.is_empty() {
            return Err(Error::Invalid("host_name (empty)"));
        }
        if found.is_some() {
            return Err(Error::Invalid("server_name (two host names)"));
        }
        found = Some(match ServerName::try_from(name) {
            Ok(ServerName::DnsName(_)) => std::str::from_utf8(name).ok(),
            _ => None,
        });
    }
    Ok(found.flatten())
}

/// The validated protocol list of an ALPN extension: non-empty, each name non-empty.
fn alpn(data: &[u8]) -> Result<&[u8], Error> {
    let mut r = Reader(data);
    let list = r.vec16("ALPN list")?;
    if !r.0.is_empty() {
        return Err(Error::Invalid("ALPN (bytes after the list)"));
    }
    if list.is_empty() {
        return Err(Error::Invalid("ALPN (empty list)"));
    }
    let mut names = Reader(list);
    while !names.0.is_empty() {
        if names.vec8("ALPN protocol")?.is_empty() {
            return Err(Error::Invalid("ALPN protocol (empty)"));
        }
    }
    Ok(list)
}

/// A cursor over length-prefixed big-endian fields.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    /// The next `n` bytes of the field named `what`.
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Error> {
        let (head, tail) = self.0.split_at_checked(n).ok_or(Error::Truncated(what))?;
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, Error> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, Error> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A field with a one-byte length prefix.
    fn vec8(&mut self, what: &'static str) -> Result<&'a [u8], Error> {
        let n = self.u8(what)?;
        self.take(usize::from(n), what)
    }

    /// A field with a two-byte length prefix.
    fn vec16(&mut self, what: &'static str) -> Result<&'a [u8], Error> {
        let n = self.u16(what)?;
        self.take(usize::from(n), what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hello body with the given extensions block (already framed).
    fn body(exts: &[u8]) -> Vec<u8> {
        let mut b = vec![3, 3];
        b.extend_from_slice(&[0; 32]);
        b.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0]);
        b.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        b.extend_from_slice(exts);
        b
    }

    fn ext(typ: u16, data: &[u8]) -> Vec<u8> {
        let mut e = typ.to_be_bytes().to_vec();
        e.extend_from_slice(&(data.len() as u16).to_be_bytes());
        e.extend_from_slice(data);
        e
    }

    fn sni(names: &[(u8, &[u8])]) -> Vec<u8> {
        let mut list = Vec::new();
        for (t, n) in names {
            list.push(*t);
            list.extend_from_slice(&(n.len() as u16).to_be_bytes());
            list.extend_from_slice(n);
        }
        let mut d = (list.len() as u16).to_be_bytes().to_vec();
        d.extend_from_slice(&list);
        ext(EXT_SERVER_NAME, &d)
    }

    #[test]
    fn names_are_read_as_rustls_reads_them() {
        let f = |e: Vec<u8>| client_hello(&body(&e)).map(|f| f.sni.map(str::to_owned));
        assert_eq!(f(sni(&[(0, b"a.example")])), Ok(Some("a.example".into())));
        assert_eq!(
            f(sni(&[(0, b"10.0.0.1")])),
            Ok(None),
            "an IP address is no name"
        );
        assert_eq!(
            f(sni(&[(0, b"bad name")])),
            Ok(None),
            "an invalid name is none"
        );
        assert_eq!(
            f(sni(&[(7, b"x")])),
            Ok(None),
            "an unknown type ends the list"
        );
        assert!(f(sni(&[(0, b"a.example"), (0, b"b.example")])).is_err());
        let mut two = sni(&[(0, b"a.example")]);
        two.extend(sni(&[(0, b"b.example")]));
        assert_eq!(f(two), Err(Error::Invalid("server_name (twice)")));
        assert!(f(sni(&[(0, b"")])).is_err());
    }

    #[test]
    fn alpn_is_validated_and_listed() {
        let e = ext(
            EXT_ALPN,
            &[
                0, 12, 2, b'h', b'2', 8, b'h', b't', b't', b'p', b'/', b'1', b'.', b'1',
            ],
        );
        let b = body(&e);
        let f = client_hello(&b).unwrap();
        assert_eq!(f.alpn().collect::<Vec<_>>(), vec![&b"h2"[..], b"http/1.1"]);
        assert!(client_hello(&body(&ext(EXT_ALPN, &[0, 0]))).is_err());
        assert!(client_hello(&body(&ext(EXT_ALPN, &[0, 2, 1, b'a', 0]))).is_err());
        assert!(client_hello(&body(&ext(EXT_ALPN, &[0, 1, 0]))).is_err());
    }

    #[test]
    fn structure_is_length_checked() {
        let b = body(&[]);
        assert!(
            client_hello(&b[..b.len() - 3]).is_err(),
            "truncated extensions"
        );
        let mut trailing = body(&[]);
        trailing.push(0);
        assert!(client_hello(&trailing).is_err());
        assert_eq!(record(&[22, 3, 1, 0]), Ok(Record::Incomplete));
        assert_eq!(record(&[22, 3, 1, 0, 0]), Err(Error::EmptyRecord));
        assert_eq!(record(&[23, 3, 1, 0, 1]), Err(Error::NotHandshake(23)));
        assert_eq!(message(&[2, 0, 0, 0]), Err(Error::NotClientHello(2)));
        assert_eq!(message(&[1, 0, 0, 2, 9]), Ok(None));
        assert_eq!(message(&[1, 0, 0, 1, 9, 9]), Ok(Some(&[9u8][..])));
    }
}
