//! The fuzz corpus as a regression test: every file in
//! `fuzz/corpus/<target>/` and `fuzz/artifacts/<target>/` (crash
//! reproducers) goes through the same library function the cargo-fuzz
//! target calls (`ringterm::fuzzing`), in the normal `cargo test` run.
//!
//! The recorded TLS sessions in the corpus replay only while the fuzzing
//! server stays deterministic; `recorded_sessions_still_complete` says so
//! when they stop (after a rustls upgrade, say): regenerate them with
//!
//! ```text
//! cargo test --test fuzz_corpus -- --ignored generate_seed_corpus
//! ```

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ringterm::fuzzing::{self, ConnOutcome, FLAG_ECHO, FLAG_SHORT_WRITES};
use ringterm::tls::{Status, TlsSession};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, ProtocolVersion, RootCertStore};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Every file of the target's corpus and artifacts, sorted.
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    for dir in ["corpus", "artifacts"] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir().join(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_file() {
                let bytes = std::fs::read(&path).unwrap();
                files.push((path, bytes));
            }
        }
    }
    files.sort();
    files
}

fn replay(target: &str, run: fn(&[u8])) {
    let files = inputs(target);
    assert!(!files.is_empty(), "no corpus for {target}");
    for (path, bytes) in files {
        let result = std::panic::catch_unwind(|| run(&bytes));
        assert!(result.is_ok(), "{target}: {} panics", path.display());
    }
}

#[test]
fn replay_tls_step() {
    replay("tls_step", fuzzing::tls_step);
}

#[test]
fn replay_config_toml() {
    replay("config_toml", fuzzing::config_toml);
}

#[test]
fn replay_ticket_decrypt() {
    replay("ticket_decrypt", fuzzing::ticket_decrypt);
}

#[test]
fn replay_record_open() {
    replay("record_open", ringterm::record::fuzz::record_open);
}

#[test]
fn replay_proxy_parse() {
    replay("proxy_parse", fuzzing::proxy_parse);
}

