//! The access log (`--access-log`, `--access-log-format`): one line per
//! connection, written from the connection's [`Outcome`].
//!
//! A worker never waits on it. Each worker appends its lines to a buffer
//! of its own; at the end of each loop turn the buffer is pushed on a
//! bounded lock-free queue ([`ArrayQueue`]) to the writer thread, which
//! writes it to the file (or stderr) and hands the emptied buffer back on a
//! second queue. When the writer falls behind and the queue is full, the
//! buffer's lines are dropped and counted (`access_log_dropped`). The
//! writer reopens the file when asked ([`AccessLog::reopen`], on SIGHUP and
//! SIGUSR1), so that logrotate can rename it.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_queue::ArrayQueue;

use crate::conn::{End, Outcome, Side};
use crate::metrics::WorkerCounters;
use crate::tls::Resumption;

/// Buffers a worker may have waiting for the writer before it drops lines.
const QUEUE_BUFFERS: usize = 256;

/// How long the writer sleeps when it found nothing to write.
const WRITER_NAP: Duration = Duration::from_millis(20);

/// Where the lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The process's stderr.
    Stderr,
    /// A file, appended to, reopened on request.
    File(PathBuf),
}

impl Target {
    /// Parses `--access-log`: `stderr`, `off` (None) or a path.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "off" | "" => None,
            "stderr" => Some(Self::Stderr),
            path => Some(Self::File(PathBuf::from(path))),
        }
    }
}

/// Line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line.
    Json,
    /// `key=value` pairs (logfmt).
    Text,
}

struct Shared {
    /// Per worker: full buffers to write, and emptied ones handed back.
    full: Vec<ArrayQueue<Vec<u8>>>,
    empty: Vec<ArrayQueue<Vec<u8>>>,
    reopen: AtomicBool,
    /// The writer's completed passes (each ends with a flush).
    passes: std::sync::atomic::AtomicU64,
}

/// The access log's process-wide handle (kept by the main thread).
#[derive(Clone)]
pub struct AccessLog {
    shared: Arc<Shared>,
    format: Format,
    writer: std::thread::Thread,
}

impl AccessLog {
    /// Opens `target` (a file is created if missing) and starts the writer
    /// thread for `workers` workers.
    pub fn start(target: Target, format: Format, workers: usize) -> io::Result<Self> {
        let mut out = Output::open(&target)?;
        let shared = Arc::new(Shared {
            full: (0..workers)
                .map(|_| ArrayQueue::new(QUEUE_BUFFERS))
                .collect(),
            empty: (0..workers)
                .map(|_| ArrayQueue::new(QUEUE_BUFFERS))
                .collect(),
            reopen: AtomicBool::new(false),
            passes: std::sync::atomic::AtomicU64::new(0),
        });
        let s = shared.clone();
        let handle = std::thread::Builder::new()
            .name("ringterm-alog".into())
            .spawn(move || loop {
                if s.reopen.swap(false, Ordering::AcqRel) {
                    match Output::open(&target) {
                        Ok(o) => out = o,
                        Err(e) => tracing::error!(error = %e, "access log: reopen failed, keeping the old file"),
                    }
                }
                let mut wrote = false;
                for (full, empty) in s.full.iter().zip(&s.empty) {
                    while let Some(mut buf) = full.pop() {
                        if let Err(e) = out.write_all(&buf) {
                            tracing::warn!(error = %e, "access log: write failed");
                        }
                        wrote = true;
                        buf.clear();
                        let _ = empty.push(buf);
                    }
                }
                if wrote {
                    let _ = out.flush();
                }
                s.passes.fetch_add(1, Ordering::AcqRel);
                if !wrote {
                    std::thread::park_timeout(WRITER_NAP);
                }
            })?;
        Ok(Self {
            shared,
            format,
            writer: handle.thread().clone(),
        })
    }

    /// Asks the writer to reopen the file (logrotate renamed it).
    pub fn reopen(&self) {
        self.shared.reopen.store(true, Ordering::Release);
        self.writer.unpark();
    }

