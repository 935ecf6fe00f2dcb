//! The connection machine: one client connection's whole life, sans-IO.
//!
//! ```text
//! ExpectProxyHeader ─► Handshaking ─► ExpectBackend ─► Relaying ─► (Flushing) ─► Done
//!   (--accept-proxy)      TlsSession     connect,         both ways,    owed bytes +
//!                          │    ▲        retry once       half-close    close_notify
//!                          ▼    │
//!                    ExpectSessionLookup
//!                    (--session-store)
//! ```
//!
//! With an L2 session store ([`ConnConfig::session_lookup`]), a ClientHello
//! that arrived whole and offers a session ID or a stateful TLS 1.3 ticket
//! ([`crate::session::l2::lookup_for`]) is held back from rustls: the
//! machine asks for [`Op::LookupSession`] and waits in
//! `ExpectSessionLookup` until [`Conn::handle_session`] (the runtime put
//! what the store had into the per-core cache, or gave up at its timeout),
//! then steps the handshake, where rustls finds the session in the cache.
//!
//! Like quinn-proto's `Connection`, a [`Conn`] never touches a socket and
//! never reads the clock: the runtime feeds it what happened through the
//! `handle_*` methods and asks it what to do through the `poll_*` methods.
//! Time comes in as an argument. The runtime (`rt::conn`) only submits the
//! ops the machine asks for and feeds their completions back; every relay
//! decision (backpressure, half-close, alerts, deadlines, drain, retries)
//! is made here, where tests drive it in memory.
//!
//! # Driving it
//!
//! After creating it, and after every `handle_*` call, the runtime calls
//! [`Conn::poll_op`] until it returns `None` and submits each op; then
//! [`Conn::poll_outcome`] says whether the connection is over, and
//! [`Conn::poll_timeout`] when to call [`Conn::handle_timeout`] next.
//!
//! # Guarantees
//!
//! - **No silent truncation.** Bytes read from one side reach the other in
//!   order, never duplicated or reordered. A close_notify is queued only
//!   after everything owed to the client; when a stop or an error discards
//!   bytes owed to the client, the outcome asks for a reset of the client
//!   socket (never a clean TLS end), and likewise for the backend (no FIN
//!   while plaintext owed to it was dropped).
//! - **No op left behind.** The outcome comes only once every op the
//!   machine asked for has completed (cancelled ops complete too).
//! - **Bounded memory.** Per direction at most one buffer waits and one is
//!   in flight: the client is read only when the plaintext for the backend
//!   has been handed to the kernel, the backend only when the ciphertext for
//!   the client has.

#![forbid(unsafe_code)]

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ServerConfig;

use crate::proxy::{self, ParseLimits, Parsed, ProxyError, ProxyHeader};
use crate::record::LentRecords;
use crate::route::{BackendAddr, PoolId, Pools};
use crate::tls::hello::{self, Peek};
use crate::tls::{
    AlertKind, HandshakeInfo, Status, TlsError, TlsSession, MAX_FRAGMENT_LEN, MAX_RECORD_LEN,
};

#[cfg(test)]
mod model;
#[cfg(test)]
mod tests;

/// Ciphertext queued for the client above which the client is not read (a
/// flood of KeyUpdates cannot grow it without bound).
pub const TO_CLIENT_LIMIT: usize = 64 * 1024;

/// First relay read size on each side. Reads that come back full double
/// it, up to the relay buffer size: idle connections stay light (a read's
/// buffer is committed while it is in flight), busy ones get large reads
/// within a few round trips.
pub const FIRST_READ: usize = 512;

/// Read size during the handshake: one read holds a typical ClientHello,
/// post-quantum key shares included.
pub const HANDSHAKE_READ: usize = 2048;

/// How long a stopping connection may take to flush what it owes the
/// client (and its close_notify or alert) by default.
pub const CLOSE_FLUSH: Duration = Duration::from_secs(1);

/// A relaying connection with no byte moving for this long lets the own
/// record layer drop its AEAD contexts ([`TlsSession::hibernate`], about
/// 1.2 KB); the next record builds them again.
pub const HIBERNATE_AFTER: Duration = Duration::from_secs(1);

/// One of the connection's two sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The TLS client.
    Client,
    /// The plaintext backend.
    Backend,
}

/// How an op ended, as the runtime saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoResult {
    /// Done: bytes moved (0 for a read means EOF), or a connect succeeded.
    Done(usize),
    /// Cancelled by a [`Op::Cancel`]; it did nothing.
    Cancelled,
    /// Failed.
    Failed(io::ErrorKind),
}

/// How a cancel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelResult {
    /// It cancelled this many ops (0: they had completed already).
    Cancelled(usize),
    /// It failed (for example a kernel without cancel-all): the ops it
    /// targeted may still be in flight.
    Failed(io::ErrorKind),
}

/// What the machine asks the runtime to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Op {
    /// Read from `side`, appending into the spare capacity of `buf`; then
    /// call [`Conn::handle_recv`] with the buffer.
    Recv {
        /// Which socket.
        side: Side,
        /// The buffer; its spare capacity is the read size.
        buf: Vec<u8>,
    },
    /// Write `buf[off..]` to `side`; then call [`Conn::handle_send`] with
    /// the buffer. A short write is fine: the machine asks for the rest.
    Send {
        /// Which socket.
        side: Side,
        /// The buffer.
        buf: Vec<u8>,
        /// Where the unsent part starts.
        off: usize,
    },
    /// Write the records sealed in the buffer the runtime lent (see
    /// [`Conn::handle_recv_lent`]): their wire image, as
    /// [`LentRecords::segments`] lays it out; then call
    /// [`Conn::handle_send`] with no buffer when all of it went out, or
    /// with the whole wire image (gathered by [`LentRecords::gather`]) and
    /// offset 0 when not (a short write, a cancel, an error).
    SendLent {
        /// Which socket (the client).
        side: Side,
    },
    /// `shutdown(SHUT_WR)` on `side`: nothing more will be written. It has
    /// no completion to report.
    ShutdownWrite {
        /// Which socket.
        side: Side,
    },
    /// `shutdown(SHUT_RDWR)` on `side`, so that ops a failed cancel left in
    /// flight complete. No completion to report.
    ShutdownBoth {
        /// Which socket.
        side: Side,
    },
    /// Open a socket to `addr` and connect it; then call
    /// [`Conn::handle_connect`]. On failure the runtime closes that socket.
    Connect {
        /// The backend (TCP or UNIX).
        addr: BackendAddr,
    },
    /// Cancel every op in flight on `side`; then call
    /// [`Conn::handle_cancel`].
    Cancel {
        /// Which socket.
        side: Side,
    },
    /// Look the session `key` up in the session cache, and in the L2 store
    /// on a miss (or always when `take`: a single-use ticket is taken from
    /// the store); put what the store has into the cache, then call
    /// [`Conn::handle_session`] (at once when there is nothing to wait
    /// for, or at the store's timeout).
    LookupSession {
        /// rustls's session key (a TLS 1.2 session ID, a TLS 1.3 ticket).
        key: Vec<u8>,
        /// A single-use TLS 1.3 stateful ticket (`GETDEL`).
        take: bool,
    },
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq)]
pub enum End {
    /// Both directions closed and flushed.
    Closed,
    /// The PROXY protocol header from the balancer was missing or bad.
    ProxyHeader(ProxyError),
    /// The client closed or reset before the handshake completed.
    HandshakeEof,
    /// The handshake took longer than the handshake timeout.
    HandshakeTimeout,
    /// The TLS layer failed during the handshake.
    HandshakeTls(TlsError),
    /// The backend refused or could not be reached (the last attempt).
    ConnectFailed(io::ErrorKind),
    /// The last backend connect attempt timed out.
    ConnectTimeout,
    /// The client broke the record stream after the handshake.
    Tls(TlsError),
    /// A socket error after the handshake.
    Io(Side, io::ErrorKind),
    /// No byte moved in either direction for the idle timeout.
    IdleTimeout,
    /// Still open when the shutdown drain timed out.
    DrainCut,
    /// An ACME TLS-ALPN-01 validation: closed after its handshake, never
    /// relayed.
    AcmeChallenge,
}

