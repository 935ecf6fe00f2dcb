//! The connection driver: submits what the connection machine
//! ([`crate::conn::Conn`]) asks for and feeds the completions back.
//!
//! No decision is made here: backpressure, half-close, alerts, deadlines,
//! the drain stop and backend retries are the machine's. This file only
//! owns the sockets and the in-flight ops (one slot per kind: client read,
//! client write, backend read, backend write, connect, a cancel per side)
//! and polls them. An op is never dropped before it completes: the machine
//! reports its outcome only once nothing is in flight, which is what makes
//! tokio-uring's drop-does-not-cancel hazard harmless here. Cancels go by
//! the fd of a socket this connection still owns (it closes only after the
//! outcome), so they can never reach another connection's reused fd.
//!
//! Deadlines: the machine says when it next wants [`Conn::handle_timeout`];
//! the driver keeps one entry in the worker's deadline set, moved only when
//! the machine's deadline comes earlier (a later one is found when the
//! registered one fires, which the machine then calls spurious). The timer
//! and the drain's cut wake the connection through its [`ConnSignal`].

use std::future::poll_fn;
use std::future::Future;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio_uring::net::TcpStream;

use super::ctx::{ConnSignal, WorkerCtx};
use super::ops;
use crate::conn::{CancelResult, Conn, End, IoResult, Op, Outcome, Side};
use crate::metrics::hist::Metric;
use crate::tls::Resumption;

/// Serves one accepted client connection to completion. The caller has
/// counted it in `active`; this takes it off.
pub async fn serve(ctx: Rc<WorkerCtx>, client: TcpStream, peer: SocketAddr) {
    let accepted_at = Instant::now();
    let client = Rc::new(client);
    let key = client.as_raw_fd() as i64;
    let signal = ctx.track(key);
    let local = if ctx.conn.proxy_out.is_some() {
        local_addr(&client)
    } else {
        None
    };
    match Conn::new(ctx.conn.clone(), ctx.tls_config(), peer, local, accepted_at) {
        Ok(conn) => {
            let mut driver = Driver {
                ctx: &ctx,
                conn,
                client,
                backend: None,
                key,
                signal: &signal,
                registered: None,
                cut_seen: false,
                c_read: None,
                c_write: None,
                b_read: None,
                b_write: None,
                connect: None,
                c_cancel: None,
                b_cancel: None,
            };
            let outcome = driver.run().await;
            // Before the sockets can close: no deadline may name the fd.
            ctx.clear_deadline(key);
            ctx.untrack(key);
            count(&ctx, &outcome, accepted_at);
            if outcome.reset_client {
                reset_on_close(&driver.client);
            }
            if let Some(backend) = &driver.backend {
                if outcome.reset_backend {
                    reset_on_close(backend);
                }
            }
        }
        Err(err) => {
            // An unusable TLS configuration: nothing was submitted.
            ctx.untrack(key);
            ctx.counters.handshake_failures_tls.inc();
            tracing::warn!(worker = ctx.id, error = %err, "cannot start a TLS session");
        }
    }
    ctx.record_since(Metric::Lifetime, accepted_at);
    ctx.counters.active.dec();
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
    }
    if out.end != End::Closed {
        tracing::debug!(worker = ctx.id, end = ?out.end, "connection ended");
    }
}

/// A completed op.
enum Event {
    Signal,
    Recv(Side, io::Result<usize>, Vec<u8>),
    Send(Side, io::Result<usize>, Vec<u8>, usize),
    Connect(io::Result<u32>),
    Cancel(Side, io::Result<u32>),
}

struct Driver<'a> {
    ctx: &'a WorkerCtx,
    conn: Conn,
    client: Rc<TcpStream>,
    backend: Option<Rc<TcpStream>>,
    /// The client fd: the connection's key in the worker's sets.
    key: i64,
    signal: &'a ConnSignal,
    /// The deadline registered in the worker's set (worker ms).
    registered: Option<u64>,
    cut_seen: bool,
    c_read: Option<ops::Recv>,
    c_write: Option<(ops::Send, usize)>,
    b_read: Option<ops::Recv>,
    b_write: Option<(ops::Send, usize)>,
    connect: Option<(ops::PlainOp, Rc<TcpStream>)>,
    c_cancel: Option<ops::PlainOp>,
    b_cancel: Option<ops::PlainOp>,
}

