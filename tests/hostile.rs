//! Hostile clients and backends. Every scenario is bounded in time and
//! count, runs on 127.0.0.1 only, and ends with the same check: ringterm
//! still completes a normal TLS connection, and its open file descriptors
//! (`/proc/PID/fd`) and `ringterm_active` are back to the baseline measured
//! before the scenario ([`Baseline`]).
//!
//! Not repeated here (see the other files): random/HTTP/zero bytes and a
//! garbage ClientHello body (`failures.rs`), an oversized *handshake message*
//! length (`failures.rs`), a corrupted record after the handshake
//! (`failures.rs`), a single slowloris and a silent connection under the
//! handshake timeout (`failures.rs`), peers that stop reading
//! (`backpressure.rs`), close_notify without FIN or coalesced with Finished
//! (`half_close.rs`), idle timeout and `--max-connections`
//! (`edge_runtime.rs`).
//!
//! What the TLS-level tests check, against the RFCs:
//!
//! - RFC 5246 §7.2.2 / §7.4.1.2 (TLS 1.2): a ClientHello after the
//!   handshake is a renegotiation request; a server that refuses answers
//!   with `no_renegotiation` (100), "always a warning", and the connection
//!   goes on under the old keys. rustls sends that warning once and treats a
//!   second request as fatal. Checked: the warning arrives encrypted under
//!   the existing keys, no ServerHello follows, application data still flows
//!   both ways, the second request ends the connection. A real
//!   renegotiating client (`openssl s_client -tls1_2`, command `R`) gets
//!   the same warning and gives up.
//! - RFC 8446 §6 / §6.1 (TLS 1.3): `user_canceled` is the one warning-level
//!   alert besides close_notify; it "SHOULD be followed by a close_notify".
//!   rustls ignores it (data after it still flows; a flood of warning
//!   alerts, more than 4, is fatal). Any other warning-level alert in TLS 1.3
//!   is treated as fatal (the level "can safely be ignored"; rustls answers
//!   `decode_error`).
//! - RFC 8446 §6.2: "Upon transmission or receipt of a fatal alert
//!   message, both parties MUST immediately close the connection." Checked:
//!   after a fatal alert from the client ringterm sends nothing more (no
//!   data, no alert of its own) and closes both sides.
//! - RFC 8446 §6.1: close_notify closes the sender's write side only ("This
//!   does not have any effect on its read side"), and "Any data received
//!   after a closure alert has been received MUST be ignored". Checked, for
//!   TLS 1.3 and 1.2: every byte before the close_notify reaches the backend
//!   (SHA-256), a record after it does not, the backend sees EOF
//!   (half-close) while its answer still reaches the client, followed by
//!   ringterm's own close_notify. (RFC 5246 §7.2.1 asked a TLS 1.2 peer to
//!   answer close_notify at once, discarding pending writes; ringterm
//!   half-closes for TLS 1.2 too, by design, see `half_close.rs`.)
//! - Record layer, first flight: a record header announcing more than
//!   2^14 + 2048 bytes, an SSLv2 hello, bytes that are not TLS: a fatal
//!   plaintext alert, then the close. (For the oversized record RFC 5246
//!   §6.2.3 / RFC 8446 §5.2 name `record_overflow`; rustls sends
//!   `decode_error` for a bad record header. Only "fatal alert" is
//!   asserted.)

mod common;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
use common::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{
    CipherSuite, ClientConfig, ClientConnection, ConnectionTrafficSecrets, RootCertStore,
    StreamOwned,
};

// ---------------------------------------------------------------------------
// Process probes and the baseline
// ---------------------------------------------------------------------------

/// How long [`Baseline::assert_back`] waits for ringterm to settle.
const SETTLE: Duration = Duration::from_secs(5);

fn pid(rt: &Ringterm) -> u32 {
    rt.child.id()
}

/// Open file descriptors of `pid`.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .count()
}

/// The open fd numbers of `pid`, sorted.
fn fd_numbers(pid: u32) -> Vec<u32> {
    let mut v: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    v.sort_unstable();
    v
}

/// One past the end of the run of fd numbers that starts at 0, allowing
/// single-number holes.
fn end_of_run(fds: &[u32]) -> u32 {
    let mut end = 0;
    for &fd in fds {
        if fd > end + 1 {
            break;
        }
        end = fd + 1;
    }
    end
}

/// Resident set size of `pid`, KiB.
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// utime + stime, in clock ticks, from a `/proc/.../stat` file.
fn stat_cpu_ticks(path: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which may hold spaces): state is
    // field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// CPU time of the whole process (every thread), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    stat_cpu_ticks(&format!("/proc/{pid}/stat")).expect("/proc/PID/stat")
}

/// CPU ticks of each thread, by "name/tid", for diagnostics.
fn thread_ticks(pid: u32) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for e in dir.flatten() {
        let tid = e.file_name().to_string_lossy().into_owned();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
            .unwrap_or_default()
            .trim()
            .to_owned();
        if let Some(t) = stat_cpu_ticks(&format!("/proc/{pid}/task/{tid}/stat")) {
            out.push((format!("{comm}/{tid}"), t));
        }
    }
    out
}

/// CPU seconds `pid` uses over `window`, and the ticks of each thread that
/// used any.
fn cpu_over(pid: u32, window: Duration) -> (f64, Vec<(String, u64)>) {
    let hz = clk_tck();
    let threads_before = thread_ticks(pid);
    let t0 = cpu_ticks(pid);
    thread::sleep(window);
    let used = cpu_ticks(pid) - t0;
    let per_thread = thread_ticks(pid)
        .into_iter()
        .map(|(name, t)| {
            let before = threads_before
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(0, |x| x.1);
            (name, t - before)
        })
        .filter(|(_, d)| *d > 0)
        .collect();
    (used as f64 / hz as f64, per_thread)
}

/// Clock ticks per second (USER_HZ).
fn clk_tck() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// Raises this test process's soft fd limit (the scenarios below hold
/// thousands of sockets at once).
fn raise_nofile() {
    let got = rlimit::increase_nofile_limit(16_384).expect("raise RLIMIT_NOFILE");
    assert!(got >= 4096, "RLIMIT_NOFILE is only {got}");
}

/// ringterm's open fds and active connections when nothing is going on.
struct Baseline {
    pid: u32,
    fds: usize,
    active: u64,
}

impl Baseline {
    /// Measures the baseline (after the fd count has been stable for a
    /// moment).
    fn take(rt: &Ringterm) -> Baseline {
        let pid = pid(rt);
        let mut fds = fd_count(pid);
        let stable = eventually(SETTLE, || {
            thread::sleep(Duration::from_millis(50));
            let now = fd_count(pid);
            let same = now == fds;
            fds = now;
            same
        });
        assert!(stable, "ringterm's fd count never settled");
        let active = metric_sum(&rt.metrics(), "ringterm_active");
        let fds = fd_count(pid);
        Baseline { pid, fds, active }
    }

    /// Waits (up to [`SETTLE`]) until the fd count and `ringterm_active`
    /// are back to the baseline; panics with both otherwise.
    fn assert_back(&self, rt: &Ringterm, after: &str) {
        let (mut fds, mut active) = (0, 0);
        let ok = eventually(SETTLE, || {
            fds = fd_count(self.pid);
            active = metric_sum(&rt.metrics(), "ringterm_active");
            fds == self.fds && active == self.active
        });
        assert!(
            ok,
            "after {after}: ringterm holds {fds} fds (baseline {}) and {active} active \
             connections (baseline {}) after {SETTLE:?}; fds: {:?}",
            self.fds,
            self.active,
            std::fs::read_dir(format!("/proc/{}/fd", self.pid))
                .map(|d| d
                    .flatten()
                    .filter_map(|e| std::fs::read_link(e.path()).ok())
                    .collect::<Vec<_>>())
                .unwrap_or_default()
        );
    }
}

