//! Shared helpers for ringterm's integration tests: certificates, spawning
//! the binary, reading its metrics, test backends and blocking TLS clients.
//!
//! Every socket made here has read/write timeouts, and every spawned
//! `ringterm` is killed when its guard drops, so no test can hang forever or
//! leave a process behind.

#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rand::RngCore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use sha2::{Digest, Sha256};

/// Read/write timeout of every client and backend socket.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// How long `Ringterm::start` waits for the startup lines.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// A verifier that accepts any server certificate
// ---------------------------------------------------------------------------

/// Accepts any server certificate, offering `schemes` (a test can ask for
/// RSA only); tests that care compare the presented certificate themselves.
#[derive(Debug)]
pub struct AnyCert {
    pub schemes: Vec<rustls::SignatureScheme>,
}

impl AnyCert {
    /// Offering every scheme aws-lc-rs verifies.
    pub fn all() -> Arc<Self> {
        Arc::new(Self {
            schemes: all_schemes(),
        })
    }
}

/// Every signature scheme aws-lc-rs verifies.
pub fn all_schemes() -> Vec<rustls::SignatureScheme> {
    rustls::crypto::aws_lc_rs::default_provider()
        .signature_verification_algorithms
        .supported_schemes()
}

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.schemes.clone()
    }
}

// ---------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------

/// `n` random bytes.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut v);
    v
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Short hex prefix of a digest, for assertion messages.
pub fn hex(d: &[u8]) -> String {
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Polls `f` until it returns true or `timeout` passes. Returns the last result.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(25));
    }
}

/// A TCP connection with timeouts set.
pub fn tcp_connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    set_timeouts(&s, IO_TIMEOUT);
    s
}

/// Sets both socket timeouts.
pub fn set_timeouts(s: &TcpStream, t: Duration) {
    s.set_read_timeout(Some(t)).unwrap();
    s.set_write_timeout(Some(t)).unwrap();
}

/// How a connection ended when a test waited for the server to close it.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    /// Orderly FIN (read returned 0).
    Eof,
    /// Reset or another socket error.
    Error(io::ErrorKind),
}

/// Reads (and discards, returning them) bytes from `s` until the peer closes
/// it, or `within` passes. Returns how it ended, the bytes and the time it
/// took, or `None` if it was still open at the deadline.
pub fn wait_closed(s: &mut TcpStream, within: Duration) -> Option<(Closed, Vec<u8>, Duration)> {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = within.saturating_sub(start.elapsed());
        if left.is_zero() {
            return None;
        }
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => return Some((Closed::Eof, got, start.elapsed())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return None
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Some((Closed::Error(e.kind()), got, start.elapsed())),
        }
    }
}

// ---------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------

/// Which TLS versions a client offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    /// TLS 1.2 only.
    V12,
    /// TLS 1.3 only.
    V13,
    /// Both (rustls defaults).
    Any,
}

/// A self-signed certificate for `localhost`/`127.0.0.1`, written to a
/// temporary directory.
pub struct TestCerts {
    /// Holds the files; removed on drop.
    pub dir: tempfile::TempDir,
    /// Path of the PEM certificate.
    pub cert_path: PathBuf,
    /// Path of the PEM key.
    pub key_path: PathBuf,
    /// The certificate PEM text.
    pub cert_pem: String,
    /// The key PEM text.
    pub key_pem: String,
}

impl TestCerts {
    /// Generates a fresh certificate and key and writes them out.
    pub fn generate() -> Self {
        let (cert_pem, key_pem) = ringterm::tls::generate_self_signed(&["localhost", "127.0.0.1"])
            .expect("generate_self_signed");
        let dir = tempfile::tempdir().expect("tempdir");
        let cert_path = dir.path().join("cert.pem");
        let key_path = dir.path().join("key.pem");
        std::fs::write(&cert_path, &cert_pem).unwrap();
        std::fs::write(&key_path, &key_pem).unwrap();
        Self {
            dir,
            cert_path,
            key_path,
            cert_pem,
            key_pem,
        }
    }

