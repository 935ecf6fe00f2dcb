//! Benchmarks of the sans-IO TLS step function ([`ringterm::tls::TlsSession`])
//! driven in memory by a buffered rustls client. No sockets, no runtime.
//!
//! * `handshake/*`: full TLS 1.3 (X25519, and X25519MLKEM768 for reference),
//!   full TLS 1.2 (ECDHE x25519), resumed TLS 1.2 (session ID) and resumed
//!   TLS 1.3 (stateful ticket), all with an ECDSA P-256 certificate.
//!   `server` variants time only what the server pays (`TlsSession::new` and
//!   the `handle_ciphertext` calls); `client+server` variants time the whole
//!   exchange, client work included.
//! * `record/*`: AES-256-GCM record encryption (`TlsSession::encrypt`) and
//!   decryption (`TlsSession::handle_ciphertext`) after a TLS 1.3 handshake.
//!
//! Run with `cargo bench --bench tls`.

use std::hint::black_box;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringterm::record::LentRecords;
use ringterm::tls::{
    build_server_config, generate_self_signed, load_cert_chain, load_private_key, Status,
    TlsPolicy, TlsSession,
};
use rustls::client::Resumption;
use rustls::crypto::{aws_lc_rs, CryptoProvider, SupportedKxGroup};
use rustls::pki_types::ServerName;
use rustls::server::ServerSessionMemoryCache;
use rustls::{
    CipherSuite, ClientConfig, ClientConnection, ProtocolVersion, RootCertStore, ServerConfig,
    SupportedProtocolVersion,
};

/// Everything a benchmark needs: server configurations (as ringterm builds
/// them, and with a session cache for resumption) and the trust root.
struct Fixture {
    /// ringterm's configuration: no session storage, no tickets.
    server: Arc<ServerConfig>,
    /// The same, with rustls's in-memory session cache (TLS 1.2 session IDs
    /// and TLS 1.3 stateful tickets, one ticket per handshake).
    server_resuming: Arc<ServerConfig>,
    roots: RootCertStore,
}

impl Fixture {
    fn new() -> Self {
        let (cert, key) = generate_self_signed(&["localhost"]).unwrap();
        let chain = load_cert_chain("cert.pem", cert.as_bytes()).unwrap();
        let key = load_private_key("key.pem", key.as_bytes()).unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(chain[0].clone()).unwrap();
        let server = build_server_config(chain, key, &TlsPolicy::default()).unwrap();
        let mut resuming = (*server).clone();
        resuming.session_storage = ServerSessionMemoryCache::new(1024);
        resuming.send_tls13_tickets = 1;
        Self {
            server,
            server_resuming: Arc::new(resuming),
            roots,
        }
    }

    /// A client speaking only `version`, offering only `kx` (a single key
    /// share, so the server cannot pick anything else), with or without a
    /// session cache.
    fn client(
        &self,
        version: &'static SupportedProtocolVersion,
        kx: &'static dyn SupportedKxGroup,
        resume: bool,
    ) -> Arc<ClientConfig> {
        let provider = CryptoProvider {
            kx_groups: vec![kx],
            ..aws_lc_rs::default_provider()
        };
        let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth();
        config.resumption = if resume {
            Resumption::in_memory_sessions(64)
        } else {
            Resumption::disabled()
        };
        Arc::new(config)
    }
}

fn server_name() -> ServerName<'static> {
    ServerName::try_from("localhost").unwrap()
}

/// Feeds server bytes to the client, collecting any plaintext it decrypts.
fn deliver(client: &mut ClientConnection, mut bytes: &[u8], plaintext: &mut Vec<u8>) {
    while !bytes.is_empty() {
        let n = client.read_tls(&mut bytes).unwrap();
        assert!(n > 0);
        client.process_new_packets().unwrap();
        let mut buf = [0u8; 16384];
        while let Ok(n) = client.reader().read(&mut buf) {
            if n == 0 {
                break;
            }
            plaintext.extend_from_slice(&buf[..n]);
        }
    }
}

