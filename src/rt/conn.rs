//! The connection driver: submits what the connection machine
//! ([`crate::conn::Conn`]) asks for and feeds the completions back.
//!
//! No decision is made here: backpressure, half-close, alerts, deadlines,
//! the drain stop and backend retries are the machine's. A [`Slot`] owns
//! the connection's sockets, the buffers of its ops in flight (a write's
//! buffer, a read's pending bytes) and what it needs to cancel them. The
//! machine reports its outcome only once nothing is in flight, so a buffer
//! is never freed under the kernel; the sockets are then closed with
//! `IORING_OP_CLOSE` and the slot's generation moves on, so a completion
//! that still arrives for it (a close) can never reach the next connection
//! in the slot. Cancels go by `user_data`, one per op, and every result is
//! checked.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types};

use super::access_log;
use super::ctx::WorkerCtx;
use super::ops::{self, Tag, UserData};
use super::worker::Worker;
use crate::conn::{CancelResult, Conn, End, IoResult, Op, Outcome, Side};
use crate::metrics::hist::Metric;
use crate::record::{LentRecords, Segment, MAX_FRAGMENT_LEN};
use crate::route::{BackendAddr, BackendEvent};
use crate::tls::{Resumption, TlsError};

/// The largest write whose completion a wake-up may batch (see
/// `Worker::count_batched_sends`): one TLS record's worth and more.
const BATCH_SEND_MAX: usize = 64 * 1024;

/// The value `TCP_NODELAY` is set to; static, so that an op in flight can
/// point to it.
static NODELAY_ON: libc::c_int = 1;

/// Most payload a lent buffer may carry: two iovecs per record and one
/// more, and `sendmsg` takes at most `UIO_MAXIOV` (1024). Larger reads are
/// copied.
const LENT_MAX: usize = 500 * MAX_FRAGMENT_LEN;

/// A backend read's ring buffer, lent to the client write of the records
/// sealed in it (see `Conn::handle_recv_lent`), and what that `sendmsg`
/// points to. Boxed and pooled per worker: the op holds pointers into it
/// while it is in flight.
pub(super) struct LentSend {
    bid: u16,
    records: LentRecords,
    iov: Vec<libc::iovec>,
    msg: libc::msghdr,
    /// The `sendmsg` is in flight.
    in_flight: bool,
}

impl LentSend {
    fn new() -> Box<Self> {
        Box::new(Self {
            bid: 0,
            records: LentRecords::default(),
            iov: Vec::new(),
            // SAFETY: msghdr is plain data for which all-zero is valid
            // (null pointers, zero lengths).
            msg: unsafe { std::mem::zeroed() },
            in_flight: false,
        })
    }
}

/// A backend connect in progress.
enum Connecting {
    /// The socket op is in flight.
    Socket(BackendAddr),
    /// The connect op is in flight on this fd, with its address.
    Connect(RawFd, Box<socket2::SockAddr>),
}

/// One connection's runtime state.
pub(super) struct Slot {
    /// Boxed: the slot table grows by doubling, and a small slot keeps its
    /// spare capacity (and the copies left behind by growth) small.
    pub conn: Box<Conn>,
    client: RawFd,
    backend: Option<RawFd>,
    /// The machine's read buffers (pending bytes) while a read is in flight.
    c_recv: Option<Vec<u8>>,
    b_recv: Option<Vec<u8>>,
    /// Write buffers and their offsets while a write is in flight.
    c_send: Option<(Vec<u8>, usize)>,
    b_send: Option<(Vec<u8>, usize)>,
    /// A ring buffer lent to the client write (records sealed in place).
    c_lent: Option<Box<LentSend>>,
    connecting: Option<Connecting>,
    /// A cancel arrived while the backend socket was being created.
    cancel_socket: bool,
    /// Cancels in flight per side, and whether one failed.
    cancels: [u32; 2],
    cancel_failed: [bool; 2],
    /// The deadline registered in the worker's set (worker ms).
    pub registered: Option<u64>,
    accepted_at: Instant,
    /// The listener (index in the worker's) it came in on.
    listener: usize,
    /// Completion batching (see `Worker::batch`), per side: the loop turn
    /// a write was queued in, whether the last write completed before the
    /// next wake-up, and the writes of this turn not yet looked at.
    send_turn: [u64; 2],
    send_quick: [bool; 2],
    send_check: u8,
}

fn side_index(side: Side) -> usize {
    match side {
        Side::Client => 0,
        Side::Backend => 1,
    }
}

