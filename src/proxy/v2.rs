//! PROXY v2 (binary): encoding through `ppp::v2::Builder`; parsing with our
//! own fixed-header checks in front of `ppp`'s address decoding and TLV
//! splitting, and our own TLV semantics (see [`super`] for why).

use core::net::{IpAddr, SocketAddr, SocketAddrV6};

use ppp::v2::{Builder, Command, Protocol, Type, TypeLengthValues};

use super::{
    EncodeInfo, ParseLimits, Parsed, ProxyError, ProxyHeader, RawTlv, SslInfo, Tlvs, Version,
    PP2_CLIENT_CERT_CONN, PP2_CLIENT_CERT_SESS, PP2_CLIENT_SSL, PP2_SUBTYPE_SSL_CIPHER,
    PP2_SUBTYPE_SSL_CN, PP2_SUBTYPE_SSL_KEY_ALG, PP2_SUBTYPE_SSL_SIG_ALG, PP2_SUBTYPE_SSL_VERSION,
    PP2_TYPE_ALPN, PP2_TYPE_AUTHORITY, PP2_TYPE_CRC32C, PP2_TYPE_NOOP, PP2_TYPE_SSL, V2_HEADER_LEN,
    V2_SIGNATURE,
};

/// Type, length: the bytes of a TLV before its value.
const TLV_HEAD: usize = 3;
/// `client` and `verify`: the bytes of `PP2_TYPE_SSL` before its sub-TLVs.
const SSL_HEAD: usize = 5;
const MAX_LEN: usize = u16::MAX as usize;

/// Source and destination of one family: a mixed pair becomes IPv6 with the
/// IPv4 address IPv4-mapped (as HAProxy does).
pub(super) fn same_family((s, d): (SocketAddr, SocketAddr)) -> (SocketAddr, SocketAddr) {
    let v6 = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => {
            SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
        }
        v6 => v6,
    };
    if s.is_ipv4() == d.is_ipv4() {
        (s, d)
    } else {
        (v6(s), v6(d))
    }
}

/// The size of a TLV with a `len`-byte value, or the typed error if `len`
/// does not fit its 16-bit length.
fn tlv_size(kind: u8, len: usize) -> Result<usize, ProxyError> {
    if len > MAX_LEN {
        return Err(ProxyError::EncodeTlvTooLong { kind, len });
    }
    Ok(TLV_HEAD + len)
}

pub(super) fn encode(info: &EncodeInfo<'_>, out: &mut Vec<u8>) -> Result<usize, ProxyError> {
    // Sizes first, so that everything `Builder` would refuse has a typed
    // error and `out` is untouched on error.
    // The value of PP2_TYPE_SSL: client, verify, sub-TLVs.
    let mut ssl_len = 0;
    let mut ssl_subs: [(Type, &[u8]); 5] = [(Type::NoOp, &[]); 5];
    let mut n_subs = 0;
    if let Some(ssl) = &info.ssl {
        let subs = [
            (Type::SSLVersion, Some(ssl.version)),
            (Type::SSLCommonName, ssl.client_cn),
            (Type::SSLCipher, Some(ssl.cipher)),
            (Type::SSLSignatureAlgorithm, ssl.sig_alg),
            (Type::SSLKeyAlgorithm, ssl.key_alg),
        ];
        ssl_len = SSL_HEAD;
        for (kind, value) in subs {
            if let Some(value) = value {
                ssl_len += tlv_size(kind as u8, value.len())?;
                ssl_subs[n_subs] = (kind, value.as_bytes());
                n_subs += 1;
            }
        }
    }
    let addresses = match info.addresses.map(same_family) {
        None => ppp::v2::Addresses::Unspecified,
        Some(pair) => ppp::v2::Addresses::from(pair),
    };
    let addr_len = match addresses {
        ppp::v2::Addresses::IPv4(_) => 12,
        ppp::v2::Addresses::IPv6(_) => 36,
        _ => 0,
    };
    let mut len = addr_len;
    if let Some(alpn) = info.alpn {
        len += tlv_size(PP2_TYPE_ALPN, alpn.len())?;
    }
    if let Some(authority) = info.authority {
        len += tlv_size(PP2_TYPE_AUTHORITY, authority.len())?;
    }
    if info.ssl.is_some() {
        len += tlv_size(PP2_TYPE_SSL, ssl_len)?;
    }
    if len > MAX_LEN {
        return Err(ProxyError::EncodeTooLong { len });
    }

    let (command, protocol) = match addresses {
        // HAProxy's choice for unknown addresses.
        ppp::v2::Addresses::Unspecified => (Command::Local, Protocol::Unspecified),
        _ => (Command::Proxy, Protocol::Stream),
    };
    let too_long = |_| ProxyError::EncodeTooLong { len };
    let mut b = Builder::with_addresses(ppp::v2::Version::Two | command, protocol, addresses)
        .reserve_capacity(len - addr_len);
    if let Some(alpn) = info.alpn {
        b = b.write_tlv(Type::ALPN, alpn).map_err(too_long)?;
    }
    if let Some(authority) = info.authority {
        b = b
            .write_tlv(Type::Authority, authority.as_bytes())
            .map_err(too_long)?;
    }
    if let Some(ssl) = &info.ssl {
        let mut client = PP2_CLIENT_SSL;
        if ssl.cert_in_connection {
            client |= PP2_CLIENT_CERT_CONN;
        }
        if ssl.cert_in_session {
            client |= PP2_CLIENT_CERT_SESS;
        }
        let presented = ssl.cert_in_connection || ssl.cert_in_session;
        let verify: u32 = if presented && ssl.cert_verified { 0 } else { 1 };
        // ssl_len <= MAX_LEN was checked above.
        let value_len = ssl_len as u16;
        b = b
            .write_payload(PP2_TYPE_SSL)
            .and_then(|b| b.write_payload(value_len))
            .and_then(|b| b.write_payload(client))
            .and_then(|b| b.write_payload(verify))
            .map_err(too_long)?;
        for &(kind, value) in &ssl_subs[..n_subs] {
            b = b.write_tlv(kind, value).map_err(too_long)?;
        }
    }
    let bytes = b.build().map_err(too_long)?;
    out.extend_from_slice(&bytes);
    Ok(bytes.len())
}