/// One complete handshake in memory. Returns the established pair and the
/// time spent inside the server (`TlsSession::new` plus every
/// `handle_ciphertext` call). All server bytes, post-handshake TLS 1.3
/// tickets included, are delivered to the client.
fn handshake(
    server: &Arc<ServerConfig>,
    client: &Arc<ClientConfig>,
) -> (TlsSession, ClientConnection, Duration) {
    let mut client = ClientConnection::new(client.clone(), server_name()).unwrap();
    let start = Instant::now();
    let mut session = TlsSession::new(server.clone()).unwrap();
    let mut server_time = start.elapsed();
    let mut wire = Vec::with_capacity(4096);
    let mut to_client = Vec::with_capacity(4096);
    let mut to_backend = Vec::new();
    let mut client_rx = Vec::new();
    let mut status = Status::Handshaking;
    for _ in 0..16 {
        wire.clear();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        if wire.is_empty() {
            break;
        }
        to_client.clear();
        let start = Instant::now();
        status = session
            .handle_ciphertext(&wire, &mut to_client, &mut to_backend)
            .unwrap();
        server_time += start.elapsed();
        deliver(&mut client, &to_client, &mut client_rx);
    }
    assert_eq!(status, Status::Established);
    assert!(!client.is_handshaking());
    (session, client, server_time)
}

/// Checks what a handshake of this kind negotiates, once, outside timing.
fn check_handshake(
    server: &Arc<ServerConfig>,
    client: &Arc<ClientConfig>,
    version: ProtocolVersion,
    resumed: bool,
) {
    let (session, client, _) = handshake(server, client);
    let info = session.handshake_info().unwrap();
    assert_eq!(info.version, version);
    assert_eq!(info.resumed, resumed, "resumption as expected");
    let suite = client.negotiated_cipher_suite().unwrap().suite();
    assert!(
        matches!(
            suite,
            CipherSuite::TLS13_AES_256_GCM_SHA384
                | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        ),
        "{suite:?}"
    );
}

fn bench_handshakes(c: &mut Criterion) {
    let fx = Fixture::new();
    let tls13 = &rustls::version::TLS13;
    let tls12 = &rustls::version::TLS12;
    let x25519 = aws_lc_rs::kx_group::X25519;
    let hybrid = aws_lc_rs::kx_group::X25519MLKEM768;

    struct Case {
        name: &'static str,
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
        version: ProtocolVersion,
        resumed: bool,
    }
    let cases = [
        Case {
            name: "tls13_full_x25519",
            server: fx.server.clone(),
            client: fx.client(tls13, x25519, false),
            version: ProtocolVersion::TLSv1_3,
            resumed: false,
        },
        Case {
            name: "tls13_full_x25519mlkem768",
            server: fx.server.clone(),
            client: fx.client(tls13, hybrid, false),
            version: ProtocolVersion::TLSv1_3,
            resumed: false,
        },
        Case {
            name: "tls12_full_x25519",
            server: fx.server.clone(),
            client: fx.client(tls12, x25519, false),
            version: ProtocolVersion::TLSv1_2,
            resumed: false,
        },
        Case {
            name: "tls12_resumed_session_id",
            server: fx.server_resuming.clone(),
            client: fx.client(tls12, x25519, true),
            version: ProtocolVersion::TLSv1_2,
            resumed: true,
        },
        Case {
            name: "tls13_resumed_ticket_x25519",
            server: fx.server_resuming.clone(),
            client: fx.client(tls13, x25519, true),
            version: ProtocolVersion::TLSv1_3,
            resumed: true,
        },
    ];

    let mut group = c.benchmark_group("handshake");
    for case in &cases {
        if case.resumed {
            // Prime the client's and the server's caches. Every later
            // handshake resumes: TLS 1.2 reuses the session ID; TLS 1.3
            // spends one single-use ticket and receives a fresh one.
            let (session, _, _) = handshake(&case.server, &case.client);
            assert!(!session.handshake_info().unwrap().resumed);
        }
        check_handshake(&case.server, &case.client, case.version, case.resumed);

        group.bench_function(BenchmarkId::new("server", case.name), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (session, client, server_time) = handshake(&case.server, &case.client);
                    debug_assert_eq!(session.handshake_info().unwrap().resumed, case.resumed);
                    total += server_time;
                    drop(black_box((session, client)));
                }
                total
            })
        });
        group.bench_function(BenchmarkId::new("client+server", case.name), |b| {
            b.iter(|| black_box(handshake(&case.server, &case.client)))
        });
        // Both benches resumed all along; check the caches still work.
        check_handshake(&case.server, &case.client, case.version, case.resumed);
    }
    group.finish();
}

const SIZES: [usize; 3] = [1024, 16 * 1024, 64 * 1024];

/// Records one session encrypts before the benchmark starts a fresh one,
/// far below any AEAD usage limit.
const RECORDS_PER_SESSION: u64 = 1 << 20;