/// The recorded sessions in the corpus (`session-*`) still reach the
/// established state and deliver their data: the fuzzer starts from deep
/// states only while this holds.
#[test]
fn recorded_sessions_still_complete() {
    let sessions: Vec<_> = inputs("tls_step")
        .into_iter()
        .filter(|(p, _)| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("session-")
        })
        .collect();
    assert!(sessions.len() >= 4, "recorded sessions missing");
    for (path, bytes) in sessions {
        let outcome = fuzzing::tls_replay(&bytes);
        assert!(!outcome.is_empty());
        for (i, conn) in outcome.iter().enumerate() {
            assert!(
                conn.established && conn.error.is_none() && !conn.backend.is_empty(),
                "{} connection {i} no longer completes: {conn:?}\n\
                 regenerate: cargo test --test fuzz_corpus -- --ignored generate_seed_corpus",
                path.display()
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Recording real client sessions against the fuzzing server
// ---------------------------------------------------------------------------

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";

fn client_config(
    versions: &[&'static rustls::SupportedProtocolVersion],
    groups: Option<Vec<&'static dyn rustls::crypto::SupportedKxGroup>>,
) -> Arc<ClientConfig> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if let Some(groups) = groups {
        provider.kx_groups = groups;
    }
    let mut roots = RootCertStore::empty();
    roots.add(fuzzing::tls_server_cert()).unwrap();
    let config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

fn tls13() -> Arc<ClientConfig> {
    client_config(&[&rustls::version::TLS13], None)
}

fn tls12() -> Arc<ClientConfig> {
    client_config(&[&rustls::version::TLS12], None)
}

/// Just the first flight of a client: its ClientHello.
fn client_hello(config: Arc<ClientConfig>) -> Vec<u8> {
    let mut c = ClientConnection::new(config, ServerName::try_from("localhost").unwrap()).unwrap();
    let mut hello = Vec::new();
    while c.wants_write() {
        c.write_tls(&mut hello).unwrap();
    }
    hello
}

/// Drives a real rustls client against the fuzzing server for `conns`
/// connections in a row (sharing the client's resumption store and the
/// server's cache): handshake, `request`, the server's echo, close_notify.
/// Returns what each client sent, and whether each handshake resumed.
fn record(config: &Arc<ClientConfig>, conns: usize, request: &[u8]) -> (Vec<Vec<u8>>, Vec<bool>) {
    let server_config = fuzzing::tls_begin();
    let mut sent = Vec::new();
    let mut resumed = Vec::new();
    for _ in 0..conns {
        let mut client =
            ClientConnection::new(config.clone(), ServerName::try_from("localhost").unwrap())
                .unwrap();
        let mut server = TlsSession::new(server_config.clone()).unwrap();
        let mut wire = Vec::new();
        let mut backend = Vec::new();
        let mut echoed = Vec::new();
        let mut requested = false;
        let mut closing = false;
        for _ in 0..100 {
            if !client.is_handshaking() && !requested {
                client.writer().write_all(request).unwrap();
                requested = true;
            }
            if echoed.len() == request.len() && !closing {
                client.send_close_notify();
                closing = true;
            }
            let mut out = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut out).unwrap();
            }
            if out.is_empty() && closing {
                break;
            }
            wire.extend_from_slice(&out);
            let mut to_client = Vec::new();
            let status = server
                .handle_ciphertext(&out, &mut to_client, &mut backend)
                .unwrap();
            if status != Status::Handshaking && !backend.is_empty() {
                // The echo backend.
                server.encrypt(&backend, &mut to_client).unwrap();
                backend.clear();
            }
            let mut rd = &to_client[..];
            while !rd.is_empty() {
                client.read_tls(&mut rd).unwrap();
                client.process_new_packets().unwrap();
            }
            let mut buf = [0u8; 4096];
            while let Ok(n) = client.reader().read(&mut buf) {
                if n == 0 {
                    break;
                }
                echoed.extend_from_slice(&buf[..n]);
            }
        }
        assert!(closing, "session did not finish");
        assert_eq!(echoed, request);
        resumed.push(client.handshake_kind() == Some(rustls::HandshakeKind::Resumed));
        sent.push(wire);
    }
    (sent, resumed)
}

/// Records a session and builds its `tls_step` input.
fn session_input(
    config: &Arc<ClientConfig>,
    conns: usize,
    request: &[u8],
    split: u8,
    flags: u8,
) -> (Vec<u8>, Vec<bool>) {
    let (sent, resumed) = record(config, conns, request);
    let parts: Vec<&[u8]> = sent.iter().map(Vec::as_slice).collect();
    (fuzzing::tls_input(split, flags, &parts), resumed)
}

fn check_replay(input: &[u8], version: ProtocolVersion, resumed: &[bool], request: &[u8]) {
    let outcome: Vec<ConnOutcome> = fuzzing::tls_replay(input);
    assert_eq!(outcome.len(), resumed.len());
    for (conn, &resumed) in outcome.iter().zip(resumed) {
        assert!(conn.established, "{conn:?}");
        assert_eq!(conn.version, Some(version));
        assert_eq!(conn.resumed, resumed);
        assert_eq!(conn.backend, request);
        assert_eq!(conn.status, Some(Status::Closed), "{conn:?}");
    }
}

/// Recording and replaying agree, however the replay splits the reads and
/// whichever feeding path it takes: the deterministic server works.
#[test]
fn recorded_sessions_replay_in_any_split() {
    let groups = rustls::crypto::aws_lc_rs::kx_group::SECP384R1;
    let hrr = client_config(
        &[&rustls::version::TLS13],
        Some(vec![groups, rustls::crypto::aws_lc_rs::kx_group::X25519]),
    );
    let cases = [
        (tls13(), 1, ProtocolVersion::TLSv1_3, vec![false]),
        (tls12(), 1, ProtocolVersion::TLSv1_2, vec![false]),
        (tls13(), 2, ProtocolVersion::TLSv1_3, vec![false, true]),
        (tls12(), 2, ProtocolVersion::TLSv1_2, vec![false, true]),
        (hrr, 1, ProtocolVersion::TLSv1_3, vec![false]),
    ];
    for (config, conns, version, expect_resumed) in cases {
        let (input, resumed) = session_input(&config, conns, REQUEST, 0, 0);
        assert_eq!(resumed, expect_resumed);
        for split in [0u8, 1, 7, 100, 130, 255] {
            for flags in [0u8, FLAG_SHORT_WRITES, FLAG_ECHO, 4, 8 | FLAG_ECHO, 12] {
                let mut input = input.clone();
                input[..2].copy_from_slice(&[split, flags]);
                check_replay(&input, version, &resumed, REQUEST);
            }
        }
    }
}

/// Writes the seed corpus into `fuzz/corpus/` (run by hand; see the module
/// documentation). Existing files of the same name are overwritten; others
/// are left alone.
#[test]
#[ignore = "writes the seed corpus into fuzz/corpus/"]
fn generate_seed_corpus() {
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };

    // tls_step: first flights.
    let hello13 = client_hello(tls13());
    let hello12 = client_hello(tls12());
    let tls =
        |name: &str, client: &[u8]| write("tls_step", name, &fuzzing::tls_input(0, 0, &[client]));
    tls("hello-tls13", &hello13);
    tls("hello-tls12", &hello12);
    tls("hello-tls13-truncated", &hello13[..hello13.len() / 2]);
    tls("garbage-http", b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    tls(
        "garbage-bytes",
        &[
            0x16, 0x03, 0x01, 0x00, 0x05, 0xde, 0xad, 0xbe, 0xef, 0x00, 0x17, 0x03,
        ],
    );
    // An SSLv2-compatible ClientHello (RFC 5246 appendix E.2): 7 cipher
    // specs, no session ID, a 16-byte challenge.
    let mut sslv2 = vec![
        0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10,
    ];
    for spec in [
        [0x00, 0x00, 0x39],
        [0x00, 0x00, 0x38],
        [0x00, 0x00, 0x35],
        [0x00, 0x00, 0x33],
        [0x00, 0x00, 0x32],
        [0x00, 0x00, 0x2f],
        [0x00, 0x00, 0xff],
    ] {
        sslv2.extend_from_slice(&spec);
    }
    sslv2.extend_from_slice(&[0x5a; 16]);
    tls("sslv2-hello", &sslv2);
    // A handshake header announcing 16 MiB.
    let mut oversized = vec![0x16, 0x03, 0x01, 0x00, 0x40, 0x01, 0xff, 0xff, 0xff];
    oversized.extend_from_slice(&[0u8; 60]);
    tls("oversized-handshake", &oversized);
    // close_notify (plaintext) right after the ClientHello.
    let mut hello_close = hello13.clone();
    hello_close.extend_from_slice(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x01, 0x00]);
    tls("hello-then-close-notify", &hello_close);
    // A ClientHello in one-byte records.
    let mut fragmented = Vec::new();
    for b in &hello12[5..] {
        fragmented.extend_from_slice(&[0x16, 0x03, 0x01, 0x00, 0x01, *b]);
    }
    tls("hello-tls12-fragmented", &fragmented);

    // tls_step: complete recorded sessions (the deterministic server).
    let hrr = client_config(
        &[&rustls::version::TLS13],
        Some(vec![
            rustls::crypto::aws_lc_rs::kx_group::SECP384R1,
            rustls::crypto::aws_lc_rs::kx_group::X25519,
        ]),
    );
    let p256 = client_config(
        &[&rustls::version::TLS12],
        Some(vec![rustls::crypto::aws_lc_rs::kx_group::SECP256R1]),
    );
    let big: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    /// Name, client, connections, request, split byte, flags byte.
    type Recording<'a> = (&'a str, &'a Arc<ClientConfig>, usize, &'a [u8], u8, u8);
    let sessions: [Recording; 8] = [
        ("session-tls13", &tls13(), 1, REQUEST, 0, FLAG_ECHO),
        ("session-tls12", &tls12(), 1, REQUEST, 0, FLAG_ECHO),
        ("session-tls13-resume", &tls13(), 2, REQUEST, 0, 0),
        ("session-tls12-resume", &tls12(), 2, REQUEST, 0, 0),
        ("session-tls13-hrr", &hrr, 1, REQUEST, 0, FLAG_ECHO),
        (
            "session-tls12-p256",
            &p256,
            1,
            REQUEST,
            200,
            FLAG_SHORT_WRITES,
        ),
        ("session-tls13-bytewise", &tls13(), 1, REQUEST, 1, 4),
        ("session-tls13-20k", &tls13(), 1, &big, 0, 8 | FLAG_ECHO),
    ];
    for (name, config, conns, request, split, flags) in sessions {
        let (input, _) = session_input(config, conns, request, split, flags);
        write("tls_step", name, &input);
    }

    // config_toml: the shipped example and broken variants.
    let example =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/ringterm.toml")).unwrap();
    write("config_toml", "ringterm.toml", &example);
    let cfg = |name: &str, text: &[u8]| write("config_toml", name, text);
    cfg(
        "minimal.toml",
        b"listen = [\"127.0.0.1:8443\"]\nbackend = \"127.0.0.1:8080\"\ncert = \"c.pem\"\nkey = \"k.pem\"\n",
    );
    cfg(
        "everything.toml",
        b"listen = [\"0.0.0.0:443\", \"[::]:443\"]\nbackend = \"[::1]:8080\"\ncert = \"c\"\nkey = \"k\"\n\
          workers = 3\ncpus = \"0-1,3\"\nring-entries = 8\nsqpoll = 1000\nbacklog = 1\n\
          buffer-size = 1024\nadmin = \"127.0.0.1:9000\"\nhandshake-timeout = 1\nconnect-timeout = 1\n\
          tls12 = false\nlog-level = \"trace\"\nresumption = \"both\"\nsession-timeout = 604800\n\
          session-cache-size = 0\nsession-sync-interval = 60000\nticket-rotation = 1\n\
          ticket-key-file = [\"a.key\", \"b.key\"]\ntls13-tickets = 8\n",
    );
    cfg(
        "unknown-key.toml",
        b"listen = [\"127.0.0.1:8443\"]\nbogus = 1\n",
    );
    cfg("wrong-type.toml", b"workers = \"four\"\n");
    cfg(
        "syntax-error.toml",
        b"listen = [\"127.0.0.1:8443\"\nbackend = \n",
    );
    cfg(
        "bad-values.toml",
        b"listen = [\"nope\"]\nbackend = \"127.0.0.1:99999\"\ncert = \"c\"\nkey = \"k\"\n\
          ring-entries = 1000\ncpus = \"3-1\"\nresumption = \"sometimes\"\n",
    );
    cfg("not-utf8.toml", b"log-level = \"\xff\xfe\"\n");
    // A value with a newline: the error must still be one line.
    cfg(
        "multiline-value.toml",
        b"listen = [\"127.0.0.1:8443\"]\nbackend = \"127.0.0.1:8080\"\ncert = \"c.pem\"\n\
          key = \"k.pem\"\nlog-level = \"\"\"info\nERROR forged\"\"\"\nresumption = \"cache\\r\"\n",
    );
    cfg("empty.toml", b"");

    // ticket_decrypt: real tickets under each fixed key, and junk.
    let ticket = fuzzing::sample_ticket(b"serialized rustls session state");
    write("ticket_decrypt", "ticket-key-a", &ticket);
    {
        use rustls::server::ProducesTickets;
        let [_, b] = fuzzing::ticket_key_files();
        let key = ringterm::session::tickets::TicketKey::from_file_bytes("b", &b).unwrap();
        let only_b = ringterm::session::tickets::Ticketer::new(vec![key], 60).unwrap();
        write(
            "ticket_decrypt",
            "ticket-key-b",
            &only_b.encrypt(b"another session").unwrap(),
        );
    }
    write(
        "ticket_decrypt",
        "ticket-truncated",
        &ticket[..ticket.len() - 1],
    );
    let mut flipped = ticket.clone();
    flipped[30] ^= 1;
    write("ticket_decrypt", "ticket-bitflip", &flipped);
    write("ticket_decrypt", "empty", b"");
    write("ticket_decrypt", "junk-min-len", &[0xa5; 44]);
    write(
        "ticket_decrypt",
        "key-file-80",
        &fuzzing::ticket_key_files()[0],
    );
    write(
        "ticket_decrypt",
        "key-file-48",
        &fuzzing::ticket_key_files()[1],
    );
}
