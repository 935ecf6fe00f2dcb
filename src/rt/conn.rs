//! The connection driver: accept → handshake → connect → relay → close.
//!
//! Completion-driven: every completed read calls the sans-IO step function
//! ([`TlsSession`]), and its answer decides the next op to submit. No code
//! here waits on readiness.
//!
//! The relay keeps at most one op per kind in a slot (client read, client
//! write, backend read, backend write) and polls whichever are
//! in flight. An op is never dropped before it completes: on an error the
//! driver cancels what is in flight with `IORING_OP_ASYNC_CANCEL` and keeps
//! polling until every slot is empty. This is what makes tokio-uring's
//! drop-does-not-cancel hazard harmless here.
//!
//! Backpressure: the client is read only when the plaintext for the backend
//! has been handed to the kernel, and the backend is read only when the
//! ciphertext for the client has. Each direction holds at most two buffers
//! (one pending, one in flight), so memory per connection is bounded
//! whatever the peers do.

use std::future::{poll_fn, Future};
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::Instant;

use tokio_uring::net::TcpStream;

use super::ops;
use super::worker::WorkerCtx;
use crate::metrics::hist::Metric;
use crate::session::cache::SessionKind;
use crate::tls::{AlertKind, Status, TlsError, TlsSession};

/// Ciphertext queued for the client above which we stop reading the client
/// (a flood of KeyUpdates cannot grow it without bound).
const TO_CLIENT_LIMIT: usize = 64 * 1024;

/// First relay read size on each side. Reads that come back full double
/// it, up to the relay buffer size: idle connections stay light (a read's
/// buffer is committed for as long as it is in flight: measured 22.7 KB per
/// idle connection with 4 KiB first reads, 12.4 KB with 512 B), busy ones
/// get large reads within a few round trips.
const FIRST_READ: usize = 512;

/// Largest spare write buffer a connection keeps once nothing is pending.
const IDLE_KEEP: usize = 0;

/// Read size during the handshake: one read holds a typical ClientHello,
/// post-quantum key shares included.
const HANDSHAKE_READ: usize = 2048;

/// How long a stopping connection (idle timeout, drain cut) may take to
/// flush what it still owes the client and its close_notify.
const CLOSE_FLUSH_MS: u64 = 1000;

