//! TLS conformance regression tests, in memory: a rustls client (and
//! records crafted with its key log) against the sans-IO [`TlsSession`].
//! Each test is the case a tlsfuzzer script found (`tools/tls-conformance`).

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
use aws_lc_rs::hkdf;
use common::AnyCert;
use ringterm::tls::{
    build_server_config_multi, generate_self_signed, load_cert_chain, load_private_key, CertSpec,
    ResumptionParts, Status, TlsError, TlsPolicy, TlsSession, MAX_PENDING_HANDSHAKE,
};
use rustls::client::{ClientSessionMemoryCache, ClientSessionStore};
use rustls::pki_types::ServerName;
use rustls::{AlertDescription, ClientConfig, ClientConnection, ServerConfig};

/// Traffic secrets by key-log label, as the client derives them.
#[derive(Debug, Default)]
struct Secrets(Mutex<HashMap<String, Vec<u8>>>);

impl rustls::KeyLog for Secrets {
    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        self.0
            .lock()
            .unwrap()
            .insert(label.to_owned(), secret.to_vec());
    }
    fn will_log(&self, _label: &str) -> bool {
        true
    }
}

/// A client session store that counts the TLS 1.3 tickets it receives.
#[derive(Debug)]
struct CountingStore {
    inner: ClientSessionMemoryCache,
    tickets: std::sync::atomic::AtomicUsize,
}

impl ClientSessionStore for CountingStore {
    fn set_kx_hint(&self, n: ServerName<'static>, g: rustls::NamedGroup) {
        self.inner.set_kx_hint(n, g)
    }
    fn kx_hint(&self, n: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner.kx_hint(n)
    }
    fn set_tls12_session(
        &self,
        n: ServerName<'static>,
        v: rustls::client::Tls12ClientSessionValue,
    ) {
        self.inner.set_tls12_session(n, v)
    }
    fn tls12_session(&self, n: &ServerName<'_>) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(n)
    }
    fn remove_tls12_session(&self, n: &ServerName<'static>) {
        self.inner.remove_tls12_session(n)
    }
    fn insert_tls13_ticket(
        &self,
        n: ServerName<'static>,
        v: rustls::client::Tls13ClientSessionValue,
    ) {
        self.tickets
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.insert_tls13_ticket(n, v)
    }
    fn take_tls13_ticket(
        &self,
        n: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.inner.take_tls13_ticket(n)
    }
}

fn server_config(policy: &TlsPolicy, tickets: usize) -> Arc<ServerConfig> {
    let (cert, key) = generate_self_signed(&["localhost"]).unwrap();
    let chain = load_cert_chain("c", cert.as_bytes()).unwrap();
    let key = load_private_key("k", key.as_bytes()).unwrap();
    let resumption = if tickets > 0 {
        ResumptionParts {
            storage: Some(rustls::server::ServerSessionMemoryCache::new(64)),
            ticketer: None,
            tls13_tickets: tickets,
        }
    } else {
        ResumptionParts::default()
    };
    build_server_config_multi(vec![CertSpec::single(chain, key)], policy, resumption).unwrap()
}

struct Client {
    conn: ClientConnection,
    secrets: Arc<Secrets>,
    store: Arc<CountingStore>,
}

/// A TLS 1.3 client limited to TLS13_AES_128_GCM_SHA256 (so that the
/// records crafted below know their AEAD), trusting nothing: the tests that
/// complete a handshake use [`client_for`].
fn client(suites: &[rustls::SupportedCipherSuite]) -> Client {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites = suites.to_vec();
    let secrets = Arc::new(Secrets::default());
    let store = Arc::new(CountingStore {
        inner: ClientSessionMemoryCache::new(8),
        tickets: Default::default(),
    });
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(AnyCert::all())
        .with_no_client_auth();
    config.key_log = secrets.clone();
    config.resumption = rustls::client::Resumption::store(store.clone());
    let conn = ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap())
        .unwrap();
    Client {
        conn,
        secrets,
        store,
    }
}

fn aes128_client() -> Client {
    client(&[rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256])
}

