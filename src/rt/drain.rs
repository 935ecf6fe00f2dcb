//! Graceful shutdown across threads.
//!
//! The main thread, on SIGTERM or SIGINT, calls [`DrainHub::begin`]: every
//! worker wakes (its eventfd, which its ring reads), cancels its
//! in-flight accepts with `IORING_OP_ASYNC_CANCEL` on the listener fds, lets
//! them complete, and closes its listeners, then reports in
//! ([`DrainHub::listeners_closed`]). The main thread polls the workers'
//! `active` gauges until they reach zero or the drain timeout passes; then
//! [`DrainHub::cut`] makes every worker cancel the ops of every connection
//! it still has (each sends close_notify when it can and is counted in
//! `drain_cut`). No lock anywhere: two flags, a counter and the notifies.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::wake::WakeFd;

use crate::metrics::WorkerCounters;

/// How long the main thread waits, after the cut, for the cut connections
/// to close (each flushes at most a close_notify, under a short deadline).
pub const CUT_GRACE: Duration = Duration::from_millis(2000);

/// How often the main thread looks at the gauges during the drain.
const POLL: Duration = Duration::from_millis(10);

/// The shutdown state shared by the main thread and the workers.
pub struct DrainHub {
    draining: AtomicBool,
    cut: AtomicBool,
    closed: AtomicUsize,
    wake: Vec<Arc<WakeFd>>,
}

impl std::fmt::Debug for DrainHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DrainHub")
            .field("draining", &self.is_draining())
            .field("cut", &self.is_cut())
            .finish()
    }
}

impl DrainHub {
    /// A hub for `workers` workers.
    pub fn new(wake: Vec<Arc<WakeFd>>) -> Arc<Self> {
        Arc::new(Self {
            draining: AtomicBool::new(false),
            cut: AtomicBool::new(false),
            closed: AtomicUsize::new(0),
            wake,
        })
    }

    /// Whether workers must stop accepting.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Whether workers must cut the connections they still have.
    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::Acquire)
    }

    /// Worker side: all of this worker's listeners are closed.
    pub fn listeners_closed(&self) {
        self.closed.fetch_add(1, Ordering::AcqRel);
    }

    /// Main side: how many workers have closed their listeners.
    pub fn workers_closed(&self) -> usize {
        self.closed.load(Ordering::Acquire)
    }

    /// Main side: stop accepting everywhere.
    pub fn begin(&self) {
        self.draining.store(true, Ordering::Release);
        self.wake.iter().for_each(|w| w.wake());
    }

    /// Main side: cut every connection still open.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::Release);
        self.wake.iter().for_each(|w| w.wake());
    }
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainOutcome {
    /// Every connection finished before the drain timeout.
    Finished,
    /// The drain timeout passed; the connections left were cut.
    Cut {
        /// Connections open at the deadline.
        open: u64,
        /// Connections still open after the cut's grace period.
        left: u64,
    },
    /// A second signal arrived: stop waiting.
    Aborted {
        /// Connections open then.
        open: u64,
    },
}

/// Runs the drain on the calling (main) thread: stop accepting, wait for
/// the connections to finish until `timeout`, cut the rest. Returns early
/// when `abort` becomes true (a second SIGTERM/SIGINT).
pub fn run(
    hub: &DrainHub,
    counters: &[Arc<WorkerCounters>],
    timeout: Duration,
    abort: &AtomicBool,
) -> DrainOutcome {
    let active = || counters.iter().map(|c| c.active.get()).sum::<u64>();
    let workers = counters.len();
    let start = Instant::now();
    hub.begin();
    tracing::info!(
        connections = active(),
        timeout_ms = timeout.as_millis() as u64,
        "draining: no longer accepting; waiting for open connections"
    );
    // Until every worker has closed its listeners, a connection accepted
    // just before may not be counted yet: wait for both.
    let settled = || hub.workers_closed() >= workers && active() == 0;
    loop {
        if abort.load(Ordering::Acquire) {
            return DrainOutcome::Aborted { open: active() };
        }
        if settled() {
            return DrainOutcome::Finished;
        }
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(POLL.min(left));
    }
    let open = active();
    hub.cut();
    let cut_at = Instant::now();
    while cut_at.elapsed() < CUT_GRACE {
        if abort.load(Ordering::Acquire) {
            return DrainOutcome::Aborted { open: active() };
        }
        if settled() {
            break;
        }
        std::thread::sleep(POLL);
    }
    DrainOutcome::Cut {
        open,
        left: active(),
    }
}
