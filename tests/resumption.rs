//! Session resumption: the per-core cache with cross-core sync, expiry, and
//! stateless tickets with rotation and shared key files. Every check is on
//! the client side: rustls reports whether the handshake was resumed.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use rustls::client::{Resumption, Tls12Resumption};
use rustls::{ClientConfig, HandshakeKind};

fn resuming(base: Arc<ClientConfig>, tls12: Tls12Resumption) -> Arc<ClientConfig> {
    let mut c = (*base).clone();
    c.resumption = Resumption::in_memory_sessions(64).tls12_resumption(tls12);
    Arc::new(c)
}

/// Connects, exchanges one echo round trip (so TLS 1.3 tickets arrive),
/// closes, and says how the handshake went.
fn connect_ping(addr: SocketAddr, config: &Arc<ClientConfig>) -> HandshakeKind {
    let mut s = tls_connect(addr, config.clone()).expect("tls connect");
    let kind = s.conn.handshake_kind().expect("handshake done");
    s.write_all(b"ping").unwrap();
    s.flush().unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    let _ = close_write(&mut s);
    kind
}

/// 200 sequential reconnections with `--workers 2`, each made after one
/// sync interval: every one must resume, whichever worker it lands on.
fn cross_core(tls: Tls, kind_metric: &str) {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let rt = start_ringterm(
        &certs,
        echo.addr,
        &["--workers", "2", "--session-sync-interval", "10"],
    );
    let config = resuming(certs.client_config(tls), Tls12Resumption::SessionIdOnly);
    assert_eq!(connect_ping(rt.addr(), &config), HandshakeKind::Full);
    let mut resumed = 0;
    for i in 0..200 {
        thread::sleep(Duration::from_millis(30));
        let kind = connect_ping(rt.addr(), &config);
        assert_eq!(
            kind,
            HandshakeKind::Resumed,
            "reconnection {i} was not resumed"
        );
        resumed += 1;
    }
    let text = rt.wait_metric(kind_metric, |n| n >= resumed);
    // Both workers took part: sessions really crossed cores.
    assert!(metric(&text, "ringterm_accepted_total", 0) > 0, "{text}");
    assert!(metric(&text, "ringterm_accepted_total", 1) > 0, "{text}");
    // Cross-core arrivals are counted by kind, and only under this kind.
    let (kind, other) = match tls {
        Tls::V12 => ("tls12_id", "tls13_stateful"),
        _ => ("tls13_stateful", "tls12_id"),
    };
    let arrivals = |k: &str| {
        let name = format!("ringterm_session_cache_remote_puts_total{{kind=\"{k}\"}}");
        metric_sum(&text, &name)
    };
    assert!(arrivals(kind) > 0, "no session crossed cores: {text}");
    assert_eq!(arrivals(other), 0, "{text}");
    assert_eq!(arrivals("unknown"), 0, "{text}");
}

#[test]
fn tls12_session_ids_resume_across_workers() {
    cross_core(
        Tls::V12,
        "ringterm_handshakes_resumed_total{kind=\"tls12_id\"}",
    );
}

#[test]
fn tls13_stateful_tickets_resume_across_workers() {
    cross_core(
        Tls::V13,
        "ringterm_handshakes_resumed_total{kind=\"tls13_stateful\"}",
    );
}

#[test]
fn expired_sessions_are_not_resumed() {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let rt = start_ringterm(
        &certs,
        echo.addr,
        &["--workers", "1", "--session-timeout", "1"],
    );
    let config = resuming(certs.tls12(), Tls12Resumption::SessionIdOnly);
    assert_eq!(connect_ping(rt.addr(), &config), HandshakeKind::Full);
    assert_eq!(connect_ping(rt.addr(), &config), HandshakeKind::Resumed);
    thread::sleep(Duration::from_millis(1300));
    assert_eq!(connect_ping(rt.addr(), &config), HandshakeKind::Full);
}

