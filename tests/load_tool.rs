//! The load generator `ringterm-load`: its argument handling (usage errors
//! exit 64 with one line on stderr, clap errors exit 2, `--help` exits 0)
//! and a short run of every mode against `ringterm demo`, checking the JSON
//! report and the `--hgrm` histogram file.
//!
//! Every run is bounded (`--duration 1` or `--count N`) and killed if it
//! overruns; every `ringterm demo` is killed when its guard drops. All
//! traffic goes to 127.0.0.1.

mod common;

use std::net::SocketAddr;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use common::{run_bin_to_exit, Ringterm};
use serde_json::Value;

/// EX_USAGE, for semantic argument errors.
const EX_USAGE: i32 = 64;
/// clap's exit code for arguments it cannot parse.
const EX_CLAP: i32 = 2;
/// A run may take at most this long before it is killed and the test fails.
const RUN_LIMIT: Duration = Duration::from_secs(20);

fn load_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ringterm-load")
}

/// Starts `ringterm demo` on an ephemeral loopback port with one worker.
/// The returned guard kills the process when dropped.
fn demo() -> Ringterm {
    Ringterm::start_until(
        &["demo", "--listen", "127.0.0.1:0", "--workers", "1"],
        |line| line.starts_with("listening on "),
    )
}

/// The outcome of one `ringterm-load` run.
#[derive(Debug)]
struct Load {
    args: Vec<String>,
    status: ExitStatus,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Load {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Panics with the whole run unless it exited with `code`.
    fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code(),
            Some(code),
            "ringterm-load {:?}: expected exit {code}, got {:?}\nstdout: {}\nstderr: {}",
            self.args,
            self.status,
            self.stdout,
            self.stderr
        );
        assert!(
            !self.stderr.contains("panicked"),
            "ringterm-load {:?} panicked: {}",
            self.args,
            self.stderr
        );
        self
    }

    /// The JSON report: the last non-empty stdout line (idle mode prints a
    /// `holding N connections` line before it).
    fn json(&self) -> Value {
        let line = self
            .stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_else(|| panic!("ringterm-load {:?}: no stdout", self.args));
        serde_json::from_str(line).unwrap_or_else(|e| {
            panic!(
                "ringterm-load {:?}: last stdout line is not JSON ({e}): {line:?}\nstderr: {}",
                self.args, self.stderr
            )
        })
    }
}

/// Runs `ringterm-load ARGS` to completion (killed after `RUN_LIMIT`).
fn run_load<S: AsRef<str>>(args: &[S]) -> Load {
    let args: Vec<String> = args.iter().map(|s| s.as_ref().to_owned()).collect();
    let start = Instant::now();
    let out = run_bin_to_exit(load_bin(), &args, RUN_LIMIT);
    Load {
        args,
        status: out.status,
        stdout: out.stdout,
        stderr: out.stderr,
        elapsed: start.elapsed(),
    }
}

/// `MODE ARGS --json --insecure --target ADDR --duration 1`.
fn mode_args(addr: SocketAddr, mode_and_args: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = mode_and_args.iter().map(|s| s.to_string()).collect();
    v.extend(
        [
            "--json",
            "--insecure",
            "--target",
            &addr.to_string(),
            "--duration",
            "1",
        ]
        .map(String::from),
    );
    v
}

fn num(report: &Value, key: &str) -> f64 {
    report[key]
        .as_f64()
        .unwrap_or_else(|| panic!("report has no number {key:?}: {report}"))
}

fn uint(report: &Value, key: &str) -> u64 {
    report[key]
        .as_u64()
        .unwrap_or_else(|| panic!("report has no unsigned integer {key:?}: {report}"))
}

/// Checks the parts of a report every successful run shares: the mode, no
/// errors, at least one operation, a sane duration and rate, and ordered
/// latency percentiles.
fn check_report(report: &Value, mode: &str) {
    assert_eq!(report["mode"], mode, "{report}");
    let ops = uint(report, "ops");
    assert!(ops > 0, "no operations: {report}");
    assert_eq!(uint(report, "errors"), 0, "errors: {report}");
    assert!(
        report.get("first_error").is_none(),
        "first_error without errors: {report}"
    );
    let secs = num(report, "duration_s");
    assert!(secs > 0.0 && secs < 10.0, "duration_s: {report}");
    let rate = num(report, "ops_per_s");
    // duration_s is rounded to milliseconds, ops_per_s to 0.1.
    let lo = ops as f64 / (secs + 0.0005) - 0.1;
    let hi = ops as f64 / (secs - 0.0005).max(1e-6) + 0.1;
    assert!(
        (lo..=hi).contains(&rate),
        "ops_per_s {rate} vs ops/duration_s in [{lo}, {hi}]: {report}"
    );
    check_latency(report);
}