/// The address block's size for a family nibble.
fn address_block(family: u8) -> Option<usize> {
    match family {
        0x0 => Some(0),
        0x1 => Some(12),
        0x2 => Some(36),
        0x3 => Some(216),
        _ => None,
    }
}

/// `buf` starts with a prefix of [`V2_SIGNATURE`] (checked by the caller).
///
/// Each fixed-header byte is checked as soon as it is there, in wire order,
/// so a prefix of the input either needs more or fails exactly as the whole
/// input does; TLVs are looked at only once the whole header is there.
pub(super) fn parse(buf: &[u8], limits: &ParseLimits) -> Result<Parsed, ProxyError> {
    let sig = V2_SIGNATURE.len();
    let Some(&ver_cmd) = buf.get(sig) else {
        return Ok(Parsed::NeedMore);
    };
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::V2Version(ver_cmd));
    }
    let local = match ver_cmd & 0x0f {
        0x0 => true,
        0x1 => false,
        _ => return Err(ProxyError::V2Command(ver_cmd)),
    };
    let Some(&fam_proto) = buf.get(sig + 1) else {
        return Ok(Parsed::NeedMore);
    };
    let (family, transport) = (fam_proto >> 4, fam_proto & 0x0f);
    let Some(addr_len) = address_block(family) else {
        return Err(ProxyError::V2Family(fam_proto));
    };
    if transport > 0x2 {
        return Err(ProxyError::V2Protocol(fam_proto));
    }
    // LOCAL: "the receiver must ... discard the protocol block including
    // the family", so only PROXY is held to what ringterm can use.
    if !local {
        match (family, transport) {
            (0x3, _) => return Err(ProxyError::V2Unsupported("AF_UNIX")),
            (_, 0x2) => return Err(ProxyError::V2Unsupported("DGRAM")),
            (0x1 | 0x2, 0x0) => return Err(ProxyError::V2Unsupported("UNSPEC transport over IP")),
            _ => {}
        }
    }
    let Some(&[hi, lo]) = buf.get(sig + 2..V2_HEADER_LEN) else {
        return Ok(Parsed::NeedMore);
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    if len > limits.max_v2_len {
        return Err(ProxyError::V2TooLong {
            len,
            max: limits.max_v2_len,
        });
    }
    if len < addr_len {
        return Err(ProxyError::V2AddressLength {
            len,
            need: addr_len,
        });
    }
    let consumed = V2_HEADER_LEN + len;
    let Some(header) = buf.get(..consumed) else {
        return Ok(Parsed::NeedMore);
    };
    let (source, destination) = if local {
        (None, None)
    } else {
        addresses(header)?
    };
    let tlvs = parse_tlvs(header, V2_HEADER_LEN + addr_len)?;
    Ok(Parsed::Done {
        header: ProxyHeader {
            version: Version::V2,
            local,
            source,
            destination,
            tlvs,
        },
        consumed,
    })
}