    /// Waits (up to `within`) until every line the workers handed over is
    /// written and flushed: at shutdown, after the drain.
    pub fn finish(&self, within: Duration) {
        let deadline = Instant::now() + within;
        let start = self.shared.passes.load(Ordering::Acquire);
        loop {
            self.writer.unpark();
            let empty = self.shared.full.iter().all(|q| q.is_empty());
            // Two passes: the one under way may have popped a buffer it
            // has not written yet.
            if empty && self.shared.passes.load(Ordering::Acquire) >= start + 2 {
                return;
            }
            if Instant::now() >= deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Worker `id`'s end of it.
    pub fn for_worker(&self, id: usize, counters: Arc<WorkerCounters>) -> WorkerLog {
        WorkerLog {
            shared: self.shared.clone(),
            id,
            format: self.format,
            buf: String::new(),
            lines: 0,
            counters,
        }
    }
}

enum Output {
    Stderr(io::Stderr),
    File(io::BufWriter<File>),
}

impl Output {
    fn open(target: &Target) -> io::Result<Self> {
        Ok(match target {
            Target::Stderr => Self::Stderr(io::stderr()),
            Target::File(p) => Self::File(io::BufWriter::with_capacity(
                64 * 1024,
                OpenOptions::new().create(true).append(true).open(p)?,
            )),
        })
    }

    fn write_all(&mut self, b: &[u8]) -> io::Result<()> {
        match self {
            Self::Stderr(e) => e.lock().write_all(b),
            Self::File(f) => f.write_all(b),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Stderr(e) => e.flush(),
            Self::File(f) => f.flush(),
        }
    }
}

/// A worker's end of the access log: its line buffer.
pub struct WorkerLog {
    shared: Arc<Shared>,
    id: usize,
    format: Format,
    buf: String,
    lines: u64,
    counters: Arc<WorkerCounters>,
}

impl WorkerLog {
    /// Appends the line of a finished connection.
    pub fn log(&mut self, rec: &Record<'_>) {
        if self.buf.capacity() == 0 {
            if let Some(mut b) = self.shared.empty[self.id].pop() {
                b.clear();
                // Empty: always valid UTF-8.
                self.buf = String::from_utf8(b).unwrap_or_default();
            }
        }
        format_line(&mut self.buf, rec, self.format);
        self.lines += 1;
    }

    /// Hands the buffered lines to the writer (end of a loop turn). When
    /// its queue is full the lines are dropped and counted.
    pub fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let buf = std::mem::take(&mut self.buf).into_bytes();
        let lines = std::mem::take(&mut self.lines);
        match self.shared.full[self.id].push(buf) {
            Ok(()) => self.counters.access_log_lines.add(lines),
            Err(_) => self.counters.access_log_dropped.add(lines),
        }
    }
}

/// What the runtime knows of a finished connection, besides its outcome.
pub struct Record<'a> {
    /// The outcome.
    pub out: &'a Outcome,
    /// The listening address it came in on.
    pub frontend: Option<SocketAddr>,
    /// The worker.
    pub worker: usize,
    /// When it was accepted and when it ended (the loop turn's clock).
    pub accepted_at: Instant,
    pub ended_at: Instant,
    /// Wall-clock time of the end.
    pub time: SystemTime,
}

fn resumption_name(r: Resumption) -> &'static str {
    match r {
        Resumption::Tls12Id => "tls12_session_id",
        Resumption::Tls12Ticket => "tls12_ticket",
        Resumption::Tls13Stateful => "tls13_stateful",
        Resumption::Tls13Ticket => "tls13_ticket",
    }
}

fn version_name(v: rustls::ProtocolVersion) -> &'static str {
    match v {
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
        _ => "unknown",
    }
}

