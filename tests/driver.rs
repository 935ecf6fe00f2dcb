//! The per-core io_uring driver under stress: the provided-buffer ring run
//! dry, a completion queue smaller than the ops in flight, cancels at close
//! while fd numbers are reused, and the kernel probe's failure path.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::*;

/// More readers than read buffers (one buffer per worker): reads that find
/// the ring empty are counted and submitted again; every byte arrives.
#[test]
fn buffer_ring_exhaustion_loses_nothing() {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let rt = start_ringterm(
        &certs,
        echo.addr,
        &["--read-buffers", "1", "--buffer-size", "4096"],
    );
    let addr = rt.addr();
    let payload = random_bytes(300 * 1024);
    thread::scope(|s| {
        for _ in 0..12 {
            let payload = &payload;
            let config = certs.tls13();
            s.spawn(move || assert_echo(addr, config, payload));
        }
    });
    let m = rt.metrics();
    assert!(
        metric_sum(&m, "ringterm_recv_enobufs_total") > 0,
        "the ring never ran dry: the test did not test it"
    );
    assert_eq!(metric_sum(&m, "ringterm_connection_errors_total"), 0);
}

/// A submission queue of 8 (a completion queue of 32) under 64 concurrent
/// connections: more completions than fit at once. Every echo is intact.
#[test]
fn small_rings_under_many_connections() {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let rt = start_ringterm(&certs, echo.addr, &["--ring-entries", "8"]);
    let addr = rt.addr();
    let payload = random_bytes(64 * 1024);
    thread::scope(|s| {
        for _ in 0..64 {
            let payload = &payload;
            let config = certs.tls13();
            s.spawn(move || assert_echo(addr, config, payload));
        }
    });
    let m = rt.metrics();
    assert_eq!(metric_sum(&m, "ringterm_connection_errors_total"), 0);
    assert_eq!(metric_sum(&m, "ringterm_ring_submit_errors_total"), 0);
}

/// Connections cut by the idle deadline (their ops cancelled by
/// `user_data`, their fds closed) while new connections keep arriving and
/// get the same fd numbers: no cancel and no completion reaches a new
/// connection, whose echoes stay intact.
#[test]
fn cancels_at_close_never_reach_a_reused_fd() {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let rt = start_ringterm(&certs, echo.addr, &["--idle-timeout", "300"]);
    let addr = rt.addr();
    let payload = random_bytes(32 * 1024);
    for _round in 0..3 {
        // Idle connections with reads in flight on both sides.
        let idle: Vec<TlsDuplex> = (0..20)
            .map(|_| {
                let c = TlsDuplex::connect(addr, certs.tls13()).unwrap();
                c.write_all(b"x").unwrap();
                c
            })
            .collect();
        // While their deadlines fire, fresh connections churn through
        // fd numbers.
        thread::scope(|s| {
            for _ in 0..4 {
                let payload = &payload;
                let certs = &certs;
                s.spawn(move || {
                    for _ in 0..10 {
                        assert_echo(addr, certs.tls13(), payload);
                    }
                });
            }
        });
        thread::sleep(Duration::from_millis(500));
        drop(idle);
    }
    let m = rt.metrics();
    assert!(metric_sum(&m, "ringterm_idle_timeouts_total") >= 20);
    assert_eq!(metric_sum(&m, "ringterm_cancel_failures_total"), 0);
}

/// A kernel without a required io_uring feature: the process ends with one
/// line naming it and the kernel that has it (forced through the probe's
/// test override).
#[test]
fn missing_kernel_feature_is_one_line() {
    let certs = TestCerts::generate();
    let mut args: Vec<String> = vec![
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--backend".into(),
        "127.0.0.1:9".into(),
        "--workers".into(),
        "1".into(),
    ];
    args.extend(certs.args());
    let out = {
        std::env::set_var("RINGTERM_TEST_PROBE_MISSING", "IORING_OP_SOCKET");
        let out = run_to_exit(&args, Duration::from_secs(10));
        std::env::remove_var("RINGTERM_TEST_PROBE_MISSING");
        out
    };
    assert!(!out.status.success());
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("IORING_OP_SOCKET"))
        .collect();
    assert_eq!(lines.len(), 1, "{}", out.stderr);
    assert!(lines[0].contains("5.19"), "{}", lines[0]);
}

