//! The access log (`--access-log`): one JSON (or text) line per
//! connection, matched here to each test connection by its client address:
//! a full handshake, a resumed one, a failed handshake, a refused backend,
//! an idle timeout; and the file reopened after logrotate renamed it.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rustls::client::{Resumption, Tls12Resumption};
use rustls::{ClientConfig, HandshakeKind};
use serde_json::Value;

fn resuming(base: Arc<ClientConfig>) -> Arc<ClientConfig> {
    let mut c = (*base).clone();
    c.resumption =
        Resumption::in_memory_sessions(64).tls12_resumption(Tls12Resumption::SessionIdOnly);
    Arc::new(c)
}

/// Every JSON line of `path` (the last one may be partial while written).
fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Waits for the line of the connection from `client`.
fn line_of(path: &Path, client: SocketAddr) -> Value {
    let want = client.to_string();
    let mut found = None;
    let ok = eventually(Duration::from_secs(10), || {
        found = lines(path)
            .into_iter()
            .find(|v| v["client"].as_str() == Some(want.as_str()));
        found.is_some()
    });
    assert!(
        ok,
        "no access log line for {want}; log:\n{}",
        std::fs::read_to_string(path).unwrap_or_default()
    );
    found.unwrap()
}

/// One echo round trip, then the client closes first; its address and the
/// handshake's kind.
fn ping(addr: SocketAddr, config: &Arc<ClientConfig>) -> (SocketAddr, HandshakeKind) {
    let mut s = tls_connect(addr, config.clone()).expect("tls connect");
    let me = s.sock.local_addr().unwrap();
    s.write_all(b"ping").unwrap();
    s.flush().unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    let kind = s.conn.handshake_kind().expect("handshake done");
    let _ = close_write(&mut s);
    let _ = tls_read_to_end(&mut s);
    (me, kind)
}

fn num(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("{k} is not a number in {v}"))
}

#[test]
fn json_lines_match_full_resumed_failed_and_idle_connections() {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let rt = start_ringterm(
        &certs,
        echo.addr,
        &[
            "--access-log",
            log.to_str().unwrap(),
            "--idle-timeout",
            "300",
            "--alpn",
            "h2,http/1.1",
        ],
    );
    let config = {
        let mut c = (*resuming(certs.tls13())).clone();
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(c)
    };

    // A full handshake.
    let (client, kind) = ping(rt.addr(), &config);
    assert_eq!(kind, HandshakeKind::Full);
    let v = line_of(&log, client);
    assert_eq!(v["sni"], "localhost", "{v}");
    assert_eq!(v["alpn"], "http/1.1", "{v}");
    assert_eq!(v["tls_version"], "TLSv1.3", "{v}");
    assert!(v["cipher"].as_str().unwrap().starts_with("TLS13_"), "{v}");
    assert_eq!(v["resumed"], false, "{v}");
    assert!(v.get("resumption").is_none(), "{v}");
    assert_eq!(v["frontend"], rt.addr().to_string(), "{v}");
    assert_eq!(v["backend"], echo.addr.to_string(), "{v}");
    assert_eq!(v["end"], "client_close", "{v}");
    assert_eq!(num(&v, "bytes_to_backend"), 4, "{v}");
    assert_eq!(num(&v, "bytes_from_backend"), 4, "{v}");
    assert!(num(&v, "bytes_from_client") > 4, "{v}");
    assert!(
        num(&v, "bytes_to_client") > 1000,
        "a certificate went out: {v}"
    );
    let hs = num(&v, "handshake_us");
    assert!(hs > 0 && hs <= num(&v, "duration_us"), "{v}");
    let _ = num(&v, "connect_us");
    assert!(v["time"].as_str().unwrap().ends_with('Z'), "{v}");
    assert!(v.get("alert").is_none() && v.get("error").is_none(), "{v}");

    // A resumed one.
    let (client, kind) = ping(rt.addr(), &config);
    assert_eq!(kind, HandshakeKind::Resumed);
    let v = line_of(&log, client);
    assert_eq!(v["resumed"], true, "{v}");
    assert!(
        v["resumption"].as_str().unwrap().starts_with("tls13_"),
        "{v}"
    );
    assert_eq!(v["end"], "client_close", "{v}");

    // A failed handshake: plaintext HTTP on the TLS port.
    let mut s = TcpStream::connect(rt.addr()).unwrap();
    set_timeouts(&s, Duration::from_secs(10));
    let client = s.local_addr().unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
    let v = line_of(&log, client);
    assert_eq!(v["end"], "handshake_tls_error", "{v}");
    assert!(v["error"].as_str().unwrap().starts_with("tls:"), "{v}");
    assert!(v["alert"].is_string(), "an alert was sent: {v}");
    assert!(
        v.get("backend").is_none() && v.get("tls_version").is_none(),
        "{v}"
    );
    assert_eq!(num(&v, "bytes_to_backend"), 0, "{v}");

    // An idle connection, closed by --idle-timeout.
    let mut s = tls_connect(rt.addr(), certs.tls13()).expect("tls connect");
    let client = s.sock.local_addr().unwrap();
    s.write_all(b"hi").unwrap();
    s.flush().unwrap();
    let mut buf = [0u8; 2];
    s.read_exact(&mut buf).unwrap();
    let _ = tls_read_to_end(&mut s);
    let v = line_of(&log, client);
    assert_eq!(v["end"], "idle_timeout", "{v}");
    assert_eq!(num(&v, "bytes_to_backend"), 2, "{v}");
    assert!(num(&v, "duration_us") >= 300_000, "{v}");

    let text = rt.metrics();
    assert!(
        metric_sum(&text, "ringterm_access_log_lines_total") >= 4,
        "{text}"
    );
    assert_eq!(metric_sum(&text, "ringterm_access_log_dropped_total"), 0);
}

