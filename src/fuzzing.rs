//! Fuzz entry points, shared by the cargo-fuzz targets in `fuzz/` and by the
//! stable regression test `tests/fuzz_corpus.rs`, which replays the corpus in
//! the normal `cargo test` run.
//!
//! `tls_step` drives the real connection machine ([`crate::conn::Conn`])
//! with the client bytes, so the fuzzer exercises the relay logic the
//! runtime runs, not a copy of it.
//!
//! Every entry point takes arbitrary bytes and must never panic: a panic (an
//! assertion below included) is a bug in ringterm. Nothing here touches a
//! socket, a file or the clock.
//!
//! # `tls_step` input format
//!
//! ```text
//! byte 0    how to split the client bytes into reads (see `chunk_len`)
//! byte 1    flags: bit 0 client writes complete short; bit 1 the backend
//!           echoes what it gets; bits 2-3 the most a backend read returns
//!           (all, 1, 512, 16 KiB)
//! rest      client bytes of up to MAX_CONNS connections, separated by
//!           CONN_SEPARATOR; the connections share one session cache, so a
//!           later one can resume an earlier one
//! ```
//!
//! The server configuration is ringterm's (`build_server_config_with_provider`,
//! TLS 1.2 and 1.3, the session cache on) over a *deterministic* crypto
//! provider: the "random" bytes rustls asks for come from a generator reset
//! for each input, key exchange uses fixed X25519/P-256 keys, the certificate
//! key is Ed25519 (deterministic signatures) and rustls's clock is fixed. So
//! the bytes a real rustls client sent in a recorded session replay exactly:
//! the corpus holds complete handshakes, application data and close_notify,
//! and the fuzzer mutates from states deep inside a live connection, not only
//! from the ClientHello. Never use this provider outside fuzzing.

#![forbid(unsafe_code)]

use std::cell::Cell;
use std::sync::{Arc, Mutex, PoisonError};

use aws_lc_rs::agreement;
use rustls::crypto::{ActiveKeyExchange, SecureRandom, SharedSecret, SupportedKxGroup};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::StoresServerSessions;
use rustls::time_provider::TimeProvider;
use rustls::{NamedGroup, PeerMisbehaved, ProtocolVersion, ServerConfig};

use crate::config::{Settings, DEFAULT_SESSION_TIMEOUT_S};
use crate::session::cache::{CacheConfig, SessionCache};
use crate::session::tickets::{TicketKey, Ticketer};
use crate::tls::{self, Status, TlsError};

// ---------------------------------------------------------------------------
// tls_step
// ---------------------------------------------------------------------------

/// Separates the client bytes of consecutive connections in a `tls_step`
/// input.
pub const CONN_SEPARATOR: &[u8] = b"\xffringterm-next-conn\xff";

/// Most connections one `tls_step` input drives.
pub const MAX_CONNS: usize = 4;

/// Flag bit: client writes complete short (a third of what is left), so
/// the machine resumes them.
pub const FLAG_SHORT_WRITES: u8 = 1;
/// Flag bit: the backend echoes what it gets.
pub const FLAG_ECHO: u8 = 2;

/// What one connection of a `tls_step` input did.
#[derive(Debug, Default, PartialEq)]
pub struct ConnOutcome {
    /// Whether the handshake completed.
    pub established: bool,
    /// Negotiated version, once established.
    pub version: Option<ProtocolVersion>,
    /// Whether the session was resumed.
    pub resumed: bool,
    /// Plaintext the session decrypted (what would go to the backend).
    pub backend: Vec<u8>,
    /// Bytes the session produced for the client.
    pub to_client: usize,
    /// The last status, when the connection did not fail.
    pub status: Option<Status>,
    /// The error that ended the connection, if any.
    pub error: Option<TlsError>,
}

/// Runs one `tls_step` input and says what each connection did (the
/// regression test checks that recorded sessions still complete).
pub fn tls_replay(data: &[u8]) -> Vec<ConnOutcome> {
    let [split, flags, rest @ ..] = data else {
        return Vec::new();
    };
    let config = tls_begin();
    split_conns(rest)
        .map(|conn| drive_conn(&config, conn, *split, *flags))
        .collect()
}

/// The `tls_step` fuzz target: [`tls_replay`], ignoring the outcome.
pub fn tls_step(data: &[u8]) {
    tls_replay(data);
}

/// Builds a `tls_step` input from its parts.
pub fn tls_input(split: u8, flags: u8, conns: &[&[u8]]) -> Vec<u8> {
    let mut out = vec![split, flags];
    for (i, conn) in conns.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(CONN_SEPARATOR);
        }
        out.extend_from_slice(conn);
    }
    out
}