/// What happened to a connection, reported once at its end: the runtime
/// counts and records everything from it in one place.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Why it ended.
    pub end: End,
    /// The handshake's facts, when it completed.
    pub handshake: Option<HandshakeInfo>,
    /// When the handshake completed.
    pub established_at: Option<Instant>,
    /// The alert sent to the client because of a TLS failure, if any.
    pub alert: Option<AlertKind>,
    /// The backend connected to, if any.
    pub backend: Option<BackendAddr>,
    /// The backend of the last connect attempt (connected or not).
    pub backend_tried: Option<BackendAddr>,
    /// The client's address: the peer the runtime accepted, or the source
    /// a PROXY header named.
    pub client: Option<SocketAddr>,
    /// The SNI the client sent, when its ClientHello was read but the
    /// handshake did not complete (else it is in `handshake`).
    pub sni: Option<String>,
    /// Bytes moved, counted from completions: ciphertext read from and
    /// written to the client, plaintext read from and written to the
    /// backend.
    pub bytes: Bytes,
    /// Which peer ended its sending first (FIN or close_notify), if one
    /// did.
    pub first_close: Option<Side>,
    /// When the first connect attempt began and when one succeeded.
    pub connect: Option<(Instant, Instant)>,
    /// Failed connect attempts (the last one included), by kind.
    pub connect_failures: u32,
    /// Timed-out connect attempts (the last one included).
    pub connect_timeouts: u32,
    /// Connect attempts retried on another backend.
    pub retries: u32,
    /// Time to first byte: from the first plaintext ready for the backend
    /// to the backend's first byte.
    pub ttfb: Option<Duration>,
    /// Cancels that failed (their ops were then shut down).
    pub cancel_failures: u32,
    /// Close the client socket with a reset: bytes owed to it were dropped.
    pub reset_client: bool,
    /// Close the backend socket with a reset: plaintext owed to it was
    /// dropped.
    pub reset_backend: bool,
}

/// Bytes a connection moved, per direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bytes {
    /// Ciphertext read from the client.
    pub from_client: u64,
    /// Ciphertext written to the client.
    pub to_client: u64,
    /// Plaintext read from the backend.
    pub from_backend: u64,
    /// Plaintext written to the backend.
    pub to_backend: u64,
}

/// What the machine records toward its [`Outcome`] while the connection
/// lives: the outcome's fields that are not known only at the end (the end
/// itself, and the handshake's facts, which stay in the TLS session until
/// then), so that a live connection holds one compact record and no copy of
/// the handshake's strings.
#[derive(Debug, Default)]
struct Tally {
    established_at: Option<Instant>,
    connect: Option<(Instant, Instant)>,
    ttfb: Option<Duration>,
    /// The backend of the last connect attempt (connected or not).
    backend_tried: Option<BackendAddr>,
    client: Option<SocketAddr>,
    bytes: Bytes,
    connect_failures: u32,
    connect_timeouts: u32,
    retries: u32,
    cancel_failures: u32,
    alert: Option<AlertKind>,
    first_close: Option<Side>,
    /// `backend_tried` connected.
    connected: bool,
    reset_client: bool,
    reset_backend: bool,
}

/// Per-connection settings (the worker's, shared).
#[derive(Debug, Clone)]
pub struct ConnConfig {
    /// Expect a PROXY protocol header before the ClientHello.
    pub accept_proxy: bool,
    /// Send a PROXY protocol header of this version to the backend.
    pub proxy_out: Option<proxy::Version>,
    /// Handshake timeout (from accept; covers the PROXY header).
    pub handshake_timeout: Duration,
    /// Timeout of one backend connect attempt.
    pub connect_timeout: Duration,
    /// Idle timeout once relaying; `None` = off.
    pub idle_timeout: Option<Duration>,
    /// Largest relay read.
    pub buffer_size: usize,
    /// How long a stopping connection may take to flush what it owes.
    pub close_flush: Duration,
    /// The routing clock's origin (`Pools` takes milliseconds since it).
    pub epoch: Instant,
    /// The runtime reads into buffers of its own (a provided-buffer ring)
    /// and hands the bytes over with [`Conn::handle_recv_with`]: read ops
    /// then carry no reserved room, and a read buffer left empty is freed,
    /// so that an idle connection holds no read buffer.
    pub runtime_buffers: bool,
    /// An L2 session store is configured: ClientHellos that offer a stored
    /// session wait for a lookup ([`Op::LookupSession`]).
    pub session_lookup: bool,
    /// The frontend the connection came in on: its pools are
    /// [`Pools::pool_for_frontend`]'s.
    pub frontend: usize,
    /// ACME is on: ClientHellos offering `acme-tls/1` are answered from
    /// these pending challenges ([`crate::tls::acme`]). A plain reference,
    /// not an `Arc`: copying it per connection writes no shared counter.
    pub acme: Option<&'static crate::tls::acme::AcmeChallenges>,
}

/// Where the connection is: named after what it waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// `--accept-proxy`: the PROXY header.
    ExpectProxyHeader,
    /// The TLS handshake.
    Handshaking,
    /// The ClientHello offers a stored session: the store's answer (or
    /// its timeout), before rustls sees the ClientHello.
    ExpectSessionLookup,
    /// A backend connection.
    ExpectBackend,
    /// Data, both ways.
    Relaying,
    /// A stop (idle, drain) was decided: waiting for the ops in flight,
    /// then flushing what the client is owed.
    Stopping,
    /// Flushing what the client is owed (data, close_notify or an alert)
    /// under the flush deadline; nothing else moves.
    Flushing,
    /// A fatal alert went out: our side is shut, and what the client still
    /// sends is read and dropped for a moment (a lingering close), so that
    /// closing with unread bytes does not reset the connection before the
    /// client has read the alert.
    Lingering,
    /// Failed: waiting for the ops in flight to complete.
    Failing,
    /// Over; the outcome is ready once nothing is in flight.
    Done,
}

/// One socket's op bookkeeping.
#[derive(Debug, Default)]
struct Sock {
    /// A read is in flight; the spare room it was offered.
    read: Option<usize>,
    /// A write is in flight.
    write: bool,
    /// Records sealed in a buffer the runtime lent wait to be written
    /// ([`Op::SendLent`]).
    lent: bool,
    /// A write to resume (a short write): the buffer and its offset.
    unsent: Option<(Vec<u8>, usize)>,
    /// A cancel is in flight.
    cancel: bool,
    /// A cancel is wanted for what is in flight.
    cancel_wanted: bool,
    /// A cancel failed: shut the socket down so its ops complete.
    force_shut: bool,
    /// The peer sends no more (EOF, or the client's close_notify).
    eof: bool,
    /// We shut down our write side.
    shut: bool,
    /// Adaptive read size.
    read_size: usize,
    /// The read buffer, when no read is in flight.
    buf: Vec<u8>,
    /// A written buffer kept for reuse.
    spare: Vec<u8>,
}

impl Sock {
    fn busy(&self) -> bool {
        self.read.is_some() || self.write || self.cancel
    }

