//! Heap an established, idle TLS session holds, with the own record layer
//! and with rustls's: a counting global allocator (this test binary only)
//! measures the session's allocations over the handshake, minus the output
//! buffers (the runtime's). Prints the figures (`--nocapture`) and checks
//! the own layer's bound.

use std::sync::Arc;

use ringterm::record::fuzz::{self, configs};
use ringterm::tls::TlsSession;
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, ServerConfig};

/// Heap held by an established, idle session: counted with a counting
/// allocator over the hand-over (bytes allocated minus bytes freed while
/// building and handshaking the session; the client's own allocations are
/// made outside the counted windows). Printed for the notes; checked
/// against a bound.
#[test]
fn idle_session_heap_own_vs_rustls() {
    let mut figures = Vec::new();
    for own in [true, false] {
        for suite in [fuzz::SUITES[0], fuzz::SUITES[3]] {
            let (server, client) = configs(suite);
            let mut server = ServerConfig::clone(&server);
            server.enable_secret_extraction = own;
            let server = Arc::new(server);
            let mut client =
                ClientConnection::new(Arc::new(client), ServerName::try_from("localhost").unwrap())
                    .unwrap();
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
                let (mut tc, mut tb) = (Vec::new(), Vec::new());
                let start = counting::live();
                session.handle_ciphertext(&wire, &mut tc, &mut tb).unwrap();
                let grew = counting::live() - start;
                held += grew;
                // The output buffers are the runtime's, not the session's.
                held -= (tc.capacity() + tb.capacity()) as isize;
                let mut rd = &tc[..];
                while !rd.is_empty() {
                    client.read_tls(&mut rd).unwrap();
                    client.process_new_packets().unwrap();
                }
            }
            assert!(session.is_established());
            assert_eq!(session.is_own_record_layer(), own);
            figures.push((suite, own, held));
        }
    }
    for (suite, own, held) in &figures {
        eprintln!(
            "idle session heap: {suite} {}: {held} bytes",
            if *own { "own" } else { "rustls" }
        );
    }
    for (suite, own, held) in figures {
        if own {
            assert!(held < 3000, "{suite}: {held} bytes held with the own layer");
        }
    }
}

/// A counting global allocator for the test binary (live bytes).
mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    thread_local! {
        static LIVE: std::cell::Cell<isize> = const { std::cell::Cell::new(0) };
    }

    /// Live bytes allocated by this thread (frees are counted on the
    /// thread that frees).
    pub fn live() -> isize {
        LIVE.with(|l| l.get())
    }

    struct Counting;

    // SAFETY: forwards every call to the system allocator unchanged; the
    // counter is a thread-local cell (`try_with`: never during TLS
    // teardown).
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let _ = LIVE.try_with(|l| l.set(l.get() + layout.size() as isize));
            // SAFETY: same contract as ours.
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            let _ = LIVE.try_with(|l| l.set(l.get() - layout.size() as isize));
            // SAFETY: same contract as ours.
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
            let _ = LIVE.try_with(|l| l.set(l.get() + new as isize - layout.size() as isize));
            // SAFETY: same contract as ours.
            unsafe { System.realloc(ptr, layout, new) }
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;
}
