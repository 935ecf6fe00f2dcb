//! Heap an established, idle TLS session holds, with the own record layer
//! and with rustls's: the malloc heap in use (`mallinfo2`, which sees
//! aws-lc's allocations too) over the session's construction and
//! handshake steps, minus the output buffers (the runtime's). Prints the
//! figures (`--nocapture`) and checks the own layer's bound.

use std::sync::Arc;

use ringterm::record::fuzz::{self, configs};
use ringterm::tls::TlsSession;
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, ServerConfig};

/// Heap held by an established, idle session: bytes in use after minus
/// before, over the windows where the session runs (the client's own
/// allocations are made outside them). Printed for the notes; checked
/// against a bound.
#[test]
fn idle_session_heap_own_vs_rustls() {
    // glibc's per-thread cache keeps freed small chunks counted as in use:
    // measure in a child process with it off.
    const TUNABLE: &str = "glibc.malloc.tcache_count=0";
    if std::env::var("GLIBC_TUNABLES").as_deref() != Ok(TUNABLE) {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "idle_session_heap_own_vs_rustls", "--nocapture"])
            .env("GLIBC_TUNABLES", TUNABLE)
            .output()
            .unwrap();
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "the measuring child failed");
        return;
    }
    let mut figures = Vec::new();
    // A first round warms up what is allocated once per process (aws-lc's
    // and rustls's lazy statics); the second is measured.
    for own in [true, false, true, false] {
        for suite in [fuzz::SUITES[0], fuzz::SUITES[3]] {
            let (server, client) = configs(suite);
            let mut server = ServerConfig::clone(&server);
            server.enable_secret_extraction = own;
            let server = Arc::new(server);
            let mut client =
                ClientConnection::new(Arc::new(client), ServerName::try_from("localhost").unwrap())
                    .unwrap();
            // The runtime's buffers, allocated outside the measured
            // windows, big enough never to grow inside them.
            let mut rx: Vec<u8> = Vec::with_capacity(1 << 16);
            let mut tc: Vec<u8> = Vec::with_capacity(1 << 16);
            let mut tb: Vec<u8> = Vec::with_capacity(1 << 16);
            let before = counting::live();
            let mut session = Box::new(TlsSession::new(server).unwrap());
            let mut held = counting::live() - before;
            for _ in 0..20 {
                let mut wire = Vec::new();
                while client.wants_write() {
                    client.write_tls(&mut wire).unwrap();
                }
                if wire.is_empty() {
                    break;
                }
                tc.clear();
                tb.clear();
                let start = counting::live();
                session.prepare_read(&mut rx, wire.len());
                rx.extend_from_slice(&wire);
                session.handle_read(&mut rx, &mut tc, &mut tb).unwrap();
                held += counting::live() - start;
                assert_eq!(rx.capacity(), 1 << 16, "the read buffer came back");
                assert_eq!(tc.capacity(), 1 << 16);
                let mut rd = &tc[..];
                while !rd.is_empty() {
                    client.read_tls(&mut rd).unwrap();
                    client.process_new_packets().unwrap();
                }
            }
            assert!(session.is_established());
            assert_eq!(session.is_own_record_layer(), own);
            // A quiet connection's record layer lets its AEAD contexts go.
            let start = counting::live();
            session.hibernate();
            let hibernated = held + counting::live() - start;
            figures.push((suite, own, held, hibernated));
            drop(session);
        }
    }
    let figures = figures.split_off(4);
    for (suite, own, held, hibernated) in &figures {
        eprintln!(
            "idle session heap: {suite} {}: {held} bytes, {hibernated} hibernated",
            if *own { "own" } else { "rustls" }
        );
    }
    for (i, (suite, own, held, hibernated)) in figures.iter().enumerate() {
        if *own {
            let (_, _, rustls, _) = figures[i + 2];
            assert!(
                *held < 3000,
                "{suite}: {held} bytes held with the own layer"
            );
            assert!(*held < rustls, "{suite}: own {held} >= rustls {rustls}");
            assert!(
                *hibernated < 1500,
                "{suite}: {hibernated} bytes held hibernating"
            );
        } else {
            assert_eq!(
                held, hibernated,
                "{suite}: rustls's layer does not hibernate"
            );
        }
    }
}

/// Bytes in use in the malloc heap (glibc `mallinfo2`): counts Rust's
/// allocations and aws-lc's own (its AEAD contexts) alike. This test binary
/// holds a single test, so no other thread allocates meanwhile.
mod counting {
    pub fn live() -> isize {
        // SAFETY: mallinfo2 only reads the allocator's statistics.
        let info = unsafe { libc::mallinfo2() };
        info.uordblks as isize
    }
}
