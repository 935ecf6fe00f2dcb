//! The `record_open` fuzz target's driver, and the in-memory client-side
//! harness it shares with the unit tests: a rustls unbuffered client
//! handshakes with a [`TlsSession`] (which hands over to the own record
//! layer), then becomes a client-side [`RecordLayer`] that seals whatever
//! the input asks for, well-formed or not.
//!
//! Input: `suite, split, ops...`. `suite` picks one of the six suites
//! (mod 6); `split` feeds the server the wire in reads of that many bytes
//! (0: one read). Ops: `0 len data` seals application data; `1 type lenhi
//! lenlo data` seals any content; `2 lenhi lenlo data` appends raw bytes;
//! `3 req` sends a KeyUpdate (and switches the client's key); `4` sends
//! close_notify. Checked beyond "no panic": without raw bytes or odd
//! content, everything sealed as data reaches the backend in order.

use std::sync::{Arc, OnceLock};

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::pki_types::ServerName;
use rustls::unbuffered::{ConnectionState, UnbufferedStatus};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::{RecordLayer, APPLICATION_DATA};
use crate::tls::{
    build_server_config_with, generate_self_signed, load_cert_chain, load_private_key,
    ResumptionParts, TlsPolicy, TlsSession,
};

/// The suites, TLS 1.3 then TLS 1.2 (ECDSA test certificate).
pub const SUITES: [&str; 6] = [
    "TLS13_AES_128_GCM_SHA256",
    "TLS13_AES_256_GCM_SHA384",
    "TLS13_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
];

/// Server and client configurations for `suite`; the server sends two
/// TLS 1.3 tickets, so the own layer takes over at sequence number 2.
pub fn configs(suite: &str) -> (Arc<ServerConfig>, ClientConfig) {
    static CERT: OnceLock<(String, String)> = OnceLock::new();
    let (cert, key) = CERT.get_or_init(|| generate_self_signed(&["localhost"]).expect("rcgen"));
    let chain = load_cert_chain("c", cert.as_bytes()).expect("cert");
    let mut roots = RootCertStore::empty();
    roots.add(chain[0].clone()).expect("root");
    let key = load_private_key("k", key.as_bytes()).expect("key");
    let policy = TlsPolicy {
        cipher_suites: vec![suite.to_owned()],
        ..TlsPolicy::default()
    };
    let resumption = ResumptionParts {
        storage: None,
        ticketer: Some(rustls::crypto::aws_lc_rs::Ticketer::new().expect("ticketer")),
        tls13_tickets: 2,
    };
    let server = build_server_config_with(chain, key, &policy, resumption).expect("server");
    let version = if suite.starts_with("TLS13") {
        &rustls::version::TLS13
    } else {
        &rustls::version::TLS12
    };
    let client = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[version])
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    (server, client)
}

/// Handshakes an unbuffered rustls client with a session over
/// `server_config`, then turns the client into a client-side
/// [`RecordLayer`]. Returns `None` if the handshake did not complete.
pub fn handshake(
    server_config: Arc<ServerConfig>,
    mut client: ClientConfig,
) -> Option<(RecordLayer<ClientConnectionData>, TlsSession)> {
    client.enable_secret_extraction = true;
    let mut server = TlsSession::new(server_config).ok()?;
    let name = ServerName::try_from("localhost").ok()?;
    let mut c = UnbufferedClientConnection::new(Arc::new(client), name).ok()?;
    let mut incoming: Vec<u8> = Vec::new();
    let mut done = false;
    for _ in 0..100 {
        let mut out = Vec::new();
        loop {
            let UnbufferedStatus { discard, state } = c.process_tls_records(&mut incoming);
            let mut stop = false;
            match state.ok()? {
                ConnectionState::EncodeTlsData(mut e) => {
                    let mut buf = vec![0; 65536];
                    let n = e.encode(&mut buf).ok()?;
                    out.extend_from_slice(&buf[..n]);
                }
                ConnectionState::TransmitTlsData(t) => t.done(),
                ConnectionState::BlockedHandshake => stop = true,
                ConnectionState::WriteTraffic(_) => {
                    done = true;
                    stop = true;
                }
                _ => return None,
            }
            incoming.drain(..discard);
            if stop {
                break;
            }
        }
        if out.is_empty() && done && incoming.is_empty() {
            break;
        }
        let (mut tc, mut tb) = (Vec::new(), Vec::new());
        server.handle_ciphertext(&out, &mut tc, &mut tb).ok()?;
        incoming.extend_from_slice(&tc);
    }
    if !server.is_own_record_layer() {
        return None;
    }
    let (secrets, kernel) = c.dangerous_into_kernel_connection().ok()?;
    Some((RecordLayer::new(secrets, kernel).ok()?, server))
}

