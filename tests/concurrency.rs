//! Many concurrent connections over two workers: every byte arrives intact,
//! and SO_REUSEPORT spreads the connections over both workers.

mod common;

use std::sync::{Arc, Barrier};
use std::thread;

use common::*;

const CONNS: usize = 200;
const PAYLOAD: usize = 64 * 1024;

#[test]
fn two_hundred_concurrent_connections_over_two_workers() {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let cpus = thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut extra = vec!["--workers", "2"];
    if cpus >= 2 {
        extra.extend(["--cpus", "0,1"]);
    }
    let mut rt = start_ringterm(&certs, echo.addr, &extra);
    let addr = rt.addr();
    let config = certs.client_config(Tls::Any);
    let barrier = Arc::new(Barrier::new(CONNS));

    let handles: Vec<_> = (0..CONNS)
        .map(|i| {
            let config = config.clone();
            let barrier = barrier.clone();
            thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    let payload = random_bytes(PAYLOAD);
                    // Open every connection before any sends, so all 200 are
                    // open at once.
                    let client = TlsDuplex::connect(addr, config);
                    barrier.wait();
                    let client = client.unwrap_or_else(|e| panic!("conn {i}: connect: {e}"));
                    let (got, end) = echo_roundtrip(&client, &payload);
                    if got.len() != PAYLOAD || sha256(&got) != sha256(&payload) {
                        return Err(format!(
                            "conn {i}: got {} bytes (sha {}), sent {PAYLOAD} (sha {}), end {end:?}",
                            got.len(),
                            hex(&sha256(&got)),
                            hex(&sha256(&payload))
                        ));
                    }
                    if end != TlsEnd::CloseNotify {
                        return Err(format!("conn {i}: ended with {end:?}"));
                    }
                    Ok(())
                })
                .unwrap()
        })
        .collect();
    let failures: Vec<String> = handles
        .into_iter()
        .filter_map(|h| h.join().expect("client thread panicked").err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} connections failed: {failures:#?}",
        failures.len()
    );
    assert_eq!(
        echo.bytes.load(std::sync::atomic::Ordering::Relaxed),
        (CONNS * PAYLOAD) as u64
    );

    let text = rt.wait_metric("ringterm_active", |n| n == 0);
    assert_eq!(worker_count(&text), 2, "two workers expected:\n{text}");
    let w0 = metric(&text, "ringterm_accepted_total", 0);
    let w1 = metric(&text, "ringterm_accepted_total", 1);
    assert_eq!(w0 + w1, CONNS as u64, "accepted per worker: {w0} + {w1}");
    assert!(w0 > 0 && w1 > 0, "both workers should accept: {w0} / {w1}");
    let handshakes = metric_sum(
        &text,
        "ringterm_handshakes_total{version=\"TLSv1.3\",resumed=\"false\"}",
    ) + metric_sum(
        &text,
        "ringterm_handshakes_total{version=\"TLSv1.2\",resumed=\"false\"}",
    );
    assert_eq!(handshakes, CONNS as u64);
    assert_eq!(metric_sum(&text, "ringterm_handshake_failures_total"), 0);
    assert_eq!(metric_sum(&text, "ringterm_connection_errors_total"), 0);
    rt.assert_alive();
}