#[test]
fn tickets_survive_one_rotation_not_two() {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let rt = start_ringterm(
        &certs,
        echo.addr,
        &[
            "--workers",
            "1",
            "--resumption",
            "tickets",
            "--ticket-rotation",
            "2",
            "--log-level",
            "debug",
        ],
    );
    // Steps follow the rotations the server logs, not a clock: a loaded
    // machine can start the server late or slow a handshake down.
    let rotated = |n: u32| {
        assert!(
            rt.wait_log(Duration::from_secs(30), |m| m == "ticket keys rotated")
                .is_some(),
            "rotation {n} never came: {}",
            rt.stderr()
        );
    };
    rotated(1);
    // Two clients, each with its own ticket from the same key.
    let a = resuming(certs.tls13(), Tls12Resumption::SessionIdOrTickets);
    let b = resuming(certs.tls13(), Tls12Resumption::SessionIdOrTickets);
    assert_eq!(connect_ping(rt.addr(), &a), HandshakeKind::Full);
    assert_eq!(connect_ping(rt.addr(), &b), HandshakeKind::Full);
    // After one more rotation, the previous key still decrypts.
    rotated(2);
    assert_eq!(connect_ping(rt.addr(), &a), HandshakeKind::Resumed);
    // After two, the key is gone.
    rotated(3);
    assert_eq!(connect_ping(rt.addr(), &b), HandshakeKind::Full);
    let text = rt.wait_metric(
        "ringterm_handshakes_resumed_total{kind=\"tls13_ticket\"}",
        |n| n == 1,
    );
    assert!(
        metric_sum(
            &text,
            "ringterm_session_lookup_misses_total{kind=\"ticket\"}"
        ) >= 1,
        "{text}"
    );
}

#[test]
fn tls12_tickets_resume() {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let rt = start_ringterm(
        &certs,
        echo.addr,
        &["--workers", "2", "--resumption", "tickets"],
    );
    let config = resuming(certs.tls12(), Tls12Resumption::SessionIdOrTickets);
    assert_eq!(connect_ping(rt.addr(), &config), HandshakeKind::Full);
    // Stateless: no sync needed, any worker resumes at once.
    for _ in 0..20 {
        assert_eq!(connect_ping(rt.addr(), &config), HandshakeKind::Resumed);
    }
    let text = rt.wait_metric(
        "ringterm_handshakes_resumed_total{kind=\"tls12_ticket\"}",
        |n| n == 20,
    );
    assert_eq!(
        metric_sum(
            &text,
            "ringterm_handshakes_resumed_total{kind=\"tls12_id\"}"
        ),
        0
    );
    assert!(metric_sum(&text, "ringterm_session_lookup_hits_total{kind=\"ticket\"}") >= 20);
}

#[test]
fn two_processes_share_a_ticket_key_file() {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let key = certs.dir.path().join("ticket.key");
    std::fs::write(&key, random_bytes(80)).unwrap();
    let key = key.to_str().unwrap().to_owned();
    let args = [
        "--workers",
        "1",
        "--resumption",
        "tickets",
        "--ticket-key-file",
        &key,
    ];
    let a = start_ringterm(&certs, echo.addr, &args);
    let b = start_ringterm(&certs, echo.addr, &args);
    let config = resuming(certs.tls13(), Tls12Resumption::SessionIdOrTickets);
    assert_eq!(connect_ping(a.addr(), &config), HandshakeKind::Full);
    // A ticket from process A resumes on process B.
    assert_eq!(connect_ping(b.addr(), &config), HandshakeKind::Resumed);

    // Without the shared file, B would not know A's key.
    let c = start_ringterm(
        &certs,
        echo.addr,
        &["--workers", "1", "--resumption", "tickets"],
    );
    let fresh = resuming(certs.tls13(), Tls12Resumption::SessionIdOrTickets);
    assert_eq!(connect_ping(a.addr(), &fresh), HandshakeKind::Full);
    assert_eq!(connect_ping(c.addr(), &fresh), HandshakeKind::Full);
}

#[test]
fn bad_ticket_key_file_is_a_usage_error() {
    let certs = TestCerts::generate();
    let key = certs.dir.path().join("short.key");
    std::fs::write(&key, [7u8; 33]).unwrap();
    let key = key.to_str().unwrap().to_owned();
    let mut args = vec![
        "--listen".to_owned(),
        "127.0.0.1:0".into(),
        "--backend".into(),
        "127.0.0.1:9".into(),
        "--resumption".into(),
        "tickets".into(),
        "--ticket-key-file".into(),
        key.clone(),
    ];
    args.extend(certs.args());
    let out = run_to_exit(&args, Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(64), "{}", out.stderr);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", out.stderr);
    assert!(lines[0].contains(&key), "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"));
}