/// The close reason's name, and its error text if any.
pub fn end_reason(out: &Outcome) -> (&'static str, Option<String>) {
    match &out.end {
        End::Closed => (
            match out.first_close {
                Some(Side::Client) => "client_close",
                Some(Side::Backend) => "backend_close",
                None => "closed",
            },
            None,
        ),
        End::ProxyHeader(e) => ("proxy_header", Some(e.to_string())),
        End::HandshakeEof => ("handshake_eof", None),
        End::HandshakeTimeout => ("handshake_timeout", None),
        End::HandshakeTls(e) => ("handshake_tls_error", Some(e.to_string())),
        End::ConnectFailed(k) => ("connect_failed", Some(io::Error::from(*k).to_string())),
        End::ConnectTimeout => ("connect_timeout", None),
        End::Tls(e) => ("tls_error", Some(e.to_string())),
        End::Io(Side::Client, k) => ("client_io_error", Some(io::Error::from(*k).to_string())),
        End::Io(Side::Backend, k) => ("backend_io_error", Some(io::Error::from(*k).to_string())),
        End::IdleTimeout => ("idle_timeout", None),
        End::DrainCut => ("drain_cut", None),
        End::AcmeChallenge => ("acme_challenge", None),
    }
}

/// Writes one line's fields, JSON or text.
struct Line<'a> {
    out: &'a mut String,
    json: bool,
    first: bool,
}

/// A `fmt::Write` that escapes what goes through it as a JSON string's
/// contents (text format values are quoted the same way when needed).
struct Escaped<'a>(&'a mut String);

impl std::fmt::Write for Escaped<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        escape_into(self.0, s);
        Ok(())
    }
}

impl Line<'_> {
    fn key(&mut self, k: &str) {
        if !self.first {
            self.out.push(if self.json { ',' } else { ' ' });
        }
        self.first = false;
        if self.json {
            self.out.push('"');
            self.out.push_str(k);
            self.out.push_str("\":");
        } else {
            self.out.push_str(k);
            self.out.push('=');
        }
    }

    fn str(&mut self, k: &str, v: Option<&str>) {
        let Some(v) = v else { return };
        self.key(k);
        if self.json || needs_quotes(v) {
            json_str(self.out, v);
        } else {
            self.out.push_str(v);
        }
    }

    /// A value that needs no quotes in text (addresses, timestamps); JSON
    /// strings are escaped all the same.
    fn display(&mut self, k: &str, v: Option<impl std::fmt::Display>) {
        let Some(v) = v else { return };
        self.key(k);
        if self.json {
            self.out.push('"');
            let _ = write!(Escaped(self.out), "{v}");
            self.out.push('"');
        } else {
            let at = self.out.len();
            let _ = write!(self.out, "{v}");
            if needs_quotes(&self.out[at..]) {
                let raw = self.out.split_off(at);
                json_str(self.out, &raw);
            }
        }
    }

    fn num(&mut self, k: &str, v: Option<u64>) {
        let Some(v) = v else { return };
        self.key(k);
        let _ = write!(self.out, "{v}");
    }

    fn bool(&mut self, k: &str, v: Option<bool>) {
        let Some(v) = v else { return };
        self.key(k);
        self.out.push_str(if v { "true" } else { "false" });
    }
}