fn client_wire(c: &mut ClientConnection) -> Vec<u8> {
    let mut wire = Vec::new();
    while c.wants_write() {
        c.write_tls(&mut wire).unwrap();
    }
    wire
}

/// Feeds server bytes to the client; returns what the client reports.
fn deliver(c: &mut ClientConnection, mut bytes: &[u8]) -> Result<Vec<u8>, rustls::Error> {
    let mut plain = Vec::new();
    while !bytes.is_empty() {
        c.read_tls(&mut bytes).unwrap();
        c.process_new_packets()?;
        let mut buf = [0u8; 4096];
        while let Ok(n) = c.reader().read(&mut buf) {
            if n == 0 {
                break;
            }
            plain.extend_from_slice(&buf[..n]);
        }
    }
    Ok(plain)
}

/// Runs the handshake up to the server's flight: the client holds its
/// Finished, unsent. Returns the session.
fn up_to_client_finished(c: &mut Client, config: Arc<ServerConfig>) -> TlsSession {
    let mut s = TlsSession::new(config).unwrap();
    let hello = client_wire(&mut c.conn);
    let (mut tc, mut tb) = (Vec::new(), Vec::new());
    assert_eq!(
        s.handle_ciphertext(&hello, &mut tc, &mut tb).unwrap(),
        Status::Handshaking
    );
    deliver(&mut c.conn, &tc).unwrap();
    s
}

/// HKDF-Expand-Label (RFC 8446 §7.1) with SHA-256 and an empty context.
fn expand_label(secret: &[u8], label: &str, len: usize) -> Vec<u8> {
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let full = format!("tls13 {label}");
    let mut info = Vec::new();
    info.extend_from_slice(&(len as u16).to_be_bytes());
    info.push(full.len() as u8);
    info.extend_from_slice(full.as_bytes());
    info.push(0);
    let prk = hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, secret);
    let info_parts = [info.as_slice()];
    let okm = prk.expand(&info_parts, Len(len)).unwrap();
    let mut out = vec![0; len];
    okm.fill(&mut out).unwrap();
    out
}

/// A TLS 1.3 record protected with the client's handshake traffic key
/// (AES-128-GCM), as record number `seq`: `content` of inner type `ctype`,
/// then `padding` zero bytes (RFC 8446 §5.2).
fn protected_record(c: &Client, seq: u64, ctype: u8, content: &[u8], padding: usize) -> Vec<u8> {
    let secret = c.secrets.0.lock().unwrap()["CLIENT_HANDSHAKE_TRAFFIC_SECRET"].clone();
    let key = expand_label(&secret, "key", 16);
    let iv = expand_label(&secret, "iv", 12);
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&iv);
    for (n, s) in nonce[4..].iter_mut().zip(seq.to_be_bytes()) {
        *n ^= s;
    }
    let mut inner = content.to_vec();
    inner.push(ctype);
    inner.extend(std::iter::repeat_n(0, padding));
    let len = inner.len() + 16;
    let header = [23, 3, 3, (len >> 8) as u8, len as u8];
    let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &key).unwrap());
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(header),
        &mut inner,
    )
    .unwrap();
    let mut rec = header.to_vec();
    rec.extend_from_slice(&inner);
    rec
}