/// p50 <= p90 <= p99 <= p99.9 <= max, and 0 < mean <= max.
fn check_latency(report: &Value) {
    let lat = &report["latency_us"];
    let p = |k: &str| {
        lat[k]
            .as_u64()
            .unwrap_or_else(|| panic!("latency_us.{k} missing: {report}"))
    };
    let (p50, p90, p99, p999, max) = (p("p50"), p("p90"), p("p99"), p("p999"), p("max"));
    assert!(
        p50 <= p90 && p90 <= p99 && p99 <= p999 && p999 <= max,
        "latency percentiles out of order: {report}"
    );
    assert!(p50 > 0, "zero median latency: {report}");
    let mean = lat["mean"]
        .as_f64()
        .unwrap_or_else(|| panic!("latency_us.mean missing: {report}"));
    assert!(
        mean > 0.0 && mean <= max as f64 + 0.05,
        "mean latency: {report}"
    );
}

/// Runs one mode for about a second against `addr`; checks the exit status,
/// the stderr warning about `--insecure`, the duration and the report.
fn run_mode(addr: SocketAddr, mode_and_args: &[&str]) -> Value {
    let run = run_load(&mode_args(addr, mode_and_args));
    run.expect_code(0);
    assert!(
        run.stderr
            .contains("WARNING: certificate verification disabled"),
        "no --insecure warning: {:?}",
        run.stderr
    );
    assert!(
        run.elapsed >= Duration::from_millis(900) && run.elapsed < Duration::from_secs(10),
        "ringterm-load {:?} took {:?}",
        run.args,
        run.elapsed
    );
    let report = run.json();
    check_report(&report, mode_and_args[0]);
    let secs = num(&report, "duration_s");
    // idle's duration covers only the opening phase.
    if mode_and_args[0] != "idle" {
        assert!(
            (0.9..3.0).contains(&secs),
            "--duration 1 ran for {secs}s: {report}"
        );
    }
    report
}

// ---------------------------------------------------------------------------
// Modes against the demo
// ---------------------------------------------------------------------------

#[test]
fn handshake_tls13() {
    let d = demo();
    let r = run_mode(d.addr(), &["handshake"]);
    assert!(r.get("resumed_fraction").is_none(), "{r}");
    assert!(r.get("mb_per_s").is_none(), "{r}");
}

#[test]
fn handshake_tls12() {
    let d = demo();
    run_mode(d.addr(), &["handshake", "--tls", "1.2"]);
}

#[test]
fn handshake_with_request() {
    let d = demo();
    run_mode(d.addr(), &["handshake", "--request"]);
}

fn resume(kind: &str) {
    let d = demo();
    let r = run_mode(d.addr(), &["resume", "--kind", kind]);
    // The demo resumes with its default per-core cache (TLS 1.2 tickets fall
    // back to session IDs there): every reconnection must resume.
    let f = r["resumed_fraction"]
        .as_f64()
        .unwrap_or_else(|| panic!("resume report has no resumed_fraction: {r}"));
    assert_eq!(f, 1.0, "resumed_fraction {f}: {r}");
}

#[test]
fn resume_id12() {
    resume("id12");
}

#[test]
fn resume_ticket12() {
    resume("ticket12");
}

#[test]
fn resume_ticket13() {
    resume("ticket13");
}

#[test]
fn rr_closed_loop() {
    let d = demo();
    run_mode(d.addr(), &["rr", "--connections", "4"]);
}

#[test]
fn rr_open_loop() {
    let d = demo();
    let r = run_mode(d.addr(), &["rr", "--connections", "4", "--rate", "200"]);
    // 200 req/s for 1 s: the schedule has exactly 200 send times before the
    // deadline, so more than that means the rate was not honoured.
    let ops = uint(&r, "ops");
    assert!(
        (100..=200).contains(&ops),
        "open loop at 200 req/s for 1 s did {ops} requests: {r}"
    );
}