impl Driver<'_> {
    async fn run(&mut self) -> Outcome {
        loop {
            let now = Instant::now();
            if self.signal.cut.get() && !self.cut_seen {
                self.cut_seen = true;
                self.conn.handle_stop(now);
            }
            if self.signal.fired.take() {
                self.registered = None;
                self.conn.handle_timeout(now);
            }
            loop {
                let op = self.conn.poll_op(now, &mut self.ctx.pools.borrow_mut());
                let Some(op) = op else { break };
                self.submit(op);
            }
            if let Some(outcome) = self.conn.poll_outcome() {
                return outcome;
            }
            self.arm_deadline();
            let event = self.next_event().await;
            let now = Instant::now();
            self.feed(event, now);
        }
    }

    /// Keeps the registered deadline at or before the machine's.
    fn arm_deadline(&mut self) {
        let want = self.conn.poll_timeout().map(|at| self.ctx.ms_at(at));
        match (want, self.registered) {
            (None, Some(_)) => {
                self.ctx.clear_deadline(self.key);
                self.registered = None;
            }
            (Some(w), r) if r.is_none_or(|r| w < r) => {
                self.ctx.set_deadline_at(self.key, w);
                self.registered = Some(w);
            }
            _ => {}
        }
    }

    fn sock(&self, side: Side) -> Option<&Rc<TcpStream>> {
        match side {
            Side::Client => Some(&self.client),
            Side::Backend => self
                .backend
                .as_ref()
                .or(self.connect.as_ref().map(|(_, s)| s)),
        }
    }

    fn submit(&mut self, op: Op) {
        match op {
            Op::Recv { side, buf } => {
                let sock = self.sock(side).expect("a read on an open socket");
                let recv = ops::recv(sock, buf);
                match side {
                    Side::Client => self.c_read = Some(recv),
                    Side::Backend => self.b_read = Some(recv),
                }
            }
            Op::Send { side, buf, off } => {
                let sock = self.sock(side).expect("a write on an open socket");
                let send = ops::send(sock, buf, off);
                match side {
                    Side::Client => self.c_write = Some((send, off)),
                    Side::Backend => self.b_write = Some((send, off)),
                }
            }
            // shutdown(2) is a plain syscall that never blocks;
            // IORING_OP_SHUTDOWN is always punted to an io-wq thread
            // (measured: ~6% of the CPU per connection).
            Op::ShutdownWrite { side } => {
                if let Some(sock) = self.sock(side) {
                    let _ = sock.shutdown(Shutdown::Write);
                }
            }
            Op::ShutdownBoth { side } => {
                if let Some(sock) = self.sock(side) {
                    let _ = sock.shutdown(Shutdown::Both);
                }
            }
            Op::Connect { addr } => match new_backend_socket(addr) {
                Ok(sock) => {
                    let op = ops::connect(&sock, socket2::SockAddr::from(addr));
                    self.connect = Some((op, sock));
                }
                // Reported as the connect's own completion, next turn.
                Err(e) => {
                    let now = Instant::now();
                    self.conn.handle_connect(
                        IoResult::Failed(e.kind()),
                        now,
                        &mut self.ctx.pools.borrow_mut(),
                    );
                }
            },
            Op::Cancel { side } => {
                let fd = self.sock(side).map(|s| s.as_raw_fd());
                let cancel = fd.map(ops::cancel_fd);
                match (side, cancel) {
                    (Side::Client, Some(c)) => self.c_cancel = Some(c),
                    (Side::Backend, Some(c)) => self.b_cancel = Some(c),
                    (_, None) => self.conn.handle_cancel(side, CancelResult::Cancelled(0)),
                }
            }
        }
    }

    /// Waits for the next completion (or a signal); the other ops stay in
    /// their slots.
    async fn next_event(&mut self) -> Event {
        let signal = self.signal;
        poll_fn(|cx| {
            if signal.fired.get() || (signal.cut.get() && !self.cut_seen) {
                return Poll::Ready(Event::Signal);
            }
            signal.waker.set(Some(cx.waker().clone()));
            if let Some(op) = self.c_read.as_mut() {
                if let Poll::Ready((res, buf)) = Pin::new(op).poll(cx) {
                    self.c_read = None;
                    return Poll::Ready(Event::Recv(Side::Client, res, buf));
                }
            }
            if let Some((op, off)) = self.c_write.as_mut() {
                let off = *off;
                if let Poll::Ready((res, buf)) = Pin::new(op).poll(cx) {
                    self.c_write = None;
                    return Poll::Ready(Event::Send(Side::Client, res, buf, off));
                }
            }
            if let Some(op) = self.b_read.as_mut() {
                if let Poll::Ready((res, buf)) = Pin::new(op).poll(cx) {
                    self.b_read = None;
                    return Poll::Ready(Event::Recv(Side::Backend, res, buf));
                }
            }
            if let Some((op, off)) = self.b_write.as_mut() {
                let off = *off;
                if let Poll::Ready((res, buf)) = Pin::new(op).poll(cx) {
                    self.b_write = None;
                    return Poll::Ready(Event::Send(Side::Backend, res, buf, off));
                }
            }
            if let Some((op, _)) = self.connect.as_mut() {
                if let Poll::Ready(res) = Pin::new(op).poll(cx) {
                    return Poll::Ready(Event::Connect(res));
                }
            }
            if let Some(op) = self.c_cancel.as_mut() {
                if let Poll::Ready(res) = Pin::new(op).poll(cx) {
                    self.c_cancel = None;
                    return Poll::Ready(Event::Cancel(Side::Client, res));
                }
            }
            if let Some(op) = self.b_cancel.as_mut() {
                if let Poll::Ready(res) = Pin::new(op).poll(cx) {
                    self.b_cancel = None;
                    return Poll::Ready(Event::Cancel(Side::Backend, res));
                }
            }
            Poll::Pending
        })
        .await
    }

    fn feed(&mut self, event: Event, now: Instant) {
        let counters = &self.ctx.counters;
        match event {
            Event::Signal => {}
            Event::Recv(side, res, buf) => {
                if let Ok(n) = res {
                    match side {
                        Side::Client => counters.bytes_from_clients.add(n as u64),
                        Side::Backend => counters.bytes_from_backends.add(n as u64),
                    }
                }
                if side == Side::Client
                    && !self.conn.is_established()
                    && self.ctx.uses_session_cache()
                {
                    // Sessions other workers created up to now become
                    // visible to this handshake step.
                    super::session_store::drain();
                }
                self.conn.handle_recv(side, io_result(res), buf, now);
            }
            Event::Send(side, res, buf, off) => {
                if let Ok(n) = res {
                    match side {
                        Side::Client => counters.bytes_to_clients.add(n as u64),
                        Side::Backend => counters.bytes_to_backends.add(n as u64),
                    }
                }
                self.conn.handle_send(side, io_result(res), buf, off, now);
            }
            Event::Connect(res) => {
                let (_, sock) = self.connect.take().expect("connect slot");
                let res = io_result(res.map(|n| n as usize));
                if res == IoResult::Done(0) {
                    self.backend = Some(sock);
                }
                // A failed socket closes here: its only op has completed.
                self.conn
                    .handle_connect(res, now, &mut self.ctx.pools.borrow_mut());
            }
            Event::Cancel(side, res) => {
                let res = match res {
                    Ok(n) => CancelResult::Cancelled(n as usize),
                    // Nothing left to cancel, or already completing.
                    Err(e)
                        if e.raw_os_error() == Some(libc::ENOENT)
                            || e.raw_os_error() == Some(libc::EALREADY) =>
                    {
                        CancelResult::Cancelled(0)
                    }
                    Err(e) => {
                        tracing::warn!(worker = self.ctx.id, error = %e, "cancel failed");
                        CancelResult::Failed(e.kind())
                    }
                };
                self.conn.handle_cancel(side, res);
            }
        }
    }
}