/// The idle deadline is moved at most this often (and at least every
/// eighth of the timeout): each completion costs a clock read, not a
/// deadline-set update.
const IDLE_REARM_MAX_MS: u64 = 100;

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The TLS layer failed (bad input, alert).
    #[error("{0}")]
    Tls(#[from] TlsError),
    /// The PROXY protocol header from the balancer was missing or bad.
    #[error("PROXY header: {0}")]
    ProxyHeader(crate::proxy::ProxyError),
    /// The client closed or reset before the handshake completed.
    #[error("client went away during the handshake")]
    HandshakeEof,
    /// The handshake took longer than the handshake timeout.
    #[error("handshake timeout")]
    HandshakeTimeout,
    /// The backend refused or could not be reached.
    #[error("backend connect: {0}")]
    Connect(io::Error),
    /// The backend connect took longer than the connect timeout.
    #[error("backend connect timeout")]
    ConnectTimeout,
    /// No byte moved in either direction for the idle timeout.
    #[error("idle timeout")]
    IdleTimeout,
    /// Still open when the shutdown drain timed out.
    #[error("cut at the end of the shutdown drain")]
    DrainCut,
    /// A socket error.
    #[error("io: {0}")]
    Io(#[from] io::Error),
}

/// Serves one accepted client connection to completion. The caller has
/// counted it in `active`; this takes it off.
pub async fn serve(ctx: Rc<WorkerCtx>, client: TcpStream, peer: SocketAddr) {
    let counters = &ctx.counters;
    let client = Rc::new(client);
    let accepted_at = Instant::now();
    let mut established = false;
    let key = client.as_raw_fd() as i64;
    ctx.track(key);
    let result = drive(&ctx, &client, peer, accepted_at, &mut established).await;
    // Before the socket can close: no deadline, link or cut may name it.
    ctx.clear_deadline(key);
    ctx.untrack(key);
    if let Err(err) = result {
        match err {
            // After the handshake the relay counted it (connection_errors).
            ConnError::Tls(_) if established => {}
            ConnError::Tls(_) => counters.handshake_failures_tls.inc(),
            ConnError::ProxyHeader(_) => counters.proxy_header_errors.inc(),
            ConnError::HandshakeEof => counters.handshake_failures_eof.inc(),
            ConnError::HandshakeTimeout => counters.handshake_timeouts.inc(),
            ConnError::Connect(_) => counters.backend_connect_failures.inc(),
            ConnError::ConnectTimeout => counters.backend_connect_timeouts.inc(),
            ConnError::IdleTimeout => counters.idle_timeouts.inc(),
            ConnError::DrainCut => counters.drain_cut.inc(),
            ConnError::Io(_) => counters.connection_errors.inc(),
        }
        tracing::debug!(worker = ctx.id, error = %err, "connection ended");
    }
    ctx.record_since(Metric::Lifetime, accepted_at);
    counters.active.dec();
}

async fn drive(
    ctx: &Rc<WorkerCtx>,
    client: &Rc<TcpStream>,
    peer: SocketAddr,
    accepted_at: Instant,
    established: &mut bool,
) -> Result<(), ConnError> {
    let mut session = TlsSession::new(ctx.tls.load_full())?;
    let mut rx = Vec::new();
    let mut to_client = Vec::new();
    let mut to_backend = Vec::new();

    // Phase 1: the handshake, under the handshake deadline.
    let key = client.as_raw_fd() as i64;
    if ctx.is_cutting() {
        return Err(ConnError::DrainCut);
    }
    ctx.set_deadline(key, ctx.handshake_timeout_ms);
    // The addresses a PROXY header toward the backend carries: the TCP
    // peer, or what a fronting balancer's PROXY header said.
    let mut addresses = None;
    if ctx.proxy_out.is_some() {
        addresses = local_addr(client).map(|local| (peer, local));
    }
    let handshake = async {
        if ctx.accept_proxy {
            let (header, rest) = read_proxy_header(ctx, client, key).await?;
            if let (Some(src), Some(dst)) = (header.source, header.destination) {
                addresses = Some((src, dst));
            } else if header.local {
                addresses = None;
            }
            rx = rest;
        }
        handshake(
            ctx,
            client,
            key,
            &mut session,
            &mut rx,
            &mut to_client,
            &mut to_backend,
        )
        .await
    }
    .await;
    let expired = !ctx.clear_deadline(key);
    match handshake {
        Err(ConnError::Io(e)) if ops::is_cancelled(&e) && ctx.is_cutting() => {
            return Err(ConnError::DrainCut)
        }
        Err(ConnError::Io(e)) if ops::is_cancelled(&e) && expired => {
            return Err(ConnError::HandshakeTimeout)
        }
        Err(e) => return Err(e),
        Ok(_) if expired => return Err(ConnError::HandshakeTimeout),
        Ok(_) => {}
    }
    let used_ticket = matches!(handshake, Ok(true));
    *established = true;
    if let Some(info) = session.handshake_info() {
        let c = &ctx.counters;
        let m = if info.resumed {
            Metric::HandshakeResumed
        } else {
            Metric::HandshakeFull
        };
        ctx.record_since(m, accepted_at);
        if info.resumed {
            let tls13 = info.version == rustls::ProtocolVersion::TLSv1_3;
            match (tls13, used_ticket) {
                (true, true) => c.handshakes_resumed_tls13_ticket.inc(),
                (true, false) => c.handshakes_resumed_tls13_stateful.inc(),
                (false, true) => c.handshakes_resumed_tls12_ticket.inc(),
                (false, false) => c.handshakes_resumed_tls12_id.inc(),
            }
            if tls13 {
                c.handshakes_resumed_tls13.inc();
            } else {
                c.handshakes_resumed_tls12.inc();
            }
        } else if info.version == rustls::ProtocolVersion::TLSv1_3 {
            c.handshakes_tls13.inc();
        } else {
            c.handshakes_tls12.inc();
        }
        let k = super::session_store::kind_counts();
        c.session_id_hits.set(k.id_hits);
        c.session_id_misses.set(k.id_misses);
        c.session_stateful_hits.set(k.stateful_hits);
        c.session_stateful_misses.set(k.stateful_misses);
        c.session_ticket_hits.set(k.ticket_hits);
        c.session_ticket_misses.set(k.ticket_misses);
        c.session_tickets_issued.set(k.tickets_issued);
    }

    // The handshake buffer goes back to the allocator: the relay's first
    // reads are small, so an idle connection holds little.
    if rx.capacity() > FIRST_READ {
        rx = Vec::new();
    }

    // Early data that came with the client's Finished starts the
    // time-to-first-byte clock.
    let ttfb_from = (!to_backend.is_empty()).then(Instant::now);

    // The PROXY header goes first, before any plaintext.
    if let Some(version) = ctx.proxy_out {
        let mut header = Vec::with_capacity(256 + to_backend.len());
        proxy_header(version, addresses, &session, &mut header)?;
        header.extend_from_slice(&to_backend);
        to_backend = header;
    }

    // Phase 2: connect to the backend, under the connect deadline.
    let connect_from = Instant::now();
    let backend = Rc::new(connect_routed(ctx, key, session.sni()).await?);
    ctx.record_since(Metric::Connect, connect_from);
    if ctx.is_cutting() {
        return Err(ConnError::DrainCut);
    }

    // Phase 3: relay both directions until both are closed, under the idle
    // deadline (keyed by the client fd, linked to the backend socket).
    ctx.link(key, backend.as_raw_fd());
    if ctx.idle_timeout_ms > 0 {
        ctx.set_deadline(key, ctx.idle_timeout_ms);
    }
    let result = Relay {
        ctx,
        client,
        backend: &backend,
        key,
        idle_ms: ctx.idle_timeout_ms,
        idle_rearm_ms: (ctx.idle_timeout_ms / 8).clamp(1, IDLE_REARM_MAX_MS),
        idle_armed_at: ctx.now_ms(),
        session,
        rx,
        brx: Vec::new(),
        to_client,
        to_backend,
        spare_c: Vec::new(),
        spare_b: Vec::new(),
        c_read_size: FIRST_READ,
        b_read_size: FIRST_READ.min(ctx.buffer_size),
        ttfb_from,
        ttfb_done: false,
    }
    .run()
    .await;
    // Every op has completed: the backend socket may close.
    ctx.clear_deadline(key);
    ctx.unlink(key);
    result
}

/// Drives the handshake: read → step → write, until the session is
/// established. Any ciphertext that arrives with the client's Finished (early
/// application data) is left decrypted in `to_backend`.
async fn handshake(
    ctx: &WorkerCtx,
    client: &Rc<TcpStream>,
    key: i64,
    session: &mut TlsSession,
    rx: &mut Vec<u8>,
    to_client: &mut Vec<u8>,
    to_backend: &mut Vec<u8>,
) -> Result<bool, ConnError> {
    // `rx` may already hold bytes that came after a PROXY header: the start
    // of the ClientHello, handled as if just read.
    let mut already_read = !rx.is_empty();
    // Whether a stateless ticket decrypted during this handshake: the
    // ticketer counts on this thread, inside `handle_read`, which runs
    // without yielding, so no other connection's handshake interleaves.
    let mut used_ticket = false;
    loop {
        // The deadline may have expired while no op of ours was in flight
        // (between a send's completion and the next read): its cancel then
        // found nothing, so look before submitting anything new.
        in_time(ctx, key)?;
        if already_read {
            already_read = false;
        } else {
            session.prepare_read(rx, HANDSHAKE_READ);
            let (res, buf) = ops::recv(client, std::mem::take(rx)).await;
            *rx = buf;
            if handshake_read(ctx, res)? == 0 {
                return Err(ConnError::HandshakeEof);
            }
        }
        in_time(ctx, key)?;
        if !session.is_established() && ctx.uses_session_cache() {
            // Sessions other workers created up to now become visible here.
            super::session_store::drain();
        }
        // rustls's store API does not say what it stores: tell the store,
        // so its per-kind counters can tag the entry.
        super::session_store::set_put_kind(match session.negotiated_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => SessionKind::Tls13Stateful,
            Some(rustls::ProtocolVersion::TLSv1_2) => SessionKind::Tls12Id,
            _ => SessionKind::Unknown,
        });
        let tickets_before = super::session_store::kind_counts().ticket_hits;
        let status = session.handle_read(rx, to_client, to_backend);
        used_ticket |= super::session_store::kind_counts().ticket_hits > tickets_before;
        if let Err(err) = status {
            if let Some(alert) = AlertKind::of_failure(&err, to_client) {
                ctx.counters.alert(alert).inc();
                // Best effort: the connection is failing anyway.
                let _ = send_all(ctx, client, to_client).await;
            }
            return Err(err.into());
        }
        if !to_client.is_empty() {
            send_all(ctx, client, to_client).await?;
        }
        match status {
            Ok(Status::Handshaking) => continue,
            Ok(_) => return Ok(used_ticket),
            Err(_) => unreachable!("handled above"),
        }
    }
}