    /// The certificate path as a string.
    pub fn cert(&self) -> String {
        self.cert_path.display().to_string()
    }

    /// The key path as a string.
    pub fn key(&self) -> String {
        self.key_path.display().to_string()
    }

    /// `--cert C --key K`.
    pub fn args(&self) -> Vec<String> {
        vec!["--cert".into(), self.cert(), "--key".into(), self.key()]
    }

    /// A client configuration trusting this certificate, offering `tls`.
    pub fn client_config(&self, tls: Tls) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        let der = CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).expect("cert PEM");
        roots.add(der).expect("add root");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let versions: &[&rustls::SupportedProtocolVersion] = match tls {
            Tls::V12 => &[&rustls::version::TLS12],
            Tls::V13 => &[&rustls::version::TLS13],
            Tls::Any => &[&rustls::version::TLS13, &rustls::version::TLS12],
        };
        let config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }

    /// TLS 1.2-only client configuration.
    pub fn tls12(&self) -> Arc<ClientConfig> {
        self.client_config(Tls::V12)
    }

    /// TLS 1.3-only client configuration.
    pub fn tls13(&self) -> Arc<ClientConfig> {
        self.client_config(Tls::V13)
    }
}

// ---------------------------------------------------------------------------
// The binary
// ---------------------------------------------------------------------------

/// Path of the binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ringterm")
}

/// A running `ringterm`, killed (SIGKILL) on drop.
pub struct Ringterm {
    /// The child process.
    pub child: Child,
    /// Addresses from the `listening on` lines, in order.
    pub listen: Vec<SocketAddr>,
    /// Address from the `admin listening on` line.
    pub admin: Option<SocketAddr>,
    /// The message of every log line seen so far during startup (see
    /// [`log_message`]).
    pub startup: Vec<String>,
    stderr: Arc<Mutex<String>>,
    /// Log messages after startup, for [`Ringterm::wait_log`].
    messages: Arc<Mutex<mpsc::Receiver<String>>>,
}

/// The message of a text log line, `TIME  LEVEL TARGET: MESSAGE fields`
/// (the target is `ringterm` or `ringterm::module`): everything after the
/// target; `None` for other lines.
pub fn log_message(line: &str) -> Option<&str> {
    let (_, rest) = line.split_once(" ringterm")?;
    rest.split_once(": ").map(|(_, m)| m)
}

impl Ringterm {
    /// Starts `ringterm ARGS` and waits for the `ready` line.
    pub fn start<S: AsRef<str>>(args: &[S]) -> Ringterm {
        Self::start_until(args, |line| line.starts_with("ready"))
    }

    /// Starts `ringterm ARGS` and reads its log (stderr) until a message
    /// satisfies `done`. Panics (with stderr) if the process exits or
    /// `START_TIMEOUT` passes.
    pub fn start_until<S: AsRef<str>>(args: &[S], done: impl Fn(&str) -> bool) -> Ringterm {
        let mut cmd = Command::new(bin());
        cmd.args(args.iter().map(|s| s.as_ref()));
        Self::spawn_until(cmd, done)
    }