/// The `record_open` fuzz target.
pub fn record_open(data: &[u8]) {
    let [suite, split, rest @ ..] = data else {
        return;
    };
    let mut ops: &[u8] = rest;
    let (server_config, client_config) = configs(SUITES[usize::from(*suite) % SUITES.len()]);
    let Some((mut client, mut server)) = handshake(server_config, client_config) else {
        panic!("the in-memory handshake failed");
    };
    let mut wire = Vec::new();
    let mut expected = Vec::new();
    let mut clean = true;
    let mut updates = 0;
    let take = |ops: &mut &[u8], n: usize| -> Vec<u8> {
        let n = n.min(ops.len());
        let (a, b) = ops.split_at(n);
        *ops = b;
        a.to_vec()
    };
    while let [op, rest @ ..] = ops {
        let op = *op;
        ops = rest;
        match op % 5 {
            0 => {
                let len = take(&mut ops, 1).first().copied().unwrap_or(0);
                let bytes = take(&mut ops, usize::from(len));
                if client.seal(&bytes, &mut wire).is_ok() {
                    expected.extend_from_slice(&bytes);
                }
            }
            1 => {
                let head = take(&mut ops, 3);
                let (typ, len) = match head[..] {
                    [t, h, l] => (t, usize::from(u16::from_be_bytes([h, l]))),
                    _ => break,
                };
                let bytes = take(&mut ops, len);
                clean &= typ == APPLICATION_DATA && !bytes.is_empty();
                if clean {
                    expected.extend_from_slice(&bytes);
                }
                clean &= bytes.len() <= super::MAX_FRAGMENT_LEN;
                let _ = client.seal_message(typ, &bytes, &mut wire);
            }
            2 => {
                let head = take(&mut ops, 2);
                let len = match head[..] {
                    [h, l] => usize::from(u16::from_be_bytes([h, l])),
                    _ => break,
                };
                clean = false;
                wire.extend_from_slice(&take(&mut ops, len));
            }
            3 => {
                let req = take(&mut ops, 1).first().copied().unwrap_or(0) & 1 == 1;
                updates += 1;
                // Past 32 KeyUpdates without data the server gives up.
                clean &= updates <= 32;
                if client.version() == super::Version::Tls13 {
                    let _ = client.update_tx(&mut wire, req);
                } else {
                    clean = false;
                    let msg = [super::KEY_UPDATE, 0, 0, 1, u8::from(req)];
                    let _ = client.seal_message(super::HANDSHAKE, &msg, &mut wire);
                }
            }
            _ => {
                let _ = client.close(&mut wire);
                break;
            }
        }
    }
    let mut rx = Vec::new();
    let mut to_client = Vec::new();
    let mut backend = Vec::new();
    let mut result = Ok(crate::tls::Status::Established);
    let chunk = if *split == 0 {
        wire.len().max(1)
    } else {
        usize::from(*split)
    };
    for piece in wire.chunks(chunk) {
        server.prepare_read(&mut rx, chunk);
        rx.extend_from_slice(piece);
        result = server.handle_read(&mut rx, &mut to_client, &mut backend);
        if result.is_err() {
            break;
        }
    }
    if clean {
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(backend, expected);
    }
    // What the server sent opens on the client side, whatever happened.
    let mut back = Vec::new();
    let mut plain = Vec::new();
    let _ = client.read(&mut to_client, &mut back, &mut plain);
}