/// Reads a PROXY protocol header (`--accept-proxy`), under the handshake
/// deadline. Returns it and the bytes that followed it (the start of the
/// ClientHello). Bounded: the parser refuses a header longer than its
/// limit, so at most one read past that is ever buffered.
async fn read_proxy_header(
    ctx: &WorkerCtx,
    client: &Rc<TcpStream>,
    key: i64,
) -> Result<(crate::proxy::ProxyHeader, Vec<u8>), ConnError> {
    use crate::proxy::{parse, ParseLimits, Parsed};
    let limits = ParseLimits::default();
    let mut buf: Vec<u8> = Vec::with_capacity(HANDSHAKE_READ);
    loop {
        // As in the handshake: a deadline that expired between ops cancelled
        // nothing; look before submitting.
        in_time(ctx, key)?;
        // Read what is there (a header usually arrives whole, with the
        // ClientHello behind it); `recv` appends into the spare capacity.
        buf.reserve(HANDSHAKE_READ);
        let (res, back) = ops::recv(client, buf).await;
        buf = back;
        if handshake_read(ctx, res)? == 0 {
            return Err(match buf.first() {
                None => ConnError::HandshakeEof,
                Some(&b) => ConnError::ProxyHeader(crate::proxy::ProxyError::Missing(b)),
            });
        }
        in_time(ctx, key)?;
        match parse(&buf, &limits) {
            Ok(Parsed::Done { header, consumed }) => {
                buf.drain(..consumed);
                return Ok((header, buf));
            }
            Ok(Parsed::NeedMore) => continue,
            Err(e) => return Err(ConnError::ProxyHeader(e)),
        }
    }
}