/// tlsfuzzer test-tls13-connection-abort.py "After NewSessionTicket": the
/// client's Finished and its first request arrive in one read. The ticket
/// must be in what the step returns for the client, ahead of anything the
/// backend answers, so that a client that reads one response and closes
/// has its ticket.
#[test]
fn ticket_precedes_the_response_when_finished_and_request_arrive_together() {
    let config = server_config(&TlsPolicy::default(), 1);
    let mut c = aes128_client();
    let mut s = up_to_client_finished(&mut c, config);
    c.conn
        .writer()
        .write_all(b"GET / HTTP/1.0\r\n\r\n")
        .unwrap();
    let flight = client_wire(&mut c.conn);
    let (mut tc, mut tb) = (Vec::new(), Vec::new());
    assert_eq!(
        s.handle_ciphertext(&flight, &mut tc, &mut tb).unwrap(),
        Status::Established
    );
    assert_eq!(tb, b"GET / HTTP/1.0\r\n\r\n");
    assert!(!tc.is_empty(), "the ticket is queued for the client");
    // The backend answers; its response is encrypted after the ticket.
    let ticket_bytes = tc.len();
    s.encrypt(b"HTTP/1.0 200 OK\r\n\r\n", &mut tc).unwrap();
    // The ticket bytes alone give the client its ticket and no data.
    assert_eq!(deliver(&mut c.conn, &tc[..ticket_bytes]).unwrap(), b"");
    assert_eq!(c.store.tickets.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(
        deliver(&mut c.conn, &tc[ticket_bytes..]).unwrap(),
        b"HTTP/1.0 200 OK\r\n\r\n"
    );
}

/// The same in the runtime's order of calls: handle_read with the buffer
/// from prepare_read, split at every byte of the client's flight.
#[test]
fn ticket_precedes_the_response_at_any_split() {
    let config = server_config(&TlsPolicy::default(), 2);
    let mut c = aes128_client();
    let _ = up_to_client_finished(&mut c, config.clone());
    let flight_len = {
        let mut c2 = aes128_client();
        let _ = up_to_client_finished(&mut c2, config.clone());
        c2.conn.writer().write_all(b"ping").unwrap();
        client_wire(&mut c2.conn).len()
    };
    for split in (1..flight_len).step_by(7) {
        let mut c = aes128_client();
        let mut s = up_to_client_finished(&mut c, config.clone());
        c.conn.writer().write_all(b"ping").unwrap();
        let flight = client_wire(&mut c.conn);
        let (mut tc, mut tb) = (Vec::new(), Vec::new());
        let mut rx = Vec::new();
        let mut status = Status::Handshaking;
        for part in [&flight[..split], &flight[split..]] {
            s.prepare_read(&mut rx, part.len());
            rx.extend_from_slice(part);
            status = s.handle_read(&mut rx, &mut tc, &mut tb).unwrap();
            if status == Status::Established {
                // What the runtime writes before it relays anything.
                assert!(!tc.is_empty(), "split {split}: tickets with Established");
            }
        }
        assert_eq!(status, Status::Established);
        assert_eq!(tb, b"ping");
        let before = tc.len();
        s.encrypt(b"pong", &mut tc).unwrap();
        assert_eq!(deliver(&mut c.conn, &tc[..before]).unwrap(), b"");
        assert_eq!(
            c.store.tickets.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "split {split}"
        );
        assert_eq!(deliver(&mut c.conn, &tc[before..]).unwrap(), b"pong");
    }
}

/// tlsfuzzer test-tls13-zero-length-data.py "zero-length app data during
/// handshake": an empty application-data record before the client's
/// Finished is an unexpected message (RFC 8446 §5: application data
/// before the handshake is complete), answered with the alert.
#[test]
fn zero_length_application_data_in_the_handshake_is_unexpected_message() {
    for padding in [0, 1, 100, 4000] {
        let config = server_config(&TlsPolicy::default(), 1);
        let mut c = aes128_client();
        let mut s = up_to_client_finished(&mut c, config);
        let rec = protected_record(&c, 0, 23, b"", padding);
        let (mut tc, mut tb) = (Vec::new(), Vec::new());
        let err = s.handle_ciphertext(&rec, &mut tc, &mut tb).unwrap_err();
        assert!(matches!(err, TlsError::Rustls(_)), "{err:?}");
        assert!(tb.is_empty());
        assert!(
            !tc.is_empty(),
            "padding {padding}: an alert, not a plain close"
        );
        assert_eq!(
            deliver(&mut c.conn, &tc),
            Err(rustls::Error::AlertReceived(
                AlertDescription::UnexpectedMessage
            )),
            "padding {padding}"
        );
    }
}

/// tlsfuzzer test-tls13-zero-length-data.py "zero-length app data
/// interleaved in handshake": the ClientHello's first two bytes in one
/// record, then an empty application-data record. rustls refuses the
/// interleaving (RFC 8446 §5.1) without queuing an alert; the step sends
/// unexpected_message in plaintext instead of closing silently.
#[test]
fn record_interleaved_in_a_fragmented_client_hello_is_unexpected_message() {
    let config = server_config(&TlsPolicy::default(), 0);
    let msg = big_client_hello(0);
    for (ctype, padding) in [(23u8, 0usize), (23, 1), (21, 0)] {
        let mut wire = records(&msg[..2], 2);
        wire.extend_from_slice(&[ctype, 3, 3]);
        wire.extend_from_slice(&(padding as u16).to_be_bytes());
        wire.extend(std::iter::repeat_n(0, padding));
        wire.extend_from_slice(&records(&msg[2..], 16384));
        let mut s = TlsSession::new(config.clone()).unwrap();
        let (mut tc, mut tb) = (Vec::new(), Vec::new());
        let err = s.handle_ciphertext(&wire, &mut tc, &mut tb).unwrap_err();
        assert!(matches!(err, TlsError::Rustls(_)), "{err:?}");
        assert_eq!(
            tc,
            [21, 3, 3, 0, 2, 2, 10],
            "type {ctype}, {padding} bytes: {err:?}"
        );
        assert!(tb.is_empty());
    }
}

/// A ClientHello from the rustls client with a padding extension (RFC
/// 7685) of `pad` bytes inserted first among its extensions, all lengths
/// fixed up; returned as the handshake message (no record header).
fn big_client_hello(pad: usize) -> Vec<u8> {
    let mut c = aes128_client();
    let wire = client_wire(&mut c.conn);
    // One record: header (5), handshake header (4), body.
    assert_eq!(wire[0], 22);
    let body = &wire[9..];
    // legacy_version(2) random(32) session_id(1+n) suites(2+n) comp(1+n)
    let mut at = 2 + 32;
    at += 1 + body[at] as usize;
    at += 2 + u16::from_be_bytes([body[at], body[at + 1]]) as usize;
    at += 1 + body[at] as usize;
    let ext_len = u16::from_be_bytes([body[at], body[at + 1]]) as usize;
    let mut out_body = body[..at].to_vec();
    let new_ext_len = ext_len + 4 + pad;
    out_body.extend_from_slice(&(new_ext_len as u16).to_be_bytes());
    out_body.extend_from_slice(&[0, 21]);
    out_body.extend_from_slice(&(pad as u16).to_be_bytes());
    out_body.extend(std::iter::repeat_n(0, pad));
    out_body.extend_from_slice(&body[at + 2..]);
    let mut msg = vec![1];
    msg.extend_from_slice(&(out_body.len() as u32).to_be_bytes()[1..]);
    msg.extend_from_slice(&out_body);
    msg
}

/// Wraps a handshake message in plaintext records of at most `frag` bytes.
fn records(msg: &[u8], frag: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in msg.chunks(frag) {
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&(piece.len() as u16).to_be_bytes());
        out.extend_from_slice(piece);
    }
    out
}

