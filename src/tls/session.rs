//! The sans-IO TLS step function over rustls's unbuffered server API.
//!
//! A [`TlsSession`] never touches a socket and never reads the clock. The
//! runtime feeds it the bytes of each completed client read and the plaintext
//! read from the backend; the session answers with ciphertext to send to the
//! client, plaintext to send to the backend, and a [`Status`] that says what
//! it needs next. It is the sans-IO equivalent of nginx's
//! `ngx_ssl_handshake()` loop around `SSL_do_handshake()`: the runtime calls
//! [`TlsSession::handle_read`] after every completed read until the status
//! says the handshake is done.
//!
//! # Buffers
//!
//! Ciphertext from the client lives in the session's `incoming` buffer.
//! rustls decrypts records in place there, and handshake messages that span
//! several records stay there until complete. To keep reads zero-copy in the
//! common case, the runtime reads into a buffer of its own that it first
//! prepares with [`TlsSession::prepare_read`] (which copies the, at most one,
//! pending partial record to its front), and hands it back with
//! [`TlsSession::handle_read`], which swaps it in. While that read is in
//! flight, `incoming` stays untouched and consistent, so the session can
//! still encrypt backend data: full duplex without locks.
//!
//! # Invariant
//!
//! After every call, `incoming` holds no complete record that rustls has not
//! processed: [`TlsSession::handle_read`] processes everything it can. Its
//! output is bounded by the size of one read.

use std::sync::Arc;

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use rustls::{HandshakeKind, ProtocolVersion, ServerConfig};

use super::TlsError;

/// Largest TLS record on the wire: 5 bytes of header, 2^14 bytes of
/// plaintext plus at most 2048 bytes of expansion (RFC 8446 §5.2, RFC 5246
/// §6.2.3). A read buffer of this size always holds at least one record.
pub const MAX_RECORD_LEN: usize = 5 + 16384 + 2048;

/// Largest plaintext fragment in one record (RFC 8446 §5.1).
pub const MAX_FRAGMENT_LEN: usize = 16384;

/// Per-record overhead we reserve when encrypting: header, AEAD tag, content
/// type byte and explicit nonce (TLS 1.2 GCM) rounded up.
const RECORD_OVERHEAD: usize = 5 + 16 + 1 + 8 + 2;

/// How many state transitions one call may take before we call it a bug in
/// the peer or in us. rustls makes progress on every step; this only bounds
/// a pathological loop so that a worker can never spin forever.
const MAX_STEPS: usize = 4096;

/// What the runtime should do after a call into the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The handshake is in progress: send what was queued for the client,
    /// then read more from the client.
    Handshaking,
    /// Application data flows in both directions. Keep reading from the
    /// client, and encrypt backend data with [`TlsSession::encrypt`].
    Established,
    /// The client sent close_notify: it will send no more data. Shut down
    /// the write side of the backend; the other direction keeps flowing.
    PeerClosed,
    /// Both sides sent close_notify. Nothing more will flow.
    Closed,
}

/// Facts about a finished handshake, for metrics, logs and PROXY headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeInfo {
    /// Negotiated protocol version.
    pub version: ProtocolVersion,
    /// Whether the session was resumed.
    pub resumed: bool,
    /// The SNI the client sent, if any.
    pub sni: Option<String>,
    /// The negotiated ALPN protocol, if any.
    pub alpn: Option<Vec<u8>>,
}

/// A socket-free TLS server session. See the module documentation.
pub struct TlsSession {
    conn: UnbufferedServerConnection,
    /// Ciphertext received from the client and not yet fully processed.
    incoming: Vec<u8>,
    /// Set once rustls reports the handshake complete.
    established: bool,
    /// Set once the client's close_notify was seen.
    peer_closed: bool,
    /// Set once we queued our own close_notify.
    sent_close: bool,
    /// Set once rustls reported a fatal error; nothing more is processed.
    failed: bool,
}

impl std::fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSession")
            .field("incoming", &self.incoming.len())
            .field("established", &self.established)
            .field("peer_closed", &self.peer_closed)
            .field("sent_close", &self.sent_close)
            .field("failed", &self.failed)
            .finish()
    }
}

impl TlsSession {
    /// Starts a server session with the given configuration.
    pub fn new(config: Arc<ServerConfig>) -> Result<Self, TlsError> {
        let conn = UnbufferedServerConnection::new(config).map_err(TlsError::Rustls)?;
        Ok(Self {
            conn,
            incoming: Vec::new(),
            established: false,
            peer_closed: false,
            sent_close: false,
            failed: false,
        })
    }

    /// Whether the handshake has completed.
    pub fn is_established(&self) -> bool {
        self.established
    }

