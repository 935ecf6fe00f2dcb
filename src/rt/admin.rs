//! The admin endpoint: a small HTTP/1.1 server on its own thread, never on
//! a worker. It reads the workers' counters (atomics), nothing else.
//!
//! Serves `/metrics` (Prometheus text) and `/healthz`; anything else is 404.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::{render_prometheus, WorkerCounters};

/// Binds `addr` and serves it on a new thread. Returns the bound address.
pub fn start(addr: SocketAddr, counters: Vec<Arc<WorkerCounters>>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("ringterm-admin".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let counters = counters.clone();
                // One short-lived thread per admin request: a client that
                // never sends cannot block the next scrape.
                let _ = std::thread::Builder::new()
                    .name("ringterm-admin-conn".into())
                    .spawn(move || {
                        let _ = handle(stream, &counters);
                    });
            }
        })?;
    Ok(local)
}

fn handle(stream: TcpStream, counters: &[Arc<WorkerCounters>]) -> std::io::Result<()> {
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
    let path = target.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET", "/metrics") => {
            let refs: Vec<&WorkerCounters> = counters.iter().map(|c| c.as_ref()).collect();
            (
                "200 OK",
                "text/plain; version=0.0.4",
                render_prometheus(&refs),
            )
        }
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_owned()),
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_owned()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "method not allowed\n".to_owned(),
        ),
    };
    let mut out = stream;
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    out.flush()
}