impl Slot {
    /// A new connection on `fd`, accepted on listener `listener`.
    pub fn new(
        ctx: &WorkerCtx,
        fd: RawFd,
        listener: usize,
        now: Instant,
    ) -> Result<Self, TlsError> {
        let frontend = ctx.frontend_of(listener);
        let cfg = ctx.conn_config(frontend);
        let (peer, local) = if cfg.proxy_out.is_some() {
            (peer_addr(fd), local_addr(fd))
        } else if ctx.access_log.is_some() {
            (peer_addr(fd), None)
        } else {
            (None, None)
        };
        let peer = peer.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        let conn = Box::new(Conn::new(
            cfg.clone(),
            ctx.tls_config(frontend),
            peer,
            local,
            now,
        )?);
        Ok(Self {
            conn,
            client: fd,
            backend: None,
            c_recv: None,
            b_recv: None,
            c_send: None,
            b_send: None,
            c_lent: None,
            connecting: None,
            cancel_socket: false,
            cancels: [0, 0],
            cancel_failed: [false, false],
            registered: None,
            accepted_at: now,
            listener,
            send_turn: [0, 0],
            send_quick: [true, true],
            send_check: 0,
        })
    }

    fn fd(&self, side: Side) -> Option<RawFd> {
        match side {
            Side::Client => Some(self.client),
            Side::Backend => self.backend,
        }
    }
}

impl Worker {
    fn ud(&self, tag: Tag, slot: u32) -> u64 {
        UserData {
            tag,
            gen: self.gens[slot as usize],
            slot,
        }
        .encode()
    }

    /// Asks the slot's machine for ops until it has none, submits them,
    /// then reports its outcome or keeps its deadline registered.
    pub(super) fn drive(&mut self, index: u32, now: Instant) {
        loop {
            let op = {
                let Some(Some(s)) = self.slots.get_mut(index as usize) else {
                    return;
                };
                s.conn.poll_op(now, &mut self.ctx.pools.borrow_mut())
            };
            let Some(op) = op else { break };
            self.submit(index, op, now);
        }
        self.count_batched_sends(index);
        self.release_unsent_lent(index);
        if self.ctx.pools.borrow().has_events() {
            self.log_backend_events();
        }
        let Some(Some(s)) = self.slots.get_mut(index as usize) else {
            return;
        };
        if let Some(outcome) = s.conn.poll_outcome() {
            self.finish(index, outcome, now);
            return;
        }
        // Keep the registered deadline at or before the machine's: a later
        // one is found when the registered one fires (the machine calls it
        // spurious), so activity costs no deadline-set update.
        let want = s.conn.poll_timeout().map(|at| self.ctx.ms_at(at));
        match (want, s.registered) {
            (None, Some(_)) => {
                self.ctx.clear_deadline(index as i64);
                s.registered = None;
            }
            (Some(w), r) if r.is_none_or(|r| w < r) => {
                self.ctx.set_deadline_at(index as i64, w);
                s.registered = Some(w);
            }
            _ => {}
        }
    }

    fn submit(&mut self, index: u32, op: Op, now: Instant) {
        let bgid = self.bufs.bgid();
        let s = self.slots[index as usize].as_mut().expect("a live slot");
        match op {
            Op::Recv { side, buf } => {
                let fd = s.fd(side).expect("a read on an open socket");
                match side {
                    Side::Client => s.c_recv = Some(buf),
                    Side::Backend => s.b_recv = Some(buf),
                }
                self.submit_recv(index, side, fd, bgid, now);
            }
            Op::Send { side, buf, off } => {
                let fd = s.fd(side).expect("a write on an open socket");
                let tag = match side {
                    Side::Client => Tag::ClientSend,
                    Side::Backend => Tag::BackendSend,
                };
                let ptr = buf[off..].as_ptr();
                let len = (buf.len() - off).min(u32::MAX as usize) as u32;
                match side {
                    Side::Client => s.c_send = Some((buf, off)),
                    Side::Backend => s.b_send = Some((buf, off)),
                }
                let entry = opcode::Send::new(types::Fd(fd), ptr, len)
                    .flags(libc::MSG_NOSIGNAL)
                    .build()
                    .user_data(self.ud(tag, index));
                let turn = self.turn;
                // SAFETY: the buffer is held in the slot until this send
                // completes (the machine reports no outcome before), and a
                // Vec's heap buffer does not move when the Vec does.
                if unsafe { self.push(entry) }.is_ok() {
                    self.note_send_queued(index, side, turn);
                } else {
                    let s = self.slots[index as usize].as_mut().expect("live");
                    let (buf, off) = match side {
                        Side::Client => s.c_send.take(),
                        Side::Backend => s.b_send.take(),
                    }
                    .expect("just stored");
                    s.conn
                        .handle_send(side, IoResult::Failed(io::ErrorKind::Other), buf, off, now);
                    self.touched.push(index);
                }
            }
            Op::SendLent { side } => self.submit_lent(index, side, now),
            // shutdown(2) is a plain syscall that never blocks;
            // IORING_OP_SHUTDOWN is always punted to an io-wq thread
            // (measured: ~6% of the CPU per connection).
            Op::ShutdownWrite { side } => {
                if let Some(fd) = s.fd(side) {
                    // SAFETY: plain syscall on a socket the slot owns.
                    unsafe { libc::shutdown(fd, libc::SHUT_WR) };
                }
            }
            Op::ShutdownBoth { side } => {
                if let Some(fd) = s.fd(side) {
                    // SAFETY: as above.
                    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
                }
            }
            Op::Connect { addr } => {
                let domain = match &addr {
                    BackendAddr::Tcp(a) if a.is_ipv4() => libc::AF_INET,
                    BackendAddr::Tcp(_) => libc::AF_INET6,
                    BackendAddr::Unix(_) => libc::AF_UNIX,
                };
                s.connecting = Some(Connecting::Socket(addr));
                s.cancel_socket = false;
                let entry = opcode::Socket::new(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0)
                    .build()
                    .user_data(self.ud(Tag::Socket, index));
                // SAFETY: the entry points to nothing.
                if unsafe { self.push(entry) }.is_err() {
                    let s = self.slots[index as usize].as_mut().expect("live");
                    s.connecting = None;
                    s.conn.handle_connect(
                        IoResult::Failed(io::ErrorKind::Other),
                        now,
                        &mut self.ctx.pools.borrow_mut(),
                    );
                    self.touched.push(index);
                }
            }
            Op::Cancel { side } => self.submit_cancels(index, side),
            Op::LookupSession { key, take } => {
                if !self.start_lookup(index, key, take, now) {
                    let s = self.slots[index as usize].as_mut().expect("live");
                    s.conn.handle_session(now);
                }
            }
        }
    }