/// A completed client read before the handshake is done: the byte count
/// (0 at EOF), counted. A cancellation stays an IO error (the caller's
/// deadline or drain check names it); any other error is the client going
/// away.
fn handshake_read(ctx: &WorkerCtx, res: io::Result<usize>) -> Result<usize, ConnError> {
    match res {
        Ok(n) => {
            ctx.counters.bytes_from_clients.add(n as u64);
            Ok(n)
        }
        Err(e) if ops::is_cancelled(&e) => Err(ConnError::Io(e)),
        Err(_) => Err(ConnError::HandshakeEof),
    }
}

/// Whether a handshake-phase connection may go on: not cut by the drain,
/// and its handshake deadline not expired. Checked after each completed
/// read and before each new submit (see `LIFECYCLE.md`: a deadline that
/// expires between ops cancels nothing).
fn in_time(ctx: &WorkerCtx, key: i64) -> Result<(), ConnError> {
    if ctx.is_cutting() {
        Err(ConnError::DrainCut)
    } else if !ctx.has_deadline(key) {
        Err(ConnError::HandshakeTimeout)
    } else {
        Ok(())
    }
}

/// The local address of a connected socket.
fn local_addr(sock: &TcpStream) -> Option<SocketAddr> {
    // SAFETY: the fd belongs to `sock`, which outlives this borrow.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(sock.as_raw_fd()) };
    socket2::SockRef::from(&fd).local_addr().ok()?.as_socket()
}

/// Encodes the PROXY header for a finished handshake.
fn proxy_header(
    version: crate::proxy::Version,
    addresses: Option<(SocketAddr, SocketAddr)>,
    session: &TlsSession,
    out: &mut Vec<u8>,
) -> Result<(), ConnError> {
    use crate::proxy::{encode, EncodeInfo, SslEncode};
    let info = session.handshake_info();
    let version_name = |v: rustls::ProtocolVersion| match v {
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
        _ => "unknown",
    };
    let ssl = info.as_ref().map(|i| SslEncode {
        version: version_name(i.version),
        cipher: i.cipher.unwrap_or(""),
        cert_in_connection: i.client_cert && !i.resumed,
        cert_in_session: i.client_cert,
        cert_verified: i.client_cert,
        client_cn: i.client_cn.as_deref(),
        sig_alg: None,
        key_alg: None,
    });
    let encoded = EncodeInfo {
        addresses,
        alpn: info.as_ref().and_then(|i| i.alpn.as_deref()),
        authority: info.as_ref().and_then(|i| i.sni.as_deref()),
        ssl,
    };
    encode(version, &encoded, out)
        .map(|_| ())
        .map_err(|e| ConnError::Io(io::Error::other(e.to_string())))
}

/// Sends all of `buf`, then clears it.
async fn send_all(ctx: &WorkerCtx, sock: &Rc<TcpStream>, buf: &mut Vec<u8>) -> io::Result<()> {
    let mut off = 0;
    let mut owned = std::mem::take(buf);
    while off < owned.len() {
        let (res, back) = ops::send(sock, owned, off).await;
        owned = back;
        match res {
            Ok(0) => {
                *buf = owned;
                return Err(io::ErrorKind::WriteZero.into());
            }
            Ok(n) => {
                ctx.counters.bytes_to_clients.add(n as u64);
                off += n;
            }
            Err(e) => {
                *buf = owned;
                return Err(e);
            }
        }
    }
    owned.clear();
    *buf = owned;
    Ok(())
}

/// Connects to a backend of the connection's pool (by SNI): round-robin
/// over the backends in rotation; a backend that fails is taken out for the
/// ejection time and, when the pool has another, the next one is tried once.
async fn connect_routed(
    ctx: &WorkerCtx,
    client_key: i64,
    sni: Option<&str>,
) -> Result<TcpStream, ConnError> {
    let pool = ctx.pools.borrow().pool_for(sni);
    let tries = ctx.pools.borrow().len(pool).min(2);
    let mut last_err = ConnError::Connect(io::Error::other("no backend configured"));
    let mut skip = None;
    for attempt in 0..tries {
        let picked = ctx.pools.borrow_mut().pick(pool, ctx.now_ms(), skip);
        let Some(addr) = picked else { break };
        match connect(ctx, client_key, addr).await {
            Ok(stream) => {
                ctx.pools.borrow_mut().succeeded(pool, addr);
                return Ok(stream);
            }
            // Shutting down: no retry, and the backend did nothing wrong.
            Err(ConnError::DrainCut) => return Err(ConnError::DrainCut),
            Err(err) => {
                ctx.pools.borrow_mut().failed(pool, addr, ctx.now_ms());
                if attempt + 1 < tries {
                    // Counted here: the last failure is counted by the caller.
                    match err {
                        ConnError::ConnectTimeout => ctx.counters.backend_connect_timeouts.inc(),
                        _ => ctx.counters.backend_connect_failures.inc(),
                    }
                    ctx.counters.backend_retries.inc();
                }
                tracing::debug!(worker = ctx.id, backend = %addr, error = %err, "backend connect failed");
                last_err = err;
                skip = Some(addr);
            }
        }
    }
    Err(last_err)
}

