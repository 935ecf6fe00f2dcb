//! Minimal HTTP/1.1 client-side helpers: request builders and a response
//! reader that understands Content-Length, chunked and close-delimited bodies.
//! Bodies are counted and discarded, never stored.

use std::io::{self, Read};

/// Maximum size of a response head (status line + headers).
const MAX_HEAD: usize = 64 * 1024;
/// Read buffer size.
const BUF_SIZE: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{}", io_msg(.0))]
    Io(#[from] io::Error),
    #[error("connection closed before the response was complete")]
    UnexpectedEof,
    #[error("malformed HTTP response: {0}")]
    Malformed(String),
    #[error("HTTP response head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
}

/// Describes an I/O error; socket timeouts (EAGAIN) get a clear message.
pub fn io_msg(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            format!("timed out (socket timeout, {e})")
        }
        _ => e.to_string(),
    }
}

/// Parsed response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    /// HTTP minor version (0 or 1).
    pub minor: u8,
    pub content_length: Option<u64>,
    pub chunked: bool,
    /// `Connection: close` given (or HTTP/1.0 without keep-alive).
    pub close: bool,
}

/// A response whose body has been read completely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body_len: u64,
    /// The connection can carry another request.
    pub keep_alive: bool,
}

/// Parses a response head at the start of `buf`. Returns `Ok(None)` if the
/// head is incomplete, otherwise the head and the number of bytes it took.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, HttpError> {
    let end = match find(buf, b"\r\n\r\n") {
        Some(i) => i + 4,
        None => {
            if buf.len() > MAX_HEAD {
                return Err(HttpError::HeadTooLarge);
            }
            return Ok(None);
        }
    };
    let text = std::str::from_utf8(&buf[..end - 4])
        .map_err(|_| HttpError::Malformed("head is not valid UTF-8".into()))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let minor = match version {
        "HTTP/1.1" => 1,
        "HTTP/1.0" => 0,
        _ => {
            return Err(HttpError::Malformed(format!(
                "bad status line {status_line:?}"
            )))
        }
    };
    let code = parts.next().unwrap_or("");
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HttpError::Malformed(format!(
            "bad status code in {status_line:?}"
        )));
    }
    let status: u16 = code
        .parse()
        .map_err(|_| HttpError::Malformed(format!("bad status code in {status_line:?}")))?;
    let mut head = Head {
        status,
        minor,
        content_length: None,
        chunked: false,
        close: minor == 0,
    };
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| HttpError::Malformed(format!("bad header line {line:?}")))?;
        if name.is_empty() || name.ends_with(' ') || name.ends_with('\t') {
            return Err(HttpError::Malformed(format!("bad header name {name:?}")));
        }
        let value = value.trim_matches(|c| c == ' ' || c == '\t');
        if name.eq_ignore_ascii_case("content-length") {
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(HttpError::Malformed(format!(
                    "bad Content-Length {value:?}"
                )));
            }
            let n: u64 = value
                .parse()
                .map_err(|_| HttpError::Malformed(format!("bad Content-Length {value:?}")))?;
            if head.content_length.is_some_and(|old| old != n) {
                return Err(HttpError::Malformed("conflicting Content-Length".into()));
            }
            head.content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let last = value.rsplit(',').next().unwrap_or("").trim();
            if last.eq_ignore_ascii_case("chunked") {
                head.chunked = true;
            } else {
                // Non-chunked transfer coding: body is delimited by close.
                head.close = true;
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for tok in value.split(',') {
                let tok = tok.trim();
                if tok.eq_ignore_ascii_case("close") {
                    head.close = true;
                } else if tok.eq_ignore_ascii_case("keep-alive") && minor == 0 {
                    head.close = false;
                }
            }
        }
    }
    Ok(Some((head, end)))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads responses from a stream, keeping leftover bytes between calls so it
/// can be reused across keep-alive requests on one connection.
pub struct ResponseReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Default for ResponseReader {
    fn default() -> Self {
        Self::new()
    }
}

impl ResponseReader {
    pub fn new() -> Self {
        Self {
            buf: vec![0; BUF_SIZE],
            start: 0,
            end: 0,
        }
    }