type Pair = (Option<SocketAddr>, Option<SocketAddr>);

/// The addresses of a complete, pre-checked header, decoded by `ppp`.
fn addresses(header: &[u8]) -> Result<Pair, ProxyError> {
    use ppp::v2::{Addresses, ParseError as E};
    let h = ppp::v2::Header::try_from(header).map_err(|e| match e {
        // Not reached after our checks; mapped for completeness.
        E::Prefix => ProxyError::BadSignature,
        E::Version(_) => ProxyError::V2Version(header[12]),
        E::Command(_) => ProxyError::V2Command(header[12]),
        E::AddressFamily(_) => ProxyError::V2Family(header[13]),
        E::Protocol(_) => ProxyError::V2Protocol(header[13]),
        _ => ProxyError::V2AddressLength {
            len: header.len() - V2_HEADER_LEN,
            need: address_block(header[13] >> 4).unwrap_or(0),
        },
    })?;
    let pair =
        |s: IpAddr, sp, d: IpAddr, dp| (Some(SocketAddr::new(s, sp)), Some(SocketAddr::new(d, dp)));
    Ok(match h.addresses {
        Addresses::IPv4(a) => pair(
            a.source_address.into(),
            a.source_port,
            a.destination_address.into(),
            a.destination_port,
        ),
        Addresses::IPv6(a) => pair(
            a.source_address.into(),
            a.source_port,
            a.destination_address.into(),
            a.destination_port,
        ),
        // AF_UNSPEC ("should ignore address information"); AF_UNIX never
        // gets here (rejected for PROXY, not decoded for LOCAL).
        Addresses::Unspecified | Addresses::Unix(_) => (None, None),
    })
}

fn tlv_error(e: ppp::v2::ParseError) -> ProxyError {
    match e {
        ppp::v2::ParseError::Leftovers(_) => {
            ProxyError::V2Tlv("trailing bytes too short for a TLV")
        }
        _ => ProxyError::V2Tlv("TLV length overruns the header"),
    }
}

fn set_once<T>(slot: &mut Option<T>, value: T) -> Result<(), ProxyError> {
    if slot.is_some() {
        return Err(ProxyError::V2Tlv("duplicate TLV"));
    }
    *slot = Some(value);
    Ok(())
}

fn text(value: &[u8]) -> Result<String, ProxyError> {
    String::from_utf8(value.to_vec()).map_err(|_| ProxyError::V2Tlv("text value is not UTF-8"))
}

/// The TLVs of a complete `header`, starting at `start`.
fn parse_tlvs(header: &[u8], start: usize) -> Result<Tlvs, ProxyError> {
    let mut tlvs = Tlvs::default();
    let mut crc = None;
    let mut at = start;
    for tlv in TypeLengthValues::from(&header[start..]) {
        let tlv = tlv.map_err(tlv_error)?;
        let value: &[u8] = &tlv.value;
        match tlv.kind {
            PP2_TYPE_ALPN => set_once(&mut tlvs.alpn, value.to_vec())?,
            PP2_TYPE_AUTHORITY => set_once(&mut tlvs.authority, text(value)?)?,
            PP2_TYPE_CRC32C => {
                let Ok(sum) = <[u8; 4]>::try_from(value) else {
                    return Err(ProxyError::V2Tlv("CRC32C value is not 4 bytes"));
                };
                set_once(&mut crc, (at + TLV_HEAD, u32::from_be_bytes(sum)))?;
            }
            PP2_TYPE_NOOP => {}
            PP2_TYPE_SSL => set_once(&mut tlvs.ssl, parse_ssl(value)?)?,
            kind => tlvs.other.push(RawTlv {
                kind,
                value: value.to_vec(),
            }),
        }
        at += TLV_HEAD + value.len();
    }
    if let Some((at, sum)) = crc {
        if header_crc32c(header, at) != sum {
            return Err(ProxyError::V2Checksum);
        }
    }
    Ok(tlvs)
}

