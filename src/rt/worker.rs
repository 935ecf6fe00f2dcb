//! One worker: an OS thread pinned to one CPU, running its own tokio-uring
//! runtime, accepting on its own SO_REUSEPORT listeners. Workers share
//! nothing on the connection path: the read-only `Arc<ServerConfig>` and
//! each worker's own counters (written by that worker only).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use tokio::sync::Notify;
use tokio_uring::net::TcpListener;

use super::hist_hub::HistHub;
use super::{conn, ops, session_store};
use crate::deadline::Deadlines;
use crate::metrics::hist::{Histograms, Metric};
use crate::metrics::WorkerCounters;
use crate::route::{Pools, RouteTable};
use crate::session::cache::CacheConfig;

/// How often the worker's timer looks at its deadlines while some exist.
const TIMER_TICK: Duration = Duration::from_millis(100);

/// Everything a worker's connections read.
pub struct WorkerCtx {
    /// Worker index.
    pub id: usize,
    /// TLS configuration (shared; swapped on reload).
    pub tls: Arc<ArcSwap<ServerConfig>>,
    /// This worker's backend pools (round-robin, ejection).
    pub pools: RefCell<Pools>,
    /// Relay buffer size.
    pub buffer_size: usize,
    /// Handshake timeout.
    pub handshake_timeout_ms: u64,
    /// Backend connect timeout.
    pub connect_timeout_ms: u64,
    /// This worker's counters.
    pub counters: Arc<WorkerCounters>,
    /// This worker's latency histograms (only this thread records).
    pub hist: RefCell<Histograms>,
    /// How often the session cache merges other workers' sessions; `None`
    /// when the cache is off.
    sync_interval_ms: Option<u64>,
    deadlines: RefCell<Deadlines>,
    timer_wake: Notify,
    epoch: Instant,
}

impl WorkerCtx {
    /// Milliseconds since the worker started (its deadlines' clock).
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Arms a deadline `after_ms` from now for `key` (a socket fd).
    pub fn set_deadline(&self, key: i64, after_ms: u64) {
        let at = self.now_ms() + after_ms;
        let was_empty = {
            let mut d = self.deadlines.borrow_mut();
            let was_empty = d.is_empty();
            d.set(key, at);
            was_empty
        };
        if was_empty {
            self.timer_wake.notify_one();
        }
    }

    /// Disarms `key`'s deadline. Returns false if it had already expired.
    pub fn clear_deadline(&self, key: i64) -> bool {
        let mut d = self.deadlines.borrow_mut();
        let armed = d.contains(key);
        d.clear(key);
        armed
    }

    /// Whether the session cache is on.
    pub fn uses_session_cache(&self) -> bool {
        self.sync_interval_ms.is_some()
    }

    /// Records `since`'s elapsed time into histogram `m`.
    pub fn record_since(&self, m: Metric, since: Instant) {
        let us = since.elapsed().as_micros().min(u128::from(u64::MAX)) as u64;
        self.hist.borrow_mut().record(m, us);
    }

    /// Whether `key` still has an armed deadline.
    pub fn has_deadline(&self, key: i64) -> bool {
        self.deadlines.borrow().contains(key)
    }
}

/// What a worker thread needs to start.
pub struct WorkerSpec {
    /// Worker index.
    pub id: usize,
    /// CPU to pin to.
    pub cpu: usize,
    /// This worker's listening sockets (already bound, SO_REUSEPORT).
    pub listeners: Vec<std::net::TcpListener>,
    /// TLS configuration.
    pub tls: Arc<ArcSwap<ServerConfig>>,
    /// Backends and per-SNI routes.
    pub routes: RouteTable,
    /// Relay buffer size.
    pub buffer_size: usize,
    /// Ring entries.
    pub ring_entries: u32,
    /// SQPOLL idle in ms.
    pub sqpoll_idle_ms: Option<u32>,
    /// Handshake timeout.
    pub handshake_timeout_ms: u64,
    /// Connect timeout.
    pub connect_timeout_ms: u64,
    /// Counters.
    pub counters: Arc<WorkerCounters>,
    /// Where the worker publishes its histograms when asked.
    pub histograms: Arc<HistHub>,
    /// The session cache, when resumption uses it.
    pub cache: Option<CacheSpec>,
}

/// A worker's session cache settings.
#[derive(Debug, Clone)]
pub struct CacheSpec {
    /// Capacity and timeout.
    pub config: CacheConfig,
    /// The queues shared by all workers.
    pub hub: Arc<session_store::SyncHub>,
    /// The clock origin shared by all workers.
    pub epoch: Instant,
    /// Merge interval.
    pub sync_interval_ms: u64,
}

