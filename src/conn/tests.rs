//! Unit tests of the connection machine, per state, in memory: a rustls
//! client on one side, a scripted backend on the other, and a harness that
//! plays the runtime (it holds the ops in flight and completes them when a
//! test says so). The model-based property test (`model.rs`) drives the same
//! harness with random interleavings.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig};

use super::*;
use crate::route::{BackendAddr, Pools, RouteTable};
use crate::tls::{
    build_server_config, generate_self_signed, load_cert_chain, load_private_key, TlsPolicy,
};

pub(super) const BACKEND_A: &str = "127.0.0.1:9001";
pub(super) const BACKEND_B: &str = "127.0.0.1:9002";

fn configs() -> &'static (Arc<ServerConfig>, Arc<ClientConfig>) {
    static CONFIGS: OnceLock<(Arc<ServerConfig>, Arc<ClientConfig>)> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        let (cert, key) = generate_self_signed(&["localhost"]).unwrap();
        let chain = load_cert_chain("c", cert.as_bytes()).unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(chain[0].clone()).unwrap();
        let key = load_private_key("k", key.as_bytes()).unwrap();
        let server = build_server_config(chain, key, &TlsPolicy::default()).unwrap();
        let client = ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        (server, Arc::new(client))
    })
}

pub(super) fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A read or write the machine asked for, held by the harness.
#[derive(Debug)]
pub(super) struct Pending {
    pub buf: Vec<u8>,
    pub off: usize,
}

/// The runtime, the client and the backend, in memory.
pub(super) struct World {
    pub conn: Conn,
    pub pools: Pools,
    pub now: Instant,
    pub client: ClientConnection,
    /// Ciphertext the client sent that the server has not read yet.
    pub client_wire: VecDeque<u8>,
    /// The client sent FIN (after its queued bytes).
    pub client_fin: bool,
    /// The client reset its connection.
    pub client_reset: bool,
    /// Plaintext the client's application wrote, in order.
    pub client_sent: Vec<u8>,
    /// For each chunk the client's application wrote: the ciphertext
    /// offset (in all bytes the client sent) at which it was complete.
    pub client_chunks: Vec<(usize, usize)>,
    /// All ciphertext the client sent so far, and how much the server read.
    pub client_wire_total: usize,
    pub client_read_by_server: usize,
    /// Ciphertext bytes the server wrote to the client.
    pub server_wrote: usize,
    /// Plaintext the client received, and whether a close_notify came.
    pub client_got: Vec<u8>,
    pub client_close_notify: bool,
    /// The client's TLS stack failed (an alert, a broken record).
    pub client_tls_error: bool,
    /// The server shut the client's write side (FIN) / both.
    pub client_fin_from_server: bool,
    /// Plaintext the backend sent that the server has not read yet.
    pub backend_wire: VecDeque<u8>,
    pub backend_sent: Vec<u8>,
    pub backend_fin: bool,
    pub backend_reset: bool,
    /// Bytes the server read from the backend.
    pub backend_read_by_server: usize,
    /// What the backend received, and whether the server sent FIN.
    pub backend_got: Vec<u8>,
    pub backend_fin_from_server: bool,
    /// The backend the server connected to.
    pub connected: Option<BackendAddr>,
    /// Ops in flight.
    pub c_read: Option<Pending>,
    pub c_write: Option<Pending>,
    pub b_read: Option<Pending>,
    pub b_write: Option<Pending>,
    pub connect: Option<BackendAddr>,
    pub c_cancel: bool,
    pub b_cancel: bool,
    /// Backends that refuse connections.
    pub refusing: Vec<BackendAddr>,
    pub outcome: Option<Outcome>,
    /// The runtime brings its own read buffers (a provided-buffer ring).
    pub runtime_buffers: bool,
    /// The most a read returns with runtime buffers (the ring's buffer size).
    pub ring_buf: usize,
    /// Session lookups asked for (key, take).
    pub lookups: Vec<(Vec<u8>, bool)>,
    /// With runtime buffers: backend reads lend their buffer to the client
    /// write ([`Conn::handle_recv_lent`]).
    pub lend: bool,
    /// A lent buffer and its records, until their write is submitted.
    pub lent: Option<(Vec<u8>, LentRecords)>,
    /// The client write in flight is a lent one (its `Pending` holds the
    /// wire image, gathered as the runtime would).
    pub c_write_lent: bool,
    /// Backend reads that were sealed in their lent buffer.
    pub lent_reads: usize,
}

impl World {
    pub fn new(cfg: ConnConfig, backends: &[&str]) -> Self {
        let (server, client) = configs();
        Self::with_server(cfg, backends, server.clone(), client.clone())
    }

    pub fn with_server(
        cfg: ConnConfig,
        backends: &[&str],
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
    ) -> Self {
        let now = cfg.epoch;
        let runtime_buffers = cfg.runtime_buffers;
        let table = RouteTable::single(backends.iter().map(|b| addr(b).into()).collect(), 5_000);
        let conn = Conn::new(
            cfg,
            server,
            addr("192.0.2.1:40000"),
            Some(addr("127.0.0.1:443")),
            now,
        )
        .unwrap();
        let client =
            ClientConnection::new(client, ServerName::try_from("localhost").unwrap()).unwrap();
        let mut w = Self {
            conn,
            pools: Pools::new(&table),
            now,
            client,
            client_wire: VecDeque::new(),
            client_fin: false,
            client_reset: false,
            client_sent: Vec::new(),
            client_chunks: Vec::new(),
            client_wire_total: 0,
            client_read_by_server: 0,
            server_wrote: 0,
            client_got: Vec::new(),
            client_close_notify: false,
            client_tls_error: false,
            client_fin_from_server: false,
            backend_wire: VecDeque::new(),
            backend_sent: Vec::new(),
            backend_fin: false,
            backend_reset: false,
            backend_read_by_server: 0,
            backend_got: Vec::new(),
            backend_fin_from_server: false,
            connected: None,
            c_read: None,
            c_write: None,
            b_read: None,
            b_write: None,
            connect: None,
            c_cancel: false,
            b_cancel: false,
            refusing: Vec::new(),
            outcome: None,
            runtime_buffers,
            ring_buf: 4096,
            lookups: Vec::new(),
            lend: false,
            lent: None,
            c_write_lent: false,
            lent_reads: 0,
        };
        w.flush_client_tls();
        w.pump();
        w
    }

