//! A read-only look at the client's first flight: the ClientHello fields the
//! connection needs to know about *before* or *besides* rustls (the SNI,
//! which rustls's unbuffered server connection does not expose, and what
//! the client offered for resumption).
//!
//! Parsed from the plaintext handshake records at the front of the client's
//! bytes (RFC 8446 §5.1, §4.1.2; RFC 5246 §7.4.1.2). The parser never
//! decides anything about the handshake: rustls parses the same bytes again
//! and is the authority. Malformed input is [`Peek::Invalid`] and the
//! connection goes on to rustls, which sends the right alert.

#![forbid(unsafe_code)]

/// What the parser made of the bytes so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peek {
    /// The ClientHello is not complete yet.
    NeedMore,
    /// Not a well-formed ClientHello (rustls will say why).
    Invalid,
    /// The ClientHello's fields.
    Hello(HelloFacts),
}

/// The ClientHello fields ringterm looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HelloFacts {
    /// The `server_name` host name, lowercased (RFC 6066 §3).
    pub sni: Option<String>,
    /// The legacy session ID (a TLS 1.2 resumption attempt when not empty).
    pub session_id: Vec<u8>,
    /// The `session_ticket` extension's length (RFC 5077): `Some(0)` asks
    /// for a ticket, more is a ticket offered.
    pub ticket_len: Option<usize>,
    /// The `pre_shared_key` identities offered (RFC 8446 §4.2.11).
    pub psk_identities: Vec<Vec<u8>>,
    /// The `supported_versions` extension lists TLS 1.3 (RFC 8446 §4.2.1).
    pub offers_tls13: bool,
    /// The ALPN extension offers `acme-tls/1`: an ACME TLS-ALPN-01
    /// validation (RFC 8737 §3).
    pub offers_acme_tls1: bool,
}

const HANDSHAKE: u8 = 22;
const CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const EXT_SESSION_TICKET: u16 = 35;
const EXT_PRE_SHARED_KEY: u16 = 41;
const EXT_SUPPORTED_VERSIONS: u16 = 43;

/// Largest handshake message body we join for a look (the ClientHello's
/// 24-bit length allows more; rustls refuses above 64 KiB anyway).
const MAX_HELLO: usize = 0x1_0000;

/// Looks for a complete ClientHello at the front of `bytes` (records as
/// received, possibly fragmented over several handshake records).
pub fn peek(bytes: &[u8]) -> Peek {
    // Join the handshake fragments until the message is complete.
    let mut msg: Vec<u8> = Vec::new();
    let mut at = 0;
    loop {
        let Some(header) = bytes.get(at..at + 5) else {
            return Peek::NeedMore;
        };
        if header[0] != HANDSHAKE {
            return Peek::Invalid;
        }
        let len = u16::from_be_bytes([header[3], header[4]]) as usize;
        let Some(fragment) = bytes.get(at + 5..at + 5 + len) else {
            return Peek::NeedMore;
        };
        msg.extend_from_slice(fragment);
        at += 5 + len;
        if msg.len() >= 4 {
            if msg[0] != CLIENT_HELLO {
                return Peek::Invalid;
            }
            let body = u32::from_be_bytes([0, msg[1], msg[2], msg[3]]) as usize;
            if body > MAX_HELLO {
                return Peek::Invalid;
            }
            if msg.len() >= 4 + body {
                return match parse_body(&msg[4..4 + body]) {
                    Some(facts) => Peek::Hello(facts),
                    None => Peek::Invalid,
                };
            }
        }
        if len == 0 && msg.is_empty() {
            // An empty handshake record first: rustls's business.
            return Peek::Invalid;
        }
    }
}

/// A cursor over a byte slice; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| b[0] as usize)
    }

    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
    }

    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(n)
    }

    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(n)
    }
}

fn parse_body(body: &[u8]) -> Option<HelloFacts> {
    let mut r = Reader(body);
    r.take(2)?; // legacy_version
    r.take(32)?; // random
    let session_id = r.vec8()?;
    if session_id.len() > 32 {
        return None;
    }
    r.vec16()?; // cipher_suites
    r.vec8()?; // legacy_compression_methods
    let mut facts = HelloFacts {
        session_id: session_id.to_vec(),
        ..HelloFacts::default()
    };
    if r.0.is_empty() {
        return Some(facts); // no extensions (TLS 1.2 allows it)
    }
    let mut exts = Reader(r.vec16()?);
    while !exts.0.is_empty() {
        let kind = exts.u16()? as u16;
        let data = exts.vec16()?;
        match kind {
            EXT_SERVER_NAME => facts.sni = server_name(data),
            EXT_SESSION_TICKET => facts.ticket_len = Some(data.len()),
            EXT_PRE_SHARED_KEY => facts.psk_identities = psk_identities(data)?,
            EXT_SUPPORTED_VERSIONS => facts.offers_tls13 = offers_tls13(data),
            EXT_ALPN => facts.offers_acme_tls1 = offers_protocol(data, ACME_TLS_1),
            _ => {}
        }
    }
    Some(facts)
}

