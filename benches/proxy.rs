//! PROXY protocol: encoding the v2 header ringterm sends a backend (ALPN,
//! authority and SSL TLVs) into a reused buffer, and parsing the v1 and v2
//! headers a balancer sends, once per connection.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use ringterm::proxy::{encode, parse, EncodeInfo, ParseLimits, Parsed, SslEncode, Version};

fn info() -> EncodeInfo<'static> {
    EncodeInfo {
        addresses: Some((
            "[2001:db8::1]:56324".parse().unwrap(),
            "[2001:db8::2]:443".parse().unwrap(),
        )),
        alpn: Some(b"h2"),
        authority: Some("www.example.com"),
        ssl: Some(SslEncode {
            version: "TLSv1.3",
            cipher: "TLS13_AES_128_GCM_SHA256",
            cert_in_connection: true,
            cert_in_session: true,
            cert_verified: true,
            client_cn: Some("client.example.com"),
            sig_alg: None,
            key_alg: None,
        }),
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("proxy");
    let info = info();
    let mut out = Vec::with_capacity(256);
    g.bench_function("encode_v2_alpn_authority_ssl", |b| {
        b.iter(|| {
            out.clear();
            encode(Version::V2, black_box(&info), &mut out).unwrap();
            black_box(out.len())
        })
    });
    g.bench_function("encode_v1_tcp6", |b| {
        b.iter(|| {
            out.clear();
            encode(Version::V1, black_box(&info), &mut out).unwrap();
            black_box(out.len())
        })
    });

    let limits = ParseLimits::default();
    let mut v2 = Vec::new();
    encode(Version::V2, &info, &mut v2).unwrap();
    v2.extend_from_slice(&[0x16, 0x03, 0x01, 0x02, 0x00]);
    let v1 = b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n\x16\x03\x01\x02\x00";
    for (name, input) in [("parse_v1_tcp4", &v1[..]), ("parse_v2_tlvs", &v2[..])] {
        g.bench_function(name, |b| {
            b.iter(|| match parse(black_box(input), &limits) {
                Ok(Parsed::Done { consumed, header }) => black_box((consumed, header)),
                other => panic!("{other:?}"),
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