/// Resets the deterministic state (random generator, session cache) and
/// returns this thread's fuzzing server configuration. A session generator
/// calls it before driving a real client against the server, so that what
/// it records replays.
pub fn tls_begin() -> Arc<ServerConfig> {
    FUZZ_RNG.with(|s| s.set(RNG_SEED));
    FUZZ_TLS.with(|f| {
        f.store.reset();
        Arc::clone(&f.config)
    })
}

/// The fuzzing server's certificate (Ed25519, for `localhost`), for a
/// recording client's root store.
pub fn tls_server_cert() -> CertificateDer<'static> {
    FUZZ_TLS.with(|f| f.cert.clone())
}

fn split_conns(mut rest: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut n = 0;
    std::iter::from_fn(move || {
        if n == MAX_CONNS || (n > 0 && rest.is_empty()) {
            return None;
        }
        n += 1;
        let at = rest
            .windows(CONN_SEPARATOR.len())
            .position(|w| w == CONN_SEPARATOR);
        let conn;
        (conn, rest) = match at {
            Some(i) => (&rest[..i], &rest[i + CONN_SEPARATOR.len()..]),
            None => (rest, &[][..]),
        };
        Some(conn)
    })
}

/// Length of the next client read: byte 0 of the input picks it, and it
/// varies from read to read so that record boundaries land everywhere.
/// 0: everything at once; 1..=127: that many bytes; 128..=255: a cycle of
/// lengths derived from the byte.
fn chunk_len(split: u8, read_no: usize, left: usize) -> usize {
    let n = match split {
        0 => left,
        1..=127 => split as usize,
        _ => {
            let x = (split as usize)
                .wrapping_mul(read_no + 1)
                .wrapping_add(read_no * 7);
            1 + x % (4 * (split as usize - 127))
        }
    };
    n.clamp(1, left.max(1))
}