    /// Moves the client's pending TLS output to the wire.
    fn flush_client_tls(&mut self) {
        let mut out = Vec::new();
        while self.client.wants_write() {
            if self.client.write_tls(&mut out).is_err() {
                break;
            }
        }
        self.client_wire_total += out.len();
        self.client_wire.extend(out);
    }

    /// Asks the machine for ops until it has none, then for its outcome.
    pub fn pump(&mut self) {
        while let Some(op) = self.conn.poll_op(self.now, &mut self.pools) {
            self.take_op(op);
        }
        if self.lent.is_some() && !self.conn.lent_pending() {
            // The machine dropped what it sealed there: the buffer is back.
            self.lent = None;
        }
        if let Some(out) = self.conn.poll_outcome() {
            assert!(self.outcome.is_none(), "outcome reported twice");
            assert!(
                self.c_read.is_none()
                    && self.c_write.is_none()
                    && self.b_read.is_none()
                    && self.b_write.is_none()
                    && self.connect.is_none()
                    && !self.c_cancel
                    && !self.b_cancel
                    && !self.conn.lent_pending(),
                "outcome with an op in flight: {out:?}"
            );
            self.outcome = Some(out);
        }
    }

    fn take_op(&mut self, op: Op) {
        assert!(self.outcome.is_none(), "op after the outcome: {op:?}");
        match op {
            Op::Recv { side, buf } => {
                let slot = match side {
                    Side::Client => &mut self.c_read,
                    Side::Backend => &mut self.b_read,
                };
                assert!(slot.is_none(), "two reads in flight on {side:?}");
                assert!(
                    self.runtime_buffers || buf.capacity() > buf.len(),
                    "a read with no room"
                );
                *slot = Some(Pending { buf, off: 0 });
            }
            Op::Send { side, buf, off } => {
                assert!(off < buf.len(), "an empty write");
                let slot = match side {
                    Side::Client => &mut self.c_write,
                    Side::Backend => &mut self.b_write,
                };
                assert!(slot.is_none(), "two writes in flight on {side:?}");
                *slot = Some(Pending { buf, off });
            }
            Op::ShutdownWrite { side } => match side {
                Side::Client => {
                    assert!(self.c_write.is_none(), "FIN with a client write in flight");
                    self.client_fin_from_server = true;
                }
                Side::Backend => {
                    assert!(self.b_write.is_none(), "FIN with a backend write in flight");
                    // Everything the client sent that the server read has
                    // reached the backend.
                    assert_eq!(
                        self.backend_got,
                        self.client_plaintext_read(),
                        "FIN to the backend while plaintext owed to it was dropped"
                    );
                    self.backend_fin_from_server = true;
                }
            },
            Op::SendLent { side } => {
                assert_eq!(side, Side::Client);
                assert!(self.c_write.is_none(), "two writes in flight on the client");
                let (buf, records) = self.lent.take().expect("a lent buffer");
                let mut wire = Vec::new();
                records.gather(&buf, &mut wire);
                assert!(!wire.is_empty(), "an empty write");
                self.c_write = Some(Pending { buf: wire, off: 0 });
                self.c_write_lent = true;
            }
            Op::ShutdownBoth { .. } => {}
            Op::Connect { addr } => {
                assert!(self.connect.is_none());
                self.connect = Some(addr);
            }
            Op::LookupSession { key, take } => {
                assert!(self.conn.is_expecting_session());
                self.lookups.push((key, take));
            }
            Op::Cancel { side } => {
                let slot = match side {
                    Side::Client => &mut self.c_cancel,
                    Side::Backend => &mut self.b_cancel,
                };
                assert!(!*slot, "two cancels in flight on {side:?}");
                *slot = true;
            }
        }
    }

    /// The client plaintext whose records the server has read whole.
    pub fn client_plaintext_read(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut from = 0;
        for &(end_plain, end_wire) in &self.client_chunks {
            if end_wire <= self.client_read_by_server {
                out.extend_from_slice(&self.client_sent[from..end_plain]);
            }
            from = end_plain;
        }
        out
    }

    // ------------------------------------------------------------------
    // Peers
    // ------------------------------------------------------------------

    /// The client's application writes `data`.
    pub fn client_send(&mut self, data: &[u8]) {
        if self.client_fin || self.client_reset {
            return;
        }
        // One record per chunk, so that a chunk is decrypted exactly when
        // the server has read its ciphertext whole.
        for chunk in data.chunks(crate::tls::MAX_FRAGMENT_LEN) {
            self.client.writer().write_all(chunk).unwrap();
            self.client_sent.extend_from_slice(chunk);
            self.flush_client_tls();
            self.client_chunks
                .push((self.client_sent.len(), self.client_wire_total));
        }
    }

    /// The client sends close_notify (`notify`) and FIN.
    pub fn client_close(&mut self, notify: bool) {
        if self.client_fin || self.client_reset {
            return;
        }
        if notify {
            self.client.send_close_notify();
            self.flush_client_tls();
        }
        self.client_fin = true;
    }

    pub fn backend_send(&mut self, data: &[u8]) {
        if self.backend_fin || self.backend_reset {
            return;
        }
        self.backend_sent.extend_from_slice(data);
        self.backend_wire.extend(data.iter().copied());
    }

    // ------------------------------------------------------------------
    // Completions
    // ------------------------------------------------------------------

    /// Completes the client read with at most `max` bytes, if it can
    /// complete (bytes, EOF or reset available). Returns whether it did.
    pub fn complete_client_read(&mut self, max: usize) -> bool {
        let Some(p) = self.c_read.as_ref() else {
            return false;
        };
        let room = if self.runtime_buffers {
            self.ring_buf
        } else {
            p.buf.capacity() - p.buf.len()
        };
        let res = if self.client_reset {
            IoResult::Failed(io::ErrorKind::ConnectionReset)
        } else if !self.client_wire.is_empty() {
            IoResult::Done(room.min(max.max(1)).min(self.client_wire.len()))
        } else if self.client_fin {
            IoResult::Done(0)
        } else {
            return false;
        };
        let mut p = self.c_read.take().unwrap();
        let mut data = Vec::new();
        if let IoResult::Done(n) = res {
            data.extend(self.client_wire.drain(..n));
            self.client_read_by_server += n;
        }
        if !self.runtime_buffers {
            p.buf.append(&mut data);
        }
        self.conn
            .handle_recv_with(Side::Client, res, p.buf, &data, self.now);
        self.pump();
        true
    }

