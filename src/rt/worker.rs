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

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::bufring::BufRing;
use super::conn::Slot;
use super::ctx::WorkerCtx;
use super::drain::DrainHub;
use super::heap::{self, HeapTrim};
use super::hist_hub::HistHub;
use super::ops::{self, Tag, UserData};
use super::wake::WakeFd;
use super::{ring, session_store};
use crate::conn::{ConnConfig, CLOSE_FLUSH};
use crate::deadline::Deadlines;
use crate::metrics::hist::Histograms;
use crate::metrics::WorkerCounters;
use crate::route::Pools;
use crate::session::cache::CacheConfig;

/// How often the worker's timer looks at its deadlines while some exist.
const TIMER_TICK: Duration = Duration::from_millis(100);

/// Back-off after a failed accept (EMFILE, ENFILE): fd exhaustion never
/// spins.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The longest a loop turn's wait is stretched to collect the completions
/// of sends that usually complete at once (see `Worker::enter`).
const BATCH_WAIT: Duration = Duration::from_micros(500);

/// The general bound of a coalesced wait (see `Worker::enter`): after
/// `--coalesce-usec` without a completion it waits for the first one, up
/// to this long.
const COALESCE_IDLE: Duration = Duration::from_secs(1);

/// Turns completion batching off, for A/B measurements
/// (`RINGTERM_TEST_NO_BATCH=1`).
pub const NO_BATCH_ENV: &str = "RINGTERM_TEST_NO_BATCH";

/// Buffer group of the read buffers.
const BGID: u16 = 1;

/// What a worker thread needs to start.
pub struct WorkerSpec {
    /// Worker index.
    pub id: usize,
    /// CPU to pin to.
    pub cpu: usize,
    /// This worker's listening sockets (already bound, SO_REUSEPORT), each
    /// with its listener group's id (see [`super::live::ListenerGroup`]).
    pub listeners: Vec<(std::net::TcpListener, u64)>,
    /// Each frontend's TLS configuration.
    pub tls: super::reload::TlsSet,
    /// Backends, routes, frontends' settings and listener groups (changed
    /// by reloads).
    pub live: Arc<super::live::LiveHub>,
    /// The validated settings (`settings.ring_entries()`, ...), read
    /// once when the worker starts; what a reload changes comes through
    /// `live`.
    pub settings: Arc<crate::config::Settings>,
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
    /// Pending ACME TLS-ALPN-01 challenges, when ACME is on.
    pub acme: Option<&'static crate::tls::acme::AcmeChallenges>,
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
    /// Its listener group (see [`super::live::ListenerGroup`]).
    pub group: u64,
    /// A reload removed its address: it closes once its accept ended.
    pub retired: bool,
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
    /// Spare [`super::conn::LentSend`]s, reused (boxed: a write in flight
    /// points into one, so it must not move when the pool grows).
    #[allow(clippy::vec_box)]
    pub lent_pool: Vec<Box<super::conn::LentSend>>,
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
    /// When to give the C heap's free pages back (see `heap`).
    heap_trim: HeapTrim,
    listeners_reported: Cell<bool>,
    /// The L2 session store connection (after the ring: its buffers
    /// outlive the ops that use them).
    pub(super) store: Option<super::store::Store>,
    /// Loop turns so far (a send's completion in the turn right after the
    /// one that queued it came at once).
    pub(super) turn: u64,
    /// Sends queued this turn whose completions the next wait also waits
    /// for (see `Worker::count_batched_sends`).
    pub(super) batch: usize,
    /// What the last wait asked for, when it batched (else 0).
    batched: usize,
    /// How the kernel bounds such a wait, if it can.
    batch_wait: BatchWait,
    /// The fallback bound (a timeout), pointed to during the wait.
    batch_ts: Box<types::Timespec>,
    /// Completions per wake-up, for coalesced waits (`--coalesce-usec`).
    coalesce: super::coalesce::Coalesce,
    /// The bound of a coalesced wait, µs; 0: waits do not coalesce.
    coalesce_usec: u32,
    /// `COALESCE_IDLE`, pointed to during a coalesced wait.
    coalesce_ts: Box<types::Timespec>,
    /// The arrivals the last wait asked for, when it coalesced (else 0).
    coalesced: usize,
    /// `TCP_NODELAY` goes as an io_uring op (until the kernel refuses it).
    pub(super) uring_sockopt: bool,
}

