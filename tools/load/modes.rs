//! The load modes. Every worker uses blocking sockets with read/write
//! timeouts and checks the count/duration budget between operations.

use crate::http::{self, HttpError, ResponseReader};
use crate::runner::{Arrival, Budget, Run};
use crate::stats::Stats;
use crate::tls::{self, Group, Target, TlsStream, TlsVersion, Trust};
use rustls::client::{Resumption, Tls12Resumption};
use rustls::{ClientConfig, HandshakeKind};
use std::io::{self, Write};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// Pause after a failed operation so a dead target does not cause a hot loop.
const ERROR_BACKOFF: Duration = Duration::from_millis(1);
/// Pause before reconnecting a keep-alive connection after an error.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(10);
/// How long a graceful close waits for the peer to finish.
const CLOSE_DRAIN: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("connect/handshake: {}", http::io_msg(.0))]
    Connect(io::Error),
    #[error("send: {}", http::io_msg(.0))]
    Send(io::Error),
    #[error("response: {0}")]
    Http(#[from] HttpError),
    #[error("HTTP status {0}")]
    Status(u16),
}

/// Settings shared by all workers of a run.
pub struct Ctx {
    pub target: Target,
    /// `--alt-target`: resume mode alternates between the two.
    pub alt: Option<Target>,
    pub version: TlsVersion,
    pub group: Group,
    pub trust: Trust,
    pub budget: Budget,
}

impl Ctx {
    fn config(
        &self,
        version: TlsVersion,
        resumption: Resumption,
    ) -> Result<Arc<ClientConfig>, String> {
        tls::client_config(version, self.group, &self.trust, resumption).map(Arc::new)
    }
}

/// TLS 1.2 session id, TLS 1.2 ticket, or TLS 1.3 ticket resumption.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ResumeKind {
    Id12,
    Ticket12,
    Ticket13,
}

impl ResumeKind {
    pub fn version(self) -> TlsVersion {
        match self {
            ResumeKind::Id12 | ResumeKind::Ticket12 => TlsVersion::V12,
            ResumeKind::Ticket13 => TlsVersion::V13,
        }
    }

