//! The built-in demo backend: a small plaintext HTTP/1.1 server with a
//! thread per connection (small stacks), for `ringterm demo`, the tests
//! and benchmarks. It is the backend, not the product: plain blocking
//! sockets keep it obviously correct.
//!
//! - `GET /` → a short text body;
//! - `GET /bytes/N` → exactly N bytes of body;
//! - `POST <any>` with `Content-Length` → reads and discards the body, then
//!   replies with a short body saying how many bytes arrived.
//!
//! Keep-alive by default; `Connection: close` is honoured. Every response
//! has a `Content-Length`. A PROXY protocol v1/v2 header at the start of a
//! connection (`ringterm --proxy-protocol`) is accepted and skipped.

use std::net::SocketAddr;

use std::io::{Read, Write};

/// Largest body `/bytes/N` serves.
pub const MAX_BODY: u64 = 1 << 30;
/// Largest request head we accept.
const MAX_HEAD: usize = 16 * 1024;

static FILL: [u8; 65536] = [b'x'; 65536];

/// A parsed request head.
#[derive(Debug, PartialEq, Eq)]
pub struct Head {
    /// Length of the head, including the blank line.
    pub len: usize,
    /// Method.
    pub method: String,
    /// Request target.
    pub path: String,
    /// Content-Length of the body (0 if absent).
    pub content_length: u64,
    /// Whether the client asked to close after this response.
    pub close: bool,
}

/// Errors parsing a request head.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// More bytes are needed.
    #[error("incomplete request head")]
    Incomplete,
    /// The head is malformed or too large.
    #[error("bad request: {0}")]
    Bad(&'static str),
}

/// Parses one request head from the front of `buf`.
pub fn parse_head(buf: &[u8]) -> Result<Head, HeadError> {
    let Some((end, len)) = head_end(buf) else {
        return if buf.len() > MAX_HEAD {
            Err(HeadError::Bad("head too large"))
        } else {
            Err(HeadError::Incomplete)
        };
    };
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| HeadError::Bad("not utf-8"))?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request = lines.next().ok_or(HeadError::Bad("empty"))?;
    let mut parts = request.split(' ');
    let method = parts
        .next()
        .filter(|m| !m.is_empty())
        .ok_or(HeadError::Bad("no method"))?;
    let path = parts.next().ok_or(HeadError::Bad("no target"))?;
    let version = parts.next().ok_or(HeadError::Bad("no version"))?;
    let mut close = version == "HTTP/1.0";
    let mut content_length = 0;
    for line in lines {
        let (name, value) = line.split_once(':').ok_or(HeadError::Bad("bad header"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = value
                .parse()
                .map_err(|_| HeadError::Bad("bad content-length"))?;
        } else if name.eq_ignore_ascii_case("connection") {
            if value.eq_ignore_ascii_case("close") {
                close = true;
            } else if value.eq_ignore_ascii_case("keep-alive") {
                close = false;
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HeadError::Bad("chunked bodies are not supported"));
        }
    }
    Ok(Head {
        len,
        method: method.to_owned(),
        path: path.to_owned(),
        content_length,
        close,
    })
}

/// Where the head ends: the offset of the line feed that ends its last
/// line, and the length of the head with the empty line after it. Lines
/// end with CRLF or, as RFC 9112 §2.2 lets a recipient accept, a bare LF
/// (tlsfuzzer's TLS 1.2 scripts send `GET / HTTP/1.0\n\n`).
fn head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut from = 0;
    while let Some(i) = buf[from..].iter().position(|&b| b == b'\n') {
        let lf = from + i;
        match &buf[lf + 1..] {
            [b'\n', ..] => return Some((lf, lf + 2)),
            [b'\r', b'\n', ..] => return Some((lf, lf + 3)),
            _ => from = lf + 1,
        }
    }
    None
}

/// Stack size of a connection's thread: the server keeps little on it.
const STACK: usize = 128 * 1024;

/// Starts the demo backend on `addr` in its own thread; returns the bound address.
pub fn start(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("ringterm-demo".into())
        .spawn(move || loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let spawned = std::thread::Builder::new()
                        .name("ringterm-demo-conn".into())
                        .stack_size(STACK)
                        .spawn(move || serve(stream));
                    if spawned.is_err() {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                }
                // EMFILE and the like: back off instead of spinning.
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
            }
        })?;
    Ok(local)
}

/// Starts the demo backend on the UNIX socket `path` (removed first if it
/// is a stale socket) in its own thread.
pub fn start_unix(path: &std::path::Path) -> std::io::Result<()> {
    if std::fs::symlink_metadata(path)
        .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
    {
        std::fs::remove_file(path)?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    std::thread::Builder::new()
        .name("ringterm-demo".into())
        .spawn(move || loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    let spawned = std::thread::Builder::new()
                        .name("ringterm-demo-conn".into())
                        .stack_size(STACK)
                        .spawn(move || serve(stream));
                    if spawned.is_err() {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
            }
        })?;
    Ok(())
}

