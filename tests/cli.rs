//! The command line: every startup error exits with code 64 and one line on
//! stderr naming the culprit; `--help` exits 0; a TOML config file works and
//! flags override it.

mod common;

use std::net::TcpListener;
use std::time::Duration;

use common::*;

const EX_USAGE: i32 = 64;

/// Runs ringterm with `args`, expecting exit 64 and a single stderr line
/// that starts with `ringterm: ` and contains every string in `culprits`.
fn expect_usage_error(args: &[String], culprits: &[&str]) -> String {
    let out = run_to_exit(args, Duration::from_secs(10));
    assert_eq!(
        out.status.code(),
        Some(EX_USAGE),
        "ringterm {args:?}: expected exit 64, got {:?}; stderr: {:?}",
        out.status,
        out.stderr
    );
    assert!(
        !out.stderr.contains("panicked"),
        "ringterm {args:?} panicked: {}",
        out.stderr
    );
    assert!(
        out.stderr.ends_with('\n') && out.stderr.lines().count() == 1,
        "ringterm {args:?}: stderr should be exactly one line: {:?}",
        out.stderr
    );
    let line = out.stderr.trim_end();
    assert!(
        line.starts_with("ringterm: "),
        "ringterm {args:?}: {line:?}"
    );
    for c in culprits {
        assert!(
            line.contains(c),
            "ringterm {args:?}: {line:?} should name {c:?}"
        );
    }
    assert!(
        !out.stderr.contains("listening on"),
        "ringterm {args:?} should fail before listening: {:?}",
        out.stderr
    );
    line.to_owned()
}

