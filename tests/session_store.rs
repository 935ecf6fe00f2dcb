//! The L2 session store (`--session-store`) with a real `redis-server`
//! (Debian package `redis-server`; `.ci/run` installs it): resumption
//! across two ringterm processes sharing one Redis, single use of TLS 1.3
//! stateful tickets across the fleet, and the failures (Redis stopped and
//! restarted, a slow Redis, garbage from the store). Every resumption check
//! is the client's: rustls reports whether the handshake was resumed.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use rustls::client::{Resumption, Tls12Resumption};
use rustls::{ClientConfig, HandshakeKind};

/// A `redis-server` on a free loopback port, killed on drop.
struct Redis {
    child: Option<Child>,
    port: u16,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Redis {
    fn start() -> Redis {
        let mut r = Redis {
            child: None,
            port: free_port(),
        };
        r.restart();
        r
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn url(&self) -> String {
        format!("redis://{}", self.addr())
    }

    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server) must be installed");
        self.child = Some(child);
        let up = eventually(Duration::from_secs(10), || {
            redis_cmd(self.addr(), &["PING"]).is_some_and(|r| r.starts_with("+PONG"))
        });
        assert!(up, "redis-server did not come up on port {}", self.port);
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends one command, returns the raw reply's first line.
fn redis_cmd(addr: SocketAddr, args: &[&str]) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    Some(line)
}

fn resuming(base: Arc<ClientConfig>) -> Arc<ClientConfig> {
    let mut c = (*base).clone();
    c.resumption =
        Resumption::in_memory_sessions(64).tls12_resumption(Tls12Resumption::SessionIdOnly);
    Arc::new(c)
}

/// Connects, exchanges one echo round trip (so TLS 1.3 tickets arrive),
/// closes, and says how the handshake went.
fn connect_ping(addr: SocketAddr, config: &Arc<ClientConfig>) -> HandshakeKind {
    let mut s = tls_connect(addr, config.clone()).expect("tls connect");
    let kind = s.conn.handshake_kind().expect("handshake done");
    s.write_all(b"ping").unwrap();
    s.flush().unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    let _ = close_write(&mut s);
    kind
}

/// Starts ringterm with the store at `url`: 2 workers and a lookup
/// timeout of 1 s (this machine is shared and noisy: the tests check what
/// happens, not how fast) unless `extra` says otherwise.
fn start_with_store(certs: &TestCerts, backend: SocketAddr, url: &str, extra: &[&str]) -> Ringterm {
    let mut args = vec!["--session-store", url, "--session-store-prefix", "test:"];
    if !extra.contains(&"--workers") {
        args.extend(["--workers", "2"]);
    }
    if !extra.contains(&"--session-store-timeout") {
        args.extend(["--session-store-timeout", "1000"]);
    }
    args.extend_from_slice(extra);
    start_ringterm(certs, backend, &args)
}

fn wait_store_up(rt: &Ringterm, workers: u64) {
    rt.wait_metric("ringterm_session_store_up", |n| n == workers);
}

fn no_handshake_failures(rt: &Ringterm) {
    let text = rt.metrics();
    for reason in ["tls_error", "client_closed", "timeout"] {
        let name = format!("ringterm_handshake_failures_total{{reason=\"{reason}\"}}");
        assert_eq!(metric_sum(&text, &name), 0, "{name}: {text}");
    }
}

/// A session made on A resumes on B and back, for `tls`.
fn across_processes(tls: Tls, kind: &str) {
    let redis = Redis::start();
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let a = start_with_store(&certs, echo.addr, &redis.url(), &[]);
    let b = start_with_store(&certs, echo.addr, &redis.url(), &[]);
    wait_store_up(&a, 2);
    wait_store_up(&b, 2);
    let config = resuming(certs.client_config(tls));
    assert_eq!(connect_ping(a.addr(), &config), HandshakeKind::Full);
    for i in 0..10 {
        let to = if i % 2 == 0 { b.addr() } else { a.addr() };
        assert_eq!(
            connect_ping(to, &config),
            HandshakeKind::Resumed,
            "reconnection {i} (to {}) was not resumed",
            if i % 2 == 0 { "B" } else { "A" }
        );
    }
    let name = format!("ringterm_handshakes_resumed_total{{kind=\"{kind}\"}}");
    let text_b = b.wait_metric(&name, |n| n >= 5);
    assert!(
        metric_sum(&text_b, "ringterm_session_store_hits_total") >= 1,
        "{text_b}"
    );
    a.wait_metric("ringterm_session_store_puts_total", |n| n >= 1);
    // Only the rustls values went to Redis, under the prefix.
    let keys = redis_cmd(redis.addr(), &["DBSIZE"]).unwrap();
    assert!(keys.starts_with(':'), "{keys}");
    no_handshake_failures(&a);
    no_handshake_failures(&b);
}

#[test]
fn tls12_session_ids_resume_across_processes() {
    across_processes(Tls::V12, "tls12_id");
}

#[test]
fn tls13_stateful_tickets_resume_across_processes() {
    across_processes(Tls::V13, "tls13_stateful");
}

/// Sends a raw ClientHello and reads the ServerHello: whether the server
/// accepted the offered PSK (a `pre_shared_key` extension, RFC 8446
/// §4.2.11, in its ServerHello).
fn accepts_psk(addr: SocketAddr, client_hello: &[u8]) -> bool {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(client_hello).unwrap();
    let mut head = [0u8; 5];
    s.read_exact(&mut head).unwrap();
    assert_eq!(head[0], 22, "a handshake record, not an alert: {head:?}");
    let len = u16::from_be_bytes([head[3], head[4]]) as usize;
    let mut rec = vec![0u8; len];
    s.read_exact(&mut rec).unwrap();
    assert_eq!(rec[0], 2, "a ServerHello");
    // type(1) len(3) version(2) random(32)
    let mut at = 4 + 2 + 32;
    at += 1 + rec[at] as usize; // session id
    at += 2 + 1; // cipher suite, compression
    let ext_end = at + 2 + u16::from_be_bytes([rec[at], rec[at + 1]]) as usize;
    at += 2;
    while at + 4 <= ext_end {
        let kind = u16::from_be_bytes([rec[at], rec[at + 1]]);
        let n = u16::from_be_bytes([rec[at + 2], rec[at + 3]]) as usize;
        if kind == 41 {
            return true;
        }
        at += 4 + n;
    }
    false
}

#[test]
fn a_tls13_stateful_ticket_resumes_once_across_the_fleet() {
    let redis = Redis::start();
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let a = start_with_store(&certs, echo.addr, &redis.url(), &[]);
    let b = start_with_store(&certs, echo.addr, &redis.url(), &[]);
    wait_store_up(&a, 2);
    wait_store_up(&b, 2);
    let config = resuming(certs.tls13());
    assert_eq!(connect_ping(a.addr(), &config), HandshakeKind::Full);
    a.wait_metric("ringterm_session_store_puts_total", |n| n >= 1);
    // The client's next ClientHello offers one of A's tickets; it is
    // replayed byte for byte.
    let mut conn = rustls::ClientConnection::new(config.clone(), server_name()).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    // Used on B: taken from the store.
    assert!(accepts_psk(b.addr(), &hello), "B resumes with A's ticket");
    // The same ticket again: A (whose own cache had it) and B refuse it.
    assert!(!accepts_psk(a.addr(), &hello), "A resumed a used ticket");
    assert!(!accepts_psk(b.addr(), &hello), "B resumed a used ticket");
}

#[test]
fn redis_stopped_mid_run_means_full_handshakes_then_resumption_comes_back() {
    let mut redis = Redis::start();
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let a = start_with_store(&certs, echo.addr, &redis.url(), &[]);
    let b = start_with_store(&certs, echo.addr, &redis.url(), &[]);
    wait_store_up(&a, 2);
    wait_store_up(&b, 2);
    let config = resuming(certs.tls12());
    assert_eq!(connect_ping(a.addr(), &config), HandshakeKind::Full);
    assert_eq!(connect_ping(b.addr(), &config), HandshakeKind::Resumed);

    redis.stop();
    wait_store_up(&a, 0);
    wait_store_up(&b, 0);
    assert!(
        a.wait_log(Duration::from_secs(5), |m| m.contains("session store down"))
            .is_some(),
        "{}",
        a.stderr()
    );
    // New sessions cannot cross: full handshakes, none failed.
    for _ in 0..5 {
        let fresh = resuming(certs.tls12());
        assert_eq!(connect_ping(a.addr(), &fresh), HandshakeKind::Full);
        assert_eq!(connect_ping(b.addr(), &fresh), HandshakeKind::Full);
    }
    let text = a.metrics();
    assert!(
        metric_sum(&text, "ringterm_session_store_dropped_puts_total") >= 1,
        "{text}"
    );
    // One warning per change, not one per handshake.
    let warnings = a.stderr().matches("session store down").count();
    assert!(warnings <= 2, "{warnings} warnings: {}", a.stderr());

    redis.restart();
    wait_store_up(&a, 2);
    wait_store_up(&b, 2);
    let config = resuming(certs.tls12());
    assert_eq!(connect_ping(a.addr(), &config), HandshakeKind::Full);
    assert_eq!(connect_ping(b.addr(), &config), HandshakeKind::Resumed);
    no_handshake_failures(&a);
    no_handshake_failures(&b);
}

/// A TCP proxy that holds every chunk from the server for `delay`.
fn delaying_proxy(upstream: SocketAddr, delay: Duration) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for c in l.incoming() {
            let Ok(client) = c else { return };
            let Ok(server) = TcpStream::connect(upstream) else {
                continue;
            };
            let (mut c_r, mut s_w) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            thread::spawn(move || {
                let _ = std::io::copy(&mut c_r, &mut s_w);
            });
            let (mut s_r, mut c_w) = (server, client);
            thread::spawn(move || {
                let mut buf = [0u8; 16 * 1024];
                loop {
                    match s_r.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            thread::sleep(delay);
                            if c_w.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn a_slow_redis_holds_a_handshake_no_longer_than_the_timeout() {
    let redis = Redis::start();
    let certs = TestCerts::generate();
    let echo = echo_backend();
    // Replies take 1.5 s; the lookup timeout is 20 ms.
    let proxy = delaying_proxy(redis.addr(), Duration::from_millis(1500));
    let url = format!("redis://{proxy}");
    let a = start_with_store(&certs, echo.addr, &redis.url(), &["--workers", "1"]);
    let b = start_with_store(
        &certs,
        echo.addr,
        &url,
        &["--workers", "1", "--session-store-timeout", "20"],
    );
    wait_store_up(&a, 1);
    wait_store_up(&b, 1);
    for _ in 0..3 {
        // A session from A, offered to B.
        let config = resuming(certs.tls12());
        assert_eq!(connect_ping(a.addr(), &config), HandshakeKind::Full);
        let t = Instant::now();
        // B's lookup times out: a full handshake, well before the reply.
        assert_eq!(connect_ping(b.addr(), &config), HandshakeKind::Full);
        assert!(
            t.elapsed() < Duration::from_millis(1200),
            "the handshake waited {:?}",
            t.elapsed()
        );
    }
    b.wait_metric("ringterm_session_store_timeouts_total", |n| n >= 3);
    no_handshake_failures(&b);
}

#[test]
fn garbage_from_the_store_is_counted_and_ignored() {
    // A "store" that answers everything with bytes that are not RESP.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let fake = l.local_addr().unwrap();
    thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(b"\x00\xffgarbage\r\n").is_err() {
                        return;
                    }
                }
            });
        }
    });
    let redis = Redis::start();
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let a = start_with_store(&certs, echo.addr, &redis.url(), &["--workers", "1"]);
    let b = start_with_store(
        &certs,
        echo.addr,
        &format!("redis://{fake}"),
        &["--workers", "1"],
    );
    wait_store_up(&a, 1);
    for _ in 0..3 {
        let config = resuming(certs.tls12());
        assert_eq!(connect_ping(a.addr(), &config), HandshakeKind::Full);
        // B looks up (if its connection is up at that moment) and gets
        // garbage: a full handshake, never a failed one.
        assert_eq!(connect_ping(b.addr(), &config), HandshakeKind::Full);
        thread::sleep(Duration::from_millis(150));
    }
    b.wait_metric("ringterm_session_store_errors_total", |n| n >= 1);
    no_handshake_failures(&b);
    let mut b = b;
    b.assert_alive();
}

