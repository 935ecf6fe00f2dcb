//! Sans-IO PROXY protocol (v1 text and v2 binary, per HAProxy's
//! `proxy-protocol.txt`): encoding the header ringterm sends to a backend,
//! and a strict, bounded, incremental parser for the header a fronting L4
//! balancer sends to ringterm.
//!
//! Nothing here touches a socket or the clock: [`encode`] appends bytes to a
//! caller's buffer, [`parse`] looks at the bytes received so far.
//!
//! # Sending (`--proxy-protocol v1|v2`)
//!
//! [`encode`] writes a header from an [`EncodeInfo`]. v2 carries
//! `PP2_TYPE_ALPN`, `PP2_TYPE_AUTHORITY` (the SNI) and `PP2_TYPE_SSL` with
//! its `client` flags, `verify` field and the `SSL_VERSION`, `SSL_CN`,
//! `SSL_CIPHER`, `SSL_SIG_ALG` and `SSL_KEY_ALG` sub-TLVs. v1 is text and
//! carries addresses only: TLV fields are ignored for v1. Like HAProxy,
//! unknown addresses become `PROXY UNKNOWN` (v1) or a `LOCAL` command with
//! `AF_UNSPEC` (v2, TLVs still follow), and a source and destination of
//! different families are both sent as IPv6 (the IPv4 one IPv4-mapped).
//!
//! # Receiving (`--accept-proxy`)
//!
//! [`parse`] is called with everything received so far and answers
//! [`Parsed::NeedMore`], [`Parsed::Done`] with the number of header bytes to
//! drop (the bytes after them are the TLS ClientHello), or a [`ProxyError`].
//! It never keeps state between calls and never needs more than
//! [`V1_MAX_LEN`] bytes (v1) or [`V2_HEADER_LEN`] + [`ParseLimits::max_v2_len`]
//! bytes (v2) to reach a verdict, so a caller's buffer is bounded. Input that
//! starts with neither signature (a TLS record starts with `0x16`) fails at
//! the first byte with [`ProxyError::Missing`]; a bad version, command,
//! family or length fails as soon as that byte arrives. For any input, the
//! result on a prefix is either `NeedMore` or exactly the result on the
//! whole input ([`fuzz::fuzz_parse`] checks this).
//!
//! Policy: v1 `TCP4`, `TCP6` and `UNKNOWN` (whose rest of line is ignored,
//! as the spec says). v2 `PROXY` over `STREAM` with `AF_INET`/`AF_INET6`,
//! or `AF_UNSPEC` (addresses unknown); `DGRAM`, `AF_UNIX` and an IP family
//! without `STREAM` are rejected with [`ProxyError::V2Unsupported`], because
//! ringterm only terminates TCP and has no use for a socket path. A v2
//! `LOCAL` command (a balancer's health check) is accepted with any known
//! family and protocol and reports no addresses: use the connection's own.
//! TLVs are parsed for both commands (`AF_UNSPEC`: right after the 16-byte
//! header); a TLV whose length overruns the header, trailing bytes too
//! short for a TLV, a duplicate ALPN/AUTHORITY/CRC32C/SSL, non-UTF-8 text
//! and a `PP2_TYPE_CRC32C` that does not match are errors.
//!
//! # What the `ppp` crate does here, and what is ours
//!
//! `ppp` (2.x) builds v2 headers ([`ppp::v2::Builder`]), formats v1 lines
//! ([`ppp::v1::Addresses`]'s `Display`), decodes v2 address blocks
//! ([`ppp::v2::Header`]) and splits TLV lists ([`ppp::v2::TypeLengthValues`]);
//! all of that is used as is. Written here, and why:
//!
//! - The v2 fixed header checks. `ppp` answers "incomplete" until 16 bytes
//!   even when byte 13 already has a bad version, has no configurable bound
//!   (it waits for up to 64 KiB), and accepts `DGRAM`/`AF_UNIX`. It also puts
//!   no TLVs after an `AF_UNSPEC` block (it treats the whole payload as
//!   addresses), while HAProxy's `LOCAL`+`AF_UNSPEC` headers carry TLVs.
//! - The v1 parser (about 80 lines). `ppp`'s accepts `+80` as a port (Rust's
//!   integer `FromStr`), guesses "incomplete" from which field is missing,
//!   and reports an invalid-UTF-8 error on a prefix that splits a character
//!   where the whole input gets a different error, so a prefix's result
//!   would not always match the whole's.
//! - The TLV semantics (`SSL` and its sub-TLVs, UTF-8 checks, duplicates)
//!   and the CRC32C check, which `ppp` leaves to its user.
//! - The encode bounds: lengths are checked first so that every input
//!   `Builder` would refuse gets a typed error instead of an `io::Error`.