    /// Forget any buffered bytes (use when switching to a new connection).
    pub fn reset(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Reads more bytes into the buffer. Returns the number read (0 = EOF).
    /// An `UnexpectedEof` error from the transport (e.g. TLS without
    /// close_notify) is reported as EOF.
    fn fill<R: Read>(&mut self, r: &mut R) -> Result<usize, HttpError> {
        if self.start > 0 && (self.start == self.end || self.end == self.buf.len()) {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            if self.buf.len() >= MAX_HEAD + BUF_SIZE {
                return Err(HttpError::HeadTooLarge);
            }
            self.buf.resize(self.buf.len() * 2, 0);
        }
        loop {
            match r.read(&mut self.buf[self.end..]) {
                Ok(n) => {
                    self.end += n;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(HttpError::Io(e)),
            }
        }
    }

    /// Reads one complete response (skipping 1xx interim responses).
    pub fn read_response<R: Read>(&mut self, r: &mut R) -> Result<Response, HttpError> {
        loop {
            let head = loop {
                if let Some((head, used)) = parse_head(&self.buf[self.start..self.end])? {
                    self.start += used;
                    break head;
                }
                if self.fill(r)? == 0 {
                    return Err(HttpError::UnexpectedEof);
                }
            };
            if (100..200).contains(&head.status) {
                continue;
            }
            let mut keep_alive = !head.close;
            let body_len = if head.status == 204 || head.status == 304 {
                0
            } else if head.chunked {
                self.read_chunked(r)?
            } else if let Some(n) = head.content_length {
                self.skip_exact(r, n)?;
                n
            } else {
                keep_alive = false;
                self.read_to_eof(r)?
            };
            return Ok(Response {
                status: head.status,
                body_len,
                keep_alive,
            });
        }
    }

    fn skip_exact<R: Read>(&mut self, r: &mut R, mut n: u64) -> Result<(), HttpError> {
        loop {
            let take = (self.buffered() as u64).min(n) as usize;
            self.start += take;
            n -= take as u64;
            if n == 0 {
                return Ok(());
            }
            if self.fill(r)? == 0 {
                return Err(HttpError::UnexpectedEof);
            }
        }
    }

    fn read_to_eof<R: Read>(&mut self, r: &mut R) -> Result<u64, HttpError> {
        let mut total = self.buffered() as u64;
        self.start = self.end;
        loop {
            let n = self.fill(r)?;
            if n == 0 {
                return Ok(total);
            }
            total += n as u64;
            self.start = self.end;
        }
    }

    /// Reads a CRLF-terminated line and returns it without the CRLF.
    fn read_line<R: Read>(&mut self, r: &mut R) -> Result<String, HttpError> {
        loop {
            if let Some(i) = find(&self.buf[self.start..self.end], b"\r\n") {
                let line =
                    String::from_utf8_lossy(&self.buf[self.start..self.start + i]).into_owned();
                self.start += i + 2;
                return Ok(line);
            }
            if self.buffered() > 8192 {
                return Err(HttpError::Malformed("chunk line too long".into()));
            }
            if self.fill(r)? == 0 {
                return Err(HttpError::UnexpectedEof);
            }
        }
    }

    fn read_chunked<R: Read>(&mut self, r: &mut R) -> Result<u64, HttpError> {
        let mut total = 0u64;
        loop {
            let line = self.read_line(r)?;
            let size_str = line.split(';').next().unwrap_or("").trim();
            let size = u64::from_str_radix(size_str, 16)
                .map_err(|_| HttpError::Malformed(format!("bad chunk size {size_str:?}")))?;
            if size == 0 {
                // Trailers until an empty line.
                while !self.read_line(r)?.is_empty() {}
                return Ok(total);
            }
            self.skip_exact(r, size)?;
            total += size;
            if !self.read_line(r)?.is_empty() {
                return Err(HttpError::Malformed("missing CRLF after chunk".into()));
            }
        }
    }
}

/// `GET {path}` request with the given extra header lines.
pub fn get_request(path: &str, close: bool) -> Vec<u8> {
    let conn = if close { "Connection: close\r\n" } else { "" };
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{conn}\r\n").into_bytes()
}

/// Head of a `POST {path}` request with a `len`-byte body (body not included).
pub fn post_head(path: &str, len: u64) -> Vec<u8> {
    format!("POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len}\r\n\r\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A reader that returns at most `chunk` bytes per read, to exercise
    /// partial reads.
    struct Trickle<'a> {
        data: &'a [u8],
        chunk: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.data.len().min(self.chunk).min(buf.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn head_basic() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX: y\r\n\r\nhello";
        let (h, used) = parse_head(raw).unwrap().unwrap();
        assert_eq!(used, raw.len() - 5);
        assert_eq!(
            h,
            Head {
                status: 200,
                minor: 1,
                content_length: Some(5),
                chunked: false,
                close: false
            }
        );
    }

    #[test]
    fn head_incomplete_and_errors() {
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n")
            .unwrap()
            .is_none());
        assert!(parse_head(b"HTTP/2 200 OK\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 2x0 OK\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nbroken\r\n\r\n").is_err());
        assert!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
                .is_err()
        );
        let big = vec![b'a'; MAX_HEAD + 1];
        assert!(matches!(parse_head(&big), Err(HttpError::HeadTooLarge)));
    }

    #[test]
    fn head_connection_semantics() {
        let (h, _) = parse_head(b"HTTP/1.1 200 OK\r\nconnection: Close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.close);
        let (h, _) = parse_head(b"HTTP/1.0 200 OK\r\n\r\n").unwrap().unwrap();
        assert!(h.close);
        let (h, _) = parse_head(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.close);
        let (h, _) = parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.chunked);
        // Status line without a reason phrase is accepted.
        let (h, _) = parse_head(b"HTTP/1.1 404\r\n\r\n").unwrap().unwrap();
        assert_eq!(h.status, 404);
    }

    #[test]
    fn keep_alive_sequence_with_partial_reads() {
        let mut data = Vec::new();
        data.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc");
        data.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        data.extend_from_slice(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
        let body = vec![b'x'; 300_000];
        data.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 300000\r\n\r\n");
        data.extend_from_slice(&body);
        data.extend_from_slice(b"HTTP/1.1 204 No Content\r\n\r\n");
        data.extend_from_slice(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        );
        for chunk in [1, 7, 4096, 1 << 20] {
            let mut src = Trickle { data: &data, chunk };
            let mut rr = ResponseReader::new();
            let r = rr.read_response(&mut src).unwrap();
            assert_eq!((r.status, r.body_len, r.keep_alive), (200, 3, true));
            let r = rr.read_response(&mut src).unwrap();
            assert_eq!((r.status, r.body_len), (201, 0));
            let r = rr.read_response(&mut src).unwrap();
            assert_eq!((r.status, r.body_len), (200, 300_000));
            let r = rr.read_response(&mut src).unwrap();
            assert_eq!((r.status, r.body_len), (204, 0));
            let r = rr.read_response(&mut src).unwrap();
            assert_eq!((r.status, r.body_len, r.keep_alive), (200, 2, false));
            assert!(matches!(
                rr.read_response(&mut src),
                Err(HttpError::UnexpectedEof)
            ));
        }
    }

    #[test]
    fn chunked_body() {
        let data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nTrailer: x\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nz";
        for chunk in [1, 3, 1000] {
            let mut src = Trickle { data, chunk };
            let mut rr = ResponseReader::new();
            let r = rr.read_response(&mut src).unwrap();
            assert_eq!((r.status, r.body_len, r.keep_alive), (200, 15, true));
            let r = rr.read_response(&mut src).unwrap();
            assert_eq!(r.body_len, 1);
        }
    }

    #[test]
    fn close_delimited_body() {
        let mut src = Cursor::new(
            b"HTTP/1.0 200 ok\r\nContent-type: text/html\r\n\r\n<html>body</html>".to_vec(),
        );
        let mut rr = ResponseReader::new();
        let r = rr.read_response(&mut src).unwrap();
        assert_eq!((r.status, r.body_len, r.keep_alive), (200, 17, false));
    }

    #[test]
    fn truncated_body_is_error() {
        let mut src = Cursor::new(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc".to_vec());
        let mut rr = ResponseReader::new();
        assert!(matches!(
            rr.read_response(&mut src),
            Err(HttpError::UnexpectedEof)
        ));
    }

    #[test]
    fn request_builders() {
        assert_eq!(
            get_request("/bytes/100", false),
            b"GET /bytes/100 HTTP/1.1\r\nHost: localhost\r\n\r\n"
        );
        assert_eq!(
            get_request("/", true),
            b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(
            post_head("/upload", 7),
            b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 7\r\n\r\n"
        );
    }
}
