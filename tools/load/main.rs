//! ringterm-load: a multi-threaded TLS load generator (blocking sockets,
//! one thread per in-flight operation) built on rustls/aws-lc-rs.

mod cpus;
use ringterm::metrics::hgrm;
mod http;
mod modes;
mod runner;
mod stats;
mod tls;

use clap::{Args, Parser, Subcommand};
use modes::{Ctx, Direction, ResumeKind, Schedule};
use runner::{run_workers, Budget};
use rustls::pki_types::ServerName;
use stats::{Report, Stats};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tls::{Group, Target, TlsVersion, Trust};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for semantic argument errors (EX_USAGE).
const EXIT_USAGE: u8 = 64;

#[derive(Parser, Debug)]
#[command(
    name = "ringterm-load",
    version,
    about = "TLS load generator for ringterm (rustls + aws-lc-rs, blocking sockets)"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Args, Debug)]
#[command(next_help_heading = "Common options")]
struct Common {
    /// Worker threads (handshake/resume/idle); default for --connections in rr/bulk
    #[arg(long, global = true, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    threads: u32,
    /// Pin worker threads round-robin to these CPUs, e.g. `0-3,8`
    #[arg(long, global = true, value_name = "LIST")]
    cpus: Option<String>,
    /// Run for this many seconds (default 10 unless --count is given)
    #[arg(long, global = true, value_name = "SECS")]
    duration: Option<f64>,
    /// Stop after this many operations in total (across all threads)
    #[arg(long, global = true, value_name = "N")]
    count: Option<u64>,
    /// Server address
    #[arg(
        long,
        global = true,
        default_value = "127.0.0.1:8443",
        value_name = "HOST:PORT"
    )]
    target: String,
    /// Allow a non-loopback --target
    #[arg(long, global = true)]
    allow_remote: bool,
    /// resume: alternate every resumption between --target and this server
    /// (another process of a fleet sharing sessions, e.g. through
    /// --session-store)
    #[arg(long, global = true, value_name = "HOST:PORT")]
    alt_target: Option<String>,
    /// Skip certificate verification (for testing only)
    #[arg(long, global = true, conflicts_with = "ca")]
    insecure: bool,
    /// PEM file with the CA certificate(s) used to verify the server
    #[arg(long, global = true, value_name = "PEM")]
    ca: Option<String>,
    /// Server name sent in SNI and verified against the certificate
    #[arg(long, global = true, default_value = "localhost", value_name = "NAME")]
    sni: String,
    /// TLS version (resume mode derives it from --kind)
    #[arg(long, global = true, value_enum)]
    tls: Option<TlsVersion>,
    /// Key exchange group
    #[arg(long, global = true, value_enum, default_value_t = Group::X25519)]
    group: Group,
    /// Socket connect/read/write timeout in seconds
    #[arg(long, global = true, default_value_t = 10.0, value_name = "SECS")]
    timeout: f64,
    /// Print one JSON object instead of the human-readable summary
    #[arg(long, global = true)]
    json: bool,
    /// Write the latency histogram (HdrHistogram percentile distribution, ms) here
    #[arg(long, global = true, value_name = "FILE")]
    hgrm: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Full handshakes: a new TCP+TLS connection per operation
    Handshake {
        /// Connections in flight per thread (workers = threads x concurrency)
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        concurrency: u32,
        /// Also send `GET /` (Connection: close) and read the full response
        #[arg(long)]
        request: bool,
    },
    /// Resumed handshakes (one priming full handshake per thread)
    Resume {
        /// Resumption mechanism: TLS1.2 session id, TLS1.2 ticket, TLS1.3 ticket
        #[arg(long, value_enum, default_value_t = ResumeKind::Ticket13)]
        kind: ResumeKind,
        /// Include a `GET /` request/response in every operation and its latency
        #[arg(long)]
        request: bool,
    },
    /// Request/response over keep-alive connections (one thread per connection)
    Rr {
        /// Keep-alive connections [default: --threads]
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        connections: Option<u32>,
        /// Request body size; 0 sends GET, >0 sends POST with this many bytes
        #[arg(long, default_value_t = 0, value_name = "BYTES")]
        req_size: u64,
        /// Response body size (requests /bytes/{resp_size})
        #[arg(long, default_value_t = 100, value_name = "BYTES")]
        resp_size: u64,
        /// Open loop at this total request rate (req/s), latency measured from
        /// the intended send time; default is closed loop at max rate
        #[arg(long, value_name = "REQ_PER_S")]
        rate: Option<f64>,
    },
    /// Bulk throughput over keep-alive connections (one thread per connection)
    Bulk {
        /// Keep-alive connections [default: --threads]
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        connections: Option<u32>,
        /// down: GET /bytes/{size}; up: POST /upload with a {size}-byte body
        #[arg(long, value_enum, default_value_t = Direction::Down)]
        direction: Direction,
        /// Bytes per transfer
        #[arg(long, default_value_t = 1_048_576, value_name = "BYTES")]
        size: u64,
    },
    /// Open many connections, hold them idle, then close them
    Idle {
        /// Connections to open (spread over --threads)
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
        connections: u32,
        /// Seconds to hold the connections open
        #[arg(long, default_value_t = 10.0, value_name = "SECS")]
        hold: f64,
    },
}