    /// Like [`Ringterm::start_until`] for a prepared command (environment,
    /// program); stdin, stdout and stderr are set here.
    pub fn spawn_until(mut cmd: Command, done: impl Fn(&str) -> bool) -> Ringterm {
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ringterm");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel::<String>();
        {
            let pipe = child.stderr.take().unwrap();
            let sink = stderr.clone();
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    {
                        let mut all = sink.lock().unwrap();
                        all.push_str(&line);
                        all.push('\n');
                    }
                    if let Some(m) = log_message(&line) {
                        // Keep draining even when nobody listens any more.
                        let _ = tx.send(m.to_owned());
                    }
                }
            });
        }
        let mut rt = Ringterm {
            child,
            listen: Vec::new(),
            admin: None,
            startup: Vec::new(),
            stderr,
            messages: Arc::new(Mutex::new(mpsc::channel().1)),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let addr = |rest: &str| rest.split_whitespace().next().unwrap_or("").to_owned();
                    if let Some(a) = line.strip_prefix("admin listening on ") {
                        rt.admin = Some(addr(a).parse().expect("admin address"));
                    } else if let Some(a) = line.strip_prefix("listening on ") {
                        rt.listen.push(addr(a).parse().expect("listen address"));
                    }
                    let finished = done(&line);
                    rt.startup.push(line);
                    if finished {
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!(
                        "ringterm {args:?} did not finish starting within {START_TIMEOUT:?}; stderr: {}",
                        rt.stderr()
                    );
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = rt.child.wait().ok();
                    panic!(
                        "ringterm {args:?} exited during startup ({status:?}); stderr: {}",
                        rt.stderr()
                    );
                }
            }
        }
        assert!(
            !rt.listen.is_empty(),
            "no `listening on` line: {:?}",
            rt.startup
        );
        rt.messages = Arc::new(Mutex::new(rx));
        rt
    }

    /// Waits up to `within` for a log message (after startup) that
    /// satisfies `pred`, and returns it.
    pub fn wait_log(&self, within: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let rx = self.messages.lock().unwrap();
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(m) if pred(&m) => return Some(m),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// The first listen address.
    pub fn addr(&self) -> SocketAddr {
        self.listen[0]
    }

    /// The admin address (panics if started without `--admin`).
    pub fn admin(&self) -> SocketAddr {
        self.admin.expect("started without --admin")
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Fetches `/metrics` from the admin endpoint.
    pub fn metrics(&self) -> String {
        admin_metrics(self.admin())
    }

    /// Panics if the process has exited or has printed a panic.
    pub fn assert_alive(&mut self) {
        let status = self.child.try_wait().expect("try_wait");
        assert!(
            status.is_none(),
            "ringterm exited unexpectedly: {status:?}; stderr: {}",
            self.stderr()
        );
        let err = self.stderr();
        assert!(!err.contains("panicked"), "ringterm panicked: {err}");
    }

    /// Waits until the summed metric `name` satisfies `pred` (up to 5 s);
    /// returns the final metrics text.
    pub fn wait_metric(&self, name: &str, pred: impl Fn(u64) -> bool) -> String {
        let mut text = String::new();
        let ok = eventually(Duration::from_secs(5), || {
            text = self.metrics();
            pred(metric_sum(&text, name))
        });
        assert!(
            ok,
            "metric {name} = {} never satisfied the condition; metrics:\n{text}",
            metric_sum(&text, name)
        );
        text
    }
}

impl Drop for Ringterm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The result of running the binary to completion.
#[derive(Debug)]
pub struct Exited {
    /// Exit status.
    pub status: ExitStatus,
    /// All of stdout.
    pub stdout: String,
    /// All of stderr.
    pub stderr: String,
}

/// Runs `ringterm ARGS` expecting it to exit by itself within `timeout`;
/// kills it and panics otherwise.
pub fn run_to_exit<S: AsRef<str>>(args: &[S], timeout: Duration) -> Exited {
    run_bin_to_exit(bin(), args, timeout)
}

/// Runs `program ARGS` expecting it to exit by itself within `timeout`;
/// kills it and panics otherwise.
pub fn run_bin_to_exit<S: AsRef<str>>(program: &str, args: &[S], timeout: Duration) -> Exited {
    let args: Vec<&str> = args.iter().map(|s| s.as_ref()).collect();
    let mut child = Command::new(program)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    let read_all = |mut r: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            String::from_utf8_lossy(&v).into_owned()
        })
    };
    let out = read_all(Box::new(child.stdout.take().unwrap()));
    let err = read_all(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stdout = out.join().unwrap();
            let stderr = err.join().unwrap();
            panic!(
                "{program} {args:?} did not exit within {timeout:?}; stdout: {stdout:?}; stderr: {stderr:?}"
            );
        }
        thread::sleep(Duration::from_millis(5));
    };
    Exited {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

// ---------------------------------------------------------------------------
// Admin endpoint and metrics
// ---------------------------------------------------------------------------

/// `GET path` over plain HTTP/1.1; returns (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tcp_connect(addr);
    set_timeouts(&s, Duration::from_secs(5));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read admin response");
    let text = String::from_utf8(raw).expect("admin response is UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP head");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    (code, body.to_owned())
}

