//! Failure paths: an unreachable backend, garbage instead of a ClientHello,
//! a corrupted record, handshake and connect timeouts. Each connection must
//! end promptly, be counted, and leave ringterm serving.

mod common;

use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// Reads a TLS stream until it ends; panics if it is still open after
/// `within`. Returns how it ended and how long that took.
fn tls_ends_within(
    s: &mut rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>,
    within: Duration,
) -> (TlsEnd, Duration) {
    set_timeouts(&s.sock, within);
    let start = Instant::now();
    let (_, end) = tls_read_to_end(s);
    let took = start.elapsed();
    if let TlsEnd::Error(e) = &end {
        assert!(
            !e.contains("WouldBlock") && !e.contains("TimedOut"),
            "connection still open after {took:?}: {e}"
        );
    }
    (end, took)
}

/// (a) The backend refuses: the TLS handshake completes, then the
/// connection ends quickly and is counted. Once something listens on that
/// port, new connections work.
#[test]
fn backend_refused_then_recovers() {
    let certs = TestCerts::generate();
    let backend = refused_addr();
    let mut rt = start_ringterm(&certs, backend, &[]);
    for tls in [Tls::V13, Tls::V12] {
        let mut client = tls_connect(rt.addr(), certs.client_config(tls))
            .expect("the handshake completes before the backend is tried");
        let (end, took) = tls_ends_within(&mut client, Duration::from_secs(3));
        assert!(
            took < Duration::from_secs(2),
            "{tls:?}: took {took:?} to end ({end:?})"
        );
    }
    rt.wait_metric("ringterm_backend_connect_failures_total", |n| n >= 2);
    rt.assert_alive();

    // Now the backend comes up on the same port.
    let listener = TcpListener::bind(backend).expect("rebind the refused port");
    let echo = echo_on(listener);
    assert_echo(rt.addr(), certs.tls13(), b"the backend is up now");
    assert_echo(rt.addr(), certs.tls12(), b"and over TLS 1.2");
    assert_eq!(echo.conns.load(std::sync::atomic::Ordering::Relaxed), 2);
    rt.assert_alive();
}

/// (b) Garbage instead of a ClientHello: the connection is closed (maybe
/// after an alert), and ringterm keeps serving.
#[test]
fn garbage_instead_of_client_hello() {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    // A short handshake timeout bounds the (tiny) chance that random bytes
    // look like the start of a long record.
    let mut rt = start_ringterm(&certs, echo.addr, &["--handshake-timeout", "3000"]);
    let mut random = random_bytes(1024);
    // Keep the random case off the oversized-handshake path, which has its
    // own test below.
    if random[0] == 0x16 {
        random[0] = 0x17;
    }
    let hello = client_hello_bytes(certs.tls13());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "http request",
            b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
        ),
        ("1 KiB random", random),
        ("zeros", vec![0u8; 64]),
        // A handshake record holding a ClientHello with a garbage body.
        ("garbage ClientHello body", {
            let mut v = vec![0x16, 0x03, 0x01, 0x00, 0x40, 0x01, 0x00, 0x00, 0x3c];
            v.extend(random_bytes(0x3c));
            v
        }),
        // A handshake record holding an unknown handshake type.
        ("unknown handshake type", {
            let mut v = vec![0x16, 0x03, 0x01, 0x00, 0x40, 0x63, 0x00, 0x00, 0x3c];
            v.extend([0u8; 0x3c]);
            v
        }),
        // A plausible ClientHello, truncated, then EOF.
        ("truncated hello", hello[..hello.len() / 2].to_vec()),
    ];
    for (name, bytes) in &cases {
        let mut s = tcp_connect(rt.addr());
        s.write_all(bytes).unwrap();
        if *name == "truncated hello" {
            s.shutdown(std::net::Shutdown::Write).unwrap();
        }
        let closed = wait_closed(&mut s, Duration::from_secs(5));
        let (how, got, took) =
            closed.unwrap_or_else(|| panic!("{name}: connection still open after 5 s"));
        // If anything came back it must be a TLS alert record.
        if !got.is_empty() {
            assert_eq!(
                got[0], 0x15,
                "{name}: expected an alert record, got {got:02x?}"
            );
        }
        assert!(
            took < Duration::from_secs(2),
            "{name}: closed only after {took:?} ({how:?})"
        );
        rt.assert_alive();
    }
    let text = rt.wait_metric("ringterm_handshake_failures_total", |n| {
        n >= cases.len() as u64
    });
    assert_eq!(
        metric_sum(&text, "ringterm_backend_connect_failures_total"),
        0
    );
    assert_eq!(echo.conns.load(std::sync::atomic::Ordering::Relaxed), 0);
    // Still serving.
    assert_echo(rt.addr(), certs.tls13(), &random_bytes(100_000));
    assert_echo(rt.addr(), certs.tls12(), &random_bytes(100_000));
    rt.wait_metric("ringterm_active", |n| n == 0);
    rt.assert_alive();
}