/// Builds the worker's runtime. Errors here are reported before serving.
///
/// Each ring is set up with `IORING_SETUP_COOP_TASKRUN` (completions are not
/// pushed to the worker with an inter-processor interrupt; the worker runs
/// them when it next enters the kernel, which it does every loop),
/// `SINGLE_ISSUER` (only the worker's thread submits) and `SUBMIT_ALL`.
/// Kernels older than 6.0 reject those flags; we then fall back to a plain
/// ring.
///
/// `IORING_SETUP_DEFER_TASKRUN` would batch completions further, but it
/// runs completion work only inside `io_uring_enter(GETEVENTS)`, while
/// tokio-uring sleeps in epoll on the ring fd: tried, every connection hung.
pub fn build_runtime(
    ring_entries: u32,
    sqpoll_idle_ms: Option<u32>,
) -> std::io::Result<tokio_uring::Runtime> {
    let make = |tuned: bool| {
        let mut uring = tokio_uring::uring_builder();
        if let Some(idle) = sqpoll_idle_ms {
            uring.setup_sqpoll(idle);
        }
        if tuned {
            uring
                .setup_coop_taskrun()
                .setup_single_issuer()
                .setup_submit_all();
        }
        let mut builder = tokio_uring::builder();
        builder.entries(ring_entries).uring_builder(&uring);
        tokio_uring::Runtime::new(&builder)
    };
    make(true).or_else(|_| make(false))
}

/// Runs a worker on the current thread until the process exits. `ready` is
/// told whether the runtime came up.
pub fn run(spec: WorkerSpec, ready: std::sync::mpsc::Sender<Result<usize, String>>) {
    if !core_affinity::set_for_current(core_affinity::CoreId { id: spec.cpu }) {
        tracing::warn!(
            worker = spec.id,
            cpu = spec.cpu,
            "could not pin worker to its CPU"
        );
    }
    let rt = match build_runtime(spec.ring_entries, spec.sqpoll_idle_ms) {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(format!(
                "worker {}: io_uring setup failed: {e}",
                spec.id
            )));
            return;
        }
    };
    let sync_interval_ms = spec.cache.as_ref().map(|c| c.sync_interval_ms);
    if let Some(cache) = spec.cache {
        session_store::install(spec.id, cache.config, cache.hub, cache.epoch);
    }
    let ctx = Rc::new(WorkerCtx {
        id: spec.id,
        tls: spec.tls,
        pools: RefCell::new(Pools::new(&spec.routes)),
        buffer_size: spec.buffer_size,
        handshake_timeout_ms: spec.handshake_timeout_ms,
        connect_timeout_ms: spec.connect_timeout_ms,
        counters: spec.counters,
        hist: RefCell::new(Histograms::new()),
        sync_interval_ms,
        deadlines: RefCell::new(Deadlines::default()),
        timer_wake: Notify::new(),
        epoch: Instant::now(),
    });
    let listeners = spec.listeners;
    let hist_hub = spec.histograms;
    rt.block_on(async move {
        tokio_uring::spawn(timer(ctx.clone()));
        tokio_uring::spawn(publish_histograms(ctx.clone(), hist_hub));
        let mut accepts = Vec::new();
        for l in listeners {
            let listener = TcpListener::from_std(l);
            accepts.push(tokio_uring::spawn(accept_loop(ctx.clone(), listener)));
        }
        let _ = ready.send(Ok(ctx.id));
        for a in accepts {
            let _ = a.await;
        }
    });
}

async fn accept_loop(ctx: Rc<WorkerCtx>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                // TCP_NODELAY is inherited from the listening socket.
                ctx.counters.accepted.inc();
                tokio_uring::spawn(conn::serve(ctx.clone(), stream));
            }
            Err(e) => {
                ctx.counters.accept_errors.inc();
                tracing::warn!(worker = ctx.id, error = %e, "accept failed");
                // EMFILE/ENFILE: back off instead of spinning until fds free up.
                let _ = ops::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The worker's one timer: while deadlines exist, wake every tick and cancel
/// the ops of every connection whose deadline passed; with the session
/// cache on, also merge the other workers' sessions every sync interval.
async fn timer(ctx: Rc<WorkerCtx>) {
    let tick = match ctx.sync_interval_ms {
        Some(ms) => TIMER_TICK.min(Duration::from_millis(ms)),
        None => TIMER_TICK,
    };
    let mut next_sync = 0;
    loop {
        if ctx.sync_interval_ms.is_none() && ctx.deadlines.borrow().is_empty() {
            ctx.timer_wake.notified().await;
            continue;
        }
        let res = ops::sleep(tick).await;
        if !ops::timer_fired(&res) {
            tracing::warn!(worker = ctx.id, "timer failed: {:?}", res.err());
        }
        let now = ctx.now_ms();
        let expired = ctx.deadlines.borrow_mut().expire(now);
        for fd in expired {
            // The key is the fd of a live socket: connections clear their
            // deadline before their socket can be closed.
            let _ = ops::cancel_fd(fd as i32).await;
        }
        if let Some(interval) = ctx.sync_interval_ms {
            if now >= next_sync {
                next_sync = now + interval;
                if let Some((stats, len, dropped)) = session_store::sync() {
                    ctx.counters.set_cache_stats(&stats, len, dropped);
                }
            }
        }
    }
}

/// Publishes a copy of this worker's histograms each time a reader asks
/// (see [`HistHub`]).
async fn publish_histograms(ctx: Rc<WorkerCtx>, hub: Arc<HistHub>) {
    loop {
        let generation = hub.requested(ctx.id).await;
        let copy = ctx.hist.borrow().clone();
        hub.publish(ctx.id, generation, copy);
    }
}