/// `GET /metrics` from the admin endpoint; panics unless it is a 200.
pub fn admin_metrics(addr: SocketAddr) -> String {
    let (code, body) = http_get(addr, "/metrics");
    assert_eq!(code, 200, "GET /metrics: {body}");
    body
}

/// The value of `name{worker="W"}`, if present.
pub fn metric_opt(text: &str, name: &str, worker: usize) -> Option<u64> {
    // `name` or `name{labels}`: the series of worker W with (at least)
    // those labels; several series (other labels) are summed.
    let (family, labels) = match name.split_once('{') {
        Some((f, rest)) => (f, rest.trim_end_matches('}')),
        None => (name, ""),
    };
    let prefix = format!("{family}{{worker=\"{worker}\"");
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(&prefix) else {
            continue;
        };
        let Some((series_labels, value)) = rest.split_once("} ") else {
            continue;
        };
        if !labels.is_empty() && !series_labels.contains(labels) {
            continue;
        }
        let v: u64 = value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("bad value for {line}"));
        *found.get_or_insert(0) += v;
    }
    found
}

/// The value of `name{worker="W"}`; panics if absent.
pub fn metric(text: &str, name: &str, worker: usize) -> u64 {
    metric_opt(text, name, worker)
        .unwrap_or_else(|| panic!("no {name}{{worker=\"{worker}\"}} in metrics:\n{text}"))
}

/// How many workers the metrics text shows (by `ringterm_accepted_total`).
pub fn worker_count(text: &str) -> usize {
    (0..)
        .take_while(|&w| metric_opt(text, "ringterm_accepted_total", w).is_some())
        .count()
}

/// `name` summed over all workers; panics if no worker has it.
pub fn metric_sum(text: &str, name: &str) -> u64 {
    let n = worker_count(text);
    assert!(n > 0, "no workers in metrics:\n{text}");
    (0..n).map(|w| metric(text, name, w)).sum()
}

// ---------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------

/// Serves every connection of `listener` with `handler` on its own thread.
/// The accept thread lives until the test process exits.
pub fn serve_listener<F>(listener: TcpListener, handler: F)
where
    F: Fn(TcpStream) + Send + Sync + 'static,
{
    let handler = Arc::new(handler);
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            set_timeouts(&stream, IO_TIMEOUT);
            let handler = handler.clone();
            thread::spawn(move || handler(stream));
        }
    });
}

/// Binds 127.0.0.1:0 and serves it with `handler`.
pub fn spawn_backend<F>(handler: F) -> SocketAddr
where
    F: Fn(TcpStream) + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    serve_listener(listener, handler);
    addr
}

/// An echo backend: echoes until EOF, then shuts down its write side and
/// closes. Counts connections and bytes echoed.
pub struct EchoBackend {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Total bytes echoed, over all connections.
    pub bytes: Arc<AtomicU64>,
    /// Connections accepted.
    pub conns: Arc<AtomicU64>,
}

