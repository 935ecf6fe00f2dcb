//! One worker: an OS thread pinned to one CPU, with its own io_uring and
//! its own SO_REUSEPORT listeners, running a plain completion loop — no
//! executor, no readiness polling, like nginx's and HAProxy's own loops.
//!
//! Each turn of the loop is one `io_uring_enter`: it submits what the last
//! turn queued and waits for at least one completion (with
//! `DEFER_TASKRUN`, the kernel runs the completion work in that same
//! call). Then every completion is dispatched by its `user_data` (see
//! `ops::UserData`): to a listener, the timer, the wake-up eventfd, or a
//! connection slot, whose machine ([`crate::conn::Conn`]) says which ops to
//! queue next. Workers share nothing on the connection path: the read-only
//! `ServerConfig` (swapped on reload), their own counters, and the session
//! sync queues.

use std::cell::{Cell, RefCell};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use rustls::ServerConfig;

use super::bufring::BufRing;
use super::conn::Slot;
use super::ctx::WorkerCtx;
use super::drain::DrainHub;
use super::hist_hub::HistHub;
use super::ops::{self, Tag, UserData};
use super::wake::WakeFd;
use super::{ring, session_store};
use crate::conn::{ConnConfig, CLOSE_FLUSH};
use crate::deadline::Deadlines;
use crate::metrics::hist::Histograms;
use crate::metrics::WorkerCounters;
use crate::route::{Pools, RouteTable};
use crate::session::cache::CacheConfig;

/// How often the worker's timer looks at its deadlines while some exist.
const TIMER_TICK: Duration = Duration::from_millis(100);

/// Back-off after a failed accept (EMFILE, ENFILE): fd exhaustion never
/// spins.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Buffer group of the read buffers.
const BGID: u16 = 1;

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
    /// Relay buffer size: the size of each provided read buffer.
    pub buffer_size: usize,
    /// Ring entries.
    pub ring_entries: u32,
    /// Provided read buffers.
    pub read_buffers: u16,
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
    /// How other threads wake this worker.
    pub wake: Arc<WakeFd>,
    /// The session cache, when resumption uses it.
    pub cache: Option<CacheSpec>,
    /// The L2 session store, when one is configured.
    pub store: Option<super::store::StoreSpec>,
    /// This worker's end of the access log, when it is on.
    pub access_log: Option<super::access_log::WorkerLog>,
    /// Active health checks' verdicts, when they are on.
    pub health: Option<Arc<super::health::HealthHub>>,
    /// Backend tables resolved again on reload, when names are used.
    pub route_hub: Option<Arc<super::routes::RouteHub>>,
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

/// A listener and its accept.
pub(super) struct Listener {
    pub sock: Option<std::net::TcpListener>,
    /// A multishot accept is in flight.
    pub armed: bool,
    /// A back-off timeout is in flight.
    pub backoff: bool,
}

/// The worker's state. Field order matters for drop: the ring goes before
/// the buffer ring whose memory it uses, and before the timespecs its
/// timeouts point to.
pub(super) struct Worker {
    pub ring: IoUring,
    pub bufs: BufRing,
    pub ctx: WorkerCtx,
    /// Connection slots, with their generations and the free ones.
    pub slots: Vec<Option<Slot>>,
    pub gens: Vec<u32>,
    pub free: Vec<u32>,
    pub listeners: Vec<Listener>,
    /// Reads that found the buffer ring empty, to submit again.
    pub enobufs: Vec<(u32, crate::conn::Side)>,
    /// Slots to drive at the end of the turn.
    pub touched: Vec<u32>,
    /// Backend sockets to create again at the next tick (fds were
    /// exhausted): slot, generation, address.
    pub socket_retry: Vec<(u32, u32, crate::route::BackendAddr)>,
    drain: Arc<DrainHub>,
    hist_hub: Arc<HistHub>,
    hist_answered: u64,
    wake: Arc<WakeFd>,
    wake_buf: Box<u64>,
    timer_armed: bool,
    timer_ts: Box<types::Timespec>,
    backoff_ts: Box<types::Timespec>,
    next_sync_ms: u64,
    listeners_reported: Cell<bool>,
    /// The L2 session store connection (after the ring: its buffers
    /// outlive the ops that use them).
    pub(super) store: Option<super::store::Store>,
}