    /// A write on `side` was queued in loop turn `turn` (for completion
    /// batching, see `count_batched_sends`).
    fn note_send_queued(&mut self, index: u32, side: Side, turn: u64) {
        let s = self.slots[index as usize].as_mut().expect("live");
        let i = side_index(side);
        s.send_turn[i] = turn;
        s.send_check |= 1 << i;
    }

    /// A buffer lent for records the machine no longer sends (it failed
    /// or stopped before the write) goes back to the ring.
    fn release_unsent_lent(&mut self, index: u32) {
        let Some(Some(s)) = self.slots.get_mut(index as usize) else {
            return;
        };
        if s.c_lent.as_ref().is_some_and(|l| !l.in_flight) && !s.conn.lent_pending() {
            let l = s.c_lent.take().expect("checked");
            self.return_lent(l);
        }
    }

    /// A lent buffer goes back to the ring, its `LentSend` to the pool.
    fn return_lent(&mut self, l: Box<LentSend>) {
        self.bufs.give_back(l.bid);
        self.lent_pool.push(l);
    }

    /// The writes queued for this slot in this turn whose completion the
    /// next wake-up need not wait for: the machine does nothing new when
    /// they complete (both reads in flight, nothing queued), they are
    /// small and the last one on their side completed at once. Counted in
    /// `Worker::batch`, so that the loop's next `io_uring_enter` waits for
    /// them *and* one more completion instead of returning at once with
    /// only the inline send completions (see `Worker::enter`).
    fn count_batched_sends(&mut self, index: u32) {
        if !self.batching() {
            return;
        }
        let Some(Some(s)) = self.slots.get_mut(index as usize) else {
            return;
        };
        if s.send_check == 0 {
            return;
        }
        let mut n = 0;
        for side in [Side::Client, Side::Backend] {
            let i = side_index(side);
            if s.send_check & (1 << i) == 0 || !s.send_quick[i] {
                continue;
            }
            let len = match side {
                Side::Client => s.c_send.as_ref(),
                Side::Backend => s.b_send.as_ref(),
            }
            .map(|(b, off)| b.len() - off)
            .or_else(|| {
                (side == Side::Client)
                    .then(|| s.c_lent.as_ref().map(|l| l.records.wire_len()))
                    .flatten()
            })
            .unwrap_or(usize::MAX);
            if len <= BATCH_SEND_MAX && s.conn.send_completion_is_bookkeeping(side) {
                n += 1;
            }
        }
        s.send_check = 0;
        self.batch += n;
    }

