//! Half-close in both directions: after one side finishes sending, the other
//! direction keeps flowing.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{mpsc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use rustls::ClientConnection;

/// What a backend saw on one connection.
#[derive(Debug)]
struct Seen {
    data: Vec<u8>,
    clean_eof: bool,
}

fn read_all(s: &mut TcpStream) -> Seen {
    let mut data = Vec::new();
    let clean_eof = s.read_to_end(&mut data).is_ok();
    Seen { data, clean_eof }
}

/// (a) The client sends data, then close_notify and a TCP half-close. The
/// backend sees EOF, waits 200 ms, and only then answers: the answer must
/// still reach the client.
#[test]
fn client_half_close_keeps_backend_to_client_flowing() {
    let certs = TestCerts::generate();
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let backend = spawn_backend(move |mut s| {
        let seen = read_all(&mut s);
        let _ = tx.lock().unwrap().send(seen);
        thread::sleep(Duration::from_millis(200));
        let _ = s.write_all(b"after-eof");
        let _ = s.shutdown(Shutdown::Write);
    });
    let mut rt = start_ringterm(&certs, backend, &[]);
    for tls in [Tls::V13, Tls::V12] {
        let mut client = tls_connect(rt.addr(), certs.client_config(tls)).expect("TLS connect");
        client.write_all(b"request body").unwrap();
        client.flush().unwrap();
        close_write(&mut client).unwrap();
        let seen = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the backend should see EOF after the client's close_notify");
        assert_eq!(seen.data, b"request body", "{tls:?}");
        assert!(seen.clean_eof, "{tls:?}: backend read ended with an error");
        let (got, end) = tls_read_to_end(&mut client);
        assert_eq!(
            String::from_utf8_lossy(&got),
            "after-eof",
            "{tls:?}: the response sent after EOF must reach the client"
        );
        assert_eq!(end, TlsEnd::CloseNotify, "{tls:?}");
    }
    rt.assert_alive();
}

/// (b) The backend sends "hello" and shuts down its write side at once: the
/// client gets "hello" and a clean close_notify, and can still send "late
/// data", which reaches the backend intact.
#[test]
fn backend_half_close_keeps_client_to_backend_flowing() {
    let certs = TestCerts::generate();
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let backend = spawn_backend(move |mut s| {
        let _ = s.write_all(b"hello");
        let _ = s.shutdown(Shutdown::Write);
        let seen = read_all(&mut s);
        let _ = tx.lock().unwrap().send(seen);
    });
    let mut rt = start_ringterm(&certs, backend, &[]);
    for tls in [Tls::V13, Tls::V12] {
        let client = TlsDuplex::connect(rt.addr(), certs.client_config(tls)).expect("TLS connect");
        let mut r = &client;
        let (got, end) = tls_read_to_end(&mut r);
        assert_eq!(got, b"hello", "{tls:?}");
        assert_eq!(
            end,
            TlsEnd::CloseNotify,
            "{tls:?}: backend EOF should become a clean close_notify"
        );
        client
            .write_all(b"late data")
            .expect("client can still send");
        client.close_write().unwrap();
        let seen = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("backend should see the late data and then EOF");
        assert_eq!(
            String::from_utf8_lossy(&seen.data),
            "late data",
            "{tls:?}: data sent after the server's close_notify must reach the backend"
        );
        assert!(seen.clean_eof, "{tls:?}: backend read ended with an error");
    }
    rt.assert_alive();
}

/// A close_notify alone (no TCP FIN) also half-closes toward the backend:
/// the echo backend sees EOF, closes, and the client gets close_notify back.
#[test]
fn close_notify_without_tcp_fin_reaches_backend() {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let mut rt = start_ringterm(&certs, echo.addr, &[]);
    for tls in [Tls::V13, Tls::V12] {
        let mut client = tls_connect(rt.addr(), certs.client_config(tls)).expect("TLS connect");
        client.write_all(b"ping").unwrap();
        client.flush().unwrap();
        thread::sleep(Duration::from_millis(50));
        client.conn.send_close_notify();
        while client.conn.wants_write() {
            client.conn.write_tls(&mut client.sock).unwrap();
        }
        // No shutdown(Write): the TCP connection stays open both ways.
        set_timeouts(&client.sock, Duration::from_secs(3));
        let (got, end) = tls_read_to_end(&mut client);
        assert_eq!(got, b"ping", "{tls:?}");
        assert_eq!(
            end,
            TlsEnd::CloseNotify,
            "{tls:?}: close_notify without FIN should propagate to the backend"
        );
    }
    rt.assert_alive();
}

/// TLS 1.3: the client's Finished and its close_notify arrive in one TCP
/// segment (no FIN). The close_notify must not be lost: the backend must see
/// EOF, and the client must get close_notify back.
#[test]
fn close_notify_in_same_segment_as_finished() {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let mut rt = start_ringterm(&certs, echo.addr, &[]);
    let mut sock = tcp_connect(rt.addr());
    let mut conn = ClientConnection::new(certs.tls13(), server_name()).unwrap();
    // Drive the handshake by hand, stopping before the client's Finished is
    // written.
    loop {
        while conn.wants_write() {
            conn.write_tls(&mut sock).unwrap();
        }
        conn.read_tls(&mut sock).unwrap();
        conn.process_new_packets().unwrap();
        if !conn.is_handshaking() {
            break;
        }
    }
    conn.send_close_notify();
    let mut flight = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut flight).unwrap();
    }
    sock.write_all(&flight).unwrap();
    set_timeouts(&sock, Duration::from_secs(3));
    let start = Instant::now();
    let mut stream = rustls::StreamOwned::new(conn, sock);
    let (got, end) = tls_read_to_end(&mut stream);
    assert!(got.is_empty());
    assert_eq!(
        end,
        TlsEnd::CloseNotify,
        "after {:?}: a close_notify coalesced with Finished was lost (the backend never saw EOF)",
        start.elapsed()
    );
    rt.assert_alive();
}