/// Rapid reconnections, with the periodic sync made irrelevant (one
/// minute): each handshake merges what other workers published first, so
/// even TLS 1.3's single-use stateful tickets resume on whichever core the
/// reconnection lands.
#[test]
fn rapid_reconnections_resume_across_workers_without_waiting() {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let rt = start_ringterm(
        &certs,
        echo.addr,
        &["--workers", "2", "--session-sync-interval", "60000"],
    );
    for tls in [Tls::V13, Tls::V12] {
        let config = resuming(certs.client_config(tls), Tls12Resumption::SessionIdOnly);
        assert_eq!(connect_ping(rt.addr(), &config), HandshakeKind::Full);
        for i in 0..100 {
            let kind = connect_ping(rt.addr(), &config);
            assert_eq!(kind, HandshakeKind::Resumed, "{tls:?} reconnection {i}");
        }
    }
    let text = rt.wait_metric("ringterm_accepted_total", |n| n >= 1);
    assert!(metric(&text, "ringterm_accepted_total", 0) > 0, "{text}");
    assert!(metric(&text, "ringterm_accepted_total", 1) > 0, "{text}");
}

/// SIGHUP re-reads the key files: new tickets use the new key; a reload
/// that fails keeps the keys in use and says so on one log line.
#[test]
fn sighup_reloads_ticket_keys_and_keeps_them_on_error() {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let file = certs.dir.path().join("reload.key");
    let k1 = random_bytes(80);
    let k2 = random_bytes(80);
    std::fs::write(&file, &k1).unwrap();
    let path = file.to_str().unwrap().to_owned();
    let args = [
        "--workers",
        "1",
        "--resumption",
        "tickets",
        "--ticket-key-file",
        &path,
    ];
    let a = start_ringterm(&certs, echo.addr, &args);

    // A ticket under k1.
    let old = resuming(certs.tls13(), Tls12Resumption::SessionIdOrTickets);
    assert_eq!(connect_ping(a.addr(), &old), HandshakeKind::Full);

    // Swap the file to k2 and reload.
    std::fs::write(&file, &k2).unwrap();
    let pid = a.child.id();
    send_signal(pid, "HUP");
    // A process that only knows k2.
    let b = start_ringterm(&certs, echo.addr, &args);
    let new = resuming(certs.tls13(), Tls12Resumption::SessionIdOrTickets);
    assert!(
        eventually(Duration::from_secs(5), || {
            let fresh = resuming(certs.tls13(), Tls12Resumption::SessionIdOrTickets);
            connect_ping(a.addr(), &fresh);
            connect_ping(b.addr(), &fresh) == HandshakeKind::Resumed
        }),
        "after SIGHUP, process A still issues tickets under the old key"
    );
    // The k1 ticket means nothing to B.
    assert_eq!(connect_ping(b.addr(), &old), HandshakeKind::Full);

    // A broken file: the reload fails, A keeps k2.
    assert_eq!(connect_ping(a.addr(), &new), HandshakeKind::Full);
    std::fs::write(&file, b"short").unwrap();
    send_signal(pid, "HUP");
    assert!(
        eventually(Duration::from_secs(5), || a
            .stderr()
            .contains("reload failed")),
        "no log line for the failed reload: {}",
        a.stderr()
    );
    assert_eq!(connect_ping(a.addr(), &new), HandshakeKind::Resumed);
    assert_eq!(connect_ping(b.addr(), &new), HandshakeKind::Resumed);
}

/// Runs `openssl s_client` with `flags`, sends a line through the echo
/// backend and waits for it (so TLS 1.3 tickets, which precede the
/// response, have arrived), then kills it. Returns its stdout: the
/// handshake summary ("New, ..." or "Reused, ...") and the echo.
fn s_client(addr: SocketAddr, flags: &[&str]) -> String {
    use std::process::{Command, Stdio};
    let line = "ping-resumption\n";
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string()])
        .args(["-servername", "localhost"])
        .args(flags)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_client (CI installs openssl)");
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(line.as_bytes()).unwrap();
    stdin.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut out = Vec::new();
    while !String::from_utf8_lossy(&out).contains(line) {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(chunk) => out.extend(chunk),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = String::from_utf8_lossy(&out).into_owned();
    assert!(text.contains(line), "s_client {flags:?}: no echo: {text}");
    text
}