/// An op's result as the machine sees it.
fn io_result(res: io::Result<usize>) -> IoResult {
    match res {
        Ok(n) => IoResult::Done(n),
        Err(e) if ops::is_cancelled(&e) => IoResult::Cancelled,
        Err(e) => IoResult::Failed(e.kind()),
    }
}

/// A TCP socket for a backend connection (TCP_NODELAY).
fn new_backend_socket(addr: SocketAddr) -> io::Result<Rc<TcpStream>> {
    let domain = socket2::Domain::for_address(addr);
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    sock.set_nodelay(true)?;
    let std_stream: std::net::TcpStream = sock.into();
    Ok(Rc::new(TcpStream::from_std(std_stream)))
}

/// Makes the socket's close send a reset (SO_LINGER 0): the machine dropped
/// bytes owed to that peer, which must not see a clean end.
fn reset_on_close(sock: &TcpStream) {
    // SAFETY: the fd belongs to `sock`, which outlives this borrow.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(sock.as_raw_fd()) };
    let _ = socket2::SockRef::from(&fd).set_linger(Some(Duration::ZERO));
}

/// The local address of a connected socket.
fn local_addr(sock: &TcpStream) -> Option<SocketAddr> {
    // SAFETY: the fd belongs to `sock`, which outlives this borrow.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(sock.as_raw_fd()) };
    socket2::SockRef::from(&fd).local_addr().ok()?.as_socket()
}