#![forbid(unsafe_code)]

use core::net::SocketAddr;

mod v1;
mod v2;

/// The longest v1 header, CRLF included (the spec's bound).
pub const V1_MAX_LEN: usize = 107;
/// The fixed part of a v2 header: signature, version/command, family/protocol
/// and the 2-byte length.
pub const V2_HEADER_LEN: usize = 16;
/// The 12-byte v2 signature.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The start of every v1 header.
pub const V1_SIGNATURE: [u8; 6] = *b"PROXY ";
/// Default for [`ParseLimits::max_v2_len`].
pub const DEFAULT_MAX_V2_LEN: usize = 4096;

/// `PP2_TYPE_ALPN`.
pub const PP2_TYPE_ALPN: u8 = 0x01;
/// `PP2_TYPE_AUTHORITY` (the SNI host name).
pub const PP2_TYPE_AUTHORITY: u8 = 0x02;
/// `PP2_TYPE_CRC32C`.
pub const PP2_TYPE_CRC32C: u8 = 0x03;
/// `PP2_TYPE_NOOP`.
pub const PP2_TYPE_NOOP: u8 = 0x04;
/// `PP2_TYPE_SSL`.
pub const PP2_TYPE_SSL: u8 = 0x20;
/// `PP2_SUBTYPE_SSL_VERSION`.
pub const PP2_SUBTYPE_SSL_VERSION: u8 = 0x21;
/// `PP2_SUBTYPE_SSL_CN`.
pub const PP2_SUBTYPE_SSL_CN: u8 = 0x22;
/// `PP2_SUBTYPE_SSL_CIPHER`.
pub const PP2_SUBTYPE_SSL_CIPHER: u8 = 0x23;
/// `PP2_SUBTYPE_SSL_SIG_ALG`.
pub const PP2_SUBTYPE_SSL_SIG_ALG: u8 = 0x24;
/// `PP2_SUBTYPE_SSL_KEY_ALG`.
pub const PP2_SUBTYPE_SSL_KEY_ALG: u8 = 0x25;
/// `client` flag: the client connected over TLS.
pub const PP2_CLIENT_SSL: u8 = 0x01;
/// `client` flag: the client presented a certificate on this connection.
pub const PP2_CLIENT_CERT_CONN: u8 = 0x02;
/// `client` flag: the client presented a certificate at least once in this
/// TLS session (e.g. before a resumption).
pub const PP2_CLIENT_CERT_SESS: u8 = 0x04;

/// PROXY protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// Text: `PROXY TCP4 src dst sport dport\r\n`.
    V1,
    /// Binary, with TLVs.
    V2,
}

/// A parsed header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyHeader {
    /// Which version was on the wire.
    pub version: Version,
    /// A v2 `LOCAL` command: the balancer's own connection (health check);
    /// use the connection's real endpoints.
    pub local: bool,
    /// The client's address; `None` for v1 `UNKNOWN`, v2 `AF_UNSPEC` and
    /// `LOCAL` (use the connection's peer address then).
    pub source: Option<SocketAddr>,
    /// The address the client connected to; `None` as for `source`.
    pub destination: Option<SocketAddr>,
    /// v2 TLVs (always empty for v1).
    pub tlvs: Tlvs,
}

/// The TLVs of a v2 header. `PP2_TYPE_NOOP` is skipped and
/// `PP2_TYPE_CRC32C` is checked, neither is kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tlvs {
    /// `PP2_TYPE_ALPN`: the negotiated protocol.
    pub alpn: Option<Vec<u8>>,
    /// `PP2_TYPE_AUTHORITY`: the host name (SNI).
    pub authority: Option<String>,
    /// `PP2_TYPE_SSL`.
    pub ssl: Option<SslInfo>,
    /// Every other TLV (`UNIQUE_ID`, `NETNS`, custom 0xE0..=0xEF, ...), in
    /// wire order.
    pub other: Vec<RawTlv>,
}