fn parse_ssl(value: &[u8]) -> Result<SslInfo, ProxyError> {
    let Some((&client, rest)) = value.split_first() else {
        return Err(ProxyError::V2Tlv("SSL value shorter than 5 bytes"));
    };
    let Some((verify, subs)) = rest.split_first_chunk::<4>() else {
        return Err(ProxyError::V2Tlv("SSL value shorter than 5 bytes"));
    };
    let mut ssl = SslInfo {
        client,
        verify: u32::from_be_bytes(*verify),
        ..SslInfo::default()
    };
    for sub in TypeLengthValues::from(subs) {
        let sub = sub.map_err(tlv_error)?;
        let slot = match sub.kind {
            PP2_SUBTYPE_SSL_VERSION => &mut ssl.version,
            PP2_SUBTYPE_SSL_CN => &mut ssl.client_cn,
            PP2_SUBTYPE_SSL_CIPHER => &mut ssl.cipher,
            PP2_SUBTYPE_SSL_SIG_ALG => &mut ssl.sig_alg,
            PP2_SUBTYPE_SSL_KEY_ALG => &mut ssl.key_alg,
            _ => continue,
        };
        set_once(slot, text(&sub.value)?)?;
    }
    Ok(ssl)
}

/// CRC32C (Castagnoli), bitwise: headers are small and this runs only when
/// a peer sends `PP2_TYPE_CRC32C`.
fn crc32c_update(mut crc: u32, bytes: &[u8]) -> u32 {
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0x82f6_3b78 & 0u32.wrapping_sub(crc & 1));
        }
    }
    crc
}

/// The checksum of `header` with its 4-byte CRC32C value at `at` taken as
/// zeros, as the spec defines it.
fn header_crc32c(header: &[u8], at: usize) -> u32 {
    let crc = crc32c_update(!0, &header[..at]);
    let crc = crc32c_update(crc, &[0; 4]);
    !crc32c_update(crc, &header[at + 4..])
}

#[cfg(test)]
mod tests {
    use super::super::{
        encode, parse, EncodeInfo, ParseLimits, Parsed, ProxyError, ProxyHeader, RawTlv, SslEncode,
        SslInfo, Tlvs, Version,
    };
    use super::{crc32c_update, header_crc32c};
    use core::net::SocketAddr;

    const SIG: &[u8] = b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a";

    fn p(buf: &[u8]) -> Result<Parsed, ProxyError> {
        parse(buf, &ParseLimits::default())
    }

    fn done(buf: &[u8]) -> (ProxyHeader, usize) {
        match p(buf) {
            Ok(Parsed::Done { header, consumed }) => (header, consumed),
            other => panic!("{other:?}"),
        }
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    /// Assembled by hand from proxy-protocol.txt section 2.2 (not by the
    /// encoder): 192.0.2.1:56324 -> 198.51.100.7:443, ALPN "h2", authority
    /// "example.com", SSL (client = SSL|CERT_CONN|CERT_SESS, verify = 0,
    /// TLSv1.3, CN "alice", TLS13_AES_128_GCM_SHA256).
    fn known_vector() -> Vec<u8> {
        cat(&[
            SIG,
            b"\x21\x11\x00\x54",                 // v2 PROXY, INET STREAM, len 84
            b"\xc0\x00\x02\x01\xc6\x33\x64\x07", // 192.0.2.1, 198.51.100.7
            b"\xdc\x04\x01\xbb",                 // 56324, 443
            b"\x01\x00\x02h2",
            b"\x02\x00\x0bexample.com",
            b"\x20\x00\x32", // SSL, 50 bytes
            b"\x07\x00\x00\x00\x00",
            b"\x21\x00\x07TLSv1.3",
            b"\x22\x00\x05alice",
            b"\x23\x00\x18TLS13_AES_128_GCM_SHA256",
        ])
    }

    fn full_info() -> EncodeInfo<'static> {
        EncodeInfo {
            addresses: Some((sa("192.0.2.1:56324"), sa("198.51.100.7:443"))),
            alpn: Some(b"h2"),
            authority: Some("example.com"),
            ssl: Some(SslEncode {
                version: "TLSv1.3",
                cipher: "TLS13_AES_128_GCM_SHA256",
                cert_in_connection: true,
                cert_in_session: true,
                cert_verified: true,
                client_cn: Some("alice"),
                sig_alg: None,
                key_alg: None,
            }),
        }
    }