fn bulk(direction: &str) {
    let d = demo();
    let size = 65536u64;
    let r = run_mode(
        d.addr(),
        &[
            "bulk",
            "--connections",
            "2",
            "--size",
            &size.to_string(),
            "--direction",
            direction,
        ],
    );
    // Every transfer moves exactly `size` payload bytes.
    let mb = num(&r, "mb_per_s");
    let expect = uint(&r, "ops") as f64 * size as f64 / 1e6 / num(&r, "duration_s");
    assert!(
        mb > 0.0 && (mb - expect).abs() <= expect * 0.02 + 0.01,
        "mb_per_s {mb}, expected about {expect}: {r}"
    );
}

#[test]
fn bulk_down() {
    bulk("down");
}

#[test]
fn bulk_up() {
    bulk("up");
}

#[test]
fn idle_holds_connections() {
    let d = demo();
    let args = mode_args(d.addr(), &["idle", "--connections", "20", "--hold", "1"]);
    let run = run_load(&args);
    run.expect_code(0);
    // The `holding` line is printed (to stdout, also with --json) before the
    // hold; the JSON report follows once the connections are closed.
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some("holding 20 connections"),
        "stdout: {:?}",
        run.stdout
    );
    assert_eq!(lines.len(), 2, "stdout: {:?}", run.stdout);
    assert!(
        run.elapsed >= Duration::from_secs(1),
        "--hold 1 but the run took {:?}",
        run.elapsed
    );
    let r = run.json();
    check_report(&r, "idle");
    assert_eq!(uint(&r, "ops"), 20, "{r}");
}

#[test]
fn count_bounds_the_run() {
    let d = demo();
    let target = d.addr().to_string();
    for (mode, n) in [("handshake", 7u64), ("rr", 50)] {
        let run = run_load(&[
            mode,
            "--count",
            &n.to_string(),
            "--threads",
            "2",
            "--json",
            "--insecure",
            "--target",
            &target,
        ]);
        run.expect_code(0);
        let r = run.json();
        check_report(&r, mode);
        assert_eq!(uint(&r, "ops"), n, "--count {n}: {r}");
    }
}

#[test]
fn cpus_pins_workers() {
    let d = demo();
    let run = run_load(&[
        "handshake",
        "--cpus",
        "0",
        "--threads",
        "2",
        "--count",
        "5",
        "--json",
        "--insecure",
        "--target",
        &d.addr().to_string(),
    ]);
    run.expect_code(0);
    assert!(
        !run.stderr.contains("could not pin"),
        "stderr: {}",
        run.stderr
    );
    assert_eq!(uint(&run.json(), "ops"), 5);
}

#[test]
fn human_summary_without_json() {
    let d = demo();
    let run = run_load(&[
        "rr",
        "--count",
        "10",
        "--insecure",
        "--target",
        &d.addr().to_string(),
    ]);
    run.expect_code(0);
    for want in ["mode:      rr (TLS1.3", "ops:       10\n", "errors:    0\n"] {
        assert!(run.stdout.contains(want), "{want:?} in {:?}", run.stdout);
    }
    assert!(run.stdout.contains("latency:   p50 "), "{:?}", run.stdout);
}

/// One parsed data line of a percentile distribution.
struct HdrLine {
    value: f64,
    percentile: f64,
    count: u64,
}