/// Starts ringterm (one worker) in front of `backend` and measures the
/// baseline.
fn start(certs: &TestCerts, backend: SocketAddr, extra: &[&str]) -> (Ringterm, Baseline) {
    let rt = start_ringterm(certs, backend, extra);
    let base = Baseline::take(&rt);
    assert_eq!(base.active, 0);
    (rt, base)
}

/// The end of every scenario: no panic, a normal TLS connection works
/// (through an echo backend), and fds/active are back to the baseline.
fn assert_recovered(rt: &mut Ringterm, certs: &TestCerts, base: &Baseline, after: &str) {
    rt.assert_alive();
    base.assert_back(rt, after);
    let addr = rt.addr();
    let config = certs.tls13();
    let attempt = std::panic::AssertUnwindSafe(|| assert_echo(addr, config, after.as_bytes()));
    if let Err(panic) = std::panic::catch_unwind(attempt) {
        eprintln!(
            "after {after}: a normal connection failed; metrics:\n{}",
            rt.metrics()
        );
        std::panic::resume_unwind(panic);
    }
    base.assert_back(rt, after);
    rt.assert_alive();
}

/// Serialises the two heaviest tests (500 slowloris and 2,000 held
/// connections), so that they do not run at the same time.
static HEAVY: Mutex<()> = Mutex::new(());

/// `--cpus` for a heavy test's ringterm: the last CPU this process may run
/// on. Every single-worker ringterm pins its worker to the first one, so
/// this keeps the heavy tests' worker off the CPU the other tests'
/// workers share.
fn last_cpu() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let list = s.lines().find(|l| l.starts_with("Cpus_allowed_list:"))?;
            let last = list.split([',', ':']).next_back()?.trim();
            Some(last.rsplit('-').next()?.trim().to_owned())
        })
        .unwrap_or_else(|| "0".to_owned())
}

/// Sets SO_LINGER to 0 so that closing `s` sends a RST.
fn linger_zero(s: &TcpStream) {
    socket2::SockRef::from(s)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER 0");
}

/// min / median / max of some durations, for the report.
fn spread(mut v: Vec<Duration>) -> String {
    if v.is_empty() {
        return "none".into();
    }
    v.sort();
    format!(
        "min {:?} / median {:?} / max {:?} (n={})",
        v[0],
        v[v.len() / 2],
        v[v.len() - 1],
        v.len()
    )
}

// ---------------------------------------------------------------------------
// 1. Malformed first flights
// ---------------------------------------------------------------------------

/// How a malformed-hello case ends on the client side.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Then {
    /// Keep the connection open and wait.
    Wait,
    /// Shut down the write side (FIN) after the bytes.
    Fin,
}

/// Garbage, an oversized record, a truncated ClientHello (then FIN, or
/// then silence), an SSLv2-style hello: each gets an alert (first byte
/// 0x15) or a plain close, promptly (the silent one at the handshake
/// timeout), no panic, and fds/active return to the baseline after each.
#[test]
fn malformed_first_flights_get_an_alert_or_a_close() {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let (mut rt, base) = start(&certs, echo.addr, &["--handshake-timeout", "1000"]);
    let hello = client_hello_bytes(certs.tls13());
    assert!(hello.len() > 100);

    // SSLv2-compatible CLIENT-HELLO (RFC 6101 appendix E.2 / RFC 5246
    // appendix E.2): 2-byte header with the high bit set, msg type 1,
    // version 0x0002, 21 bytes of cipher specs, no session id, a 16-byte
    // challenge.
    let mut sslv2 = vec![
        0x80, 0x2e, 0x01, 0x00, 0x02, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10,
    ];
    sslv2.extend([
        0x01, 0x00, 0x80, 0x07, 0x00, 0xc0, 0x03, 0x00, 0x80, 0x06, 0x00, 0x40, 0x02, 0x00, 0x80,
        0x04, 0x00, 0x80, 0x00, 0x00, 0x05,
    ]);
    sslv2.extend(random_bytes(16));
    assert_eq!(sslv2.len(), 2 + 0x2e);

    // A record header announcing 65535 bytes (more than 2^14 + 2048, the
    // RFC 5246 §6.2.3 / RFC 8446 §5.2 maximum), then some of them.
    let mut oversized = vec![0x16, 0x03, 0x03, 0xff, 0xff];
    oversized.extend(random_bytes(3000));

    let cases: Vec<(&str, Vec<u8>, Then)> = vec![
        (
            "garbage bytes",
            b"\x00\xff\x13\x37 this is not TLS at all\r\n\r\n".to_vec(),
            Then::Wait,
        ),
        ("oversized record", oversized, Then::Wait),
        (
            "truncated ClientHello then FIN",
            hello[..hello.len() / 3].to_vec(),
            Then::Fin,
        ),
        (
            "truncated ClientHello then silence",
            hello[..hello.len() - 1].to_vec(),
            Then::Wait,
        ),
        ("SSLv2-style hello", sslv2, Then::Wait),
    ];
    let timeouts = |rt: &Ringterm| {
        metric_sum(
            &rt.metrics(),
            "ringterm_handshake_failures_total{reason=\"timeout\"}",
        )
    };
    for (name, bytes, then) in &cases {
        let timeouts_before = timeouts(&rt);
        let mut s = tcp_connect(rt.addr());
        // The server may close while we write (oversized record): fine.
        let _ = s.write_all(bytes);
        if *then == Then::Fin {
            s.shutdown(Shutdown::Write).unwrap();
        }
        let (how, got, took) = wait_closed(&mut s, Duration::from_secs(4))
            .unwrap_or_else(|| panic!("{name}: still open after 4 s"));
        eprintln!(
            "{name}: {how:?} after {took:?}, got {:02x?}",
            &got[..got.len().min(7)]
        );
        if !got.is_empty() {
            // A whole plaintext fatal alert record: 15 03 0x 00 02 02 DESC.
            assert!(
                got.len() >= 7 && got[0] == 0x15 && got[3..6] == [0, 2, 2],
                "{name}: expected a fatal alert, got {got:02x?}"
            );
        }
        rt.assert_alive();
        base.assert_back(&rt, name);
        // Only the silent one may end by the handshake timeout; the others
        // are refused at once (their time is not asserted: with other
        // tests running, a worker pinned to a busy CPU can lag).
        let timed_out = timeouts(&rt) - timeouts_before;
        if *name == "truncated ClientHello then silence" {
            assert_eq!(timed_out, 1, "{name}: not cut by the handshake timeout");
            assert!(
                took >= Duration::from_millis(900),
                "{name}: closed after {took:?}, before the 1000 ms handshake timeout"
            );
        } else {
            assert_eq!(timed_out, 0, "{name}: ended by the handshake timeout");
        }
    }
    let text = rt.metrics();
    assert!(metric_sum(&text, "ringterm_handshake_failures_total") >= cases.len() as u64);
    assert_eq!(
        metric_sum(
            &text,
            "ringterm_handshake_failures_total{reason=\"timeout\"}"
        ),
        1,
        "only the silent truncated hello should time out:\n{text}"
    );
    assert!(
        metric_sum(&text, "ringterm_alerts_sent_total") >= 3,
        "garbage, the oversized record and the SSLv2 hello each get an alert:\n{text}"
    );
    assert_eq!(echo.conns.load(Ordering::Relaxed), 0);
    assert_recovered(&mut rt, &certs, &base, "malformed first flights");
}