/// Runs a worker on the current thread until the process exits. `ready` is
/// told whether the ring came up.
pub fn run(spec: WorkerSpec, ready: std::sync::mpsc::Sender<Result<usize, String>>) {
    if !core_affinity::set_for_current(core_affinity::CoreId { id: spec.cpu }) {
        tracing::warn!(
            worker = spec.id,
            cpu = spec.cpu,
            "could not pin worker to its CPU"
        );
    }
    let (ring, setup) = match ring::build(spec.ring_entries, spec.sqpoll_idle_ms) {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return;
        }
    };
    let bufs = match BufRing::new(&ring, spec.read_buffers, spec.buffer_size, BGID) {
        Ok(b) => b,
        Err(e) => {
            let missing = ring::Missing {
                feature: "provided-buffer rings (IORING_REGISTER_PBUF_RING)",
                kernel: "5.19",
            };
            let _ = ready.send(Err(format!("{missing} ({e})")));
            return;
        }
    };
    if spec.id == 0 {
        tracing::info!("{}", ring::describe(&setup));
    }
    let sync_interval_ms = spec.cache.as_ref().map(|c| c.sync_interval_ms);
    if let Some(cache) = spec.cache {
        session_store::install(spec.id, cache.config, cache.hub, cache.epoch);
    }
    let epoch = Instant::now();
    let mut pools = Pools::new(&spec.routes);
    pools.count_into(spec.counters.clone());
    let frontends = spec.listeners.iter().map(|l| l.local_addr().ok()).collect();
    let ctx = WorkerCtx {
        access_log: spec.access_log.map(RefCell::new),
        frontends,
        health: spec.health.map(|h| (h, Cell::new(0))),
        route_hub: spec.route_hub.map(|h| (h, Cell::new(0))),
        id: spec.id,
        tls: spec.tls,
        local_tls: RefCell::new(None),
        pools: RefCell::new(pools),
        conn: Arc::new(ConnConfig {
            accept_proxy: spec.accept_proxy,
            proxy_out: spec.proxy_out,
            handshake_timeout: Duration::from_millis(spec.handshake_timeout_ms),
            connect_timeout: Duration::from_millis(spec.connect_timeout_ms),
            idle_timeout: (spec.idle_timeout_ms > 0)
                .then(|| Duration::from_millis(spec.idle_timeout_ms)),
            buffer_size: spec.buffer_size,
            close_flush: CLOSE_FLUSH,
            epoch,
            runtime_buffers: true,
            session_lookup: spec.store.is_some(),
        }),
        max_connections: spec.max_connections,
        counters: spec.counters,
        hist: RefCell::new(Histograms::new()),
        sync_interval_ms,
        deadlines: RefCell::new(Deadlines::default()),
        epoch,
        draining: Cell::new(false),
        cutting: Cell::new(false),
    };
    let listeners = spec
        .listeners
        .into_iter()
        .map(|l| Listener {
            sock: Some(l),
            armed: false,
            backoff: false,
        })
        .collect();
    let mut w = Worker {
        ring,
        bufs,
        ctx,
        slots: Vec::new(),
        gens: Vec::new(),
        free: Vec::new(),
        listeners,
        enobufs: Vec::new(),
        touched: Vec::new(),
        socket_retry: Vec::new(),
        drain: spec.drain,
        hist_hub: spec.histograms,
        hist_answered: 0,
        wake: spec.wake,
        wake_buf: Box::new(0),
        timer_armed: false,
        timer_ts: Box::new(types::Timespec::from(TIMER_TICK)),
        backoff_ts: Box::new(types::Timespec::from(ACCEPT_BACKOFF)),
        next_sync_ms: 0,
        listeners_reported: Cell::new(false),
        store: spec
            .store
            .map(|s| super::store::Store::new(s, Instant::now())),
    };
    for i in 0..w.listeners.len() {
        w.arm_accept(i);
    }
    w.arm_wake();
    w.arm_timer_if_needed();
    w.drive_store(Instant::now());
    let _ = ready.send(Ok(w.ctx.id));
    w.run_loop();
}