/// (b') A handshake record whose handshake-message header announces a
/// length beyond rustls's limit (here 0xffffff). rustls rejects it; ringterm
/// must answer with an alert and close, without panicking.
#[test]
fn oversized_handshake_message_does_not_panic() {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let mut rt = start_ringterm(&certs, echo.addr, &[]);
    // Record header (handshake, 0x0301, 64 bytes), then a ClientHello
    // header with length 0xffffff, then 60 bytes.
    let mut bytes = vec![0x16, 0x03, 0x01, 0x00, 0x40, 0x01, 0xff, 0xff, 0xff];
    bytes.extend(random_bytes(60));
    let mut s = tcp_connect(rt.addr());
    s.write_all(&bytes).unwrap();
    let closed = wait_closed(&mut s, Duration::from_secs(5));
    assert!(closed.is_some(), "connection still open after 5 s");

    // Still serving, on the same (only) worker.
    assert_echo(rt.addr(), certs.tls13(), b"still serving");
    let err = rt.stderr();
    assert!(
        !err.contains("panicked"),
        "ringterm panicked on an oversized handshake message: {err}"
    );
    let (how, got, _) = closed.unwrap();
    assert!(
        got.first() == Some(&0x15),
        "expected an alert before the close ({how:?}), got {got:02x?}"
    );
    let text = rt.wait_metric("ringterm_active", |n| n == 0);
    assert!(metric_sum(&text, "ringterm_handshake_failures_total") >= 1);
    rt.assert_alive();
}

/// (c) After the handshake, bytes that are not a valid record are written
/// straight onto the TCP socket: ringterm closes the connection (with an
/// alert) and keeps serving.
#[test]
fn corrupted_record_after_handshake() {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let mut rt = start_ringterm(&certs, echo.addr, &[]);
    for tls in [Tls::V13, Tls::V12] {
        let mut client = tls_connect(rt.addr(), certs.client_config(tls)).expect("TLS connect");
        // The connection works first.
        client.write_all(b"before").unwrap();
        client.flush().unwrap();
        let mut buf = [0u8; 6];
        client.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"before");
        // 100 bytes: an application-data record header, then garbage that
        // cannot authenticate.
        let mut raw = client.sock.try_clone().unwrap();
        let mut junk = vec![0x17, 0x03, 0x03, 0x00, 95];
        junk.extend(random_bytes(95));
        raw.write_all(&junk).unwrap();
        let (end, took) = tls_ends_within(&mut client, Duration::from_secs(3));
        assert_ne!(
            end,
            TlsEnd::CloseNotify,
            "{tls:?}: a broken record stream must not end cleanly"
        );
        eprintln!("{tls:?}: ended with {end:?} after {took:?}");
    }
    let text = rt.wait_metric("ringterm_connection_errors_total", |n| n >= 2);
    assert!(
        metric_sum(&text, "ringterm_alerts_sent_total") >= 2,
        "an alert should be sent for each bad record:\n{text}"
    );
    assert_echo(rt.addr(), certs.tls13(), &random_bytes(50_000));
    rt.assert_alive();
}

