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
//! prepares with [`TlsSession::prepare_read`], and hands it back with
//! [`TlsSession::handle_read`], which swaps it in. Once the handshake is
//! done, `prepare_read` copies what is pending (usually nothing, or one
//! partial record) to the buffer's front: while that read is in flight,
//! `incoming` stays untouched and consistent, so the session can still
//! encrypt backend data: full duplex without locks. During the handshake
//! nothing else uses `incoming`, so `prepare_read` hands it over instead of
//! copying it; so it does once ringterm's own record layer
//! ([`crate::record`]) carries the connection, since it seals without
//! touching `incoming`. [`TlsSession::handle_read_forward`] goes further:
//! a read of exactly one data record is opened in place and the buffer
//! itself goes to the backend.
//!
//! # Limits
//!
//! rustls's unbuffered API keeps every record of a handshake message being
//! joined, headers included, and sets no limit of its own on that (its
//! buffered API stops at 64 KiB). A client sending a handshake message in
//! one-byte records would make the buffer grow to six times the message
//! size and, were it copied on every read, cost time quadratic in what it
//! sent. So the session fails with [`TlsError::TooMuchPending`] once more
//! than [`MAX_PENDING_HANDSHAKE`] bytes (during the handshake) or
//! [`MAX_PENDING_ESTABLISHED`] bytes (after it) wait unprocessed.
//!
//! # Invariant
//!
//! After every call, `incoming` holds no complete record that rustls has not
//! processed: [`TlsSession::handle_read`] processes everything it can. Its
//! output is bounded by the size of one read.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use rustls::{HandshakeKind, ProtocolVersion, ServerConfig};

use super::acme::AcmeChallenges;
use super::hello::{self, HelloFacts, Peek};
use super::TlsError;
use crate::record::{LentRecords, RecordError, RecordLayer, Version};

/// Largest TLS record on the wire: 5 bytes of header, 2^14 bytes of
/// plaintext plus at most 2048 bytes of expansion (RFC 8446 §5.2, RFC 5246
/// §6.2.3). A read buffer of this size always holds at least one record.
pub const MAX_RECORD_LEN: usize = 5 + 16384 + 2048;

/// Largest plaintext fragment in one record (RFC 8446 §5.1).
pub const MAX_FRAGMENT_LEN: usize = 16384;

/// Most unprocessed client bytes a session holds during the handshake: the
/// largest handshake message rustls accepts (64 KiB) and one record more,
/// which covers any sane fragmentation of it.
pub const MAX_PENDING_HANDSHAKE: usize = 0x1_0000 + MAX_RECORD_LEN;

/// Most unprocessed client bytes a session holds once established: a
/// client then sends only small handshake messages (a KeyUpdate, or a TLS
/// 1.2 renegotiation ClientHello that rustls refuses), so two records.
pub const MAX_PENDING_ESTABLISHED: usize = 2 * MAX_RECORD_LEN;

/// A plaintext fatal `decode_error` alert record (RFC 8446 §6: level 2,
/// description 50), for errors rustls reports without an alert of its own.
const PLAINTEXT_DECODE_ERROR_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x32];

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
    /// How it was resumed, when it was.
    pub resumption: Option<Resumption>,
    /// The SNI the client sent, if any.
    pub sni: Option<String>,
    /// The negotiated ALPN protocol, if any.
    pub alpn: Option<Vec<u8>>,
    /// The negotiated cipher suite's name (`TLS13_AES_128_GCM_SHA256`).
    pub cipher: Option<&'static str>,
    /// Whether the client presented a certificate (mTLS); rustls only
    /// completes a handshake with one it verified.
    pub client_cert: bool,
    /// The client certificate's subject common name, if any.
    pub client_cn: Option<String>,
}

/// How a resumed handshake found its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resumption {
    /// TLS 1.2, by session ID from the session cache.
    Tls12Id,
    /// TLS 1.2, by a stateless ticket.
    Tls12Ticket,
    /// TLS 1.3, by a single-use stateful ticket from the session cache.
    Tls13Stateful,
    /// TLS 1.3, by a stateless ticket.
    Tls13Ticket,
}

impl Resumption {
    /// Whether a stateless ticket was used.
    pub fn is_ticket(self) -> bool {
        matches!(self, Resumption::Tls12Ticket | Resumption::Tls13Ticket)
    }
}

