//! The admin endpoint: a small HTTP/1.1 server on its own thread, never on
//! a worker. It reads the workers' counters (atomics), nothing else.
//!
//! Serves `/metrics` (Prometheus text: counters and histograms, per worker,
//! plus merged quantile gauges), `/histograms/NAME` (the HdrHistogram
//! percentile distribution, `.hgrm` text, in milliseconds) and `/healthz`;
//! `?worker=N` narrows `/metrics` and `/histograms/NAME` to one worker.
//! Anything else is 404 (405 for methods other than GET).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::hist_hub::HistHub;
use crate::metrics::hist::{self, Histograms};
use crate::metrics::{hgrm, render_counters, WorkerCounters, WorkerFilter};

/// How long a scrape waits for the workers' fresh histogram copies.
pub const COLLECT_WAIT: Duration = Duration::from_millis(250);

/// Pause after a failed accept (the workers' accept loops use the same).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Admin connections served at once (one short-lived thread each); one
/// more is answered `503` at once and closed, so a flood of idle
/// connections cannot make the process start threads without bound.
pub const MAX_CONNECTIONS: usize = 16;

/// Frees an admin connection slot when its thread ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Binds `addr` and serves it on a new thread. Returns the bound address.
pub fn start(
    addr: SocketAddr,
    counters: Vec<Arc<WorkerCounters>>,
    hists: Arc<HistHub>,
) -> std::io::Result<SocketAddr> {
    serve(TcpListener::bind(addr)?, counters, hists)
}

/// Serves an already bound admin listener on a new thread (so the socket
/// can be bound before privileges are dropped). Returns its address.
pub fn serve(
    listener: TcpListener,
    counters: Vec<Arc<WorkerCounters>>,
    hists: Arc<HistHub>,
) -> std::io::Result<SocketAddr> {
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("ringterm-admin".into())
        .spawn(move || {
            let open = Arc::new(AtomicUsize::new(0));
            for stream in listener.incoming() {
                let mut stream = match stream {
                    Ok(stream) => stream,
                    Err(e) => {
                        // accept(2) takes its fd number before it waits, so
                        // while the process is out of fds (EMFILE, ENFILE)
                        // it fails at once, every time: back off like the
                        // workers do instead of spinning.
                        tracing::warn!(error = %e, "admin accept failed");
                        std::thread::sleep(ACCEPT_BACKOFF);
                        continue;
                    }
                };
                if open.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
                    open.fetch_sub(1, Ordering::AcqRel);
                    // Never blocks this thread: a small answer, or nothing.
                    let _ = stream.set_nonblocking(true);
                    let _ = stream.write_all(
                        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                    continue;
                }
                let slot = Slot(open.clone());
                let counters = counters.clone();
                let hists = hists.clone();
                // One short-lived thread per admin request (at most
                // MAX_CONNECTIONS): a client that never sends cannot block
                // the next scrape.
                let spawned = std::thread::Builder::new()
                    .name("ringterm-admin-conn".into())
                    .spawn(move || {
                        let _slot = slot;
                        let _ = handle(stream, &counters, &hists);
                    });
                if let Err(e) = spawned {
                    tracing::warn!(error = %e, "admin: cannot start a thread");
                }
            }
        })?;
    Ok(local)
}

fn handle(
    stream: TcpStream,
    counters: &[Arc<WorkerCounters>],
    hists: &HistHub,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.by_ref().take(8192).read_line(&mut line)?;
    // Drain headers (bounded).
    let mut header = String::new();
    for _ in 0..100 {
        header.clear();
        if reader.by_ref().take(8192).read_line(&mut header)? == 0
            || header == "\r\n"
            || header == "\n"
        {
            break;
        }
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("");
    let target = parts.next().unwrap_or("");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (status, ctype, body) = if method != "GET" {
        (
            "405 Method Not Allowed",
            "text/plain",
            "method not allowed\n".to_owned(),
        )
    } else {
        match route(path, query, counters, hists) {
            Ok(body) => ("200 OK", "text/plain; version=0.0.4", body),
            Err((status, msg)) => (status, "text/plain", msg),
        }
    };
    let mut out = stream;
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    out.flush()
}

/// The body for `GET path?query`, or an error status and message.
fn route(
    path: &str,
    query: &str,
    counters: &[Arc<WorkerCounters>],
    hists: &HistHub,
) -> Result<String, (&'static str, String)> {
    let filter = worker_filter(query, counters.len())?;
    match path {
        "/healthz" => Ok("ok\n".to_owned()),
        "/metrics" => {
            let refs: Vec<&WorkerCounters> = counters.iter().map(|c| c.as_ref()).collect();
            let mut out = String::new();
            render_counters(&mut out, &refs, filter);
            let copies = hists.collect(COLLECT_WAIT);
            let hrefs: Vec<&Histograms> = copies.iter().map(|c| &c.hist).collect();
            hist::render_prometheus(&mut out, &hrefs, filter);
            if filter == WorkerFilter::All {
                crate::metrics::process::global().render(&mut out);
                crate::acme::metrics().render(&mut out);
            }
            Ok(out)
        }
        _ => {
            let name = path
                .strip_prefix("/histograms/")
                .filter(|n| hist::NAMES.contains(n))
                .ok_or(("404 Not Found", "not found\n".to_owned()))?;
            let mut merged = Histograms::new();
            for (w, copy) in hists.collect(COLLECT_WAIT).iter().enumerate() {
                if filter == WorkerFilter::All || filter == WorkerFilter::One(w) {
                    merged.merge(&copy.hist);
                }
            }
            let h = merged.by_name(name).expect("name checked above");
            let mut out = Vec::new();
            hgrm::write_percentile_distribution(&mut out, &h, 5, 1000.0)
                .map_err(|e| ("500 Internal Server Error", format!("{e}\n")))?;
            Ok(String::from_utf8_lossy(&out).into_owned())
        }
    }
}

/// `worker=N` in a query string, checked against the worker count.
fn worker_filter(query: &str, workers: usize) -> Result<WorkerFilter, (&'static str, String)> {
    if query.is_empty() {
        return Ok(WorkerFilter::All);
    }
    // The one parameter there is.
    match query.split_once('=') {
        Some(("worker", v)) => match v.parse::<usize>() {
            Ok(n) if n < workers => Ok(WorkerFilter::One(n)),
            _ => Err((
                "404 Not Found",
                format!("no worker {v:?}: workers are 0..{workers}\n"),
            )),
        },
        _ => Err((
            "400 Bad Request",
            format!("unknown query {query:?}: only worker=N\n"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_query_is_checked() {
        assert_eq!(worker_filter("", 2), Ok(WorkerFilter::All));
        assert_eq!(worker_filter("worker=1", 2), Ok(WorkerFilter::One(1)));
        assert!(worker_filter("worker=2", 2).is_err());
        assert!(worker_filter("worker=x", 2).is_err());
        assert!(worker_filter("foo=1", 2).is_err());
        assert!(worker_filter("worker=1&worker=0", 2).is_err());
    }
}
