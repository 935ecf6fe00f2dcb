//! Relaying through ringterm to an echo backend, over TLS 1.2 and TLS 1.3:
//! payload integrity (SHA-256) in both directions, the client→backend
//! half-close, and full duplex with a backend that sends while it reads.

mod common;

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::*;

/// Payload sizes around the TLS record size, plus empty and large.
const SIZES: &[usize] = &[0, 1, 16 * 1024 - 1, 16 * 1024 + 1, 10 * 1024 * 1024];

fn relay_sizes(tls: Tls, version: rustls::ProtocolVersion, counter: &str) {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let mut rt = start_ringterm(&certs, echo.addr, &[]);
    let config = certs.client_config(tls);
    for &size in SIZES {
        let payload = random_bytes(size);
        let client = TlsDuplex::connect(rt.addr(), config.clone()).expect("TLS connect");
        assert_eq!(client.version(), Some(version));
        let (got, end) = echo_roundtrip(&client, &payload);
        assert_eq!(
            got.len(),
            size,
            "size {size}: echoed length differs (end {end:?})"
        );
        assert!(
            sha256(&got) == sha256(&payload),
            "size {size}: echoed bytes differ"
        );
        assert_eq!(
            end,
            TlsEnd::CloseNotify,
            "size {size}: no clean close_notify"
        );
    }
    // Every connection after the first resumes the client's session (the
    // default `--resumption cache`): the version's series counts full and
    // resumed handshakes together.
    let text = rt.wait_metric(counter, |n| n >= SIZES.len() as u64);
    assert_eq!(metric_sum(&text, counter), SIZES.len() as u64);
    assert_eq!(
        metric_sum(&text, "ringterm_accepted_total"),
        SIZES.len() as u64
    );
    assert_eq!(metric_sum(&text, "ringterm_handshake_failures_total"), 0);
    assert_eq!(metric_sum(&text, "ringterm_connection_errors_total"), 0);
    // Every connection finished: nothing is left active.
    rt.wait_metric("ringterm_active", |n| n == 0);
    rt.assert_alive();
}

#[test]
fn relay_tls13_payload_sizes() {
    relay_sizes(
        Tls::V13,
        rustls::ProtocolVersion::TLSv1_3,
        "ringterm_handshakes_total{version=\"TLSv1.3\"}",
    );
}

#[test]
fn relay_tls12_payload_sizes() {
    relay_sizes(
        Tls::V12,
        rustls::ProtocolVersion::TLSv1_2,
        "ringterm_handshakes_total{version=\"TLSv1.2\"}",
    );
}

/// The backend sends 10 MiB as soon as the connection opens while the client
/// sends its own 10 MiB: both arrive intact, and each side's half-close
/// reaches the other.
fn full_duplex(tls: Tls) {
    const N: usize = 10 * 1024 * 1024;
    let certs = TestCerts::generate();
    let from_backend = Arc::new(random_bytes(N));
    let from_client = random_bytes(N);
    let (backend, results) = source_backend(from_backend.clone());
    let mut rt = start_ringterm(&certs, backend, &[]);
    let client = TlsDuplex::connect(rt.addr(), certs.client_config(tls)).expect("TLS connect");
    let (got, end) = echo_roundtrip(&client, &from_client);
    assert_eq!(
        got.len(),
        N,
        "client received {} of {N} bytes ({end:?})",
        got.len()
    );
    assert!(
        sha256(&got) == sha256(&from_backend),
        "backend→client bytes differ"
    );
    assert_eq!(end, TlsEnd::CloseNotify);
    let received = results
        .recv_timeout(Duration::from_secs(10))
        .expect("backend reports what it received");
    assert_eq!(
        received.len, N as u64,
        "backend received {} of {N} bytes",
        received.len
    );
    assert!(
        received.sha == sha256(&from_client),
        "client→backend bytes differ"
    );
    assert!(received.clean_eof, "backend should see a clean EOF");
    thread::sleep(Duration::from_millis(50));
    rt.assert_alive();
}

#[test]
fn full_duplex_10mib_tls13() {
    full_duplex(Tls::V13);
}

#[test]
fn full_duplex_10mib_tls12() {
    full_duplex(Tls::V12);
}

/// A small relay buffer (`--buffer-size 1024`) still relays every byte.
#[test]
fn small_relay_buffer() {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let mut rt = start_ringterm(&certs, echo.addr, &["--buffer-size", "1024"]);
    for tls in [Tls::V13, Tls::V12] {
        assert_echo(
            rt.addr(),
            certs.client_config(tls),
            &random_bytes(1024 * 1024 + 7),
        );
    }
    rt.assert_alive();
}

/// `--resumption off`: a client that would resume gets a full handshake
/// every time.
#[test]
fn no_session_resumption_when_off() {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let mut rt = start_ringterm(&certs, echo.addr, &["--resumption", "off"]);
    for tls in [Tls::V13, Tls::V12] {
        // One config, so one client-side session cache for both connections.
        let config = certs.client_config(tls);
        for i in 0..2 {
            let mut client = tls_connect(rt.addr(), config.clone()).expect("TLS connect");
            assert_eq!(
                client.conn.handshake_kind(),
                Some(rustls::HandshakeKind::Full),
                "{tls:?} connection {i}"
            );
            close_write(&mut client).unwrap();
            let (_, end) = tls_read_to_end(&mut client);
            assert_eq!(end, TlsEnd::CloseNotify);
        }
    }
    let text = rt.wait_metric("ringterm_accepted_total", |n| n == 4);
    assert_eq!(metric_sum(&text, "ringterm_handshakes_resumed_total"), 0);
    rt.assert_alive();
}