#[test]
fn a_refused_backend_is_logged_with_the_backend_tried() {
    let certs = TestCerts::generate();
    let refused = refused_addr();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let rt = start_ringterm(&certs, refused, &["--access-log", log.to_str().unwrap()]);
    let mut s = tls_connect(rt.addr(), certs.tls12()).expect("tls connect");
    let client = s.sock.local_addr().unwrap();
    let _ = s.write_all(b"hello");
    let _ = tls_read_to_end(&mut s);
    let v = line_of(&log, client);
    assert_eq!(v["end"], "connect_failed", "{v}");
    assert_eq!(v["backend"], refused.to_string(), "{v}");
    assert!(v.get("connect_us").is_none(), "{v}");
    assert_eq!(v["tls_version"], "TLSv1.2", "{v}");
    assert!(num(&v, "connect_failures") >= 1, "{v}");
    assert!(v["error"].as_str().unwrap().contains("refused"), "{v}");
}

#[test]
fn the_file_is_reopened_after_a_rename_and_text_lines_are_key_value() {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let rotated = dir.path().join("access.log.1");
    let rt = start_ringterm(
        &certs,
        echo.addr,
        &[
            "--access-log",
            log.to_str().unwrap(),
            "--access-log-format",
            "text",
        ],
    );
    let config = certs.tls13();
    let text_has = |path: &Path, client: SocketAddr| {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains(&format!(" client={client} ")))
    };
    let (first, _) = ping(rt.addr(), &config);
    assert!(eventually(Duration::from_secs(10), || text_has(
        &log, first
    )));
    let line = std::fs::read_to_string(&log).unwrap();
    assert!(line.contains(" end=client_close "), "{line}");
    assert!(line.contains(" tls_version=TLSv1.3 "), "{line}");
    assert!(line.starts_with("time="), "{line}");

    std::fs::rename(&log, &rotated).unwrap();
    send_signal(rt.child.id(), "USR1");
    // Lines go to the renamed file until the writer has reopened; then a
    // new file appears with the next connection's line.
    let mut last = first;
    let reopened = eventually(Duration::from_secs(10), || {
        last = ping(rt.addr(), &config).0;
        std::thread::sleep(Duration::from_millis(50));
        text_has(&log, last)
    });
    assert!(reopened, "no new file after SIGUSR1: {}", rt.stderr());
    assert!(text_has(&rotated, first));
    assert!(!text_has(&rotated, last));
}

/// Behind a balancer (`--accept-proxy`), the client is the PROXY header's
/// source; `--access-log stderr` writes to the log stream.
#[test]
fn the_client_is_the_proxy_source_and_stderr_works() {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let rt = start_ringterm(
        &certs,
        echo.addr,
        &[
            "--accept-proxy",
            "--access-log",
            "stderr",
            "--access-log-format",
            "json",
        ],
    );
    let mut sock = tcp_connect(rt.addr());
    sock.write_all(b"PROXY TCP4 203.0.113.7 198.51.100.1 40000 443\r\n")
        .unwrap();
    let mut conn = rustls::ClientConnection::new(certs.tls13(), server_name()).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).unwrap();
    }
    let mut s = rustls::StreamOwned::new(conn, sock);
    s.write_all(b"via a balancer").unwrap();
    let mut buf = [0u8; 14];
    s.read_exact(&mut buf).unwrap();
    let _ = close_write(&mut s);
    let _ = tls_read_to_end(&mut s);
    let mut line = None;
    let found = eventually(Duration::from_secs(10), || {
        line = rt
            .stderr()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["client"] == "203.0.113.7:40000");
        line.is_some()
    });
    assert!(found, "no access log line on stderr: {}", rt.stderr());
    let v = line.unwrap();
    assert_eq!(v["end"], "client_close", "{v}");
    assert_eq!(num(&v, "bytes_to_backend"), 14, "{v}");
}