/// A socket that writes one byte per `write` call (TCP_NODELAY, a short
/// pause after each), so every byte leaves in its own segment.
struct OneByteWrites {
    sock: TcpStream,
    writes: usize,
}

impl Read for OneByteWrites {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.sock.read(buf)
    }
}

impl Write for OneByteWrites {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self.sock.write(&buf[..1])?;
        self.writes += n;
        thread::sleep(Duration::from_micros(100));
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A valid ClientHello (and the rest of the client's flights, and its
/// data) written one byte per write: the handshake completes and data
/// flows, over TLS 1.3 and 1.2.
#[test]
fn one_byte_writes_complete_the_handshake() {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let (mut rt, base) = start(&certs, echo.addr, &[]);
    for tls in [Tls::V13, Tls::V12] {
        let sock = tcp_connect(rt.addr());
        sock.set_nodelay(true).unwrap();
        let mut io = OneByteWrites { sock, writes: 0 };
        let mut conn = ClientConnection::new(certs.client_config(tls), server_name()).unwrap();
        let start = Instant::now();
        while conn.is_handshaking() {
            conn.complete_io(&mut io)
                .unwrap_or_else(|e| panic!("{tls:?}: one-byte handshake failed: {e}"));
        }
        let handshake_writes = io.writes;
        let mut stream = StreamOwned::new(conn, io);
        let msg = b"dribbled, one byte per segment";
        stream.write_all(msg).unwrap();
        stream.flush().unwrap();
        let mut back = vec![0u8; msg.len()];
        stream.read_exact(&mut back).unwrap();
        assert_eq!(&back, msg, "{tls:?}");
        stream.conn.send_close_notify();
        while stream.conn.wants_write() {
            stream.conn.write_tls(&mut stream.sock).unwrap();
        }
        set_timeouts(&stream.sock.sock, Duration::from_secs(5));
        let (rest, end) = tls_read_to_end(&mut stream);
        assert!(rest.is_empty());
        assert_eq!(end, TlsEnd::CloseNotify, "{tls:?}");
        eprintln!(
            "{tls:?}: handshake in {handshake_writes} one-byte writes, whole exchange {:?}",
            start.elapsed()
        );
        assert!(handshake_writes > 100, "{tls:?}: {handshake_writes} writes");
        drop(stream);
        base.assert_back(&rt, "one-byte writes");
    }
    let text = rt.metrics();
    assert_eq!(metric_sum(&text, "ringterm_handshake_failures_total"), 0);
    assert_recovered(&mut rt, &certs, &base, "one-byte writes");
}

// ---------------------------------------------------------------------------
// 2. Slowloris
// ---------------------------------------------------------------------------

/// Opens `n` connections and dribbles `hello` into each, one byte every
/// `every`, until the server closes it or `within` passes. Returns, per
/// connection, how long after its connect the server closed it.
fn dribble(
    addr: SocketAddr,
    hello: &[u8],
    n: usize,
    every: Duration,
    within: Duration,
) -> Vec<Option<Duration>> {
    struct Slow {
        s: TcpStream,
        start: Instant,
        sent: usize,
        next: Instant,
        closed: Option<Duration>,
    }
    let mut conns: Vec<Slow> = (0..n)
        .map(|_| {
            let s = tcp_connect(addr);
            s.set_nodelay(true).unwrap();
            s.set_nonblocking(true).unwrap();
            let now = Instant::now();
            Slow {
                s,
                start: now,
                sent: 0,
                next: now,
                closed: None,
            }
        })
        .collect();
    let begin = Instant::now();
    let mut buf = [0u8; 512];
    loop {
        let now = Instant::now();
        let mut open = 0;
        for c in conns.iter_mut().filter(|c| c.closed.is_none()) {
            match (&c.s).read(&mut buf) {
                Ok(0) => {
                    c.closed = Some(c.start.elapsed());
                    continue;
                }
                Ok(_) => {} // an alert, maybe: the close follows
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    c.closed = Some(c.start.elapsed());
                    continue;
                }
            }
            if now >= c.next {
                let i = c.sent % hello.len();
                match (&c.s).write(&hello[i..i + 1]) {
                    Ok(_) => c.sent += 1,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => {
                        c.closed = Some(c.start.elapsed());
                        continue;
                    }
                }
                c.next += every;
            }
            open += 1;
        }
        if open == 0 || begin.elapsed() > within {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    conns.into_iter().map(|c| c.closed).collect()
}

/// How long a normal client's phases took.
#[derive(Debug, Clone, Copy)]
struct Timed {
    connect: Duration,
    handshake: Duration,
    echo: Duration,
}

impl Timed {
    fn total(&self) -> Duration {
        self.connect + self.handshake + self.echo
    }
}

/// A normal client: TCP connect, TLS handshake, a 4 KiB echo and a clean
/// close, each phase timed.
fn timed_echo(addr: SocketAddr, config: Arc<ClientConfig>) -> Timed {
    let t = Instant::now();
    let mut sock = tcp_connect(addr);
    let connect = t.elapsed();
    let t = Instant::now();
    let mut conn = ClientConnection::new(config, server_name()).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).expect("normal handshake");
    }
    let handshake = t.elapsed();
    let t = Instant::now();
    let mut stream = StreamOwned::new(conn, sock);
    let payload = random_bytes(4096);
    stream.write_all(&payload).unwrap();
    stream.flush().unwrap();
    let mut back = vec![0u8; payload.len()];
    stream.read_exact(&mut back).expect("echo");
    assert!(back == payload, "echo differs");
    close_write(&mut stream).unwrap();
    let (rest, end) = tls_read_to_end(&mut stream);
    assert!(rest.is_empty());
    assert_eq!(end, TlsEnd::CloseNotify);
    Timed {
        connect,
        handshake,
        echo: t.elapsed(),
    }
}

/// 500 connections dribble a ClientHello one byte every 200 ms under
/// `--handshake-timeout 1500`: every one is cut at about the timeout, while
/// normal clients, connecting during the attack, are served.
#[test]
fn slowloris_500_connections_cut_at_the_handshake_timeout() {
    const CONNS: usize = 500;
    const THREADS: usize = 4;
    raise_nofile();
    let _heavy = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let cpu = last_cpu();
    let (mut rt, base) = start(
        &certs,
        echo.addr,
        &["--handshake-timeout", "1500", "--cpus", &cpu],
    );
    let addr = rt.addr();
    let hello = client_hello_bytes(certs.tls13());

    let attack_start = Instant::now();
    let (cuts, normal) = thread::scope(|scope| {
        let attackers: Vec<_> = (0..THREADS)
            .map(|_| {
                let hello = &hello;
                scope.spawn(move || {
                    dribble(
                        addr,
                        hello,
                        CONNS / THREADS,
                        Duration::from_millis(200),
                        Duration::from_secs(6),
                    )
                })
            })
            .collect();
        let normal = scope.spawn(|| {
            thread::sleep(Duration::from_millis(300));
            let mut took = Vec::new();
            for _ in 0..5 {
                let at = attack_start.elapsed();
                took.push((timed_echo(addr, certs.tls13()), at));
                thread::sleep(Duration::from_millis(100));
            }
            took
        });
        let cuts: Vec<Option<Duration>> = attackers
            .into_iter()
            .flat_map(|a| a.join().expect("attacker thread"))
            .collect();
        (
            cuts,
            normal
                .join()
                .expect("normal clients failed during the attack"),
        )
    });
    let total = attack_start.elapsed();

    let open = cuts.iter().filter(|c| c.is_none()).count();
    assert_eq!(open, 0, "{open} of {CONNS} slow connections never cut");
    let cuts: Vec<Duration> = cuts.into_iter().flatten().collect();
    eprintln!(
        "slowloris: {CONNS} connections cut after {}",
        spread(cuts.clone())
    );
    eprintln!(
        "slowloris: normal clients during the attack (latency, at): {:?}; whole attack {total:?}",
        normal
    );
    // Cut at the timeout: measured from the client's connect, which comes
    // before ringterm's accept (and the deadline); the upper bound leaves
    // room for the 100 ms timer tick and a busy machine.
    for c in &cuts {
        assert!(
            *c >= Duration::from_millis(1400) && *c < Duration::from_millis(5000),
            "a slow connection was cut after {c:?} (timeout 1500 ms): {}",
            spread(cuts.clone())
        );
    }
    for (took, at) in &normal {
        assert!(
            took.total() < Duration::from_secs(5),
            "a normal client took {took:?} (started {at:?} into the attack)"
        );
    }
    // Served during the attack, not after it: the first normal client
    // started before any slow connection was cut, and was served while
    // slow connections were still held.
    let (first_cut, last_cut) = (*cuts.iter().min().unwrap(), *cuts.iter().max().unwrap());
    let (took, at) = normal[0];
    assert!(
        at < first_cut && at + took.total() < last_cut,
        "first normal client: started {at:?}, took {took:?}; cuts from {first_cut:?} to {last_cut:?}"
    );
    let text = rt.wait_metric(
        "ringterm_handshake_failures_total{reason=\"timeout\"}",
        |n| n >= CONNS as u64,
    );
    eprintln!(
        "slowloris: timeouts counted {}",
        metric_sum(
            &text,
            "ringterm_handshake_failures_total{reason=\"timeout\"}"
        )
    );
    assert_recovered(&mut rt, &certs, &base, "slowloris");
}

// ---------------------------------------------------------------------------
// 3. Half-open connections
// ---------------------------------------------------------------------------

/// 2,000 TCP connections that never send a byte: ringterm's memory stays
/// bounded, normal clients are served meanwhile, and once the connections
/// go away fds/active return to the baseline.
#[test]
fn two_thousand_silent_connections_memory_bounded() {
    const CONNS: usize = 2000;
    const MAX_GROWTH_KB: u64 = 64 * 1024;
    raise_nofile();
    let _heavy = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let certs = TestCerts::generate();
    let echo = echo_backend();
    // The default handshake timeout (10 s) holds them for the whole test.
    let cpu = last_cpu();
    let (mut rt, base) = start(&certs, echo.addr, &["--cpus", &cpu]);
    let pid = pid(&rt);
    let before = rss_kb(pid);

    let t = Instant::now();
    let held: Vec<TcpStream> = (0..CONNS).map(|_| tcp_connect(rt.addr())).collect();
    rt.wait_metric("ringterm_active", |n| n == CONNS as u64);
    let connected_in = t.elapsed();
    let with = rss_kb(pid);

    // Normal clients while they are held.
    let mut took = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        assert_echo(rt.addr(), certs.tls13(), &random_bytes(16 * 1024));
        took.push(t.elapsed());
    }
    let with_after_clients = rss_kb(pid);
    // One fd per held connection (the normal clients' fds close a moment
    // after their close_notify).
    let mut fds = 0;
    assert!(
        eventually(SETTLE, || {
            fds = fd_count(pid);
            fds == base.fds + CONNS
        }),
        "{fds} fds with {CONNS} held (baseline {})",
        base.fds
    );

