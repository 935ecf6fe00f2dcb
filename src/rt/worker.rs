//! One worker: an OS thread pinned to one CPU, running its own tokio-uring
//! runtime, accepting on its own SO_REUSEPORT listeners. Workers share
//! nothing on the connection path: the read-only `Arc<ServerConfig>` and
//! each worker's own counters (written by that worker only).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use tokio::sync::Notify;
use tokio_uring::net::TcpListener;

use super::conn;
use super::ctx::WorkerCtx;
use super::drain::DrainHub;
use super::hist_hub::HistHub;
use super::{ops, session_store};
use crate::conn::{ConnConfig, CLOSE_FLUSH};
use crate::deadline::Deadlines;
use crate::metrics::hist::Histograms;
use crate::metrics::WorkerCounters;
use crate::route::{Pools, RouteTable};
use crate::session::cache::CacheConfig;

/// How often the worker's timer looks at its deadlines while some exist.
const TIMER_TICK: Duration = Duration::from_millis(100);

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
    /// Idle timeout, ms; 0 = off.
    pub idle_timeout_ms: u64,
    /// Connection limit; 0 = unlimited.
    pub max_connections: u64,
    /// PROXY protocol header to send to backends.
    pub proxy_out: Option<crate::proxy::Version>,
    /// Expect a PROXY protocol header before the ClientHello.
    pub accept_proxy: bool,
    /// Shutdown signalling shared with the main thread.
    pub drain: Arc<DrainHub>,
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
    let epoch = Instant::now();
    let ctx = Rc::new(WorkerCtx {
        id: spec.id,
        tls: spec.tls,
        local_tls: RefCell::new(None),
        pools: RefCell::new(Pools::new(&spec.routes)),
        conn: ConnConfig {
            accept_proxy: spec.accept_proxy,
            proxy_out: spec.proxy_out,
            handshake_timeout: Duration::from_millis(spec.handshake_timeout_ms),
            connect_timeout: Duration::from_millis(spec.connect_timeout_ms),
            idle_timeout: (spec.idle_timeout_ms > 0)
                .then(|| Duration::from_millis(spec.idle_timeout_ms)),
            buffer_size: spec.buffer_size,
            close_flush: CLOSE_FLUSH,
            epoch,
        },
        max_connections: spec.max_connections,
        counters: spec.counters,
        hist: RefCell::new(Histograms::new()),
        sync_interval_ms,
        deadlines: RefCell::new(Deadlines::default()),
        timer_wake: Notify::new(),
        epoch,
        draining: Cell::new(false),
        cutting: Cell::new(false),
        conns: RefCell::new(HashMap::new()),
    });
    let listeners = spec.listeners;
    let hist_hub = spec.histograms;
    let drain = spec.drain;
    rt.block_on(async move {
        tokio_uring::spawn(timer(ctx.clone()));
        tokio_uring::spawn(publish_histograms(ctx.clone(), hist_hub));
        let mut accepts = Vec::new();
        let mut listener_fds = Vec::new();
        for l in listeners {
            let listener = TcpListener::from_std(l);
            listener_fds.push(listener.as_raw_fd());
            accepts.push(tokio_uring::spawn(accept_loop(ctx.clone(), listener)));
        }
        tokio_uring::spawn(drain_watch(ctx.clone(), drain.clone(), listener_fds));
        let _ = ready.send(Ok(ctx.id));
        for a in accepts {
            let _ = a.await;
        }
        // Every listener is closed (the drain began): tell the main thread,
        // then keep serving the open connections and answering histogram
        // requests until the process exits.
        drain.listeners_closed();
        std::future::pending::<()>().await;
    });
}

async fn accept_loop(ctx: Rc<WorkerCtx>, listener: TcpListener) {
    // The drain task sets `draining` and cancels the accept in flight in
    // one synchronous step: either the accept below is in flight and
    // completes with ECANCELED, or this check sees the flag. The accept op
    // is never dropped while in flight.
    while !ctx.draining.get() {
        match listener.accept().await {
            Ok((stream, peer)) => {
                // TCP_NODELAY is inherited from the listening socket.
                ctx.counters.accepted.inc();
                if ctx.max_connections > 0 && ctx.counters.active.get() >= ctx.max_connections {
                    // Plain close, no TLS: bounded, never queued.
                    ctx.counters.rejected_max_connections.inc();
                    drop(stream);
                    continue;
                }
                // Counted here, not in the task, so that the drain never
                // sees zero while a spawned connection has not started.
                ctx.counters.active.inc();
                tokio_uring::spawn(conn::serve(ctx.clone(), stream, peer));
            }
            Err(e) if ctx.draining.get() && ops::is_cancelled(&e) => break,
            Err(e) => {
                ctx.counters.accept_errors.inc();
                tracing::warn!(worker = ctx.id, error = %e, "accept failed");
                // EMFILE/ENFILE: back off instead of spinning until fds free up.
                let _ = ops::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The worker's one timer: while deadlines exist, wake every tick and tell
/// every connection whose deadline passed (its machine decides what that
/// means); with the session cache on, also merge the other workers'
/// sessions every sync interval.
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
        for key in expired {
            if let Some(signal) = ctx.conns.borrow().get(&key) {
                signal.fire();
            }
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

/// Waits for the main thread's shutdown steps: on the drain, stop
/// accepting (cancel the accepts in flight; the accept loops then end and
/// close their listeners); on the cut, tell every open connection.
async fn drain_watch(ctx: Rc<WorkerCtx>, hub: Arc<DrainHub>, listener_fds: Vec<RawFd>) {
    loop {
        hub.changed(ctx.id).await;
        if hub.is_draining() && !ctx.draining.get() {
            ctx.draining.set(true);
            // Listeners close only after `draining` is set, which happened
            // just above without yielding: every fd here is still open.
            let cancels: Vec<ops::PlainOp> =
                listener_fds.iter().map(|&fd| ops::cancel_fd(fd)).collect();
            for c in cancels {
                let _ = c.await;
            }
        }
        if hub.is_cut() && !ctx.cutting.get() {
            ctx.cutting.set(true);
            for signal in ctx.conns.borrow().values() {
                signal.cut();
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