/// Valid base arguments: listen, backend, cert, key, one worker.
fn base(certs: &TestCerts) -> Vec<String> {
    let mut v: Vec<String> = [
        "--listen",
        "127.0.0.1:0",
        "--backend",
        "127.0.0.1:9",
        "--workers",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(certs.args());
    v
}

/// `base` with `flag`'s value replaced (or the flag appended).
fn with(certs: &TestCerts, flag: &str, value: &str) -> Vec<String> {
    let mut v = base(certs);
    match v.iter().position(|a| a == flag) {
        Some(i) => v[i + 1] = value.to_owned(),
        None => v.extend([flag.to_owned(), value.to_owned()]),
    }
    v
}

/// `base` without `flag` and its value.
fn without(certs: &TestCerts, flag: &str) -> Vec<String> {
    let mut v = base(certs);
    let i = v.iter().position(|a| a == flag).expect("flag in base");
    v.drain(i..i + 2);
    v
}

#[test]
fn help_exits_zero() {
    let out = run_to_exit(&["--help"], Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    for flag in [
        "--listen",
        "--backend",
        "--cert",
        "--key",
        "--workers",
        "--admin",
    ] {
        assert!(
            out.stdout.contains(flag),
            "--help should mention {flag}: {}",
            out.stdout
        );
    }
}

#[test]
fn bad_flags() {
    let certs = TestCerts::generate();
    let mut args = base(&certs);
    args.push("--bogus".into());
    expect_usage_error(&args, &["--bogus"]);
    expect_usage_error(&with(&certs, "--workers", "many"), &["--workers", "many"]);
    expect_usage_error(&with(&certs, "--workers", "0"), &["--workers"]);
    expect_usage_error(&with(&certs, "--cpus", "65000"), &["--cpus"]);
    expect_usage_error(&with(&certs, "--cpus", "3-1"), &["--cpus"]);
    expect_usage_error(&with(&certs, "--buffer-size", "10"), &["--buffer-size"]);
    expect_usage_error(
        &with(&certs, "--handshake-timeout", "0"),
        &["--handshake-timeout"],
    );
    expect_usage_error(
        &with(&certs, "--connect-timeout", "0"),
        &["--connect-timeout"],
    );
    expect_usage_error(
        &with(&certs, "--log-level", "loud"),
        &["--log-level", "loud"],
    );
    let mut args = base(&certs);
    args.push("--prefer-server-ciphers=maybe".into());
    expect_usage_error(&args, &["--prefer-server-ciphers", "maybe"]);
}

#[test]
fn missing_required_settings() {
    let certs = TestCerts::generate();
    expect_usage_error(&without(&certs, "--backend"), &["--backend"]);
    expect_usage_error(&without(&certs, "--listen"), &["--listen"]);
    expect_usage_error(&without(&certs, "--cert"), &["--cert"]);
    expect_usage_error(&without(&certs, "--key"), &["--key"]);
}

#[test]
fn invalid_addresses() {
    let certs = TestCerts::generate();
    expect_usage_error(
        &with(&certs, "--backend", "nope"),
        &["--backend", "\"nope\""],
    );
    expect_usage_error(
        &with(&certs, "--listen", "127.0.0.1"),
        &["--listen", "127.0.0.1"],
    );
    expect_usage_error(&with(&certs, "--listen", "999.0.0.1:1"), &["--listen"]);
    expect_usage_error(&with(&certs, "--admin", "localhost:x"), &["--admin"]);
}

#[test]
fn ports_in_use() {
    let certs = TestCerts::generate();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let line = expect_usage_error(&with(&certs, "--listen", &addr), &["--listen", &addr]);
    assert!(line.to_lowercase().contains("in use"), "{line}");
    let line = expect_usage_error(&with(&certs, "--admin", &addr), &["--admin", &addr]);
    assert!(line.to_lowercase().contains("in use"), "{line}");
    drop(taken);
}

#[test]
fn bad_certificate_and_key_files() {
    let certs = TestCerts::generate();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope/cert.pem").display().to_string();
    let line = expect_usage_error(&with(&certs, "--cert", &missing), &["--cert", &missing]);
    assert!(line.contains("No such file or directory"), "{line}");
    let line = expect_usage_error(&with(&certs, "--key", &missing), &["--key", &missing]);
    assert!(line.contains("No such file or directory"), "{line}");

    // A directory cannot be read as a file.
    let a_dir = dir.path().display().to_string();
    expect_usage_error(&with(&certs, "--cert", &a_dir), &["--cert", &a_dir]);

    // Files that are not PEM.
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "this is not PEM\n").unwrap();
    let junk = junk.display().to_string();
    expect_usage_error(&with(&certs, "--cert", &junk), &["--cert", &junk]);
    expect_usage_error(&with(&certs, "--key", &junk), &["--key", &junk]);
    // The key where the certificate should be, and vice versa.
    expect_usage_error(
        &with(&certs, "--cert", &certs.key()),
        &["--cert", &certs.key()],
    );
    expect_usage_error(
        &with(&certs, "--key", &certs.cert()),
        &["--key", &certs.cert()],
    );

    // A certificate and a key that do not belong together.
    let other = TestCerts::generate();
    let line = expect_usage_error(
        &with(&certs, "--key", &other.key()),
        &["--cert/--key", &certs.cert(), &other.key()],
    );
    assert!(line.contains("certificate/key"), "{line}");
}

#[test]
fn bad_config_files() {
    let certs = TestCerts::generate();
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();

    let unknown = path("r.toml");
    std::fs::write(&unknown, "listen = [\"127.0.0.1:0\"]\nbogus-field = 1\n").unwrap();
    let line = expect_usage_error(&with(&certs, "--config", &unknown), &[&unknown]);
    assert!(line.contains("unknown field"), "{line}");

    let wrong_type = path("type.toml");
    std::fs::write(&wrong_type, "workers = \"two\"\n").unwrap();
    expect_usage_error(&with(&certs, "--config", &wrong_type), &[&wrong_type]);

    let bad_value = path("value.toml");
    std::fs::write(&bad_value, "backend = \"nope\"\n").unwrap();
    // The flag in `base` overrides the file's backend, so drop it.
    let mut args = without(&certs, "--backend");
    args.extend(["--config".to_owned(), bad_value.clone()]);
    // A value from the file names the file and its key, not the flag.
    let line = expect_usage_error(&args, &[&bad_value, "backend", "nope"]);
    assert!(!line.contains("--backend"), "{line}");

    let missing = path("missing.toml");
    expect_usage_error(&with(&certs, "--config", &missing), &["--config", &missing]);
}

/// A TOML syntax error is reported on one line, naming the file.
#[test]
fn config_syntax_error_is_one_line() {
    let certs = TestCerts::generate();
    let dir = tempfile::tempdir().unwrap();
    let syntax = dir.path().join("syntax.toml").display().to_string();
    // An unclosed array.
    std::fs::write(&syntax, "listen = [\"127.0.0.1:0\"\nworkers = 1\n").unwrap();
    expect_usage_error(&with(&certs, "--config", &syntax), &[&syntax]);
    // A key without a value.
    std::fs::write(&syntax, "workers = \n").unwrap();
    expect_usage_error(&with(&certs, "--config", &syntax), &[&syntax]);
}

/// Writes a config file for `backend` with one worker.
fn write_config(dir: &std::path::Path, certs: &TestCerts, backend: std::net::SocketAddr) -> String {
    let path = dir.join("ringterm.toml");
    let text = format!(
        "listen = [\"127.0.0.1:0\"]\nbackend = \"{backend}\"\ncert = \"{}\"\nkey = \"{}\"\nworkers = 1\nadmin = \"127.0.0.1:0\"\n",
        certs.cert(),
        certs.key()
    );
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn config_file_starts_and_serves() {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &certs, echo.addr);
    let mut rt = Ringterm::start(&["--config", &config]);
    assert!(rt.admin.is_some(), "admin from the file: {:?}", rt.startup);
    assert_echo(rt.addr(), certs.tls13(), b"configured by file");
    let text = rt.metrics();
    assert_eq!(worker_count(&text), 1, "workers = 1 from the file:\n{text}");
    assert_eq!(metric_opt(&text, "ringterm_accepted_total", 1), None);
    let (code, body) = http_get(rt.admin(), "/healthz");
    assert_eq!((code, body.trim()), (200, "ok"));
    rt.assert_alive();
}

#[test]
fn flags_override_config_file() {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let dir = tempfile::tempdir().unwrap();
    // The file points at a refused backend; the flag fixes it.
    let config = write_config(dir.path(), &certs, refused_addr());
    let backend = echo.addr.to_string();
    let mut rt = Ringterm::start(&["--config", &config, "--workers", "2", "--backend", &backend]);
    let text = rt.metrics();
    assert_eq!(
        worker_count(&text),
        2,
        "--workers 2 overrides the file:\n{text}"
    );
    assert!(
        text.contains("ringterm_accepted_total{worker=\"1\"}"),
        "{text}"
    );
    assert!(text.contains("ringterm_active{worker=\"1\"}"), "{text}");
    assert_echo(rt.addr(), certs.tls12(), b"backend from the flag");
    assert_eq!(echo.conns.load(std::sync::atomic::Ordering::Relaxed), 1);
    let text = rt.wait_metric(
        "ringterm_handshakes_total{version=\"TLSv1.2\",resumed=\"false\"}",
        |n| n == 1,
    );
    assert_eq!(
        metric_sum(&text, "ringterm_backend_connect_failures_total"),
        0
    );
    rt.assert_alive();
}

/// Each `--listen` gets its own `listening on` line, and each serves.
#[test]
fn two_listen_addresses() {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let rt = start_ringterm(&certs, echo.addr, &["--listen", "127.0.0.1:0"]);
    assert_eq!(rt.listen.len(), 2, "startup: {:?}", rt.startup);
    assert_ne!(rt.listen[0], rt.listen[1]);
    for addr in &rt.listen {
        assert_echo(*addr, certs.tls13(), addr.to_string().as_bytes());
    }
}

#[test]
fn sigterm_exits_zero() {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let mut rt = start_ringterm(&certs, echo.addr, &[]);
    assert_echo(rt.addr(), certs.tls13(), b"before shutdown");
    send_signal(rt.child.id(), "TERM");
    let ok = eventually(Duration::from_secs(5), || {
        rt.child.try_wait().expect("try_wait").is_some()
    });
    assert!(ok, "ringterm did not exit within 5 s of SIGTERM");
    let status = rt.child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM; stderr: {}",
        rt.stderr()
    );
    assert!(!rt.stderr().contains("panicked"), "{}", rt.stderr());
}