    /// Whether anything is owed to this side: queued, or being written.
    fn owes(&self, queued: &[u8]) -> bool {
        !queued.is_empty() || self.unsent.is_some() || self.write || self.lent
    }
}

/// One connection. See the module documentation.
pub struct Conn {
    cfg: Arc<ConnConfig>,
    state: State,
    tls: TlsSession,
    client: Sock,
    backend: Sock,
    /// Ciphertext waiting to be written to the client.
    to_client: Vec<u8>,
    /// Plaintext waiting to be written to the backend, from
    /// `to_backend_off` (a record opened in place keeps its header in
    /// front).
    to_backend: Vec<u8>,
    to_backend_off: usize,
    /// Room left in front of the backend read in flight (own record
    /// layer: a record header's).
    backend_room: usize,
    /// PROXY header bytes read so far.
    proxy_buf: Vec<u8>,
    /// The addresses a PROXY header toward the backend carries (boxed:
    /// only with `--proxy-protocol`, until the header is encoded).
    addresses: Option<Box<(SocketAddr, SocketAddr)>>,
    /// Client bytes already read and not yet given to the TLS session (the
    /// ClientHello's start behind a PROXY header).
    unread: bool,
    /// A connect to `out.backend_tried` is in flight.
    connecting: bool,
    /// The backend pool and the attempts made.
    pool: Option<PoolId>,
    attempts: usize,
    /// The next pick skips `out.backend_tried` (it just failed).
    skip_tried: bool,
    /// A connect attempt was cancelled by its deadline (else by the drain).
    connect_timed_out: bool,
    /// When the current deadline's period began.
    accepted_at: Instant,
    phase_at: Instant,
    last_activity: Instant,
    /// A drain cut was requested.
    cut: bool,
    /// Linger once the alert being flushed is out.
    linger: bool,
    /// Why the connection stops or failed, once decided.
    /// (Boxed: decided once, at the end.)
    end: Option<Box<End>>,
    /// The backend's first byte was seen; when plaintext first went to it.
    ttfb_done: bool,
    ttfb_from: Option<Instant>,
    out: Tally,
    /// The outcome was handed out.
    reported: bool,
    /// The ClientHello was looked at for a session lookup (once).
    looked_up: bool,
    /// The lookup to ask for.
    lookup: Option<Op>,
    /// The server speaks TLS 1.3 (a TLS 1.3 client's legacy session ID is
    /// then no resumption attempt).
    server_tls13: bool,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("state", &self.state)
            .field("end", &self.end)
            .field("to_client", &self.to_client.len())
            .field("to_backend", &self.to_backend.len())
            .finish()
    }
}

impl Conn {
    /// A connection accepted at `now` from `peer` on `local`.
    pub fn new(
        cfg: impl Into<Arc<ConnConfig>>,
        tls: Arc<ServerConfig>,
        peer: SocketAddr,
        local: Option<SocketAddr>,
        now: Instant,
    ) -> Result<Self, TlsError> {
        let cfg = cfg.into();
        let state = if cfg.accept_proxy {
            State::ExpectProxyHeader
        } else {
            State::Handshaking
        };
        let addresses = match (cfg.proxy_out, local) {
            (Some(_), Some(local)) => Some(Box::new((peer, local))),
            _ => None,
        };
        let read_size = FIRST_READ.min(cfg.buffer_size.max(1));
        let server_tls13 = cfg.session_lookup
            && tls
                .crypto_provider()
                .cipher_suites
                .iter()
                .any(|s| s.tls13().is_some());
        let mut session = TlsSession::new(tls)?;
        if let Some(acme) = cfg.acme {
            session.set_acme(acme);
        }
        Ok(Self {
            tls: session,
            state,
            client: Sock {
                read_size: FIRST_READ,
                ..Sock::default()
            },
            backend: Sock {
                read_size,
                ..Sock::default()
            },
            cfg,
            to_client: Vec::new(),
            to_backend: Vec::new(),
            to_backend_off: 0,
            backend_room: 0,
            proxy_buf: Vec::new(),
            addresses,
            unread: false,
            connecting: false,
            pool: None,
            attempts: 0,
            skip_tried: false,
            connect_timed_out: false,
            accepted_at: now,
            phase_at: now,
            last_activity: now,
            cut: false,
            linger: false,
            end: None,
            ttfb_done: false,
            ttfb_from: None,
            out: Tally {
                // Port 0: the runtime did not look the peer up.
                client: (peer.port() != 0).then_some(peer),
                ..Tally::default()
            },
            reported: false,
            looked_up: false,
            lookup: None,
            server_tls13,
        })
    }

    /// Whether the TLS handshake has completed.
    pub fn is_established(&self) -> bool {
        self.tls.is_established()
    }

    /// The TLS session (read-only: facts for logs and tests).
    pub fn tls(&self) -> &TlsSession {
        &self.tls
    }

    /// Whether records sealed in a lent buffer still wait for their
    /// [`Op::SendLent`]. Once this is false and no such write is in
    /// flight, the runtime has its buffer back.
    pub fn lent_pending(&self) -> bool {
        self.client.lent
    }

    /// Whether an op is in flight.
    pub fn in_flight(&self) -> bool {
        self.client.busy() || self.backend.busy() || self.connecting
    }

    /// Whether the completion of the write in flight on `side` would let
    /// the machine do nothing new: it relays, both reads are in flight and
    /// nothing waits to be written on either side. The completion then
    /// only gives the buffer back, so the runtime need not wake up for it
    /// alone (see `rt::worker`'s completion batching). Pure: it reads the
    /// state and changes nothing.
    pub fn send_completion_is_bookkeeping(&self, side: Side) -> bool {
        let (me, other) = match side {
            Side::Client => (&self.client, &self.backend),
            Side::Backend => (&self.backend, &self.client),
        };
        self.state == State::Relaying
            && me.write
            && me.unsent.is_none()
            && !me.cancel
            && !me.cancel_wanted
            && !other.cancel
            && !other.cancel_wanted
            && self.client.read.is_some()
            && self.backend.read.is_some()
            && self.to_client.is_empty()
            && self.to_backend.is_empty()
            && other.unsent.is_none()
    }

    // ------------------------------------------------------------------
    // Output
    // ------------------------------------------------------------------

    /// The next op to submit, if any. Call after creating the connection
    /// and after every `handle_*` call, until it returns `None`.
    pub fn poll_op(&mut self, now: Instant, pools: &mut Pools) -> Option<Op> {
        if self.state == State::Stopping && !self.in_flight() {
            // Everything in flight completed: the stop's flush begins.
            self.begin_flush_after_stop(now);
        }
        // Cancels first: they target what is in flight now.
        for side in [Side::Client, Side::Backend] {
            let connecting = side == Side::Backend && self.connecting;
            let s = self.sock_mut(side);
            if std::mem::take(&mut s.force_shut) {
                return Some(Op::ShutdownBoth { side });
            }
            if s.cancel_wanted && !s.cancel {
                s.cancel_wanted = false;
                if s.read.is_some() || s.write || connecting {
                    s.cancel = true;
                    return Some(Op::Cancel { side });
                }
            }
        }
        match self.state {
            State::ExpectProxyHeader => self.poll_proxy_header(),
            State::Handshaking => self.poll_handshake(now),
            State::ExpectSessionLookup => self.lookup.take(),
            State::ExpectBackend => self
                .poll_client_write()
                .or_else(|| self.poll_connect(now, pools)),
            State::Relaying => self.poll_relay(),
            State::Flushing => self.poll_client_write().or_else(|| self.begin_linger(now)),
            State::Lingering => self.poll_linger_read(),
            State::Stopping | State::Failing | State::Done => None,
        }
    }

