//! The L2 session store client, sans-IO: one pipelined RESP connection per
//! worker to a Redis (or Valkey) server shared by a fleet.
//!
//! ```text
//!          connect ok                  garbage, EOF, error, stall
//!   Down ───────────► Connecting ───► Up ───────────────────────► Closing ─► Down
//!    ▲   (backoff)        │ timeout/fail                              (ops in flight
//!    └────────────────────┘                                            complete first)
//! ```
//!
//! Like the connection machine ([`crate::conn::Conn`]), a [`Client`] never
//! touches a socket or the clock: the runtime feeds it completions through
//! the `handle_*` methods, asks it for ops with [`Client::poll_op`], for
//! answers with [`Client::poll_event`], and calls [`Client::handle_timeout`]
//! at [`Client::poll_timeout`].
//!
//! - **Puts** (`SET key value EX ttl`) and deletes are pipelined and never
//!   awaited; when the store is not up (or too much is queued) they are
//!   dropped and counted.
//! - **Lookups** (`GET` for TLS 1.2 session IDs, `GETDEL` for TLS 1.3
//!   single-use tickets) are answered with [`Event::Answer`] once the reply
//!   arrives, or with `None` at the lookup timeout, on an error reply, or
//!   when the connection fails. A reply that arrives after its lookup timed
//!   out is read and dropped: replies come in request order, so each one is
//!   matched to the oldest request still waiting for one.
//! - **Failures** (a refused or timed-out connect, an error reply to AUTH,
//!   bytes that are not RESP, EOF, a stall) close the connection and
//!   reconnect with exponential backoff. Every change between up and down is
//!   reported once ([`Event::Up`], [`Event::Down`]).
//!
//! RESP is encoded and decoded by the `redis-protocol` crate (itself
//! sans-IO). Keys are the configured prefix and the rustls key in hex;
//! values are the serialized rustls session values, as is.

#![forbid(unsafe_code)]

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::encode::encode_borrowed;
use redis_protocol::resp2::types::{BorrowedFrame, OwnedFrame};

use crate::tls::hello::HelloFacts;

/// Bytes queued for the store above which puts are dropped (a slow store
/// never makes memory grow).
pub const MAX_QUEUED: usize = 1 << 20;

/// First reconnect delay; it doubles up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);

/// Longest reconnect delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// A request that has waited this long for its reply marks the connection
/// as stalled: it is closed and made again.
pub const STALL: Duration = Duration::from_secs(2);

/// Largest reply accepted (a session value is a few hundred bytes to a few
/// KiB; a client certificate chain can make it larger).
pub const MAX_REPLY: usize = 256 * 1024;

/// The client's settings.
#[derive(Clone, PartialEq, Eq)]
pub struct L2Config {
    /// Prepended to every key.
    pub prefix: Vec<u8>,
    /// `AUTH` password, if any.
    pub password: Option<Vec<u8>>,
    /// `SELECT` database, if not 0.
    pub db: u32,
    /// `EX` of every put: the session timeout, in seconds.
    pub ttl_s: u64,
    /// How long a lookup waits for its answer.
    pub timeout: Duration,
    /// How long a connect may take.
    pub connect_timeout: Duration,
}

impl fmt::Debug for L2Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("L2Config")
            .field("prefix", &String::from_utf8_lossy(&self.prefix))
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .field("db", &self.db)
            .field("ttl_s", &self.ttl_s)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// What the client asks the runtime to do.
#[derive(Debug, PartialEq, Eq)]
pub enum L2Op {
    /// Open a socket to the store and connect it; then
    /// [`Client::handle_connect`].
    Connect,
    /// Write these bytes (all of them, as many writes as it takes; a short
    /// write is reported and the rest asked for again); then
    /// [`Client::handle_send`] with the buffer.
    Send(Vec<u8>),
    /// Read into the runtime's buffer; then [`Client::handle_recv`].
    Recv,
    /// Make every op in flight on the socket complete (cancel the connect,
    /// `shutdown(SHUT_RDWR)`); their completions are still reported.
    Abort,
    /// Close the socket (nothing is in flight).
    Close,
}

