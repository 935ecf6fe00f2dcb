//! Backpressure: ringterm never reads more from one side than the other side
//! has taken, so a peer that stops reading cannot make it buffer without
//! bound. Each test pushes far more data than kernel socket buffers hold and
//! checks that the pusher gets stuck and ringterm's RSS stays flat.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// What the pusher tries to send: far beyond every buffer on the path.
const PUSH: usize = 256 << 20;
/// RSS growth we accept (ringterm's two relay buffers per direction are
/// at most 64 KiB each; the rest is allocator slack).
const MAX_GROWTH_KB: u64 = 8 * 1024;

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Writes `chunk` repeatedly until a write stalls for `stall` or `total`
/// bytes went out. Returns the bytes written.
fn push_until_stuck(
    mut write: impl FnMut(&[u8]) -> std::io::Result<usize>,
    stall: Duration,
) -> usize {
    let chunk = random_bytes(64 * 1024);
    let mut sent = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while sent < PUSH && Instant::now() < deadline {
        let t = Instant::now();
        match write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => break, // the write timed out: the path is full
        }
        if t.elapsed() >= stall {
            break;
        }
    }
    sent
}

#[test]
fn backend_that_never_reads_stops_the_client() {
    let certs = TestCerts::generate();
    // A backend that accepts and then never reads, for up to 30 s.
    let backend = spawn_backend(|s: TcpStream| {
        thread::sleep(Duration::from_secs(30));
        drop(s);
    });
    let mut rt = start_ringterm(&certs, backend, &[]);
    let pid = rt.child.id();

    let mut s = tls_connect(rt.addr(), certs.tls13()).unwrap();
    s.sock
        .set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let before = rss_kb(pid);
    let sent = push_until_stuck(|b| s.write(b), Duration::from_millis(400));
    let after = rss_kb(pid);
    eprintln!("client pushed {sent} bytes before stalling; ringterm RSS {before} -> {after} KB");
    assert!(
        sent < PUSH,
        "the client pushed all {PUSH} bytes into a backend that never reads"
    );
    assert!(
        after.saturating_sub(before) < MAX_GROWTH_KB,
        "ringterm grew from {before} KB to {after} KB after {sent} bytes"
    );
    // Still serving others.
    rt.assert_alive();
}

#[test]
fn client_that_never_reads_stops_the_backend() {
    let certs = TestCerts::generate();
    // A backend that floods the connection and reports how much it managed
    // to write before a write stalled.
    let (tx, rx) = mpsc::channel::<usize>();
    let tx = Arc::new(std::sync::Mutex::new(tx));
    let backend = spawn_backend(move |mut s: TcpStream| {
        s.set_write_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let sent = push_until_stuck(|b| s.write(b), Duration::from_millis(400));
        let _ = tx.lock().unwrap().send(sent);
        thread::sleep(Duration::from_secs(5));
    });
    let mut rt = start_ringterm(&certs, backend, &[]);
    let pid = rt.child.id();
    let before = rss_kb(pid);

    // Complete the handshake (so ringterm connects to the backend), then
    // never read.
    let s = tls_connect(rt.addr(), certs.tls13()).unwrap();
    let sent = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("backend reports how much it sent");
    let after = rss_kb(pid);
    eprintln!("backend pushed {sent} bytes before stalling; ringterm RSS {before} -> {after} KB");
    assert!(
        sent < PUSH,
        "the backend pushed all {PUSH} bytes toward a client that never reads"
    );
    assert!(
        after.saturating_sub(before) < MAX_GROWTH_KB,
        "ringterm grew from {before} KB to {after} KB after {sent} bytes"
    );
    drop(s);
    rt.assert_alive();
}
