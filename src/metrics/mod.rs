//! Per-worker counters and their Prometheus rendering.
//!
//! Each worker owns one [`WorkerCounters`] and is its only writer; the admin
//! endpoint only reads. Increments are a relaxed load and store (single
//! writer), so the hot path pays no locked instruction and takes no lock.
//! Sans-IO: rendering takes the counters and returns text.

#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A counter with one writer thread and any number of readers.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Call only from the owning worker's thread.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    /// Adds one. Call only from the owning worker's thread.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Subtracts one (for gauges). Call only from the owning worker's thread.
    #[inline]
    pub fn dec(&self) {
        self.0.store(self.0.load(Relaxed).wrapping_sub(1), Relaxed);
    }

    /// Sets the value (for figures copied from a worker-owned structure).
    /// Call only from the owning worker's thread.
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Relaxed);
    }

    /// Reads the current value from any thread.
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

macro_rules! counters {
    ($($(#[doc = $doc:literal])* $name:ident : $kind:literal,)*) => {
        /// Counters of one worker.
        #[derive(Debug, Default)]
        pub struct WorkerCounters {
            $($(#[doc = $doc])* pub $name: Counter,)*
        }

        impl WorkerCounters {
            /// `(name, kind, help, value)` for every counter.
            pub fn snapshot(&self) -> Vec<(&'static str, &'static str, &'static str, u64)> {
                vec![$((stringify!($name), $kind, concat!($($doc),*), self.$name.get()),)*]
            }
        }
    };
}

counters! {
    /// Connections accepted.
    accepted: "counter",
    /// Connections currently open.
    active: "gauge",
    /// Accept errors (EMFILE, ENFILE, ...).
    accept_errors: "counter",
    /// Full TLS 1.3 handshakes completed.
    handshakes_tls13: "counter",
    /// Full TLS 1.2 handshakes completed.
    handshakes_tls12: "counter",
    /// Resumed handshakes completed.
    handshakes_resumed: "counter",
    /// Handshakes that failed (bad input, alert, EOF).
    handshake_failures: "counter",
    /// Handshakes cut by the handshake timeout.
    handshake_timeouts: "counter",
    /// Fatal alerts sent to clients.
    alerts_sent: "counter",
    /// Backend connects that failed.
    backend_connect_failures: "counter",
    /// Backend connects cut by the connect timeout.
    backend_connect_timeouts: "counter",
    /// Connections ended by an IO or TLS error after the handshake.
    connection_errors: "counter",
    /// Ciphertext bytes read from clients.
    bytes_from_clients: "counter",
    /// Ciphertext bytes written to clients.
    bytes_to_clients: "counter",
    /// Plaintext bytes read from backends.
    bytes_from_backends: "counter",
    /// Plaintext bytes written to backends.
    bytes_to_backends: "counter",
    /// Resumed TLS 1.3 handshakes.
    handshakes_resumed_tls13: "counter",
    /// Resumed TLS 1.2 handshakes.
    handshakes_resumed_tls12: "counter",
    /// TLS 1.2 handshakes resumed by session ID.
    handshakes_resumed_tls12_id: "counter",
    /// TLS 1.2 handshakes resumed by stateless ticket.
    handshakes_resumed_tls12_ticket: "counter",
    /// TLS 1.3 handshakes resumed by stateful ticket (the cache).
    handshakes_resumed_tls13_stateful: "counter",
    /// TLS 1.3 handshakes resumed by stateless ticket.
    handshakes_resumed_tls13_ticket: "counter",
    /// TLS 1.2 session-ID lookups that found the session.
    session_id_hits: "counter",
    /// TLS 1.2 session-ID lookups that did not.
    session_id_misses: "counter",
    /// TLS 1.3 stateful-ticket lookups that found the session.
    session_stateful_hits: "counter",
    /// TLS 1.3 stateful-ticket lookups that did not.
    session_stateful_misses: "counter",
    /// Stateless tickets that decrypted.
    session_ticket_hits: "counter",
    /// Stateless tickets that did not decrypt (unknown or retired key).
    session_ticket_misses: "counter",
    /// Stateless tickets issued.
    session_tickets_issued: "counter",
    /// Sessions stored in this worker's cache.
    session_cache_puts: "counter",
    /// Session cache lookups that found a live entry.
    session_cache_hits: "counter",
    /// Session cache lookups that found nothing (or an expired entry).
    session_cache_misses: "counter",
    /// Session cache entries dropped because they outlived the timeout.
    session_cache_expired: "counter",
    /// Session cache entries evicted to make room.
    session_cache_evictions: "counter",
    /// Sessions that arrived from other workers.
    session_cache_remote_puts: "counter",
    /// Single-use sessions invalidated by other workers.
    session_cache_remote_takes: "counter",
    /// Sessions in this worker's cache.
    session_cache_entries: "gauge",
    /// Sync messages dropped because a queue was full (all workers).
    session_sync_dropped: "counter",
}

/// Renders all workers' counters in the Prometheus text exposition format,
/// labelled by worker, plus a `_all` sum for each.
pub fn render_prometheus(workers: &[&WorkerCounters]) -> String {
    let mut out = String::new();
    let snaps: Vec<_> = workers.iter().map(|w| w.snapshot()).collect();
    let Some(first) = snaps.first() else {
        return out;
    };
    for (i, (name, kind, help, _)) in first.iter().enumerate() {
        let suffix = if *kind == "counter" { "_total" } else { "" };
        let _ = writeln!(out, "# HELP ringterm_{name}{suffix} {help}");
        let _ = writeln!(out, "# TYPE ringterm_{name}{suffix} {kind}");
        for (w, snap) in snaps.iter().enumerate() {
            let _ = writeln!(
                out,
                "ringterm_{name}{suffix}{{worker=\"{w}\"}} {}",
                snap[i].3
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_per_worker() {
        let a = WorkerCounters::default();
        let b = WorkerCounters::default();
        a.accepted.add(3);
        b.accepted.inc();
        b.active.inc();
        b.active.dec();
        let text = render_prometheus(&[&a, &b]);
        assert!(text.contains("ringterm_accepted_total{worker=\"0\"} 3\n"));
        assert!(text.contains("ringterm_accepted_total{worker=\"1\"} 1\n"));
        assert!(text.contains("# TYPE ringterm_active gauge\n"));
        assert!(text.contains("ringterm_active{worker=\"1\"} 0\n"));
    }
}