    /// The connection's end, once it is over and nothing is in flight.
    /// Returned once; the runtime then closes both sockets (with a reset
    /// where the outcome asks for one).
    pub fn poll_outcome(&mut self) -> Option<Outcome> {
        if self.reported || self.in_flight() {
            return None;
        }
        match self.state {
            State::Done => {}
            State::Failing => self.state = State::Done,
            State::Flushing if !self.client.owes(&self.to_client) => self.state = State::Done,
            State::Lingering if self.client.eof => self.state = State::Done,
            // Nothing in flight and nothing to submit: both directions are
            // closed and flushed.
            State::Relaying => {
                debug_assert!(self.relay_finished(), "relay stalled: {self:?}");
                self.end.get_or_insert(Box::new(End::Closed));
                self.state = State::Done;
            }
            _ => return None,
        }
        self.reported = true;
        let t = std::mem::take(&mut self.out);
        let handshake = t.established_at.and_then(|_| self.tls.handshake_info());
        let sni = match handshake {
            None => self.tls.sni().map(str::to_owned),
            Some(_) => None,
        };
        Some(Outcome {
            end: self.end.take().map_or(End::Closed, |e| *e),
            handshake,
            established_at: t.established_at,
            alert: t.alert,
            backend: t.backend_tried.clone().filter(|_| t.connected),
            backend_tried: t.backend_tried,
            client: t.client,
            sni,
            bytes: t.bytes,
            first_close: t.first_close,
            connect: t.connect,
            connect_failures: t.connect_failures,
            connect_timeouts: t.connect_timeouts,
            retries: t.retries,
            ttfb: t.ttfb,
            cancel_failures: t.cancel_failures,
            reset_client: t.reset_client,
            reset_backend: t.reset_backend,
        })
    }