    pub fn complete_backend_read(&mut self, max: usize) -> bool {
        let Some(p) = self.b_read.as_ref() else {
            return false;
        };
        let room = if self.runtime_buffers {
            self.ring_buf
        } else {
            p.buf.capacity() - p.buf.len()
        };
        let res = if self.backend_reset {
            IoResult::Failed(io::ErrorKind::ConnectionReset)
        } else if !self.backend_wire.is_empty() {
            IoResult::Done(room.min(max.max(1)).min(self.backend_wire.len()))
        } else if self.backend_fin {
            IoResult::Done(0)
        } else {
            return false;
        };
        let mut p = self.b_read.take().unwrap();
        let mut data = Vec::new();
        if let IoResult::Done(n) = res {
            data.extend(self.backend_wire.drain(..n));
            self.backend_read_by_server += n;
        }
        if !self.runtime_buffers {
            p.buf.append(&mut data);
        }
        if self.lend && self.runtime_buffers && !data.is_empty() {
            // A ring buffer: the bytes, then room the kernel never fills.
            let mut ring = vec![0xEE; self.ring_buf + 64];
            ring[..data.len()].copy_from_slice(&data);
            let mut records = LentRecords::default();
            if self
                .conn
                .handle_recv_lent(res, p.buf, &mut ring, &mut records, self.now)
            {
                assert!(self.lent.is_none(), "two buffers lent");
                self.lent_reads += 1;
                self.lent = Some((ring, records));
            }
            self.pump();
            return true;
        }
        self.conn
            .handle_recv_with(Side::Backend, res, p.buf, &data, self.now);
        self.pump();
        true
    }

    /// Completes the client write with at most `max` bytes written.
    pub fn complete_client_write(&mut self, max: usize) -> bool {
        let Some(p) = self.c_write.take() else {
            return false;
        };
        let res = if self.client_reset {
            IoResult::Failed(io::ErrorKind::BrokenPipe)
        } else {
            let n = (p.buf.len() - p.off).min(max.max(1));
            self.server_wrote += n;
            self.deliver_to_client(&p.buf[p.off..p.off + n]);
            IoResult::Done(n)
        };
        if std::mem::take(&mut self.c_write_lent) {
            // As the runtime reports a lent write: no buffer when all of
            // it went out (or it failed), else the wire image from 0.
            let buf = match res {
                IoResult::Done(n) if n < p.buf.len() => p.buf,
                _ => Vec::new(),
            };
            self.conn.handle_send(Side::Client, res, buf, 0, self.now);
            self.pump();
            return true;
        }
        self.conn
            .handle_send(Side::Client, res, p.buf, p.off, self.now);
        self.pump();
        true
    }

    pub fn complete_backend_write(&mut self, max: usize) -> bool {
        let Some(p) = self.b_write.take() else {
            return false;
        };
        let res = if self.backend_reset {
            IoResult::Failed(io::ErrorKind::BrokenPipe)
        } else {
            let n = (p.buf.len() - p.off).min(max.max(1));
            self.backend_got.extend_from_slice(&p.buf[p.off..p.off + n]);
            IoResult::Done(n)
        };
        self.conn
            .handle_send(Side::Backend, res, p.buf, p.off, self.now);
        self.pump();
        true
    }

    pub fn complete_connect(&mut self) -> bool {
        let Some(a) = self.connect.take() else {
            return false;
        };
        let res = if self.refusing.contains(&a) {
            IoResult::Failed(io::ErrorKind::ConnectionRefused)
        } else {
            self.connected = Some(a);
            IoResult::Done(0)
        };
        self.conn.handle_connect(res, self.now, &mut self.pools);
        self.pump();
        true
    }

    /// Completes a side's cancel: every op on that side completes as
    /// cancelled (a connect too).
    pub fn complete_cancel(&mut self, side: Side) -> bool {
        let slot = match side {
            Side::Client => &mut self.c_cancel,
            Side::Backend => &mut self.b_cancel,
        };
        if !std::mem::take(slot) {
            return false;
        }
        let mut n = 0;
        let (read, write) = match side {
            Side::Client => (self.c_read.take(), self.c_write.take()),
            Side::Backend => (self.b_read.take(), self.b_write.take()),
        };
        if let Some(p) = read {
            n += 1;
            self.conn
                .handle_recv(side, IoResult::Cancelled, p.buf, self.now);
        }
        if let Some(p) = write {
            n += 1;
            if side == Side::Client {
                // A lent write's wire image resumes from 0, as any other.
                self.c_write_lent = false;
            }
            self.conn
                .handle_send(side, IoResult::Cancelled, p.buf, p.off, self.now);
        }
        if side == Side::Backend && self.connect.take().is_some() {
            n += 1;
            self.conn
                .handle_connect(IoResult::Cancelled, self.now, &mut self.pools);
        }
        self.conn.handle_cancel(side, CancelResult::Cancelled(n));
        self.pump();
        true
    }

    /// Advances the clock by `ms` and tells the machine when its deadline
    /// passed (or, with `spurious`, regardless).
    pub fn tick(&mut self, ms: u64, spurious: bool) {
        self.now += Duration::from_millis(ms);
        let due = self.conn.poll_timeout().is_some_and(|at| self.now >= at);
        if due || spurious {
            self.conn.handle_timeout(self.now);
        }
        self.pump();
    }

    pub fn stop(&mut self) {
        self.conn.handle_stop(self.now);
        self.pump();
    }

    fn deliver_to_client(&mut self, mut bytes: &[u8]) {
        if self.client_tls_error {
            return;
        }
        while !bytes.is_empty() {
            match self.client.read_tls(&mut bytes) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            match self.client.process_new_packets() {
                Ok(state) => {
                    if state.peer_has_closed() {
                        self.client_close_notify = true;
                    }
                }
                Err(_) => {
                    self.client_tls_error = true;
                    return;
                }
            }
            let mut buf = [0u8; 16384];
            loop {
                match self.client.reader().read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => self.client_got.extend_from_slice(&buf[..n]),
                    Err(_) => break,
                }
            }
        }
        // The client answers (its Finished, KeyUpdate responses...).
        self.flush_client_tls();
    }

    /// Completes everything that can complete, fully, until nothing moves.
    pub fn settle(&mut self) {
        for _ in 0..10_000 {
            let moved = self.complete_client_write(usize::MAX)
                || self.complete_backend_write(usize::MAX)
                || self.complete_cancel(Side::Client)
                || self.complete_cancel(Side::Backend)
                || self.complete_connect()
                || self.complete_client_read(usize::MAX)
                || self.complete_backend_read(usize::MAX);
            if !moved {
                return;
            }
        }
        panic!("settle did not converge");
    }

    pub fn outcome(&self) -> &Outcome {
        self.outcome.as_ref().expect("the connection is over")
    }

    pub fn handshake_done(&self) -> bool {
        !self.client.is_handshaking()
    }
}