/// A fatal problem: usage errors exit 64, others 1.
enum Fatal {
    Usage(String),
    Other(String),
}

fn usage<T>(msg: impl Into<String>) -> Result<T, Fatal> {
    Err(Fatal::Usage(msg.into()))
}

fn secs(name: &str, v: f64) -> Result<Duration, Fatal> {
    if !v.is_finite() || !(0.0..=1e9).contains(&v) {
        return usage(format!("{name} must be a finite number of seconds >= 0"));
    }
    Ok(Duration::from_secs_f64(v))
}

/// Effective (count, duration) bound; at least one must be > 0.
fn bounds(
    count: Option<u64>,
    duration: Option<f64>,
) -> Result<(Option<u64>, Option<Duration>), Fatal> {
    let count = count.filter(|&c| c > 0);
    let duration = match duration {
        Some(d) => Some(secs("--duration", d)?).filter(|d| !d.is_zero()),
        None if count.is_none() => Some(Duration::from_secs(10)),
        None => None,
    };
    if count.is_none() && duration.is_none() {
        return usage("nothing bounds the run: give --duration > 0 and/or --count > 0");
    }
    Ok((count, duration))
}

/// Resolves the target and enforces the loopback rule.
fn resolve_target(target: &str, allow_remote: bool) -> Result<SocketAddr, Fatal> {
    let addrs: Vec<SocketAddr> = match target.to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(e) => return usage(format!("invalid --target {target:?}: {e}")),
    };
    let Some(first) = addrs.first().copied() else {
        return usage(format!("--target {target:?} resolved to no address"));
    };
    if !allow_remote {
        if let Some(a) = addrs.iter().find(|a| !a.ip().is_loopback()) {
            return usage(format!(
                "refusing non-loopback target {target} ({}); pass --allow-remote to allow it",
                a.ip()
            ));
        }
    }
    Ok(first)
}

fn check_cpus(list: &str) -> Result<Vec<usize>, Fatal> {
    let cpus = cpus::parse_cpu_list(list).map_err(|e| Fatal::Usage(format!("--cpus: {e}")))?;
    if let Some(avail) = core_affinity::get_core_ids() {
        if let Some(bad) = cpus.iter().find(|c| !avail.iter().any(|a| a.id == **c)) {
            return usage(format!(
                "--cpus: CPU {bad} is not available to this process"
            ));
        }
    }
    Ok(cpus)
}

/// Raises the soft RLIMIT_NOFILE to the hard limit.
fn raise_nofile_limit() {
    if rlimit::increase_nofile_limit(u64::MAX).is_err() {
        eprintln!("warning: could not raise RLIMIT_NOFILE");
    }
}

fn merge(all: Vec<Stats>) -> Stats {
    let mut total = Stats::new();
    for s in all {
        total.merge(s);
    }
    total
}

fn group_name(g: Group) -> &'static str {
    match g {
        Group::X25519 => "x25519",
        Group::Secp256r1 => "secp256r1",
        Group::X25519mlkem768 => "x25519mlkem768",
    }
}

fn version_name(v: TlsVersion) -> &'static str {
    match v {
        TlsVersion::V12 => "TLS1.2",
        TlsVersion::V13 => "TLS1.3",
    }
}