    /// The `sendmsg` of the records sealed in the slot's lent ring buffer:
    /// per record its header, its payload where the read left it, its
    /// trailer. `MSG_WAITALL`: the kernel finishes a partial write itself,
    /// so the buffer comes back whole, and only a cancel or an error leaves
    /// a rest (copied out then, see `on_conn_cqe`).
    fn submit_lent(&mut self, index: u32, side: Side, now: Instant) {
        let base = {
            let s = self.slots[index as usize].as_ref().expect("live");
            let l = s.c_lent.as_ref().expect("Op::SendLent follows a lent read");
            self.bufs.ptr(l.bid)
        };
        let ud = self.ud(Tag::ClientSend, index);
        let turn = self.turn;
        let s = self.slots[index as usize].as_mut().expect("live");
        let fd = s.client;
        let l = s.c_lent.as_mut().expect("checked");
        let LentSend {
            records, iov, msg, ..
        } = &mut **l;
        iov.clear();
        for seg in records.segments() {
            let (ptr, len) = match seg {
                Segment::Frame(r) => (records.frames()[r.clone()].as_ptr(), r.len()),
                // SAFETY: `r` lies within the buffer (the records were
                // sealed in its first bytes), which stays lent until this
                // op completes.
                Segment::Data(r) => (unsafe { base.add(r.start) }, r.len()),
            };
            iov.push(libc::iovec {
                iov_base: ptr as *mut libc::c_void,
                iov_len: len,
            });
        }
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = iov.len() as _;
        let entry = opcode::SendMsg::new(types::Fd(fd), &*msg)
            .flags((libc::MSG_NOSIGNAL | libc::MSG_WAITALL) as u32)
            .build()
            .user_data(ud);
        l.in_flight = true;
        // SAFETY: the msghdr, its iovecs, the frames and the ring buffer
        // they point to live in the slot's boxed `LentSend` and the ring,
        // neither moved nor reused until this op completes (the machine
        // reports no outcome while a write is in flight; the buffer is not
        // given back before the completion).
        if unsafe { self.push(entry) }.is_ok() {
            self.note_send_queued(index, side, turn);
        } else {
            let s = self.slots[index as usize].as_mut().expect("live");
            let l = s.c_lent.take().expect("just stored");
            s.conn.handle_send(
                side,
                IoResult::Failed(io::ErrorKind::Other),
                Vec::new(),
                0,
                now,
            );
            self.return_lent(l);
            self.touched.push(index);
        }
    }

    fn submit_recv(&mut self, index: u32, side: Side, fd: RawFd, bgid: u16, now: Instant) {
        let tag = match side {
            Side::Client => Tag::ClientRecv,
            Side::Backend => Tag::BackendRecv,
        };
        // No buffer: the kernel picks one from the ring when data arrives.
        let entry = opcode::Recv::new(types::Fd(fd), std::ptr::null_mut(), 0)
            .buf_group(bgid)
            .build()
            .flags(squeue::Flags::BUFFER_SELECT)
            .user_data(self.ud(tag, index));
        // SAFETY: the entry points to no memory of ours; the kernel writes
        // into a ring buffer, which lives as long as the ring.
        if unsafe { self.push(entry) }.is_err() {
            let s = self.slots[index as usize].as_mut().expect("live");
            let buf = match side {
                Side::Client => s.c_recv.take(),
                Side::Backend => s.b_recv.take(),
            }
            .unwrap_or_default();
            s.conn
                .handle_recv(side, IoResult::Failed(io::ErrorKind::Other), buf, now);
            self.touched.push(index);
        }
    }

    /// One cancel per op in flight on `side`, by its `user_data`.
    fn submit_cancels(&mut self, index: u32, side: Side) {
        let s = self.slots[index as usize].as_mut().expect("live");
        let mut targets = Vec::with_capacity(3);
        match side {
            Side::Client => {
                if s.c_recv.is_some() {
                    targets.push(Tag::ClientRecv);
                }
                if s.c_send.is_some() || s.c_lent.as_ref().is_some_and(|l| l.in_flight) {
                    targets.push(Tag::ClientSend);
                }
            }
            Side::Backend => {
                if s.b_recv.is_some() {
                    targets.push(Tag::BackendRecv);
                }
                if s.b_send.is_some() {
                    targets.push(Tag::BackendSend);
                }
                match s.connecting {
                    Some(Connecting::Connect(..)) => targets.push(Tag::Connect),
                    // A socket op cannot be cancelled usefully: its
                    // completion then reports the connect as cancelled.
                    Some(Connecting::Socket(_)) => s.cancel_socket = true,
                    None => {}
                }
            }
        }
        let cancel_tag = match side {
            Side::Client => Tag::ClientCancel,
            Side::Backend => Tag::BackendCancel,
        };
        let mut queued = 0;
        for t in targets {
            let target = self.ud(t, index);
            let entry = opcode::AsyncCancel::new(target)
                .build()
                .user_data(self.ud(cancel_tag, index));
            // SAFETY: the entry points to nothing.
            if unsafe { self.push(entry) }.is_ok() {
                queued += 1;
            }
        }
        let s = self.slots[index as usize].as_mut().expect("live");
        let i = side_index(side);
        if queued == 0 {
            // Nothing to cancel by user_data (a socket op in flight reports
            // the connect as cancelled when it completes).
            s.conn.handle_cancel(side, CancelResult::Cancelled(0));
            self.touched.push(index);
        } else {
            s.cancels[i] = queued;
            s.cancel_failed[i] = false;
        }
    }

