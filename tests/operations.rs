//! Running ringterm day to day: logs (no ANSI off a terminal, JSON lines),
//! systemd notifications (a fake NOTIFY_SOCKET), and upgrades that drop
//! nothing (listening sockets handed over through --upgrade-socket).

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::*;

fn base_args(certs: &TestCerts, backend: std::net::SocketAddr) -> Vec<String> {
    let mut args: Vec<String> = ["--listen", "127.0.0.1:0", "--backend", &backend.to_string()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(certs.args());
    args
}

fn one_worker(certs: &TestCerts, backend: std::net::SocketAddr) -> Vec<String> {
    let mut args = base_args(certs, backend);
    args.extend(["--workers".to_owned(), "1".to_owned()]);
    args
}

/// With stderr a file (as under systemd or `2>log`), no line carries an
/// escape code, and the startup lines name each listener and the workers.
#[test]
fn logs_to_a_file_have_no_escape_codes() {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let mut child = Command::new(bin())
        .args(one_worker(&certs, echo.addr))
        .args(["--admin", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    let started = eventually(Duration::from_secs(10), || read().contains(" ready "));
    let _ = child.kill();
    let _ = child.wait();
    let text = read();
    assert!(started, "no ready line: {text}");
    assert!(
        !text.contains('\x1b'),
        "escape codes in a log file: {text:?}"
    );
    let listening = text
        .lines()
        .find(|l| l.contains(" listening on 127.0.0.1:") && !l.contains("admin"))
        .unwrap_or_else(|| panic!("no listening line: {text}"));
    assert!(
        listening.contains("INFO") && listening.contains("listener=0 workers=1"),
        "{listening}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("admin listening on 127.0.0.1:")),
        "{text}"
    );
    // Loopback admin: no warning about it.
    assert!(!text.contains("not a loopback address"), "{text}");
}

/// `--log-format json`: every line is a JSON object with a level, a
/// message and the event's fields; a bad format is one exit-64 line.
#[test]
fn json_log_lines_parse() {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let mut child = Command::new(bin())
        .args(one_worker(&certs, echo.addr))
        .args(["--log-format", "json", "--admin", "0.0.0.0:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let pipe = child.stderr.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(10)) {
        let done = line.contains("\"message\":\"ready\"");
        lines.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let objects: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    let ready = objects
        .iter()
        .find(|o| o["message"] == "ready")
        .unwrap_or_else(|| panic!("no ready line: {lines:?}"));
    assert_eq!(ready["level"], "INFO");
    assert_eq!(ready["workers"], 1);
    assert!(ready["timestamp"].is_string(), "{ready}");
    let listening = objects
        .iter()
        .find(|o| {
            o["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("listening on 127.0.0.1:"))
        })
        .unwrap_or_else(|| panic!("no listening line: {lines:?}"));
    assert_eq!(listening["listener"], 0);
    assert_eq!(listening["workers"], 1);
    // An admin endpoint off loopback is warned about.
    assert!(
        objects
            .iter()
            .any(|o| o["level"] == "WARN" && o["message"].as_str().unwrap().contains("loopback")),
        "{lines:?}"
    );

    let out = run_to_exit(
        &["demo", "--listen", "127.0.0.1:0", "--log-format", "xml"],
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(
        out.stderr.starts_with("ringterm: --log-format: ") && out.stderr.lines().count() == 1,
        "{out:?}"
    );
}

/// A fake systemd notification socket.
struct Notify {
    sock: UnixDatagram,
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

impl Notify {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        Self {
            sock,
            _dir: dir,
            path,
        }
    }

    /// The next message, as text.
    fn next(&self) -> String {
        let mut buf = [0u8; 4096];
        let n = self.sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// Messages until one contains `want`; returns them all.
    fn until(&self, want: &str) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let m = self.next();
            let done = m.lines().any(|l| l == want);
            seen.push(m);
            if done {
                return seen;
            }
        }
    }
}

fn command_with_notify(args: &[String], notify: &Path) -> Command {
    let mut cmd = Command::new(bin());
    cmd.args(args).env("NOTIFY_SOCKET", notify);
    cmd
}

/// READY=1 once serving, RELOADING=1 then READY=1 with the result around a
/// SIGHUP reload, STOPPING=1 when the drain starts.
#[test]
fn sd_notify_ready_reloading_stopping() {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let notify = Notify::new();
    let rt = Ringterm::spawn_until(
        command_with_notify(&one_worker(&certs, echo.addr), &notify.path),
        |m| m.starts_with("ready"),
    );
    let ready = notify.next();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(
        ready.contains("STATUS=serving 1 listener(s) with 1 workers"),
        "{ready:?}"
    );
    assert!(!ready.contains("MAINPID="), "{ready:?}");

    send_signal(rt.child.id(), "HUP");
    let reloading = notify.next();
    assert!(
        reloading.lines().any(|l| l == "RELOADING=1") && reloading.contains("MONOTONIC_USEC="),
        "{reloading:?}"
    );
    let reloaded = notify.next();
    assert!(
        reloaded.lines().any(|l| l == "READY=1") && reloaded.contains("STATUS=reload: done"),
        "{reloaded:?}"
    );

    // A reload that fails says so (the certificate is gone).
    std::fs::remove_file(certs.cert()).unwrap();
    send_signal(rt.child.id(), "HUP");
    let seen = notify.until("READY=1");
    assert!(
        seen.last().unwrap().contains("STATUS=reload failed"),
        "{seen:?}"
    );

    send_signal(rt.child.id(), "TERM");
    let stopping = notify.next();
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
}

/// Counts of a client loop.
#[derive(Default)]
struct LoadCounts {
    ok: AtomicU64,
    errors: Mutex<Vec<String>>,
}

/// Full handshakes, one echo each, until `stop`.
fn client_loop(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
    stop: Arc<AtomicBool>,
    counts: Arc<LoadCounts>,
) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let payload = format!("request {n}");
        let result = TlsDuplex::connect(addr, config.clone())
            .map(|c| echo_roundtrip(&c, payload.as_bytes()));
        match result {
            Ok((got, TlsEnd::CloseNotify)) if got == payload.as_bytes() => {
                counts.ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok((got, end)) => counts
                .errors
                .lock()
                .unwrap()
                .push(format!("{} bytes back, then {end:?}", got.len())),
            Err(e) => counts.errors.lock().unwrap().push(e.to_string()),
        }
    }
}

/// Kills a process by id when dropped (one the test did not spawn itself).
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // The shell's kill builtin: no procps needed.
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!("kill -KILL {}", self.0))
            .status();
    }
}

/// Several consecutive upgrades under bounded load: every new process takes
/// the listening sockets over, every client succeeds (no refused, no reset
/// connection), and a connection established before each upgrade finishes
/// on the old process, which then exits 0.
#[test]
fn consecutive_upgrades_under_load_drop_nothing() {
    const UPGRADES: usize = 5;
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let dir = tempfile::tempdir().unwrap();
    let upgrade_sock = dir.path().join("upgrade.sock");
    let mut args = base_args(&certs, echo.addr);
    args.extend([
        "--workers".to_owned(),
        "2".to_owned(),
        "--admin".to_owned(),
        "127.0.0.1:0".to_owned(),
        "--upgrade-socket".to_owned(),
        upgrade_sock.display().to_string(),
    ]);
    let mut current = Ringterm::start(&args);
    let addr = current.addr();
    let admin = current.admin();
    let config = certs.tls13();

    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(LoadCounts::default());
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let (config, stop, counts) = (config.clone(), stop.clone(), counts.clone());
            thread::spawn(move || client_loop(addr, config, stop, counts))
        })
        .collect();

    for round in 0..UPGRADES {
        // Load runs across every round: wait for new client connections.
        let before = counts.ok.load(Ordering::Relaxed);
        assert!(
            eventually(Duration::from_secs(20), || {
                counts.ok.load(Ordering::Relaxed) >= before + 10
                    || !counts.errors.lock().unwrap().is_empty()
            }),
            "round {round}: the clients made no progress"
        );
        // Established on the current process, through to the backend.
        let held = TlsDuplex::connect(addr, config.clone()).expect("held connection");
        held.write_all(b"x").unwrap();
        let mut one = [0u8; 1];
        assert_eq!(held.read(&mut one).unwrap(), 1);

        let next = Ringterm::start(&args);
        assert_eq!(next.addr(), addr, "round {round}: same port");
        assert_eq!(next.admin(), admin, "round {round}: same admin port");
        assert!(
            current
                .wait_log(Duration::from_secs(10), |m| m
                    .starts_with("upgrade: handed over"))
                .is_some(),
            "round {round}: the old process never handed over: {}",
            current.stderr()
        );
        // The old process drains but stays for the held connection.
        assert!(
            current.child.try_wait().unwrap().is_none(),
            "round {round}: the old process left with a connection open: {}",
            current.stderr()
        );
        let (got, end) = echo_roundtrip(&held, b"after the upgrade");
        assert_eq!(got, b"after the upgrade", "round {round}");
        assert_eq!(end, TlsEnd::CloseNotify, "round {round}");
        drop(held);
        let exited = eventually(Duration::from_secs(15), || {
            current.child.try_wait().unwrap().is_some()
        });
        assert!(
            exited,
            "round {round}: the old process did not exit: {}",
            current.stderr()
        );
        let status = current.child.wait().unwrap();
        assert_eq!(
            status.code(),
            Some(0),
            "round {round}: {}",
            current.stderr()
        );
        assert!(
            current
                .stderr()
                .contains("drained: every connection finished"),
            "round {round}: {}",
            current.stderr()
        );
        current = next;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let errors = counts.errors.lock().unwrap();
    let ok = counts.ok.load(Ordering::Relaxed);
    eprintln!(
        "{UPGRADES} upgrades: {ok} client connections, {} errors",
        errors.len()
    );
    assert!(
        errors.is_empty(),
        "client errors across upgrades: {errors:?}"
    );
    assert!(ok > 0);
    assert_echo(addr, config, b"still serving");
    current.assert_alive();
}

/// SIGUSR2 starts the successor itself (same binary and arguments, same
/// environment): it takes over, tells systemd it is the main process now
/// and ready; the old one drains and exits 0 without saying STOPPING.
#[test]
fn sigusr2_starts_the_successor() {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let dir = tempfile::tempdir().unwrap();
    let notify = Notify::new();
    let mut args = one_worker(&certs, echo.addr);
    args.extend([
        "--upgrade-socket".to_owned(),
        dir.path().join("upgrade.sock").display().to_string(),
    ]);
    let mut old = Ringterm::spawn_until(command_with_notify(&args, &notify.path), |m| {
        m.starts_with("ready")
    });
    let addr = old.addr();
    let first = notify.next();
    assert!(first.lines().any(|l| l == "READY=1"), "{first:?}");

    send_signal(old.child.id(), "USR2");
    let started = old
        .wait_log(Duration::from_secs(10), |m| {
            m.starts_with("upgrade: started the new process")
        })
        .unwrap_or_else(|| panic!("no successor: {}", old.stderr()));
    let pid: u32 = started
        .split("pid=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {started:?}"));
    let _successor = KillOnDrop(pid);
    let seen = notify.until("READY=1");
    let ready = seen.last().unwrap();
    assert!(ready.contains(&format!("MAINPID={pid}")), "{seen:?}");

    let exited = eventually(Duration::from_secs(15), || {
        old.child.try_wait().unwrap().is_some()
    });
    assert!(exited, "the old process did not exit: {}", old.stderr());
    assert_eq!(
        old.child.wait().unwrap().code(),
        Some(0),
        "{}",
        old.stderr()
    );
    assert_echo(addr, certs.tls13(), b"served by the successor");
    notify.sock.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    while let Ok(n) = notify.sock.recv(&mut buf) {
        let m = String::from_utf8_lossy(&buf[..n]);
        assert!(!m.contains("STOPPING=1"), "{m:?}");
    }
}