/// What the client tells the worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The answer to lookup `token`: the session value, or `None` (not in
    /// the store, timed out, or the store failed).
    Answer {
        /// The token given to [`Client::lookup`].
        token: u64,
        /// The stored session value.
        value: Option<Vec<u8>>,
        /// How the lookup ended.
        how: Answered,
    },
    /// The store became reachable.
    Up,
    /// The store became unreachable (once per change).
    Down(String),
}

/// How a lookup ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answered {
    /// Found.
    Hit,
    /// Not in the store.
    Miss,
    /// No reply within the timeout.
    Timeout,
    /// An error reply, an unexpected reply, or the connection failed.
    Error,
}

/// Counters, read by the runtime for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct L2Stats {
    /// Lookups answered with a session.
    pub hits: u64,
    /// Lookups the store had no session for.
    pub misses: u64,
    /// Lookups that timed out.
    pub timeouts: u64,
    /// Error replies, unexpected replies, bytes that are not RESP, failed
    /// connections.
    pub errors: u64,
    /// Puts (and deletes) dropped: store not up, or too much queued.
    pub dropped_puts: u64,
    /// Puts sent.
    pub puts: u64,
    /// Lookups asked while the store was down (answered at once).
    pub unavailable: u64,
}

/// A request waiting for its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    /// AUTH or SELECT: an error reply means the connection is useless.
    Setup,
    /// A put or delete: the reply is only checked.
    Write,
    /// A lookup.
    Lookup(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not connected; connect again at this time.
    Down { retry_at: Instant },
    /// A connect is in flight, until this deadline.
    Connecting { deadline: Instant },
    /// Connected.
    Up,
    /// Closing: waiting for ops in flight, then close.
    Closing,
}

/// The per-worker store client. See the module documentation.
pub struct Client {
    cfg: L2Config,
    state: State,
    /// The last state reported (up or down): one event per change.
    reported_up: Option<bool>,
    backoff: Duration,
    /// Requests not yet handed to the kernel.
    out: Vec<u8>,
    /// A write is in flight.
    sending: bool,
    /// A read is in flight.
    receiving: bool,
    /// A connect is in flight.
    connecting: bool,
    /// AUTH/SELECT replies still awaited: the store is up once they came.
    setup_pending: usize,
    /// An abort was asked for and not yet submitted.
    abort_wanted: bool,
    /// Bytes read and not yet decoded.
    inbuf: Vec<u8>,
    /// Requests sent or queued, oldest first, with when they were queued.
    waiting: VecDeque<(Pending, Instant)>,
    /// Lookups still waiting for an answer: token → deadline.
    lookups: HashMap<u64, Instant>,
    /// Lookup deadlines in order (a token may be answered already).
    deadlines: VecDeque<(Instant, u64)>,
    events: VecDeque<Event>,
    stats: L2Stats,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("state", &self.state)
            .field("waiting", &self.waiting.len())
            .field("lookups", &self.lookups.len())
            .field("out", &self.out.len())
            .finish()
    }
}

/// The store key of rustls key `key`: the prefix, then the key in hex.
pub fn store_key(prefix: &[u8], key: &[u8]) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(prefix.len() + key.len() * 2);
    out.extend_from_slice(prefix);
    for b in key {
        out.push(HEX[(b >> 4) as usize]);
        out.push(HEX[(b & 15) as usize]);
    }
    out
}

/// Which stored session a ClientHello may resume with, if any: the key and
/// whether it is taken (a TLS 1.3 single-use ticket, `GETDEL`) or read (a
/// TLS 1.2 session ID, `GET`).
///
/// - With stateless tickets on (`ticketer`), rustls resumes TLS 1.3 only by
///   ticket, and TLS 1.2 by ticket when one is offered: no lookup then.
/// - A TLS 1.3 client sends a random legacy session ID: when both sides
///   speak TLS 1.3 (`server_tls13`, and the hello offers it), the session
///   ID is not a resumption attempt.
pub fn lookup_for(facts: &HelloFacts, ticketer: bool, server_tls13: bool) -> Option<(&[u8], bool)> {
    if let Some(id) = facts.psk_identities.first() {
        if !ticketer && server_tls13 && !id.is_empty() {
            return Some((id, true));
        }
        if server_tls13 && facts.offers_tls13 {
            return None;
        }
    }
    if facts.session_id.is_empty() || (server_tls13 && facts.offers_tls13) {
        return None;
    }
    if ticketer && facts.ticket_len.unwrap_or(0) > 0 {
        return None;
    }
    Some((&facts.session_id, false))
}