#[test]
fn bad_store_flags_exit_64_with_one_line() {
    for (args, flag) in [
        (vec!["--session-store", "http://x:1"], "--session-store"),
        (
            vec!["--session-store", "redis://u:p@x:1"],
            "--session-store",
        ),
        (
            vec![
                "--session-store",
                "redis://127.0.0.1:1",
                "--session-store-timeout",
                "0",
            ],
            "--session-store-timeout",
        ),
        (
            vec![
                "--session-store",
                "redis://127.0.0.1:1",
                "--session-store-password-file",
                "/nonexistent/pw",
            ],
            "--session-store-password-file",
        ),
        (
            vec![
                "--session-store",
                "redis://127.0.0.1:1",
                "--resumption",
                "tickets",
            ],
            "--session-store",
        ),
    ] {
        let certs = TestCerts::generate();
        let mut all: Vec<String> = vec![
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--backend".into(),
            "127.0.0.1:9".into(),
        ];
        all.extend(certs.args());
        all.extend(args.iter().map(|s| s.to_string()));
        let out = run_to_exit(&all, Duration::from_secs(10));
        assert_eq!(out.status.code(), Some(64), "{args:?}: {}", out.stderr);
        let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.is_empty()).collect();
        assert!(
            lines.last().is_some_and(|l| l.contains(flag)),
            "{args:?}: {}",
            out.stderr
        );
    }
}