fn serve<S: Read + Write>(mut stream: S) {
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = vec![0u8; 16 * 1024];
    let mut pending_body: u64 = 0;
    // Until the first bytes show whether a PROXY header is there.
    let mut proxy_checked = false;
    loop {
        if !proxy_checked && !buf.is_empty() {
            use crate::proxy::{parse, ParseLimits, Parsed, ProxyError};
            match parse(&buf, &ParseLimits::default()) {
                Ok(Parsed::Done { consumed, .. }) => {
                    buf.drain(..consumed);
                    proxy_checked = true;
                }
                Ok(Parsed::NeedMore) => {}
                // No PROXY signature: plain HTTP.
                Err(ProxyError::Missing(_) | ProxyError::BadSignature) => proxy_checked = true,
                Err(_) => return,
            }
        }
        // Parse every complete request in the buffer.
        if proxy_checked {
            loop {
                if pending_body > 0 {
                    let take = pending_body.min(buf.len() as u64) as usize;
                    buf.drain(..take);
                    pending_body -= take as u64;
                    if pending_body > 0 {
                        break;
                    }
                }
                let head = match parse_head(&buf) {
                    Ok(h) => h,
                    Err(HeadError::Incomplete) => break,
                    Err(HeadError::Bad(why)) => {
                        let body = format!("{why}\n");
                        let resp = format!(
                        "HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                        let _ = stream.write_all(resp.as_bytes());
                        return;
                    }
                };
                buf.drain(..head.len);
                pending_body = head.content_length;
                let consumed_now = pending_body.min(buf.len() as u64) as usize;
                buf.drain(..consumed_now);
                pending_body -= consumed_now as u64;
                // Read the rest of the body before answering.
                while pending_body > 0 {
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            let take = pending_body.min(n as u64) as usize;
                            pending_body -= take as u64;
                            buf.extend_from_slice(&chunk[take..n]);
                        }
                    }
                }
                if !respond(&mut stream, &head) || head.close {
                    return;
                }
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Writes the response; returns false if the connection failed.
fn respond<S: Write>(stream: &mut S, head: &Head) -> bool {
    let (status, body_len, text): (&str, u64, Option<String>) = if head.method == "POST" {
        let t = format!("received {} bytes\n", head.content_length);
        ("200 OK", t.len() as u64, Some(t))
    } else if head.method != "GET" && head.method != "HEAD" {
        (
            "405 Method Not Allowed",
            19,
            Some("method not allowed\n".to_owned()),
        )
    } else if head.path == "/" {
        let t = "hello from the ringterm demo backend\n".to_owned();
        ("200 OK", t.len() as u64, Some(t))
    } else if let Some(n) = head
        .path
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse::<u64>().ok())
    {
        if n > MAX_BODY {
            ("400 Bad Request", 15, Some("body too large\n".to_owned()))
        } else {
            ("200 OK", n, None)
        }
    } else {
        ("404 Not Found", 10, Some("not found\n".to_owned()))
    };
    let conn = if head.close { "close" } else { "keep-alive" };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {body_len}\r\nConnection: {conn}\r\n\r\n"
    )
    .into_bytes();
    if head.method == "HEAD" {
        return stream.write_all(&out).is_ok();
    }
    match text {
        Some(t) => {
            out.extend_from_slice(t.as_bytes());
            stream.write_all(&out).is_ok()
        }
        None => {
            // Small bodies go out with the head in one write.
            let mut left = body_len;
            let first = left.min(16 * 1024) as usize;
            out.extend_from_slice(&FILL[..first]);
            left -= first as u64;
            if stream.write_all(&out).is_err() {
                return false;
            }
            while left > 0 {
                let n = left.min(FILL.len() as u64) as usize;
                if stream.write_all(&FILL[..n]).is_err() {
                    return false;
                }
                left -= n as u64;
            }
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_heads() {
        let h = parse_head(b"GET / HTTP/1.0\n\nrest").unwrap();
        assert_eq!((h.len, h.path.as_str(), h.close), (16, "/", true));
        let h = parse_head(b"GET /a HTTP/1.1\nHost: x\r\n\r\n").unwrap();
        assert_eq!((h.len, h.path.as_str()), (27, "/a"));
        assert_eq!(
            parse_head(b"GET / HTTP/1.0\r\n\r"),
            Err(HeadError::Incomplete)
        );
        let h = parse_head(b"GET /bytes/10 HTTP/1.1\r\nHost: x\r\n\r\nrest").unwrap();
        assert_eq!(h.len, 35);
        assert_eq!(h.path, "/bytes/10");
        assert!(!h.close);
        let h = parse_head(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nConnection: close\r\n\r\n")
            .unwrap();
        assert_eq!(h.content_length, 5);
        assert!(h.close);
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\n"),
            Err(HeadError::Incomplete)
        );
        assert!(matches!(
            parse_head(b"GET / HTTP/1.1\r\nbad\r\n\r\n"),
            Err(HeadError::Bad(_))
        ));
        assert!(matches!(
            parse_head(b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            Err(HeadError::Bad(_))
        ));
    }
}
