//! Runtime edge features: the idle timeout, the per-worker connection
//! limit, the graceful drain on SIGTERM/SIGINT, and the privilege drop.
//! Every loop here is bounded in time and count.

mod common;

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use sha2::{Digest, Sha256};

/// Reads exactly `n` plaintext bytes from `client` (panics on EOF/error).
fn read_n(client: &TlsDuplex, n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match client.read(&mut out[got..]) {
            Ok(0) => panic!("connection closed after {got} of {n} bytes"),
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read failed after {got} of {n} bytes: {e}"),
        }
    }
    out
}

/// Reads `client` until it ends (bounded by `within` through the socket
/// timeout); returns how it ended and how long that took.
fn tls_end_within(client: &TlsDuplex, within: Duration) -> (TlsEnd, Duration) {
    set_timeouts(&client.sock, within);
    let start = Instant::now();
    let mut r = client;
    let (_, end) = tls_read_to_end(&mut r);
    (end, start.elapsed())
}

/// `text` without ANSI escape sequences (the log may be coloured).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ ... final byte in @..~
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Waits up to `within` for the child to exit.
fn wait_exit(rt: &mut Ringterm, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = rt.child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Whether a TCP connect to `addr` is refused within `within` (connects
/// that still succeed, before every listener is closed, are dropped).
fn connect_refused_within(addr: std::net::SocketAddr, within: Duration) -> bool {
    eventually(within, || {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Err(e) => e.kind() == io::ErrorKind::ConnectionRefused,
            Ok(_) => false,
        }
    })
}

// ---------------------------------------------------------------------------
// 1. Idle timeout
// ---------------------------------------------------------------------------

/// An idle connection is closed (with close_notify) at about the idle
/// timeout, while one that sends a small message every 100 ms for 1.5 s
/// stays open and loses no byte.
#[test]
fn idle_connection_closed_busy_one_kept() {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let mut rt = start_ringterm(&certs, echo.addr, &["--idle-timeout", "500"]);

    let busy = TlsDuplex::connect(rt.addr(), certs.tls13()).expect("busy connect");
    let idle = TlsDuplex::connect(rt.addr(), certs.tls12()).expect("idle connect");

    thread::scope(|scope| {
        let busy_side = scope.spawn(|| {
            let mut sent = Vec::new();
            let mut got = Vec::new();
            let start = Instant::now();
            let mut i = 0u32;
            while start.elapsed() < Duration::from_millis(1500) && i < 100 {
                let msg = format!("message {i} at {:?}\n", start.elapsed());
                busy.write_all(msg.as_bytes()).expect("busy write");
                got.extend(read_n(&busy, msg.len()));
                sent.extend_from_slice(msg.as_bytes());
                i += 1;
                thread::sleep(Duration::from_millis(100));
            }
            (sent, got, i)
        });

        let (end, took) = tls_end_within(&idle, Duration::from_secs(5));
        assert_eq!(
            end,
            TlsEnd::CloseNotify,
            "the idle connection should end with close_notify (after {took:?})"
        );
        assert!(
            took >= Duration::from_millis(400) && took <= Duration::from_secs(3),
            "idle connection closed after {took:?}, expected ~500 ms"
        );

        let (sent, got, messages) = busy_side.join().expect("busy thread");
        assert!(messages >= 10, "only {messages} messages in 1.5 s");
        assert_eq!(got, sent, "the busy connection's echo differs");
    });

    // The busy connection is still open and still works after 1.5 s.
    let (rest, end) = echo_roundtrip(&busy, b"still here");
    assert_eq!(rest, b"still here");
    assert_eq!(end, TlsEnd::CloseNotify);

    let text = rt.wait_metric("ringterm_active", |n| n == 0);
    assert_eq!(metric_sum(&text, "ringterm_idle_timeouts_total"), 1);
    assert_eq!(metric_sum(&text, "ringterm_connection_errors_total"), 0);
    rt.assert_alive();
}

/// The idle deadline also cancels the backend side: a backend that never
/// reads stalls the relay (a backend write stuck, no client read in
/// flight), and the connection is still closed at the idle timeout, on
/// both sides.
#[test]
fn idle_timeout_ends_a_stalled_backend_write() {
    let certs = TestCerts::generate();
    let (closed_tx, closed_rx) = std::sync::mpsc::channel::<Duration>();
    let closed_tx = std::sync::Mutex::new(closed_tx);
    // Never reads until ringterm closes; then reports how long it held.
    let backend = spawn_backend(move |s: TcpStream| {
        let start = Instant::now();
        thread::sleep(Duration::from_millis(1500));
        // Ringterm should have closed by now: reading drains the buffered
        // bytes and then sees EOF or a reset.
        set_timeouts(&s, Duration::from_secs(10));
        let mut buf = vec![0u8; 256 * 1024];
        let mut r = &s;
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let _ = closed_tx.lock().unwrap().send(start.elapsed());
    });
    let mut rt = start_ringterm(&certs, backend, &["--idle-timeout", "500"]);
    let client = TlsDuplex::connect(rt.addr(), certs.tls13()).expect("connect");
    set_timeouts(&client.sock, Duration::from_secs(5));
    let chunk = random_bytes(64 * 1024);
    let start = Instant::now();
    let mut sent = 0usize;
    // Push until the path fills and ringterm cuts the connection.
    let err = loop {
        if start.elapsed() > Duration::from_secs(15) || sent > 512 << 20 {
            panic!("still writing after {:?} ({sent} bytes)", start.elapsed());
        }
        match client.write_all(&chunk) {
            Ok(()) => sent += chunk.len(),
            Err(e) => break e,
        }
    };
    assert!(
        !matches!(
            err.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ),
        "the write stalled instead of failing: {err}"
    );
    let backend_held = closed_rx
        .recv_timeout(Duration::from_secs(15))
        .expect("the backend connection should be closed");
    assert!(backend_held < Duration::from_secs(12), "{backend_held:?}");
    let text = rt.wait_metric("ringterm_active", |n| n == 0);
    assert_eq!(metric_sum(&text, "ringterm_idle_timeouts_total"), 1);
    rt.assert_alive();
}

// ---------------------------------------------------------------------------
// 2. --max-connections
// ---------------------------------------------------------------------------

#[test]
fn max_connections_rejects_the_extra_connection() {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let mut rt = start_ringterm(
        &certs,
        echo.addr,
        &["--workers", "1", "--max-connections", "3"],
    );
    let held: Vec<TlsDuplex> = (0..3)
        .map(|i| {
            let c = TlsDuplex::connect(rt.addr(), certs.tls13()).expect("connect");
            let msg = format!("held {i}");
            c.write_all(msg.as_bytes()).unwrap();
            assert_eq!(read_n(&c, msg.len()), msg.as_bytes());
            c
        })
        .collect();
    rt.wait_metric("ringterm_active", |n| n == 3);

    // The fourth: closed at once, no handshake (nothing comes back).
    let mut s = tcp_connect(rt.addr());
    let _ = s.write_all(&client_hello_bytes(certs.tls13()));
    let (how, got, took) =
        wait_closed(&mut s, Duration::from_secs(2)).expect("the 4th connection stayed open");
    assert!(got.is_empty(), "got {} bytes ({how:?})", got.len());
    assert!(took < Duration::from_secs(2), "{took:?}");
    let text = rt.wait_metric("ringterm_rejected_max_connections_total", |n| n == 1);
    assert_eq!(metric_sum(&text, "ringterm_active"), 3);

    // Close one: a new connection works.
    let first = &held[0];
    let (_, end) = echo_roundtrip(first, b"bye");
    assert_eq!(end, TlsEnd::CloseNotify);
    rt.wait_metric("ringterm_active", |n| n == 2);
    assert_echo(rt.addr(), certs.tls13(), b"room again");
    let text = rt.metrics();
    assert_eq!(
        metric_sum(&text, "ringterm_rejected_max_connections_total"),
        1
    );
    // The held ones still work.
    for c in &held[1..] {
        c.write_all(b"ping").unwrap();
        assert_eq!(read_n(c, 4), b"ping");
    }
    rt.assert_alive();
}

// ---------------------------------------------------------------------------
// 3. Graceful drain
// ---------------------------------------------------------------------------

/// (a) A 10 MiB transfer in flight when SIGTERM arrives completes intact;
/// new connections are refused right after SIGTERM; the process exits 0
/// once the transfer is done, with the shutdown summary.
#[test]
fn drain_lets_a_transfer_finish_and_refuses_new_connections() {
    const TOTAL: usize = 10 << 20;
    const CHUNK: usize = 64 * 1024;
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let mut rt = start_ringterm(&certs, echo.addr, &["--workers", "2"]);
    let addr = rt.addr();
    let payload = random_bytes(TOTAL);
    let client = TlsDuplex::connect(addr, certs.tls13()).expect("connect");
    let progress = AtomicUsize::new(0);
    let writing_done = AtomicBool::new(false);

    thread::scope(|scope| {
        let writer = scope.spawn(|| {
            for chunk in payload.chunks(CHUNK) {
                client.write_all(chunk)?;
                progress.fetch_add(chunk.len(), Ordering::Release);
                thread::sleep(Duration::from_millis(8));
            }
            writing_done.store(true, Ordering::Release);
            client.close_write()
        });
        let reader = scope.spawn(|| {
            let mut hasher = Sha256::new();
            let mut len = 0usize;
            let mut buf = vec![0u8; 64 * 1024];
            let end = loop {
                match client.read(&mut buf) {
                    Ok(0) => break TlsEnd::CloseNotify,
                    Ok(n) => {
                        hasher.update(&buf[..n]);
                        len += n;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break TlsEnd::Error(format!("{:?}: {e}", e.kind())),
                }
            };
            (len, <[u8; 32]>::from(hasher.finalize()), end)
        });

        // SIGTERM once about 1 MiB went out.
        assert!(
            eventually(Duration::from_secs(10), || progress.load(Ordering::Acquire)
                >= 1 << 20),
            "the transfer did not start"
        );
        send_signal(rt.child.id(), "TERM");
        let signalled_at = progress.load(Ordering::Acquire);
        assert!(
            connect_refused_within(addr, Duration::from_secs(3)),
            "new connections still accepted 3 s after SIGTERM"
        );
        assert!(
            !writing_done.load(Ordering::Acquire),
            "the transfer finished before new connections were refused: test too fast"
        );
        assert!(signalled_at < TOTAL);
        assert!(
            rt.child.try_wait().unwrap().is_none(),
            "ringterm exited during the transfer"
        );

        writer
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("writing failed during the drain: {e}"));
        let (len, sha, end) = reader.join().unwrap();
        assert_eq!(len, TOTAL, "echoed length ({end:?})");
        assert!(sha == sha256(&payload), "echoed bytes differ");
        assert_eq!(end, TlsEnd::CloseNotify);
    });

    let status = wait_exit(&mut rt, Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no exit 5 s after the transfer; stderr: {}", rt.stderr()));
    assert!(status.success(), "{status:?}; stderr: {}", rt.stderr());
    thread::sleep(Duration::from_millis(100));
    let err = strip_ansi(&rt.stderr());
    assert!(err.contains("latency summary at shutdown"), "{err}");
    assert!(err.contains("drained"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// (b) With `--drain-timeout 300`, a held idle connection is cut (with
/// close_notify) and the process exits 0 within ~2 s of SIGTERM.
#[test]
fn drain_timeout_cuts_held_connections() {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let mut rt = start_ringterm(&certs, echo.addr, &["--drain-timeout", "300"]);
    let held = TlsDuplex::connect(rt.addr(), certs.tls13()).expect("connect");
    held.write_all(b"hello").unwrap();
    assert_eq!(read_n(&held, 5), b"hello");
    rt.wait_metric("ringterm_active", |n| n == 1);

    let t0 = Instant::now();
    send_signal(rt.child.id(), "TERM");
    let (end, took) = tls_end_within(&held, Duration::from_secs(5));
    assert_eq!(end, TlsEnd::CloseNotify, "after {took:?}");
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(2),
        "held connection closed {took:?} after SIGTERM"
    );
    let status = wait_exit(&mut rt, Duration::from_secs(3))
        .unwrap_or_else(|| panic!("no exit 3 s after SIGTERM; stderr: {}", rt.stderr()));
    assert!(
        t0.elapsed() < Duration::from_millis(2500),
        "{:?}",
        t0.elapsed()
    );
    assert!(status.success(), "{status:?}; stderr: {}", rt.stderr());
    thread::sleep(Duration::from_millis(100));
    let err = strip_ansi(&rt.stderr());
    assert!(err.contains("cut=1 still_open=0"), "{err}");
    assert!(err.contains("latency summary at shutdown"), "{err}");
}

/// A second SIGINT during the drain exits at once, with status 0.
#[test]
fn second_signal_exits_at_once() {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let mut rt = start_ringterm(&certs, echo.addr, &["--drain-timeout", "60000"]);
    let held = TlsDuplex::connect(rt.addr(), certs.tls13()).expect("connect");
    held.write_all(b"x").unwrap();
    assert_eq!(read_n(&held, 1), b"x");
    send_signal(rt.child.id(), "INT");
    thread::sleep(Duration::from_millis(300));
    assert!(
        rt.child.try_wait().unwrap().is_none(),
        "exited before the drain timeout with a connection open"
    );
    let t0 = Instant::now();
    send_signal(rt.child.id(), "INT");
    let status = wait_exit(&mut rt, Duration::from_secs(3))
        .unwrap_or_else(|| panic!("no exit after a second SIGINT; stderr: {}", rt.stderr()));
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert!(status.success(), "{status:?}; stderr: {}", rt.stderr());
}

// ---------------------------------------------------------------------------
// 4. --user / --group
// ---------------------------------------------------------------------------

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
}

/// The id of `name` in an /etc/passwd- or /etc/group-style file.
fn id_in(file: &str, name: &str) -> Option<u32> {
    std::fs::read_to_string(file).ok()?.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next() == Some(name)).then(|| f.nth(1)?.parse().ok())?
    })
}