impl Worker {
    fn run_loop(&mut self) -> ! {
        let mut cqes: Vec<(u64, i32, u32)> = Vec::with_capacity(256);
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                // The completion queue is full: reap first.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    self.ctx.counters.ring_busy.inc();
                }
                Err(e) => {
                    self.ctx.counters.ring_submit_errors.inc();
                    tracing::warn!(worker = self.ctx.id, error = %e, "io_uring_enter failed");
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            if self.ring.submission().cq_overflow() {
                self.ctx.counters.ring_cq_overflow.inc();
            }
            cqes.clear();
            cqes.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            let now = Instant::now();
            for &(ud, res, flags) in &cqes {
                self.dispatch(ud, res, flags, now);
            }
            self.retry_enobufs(now);
            self.drive_touched(now);
            if self.store.is_some() {
                // Puts and lookups of this turn go out; answers drive their
                // connections (bounded: answers come from completions).
                for _ in 0..4 {
                    self.drive_store(now);
                    if self.touched.is_empty() {
                        break;
                    }
                    self.drive_touched(now);
                }
            }
        }
    }

    fn dispatch(&mut self, ud: u64, res: i32, flags: u32, now: Instant) {
        let Some(ud) = UserData::decode(ud) else {
            return;
        };
        match ud.tag {
            Tag::Accept => self.on_accept(ud.slot as usize, res, flags, now),
            Tag::AcceptBackoff => {
                let i = ud.slot as usize;
                if let Some(l) = self.listeners.get_mut(i) {
                    l.backoff = false;
                }
                self.arm_accept(i);
            }
            Tag::AcceptCancel => {}
            Tag::ListenerClose => {}
            Tag::Timer => self.on_timer(now),
            Tag::Wake => self.on_wake(now),
            Tag::Close => {}
            Tag::StoreConnect | Tag::StoreRecv | Tag::StoreSend | Tag::StoreTimer => {
                self.on_store_cqe(ud, res, now)
            }
            Tag::StoreCancel => {}
            _ => self.on_conn_cqe(ud, res, flags, now),
        }
    }

    /// Queues an SQE. A submit error fails nothing silently: it is counted
    /// and returned to the caller, which fails the op.
    ///
    /// # Safety
    ///
    /// As [`ops::push`]: what the entry points to outlives its completion.
    pub(super) unsafe fn push(&mut self, entry: squeue::Entry) -> std::io::Result<()> {
        // SAFETY: forwarded from the caller.
        let r = unsafe { ops::push(&mut self.ring, &entry) };
        if r.is_err() {
            self.ctx.counters.ring_submit_errors.inc();
        }
        r
    }

    // ------------------------------------------------------------------
    // Listeners
    // ------------------------------------------------------------------

    fn arm_accept(&mut self, i: usize) {
        if self.ctx.draining.get() {
            return;
        }
        let Some(l) = self.listeners.get(i) else {
            return;
        };
        let Some(sock) = &l.sock else { return };
        if l.armed || l.backoff {
            return;
        }
        let fd = sock.as_raw_fd();
        let entry = opcode::AcceptMulti::new(types::Fd(fd))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(
                UserData {
                    tag: Tag::Accept,
                    gen: 0,
                    slot: i as u32,
                }
                .encode(),
            );
        // SAFETY: the entry points to nothing but the listener fd, which
        // stays open until its accept has completed (see `on_wake`).
        if unsafe { self.push(entry) }.is_ok() {
            self.listeners[i].armed = true;
        }
    }

    fn on_accept(&mut self, i: usize, res: i32, flags: u32, now: Instant) {
        let more = cqueue::more(flags);
        if !more {
            if let Some(l) = self.listeners.get_mut(i) {
                l.armed = false;
            }
        }
        match ops::result(res) {
            Ok(fd) => self.on_new_connection(fd as RawFd, i, now),
            // Cancelled at the drain, or to be armed again (see
            // `refresh_accepts`).
            Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => {}
            Err(e) => {
                self.ctx.counters.accept_errors.inc();
                tracing::warn!(worker = self.ctx.id, error = %e, "accept failed");
                if !more {
                    // EMFILE/ENFILE: back off instead of spinning.
                    self.arm_backoff(i);
                    return;
                }
            }
        }
        if !more {
            if self.ctx.draining.get() {
                self.close_listener(i);
            } else {
                self.arm_accept(i);
            }
        }
    }

    /// Cancels the multishot accepts so that they are armed again: an
    /// accept takes the process's fd limit when it is submitted, so after
    /// the limit was lowered (fds ran out elsewhere) a fresh one is needed
    /// for accepts to wait instead of taking the fds connections need.
    pub(super) fn refresh_accepts(&mut self) {
        for i in 0..self.listeners.len() {
            if self.listeners[i].armed {
                self.cancel_accept(i);
            }
        }
    }

    /// Cancels listener `i`'s multishot accept (by its `user_data`); its
    /// last completion then says `ECANCELED` without `MORE`.
    fn cancel_accept(&mut self, i: usize) {
        let target = UserData {
            tag: Tag::Accept,
            gen: 0,
            slot: i as u32,
        }
        .encode();
        let entry = opcode::AsyncCancel::new(target).build().user_data(
            UserData {
                tag: Tag::AcceptCancel,
                gen: 0,
                slot: i as u32,
            }
            .encode(),
        );
        // SAFETY: the entry points to nothing.
        let _ = unsafe { self.push(entry) };
    }

    fn arm_backoff(&mut self, i: usize) {
        let entry = opcode::Timeout::new(&*self.backoff_ts as *const types::Timespec)
            .build()
            .user_data(
                UserData {
                    tag: Tag::AcceptBackoff,
                    gen: 0,
                    slot: i as u32,
                }
                .encode(),
            );
        // SAFETY: `backoff_ts` is boxed in the worker and outlives the ring.
        if unsafe { self.push(entry) }.is_ok() {
            self.listeners[i].backoff = true;
        }
    }

    fn close_listener(&mut self, i: usize) {
        let Some(l) = self.listeners.get_mut(i) else {
            return;
        };
        if l.armed || l.backoff {
            return;
        }
        if let Some(sock) = l.sock.take() {
            drop(sock);
        }
        if self.listeners.iter().all(|l| l.sock.is_none()) && !self.listeners_reported.replace(true)
        {
            // Every listener is closed (the drain began): tell the main
            // thread; keep serving the open connections.
            self.drain.listeners_closed();
        }
    }

    // ------------------------------------------------------------------
    // Timer and wake-ups
    // ------------------------------------------------------------------

    pub(super) fn arm_timer_if_needed(&mut self) {
        if self.timer_armed {
            return;
        }
        if self.ctx.sync_interval_ms.is_none()
            && self.ctx.deadlines.borrow().is_empty()
            && self.socket_retry.is_empty()
        {
            return;
        }
        let tick = match self.ctx.sync_interval_ms {
            Some(ms) => TIMER_TICK.min(Duration::from_millis(ms.max(1))),
            None => TIMER_TICK,
        };
        *self.timer_ts = types::Timespec::from(tick);
        let entry = opcode::Timeout::new(&*self.timer_ts as *const types::Timespec)
            .build()
            .user_data(
                UserData {
                    tag: Tag::Timer,
                    gen: 0,
                    slot: 0,
                }
                .encode(),
            );
        // SAFETY: `timer_ts` is boxed in the worker and outlives the ring;
        // it is not rewritten while this timeout is armed.
        if unsafe { self.push(entry) }.is_ok() {
            self.timer_armed = true;
        }
    }

    fn on_timer(&mut self, now: Instant) {
        self.timer_armed = false;
        for (index, gen, addr) in std::mem::take(&mut self.socket_retry) {
            if self.gens.get(index as usize) == Some(&gen) {
                self.retry_socket(index, addr, now);
                self.touched.push(index);
            }
        }
        let now_ms = self.ctx.ms_at(now);
        let expired = self.ctx.deadlines.borrow_mut().expire(now_ms);
        for key in expired {
            let slot = key as u32;
            if let Some(Some(s)) = self.slots.get_mut(slot as usize) {
                s.registered = None;
                s.conn.handle_timeout(now);
                self.touched.push(slot);
            }
        }
        if let Some(interval) = self.ctx.sync_interval_ms {
            if now_ms >= self.next_sync_ms {
                self.next_sync_ms = now_ms + interval;
                if let Some((stats, len, dropped)) = session_store::sync() {
                    self.ctx.counters.set_cache_stats(&stats, len, dropped);
                }
            }
        }
        self.arm_timer_if_needed();
    }

    fn arm_wake(&mut self) {
        let entry = opcode::Read::new(
            types::Fd(self.wake.fd()),
            (&mut *self.wake_buf as *mut u64).cast(),
            8,
        )
        .build()
        .user_data(
            UserData {
                tag: Tag::Wake,
                gen: 0,
                slot: 0,
            }
            .encode(),
        );
        // SAFETY: `wake_buf` is boxed in the worker and outlives the ring;
        // the eventfd is held by `self.wake`.
        let _ = unsafe { self.push(entry) };
    }

    fn on_wake(&mut self, now: Instant) {
        self.arm_wake();
        self.apply_routes();
        self.apply_health();
        if let Some(generation) = self.hist_hub.wanted_since(self.hist_answered) {
            self.hist_answered = generation;
            let copy = self.ctx.hist.borrow().clone();
            self.hist_hub.publish(self.ctx.id, generation, copy);
        }
        if self.drain.is_draining() && !self.ctx.draining.get() {
            self.ctx.draining.set(true);
            for i in 0..self.listeners.len() {
                if self.listeners[i].armed {
                    self.cancel_accept(i);
                } else {
                    self.close_listener(i);
                }
            }
        }
        if self.drain.is_cut() && !self.ctx.cutting.get() {
            self.ctx.cutting.set(true);
            for i in 0..self.slots.len() {
                if let Some(s) = self.slots[i].as_mut() {
                    s.conn.handle_stop(now);
                    self.touched.push(i as u32);
                }
            }
        }
    }

    // ------------------------------------------------------------------
    // Connections
    // ------------------------------------------------------------------

    fn on_new_connection(&mut self, fd: RawFd, listener: usize, now: Instant) {
        let c = &self.ctx.counters;
        c.accepted.inc();
        if self.ctx.max_connections > 0 && c.active.get() >= self.ctx.max_connections {
            // Plain close, no TLS: bounded, never queued.
            c.rejected_max_connections.inc();
            ops::close_now(fd);
            return;
        }
        c.active.inc();
        let index = alloc_slot(&mut self.slots, &mut self.gens, &mut self.free);
        match Slot::new(&self.ctx, fd, listener, now) {
            Ok(mut slot) => {
                if self.ctx.cutting.get() {
                    slot.conn.handle_stop(now);
                }
                self.slots[index as usize] = Some(slot);
                self.touched.push(index);
            }
            Err(err) => {
                self.ctx.counters.handshake_failures_tls.inc();
                tracing::warn!(worker = self.ctx.id, error = %err, "cannot start a TLS session");
                ops::close_now(fd);
                self.release(index);
                self.ctx.counters.active.dec();
            }
        }
    }

    /// Frees a slot: its generation moves on, so a late completion for the
    /// connection that had it is recognised as stale.
    pub(super) fn release(&mut self, index: u32) {
        release_slot(&mut self.slots, &mut self.gens, &mut self.free, index);
    }

    fn drive_touched(&mut self, now: Instant) {
        while let Some(index) = self.touched.pop() {
            self.drive(index, now);
        }
        self.arm_timer_if_needed();
        if let Some(log) = &self.ctx.access_log {
            log.borrow_mut().flush();
        }
    }

    /// Takes the backend table resolved again, when it changed.
    fn apply_routes(&mut self) {
        let Some((hub, seen)) = &self.ctx.route_hub else {
            return;
        };
        let generation = hub.generation();
        if seen.replace(generation) == generation {
            return;
        }
        let table = hub.table();
        self.ctx.pools.borrow_mut().update(&table);
        tracing::info!(
            worker = self.ctx.id,
            backends = table.distinct().len(),
            "backend addresses updated"
        );
    }

    /// Applies the health checks' verdicts, when they changed, to this
    /// worker's pools.
    fn apply_health(&mut self) {
        let Some((hub, seen)) = &self.ctx.health else {
            return;
        };
        let generation = hub.generation();
        if seen.replace(generation) == generation {
            return;
        }
        let mut pools = self.ctx.pools.borrow_mut();
        for (backend, up) in hub.verdicts() {
            pools.set_health(backend, up);
        }
        drop(pools);
        self.log_backend_events();
    }
}