/// The admin endpoint serves at most 16 connections at once: with 16 idle
/// ones open, the next is answered 503 at once; once they close, scrapes
/// work again.
#[test]
fn admin_connections_are_capped() {
    use std::io::Read;
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let rt = start_ringterm(&certs, echo.addr, &[]);
    let admin = rt.admin();
    let idle: Vec<std::net::TcpStream> = (0..16).map(|_| tcp_connect(admin)).collect();
    // Nothing sent: the answer comes at accept (a request left unread
    // could turn the close into a reset).
    let mut over = tcp_connect(admin);
    let mut answer = String::new();
    over.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 503 "),
        "over the cap: {answer:?}"
    );
    drop(idle);
    // Until the admin thread has seen the idle ones close, a request may
    // still meet the cap (a 503 and a close, possibly a reset).
    let healthy = || {
        let mut s = std::net::TcpStream::connect(admin).ok()?;
        set_timeouts(&s, Duration::from_secs(5));
        std::io::Write::write_all(
            &mut s,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .ok()?;
        let mut raw = String::new();
        s.read_to_string(&mut raw).ok()?;
        Some(raw.starts_with("HTTP/1.1 200 "))
    };
    assert!(
        eventually(Duration::from_secs(10), || healthy() == Some(true)),
        "the admin endpoint did not recover"
    );
}