/// tlsfuzzer test-tls13-large-number-of-extensions.py, test-large-hello.py,
/// test-client-hello-max-size.py: a legal ClientHello as large as rustls
/// accepts (a 0xffff-byte body), in one record each 16 KiB and in many
/// small records, gets a ServerHello; read the way the runtime reads.
#[test]
fn largest_client_hello_rustls_accepts_is_answered_in_any_fragmentation() {
    let config = server_config(&TlsPolicy::default(), 0);
    let base = big_client_hello(0).len();
    // The largest body rustls's handshake joiner takes: 0xffff bytes.
    let msg = big_client_hello(0xffff + 4 - base);
    assert_eq!(msg.len(), 0xffff + 4);
    for frag in [16384, 4096, 512, 100] {
        let wire = records(&msg, frag);
        let mut s = TlsSession::new(config.clone()).unwrap();
        let (mut tc, mut tb) = (Vec::new(), Vec::new());
        let mut rx = Vec::new();
        let mut status = Status::Handshaking;
        for read in wire.chunks(16 * 1024 + 5) {
            s.prepare_read(&mut rx, read.len());
            rx.extend_from_slice(read);
            status = s
                .handle_read(&mut rx, &mut tc, &mut tb)
                .unwrap_or_else(|e| panic!("fragments of {frag}: {e:?}"));
        }
        assert_eq!(status, Status::Handshaking);
        assert_eq!(&tc[..3], &[22, 3, 3], "fragments of {frag}: a ServerHello");
        assert_eq!(tc[5], 2, "fragments of {frag}: a ServerHello");
        assert_eq!(s.pending_len(), 0);
    }
}