/// Completion batching (a wait also waits for send completions expected
/// at once) never holds a connection up: one client stops reading while
/// the backend floods it, so ringterm's sends to it stop completing, and
/// another connection on the same worker still gets every one of its 300
/// round trips, each answered (a wait stuck on the stalled send would hang
/// this test).
#[test]
fn a_stalled_send_holds_up_no_other_connection() {
    let certs = TestCerts::generate();
    let backend = spawn_backend(|mut s: TcpStream| {
        let mut first = [0u8; 5];
        if s.read_exact(&mut first).is_err() {
            return;
        }
        if &first == b"FLOOD" {
            let chunk = vec![7u8; 64 * 1024];
            let _ = s.set_write_timeout(Some(Duration::from_secs(20)));
            while s.write_all(&chunk).is_ok() {}
            return;
        }
        if s.write_all(&first).is_err() {
            return;
        }
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let rt = start_ringterm(&certs, backend, &[]);
    let mut stalled = tls_connect(rt.addr(), certs.tls13()).expect("TLS connect");
    stalled.write_all(b"FLOOD").unwrap();
    stalled.flush().unwrap();
    // Let the flood fill the socket buffers toward the stalled client.
    let mut last = 0;
    assert!(
        eventually(Duration::from_secs(20), || {
            let now = metric_sum(&rt.metrics(), "ringterm_bytes_to_clients_total");
            let settled = now > 256 * 1024 && now == last;
            last = now;
            if !settled {
                thread::sleep(Duration::from_millis(100));
            }
            settled
        }),
        "ringterm's sends to the client that does not read never stopped"
    );
    let mut c = tls_connect(rt.addr(), certs.tls13()).expect("TLS connect");
    c.sock
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    for i in 0..300u32 {
        let msg = format!("ping {i:05}");
        c.write_all(msg.as_bytes()).unwrap();
        c.flush().unwrap();
        let mut got = vec![0u8; msg.len()];
        c.read_exact(&mut got).expect("the round trip is answered");
        assert_eq!(got, msg.as_bytes());
    }
    let m = rt.metrics();
    eprintln!(
        "batched waits {}, of which cut short {}",
        metric_sum(&m, "ringterm_ring_batch_waits_total"),
        metric_sum(&m, "ringterm_ring_batch_short_total")
    );
    assert!(
        metric_sum(&m, "ringterm_ring_batch_waits_total") > 0,
        "no wait was batched: the test did not test it"
    );
    assert_eq!(metric_sum(&m, "ringterm_connection_errors_total"), 0);
    drop(stalled);
}

/// A kernel that refuses `TCP_NODELAY` as an io_uring op (before 6.7,
/// forced through the probe's test override): one log line, then
/// `setsockopt(2)`, and the connections work.
#[test]
fn io_uring_setsockopt_refused_falls_back() {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let mut cmd = std::process::Command::new(bin());
    cmd.env("RINGTERM_TEST_PROBE_MISSING", "SOCKET_URING_OP_SETSOCKOPT")
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--workers",
            "1",
        ])
        .args(["--backend", &echo.addr.to_string()])
        .args(certs.args());
    let rt = Ringterm::spawn_until(cmd, |line| line.starts_with("ready"));
    let payload = random_bytes(100 * 1024);
    for _ in 0..3 {
        assert_echo(rt.addr(), certs.tls13(), &payload);
    }
    let lines = rt.stderr();
    let n = lines
        .lines()
        .filter(|l| l.contains("io_uring setsockopt unavailable"))
        .count();
    assert_eq!(n, 1, "{lines}");
    assert_eq!(
        metric_sum(&rt.metrics(), "ringterm_connection_errors_total"),
        0
    );
}