/// A free slot's index (a new one when none is free).
pub(super) fn alloc_slot<T>(
    slots: &mut Vec<Option<T>>,
    gens: &mut Vec<u32>,
    free: &mut Vec<u32>,
) -> u32 {
    match free.pop() {
        Some(i) => i,
        None => {
            slots.push(None);
            gens.push(0);
            (slots.len() - 1) as u32
        }
    }
}

/// Empties slot `index` and moves its generation on.
pub(super) fn release_slot<T>(
    slots: &mut [Option<T>],
    gens: &mut [u32],
    free: &mut Vec<u32>,
    index: u32,
) {
    slots[index as usize] = None;
    gens[index as usize] = (gens[index as usize] + 1) & ops::GEN_MASK;
    free.push(index);
}

/// Whether a completion tagged `ud` belongs to the connection now in its
/// slot.
pub(super) fn is_live<T>(slots: &[Option<T>], gens: &[u32], ud: &UserData) -> bool {
    gens.get(ud.slot as usize) == Some(&ud.gen)
        && matches!(slots.get(ud.slot as usize), Some(Some(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A completion submitted for a connection arrives after that
    /// connection ended and another took its slot: it is recognised as
    /// stale and never reaches the new one.
    #[test]
    fn a_stale_completion_never_reaches_a_reused_slot() {
        let (mut slots, mut gens, mut free) = (Vec::new(), Vec::new(), Vec::new());
        let a = alloc_slot(&mut slots, &mut gens, &mut free);
        slots[a as usize] = Some("first");
        let first_recv = UserData {
            tag: Tag::ClientRecv,
            gen: gens[a as usize],
            slot: a,
        };
        assert!(is_live(&slots, &gens, &first_recv));
        release_slot(&mut slots, &mut gens, &mut free, a);
        assert!(
            !is_live(&slots, &gens, &first_recv),
            "a freed slot is not live"
        );
        let b = alloc_slot(&mut slots, &mut gens, &mut free);
        assert_eq!(a, b, "the slot is reused");
        slots[b as usize] = Some("second");
        assert!(!is_live(&slots, &gens, &first_recv), "stale after reuse");
        let second_recv = UserData {
            gen: gens[b as usize],
            ..first_recv
        };
        assert!(is_live(&slots, &gens, &second_recv));
        // Generations wrap without ever matching a recent one.
        for _ in 0..1000 {
            release_slot(&mut slots, &mut gens, &mut free, b);
            alloc_slot(&mut slots, &mut gens, &mut free);
            slots[b as usize] = Some("again");
            assert!(!is_live(&slots, &gens, &second_recv) || gens[b as usize] == second_recv.gen);
        }
    }
}