    #[test]
    fn encode_matches_hand_assembled_vector() {
        let mut out = b"x".to_vec();
        let n = encode(Version::V2, &full_info(), &mut out).unwrap();
        assert_eq!(&out[1..], known_vector().as_slice());
        assert_eq!(n, 16 + 84);
    }

    #[test]
    fn ppp_parser_reads_our_encoding() {
        let mut out = Vec::new();
        encode(Version::V2, &full_info(), &mut out).unwrap();
        let h = ppp::v2::Header::try_from(out.as_slice()).unwrap();
        assert_eq!(h.command, ppp::v2::Command::Proxy);
        assert_eq!(h.protocol, ppp::v2::Protocol::Stream);
        let kinds: Vec<u8> = h.tlvs().map(|t| t.unwrap().kind).collect();
        assert_eq!(kinds, [0x01, 0x02, 0x20]);
        let ssl = h.tlvs().nth(2).unwrap().unwrap();
        let subs: Vec<(u8, Vec<u8>)> = ppp::v2::TypeLengthValues::from(&ssl.value[5..])
            .map(|t| t.unwrap())
            .map(|t| (t.kind, t.value.to_vec()))
            .collect();
        assert_eq!(subs[0], (0x21, b"TLSv1.3".to_vec()));
        assert_eq!(subs[2], (0x23, b"TLS13_AES_128_GCM_SHA256".to_vec()));
    }

    #[test]
    fn parse_known_vector() {
        let (h, consumed) = done(&known_vector());
        assert_eq!(consumed, 100);
        assert_eq!(
            h,
            ProxyHeader {
                version: Version::V2,
                local: false,
                source: Some(sa("192.0.2.1:56324")),
                destination: Some(sa("198.51.100.7:443")),
                tlvs: Tlvs {
                    alpn: Some(b"h2".to_vec()),
                    authority: Some("example.com".into()),
                    ssl: Some(SslInfo {
                        client: 0x07,
                        verify: 0,
                        version: Some("TLSv1.3".into()),
                        cipher: Some("TLS13_AES_128_GCM_SHA256".into()),
                        client_cn: Some("alice".into()),
                        sig_alg: None,
                        key_alg: None,
                    }),
                    other: vec![],
                },
            }
        );
        let ssl = h.tlvs.ssl.unwrap();
        assert!(ssl.client_cert_presented() && ssl.client_cert_verified());
    }