/// Backend bytes are sealed where the read-buffer ring received them and
/// written to the client from there (counted). Clients that do not read
/// hold such buffers in their writes, but at most half of the ring: a
/// client that reads still gets its response while they wait, and then
/// every byte reaches every client intact, with TLS 1.2 and 1.3.
#[test]
fn lent_read_buffers_carry_responses_and_slow_readers_never_starve_the_ring() {
    let certs = TestCerts::generate();
    let payload = Arc::new(random_bytes(3 << 20));
    let (backend, _received) = source_backend(payload.clone());
    let rt = start_ringterm(
        &certs,
        backend,
        &["--read-buffers", "4", "--buffer-size", "65536"],
    );
    let addr = rt.addr();
    for config in [certs.tls13(), certs.tls12()] {
        // Six clients that do not read yet: their responses stall in
        // writes, more than the ring could lend.
        let slow: Vec<_> = (0..6)
            .map(|_| tls_connect(addr, config.clone()).expect("TLS connect"))
            .collect();
        thread::sleep(Duration::from_millis(500));
        // One that reads gets all of it meanwhile.
        let mut fast = tls_connect(addr, config.clone()).expect("TLS connect");
        fast.sock
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let (got, end) = tls_read_to_end(&mut fast);
        assert_eq!(end, TlsEnd::CloseNotify);
        assert!(
            sha256(&got) == sha256(&payload),
            "the reading client's bytes"
        );
        for mut s in slow {
            s.sock
                .set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            let (got, end) = tls_read_to_end(&mut s);
            assert_eq!(end, TlsEnd::CloseNotify);
            assert_eq!(got.len(), payload.len());
            assert!(sha256(&got) == sha256(&payload), "a slow client's bytes");
        }
    }
    let m = rt.metrics();
    assert!(
        metric_sum(&m, "ringterm_lent_sends_total") > 0,
        "no write went out from a lent buffer"
    );
    assert_eq!(metric_sum(&m, "ringterm_connection_errors_total"), 0);
}

/// Sends `rounds` small messages one at a time, each read back whole from
/// the echo backend before the next (keep-alive ping-pong).
fn ping_pong(addr: std::net::SocketAddr, config: Arc<rustls::ClientConfig>, rounds: usize) {
    let c = TlsDuplex::connect(addr, config).expect("TLS connect");
    let mut buf = [0u8; 256];
    for i in 0..rounds {
        let msg = [(i % 251) as u8; 100];
        c.write_all(&msg).unwrap();
        let mut got = 0;
        while got < msg.len() {
            let n = c.read(&mut buf[got..msg.len()]).unwrap();
            assert!(n > 0, "EOF in round {i}");
            got += n;
        }
        assert_eq!(&buf[..msg.len()], &msg[..], "round {i}");
    }
}

/// The running kernel's (major, minor) version.
fn kernel_version() -> (u32, u32) {
    let r = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut it = r.trim().split(['.', '-']).map(|p| p.parse().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// Completion coalescing (`--coalesce-usec`): one connection's ping-pong
/// never waits for more; many connections at once do (Linux 6.12+, where
/// `min_wait_usec` exists), and every echo stays intact either way.
#[test]
fn waits_coalesce_under_load_and_never_for_one_connection() {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let rt = start_ringterm(&certs, echo.addr, &[]);
    let addr = rt.addr();
    ping_pong(addr, certs.tls13(), 300);
    assert_eq!(
        metric_sum(&rt.metrics(), "ringterm_ring_coalesced_waits_total"),
        0,
        "one connection's ping-pong waited for more"
    );
    thread::scope(|s| {
        for _ in 0..48 {
            let config = certs.tls13();
            s.spawn(move || ping_pong(addr, config, 300));
        }
    });
    let m = rt.metrics();
    assert_eq!(metric_sum(&m, "ringterm_connection_errors_total"), 0);
    if kernel_version() >= (6, 12) {
        assert!(
            metric_sum(&m, "ringterm_ring_coalesced_waits_total") > 0,
            "48 connections at once never coalesced a wait"
        );
    }
}