    drop(held);
    base.assert_back(&rt, "dropping 2000 silent connections");
    let after = rss_kb(pid);

    // More rounds: memory the allocator kept from the first is reused, so
    // RSS must not keep climbing. A leak of the per-connection state adds
    // the whole first-round growth again each round (three rounds: three
    // times it), while allocator page reuse and purging, and read buffers
    // of the provided ring touched for the first time (bounded by the
    // ring's size), move RSS by a few MiB at most, once.
    const ROUNDS: usize = 3;
    let mut withs = Vec::new();
    let mut after_last = after;
    for _ in 0..ROUNDS {
        let held: Vec<TcpStream> = (0..CONNS).map(|_| tcp_connect(rt.addr())).collect();
        rt.wait_metric("ringterm_active", |n| n == CONNS as u64);
        withs.push(rss_kb(pid));
        drop(held);
        base.assert_back(&rt, "dropping 2000 silent connections again");
        after_last = rss_kb(pid);
    }
    let with_last = *withs.last().expect("rounds");
    eprintln!(
        "half-open: RSS before {before} KiB / with {CONNS} held {with} KiB ({:.1} KiB each) / \
         with them + 5 clients {with_after_clients} KiB / after {after} KiB; {ROUNDS} more \
         rounds: with {withs:?} KiB / after {after_last} KiB; connected in {connected_in:?}; \
         normal clients meanwhile: {}",
        (with.saturating_sub(before)) as f64 / CONNS as f64,
        spread(took.clone())
    );
    let growth = with.saturating_sub(before);
    assert!(
        with_last <= with_after_clients.max(after) + growth,
        "RSS climbed from {with_after_clients} KiB to {withs:?} KiB over {ROUNDS} more rounds \
         (the first round added {growth} KiB; a leak would add that each round)"
    );
    assert!(
        with.saturating_sub(before) < MAX_GROWTH_KB,
        "RSS grew by {} KiB with {CONNS} silent connections",
        with - before
    );
    assert!(
        after.saturating_sub(before) < MAX_GROWTH_KB,
        "RSS after: {after} KiB (before {before} KiB)"
    );
    let text = rt.metrics();
    assert!(
        metric_sum(
            &text,
            "ringterm_handshake_failures_total{reason=\"client_closed\"}"
        ) >= 2 * CONNS as u64
    );
    assert_recovered(&mut rt, &certs, &base, "2000 silent connections");
}

// ---------------------------------------------------------------------------
// 4. Resets mid-transfer
// ---------------------------------------------------------------------------

/// How a streaming backend's connection ended.
#[derive(Debug)]
struct StreamEnd {
    written: u64,
    error: Option<io::ErrorKind>,
}

/// A backend that obeys the first bytes it reads: `STREAM` pushes data
/// until a write fails (reported on the channel); `RESET` writes the first
/// half of `payload`, pauses, writes the rest and resets (SO_LINGER 0,
/// close); anything else is echoed, so [`assert_recovered`] works too.
fn scripted_backend(payload: Arc<Vec<u8>>) -> (SocketAddr, mpsc::Receiver<StreamEnd>) {
    let (tx, rx) = mpsc::channel::<StreamEnd>();
    let tx = Mutex::new(tx);
    let addr = spawn_backend(move |mut s| {
        let mut first = vec![0u8; 64 * 1024];
        let n = match s.read(&mut first) {
            Ok(n) if n > 0 => n,
            _ => return,
        };
        if first[..n].starts_with(b"STREAM") {
            let chunk = random_bytes(64 * 1024);
            let mut written = 0u64;
            let error = loop {
                if written > 4 << 30 {
                    break None;
                }
                match s.write(&chunk) {
                    Ok(k) => written += k as u64,
                    Err(e) => break Some(e.kind()),
                }
            };
            let _ = tx.lock().unwrap().send(StreamEnd { written, error });
        } else if first[..n].starts_with(b"RESET") {
            // Write until every buffer on the way is full (the client does
            // not read yet), then reset: what is still in this socket's
            // send queue is discarded.
            s.set_write_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let mut written = 0;
            for chunk in payload.chunks(64 * 1024) {
                match s.write(chunk) {
                    Ok(k) => written += k as u64,
                    Err(_) => break,
                }
                if written % (64 * 1024) != 0 {
                    break;
                }
            }
            linger_zero(&s);
            drop(s);
            let _ = tx.lock().unwrap().send(StreamEnd {
                written,
                error: None,
            });
        } else if s.write_all(&first[..n]).is_ok() {
            echo_conn(s, &std::sync::atomic::AtomicU64::new(0));
        }
    });
    (addr, rx)
}