/// A Redis that requires a password, on a UNIX socket, database 2: the
/// password file is read, AUTH and SELECT go first; a wrong password takes
/// the store down (full handshakes, never failed ones).
#[test]
fn auth_over_a_unix_socket_and_a_wrong_password() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("redis.sock");
    let port = free_port();
    let mut child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--unixsocket",
            sock.to_str().unwrap(),
            "--requirepass",
            "s3cret pass",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server");
    assert!(eventually(Duration::from_secs(10), || sock.exists()));
    let good = dir.path().join("good.pass");
    std::fs::write(&good, "s3cret pass\n").unwrap();
    let bad = dir.path().join("bad.pass");
    std::fs::write(&bad, "nope\n").unwrap();
    let url = format!("unix://{}?db=2", sock.display());
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let pw = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let (g, b) = (pw(&good), pw(&bad));
    let a = start_with_store(
        &certs,
        echo.addr,
        &url,
        &["--session-store-password-file", &g],
    );
    let bb = start_with_store(
        &certs,
        echo.addr,
        &url,
        &["--session-store-password-file", &g],
    );
    let wrong = start_with_store(
        &certs,
        echo.addr,
        &url,
        &["--session-store-password-file", &b],
    );
    wait_store_up(&a, 2);
    wait_store_up(&bb, 2);
    let config = resuming(certs.tls12());
    assert_eq!(connect_ping(a.addr(), &config), HandshakeKind::Full);
    assert_eq!(connect_ping(bb.addr(), &config), HandshakeKind::Resumed);
    // The refused AUTH is reported once and counted; handshakes go on.
    // (Its line may come before the startup lines were read, so the whole
    // stderr is looked at, not the messages after them.)
    assert!(eventually(Duration::from_secs(5), || wrong
        .stderr()
        .contains("session store down")));
    let config = resuming(certs.tls12());
    assert_eq!(connect_ping(a.addr(), &config), HandshakeKind::Full);
    assert_eq!(connect_ping(wrong.addr(), &config), HandshakeKind::Full);
    wrong.wait_metric("ringterm_session_store_errors_total", |n| n >= 1);
    no_handshake_failures(&wrong);
    let _ = child.kill();
    let _ = child.wait();
}