/// Parses HdrHistogram's percentile-distribution text format strictly;
/// returns the data lines and the footer's total count and max.
fn parse_hgrm(text: &str) -> (Vec<HdrLine>, u64, f64) {
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 6, "hgrm too short:\n{text}");
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"],
        "header:\n{text}"
    );
    assert_eq!(lines[1], "", "blank line after the header:\n{text}");
    let mut data = Vec::new();
    let mut rest = lines[2..].iter();
    let mut footer = Vec::new();
    for l in rest.by_ref() {
        if l.starts_with("#[") {
            footer.push(*l);
            break;
        }
        let cols: Vec<&str> = l.split_whitespace().collect();
        assert!(
            cols.len() == 4 || cols.len() == 3,
            "data line {l:?} does not have 3 or 4 columns:\n{text}"
        );
        let f = |s: &str| -> f64 {
            s.parse()
                .unwrap_or_else(|_| panic!("{s:?} in {l:?} is not a number"))
        };
        let line = HdrLine {
            value: f(cols[0]),
            percentile: f(cols[1]),
            count: cols[2]
                .parse()
                .unwrap_or_else(|_| panic!("count {:?} in {l:?}", cols[2])),
        };
        assert!(
            (0.0..=1.0).contains(&line.percentile),
            "percentile in {l:?}"
        );
        if cols.len() == 4 {
            let inv = f(cols[3]);
            let expect = 1.0 / (1.0 - line.percentile);
            assert!(
                (inv - expect).abs() <= expect * 1e-3 + 0.01,
                "1/(1-Percentile) {inv} vs {expect} in {l:?}"
            );
        }
        data.push(line);
    }
    footer.extend(rest.copied());
    assert!(!data.is_empty(), "no data lines:\n{text}");
    // Only the final (100%) line lacks the 1/(1-Percentile) column.
    let last = text
        .lines()
        .rev()
        .find(|l| !l.starts_with('#') && !l.is_empty())
        .unwrap();
    assert_eq!(last.split_whitespace().count(), 3, "last line {last:?}");
    assert_eq!(data.last().unwrap().percentile, 1.0, "last line {last:?}");
    for w in data.windows(2) {
        assert!(
            w[0].value <= w[1].value
                && w[0].percentile <= w[1].percentile
                && w[0].count <= w[1].count,
            "data lines not monotonic:\n{text}"
        );
    }

    assert_eq!(footer.len(), 3, "footer:\n{text}");
    let field = |line: &str, prefix: &str, name: &str| -> String {
        assert!(line.starts_with(prefix), "{line:?} should start {prefix:?}");
        let at = line
            .find(name)
            .unwrap_or_else(|| panic!("{name:?} missing in {line:?}"));
        line[at + name.len()..]
            .trim_start()
            .trim_start_matches('=')
            .trim()
            .trim_end_matches(']')
            .trim()
            .to_owned()
    };
    let stdev: f64 = field(footer[0], "#[Mean    =", "StdDeviation")
        .parse()
        .expect("StdDeviation");
    assert!(stdev >= 0.0, "{}", footer[0]);
    let mean_val: f64 = footer[0]["#[Mean    =".len()..]
        .split(',')
        .next()
        .unwrap()
        .trim()
        .parse()
        .expect("Mean");
    let max: f64 = footer[1]["#[Max     =".len()..]
        .split(',')
        .next()
        .unwrap()
        .trim()
        .parse()
        .expect("Max");
    assert!(mean_val > 0.0 && mean_val <= max, "{}", footer[0]);
    let total: u64 = field(footer[1], "#[Max     =", "Total count")
        .parse()
        .expect("Total count");
    let sub: u64 = field(footer[2], "#[Buckets =", "SubBuckets")
        .parse()
        .expect("SubBuckets");
    assert!(sub.is_power_of_two(), "{}", footer[2]);
    (data, total, max)
}

#[test]
fn hgrm_file_is_a_percentile_distribution() {
    let d = demo();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("latency.hgrm");
    let path_s = path.to_str().unwrap().to_owned();
    let run = run_load(&mode_args(
        d.addr(),
        &["rr", "--connections", "2", "--hgrm", &path_s],
    ));
    run.expect_code(0);
    let r = run.json();
    check_report(&r, "rr");
    let text = std::fs::read_to_string(&path).expect("--hgrm file written");
    let (data, total, max_ms) = parse_hgrm(&text);
    let ops = uint(&r, "ops");
    assert_eq!(total, ops, "hgrm Total count vs JSON ops:\n{text}");
    assert_eq!(data.last().unwrap().count, ops, "final TotalCount:\n{text}");
    // Values are in milliseconds; the JSON report is in microseconds.
    let max_us = uint(&r["latency_us"], "max") as f64;
    assert!(
        (max_ms * 1000.0 - max_us).abs() <= 1.0,
        "hgrm Max {max_ms} ms vs JSON max {max_us} us"
    );
    let p50_us = uint(&r["latency_us"], "p50") as f64;
    let median = data.iter().find(|l| l.percentile >= 0.5).unwrap();
    assert!(
        (median.value * 1000.0 - p50_us).abs() <= 1.0,
        "hgrm median {} ms vs JSON p50 {p50_us} us",
        median.value
    );
}