/// The client reads part of a stream the backend pushes, then resets
/// (SO_LINGER 0, close). ringterm closes the backend connection (the
/// backend's writes fail promptly), counts a connection error, and returns
/// to the baseline.
#[test]
fn client_reset_mid_transfer() {
    let certs = TestCerts::generate();
    let (backend, ends) = scripted_backend(Arc::new(Vec::new()));
    let (mut rt, base) = start(&certs, backend, &[]);
    let errors_before = metric_sum(&rt.metrics(), "ringterm_connection_errors_total");

    for tls in [Tls::V13, Tls::V12] {
        let client = TlsDuplex::connect(rt.addr(), certs.client_config(tls)).expect("connect");
        client.write_all(b"STREAM").unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        while got < 1 << 20 {
            let n = client.read(&mut buf).expect("reading the stream");
            assert!(n > 0, "the stream ended early");
            got += n;
        }
        linger_zero(&client.sock);
        let reset_at = Instant::now();
        drop(client);
        let end = ends
            .recv_timeout(Duration::from_secs(5))
            .expect("the backend was still streaming 5 s after the client's reset");
        let took = reset_at.elapsed();
        eprintln!("client reset ({tls:?}): backend ended {end:?} {took:?} after the reset");
        assert!(end.error.is_some(), "{tls:?}: {end:?}");
        assert!(end.written >= 1 << 20, "{tls:?}: {end:?}");
        assert!(took < Duration::from_secs(2), "{tls:?}: {took:?}");
        base.assert_back(&rt, "a client reset");
    }
    let text = rt.metrics();
    assert!(
        metric_sum(&text, "ringterm_connection_errors_total") >= errors_before + 2,
        "connection errors not counted:\n{text}"
    );
    assert_recovered(&mut rt, &certs, &base, "client resets");
}

/// The backend writes part of a response, then resets (SO_LINGER 0,
/// close) while the client is not reading. The client then gets a strict
/// prefix of the response, intact, and the connection ends *without*
/// close_notify (a truncation must not look like a clean end); the error
/// is counted; fds/active return to the baseline.
#[test]
fn backend_reset_mid_transfer() {
    let certs = TestCerts::generate();
    let payload = Arc::new(random_bytes(16 << 20));
    let (backend, ends) = scripted_backend(payload.clone());
    let (mut rt, base) = start(&certs, backend, &[]);
    let errors_before = metric_sum(&rt.metrics(), "ringterm_connection_errors_total");
    for tls in [Tls::V13, Tls::V12] {
        let client = TlsDuplex::connect(rt.addr(), certs.client_config(tls)).expect("connect");
        client.write_all(b"RESET").unwrap();
        let backend_end = ends
            .recv_timeout(Duration::from_secs(5))
            .expect("the backend never reset");
        set_timeouts(&client.sock, Duration::from_secs(5));
        let t = Instant::now();
        let mut r = &client;
        let (got, end) = tls_read_to_end(&mut r);
        eprintln!(
            "backend reset ({tls:?}): backend wrote {} bytes and reset; the client got {}, \
             then {end:?} after {:?}",
            backend_end.written,
            got.len(),
            t.elapsed()
        );
        assert!(
            (got.len() as u64) < backend_end.written,
            "{tls:?}: the reset should have cut the stream"
        );
        assert_ne!(
            end,
            TlsEnd::CloseNotify,
            "{tls:?}: a reset backend must not end the client's stream with close_notify"
        );
        if let TlsEnd::Error(e) = &end {
            assert!(
                !e.contains("WouldBlock") && !e.contains("TimedOut"),
                "{tls:?}: still open: {e}"
            );
        }
        assert!(got.len() <= payload.len());
        assert!(
            sha256(&got) == sha256(&payload[..got.len()]),
            "{tls:?}: the bytes before the reset are not a prefix of what the backend sent"
        );
        drop(client);
        base.assert_back(&rt, "a backend reset");
    }
    let text = rt.metrics();
    assert!(
        metric_sum(&text, "ringterm_connection_errors_total") >= errors_before + 2,
        "connection errors not counted:\n{text}"
    );
    assert_recovered(&mut rt, &certs, &base, "backend resets");
}

// ---------------------------------------------------------------------------
// 5. File-descriptor exhaustion
// ---------------------------------------------------------------------------

/// ringterm's fd limit is lowered (prlimit) so that held connections use
/// up every fd: accept fails (EMFILE), is counted, and backs off instead
/// of spinning (CPU stays low), in the workers and in the admin thread; a
/// client that connects while fds are exhausted waits in the listen queue
/// and is served once fds free up.
///
/// The order makes the admin case deterministic: the admin thread blocks
/// in `accept`, which reserves its fd number before waiting. A scrape made
/// once the held connections are open leaves that reservation above them;
/// the limit is then set just above the fds in use, so a scrape during the
/// exhaustion gets the reserved fd (its handler then fails to clone it and
/// closes it, a number above the limit), and the admin thread's next
/// `accept` fails at once, and again, until fds free up.
#[test]
fn fd_exhaustion_backs_off_and_recovers() {
    const HELD: usize = 40;
    raise_nofile();
    let certs = TestCerts::generate();
    let echo = echo_backend();
    // The held connections must outlast the test (handshake timeout).
    let (mut rt, base) = start(&certs, echo.addr, &["--handshake-timeout", "30000"]);
    let pid = pid(&rt);

    // Held connections fill every free fd number (no scrape meanwhile: a
    // scrape's two fds would leave holes behind).
    let mut held: Vec<TcpStream> = (0..HELD).map(|_| tcp_connect(rt.addr())).collect();
    let settled = |want: usize| {
        let mut n = 0;
        let ok = eventually(SETTLE, || {
            n = fd_count(pid);
            n == want
        });
        assert!(ok, "ringterm holds {n} fds, expected {want}");
    };
    settled(base.fds + HELD);
    // The fd numbers now run from 0 to the last held connection, with one
    // hole: the admin thread's reservation. (fds inherited from the test
    // harness, such as cargo's jobserver pipe, sit far above.)
    let limit = u64::from(end_of_run(&fd_numbers(pid)));
    // This scrape moves the admin thread's reservation to `limit` or just
    // above (its own fds come and go; the hole stays).
    assert_eq!(metric_sum(&rt.metrics(), "ringterm_active"), HELD as u64);
    settled(base.fds + HELD);
    let (mut soft, mut hard) = (0u64, 0u64);
    rlimit::prlimit(
        pid as i32,
        rlimit::Resource::NOFILE,
        None,
        Some((&mut soft, &mut hard)),
    )
    .expect("read ringterm's RLIMIT_NOFILE");
    rlimit::prlimit(
        pid as i32,
        rlimit::Resource::NOFILE,
        Some((limit, hard)),
        None,
    )
    .expect("lower ringterm's RLIMIT_NOFILE");

    // One more connection takes the last free fd below the limit; the
    // rest wait in the listen queue.
    held.extend((0..8).map(|_| tcp_connect(rt.addr())));
    let exhausted = eventually(Duration::from_secs(5), || {
        end_of_run(&fd_numbers(pid)) >= limit as u32 && fd_count(pid) > base.fds + HELD
    });
    let exhausted_at = Instant::now();
    assert!(
        exhausted,
        "ringterm holds fds {:?}, limit {limit}",
        fd_numbers(pid)
    );

    // A real client arrives while fds are exhausted: it must wait, not
    // fail, and be served once fds free up.
    let waiting = {
        let addr = rt.addr();
        let config = certs.tls13();
        thread::spawn(move || {
            let client = TlsDuplex::connect(addr, config)?;
            let (got, end) = echo_roundtrip(&client, b"served after the exhaustion");
            Ok::<_, io::Error>((got, end))
        })
    };

    // CPU while exhausted: first with only the workers' accepts failing,
    // then after metrics scrapes came in (see above).
    thread::sleep(Duration::from_millis(200));
    let window = Duration::from_secs(2);
    let (cpu_s, per_thread) = cpu_over(pid, window);
    eprintln!(
        "fd exhaustion: limit {limit}, baseline {} fds, {} held; CPU {cpu_s:.2} s over {window:?} \
         (per thread, ticks: {per_thread:?})",
        base.fds,
        held.len()
    );
    assert!(
        cpu_s < 0.5,
        "ringterm burned {cpu_s:.2} s of CPU in {window:?} while out of fds \
         (per thread, ticks: {per_thread:?})"
    );
    // One scrape: it fails (no fd to answer it with), that is expected.
    let scraped = (|| {
        let mut s = TcpStream::connect_timeout(&rt.admin(), Duration::from_secs(1))?;
        set_timeouts(&s, Duration::from_secs(1));
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
        let mut body = Vec::new();
        s.read_to_end(&mut body)?;
        Ok::<_, io::Error>(body.len())
    })();
    thread::sleep(Duration::from_millis(100));
    let (cpu_s, per_thread) = cpu_over(pid, window);
    eprintln!(
        "fd exhaustion: a scrape during the exhaustion: {scraped:?}; then CPU {cpu_s:.2} s over \
         {window:?} (per thread, ticks: {per_thread:?})"
    );
    assert!(
        cpu_s < 0.5,
        "after a metrics scrape, ringterm burned {cpu_s:.2} s of CPU in {window:?} while out \
         of fds (per thread, ticks: {per_thread:?})"
    );
    rt.assert_alive();

    // Free the fds: the waiting client is served.
    drop(held);
    let exhausted_for = exhausted_at.elapsed();
    let (got, end) = waiting
        .join()
        .unwrap()
        .expect("the client that waited through the exhaustion failed");
    assert_eq!(got, b"served after the exhaustion");
    assert_eq!(end, TlsEnd::CloseNotify);
    let text = rt.metrics();
    let errors = metric_sum(&text, "ringterm_accept_errors_total");
    eprintln!(
        "fd exhaustion: ringterm_accept_errors_total = {errors} over about {exhausted_for:?}"
    );
    assert!(errors > 0, "no accept error counted:\n{text}");
    // One per 50 ms back-off (with slack), not a spin.
    let bound = (exhausted_for.as_millis() as u64 + 500) / 50 * 3 / 2;
    assert!(
        errors <= bound,
        "{errors} accept errors in {exhausted_for:?}: not backing off"
    );
    assert_recovered(&mut rt, &certs, &base, "fd exhaustion");
}

