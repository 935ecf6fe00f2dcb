//! Ticket keys on the runtime side: reading key files, reloading them on
//! SIGHUP, and rotating random keys on a timer thread. The ticket crypto
//! itself is sans-IO, in `crate::session::tickets`.

use std::sync::Arc;
use std::time::Duration;

use rustls::server::ProducesTickets;

use crate::metrics::WorkerCounters;
use crate::session::tickets::{TicketKey, Ticketer};

/// The ticketer as one worker's copy of the configuration sees it: counts
/// issued tickets and decrypt results in that worker's counters, then
/// delegates to the shared ticketer.
#[derive(Debug)]
pub struct CountingTicketer {
    inner: Arc<dyn ProducesTickets>,
    counters: Arc<WorkerCounters>,
}

impl CountingTicketer {
    /// Wraps the shared ticketer for the worker that owns `counters`.
    pub fn new(inner: Arc<dyn ProducesTickets>, counters: Arc<WorkerCounters>) -> Self {
        Self { inner, counters }
    }
}

impl ProducesTickets for CountingTicketer {
    fn enabled(&self) -> bool {
        self.inner.enabled()
    }

    fn lifetime(&self) -> u32 {
        self.inner.lifetime()
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let ticket = self.inner.encrypt(plain);
        if ticket.is_some() {
            self.counters.session_tickets_issued.inc();
        }
        ticket
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let plain = self.inner.decrypt(cipher);
        match plain {
            Some(_) => self.counters.session_ticket_hits.inc(),
            None => self.counters.session_ticket_misses.inc(),
        }
        plain
    }
}

/// Reads every key file; the error names the file.
pub fn load_keys(files: &[String]) -> Result<Vec<TicketKey>, String> {
    files
        .iter()
        .map(|path| {
            let bytes =
                std::fs::read(path).map_err(|e| format!("--ticket-key-file {path}: {e}"))?;
            TicketKey::from_file_bytes(path, &bytes).map_err(|e| format!("--ticket-key-file {e}"))
        })
        .collect()
}

/// Builds the ticketer: from the key files, or from a random key.
pub fn ticketer(files: &[String], lifetime_s: u32) -> Result<Arc<Ticketer>, String> {
    let keys = if files.is_empty() {
        vec![TicketKey::random().map_err(|e| format!("--resumption: {e}"))?]
    } else {
        load_keys(files)?
    };
    Ticketer::new(keys, lifetime_s)
        .map(Arc::new)
        .map_err(|e| format!("--ticket-key-file: {e}"))
}

/// Re-reads the key files (SIGHUP). On any error the old keys stay in use.
pub fn reload(ticketer: &Ticketer, files: &[String]) -> Result<usize, String> {
    let keys = load_keys(files)?;
    let n = keys.len();
    ticketer.set_keys(keys).map_err(|e| e.to_string())?;
    Ok(n)
}

/// Rotates random keys every `period` on a thread of its own (never a
/// worker): the new key encrypts, the previous one still decrypts for one
/// more period.
pub fn start_rotation(ticketer: Arc<Ticketer>, period: Duration) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("ringterm-tickets".into())
        .spawn(move || loop {
            std::thread::sleep(period);
            match TicketKey::random() {
                Ok(key) => {
                    ticketer.rotate(key);
                    tracing::debug!("ticket keys rotated");
                }
                Err(e) => tracing::error!("ticket key rotation failed: {e}"),
            }
        })
        .map(|_| ())
}