/// The echo handler for one connection.
pub fn echo_conn(mut s: TcpStream, bytes: &AtomicU64) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => {
                let _ = s.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
                bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Serves `listener` as an echo backend.
pub fn echo_on(listener: TcpListener) -> EchoBackend {
    let addr = listener.local_addr().unwrap();
    let bytes = Arc::new(AtomicU64::new(0));
    let conns = Arc::new(AtomicU64::new(0));
    let (b, c) = (bytes.clone(), conns.clone());
    serve_listener(listener, move |s| {
        c.fetch_add(1, Ordering::Relaxed);
        echo_conn(s, &b);
    });
    EchoBackend { addr, bytes, conns }
}

/// An echo backend on 127.0.0.1:0.
pub fn echo_backend() -> EchoBackend {
    echo_on(TcpListener::bind("127.0.0.1:0").unwrap())
}

/// What a source backend received from one connection.
#[derive(Debug)]
pub struct Received {
    /// Bytes read until EOF.
    pub len: u64,
    /// Their SHA-256.
    pub sha: [u8; 32],
    /// Whether the read ended with a clean EOF (not an error).
    pub clean_eof: bool,
}

/// A "source" backend: on each connection it writes `payload` and shuts down
/// its write side, while concurrently reading (and hashing) what arrives
/// until EOF; the result is sent on the returned channel.
pub fn source_backend(payload: Arc<Vec<u8>>) -> (SocketAddr, mpsc::Receiver<Received>) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let addr = spawn_backend(move |s| {
        let mut w = s.try_clone().unwrap();
        let payload = payload.clone();
        let writer = thread::spawn(move || {
            let ok = w.write_all(&payload).is_ok();
            let _ = w.shutdown(Shutdown::Write);
            ok
        });
        let got = read_hash_to_eof(&s);
        let _ = writer.join();
        let _ = tx.lock().unwrap().send(got);
    });
    (addr, rx)
}

/// Reads `s` until EOF or error, hashing everything.
pub fn read_hash_to_eof(mut s: &TcpStream) -> Received {
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let clean_eof = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => {
                hasher.update(&buf[..n]);
                len += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break false,
        }
    };
    Received {
        len,
        sha: hasher.finalize().into(),
        clean_eof,
    }
}

/// An address on which nothing listens (connections are refused).
pub fn refused_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}

/// A listening socket that never accepts, its accept queue filled so that
/// further SYNs are dropped: connects to it hang. Keep it alive while used.
pub struct BlackHole {
    /// Where it listens.
    pub addr: SocketAddr,
    _listener: TcpListener,
    _fillers: Vec<TcpStream>,
}

/// Makes a [`BlackHole`].
pub fn black_hole() -> BlackHole {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    // Re-listening on a listening socket updates its backlog: 0 lets exactly
    // one connection wait in the accept queue.
    socket2::SockRef::from(&listener)
        .listen(0)
        .expect("listen(0) on the black hole");
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..3 {
        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            fillers.push(s);
        }
    }
    BlackHole {
        addr,
        _listener: listener,
        _fillers: fillers,
    }
}

/// Whether a plain connect to `addr` hangs (for `timeout`) rather than
/// succeeding or failing.
pub fn connect_hangs(addr: SocketAddr, timeout: Duration) -> bool {
    match TcpStream::connect_timeout(&addr, timeout) {
        Err(e) => matches!(
            e.kind(),
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
        ),
        Ok(_) => false,
    }
}

// ---------------------------------------------------------------------------
// TLS clients
// ---------------------------------------------------------------------------

/// The server name the test certificate is valid for.
pub fn server_name() -> ServerName<'static> {
    ServerName::try_from("localhost").unwrap()
}

/// Connects and completes a TLS handshake, returning a blocking stream.
pub fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> io::Result<StreamOwned<ClientConnection, TcpStream>> {
    let mut sock = tcp_connect(addr);
    let mut conn = ClientConnection::new(config, server_name()).map_err(io::Error::other)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)?;
    }
    Ok(StreamOwned::new(conn, sock))
}

/// Sends close_notify and shuts down the TCP write side of a stream.
pub fn close_write(s: &mut StreamOwned<ClientConnection, TcpStream>) -> io::Result<()> {
    s.conn.send_close_notify();
    while s.conn.wants_write() {
        s.conn.write_tls(&mut s.sock)?;
    }
    s.sock.shutdown(Shutdown::Write)
}