// ---------------------------------------------------------------------------
// 6. TLS-level misbehaviour, over a raw record layer
// ---------------------------------------------------------------------------

/// One direction of a raw AES-128-GCM record layer.
struct Dir {
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
}

impl Dir {
    fn new(seq: u64, secrets: ConnectionTrafficSecrets) -> Dir {
        let ConnectionTrafficSecrets::Aes128Gcm { key, iv } = secrets else {
            panic!("expected AES-128-GCM");
        };
        Dir {
            key: LessSafeKey::new(UnboundKey::new(&AES_128_GCM, key.as_ref()).unwrap()),
            iv: iv.as_ref().try_into().unwrap(),
            seq,
        }
    }

    /// The per-record nonce: the IV XOR the sequence number (RFC 8446
    /// §5.3; for TLS 1.2 GCM, rustls derives the explicit part the same
    /// way).
    fn nonce(&self) -> [u8; 12] {
        let mut n = self.iv;
        for (i, b) in self.seq.to_be_bytes().iter().enumerate() {
            n[4 + i] ^= b;
        }
        n
    }
}

/// What the server sent, as seen by [`RawTls::recv`].
#[derive(Debug, PartialEq, Eq)]
enum Rx {
    /// A record: its (inner) content type and plaintext.
    Record(u8, Vec<u8>),
    /// TCP EOF.
    Eof,
    /// A socket error (reset, timeout...).
    Error(io::ErrorKind),
}

const CT_ALERT: u8 = 21;
const CT_HANDSHAKE: u8 = 22;
const CT_APPDATA: u8 = 23;

/// A TLS connection whose handshake rustls did, continued by hand with the
/// extracted traffic keys, so the test can send what rustls's client never
/// would (alerts, a renegotiation ClientHello, data after close_notify).
struct RawTls {
    sock: TcpStream,
    tls13: bool,
    tx: Dir,
    rx: Dir,
    inbuf: Vec<u8>,
}