pub(super) fn cfg() -> ConnConfig {
    ConnConfig {
        accept_proxy: false,
        proxy_out: None,
        handshake_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        idle_timeout: Some(Duration::from_secs(10)),
        buffer_size: 64 * 1024,
        close_flush: Duration::from_secs(1),
        epoch: Instant::now(),
        runtime_buffers: false,
        session_lookup: false,
        frontend: 0,
        acme: None,
    }
}

/// A world past the handshake and the connect, relaying.
fn relaying() -> World {
    let mut w = World::new(cfg(), &[BACKEND_A]);
    w.settle();
    assert!(w.handshake_done());
    assert_eq!(w.connected, Some(addr(BACKEND_A).into()));
    w
}

// ----------------------------------------------------------------------
// Handshaking
// ----------------------------------------------------------------------

#[test]
fn handshake_then_connect_then_relay_both_ways() {
    let mut w = relaying();
    w.client_send(b"GET / HTTP/1.1\r\n\r\n");
    w.settle();
    assert_eq!(w.backend_got, b"GET / HTTP/1.1\r\n\r\n");
    w.backend_send(b"HTTP/1.1 200 OK\r\n\r\nhello");
    w.settle();
    assert_eq!(w.client_got, b"HTTP/1.1 200 OK\r\n\r\nhello");
    // Close both ways: client close_notify, then the backend's FIN.
    w.client_close(true);
    w.settle();
    assert!(w.backend_fin_from_server, "half-close reached the backend");
    assert!(w.outcome.is_none(), "the other direction is still open");
    w.backend_send(b"tail");
    w.backend_fin = true;
    w.settle();
    assert_eq!(w.client_got, b"HTTP/1.1 200 OK\r\n\r\nhellotail");
    assert!(w.client_close_notify);
    let out = w.outcome();
    // The last direction's FIN comes with the close (no reset).
    assert_eq!(out.end, End::Closed);
    assert!(out.handshake.is_some());
    assert_eq!(out.backend, Some(addr(BACKEND_A).into()));
    assert!(!out.reset_client && !out.reset_backend);
    assert!(out.ttfb.is_some());
}

/// The outcome's access-log facts: bytes each way from completions, the
/// client's address, the SNI, who closed first.
#[test]
fn outcome_counts_bytes_and_names_client_sni_and_first_close() {
    let mut w = relaying();
    w.client_send(b"0123456789");
    w.settle();
    w.backend_send(b"abc");
    w.backend_fin = true;
    w.settle();
    w.client_close(true);
    w.settle();
    let out = w.outcome();
    assert_eq!(out.end, End::Closed);
    assert_eq!(out.bytes.to_backend, 10);
    assert_eq!(out.bytes.from_backend, 3);
    assert_eq!(out.bytes.from_client, w.client_read_by_server as u64);
    assert_eq!(out.bytes.to_client, w.server_wrote as u64);
    assert_eq!(out.client, Some(addr("192.0.2.1:40000")));
    let hs = out.handshake.as_ref().unwrap();
    assert_eq!(hs.sni.as_deref(), Some("localhost"));
    assert_eq!(out.first_close, Some(Side::Backend));
    assert_eq!(out.backend_tried, Some(addr(BACKEND_A).into()));
}

/// Behind a PROXY header, the client is the header's source (also when
/// no header goes to the backend).
#[test]
fn outcome_client_is_the_proxy_source() {
    let header = b"PROXY TCP4 198.51.100.7 203.0.113.9 5555 443\r\n";
    {
        let mut w = proxy_world(header, false);
        w.settle();
        w.client_close(true);
        w.backend_fin = true;
        w.settle();
        let out = w.outcome();
        assert_eq!(out.client, Some(addr("198.51.100.7:5555")));
    }
}

#[test]
fn handshake_one_byte_reads() {
    let mut w = World::new(cfg(), &[BACKEND_A]);
    for _ in 0..100_000 {
        if w.connected.is_some() {
            break;
        }
        let moved = w.complete_client_write(usize::MAX)
            || w.complete_connect()
            || w.complete_client_read(1);
        assert!(moved, "stalled in the handshake");
    }
    assert!(w.handshake_done());
}

#[test]
fn handshake_eof_and_reset() {
    let mut w = World::new(cfg(), &[BACKEND_A]);
    w.client_wire.clear();
    w.client_fin = true;
    w.settle();
    assert_eq!(w.outcome().end, End::HandshakeEof);

    let mut w = World::new(cfg(), &[BACKEND_A]);
    w.client_reset = true;
    w.settle();
    assert_eq!(w.outcome().end, End::HandshakeEof);
}

#[test]
fn handshake_garbage_gets_an_alert() {
    let mut w = World::new(cfg(), &[BACKEND_A]);
    w.client_wire.clear();
    w.client_wire
        .extend(b"GET / HTTP/1.1\r\n\r\n".iter().copied());
    w.complete_client_read(usize::MAX);
    // The alert is flushed before the end.
    assert!(w.c_write.is_some());
    assert!(w.outcome.is_none());
    w.settle();
    // Then a lingering close: our side is shut, and what the client still
    // sends is read and dropped, so that the close does not reset the
    // connection before the client read the alert.
    assert!(w.client_fin_from_server);
    assert!(w.c_read.is_some());
    w.client_wire.extend([0u8; 3000].iter().copied());
    w.settle();
    assert!(w.outcome.is_none(), "still lingering");
    assert!(w.client_wire.is_empty(), "the late bytes were read");
    w.client_fin = true;
    w.settle();
    let out = w.outcome();
    assert!(matches!(out.end, End::HandshakeTls(_)), "{out:?}");
    assert!(out.alert.is_some());
    assert!(!out.reset_client);
}