// ---------------------------------------------------------------------------
// Argument handling
// ---------------------------------------------------------------------------

/// Expects exit 64, nothing on stdout, and exactly one stderr line starting
/// `ringterm-load: ` and containing every string in `culprits`. Usage errors
/// are found before any connection is made, so they must be quick.
fn expect_usage_error(args: &[&str], culprits: &[&str]) {
    let run = run_load(args);
    run.expect_code(EX_USAGE);
    assert_eq!(run.stdout, "", "{args:?}: stdout should be empty");
    assert!(
        run.stderr.ends_with('\n') && run.stderr.lines().count() == 1,
        "{args:?}: stderr should be exactly one line: {:?}",
        run.stderr
    );
    assert!(
        run.stderr.starts_with("ringterm-load: "),
        "{args:?}: {:?}",
        run.stderr
    );
    for c in culprits {
        assert!(
            run.stderr.contains(c),
            "{args:?}: {c:?} not in {:?}",
            run.stderr
        );
    }
    assert!(
        run.elapsed < Duration::from_secs(3),
        "{args:?}: a usage error took {:?}",
        run.elapsed
    );
}

/// Expects clap to reject the arguments (exit 2) with no output on stdout.
fn expect_clap_error(args: &[&str], culprit: &str) {
    let run = run_load(args);
    run.expect_code(EX_CLAP);
    assert_eq!(run.stdout, "", "{args:?}: stdout should be empty");
    assert!(
        run.stderr.contains(culprit),
        "{args:?}: {culprit:?} not in {:?}",
        run.stderr
    );
}

#[test]
fn no_trust_is_a_usage_error() {
    let addr = common::refused_addr().to_string();
    for mode in ["handshake", "resume", "rr", "bulk", "idle"] {
        expect_usage_error(
            &[mode, "--target", &addr, "--duration", "1"],
            &["--ca", "--insecure"],
        );
    }
    expect_usage_error(
        &[
            "handshake",
            "--ca",
            "/nonexistent/ca.pem",
            "--target",
            &addr,
            "--count",
            "1",
        ],
        &["/nonexistent/ca.pem"],
    );
}

#[test]
fn non_loopback_target_is_refused_without_connecting() {
    // With --timeout 30 a connection attempt to an unroutable address would
    // hang for far longer than a usage error may take, or fail with exit 1.
    for target in ["10.0.0.1:443", "192.0.2.1:8443", "[2001:db8::1]:443"] {
        for mode in ["handshake", "rr", "idle"] {
            expect_usage_error(
                &[
                    mode,
                    "--insecure",
                    "--target",
                    target,
                    "--timeout",
                    "30",
                    "--count",
                    "1",
                ],
                &["non-loopback", "--allow-remote"],
            );
        }
    }
}

#[test]
fn bad_target_is_a_usage_error() {
    expect_usage_error(
        &[
            "handshake",
            "--insecure",
            "--target",
            "no-port",
            "--count",
            "1",
        ],
        &["--target", "no-port"],
    );
}

#[test]
fn unbounded_run_is_a_usage_error() {
    let addr = common::refused_addr().to_string();
    for bound in [
        &["--duration", "0"][..],
        &["--duration", "0", "--count", "0"],
        &["--duration=0.0"],
    ] {
        let mut args = vec!["handshake", "--insecure", "--target", &addr];
        args.extend_from_slice(bound);
        expect_usage_error(&args, &["--duration", "--count"]);
    }
    for bad in ["--duration=-1", "--duration=nan", "--duration=inf"] {
        expect_usage_error(
            &["rr", "--insecure", "--target", &addr, bad],
            &["--duration"],
        );
    }
}