/// Drives one connection through the real connection machine
/// ([`crate::conn::Conn`]), playing the runtime: client reads return the
/// input's bytes in data-chosen lengths, writes complete (short ones with
/// [`FLAG_SHORT_WRITES`]), the backend connects at once, echoes what it gets
/// when asked to, and closes once the machine half-closed toward it.
fn drive_conn(config: &Arc<ServerConfig>, mut rest: &[u8], split: u8, flags: u8) -> ConnOutcome {
    use crate::conn::{CancelResult, Conn, ConnConfig, End, IoResult, Op, Side};
    use crate::route::{Pools, RouteTable};
    use std::collections::VecDeque;
    use std::time::{Duration, Instant};

    let epoch = Instant::now();
    let cfg = ConnConfig {
        accept_proxy: false,
        proxy_out: None,
        handshake_timeout: Duration::from_secs(60),
        connect_timeout: Duration::from_secs(60),
        idle_timeout: None,
        buffer_size: 64 * 1024,
        close_flush: Duration::from_secs(1),
        epoch,
        runtime_buffers: false,
        session_lookup: false,
        frontend: 0,
        acme: None,
    };
    let backend_addr = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
    let mut pools = Pools::new(&RouteTable::single(vec![backend_addr.into()], 0));
    let peer = std::net::SocketAddr::from(([192, 0, 2, 1], 2));
    let mut conn = Conn::new(cfg, Arc::clone(config), peer, None, epoch).expect("a valid config");
    let backend_read_max = match (flags >> 2) & 3 {
        0 => usize::MAX,
        1 => 1,
        2 => 512,
        _ => 16 * 1024,
    };
    let mut out = ConnOutcome::default();
    let (mut c_read, mut c_write, mut b_read, mut b_write) = (None, None, None, None);
    let mut connecting = false;
    let mut cancels: VecDeque<Side> = VecDeque::new();
    let mut echo: VecDeque<u8> = VecDeque::new();
    let mut backend_shut = false;
    let mut fed = 0usize;
    let mut read_no = 0;
    for _ in 0..1_000_000 {
        while let Some(op) = conn.poll_op(epoch, &mut pools) {
            match op {
                Op::Recv {
                    side: Side::Client,
                    buf,
                } => c_read = Some(buf),
                Op::Recv {
                    side: Side::Backend,
                    buf,
                } => b_read = Some(buf),
                Op::Send {
                    side: Side::Client,
                    buf,
                    off,
                } => c_write = Some((buf, off)),
                Op::Send {
                    side: Side::Backend,
                    buf,
                    off,
                } => b_write = Some((buf, off)),
                Op::ShutdownWrite {
                    side: Side::Backend,
                } => backend_shut = true,
                Op::ShutdownWrite { side: Side::Client } | Op::ShutdownBoth { .. } => {}
                Op::Connect { .. } => {
                    assert!(conn.is_established(), "connect before the handshake");
                    connecting = true;
                }
                Op::Cancel { side } => cancels.push_back(side),
                Op::LookupSession { .. } => conn.handle_session(epoch),
                Op::SendLent { .. } => unreachable!("this runtime lends no buffers"),
            }
        }
        if let Some(outcome) = conn.poll_outcome() {
            if let Some(info) = &outcome.handshake {
                out.established = true;
                out.version = Some(info.version);
                out.resumed = info.resumed;
            }
            match outcome.end {
                End::Closed => out.status = Some(Status::Closed),
                End::HandshakeTls(e) | End::Tls(e) => out.error = Some(e),
                _ if out.established => out.status = Some(Status::Established),
                _ => out.status = Some(Status::Handshaking),
            }
            // Decrypted data never exceeds the ciphertext it came from.
            assert!(out.backend.len() <= fed);
            return out;
        }
        // Complete one op, writes and cancels first.
        if let Some(side) = cancels.pop_front() {
            let mut n = 0;
            let (read, write) = match side {
                Side::Client => (c_read.take(), c_write.take()),
                Side::Backend => (b_read.take(), b_write.take()),
            };
            if let Some(buf) = read {
                n += 1;
                conn.handle_recv(side, IoResult::Cancelled, buf, epoch);
            }
            if let Some((buf, off)) = write {
                n += 1;
                conn.handle_send(side, IoResult::Cancelled, buf, off, epoch);
            }
            if side == Side::Backend && std::mem::take(&mut connecting) {
                n += 1;
                conn.handle_connect(IoResult::Cancelled, epoch, &mut pools);
            }
            conn.handle_cancel(side, CancelResult::Cancelled(n));
        } else if let Some((buf, off)) = c_write.take() {
            let left = buf.len() - off;
            let n = if flags & FLAG_SHORT_WRITES != 0 {
                left.div_ceil(3)
            } else {
                left
            };
            out.to_client += n;
            conn.handle_send(Side::Client, IoResult::Done(n), buf, off, epoch);
        } else if let Some((buf, off)) = b_write.take() {
            out.backend.extend_from_slice(&buf[off..]);
            if flags & FLAG_ECHO != 0 {
                echo.extend(&buf[off..]);
            }
            conn.handle_send(
                Side::Backend,
                IoResult::Done(buf.len() - off),
                buf,
                off,
                epoch,
            );
        } else if std::mem::take(&mut connecting) {
            conn.handle_connect(IoResult::Done(0), epoch, &mut pools);
        } else if let Some(mut buf) = c_read.take() {
            let spare = buf.capacity() - buf.len();
            assert!(spare > 0, "a read with no room");
            let n = chunk_len(split, read_no, rest.len()).min(spare);
            read_no += 1;
            let n = if rest.is_empty() { 0 } else { n };
            buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            fed += n;
            conn.handle_recv(Side::Client, IoResult::Done(n), buf, epoch);
            if !conn.is_established() {
                assert!(out.backend.is_empty(), "plaintext before the handshake");
            }
        } else if let Some(mut buf) = b_read.take() {
            if !echo.is_empty() {
                let spare = buf.capacity() - buf.len();
                let n = echo.len().min(spare).min(backend_read_max);
                buf.extend(echo.drain(..n));
                conn.handle_recv(Side::Backend, IoResult::Done(n), buf, epoch);
            } else if backend_shut {
                conn.handle_recv(Side::Backend, IoResult::Done(0), buf, epoch);
            } else {
                // The backend waits for the client: nothing else can move.
                panic!("stalled: {conn:?}");
            }
        } else {
            panic!("nothing in flight and no outcome: {conn:?}");
        }
    }
    panic!("the connection did not end: {conn:?}");
}

/// Per-thread fuzzing server: its configuration and session cache. Per
/// thread, so that tests replaying inputs in parallel do not share state.
struct FuzzTls {
    config: Arc<ServerConfig>,
    cert: CertificateDer<'static>,
    store: Arc<FuzzStore>,
}

thread_local! {
    static FUZZ_TLS: FuzzTls = FuzzTls::new();
    static FUZZ_RNG: Cell<u64> = const { Cell::new(RNG_SEED) };
}

const RNG_SEED: u64 = 0x005e_ed0f_f022_1e55;

/// Fixed Ed25519 seed of the server's key.
const SERVER_KEY_SEED: [u8; 32] = [0x42; 32];