/// tlsfuzzer test-tls13-record-layer-limits.py "too big ClientHello msg":
/// a plaintext record over 2^14 bytes is record_overflow (RFC 8446 §5.1),
/// in plaintext, as soon as its header is in; 2^14 bytes pass.
#[test]
fn client_hello_record_over_2_14_bytes_is_record_overflow() {
    let config = server_config(&TlsPolicy::default(), 0);
    let msg = big_client_hello(20_000);
    for (frag, ok) in [(16384, true), (16385, false)] {
        let wire = records(&msg, frag);
        let mut s = TlsSession::new(config.clone()).unwrap();
        let (mut tc, mut tb) = (Vec::new(), Vec::new());
        // Only the header and a little of the body have arrived.
        let res = s.handle_ciphertext(&wire[..100], &mut tc, &mut tb);
        if ok {
            assert_eq!(res.unwrap(), Status::Handshaking);
            let res = s.handle_ciphertext(&wire[100..], &mut tc, &mut tb);
            assert_eq!(res.unwrap(), Status::Handshaking);
            assert_eq!(tc[5], 2, "a ServerHello");
        } else {
            assert!(
                matches!(
                    res,
                    Err(TlsError::Record(
                        ringterm::record::RecordError::RecordOverflow(16385)
                    ))
                ),
                "{res:?}"
            );
            assert_eq!(tc, [21, 3, 3, 0, 2, 2, 22]);
        }
    }
}

/// The CPU bound still holds: a ClientHello trickled in records of one
/// byte each is refused once its records pass [`MAX_PENDING_HANDSHAKE`],
/// without an alert storm or a panic.
#[test]
fn one_byte_records_still_hit_the_pending_bound() {
    let config = server_config(&TlsPolicy::default(), 0);
    let msg = big_client_hello(30_000);
    let wire = records(&msg, 1);
    assert!(wire.len() > MAX_PENDING_HANDSHAKE);
    let mut s = TlsSession::new(config).unwrap();
    let (mut tc, mut tb) = (Vec::new(), Vec::new());
    let mut rx = Vec::new();
    let mut err = None;
    for read in wire.chunks(4096) {
        s.prepare_read(&mut rx, read.len());
        rx.extend_from_slice(read);
        if let Err(e) = s.handle_read(&mut rx, &mut tc, &mut tb) {
            err = Some(e);
            break;
        }
    }
    assert!(
        matches!(err, Some(TlsError::TooMuchPending { .. })),
        "{err:?}"
    );
}

/// A ClientHello with no key_share extension (and no PSK) is answered
/// with missing_extension (RFC 8446 §9.2), tlsfuzzer
/// test-tls13-keyshare-omitted.py.
#[test]
fn omitted_key_share_is_missing_extension() {
    let config = server_config(&TlsPolicy::default(), 0);
    let msg = big_client_hello(0);
    let msg = without_extension(&msg, 51);
    let mut s = TlsSession::new(config).unwrap();
    let (mut tc, mut tb) = (Vec::new(), Vec::new());
    s.handle_ciphertext(&records(&msg, 16384), &mut tc, &mut tb)
        .unwrap_err();
    // A plaintext fatal alert: level 2, description 109.
    assert_eq!(tc, [21, 3, 3, 0, 2, 2, 109]);
}

