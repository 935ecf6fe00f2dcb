//! The crypto floor under a handshake: the public-key operations a TLS server
//! performs, through the same provider ringterm configures
//! (`rustls::crypto::aws_lc_rs::default_provider()`), without any TLS
//! framing around them. Compare with `cargo bench --bench tls`.
//!
//! * key exchange, server side: generate a key share and derive the shared
//!   secret from the client's share (X25519, secp256r1, and the
//!   X25519MLKEM768 hybrid, whose server side is encapsulation; its client
//!   side, keygen plus decapsulation, is there for reference);
//! * ECDSA P-256 (SHA-256) signature, as in CertificateVerify /
//!   ServerKeyExchange.
//!
//! Run with `cargo bench --bench crypto_floor`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use ringterm::tls::{generate_self_signed, load_private_key};
use rustls::crypto::{aws_lc_rs, CryptoProvider, SupportedKxGroup};
use rustls::{NamedGroup, SignatureScheme};

/// The provider's own key-exchange group named `name`.
fn group(provider: &CryptoProvider, name: NamedGroup) -> &'static dyn SupportedKxGroup {
    *provider
        .kx_groups
        .iter()
        .find(|g| g.name() == name)
        .unwrap_or_else(|| panic!("{name:?} not in the provider's kx_groups"))
}

fn bench_kx(c: &mut Criterion) {
    let provider = aws_lc_rs::default_provider();
    let mut g = c.benchmark_group("crypto_floor");

    for (label, name) in [
        ("x25519_keygen_dh", NamedGroup::X25519),
        ("secp256r1_keygen_ecdh", NamedGroup::secp256r1),
    ] {
        let kx = group(&provider, name);
        let peer = kx.start().unwrap();
        let peer_pub = peer.pub_key().to_vec();
        // Sanity: both sides derive the same secret.
        let ours = kx.start().unwrap();
        let our_pub = ours.pub_key().to_vec();
        assert_eq!(
            ours.complete(&peer_pub).unwrap().secret_bytes(),
            peer.complete(&our_pub).unwrap().secret_bytes()
        );
        g.bench_function(label, |b| {
            b.iter(|| {
                let active = kx.start().unwrap();
                black_box(active.pub_key());
                black_box(active.complete(black_box(&peer_pub)).unwrap())
            })
        });
    }

    let hybrid = group(&provider, NamedGroup::X25519MLKEM768);
    let client = hybrid.start().unwrap();
    let client_share = client.pub_key().to_vec();
    let server = hybrid.start_and_complete(&client_share).unwrap();
    assert_eq!(
        client.complete(&server.pub_key).unwrap().secret_bytes(),
        server.secret.secret_bytes()
    );
    g.bench_function("x25519mlkem768_server_start_and_complete", |b| {
        b.iter(|| black_box(hybrid.start_and_complete(black_box(&client_share)).unwrap()))
    });
    g.bench_function("x25519mlkem768_client_keygen_and_complete", |b| {
        b.iter(|| {
            let active = hybrid.start().unwrap();
            black_box(active.pub_key());
            black_box(active.complete(black_box(&server.pub_key)).unwrap())
        })
    });
    g.finish();
}

fn bench_sign(c: &mut Criterion) {
    let provider = aws_lc_rs::default_provider();
    let (_, key_pem) = generate_self_signed(&["localhost"]).unwrap();
    let key = load_private_key("key.pem", key_pem.as_bytes()).unwrap();
    let signing_key = provider.key_provider.load_private_key(key).unwrap();
    let signer = signing_key
        .choose_scheme(&[SignatureScheme::ECDSA_NISTP256_SHA256])
        .expect("an ECDSA P-256 key");
    assert_eq!(signer.scheme(), SignatureScheme::ECDSA_NISTP256_SHA256);
    // About the size of what a server signs in TLS 1.2 (two randoms and the
    // ECDHE parameters are longer; the hash makes the difference negligible).
    let message: Vec<u8> = (0..64u8).collect();
    assert!(!signer.sign(&message).unwrap().is_empty());

    let mut g = c.benchmark_group("crypto_floor");
    g.bench_function("ecdsa_p256_sha256_sign_64B", |b| {
        b.iter(|| black_box(signer.sign(black_box(&message)).unwrap()))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    targets = bench_kx, bench_sign
}
criterion_main!(benches);