    /// A completion for a connection slot.
    pub(super) fn on_conn_cqe(&mut self, ud: UserData, res: i32, flags: u32, now: Instant) {
        let index = ud.slot;
        let live = super::worker::is_live(&self.slots, &self.gens, &ud);
        if !live {
            // A completion for a connection that has ended: its buffer (if
            // any) goes back to the ring, nothing else happens.
            if let Some(bid) = cqueue::buffer_select(flags) {
                self.bufs.recycle(bid);
            }
            self.ctx.counters.stale_completions.inc();
            return;
        }
        self.touched.push(index);
        match ud.tag {
            Tag::ClientRecv => self.on_recv(index, Side::Client, res, flags, now),
            Tag::BackendRecv => self.on_recv(index, Side::Backend, res, flags, now),
            Tag::ClientSend | Tag::BackendSend => {
                let side = if ud.tag == Tag::ClientSend {
                    Side::Client
                } else {
                    Side::Backend
                };
                let turn = self.turn;
                let s = self.slots[index as usize].as_mut().expect("live");
                let sent = match side {
                    Side::Client => s.c_send.take(),
                    Side::Backend => s.b_send.take(),
                };
                let sent = match sent {
                    Some(sent) => sent,
                    None if side == Side::Client
                        && s.c_lent.as_ref().is_some_and(|l| l.in_flight) =>
                    {
                        let l = s.c_lent.take().expect("checked");
                        let wire = l.records.wire_len();
                        // All of it went out: nothing to resume. Else the
                        // machine gets the wire image to resume from (or
                        // to drop), and the ring its buffer back now.
                        let rest = match io_result(res) {
                            IoResult::Done(n) if n >= wire => Vec::new(),
                            IoResult::Failed(_) | IoResult::Done(0) => Vec::new(),
                            _ => {
                                let mut out = Vec::new();
                                l.records.gather(self.bufs.get_mut(l.bid), &mut out);
                                self.ctx.counters.lent_send_rest.inc();
                                out
                            }
                        };
                        self.return_lent(l);
                        (rest, 0)
                    }
                    None => return,
                };
                let s = self.slots[index as usize].as_mut().expect("live");
                let (buf, off) = sent;
                // Completed in the wake-up right after the turn that
                // queued it (inline, as sends to a socket with room do).
                let i = side_index(side);
                s.send_quick[i] = turn == s.send_turn[i] + 1;
                let r = io_result(res);
                if let IoResult::Done(n) = r {
                    let c = &self.ctx.counters;
                    match side {
                        Side::Client => c.bytes_to_clients.add(n as u64),
                        Side::Backend => c.bytes_to_backends.add(n as u64),
                    }
                }
                s.conn.handle_send(side, r, buf, off, now);
            }
            Tag::Socket => self.on_socket(index, res, now),
            Tag::Connect => {
                let s = self.slots[index as usize].as_mut().expect("live");
                let Some(Connecting::Connect(fd, _addr)) = s.connecting.take() else {
                    return;
                };
                let r = io_result(res);
                if r == IoResult::Done(0) {
                    s.backend = Some(fd);
                } else {
                    self.close_fd(fd, false);
                }
                let s = self.slots[index as usize].as_mut().expect("live");
                s.conn
                    .handle_connect(r, now, &mut self.ctx.pools.borrow_mut());
            }
            Tag::ClientCancel | Tag::BackendCancel => {
                let side = if ud.tag == Tag::ClientCancel {
                    Side::Client
                } else {
                    Side::Backend
                };
                let s = self.slots[index as usize].as_mut().expect("live");
                let i = side_index(side);
                // 0: cancelled; ENOENT: already completed; EALREADY: it is
                // completing. Anything else leaves the op in flight.
                if res < 0 && res != -libc::ENOENT && res != -libc::EALREADY {
                    s.cancel_failed[i] = true;
                }
                s.cancels[i] = s.cancels[i].saturating_sub(1);
                if s.cancels[i] == 0 {
                    let result = if s.cancel_failed[i] {
                        self.ctx.counters.cancel_failures.inc();
                        CancelResult::Failed(io::ErrorKind::Other)
                    } else {
                        CancelResult::Cancelled(1)
                    };
                    s.conn.handle_cancel(side, result);
                }
            }
            _ => {}
        }
    }