    fn tls12(self) -> Tls12Resumption {
        match self {
            ResumeKind::Id12 => Tls12Resumption::SessionIdOnly,
            _ => Tls12Resumption::SessionIdOrTickets,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Direction {
    Down,
    Up,
}

fn status_ok(status: u16) -> Result<(), OpError> {
    if status >= 400 {
        Err(OpError::Status(status))
    } else {
        Ok(())
    }
}

/// Sends `GET /` with `Connection: close` and reads the whole response.
fn request_close(s: &mut TlsStream, reader: &mut ResponseReader) -> Result<u64, OpError> {
    tls::send(s, &http::get_request("/", true)).map_err(OpError::Send)?;
    let resp = reader.read_response(s)?;
    status_ok(resp.status)?;
    Ok(resp.body_len)
}

/// Returns early with an empty result if the worker's config cannot be built.
macro_rules! config_or_return {
    ($expr:expr, $stats:ident, $arrival:ident) => {
        match $expr {
            Ok(c) => c,
            Err(e) => {
                $stats.error(e);
                drop($arrival);
                return $stats;
            }
        }
    };
}

/// `handshake`: a new TCP+TLS connection per operation.
pub fn handshake_worker(ctx: &Ctx, request: bool, arrival: Arrival) -> Stats {
    let mut st = Stats::new();
    let config = config_or_return!(
        ctx.config(ctx.version, tls::resumption_disabled()),
        st,
        arrival
    );
    // One unmeasured handshake before the start gate: a thread's first
    // handshake pays one-time costs (aws-lc seeds its per-thread DRBG with
    // jitter entropy: 40-190 ms measured) that are not the server's.
    if let Ok(s) = tls::connect(&ctx.target, &config) {
        tls::close(s, Duration::from_millis(200));
    }
    let Some(run) = arrival.wait() else {
        return st;
    };
    let mut reader = ResponseReader::new();
    while run.next(&ctx.budget) {
        let t0 = Instant::now();
        let res = tls::connect(&ctx.target, &config)
            .map_err(OpError::Connect)
            .and_then(|mut s| {
                if request {
                    reader.reset();
                    request_close(&mut s, &mut reader)?;
                }
                Ok(s)
            });
        match res {
            Ok(s) => {
                st.ok(t0.elapsed());
                st.slow_closes += u64::from(!tls::close(s, CLOSE_DRAIN));
            }
            Err(e) => {
                st.error(e);
                thread::sleep(ERROR_BACKOFF);
            }
        }
    }
    st
}

/// One connection of resume mode: returns the stream and whether the
/// handshake was a resumption, plus the latency to report.
fn resume_op(
    target: &Target,
    config: &Arc<ClientConfig>,
    fetch: bool,
    include_fetch: bool,
    reader: &mut ResponseReader,
) -> Result<(TlsStream, bool, Duration), OpError> {
    let t0 = Instant::now();
    let mut s = tls::connect(target, config).map_err(OpError::Connect)?;
    let mut lat = t0.elapsed();
    let resumed = s.conn.handshake_kind() == Some(HandshakeKind::Resumed);
    if fetch {
        reader.reset();
        request_close(&mut s, reader)?;
        if include_fetch {
            lat = t0.elapsed();
        }
    }
    Ok((s, resumed, lat))
}

/// `resume`: prime one session, then measure resumed handshakes.
pub fn resume_worker(ctx: &Ctx, kind: ResumeKind, request: bool, arrival: Arrival) -> Stats {
    let mut st = Stats::new();
    let config = config_or_return!(
        ctx.config(kind.version(), tls::resumption_enabled(kind.tls12())),
        st,
        arrival
    );
    // TLS 1.3 tickets arrive after the handshake: read a response to EOF so
    // the client has processed them before the next connection.
    let fetch = request || kind == ResumeKind::Ticket13;
    let mut reader = ResponseReader::new();
    // Prime the session cache (not measured).
    match resume_op(&ctx.target, &config, fetch, false, &mut reader) {
        Ok((s, _, _)) => {
            tls::close(s, CLOSE_DRAIN);
        }
        Err(e) => st.error(format!("priming handshake failed: {e}")),
    }
    let Some(run) = arrival.wait() else {
        return st;
    };
    let mut turn = 0u64;
    while run.next(&ctx.budget) {
        // With --alt-target, every other resumption goes to the other
        // server: each one resumes a session the other made.
        turn += 1;
        let target = match &ctx.alt {
            Some(alt) if turn % 2 == 1 => alt,
            _ => &ctx.target,
        };
        match resume_op(target, &config, fetch, request, &mut reader) {
            Ok((s, resumed, lat)) => {
                st.ok(lat);
                st.resume_attempts += 1;
                st.resumed += u64::from(resumed);
                st.slow_closes += u64::from(!tls::close(s, CLOSE_DRAIN));
            }
            Err(e) => {
                st.error(e);
                thread::sleep(ERROR_BACKOFF);
            }
        }
    }
    st
}

/// A keep-alive connection that reconnects on demand.
struct KeepAlive<'a> {
    ctx: &'a Ctx,
    config: Arc<ClientConfig>,
    stream: Option<TlsStream>,
    reader: ResponseReader,
}

impl<'a> KeepAlive<'a> {
    fn new(ctx: &'a Ctx, config: Arc<ClientConfig>) -> Self {
        Self {
            ctx,
            config,
            stream: None,
            reader: ResponseReader::new(),
        }
    }

    fn ensure(&mut self) -> Result<&mut TlsStream, OpError> {
        if self.stream.is_none() {
            self.reader.reset();
            self.stream =
                Some(tls::connect(&self.ctx.target, &self.config).map_err(OpError::Connect)?);
        }
        Ok(self.stream.as_mut().expect("stream present"))
    }

    fn drop_conn(&mut self) {
        if let Some(s) = self.stream.take() {
            let _ = tls::close(s, Duration::ZERO);
        }
        self.reader.reset();
    }

    /// Sends `head` followed by `body_len` bytes of body (from `body`
    /// repeated), and reads the response. Returns the response body length.
    fn exchange(&mut self, head: &[u8], body: &[u8], body_len: u64) -> Result<u64, OpError> {
        let res = self.exchange_inner(head, body, body_len);
        match &res {
            Ok((_, keep_alive)) if *keep_alive => {}
            _ => self.drop_conn(),
        }
        res.map(|(n, _)| n)
    }

    fn exchange_inner(
        &mut self,
        head: &[u8],
        body: &[u8],
        body_len: u64,
    ) -> Result<(u64, bool), OpError> {
        let s = self.ensure()?;
        s.write_all(head).map_err(OpError::Send)?;
        let mut left = body_len;
        while left > 0 {
            let n = (body.len() as u64).min(left) as usize;
            s.write_all(&body[..n]).map_err(OpError::Send)?;
            left -= n as u64;
        }
        s.flush().map_err(OpError::Send)?;
        let s = self.stream.as_mut().expect("stream present");
        let resp = self.reader.read_response(s)?;
        status_ok(resp.status)?;
        Ok((resp.body_len, resp.keep_alive))
    }
}

/// Open-loop schedule for one connection: request `i` is due at
/// `start + offset + i * interval`.
#[derive(Clone, Copy)]
pub struct Schedule {
    pub interval: Duration,
    pub offset: Duration,
}

impl Schedule {
    /// Spreads a total `rate` (req/s) over `conns` connections; connection
    /// `index` is offset so sends are evenly spaced overall.
    pub fn new(rate: f64, conns: usize, index: usize) -> Self {
        let interval = conns as f64 / rate;
        Self {
            interval: Duration::from_secs_f64(interval),
            offset: Duration::from_secs_f64(interval * index as f64 / conns as f64),
        }
    }

    pub fn due(&self, start: Instant, i: u64) -> Instant {
        start + self.offset + Duration::from_secs_f64(self.interval.as_secs_f64() * i as f64)
    }
}

/// Sleeps until `t`, or returns false if `t` is at/after the deadline.
fn sleep_until(run: &Run, t: Instant) -> bool {
    if run.deadline.is_some_and(|d| t >= d) {
        return false;
    }
    let now = Instant::now();
    if t > now {
        thread::sleep(t - now);
    }
    true
}

pub struct RrParams {
    pub req_size: u64,
    pub resp_size: u64,
}

/// `rr`: request/response over one keep-alive connection per worker.
pub fn rr_worker(ctx: &Ctx, p: &RrParams, schedule: Option<Schedule>, arrival: Arrival) -> Stats {
    let mut st = Stats::new();
    let config = config_or_return!(
        ctx.config(ctx.version, tls::resumption_disabled()),
        st,
        arrival
    );
    let path = format!("/bytes/{}", p.resp_size);
    let head = if p.req_size == 0 {
        http::get_request(&path, false)
    } else {
        http::post_head(&path, p.req_size)
    };
    let body = vec![b'x'; p.req_size.min(64 * 1024) as usize];
    let mut conn = KeepAlive::new(ctx, config);
    if let Err(e) = conn.ensure() {
        st.error(e);
    }
    let Some(run) = arrival.wait() else {
        return st;
    };
    let mut i: u64 = 0;
    loop {
        let intended = match schedule {
            Some(sched) => {
                let due = sched.due(run.start, i);
                if !sleep_until(&run, due) {
                    break;
                }
                Some(due)
            }
            None => None,
        };
        if !run.next(&ctx.budget) {
            break;
        }
        i += 1;
        let t0 = intended.unwrap_or_else(Instant::now);
        match conn.exchange(&head, &body, p.req_size) {
            Ok(n) => {
                st.ok(Instant::now().saturating_duration_since(t0));
                st.bytes += n + p.req_size;
            }
            Err(e) => {
                st.error(e);
                thread::sleep(RECONNECT_BACKOFF);
            }
        }
    }
    conn.drop_conn();
    st
}

/// `bulk`: large transfers over one keep-alive connection per worker.
pub fn bulk_worker(ctx: &Ctx, dir: Direction, size: u64, arrival: Arrival) -> Stats {
    let mut st = Stats::new();
    let config = config_or_return!(
        ctx.config(ctx.version, tls::resumption_disabled()),
        st,
        arrival
    );
    let (head, body_len) = match dir {
        Direction::Down => (http::get_request(&format!("/bytes/{size}"), false), 0),
        Direction::Up => (http::post_head("/upload", size), size),
    };
    let body = vec![b'x'; 64 * 1024];
    let mut conn = KeepAlive::new(ctx, config);
    if let Err(e) = conn.ensure() {
        st.error(e);
    }
    let Some(run) = arrival.wait() else {
        return st;
    };
    while run.next(&ctx.budget) {
        let t0 = Instant::now();
        match conn.exchange(&head, &body, body_len) {
            Ok(n) => {
                st.ok(t0.elapsed());
                st.bytes += match dir {
                    Direction::Down => n,
                    Direction::Up => size,
                };
            }
            Err(e) => {
                st.error(e);
                thread::sleep(RECONNECT_BACKOFF);
            }
        }
    }
    conn.drop_conn();
    st
}

/// `idle`: opens `n` connections (handshake + one keep-alive `GET /`) and
/// returns them open. Opening stops at the run's deadline, if any.
pub fn idle_worker(ctx: &Ctx, n: usize, arrival: Arrival) -> (Stats, Vec<TlsStream>) {
    let mut st = Stats::new();
    let mut held = Vec::with_capacity(n);
    let config = match ctx.config(ctx.version, tls::resumption_disabled()) {
        Ok(c) => c,
        Err(e) => {
            st.error(e);
            return (st, held);
        }
    };
    let Some(run) = arrival.wait() else {
        return (st, held);
    };
    let mut reader = ResponseReader::new();
    for opened in 0..n {
        if run.expired() {
            let missing = (n - opened) as u64;
            st.errors += missing;
            if st.first_error.is_none() {
                st.first_error = Some(format!(
                    "{missing} connection(s) not opened before the --duration deadline"
                ));
            }
            break;
        }
        let t0 = Instant::now();
        let res = tls::connect(&ctx.target, &config)
            .map_err(OpError::Connect)
            .and_then(|mut s| {
                reader.reset();
                tls::send(&mut s, &http::get_request("/", false)).map_err(OpError::Send)?;
                let resp = reader.read_response(&mut s)?;
                status_ok(resp.status)?;
                Ok(s)
            });
        match res {
            Ok(s) => {
                st.ok(t0.elapsed());
                held.push(s);
            }
            Err(e) => {
                st.error(e);
                thread::sleep(ERROR_BACKOFF);
            }
        }
    }
    (st, held)
}

/// Closes held connections with close_notify (no draining).
pub fn close_all(conns: Vec<TlsStream>) {
    for s in conns {
        let _ = s.sock.set_write_timeout(Some(Duration::from_secs(1)));
        let _ = tls::close(s, Duration::ZERO);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_spreads_requests() {
        // 1000 req/s over 4 connections: each connection every 4ms,
        // offsets 0,1,2,3 ms.
        let start = Instant::now();
        let s0 = Schedule::new(1000.0, 4, 0);
        let s3 = Schedule::new(1000.0, 4, 3);
        assert_eq!(s0.interval, Duration::from_millis(4));
        assert_eq!(s3.offset, Duration::from_millis(3));
        let d = s3.due(start, 10) - start;
        assert!((d.as_secs_f64() - 0.043).abs() < 1e-9);
    }

    #[test]
    fn status_classification() {
        assert!(status_ok(200).is_ok());
        assert!(status_ok(302).is_ok());
        assert!(matches!(status_ok(502), Err(OpError::Status(502))));
    }
}