/// How a batched wait is bounded (see `Worker::enter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BatchWait {
    /// No batching: every turn waits for one completion (SQPOLL, or a
    /// kernel without `IORING_FEAT_EXT_ARG`).
    Off,
    /// `min_wait_usec` (Linux 6.12): after `BATCH_WAIT`, any completion
    /// ends the wait.
    MinWait,
    /// A timeout (Linux 5.11): after `BATCH_WAIT` the wait ends, with or
    /// without completions.
    Timeout,
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
    let settings = &spec.settings;
    let buffer_size = settings.buffer_size();
    // At most 32768 (its declared check).
    let read_buffers = u16::try_from(settings.read_buffers()).unwrap_or(1 << 15);
    let (ring, setup) = match ring::build(settings.ring_entries(), settings.sqpoll) {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return;
        }
    };
    let bufs = match BufRing::new(&ring, read_buffers, buffer_size, BGID) {
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
    let batch_wait = if setup.sqpoll || std::env::var_os(NO_BATCH_ENV).is_some() {
        BatchWait::Off
    } else if ring.params().is_feature_min_timeout() {
        BatchWait::MinWait
    } else if ring.params().is_feature_ext_arg() {
        BatchWait::Timeout
    } else {
        BatchWait::Off
    };
    // Coalescing needs DEFER_TASKRUN (the kernel holds the wake-up until
    // enough completions are pending) and min_wait (it never holds one
    // past the bound): so never with SQPOLL, nor before Linux 6.12.
    let coalesce_usec = if batch_wait == BatchWait::MinWait && setup.defer_taskrun {
        settings.coalesce_usec()
    } else {
        0
    };
    let sync_interval_ms = spec.cache.as_ref().map(|c| c.sync_interval_ms);
    if let Some(cache) = spec.cache {
        session_store::install(spec.id, cache.config, cache.hub, cache.epoch);
    }
    let epoch = Instant::now();
    let seen = spec.live.generation();
    let live = spec.live.load();
    let mut pools = Pools::new_multi(&live.tables);
    pools.count_into(spec.counters.clone());
    let frontends = spec
        .listeners
        .iter()
        .map(|(l, _)| l.local_addr().ok())
        .collect();
    let listener_frontend = spec
        .listeners
        .iter()
        .map(|(_, g)| live.frontend_of(*g).unwrap_or(0))
        .collect();
    let base = ConnConfig {
        accept_proxy: false,
        proxy_out: None,
        handshake_timeout: Duration::ZERO,
        connect_timeout: Duration::ZERO,
        idle_timeout: None,
        buffer_size,
        close_flush: CLOSE_FLUSH,
        epoch,
        runtime_buffers: true,
        session_lookup: spec.store.is_some(),
        frontend: 0,
        acme: spec.acme,
    };
    let ctx = WorkerCtx {
        access_log: spec.access_log.map(RefCell::new),
        frontends,
        listener_frontend,
        health: spec.health.map(|h| (h, Cell::new(0))),
        live: (spec.live, Cell::new(seen)),
        id: spec.id,
        tls: spec.tls,
        local_tls: RefCell::new(Vec::new()),
        pools: RefCell::new(pools),
        conns: conn_configs(&live, &base),
        max_connections: live.settings.max_connections(),
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
        .map(|(l, group)| Listener {
            sock: Some(l),
            armed: false,
            backoff: false,
            group,
            retired: false,
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
        lent_pool: Vec::new(),
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
        heap_trim: HeapTrim::default(),
        listeners_reported: Cell::new(false),
        store: spec
            .store
            .map(|s| super::store::Store::new(s, Instant::now())),
        turn: 0,
        batch: 0,
        batched: 0,
        batch_wait,
        batch_ts: Box::new(types::Timespec::from(BATCH_WAIT)),
        coalesce: super::coalesce::Coalesce::new(),
        coalesce_usec,
        coalesce_ts: Box::new(types::Timespec::from(COALESCE_IDLE)),
        coalesced: 0,
        uring_sockopt: true,
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
            match self.enter() {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                // A batched wait's bound passed.
                Err(e) if e.raw_os_error() == Some(libc::ETIME) => {}
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
            if self.batched > 0 {
                self.ctx.counters.ring_batch_waits.inc();
                if cqes.len() < self.batched {
                    self.ctx.counters.ring_batch_short.inc();
                }
            }
            if self.coalesce_usec > 0 {
                let found = super::coalesce::arrivals(cqes.iter().map(|c| c.0));
                if self.coalesced > 0 {
                    self.ctx.counters.ring_coalesced_waits.inc();
                    if found < self.coalesced {
                        self.ctx.counters.ring_coalesced_short.inc();
                    }
                }
                self.coalesce.observe(found);
            }
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

    /// Whether sends may be batched (see `Worker::count_batched_sends`).
    pub(super) fn batching(&self) -> bool {
        self.batch_wait != BatchWait::Off
    }

    /// The turn's one `io_uring_enter`: submits what the turn queued and
    /// waits for a completion.
    ///
    /// A send to a socket with room completes inline, during the submit,
    /// so a plain wait for one completion returns at once with nothing but
    /// that send's completion, and a second `io_uring_enter` waits for the
    /// real next event (the response, the next request): four calls per
    /// keep-alive request instead of two. So when this turn queued sends
    /// whose completions only give a buffer back (`self.batch` of them),
    /// the wait asks for `1 + batch` completions. Should such a send not
    /// complete at once (the peer's window is full), the wait is bounded
    /// by `BATCH_WAIT`, after which any completion ends it, and that side
    /// is not batched again until one of its sends completes at once.
    ///
    /// Under load (`--coalesce-usec`, see [`super::coalesce`]), the wait
    /// asks for about as many completions as the last wake-ups found, on
    /// top of those sends': the kernel (`DEFER_TASKRUN`) wakes the worker
    /// once they are pending, or after `--coalesce-usec` at the first one
    /// (past the bound, with none, it sleeps on as a plain wait would, up
    /// to `COALESCE_IDLE`).
    fn enter(&mut self) -> std::io::Result<usize> {
        let batch = std::mem::take(&mut self.batch);
        self.turn += 1;
        self.batched = 0;
        self.coalesced = 0;
        let more = if self.coalesce_usec > 0 {
            self.coalesce.want() as usize
        } else {
            1
        };
        if more > 1 {
            self.coalesced = more;
            if batch > 0 {
                self.batched = 1 + batch;
            }
            let args = types::SubmitArgs::new()
                .min_wait_usec(self.coalesce_usec)
                .timespec(&self.coalesce_ts);
            return self.ring.submitter().submit_with_args(batch + more, &args);
        }
        if batch == 0 || self.batch_wait == BatchWait::Off {
            return self.ring.submit_and_wait(1);
        }
        let want = 1 + batch;
        self.batched = want;
        match self.batch_wait {
            BatchWait::Off => self.ring.submit_and_wait(1),
            BatchWait::MinWait => {
                let args = types::SubmitArgs::new().min_wait_usec(BATCH_WAIT.as_micros() as u32);
                self.ring.submitter().submit_with_args(want, &args)
            }
            BatchWait::Timeout => {
                let args = types::SubmitArgs::new().timespec(&self.batch_ts);
                self.ring.submitter().submit_with_args(want, &args)
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
            Tag::SockOpt => self.on_sockopt_failed(ud, res),
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
        if l.retired {
            self.close_listener_now(i);
            return;
        }
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
            if self.ctx.draining.get() || self.listeners.get(i).is_some_and(|l| l.retired) {
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
        if self.ctx.draining.get()
            && self.listeners.iter().all(|l| l.sock.is_none())
            && !self.listeners_reported.replace(true)
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
        let n_expired = expired.len();
        for key in expired {
            let slot = key as u32;
            if let Some(Some(s)) = self.slots.get_mut(slot as usize) {
                s.registered = None;
                s.conn.handle_timeout(now);
                self.touched.push(slot);
            }
        }
        let more_ticks = self.ctx.sync_interval_ms.is_some()
            || !self.ctx.deadlines.borrow().is_empty()
            || !self.socket_retry.is_empty();
        if self.heap_trim.on_tick(n_expired, now_ms, more_ticks) {
            heap::trim();
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
        self.apply_live();
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

    /// Takes what a reload (or host names resolved again) changed: the
    /// backend tables, each frontend's connection settings, and the
    /// listeners (new addresses start accepting; removed ones stop, their
    /// established connections go on).
    fn apply_live(&mut self) {
        let (hub, seen) = &self.ctx.live;
        let generation = hub.generation();
        if seen.replace(generation) == generation {
            return;
        }
        let live = hub.load();
        self.ctx.pools.borrow_mut().update_multi(&live.tables);
        let base = ConnConfig::clone(&self.ctx.conns[0]);
        self.ctx.conns = conn_configs(&live, &base);
        self.ctx.max_connections = live.settings.max_connections();
        // Listeners: retire those whose address went, add the new ones.
        for i in 0..self.listeners.len() {
            let l = &self.listeners[i];
            if l.retired || l.sock.is_none() {
                continue;
            }
            match live.frontend_of(l.group) {
                Some(f) => self.ctx.listener_frontend[i] = f,
                None => {
                    self.listeners[i].retired = true;
                    tracing::info!(
                        worker = self.ctx.id,
                        addr = ?self.ctx.frontends.get(i).copied().flatten(),
                        "reload: listener removed; open connections go on"
                    );
                    if self.listeners[i].armed {
                        self.cancel_accept(i);
                    } else {
                        self.close_listener_now(i);
                    }
                }
            }
        }
        for g in &live.listeners {
            if self.listeners.iter().any(|l| l.group == g.id) {
                continue;
            }
            for sock in g.take_for(self.ctx.id) {
                if self.ctx.draining.get() {
                    // Stopping: a new address is not served (closed here).
                    continue;
                }
                let i = self.listeners.len();
                self.ctx.frontends.push(sock.local_addr().ok());
                self.ctx.listener_frontend.push(g.frontend);
                self.listeners.push(Listener {
                    sock: Some(sock),
                    armed: false,
                    backoff: false,
                    group: g.id,
                    retired: false,
                });
                self.arm_accept(i);
            }
        }
        tracing::info!(
            worker = self.ctx.id,
            frontends = live.tables.len(),
            backends = self.ctx.pools.borrow().backends().len(),
            "reload: backends and listeners updated"
        );
    }

    /// Closes listener `i` (no accept in flight on it) outside a drain.
    fn close_listener_now(&mut self, i: usize) {
        if let Some(l) = self.listeners.get_mut(i) {
            if !l.armed && !l.backoff {
                l.sock = None;
            }
        }
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
            pools.set_health(&backend, up);
        }
        drop(pools);
        self.log_backend_events();
    }
}

/// Each frontend's connection settings: `base` (what every frontend
/// shares) with the frontend's PROXY settings and the timeouts of `live`.
fn conn_configs(live: &super::live::Live, base: &ConnConfig) -> Vec<Arc<ConnConfig>> {
    let ms = Duration::from_millis;
    let s = &live.settings;
    let idle = s.idle_timeout();
    let mut out: Vec<Arc<ConnConfig>> = live
        .frontends
        .iter()
        .enumerate()
        .map(|(i, f)| {
            Arc::new(ConnConfig {
                accept_proxy: f.accept_proxy,
                proxy_out: f.proxy_out,
                handshake_timeout: ms(s.handshake_timeout()),
                connect_timeout: ms(s.connect_timeout()),
                idle_timeout: (idle > 0).then(|| ms(idle)),
                frontend: i,
                ..base.clone()
            })
        })
        .collect();
    if out.is_empty() {
        out.push(Arc::new(base.clone()));
    }
    out
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
