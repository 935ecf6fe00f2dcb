//! Backends beyond `IP:PORT`: UNIX sockets (`unix:/path`) and host names
//! (every address used); per-backend counters and the up/down gauge on
//! /metrics, ejection and reinstatement at warn; active health checks.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::time::Duration;

use common::*;

/// An echo server on a UNIX socket at `path`.
fn unix_echo(path: &std::path::Path) {
    let l = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => {
                            let _ = s.shutdown(std::net::Shutdown::Write);
                            return;
                        }
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
}

#[test]
fn a_unix_socket_backend_relays_both_ways() {
    let certs = TestCerts::generate();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.sock");
    unix_echo(&path);
    let mut args = vec!["--backend".to_owned(), format!("unix:{}", path.display())];
    args.extend(certs.args());
    let rt = start_ringterm_args(&args);
    for tls in [certs.tls13(), certs.tls12()] {
        assert_echo(rt.addr(), tls, &random_bytes(200_000));
    }
    let text = rt.metrics();
    let name = format!(
        "ringterm_backend_connects_total{{backend=\"unix:{}\"}}",
        path.display()
    );
    assert_eq!(metric_sum(&text, &name), 2, "{text}");
}

#[test]
fn a_missing_unix_socket_is_a_refused_backend() {
    let certs = TestCerts::generate();
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec![
        "--backend".to_owned(),
        format!("unix:{}", dir.path().join("none.sock").display()),
    ];
    args.extend(certs.args());
    let rt = start_ringterm_args(&args);
    let mut s = tls_connect(rt.addr(), certs.tls13()).expect("tls connect");
    let _ = s.write_all(b"x");
    let _ = tls_read_to_end(&mut s);
    rt.wait_metric("ringterm_backend_connect_failures_total", |n| n >= 1);
}

#[test]
fn a_host_name_backend_resolves_and_every_address_is_used() {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let mut args = vec![
        "--backend".to_owned(),
        format!("localhost:{}", echo.addr.port()),
    ];
    args.extend(certs.args());
    let rt = start_ringterm_args(&args);
    // Whatever `localhost` resolves to (127.0.0.1, maybe ::1 where nothing
    // listens), every connection reaches the echo backend (a refused
    // address is retried on the next one).
    for _ in 0..4 {
        assert_echo(rt.addr(), certs.tls13(), b"over a resolved name");
    }
    let text = rt.metrics();
    let v4 = format!(
        "ringterm_backend_up{{backend=\"127.0.0.1:{}\"}}",
        echo.addr.port()
    );
    assert!(metric_opt(&text, &v4, 0).is_some(), "{text}");
    // A reload resolves the name again (same addresses: nothing changes).
    send_signal(rt.child.id(), "HUP");
    assert!(rt
        .wait_log(Duration::from_secs(10), |m| m
            .contains("backend host names resolved again"))
        .is_some());
    assert_echo(rt.addr(), certs.tls13(), b"after the reload");

    // A name that does not resolve is a startup error naming the flag.
    let out = run_to_exit(
        &[
            "--listen",
            "127.0.0.1:0",
            "--backend",
            "no-such-host.invalid:80",
            "--cert",
            &certs.cert(),
            "--key",
            &certs.key(),
        ],
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("--backend no-such-host.invalid:80"),
        "{}",
        out.stderr
    );
}

#[test]
fn per_backend_counters_and_gauge_and_ejection_at_warn() {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let refused = refused_addr();
    let mut args = vec![
        "--backend".to_owned(),
        refused.to_string(),
        "--backend".to_owned(),
        echo.addr.to_string(),
    ];
    args.extend(certs.args());
    let rt = start_ringterm_args(&args);
    for _ in 0..4 {
        assert_echo(rt.addr(), certs.tls13(), b"ping");
    }
    let m = |family: &str, b: std::net::SocketAddr| format!("ringterm_{family}{{backend=\"{b}\"}}");
    let text = rt.metrics();
    assert_eq!(
        metric_sum(&text, &m("backend_connects_total", echo.addr)),
        4,
        "{text}"
    );
    assert_eq!(metric_sum(&text, &m("backend_connects_total", refused)), 0);
    assert!(
        metric_sum(&text, &m("backend_failures_total", refused)) >= 1,
        "{text}"
    );
    assert_eq!(
        metric_sum(&text, &m("backend_ejections_total", refused)),
        1,
        "{text}"
    );
    assert_eq!(metric_sum(&text, &m("backend_up", refused)), 0, "{text}");
    assert_eq!(metric_sum(&text, &m("backend_up", echo.addr)), 1, "{text}");
    let err = rt.stderr();
    assert!(
        err.lines().any(|l| l.contains("WARN")
            && l.contains("backend ejected")
            && l.contains(&refused.to_string())),
        "{err}"
    );
}

#[test]
fn a_health_check_marks_a_dead_backend_down_then_up() {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let dead = refused_addr();
    let mut args = vec![
        "--backend".to_owned(),
        echo.addr.to_string(),
        "--backend".to_owned(),
        dead.to_string(),
        "--health-check-interval".to_owned(),
        "50".to_owned(),
    ];
    args.extend(certs.args());
    let rt = start_ringterm_args(&args);
    let up = format!("ringterm_backend_up{{backend=\"{dead}\"}}");
    // Down with no client traffic at all: the checks found it.
    rt.wait_metric(&up, |v| v == 0);
    assert!(rt
        .wait_log(Duration::from_secs(5), |m| m.contains("backend ejected"))
        .is_some());
    // Every connection now goes to the live backend, none is retried.
    for _ in 0..4 {
        assert_echo(rt.addr(), certs.tls13(), b"ping");
    }
    let text = rt.metrics();
    assert_eq!(
        metric_sum(&text, "ringterm_backend_retries_total"),
        0,
        "{text}"
    );
    // It comes back: up after two good checks.
    let _back = echo_on(TcpListener::bind(dead).expect("rebind the dead port"));
    rt.wait_metric(&up, |v| v == 1);
    assert!(rt
        .wait_log(Duration::from_secs(5), |m| m.contains("backend reinstated"))
        .is_some());
}