/// An established TLS 1.3 pair negotiating AES-256-GCM over X25519.
fn established(fx: &Fixture, client: &Arc<ClientConfig>) -> (TlsSession, ClientConnection) {
    let (session, client, _) = handshake(&fx.server, client);
    assert_eq!(
        client.negotiated_cipher_suite().unwrap().suite(),
        CipherSuite::TLS13_AES_256_GCM_SHA384
    );
    (session, client)
}

/// Times `iters` calls of `op`, on fresh established sessions of at most
/// [`RECORDS_PER_SESSION`] records each (the handshakes are not timed).
fn time_in_sessions(
    fx: &Fixture,
    client_config: &Arc<ClientConfig>,
    iters: u64,
    mut op: impl FnMut(&mut TlsSession),
) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(RECORDS_PER_SESSION);
        left -= n;
        let (mut session, _client) = established(fx, client_config);
        let start = Instant::now();
        for _ in 0..n {
            op(&mut session);
        }
        total += start.elapsed();
    }
    total
}

fn bench_records(c: &mut Criterion) {
    let fx = Fixture::new();
    let client_config = fx.client(&rustls::version::TLS13, aws_lc_rs::kx_group::X25519, false);

    let mut group = c.benchmark_group("record_tls13_aes256gcm");
    for &size in &SIZES {
        let plaintext: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        group.throughput(Throughput::Bytes(size as u64));

        // Sanity: the client decrypts what the server encrypts.
        {
            let (mut session, mut client) = established(&fx, &client_config);
            let mut out = Vec::new();
            session.encrypt(&plaintext, &mut out).unwrap();
            let mut rx = Vec::new();
            deliver(&mut client, &out, &mut rx);
            assert_eq!(rx, plaintext);
        }

        group.bench_function(BenchmarkId::new("encrypt", size), |b| {
            let mut out = Vec::with_capacity(size + 256);
            b.iter_custom(|iters| {
                time_in_sessions(&fx, &client_config, iters, |session| {
                    out.clear();
                    session.encrypt(black_box(&plaintext), &mut out).unwrap();
                    black_box(&out);
                })
            })
        });

        // Sealed where the bytes are (a runtime's read buffer lent to the
        // write): no copy of the plaintext. Re-sealing the same buffer
        // costs what sealing fresh plaintext does.
        {
            let (mut session, mut client) = established(&fx, &client_config);
            let mut buf = plaintext.clone();
            buf.push(0);
            let mut lent = LentRecords::default();
            assert!(session.seal_lent(&mut buf, size, &mut lent).unwrap());
            let mut wire = Vec::new();
            lent.gather(&buf, &mut wire);
            let mut rx = Vec::new();
            deliver(&mut client, &wire, &mut rx);
            assert_eq!(rx, plaintext);
        }
        group.bench_function(BenchmarkId::new("seal_lent", size), |b| {
            let mut buf = plaintext.clone();
            buf.push(0);
            let mut lent = LentRecords::default();
            b.iter_custom(|iters| {
                time_in_sessions(&fx, &client_config, iters, |session| {
                    session
                        .seal_lent(black_box(&mut buf), size, &mut lent)
                        .unwrap();
                    black_box(&lent);
                })
            })
        });

        // The client encrypts a batch of records for a fresh session (each
        // record decrypts once, in sequence), then the server decrypts them
        // one `handle_ciphertext` call per record, like one record per read.
        // Batches hold about 16 MiB of records.
        let batch = ((16 << 20) / size) as u64;
        group.bench_function(BenchmarkId::new("decrypt", size), |b| {
            let mut to_client = Vec::new();
            let mut to_backend = Vec::with_capacity(size);
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(batch);
                    left -= n;
                    let (mut session, mut client) = established(&fx, &client_config);
                    let mut records = Vec::with_capacity(n as usize);
                    for _ in 0..n {
                        client.writer().write_all(&plaintext).unwrap();
                        let mut record = Vec::with_capacity(size + 64);
                        while client.wants_write() {
                            client.write_tls(&mut record).unwrap();
                        }
                        records.push(record);
                    }
                    let start = Instant::now();
                    for record in &records {
                        to_backend.clear();
                        let status = session
                            .handle_ciphertext(record, &mut to_client, &mut to_backend)
                            .unwrap();
                        debug_assert_eq!(status, Status::Established);
                        debug_assert_eq!(to_backend.len(), size);
                    }
                    total += start.elapsed();
                    assert_eq!(to_backend, plaintext);
                    assert!(to_client.is_empty());
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    targets = bench_handshakes, bench_records
}
criterion_main!(benches);
