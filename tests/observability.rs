//! Observability: counters, histograms and the admin endpoint, checked
//! with an independent Prometheus parser (the `prometheus-parse` crate),
//! plus the SIGUSR1 and shutdown summaries.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rustls::client::{Resumption, Tls12Resumption};
use rustls::{ClientConfig, HandshakeKind};

fn resuming(base: Arc<ClientConfig>) -> Arc<ClientConfig> {
    let mut c = (*base).clone();
    c.resumption =
        Resumption::in_memory_sessions(64).tls12_resumption(Tls12Resumption::SessionIdOnly);
    Arc::new(c)
}

/// One echo round trip on a fresh connection; the handshake's kind.
fn ping(addr: SocketAddr, config: &Arc<ClientConfig>) -> HandshakeKind {
    let mut s = tls_connect(addr, config.clone()).expect("tls connect");
    s.write_all(b"ping").unwrap();
    s.flush().unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    let kind = s.conn.handshake_kind().expect("handshake done");
    let _ = close_write(&mut s);
    let _ = tls_read_to_end(&mut s);
    kind
}

/// Samples of `name` whose labels include every `(key, value)` of `want`.
fn sum_samples(scrape: &prometheus_parse::Scrape, name: &str, want: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| want.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(buckets) => {
                buckets.iter().map(|b| b.count).fold(0.0, f64::max)
            }
            prometheus_parse::Value::Summary(_) => 0.0,
        })
        .sum()
}

fn parse(text: &str) -> prometheus_parse::Scrape {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines).expect("the metrics parse as Prometheus text")
}

#[test]
fn metrics_count_every_handshake_and_histograms_match() {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let rt = start_ringterm(&certs, echo.addr, &["--workers", "2"]);
    let addr = rt.addr();

    // K = 6 full TLS 1.3 + 4 full TLS 1.2 + 5 resumed TLS 1.2.
    for _ in 0..6 {
        assert_eq!(ping(addr, &certs.tls13()), HandshakeKind::Full);
    }
    let tls12 = resuming(certs.tls12());
    assert_eq!(ping(addr, &tls12), HandshakeKind::Full);
    for _ in 0..3 {
        assert_eq!(ping(addr, &certs.tls12()), HandshakeKind::Full);
    }
    let mut resumed = 0;
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(150)); // one sync interval
        if ping(addr, &tls12) == HandshakeKind::Resumed {
            resumed += 1;
        }
    }
    assert_eq!(resumed, 5);
    let k = 15.0;

    let text = rt.wait_metric("ringterm_active", |n| n == 0);
    let m = parse(&text);
    let hs = "ringterm_handshakes_total";
    assert_eq!(sum_samples(&m, hs, &[]), k, "{text}");
    assert_eq!(sum_samples(&m, hs, &[("version", "TLSv1.3")]), 6.0);
    assert_eq!(
        sum_samples(&m, hs, &[("version", "TLSv1.2"), ("resumed", "false")]),
        4.0
    );
    assert_eq!(
        sum_samples(&m, hs, &[("version", "TLSv1.2"), ("resumed", "true")]),
        5.0
    );
    assert_eq!(
        sum_samples(
            &m,
            "ringterm_handshakes_resumed_total",
            &[("kind", "tls12_id")]
        ),
        5.0
    );
    assert_eq!(sum_samples(&m, "ringterm_accepted_total", &[]), k);
    assert_eq!(
        sum_samples(&m, "ringterm_handshake_failures_total", &[]),
        0.0
    );
    assert!(sum_samples(&m, "ringterm_bytes_from_clients_total", &[]) > 0.0);
    assert!(sum_samples(&m, "ringterm_bytes_to_backends_total", &[]) >= 4.0 * k);

    // Histogram counts (the parser folds buckets, _sum and _count into one
    // histogram value per label set; its +Inf bucket is the count).
    let hist = "ringterm_handshake_duration_seconds";
    let per_worker = |w: &str, kind: &str| sum_samples(&m, hist, &[("worker", w), ("kind", kind)]);
    let full: f64 = ["0", "1"].iter().map(|w| per_worker(w, "full")).sum();
    let res: f64 = ["0", "1"].iter().map(|w| per_worker(w, "resumed")).sum();
    assert_eq!((full, res), (10.0, 5.0), "{text}");
    for h in [
        "ringterm_backend_connect_duration_seconds",
        "ringterm_time_to_first_byte_seconds",
        "ringterm_connection_lifetime_seconds",
    ] {
        let n: f64 = ["0", "1"]
            .iter()
            .map(|w| sum_samples(&m, h, &[("worker", w)]))
            .sum();
        assert_eq!(n, k, "{h}");
    }
    // Plain-text checks of the exposition itself.
    let count_line = |w: usize| {
        metric_opt(
            &text,
            "ringterm_handshake_duration_seconds_count{kind=\"full\"}",
            w,
        )
        .unwrap_or(0)
    };
    assert_eq!(count_line(0) + count_line(1), 10);
    assert!(text.contains("ringterm_handshake_duration_p99_seconds{worker=\"all\",kind=\"full\"}"));
    assert!(text.contains("# TYPE ringterm_handshake_duration_seconds histogram"));

    // Per worker: ?worker=N shows only that worker, and the two add up.
    let w0 = parse(&http_get(rt.admin(), "/metrics?worker=0").1);
    let w1 = parse(&http_get(rt.admin(), "/metrics?worker=1").1);
    assert_eq!(sum_samples(&w0, hs, &[]) + sum_samples(&w1, hs, &[]), k);
    assert!(w0
        .samples
        .iter()
        .all(|s| s.labels.get("worker") == Some("0")));

    // The full distribution, as .hgrm text.
    let (status, body) = http_get(rt.admin(), "/histograms/handshake");
    assert_eq!(status, 200);
    assert_hgrm(&body, 15);
    let (status, body) = http_get(rt.admin(), "/histograms/handshake_resumed?worker=0");
    assert_eq!(status, 200);
    let (_, body1) = http_get(rt.admin(), "/histograms/handshake_resumed?worker=1");
    assert_eq!(hgrm_total(&body) + hgrm_total(&body1), 5);

    // Bad paths and queries.
    assert_eq!(http_get(rt.admin(), "/histograms/nope").0, 404);
    assert_eq!(http_get(rt.admin(), "/nope").0, 404);
    assert_eq!(http_get(rt.admin(), "/metrics?worker=7").0, 404);
    assert_eq!(http_get(rt.admin(), "/metrics?bogus=1").0, 400);
}