#[test]
fn user_and_group_drop_privileges() {
    if !is_root() {
        eprintln!("skipped: not running as root");
        return;
    }
    let (Some(uid), Some(gid)) = (
        id_in("/etc/passwd", "nobody"),
        id_in("/etc/group", "nogroup"),
    ) else {
        eprintln!("skipped: no nobody user or nogroup group");
        return;
    };
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let mut rt = start_ringterm(
        &certs,
        echo.addr,
        &["--workers", "2", "--user", "nobody", "--group", "nogroup"],
    );
    let pid = rt.child.id();
    let tasks: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    // Main, admin, two workers at least.
    assert!(tasks.len() >= 4, "{} threads", tasks.len());
    for task in &tasks {
        let status = std::fs::read_to_string(task.join("status")).unwrap();
        let line = |key: &str| {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .unwrap_or_else(|| panic!("no {key} in {task:?}"))
                .split_whitespace()
                .skip(1)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(line("Uid:"), vec![uid.to_string(); 4], "{task:?}");
        assert_eq!(line("Gid:"), vec![gid.to_string(); 4], "{task:?}");
        assert!(line("Groups:").is_empty(), "{task:?}: supplementary groups");
    }
    assert_echo(rt.addr(), certs.tls13(), b"served as nobody");
    assert_echo(rt.addr(), certs.tls12(), &random_bytes(200_000));
    rt.assert_alive();
}

#[test]
fn unknown_user_or_group_exits_64() {
    let certs = TestCerts::generate();
    for (flag, name, what) in [
        ("--user", "no-such-user-ringterm", "user"),
        ("--group", "no-such-group-ringterm", "group"),
    ] {
        let mut args = vec![
            "--listen",
            "127.0.0.1:0",
            "--backend",
            "127.0.0.1:9",
            flag,
            name,
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        args.extend(certs.args());
        let out = run_to_exit(&args, Duration::from_secs(10));
        assert_eq!(out.status.code(), Some(64), "{out:?}");
        assert_eq!(
            out.stderr.trim_end(),
            format!("ringterm: {flag} {name}: no such {what}"),
            "{out:?}"
        );
        assert!(out.stdout.is_empty(), "{out:?}");
    }
}

/// Not root: `--user` is an error naming the flag. Runs the binary as
/// nobody through `setpriv` when that works here.
#[test]
fn user_without_root_exits_64() {
    if !is_root() {
        // Already unprivileged: no need for setpriv.
        let out = run_to_exit(
            &[
                "demo",
                "--listen",
                "127.0.0.1:0",
                "--user",
                "nobody",
                "--log-level",
                "off",
            ],
            Duration::from_secs(10),
        );
        assert_eq!(out.status.code(), Some(64), "{out:?}");
        assert!(
            out.stderr.starts_with("ringterm: --user nobody: "),
            "{out:?}"
        );
        return;
    }
    let Some(uid) = id_in("/etc/passwd", "nobody") else {
        eprintln!("skipped: no nobody user");
        return;
    };
    let setpriv_works = std::process::Command::new("setpriv")
        .args([
            format!("--reuid={uid}"),
            format!("--regid={uid}"),
            "--clear-groups".into(),
            bin().into(),
            "--version".into(),
        ])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !setpriv_works {
        eprintln!("skipped: cannot run the binary as nobody with setpriv");
        return;
    }
    let args: Vec<String> = vec![
        format!("--reuid={uid}"),
        format!("--regid={uid}"),
        "--clear-groups".into(),
        bin().into(),
        "demo".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--user".into(),
        "nobody".into(),
        "--log-level".into(),
        "off".into(),
    ];
    let out = run_bin_to_exit("setpriv", &args, Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(
        out.stderr.starts_with("ringterm: --user nobody: ") && out.stderr.lines().count() == 1,
        "{out:?}"
    );
}