/// A client that neither reads nor closes after an alert: the lingering
/// ends at the flush deadline.
#[test]
fn lingering_after_an_alert_ends_at_the_flush_deadline() {
    let mut w = World::new(cfg(), &[BACKEND_A]);
    w.client_wire.clear();
    w.client_wire
        .extend(b"GET / HTTP/1.1\r\n\r\n".iter().copied());
    w.settle();
    assert!(w.outcome.is_none());
    w.tick(999, false);
    assert!(w.outcome.is_none());
    w.tick(1, false);
    w.settle();
    assert!(matches!(w.outcome().end, End::HandshakeTls(_)));
}

#[test]
fn handshake_timeout_cancels_the_read() {
    let mut w = World::new(cfg(), &[BACKEND_A]);
    w.client_wire.clear(); // a silent client
    w.settle();
    assert!(w.c_read.is_some());
    w.tick(4_999, false);
    assert!(!w.c_cancel);
    w.tick(1, false);
    assert!(w.c_cancel, "the read is cancelled at the deadline");
    assert!(w.outcome.is_none(), "not before the read completed");
    w.settle();
    assert_eq!(w.outcome().end, End::HandshakeTimeout);
}

#[test]
fn drain_cut_during_the_handshake() {
    let mut w = World::new(cfg(), &[BACKEND_A]);
    w.client_wire.clear();
    w.settle();
    w.stop();
    w.settle();
    assert_eq!(w.outcome().end, End::DrainCut);
}

// ----------------------------------------------------------------------
// ExpectProxyHeader
// ----------------------------------------------------------------------

fn proxy_world(header: &[u8], proxy_out: bool) -> World {
    let mut c = cfg();
    c.accept_proxy = true;
    if proxy_out {
        c.proxy_out = Some(proxy::Version::V1);
    }
    let mut w = World::new(c, &[BACKEND_A]);
    let hello: Vec<u8> = w.client_wire.drain(..).collect();
    w.client_wire.extend(header.iter().copied());
    w.client_wire.extend(hello);
    w
}

#[test]
fn proxy_header_then_handshake_in_one_read_and_split() {
    let header = b"PROXY TCP4 198.51.100.7 203.0.113.9 5555 443\r\n";
    for max in [usize::MAX, 3] {
        let mut w = proxy_world(header, true);
        w.client_read_by_server = 0;
        for _ in 0..10_000 {
            if w.connected.is_some() {
                break;
            }
            let moved = w.complete_client_write(usize::MAX)
                || w.complete_connect()
                || w.complete_client_read(max);
            assert!(moved, "stalled");
        }
        w.settle();
        // The PROXY header toward the backend carries the incoming one's
        // addresses.
        let got = String::from_utf8_lossy(&w.backend_got).to_string();
        assert!(
            got.starts_with("PROXY TCP4 198.51.100.7 203.0.113.9 5555 443\r\n"),
            "{got}"
        );
    }
}

#[test]
fn proxy_header_missing_or_bad() {
    let mut w = proxy_world(b"", false);
    w.settle();
    assert!(
        matches!(w.outcome().end, End::ProxyHeader(ProxyError::Missing(0x16))),
        "{:?}",
        w.outcome().end
    );
    let mut w = proxy_world(b"PROXY TCP4 nonsense\r\n", false);
    w.settle();
    assert!(matches!(w.outcome().end, End::ProxyHeader(_)));
}

// ----------------------------------------------------------------------
// ExpectBackend
// ----------------------------------------------------------------------

#[test]
fn connect_retries_the_next_backend_once() {
    let mut w = World::new(cfg(), &[BACKEND_A, BACKEND_B]);
    w.refusing = vec![addr(BACKEND_A).into()];
    w.settle();
    assert_eq!(w.connected, Some(addr(BACKEND_B).into()));
    w.client_close(true);
    w.backend_fin = true;
    w.settle();
    let out = w.outcome();
    assert_eq!(out.end, End::Closed);
    assert_eq!((out.connect_failures, out.retries), (1, 1));
}

#[test]
fn connect_fails_on_every_backend() {
    let mut w = World::new(cfg(), &[BACKEND_A, BACKEND_B]);
    w.refusing = vec![addr(BACKEND_A).into(), addr(BACKEND_B).into()];
    w.settle();
    let out = w.outcome();
    assert_eq!(
        out.end,
        End::ConnectFailed(io::ErrorKind::ConnectionRefused)
    );
    assert_eq!((out.connect_failures, out.retries), (2, 1));
    // The second connection's first pick skips the ejected backends in
    // order: both are out, the one that comes back first is tried.
}

#[test]
fn connect_timeout_then_retry_then_timeout() {
    let mut w = World::new(cfg(), &[BACKEND_A, BACKEND_B]);
    // Handshake done, connect in flight, never completing on its own.
    for _ in 0..1000 {
        if w.connect.is_some() {
            break;
        }
        let moved = w.complete_client_write(usize::MAX) || w.complete_client_read(usize::MAX);
        assert!(moved);
    }
    assert_eq!(w.connect, Some(addr(BACKEND_A).into()));
    w.tick(2_000, false);
    assert!(w.b_cancel);
    w.complete_cancel(Side::Backend);
    assert_eq!(w.connect, Some(addr(BACKEND_B).into()), "retried");
    w.tick(2_000, false);
    w.complete_cancel(Side::Backend);
    w.settle();
    let out = w.outcome();
    assert_eq!(out.end, End::ConnectTimeout);
    assert_eq!((out.connect_timeouts, out.retries), (2, 1));
}

#[test]
fn drain_cut_during_connect_is_not_a_backend_failure() {
    let mut w = World::new(cfg(), &[BACKEND_A, BACKEND_B]);
    for _ in 0..1000 {
        if w.connect.is_some() {
            break;
        }
        let moved = w.complete_client_write(usize::MAX) || w.complete_client_read(usize::MAX);
        assert!(moved);
    }
    w.stop();
    w.settle();
    let out = w.outcome();
    assert_eq!(out.end, End::DrainCut);
    assert_eq!((out.connect_failures, out.retries), (0, 0));
}

// ----------------------------------------------------------------------
// Relaying
// ----------------------------------------------------------------------