/// The handshake message `msg` (a ClientHello) without extension `ty`.
fn without_extension(msg: &[u8], ty: u16) -> Vec<u8> {
    let body = &msg[4..];
    let mut at = 2 + 32;
    at += 1 + body[at] as usize;
    at += 2 + u16::from_be_bytes([body[at], body[at + 1]]) as usize;
    at += 1 + body[at] as usize;
    let ext_start = at + 2;
    let mut exts = Vec::new();
    let mut p = ext_start;
    while p < body.len() {
        let t = u16::from_be_bytes([body[p], body[p + 1]]);
        let l = u16::from_be_bytes([body[p + 2], body[p + 3]]) as usize;
        if t != ty {
            exts.extend_from_slice(&body[p..p + 4 + l]);
        }
        p += 4 + l;
    }
    let mut out_body = body[..at].to_vec();
    out_body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    out_body.extend_from_slice(&exts);
    let mut out = vec![1];
    out.extend_from_slice(&(out_body.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&out_body);
    out
}

/// `--prefer-server-ciphers`: a client preferring AES-256-GCM gets
/// AES-128-GCM; without it, the client's order wins.
#[test]
fn server_cipher_order() {
    use rustls::crypto::aws_lc_rs::cipher_suite as cs;
    for (prefer, want) in [
        (true, "TLS13_AES_128_GCM_SHA256"),
        (false, "TLS13_AES_256_GCM_SHA384"),
    ] {
        let policy = TlsPolicy {
            prefer_server_ciphers: prefer,
            ..TlsPolicy::default()
        };
        let config = server_config(&policy, 0);
        let mut c = client(&[
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS13_CHACHA20_POLY1305_SHA256,
            cs::TLS13_AES_128_GCM_SHA256,
        ]);
        let mut s = up_to_client_finished(&mut c, config);
        let (mut tc, mut tb) = (Vec::new(), Vec::new());
        let fin = client_wire(&mut c.conn);
        assert_eq!(
            s.handle_ciphertext(&fin, &mut tc, &mut tb).unwrap(),
            Status::Established
        );
        assert_eq!(
            s.handshake_info().unwrap().cipher,
            Some(want),
            "prefer {prefer}"
        );
    }
}

/// An empty plaintext alert record (tlsfuzzer test-tls13-empty-alert.py
/// sends it encrypted too, see README "TLS conformance"): RFC 8446 §5.4
/// requires unexpected_message, where rustls sends decode_error.
#[test]
fn empty_plaintext_alert_is_unexpected_message() {
    let config = server_config(&TlsPolicy::default(), 0);
    let msg = big_client_hello(0);
    for before_hello in [true, false] {
        let mut wire = Vec::new();
        if !before_hello {
            wire.extend_from_slice(&records(&msg, 16384));
        }
        wire.extend_from_slice(&[21, 3, 3, 0, 0]);
        let mut s = TlsSession::new(config.clone()).unwrap();
        let (mut tc, mut tb) = (Vec::new(), Vec::new());
        let err = s.handle_ciphertext(&wire, &mut tc, &mut tb);
        if before_hello {
            err.unwrap_err();
            assert_eq!(tc, [21, 3, 3, 0, 2, 2, 10]);
        } else {
            // After the ServerHello the alert is encrypted: rustls's
            // decode_error stands (README "TLS conformance").
            assert!(err.is_err());
            assert!(tc.len() > 7);
        }
    }
}

/// tlsfuzzer test-invalid-client-hello-w-record-overflow.py "Client Hello
/// type fuzz": a first handshake message of another type than ClientHello
/// is unexpected (RFC 8446 §6.2), whatever rustls makes of its body.
#[test]
fn first_handshake_message_other_than_client_hello_is_unexpected_message() {
    let config = server_config(&TlsPolicy::default(), 0);
    let hello = big_client_hello(0);
    for ty in [0u8, 2, 4, 8, 11, 15, 20, 24, 25, 254] {
        let mut msg = hello.clone();
        msg[0] = ty;
        let mut s = TlsSession::new(config.clone()).unwrap();
        let (mut tc, mut tb) = (Vec::new(), Vec::new());
        let err = s
            .handle_ciphertext(&records(&msg, 16384), &mut tc, &mut tb)
            .unwrap_err();
        assert_eq!(tc, [21, 3, 3, 0, 2, 2, 10], "type {ty}: {err:?}");
    }
    // A malformed ClientHello itself stays a decode_error.
    let mut msg = hello.clone();
    msg.truncate(60);
    msg[1..4].copy_from_slice(&[0, 0, 56]);
    let mut s = TlsSession::new(config).unwrap();
    let (mut tc, mut tb) = (Vec::new(), Vec::new());
    s.handle_ciphertext(&records(&msg, 16384), &mut tc, &mut tb)
        .unwrap_err();
    assert_eq!(tc, [21, 3, 3, 0, 2, 2, 50]);
}
