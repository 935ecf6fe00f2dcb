//! The cost of choosing a certificate by SNI (what every handshake pays on
//! top of a single-certificate setup): exact, wildcard and default lookups
//! among 1 and 200 certificates, with ECDSA/RSA choice by client schemes.

use std::sync::Arc;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use ringterm::tls::sni::{SniResolver, UnknownSni};
use rustls::crypto::aws_lc_rs;
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;

fn key_for(name: &str) -> Arc<CertifiedKey> {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .self_signed(&kp)
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(kp.serialize_der()).unwrap();
    let provider = aws_lc_rs::default_provider();
    Arc::new(CertifiedKey::from_der(vec![cert.der().clone()], key, &provider).unwrap())
}

const SCHEMES: &[SignatureScheme] = &[
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PKCS1_SHA256,
];

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("sni_select");
    for n in [1usize, 200] {
        let mut keys: Vec<_> = (0..n).map(|i| key_for(&format!("host{i}.test"))).collect();
        keys.push(key_for("*.wild.test"));
        let r = SniResolver::new(keys, &[], UnknownSni::Default).unwrap();
        let last = format!("host{}.test", n - 1);
        g.bench_function(format!("exact_of_{n}"), |b| {
            b.iter(|| black_box(r.select(Some(black_box(&last)), SCHEMES)))
        });
        g.bench_function(format!("wildcard_of_{n}"), |b| {
            b.iter(|| black_box(r.select(Some(black_box("a.wild.test")), SCHEMES)))
        });
        g.bench_function(format!("default_of_{n}"), |b| {
            b.iter(|| black_box(r.select(Some(black_box("nope.test")), SCHEMES)))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