/// Connects to the backend with an io_uring connect, cancelled at the
/// connect deadline (or by the drain's cut, through the link from the
/// client's fd `client_key`).
async fn connect(
    ctx: &WorkerCtx,
    client_key: i64,
    addr: SocketAddr,
) -> Result<TcpStream, ConnError> {
    let domain = socket2::Domain::for_address(addr);
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))
        .map_err(ConnError::Connect)?;
    sock.set_nodelay(true).map_err(ConnError::Connect)?;
    let std_stream: std::net::TcpStream = sock.into();
    let stream = Rc::new(TcpStream::from_std(std_stream));
    let key = stream.as_raw_fd() as i64;
    ctx.set_deadline(key, ctx.connect_timeout_ms);
    ctx.link(client_key, stream.as_raw_fd());
    let res = ops::connect(&stream, socket2::SockAddr::from(addr)).await;
    ctx.unlink(client_key);
    let expired = !ctx.clear_deadline(key);
    match res {
        Err(e) if ctx.is_cutting() && ops::is_cancelled(&e) => return Err(ConnError::DrainCut),
        Ok(_) if !expired => {}
        Ok(_) => return Err(ConnError::ConnectTimeout),
        Err(e) if expired && ops::is_cancelled(&e) => return Err(ConnError::ConnectTimeout),
        Err(e) => return Err(ConnError::Connect(e)),
    }
    // The op holding the other reference has completed and been dropped.
    Rc::try_unwrap(stream).map_err(|_| ConnError::Connect(io::Error::other("socket still shared")))
}

/// Adapts a side's read size: double when a read filled the room it was
/// offered, halve (down to [`FIRST_READ`]) when it used under an eighth.
fn next_read_size(size: usize, got: usize, offered: usize, max: usize) -> usize {
    if got >= offered {
        (size * 2).min(max)
    } else if got < offered / 8 {
        (size / 2).max(FIRST_READ)
    } else {
        size
    }
}

/// A completed op in the relay.
enum Event {
    ClientRead(io::Result<usize>, Vec<u8>),
    ClientWrite(io::Result<usize>, Vec<u8>),
    BackendRead(io::Result<usize>, Vec<u8>),
    BackendWrite(io::Result<usize>, Vec<u8>),
    Cancelled,
}

/// Why a relay stops before both directions closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The idle deadline expired.
    Idle,
    /// The drain timed out.
    DrainCut,
}

impl From<Stop> for ConnError {
    fn from(s: Stop) -> Self {
        match s {
            Stop::Idle => ConnError::IdleTimeout,
            Stop::DrainCut => ConnError::DrainCut,
        }
    }
}

struct Relay<'a> {
    ctx: &'a WorkerCtx,
    client: &'a Rc<TcpStream>,
    backend: &'a Rc<TcpStream>,
    /// The client fd: the idle deadline's key.
    key: i64,
    /// Idle timeout, ms; 0 = off.
    idle_ms: u64,
    /// Move the idle deadline only when it was set this long ago.
    idle_rearm_ms: u64,
    /// When the idle deadline was last set (`WorkerCtx::now_ms`).
    idle_armed_at: u64,
    session: TlsSession,
    /// Client read buffer (ciphertext), when no read is in flight.
    rx: Vec<u8>,
    /// Backend read buffer (plaintext), when no read is in flight.
    brx: Vec<u8>,
    /// Ciphertext waiting to be written to the client.
    to_client: Vec<u8>,
    /// Plaintext waiting to be written to the backend.
    to_backend: Vec<u8>,
    /// Buffers recycled from completed writes.
    spare_c: Vec<u8>,
    spare_b: Vec<u8>,
    /// Current read sizes (adaptive, see [`FIRST_READ`]).
    c_read_size: usize,
    b_read_size: usize,
    /// When the first plaintext from the client was ready for the backend.
    ttfb_from: Option<Instant>,
    /// Whether the backend has sent its first byte.
    ttfb_done: bool,
}