#[test]
fn backpressure_one_pending_one_in_flight() {
    let mut w = relaying();
    // The backend never takes its writes: the client is read once more
    // (one buffer pending, one in flight), then no more.
    for i in 0..50 {
        w.client_send(&[i as u8; 16 * 1024]);
    }
    for _ in 0..100 {
        w.complete_client_read(usize::MAX);
    }
    assert!(w.b_write.is_some());
    assert!(
        w.c_read.is_none(),
        "the client is not read while the backend is behind"
    );
    assert!(w.conn.to_backend.len() <= 64 * 1024 + MAX_RECORD_LEN);
    // Once the backend takes everything, all of it arrives in order.
    w.settle();
    assert_eq!(w.backend_got, w.client_sent);
}

#[test]
fn short_writes_resume_in_order() {
    let mut w = relaying();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    w.backend_send(&data);
    for _ in 0..100_000 {
        let moved = w.complete_client_write(777) || w.complete_backend_read(5_000);
        if !moved {
            break;
        }
    }
    assert_eq!(w.client_got, data);
}

#[test]
fn idle_timeout_flushes_then_close_notify() {
    let mut w = relaying();
    w.backend_send(b"late response");
    w.complete_backend_read(usize::MAX);
    assert!(w.c_write.is_some());
    w.tick(10_000, false);
    // The write in flight is cancelled (nothing sent), then flushed with
    // the close_notify.
    w.settle();
    assert_eq!(w.client_got, b"late response");
    assert!(w.client_close_notify);
    let out = w.outcome();
    assert_eq!(out.end, End::IdleTimeout);
    assert!(!out.reset_client);
}

#[test]
fn spurious_timeouts_change_nothing() {
    let mut w = relaying();
    for _ in 0..20 {
        w.tick(9_000, true);
        w.client_send(b"x");
        w.settle();
    }
    assert!(w.outcome.is_none());
    assert_eq!(w.backend_got, vec![b'x'; 20]);
}

/// The data-loss case of the old relay: a stop decided in the same batch as
/// a completed backend read threw the read's bytes away, yet sent a
/// close_notify, so the client saw a truncated response as a clean end.
#[test]
fn regression_stop_with_a_backend_read_completing_loses_nothing() {
    for stop in [true, false] {
        let mut w = relaying();
        w.backend_send(b"response bytes that must arrive");
        assert!(w.b_read.is_some());
        // The stop is decided (cancels submitted) ...
        if stop {
            w.stop();
        } else {
            w.tick(10_000, false);
        }
        assert!(w.b_cancel);
        // ... and the backend read completes with data before the cancel.
        assert!(w.complete_backend_read(usize::MAX));
        w.settle();
        assert!(w.client_close_notify);
        assert_eq!(w.client_got, b"response bytes that must arrive");
        let out = w.outcome();
        assert_eq!(
            out.end,
            if stop {
                End::DrainCut
            } else {
                End::IdleTimeout
            }
        );
        assert!(!out.reset_client);
    }
}

#[test]
fn stop_drops_client_bytes_and_resets_the_backend() {
    let mut w = relaying();
    w.client_send(b"request the backend will never see");
    w.stop();
    // The client read completes with data after the stop.
    assert!(w.complete_client_read(usize::MAX));
    w.settle();
    let out = w.outcome();
    assert_eq!(out.end, End::DrainCut);
    assert!(out.reset_backend, "no FIN while owed plaintext was dropped");
    assert!(w.backend_got.is_empty());
}

#[test]
fn flush_deadline_resets_a_client_that_does_not_read() {
    let mut w = relaying();
    w.backend_send(&[7u8; 1000]);
    w.complete_backend_read(usize::MAX);
    w.stop();
    w.complete_cancel(Side::Client);
    w.complete_cancel(Side::Backend);
    assert!(w.c_write.is_some(), "flushing");
    w.tick(1_000, false);
    w.settle();
    let out = w.outcome();
    assert!(out.reset_client, "owed bytes dropped: no clean end");
    assert!(!w.client_close_notify);
}

#[test]
fn client_tls_error_sends_an_alert_and_drops_backend_data() {
    let mut w = relaying();
    w.client_send(b"good");
    w.settle();
    // A corrupted record.
    w.client_wire
        .extend([23u8, 3, 3, 0, 20].iter().chain([0u8; 20].iter()).copied());
    w.settle();
    // The alert is out, our side shut; the connection lingers until the
    // client closes.
    assert!(w.client_tls_error, "the client read the alert");
    assert!(w.client_fin_from_server);
    assert!(w.outcome.is_none());
    w.client_fin = true;
    w.settle();
    let out = w.outcome();
    assert!(matches!(out.end, End::Tls(_)), "{out:?}");
    assert!(out.alert.is_some());
    assert_eq!(w.backend_got, b"good");
}

#[test]
fn backend_reset_mid_response_is_no_clean_end() {
    let mut w = relaying();
    w.backend_send(b"partial");
    w.complete_backend_read(usize::MAX);
    w.backend_reset = true;
    w.settle();
    assert!(!w.client_close_notify);
    assert!(matches!(w.outcome().end, End::Io(Side::Backend, _)));
}

#[test]
fn close_notify_with_finished_half_closes_at_once() {
    let mut w = World::new(cfg(), &[BACKEND_A]);
    // Let the client finish its handshake, then queue its request and a
    // close_notify before the server reads the client's Finished.
    for _ in 0..100 {
        if w.handshake_done() {
            break;
        }
        let moved = w.complete_client_write(usize::MAX);
        if !moved && !w.complete_client_read(usize::MAX) {
            break;
        }
    }
    w.client_send(b"req");
    w.client_close(true);
    w.settle();
    assert_eq!(w.backend_got, b"req");
    assert!(w.backend_fin_from_server);
}

#[test]
fn read_sizes_adapt_both_ways() {
    // A full read doubles, up to the max.
    assert_eq!(next_read_size(512, 512, 512, 65536), 1024);
    assert_eq!(next_read_size(65536, 65536, 65536, 65536), 65536);
    // A tiny read halves, down to FIRST_READ.
    assert_eq!(next_read_size(65536, 100, 65536, 65536), 32768);
    assert_eq!(next_read_size(FIRST_READ, 1, FIRST_READ, 65536), FIRST_READ);
    // In between, it stays.
    assert_eq!(next_read_size(4096, 2000, 4096, 65536), 4096);
}

