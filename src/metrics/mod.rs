//! Per-worker counters and their Prometheus rendering.
//!
//! Each worker owns one [`WorkerCounters`] and is its only writer; the admin
//! endpoint only reads. Increments are a relaxed load and store (single
//! writer), so the hot path pays no locked instruction and takes no lock.
//! Sans-IO: rendering takes the counters and returns text.

#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::session::cache::CacheStats;
use crate::tls::AlertKind;

pub mod hgrm;
pub mod hist;
pub mod process;

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
    ($($(#[doc = $doc:literal])* $name:ident : $kind:literal $(as $family:literal { $labels:literal })?,)*) => {
        /// Counters of one worker.
        #[derive(Debug, Default)]
        pub struct WorkerCounters {
            $($(#[doc = $doc])* pub $name: Counter,)*
            /// Per-backend counters, published by the worker when it
            /// starts and when its backends change (names re-resolved).
            pub backends: arc_swap::ArcSwap<Vec<std::sync::Arc<BackendCounters>>>,
        }

        impl WorkerCounters {
            /// Every counter's series, in declaration order.
            pub fn snapshot(&self) -> Vec<Series> {
                vec![$(Series {
                    family: counters!(@family $name $($family)?),
                    labels: counters!(@labels $($labels)?),
                    kind: $kind,
                    help: concat!($($doc),*),
                    value: self.$name.get(),
                },)*]
            }
        }
    };
    (@family $name:ident $family:literal) => { $family };
    (@family $name:ident) => { stringify!($name) };
    (@labels $labels:literal) => { $labels };
    (@labels) => { "" };
}

/// One backend's counters in one worker (labelled `backend="..."`).
#[derive(Debug, Default)]
pub struct BackendCounters {
    /// The backend, as rendered in its label.
    pub name: String,
    /// Connects that succeeded.
    pub connects: Counter,
    /// Connects that failed or timed out.
    pub failures: Counter,
    /// Times it was taken out of rotation.
    pub ejections: Counter,
    /// 1 while in rotation, 0 while out.
    pub up: Counter,
}

impl BackendCounters {
    /// Counters for `name`, up.
    pub fn new(name: String) -> Self {
        let c = Self {
            name,
            ..Self::default()
        };
        c.up.set(1);
        c
    }
}

/// Appends the per-backend families of the workers `filter` selects.
fn render_backends(out: &mut String, workers: &[&WorkerCounters], filter: WorkerFilter) {
    type Get = fn(&BackendCounters) -> &Counter;
    let families: [(&str, &str, &str, Get); 4] = [
        (
            "backend_connects_total",
            "counter",
            "Backend connects that succeeded, per backend.",
            |b| &b.connects,
        ),
        (
            "backend_failures_total",
            "counter",
            "Backend connects that failed or timed out, per backend.",
            |b| &b.failures,
        ),
        (
            "backend_ejections_total",
            "counter",
            "Times a backend was taken out of a worker's rotation.",
            |b| &b.ejections,
        ),
        (
            "backend_up",
            "gauge",
            "1 while the backend is in the worker's rotation, 0 while out.",
            |b| &b.up,
        ),
    ];
    let sets: Vec<_> = workers.iter().map(|w| w.backends.load_full()).collect();
    if sets.iter().all(|b| b.is_empty()) {
        return;
    }
    for (name, kind, help, get) in families {
        let _ = writeln!(out, "# HELP ringterm_{name} {help}");
        let _ = writeln!(out, "# TYPE ringterm_{name} {kind}");
        for (w, set) in sets.iter().enumerate().filter(|(w, _)| filter.includes(*w)) {
            for b in set.iter() {
                let _ = write!(out, "ringterm_{name}{{worker=\"{w}\",backend=\"");
                for c in b.name.chars() {
                    match c {
                        '"' => out.push_str("\\\""),
                        '\\' => out.push_str("\\\\"),
                        '\n' => out.push_str("\\n"),
                        c => out.push(c),
                    }
                }
                let _ = writeln!(out, "\"}} {}", get(b).get());
            }
        }
    }
}

/// One counter as rendered: `ringterm_<family>{worker="N",<labels>}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Series {
    /// Metric family name, without the `ringterm_` prefix and `_total`.
    pub family: &'static str,
    /// Extra labels, already formatted (`version="TLSv1.3"`), or empty.
    pub labels: &'static str,
    /// `counter` or `gauge`.
    pub kind: &'static str,
    /// Help text (the family's first member's doc is used).
    pub help: &'static str,
    /// Current value.
    pub value: u64,
}

// Members of one family must be adjacent; the first member's doc is the
// family's help text.
counters! {
    /// Connections accepted.
    accepted: "counter",
    /// Connections currently open.
    active: "gauge",
    /// Accept errors (EMFILE, ENFILE, ...).
    accept_errors: "counter",
    /// Reads that found the provided-buffer ring empty (submitted again).
    recv_enobufs: "counter",
    /// Backend reads sealed where they landed in the read-buffer ring and
    /// written to the client from there (no copy of the payload).
    lent_sends: "counter",
    /// Writes of records sealed in a lent ring buffer that did not go out
    /// whole (a cancel or an error): their rest was copied out.
    lent_send_rest: "counter",
    /// Completions for a connection slot that had been reused (ignored).
    stale_completions: "counter",
    /// Submissions the kernel refused (the op failed, the worker went on).
    ring_submit_errors: "counter",
    /// Loop turns that found the completion queue full (reaped first).
    ring_busy: "counter",
    /// Turns that saw the kernel holding completions that did not fit.
    ring_cq_overflow: "counter",
    /// Waits that also waited for send completions expected at once.
    ring_batch_waits: "counter",
    /// Of those, the ones that ended with fewer completions (a send that
    /// did not complete at once; the wait's bound ended it).
    ring_batch_short: "counter",
    /// Waits that asked for more completions because the last wake-ups
    /// each found several (`--coalesce-usec`).
    ring_coalesced_waits: "counter",
    /// Of those, the ones that ended with fewer (their bound ended them).
    ring_coalesced_short: "counter",
    /// Cancels that failed (the socket was then shut down).
    cancel_failures: "counter",
    /// Backend sockets that could not be created for lack of fds
    /// (EMFILE/ENFILE): the connect waits and tries again.
    fd_exhausted: "counter",
    /// Handshakes completed, by protocol version and whether resumed.
    handshakes_tls13: "counter" as "handshakes" { "version=\"TLSv1.3\",resumed=\"false\"" },
    /// Resumed TLS 1.3 handshakes.
    handshakes_resumed_tls13: "counter" as "handshakes" { "version=\"TLSv1.3\",resumed=\"true\"" },
    /// Full TLS 1.2 handshakes.
    handshakes_tls12: "counter" as "handshakes" { "version=\"TLSv1.2\",resumed=\"false\"" },
    /// Resumed TLS 1.2 handshakes.
    handshakes_resumed_tls12: "counter" as "handshakes" { "version=\"TLSv1.2\",resumed=\"true\"" },
    /// Resumed handshakes, by resumption kind.
    handshakes_resumed_tls12_id: "counter" as "handshakes_resumed" { "kind=\"tls12_id\"" },
    /// TLS 1.2 handshakes resumed by stateless ticket.
    handshakes_resumed_tls12_ticket: "counter" as "handshakes_resumed" { "kind=\"tls12_ticket\"" },
    /// TLS 1.3 handshakes resumed by stateful ticket (the cache).
    handshakes_resumed_tls13_stateful: "counter" as "handshakes_resumed" { "kind=\"tls13_stateful\"" },
    /// TLS 1.3 handshakes resumed by stateless ticket.
    handshakes_resumed_tls13_ticket: "counter" as "handshakes_resumed" { "kind=\"tls13_ticket\"" },
    /// Handshakes that did not complete, by reason.
    handshake_failures_tls: "counter" as "handshake_failures" { "reason=\"tls_error\"" },
    /// The client closed or reset during the handshake.
    handshake_failures_eof: "counter" as "handshake_failures" { "reason=\"client_closed\"" },
    /// Cut by the handshake timeout.
    handshake_timeouts: "counter" as "handshake_failures" { "reason=\"timeout\"" },
    /// Fatal alerts sent to clients, by alert.
    alert_unexpected_message: "counter" as "alerts_sent" { "alert=\"unexpected_message\"" },
    /// bad_record_mac
    alert_bad_record_mac: "counter" as "alerts_sent" { "alert=\"bad_record_mac\"" },
    /// record_overflow
    alert_record_overflow: "counter" as "alerts_sent" { "alert=\"record_overflow\"" },
    /// handshake_failure
    alert_handshake_failure: "counter" as "alerts_sent" { "alert=\"handshake_failure\"" },
    /// bad_certificate
    alert_bad_certificate: "counter" as "alerts_sent" { "alert=\"bad_certificate\"" },
    /// illegal_parameter
    alert_illegal_parameter: "counter" as "alerts_sent" { "alert=\"illegal_parameter\"" },
    /// decode_error
    alert_decode_error: "counter" as "alerts_sent" { "alert=\"decode_error\"" },
    /// decrypt_error
    alert_decrypt_error: "counter" as "alerts_sent" { "alert=\"decrypt_error\"" },
    /// protocol_version
    alert_protocol_version: "counter" as "alerts_sent" { "alert=\"protocol_version\"" },
    /// internal_error
    alert_internal_error: "counter" as "alerts_sent" { "alert=\"internal_error\"" },
    /// missing_extension
    alert_missing_extension: "counter" as "alerts_sent" { "alert=\"missing_extension\"" },
    /// unrecognized_name
    alert_unrecognized_name: "counter" as "alerts_sent" { "alert=\"unrecognized_name\"" },
    /// certificate_required
    alert_certificate_required: "counter" as "alerts_sent" { "alert=\"certificate_required\"" },
    /// no_application_protocol
    alert_no_application_protocol: "counter" as "alerts_sent" { "alert=\"no_application_protocol\"" },
    /// any other alert
    alert_other: "counter" as "alerts_sent" { "alert=\"other\"" },
    /// Backend connects that failed.
    backend_connect_failures: "counter",
    /// Backend connects cut by the connect timeout.
    backend_connect_timeouts: "counter",
    /// Connections that tried a second backend after the first failed.
    backend_retries: "counter",
    /// Connections closed for a missing or malformed PROXY protocol header
    /// (`--accept-proxy`).
    proxy_header_errors: "counter",
    /// Connections ended by an IO or TLS error after the handshake.
    connection_errors: "counter",
    /// Established connections closed after `--idle-timeout` with no bytes moving.
    idle_timeouts: "counter",
    /// Accepted connections closed at once because the worker had `--max-connections`.
    rejected_max_connections: "counter",
    /// Connections still open when the shutdown drain's `--drain-timeout` passed, and cut.
    drain_cut: "counter",
    /// Ciphertext bytes read from clients.
    bytes_from_clients: "counter",
    /// Ciphertext bytes written to clients.
    bytes_to_clients: "counter",
    /// Plaintext bytes read from backends.
    bytes_from_backends: "counter",
    /// Plaintext bytes written to backends.
    bytes_to_backends: "counter",
    /// Resumption lookups that found the session, by kind.
    session_id_hits: "counter" as "session_lookup_hits" { "kind=\"tls12_id\"" },
    /// TLS 1.3 stateful-ticket lookups that found the session.
    session_stateful_hits: "counter" as "session_lookup_hits" { "kind=\"tls13_stateful\"" },
    /// Stateless tickets (TLS 1.2 or 1.3) that decrypted.
    session_ticket_hits: "counter" as "session_lookup_hits" { "kind=\"ticket\"" },
    /// Resumption lookups that did not find the session, by kind.
    session_id_misses: "counter" as "session_lookup_misses" { "kind=\"tls12_id\"" },
    /// TLS 1.3 stateful-ticket lookups that did not.
    session_stateful_misses: "counter" as "session_lookup_misses" { "kind=\"tls13_stateful\"" },
    /// Stateless tickets that did not decrypt (unknown or retired key).
    session_ticket_misses: "counter" as "session_lookup_misses" { "kind=\"ticket\"" },
    /// Stateless tickets issued.
    session_tickets_issued: "counter",
    /// Sessions stored in this worker's cache.
    session_cache_puts: "counter",
    /// Session cache lookups that found a live entry.
    session_cache_hits: "counter",
    /// Session cache lookups that found nothing (or an expired entry).
    session_cache_misses: "counter",
    /// Session cache entries dropped because they outlived the timeout, by kind.
    session_cache_expired_tls12_id: "counter" as "session_cache_expired" { "kind=\"tls12_id\"" },
    /// TLS 1.3 stateful entries expired.
    session_cache_expired_tls13_stateful: "counter" as "session_cache_expired" { "kind=\"tls13_stateful\"" },
    /// Entries of unknown kind expired.
    session_cache_expired_unknown: "counter" as "session_cache_expired" { "kind=\"unknown\"" },
    /// Session cache entries evicted to make room, by kind.
    session_cache_evictions_tls12_id: "counter" as "session_cache_evictions" { "kind=\"tls12_id\"" },
    /// TLS 1.3 stateful entries evicted.
    session_cache_evictions_tls13_stateful: "counter" as "session_cache_evictions" { "kind=\"tls13_stateful\"" },
    /// Entries of unknown kind evicted.
    session_cache_evictions_unknown: "counter" as "session_cache_evictions" { "kind=\"unknown\"" },
    /// Sessions that arrived from other workers (cross-core arrivals), by kind.
    session_cache_remote_puts_tls12_id: "counter" as "session_cache_remote_puts" { "kind=\"tls12_id\"" },
    /// TLS 1.3 stateful sessions that arrived from other workers.
    session_cache_remote_puts_tls13_stateful: "counter" as "session_cache_remote_puts" { "kind=\"tls13_stateful\"" },
    /// Sessions of unknown kind that arrived from other workers.
    session_cache_remote_puts_unknown: "counter" as "session_cache_remote_puts" { "kind=\"unknown\"" },
    /// Single-use sessions invalidated by other workers.
    session_cache_remote_takes: "counter",
    /// Sessions in this worker's cache.
    session_cache_entries: "gauge",
    /// Sync messages dropped because a queue was full (all workers).
    session_sync_dropped: "counter",
    /// 1 while this worker's connection to the L2 session store (`--session-store`) is up.
    session_store_up: "gauge",
    /// L2 session store lookups that found the session.
    session_store_hits: "counter",
    /// L2 session store lookups the store had no session for.
    session_store_misses: "counter",
    /// L2 session store lookups not answered within `--session-store-timeout` (the handshake went on without).
    session_store_timeouts: "counter",
    /// L2 session store errors: error or unexpected replies, bytes that are not RESP, failed connections.
    session_store_errors: "counter",
    /// Sessions written to the L2 session store (pipelined, not awaited).
    session_store_puts: "counter",
    /// Puts dropped because the L2 session store was down or too much was queued.
    session_store_dropped_puts: "counter",
    /// Access log lines handed to the writer.
    access_log_lines: "counter",
    /// Access log lines dropped because the writer could not keep up.
    access_log_dropped: "counter",
}

impl WorkerCounters {
    /// The counter of alerts of `kind`.
    pub fn alert(&self, kind: AlertKind) -> &Counter {
        match kind {
            AlertKind::UnexpectedMessage => &self.alert_unexpected_message,
            AlertKind::BadRecordMac => &self.alert_bad_record_mac,
            AlertKind::RecordOverflow => &self.alert_record_overflow,
            AlertKind::HandshakeFailure => &self.alert_handshake_failure,
            AlertKind::BadCertificate => &self.alert_bad_certificate,
            AlertKind::IllegalParameter => &self.alert_illegal_parameter,
            AlertKind::DecodeError => &self.alert_decode_error,
            AlertKind::DecryptError => &self.alert_decrypt_error,
            AlertKind::ProtocolVersion => &self.alert_protocol_version,
            AlertKind::InternalError => &self.alert_internal_error,
            AlertKind::MissingExtension => &self.alert_missing_extension,
            AlertKind::UnrecognizedName => &self.alert_unrecognized_name,
            AlertKind::CertificateRequired => &self.alert_certificate_required,
            AlertKind::NoApplicationProtocol => &self.alert_no_application_protocol,
            AlertKind::Other => &self.alert_other,
        }
    }

    /// Copies the L2 session store client's figures (owned by the worker).
    pub fn set_store_stats(&self, stats: &crate::session::l2::L2Stats, up: bool) {
        self.session_store_up.set(u64::from(up));
        self.session_store_hits.set(stats.hits);
        self.session_store_misses.set(stats.misses);
        self.session_store_timeouts.set(stats.timeouts);
        self.session_store_errors.set(stats.errors);
        self.session_store_puts.set(stats.puts);
        self.session_store_dropped_puts.set(stats.dropped_puts);
    }

    /// Copies the session cache's figures (owned by the worker's cache).
    pub fn set_cache_stats(&self, stats: &CacheStats, entries: usize, sync_dropped: u64) {
        self.session_cache_puts.set(stats.puts);
        self.session_cache_hits.set(stats.hits);
        self.session_cache_misses.set(stats.misses);
        let [unknown, id, stateful] = stats.by_kind;
        self.session_cache_expired_unknown.set(unknown.expired);
        self.session_cache_expired_tls12_id.set(id.expired);
        self.session_cache_expired_tls13_stateful
            .set(stateful.expired);
        self.session_cache_evictions_unknown.set(unknown.evictions);
        self.session_cache_evictions_tls12_id.set(id.evictions);
        self.session_cache_evictions_tls13_stateful
            .set(stateful.evictions);
        self.session_cache_remote_puts_unknown
            .set(unknown.remote_puts);
        self.session_cache_remote_puts_tls12_id.set(id.remote_puts);
        self.session_cache_remote_puts_tls13_stateful
            .set(stateful.remote_puts);
        self.session_cache_remote_takes.set(stats.remote_takes);
        self.session_cache_entries.set(entries as u64);
        self.session_sync_dropped.set(sync_dropped);
    }
}

/// Which workers a rendering shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerFilter {
    /// Every worker, each with its `worker` label (and merged quantiles).
    All,
    /// Only worker N.
    One(usize),
}

impl WorkerFilter {
    fn includes(self, w: usize) -> bool {
        match self {
            Self::All => true,
            Self::One(n) => n == w,
        }
    }
}

/// Renders the workers' counters in the Prometheus text exposition format,
/// one series per worker (label `worker="N"`).
pub fn render_prometheus(workers: &[&WorkerCounters]) -> String {
    let mut out = String::new();
    render_counters(&mut out, workers, WorkerFilter::All);
    out
}

/// Appends the counters of the workers `filter` selects to `out`.
pub fn render_counters(out: &mut String, workers: &[&WorkerCounters], filter: WorkerFilter) {
    let snaps: Vec<_> = workers.iter().map(|w| w.snapshot()).collect();
    let Some(first) = snaps.first() else {
        return;
    };
    let mut i = 0;
    while i < first.len() {
        let family = first[i].family;
        let end = i + first[i..].iter().take_while(|s| s.family == family).count();
        let kind = first[i].kind;
        let suffix = if kind == "counter" { "_total" } else { "" };
        let _ = writeln!(out, "# HELP ringterm_{family}{suffix} {}", first[i].help);
        let _ = writeln!(out, "# TYPE ringterm_{family}{suffix} {kind}");
        for j in i..end {
            for (w, snap) in snaps
                .iter()
                .enumerate()
                .filter(|(w, _)| filter.includes(*w))
            {
                let s = &snap[j];
                let sep = if s.labels.is_empty() { "" } else { "," };
                let _ = writeln!(
                    out,
                    "ringterm_{family}{suffix}{{worker=\"{w}\"{sep}{}}} {}",
                    s.labels, s.value
                );
            }
        }
        i = end;
    }
    render_backends(out, workers, filter);
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
        a.handshakes_resumed_tls12.inc();
        let text = render_prometheus(&[&a, &b]);
        assert!(text.contains(
            "ringterm_handshakes_total{worker=\"0\",version=\"TLSv1.2\",resumed=\"true\"} 1\n"
        ));
        assert_eq!(
            text.matches("# TYPE ringterm_handshakes_total counter")
                .count(),
            1
        );
    }
}