    /// Whether the client's close_notify has been received.
    pub fn is_peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Bytes of ciphertext held waiting for the rest of their record.
    pub fn pending_len(&self) -> usize {
        self.incoming.len()
    }

    /// Facts about the handshake, once it is complete.
    pub fn handshake_info(&self) -> Option<HandshakeInfo> {
        if !self.established {
            return None;
        }
        Some(HandshakeInfo {
            version: self.conn.protocol_version()?,
            resumed: self.conn.handshake_kind() == Some(HandshakeKind::Resumed),
            // rustls's unbuffered server connection does not expose the SNI
            // (only the buffered `ServerConnection` does); the edge-features
            // layer fills it from the ClientHello.
            sni: None,
            alpn: self.conn.alpn_protocol().map(<[u8]>::to_vec),
        })
    }

    /// Prepares `buf` for the next client read.
    ///
    /// Call this before submitting a read. On return `buf` holds a copy of
    /// the pending partial record (usually nothing) and has at least
    /// `min_spare` bytes of spare capacity: the read must append into that
    /// spare capacity, and then the buffer goes back through
    /// [`TlsSession::handle_read`].
    pub fn prepare_read(&self, buf: &mut Vec<u8>, min_spare: usize) {
        buf.clear();
        buf.extend_from_slice(&self.incoming);
        let want = min_spare.max(MAX_RECORD_LEN.saturating_sub(buf.len()));
        buf.reserve(want);
    }

    /// Handles a completed client read.
    ///
    /// `buf` is the buffer prepared by [`TlsSession::prepare_read`] with the
    /// bytes read appended. It is swapped with the session's own buffer, so
    /// the caller gets a (cleared) buffer back to reuse.
    ///
    /// TLS bytes for the client are appended to `to_client` and must be
    /// written in order. Decrypted application data is appended to
    /// `to_backend`.
    ///
    /// On error, the alert for the client (if any) has been appended to
    /// `to_client`: send it, then close.
    pub fn handle_read(
        &mut self,
        buf: &mut Vec<u8>,
        to_client: &mut Vec<u8>,
        to_backend: &mut Vec<u8>,
    ) -> Result<Status, TlsError> {
        std::mem::swap(&mut self.incoming, buf);
        buf.clear();
        self.step(None, false, to_client, to_backend)
    }

    /// Handles ciphertext given as a slice (copying it). Convenient for tests
    /// and for callers that do not own their read buffers.
    pub fn handle_ciphertext(
        &mut self,
        data: &[u8],
        to_client: &mut Vec<u8>,
        to_backend: &mut Vec<u8>,
    ) -> Result<Status, TlsError> {
        self.incoming.extend_from_slice(data);
        self.step(None, false, to_client, to_backend)
    }

    /// Encrypts plaintext from the backend into `to_client`.
    ///
    /// Only valid once the handshake is complete.
    pub fn encrypt(&mut self, plaintext: &[u8], to_client: &mut Vec<u8>) -> Result<Status, TlsError> {
        if !self.established {
            return Err(TlsError::NotEstablished);
        }
        if self.sent_close {
            return Err(TlsError::AlreadyClosed);
        }
        let mut scratch = Vec::new();
        let status = self.step(Some(plaintext), false, to_client, &mut scratch)?;
        debug_assert!(scratch.is_empty(), "invariant: no complete record pending");
        Ok(status)
    }

    /// Queues our close_notify into `to_client`. Idempotent.
    ///
    /// The backend closed its side: after the close_notify, no more
    /// application data is sent to the client.
    pub fn close(&mut self, to_client: &mut Vec<u8>) -> Result<Status, TlsError> {
        if self.sent_close || self.failed {
            return Ok(Status::Closed);
        }
        if !self.established {
            return Err(TlsError::NotEstablished);
        }
        let mut scratch = Vec::new();
        self.step(None, true, to_client, &mut scratch)
    }

