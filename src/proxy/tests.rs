//! Round trips (examples and proptest) and the fuzz entry point's checks.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::prelude::*;

use super::{
    detect, encode, fuzz::fuzz_parse, parse, EncodeInfo, ParseLimits, Parsed, ProxyError,
    ProxyHeader, SslEncode, Version, PP2_CLIENT_CERT_CONN, PP2_CLIENT_CERT_SESS, PP2_CLIENT_SSL,
};

fn round_trip(version: Version, info: &EncodeInfo<'_>) -> ProxyHeader {
    let mut out = vec![0xaa; 3];
    let n = encode(version, info, &mut out).unwrap();
    assert_eq!(n, out.len() - 3);
    out.extend_from_slice(&[0x16, 0x03, 0x01]);
    let limits = ParseLimits { max_v2_len: 65_535 };
    match parse(&out[3..], &limits) {
        Ok(Parsed::Done { header, consumed }) => {
            assert_eq!(consumed, n);
            header
        }
        other => panic!("{other:?}"),
    }
}

/// What parsing an encoding of `info` must give back.
fn check_round_trip(version: Version, info: &EncodeInfo<'_>) {
    let h = round_trip(version, info);
    assert_eq!(h.version, version);
    let expect = info.addresses.map(super::v2::same_family);
    match expect {
        Some((s, d)) => {
            assert!(!h.local);
            assert_eq!((h.source, h.destination), (Some(s), Some(d)));
        }
        None => {
            assert_eq!(h.local, version == Version::V2);
            assert_eq!((h.source, h.destination), (None, None));
        }
    }
    if version == Version::V1 {
        assert_eq!(h.tlvs, Default::default());
        return;
    }
    assert_eq!(h.tlvs.alpn.as_deref(), info.alpn);
    assert_eq!(h.tlvs.authority.as_deref(), info.authority);
    assert!(h.tlvs.other.is_empty());
    match (&info.ssl, &h.tlvs.ssl) {
        (None, None) => {}
        (Some(want), Some(got)) => {
            assert_eq!(got.version.as_deref(), Some(want.version));
            assert_eq!(got.cipher.as_deref(), Some(want.cipher));
            assert_eq!(got.client_cn.as_deref(), want.client_cn);
            assert_eq!(got.sig_alg.as_deref(), want.sig_alg);
            assert_eq!(got.key_alg.as_deref(), want.key_alg);
            assert_ne!(got.client & PP2_CLIENT_SSL, 0);
            assert_eq!(
                got.client & PP2_CLIENT_CERT_CONN != 0,
                want.cert_in_connection
            );
            assert_eq!(got.client & PP2_CLIENT_CERT_SESS != 0, want.cert_in_session);
            let presented = want.cert_in_connection || want.cert_in_session;
            assert_eq!(got.client_cert_presented(), presented);
            assert_eq!(got.client_cert_verified(), presented && want.cert_verified);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn round_trip_all_tlvs_v1_and_v2() {
    let v4 = (
        "192.0.2.1:56324".parse().unwrap(),
        "198.51.100.7:443".parse().unwrap(),
    );
    let v6 = (
        "[2001:db8::1]:1".parse().unwrap(),
        "[2001:db8::2]:8443".parse().unwrap(),
    );
    let ssl = SslEncode {
        version: "TLSv1.3",
        cipher: "TLS13_AES_128_GCM_SHA256",
        cert_in_connection: true,
        cert_in_session: true,
        cert_verified: true,
        client_cn: Some("client.example"),
        sig_alg: Some("ECDSA-SHA256"),
        key_alg: Some("EC256"),
    };
    for addresses in [Some(v4), Some(v6), None] {
        let info = EncodeInfo {
            addresses,
            alpn: Some(b"h2"),
            authority: Some("example.com"),
            ssl: Some(ssl),
        };
        check_round_trip(Version::V1, &info);
        check_round_trip(Version::V2, &info);
        check_round_trip(
            Version::V2,
            &EncodeInfo {
                addresses,
                ..Default::default()
            },
        );
    }
}

#[test]
fn detect_versions() {
    assert_eq!(detect(b""), Ok(None));
    assert_eq!(detect(b"PROX"), Ok(None));
    assert_eq!(detect(b"PROXY "), Ok(Some(Version::V1)));
    assert_eq!(detect(b"\r\n\r\n\0\r\nQUIT"), Ok(None));
    assert_eq!(detect(b"\r\n\r\n\0\r\nQUIT\n\x21"), Ok(Some(Version::V2)));
    assert_eq!(detect(&[0x16, 0x03, 0x01]), Err(ProxyError::Missing(0x16)));
    assert_eq!(detect(b"PROXI"), Err(ProxyError::BadSignature));
}

#[test]
fn tls_client_hello_fails_at_first_byte() {
    let limits = ParseLimits::default();
    for n in 1..=5 {
        let hello = [0x16, 0x03, 0x01, 0x02, 0x00];
        assert_eq!(parse(&hello[..n], &limits), Err(ProxyError::Missing(0x16)));
    }
    assert_eq!(parse(&[], &limits), Ok(Parsed::NeedMore));
}

#[test]
fn fuzz_parse_on_known_inputs() {
    let mut v2 = Vec::new();
    let info = EncodeInfo {
        addresses: Some((
            "[2001:db8::1]:1".parse().unwrap(),
            "10.0.0.1:2".parse().unwrap(),
        )),
        alpn: Some(b"h2"),
        authority: Some("a.example"),
        ssl: Some(SslEncode {
            version: "TLSv1.2",
            cipher: "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            ..Default::default()
        }),
    };
    encode(Version::V2, &info, &mut v2).unwrap();
    let mut v1 = Vec::new();
    encode(Version::V1, &info, &mut v1).unwrap();
    for base in [v2, v1, b"PROXY UNKNOWN\r\n".to_vec(), vec![0x16, 3, 1]] {
        for chunk in [0u8, 1, 7, 255] {
            let mut data = vec![chunk];
            data.extend_from_slice(&base);
            data.extend_from_slice(b"tail");
            fuzz_parse(&data);
            // Every single-byte corruption, too.
            for i in 1..data.len() {
                for x in [0x00, 0xff, b'\r', b' '] {
                    let mut d = data.clone();
                    d[i] = x;
                    fuzz_parse(&d);
                }
            }
        }
    }
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|a| IpAddr::V4(Ipv4Addr::from(a))),
        any::<u128>().prop_map(|a| IpAddr::V6(Ipv6Addr::from(a))),
    ]
}

fn addr() -> impl Strategy<Value = SocketAddr> {
    (ip(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

/// Printable text, like cipher and host names, of up to `max` characters.
fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(0x20u8..0x7f, 0..=max).prop_map(|b| String::from_utf8(b).unwrap())
}

/// Any UTF-8 (authority and CN are UTF-8 on the wire).
fn utf8(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<char>(), 0..=max).prop_map(String::from_iter)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn prop_round_trip(
        addresses in proptest::option::of((addr(), addr())),
        alpn in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
        authority in proptest::option::of(utf8(255)),
        ssl in proptest::option::of((
            text(16), text(64), any::<[bool; 3]>(), proptest::option::of(utf8(64)),
            proptest::option::of(text(32)), proptest::option::of(text(32)),
        )),
    ) {
        let ssl = ssl.as_ref().map(|(version, cipher, [conn, sess, verified], cn, sig, key)| SslEncode {
            version,
            cipher,
            cert_in_connection: *conn,
            cert_in_session: *sess,
            cert_verified: *verified,
            client_cn: cn.as_deref(),
            sig_alg: sig.as_deref(),
            key_alg: key.as_deref(),
        });
        let info = EncodeInfo {
            addresses,
            alpn: alpn.as_deref(),
            authority: authority.as_deref(),
            ssl,
        };
        check_round_trip(Version::V1, &info);
        check_round_trip(Version::V2, &info);
    }

    #[test]
    fn prop_fuzz_parse_random(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        fuzz_parse(&data);
    }

    #[test]
    fn prop_fuzz_parse_after_signature(
        chunk in any::<u8>(),
        v2 in any::<bool>(),
        rest in proptest::collection::vec(prop_oneof![any::<u8>(), Just(b'\r'), Just(b' '), Just(0u8)], 0..300),
    ) {
        let mut data = vec![chunk];
        data.extend_from_slice(if v2 { &super::V2_SIGNATURE[..] } else { &super::V1_SIGNATURE[..] });
        data.extend_from_slice(&rest);
        fuzz_parse(&data);
    }

    #[test]
    fn prop_v2_tlv_area_never_panics(
        fam in prop_oneof![Just(0x00u8), Just(0x11), Just(0x21)],
        cmd in 0x20u8..0x22,
        tlvs in proptest::collection::vec(any::<u8>(), 0..120),
    ) {
        let addr_len = match fam { 0x11 => 12, 0x21 => 36, _ => 0 };
        let len = (addr_len + tlvs.len()) as u16;
        let mut data = vec![3u8];
        data.extend_from_slice(&super::V2_SIGNATURE);
        data.extend_from_slice(&[cmd, fam]);
        data.extend_from_slice(&len.to_be_bytes());
        data.extend(std::iter::repeat_n(7u8, addr_len));
        data.extend_from_slice(&tlvs);
        fuzz_parse(&data);
    }
}