/// How a TLS stream's read side ended.
#[derive(Debug, PartialEq, Eq)]
pub enum TlsEnd {
    /// The server sent close_notify (read returned Ok(0)).
    CloseNotify,
    /// TCP EOF without close_notify.
    UnexpectedEof,
    /// Another error (alert, reset, timeout...).
    Error(String),
}

/// Reads a TLS stream until it ends; returns the data and how it ended.
pub fn tls_read_to_end(s: &mut impl Read) -> (Vec<u8>, TlsEnd) {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, TlsEnd::CloseNotify),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return (out, TlsEnd::UnexpectedEof)
            }
            Err(e) => return (out, TlsEnd::Error(format!("{:?}: {e}", e.kind()))),
        }
    }
}

struct DuplexState {
    conn: ClientConnection,
    /// Ciphertext read from the socket that rustls has not taken yet.
    pending: Vec<u8>,
    /// The socket reported EOF.
    eof: bool,
    /// EOF was passed on to rustls.
    eof_fed: bool,
}

/// A TLS client usable from two threads at once: one writes (`write_all`,
/// `close_write`), the other reads (`read`). Socket IO happens outside the
/// lock, so a blocked read never blocks the writer.
pub struct TlsDuplex {
    state: Mutex<DuplexState>,
    /// The TCP socket (use only for raw tricks; it bypasses TLS).
    pub sock: TcpStream,
}

impl TlsDuplex {
    /// Connects and completes the handshake.
    pub fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> io::Result<Self> {
        let s = tls_connect(addr, config)?;
        let (conn, sock) = s.into_parts();
        Ok(Self {
            state: Mutex::new(DuplexState {
                conn,
                pending: Vec::new(),
                eof: false,
                eof_fed: false,
            }),
            sock,
        })
    }

    /// The negotiated protocol version.
    pub fn version(&self) -> Option<rustls::ProtocolVersion> {
        self.state.lock().unwrap().conn.protocol_version()
    }

    /// Encrypts and sends all of `data`.
    pub fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        let mut out = Vec::new();
        while !data.is_empty() {
            {
                let mut st = self.state.lock().unwrap();
                let take = data.len().min(64 * 1024);
                let n = st.conn.writer().write(&data[..take])?;
                data = &data[n..];
                while st.conn.wants_write() {
                    st.conn.write_tls(&mut out)?;
                }
                if n == 0 && out.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "rustls took nothing",
                    ));
                }
            }
            (&self.sock).write_all(&out)?;
            out.clear();
        }
        Ok(())
    }

    /// Sends close_notify, then shuts down the TCP write side.
    pub fn close_write(&self) -> io::Result<()> {
        let mut out = Vec::new();
        {
            let mut st = self.state.lock().unwrap();
            st.conn.send_close_notify();
            while st.conn.wants_write() {
                st.conn.write_tls(&mut out)?;
            }
        }
        (&self.sock).write_all(&out)?;
        self.sock.shutdown(Shutdown::Write)
    }

    /// Reads plaintext. `Ok(0)` means the server sent close_notify; an
    /// `UnexpectedEof` error means TCP EOF without it.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut tmp = vec![0u8; 32 * 1024];
        loop {
            {
                let mut guard = self.state.lock().unwrap();
                let st = &mut *guard;
                while !st.pending.is_empty() {
                    let mut slice = &st.pending[..];
                    match st.conn.read_tls(&mut slice) {
                        Ok(0) => break,
                        Ok(n) => {
                            st.pending.drain(..n);
                            st.conn.process_new_packets().map_err(io::Error::other)?;
                        }
                        // Received-plaintext buffer full: drain it first.
                        Err(_) => break,
                    }
                }
                if st.eof && st.pending.is_empty() && !st.eof_fed {
                    st.eof_fed = true;
                    let _ = st.conn.read_tls(&mut &[][..]);
                    st.conn.process_new_packets().map_err(io::Error::other)?;
                }
                match st.conn.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if st.eof_fed {
                            return Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "EOF without close_notify",
                            ));
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            let n = (&self.sock).read(&mut tmp)?;
            let mut st = self.state.lock().unwrap();
            if n == 0 {
                st.eof = true;
            } else {
                st.pending.extend_from_slice(&tmp[..n]);
            }
        }
    }
}