fn encode_into(out: &mut Vec<u8>, args: &[&[u8]]) {
    let parts: Vec<BorrowedFrame<'_>> = args.iter().map(|a| BorrowedFrame::BulkString(a)).collect();
    let frame = BorrowedFrame::Array(&parts);
    let len = frame.encode_len(false);
    let at = out.len();
    out.resize(at + len, 0);
    match encode_borrowed(&mut out[at..], &frame, false) {
        Ok(n) => out.truncate(at + n),
        // The buffer was sized by the encoder itself.
        Err(_) => out.truncate(at),
    }
}

impl Client {
    /// A client that connects at its first [`poll_op`](Self::poll_op).
    pub fn new(cfg: L2Config, now: Instant) -> Self {
        Self {
            cfg,
            state: State::Down { retry_at: now },
            reported_up: None,
            backoff: BACKOFF_MIN,
            out: Vec::new(),
            sending: false,
            receiving: false,
            connecting: false,
            setup_pending: 0,
            abort_wanted: false,
            inbuf: Vec::new(),
            waiting: VecDeque::new(),
            lookups: HashMap::new(),
            deadlines: VecDeque::new(),
            events: VecDeque::new(),
            stats: L2Stats::default(),
        }
    }

    /// Whether the store is connected and set up (lookups are worth
    /// waiting for).
    pub fn is_up(&self) -> bool {
        self.state == State::Up && self.setup_pending == 0
    }

    fn report_up(&mut self) {
        self.backoff = BACKOFF_MIN;
        if self.reported_up != Some(true) {
            self.reported_up = Some(true);
            self.events.push_back(Event::Up);
        }
    }

    /// The counters.
    pub fn stats(&self) -> L2Stats {
        self.stats
    }

    /// Lookups waiting for an answer.
    pub fn lookups_waiting(&self) -> usize {
        self.lookups.len()
    }

    fn queue(&mut self, args: &[&[u8]], pending: Pending, now: Instant) {
        encode_into(&mut self.out, args);
        self.waiting.push_back((pending, now));
    }

    /// Queues `SET key value EX ttl`. Dropped (and counted) when the store
    /// is not up or too much is queued; never awaited.
    pub fn put(&mut self, key: &[u8], value: &[u8], now: Instant) {
        if !self.is_up() || self.out.len() >= MAX_QUEUED {
            self.stats.dropped_puts += 1;
            return;
        }
        let k = store_key(&self.cfg.prefix, key);
        let ttl = self.cfg.ttl_s.max(1).to_string();
        self.queue(
            &[b"SET", &k, value, b"EX", ttl.as_bytes()],
            Pending::Write,
            now,
        );
        self.stats.puts += 1;
    }

    /// Queues `DEL key` (a single-use ticket used from the L1 cache), like a
    /// put.
    pub fn delete(&mut self, key: &[u8], now: Instant) {
        if !self.is_up() || self.out.len() >= MAX_QUEUED {
            self.stats.dropped_puts += 1;
            return;
        }
        let k = store_key(&self.cfg.prefix, key);
        self.queue(&[b"DEL", &k], Pending::Write, now);
    }

    /// Starts a lookup of `key` (`GETDEL` when `take`), answered later by
    /// an [`Event::Answer`] with `token`. Returns `false`, with nothing
    /// queued, when the store is not up: the caller goes on without it.
    pub fn lookup(&mut self, token: u64, key: &[u8], take: bool, now: Instant) -> bool {
        if !self.is_up() || self.out.len() >= MAX_QUEUED || self.lookups.contains_key(&token) {
            self.stats.unavailable += 1;
            return false;
        }
        let k = store_key(&self.cfg.prefix, key);
        let cmd: &[u8] = if take { b"GETDEL" } else { b"GET" };
        self.queue(&[cmd, &k], Pending::Lookup(token), now);
        let deadline = now + self.cfg.timeout;
        self.lookups.insert(token, deadline);
        self.deadlines.push_back((deadline, token));
        true
    }