/// Appends one line (with its newline) for `rec` to `out`.
pub fn format_line(out: &mut String, rec: &Record<'_>, format: Format) {
    let o = rec.out;
    let json = format == Format::Json;
    if json {
        out.push('{');
    }
    let mut l = Line {
        out,
        json,
        first: true,
    };
    l.display("time", Some(Rfc3339(rec.time)));
    l.display("client", o.client);
    l.display("frontend", rec.frontend);
    l.num("worker", Some(rec.worker as u64));
    let hs = o.handshake.as_ref();
    l.str(
        "sni",
        hs.and_then(|h| h.sni.as_deref()).or(o.sni.as_deref()),
    );
    if let Some(alpn) = hs.and_then(|h| h.alpn.as_deref()) {
        l.str("alpn", Some(&String::from_utf8_lossy(alpn)));
    }
    l.str("tls_version", hs.map(|h| version_name(h.version)));
    l.str("cipher", hs.and_then(|h| h.cipher));
    l.bool("resumed", hs.map(|h| h.resumed));
    l.str(
        "resumption",
        hs.and_then(|h| h.resumption).map(resumption_name),
    );
    let us = |d: Duration| d.as_micros().min(u128::from(u64::MAX)) as u64;
    l.num(
        "handshake_us",
        o.established_at
            .map(|at| us(at.saturating_duration_since(rec.accepted_at))),
    );
    l.display("backend", o.backend.as_ref().or(o.backend_tried.as_ref()));
    l.num(
        "connect_us",
        match (o.connect, &o.backend) {
            (Some((from, to)), Some(_)) => Some(us(to.saturating_duration_since(from))),
            _ => None,
        },
    );
    l.num("bytes_from_client", Some(o.bytes.from_client));
    l.num("bytes_to_client", Some(o.bytes.to_client));
    l.num("bytes_from_backend", Some(o.bytes.from_backend));
    l.num("bytes_to_backend", Some(o.bytes.to_backend));
    l.num(
        "duration_us",
        Some(us(rec.ended_at.saturating_duration_since(rec.accepted_at))),
    );
    let (end, error) = end_reason(o);
    l.str("end", Some(end));
    l.str("error", error.as_deref());
    l.str("alert", o.alert.map(|a| a.name()));
    l.num("connect_failures", Some(u64::from(o.connect_failures)));
    if json {
        out.push('}');
    }
    out.push('\n');
}

fn needs_quotes(s: &str) -> bool {
    s.is_empty()
        || s.bytes()
            .any(|b| b <= b' ' || b == b'"' || b == b'=' || b == b'\\' || b >= 0x7f)
}

/// Appends `s` as a JSON string.
fn json_str(out: &mut String, s: &str) {
    out.push('"');
    escape_into(out, s);
    out.push('"');
}

/// Appends `s` escaped as a JSON string's contents.
fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// Displays as [`rfc3339`], without allocating.
struct Rfc3339(SystemTime);

impl std::fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (y, mo, d, h, mi, s, ms) = civil(self.0);
        write!(f, "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
    }
}

/// `2026-12-04T18:50:00.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    Rfc3339(t).to_string()
}

/// UTC year, month, day, hour, minute, second, millisecond of `t`.
fn civil(t: SystemTime) -> (i64, i64, i64, u64, u64, u64, u32) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month,
        day,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789);
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56.789Z");
    }

    /// With the writer stalled, a worker's full queue drops lines and
    /// counts them; it never waits.
    #[test]
    fn lines_are_dropped_and_counted_when_the_writer_is_behind() {
        let shared = Arc::new(Shared {
            full: vec![ArrayQueue::new(2)],
            empty: vec![ArrayQueue::new(2)],
            reopen: AtomicBool::new(false),
            passes: std::sync::atomic::AtomicU64::new(0),
        });
        let counters = Arc::new(WorkerCounters::default());
        let mut log = WorkerLog {
            shared: shared.clone(),
            id: 0,
            format: Format::Text,
            buf: String::new(),
            lines: 0,
            counters: counters.clone(),
        };
        log.flush(); // nothing buffered: nothing pushed
        assert!(shared.full[0].is_empty());
        for turn in 0..4 {
            for _ in 0..=turn {
                log.buf.push_str("line\n");
                log.lines += 1;
            }
            log.flush();
        }
        // Turns 1 and 2 (1 + 2 lines) were queued, turns 3 and 4 dropped.
        assert_eq!(counters.access_log_lines.get(), 3);
        assert_eq!(counters.access_log_dropped.get(), 7);
        assert_eq!(shared.full[0].pop().unwrap(), b"line\n");
    }

    #[test]
    fn strings_are_escaped() {
        let mut s = String::new();
        json_str(&mut s, "a\"b\\c\n\u{1}é");
        assert_eq!(s, "\"a\\\"b\\\\c\\n\\u0001é\"");
        assert!(needs_quotes("a b") && !needs_quotes("h2"));
    }
}