/// With the own record layer (the default configuration), a backend read
/// of one record is sealed where it landed and that very buffer is the
/// client's write; a client read of one record is opened where it landed
/// and that very buffer is the backend's write (from the plaintext's
/// offset).
#[test]
fn relay_moves_buffers_instead_of_copying() {
    let mut w = relaying();
    assert!(w.conn.tls().is_own_record_layer());
    // Backend → client.
    w.pump();
    w.backend_send(b"HTTP/1.1 200 OK\r\n\r\nhello");
    let read_ptr = w
        .b_read
        .as_ref()
        .expect("a backend read in flight")
        .buf
        .as_ptr();
    assert!(w.complete_backend_read(usize::MAX));
    let write = w.c_write.as_ref().expect("the client write");
    assert_eq!(write.buf.as_ptr(), read_ptr, "the read buffer is the write");
    assert_eq!(write.off, 0);
    w.settle();
    assert_eq!(w.client_got, b"HTTP/1.1 200 OK\r\n\r\nhello");
    // Client → backend.
    w.client_send(b"GET / HTTP/1.1\r\n\r\n");
    let read_ptr = w
        .c_read
        .as_ref()
        .expect("a client read in flight")
        .buf
        .as_ptr();
    assert!(w.complete_client_read(usize::MAX));
    let write = w.b_write.as_ref().expect("the backend write");
    assert_eq!(write.buf.as_ptr(), read_ptr, "the read buffer is the write");
    assert_eq!(write.off, 5, "after the record header");
    w.settle();
    assert_eq!(w.backend_got, b"GET / HTTP/1.1\r\n\r\n");
}

fn relaying_lent(ring_buf: usize) -> World {
    let mut c = cfg();
    c.runtime_buffers = true;
    let mut w = World::new(c, &[BACKEND_A]);
    w.lend = true;
    w.ring_buf = ring_buf;
    w.settle();
    assert!(w.handshake_done());
    w
}

/// With a runtime that lends its read buffers, backend bytes are sealed
/// where the read left them (one record or several per read) and the
/// client write carries them from there; later reads wait for it, or are
/// copied when a write is still owed, and everything arrives in order.
#[test]
fn lent_backend_reads_are_sealed_where_they_landed() {
    for ring_buf in [4096, 64 * 1024] {
        let mut w = relaying_lent(ring_buf);
        w.backend_send(b"HTTP/1.1 200 OK\r\n\r\nhello");
        assert!(w.complete_backend_read(usize::MAX));
        assert_eq!(w.lent_reads, 1, "sealed in the lent buffer");
        assert!(w.c_write_lent, "the client write is the lent buffer's");
        w.settle();
        assert_eq!(w.client_got, b"HTTP/1.1 200 OK\r\n\r\nhello");
        // Bulk: many reads, several records each with the large buffer.
        w.client_got.clear();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        w.backend_send(&data);
        w.settle();
        assert!(w.client_got == data, "{ring_buf}");
        assert!(w.lent_reads > 1);
        // Short writes resume from the gathered wire image, in order.
        w.client_got.clear();
        w.backend_send(&data);
        for _ in 0..100_000 {
            let moved = w.complete_client_write(7_777) || w.complete_backend_read(usize::MAX);
            if !moved {
                break;
            }
        }
        assert!(w.client_got == data, "{ring_buf}");
        w.client_close(true);
        w.backend_fin = true;
        w.settle();
        assert!(w.client_close_notify);
        assert_eq!(w.outcome().end, End::Closed);
        assert!(w.lent.is_none());
    }
}

/// A lent write cancelled by the idle timeout resumes from its wire image
/// and is flushed before the close_notify; a stop before a lent write was
/// submitted gives the buffer back with the bytes still delivered.
#[test]
fn lent_writes_survive_cancels_and_stops() {
    let mut w = relaying_lent(64 * 1024);
    w.backend_send(&[7; 20_000]);
    assert!(w.complete_backend_read(usize::MAX));
    assert!(w.c_write_lent);
    w.tick(10_000, false);
    w.settle();
    assert_eq!(w.client_got, vec![7; 20_000]);
    assert!(w.client_close_notify);
    assert_eq!(w.outcome().end, End::IdleTimeout);

    let mut w = relaying_lent(64 * 1024);
    w.backend_send(&[9; 50_000]);
    assert!(w.complete_backend_read(usize::MAX));
    w.stop();
    w.settle();
    assert_eq!(w.client_got, vec![9; 50_000]);
    assert!(w.lent.is_none(), "the buffer went back");
    assert!(w.outcome.is_some());

    // A client reset while a lent write is in flight: it fails, the buffer
    // goes back, the backend is reset.
    let mut w = relaying_lent(64 * 1024);
    w.backend_send(&[1; 30_000]);
    assert!(w.complete_backend_read(usize::MAX));
    w.client_reset = true;
    w.settle();
    assert!(w.lent.is_none() && !w.c_write_lent);
    assert!(matches!(w.outcome().end, End::Io(Side::Client, _)));
}

/// A relaying connection quiet for [`HIBERNATE_AFTER`] drops its record
/// keys' AEAD contexts and builds them again on the next record either
/// way; the idle timeout still ends it at its time.
#[test]
fn quiet_connection_hibernates_its_keys_and_wakes_on_data() {
    let mut w = relaying();
    assert!(w.conn.tls().can_hibernate());
    let start = w.now;
    // Before the deadline nothing happens; at it, the keys go.
    let at = w.conn.poll_timeout().expect("a deadline");
    assert_eq!(at, start + HIBERNATE_AFTER);
    w.tick(999, false);
    assert!(w.conn.tls().can_hibernate());
    w.tick(1, false);
    assert!(!w.conn.tls().can_hibernate(), "hibernating");
    assert!(w.outcome.is_none());
    // Only the idle timeout is left to wait for.
    assert_eq!(w.conn.poll_timeout(), Some(start + Duration::from_secs(10)));
    w.client_send(b"GET / HTTP/1.1\r\n\r\n");
    w.settle();
    assert_eq!(w.backend_got, b"GET / HTTP/1.1\r\n\r\n");
    w.tick(1_000, false);
    assert!(!w.conn.tls().can_hibernate());
    w.backend_send(b"HTTP/1.1 200 OK\r\n\r\nhello");
    w.settle();
    assert_eq!(w.client_got, b"HTTP/1.1 200 OK\r\n\r\nhello");
    w.tick(1_000, false);
    assert!(!w.conn.tls().can_hibernate());
    w.tick(10_000, false);
    w.settle();
    assert!(w.client_close_notify);
    assert_eq!(w.outcome().end, End::IdleTimeout);
}