    #[test]
    fn parse_v6_and_other_tlvs() {
        let h = cat(&[
            SIG,
            b"\x21\x21\x00\x2d",
            &[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            &[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            b"\x04\xd2\x01\xbb",
            b"\x04\x00\x00",    // NOOP, skipped
            b"\xea\x00\x03vpc", // custom, kept
        ]);
        let (hdr, consumed) = done(&h);
        assert_eq!(consumed, h.len());
        assert_eq!(hdr.source, Some(sa("[2001:db8::1]:1234")));
        assert_eq!(hdr.destination, Some(sa("[2001:db8::2]:443")));
        assert_eq!(
            hdr.tlvs.other,
            [RawTlv {
                kind: 0xea,
                value: b"vpc".to_vec()
            }]
        );
    }

    #[test]
    fn local_spec_health_check() {
        // proxy-protocol.txt: LOCAL, AF_UNSPEC, length 0.
        let h = cat(&[SIG, b"\x20\x00\x00\x00"]);
        let (hdr, consumed) = done(&h);
        assert_eq!(consumed, 16);
        assert!(hdr.local);
        assert_eq!((hdr.source, hdr.destination), (None, None));
        // LOCAL ignores the family, AF_UNIX and DGRAM included.
        let mut unix = cat(&[SIG, b"\x20\x32\x00\xd8"]);
        unix.resize(16 + 216, 0);
        assert!(done(&unix).0.local);
    }

    #[test]
    fn proxy_unspec_has_no_addresses() {
        let h = cat(&[SIG, b"\x21\x00\x00\x05", b"\x01\x00\x02h2"]);
        let (hdr, _) = done(&h);
        assert!(!hdr.local);
        assert_eq!(hdr.source, None);
        assert_eq!(hdr.tlvs.alpn.as_deref(), Some(&b"h2"[..]));
    }

    #[test]
    fn every_split_needs_more_then_done() {
        let header = known_vector();
        let tail = [0x16, 0x03, 0x01, 0x02, 0x00];
        let input = cat(&[&header, &tail]);
        for n in 0..header.len() {
            assert_eq!(p(&input[..n]), Ok(Parsed::NeedMore), "prefix {n}");
        }
        for n in header.len()..=input.len() {
            assert_eq!(done(&input[..n]).1, header.len());
        }
        assert_eq!(&input[header.len()..], &tail);
    }

    #[test]
    fn fixed_header_errors_fail_fast() {
        use ProxyError::*;
        let cases: &[(&[u8], ProxyError)] = &[
            (b"\r\n\r\n\0\r\nQUIX", BadSignature),
            (b"\r\r", BadSignature),
            (&[0x16], Missing(0x16)),
            (&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01], Missing(0x16)),
            (&[0x00], Missing(0x00)),
        ];
        for (input, want) in cases {
            assert_eq!(p(input).as_ref(), Err(want), "{input:?}");
        }
        // Each error byte is judged the moment it arrives.
        let fast: &[(&[u8], ProxyError)] = &[
            (b"\x11", V2Version(0x11)),
            (b"\x31", V2Version(0x31)),
            (b"\x22", V2Command(0x22)),
            (b"\x2f", V2Command(0x2f)),
            (b"\x21\x41", V2Family(0x41)),
            (b"\x21\x13", V2Protocol(0x13)),
            (b"\x21\x12", V2Unsupported("DGRAM")),
            (b"\x21\x31", V2Unsupported("AF_UNIX")),
            (b"\x21\x10", V2Unsupported("UNSPEC transport over IP")),
            (b"\x21\x02", V2Unsupported("DGRAM")),
            (
                b"\x21\x11\x10\x01",
                V2TooLong {
                    len: 4097,
                    max: 4096,
                },
            ),
            (
                b"\x21\x11\xff\xff",
                V2TooLong {
                    len: 65535,
                    max: 4096,
                },
            ),
            (b"\x21\x11\x00\x0b", V2AddressLength { len: 11, need: 12 }),
            (b"\x21\x21\x00\x0c", V2AddressLength { len: 12, need: 36 }),
        ];
        for (rest, want) in fast {
            assert_eq!(p(&cat(&[SIG, rest])).as_ref(), Err(want), "{rest:?}");
        }
        // A tighter limit.
        let h = cat(&[SIG, b"\x21\x11\x00\x0d"]);
        assert_eq!(
            parse(&h, &ParseLimits { max_v2_len: 12 }),
            Err(V2TooLong { len: 13, max: 12 })
        );
    }

    #[test]
    fn malformed_tlvs() {
        use ProxyError::V2Tlv;
        let addr: &[u8] = b"\x7f\x00\x00\x01\x7f\x00\x00\x01\x00\x50\x01\xbb";
        let with = |tlvs: &[u8]| {
            let len = (12 + tlvs.len()) as u16;
            cat(&[SIG, b"\x21\x11", &len.to_be_bytes(), addr, tlvs])
        };
        let cases: &[(&[u8], ProxyError)] = &[
            (b"\x01\x00\x05h2", V2Tlv("TLV length overruns the header")),
            (b"\x01\x00", V2Tlv("trailing bytes too short for a TLV")),
            (b"\x01\x00\x02h2\x01\x00\x02h3", V2Tlv("duplicate TLV")),
            (b"\x02\x00\x02\xff\xfe", V2Tlv("text value is not UTF-8")),
            (
                b"\x20\x00\x04\x01\x00\x00\x00",
                V2Tlv("SSL value shorter than 5 bytes"),
            ),
            (
                b"\x20\x00\x08\x01\x00\x00\x00\x00\x21\x00\x09",
                V2Tlv("TLV length overruns the header"),
            ),
            (
                b"\x20\x00\x07\x01\x00\x00\x00\x00\x21\x00",
                V2Tlv("trailing bytes too short for a TLV"),
            ),
            (
                b"\x03\x00\x02\x00\x00",
                V2Tlv("CRC32C value is not 4 bytes"),
            ),
        ];
        for (tlvs, want) in cases {
            assert_eq!(p(&with(tlvs)).as_ref(), Err(want), "{tlvs:?}");
        }
    }

    #[test]
    fn crc32c_checked() {
        assert_eq!(!crc32c_update(!0, b"123456789"), 0xe306_9283);
        let mut h = cat(&[
            SIG,
            b"\x21\x11\x00\x18",
            b"\x7f\x00\x00\x01\x7f\x00\x00\x01\x00\x50\x01\xbb",
            b"\x01\x00\x02h2",
            b"\x03\x00\x04\x00\x00\x00\x00",
        ]);
        let at = h.len() - 4;
        let sum = header_crc32c(&h, at);
        h[at..].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(done(&h).0.tlvs.alpn.as_deref(), Some(&b"h2"[..]));
        h[16 + 12 + 3] = b'X';
        assert_eq!(p(&h), Err(ProxyError::V2Checksum));
    }

    #[test]
    fn encode_unknown_addresses_as_local_unspec() {
        let mut out = Vec::new();
        let info = EncodeInfo {
            alpn: Some(b"http/1.1"),
            ..Default::default()
        };
        encode(Version::V2, &info, &mut out).unwrap();
        assert_eq!(&out[12..16], b"\x20\x00\x00\x0b");
        let (h, _) = done(&out);
        assert!(h.local);
        assert_eq!(h.tlvs.alpn.as_deref(), Some(&b"http/1.1"[..]));
    }

    #[test]
    fn encode_mixed_families_as_v6() {
        let mut out = Vec::new();
        let info = EncodeInfo {
            addresses: Some((sa("192.0.2.1:1"), sa("[2001:db8::7]:443"))),
            ..Default::default()
        };
        encode(Version::V2, &info, &mut out).unwrap();
        assert_eq!(out[13], 0x21);
        let (h, _) = done(&out);
        assert_eq!(h.source, Some(sa("[::ffff:192.0.2.1]:1")));
    }

    #[test]
    fn encode_verify_and_flags() {
        let mut info = full_info();
        let ssl = info.ssl.as_mut().unwrap();
        ssl.cert_in_connection = false;
        ssl.cert_in_session = false;
        ssl.client_cn = None;
        ssl.sig_alg = Some("RSA-SHA256");
        ssl.key_alg = Some("RSA2048");
        let mut out = Vec::new();
        encode(Version::V2, &info, &mut out).unwrap();
        let ssl = done(&out).0.tlvs.ssl.unwrap();
        // No certificate: verify is non-zero even though cert_verified.
        assert_eq!((ssl.client, ssl.verify), (0x01, 1));
        assert!(!ssl.client_cert_presented() && !ssl.client_cert_verified());
        assert_eq!(ssl.sig_alg.as_deref(), Some("RSA-SHA256"));
        assert_eq!(ssl.key_alg.as_deref(), Some("RSA2048"));
        assert_eq!(ssl.client_cn, None);
    }

    #[test]
    fn encode_refuses_what_does_not_fit() {
        let big = vec![b'a'; 65_536];
        let max = vec![b'a'; 65_535];
        let mut out = b"keep".to_vec();
        let info = EncodeInfo {
            alpn: Some(&big),
            ..Default::default()
        };
        assert_eq!(
            encode(Version::V2, &info, &mut out),
            Err(ProxyError::EncodeTlvTooLong {
                kind: 0x01,
                len: 65_536
            })
        );
        let s = core::str::from_utf8(&max).unwrap();
        let info = EncodeInfo {
            authority: Some(s),
            ..Default::default()
        };
        assert_eq!(
            encode(Version::V2, &info, &mut out),
            Err(ProxyError::EncodeTooLong { len: 65_538 })
        );
        let info = EncodeInfo {
            ssl: Some(SslEncode {
                cipher: &s[..65_530],
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            encode(Version::V2, &info, &mut out),
            Err(ProxyError::EncodeTlvTooLong {
                kind: 0x20,
                len: 65_541
            })
        );
        let info = EncodeInfo {
            ssl: Some(SslEncode {
                cipher: s,
                client_cn: Some(s),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(encode(Version::V2, &info, &mut out).is_err());
        assert_eq!(out, b"keep");
        // The largest that fits: 65,535 bytes of payload.
        let info = EncodeInfo {
            authority: Some(&s[..65_532]),
            ..Default::default()
        };
        assert_eq!(encode(Version::V2, &info, &mut out), Ok(16 + 65_535));
        let limits = ParseLimits { max_v2_len: 65_535 };
        assert!(matches!(
            parse(&out[4..], &limits),
            Ok(Parsed::Done {
                consumed: 65_551,
                ..
            })
        ));
    }
}