/// A new process that fails after taking the sockets (here: a second
/// `--listen` address already in use) exits 64; the old process keeps
/// serving and hands over to the next attempt.
#[test]
fn a_failed_takeover_leaves_the_old_process_serving() {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let dir = tempfile::tempdir().unwrap();
    let mut args = one_worker(&certs, echo.addr);
    args.extend([
        "--upgrade-socket".to_owned(),
        dir.path().join("upgrade.sock").display().to_string(),
    ]);
    let mut old = Ringterm::start(&args);
    let addr = old.addr();

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    let mut bad = args.clone();
    bad.extend(["--listen".to_owned(), busy_addr.clone()]);
    let out = run_to_exit(&bad, Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(
        out.stderr
            .starts_with(&format!("ringterm: --listen {busy_addr}: "))
            && out.stderr.lines().count() == 1,
        "{out:?}"
    );
    assert!(
        old.wait_log(Duration::from_secs(10), |m| m
            .starts_with("upgrade: hand-over failed, still serving"))
            .is_some(),
        "{}",
        old.stderr()
    );
    old.assert_alive();
    assert_echo(addr, certs.tls13(), b"still the old process");

    let next = Ringterm::start(&args);
    assert_eq!(next.addr(), addr);
    let exited = eventually(Duration::from_secs(15), || {
        old.child.try_wait().unwrap().is_some()
    });
    assert!(exited, "the old process did not exit: {}", old.stderr());
    assert_eq!(
        old.child.wait().unwrap().code(),
        Some(0),
        "{}",
        old.stderr()
    );
    assert_echo(addr, certs.tls13(), b"the new process");
}