    /// The core loop: drive rustls's state machine until it needs input.
    fn step(
        &mut self,
        mut plaintext: Option<&[u8]>,
        mut close: bool,
        to_client: &mut Vec<u8>,
        to_backend: &mut Vec<u8>,
    ) -> Result<Status, TlsError> {
        if self.failed {
            return Err(TlsError::Failed);
        }
        for _ in 0..MAX_STEPS {
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(&mut self.incoming);
            let state = match state {
                Ok(state) => state,
                Err(err) => {
                    self.incoming.drain(..discard.min(self.incoming.len()));
                    self.failed = true;
                    self.drain_alert(to_client);
                    return Err(TlsError::Rustls(err));
                }
            };
            let mut outcome: Option<Status> = None;
            match state {
                ConnectionState::ReadTraffic(mut read) => {
                    while let Some(record) = read.next_record() {
                        match record {
                            Ok(record) => {
                                discard += record.discard;
                                to_backend.extend_from_slice(record.payload);
                            }
                            Err(err) => {
                                self.incoming.drain(..discard.min(self.incoming.len()));
                                self.failed = true;
                                self.drain_alert(to_client);
                                return Err(TlsError::Rustls(err));
                            }
                        }
                    }
                }
                ConnectionState::ReadEarlyData(mut early) => {
                    // We never enable 0-RTT (max_early_data_size is 0), so
                    // this is unreachable in practice; treat the data as
                    // ordinary application data rather than losing it.
                    while let Some(record) = early.next_record() {
                        match record {
                            Ok(record) => {
                                discard += record.discard;
                                to_backend.extend_from_slice(record.payload);
                            }
                            Err(err) => {
                                self.failed = true;
                                return Err(TlsError::Rustls(err));
                            }
                        }
                    }
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    encode_into(to_client, |out| encode.encode(out))?;
                }
                ConnectionState::TransmitTlsData(transmit) => {
                    // The bytes are already queued in `to_client`, in order;
                    // the runtime transmits them before anything queued later.
                    transmit.done();
                }
                ConnectionState::BlockedHandshake => {
                    outcome = Some(Status::Handshaking);
                }
                ConnectionState::WriteTraffic(mut write) => {
                    self.established = true;
                    if let Some(data) = plaintext.take() {
                        for chunk in data.chunks(MAX_FRAGMENT_LEN * 4) {
                            encrypt_into(to_client, chunk.len(), |out| write.encrypt(chunk, out))?;
                        }
                    }
                    if close {
                        close = false;
                        encrypt_into(to_client, 0, |out| write.queue_close_notify(out))?;
                        self.sent_close = true;
                    }
                    outcome = Some(if self.peer_closed {
                        Status::PeerClosed
                    } else {
                        Status::Established
                    });
                }
                ConnectionState::PeerClosed => {
                    self.peer_closed = true;
                }
                ConnectionState::Closed => {
                    self.peer_closed = true;
                    outcome = Some(Status::Closed);
                }
                // `ConnectionState` is non-exhaustive; a state added by a
                // future rustls is an error, never a silent loss.
                _ => {
                    self.failed = true;
                    return Err(TlsError::UnexpectedState);
                }
            }
            if discard > 0 {
                self.incoming.drain(..discard);
            }
            if let Some(status) = outcome {
                if plaintext.is_some_and(|p| !p.is_empty()) {
                    // Asked to encrypt before the handshake was done.
                    return Err(TlsError::NotEstablished);
                }
                if self.sent_close && self.peer_closed {
                    return Ok(Status::Closed);
                }
                return Ok(status);
            }
        }
        self.failed = true;
        Err(TlsError::NoProgress)
    }

    /// After a fatal error rustls queues an alert; collect its bytes.
    fn drain_alert(&mut self, to_client: &mut Vec<u8>) {
        let mut empty: [u8; 0] = [];
        for _ in 0..8 {
            let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut empty);
            match state {
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    if encode_into(to_client, |out| encode.encode(out)).is_err() {
                        return;
                    }
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => transmit.done(),
                _ => return,
            }
        }
    }
}

/// Runs `encode` into the spare room of `out`, growing it on demand.
fn encode_into(
    out: &mut Vec<u8>,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>,
) -> Result<(), TlsError> {
    let start = out.len();
    let mut room = 1024;
    loop {
        out.resize(start + room, 0);
        match encode(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(e)) if e.required_size > room => {
                room = e.required_size;
            }
            Err(_) => {
                out.truncate(start);
                return Err(TlsError::Encode);
            }
        }
    }
}

/// Runs `encrypt` into the spare room of `out`, growing it on demand.
fn encrypt_into(
    out: &mut Vec<u8>,
    len: usize,
    mut encrypt: impl FnMut(&mut [u8]) -> Result<usize, EncryptError>,
) -> Result<(), TlsError> {
    let start = out.len();
    let records = len / MAX_FRAGMENT_LEN + 1;
    let mut room = len + records * RECORD_OVERHEAD + 64;
    loop {
        out.resize(start + room, 0);
        match encrypt(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(EncryptError::InsufficientSize(e)) if e.required_size > room => {
                room = e.required_size;
            }
            Err(EncryptError::EncryptExhausted) => {
                out.truncate(start);
                return Err(TlsError::EncryptExhausted);
            }
            Err(_) => {
                out.truncate(start);
                return Err(TlsError::Encode);
            }
        }
    }
}