/// A TLV this module does not interpret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawTlv {
    /// The type byte.
    pub kind: u8,
    /// The value.
    pub value: Vec<u8>,
}

/// A parsed `PP2_TYPE_SSL` TLV. Unknown sub-TLVs are skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SslInfo {
    /// The `client` bit field (`PP2_CLIENT_*`).
    pub client: u8,
    /// The `verify` field: 0 when the client presented a certificate and it
    /// was verified, non-zero otherwise.
    pub verify: u32,
    /// `PP2_SUBTYPE_SSL_VERSION`, e.g. `TLSv1.3`.
    pub version: Option<String>,
    /// `PP2_SUBTYPE_SSL_CIPHER`, e.g. `TLS13_AES_128_GCM_SHA256`.
    pub cipher: Option<String>,
    /// `PP2_SUBTYPE_SSL_CN`: the client certificate's subject CN.
    pub client_cn: Option<String>,
    /// `PP2_SUBTYPE_SSL_SIG_ALG`.
    pub sig_alg: Option<String>,
    /// `PP2_SUBTYPE_SSL_KEY_ALG`.
    pub key_alg: Option<String>,
}

impl SslInfo {
    /// The client presented a certificate on this connection or earlier in
    /// its TLS session.
    pub fn client_cert_presented(&self) -> bool {
        self.client & (PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS) != 0
    }

    /// The client presented a certificate and it was verified.
    pub fn client_cert_verified(&self) -> bool {
        self.client_cert_presented() && self.verify == 0
    }
}

/// What to put in a header that ringterm sends to a backend. Borrowed, so
/// building one per connection allocates nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EncodeInfo<'a> {
    /// `(source, destination)`: the client's address and the address it
    /// connected to. `None`: unknown (v1 `UNKNOWN`, v2 `LOCAL`+`AF_UNSPEC`).
    /// IPv6 flow info and scope id are not carried.
    pub addresses: Option<(SocketAddr, SocketAddr)>,
    /// v2 only: the negotiated ALPN protocol.
    pub alpn: Option<&'a [u8]>,
    /// v2 only: the SNI host name.
    pub authority: Option<&'a str>,
    /// v2 only: TLS facts of the client connection.
    pub ssl: Option<SslEncode<'a>>,
}

/// The `PP2_TYPE_SSL` TLV to send. `PP2_CLIENT_SSL` is always set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SslEncode<'a> {
    /// Protocol version, e.g. `TLSv1.3` (`PP2_SUBTYPE_SSL_VERSION`).
    pub version: &'a str,
    /// Cipher suite name, e.g. `TLS13_AES_128_GCM_SHA256`.
    pub cipher: &'a str,
    /// The client presented a certificate in this handshake
    /// (`PP2_CLIENT_CERT_CONN`).
    pub cert_in_connection: bool,
    /// The client presented a certificate in this TLS session, this
    /// handshake or the one a resumption continues (`PP2_CLIENT_CERT_SESS`).
    pub cert_in_session: bool,
    /// The presented certificate was verified: `verify` is 0 only when this
    /// is set and a certificate was presented, 1 otherwise (the spec's
    /// "non-zero otherwise").
    pub cert_verified: bool,
    /// Client certificate subject CN (`PP2_SUBTYPE_SSL_CN`).
    pub client_cn: Option<&'a str>,
    /// Signature algorithm of the certificate (`PP2_SUBTYPE_SSL_SIG_ALG`).
    pub sig_alg: Option<&'a str>,
    /// Key algorithm of the certificate (`PP2_SUBTYPE_SSL_KEY_ALG`).
    pub key_alg: Option<&'a str>,
}

/// Bounds for [`parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseLimits {
    /// The largest v2 length field (address block plus TLVs) accepted; a
    /// larger one fails with [`ProxyError::V2TooLong`] as soon as the length
    /// field arrives. At most 65,535 matters (the field is 16 bits).
    pub max_v2_len: usize,
}