impl RawTls {
    /// A client configuration that only offers AES-128-GCM suites and lets
    /// the secrets be extracted.
    fn config(certs: &TestCerts, tls: Tls) -> Arc<ClientConfig> {
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        provider.cipher_suites.retain(|s| {
            matches!(
                s.suite(),
                CipherSuite::TLS13_AES_128_GCM_SHA256
                    | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                    | CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
            )
        });
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(certs.cert_pem.as_bytes()).unwrap())
            .unwrap();
        let versions: &[&rustls::SupportedProtocolVersion] = match tls {
            Tls::V12 => &[&rustls::version::TLS12],
            _ => &[&rustls::version::TLS13],
        };
        let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.enable_secret_extraction = true;
        Arc::new(config)
    }

    fn connect(addr: SocketAddr, certs: &TestCerts, tls: Tls) -> RawTls {
        let stream = tls_connect(addr, Self::config(certs, tls)).expect("TLS connect");
        let (mut conn, mut sock) = stream.into_parts();
        while conn.wants_write() {
            conn.write_tls(&mut sock).unwrap();
        }
        let tls13 = conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3);
        assert_eq!(tls13, tls != Tls::V12);
        let secrets = conn.dangerous_extract_secrets().expect("extract secrets");
        set_timeouts(&sock, Duration::from_secs(5));
        RawTls {
            sock,
            tls13,
            tx: Dir::new(secrets.tx.0, secrets.tx.1),
            rx: Dir::new(secrets.rx.0, secrets.rx.1),
            inbuf: Vec::new(),
        }
    }

    /// One encrypted record of content type `ct`.
    fn seal(&mut self, ct: u8, data: &[u8]) -> Vec<u8> {
        assert!(data.len() <= 16384);
        let nonce = self.tx.nonce();
        let mut out;
        if self.tls13 {
            // TLSInnerPlaintext: content, then the real type (RFC 8446 §5.2).
            let mut body = data.to_vec();
            body.push(ct);
            let len = body.len() + 16;
            let header = [CT_APPDATA, 3, 3, (len >> 8) as u8, len as u8];
            self.tx
                .key
                .seal_in_place_append_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(header),
                    &mut body,
                )
                .unwrap();
            out = header.to_vec();
            out.extend(body);
        } else {
            // RFC 5246 §6.2.3.3 / RFC 5288 §3: explicit nonce, then the
            // ciphertext; AAD = seq || type || version || length.
            let mut aad = self.tx.seq.to_be_bytes().to_vec();
            aad.extend([ct, 3, 3, (data.len() >> 8) as u8, data.len() as u8]);
            let mut body = data.to_vec();
            self.tx
                .key
                .seal_in_place_append_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(&aad[..]),
                    &mut body,
                )
                .unwrap();
            let len = 8 + body.len();
            out = vec![ct, 3, 3, (len >> 8) as u8, len as u8];
            out.extend(&nonce[4..]);
            out.extend(body);
        }
        self.tx.seq += 1;
        out
    }

    /// Application data, in records of at most 16 KiB.
    fn seal_data(&mut self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in data.chunks(16384) {
            out.extend(self.seal(CT_APPDATA, chunk));
        }
        out
    }

    fn send(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).expect("raw TLS write");
    }

    /// Reads and decrypts the next record.
    fn recv(&mut self) -> Rx {
        loop {
            if self.inbuf.len() >= 5 {
                let len = u16::from_be_bytes([self.inbuf[3], self.inbuf[4]]) as usize;
                if self.inbuf.len() >= 5 + len {
                    let header: Vec<u8> = self.inbuf.drain(..5).collect();
                    let mut body: Vec<u8> = self.inbuf.drain(..len).collect();
                    return Rx::Record(self.open(&header, &mut body), body);
                }
            }
            let mut buf = [0u8; 32 * 1024];
            match self.sock.read(&mut buf) {
                Ok(0) => return Rx::Eof,
                Ok(n) => self.inbuf.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Rx::Error(e.kind()),
            }
        }
    }

    /// Decrypts `body` in place (leaving the plaintext); returns the
    /// content type.
    fn open(&mut self, header: &[u8], body: &mut Vec<u8>) -> u8 {
        let ct;
        if self.tls13 {
            assert_eq!(header[0], CT_APPDATA, "unprotected record {header:02x?}");
            let plain = self
                .rx
                .key
                .open_in_place(
                    Nonce::assume_unique_for_key(self.rx.nonce()),
                    Aad::from(header),
                    body,
                )
                .expect("decrypt a record from ringterm")
                .len();
            body.truncate(plain);
            while body.last() == Some(&0) {
                body.pop();
            }
            ct = body.pop().expect("inner content type");
        } else {
            ct = header[0];
            let mut nonce = self.rx.iv;
            nonce[4..].copy_from_slice(&body[..8]);
            let plain_len = body.len() - 8 - 16;
            let mut aad = self.rx.seq.to_be_bytes().to_vec();
            aad.extend([ct, 3, 3, (plain_len >> 8) as u8, plain_len as u8]);
            let mut sealed = body.split_off(8);
            let plain = self
                .rx
                .key
                .open_in_place(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(&aad[..]),
                    &mut sealed,
                )
                .expect("decrypt a record from ringterm")
                .len();
            sealed.truncate(plain);
            *body = sealed;
        }
        self.rx.seq += 1;
        ct
    }

    /// Reads application data until `n` bytes arrived, skipping post-
    /// handshake messages (TLS 1.3 NewSessionTicket); panics on anything
    /// else.
    fn read_app(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while out.len() < n {
            match self.recv() {
                Rx::Record(CT_APPDATA, data) => out.extend(data),
                Rx::Record(CT_HANDSHAKE, msg) if self.tls13 && msg.first() == Some(&4) => {}
                other => panic!("expected application data, got {other:?}"),
            }
        }
        assert_eq!(out.len(), n, "more data than expected");
        out
    }

    /// Reads until the connection ends; returns every record (skipping
    /// NewSessionTicket) and how it ended.
    fn read_to_end(&mut self) -> (Vec<(u8, Vec<u8>)>, Rx) {
        let mut records = Vec::new();
        loop {
            match self.recv() {
                Rx::Record(CT_HANDSHAKE, msg) if self.tls13 && msg.first() == Some(&4) => {}
                Rx::Record(ct, data) => records.push((ct, data)),
                end => return (records, end),
            }
        }
    }
}

/// The handshake message(s) inside a plaintext handshake record stream
/// (drops the 5-byte record headers).
fn handshake_payload(records: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = records;
    while rest.len() >= 5 {
        let len = u16::from_be_bytes([rest[3], rest[4]]) as usize;
        out.extend(&rest[5..5 + len]);
        rest = &rest[5 + len..];
    }
    out
}

/// TLS 1.2 renegotiation: an encrypted ClientHello after the handshake is
/// refused with a `no_renegotiation` warning (RFC 5246 §7.2.2); no
/// ServerHello follows and data keeps flowing under the old keys; a
/// second attempt ends the connection.
#[test]
fn tls12_renegotiation_is_refused() {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let (mut rt, base) = start(&certs, echo.addr, &[]);
    let mut c = RawTls::connect(rt.addr(), &certs, Tls::V12);
    let msg = c.seal_data(b"before");
    c.send(&msg);
    assert_eq!(c.read_app(6), b"before");

    let hello = handshake_payload(&client_hello_bytes(certs.tls12()));
    assert_eq!(hello[0], 1, "a ClientHello message");
    let rec = c.seal(CT_HANDSHAKE, &hello);
    c.send(&rec);
    match c.recv() {
        Rx::Record(CT_ALERT, alert) => assert_eq!(
            alert,
            [1, 100],
            "expected a warning no_renegotiation alert, got {alert:?}"
        ),
        other => panic!("expected a no_renegotiation alert, got {other:?}"),
    }
    // Still the same session, both ways.
    let msg = c.seal_data(b"after the refusal");
    c.send(&msg);
    assert_eq!(c.read_app(17), b"after the refusal");

    // rustls accepts one refused attempt; the second is fatal.
    let rec = c.seal(CT_HANDSHAKE, &hello);
    c.send(&rec);
    let (records, end) = c.read_to_end();
    eprintln!("second renegotiation attempt: {records:?}, then {end:?}");
    assert!(
        records.iter().all(|(ct, _)| *ct == CT_ALERT),
        "only an alert may follow the second attempt: {records:?}"
    );
    assert!(
        matches!(end, Rx::Eof | Rx::Error(io::ErrorKind::ConnectionReset)),
        "the connection should end: {end:?}"
    );
    let text = rt.metrics();
    assert_eq!(
        metric_sum(
            &text,
            "ringterm_handshakes_total{version=\"TLSv1.2\",resumed=\"false\"}"
        ),
        1
    );
    assert!(metric_sum(&text, "ringterm_connection_errors_total") >= 1);
    drop(c);
    assert_recovered(&mut rt, &certs, &base, "TLS 1.2 renegotiation");
}