    fn on_recv(&mut self, index: u32, side: Side, res: i32, flags: u32, now: Instant) {
        let bid = cqueue::buffer_select(flags);
        if res == -libc::ENOBUFS {
            // The ring ran dry: nothing was read; read again once this
            // turn's buffers are back.
            self.ctx.counters.recv_enobufs.inc();
            self.enobufs.push((index, side));
            return;
        }
        let s = self.slots[index as usize].as_mut().expect("live");
        let buf = match side {
            Side::Client => s.c_recv.take(),
            Side::Backend => s.b_recv.take(),
        }
        .unwrap_or_default();
        let r = io_result(res);
        let n = match r {
            IoResult::Done(n) => n,
            _ => 0,
        };
        if n > 0 {
            let c = &self.ctx.counters;
            match side {
                Side::Client => c.bytes_from_clients.add(n as u64),
                Side::Backend => c.bytes_from_backends.add(n as u64),
            }
        }
        if side == Side::Client && !s.conn.is_established() && self.ctx.uses_session_cache() {
            // Sessions other workers created up to now become visible to
            // this handshake step.
            super::session_store::drain();
        }
        match bid {
            Some(bid)
                if side == Side::Backend
                    && n > 0
                    && n <= LENT_MAX
                    && s.c_lent.is_none()
                    && self.bufs.may_lend() =>
            {
                let mut l = self.lent_pool.pop().unwrap_or_else(LentSend::new);
                let data = self.bufs.get_mut(bid);
                if s.conn.handle_recv_lent(r, buf, data, &mut l.records, now) {
                    l.bid = bid;
                    l.in_flight = false;
                    s.c_lent = Some(l);
                    self.bufs.lend();
                    self.ctx.counters.lent_sends.inc();
                } else {
                    self.lent_pool.push(l);
                    self.bufs.recycle(bid);
                }
            }
            Some(bid) => {
                let data = self.bufs.get(bid, n);
                s.conn.handle_recv_with(side, r, buf, data, now);
                self.bufs.recycle(bid);
            }
            None => s.conn.handle_recv_with(side, r, buf, &[], now),
        }
    }

    /// Reads that hit `ENOBUFS` go again, after the turn returned its
    /// buffers to the ring.
    pub(super) fn retry_enobufs(&mut self, now: Instant) {
        let bgid = self.bufs.bgid();
        for (index, side) in std::mem::take(&mut self.enobufs) {
            let fd = match self.slots.get(index as usize) {
                Some(Some(s)) => s.fd(side),
                _ => None,
            };
            if let Some(fd) = fd {
                self.submit_recv(index, side, fd, bgid, now);
            }
        }
    }