impl Read for &TlsDuplex {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        TlsDuplex::read(self, buf)
    }
}

/// Sends `payload` through a TLS connection to an echo backend while reading
/// the echo, half-closes after the payload, and returns what came back and
/// how the read side ended.
pub fn echo_roundtrip(client: &TlsDuplex, payload: &[u8]) -> (Vec<u8>, TlsEnd) {
    thread::scope(|scope| {
        let writer = scope.spawn(|| {
            client.write_all(payload)?;
            client.close_write()
        });
        let mut r = client;
        let got = tls_read_to_end(&mut r);
        writer
            .join()
            .expect("writer thread")
            .unwrap_or_else(|e| panic!("writing the payload failed: {e}"));
        got
    })
}

/// Connects through `addr` to an echo backend, sends `payload`, checks that
/// exactly the same bytes come back followed by a clean close_notify.
pub fn assert_echo(addr: SocketAddr, config: Arc<ClientConfig>, payload: &[u8]) {
    let client = TlsDuplex::connect(addr, config).expect("TLS connect");
    let (got, end) = echo_roundtrip(&client, payload);
    assert_eq!(
        got.len(),
        payload.len(),
        "echoed length differs (sent {}, got {}, end {end:?})",
        payload.len(),
        got.len()
    );
    assert!(
        sha256(&got) == sha256(payload),
        "echoed bytes differ: sent {} got {}",
        hex(&sha256(payload)),
        hex(&sha256(&got))
    );
    assert_eq!(
        end,
        TlsEnd::CloseNotify,
        "the echo should end with close_notify"
    );
}

/// Generates the bytes of a TLS ClientHello (as the first flight of a rustls
/// client), for slow-sending tests.
pub fn client_hello_bytes(config: Arc<ClientConfig>) -> Vec<u8> {
    let mut conn = ClientConnection::new(config, server_name()).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

/// Starts `ringterm` on 127.0.0.1:0 in front of `backend` with the test
/// certificate, an admin listener, and `extra` flags (which may repeat, and
/// so override, `--workers 1`).
pub fn start_ringterm(certs: &TestCerts, backend: SocketAddr, extra: &[&str]) -> Ringterm {
    let mut args = vec!["--backend".to_owned(), backend.to_string()];
    args.extend(certs.args());
    args.extend(extra.iter().map(|s| s.to_string()));
    start_ringterm_args(&args)
}

/// Starts `ringterm` on 127.0.0.1:0 with an admin listener, `--workers 1`
/// unless `args` sets it, and `args` (which bring the backend and the
/// certificates).
pub fn start_ringterm_args(args: &[String]) -> Ringterm {
    let mut all: Vec<String> = vec![
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--admin".into(),
        "127.0.0.1:0".into(),
    ];
    if !args.iter().any(|a| a == "--workers") {
        all.extend(["--workers".to_owned(), "1".to_owned()]);
    }
    all.extend(args.iter().cloned());
    Ringterm::start(&all)
}

/// Sends `signal` (e.g. "HUP", "TERM") to `pid` with the shell's `kill`.
pub fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("kill -{signal} {pid}"))
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// A client CA (written to `dir/client-ca.pem`, returned path) and a
/// client certificate it signed, with subject CN "client one".
pub fn client_pki(
    dir: &std::path::Path,
) -> (
    PathBuf,
    Vec<CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
) {
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test client CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let ca_path = dir.join("client-ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "client one");
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    (ca_path, vec![cert.der().clone()], key)
}