/// The first `host_name` entry of a `server_name` extension, lowercased.
fn server_name(data: &[u8]) -> Option<String> {
    let mut list = Reader(Reader(data).vec16()?);
    while !list.0.is_empty() {
        let kind = list.u8()?;
        let name = list.vec16()?;
        if kind == 0 {
            let name = std::str::from_utf8(name).ok()?;
            return Some(name.to_ascii_lowercase());
        }
    }
    None
}

/// The ALPN protocol of an ACME TLS-ALPN-01 validation (RFC 8737 §6.2).
pub const ACME_TLS_1: &[u8] = b"acme-tls/1";

/// Whether an ALPN extension's `ProtocolNameList` (RFC 7301 §3.1) holds
/// `protocol`.
fn offers_protocol(data: &[u8], protocol: &[u8]) -> bool {
    let Some(list) = Reader(data).vec16() else {
        return false;
    };
    let mut list = Reader(list);
    while let Some(name) = list.vec8() {
        if name == protocol {
            return true;
        }
    }
    false
}

fn offers_tls13(data: &[u8]) -> bool {
    Reader(data)
        .vec8()
        .is_some_and(|list| list.chunks_exact(2).any(|v| v == [3, 4]))
}

fn psk_identities(data: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut ids = Reader(Reader(data).vec16()?);
    let mut out = Vec::new();
    while !ids.0.is_empty() {
        out.push(ids.vec16()?.to_vec());
        ids.take(4)?; // obfuscated_ticket_age
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, RootCertStore};
    use std::sync::Arc;

    fn hello(sni: &str, config: ClientConfig) -> Vec<u8> {
        let name = ServerName::try_from(sni.to_owned()).unwrap();
        let mut c = ClientConnection::new(Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        c.write_tls(&mut out).unwrap();
        out
    }

    fn config() -> ClientConfig {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth()
    }

    #[test]
    fn reads_sni_of_a_real_client_hello_at_every_prefix() {
        let ch = hello("Example.COM", config());
        for i in 0..ch.len() {
            assert_eq!(peek(&ch[..i]), Peek::NeedMore, "prefix {i}");
        }
        let Peek::Hello(facts) = peek(&ch) else {
            panic!("not parsed")
        };
        assert_eq!(facts.sni.as_deref(), Some("example.com"));
        assert!(facts.psk_identities.is_empty());
        assert!(facts.offers_tls13);
        // rustls's client asks for TLS 1.2 tickets when it may resume.
        assert!(facts.ticket_len.is_some());
    }

    #[test]
    fn sees_acme_tls1_in_alpn() {
        let mut c = config();
        c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let Peek::Hello(facts) = peek(&hello("a.test", c)) else {
            panic!("not parsed")
        };
        assert!(!facts.offers_acme_tls1);
        let mut c = config();
        c.alpn_protocols = vec![ACME_TLS_1.to_vec()];
        let Peek::Hello(facts) = peek(&hello("a.test", c)) else {
            panic!("not parsed")
        };
        assert!(facts.offers_acme_tls1);
        assert!(!offers_protocol(&[0, 5, 4, b'a'], ACME_TLS_1));
    }

    #[test]
    fn fragmented_over_tiny_records() {
        let ch = hello("a.test", config());
        let body = &ch[5..];
        let mut recs = Vec::new();
        for chunk in body.chunks(7) {
            recs.extend_from_slice(&[22, 3, 1, 0, chunk.len() as u8]);
            recs.extend_from_slice(chunk);
        }
        let Peek::Hello(facts) = peek(&recs) else {
            panic!("not parsed")
        };
        assert_eq!(facts.sni.as_deref(), Some("a.test"));
    }

    #[test]
    fn garbage_is_invalid_never_a_panic() {
        assert_eq!(peek(b"GET / HTTP/1.1\r\n\r\n"), Peek::Invalid);
        assert_eq!(peek(&[22, 3, 1, 0, 4, 2, 0, 0, 0]), Peek::Invalid);
        // A ClientHello whose body is too short for its fields.
        assert_eq!(peek(&[22, 3, 1, 0, 6, 1, 0, 0, 2, 3, 3]), Peek::Invalid);
        for n in 0..=255u8 {
            let _ = peek(&[22, 3, 1, 0, 5, 1, 0, 0, 1, n]);
        }
    }
}