/// The ticket lifetime hint of a session file `openssl s_client -sess_out`
/// wrote, as `openssl sess_id -text` prints it.
fn lifetime_hint(sess: &std::path::Path) -> Option<u64> {
    let out = std::process::Command::new("openssl")
        .args(["sess_id", "-noout", "-text", "-in"])
        .arg(sess)
        .output()
        .expect("openssl sess_id");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains("lifetime hint:"))?;
    line.split("lifetime hint:")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A session (or ticket) made by a first connection, then `reuses`
/// reconnections offering it: whether each was resumed, and the lifetime
/// hint the first one got.
fn openssl_sessions(addr: SocketAddr, version: &str, reuses: usize) -> (Option<u64>, Vec<bool>) {
    let dir = tempfile::tempdir().unwrap();
    let sess = dir.path().join("sess.pem");
    let sess = sess.to_str().unwrap();
    let first = s_client(addr, &[version, "-sess_out", sess]);
    assert!(first.contains("New, "), "{first}");
    let hint = lifetime_hint(std::path::Path::new(sess));
    let reused = (0..reuses)
        .map(|_| s_client(addr, &[version, "-sess_in", sess]).contains("Reused, "))
        .collect();
    (hint, reused)
}

#[test]
fn tls13_stateful_tickets_advertise_the_session_timeout_and_stay_single_use() {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let rt = start_ringterm(&certs, echo.addr, &["--session-timeout", "123"]);
    let (hint, reused) = openssl_sessions(rt.addr(), "-tls1_3", 2);
    assert_eq!(hint, Some(123), "rustls's own stateful tickets say 86400");
    assert_eq!(reused, [true, false], "a stateful ticket resumes once");
    let text = rt.wait_metric(
        "ringterm_handshakes_resumed_total{kind=\"tls13_stateful\"}",
        |n| n == 1,
    );
    // Through the cache, not counted as stateless tickets.
    assert_eq!(
        metric_sum(
            &text,
            "ringterm_handshakes_resumed_total{kind=\"tls13_ticket\"}"
        ),
        0
    );
    assert_eq!(
        metric_sum(&text, "ringterm_session_tickets_issued_total"),
        0
    );
    assert!(
        metric_sum(
            &text,
            "ringterm_session_lookup_hits_total{kind=\"tls13_stateful\"}"
        ) >= 1
    );
}

#[test]
fn stateless_tls13_tickets_advertise_the_session_timeout() {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let rt = start_ringterm(
        &certs,
        echo.addr,
        &["--session-timeout", "77", "--resumption", "tickets"],
    );
    let (hint, reused) = openssl_sessions(rt.addr(), "-tls1_3", 1);
    assert_eq!(hint, Some(77));
    assert_eq!(reused, [true]);
}

/// With the stateful ticketer installed, rustls acknowledges a TLS 1.2
/// client's session ticket extension and sends an empty NewSessionTicket
/// (RFC 5077 §3.3); the session ID is still stored and resumes, any number
/// of times, for OpenSSL and for a rustls client that asks for tickets.
#[test]
fn tls12_session_ids_resume_when_the_client_asks_for_tickets() {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let rt = start_ringterm(&certs, echo.addr, &[]);
    let (_, reused) = openssl_sessions(rt.addr(), "-tls1_2", 3);
    assert_eq!(reused, [true, true, true]);

    let config = resuming(certs.tls12(), Tls12Resumption::SessionIdOrTickets);
    assert_eq!(connect_ping(rt.addr(), &config), HandshakeKind::Full);
    for _ in 0..5 {
        assert_eq!(connect_ping(rt.addr(), &config), HandshakeKind::Resumed);
    }
    let text = rt.wait_metric(
        "ringterm_handshakes_resumed_total{kind=\"tls12_id\"}",
        |n| n == 8,
    );
    assert_eq!(
        metric_sum(
            &text,
            "ringterm_handshakes_resumed_total{kind=\"tls12_ticket\"}"
        ),
        0
    );
    assert_eq!(
        metric_sum(&text, "ringterm_session_tickets_issued_total"),
        0
    );
}
