//! PROXY v1 (text): encoding through `ppp`, a strict parser of our own (see
//! the module docs of [`super`] for why).

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::io::Write;

use super::{EncodeInfo, Parsed, ProxyError, ProxyHeader, Tlvs, Version, V1_MAX_LEN, V1_SIGNATURE};

/// Appends `PROXY TCP4|TCP6|UNKNOWN ...\r\n`; TLV fields are ignored.
pub(super) fn encode(info: &EncodeInfo<'_>, out: &mut Vec<u8>) -> usize {
    let addresses = match info.addresses.map(super::v2::same_family) {
        None => ppp::v1::Addresses::Unknown,
        Some((SocketAddr::V4(s), SocketAddr::V4(d))) => {
            ppp::v1::Addresses::new_tcp4(*s.ip(), *d.ip(), s.port(), d.port())
        }
        Some((s, d)) => ppp::v1::Addresses::new_tcp6(v6(s.ip()), v6(d.ip()), s.port(), d.port()),
    };
    let start = out.len();
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{addresses}");
    out.len() - start
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// `buf` starts with a prefix of [`V1_SIGNATURE`] (checked by the caller).
///
/// The line is scanned byte by byte first (printable ASCII, CR only before
/// LF, CRLF within 107 bytes), and fields are looked at only once the CRLF
/// is there, so a prefix of the input either needs more or fails exactly as
/// the whole input does.
pub(super) fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let mut cr = None;
    for (i, &b) in buf
        .iter()
        .enumerate()
        .take(V1_MAX_LEN)
        .skip(V1_SIGNATURE.len())
    {
        match b {
            b'\r' => {
                // The LF must fit within the 107 bytes too.
                if i + 1 >= V1_MAX_LEN {
                    return Err(ProxyError::V1TooLong);
                }
                match buf.get(i + 1) {
                    None => return Ok(Parsed::NeedMore),
                    Some(b'\n') => {
                        cr = Some(i);
                        break;
                    }
                    Some(_) => return Err(ProxyError::V1Syntax("CR not followed by LF")),
                }
            }
            b' '..=b'~' => {}
            _ => return Err(ProxyError::V1Syntax("byte outside printable ASCII")),
        }
    }
    let Some(cr) = cr else {
        return if buf.len() >= V1_MAX_LEN {
            Err(ProxyError::V1TooLong)
        } else {
            Ok(Parsed::NeedMore)
        };
    };
    // Printable ASCII was checked above.
    let line = core::str::from_utf8(&buf[V1_SIGNATURE.len()..cr])
        .map_err(|_| ProxyError::V1Syntax("byte outside printable ASCII"))?;
    let mut fields = line.split(' ');
    let (source, destination) = match fields.next() {
        // "the receiver must ignore anything presented before the CRLF"
        Some("UNKNOWN") => (None, None),
        Some(proto @ ("TCP4" | "TCP6")) => {
            let mut next = || fields.next().ok_or(ProxyError::V1Syntax("missing field"));
            let (src, dst, sport, dport) = (next()?, next()?, next()?, next()?);
            if fields.next().is_some() {
                return Err(ProxyError::V1Syntax("extra field"));
            }
            let (src, dst) = if proto == "TCP4" {
                (
                    ip::<Ipv4Addr>(src, "source")?,
                    ip::<Ipv4Addr>(dst, "destination")?,
                )
            } else {
                (
                    ip::<Ipv6Addr>(src, "source")?,
                    ip::<Ipv6Addr>(dst, "destination")?,
                )
            };
            (
                Some(SocketAddr::new(src, port(sport, "source")?)),
                Some(SocketAddr::new(dst, port(dport, "destination")?)),
            )
        }
        _ => return Err(ProxyError::V1Protocol),
    };
    Ok(Parsed::Done {
        header: ProxyHeader {
            version: Version::V1,
            local: false,
            source,
            destination,
            tlvs: Tlvs::default(),
        },
        consumed: cr + 2,
    })
}

fn ip<T: core::str::FromStr + Into<IpAddr>>(
    s: &str,
    which: &'static str,
) -> Result<IpAddr, ProxyError> {
    s.parse::<T>()
        .map(Into::into)
        .map_err(|_| ProxyError::V1Address(which))
}

/// 0..=65535 in decimal, no sign, no leading zero.
fn port(s: &str, which: &'static str) -> Result<u16, ProxyError> {
    let digits = s.bytes().all(|b| b.is_ascii_digit());
    if !digits || s.is_empty() || s.len() > 5 || (s.len() > 1 && s.starts_with('0')) {
        return Err(ProxyError::V1Port(which));
    }
    s.parse().map_err(|_| ProxyError::V1Port(which))
}

#[cfg(test)]
mod tests {
    use super::super::{encode, parse, EncodeInfo, ParseLimits, Parsed, ProxyError, Version};
    use core::net::SocketAddr;

    fn p(buf: &[u8]) -> Result<Parsed, ProxyError> {
        parse(buf, &ParseLimits::default())
    }