    /// Forgets lookup `token` (its connection ended): its reply, when it
    /// comes, is dropped.
    pub fn forget(&mut self, token: u64) {
        self.lookups.remove(&token);
    }

    /// The next answer or state change, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next op to submit, if any; call until `None` after every
    /// `handle_*` call and after queueing requests.
    pub fn poll_op(&mut self, now: Instant) -> Option<L2Op> {
        match self.state {
            State::Down { retry_at } if now >= retry_at => {
                self.state = State::Connecting {
                    deadline: now + self.cfg.connect_timeout,
                };
                self.connecting = true;
                Some(L2Op::Connect)
            }
            State::Down { .. } | State::Connecting { .. } => {
                if std::mem::take(&mut self.abort_wanted) && self.connecting {
                    return Some(L2Op::Abort);
                }
                None
            }
            State::Up => {
                if !self.receiving {
                    self.receiving = true;
                    return Some(L2Op::Recv);
                }
                if !self.sending && !self.out.is_empty() {
                    self.sending = true;
                    return Some(L2Op::Send(std::mem::take(&mut self.out)));
                }
                None
            }
            State::Closing => {
                if std::mem::take(&mut self.abort_wanted) {
                    return Some(L2Op::Abort);
                }
                if self.sending || self.receiving || self.connecting {
                    return None;
                }
                self.state = State::Down {
                    retry_at: now + self.backoff,
                };
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                Some(L2Op::Close)
            }
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) should be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let lookup = self.deadlines.front().map(|&(d, _)| d);
        let state = match self.state {
            State::Down { retry_at } => Some(retry_at),
            State::Connecting { deadline } => Some(deadline),
            State::Up => self.waiting.front().map(|&(_, at)| at + STALL),
            State::Closing => None,
        };
        match (lookup, state) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Deadlines may have passed: lookups time out, a connect is given up,
    /// a stalled connection is closed. Spurious calls change nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(deadline, token)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            if self.lookups.get(&token) == Some(&deadline) {
                self.lookups.remove(&token);
                self.stats.timeouts += 1;
                self.answer(token, None, Answered::Timeout);
            }
        }
        match self.state {
            State::Connecting { deadline } if now >= deadline => {
                self.fail("connect timed out".into());
            }
            State::Up => {
                if let Some(&(_, at)) = self.waiting.front() {
                    if now >= at + STALL {
                        self.fail("no reply within 2 s".into());
                    }
                }
            }
            _ => {}
        }
    }

    /// The connect completed (`Err` with the error's text when it failed).
    pub fn handle_connect(&mut self, res: Result<(), String>, now: Instant) {
        self.connecting = false;
        match (self.state, res) {
            (State::Connecting { .. }, Ok(())) => {
                self.state = State::Up;
                self.inbuf.clear();
                // Setup first: everything after it is pipelined behind.
                let mut setup = Vec::new();
                let mut n = 0;
                if let Some(pw) = &self.cfg.password {
                    encode_into(&mut setup, &[b"AUTH", pw]);
                    n += 1;
                }
                if self.cfg.db != 0 {
                    encode_into(&mut setup, &[b"SELECT", self.cfg.db.to_string().as_bytes()]);
                    n += 1;
                }
                debug_assert!(self.out.is_empty() && self.waiting.is_empty());
                self.out = setup;
                for _ in 0..n {
                    self.waiting.push_back((Pending::Setup, now));
                }
                // Up once the setup is accepted (at once without one).
                self.setup_pending = n;
                if n == 0 {
                    self.report_up();
                }
            }
            (State::Connecting { .. }, Err(e)) => {
                self.fail(format!("connect failed: {e}"));
            }
            // Given up meanwhile (timeout): close what connected.
            _ => {}
        }
    }

    /// A write completed: `Ok(n)` bytes of `buf` were written.
    pub fn handle_send(&mut self, res: Result<usize, String>, mut buf: Vec<u8>) {
        self.sending = false;
        match res {
            Ok(n) if n > 0 && n < buf.len() && self.state == State::Up => {
                // The rest goes first, ahead of what was queued since.
                buf.drain(..n);
                buf.append(&mut self.out);
                self.out = buf;
            }
            Ok(n) if n > 0 && self.state == State::Up => {}
            Ok(_) if self.state == State::Up => self.fail("write failed: wrote nothing".into()),
            Err(e) if self.state == State::Up => self.fail(format!("write failed: {e}")),
            _ => {}
        }
    }

    /// A read completed with `data` (empty: EOF), or failed.
    pub fn handle_recv(&mut self, res: Result<&[u8], String>, now: Instant) {
        self.receiving = false;
        if self.state != State::Up {
            return;
        }
        match res {
            Ok([]) => self.fail("the store closed the connection".into()),
            Ok(data) => {
                self.inbuf.extend_from_slice(data);
                self.decode_replies(now);
            }
            Err(e) => self.fail(format!("read failed: {e}")),
        }
    }

    fn decode_replies(&mut self, _now: Instant) {
        let mut at = 0;
        loop {
            match decode(&self.inbuf[at..]) {
                Ok(Some((frame, used))) => {
                    at += used;
                    let Some((pending, _)) = self.waiting.pop_front() else {
                        self.stats.errors += 1;
                        self.fail("a reply nothing was asked for".into());
                        return;
                    };
                    if !self.on_reply(pending, frame) {
                        return;
                    }
                }
                Ok(None) => {
                    if self.inbuf.len() - at > MAX_REPLY {
                        self.stats.errors += 1;
                        self.fail("reply too large".into());
                        return;
                    }
                    break;
                }
                Err(e) => {
                    self.stats.errors += 1;
                    self.fail(format!("not RESP from the store: {e}"));
                    return;
                }
            }
        }
        self.inbuf.drain(..at);
    }

    /// One reply for `pending`. Returns false when the connection failed.
    fn on_reply(&mut self, pending: Pending, frame: OwnedFrame) -> bool {
        match pending {
            Pending::Setup => {
                if let OwnedFrame::Error(e) = frame {
                    self.stats.errors += 1;
                    self.fail(format!("setup refused: {e}"));
                    return false;
                }
                self.setup_pending = self.setup_pending.saturating_sub(1);
                if self.setup_pending == 0 {
                    self.report_up();
                }
            }
            Pending::Write => {
                if !matches!(frame, OwnedFrame::SimpleString(_) | OwnedFrame::Integer(_)) {
                    self.stats.errors += 1;
                }
            }
            Pending::Lookup(token) => {
                let (value, how) = match frame {
                    OwnedFrame::BulkString(v) => (Some(v), Answered::Hit),
                    OwnedFrame::Null => (None, Answered::Miss),
                    _ => (None, Answered::Error),
                };
                if self.lookups.remove(&token).is_some() {
                    match how {
                        Answered::Hit => self.stats.hits += 1,
                        Answered::Miss => self.stats.misses += 1,
                        _ => self.stats.errors += 1,
                    }
                    self.answer(token, value, how);
                } else if how == Answered::Error {
                    self.stats.errors += 1;
                }
            }
        }
        true
    }

    fn answer(&mut self, token: u64, value: Option<Vec<u8>>, how: Answered) {
        self.events.push_back(Event::Answer { token, value, how });
    }

    /// The connection failed: lookups waiting are answered (`None`), queued
    /// requests dropped, and the socket closed once its ops complete.
    fn fail(&mut self, reason: String) {
        if matches!(self.state, State::Closing | State::Down { .. }) {
            return;
        }
        let was_up = self.state == State::Up;
        if !was_up {
            // A connect that failed or timed out.
            self.stats.errors += 1;
        }
        self.state = State::Closing;
        self.setup_pending = 0;
        self.abort_wanted = self.sending || self.receiving || self.connecting;
        for (p, _) in std::mem::take(&mut self.waiting) {
            match p {
                Pending::Lookup(token) => {
                    if self.lookups.remove(&token).is_some() {
                        self.stats.errors += 1;
                        self.answer(token, None, Answered::Error);
                    }
                }
                Pending::Write => self.stats.dropped_puts += 1,
                Pending::Setup => {}
            }
        }
        self.out.clear();
        self.inbuf.clear();
        self.deadlines.clear();
        if self.reported_up != Some(false) {
            self.reported_up = Some(false);
            self.events.push_back(Event::Down(reason));
        }
    }
}

#[cfg(test)]
mod tests;