/// Checks `.hgrm` text: the header, rows of value/percentile/count with
/// percentiles rising to 1, and the footer's total.
fn assert_hgrm(body: &str, total: u64) {
    let mut lines = body.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]
    );
    let mut last_p = 0.0;
    let mut rows = 0;
    for line in lines
        .clone()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert!(cols.len() == 3 || cols.len() == 4, "{line}");
        let v: f64 = cols[0].parse().unwrap();
        let p: f64 = cols[1].parse().unwrap();
        let _: u64 = cols[2].parse().unwrap();
        assert!(v >= 0.0 && p >= last_p && p <= 1.0, "{line}");
        last_p = p;
        rows += 1;
    }
    assert!(rows > 0);
    assert_eq!(last_p, 1.0);
    assert_eq!(hgrm_total(body), total);
}

fn hgrm_total(body: &str) -> u64 {
    let line = body
        .lines()
        .find(|l| l.contains("Total count"))
        .expect("footer");
    line.rsplit('=')
        .next()
        .unwrap()
        .trim()
        .trim_end_matches(']')
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn admin_client_that_sends_nothing_blocks_no_worker() {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let rt = start_ringterm(&certs, echo.addr, &[]);
    // Hold several admin connections open without sending a byte.
    let idle: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(rt.admin()).unwrap())
        .collect();
    // TLS keeps being served, and so are other scrapes.
    for i in 0..20 {
        assert_echo(rt.addr(), certs.tls13(), format!("req {i}").as_bytes());
        if i % 5 == 0 {
            let m = parse(&rt.metrics());
            assert!(sum_samples(&m, "ringterm_accepted_total", &[]) >= 1.0);
        }
    }
    let text = rt.wait_metric("ringterm_handshakes_total", |n| n == 20);
    assert!(text.contains("ringterm_connection_lifetime_seconds_count"));
    drop(idle);
}

#[test]
fn alerts_are_counted_by_type() {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let rt = start_ringterm(&certs, echo.addr, &[]);
    // A TLS 1.0-only ClientHello shape: a record with a bad handshake body
    // draws a plaintext alert.
    let mut s = tcp_connect(rt.addr());
    s.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00])
        .unwrap();
    let _ = wait_closed(&mut s, Duration::from_secs(5));
    let text = rt.wait_metric("ringterm_alerts_sent_total", |n| n == 1);
    let m = parse(&text);
    assert_eq!(
        sum_samples(
            &m,
            "ringterm_alerts_sent_total",
            &[("alert", "decode_error")]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        sum_samples(
            &m,
            "ringterm_handshake_failures_total",
            &[("reason", "tls_error")]
        ),
        1.0
    );
}

#[test]
fn sigusr1_and_shutdown_print_the_latency_summary() {
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let mut rt = start_ringterm(&certs, echo.addr, &[]);
    for _ in 0..3 {
        assert_echo(rt.addr(), certs.tls13(), b"x");
    }
    rt.wait_metric("ringterm_active", |n| n == 0);
    let pid = rt.child.id();
    send_signal(pid, "USR1");
    assert!(
        eventually(Duration::from_secs(5), || rt
            .stderr()
            .contains("latency summary (SIGUSR1)")),
        "no summary on SIGUSR1: {}",
        rt.stderr()
    );
    let log = rt.stderr();
    let row = log
        .lines()
        .find(|l| l.starts_with("handshake full"))
        .expect("a handshake row");
    assert_eq!(row.split_whitespace().nth(2), Some("3"), "{row}");
    rt.assert_alive();
    send_signal(pid, "TERM");
    let status = rt.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        eventually(Duration::from_secs(5), || rt
            .stderr()
            .contains("latency summary at shutdown")),
        "{}",
        rt.stderr()
    );
}