    fn done(buf: &[u8]) -> (Option<SocketAddr>, Option<SocketAddr>, usize) {
        match p(buf) {
            Ok(Parsed::Done { header, consumed }) => {
                assert_eq!(header.version, Version::V1);
                assert!(!header.local);
                assert_eq!(header.tlvs, Default::default());
                (header.source, header.destination, consumed)
            }
            other => panic!("{other:?}"),
        }
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn tcp4() {
        let h = b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n";
        assert_eq!(
            done(h),
            (
                Some(sa("192.0.2.1:56324")),
                Some(sa("198.51.100.7:443")),
                h.len()
            )
        );
    }

    #[test]
    fn tcp6() {
        let h = b"PROXY TCP6 2001:db8::1 ::ffff:192.0.2.1 0 65535\r\n";
        assert_eq!(
            done(h),
            (
                Some(sa("[2001:db8::1]:0")),
                Some(sa("[::ffff:192.0.2.1]:65535")),
                h.len()
            )
        );
    }

    #[test]
    fn spec_examples() {
        // proxy-protocol.txt, 2.1: the worst cases, and UNKNOWN.
        let h = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n";
        assert_eq!(done(h).2, 56);
        let h = b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(done(h).2, 104);
        assert_eq!(done(b"PROXY UNKNOWN\r\n"), (None, None, 15));
        let h = b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(h.len(), 107);
        assert_eq!(done(h), (None, None, 107));
    }

    #[test]
    fn every_split_needs_more_then_done() {
        let header = b"PROXY TCP6 2001:db8::1 2001:db8::2 1234 443\r\n";
        let mut input = header.to_vec();
        input.extend_from_slice(&[0x16, 0x03, 0x01, 0x00, 0x05]);
        for n in 0..header.len() {
            assert_eq!(p(&input[..n]), Ok(Parsed::NeedMore), "prefix {n}");
        }
        for n in header.len()..=input.len() {
            assert_eq!(done(&input[..n]).2, header.len());
        }
        assert_eq!(&input[header.len()..], &[0x16, 0x03, 0x01, 0x00, 0x05]);
    }

    #[test]
    fn no_crlf_within_107_bytes() {
        let mut h = b"PROXY UNKNOWN ".to_vec();
        h.resize(106, b'a');
        assert_eq!(p(&h), Ok(Parsed::NeedMore));
        h.push(b'a');
        assert_eq!(p(&h), Err(ProxyError::V1TooLong));
        // CR as the 107th byte: the LF would be the 108th.
        h[106] = b'\r';
        assert_eq!(p(&h), Err(ProxyError::V1TooLong));
        h.push(b'\n');
        assert_eq!(p(&h), Err(ProxyError::V1TooLong));
    }

    #[test]
    fn malformed() {
        use ProxyError::*;
        let cases: &[(&[u8], ProxyError)] = &[
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 80 +443\r\n",
                V1Port("destination"),
            ),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 080 443\r\n", V1Port("source")),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 443\r\n",
                V1Port("source"),
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 443\r\n",
                V1Port("source"),
            ),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8  443\r\n", V1Port("source")),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 443\r\n", V1Port("source")),
            (
                b"PROXY TCP4 1.2.3.256 5.6.7.8 80 443\r\n",
                V1Address("source"),
            ),
            (
                b"PROXY TCP4 1.2.3.4 05.6.7.8 80 443\r\n",
                V1Address("destination"),
            ),
            (b"PROXY TCP4 ::1 ::1 80 443\r\n", V1Address("source")),
            (b"PROXY TCP6 1.2.3.4 ::1 80 443\r\n", V1Address("source")),
            (
                b"PROXY TCP6 ::1 fe80::1%eth0 80 443\r\n",
                V1Address("destination"),
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 80\r\n",
                V1Syntax("missing field"),
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443 \r\n",
                V1Syntax("extra field"),
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443\n",
                V1Syntax("byte outside printable ASCII"),
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443\rX",
                V1Syntax("CR not followed by LF"),
            ),
            (
                b"PROXY TCP4\t1.2.3.4",
                V1Syntax("byte outside printable ASCII"),
            ),
            (b"PROXY tcp4 1.2.3.4 5.6.7.8 80 443\r\n", V1Protocol),
            (b"PROXY UDP4 1.2.3.4 5.6.7.8 80 443\r\n", V1Protocol),
            (b"PROXY UNKNOWNX\r\n", V1Protocol),
            (b"PROXY \r\n", V1Protocol),
            (b"PROXY  TCP4 1.2.3.4 5.6.7.8 80 443\r\n", V1Protocol),
            (b"PROXYTCP4", BadSignature),
            (b"PROXZ", BadSignature),
            (b"POST / HTTP/1.1\r\n", BadSignature),
            (b"GET / HTTP/1.1\r\n", Missing(b'G')),
        ];
        for (input, want) in cases {
            assert_eq!(
                p(input).as_ref(),
                Err(want),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn encode_forms() {
        let mut out = b"keep".to_vec();
        let info = EncodeInfo {
            addresses: Some((sa("192.0.2.1:56324"), sa("198.51.100.7:443"))),
            alpn: Some(b"h2"),
            authority: Some("example.com"),
            ..Default::default()
        };
        let n = encode(Version::V1, &info, &mut out).unwrap();
        assert_eq!(&out, b"keepPROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n");
        assert_eq!(n, out.len() - 4);

        out.clear();
        encode(Version::V1, &EncodeInfo::default(), &mut out).unwrap();
        assert_eq!(&out, b"PROXY UNKNOWN\r\n");

        out.clear();
        let info = EncodeInfo {
            addresses: Some((sa("192.0.2.1:1"), sa("[2001:db8::7]:443"))),
            ..Default::default()
        };
        encode(Version::V1, &info, &mut out).unwrap();
        assert_eq!(&out, b"PROXY TCP6 ::ffff:192.0.2.1 2001:db8::7 1 443\r\n");
        assert_eq!(
            done(&out),
            (
                Some(sa("[::ffff:192.0.2.1]:1")),
                Some(sa("[2001:db8::7]:443")),
                out.len()
            )
        );
    }
}