impl Relay<'_> {
    /// Bytes moved (or a side closed): push the idle deadline back. Cheap
    /// when it was moved recently; re-arms at once if it had expired, so
    /// the cancellation it caused is seen as spurious.
    fn touch(&mut self) {
        if self.idle_ms == 0 {
            return;
        }
        let now = self.ctx.now_ms();
        if now.saturating_sub(self.idle_armed_at) >= self.idle_rearm_ms
            || !self.ctx.has_deadline(self.key)
        {
            self.ctx.set_deadline(self.key, self.idle_ms);
            self.idle_armed_at = now;
        }
    }

    /// Whether the connection must stop now, and why.
    fn stop_reason(&self) -> Option<Stop> {
        if self.ctx.is_cutting() {
            Some(Stop::DrainCut)
        } else if self.idle_ms > 0 && !self.ctx.has_deadline(self.key) {
            Some(Stop::Idle)
        } else {
            None
        }
    }

    async fn run(mut self) -> Result<(), ConnError> {
        let ctx = self.ctx;
        let mut c_read: Option<ops::Recv> = None;
        let mut b_read: Option<ops::Recv> = None;
        let mut c_write: Option<(ops::Send, usize)> = None;
        let mut b_write: Option<(ops::Send, usize)> = None;
        let mut cancels: Vec<ops::PlainOp> = Vec::new();
        // Spare room offered to the read in flight on each side.
        let mut c_spare = 0;
        let mut b_spare = 0;
        let c_max = ctx.buffer_size.max(crate::tls::MAX_RECORD_LEN);

        // The client sent close_notify or EOF: it sends no more. The
        // close_notify may have come with the client's Finished.
        let mut client_done = self.session.is_peer_closed();
        // The backend sent EOF: it sends no more.
        let mut backend_done = false;
        // We shut down the backend's write side (after client_done).
        let mut backend_shut = false;
        // We sent close_notify and shut down the client's write side.
        let mut client_shut = false;
        // Set when the relay stops early: with the error, or `Ok` after an
        // alert went out. Once set, nothing new is submitted except the
        // cancellation, and we wait for every op to complete.
        let mut fatal: Option<Result<(), ConnError>> = None;
        let mut cancelled = false;
        // After a TLS error: flush the alert to the client, then stop. Also
        // the last step of a stop (below): flush what the client is owed.
        let mut alert_only = false;
        // Set when the idle deadline expired or the drain cut came: nothing
        // new is submitted; once every op has completed, what the client is
        // still owed plus a close_notify is flushed (under a short
        // deadline), and the relay ends with this reason.
        let mut stop: Option<Stop> = None;
        // Writes cancelled by a deadline expiry that turned out spurious
        // (bytes moved meanwhile): the buffer and the offset to resume at.
        let mut c_unsent: Option<(Vec<u8>, usize)> = None;
        let mut b_unsent: Option<(Vec<u8>, usize)> = None;

        loop {
            if fatal.is_none() && stop.is_none() && !alert_only {
                if let Some(reason) = self.stop_reason() {
                    stop = Some(reason);
                    if c_read.is_some() || c_write.is_some() {
                        cancels.push(ops::cancel_fd(self.client.as_raw_fd()));
                    }
                    if b_read.is_some() || b_write.is_some() {
                        cancels.push(ops::cancel_fd(self.backend.as_raw_fd()));
                    }
                }
            }
            if fatal.is_none()
                && stop.is_some()
                && !alert_only
                && c_read.is_none()
                && c_write.is_none()
                && b_read.is_none()
                && b_write.is_none()
            {
                // Every op of the stopping connection has completed. The
                // ciphertext the client is owed (an unsent write's tail,
                // then what is queued) is a valid record stream; a
                // close_notify after it ends it cleanly. Plaintext not yet
                // written to the backend is dropped.
                let mut owed = match c_unsent.take() {
                    Some((buf, off)) => buf[off..].to_vec(),
                    None => Vec::new(),
                };
                owed.append(&mut self.to_client);
                if !client_shut {
                    let _ = self.session.close(&mut owed);
                }
                self.to_client = owed;
                self.to_backend.clear();
                b_unsent = None;
                alert_only = true;
                if !self.to_client.is_empty() {
                    ctx.set_deadline(self.key, CLOSE_FLUSH_MS);
                }
            }
            if fatal.is_none() && (stop.is_none() || alert_only) {
                // A write cancelled spuriously resumes where it stopped.
                if c_write.is_none() {
                    if let Some((buf, off)) = c_unsent.take() {
                        c_write = Some((ops::send(self.client, buf, off), off));
                    }
                }
                if b_write.is_none() && !alert_only {
                    if let Some((buf, off)) = b_unsent.take() {
                        b_write = Some((ops::send(self.backend, buf, off), off));
                    }
                }
                // Writes first, so data already decrypted or encrypted leaves.
                if c_write.is_none() && !self.to_client.is_empty() {
                    let buf =
                        std::mem::replace(&mut self.to_client, std::mem::take(&mut self.spare_c));
                    c_write = Some((ops::send(self.client, buf, 0), 0));
                }
                if b_write.is_none() && !self.to_backend.is_empty() && !alert_only {
                    let buf =
                        std::mem::replace(&mut self.to_backend, std::mem::take(&mut self.spare_b));
                    b_write = Some((ops::send(self.backend, buf, 0), 0));
                }
                if alert_only {
                    if c_write.is_none() {
                        fatal = Some(Ok(()));
                    }
                } else {
                    // Reads, only when the other side has taken what we had.
                    if c_read.is_none()
                        && !client_done
                        && self.to_backend.is_empty()
                        && self.to_client.len() < TO_CLIENT_LIMIT
                    {
                        if self.rx.capacity() > 2 * self.c_read_size {
                            self.rx = Vec::new(); // the read size shrank
                        }
                        self.session.prepare_read(&mut self.rx, self.c_read_size);
                        c_spare = self.rx.capacity() - self.rx.len();
                        c_read = Some(ops::recv(self.client, std::mem::take(&mut self.rx)));
                    }
                    if b_read.is_none() && !backend_done && self.to_client.is_empty() {
                        self.brx.clear();
                        if self.brx.capacity() > 2 * self.b_read_size {
                            self.brx = Vec::new(); // the read size shrank
                        }
                        self.brx.reserve(self.b_read_size);
                        b_spare = self.brx.capacity();
                        b_read = Some(ops::recv(self.backend, std::mem::take(&mut self.brx)));
                    }
                    // Half-close toward the backend once all client data is there.
                    if client_done
                        && !backend_shut
                        && self.to_backend.is_empty()
                        && b_write.is_none()
                    {
                        backend_shut = true;
                        // shutdown(2) is a plain syscall that never blocks;
                        // IORING_OP_SHUTDOWN is always punted to an io-wq
                        // thread (measured: ~6% of the CPU per connection).
                        let _ = self.backend.shutdown(Shutdown::Write);
                    }
                    // Backend EOF became close_notify; once it is out, FIN.
                    if backend_done
                        && !client_shut
                        && self.to_client.is_empty()
                        && c_write.is_none()
                    {
                        client_shut = true;
                        let _ = self.client.shutdown(Shutdown::Write);
                    }
                }
            } else if fatal.is_some() && !cancelled {
                cancelled = true;
                if c_read.is_some() || c_write.is_some() {
                    cancels.push(ops::cancel_fd(self.client.as_raw_fd()));
                }
                if b_read.is_some() || b_write.is_some() {
                    cancels.push(ops::cancel_fd(self.backend.as_raw_fd()));
                }
            }

            let in_flight = c_read.is_some()
                || b_read.is_some()
                || c_write.is_some()
                || b_write.is_some()
                || !cancels.is_empty();
            if !in_flight {
                if let Some(reason) = stop {
                    return Err(reason.into());
                }
                if let Some(outcome) = fatal {
                    return outcome;
                }
                // Nothing in flight and nothing to submit: both directions
                // are closed and flushed.
                return Ok(());
            }

            let event = poll_fn(|cx| {
                if let Some(op) = c_read.as_mut() {
                    if let Poll::Ready((res, buf)) = Pin::new(op).poll(cx) {
                        c_read = None;
                        return Poll::Ready(Event::ClientRead(res, buf));
                    }
                }
                if let Some((op, _)) = c_write.as_mut() {
                    if let Poll::Ready((res, buf)) = Pin::new(op).poll(cx) {
                        return Poll::Ready(Event::ClientWrite(res, buf));
                    }
                }
                if let Some(op) = b_read.as_mut() {
                    if let Poll::Ready((res, buf)) = Pin::new(op).poll(cx) {
                        b_read = None;
                        return Poll::Ready(Event::BackendRead(res, buf));
                    }
                }
                if let Some((op, _)) = b_write.as_mut() {
                    if let Poll::Ready((res, buf)) = Pin::new(op).poll(cx) {
                        return Poll::Ready(Event::BackendWrite(res, buf));
                    }
                }
                let mut i = 0;
                while i < cancels.len() {
                    if Pin::new(&mut cancels[i]).poll(cx).is_ready() {
                        drop(cancels.swap_remove(i));
                        return Poll::Ready(Event::Cancelled);
                    }
                    i += 1;
                }
                Poll::Pending
            })
            .await;

            match event {
                Event::ClientRead(res, buf) => {
                    self.rx = buf;
                    if fatal.is_some() || stop.is_some() {
                        continue;
                    }
                    if res.is_ok() {
                        self.touch();
                    }
                    match res {
                        // Cancelled by the idle deadline or the cut (the
                        // loop decides which, or whether it was spurious):
                        // the read consumed nothing.
                        Err(e) if ops::is_cancelled(&e) => {}
                        Ok(0) => client_done = true,
                        Ok(n) => {
                            ctx.counters.bytes_from_clients.add(n as u64);
                            self.c_read_size = next_read_size(self.c_read_size, n, c_spare, c_max);
                            match self.session.handle_read(
                                &mut self.rx,
                                &mut self.to_client,
                                &mut self.to_backend,
                            ) {
                                Ok(Status::PeerClosed | Status::Closed) => client_done = true,
                                Ok(_) => {
                                    if self.ttfb_from.is_none() && !self.to_backend.is_empty() {
                                        self.ttfb_from = Some(Instant::now());
                                    }
                                }
                                Err(err) => {
                                    ctx.counters.connection_errors.inc();
                                    if let Some(alert) =
                                        AlertKind::of_failure(&err, &self.to_client)
                                    {
                                        ctx.counters.alert(alert).inc();
                                        // Send the alert, drop data not yet
                                        // forwarded: the client broke the
                                        // record stream.
                                        self.to_backend.clear();
                                        alert_only = true;
                                        cancels.push(ops::cancel_fd(self.backend.as_raw_fd()));
                                    } else {
                                        fatal = Some(Err(err.into()));
                                    }
                                    continue;
                                }
                            }
                        }
                        Err(e) => fatal = Some(Err(e.into())),
                    }
                }
                Event::BackendRead(res, buf) => {
                    self.brx = buf;
                    if fatal.is_some() || alert_only || stop.is_some() {
                        continue;
                    }
                    if res.is_ok() {
                        self.touch();
                    }
                    match res {
                        Err(e) if ops::is_cancelled(&e) => {}
                        Ok(0) => {
                            backend_done = true;
                            if let Err(err) = self.session.close(&mut self.to_client) {
                                fatal = Some(Err(err.into()));
                            }
                        }
                        Ok(n) => {
                            ctx.counters.bytes_from_backends.add(n as u64);
                            if !self.ttfb_done {
                                // A backend that speaks first has no TTFB.
                                self.ttfb_done = true;
                                if let Some(from) = self.ttfb_from {
                                    ctx.record_since(Metric::Ttfb, from);
                                }
                            }
                            self.b_read_size =
                                next_read_size(self.b_read_size, n, b_spare, ctx.buffer_size);
                            if let Err(err) = self.session.encrypt(&self.brx, &mut self.to_client) {
                                fatal = Some(Err(err.into()));
                            }
                        }
                        Err(e) => fatal = Some(Err(e.into())),
                    }
                }
                Event::ClientWrite(res, buf) => {
                    let (_, off) = c_write.take().expect("client write slot");
                    match res {
                        Ok(n) if n > 0 => {
                            ctx.counters.bytes_to_clients.add(n as u64);
                            if stop.is_none() {
                                self.touch();
                            }
                            let off = off + n;
                            if off < buf.len() && fatal.is_none() {
                                if stop.is_none() || alert_only {
                                    c_write = Some((ops::send(self.client, buf, off), off));
                                } else {
                                    // Stopping: flushed with the close_notify.
                                    c_unsent = Some((buf, off));
                                }
                            } else {
                                self.recycle_c(buf);
                            }
                        }
                        Err(e)
                            if ops::is_cancelled(&e)
                                && fatal.is_none()
                                && !alert_only
                                && off < buf.len() =>
                        {
                            // Nothing was sent; resume or flush it later.
                            c_unsent = Some((buf, off));
                        }
                        Ok(_) => {
                            self.recycle_c(buf);
                            fatal.get_or_insert(Err(
                                io::Error::from(io::ErrorKind::WriteZero).into()
                            ));
                        }
                        Err(e) => {
                            self.recycle_c(buf);
                            fatal.get_or_insert(Err(e.into()));
                        }
                    }
                }
                Event::BackendWrite(res, buf) => {
                    let (_, off) = b_write.take().expect("backend write slot");
                    match res {
                        Ok(n) if n > 0 => {
                            ctx.counters.bytes_to_backends.add(n as u64);
                            if stop.is_none() {
                                self.touch();
                            }
                            let off = off + n;
                            if off < buf.len() && fatal.is_none() && !alert_only && stop.is_none() {
                                b_write = Some((ops::send(self.backend, buf, off), off));
                            } else {
                                self.recycle_b(buf);
                            }
                        }
                        Err(e) if ops::is_cancelled(&e) && fatal.is_none() && !alert_only => {
                            if stop.is_none() && off < buf.len() {
                                // Nothing was sent; resume it (the loop
                                // decides whether the cancel was spurious).
                                b_unsent = Some((buf, off));
                            } else {
                                // Stopping: plaintext for the backend is
                                // dropped; the client still gets its
                                // close_notify.
                                self.recycle_b(buf);
                            }
                        }
                        Ok(_) => {
                            self.recycle_b(buf);
                            fatal.get_or_insert(Err(
                                io::Error::from(io::ErrorKind::WriteZero).into()
                            ));
                        }
                        Err(e) => {
                            self.recycle_b(buf);
                            if !alert_only {
                                fatal.get_or_insert(Err(e.into()));
                            }
                        }
                    }
                }
                Event::Cancelled => {}
            }
        }
    }

    /// Keeps a written buffer for reuse while data is still flowing toward
    /// the client; once nothing is pending, a large one is freed so that an
    /// idle connection holds no spare buffers.
    fn recycle_c(&mut self, mut buf: Vec<u8>) {
        buf.clear();
        if self.to_client.is_empty() && buf.capacity() > IDLE_KEEP {
            return;
        }
        if self.spare_c.capacity() < buf.capacity() {
            self.spare_c = buf;
        }
    }

    /// As [`Relay::recycle_c`], toward the backend.
    fn recycle_b(&mut self, mut buf: Vec<u8>) {
        buf.clear();
        if self.to_backend.is_empty() && buf.capacity() > IDLE_KEEP {
            return;
        }
        if self.spare_b.capacity() < buf.capacity() {
            self.spare_b = buf;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_sizes_adapt_both_ways() {
        // A full read doubles, up to the max.
        assert_eq!(next_read_size(512, 512, 512, 65536), 1024);
        assert_eq!(next_read_size(65536, 65536, 65536, 65536), 65536);
        // A tiny read halves, down to FIRST_READ.
        assert_eq!(next_read_size(65536, 100, 65536, 65536), 32768);
        assert_eq!(next_read_size(FIRST_READ, 1, FIRST_READ, 65536), FIRST_READ);
        // In between, it stays.
        assert_eq!(next_read_size(4096, 2000, 4096, 65536), 4096);
    }
}