impl Default for ParseLimits {
    fn default() -> Self {
        ParseLimits {
            max_v2_len: DEFAULT_MAX_V2_LEN,
        }
    }
}

/// The answer of [`parse`].
// `Done` is a few hundred bytes, returned once per connection: not worth a
// Box (an allocation) to shrink `NeedMore`.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// The bytes so far are a valid start of a header: call again with more.
    NeedMore,
    /// A complete header. The first `consumed` bytes are the header; the rest
    /// of the input belongs to the TLS stream.
    Done {
        /// The header.
        header: ProxyHeader,
        /// The header's length in bytes.
        consumed: usize,
    },
}

/// Everything that can go wrong parsing or encoding a header. Parse errors
/// are final: more bytes would not change them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The first byte starts neither signature (e.g. `0x16`, a TLS
    /// handshake record): the peer sent no PROXY header.
    #[error("no PROXY protocol header (first byte {0:#04x})")]
    Missing(u8),
    /// The input starts like a v1 or v2 signature but differs later.
    #[error("bad PROXY protocol signature")]
    BadSignature,
    /// No CRLF within the first 107 bytes of a v1 header.
    #[error("PROXY v1 header longer than 107 bytes")]
    V1TooLong,
    /// v1: a byte outside printable ASCII, a CR without LF, or a wrong
    /// number of fields.
    #[error("PROXY v1 syntax error: {0}")]
    V1Syntax(&'static str),
    /// v1: the protocol is not `TCP4`, `TCP6` or `UNKNOWN`.
    #[error("PROXY v1 protocol is not TCP4, TCP6 or UNKNOWN")]
    V1Protocol,
    /// v1: an address that is not an IPv4 (`TCP4`) or IPv6 (`TCP6`) address.
    #[error("PROXY v1 invalid {0} address")]
    V1Address(&'static str),
    /// v1: a port that is not a decimal 0..=65535 without sign or leading
    /// zero.
    #[error("PROXY v1 invalid {0} port")]
    V1Port(&'static str),
    /// v2: the version nibble is not 2 (the whole version/command byte).
    #[error("PROXY v2 bad version (byte {0:#04x})")]
    V2Version(u8),
    /// v2: the command nibble is neither `LOCAL` nor `PROXY`.
    #[error("PROXY v2 bad command (byte {0:#04x})")]
    V2Command(u8),
    /// v2: unknown address family nibble (the whole family/protocol byte).
    #[error("PROXY v2 bad address family (byte {0:#04x})")]
    V2Family(u8),
    /// v2: unknown transport protocol nibble (the whole family/protocol
    /// byte).
    #[error("PROXY v2 bad transport protocol (byte {0:#04x})")]
    V2Protocol(u8),
    /// v2 `PROXY` command with a valid but unsupported family/protocol.
    #[error("PROXY v2 {0} is not supported (only STREAM over AF_INET, AF_INET6 or AF_UNSPEC)")]
    V2Unsupported(&'static str),
    /// v2 length field over [`ParseLimits::max_v2_len`].
    #[error("PROXY v2 header length {len} over the limit {max}")]
    V2TooLong {
        /// The length field.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// v2 length field too short for the family's address block.
    #[error("PROXY v2 length {len} too short for the {need}-byte address block")]
    V2AddressLength {
        /// The length field.
        len: usize,
        /// The address block's size.
        need: usize,
    },
    /// v2: a malformed TLV.
    #[error("PROXY v2 bad TLV: {0}")]
    V2Tlv(&'static str),
    /// v2: `PP2_TYPE_CRC32C` does not match the header.
    #[error("PROXY v2 CRC32C mismatch")]
    V2Checksum,
    /// Encode: a TLV (or `PP2_TYPE_SSL` with its sub-TLVs) value longer than
    /// 65,535 bytes.
    #[error("PROXY v2 TLV {kind:#04x} value of {len} bytes does not fit a 16-bit length")]
    EncodeTlvTooLong {
        /// The TLV type.
        kind: u8,
        /// The value's length.
        len: usize,
    },
    /// Encode: address block plus TLVs longer than 65,535 bytes.
    #[error("PROXY v2 header payload of {len} bytes does not fit a 16-bit length")]
    EncodeTooLong {
        /// The payload's length.
        len: usize,
    },
}

/// Appends a `version` header for `info` to `out` and returns the number of
/// bytes appended. On error `out` is left as it was.
pub fn encode(
    version: Version,
    info: &EncodeInfo<'_>,
    out: &mut Vec<u8>,
) -> Result<usize, ProxyError> {
    match version {
        Version::V1 => Ok(v1::encode(info, out)),
        Version::V2 => v2::encode(info, out),
    }
}

/// Which version `buf` starts with: `Ok(Some(_))` once the whole signature
/// is there, `Ok(None)` while `buf` is a (possibly empty) prefix of one,
/// [`ProxyError::Missing`] when the first byte starts neither, and
/// [`ProxyError::BadSignature`] when a later signature byte is wrong.
pub fn detect(buf: &[u8]) -> Result<Option<Version>, ProxyError> {
    let (version, sig): (Version, &[u8]) = match buf.first() {
        None => return Ok(None),
        Some(b'P') => (Version::V1, &V1_SIGNATURE),
        Some(b'\r') => (Version::V2, &V2_SIGNATURE),
        Some(&b) => return Err(ProxyError::Missing(b)),
    };
    let n = buf.len().min(sig.len());
    if buf[..n] != sig[..n] {
        return Err(ProxyError::BadSignature);
    }
    Ok((n == sig.len()).then_some(version))
}

/// Parses a PROXY header (v1 or v2) at the start of `buf`, everything
/// received so far. See the module docs for what is accepted.
pub fn parse(buf: &[u8], limits: &ParseLimits) -> Result<Parsed, ProxyError> {
    detect(buf)?;
    match buf.first() {
        Some(b'P') => v1::parse(buf),
        Some(_) => v2::parse(buf, limits),
        None => Ok(Parsed::NeedMore),
    }
}

/// Fuzzing and property-test entry points; not part of the API.
#[doc(hidden)]
pub mod fuzz {
    use super::{parse, ParseLimits, Parsed, V1_MAX_LEN, V2_HEADER_LEN};

    /// Feeds `data[1..]` to [`parse`] whole, as every prefix up to a bound,
    /// and in chunks of `data[0]` bytes (as socket reads would grow a
    /// buffer), under the default limits and a small `max_v2_len`, and
    /// panics if the answers disagree: a prefix must give `NeedMore` or the
    /// whole input's answer, `Done` must not consume more than it was given
    /// and must not depend on the bytes after it, and an input as long as
    /// the bound must not give `NeedMore`.
    pub fn fuzz_parse(data: &[u8]) {
        let Some((&chunk, input)) = data.split_first() else {
            return;
        };
        for limits in [ParseLimits::default(), ParseLimits { max_v2_len: 40 }] {
            check(input, usize::from(chunk).max(1), &limits);
        }
    }

    fn check(input: &[u8], chunk: usize, limits: &ParseLimits) {
        let whole = parse(input, limits);
        let bound = V1_MAX_LEN.max(V2_HEADER_LEN + limits.max_v2_len);
        if input.len() >= bound {
            assert_ne!(whole, Ok(Parsed::NeedMore), "unbounded NeedMore");
        }
        if let Ok(Parsed::Done { consumed, .. }) = &whole {
            assert!(*consumed <= input.len().min(bound));
            assert_eq!(parse(&input[..*consumed], limits), whole);
        }
        let agrees = |n: usize| {
            let r = parse(&input[..n], limits);
            assert!(
                r == Ok(Parsed::NeedMore) || r == whole,
                "prefix {n} of {}: {r:?} vs whole {whole:?}",
                input.len()
            );
        };
        // Every prefix up to the header (or a bound) ...
        let every = match &whole {
            Ok(Parsed::Done { consumed, .. }) => *consumed + 1,
            _ => 512,
        };
        (0..=input.len().min(every)).for_each(agrees);
        // ... and growing by `chunk` bytes to the end.
        (0..=input.len()).step_by(chunk).for_each(agrees);
    }
}

#[cfg(test)]
mod tests;