#[test]
fn bad_values_are_usage_errors() {
    let addr = common::refused_addr().to_string();
    let base = ["--insecure", "--target", addr.as_str(), "--count", "1"];
    let cases: &[(&[&str], &[&str])] = &[
        (&["handshake", "--timeout", "0"], &["--timeout"]),
        (&["handshake", "--timeout=-1"], &["--timeout"]),
        (&["handshake", "--timeout", "nan"], &["--timeout"]),
        (&["handshake", "--cpus", "abc"], &["--cpus", "abc"]),
        (&["handshake", "--cpus", "3-1"], &["--cpus"]),
        (&["handshake", "--cpus", "100000"], &["--cpus", "100000"]),
        (&["rr", "--rate", "0"], &["--rate"]),
        (&["rr", "--rate", "inf"], &["--rate"]),
        (&["idle", "--hold=-1"], &["--hold"]),
        (
            &["resume", "--kind", "id12", "--tls", "1.3"],
            &["--tls", "id12"],
        ),
        (
            &["resume", "--kind", "ticket13", "--tls", "1.2"],
            &["--tls", "ticket13"],
        ),
        (
            &["handshake", "--tls", "1.2", "--group", "x25519mlkem768"],
            &["--group", "x25519mlkem768"],
        ),
        (&["handshake", "--sni", "bad name!"], &["--sni"]),
        (
            &["handshake", "--hgrm", "/nonexistent/dir/out.hgrm"],
            &["--hgrm", "/nonexistent/dir/out.hgrm"],
        ),
    ];
    for (mode, culprits) in cases {
        let mut args = mode.to_vec();
        args.extend_from_slice(&base);
        expect_usage_error(&args, culprits);
    }
}

#[test]
fn unparsable_arguments_are_clap_errors() {
    let addr = common::refused_addr().to_string();
    let cases: &[(&[&str], &str)] = &[
        (&["handshake", "--no-such-flag"], "--no-such-flag"),
        (&["no-such-mode"], "no-such-mode"),
        (&["handshake", "--tls", "1.1"], "1.1"),
        (&["resume", "--kind", "id13"], "id13"),
        (&["bulk", "--direction", "sideways"], "sideways"),
        (&["handshake", "--threads", "0"], "--threads"),
        (&["handshake", "--count", "many"], "--count"),
        (&["rr", "--connections", "0"], "--connections"),
        (&["handshake", "--ca", "x.pem"], "--ca"),
    ];
    for (mode, culprit) in cases {
        let mut args = mode.to_vec();
        args.extend_from_slice(&["--insecure", "--target", &addr, "--count", "1"]);
        expect_clap_error(&args, culprit);
    }
    // No mode at all.
    let run = run_load(&["--insecure"]);
    assert_ne!(run.code(), Some(0), "{run:?}");
    assert_eq!(run.stdout, "");
}

#[test]
fn help_exits_zero() {
    let run = run_load(&["--help"]);
    run.expect_code(0);
    for mode in ["handshake", "resume", "rr", "bulk", "idle"] {
        assert!(run.stdout.contains(mode), "{mode} not in --help");
    }
    for flag in [
        "--insecure",
        "--ca",
        "--target",
        "--duration",
        "--count",
        "--json",
        "--hgrm",
    ] {
        assert!(run.stdout.contains(flag), "{flag} not in --help");
    }
    for (mode, flag) in [
        ("handshake", "--request"),
        ("resume", "--kind"),
        ("rr", "--rate"),
        ("bulk", "--direction"),
        ("idle", "--hold"),
    ] {
        let run = run_load(&[mode, "--help"]);
        run.expect_code(0);
        assert!(run.stdout.contains(flag), "{flag} not in {mode} --help");
    }
    run_load(&["--version"]).expect_code(0);
}

#[test]
fn unreachable_target_fails_with_exit_1() {
    let addr = common::refused_addr().to_string();
    let run = run_load(&[
        "handshake",
        "--insecure",
        "--json",
        "--target",
        &addr,
        "--count",
        "3",
        "--timeout",
        "2",
    ]);
    run.expect_code(1);
    let r = run.json();
    assert_eq!(uint(&r, "ops"), 0, "{r}");
    assert_eq!(uint(&r, "errors"), 3, "{r}");
    let first = r["first_error"].as_str().unwrap_or_default();
    assert!(first.contains("connect"), "{r}");
    assert!(
        run.stderr.contains("all 3 operations failed"),
        "{}",
        run.stderr
    );
}