    fn on_socket(&mut self, index: u32, res: i32, now: Instant) {
        let s = self.slots[index as usize].as_mut().expect("live");
        let Some(Connecting::Socket(addr)) = s.connecting.take() else {
            return;
        };
        let fd = match ops::result(res) {
            Ok(fd) => fd as RawFd,
            // Out of fds: not the backend's fault. The connect waits (its
            // deadline still runs) and the socket is made again at the
            // next tick; the accepts are armed again so that they wait too.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                s.connecting = Some(Connecting::Socket(addr.clone()));
                self.ctx.counters.fd_exhausted.inc();
                self.socket_retry
                    .push((index, self.gens[index as usize], addr));
                self.refresh_accepts();
                return;
            }
            Err(e) => {
                s.conn.handle_connect(
                    IoResult::Failed(e.kind()),
                    now,
                    &mut self.ctx.pools.borrow_mut(),
                );
                return;
            }
        };
        if std::mem::take(&mut s.cancel_socket) {
            self.close_fd(fd, false);
            let s = self.slots[index as usize].as_mut().expect("live");
            s.conn
                .handle_connect(IoResult::Cancelled, now, &mut self.ctx.pools.borrow_mut());
            return;
        }
        let sa = match &addr {
            BackendAddr::Tcp(a) => {
                self.nodelay(index, fd);
                socket2::SockAddr::from(*a)
            }
            // A path too long for sun_path fails like a refused connect.
            BackendAddr::Unix(path) => match socket2::SockAddr::unix(&**path) {
                Ok(sa) => sa,
                Err(e) => {
                    self.close_fd(fd, false);
                    let s = self.slots[index as usize].as_mut().expect("live");
                    s.conn.handle_connect(
                        IoResult::Failed(e.kind()),
                        now,
                        &mut self.ctx.pools.borrow_mut(),
                    );
                    return;
                }
            },
        };
        let sa = Box::new(sa);
        let entry = opcode::Connect::new(types::Fd(fd), sa.as_ptr().cast(), sa.len())
            .build()
            .user_data(self.ud(Tag::Connect, index));
        let s = self.slots[index as usize].as_mut().expect("live");
        s.connecting = Some(Connecting::Connect(fd, sa));
        // SAFETY: the address is boxed in the slot until the connect
        // completes; the fd is owned by the slot.
        if unsafe { self.push(entry) }.is_err() {
            let s = self.slots[index as usize].as_mut().expect("live");
            s.connecting = None;
            self.close_fd(fd, false);
            let s = self.slots[index as usize].as_mut().expect("live");
            s.conn.handle_connect(
                IoResult::Failed(io::ErrorKind::Other),
                now,
                &mut self.ctx.pools.borrow_mut(),
            );
        }
    }

    /// `TCP_NODELAY` on a new backend socket: an io_uring op where the
    /// kernel has `SOCKET_URING_OP_SETSOCKOPT` (6.7), with no completion
    /// unless it fails, so it costs no syscall; else `setsockopt(2)`. It
    /// completes inline, before the connect queued after it is issued.
    fn nodelay(&mut self, index: u32, fd: RawFd) {
        if !self.uring_sockopt {
            set_nodelay(fd);
            return;
        }
        // The test override makes the kernel refuse it (a zero length is
        // EINVAL), as a kernel before 6.7 does.
        let len = if super::ring::forced_missing("SOCKET_URING_OP_SETSOCKOPT") {
            0
        } else {
            std::mem::size_of::<libc::c_int>() as u32
        };
        let entry = opcode::SetSockOpt::new(
            types::Fd(fd),
            libc::IPPROTO_TCP as u32,
            libc::TCP_NODELAY as u32,
            (&NODELAY_ON as *const libc::c_int).cast(),
            len,
        )
        .build()
        .flags(squeue::Flags::SKIP_SUCCESS)
        .user_data(self.ud(Tag::SockOpt, index));
        // SAFETY: the option value is a static; the fd is owned by the slot.
        if unsafe { self.push(entry) }.is_err() {
            set_nodelay(fd);
        }
    }

    /// An io_uring `TCP_NODELAY` failed (a kernel before 6.7 answers
    /// `EOPNOTSUPP` or `EINVAL`): every later socket gets `setsockopt(2)`,
    /// and so does this one, if its connection still has it.
    pub(super) fn on_sockopt_failed(&mut self, ud: UserData, res: i32) {
        if self.uring_sockopt {
            self.uring_sockopt = false;
            tracing::info!(
                worker = self.ctx.id,
                error = %io::Error::from_raw_os_error(-res),
                "io_uring setsockopt unavailable (needs Linux 6.7): TCP_NODELAY by setsockopt(2)"
            );
        }
        if !super::worker::is_live(&self.slots, &self.gens, &ud) {
            return;
        }
        let s = self.slots[ud.slot as usize].as_ref().expect("live");
        let fd = match &s.connecting {
            Some(Connecting::Connect(fd, _)) => Some(*fd),
            _ => s.backend,
        };
        if let Some(fd) = fd {
            set_nodelay(fd);
        }
    }

    /// Creates the backend socket again after fds ran out (or reports the
    /// connect cancelled, when the machine cancelled it meanwhile).
    pub(super) fn retry_socket(&mut self, index: u32, addr: BackendAddr, now: Instant) {
        let Some(Some(s)) = self.slots.get_mut(index as usize) else {
            return;
        };
        if std::mem::take(&mut s.cancel_socket) {
            s.connecting = None;
            s.conn
                .handle_connect(IoResult::Cancelled, now, &mut self.ctx.pools.borrow_mut());
            return;
        }
        s.connecting = None;
        self.submit(index, Op::Connect { addr }, now);
    }

    /// Closes `fd` with `IORING_OP_CLOSE` (a reset first when `reset`).
    fn close_fd(&mut self, fd: RawFd, reset: bool) {
        if reset {
            set_linger_zero(fd);
        }
        let entry = opcode::Close::new(types::Fd(fd)).build().user_data(
            UserData {
                tag: Tag::Close,
                gen: 0,
                slot: 0,
            }
            .encode(),
        );
        // SAFETY: the entry points to nothing; the fd is ours to close.
        if unsafe { self.push(entry) }.is_err() {
            ops::close_now(fd);
        }
    }

    /// Logs the backends' ejections and reinstatements (at warn).
    pub(super) fn log_backend_events(&self) {
        for ev in self.ctx.pools.borrow_mut().take_events() {
            match ev {
                BackendEvent::Ejected(b) => {
                    tracing::warn!(worker = self.ctx.id, backend = %b, "backend ejected")
                }
                BackendEvent::Reinstated(b) => {
                    tracing::warn!(worker = self.ctx.id, backend = %b, "backend reinstated")
                }
            }
        }
    }

    /// The connection is over: count it, close its sockets, free the slot.
    fn finish(&mut self, index: u32, outcome: Outcome, now: Instant) {
        if self.store.is_some() {
            self.forget_lookup(index);
        }
        let mut s = self.slots[index as usize].take().expect("live");
        if let Some(l) = s.c_lent.take() {
            // Nothing is in flight once the outcome is out.
            self.return_lent(l);
        }
        self.ctx.clear_deadline(index as i64);
        count(&self.ctx, &outcome, s.accepted_at);
        if let Some(log) = &self.ctx.access_log {
            log.borrow_mut().log(&access_log::Record {
                out: &outcome,
                frontend: self.ctx.frontends.get(s.listener).copied().flatten(),
                worker: self.ctx.id,
                accepted_at: s.accepted_at,
                ended_at: now,
                time: std::time::SystemTime::now(),
            });
        }
        self.close_fd(s.client, outcome.reset_client);
        if let Some(b) = s.backend {
            self.close_fd(b, outcome.reset_backend);
        }
        self.release(index);
        self.ctx.record_since(Metric::Lifetime, s.accepted_at);
        self.ctx.counters.active.dec();
    }
}