/// An idle connection's machine stays in mimalloc's 768-byte size class
/// (it was 1,328 bytes, in the 1,536 class): a field added here costs every
/// idle connection.
#[test]
fn conn_stays_small() {
    assert!(
        std::mem::size_of::<Conn>() <= 768,
        "{}",
        std::mem::size_of::<Conn>()
    );
}

// ----------------------------------------------------------------------
// Session store lookups
// ----------------------------------------------------------------------

/// A server with a stateful session cache (TLS 1.3 stateful tickets), and a
/// client of its own (with its own session memory).
fn stateful() -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let (server, client) = configs();
    let mut server = (**server).clone();
    server.session_storage = rustls::server::ServerSessionMemoryCache::new(16);
    server.send_tls13_tickets = 1;
    let mut client = (**client).clone();
    client.resumption = rustls::client::Resumption::in_memory_sessions(16);
    (Arc::new(server), Arc::new(client))
}

fn lookup_cfg() -> ConnConfig {
    ConnConfig {
        session_lookup: true,
        frontend: 0,
        ..cfg()
    }
}

#[test]
fn a_hello_offering_a_stored_session_waits_for_its_lookup() {
    let (server, client) = stateful();
    // A full handshake: no session offered, no lookup.
    let mut w = World::with_server(lookup_cfg(), &[BACKEND_A], server.clone(), client.clone());
    w.settle();
    assert!(w.handshake_done());
    assert!(w.lookups.is_empty(), "{:?}", w.lookups);
    w.client_send(b"x");
    w.settle();
    // The client comes back with its ticket: the machine asks for a
    // single-use lookup and waits; rustls has not seen the ClientHello.
    let mut w = World::with_server(lookup_cfg(), &[BACKEND_A], server, client);
    w.settle();
    assert_eq!(w.lookups.len(), 1);
    assert!(w.lookups[0].1, "a TLS 1.3 ticket is taken");
    assert!(w.conn.is_expecting_session());
    assert!(!w.handshake_done());
    assert!(w.c_read.is_none(), "nothing is read while waiting");
    // The answer (here: the session stayed in the server's cache).
    let now = w.now;
    w.conn.handle_session(now);
    w.pump();
    w.settle();
    assert!(w.handshake_done());
    assert_eq!(
        w.client.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    assert_eq!(w.lookups.len(), 1, "one lookup per connection");
}

#[test]
fn a_lookup_that_never_ends_is_cut_by_the_handshake_timeout() {
    let (server, client) = stateful();
    let mut w = World::with_server(lookup_cfg(), &[BACKEND_A], server.clone(), client.clone());
    w.settle();
    w.client_send(b"x");
    w.settle();
    let mut w = World::with_server(lookup_cfg(), &[BACKEND_A], server, client);
    w.settle();
    assert!(w.conn.is_expecting_session());
    w.tick(4_999, false);
    assert!(w.outcome.is_none());
    w.tick(1, false);
    w.settle();
    assert_eq!(w.outcome().end, End::HandshakeTimeout);
    // A late answer changes nothing.
    let now = w.now;
    w.conn.handle_session(now);
}

#[test]
fn without_a_store_no_lookup_is_asked() {
    let (server, client) = stateful();
    let mut w = World::with_server(cfg(), &[BACKEND_A], server.clone(), client.clone());
    w.settle();
    w.client_send(b"x");
    w.settle();
    let mut w = World::with_server(cfg(), &[BACKEND_A], server, client);
    w.settle();
    assert!(w.lookups.is_empty());
    assert_eq!(
        w.client.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
}

#[test]
fn an_acme_challenge_handshake_is_closed_never_relayed() {
    let challenges: &'static _ = Box::leak(Box::new(crate::tls::acme::AcmeChallenges::new()));
    challenges.insert(
        "localhost",
        crate::tls::acme::challenge_config("localhost", &[5; 32]).unwrap(),
    );
    let mut client = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(crate::tls::acme::Accept))
    .with_no_client_auth();
    client.alpn_protocols = vec![b"acme-tls/1".to_vec()];
    let cfg = ConnConfig {
        acme: Some(challenges),
        ..cfg()
    };
    let (server, _) = configs();
    let mut w = World::with_server(cfg, &[BACKEND_A], server.clone(), Arc::new(client));
    w.settle();
    assert!(w.handshake_done());
    assert_eq!(w.client.alpn_protocol(), Some(&b"acme-tls/1"[..]));
    assert!(w.client_close_notify, "a close_notify after the handshake");
    // The client closes its side as a validator does; the machine is done.
    w.client_fin = true;
    w.settle();
    assert_eq!(w.outcome().end, End::AcmeChallenge);
    assert!(w.connected.is_none(), "never connected to a backend");
    assert!(w.backend_got.is_empty());
}

#[test]
fn send_completions_that_unblock_nothing_are_bookkeeping() {
    let mut w = relaying();
    // A request goes to the backend; both reads are then in flight and
    // nothing waits: the write's completion only gives the buffer back.
    w.client_send(b"GET / HTTP/1.1\r\n\r\n");
    w.complete_client_read(usize::MAX);
    assert!(w.b_write.is_some());
    assert!(w.c_read.is_some() && w.b_read.is_some());
    assert!(w.conn.send_completion_is_bookkeeping(Side::Backend));
    assert!(
        !w.conn.send_completion_is_bookkeeping(Side::Client),
        "no write in flight"
    );
    // More client data than the backend takes: what waits behind the
    // write makes its completion matter.
    for i in 0..50 {
        w.client_send(&[i as u8; 16 * 1024]);
    }
    for _ in 0..100 {
        w.complete_client_read(usize::MAX);
    }
    assert!(w.b_write.is_some());
    assert!(!w.conn.send_completion_is_bookkeeping(Side::Backend));
    w.settle();
    assert_eq!(w.backend_got, w.client_sent);
    // A stop: the completion decides when the flush begins.
    w.backend_send(b"response");
    w.complete_backend_read(usize::MAX);
    assert!(w.c_write.is_some());
    w.tick(10_000, false);
    assert!(!w.conn.send_completion_is_bookkeeping(Side::Client));
}