fn run(cli: Cli) -> Result<ExitCode, Fatal> {
    let c = cli.common;
    let (count, duration) = bounds(c.count, c.duration)?;
    let timeout = secs("--timeout", c.timeout)?;
    if timeout.is_zero() {
        return usage("--timeout must be > 0");
    }
    let addr = resolve_target(&c.target, c.allow_remote)?;
    let alt = c
        .alt_target
        .as_deref()
        .map(|t| resolve_target(t, c.allow_remote))
        .transpose()?;
    let server_name = ServerName::try_from(c.sni.clone())
        .map_err(|_| Fatal::Usage(format!("invalid --sni {:?}", c.sni)))?;
    let cpus = c.cpus.as_deref().map(check_cpus).transpose()?;
    let trust = if c.insecure {
        Trust::Insecure
    } else if let Some(ca) = &c.ca {
        Trust::Roots(Arc::new(tls::load_roots(ca).map_err(Fatal::Usage)?))
    } else {
        return usage("no way to verify the server: give --ca PEM (or --insecure for testing)");
    };
    let version = match &cli.mode {
        Mode::Resume { kind, .. } => {
            if c.tls.is_some_and(|v| v != kind.version()) {
                return usage(format!(
                    "--tls conflicts with --kind {}: that kind uses {}",
                    format!("{kind:?}").to_lowercase(),
                    version_name(kind.version())
                ));
            }
            kind.version()
        }
        _ => c.tls.unwrap_or(TlsVersion::V13),
    };
    if version == TlsVersion::V12 && c.group == Group::X25519mlkem768 {
        return usage("--group x25519mlkem768 requires --tls 1.3");
    }
    match &cli.mode {
        Mode::Rr { rate: Some(r), .. } if !r.is_finite() || *r <= 0.0 => {
            return usage("--rate must be a number > 0");
        }
        Mode::Idle { hold, .. } => {
            secs("--hold", *hold)?;
        }
        _ => {}
    }
    // Validate the TLS settings once up front.
    tls::client_config(version, c.group, &trust, tls::resumption_disabled())
        .map_err(Fatal::Usage)?;
    let mut hgrm_file = match &c.hgrm {
        Some(path) => Some(
            File::create(path)
                .map_err(|e| Fatal::Usage(format!("cannot create --hgrm file {path}: {e}")))?,
        ),
        None => None,
    };
    if c.insecure {
        eprintln!("WARNING: certificate verification disabled (--insecure)");
    }
    raise_nofile_limit();

    let ctx = Arc::new(Ctx {
        target: Target {
            addr,
            server_name: server_name.clone(),
            timeout,
        },
        alt: alt.map(|addr| Target {
            addr,
            server_name: server_name.clone(),
            timeout,
        }),
        version,
        group: c.group,
        trust,
        budget: Budget::new(count),
    });
    let cpus = cpus.as_deref();
    let threads = c.threads as usize;
    let tls_desc = format!("{}, {}", version_name(version), group_name(c.group));
    let fail = Fatal::Other;

    let (mode, detail, stats, elapsed, with_mb, with_resume) = match cli.mode {
        Mode::Handshake {
            concurrency,
            request,
        } => {
            let workers = threads * concurrency as usize;
            let x = ctx.clone();
            let (res, el) = run_workers(workers, cpus, duration, move |_, a| {
                modes::handshake_worker(&x, request, a)
            })
            .map_err(fail)?;
            let what = if request {
                "handshake + GET /"
            } else {
                "handshake only"
            };
            (
                "handshake",
                format!(" ({tls_desc}, {what}, {workers} workers)"),
                merge(res),
                el,
                false,
                false,
            )
        }
        Mode::Resume { kind, request } => {
            let x = ctx.clone();
            let (res, el) = run_workers(threads, cpus, duration, move |_, a| {
                modes::resume_worker(&x, kind, request, a)
            })
            .map_err(fail)?;
            (
                "resume",
                format!(" ({kind:?}, {tls_desc}, {threads} workers)").to_lowercase(),
                merge(res),
                el,
                false,
                true,
            )
        }
        Mode::Rr {
            connections,
            req_size,
            resp_size,
            rate,
        } => {
            let conns = connections.map_or(threads, |n| n as usize);
            let params = Arc::new(modes::RrParams {
                req_size,
                resp_size,
            });
            let x = ctx.clone();
            let (res, el) = run_workers(conns, cpus, duration, move |i, a| {
                let sched = rate.map(|r| Schedule::new(r, conns, i));
                modes::rr_worker(&x, &params, sched, a)
            })
            .map_err(fail)?;
            let lp = match rate {
                Some(r) => format!("open-loop at {r} req/s"),
                None => "closed-loop".to_string(),
            };
            (
                "rr",
                format!(" ({tls_desc}, {lp}, {conns} connections, req {req_size} B, resp {resp_size} B)"),
                merge(res),
                el,
                false,
                false,
            )
        }
        Mode::Bulk {
            connections,
            direction,
            size,
        } => {
            let conns = connections.map_or(threads, |n| n as usize);
            let x = ctx.clone();
            let (res, el) = run_workers(conns, cpus, duration, move |_, a| {
                modes::bulk_worker(&x, direction, size, a)
            })
            .map_err(fail)?;
            (
                "bulk",
                format!(" ({tls_desc}, {direction:?}, {size} B per transfer, {conns} connections)")
                    .replace("Down", "down")
                    .replace("Up", "up"),
                merge(res),
                el,
                true,
                false,
            )
        }
        Mode::Idle { connections, hold } => {
            let hold = secs("--hold", hold)?;
            let n = connections as usize;
            let workers = threads.min(n).max(1);
            let x = ctx.clone();
            let (res, el) = run_workers(workers, cpus, duration, move |i, a| {
                let share = n / workers + usize::from(i < n % workers);
                modes::idle_worker(&x, share, a)
            })
            .map_err(fail)?;
            let mut all = Vec::new();
            let mut held = Vec::new();
            for (s, conns) in res {
                all.push(s);
                held.extend(conns);
            }
            println!("holding {} connections", held.len());
            let _ = std::io::stdout().flush();
            std::thread::sleep(hold);
            modes::close_all(held);
            (
                "idle",
                format!(
                    " ({tls_desc}, {n} connections, held {:.1}s; duration/latency cover the opening phase)",
                    hold.as_secs_f64()
                ),
                merge(all),
                el,
                false,
                false,
            )
        }
    };

    let report = Report::build(mode, &stats, elapsed, with_mb, with_resume);
    if c.json {
        match serde_json::to_string(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => return Err(Fatal::Other(format!("cannot encode JSON: {e}"))),
        }
    } else {
        print!("{}", report.human(&detail, &stats));
    }
    let _ = std::io::stdout().flush();
    if let (Some(file), Some(path)) = (hgrm_file.take(), &c.hgrm) {
        let mut w = BufWriter::new(file);
        let res = hgrm::write_percentile_distribution(&mut w, &stats.hist, 5, 1000.0)
            .and_then(|_| w.flush());
        if let Err(e) = res {
            return Err(Fatal::Other(format!(
                "cannot write --hgrm file {path}: {e}"
            )));
        }
    }
    if stats.slow_closes > 0 {
        eprintln!(
            "warning: {} connection(s) were not closed by the server within 200ms of our close_notify + FIN",
            stats.slow_closes
        );
    }
    if with_resume && stats.resume_attempts > 0 && stats.resumed < stats.resume_attempts {
        eprintln!(
            "warning: only {} of {} handshakes were resumed (the rest fell back to full handshakes)",
            stats.resumed, stats.resume_attempts
        );
    }
    if stats.ops == 0 && stats.errors > 0 {
        eprintln!(
            "error: all {} operations failed; first error: {}",
            stats.errors,
            stats.first_error.as_deref().unwrap_or("unknown")
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(Fatal::Usage(msg)) => {
            eprintln!("ringterm-load: {msg}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(Fatal::Other(msg)) => {
            eprintln!("ringterm-load: {msg}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bounds_rules() {
        assert!(matches!(bounds(None, None), Ok((None, Some(d))) if d == Duration::from_secs(10)));
        assert!(matches!(bounds(Some(5), None), Ok((Some(5), None))));
        assert!(matches!(bounds(Some(5), Some(0.0)), Ok((Some(5), None))));
        assert!(matches!(bounds(None, Some(0.0)), Err(Fatal::Usage(_))));
        assert!(matches!(bounds(Some(0), Some(0.0)), Err(Fatal::Usage(_))));
        assert!(matches!(bounds(Some(0), None), Ok((None, Some(_)))));
        assert!(matches!(bounds(None, Some(-1.0)), Err(Fatal::Usage(_))));
        assert!(matches!(bounds(None, Some(f64::NAN)), Err(Fatal::Usage(_))));
        assert!(matches!(bounds(Some(3), Some(2.5)), Ok((Some(3), Some(_)))));
    }

    #[test]
    fn loopback_rule() {
        assert!(resolve_target("127.0.0.1:8443", false).is_ok());
        assert!(resolve_target("[::1]:8443", false).is_ok());
        assert!(matches!(
            resolve_target("10.1.2.3:443", false),
            Err(Fatal::Usage(_))
        ));
        assert!(resolve_target("10.1.2.3:443", true).is_ok());
        assert!(matches!(
            resolve_target("no-port", false),
            Err(Fatal::Usage(_))
        ));
    }

    #[test]
    fn parses_global_args_after_subcommand() {
        let cli = Cli::try_parse_from([
            "ringterm-load",
            "rr",
            "--threads",
            "2",
            "--rate",
            "100",
            "--insecure",
            "--json",
        ])
        .unwrap();
        assert_eq!(cli.common.threads, 2);
        assert!(cli.common.json);
        assert!(matches!(cli.mode, Mode::Rr { rate: Some(r), .. } if r == 100.0));
        assert!(Cli::try_parse_from(["ringterm-load", "handshake", "--tls", "1.1"]).is_err());
        assert!(Cli::try_parse_from(["ringterm-load", "resume", "--kind", "id13"]).is_err());
        assert!(
            Cli::try_parse_from(["ringterm-load", "handshake", "--insecure", "--ca", "x.pem"])
                .is_err()
        );
    }
}