/// Counts and records a finished connection: the one place where a
/// connection's facts become metrics.
fn count(ctx: &WorkerCtx, out: &Outcome, accepted_at: Instant) {
    let c = &ctx.counters;
    if let (Some(info), Some(at)) = (&out.handshake, out.established_at) {
        let m = if info.resumed {
            Metric::HandshakeResumed
        } else {
            Metric::HandshakeFull
        };
        ctx.record(m, at.saturating_duration_since(accepted_at));
        let tls13 = info.version == rustls::ProtocolVersion::TLSv1_3;
        match info.resumption {
            Some(kind) => {
                match kind {
                    Resumption::Tls13Ticket => c.handshakes_resumed_tls13_ticket.inc(),
                    Resumption::Tls13Stateful => c.handshakes_resumed_tls13_stateful.inc(),
                    Resumption::Tls12Ticket => c.handshakes_resumed_tls12_ticket.inc(),
                    Resumption::Tls12Id => c.handshakes_resumed_tls12_id.inc(),
                }
                if tls13 {
                    c.handshakes_resumed_tls13.inc();
                } else {
                    c.handshakes_resumed_tls12.inc();
                }
            }
            None if tls13 => c.handshakes_tls13.inc(),
            None => c.handshakes_tls12.inc(),
        }
    }
    if let Some((from, to)) = out.connect {
        if out.backend.is_some() {
            ctx.record(Metric::Connect, to.saturating_duration_since(from));
        }
    }
    if let Some(ttfb) = out.ttfb {
        ctx.record(Metric::Ttfb, ttfb);
    }
    c.backend_connect_failures
        .add(u64::from(out.connect_failures));
    c.backend_connect_timeouts
        .add(u64::from(out.connect_timeouts));
    c.backend_retries.add(u64::from(out.retries));
    if let Some(alert) = out.alert {
        c.alert(alert).inc();
    }
    match &out.end {
        End::Closed | End::ConnectFailed(_) | End::ConnectTimeout => {}
        End::ProxyHeader(_) => c.proxy_header_errors.inc(),
        End::HandshakeEof => c.handshake_failures_eof.inc(),
        End::HandshakeTimeout => c.handshake_timeouts.inc(),
        End::HandshakeTls(_) => c.handshake_failures_tls.inc(),
        End::Tls(_) | End::Io(..) => c.connection_errors.inc(),
        End::IdleTimeout => c.idle_timeouts.inc(),
        End::DrainCut => c.drain_cut.inc(),
        End::AcmeChallenge => {}
    }
    if out.end != End::Closed {
        tracing::debug!(worker = ctx.id, end = ?out.end, "connection ended");
    }
}

/// An op's result as the machine sees it.
fn io_result(res: i32) -> IoResult {
    match ops::result(res) {
        Ok(n) => IoResult::Done(n as usize),
        Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => IoResult::Cancelled,
        Err(e) => IoResult::Failed(e.kind()),
    }
}

fn set_nodelay(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: plain setsockopt on a socket we own, from a live int.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Makes the socket's close send a reset (SO_LINGER 0): the machine dropped
/// bytes owed to that peer, which must not see a clean end.
fn set_linger_zero(fd: RawFd) {
    let fdb = unsafe_borrow(fd);
    let _ = socket2::SockRef::from(&fdb).set_linger(Some(Duration::ZERO));
}

fn peer_addr(fd: RawFd) -> Option<SocketAddr> {
    let fdb = unsafe_borrow(fd);
    socket2::SockRef::from(&fdb).peer_addr().ok()?.as_socket()
}

fn local_addr(fd: RawFd) -> Option<SocketAddr> {
    let fdb = unsafe_borrow(fd);
    socket2::SockRef::from(&fdb).local_addr().ok()?.as_socket()
}

fn unsafe_borrow(fd: RawFd) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: callers pass a socket their slot owns and use the borrow
    // only for the duration of one call, before the slot closes it.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}