    /// When [`Conn::handle_timeout`] should be called next, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::ExpectProxyHeader | State::Handshaking | State::ExpectSessionLookup => {
                Some(self.accepted_at + self.cfg.handshake_timeout)
            }
            State::ExpectBackend if self.connecting && !self.connect_timed_out => {
                Some(self.phase_at + self.cfg.connect_timeout)
            }
            State::Relaying => {
                let idle = self.cfg.idle_timeout.map(|t| self.last_activity + t);
                let hibernate = self
                    .tls
                    .can_hibernate()
                    .then(|| self.last_activity + HIBERNATE_AFTER);
                match (idle, hibernate) {
                    (Some(i), Some(h)) => Some(i.min(h)),
                    (i, h) => i.or(h),
                }
            }
            State::Flushing => Some(self.phase_at + self.cfg.close_flush),
            State::Lingering if !self.client.eof => Some(self.phase_at + self.cfg.close_flush),
            _ => None,
        }
    }

    // ------------------------------------------------------------------
    // Input
    // ------------------------------------------------------------------

    /// A read on `side` completed; `buf` is the buffer of its
    /// [`Op::Recv`], with the bytes read appended.
    pub fn handle_recv(&mut self, side: Side, res: IoResult, buf: Vec<u8>, now: Instant) {
        self.handle_recv_with(side, res, buf, &[], now);
    }

    /// As [`Conn::handle_recv`], for a runtime that read into a buffer of
    /// its own (see [`ConnConfig::runtime_buffers`]): `data` are the bytes
    /// read (the count in `res`), `buf` the buffer of the [`Op::Recv`]
    /// (holding what was pending). Backend bytes are encrypted straight
    /// from `data`.
    pub fn handle_recv_with(
        &mut self,
        side: Side,
        res: IoResult,
        buf: Vec<u8>,
        data: &[u8],
        now: Instant,
    ) {
        self.recv(side, res, buf, data, false, now);
    }

    /// A backend read landed in a buffer the runtime can lend until a write
    /// completes: `data[..n]` are the bytes read (`res` is `Done(n)`), and
    /// `data` goes on after them (see [`RecordLayer::seal_lent`]:
    /// TLS 1.3 needs one byte there). When the client can take them now
    /// (relaying, nothing queued or being written to it) and the own
    /// record layer can, they are sealed where they are, their headers and
    /// trailers go into `lent`, and `true` is returned: the next op is an
    /// [`Op::SendLent`], and the runtime keeps the buffer, unchanged, until
    /// that write completes. Otherwise (`false`) it is
    /// [`Conn::handle_recv_with`], and the buffer is free again at once.
    ///
    /// [`RecordLayer::seal_lent`]: crate::record::RecordLayer::seal_lent
    pub fn handle_recv_lent(
        &mut self,
        res: IoResult,
        buf: Vec<u8>,
        data: &mut [u8],
        lent: &mut LentRecords,
        now: Instant,
    ) -> bool {
        let n = match res {
            IoResult::Done(n) => n.min(data.len()),
            _ => 0,
        };
        let can = n > 0
            && self.state == State::Relaying
            && buf.is_empty()
            && self.to_client.is_empty()
            && !self.client.write
            && !self.client.lent
            && self.client.unsent.is_none();
        if can {
            match self.tls.seal_lent(data, n, lent) {
                Ok(true) => {
                    self.client.lent = true;
                    self.recv(Side::Backend, res, buf, &[], true, now);
                    return true;
                }
                Ok(false) => {}
                Err(err) => {
                    self.recv(Side::Backend, res, buf, &[], true, now);
                    self.fail(End::Tls(err));
                    return false;
                }
            }
        }
        self.recv(Side::Backend, res, buf, &data[..n], false, now);
        false
    }

    /// A read completed: `data` as in [`Conn::handle_recv_with`]; `sealed`:
    /// the backend bytes were sealed in a lent buffer already.
    fn recv(
        &mut self,
        side: Side,
        res: IoResult,
        mut buf: Vec<u8>,
        data: &[u8],
        sealed: bool,
        now: Instant,
    ) {
        let direct = side == Side::Backend && buf.is_empty() && !data.is_empty();
        if !direct {
            buf.extend_from_slice(data);
        }
        let data = if direct { data } else { &[][..] };
        if let IoResult::Done(n) = res {
            match side {
                Side::Client => self.out.bytes.from_client += n as u64,
                Side::Backend => self.out.bytes.from_backend += n as u64,
            }
        }
        let s = self.sock_mut(side);
        let offered = s.read.take().unwrap_or(0);
        s.buf = buf;
        self.dispatch_recv(side, res, offered, data, sealed, now);
        if self.out.first_close.is_none() {
            if self.client.eof {
                self.out.first_close = Some(Side::Client);
            } else if self.backend.eof {
                self.out.first_close = Some(Side::Backend);
            }
        }
        if self.cfg.runtime_buffers {
            // Nothing waits in them: an idle connection holds no buffer.
            if self.client.buf.is_empty() {
                self.client.buf = Vec::new();
            }
            self.backend.buf = Vec::new();
        }
    }

    fn dispatch_recv(
        &mut self,
        side: Side,
        res: IoResult,
        offered: usize,
        data: &[u8],
        sealed: bool,
        now: Instant,
    ) {
        if let IoResult::Done(_) = res {
            self.last_activity = now;
        }
        match (self.state, side) {
            (State::ExpectProxyHeader, _) => self.on_proxy_read(res),
            (State::Handshaking, _) => self.on_handshake_read(res, now),
            (State::Relaying, Side::Client) => self.on_client_read(res, offered, now),
            (State::Relaying, Side::Backend) => {
                self.on_backend_read(res, offered, data, sealed, now)
            }
            // Stopping: what the backend sent still reaches the client
            // (encrypted, ahead of the close_notify); what the client sent
            // can no longer reach the backend, which is then reset.
            (State::Stopping, Side::Backend) => match res {
                IoResult::Done(0) => self.backend.eof = true,
                IoResult::Done(_) => self.encrypt_backend_read(data),
                IoResult::Cancelled => {}
                IoResult::Failed(kind) => self.fail(End::Io(Side::Backend, kind)),
            },
            (State::Stopping, Side::Client) => match res {
                IoResult::Done(0) => self.client.eof = true,
                IoResult::Done(_) => self.out.reset_backend = true,
                IoResult::Cancelled => {}
                IoResult::Failed(kind) => self.fail(End::Io(Side::Client, kind)),
            },
            // Failing or done: the bytes go nowhere; nothing more will be
            // written to the other side, which is reset if it was owed.
            // Flushing an alert: the client gets no clean end anyway.
            (State::Flushing, Side::Backend) => {}
            // Lingering: what the client sends is dropped; its EOF (or an
            // error) ends it. A backend read cancelled meanwhile goes nowhere.
            (State::Lingering, Side::Client) => match res {
                IoResult::Done(n) if n > 0 => self.client.buf.clear(),
                _ => self.client.eof = true,
            },
            (State::Lingering, Side::Backend) => {}
            _ => {
                if matches!(res, IoResult::Done(n) if n > 0) {
                    match side {
                        Side::Client => self.out.reset_backend = true,
                        Side::Backend => self.out.reset_client = true,
                    }
                }
            }
        }
    }

    /// A write on `side` completed; `buf` is the buffer of its [`Op::Send`].
    pub fn handle_send(
        &mut self,
        side: Side,
        res: IoResult,
        buf: Vec<u8>,
        off: usize,
        now: Instant,
    ) {
        self.sock_mut(side).write = false;
        let failing = !self.still_owed(side);
        if let IoResult::Done(n) = res {
            match side {
                Side::Client => self.out.bytes.to_client += n as u64,
                Side::Backend => self.out.bytes.to_backend += n as u64,
            }
        }
        match res {
            IoResult::Done(n) if n > 0 => {
                if self.state != State::Flushing && self.state != State::Stopping {
                    self.last_activity = now;
                }
                let off = off + n;
                if off < buf.len() {
                    if failing {
                        // The rest of this buffer is dropped too.
                        self.mark_dropped(side);
                        self.drop_owed(side);
                    } else {
                        self.sock_mut(side).unsent = Some((buf, off));
                    }
                } else {
                    self.recycle(side, buf);
                }
            }
            IoResult::Cancelled if off < buf.len() => {
                // Nothing was sent: resume it, unless it is no longer owed.
                if failing {
                    self.mark_dropped(side);
                    self.drop_owed(side);
                } else {
                    self.sock_mut(side).unsent = Some((buf, off));
                }
            }
            IoResult::Cancelled => self.recycle(side, buf),
            IoResult::Done(_) => {
                self.mark_dropped(side);
                self.drop_owed(side);
                self.fail(End::Io(side, io::ErrorKind::WriteZero));
            }
            IoResult::Failed(kind) => {
                self.mark_dropped(side);
                self.drop_owed(side);
                if self.state == State::Handshaking {
                    self.fail(End::HandshakeEof);
                } else {
                    self.fail(End::Io(side, kind));
                }
            }
        }
    }

    /// The backend connect completed.
    pub fn handle_connect(&mut self, res: IoResult, now: Instant, pools: &mut Pools) {
        if !std::mem::take(&mut self.connecting) {
            return;
        }
        let Some(addr) = self.out.backend_tried.clone() else {
            return;
        };
        let pool = self.pool.unwrap_or(0);
        let timed_out = std::mem::take(&mut self.connect_timed_out);
        if self.state != State::ExpectBackend {
            // The connection failed meanwhile; a socket that connected is
            // closed by the runtime unused.
            return;
        }
        let now_ms = self.ms(now);
        match res {
            IoResult::Done(_) => {
                pools.succeeded(pool, &addr);
                self.out.connected = true;
                let from = self.out.connect.map_or(self.phase_at, |(s, _)| s);
                self.out.connect = Some((from, now));
                if self.cut {
                    self.fail(End::DrainCut);
                    return;
                }
                self.state = State::Relaying;
                self.phase_at = now;
                self.last_activity = now;
            }
            // The drain's cut: no retry, the backend did nothing wrong.
            IoResult::Cancelled if !timed_out => self.fail(End::DrainCut),
            IoResult::Cancelled | IoResult::Failed(_) => {
                pools.failed(pool, &addr, now_ms);
                let end = match res {
                    IoResult::Failed(kind) => {
                        self.out.connect_failures += 1;
                        End::ConnectFailed(kind)
                    }
                    _ => {
                        self.out.connect_timeouts += 1;
                        End::ConnectTimeout
                    }
                };
                let tries = pools.len(pool).min(2);
                if self.attempts < tries && !self.cut {
                    self.out.retries += 1;
                    self.skip_tried = true;
                } else {
                    self.fail(end);
                }
            }
        }
    }

    /// A cancel on `side` completed.
    pub fn handle_cancel(&mut self, side: Side, res: CancelResult) {
        self.sock_mut(side).cancel = false;
        if let CancelResult::Failed(_) = res {
            // The ops may still be in flight: a shutdown makes reads and
            // writes on the socket complete. The connection is over.
            self.out.cancel_failures += 1;
            let end = self
                .end
                .as_deref()
                .cloned()
                .unwrap_or(End::Io(side, io::ErrorKind::Other));
            self.fail(end);
            self.sock_mut(side).force_shut = true;
        }
    }

    /// The deadline from [`Conn::poll_timeout`] may have passed. Spurious
    /// calls (early, or after bytes moved) change nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.poll_timeout() {
            Some(at) if now >= at => {}
            _ => return,
        }
        match self.state {
            State::ExpectProxyHeader | State::Handshaking | State::ExpectSessionLookup => {
                self.fail(End::HandshakeTimeout)
            }
            State::ExpectBackend => {
                self.connect_timed_out = true;
                self.backend.cancel_wanted = true;
            }
            State::Relaying => {
                if self
                    .cfg
                    .idle_timeout
                    .is_some_and(|t| now >= self.last_activity + t)
                {
                    self.stop(End::IdleTimeout);
                } else {
                    self.tls.hibernate();
                }
            }
            State::Flushing => {
                // The client did not take what it was owed in time.
                self.drop_owed(Side::Client);
                self.state = State::Failing;
                self.client.cancel_wanted = true;
            }
            State::Lingering => self.end_linger(),
            _ => {}
        }
    }

    /// The session lookup asked for by [`Op::LookupSession`] is over (what
    /// the store had is in the session cache, or nothing came in time): the
    /// handshake goes on. Ignored in any other state.
    pub fn handle_session(&mut self, _now: Instant) {
        if self.state == State::ExpectSessionLookup {
            self.lookup = None;
            self.state = State::Handshaking;
            // The ClientHello waits in the read buffer: stepped at the next
            // poll, as if just read.
            self.unread = true;
        }
    }

    /// Whether the connection waits for a session lookup.
    pub fn is_expecting_session(&self) -> bool {
        self.state == State::ExpectSessionLookup
    }

    /// The shutdown drain timed out: stop now. Idempotent.
    pub fn handle_stop(&mut self, _now: Instant) {
        if self.cut {
            return;
        }
        self.cut = true;
        match self.state {
            State::ExpectProxyHeader | State::Handshaking | State::ExpectSessionLookup => {
                self.fail(End::DrainCut)
            }
            State::ExpectBackend => {
                if self.connecting {
                    self.backend.cancel_wanted = true;
                } else {
                    self.fail(End::DrainCut);
                }
            }
            State::Relaying => self.stop(End::DrainCut),
            State::Lingering => self.end_linger(),
            _ => {}
        }
    }

    // ------------------------------------------------------------------
    // Phases
    // ------------------------------------------------------------------

    fn poll_proxy_header(&mut self) -> Option<Op> {
        if self.client.read.is_some() {
            return None;
        }
        let mut buf = std::mem::take(&mut self.proxy_buf);
        if !self.cfg.runtime_buffers {
            buf.reserve(HANDSHAKE_READ);
        }
        self.client.read = Some(buf.capacity() - buf.len());
        Some(Op::Recv {
            side: Side::Client,
            buf,
        })
    }

    fn on_proxy_read(&mut self, res: IoResult) {
        let buf = std::mem::take(&mut self.client.buf);
        match res {
            IoResult::Done(0) => {
                let end = match buf.first() {
                    None => End::HandshakeEof,
                    Some(&b) => End::ProxyHeader(ProxyError::Missing(b)),
                };
                self.fail(end);
            }
            IoResult::Done(_) => match proxy::parse(&buf, &ParseLimits::default()) {
                Ok(Parsed::Done { header, consumed }) => {
                    self.take_proxy_header(&header);
                    let mut rest = buf;
                    rest.drain(..consumed);
                    self.unread = !rest.is_empty();
                    self.client.buf = rest;
                    self.state = State::Handshaking;
                }
                Ok(Parsed::NeedMore) => self.proxy_buf = buf,
                Err(e) => self.fail(End::ProxyHeader(e)),
            },
            IoResult::Cancelled => self.proxy_buf = buf,
            IoResult::Failed(_) => self.fail(End::HandshakeEof),
        }
    }

    fn take_proxy_header(&mut self, header: &ProxyHeader) {
        if let Some(src) = header.source {
            self.out.client = Some(src);
        }
        if self.cfg.proxy_out.is_none() {
            return;
        }
        if let (Some(src), Some(dst)) = (header.source, header.destination) {
            self.addresses = Some(Box::new((src, dst)));
        } else if header.local {
            self.addresses = None;
        }
    }

    fn poll_handshake(&mut self, now: Instant) -> Option<Op> {
        // The handshake is a ping-pong: flush what the session queued, then
        // read again.
        if let Some(op) = self.poll_client_write() {
            return Some(op);
        }
        if self.client.write || self.client.read.is_some() || !self.to_client.is_empty() {
            return None;
        }
        if std::mem::take(&mut self.unread) {
            // Bytes that came behind the PROXY header: handled as if just
            // read.
            self.step_handshake(now);
            return self.poll_op_again(now);
        }
        let mut buf = std::mem::take(&mut self.client.buf);
        let size = if self.cfg.runtime_buffers {
            0
        } else {
            HANDSHAKE_READ
        };
        self.tls.prepare_read(&mut buf, size);
        self.client.read = Some(buf.capacity() - buf.len());
        Some(Op::Recv {
            side: Side::Client,
            buf,
        })
    }

    /// After an internal step inside a poll: what the new state asks for
    /// (without the routing table, which only `ExpectBackend` needs and
    /// which a handshake step cannot reach in the same poll: the runtime
    /// polls again).
    fn poll_op_again(&mut self, now: Instant) -> Option<Op> {
        match self.state {
            State::Handshaking => self.poll_handshake(now),
            State::ExpectBackend | State::Flushing => self.poll_client_write(),
            _ => None,
        }
    }

    fn on_handshake_read(&mut self, res: IoResult, now: Instant) {
        match res {
            IoResult::Done(0) => self.fail(End::HandshakeEof),
            IoResult::Done(_) => self.step_handshake(now),
            // Only the machine cancels, and only when it stops.
            IoResult::Cancelled => {}
            IoResult::Failed(_) => self.fail(End::HandshakeEof),
        }
    }

    /// With a session store, whether the ClientHello (whole in the read
    /// buffer) offers a session to look up first: then the machine waits
    /// for it in `ExpectSessionLookup`.
    fn wants_lookup(&mut self) -> bool {
        if !self.cfg.session_lookup || self.looked_up {
            return false;
        }
        let facts = match hello::peek(&self.client.buf) {
            Peek::NeedMore => return false,
            Peek::Invalid => {
                self.looked_up = true;
                return false;
            }
            Peek::Hello(facts) => facts,
        };
        self.looked_up = true;
        let ticketer = self.tls.stateless_tickets();
        match crate::session::l2::lookup_for(&facts, ticketer, self.server_tls13) {
            Some((key, take)) => {
                self.lookup = Some(Op::LookupSession {
                    key: key.to_vec(),
                    take,
                });
                self.state = State::ExpectSessionLookup;
                true
            }
            None => false,
        }
    }

    /// Runs the handshake step over the bytes in the client read buffer.
    fn step_handshake(&mut self, now: Instant) {
        if self.wants_lookup() {
            return;
        }
        let mut buf = std::mem::take(&mut self.client.buf);
        let status = self
            .tls
            .handle_read(&mut buf, &mut self.to_client, &mut self.to_backend);
        self.client.buf = buf;
        match status {
            Ok(Status::Handshaking) => {}
            Ok(status) => self.established(status, now),
            Err(err) => self.tls_failed(err, true, now),
        }
    }

    fn established(&mut self, status: Status, now: Instant) {
        // The handshake's facts stay in the session until the outcome.
        self.out.established_at = Some(now);
        if self.tls.is_acme_challenge() {
            // RFC 8737 §3: the validation only looks at the handshake.
            // A close_notify, then the lingering close; nothing is relayed.
            self.to_backend.clear();
            let _ = self.tls.close(&mut self.to_client);
            self.end = Some(Box::new(End::AcmeChallenge));
            self.state = State::Flushing;
            self.phase_at = now;
            self.linger = !self.client.eof;
            return;
        }
        if matches!(status, Status::PeerClosed | Status::Closed) {
            // A close_notify came with the client's Finished.
            self.client.eof = true;
        }
        // The handshake buffer goes back to the allocator: the relay's
        // first reads are small, so an idle connection holds little.
        if self.client.buf.capacity() > FIRST_READ {
            self.client.buf = Vec::new();
        }
        // Early data that came with the client's Finished starts the
        // time-to-first-byte clock.
        if !self.to_backend.is_empty() {
            self.ttfb_from = Some(now);
        }
        if let Some(version) = self.cfg.proxy_out {
            // The PROXY header goes first, before any plaintext.
            let mut header = Vec::with_capacity(256 + self.to_backend.len());
            if let Err(e) = encode_proxy_header(
                version,
                self.addresses.take().map(|a| *a),
                &self.tls,
                &mut header,
            ) {
                self.fail(End::Io(Side::Backend, io::Error::other(e).kind()));
                return;
            }
            header.append(&mut self.to_backend);
            self.to_backend = header;
        }
        if self.cut {
            self.fail(End::DrainCut);
            return;
        }
        self.state = State::ExpectBackend;
        self.phase_at = now;
    }

    fn poll_connect(&mut self, now: Instant, pools: &mut Pools) -> Option<Op> {
        if self.connecting || self.backend.busy() {
            return None;
        }
        let pool = *self
            .pool
            .get_or_insert_with(|| pools.pool_for_frontend(self.cfg.frontend, self.tls.sni()));
        let skip = self.out.backend_tried.as_ref().filter(|_| self.skip_tried);
        let Some(addr) = pools.pick(pool, self.ms(now), skip) else {
            self.out.connect_failures += 1;
            self.fail(End::ConnectFailed(io::ErrorKind::NotFound));
            return None;
        };
        self.attempts += 1;
        self.connecting = true;
        self.out.backend_tried = Some(addr.clone());
        self.phase_at = now;
        if self.out.connect.is_none() {
            self.out.connect = Some((now, now));
        }
        Some(Op::Connect { addr })
    }

    /// Client writes: a short write's rest first, then what is queued.
    fn poll_client_write(&mut self) -> Option<Op> {
        self.poll_write(Side::Client)
    }

    /// A write on `side`: a short write's rest first, then what is queued
    /// (swapped for the spare buffer, so the queue keeps growing meanwhile).
    /// Toward the backend, the queue may start at `to_backend_off` (a
    /// record opened in place keeps its header in front).
    fn poll_write(&mut self, side: Side) -> Option<Op> {
        let queued_off = match side {
            Side::Client => 0,
            Side::Backend => self.to_backend_off,
        };
        let (sock, queued) = self.side_mut(side);
        if sock.write {
            return None;
        }
        if std::mem::take(&mut sock.lent) {
            sock.write = true;
            return Some(Op::SendLent { side });
        }
        let (buf, off) = match sock.unsent.take() {
            Some(resume) => resume,
            None if queued.is_empty() => return None,
            None => {
                let buf = std::mem::replace(queued, std::mem::take(&mut sock.spare));
                if side == Side::Backend {
                    self.to_backend_off = 0;
                }
                (buf, queued_off)
            }
        };
        let sock = self.sock_mut(side);
        sock.write = true;
        Some(Op::Send { side, buf, off })
    }

    fn poll_relay(&mut self) -> Option<Op> {
        // Writes first, so that data already decrypted or encrypted leaves.
        if let Some(op) = self.poll_client_write() {
            return Some(op);
        }
        if let Some(op) = self.poll_write(Side::Backend) {
            return Some(op);
        }
        // Reads, only when the other side has taken what we had.
        if self.client.read.is_none()
            && !self.client.eof
            && self.to_backend.is_empty()
            && self.to_client.len() < TO_CLIENT_LIMIT
        {
            let size = if self.cfg.runtime_buffers {
                0
            } else {
                self.client.read_size
            };
            let mut buf = std::mem::take(&mut self.client.buf);
            if buf.capacity() > 2 * size {
                buf = Vec::new(); // the read size shrank
            }
            self.tls.prepare_read(&mut buf, size);
            self.client.read = Some(buf.capacity() - buf.len());
            return Some(Op::Recv {
                side: Side::Client,
                buf,
            });
        }
        if self.backend.read.is_none() && !self.backend.eof && self.to_client.is_empty() {
            let size = self.backend.read_size;
            let mut buf = std::mem::take(&mut self.backend.buf);
            buf.clear();
            if self.cfg.runtime_buffers {
                // The runtime brings the read buffer; nothing is reserved.
                buf = Vec::new();
                self.backend_room = 0;
                self.backend.read = Some(0);
            } else {
                if buf.capacity() > 2 * size {
                    buf = Vec::new(); // the read size shrank
                }
                // With the own record layer the read lands after room for
                // the record header, so that a read of at most one record's
                // worth is sealed where it landed (see
                // `encrypt_backend_read`).
                self.backend_room = self.tls.seal_header_room().unwrap_or(0);
                buf.resize(self.backend_room, 0);
                buf.reserve(size);
                self.backend.read = Some(buf.capacity() - buf.len());
            }
            return Some(Op::Recv {
                side: Side::Backend,
                buf,
            });
        }
        // Half-close toward the backend once all client data is there.
        // When that ends the connection (the other direction is closed and
        // nothing is in flight), the close right after sends the FIN: no
        // shutdown(2) of its own.
        if self.client.eof && !self.backend.shut && !self.backend.owes(&self.to_backend) {
            self.backend.shut = true;
            if self.backend.eof && self.client.shut && !self.in_flight() {
                return None;
            }
            return Some(Op::ShutdownWrite {
                side: Side::Backend,
            });
        }
        // The backend's EOF became a close_notify; once it is out, FIN
        // (likewise left to the close when it ends the connection).
        if self.backend.eof && !self.client.shut && !self.client.owes(&self.to_client) {
            self.client.shut = true;
            if self.client.eof && self.backend.shut && !self.in_flight() {
                return None;
            }
            return Some(Op::ShutdownWrite { side: Side::Client });
        }
        None
    }

    /// Both directions closed and flushed.
    #[allow(dead_code)] // checked in debug builds
    fn relay_finished(&self) -> bool {
        self.client.eof && self.backend.shut && self.backend.eof && self.client.shut
    }

    fn on_client_read(&mut self, res: IoResult, offered: usize, now: Instant) {
        match res {
            IoResult::Done(0) => self.client.eof = true,
            IoResult::Done(n) => {
                let max = self.cfg.buffer_size.max(MAX_RECORD_LEN);
                self.client.read_size = next_read_size(self.client.read_size, n, offered, max);
                // A whole record of data is forwarded from where it
                // landed (own record layer): the read buffer becomes the
                // backend's write, the plaintext after its header.
                let mut buf = std::mem::take(&mut self.client.buf);
                let status = self.tls.handle_read_forward(
                    &mut buf,
                    &mut self.to_client,
                    &mut self.to_backend,
                );
                self.client.buf = buf;
                match status {
                    Ok((status, off)) => {
                        self.to_backend_off = off;
                        if matches!(status, Status::PeerClosed | Status::Closed) {
                            self.client.eof = true;
                        }
                    }
                    Err(err) => return self.tls_failed(err, false, now),
                }
                if self.ttfb_from.is_none() && !self.to_backend.is_empty() {
                    self.ttfb_from = Some(now);
                }
            }
            IoResult::Cancelled => {}
            IoResult::Failed(kind) => self.fail(End::Io(Side::Client, kind)),
        }
    }

    fn on_backend_read(
        &mut self,
        res: IoResult,
        offered: usize,
        data: &[u8],
        sealed: bool,
        now: Instant,
    ) {
        match res {
            IoResult::Done(0) => {
                self.backend.eof = true;
                if let Err(err) = self.tls.close(&mut self.to_client) {
                    self.fail(End::Tls(err));
                }
            }
            IoResult::Done(n) => {
                if !self.ttfb_done {
                    // A backend that speaks first has no TTFB.
                    self.ttfb_done = true;
                    self.out.ttfb = self
                        .ttfb_from
                        .map(|from| now.saturating_duration_since(from));
                }
                let max = self.cfg.buffer_size.max(1);
                self.backend.read_size = next_read_size(self.backend.read_size, n, offered, max);
                if !sealed {
                    self.encrypt_backend_read(data);
                }
            }
            IoResult::Cancelled => {}
            IoResult::Failed(kind) => self.fail(End::Io(Side::Backend, kind)),
        }
    }

    /// Encrypts the backend read buffer's bytes for the client.
    ///
    /// With the own record layer, a read of at most one record's worth
    /// (the common case) is sealed in place when nothing else is queued
    /// for the client: the header is written into the room in front of
    /// it, the tag appended, and the buffer itself is queued: the payload
    /// is never copied. Otherwise the layer copies it into `to_client`,
    /// sealing there (records must leave in the order they were sealed).
    ///
    /// `data`: the bytes when the runtime read into a buffer of its own
    /// (they are encrypted from there, and the buffer goes back to it).
    fn encrypt_backend_read(&mut self, data: &[u8]) {
        let mut buf = std::mem::take(&mut self.backend.buf);
        if !data.is_empty() {
            let res = self.tls.encrypt(data, &mut self.to_client);
            self.backend.buf = buf;
            if let Err(err) = res {
                self.fail(End::Tls(err));
            }
            return;
        }
        let room = std::mem::take(&mut self.backend_room).min(buf.len());
        let in_place = room > 0
            && self.to_client.is_empty()
            && self.tls.seal_header_room() == Some(room)
            && buf.len() - room <= MAX_FRAGMENT_LEN;
        if in_place {
            match self.tls.seal_in_place(&mut buf, 0) {
                // The empty queue's allocation serves the next read.
                Ok(_) => self.backend.buf = std::mem::replace(&mut self.to_client, buf),
                Err(err) => self.fail(End::Tls(err)),
            }
            return;
        }
        let res = self.tls.encrypt(&buf[room..], &mut self.to_client);
        self.backend.buf = buf;
        if let Err(err) = res {
            self.fail(End::Tls(err));
        }
    }

    /// A TLS failure: the alert the session queued (if any) is flushed to
    /// the client, nothing more is forwarded to the backend.
    fn tls_failed(&mut self, err: TlsError, handshake: bool, now: Instant) {
        let alert = AlertKind::of_failure(&err, &self.to_client);
        self.out.alert = alert;
        let end = if handshake {
            End::HandshakeTls(err)
        } else {
            End::Tls(err)
        };
        if alert.is_none() {
            self.to_client.clear();
            self.fail(end);
            return;
        }
        // Flush the alert after what is already queued; drop data not yet
        // forwarded: the client broke the record stream.
        self.drop_owed(Side::Backend);
        self.backend.cancel_wanted = true;
        self.client.cancel_wanted = self.client.read.is_some();
        self.end = Some(Box::new(end));
        self.state = State::Flushing;
        self.phase_at = now;
        self.linger = !self.client.eof;
    }

    /// The alert is out: shut our side (the client reads the alert, then
    /// EOF) and read what the client still sends until it closes or the
    /// flush time passes.
    fn begin_linger(&mut self, now: Instant) -> Option<Op> {
        if !self.linger || self.client.owes(&self.to_client) {
            return None;
        }
        self.linger = false;
        self.state = State::Lingering;
        self.phase_at = now;
        self.client.shut = true;
        Some(Op::ShutdownWrite { side: Side::Client })
    }

    fn poll_linger_read(&mut self) -> Option<Op> {
        if self.client.eof || self.client.read.is_some() {
            return None;
        }
        let mut buf = std::mem::take(&mut self.client.buf);
        buf.clear();
        if !self.cfg.runtime_buffers {
            buf.reserve(HANDSHAKE_READ);
        }
        self.client.read = Some(buf.capacity() - buf.len());
        Some(Op::Recv {
            side: Side::Client,
            buf,
        })
    }

    /// Lingering is over (the flush time passed, or the drain cut came).
    fn end_linger(&mut self) {
        self.client.eof = true;
        self.client.cancel_wanted = self.client.read.is_some();
    }

    /// A stop (idle timeout, drain cut): cancel what is in flight; once it
    /// has all completed, flush what the client is owed and a close_notify.
    fn stop(&mut self, end: End) {
        self.end = Some(Box::new(end));
        self.state = State::Stopping;
        self.client.cancel_wanted = true;
        self.backend.cancel_wanted = true;
    }

    /// Every op of the stopping connection has completed. The ciphertext
    /// the client is owed is a valid record stream; a close_notify after it
    /// ends it cleanly. Plaintext not yet written to the backend is dropped
    /// (and the backend reset).
    fn begin_flush_after_stop(&mut self, now: Instant) {
        self.drop_owed(Side::Backend);
        if !self.client.shut {
            let _ = self.tls.close(&mut self.to_client);
        }
        self.state = State::Flushing;
        self.phase_at = now;
        if !self.client.owes(&self.to_client) {
            self.state = State::Done;
        }
    }

    /// Fails the connection: nothing new is submitted but the cancels of
    /// what is in flight; the outcome follows once all of it completed.
    fn fail(&mut self, end: End) {
        if matches!(self.state, State::Failing | State::Done) {
            return;
        }
        // Whatever either side was still owed is dropped.
        self.drop_owed(Side::Client);
        self.drop_owed(Side::Backend);
        self.end = Some(Box::new(end));
        self.state = State::Failing;
        self.client.cancel_wanted = true;
        self.backend.cancel_wanted = true;
    }

    /// Marks `side` for a reset: bytes owed to it were dropped.
    fn mark_dropped(&mut self, side: Side) {
        match side {
            Side::Client => self.out.reset_client = true,
            Side::Backend => self.out.reset_backend = true,
        }
    }

    /// Drops what `side` is owed (queued or to resume) and marks it for a
    /// reset when that was anything.
    fn drop_owed(&mut self, side: Side) {
        let (sock, queued) = match side {
            Side::Client => (&mut self.client, &mut self.to_client),
            Side::Backend => (&mut self.backend, &mut self.to_backend),
        };
        let owed = sock.owes(queued);
        queued.clear();
        sock.lent = false;
        if side == Side::Backend {
            self.to_backend_off = 0;
        }
        sock.unsent = None;
        if owed {
            self.mark_dropped(side);
        }
    }

    /// Keeps a written buffer for reuse while data is still flowing to
    /// `side`; once nothing is pending it is freed, so that an idle
    /// connection holds no spare buffers.
    fn recycle(&mut self, side: Side, mut buf: Vec<u8>) {
        let (sock, queued) = match side {
            Side::Client => (&mut self.client, &self.to_client),
            Side::Backend => (&mut self.backend, &self.to_backend),
        };
        if queued.is_empty() {
            return;
        }
        buf.clear();
        if sock.spare.capacity() < buf.capacity() {
            sock.spare = buf;
        }
    }

    /// Whether bytes for `side` are still to be written in this state.
    fn still_owed(&self, side: Side) -> bool {
        match side {
            Side::Client => !matches!(self.state, State::Failing | State::Done),
            Side::Backend => self.state == State::Relaying,
        }
    }

    /// A side's socket state and the bytes queued for it.
    fn side_mut(&mut self, side: Side) -> (&mut Sock, &mut Vec<u8>) {
        match side {
            Side::Client => (&mut self.client, &mut self.to_client),
            Side::Backend => (&mut self.backend, &mut self.to_backend),
        }
    }

    fn sock_mut(&mut self, side: Side) -> &mut Sock {
        match side {
            Side::Client => &mut self.client,
            Side::Backend => &mut self.backend,
        }
    }

    /// Milliseconds of the routing clock.
    fn ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.cfg.epoch).as_millis() as u64
    }
}

/// Encodes the PROXY header for a finished handshake.
fn encode_proxy_header(
    version: proxy::Version,
    addresses: Option<(SocketAddr, SocketAddr)>,
    session: &TlsSession,
    out: &mut Vec<u8>,
) -> Result<(), ProxyError> {
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
    encode(version, &encoded, out).map(|_| ())
}

/// Adapts a side's read size: double when a read filled the room it was
/// offered, halve (down to [`FIRST_READ`]) when it used under an eighth.
pub fn next_read_size(size: usize, got: usize, offered: usize, max: usize) -> usize {
    if got >= offered {
        (size * 2).min(max)
    } else if got < offered / 8 {
        (size / 2).max(FIRST_READ)
    } else {
        size
    }
}
