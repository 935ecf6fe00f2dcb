//! `--ocsp-fetch`: fetch each certificate's OCSP response from the
//! responder named in its Authority Information Access extension, on a
//! thread of its own (never a worker), as hitch does.
//!
//! A certificate is fetched for at start, then again halfway between the
//! stapled response's `thisUpdate` and `nextUpdate` (so a response is
//! always replaced well before it expires), and retried every
//! `min(60 s, --ocsp-refresh)` while it has none. A fetched response is
//! checked like a file one (`tls::ocsp::verify`) and used when the response
//! file is missing or not valid. Requests are plain HTTP/1.0 POSTs
//! (`application/ocsp-request`), as RFC 6960 Appendix A describes; the
//! answer is read up to 1 MiB with a 10 s timeout.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use super::reload::{now_unix, TlsReloader};
use crate::tls::loader::OcspState;
use crate::tls::ocsp;

/// Fetched responses by certificate file, shared with the loader.
pub type Fetched = Arc<ArcSwap<HashMap<String, Vec<u8>>>>;

const TIMEOUT: Duration = Duration::from_secs(10);
const MAX_RESPONSE: u64 = 1 << 20;

/// Starts the fetch thread (`ringterm-ocsp-fetch`).
pub fn spawn(reloader: Arc<TlsReloader>, fetched: Fetched) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("ringterm-ocsp-fetch".into())
        .spawn(move || {
            let mut last_attempt: HashMap<String, u64> = HashMap::new();
            let mut last_error: HashMap<String, String> = HashMap::new();
            loop {
                let wait = round(&reloader, &fetched, &mut last_attempt, &mut last_error);
                std::thread::sleep(Duration::from_secs(wait.max(1)));
            }
        })
        .map(|_| ())
}

/// One pass over the certificates; returns how long to sleep, seconds.
fn round(
    reloader: &TlsReloader,
    fetched: &Fetched,
    last_attempt: &mut HashMap<String, u64>,
    last_error: &mut HashMap<String, String>,
) -> u64 {
    let loaded = reloader.loaded();
    let period = reloader.refresh_period();
    let retry = period.min(60);
    let now = now_unix();
    let mut wake = now + period;
    let mut changed = false;
    for cert in &loaded.certs {
        let Some(issuer) = cert.key.cert.get(1) else {
            continue;
        };
        let leaf = &cert.key.cert[0];
        let urls = ocsp::responder_urls(leaf);
        let Some(url) = urls.first() else {
            continue;
        };
        let refresh_at = match &cert.ocsp {
            OcspState::Stapled { validity, .. } => {
                validity.this_update + validity.next_update.saturating_sub(validity.this_update) / 2
            }
            _ => 0,
        };
        let due = refresh_at.max(last_attempt.get(&cert.file).map_or(0, |t| t + retry));
        if now < due {
            wake = wake.min(due);
            continue;
        }
        last_attempt.insert(cert.file.clone(), now);
        let result = ocsp::request(leaf, issuer)
            .map_err(|e| e.to_string())
            .and_then(|req| http_post(url, &req))
            .and_then(|der| {
                ocsp::verify(&der, leaf, issuer, now_unix())
                    .map(|_| der)
                    .map_err(|e| e.to_string())
            });
        match result {
            Ok(der) => {
                last_error.remove(&cert.file);
                let mut map = HashMap::clone(&fetched.load());
                map.insert(cert.file.clone(), der);
                fetched.store(Arc::new(map));
                changed = true;
                tracing::info!(url = %url, file = %cert.file, "OCSP response fetched");
            }
            Err(e) => {
                wake = wake.min(now + retry);
                // One warning per distinct failure.
                if last_error.get(&cert.file) != Some(&e) {
                    tracing::warn!("OCSP fetch from {url} for {} failed: {e}", cert.file);
                    crate::metrics::process::global().ocsp_rejected(1);
                    last_error.insert(cert.file.clone(), e);
                }
            }
        }
    }
    if changed {
        reloader.refresh_ocsp();
    }
    wake.saturating_sub(now_unix())
}

/// POSTs `body` to an `http://host[:port]/path` URL; returns the 200
/// answer's body.
fn http_post(url: &str, body: &[u8]) -> Result<Vec<u8>, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// OCSP URLs are fetched"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => match p.parse::<u16>() {
            Ok(port) => (h.trim_start_matches('[').trim_end_matches(']'), port),
            Err(_) => (authority, 80),
        },
        _ => (authority, 80),
    };
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("{host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host}: no address"))?;
    let mut stream =
        TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("{addr}: {e}"))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|_| stream.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let head = format!(
        "POST {path} HTTP/1.0\r\nHost: {authority}\r\nContent-Type: application/ocsp-request\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .and_then(|_| stream.write_all(body))
        .map_err(|e| format!("{addr}: {e}"))?;
    let mut answer = Vec::new();
    stream
        .take(MAX_RESPONSE)
        .read_to_end(&mut answer)
        .map_err(|e| format!("{addr}: {e}"))?;
    parse_http_answer(&answer)
}

/// The body of an HTTP/1.x 200 answer read to its end.
fn parse_http_answer(answer: &[u8]) -> Result<Vec<u8>, String> {
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no HTTP header in the answer")?;
    let head = String::from_utf8_lossy(&answer[..split]);
    let status = head.lines().next().unwrap_or("");
    let code = status.split_whitespace().nth(1).unwrap_or("");
    if !status.starts_with("HTTP/1.") || code != "200" {
        return Err(format!("responder answered {status:?}"));
    }
    let mut body = answer[split + 4..].to_vec();
    let length = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())?
    });
    if let Some(n) = length {
        if body.len() < n {
            return Err(format!("answer cut short: {} of {n} bytes", body.len()));
        }
        body.truncate(n);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_answers() {
        assert_eq!(
            parse_http_answer(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nabcdef").unwrap(),
            b"abc"
        );
        assert_eq!(
            parse_http_answer(b"HTTP/1.1 200 OK\r\n\r\nxy").unwrap(),
            b"xy"
        );
        assert!(parse_http_answer(b"HTTP/1.0 404 Not Found\r\n\r\n").is_err());
        assert!(parse_http_answer(b"HTTP/1.0 200 OK\r\nContent-Length: 9\r\n\r\nab").is_err());
        assert!(parse_http_answer(b"garbage").is_err());
        assert!(http_post("https://x/", b"").is_err());
    }
}