/// Sends `hello` one byte every 200 ms; returns how long until the server
/// cut the connection, or `None` if it was still open after `within`.
fn slowloris(addr: std::net::SocketAddr, hello: &[u8], within: Duration) -> Option<Duration> {
    let mut s = tcp_connect(addr);
    let start = Instant::now();
    for byte in hello.iter().cycle() {
        if start.elapsed() > within {
            return None;
        }
        if s.write_all(std::slice::from_ref(byte)).is_err() {
            return Some(start.elapsed());
        }
        thread::sleep(Duration::from_millis(200));
        s.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 1024];
        let r = s.read(&mut buf);
        s.set_nonblocking(false).unwrap();
        match r {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {} // an alert, maybe; the close follows
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    unreachable!()
}

/// (d) `--handshake-timeout 500`: a silent connection and a slowloris are
/// cut; a client that completes its handshake in time is unaffected, even
/// when its transfer runs long after the deadline would have passed.
#[test]
fn handshake_timeout() {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let mut rt = start_ringterm(&certs, echo.addr, &["--handshake-timeout", "500"]);
    let addr = rt.addr();
    let hello = client_hello_bytes(certs.tls13());

    thread::scope(|scope| {
        let silent = scope.spawn(|| {
            let mut s = tcp_connect(addr);
            wait_closed(&mut s, Duration::from_secs(3))
        });
        let slow = scope.spawn(|| slowloris(addr, &hello, Duration::from_secs(3)));
        let good = scope.spawn(|| {
            let payload = random_bytes(1024 * 1024);
            let client = TlsDuplex::connect(addr, certs.tls13()).expect("TLS connect in time");
            // Outlive the handshake deadline before sending anything.
            thread::sleep(Duration::from_millis(800));
            let (got, end) = echo_roundtrip(&client, &payload);
            assert_eq!(got.len(), payload.len(), "lost bytes ({end:?})");
            assert!(sha256(&got) == sha256(&payload), "corrupted bytes");
            assert_eq!(end, TlsEnd::CloseNotify);
        });

        let (how, _, took) = silent
            .join()
            .unwrap()
            .expect("a silent connection must be closed within 3 s");
        assert!(
            took >= Duration::from_millis(400),
            "closed after {took:?} ({how:?}), before the handshake timeout"
        );
        let took = slow
            .join()
            .unwrap()
            .expect("a slowloris ClientHello must be cut within 3 s");
        assert!(
            took >= Duration::from_millis(400),
            "slowloris cut after only {took:?}"
        );
        good.join().expect("the in-time client failed");
    });

    let text = rt.wait_metric(
        "ringterm_handshake_failures_total{reason=\"timeout\"}",
        |n| n >= 2,
    );
    assert_eq!(
        metric_sum(
            &text,
            "ringterm_handshakes_total{version=\"TLSv1.3\",resumed=\"false\"}"
        ),
        1
    );
    // A fresh normal client still works.
    assert_echo(addr, certs.tls12(), b"still serving");
    rt.assert_alive();
}

/// (e) `--connect-timeout 300` against a backend that drops SYNs: the
/// client's connection ends within the bound and the timeout is counted.
#[test]
fn connect_timeout() {
    let certs = TestCerts::generate();
    let hole = black_hole();
    let black_holed = connect_hangs(hole.addr, Duration::from_millis(300));
    let mut rt = start_ringterm(&certs, hole.addr, &["--connect-timeout", "300"]);
    let mut client = tls_connect(rt.addr(), certs.tls13()).expect("TLS connect");
    let (end, took) = tls_ends_within(&mut client, Duration::from_secs(3));
    assert!(took < Duration::from_secs(3), "took {took:?} ({end:?})");
    if black_holed {
        assert!(
            took >= Duration::from_millis(250),
            "ended after {took:?} ({end:?}), before the connect timeout"
        );
        rt.wait_metric("ringterm_backend_connect_timeouts_total", |n| n >= 1);
    } else {
        eprintln!("note: this kernel does not black-hole SYNs on a full accept queue");
        let text = rt.metrics();
        let n = metric_sum(&text, "ringterm_backend_connect_timeouts_total")
            + metric_sum(&text, "ringterm_backend_connect_failures_total");
        assert!(
            n >= 1,
            "neither a connect timeout nor failure counted:\n{text}"
        );
    }
    rt.assert_alive();
    drop(hole);
}