/// The same refusal seen by a real renegotiating client: `openssl
/// s_client -tls1_2` and its `R` command. OpenSSL gets the
/// `no_renegotiation` warning, gives up with a fatal `handshake_failure`
/// (its choice) and exits; exactly one ServerHello was ever sent. Needs
/// `openssl` on PATH, like `interop.rs` (CI installs it).
#[test]
fn openssl_renegotiation_is_refused() {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let (mut rt, base) = start(&certs, echo.addr, &[]);
    let mut child = std::process::Command::new("openssl")
        .args(["s_client", "-connect", &rt.addr().to_string(), "-tls1_2"])
        .args(["-msg", "-servername", "localhost"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("`openssl` is required (CI installs it)");
    let collect = |mut r: Box<dyn Read + Send>| {
        let text = Arc::new(Mutex::new(String::new()));
        let sink = text.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        text
    };
    let out = collect(Box::new(child.stdout.take().unwrap()));
    let err = collect(Box::new(child.stderr.take().unwrap()));
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"hello\n").unwrap();
    let echoed = eventually(Duration::from_secs(10), || {
        out.lock().unwrap().contains("\nhello\n")
    });
    assert!(echoed, "no echo: {}", out.lock().unwrap());
    // `R` at the start of a line: SSL_renegotiate().
    stdin.write_all(b"R\n").unwrap();
    let exited = eventually(Duration::from_secs(10), || {
        child.try_wait().unwrap().is_some()
    });
    if !exited {
        let _ = child.kill();
    }
    let _ = child.wait();
    drop(stdin);
    thread::sleep(Duration::from_millis(100));
    let (out, err) = (out.lock().unwrap().clone(), err.lock().unwrap().clone());
    assert!(exited, "s_client still running: {out}\n{err}");
    assert!(err.contains("RENEGOTIATING"), "{err}");
    assert!(
        out.contains("<<< TLS 1.2, Alert [length 0002], warning no_renegotiation"),
        "no no_renegotiation warning: {out}"
    );
    let server_hellos = out
        .lines()
        .filter(|l| l.starts_with("<<<") && l.ends_with("ServerHello"))
        .count();
    assert_eq!(server_hellos, 1, "renegotiated? {out}");
    assert_recovered(&mut rt, &certs, &base, "openssl renegotiation");
}

/// Alerts from the client in the middle of a TLS 1.3 stream.
#[test]
fn client_alerts_mid_stream() {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let (mut rt, base) = start(&certs, echo.addr, &[]);

    // (a) A warning user_canceled, then more data, then close_notify:
    // ignored (RFC 8446 §6.1), the stream goes on and ends cleanly.
    let mut c = RawTls::connect(rt.addr(), &certs, Tls::V13);
    let m = c.seal_data(b"one");
    c.send(&m);
    assert_eq!(c.read_app(3), b"one");
    let a = c.seal(CT_ALERT, &[1, 90]);
    c.send(&a);
    let m = c.seal_data(b"two");
    c.send(&m);
    assert_eq!(c.read_app(3), b"two");
    let a = c.seal(CT_ALERT, &[1, 0]);
    c.send(&a);
    let (records, end) = c.read_to_end();
    assert_eq!(
        records,
        vec![(CT_ALERT, vec![1, 0])],
        "expected only ringterm's close_notify"
    );
    assert_eq!(end, Rx::Eof);
    drop(c);
    base.assert_back(&rt, "user_canceled");

    // (b) A fatal alert mid-stream: ringterm sends nothing more and closes.
    let errors_before = metric_sum(&rt.metrics(), "ringterm_connection_errors_total");
    let mut c = RawTls::connect(rt.addr(), &certs, Tls::V13);
    let m = c.seal_data(b"one");
    c.send(&m);
    assert_eq!(c.read_app(3), b"one");
    let a = c.seal(CT_ALERT, &[2, 80]);
    c.send(&a);
    let t = Instant::now();
    let (records, end) = c.read_to_end();
    eprintln!(
        "fatal internal_error from the client: {records:?} then {end:?} after {:?}",
        t.elapsed()
    );
    assert!(
        records.is_empty(),
        "nothing may follow a fatal alert: {records:?}"
    );
    assert!(
        matches!(end, Rx::Eof | Rx::Error(io::ErrorKind::ConnectionReset)),
        "{end:?}"
    );
    drop(c);
    base.assert_back(&rt, "a fatal alert");
    rt.wait_metric("ringterm_connection_errors_total", |n| n > errors_before);

    // (c) A warning-level alert other than user_canceled is fatal in TLS
    // 1.3: an alert back (rustls: decode_error), then the close.
    let mut c = RawTls::connect(rt.addr(), &certs, Tls::V13);
    let a = c.seal(CT_ALERT, &[1, 10]);
    c.send(&a);
    let (records, end) = c.read_to_end();
    eprintln!("warning unexpected_message: {records:?} then {end:?}");
    assert!(
        records.iter().all(|(ct, a)| *ct == CT_ALERT && a[0] == 2),
        "only a fatal alert may come back: {records:?}"
    );
    assert!(
        matches!(end, Rx::Eof | Rx::Error(io::ErrorKind::ConnectionReset)),
        "{end:?}"
    );
    drop(c);
    base.assert_back(&rt, "a TLS 1.3 warning alert");

    // (d) A flood of user_canceled warnings: bounded (rustls allows 4),
    // then the connection ends.
    let mut c = RawTls::connect(rt.addr(), &certs, Tls::V13);
    let mut flood = Vec::new();
    for _ in 0..50 {
        flood.extend(c.seal(CT_ALERT, &[1, 90]));
    }
    // The server may reset while we write.
    let _ = c.sock.write_all(&flood);
    let (records, end) = c.read_to_end();
    eprintln!("50 user_canceled: {records:?} then {end:?}");
    assert!(records.iter().all(|(ct, _)| *ct == CT_ALERT), "{records:?}");
    assert!(
        matches!(end, Rx::Eof | Rx::Error(io::ErrorKind::ConnectionReset)),
        "{end:?}"
    );
    drop(c);
    assert_recovered(&mut rt, &certs, &base, "client alerts");
}

/// close_notify in the middle of a stream (no TCP FIN), followed in the
/// same segment by one more application-data record: everything before the
/// close_notify reaches the backend intact (SHA-256), the record after it
/// does not, the backend sees EOF while it can still answer, and the
/// answer reaches the client, followed by close_notify.
#[test]
fn close_notify_mid_stream_half_closes_toward_the_backend() {
    let certs = TestCerts::generate();
    let (tx, rx) = mpsc::channel::<Received>();
    let tx = Mutex::new(tx);
    let backend = spawn_backend(move |mut s| {
        let got = read_hash_to_eof(&s);
        // The write side is still open after ringterm's half-close.
        let answer = format!("{} {}", got.len, hex(&got.sha));
        let _ = s.write_all(answer.as_bytes());
        let _ = tx.lock().unwrap().send(got);
    });
    let (mut rt, base) = start(&certs, backend, &[]);
    for tls in [Tls::V13, Tls::V12] {
        let payload = random_bytes(1 << 20);
        let mut c = RawTls::connect(rt.addr(), &certs, tls);
        let mut wire = c.seal_data(&payload);
        wire.extend(c.seal(CT_ALERT, &[1, 0]));
        wire.extend(c.seal(CT_APPDATA, b"after close_notify: must be ignored"));
        c.send(&wire);
        let got = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the backend never saw EOF: no half-close after close_notify");
        assert!(
            got.clean_eof,
            "{tls:?}: the backend read ended with an error"
        );
        assert_eq!(
            got.len,
            payload.len() as u64,
            "{tls:?}: bytes lost or added"
        );
        assert!(
            got.sha == sha256(&payload),
            "{tls:?}: the backend got different bytes"
        );
        let answer = format!("{} {}", payload.len(), hex(&sha256(&payload)));
        assert_eq!(c.read_app(answer.len()), answer.as_bytes(), "{tls:?}");
        let (records, end) = c.read_to_end();
        assert_eq!(
            records,
            vec![(CT_ALERT, vec![1, 0])],
            "{tls:?}: expected ringterm's close_notify after the answer"
        );
        assert!(
            matches!(end, Rx::Eof | Rx::Error(io::ErrorKind::ConnectionReset)),
            "{tls:?}: {end:?}"
        );
        drop(c);
        base.assert_back(&rt, "close_notify mid-stream");
    }
    // A normal client (this backend answers once it has read everything).
    let client = TlsDuplex::connect(rt.addr(), certs.tls13()).expect("a normal client");
    let (answer, end) = echo_roundtrip(&client, b"normal");
    assert_eq!(answer, format!("6 {}", hex(&sha256(b"normal"))).as_bytes());
    assert_eq!(end, TlsEnd::CloseNotify);
    assert!(rx.recv_timeout(Duration::from_secs(5)).unwrap().clean_eof);
    drop(client);
    base.assert_back(&rt, "a normal client");
    rt.assert_alive();
}