/// The subject CN of a DER certificate, if it parses and has one.
pub fn subject_cn(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// A socket-free TLS server session. See the module documentation.
///
/// # Record layer
///
/// When its configuration has `enable_secret_extraction` set (ringterm's
/// `--record-layer own`, see [`crate::record`]), the session hands the
/// connection over to ringterm's own [`RecordLayer`] as soon as the
/// handshake is complete, rustls has nothing left to send and no complete
/// record waits unprocessed: the rustls connection is then dropped, and
/// [`TlsSession::handshake_info`] answers from facts kept at the hand-over.
pub struct TlsSession {
    /// rustls, during the handshake (and after it with `--record-layer
    /// rustls`); `None` once the own record layer took over.
    conn: Option<Box<UnbufferedServerConnection>>,
    /// The own record layer, once it took over.
    own: Option<Box<RecordLayer>>,
    /// Whether the own record layer takes over after the handshake.
    own_wanted: bool,
    /// The handshake's facts and the client's certificates, kept at the
    /// hand-over.
    info: Option<Box<(HandshakeInfo, Option<Vec<CertificateDer<'static>>>)>>,
    /// Ciphertext received from the client and not yet fully processed.
    incoming: Vec<u8>,
    /// Offset in `incoming` of a record boundary with only complete records
    /// before it: where [`TlsSession::record_remainder`] resumes its walk,
    /// so that a client sending many tiny records does not make every read
    /// walk all of them again.
    walked: usize,
    /// Set once rustls reports the handshake complete.
    established: bool,
    /// Set once the client's close_notify was seen.
    peer_closed: bool,
    /// Set once we queued our own close_notify.
    sent_close: bool,
    /// Set once rustls reported a fatal error; nothing more is processed.
    failed: bool,
    /// Set once any TLS bytes were produced for the client: before that,
    /// the record layer is plaintext.
    wrote_any: bool,
    /// What the ClientHello said, once it arrived whole (see
    /// [`super::hello`]); `Some(default)` when it did not parse. Dropped
    /// when the own record layer takes over (the SNI is then `info`'s).
    hello: Option<Box<HelloFacts>>,
    /// Whether the configuration resumes with stateless tickets: with it,
    /// rustls resumes TLS 1.3 only by ticket, and TLS 1.2 by ticket first.
    /// False for ringterm's stateful ticketer
    /// ([`crate::session::stateful`]), whose tickets are cache keys.
    stateless_tickets: bool,
    /// The type of the client's first handshake message, once its record
    /// header and type byte have arrived (a ClientHello is 1).
    first_handshake_type: Option<u8>,
    /// Whether rustls is given one record at a time (see
    /// [`TlsSession::feed_limit`]): true until a record left rustls holding
    /// part of a handshake message.
    record_at_a_time: bool,
    /// Pending ACME TLS-ALPN-01 challenges, when ACME is on (see
    /// [`super::acme`]).
    acme: Option<&'static AcmeChallenges>,
    /// This handshake answers an ACME challenge: close after it.
    acme_challenge: bool,
    /// rustls consumed client bytes already (a configuration swap for an
    /// ACME challenge is then too late).
    discarded_any: bool,
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
        let stateless_tickets =
            config.ticketer.enabled() && !crate::session::stateful::is_stateful(&*config.ticketer);
        let own_wanted = config.enable_secret_extraction;
        let conn = UnbufferedServerConnection::new(config).map_err(TlsError::Rustls)?;
        Ok(Self {
            conn: Some(Box::new(conn)),
            own: None,
            own_wanted,
            info: None,
            incoming: Vec::new(),
            walked: 0,
            established: false,
            peer_closed: false,
            sent_close: false,
            failed: false,
            wrote_any: false,
            hello: None,
            stateless_tickets,
            first_handshake_type: None,
            record_at_a_time: own_wanted,
            acme: None,
            acme_challenge: false,
            discarded_any: false,
        })
    }

    /// Answers ACME TLS-ALPN-01 challenges from `challenges`: a
    /// ClientHello offering `acme-tls/1` gets the challenge configuration
    /// of its SNI (then [`TlsSession::is_acme_challenge`]), or is refused
    /// when no challenge for that name is pending. Call before the first
    /// read.
    pub fn set_acme(&mut self, challenges: &'static AcmeChallenges) {
        self.acme = Some(challenges);
    }

    /// Whether this handshake answers an ACME TLS-ALPN-01 challenge: once
    /// it completes, close the connection; never relay it.
    pub fn is_acme_challenge(&self) -> bool {
        self.acme_challenge
    }

    /// Whether the handshake has completed.
    pub fn is_established(&self) -> bool {
        self.established
    }

    /// Whether the client's close_notify has been received.
    pub fn is_peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Bytes of ciphertext held waiting for the rest of their record (or
    /// of their handshake message). During the handshake, between
    /// [`TlsSession::prepare_read`] and [`TlsSession::handle_read`], they
    /// are in the read buffer and this says 0.
    pub fn pending_len(&self) -> usize {
        self.incoming.len()
    }

    /// The protocol version, once the ServerHello has chosen it (before the
    /// handshake completes).
    pub fn negotiated_version(&self) -> Option<rustls::ProtocolVersion> {
        if let Some(own) = &self.own {
            return Some(match own.version() {
                Version::Tls13 => ProtocolVersion::TLSv1_3,
                Version::Tls12 => ProtocolVersion::TLSv1_2,
            });
        }
        self.conn.as_ref()?.protocol_version()
    }

    /// Whether ringterm's own record layer carries the connection (it took
    /// over from rustls after the handshake).
    pub fn is_own_record_layer(&self) -> bool {
        self.own.is_some()
    }

    /// The own record layer, once it took over (for tests and tools).
    pub fn record_layer(&self) -> Option<&RecordLayer> {
        self.own.as_deref()
    }

    /// The own record layer, mutably (tests inject a confidentiality
    /// limit through it).
    pub fn record_layer_mut(&mut self) -> Option<&mut RecordLayer> {
        self.own.as_deref_mut()
    }

    /// Bytes a record needs in front of its payload, when the own record
    /// layer seals in place (see [`TlsSession::seal_in_place`]).
    pub fn seal_header_room(&self) -> Option<usize> {
        self.own.as_ref().map(|o| o.header_room())
    }

    /// Bytes a record adds after its payload with the own record layer.
    pub fn seal_tail_room(&self) -> Option<usize> {
        self.own.as_ref().map(|o| o.tail_room())
    }

    /// Whether [`TlsSession::hibernate`] would free something: the own
    /// record layer carries the connection and its keys are built.
    pub fn can_hibernate(&self) -> bool {
        self.own.as_ref().is_some_and(|o| o.is_awake())
    }

    /// For a connection that went quiet: the own record layer drops its
    /// AEAD contexts (see [`RecordLayer::hibernate`]); the next record
    /// builds them again. Nothing else changes. No-op with rustls's layer.
    pub fn hibernate(&mut self) {
        if let Some(own) = self.own.as_deref_mut() {
            own.hibernate();
        }
    }

    /// Facts about the handshake, once it is complete.
    pub fn handshake_info(&self) -> Option<HandshakeInfo> {
        if !self.established {
            return None;
        }
        if let Some(info) = &self.info {
            return Some(info.0.clone());
        }
        self.handshake_info_of(self.conn.as_deref()?)
    }

    /// Prepares `buf` for the next client read.
    ///
    /// Call this exactly once before submitting each read. On return `buf`
    /// holds the pending bytes (usually nothing, or a partial record) and
    /// has at least `read_size` bytes of spare capacity, and always enough
    /// for the rest of a record whose header has arrived. The read must
    /// append into that spare capacity; then the buffer goes back through
    /// [`TlsSession::handle_read`].
    ///
    /// Once established, the pending bytes are a copy and the session keeps
    /// its own, so it can encrypt while the read is in flight. During the
    /// handshake they are moved into `buf` (the session can do nothing
    /// before the read completes), so that a client trickling tiny records
    /// never makes each read copy everything it sent so far.
    ///
    /// A small `read_size` keeps idle connections light (the buffer is
    /// committed for as long as the read is in flight); the runtime grows it
    /// when reads come back full.
    pub fn prepare_read(&mut self, buf: &mut Vec<u8>, read_size: usize) {
        let want = read_size.max(self.record_remainder());
        buf.clear();
        if self.established && self.own.is_none() {
            // rustls may encrypt (backend data) while the read is in
            // flight, and it keeps positions into `incoming`: copy. The own
            // record layer never looks at `incoming` to seal: move.
            buf.extend_from_slice(&self.incoming);
        } else if !self.incoming.is_empty() {
            *buf = std::mem::take(&mut self.incoming);
        }
        // A read size of 0: the runtime brings its own read buffers (a
        // provided-buffer ring) and appends what it read.
        if want > 0 {
            buf.reserve(want);
        }
    }

    /// Bytes still missing from the partial record at the end of
    /// `incoming`, when its header is complete (RFC 8446 §5.1: 5-byte header,
    /// length in bytes 3..5). Records are walked from the front, resuming
    /// where the last walk found the first incomplete one.
    fn record_remainder(&mut self) -> usize {
        let buf = &self.incoming;
        let mut at = if self.walked <= buf.len() {
            self.walked
        } else {
            0
        };
        let mut missing = 0;
        while buf.len() - at >= 5 {
            let len = 5 + u16::from_be_bytes([buf[at + 3], buf[at + 4]]) as usize;
            if buf.len() - at < len {
                missing = (len - (buf.len() - at)).min(MAX_RECORD_LEN);
                break;
            }
            at += len;
        }
        self.walked = at;
        missing
    }

    /// Removes `n` processed bytes (whole records) from the front of
    /// `incoming`.
    fn discard(&mut self, n: usize) {
        let n = n.min(self.incoming.len());
        self.discarded_any |= n > 0;
        self.incoming.drain(..n);
        self.walked = self.walked.saturating_sub(n);
    }

    /// Handles a completed client read.
    ///
    /// `buf` is the buffer prepared by [`TlsSession::prepare_read`] with the
    /// bytes read appended. When every record in it was processed, the
    /// caller gets it back (cleared) to reuse; otherwise the session keeps
    /// it and `buf` is left empty.
    ///
    /// TLS bytes for the client are appended to `to_client` and must be
    /// written in order. Decrypted application data is appended to
    /// `to_backend`.
    ///
    /// When the client's Finished completes the handshake, the TLS 1.3
    /// NewSessionTickets are in `to_client` on return, even when the
    /// client's first request came in the same read (and is in
    /// `to_backend`): the runtime writes `to_client` before it relays
    /// anything, so the tickets precede the backend's response, and a
    /// client that reads one response and closes has its ticket.
    ///
    /// On error, the alert for the client (if any) has been appended to
    /// `to_client`: send it, then close.
    pub fn handle_read(
        &mut self,
        buf: &mut Vec<u8>,
        to_client: &mut Vec<u8>,
        to_backend: &mut Vec<u8>,
    ) -> Result<Status, TlsError> {
        // `buf` holds the pending partial record (copied by `prepare_read`)
        // plus the new bytes: it becomes `incoming`, and the old copy goes.
        self.incoming = std::mem::take(buf);
        let status = self.read_step(to_client, to_backend);
        let status = self.limit_pending(status);
        // When no partial record is left, hand the buffer back for the next
        // read and keep nothing: between reads the session holds no buffer,
        // so an idle connection has exactly one read buffer (in flight).
        if self.incoming.is_empty() {
            *buf = std::mem::take(&mut self.incoming);
        }
        status
    }

    /// [`TlsSession::handle_read`], forwarding without a copy when it can.
    ///
    /// When the own record layer carries the connection, `to_backend` is
    /// empty and `buf` holds exactly one whole record of application data
    /// (the common case for a request), the record is opened where it
    /// landed and `buf` itself becomes `to_backend` (and `buf` the old,
    /// empty `to_backend`): the returned offset is where the plaintext
    /// starts in it. Otherwise this is `handle_read`, and the offset is 0.
    pub fn handle_read_forward(
        &mut self,
        buf: &mut Vec<u8>,
        to_client: &mut Vec<u8>,
        to_backend: &mut Vec<u8>,
    ) -> Result<(Status, usize), TlsError> {
        let single = buf.len() >= 5
            && buf.len() == 5 + usize::from(u16::from_be_bytes([buf[3], buf[4]]))
            && buf[0] == 23;
        let Some(own) = self.own.as_deref_mut() else {
            return self.handle_read(buf, to_client, to_backend).map(|s| (s, 0));
        };
        if !single || !to_backend.is_empty() || !self.incoming.is_empty() || self.failed {
            return self.handle_read(buf, to_client, to_backend).map(|s| (s, 0));
        }
        let res = own.read_in_place(buf, to_client, to_backend);
        self.peer_closed = own.is_peer_closed();
        match res {
            Ok(Some(plain)) if plain.is_empty() => {
                buf.clear();
                Ok((self.own_status(), 0))
            }
            Ok(Some(plain)) => {
                buf.truncate(plain.end);
                std::mem::swap(buf, to_backend);
                Ok((self.own_status(), plain.start))
            }
            Ok(None) => {
                buf.clear();
                Ok((self.own_status(), 0))
            }
            Err(e) => {
                self.failed = true;
                buf.clear();
                Err(TlsError::Record(e))
            }
        }
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
        let status = self.read_step(to_client, to_backend);
        self.limit_pending(status)
    }

    /// Processes what `incoming` holds: through rustls, or through the own
    /// record layer once it took over (and then maybe takes over).
    fn read_step(
        &mut self,
        to_client: &mut Vec<u8>,
        to_backend: &mut Vec<u8>,
    ) -> Result<Status, TlsError> {
        if self.own.is_some() {
            return self.own_read(to_client, to_backend);
        }
        let status = self.step(None, false, to_client, to_backend)?;
        let status = self.maybe_take_over(status)?;
        if status == Status::Handshaking || !has_complete_record(&self.incoming) {
            return Ok(status);
        }
        // Records that came after the client's Finished, which rustls did
        // not see (one record at a time): the own record layer's, or
        // rustls's when it did not take over.
        if self.own.is_some() {
            return self.own_read(to_client, to_backend);
        }
        let status = self.step(None, false, to_client, to_backend)?;
        self.maybe_take_over(status)
    }

    /// How much of `incoming` rustls is given. With the own record layer
    /// wanted, once our first flight is out and until the handshake is
    /// complete: one record at a time, so that rustls stops right after the
    /// client's Finished and never processes a record that follows it in
    /// the same read. Otherwise a KeyUpdate (update_requested) there would
    /// be answered by rustls, which updates its write key at once but only
    /// queues the KeyUpdate message until it next sends application data,
    /// and `dangerous_into_kernel_connection` drops that message: the
    /// client would never learn our new key. Everything, when a record
    /// left rustls holding part of a handshake message (it joins them in
    /// place, and the buffer's front is no longer a record).
    fn feed_limit(&self) -> usize {
        let all = self.incoming.len();
        if !self.record_at_a_time || self.established || !self.wrote_any {
            return all;
        }
        if self.conn.as_deref().is_some_and(|c| !c.is_handshaking()) {
            // The Finished is in: nothing more until the hand-over (rustls
            // holds no partial message, so an empty slice is safe).
            return 0;
        }
        let buf = &self.incoming;
        if buf.len() < 5 {
            return all;
        }
        let end = 5 + usize::from(u16::from_be_bytes([buf[3], buf[4]]));
        if end <= all {
            end
        } else {
            all
        }
    }

    /// Hands the connection over to the own record layer when it is wanted
    /// and allowed: established, rustls has nothing queued (true after any
    /// step that ended in `WriteTraffic`, which every `Ok` status after the
    /// handshake is), and no complete record waits in `incoming` (rustls may
    /// hold a partial handshake message across such records; a partial
    /// record is ours to finish).
    fn maybe_take_over(&mut self, status: Status) -> Result<Status, TlsError> {
        if !self.own_wanted
            || !self.established
            || self.failed
            || self.sent_close
            || status == Status::Handshaking
            || (has_complete_record(&self.incoming) && !self.record_at_a_time)
        {
            return Ok(status);
        }
        let Some(conn) = self.conn.take() else {
            return Ok(status);
        };
        let info = self.handshake_info_of(&conn);
        let certs = conn.peer_certificates().map(<[_]>::to_vec);
        match conn
            .dangerous_into_kernel_connection()
            .map_err(TlsError::Rustls)
            .and_then(|(secrets, kernel)| {
                RecordLayer::new(secrets, kernel).map_err(TlsError::Record)
            }) {
            Ok(mut own) => {
                if self.peer_closed {
                    own.mark_peer_closed();
                }
                self.own = Some(Box::new(own));
                // Only the SNI is still asked for (routing, logs): the
                // handshake's facts have it.
                if info.is_some() {
                    self.hello = None;
                } else if let Some(h) = &mut self.hello {
                    h.session_id = Vec::new();
                    h.psk_identities = Vec::new();
                }
                self.info = info.map(|i| Box::new((i, certs)));
                Ok(status)
            }
            Err(e) => {
                self.failed = true;
                Err(e)
            }
        }
    }

    fn handshake_info_of(&self, conn: &UnbufferedServerConnection) -> Option<HandshakeInfo> {
        let version = conn.protocol_version()?;
        let resumed = conn.handshake_kind() == Some(HandshakeKind::Resumed);
        Some(HandshakeInfo {
            version,
            resumed,
            resumption: resumed.then(|| self.resumption(version)),
            sni: self.sni().map(str::to_owned),
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
            cipher: conn
                .negotiated_cipher_suite()
                .and_then(|s| s.suite().as_str()),
            client_cert: conn.peer_certificates().is_some_and(|c| !c.is_empty()),
            client_cn: conn
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| subject_cn(c)),
        })
    }

    /// The own record layer's read: records are opened in place in
    /// `incoming`, the consumed ones dropped.
    fn own_read(
        &mut self,
        to_client: &mut Vec<u8>,
        to_backend: &mut Vec<u8>,
    ) -> Result<Status, TlsError> {
        if self.failed {
            return Err(TlsError::Failed);
        }
        let Some(own) = self.own.as_deref_mut() else {
            return Err(TlsError::UnexpectedState);
        };
        let (consumed, result) = own.read(&mut self.incoming, to_client, to_backend);
        self.peer_closed = own.is_peer_closed();
        self.discard(consumed);
        if let Err(e) = result {
            self.failed = true;
            self.incoming = Vec::new();
            self.walked = 0;
            return Err(TlsError::Record(e));
        }
        Ok(self.own_status())
    }

    fn own_status(&self) -> Status {
        match (self.peer_closed, self.sent_close) {
            (true, true) => Status::Closed,
            (true, false) => Status::PeerClosed,
            _ => Status::Established,
        }
    }

    /// Seals application data in place (own record layer only): `buf`
    /// holds [`TlsSession::seal_header_room`] bytes of room from `start`,
    /// then at most [`MAX_FRAGMENT_LEN`] bytes of plaintext; on return
    /// `buf[start..]` holds the record (and maybe a KeyUpdate after it),
    /// ready for the client.
    pub fn seal_in_place(&mut self, buf: &mut Vec<u8>, start: usize) -> Result<Status, TlsError> {
        if self.sent_close {
            return Err(TlsError::AlreadyClosed);
        }
        let Some(own) = self.own.as_deref_mut() else {
            return Err(TlsError::NotEstablished);
        };
        let res = own.seal_in_place(buf, start);
        self.own_after_seal(res)
    }

    fn own_after_seal(&mut self, res: Result<(), RecordError>) -> Result<Status, TlsError> {
        if let Some(own) = &self.own {
            self.sent_close = own.is_closed();
        }
        match res {
            Ok(()) => Ok(self.own_status()),
            Err(e) => {
                self.failed = true;
                Err(TlsError::Record(e))
            }
        }
    }

    /// Fails the session when more client bytes wait unprocessed than a
    /// well-behaved client can make us hold (see the module documentation).
    fn limit_pending(&mut self, status: Result<Status, TlsError>) -> Result<Status, TlsError> {
        let limit = if self.established {
            MAX_PENDING_ESTABLISHED
        } else {
            MAX_PENDING_HANDSHAKE
        };
        // After the client's close_notify nothing more is read anyway.
        let reading = matches!(status, Ok(Status::Handshaking | Status::Established));
        if !reading || self.incoming.len() <= limit {
            return status;
        }
        let pending = self.incoming.len();
        self.failed = true;
        self.incoming = Vec::new();
        self.walked = 0;
        Err(TlsError::TooMuchPending { pending, limit })
    }

    /// Encrypts plaintext from the backend into `to_client`.
    ///
    /// Only valid once the handshake is complete.
    pub fn encrypt(
        &mut self,
        plaintext: &[u8],
        to_client: &mut Vec<u8>,
    ) -> Result<Status, TlsError> {
        self.check_can_encrypt()?;
        if let Some(own) = self.own.as_deref_mut() {
            let res = own.seal(plaintext, to_client);
            return self.own_after_seal(res);
        }
        let mut scratch = Vec::new();
        let status = self.step(Some(plaintext), false, to_client, &mut scratch)?;
        debug_assert!(scratch.is_empty(), "invariant: no complete record pending");
        self.maybe_take_over(status)
    }

    /// Application data can be sealed: the handshake is complete and no
    /// close_notify went out.
    fn check_can_encrypt(&self) -> Result<(), TlsError> {
        if !self.established {
            Err(TlsError::NotEstablished)
        } else if self.sent_close {
            Err(TlsError::AlreadyClosed)
        } else {
            Ok(())
        }
    }

    /// Seals `data[..len]` in place as records with the own record layer,
    /// their headers and trailers into `lent` (see
    /// [`RecordLayer::seal_lent`]). `Ok(false)`: nothing was done (rustls's
    /// layer, or a case the layer leaves to [`TlsSession::encrypt`]).
    pub fn seal_lent(
        &mut self,
        data: &mut [u8],
        len: usize,
        lent: &mut LentRecords,
    ) -> Result<bool, TlsError> {
        self.check_can_encrypt()?;
        let Some(own) = self.own.as_deref_mut() else {
            return Ok(false);
        };
        let res = own.seal_lent(data, len, lent);
        let sealed = matches!(res, Ok(true));
        self.own_after_seal(res.map(|_| ()))?;
        Ok(sealed)
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
        if let Some(own) = self.own.as_deref_mut() {
            let res = own.close(to_client);
            return self.own_after_seal(res);
        }
        let mut scratch = Vec::new();
        self.step(None, true, to_client, &mut scratch)
    }

    /// The SNI the client sent (lowercased), once the ClientHello has
    /// arrived whole; `None` before that or when the client sent none.
    pub fn sni(&self) -> Option<&str> {
        match (&self.hello, &self.info) {
            (Some(h), _) => h.sni.as_deref(),
            (None, Some(info)) => info.0.sni.as_deref(),
            (None, None) => None,
        }
    }

    /// What the client offered in its ClientHello, once it arrived whole;
    /// `None` again once the own record layer took over.
    pub fn hello(&self) -> Option<&HelloFacts> {
        self.hello.as_deref()
    }

    /// Whether the configuration resumes with stateless tickets (not
    /// ringterm's stateful ticketer, see [`crate::session::stateful`]).
    pub fn stateless_tickets(&self) -> bool {
        self.stateless_tickets
    }

    /// How a resumed handshake of `version` found its session. rustls
    /// resumes TLS 1.3 through the ticketer when it is enabled and through
    /// the session store otherwise (`server/tls13.rs`); TLS 1.2 tries an
    /// offered ticket first, then the session ID (`server/tls12.rs`). A
    /// TLS 1.2 ticket that fails to decrypt while the same ClientHello's
    /// session ID resumes is counted as a ticket resumption: rustls says no
    /// more than "resumed".
    fn resumption(&self, version: ProtocolVersion) -> Resumption {
        let hello = self.hello.as_deref();
        if version == ProtocolVersion::TLSv1_3 {
            if self.stateless_tickets {
                Resumption::Tls13Ticket
            } else {
                Resumption::Tls13Stateful
            }
        } else if self.stateless_tickets && hello.and_then(|h| h.ticket_len).unwrap_or(0) > 0 {
            Resumption::Tls12Ticket
        } else {
            Resumption::Tls12Id
        }
    }

    /// The client's certificate chain, when it presented one (mTLS).
    pub fn peer_certificates(&self) -> Option<&[rustls::pki_types::CertificateDer<'static>]> {
        match (&self.conn, &self.info) {
            (Some(conn), _) => conn.peer_certificates(),
            (None, Some(info)) => info.1.as_deref(),
            (None, None) => None,
        }
    }

    /// [`step_inner`](Self::step_inner), looking at the ClientHello first
    /// (see [`super::hello`]) until it has arrived whole.
    fn step(
        &mut self,
        plaintext: Option<&[u8]>,
        close: bool,
        to_client: &mut Vec<u8>,
        to_backend: &mut Vec<u8>,
    ) -> Result<Status, TlsError> {
        if self.hello.is_none() && self.own.is_none() {
            match hello::peek(&self.incoming) {
                Peek::NeedMore => {}
                Peek::Invalid => self.hello = Some(Box::default()),
                Peek::Hello(facts) => {
                    let acme = facts.offers_acme_tls1 && self.acme.is_some();
                    self.hello = Some(Box::new(facts));
                    if acme {
                        self.answer_acme(to_client)?;
                    }
                }
            }
        }
        let before = to_client.len();
        let result = self.step_inner(plaintext, close, to_client, to_backend);
        if let Err(TlsError::Rustls(rustls::Error::General(msg))) = &result {
            if msg == NO_CERTIFICATE {
                // rustls refuses a ClientHello its resolver found no
                // certificate for with access_denied; strict SNI answers
                // unrecognized_name (RFC 6066 §3). Nothing is encrypted
                // before the ServerHello: the rewrite only touches a
                // plaintext alert record.
                rewrite_plaintext_alert(&mut to_client[before..], UNRECOGNIZED_NAME);
            }
        }
        result
    }

    /// The ClientHello offers `acme-tls/1`: swap in the challenge's
    /// configuration for its SNI, before rustls has consumed anything, or
    /// refuse the handshake with `unrecognized_name` when no challenge for
    /// the name is pending (RFC 8737 §3: only the challenge certificate
    /// may answer `acme-tls/1`).
    fn answer_acme(&mut self, to_client: &mut Vec<u8>) -> Result<(), TlsError> {
        let sni = self.hello.as_ref().and_then(|h| h.sni.as_deref());
        let config = match (sni, self.acme) {
            (Some(name), Some(acme)) => acme.lookup(name),
            _ => None,
        };
        let Some(config) = config.filter(|_| !self.discarded_any && !self.wrote_any) else {
            self.failed = true;
            let at = to_client.len();
            to_client.extend_from_slice(&PLAINTEXT_DECODE_ERROR_ALERT);
            rewrite_plaintext_alert(&mut to_client[at..], UNRECOGNIZED_NAME);
            return Err(TlsError::AcmeNoChallenge);
        };
        let conn = UnbufferedServerConnection::new(config).map_err(TlsError::Rustls)?;
        self.conn = Some(Box::new(conn));
        self.own_wanted = false;
        self.stateless_tickets = false;
        self.acme_challenge = true;
        Ok(())
    }

    /// The core loop: drive rustls's state machine until it needs input.
    fn step_inner(
        &mut self,
        mut plaintext: Option<&[u8]>,
        mut close: bool,
        to_client: &mut Vec<u8>,
        to_backend: &mut Vec<u8>,
    ) -> Result<Status, TlsError> {
        if self.failed {
            return Err(TlsError::Failed);
        }
        if self.first_handshake_type.is_none() && self.incoming.len() >= 5 {
            // The client's first record is plaintext: at most 2^14 bytes
            // (RFC 8446 §5.1, RFC 5246 §6.2.1: record_overflow). rustls
            // takes up to 2^14 + 2048 in any record.
            let len = usize::from(u16::from_be_bytes([self.incoming[3], self.incoming[4]]));
            if self.incoming[0] != 23 && len > MAX_FRAGMENT_LEN {
                self.failed = true;
                to_client.extend_from_slice(&[21, 3, 3, 0, 2, 2, RECORD_OVERFLOW]);
                return Err(TlsError::Record(RecordError::RecordOverflow(len)));
            }
        }
        if self.first_handshake_type.is_none() && self.incoming.len() > 5 && self.incoming[0] == 22
        {
            self.first_handshake_type = Some(self.incoming[5]);
        }
        for _ in 0..MAX_STEPS {
            let limit = self.feed_limit();
            let fed_all = limit == self.incoming.len();
            let Some(conn) = self.conn.as_deref_mut() else {
                self.failed = true;
                return Err(TlsError::UnexpectedState);
            };
            let UnbufferedStatus { mut discard, state } =
                conn.process_tls_records(&mut self.incoming[..limit]);
            let state = match state {
                Ok(state) => state,
                Err(err) => {
                    self.discard(discard);
                    self.failed = true;
                    self.drain_alert(&err, to_client);
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
                                self.discard(discard);
                                self.failed = true;
                                self.drain_alert(&err, to_client);
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
                    self.wrote_any = true;
                }
                ConnectionState::TransmitTlsData(transmit) => {
                    // The bytes are already queued in `to_client`, in order;
                    // the runtime transmits them before anything queued later.
                    transmit.done();
                }
                ConnectionState::BlockedHandshake => {
                    if fed_all || limit == 0 {
                        outcome = Some(Status::Handshaking);
                    } else if discard < limit {
                        // rustls holds part of a handshake message in the
                        // record: from now on it gets everything.
                        self.record_at_a_time = false;
                    }
                    // Else it took the whole record: give it the next one.
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
                self.discard(discard);
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
    ///
    /// Exactly one more call: rustls hands out the queued alert before it
    /// looks at input again. Calling it a second time would make rustls
    /// re-process the bad input (and try to send a second fatal alert), and
    /// an empty slice instead of our buffer would make it index out of
    /// range, since it keeps positions into the buffer it was last given.
    fn drain_alert(&mut self, err: &rustls::Error, to_client: &mut Vec<u8>) {
        let before = to_client.len();
        let Some(conn) = self.conn.as_deref_mut() else {
            return;
        };
        let UnbufferedStatus { state, .. } = conn.process_tls_records(&mut self.incoming);
        if let Ok(ConnectionState::EncodeTlsData(mut encode)) = state {
            let _ = encode_into(to_client, |out| encode.encode(out));
        }
        if to_client.len() > before {
            // rustls queued an alert. Where it is still plaintext and the
            // RFC names another one for this error, send the RFC's.
            if let Some(description) = rfc_alert(err) {
                rewrite_plaintext_alert(&mut to_client[before..], description);
            } else if !self.wrote_any
                && self.first_handshake_type.is_some_and(|t| t != CLIENT_HELLO)
                && matches!(err, rustls::Error::InvalidMessage(_))
            {
                // The client opened with another handshake message than a
                // ClientHello (a ServerHello, a Certificate...): rustls
                // tries to decode it and sends decode_error, where it is
                // an unexpected message (RFC 8446 §6.2).
                rewrite_plaintext_alert(&mut to_client[before..], UNEXPECTED_MESSAGE);
            }
            return;
        }
        // rustls returns some record-layer errors (an oversized handshake
        // message, from its handshake joiner; a record interleaved with a
        // fragmented handshake message) without queuing an alert. Before
        // we have sent anything the record layer is plaintext, so we send
        // the alert the RFC names (RFC 8446 §6.2) ourselves.
        if !self.wrote_any {
            if let Some(description) = unalerted_description(err) {
                to_client.extend_from_slice(&PLAINTEXT_DECODE_ERROR_ALERT);
                rewrite_plaintext_alert(&mut to_client[before..], description);
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

/// Whether `buf` starts with a whole record (RFC 8446 §5.1 header).
fn has_complete_record(buf: &[u8]) -> bool {
    buf.len() >= 5 && buf.len() >= 5 + usize::from(u16::from_be_bytes([buf[3], buf[4]]))
}

/// rustls's error when the certificate resolver returned nothing
/// (`server/hs.rs`); a unit test pins it.
const NO_CERTIFICATE: &str = "no server certificate chain resolved";

/// The `unrecognized_name` alert description.
const UNRECOGNIZED_NAME: u8 = 112;

/// The ClientHello handshake type.
const CLIENT_HELLO: u8 = 1;

/// The `unexpected_message` alert description.
const UNEXPECTED_MESSAGE: u8 = 10;

/// The `decode_error` alert description.
const DECODE_ERROR: u8 = 50;

/// The `record_overflow` alert description.
const RECORD_OVERFLOW: u8 = 22;

/// The `missing_extension` alert description.
const MISSING_EXTENSION: u8 = 109;

/// The alert the RFC requires for `err` where rustls queues another one.
/// Only plaintext alerts can be rewritten (see [`rewrite_plaintext_alert`]);
/// the encrypted cases are listed in the README's "TLS conformance" table.
fn rfc_alert(err: &rustls::Error) -> Option<u8> {
    use rustls::{Error as E, PeerIncompatible as PI};
    match err {
        // A ClientHello with supported_groups but without key_share: RFC
        // 8446 §9.2 "MUST abort the handshake with a missing_extension
        // alert"; rustls sends handshake_failure.
        E::PeerIncompatible(PI::KeyShareExtensionRequired) => Some(MISSING_EXTENSION),
        // A zero-length record of a type other than application data (an
        // empty alert or handshake record): RFC 8446 §5.4 "MUST terminate
        // the connection with an unexpected_message alert"; rustls sends
        // decode_error.
        E::InvalidMessage(rustls::InvalidMessage::InvalidEmptyPayload) => Some(UNEXPECTED_MESSAGE),
        _ => None,
    }
}

/// The alert for an error rustls returns without queuing one, if any.
fn unalerted_description(err: &rustls::Error) -> Option<u8> {
    use rustls::{Error as E, PeerMisbehaved as PM};
    if let Some(description) = rfc_alert(err) {
        return Some(description);
    }
    match err {
        // Malformed or oversized handshake messages (RFC 8446 §6.2).
        E::InvalidMessage(_) => Some(DECODE_ERROR),
        // A record of another type between the fragments of a handshake
        // message (RFC 8446 §5.1 "MUST NOT be interleaved"), or a run of
        // empty records: an unexpected message (RFC 8446 §5, §6.2).
        E::PeerMisbehaved(
            PM::MessageInterleavedWithHandshakeMessage
            | PM::RejectedEarlyDataInterleavedWithHandshakeMessage
            | PM::TooManyEmptyFragments,
        ) => Some(UNEXPECTED_MESSAGE),
        _ => None,
    }
}

/// Replaces the description of a trailing plaintext fatal alert record.
fn rewrite_plaintext_alert(out: &mut [u8], description: u8) {
    if let Some(start) = out.len().checked_sub(7) {
        let rec = &mut out[start..];
        if rec[0] == 21 && rec[1] == 3 && rec[3] == 0 && rec[4] == 2 && rec[5] == 2 {
            rec[6] = description;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{
        build_server_config, generate_self_signed, load_cert_chain, load_private_key, TlsPolicy,
    };
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, RootCertStore};
    use std::io::{Read, Write};

    struct Pair {
        client: ClientConnection,
        server: TlsSession,
        /// Plaintext the server decrypted (what would go to the backend).
        backend: Vec<u8>,
        /// Plaintext the client decrypted.
        client_rx: Vec<u8>,
    }

    fn configs(
        version: &'static rustls::SupportedProtocolVersion,
    ) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        let (cert, key) = generate_self_signed(&["localhost"]).unwrap();
        let chain = load_cert_chain("c", cert.as_bytes()).unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(chain[0].clone()).unwrap();
        let key = load_private_key("k", key.as_bytes()).unwrap();
        let server = build_server_config(chain, key, &TlsPolicy::default()).unwrap();
        let client = ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        (server, Arc::new(client))
    }

    fn pair(version: &'static rustls::SupportedProtocolVersion) -> Pair {
        let (server, client) = configs(version);
        Pair {
            client: ClientConnection::new(client, ServerName::try_from("localhost").unwrap())
                .unwrap(),
            server: TlsSession::new(server).unwrap(),
            backend: Vec::new(),
            client_rx: Vec::new(),
        }
    }

    impl Pair {
        /// Moves client bytes to the server in chunks of `chunk` and server
        /// bytes back, until neither side has anything to say.
        fn pump(&mut self, chunk: usize) -> Result<Status, TlsError> {
            let mut status = Status::Handshaking;
            for _ in 0..10_000 {
                let mut wire = Vec::new();
                while self.client.wants_write() {
                    self.client.write_tls(&mut wire).unwrap();
                }
                let mut to_client = Vec::new();
                if wire.is_empty() {
                    return Ok(status);
                }
                for piece in wire.chunks(chunk) {
                    status =
                        self.server
                            .handle_ciphertext(piece, &mut to_client, &mut self.backend)?;
                }
                self.deliver(&to_client);
            }
            panic!("pump did not converge");
        }

        fn deliver(&mut self, mut bytes: &[u8]) {
            while !bytes.is_empty() {
                let n = self.client.read_tls(&mut bytes).unwrap();
                assert!(n > 0);
                self.client.process_new_packets().unwrap();
                let mut buf = [0u8; 4096];
                while let Ok(n) = self.client.reader().read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    self.client_rx.extend_from_slice(&buf[..n]);
                }
            }
        }

        fn client_plaintext(&mut self) -> Vec<u8> {
            std::mem::take(&mut self.client_rx)
        }
    }

    fn handshake_and_exchange(version: &'static rustls::SupportedProtocolVersion, chunk: usize) {
        let mut p = pair(version);
        let status = p.pump(chunk).unwrap();
        assert_eq!(status, Status::Established);
        assert!(p.server.is_established());
        let info = p.server.handshake_info().unwrap();
        assert_eq!(info.version, version.version);
        assert!(!info.resumed);
        assert!(!p.client.is_handshaking());

        // Client → server (backend).
        let request: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        p.client.writer().write_all(&request).unwrap();
        p.pump(chunk).unwrap();
        assert_eq!(p.backend, request);

        // Server (backend) → client, larger than a record.
        let response: Vec<u8> = (0..70_000u32).map(|i| (i % 241) as u8).collect();
        let mut to_client = Vec::new();
        assert_eq!(
            p.server.encrypt(&response, &mut to_client).unwrap(),
            Status::Established
        );
        p.deliver(&to_client);
        assert_eq!(p.client_plaintext(), response);

        // Client half-closes; the server can still send.
        p.client.send_close_notify();
        assert_eq!(p.pump(chunk).unwrap(), Status::PeerClosed);
        assert!(p.server.is_peer_closed());
        let mut to_client = Vec::new();
        assert_eq!(
            p.server.encrypt(b"late", &mut to_client).unwrap(),
            Status::PeerClosed
        );
        assert_eq!(p.server.close(&mut to_client).unwrap(), Status::Closed);
        p.deliver(&to_client);
        // The client sees "late" then a clean close.
        assert_eq!(p.client_plaintext(), b"late");
        let mut rest = Vec::new();
        assert_eq!(p.client.reader().read_to_end(&mut rest).unwrap(), 0);
    }

    /// A resolver that finds no certificate: rustls's error text (which the
    /// step matches) and the rewrite of its access_denied alert into
    /// unrecognized_name (RFC 6066 §3).
    #[test]
    fn no_certificate_is_answered_with_unrecognized_name() {
        #[derive(Debug)]
        struct Nothing;
        impl rustls::server::ResolvesServerCert for Nothing {
            fn resolve(
                &self,
                _: rustls::server::ClientHello<'_>,
            ) -> Option<Arc<rustls::sign::CertifiedKey>> {
                None
            }
        }
        let (server, client) = configs(&rustls::version::TLS13);
        let mut server = ServerConfig::clone(&server);
        server.cert_resolver = Arc::new(Nothing);
        let mut session = TlsSession::new(Arc::new(server)).unwrap();
        let mut c =
            ClientConnection::new(client, ServerName::try_from("unknown.test").unwrap()).unwrap();
        let mut hello = Vec::new();
        c.write_tls(&mut hello).unwrap();
        let (mut to_client, mut to_backend) = (Vec::new(), Vec::new());
        let err = session
            .handle_ciphertext(&hello, &mut to_client, &mut to_backend)
            .unwrap_err();
        assert_eq!(
            err,
            TlsError::Rustls(rustls::Error::General(NO_CERTIFICATE.to_owned()))
        );
        assert_eq!(to_client, [21, 3, 3, 0, 2, 2, UNRECOGNIZED_NAME]);
        assert_eq!(session.sni(), Some("unknown.test"));
    }

    /// The session kind the cache tags an entry with is read from rustls's
    /// serialized value (`SessionKind::of_value`): pinned here with real
    /// handshakes of both versions.
    #[test]
    fn stored_session_values_carry_their_version() {
        use crate::session::cache::SessionKind;
        use std::sync::Mutex;

        #[derive(Debug, Default)]
        struct Recorder(Mutex<Vec<Vec<u8>>>);
        impl rustls::server::StoresServerSessions for Recorder {
            fn put(&self, _key: Vec<u8>, value: Vec<u8>) -> bool {
                self.0.lock().unwrap().push(value);
                true
            }
            fn get(&self, _key: &[u8]) -> Option<Vec<u8>> {
                None
            }
            fn take(&self, _key: &[u8]) -> Option<Vec<u8>> {
                None
            }
            fn can_cache(&self) -> bool {
                true
            }
        }
        for (version, kind) in [
            (&rustls::version::TLS13, SessionKind::Tls13Stateful),
            (&rustls::version::TLS12, SessionKind::Tls12Id),
        ] {
            {
                let name = "localhost";
                let (server, client) = configs(version);
                let recorder = Arc::new(Recorder::default());
                let mut server = ServerConfig::clone(&server);
                server.session_storage = recorder.clone();
                server.send_tls13_tickets = 1;
                let mut p = Pair {
                    client: ClientConnection::new(client, ServerName::try_from(name).unwrap())
                        .unwrap(),
                    server: TlsSession::new(Arc::new(server)).unwrap(),
                    backend: Vec::new(),
                    client_rx: Vec::new(),
                };
                p.pump(usize::MAX).unwrap();
                let values = recorder.0.lock().unwrap();
                assert!(!values.is_empty(), "{version:?}: nothing stored");
                for v in values.iter() {
                    assert_eq!(SessionKind::of_value(v), kind, "{version:?} {name}");
                }
            }
        }
        // Without SNI the presence byte is 0 and the version follows.
        assert_eq!(
            SessionKind::of_value(&[0, 3, 4, 0]),
            SessionKind::Tls13Stateful
        );
        assert_eq!(SessionKind::of_value(&[0, 3, 3]), SessionKind::Tls12Id);
        assert_eq!(SessionKind::of_value(&[]), SessionKind::Unknown);
        assert_eq!(SessionKind::of_value(&[1, 200, 3]), SessionKind::Unknown);
    }

    #[test]
    fn tls13_handshake_and_data() {
        handshake_and_exchange(&rustls::version::TLS13, usize::MAX);
    }

    #[test]
    fn tls12_handshake_and_data() {
        handshake_and_exchange(&rustls::version::TLS12, usize::MAX);
    }

    #[test]
    fn tls13_one_byte_at_a_time() {
        handshake_and_exchange(&rustls::version::TLS13, 1);
    }

    #[test]
    fn tls12_one_byte_at_a_time() {
        handshake_and_exchange(&rustls::version::TLS12, 1);
    }

    #[test]
    fn read_buffer_swap_path() {
        // The runtime's path: prepare_read, append, handle_read.
        let mut p = pair(&rustls::version::TLS13);
        let mut rx = Vec::new();
        let mut status = Status::Handshaking;
        for _ in 0..10 {
            let mut wire = Vec::new();
            while p.client.wants_write() {
                p.client.write_tls(&mut wire).unwrap();
            }
            if wire.is_empty() {
                break;
            }
            // Deliver in two reads split mid-record.
            let mid = wire.len() / 2;
            let mut to_client = Vec::new();
            for part in [&wire[..mid], &wire[mid..]] {
                p.server.prepare_read(&mut rx, part.len());
                assert!(rx.capacity() - rx.len() >= part.len());

                rx.extend_from_slice(part);
                status = p
                    .server
                    .handle_read(&mut rx, &mut to_client, &mut p.backend)
                    .unwrap();
            }
            p.deliver(&to_client);
        }
        assert_eq!(status, Status::Established);
        p.client.writer().write_all(b"ping").unwrap();
        let mut wire = Vec::new();
        p.client.write_tls(&mut wire).unwrap();
        let (a, b) = wire.split_at(3);
        let mut to_client = Vec::new();
        p.server.prepare_read(&mut rx, 0);
        rx.extend_from_slice(a);
        p.server
            .handle_read(&mut rx, &mut to_client, &mut p.backend)
            .unwrap();
        assert!(p.backend.is_empty());
        assert_eq!(p.server.pending_len(), 3);
        // While the next read is "in flight", the session can still encrypt.
        p.server.prepare_read(&mut rx, 0);
        assert_eq!(&rx[..], a);
        p.server.encrypt(b"pong", &mut to_client).unwrap();
        rx.extend_from_slice(b);
        p.server
            .handle_read(&mut rx, &mut to_client, &mut p.backend)
            .unwrap();
        assert_eq!(p.backend, b"ping");
        p.deliver(&to_client);
        assert_eq!(p.client_plaintext(), b"pong");
    }

    #[test]
    fn prepare_read_leaves_room_for_the_pending_record() {
        let (server, _) = configs(&rustls::version::TLS13);
        let mut s = TlsSession::new(server).unwrap();
        // A header announcing 1000 bytes of payload, 10 of them present.
        s.incoming = vec![22, 3, 1, 0x03, 0xe8];
        s.incoming.extend_from_slice(&[0; 10]);
        assert_eq!(s.record_remainder(), 990);
        let mut buf = Vec::new();
        s.prepare_read(&mut buf, 16);
        assert_eq!(buf.len(), 15);
        assert!(buf.capacity() - buf.len() >= 990);
        // A complete record then a partial header: nothing to guarantee.
        s.incoming = vec![23, 3, 3, 0, 1, 0xff, 23, 3];
        assert_eq!(s.record_remainder(), 0);
        s.prepare_read(&mut buf, 16);
        assert!(buf.capacity() - buf.len() >= 16);
    }

    #[test]
    fn corrupted_record_is_an_error_with_an_alert() {
        let mut p = pair(&rustls::version::TLS13);
        p.pump(usize::MAX).unwrap();
        p.client.writer().write_all(b"hello").unwrap();
        let mut wire = Vec::new();
        p.client.write_tls(&mut wire).unwrap();
        let last = wire.len() - 1;
        wire[last] ^= 0x55; // break the AEAD tag
        let mut to_client = Vec::new();
        let err = p
            .server
            .handle_ciphertext(&wire, &mut to_client, &mut p.backend)
            .unwrap_err();
        // The own record layer took over (the default configuration).
        assert_eq!(
            err,
            TlsError::Record(crate::record::RecordError::BadRecordMac)
        );
        assert!(p.backend.is_empty(), "no plaintext from a forged record");
        assert!(!to_client.is_empty(), "an alert is queued for the client");
        // The session processes nothing more.
        assert_eq!(
            p.server
                .handle_ciphertext(b"x", &mut to_client, &mut p.backend),
            Err(TlsError::Failed)
        );
    }

    #[test]
    fn garbage_instead_of_client_hello() {
        let (server, _) = configs(&rustls::version::TLS13);
        let mut s = TlsSession::new(server).unwrap();
        let mut to_client = Vec::new();
        let mut to_backend = Vec::new();
        let err = s
            .handle_ciphertext(
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                &mut to_client,
                &mut to_backend,
            )
            .unwrap_err();
        assert!(matches!(err, TlsError::Rustls(_)), "{err:?}");
        assert!(to_backend.is_empty());
    }

    #[test]
    fn every_prefix_of_a_client_hello_needs_more() {
        let (server, client) = configs(&rustls::version::TLS13);
        let mut c =
            ClientConnection::new(client, ServerName::try_from("localhost").unwrap()).unwrap();
        let mut hello = Vec::new();
        c.write_tls(&mut hello).unwrap();
        for i in 0..hello.len() {
            let mut s = TlsSession::new(server.clone()).unwrap();
            let (mut tc, mut tb) = (Vec::new(), Vec::new());
            assert_eq!(
                s.handle_ciphertext(&hello[..i], &mut tc, &mut tb).unwrap(),
                Status::Handshaking,
                "prefix {i}"
            );
            assert!(tc.is_empty());
        }
    }

    #[test]
    fn oversized_handshake_length_is_an_error_not_a_panic() {
        let (server, _) = configs(&rustls::version::TLS13);
        let mut s = TlsSession::new(server).unwrap();
        let mut hello = vec![0x16, 0x03, 0x01, 0x00, 0x40, 0x01, 0xff, 0xff, 0xff];
        hello.extend_from_slice(&[0u8; 60]);
        let (mut tc, mut tb) = (Vec::new(), Vec::new());
        let err = s.handle_ciphertext(&hello, &mut tc, &mut tb).unwrap_err();
        assert_eq!(
            err,
            TlsError::Rustls(rustls::Error::InvalidMessage(
                rustls::InvalidMessage::HandshakePayloadTooLarge
            ))
        );
        // rustls returns this one from its handshake joiner without queuing
        // an alert (rustls 0.23.46, conn.rs `coalesce(buffer)?`); we send
        // the plaintext decode_error alert ourselves.
        assert_eq!(tc, PLAINTEXT_DECODE_ERROR_ALERT);
        assert!(tb.is_empty());
        assert_eq!(
            s.handle_ciphertext(b"x", &mut tc, &mut tb),
            Err(TlsError::Failed)
        );
    }

    /// A handshake message in one-byte records: each read costs time
    /// proportional to the read, not to what is pending (nothing is copied
    /// during the handshake), and the session gives up at the limit instead
    /// of holding six times the message.
    #[test]
    fn tiny_records_hit_the_pending_limit() {
        let (server, _) = configs(&rustls::version::TLS13);
        let mut s = TlsSession::new(server).unwrap();
        let (mut tc, mut tb) = (Vec::new(), Vec::new());
        // A ClientHello header announcing 0xfff0 bytes, then its body.
        let header = [0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0x00, 0xff, 0xf0];
        assert_eq!(
            s.handle_ciphertext(&header, &mut tc, &mut tb),
            Ok(Status::Handshaking)
        );
        let mut rx = Vec::new();
        let mut reads = 0;
        let err = loop {
            let pending = s.pending_len();
            s.prepare_read(&mut rx, 1);
            assert_eq!(rx.len(), pending);
            assert_eq!(s.pending_len(), 0, "moved, not copied");
            rx.extend_from_slice(&[0x16, 0x03, 0x03, 0x00, 0x01, 0x00]);
            reads += 1;
            match s.handle_read(&mut rx, &mut tc, &mut tb) {
                Ok(Status::Handshaking) => assert!(s.pending_len() <= MAX_PENDING_HANDSHAKE),
                other => break other.unwrap_err(),
            }
        };
        assert!(
            matches!(
                err,
                TlsError::TooMuchPending { pending, limit: MAX_PENDING_HANDSHAKE }
                    if pending > MAX_PENDING_HANDSHAKE && pending <= MAX_PENDING_HANDSHAKE + 6
            ),
            "{err:?}"
        );
        assert!(reads < 0xfff0 && reads > MAX_PENDING_HANDSHAKE / 6 - 10);
        assert!(tc.is_empty() && tb.is_empty());
        assert_eq!(s.pending_len(), 0, "the memory is released");
        assert_eq!(
            s.handle_ciphertext(b"x", &mut tc, &mut tb),
            Err(TlsError::Failed)
        );
    }

    #[test]
    fn encrypt_before_handshake_is_refused() {
        let (server, _) = configs(&rustls::version::TLS13);
        let mut s = TlsSession::new(server).unwrap();
        let mut out = Vec::new();
        assert_eq!(s.encrypt(b"x", &mut out), Err(TlsError::NotEstablished));
        assert_eq!(s.close(&mut out), Err(TlsError::NotEstablished));
        assert!(out.is_empty());
    }
}