impl FuzzTls {
    fn new() -> Self {
        // PKCS#8 v1 wrapping of an Ed25519 seed (RFC 8410).
        let mut pkcs8 = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        pkcs8.extend_from_slice(&SERVER_KEY_SEED);
        let pkcs8 = PrivatePkcs8KeyDer::from(pkcs8);
        let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_ED25519)
            .expect("Ed25519 key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .and_then(|p| p.self_signed(&key_pair))
            .expect("self-signed certificate");
        let cert = cert.der().clone();
        let store = Arc::new(FuzzStore(Mutex::new(SessionCache::new(CACHE))));
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        provider.secure_random = &FuzzRandom;
        provider.kx_groups = vec![&FIXED_X25519, &FIXED_P256];
        let resumption = tls::ResumptionParts {
            storage: Some(Arc::clone(&store) as Arc<dyn StoresServerSessions>),
            ticketer: None,
            tls13_tickets: 1,
        };
        let config = tls::build_server_config_with_provider(
            vec![cert.clone()],
            PrivateKeyDer::Pkcs8(pkcs8),
            &tls::TlsPolicy::default(),
            resumption,
            Arc::new(provider),
        )
        .expect("fuzzing server config");
        let mut config = Arc::unwrap_or_clone(config);
        config.time_provider = Arc::new(FixedTime);
        Self {
            config: Arc::new(config),
            cert,
            store,
        }
    }
}

/// A small cache, so that eviction happens within one input.
const CACHE: CacheConfig = CacheConfig {
    capacity: 2,
    timeout_ms: DEFAULT_SESSION_TIMEOUT_S * 1000,
};

/// The cache's clock: fixed, so nothing expires within an input.
const NOW_MS: u64 = 1_000_000;

/// ringterm's session cache as rustls's store, on a fixed clock (the
/// runtime's `WorkerStore` does the same over a per-thread cache).
#[derive(Debug)]
struct FuzzStore(Mutex<SessionCache>);

impl FuzzStore {
    fn cache(&self) -> std::sync::MutexGuard<'_, SessionCache> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn reset(&self) {
        *self.cache() = SessionCache::new(CACHE);
    }
}

impl StoresServerSessions for FuzzStore {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.cache().put(key, value, NOW_MS);
        true
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.cache().get(key, NOW_MS)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.cache().take(key, NOW_MS).0
    }

    fn can_cache(&self) -> bool {
        true
    }
}

/// rustls's clock, fixed (2026-01-01T00:00:00Z).
#[derive(Debug)]
struct FixedTime;

impl TimeProvider for FixedTime {
    fn current_time(&self) -> Option<UnixTime> {
        Some(UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            1_767_225_600,
        )))
    }
}

/// NOT RANDOM: SplitMix64 from a per-thread state reset for each input.
#[derive(Debug)]
struct FuzzRandom;

impl SecureRandom for FuzzRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), rustls::crypto::GetRandomFailed> {
        FUZZ_RNG.with(|state| {
            for chunk in buf.chunks_mut(8) {
                let mut z = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
                state.set(z);
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                z ^= z >> 31;
                chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
            }
        });
        Ok(())
    }
}

/// Key exchange with a fixed private key: deterministic server key shares.
#[derive(Debug)]
struct FixedKx {
    name: NamedGroup,
    alg: &'static agreement::Algorithm,
    private: [u8; 32],
}

static FIXED_X25519: FixedKx = FixedKx {
    name: NamedGroup::X25519,
    alg: &agreement::X25519,
    private: [0x25; 32],
};

static FIXED_P256: FixedKx = FixedKx {
    name: NamedGroup::secp256r1,
    alg: &agreement::ECDH_P256,
    // Any scalar below the group order will do.
    private: [0x11; 32],
};

impl SupportedKxGroup for FixedKx {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, rustls::Error> {
        let key = agreement::PrivateKey::from_private_key(self.alg, &self.private)
            .map_err(|_| rustls::Error::General("fixed key exchange".into()))?;
        let public = key
            .compute_public_key()
            .map_err(|_| rustls::Error::General("fixed key exchange".into()))?
            .as_ref()
            .to_vec();
        Ok(Box::new(FixedActive {
            name: self.name,
            alg: self.alg,
            key,
            public,
        }))
    }

    fn name(&self) -> NamedGroup {
        self.name
    }
}

struct FixedActive {
    name: NamedGroup,
    alg: &'static agreement::Algorithm,
    key: agreement::PrivateKey,
    public: Vec<u8>,
}

impl ActiveKeyExchange for FixedActive {
    fn complete(self: Box<Self>, peer: &[u8]) -> Result<SharedSecret, rustls::Error> {
        // As rustls's own groups: NIST points must be uncompressed.
        if self.name != NamedGroup::X25519 && peer.first() != Some(&0x04) {
            return Err(PeerMisbehaved::InvalidKeyShare.into());
        }
        agreement::agree(
            &self.key,
            agreement::UnparsedPublicKey::new(self.alg, peer),
            rustls::Error::from(PeerMisbehaved::InvalidKeyShare),
            |secret| Ok(SharedSecret::from(secret)),
        )
    }

    fn pub_key(&self) -> &[u8] {
        &self.public
    }

    fn group(&self) -> NamedGroup {
        self.name
    }
}

// ---------------------------------------------------------------------------
// config_toml
// ---------------------------------------------------------------------------

/// CPUs the `config_toml` target pretends the process may run on.
const FUZZ_CPUS: [usize; 4] = [0, 1, 2, 3];

/// The `config_toml` fuzz target: the config file's bytes through the path
/// `--config` takes (`Settings::from_toml_bytes`, merge with the flags, here
/// none, `validate`). Errors are fine; panics are not, and every error is
/// one line, as `main` prints it.
pub fn config_toml(data: &[u8]) {
    let settings = match Settings::from_toml_bytes("fuzz.toml", data) {
        Ok(s) => s,
        Err(e) => return check_error(&e.to_string()),
    };
    let merged = settings.clone().merge(Settings::default());
    assert_eq!(merged, settings, "merging no flags changes nothing");
    match merged.validate(&FUZZ_CPUS) {
        Ok(config) => {
            assert!(config.workers() >= 1);
            assert!(config.pins.iter().all(|c| FUZZ_CPUS.contains(c)));
            assert!(!config.listen.is_empty());
            assert!(config.settings.ring_entries().is_power_of_two());
        }
        Err(e) => check_error(&e.to_string()),
    }
}

fn check_error(msg: &str) {
    assert!(!msg.is_empty());
    assert!(!msg.contains(['\n', '\r']), "error spans lines: {msg:?}");
}

// ---------------------------------------------------------------------------
// ticket_decrypt
// ---------------------------------------------------------------------------

/// The `ticket_decrypt` fuzz target: a [`Ticketer`] with two fixed keys (an
/// 80-byte and a 48-byte key file) must answer `decrypt` of anything with
/// `None` or `Some` without panicking, and `encrypt` then `decrypt` of the
/// input must give it back. The bytes as a key file load exactly when they
/// are 48 or 80 bytes long.
pub fn ticket_decrypt(data: &[u8]) {
    use rustls::server::ProducesTickets;
    TICKETER.with(|t| {
        if let Some(plain) = t.decrypt(data) {
            // Only a real ticket opens, and it is 44 bytes longer.
            assert_eq!(plain.len() + 44, data.len());
        }
        let ticket = t.encrypt(data).expect("encrypt");
        assert_eq!(t.decrypt(&ticket).as_deref(), Some(data));
    });
    let loaded = TicketKey::from_file_bytes("fuzz.key", data);
    assert_eq!(loaded.is_ok(), data.len() == 48 || data.len() == 80);
}

/// Fixed key files of the `ticket_decrypt` target: 80 bytes (encrypts) and
/// 48 bytes.
pub fn ticket_key_files() -> [Vec<u8>; 2] {
    [(0u8..80).collect(), (100u8..148).collect()]
}

thread_local! {
    static TICKETER: Ticketer = {
        let [a, b] = ticket_key_files();
        let keys = vec![
            TicketKey::from_file_bytes("fuzz-a.key", &a).expect("80-byte key"),
            TicketKey::from_file_bytes("fuzz-b.key", &b).expect("48-byte key"),
        ];
        Ticketer::new(keys, 3600).expect("two keys")
    };
}

/// A ticket for the `ticket_decrypt` corpus: `plain` sealed under the first
/// (encrypting) fixed key.
pub fn sample_ticket(plain: &[u8]) -> Vec<u8> {
    use rustls::server::ProducesTickets;
    TICKETER.with(|t| t.encrypt(plain).expect("encrypt"))
}

// ---------------------------------------------------------------------------
// proxy_parse
// ---------------------------------------------------------------------------

/// The PROXY protocol parser (`--accept-proxy`): the bytes are parsed
/// whole and as every prefix, under the default and a tiny length limit;
/// results must agree (see [`crate::proxy::fuzz::fuzz_parse`]). Never panics.
pub fn proxy_parse(data: &[u8]) {
    crate::proxy::fuzz::fuzz_parse(data);
}
