//! ringterm's own TLS record layer, after the handshake.
//!
//! rustls does the handshake. Once it is complete and rustls has nothing
//! left to send (session tickets included), [`crate::tls::TlsSession`]
//! turns the rustls connection into its traffic secrets and a small
//! [`KernelConnection`] (rustls's kernel-connection API, made for kTLS and
//! for "something else to do the encryption/decryption") and hands them to
//! a [`RecordLayer`]. From then on no rustls connection and no rustls
//! buffer exists for the connection: it keeps two keys, two sequence
//! numbers, the `KernelConnection` (TLS 1.3, to derive the next traffic
//! secrets on a KeyUpdate) and a few flags.
//!
//! What this layer owns: record framing, sequence numbers and nonces (the
//! AEAD itself is aws-lc-rs's; AES-GCM through its TLS record keys, which
//! refuse a nonce that does not increase), alerts, KeyUpdate in both
//! directions and the schedule of our own key updates before the suite's
//! confidentiality limit, and the limits on what a peer may send. What
//! stays in rustls: the handshake, the key schedule (HKDF) and session
//! tickets; in aws-lc-rs: every cipher.
//!
//! Sans-IO: bytes in, bytes out, no clock. Records are opened in place in
//! the caller's read buffer ([`RecordLayer::open_in_place`],
//! [`RecordLayer::read`]) and sealed in place in the caller's write buffer
//! ([`RecordLayer::seal_in_place`]: the payload sits after
//! [`RecordLayer::header_room`] bytes; the header is written in front of it
//! and the TLS 1.3 content type and the tag are appended).
//!
//! The behaviour on bad input follows rustls's own (0.23, `common_state.rs`
//! and `server/tls13.rs`), so that `--record-layer own` and `rustls` look
//! the same to a client; the alerts are those of RFC 8446 §5 and §6 and
//! RFC 5246 §7.2.

#![forbid(unsafe_code)]

#[doc(hidden)]
pub mod fuzz;
mod keys;
#[cfg(test)]
mod tests;

use std::ops::Range;

use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::{ExtractedSecrets, ProtocolVersion, SupportedCipherSuite};

use keys::{Opener, Sealer};
pub use keys::{EXPLICIT_NONCE_LEN, TAG_LEN};

/// A record header: type, legacy version, length (RFC 8446 §5.1).
pub const HEADER_LEN: usize = 5;

/// Largest plaintext fragment (RFC 8446 §5.1, RFC 5246 §6.2.1).
pub const MAX_FRAGMENT_LEN: usize = 16384;

/// Largest TLS 1.3 ciphertext payload: 2^14 + 256 (RFC 8446 §5.2, "MUST
/// terminate the connection with a record_overflow alert").
pub const TLS13_MAX_CIPHERTEXT: usize = MAX_FRAGMENT_LEN + 256;

/// Largest TLS 1.2 ciphertext payload: 2^14 + 2048 (RFC 5246 §6.2.3).
pub const TLS12_MAX_CIPHERTEXT: usize = MAX_FRAGMENT_LEN + 2048;

/// Most room a record needs in front of its payload: the header and the
/// TLS 1.2 AES-GCM explicit nonce.
pub const MAX_HEADER_ROOM: usize = HEADER_LEN + EXPLICIT_NONCE_LEN;

/// Most room a record needs after its payload: the TLS 1.3 content type
/// and the tag.
pub const MAX_TAIL_ROOM: usize = 1 + TAG_LEN;

/// Content types (RFC 8446 §5.1).
const CHANGE_CIPHER_SPEC: u8 = 20;
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;

/// Handshake types.
const CLIENT_HELLO: u8 = 1;
const KEY_UPDATE: u8 = 24;

/// Alert levels and descriptions.
const WARNING: u8 = 1;
const FATAL: u8 = 2;
const CLOSE_NOTIFY: u8 = 0;
const UNEXPECTED_MESSAGE: u8 = 10;
const BAD_RECORD_MAC: u8 = 20;
const RECORD_OVERFLOW: u8 = 22;
const ILLEGAL_PARAMETER: u8 = 47;
const DECODE_ERROR: u8 = 50;
const USER_CANCELED: u8 = 90;
const NO_RENEGOTIATION: u8 = 100;

/// Budgets against a peer that floods us with cheap messages (rustls's
/// `TemperCounters`): warning alerts, renegotiation requests, KeyUpdates
/// without application data between them (BoringSSL's `kMaxKeyUpdates`).
const WARNING_ALERTS: u8 = 4;
const RENEGOTIATIONS: u8 = 1;
const KEY_UPDATES: u8 = 32;

/// Largest handshake message we skip (a refused TLS 1.2 renegotiation
/// ClientHello), as rustls caps handshake messages at 64 KiB.
const MAX_SKIPPED_MESSAGE: usize = 0x1_0000;

/// Which record layer carries established connections (`--record-layer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecordLayerKind {
    /// ringterm's own ([`RecordLayer`]), after rustls's handshake.
    #[default]
    Own,
    /// rustls's, for the whole connection (A/B comparison, fallback).
    Rustls,
}

impl RecordLayerKind {
    /// Parses `own` or `rustls`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "own" => Some(Self::Own),
            "rustls" => Some(Self::Rustls),
            _ => None,
        }
    }

    /// The flag value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Own => "own",
            Self::Rustls => "rustls",
        }
    }
}

/// A record's header (with TLS 1.2's explicit nonce: the first
/// [`RecordLayer::header_room`] bytes) and its AAD.
struct RecordFront {
    bytes: [u8; MAX_HEADER_ROOM],
    aad: [u8; 13],
    aad_len: usize,
}

impl RecordFront {
    fn aad(&self) -> &[u8] {
        &self.aad[..self.aad_len]
    }
}

/// Records sealed in place in a buffer the caller lends
/// ([`RecordLayer::seal_lent`]): their headers and trailers, and where each
/// piece of the wire image is.
#[derive(Debug, Default)]
pub struct LentRecords {
    /// Per record, its header (and explicit nonce), then its trailer.
    frames: Vec<u8>,
    front: usize,
    tail: usize,
    /// Payload bytes, from the start of the lent buffer.
    len: usize,
}

/// A piece of the wire image of [`LentRecords`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Bytes of [`LentRecords::frames`].
    Frame(Range<usize>),
    /// Bytes of the lent buffer (ciphertext sealed in place).
    Data(Range<usize>),
}

impl LentRecords {
    /// The headers and trailers, which [`Segment::Frame`] ranges index.
    pub fn frames(&self) -> &[u8] {
        &self.frames
    }

    /// How many records.
    pub fn records(&self) -> usize {
        self.len.div_ceil(MAX_FRAGMENT_LEN)
    }

    /// Bytes on the wire.
    pub fn wire_len(&self) -> usize {
        self.len + self.frames.len()
    }

    /// The pieces of the wire image, in order: the first record's header,
    /// then per record its payload in the lent buffer and its trailer
    /// together with the next record's header (they are adjacent in
    /// [`LentRecords::frames`]): `2 × records + 1` pieces.
    pub fn segments(&self) -> impl Iterator<Item = Segment> + '_ {
        let per = self.front + self.tail;
        let records = self.records();
        let first = (records > 0).then_some(Segment::Frame(0..self.front));
        first.into_iter().chain((0..records).flat_map(move |i| {
            let d = i * MAX_FRAGMENT_LEN;
            let d_end = (d + MAX_FRAGMENT_LEN).min(self.len);
            let f_end = if i + 1 < records {
                (i + 1) * per + self.front
            } else {
                records * per
            };
            [
                Segment::Data(d..d_end),
                Segment::Frame(i * per + self.front..f_end),
            ]
        }))
    }

    /// Appends the wire image to `out`, with the payload from `data` (the
    /// lent buffer): what a short write's rest is taken from.
    pub fn gather(&self, data: &[u8], out: &mut Vec<u8>) {
        out.reserve(self.wire_len());
        for seg in self.segments() {
            match seg {
                Segment::Frame(r) => out.extend_from_slice(&self.frames[r]),
                Segment::Data(r) => out.extend_from_slice(&data[r]),
            }
        }
    }
}

/// The negotiated protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// TLS 1.2.
    Tls12,
    /// TLS 1.3.
    Tls13,
}

/// Why the record layer stopped. The alert sent for it, if any, is
/// [`RecordError::alert`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// A record failed to authenticate (tampered, truncated, replayed,
    /// reordered): `bad_record_mac`.
    #[error("record: bad record MAC")]
    BadRecordMac,
    /// A record over the version's limit: `record_overflow`.
    #[error("record: record of {0} bytes over the limit")]
    RecordOverflow(usize),
    /// A message not allowed here: `unexpected_message`.
    #[error("record: unexpected {0}")]
    UnexpectedMessage(&'static str),
    /// A malformed message: `decode_error`.
    #[error("record: malformed {0}")]
    DecodeError(&'static str),
    /// A field with a value not allowed: `illegal_parameter`.
    #[error("record: illegal {0}")]
    IllegalParameter(&'static str),
    /// The peer sent this fatal alert (none is sent back).
    #[error("record: peer sent fatal alert {0}")]
    AlertReceived(u8),
    /// The peer exceeded a budget (warning alerts, renegotiation requests,
    /// KeyUpdates): the connection closes without an alert, as with rustls.
    #[error("record: too many {0}")]
    TooMany(&'static str),
    /// The sequence numbers of a TLS 1.2 key ran out (or the
    /// confidentiality limit was reached: a close_notify was sent).
    #[error("record: encryption limit reached")]
    Exhausted,
    /// Application data offered after our close_notify.
    #[error("record: already closed")]
    Closed,
    /// The layer failed earlier; it processes nothing more.
    #[error("record: already failed")]
    Failed,
    /// rustls could not derive the next traffic secret.
    #[error("record: key update: {0}")]
    KeyUpdate(String),
    /// The negotiated AEAD is not one this layer implements.
    #[error("record: unsupported cipher suite")]
    UnsupportedSuite,
    /// aws-lc-rs refused a key or a seal.
    #[error("record: key setup or seal failed")]
    Key,
}

impl RecordError {
    /// The alert description sent to the peer for this error, if any.
    pub fn alert(&self) -> Option<u8> {
        match self {
            RecordError::BadRecordMac => Some(BAD_RECORD_MAC),
            RecordError::RecordOverflow(_) => Some(RECORD_OVERFLOW),
            RecordError::UnexpectedMessage(_) => Some(UNEXPECTED_MESSAGE),
            RecordError::DecodeError(_) => Some(DECODE_ERROR),
            RecordError::IllegalParameter(_) => Some(ILLEGAL_PARAMETER),
            _ => None,
        }
    }
}

/// A record opened in place by [`RecordLayer::open_in_place`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The (inner, for TLS 1.3) content type.
    pub typ: u8,
    /// Where the plaintext lies in the buffer.
    pub plaintext: Range<usize>,
    /// The record's length on the wire: where the next one starts.
    pub len: usize,
}

/// Joins handshake messages split over records; only KeyUpdate (TLS 1.3)
/// is kept, a refused renegotiation ClientHello (TLS 1.2) is skipped.
#[derive(Debug, Default, Clone, Copy)]
struct Joiner {
    /// Header and body bytes so far (a KeyUpdate is 5 bytes in all).
    buf: [u8; 5],
    len: u8,
    /// Body bytes of a refused message still to skip.
    skip: usize,
}

impl Joiner {
    fn idle(&self) -> bool {
        self.len == 0 && self.skip == 0
    }
}

/// The record layer of one established connection. See the module
/// documentation. `D` is rustls's side data: ringterm runs the server side;
/// the tests drive a client side too.
pub struct RecordLayer<D = ServerConnectionData> {
    version: Version,
    suite: SupportedCipherSuite,
    /// TLS 1.3: derives the next traffic secrets. `None` for TLS 1.2,
    /// which has no key updates (boxed: 560 bytes TLS 1.2 does not need).
    kernel: Option<Box<KernelConnection<D>>>,
    sealer: Sealer,
    opener: Opener,
    tx_seq: u64,
    rx_seq: u64,
    /// Records one key may seal (TLS 1.3: we update before; TLS 1.2: we
    /// close).
    limit: u64,
    joiner: Joiner,
    warnings_left: u8,
    renegotiations_left: u8,
    key_updates_left: u8,
    peer_closed: bool,
    sent_close: bool,
    failed: bool,
    /// Key updates done, both directions (for tests and logs).
    updates: u32,
}

impl<D> std::fmt::Debug for RecordLayer<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordLayer")
            .field("version", &self.version)
            .field("suite", &self.suite)
            .field("tx_seq", &self.tx_seq)
            .field("rx_seq", &self.rx_seq)
            .field("peer_closed", &self.peer_closed)
            .field("sent_close", &self.sent_close)
            .field("failed", &self.failed)
            .finish()
    }
}

impl<D> RecordLayer<D> {
    /// Takes over from rustls with the secrets and kernel connection of
    /// `UnbufferedServerConnection::dangerous_into_kernel_connection`.
    pub fn new(
        secrets: ExtractedSecrets,
        kernel: KernelConnection<D>,
    ) -> Result<Self, RecordError> {
        let version = match kernel.protocol_version() {
            ProtocolVersion::TLSv1_3 => Version::Tls13,
            ProtocolVersion::TLSv1_2 => Version::Tls12,
            _ => return Err(RecordError::UnsupportedSuite),
        };
        let suite = kernel.negotiated_cipher_suite();
        let (tx_seq, tx) = secrets.tx;
        let (rx_seq, rx) = secrets.rx;
        let sealer = Sealer::new(version, &tx, tx_seq)?;
        let opener = Opener::new(version, &rx)?;
        Ok(Self {
            version,
            suite,
            kernel: (version == Version::Tls13).then(|| Box::new(kernel)),
            sealer,
            opener,
            tx_seq,
            rx_seq,
            limit: confidentiality_limit(suite),
            joiner: Joiner::default(),
            warnings_left: WARNING_ALERTS,
            renegotiations_left: RENEGOTIATIONS,
            key_updates_left: KEY_UPDATES,
            peer_closed: false,
            sent_close: false,
            failed: false,
            updates: 0,
        })
    }

    /// The negotiated version.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The negotiated cipher suite.
    pub fn suite(&self) -> SupportedCipherSuite {
        self.suite
    }

    /// Sets how many records one key may seal before we update it (TLS
    /// 1.3) or close (TLS 1.2). Defaults to the suite's
    /// `confidentiality_limit`; tests inject a tiny one. At least 2: one
    /// record and the KeyUpdate.
    pub fn set_confidentiality_limit(&mut self, limit: u64) {
        self.limit = limit.max(2);
    }

    /// Key updates done so far, both directions.
    pub fn key_updates(&self) -> u32 {
        self.updates
    }

    /// The next sequence numbers (sealing, opening).
    pub fn sequence_numbers(&self) -> (u64, u64) {
        (self.tx_seq, self.rx_seq)
    }

    /// Drops both AEAD contexts (about 600 bytes of aws-lc heap each) and
    /// keeps the raw keys: for a connection that went quiet. The next seal
    /// or open builds its context again; nothing else changes.
    pub fn hibernate(&mut self) {
        self.sealer.hibernate();
        self.opener.hibernate();
    }

    /// Whether an AEAD context is built (not hibernating).
    pub fn is_awake(&self) -> bool {
        self.sealer.is_awake() || self.opener.is_awake()
    }

    /// The client's close_notify was received.
    pub fn is_peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Our close_notify was sent.
    pub fn is_closed(&self) -> bool {
        self.sent_close
    }

    /// The peer closed (close_notify received): no more records are
    /// processed; what follows is ignored (RFC 8446 §6.1).
    pub fn mark_peer_closed(&mut self) {
        self.peer_closed = true;
    }

    /// Bytes a record needs in front of its payload:
    /// [`HEADER_LEN`], plus the explicit nonce for TLS 1.2 AES-GCM.
    pub fn header_room(&self) -> usize {
        HEADER_LEN + self.sealer.explicit_len()
    }

    /// Bytes a record adds after its payload: the TLS 1.3 content type and
    /// the tag.
    pub fn tail_room(&self) -> usize {
        TAG_LEN + usize::from(self.version == Version::Tls13)
    }

    // ------------------------------------------------------------------
    // Sealing
    // ------------------------------------------------------------------

    /// Seals application data in place.
    ///
    /// `buf[start..start + header_room()]` is room for the header (its
    /// contents are overwritten), `buf[start + header_room()..]` is the
    /// plaintext, at most [`MAX_FRAGMENT_LEN`] bytes. On return
    /// `buf[start..]` is the record; a KeyUpdate may follow it when the key
    /// reached its limit. `buf` only grows when its capacity lacks
    /// [`RecordLayer::tail_room`] bytes.
    pub fn seal_in_place(&mut self, buf: &mut Vec<u8>, start: usize) -> Result<(), RecordError> {
        self.check_can_send()?;
        let payload = buf.len().saturating_sub(start + self.header_room());
        if buf.len() < start + self.header_room() || payload > MAX_FRAGMENT_LEN {
            return Err(RecordError::RecordOverflow(payload));
        }
        self.seal_at(buf, start, APPLICATION_DATA)?;
        self.after_seal(buf)
    }

    /// Seals `plaintext` as application data records appended to `out`:
    /// one copy of the plaintext, into `out`, sealed there in place.
    pub fn seal(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
        self.check_can_send()?;
        let (front, tail) = (self.header_room(), self.tail_room());
        let records = plaintext.len().div_ceil(MAX_FRAGMENT_LEN);
        out.reserve(plaintext.len() + records * (front + tail));
        for chunk in plaintext.chunks(MAX_FRAGMENT_LEN) {
            let start = out.len();
            out.extend_from_slice(&[0; MAX_HEADER_ROOM][..front]);
            out.extend_from_slice(chunk);
            self.seal_at(out, start, APPLICATION_DATA)?;
            self.after_seal(out)?;
        }
        Ok(())
    }

    /// Seals `data[..len]` in place as application data records, leaving
    /// the payload where it is: each record's header (with TLS 1.2's
    /// explicit nonce) and trailer (TLS 1.3's encrypted content type, the
    /// tag) go into `lent`, whose [`LentRecords::segments`] then name the
    /// wire image in order. For a buffer the caller cannot grow (a
    /// runtime's read buffer): nothing of the payload is copied.
    ///
    /// TLS 1.3 needs one byte of `data` after `len` (the content type is
    /// sealed after the payload: each record borrows the byte after it and
    /// puts it back). Returns `Ok(false)`, having changed nothing, when
    /// that byte is missing, when `len` is 0, or when a KeyUpdate (or the
    /// end of a TLS 1.2 key) would fall among these records: the caller
    /// then uses [`RecordLayer::seal`], which puts it in its place.
    pub fn seal_lent(
        &mut self,
        data: &mut [u8],
        len: usize,
        lent: &mut LentRecords,
    ) -> Result<bool, RecordError> {
        self.check_can_send()?;
        let records = len.div_ceil(MAX_FRAGMENT_LEN) as u64;
        let tls13 = self.version == Version::Tls13;
        if len == 0
            || len > data.len()
            || (tls13 && len == data.len())
            || self.tx_seq.saturating_add(records + 1) >= self.limit
        {
            return Ok(false);
        }
        let (front, tail) = (self.header_room(), self.tail_room());
        lent.frames.clear();
        lent.frames.reserve(records as usize * (front + tail));
        lent.front = front;
        lent.tail = tail;
        lent.len = len;
        let mut start = 0;
        while start < len {
            let end = (start + MAX_FRAGMENT_LEN).min(len);
            let seq = self.tx_seq;
            let f = self.record_front(seq, APPLICATION_DATA, end - start);
            lent.frames.extend_from_slice(&f.bytes[..front]);
            let tag = if tls13 {
                // TLSInnerPlaintext: the payload, then its type; the byte
                // after the payload is borrowed for the type and restored.
                let borrowed = data[end];
                data[end] = APPLICATION_DATA;
                let res = self.sealer.seal(seq, f.aad(), &mut data[start..=end]);
                let sealed_type = data[end];
                data[end] = borrowed;
                lent.frames.push(sealed_type);
                res?
            } else {
                self.sealer.seal(seq, f.aad(), &mut data[start..end])?
            };
            lent.frames.extend_from_slice(tag.as_ref());
            self.tx_seq += 1;
            start = end;
        }
        Ok(true)
    }

    /// Appends our close_notify. Idempotent; nothing after a failure.
    pub fn close(&mut self, out: &mut Vec<u8>) -> Result<(), RecordError> {
        if self.sent_close || self.failed {
            return Ok(());
        }
        self.send_alert(WARNING, CLOSE_NOTIFY, out)?;
        self.sent_close = true;
        Ok(())
    }

    fn check_can_send(&self) -> Result<(), RecordError> {
        if self.failed {
            Err(RecordError::Failed)
        } else if self.sent_close {
            Err(RecordError::Closed)
        } else {
            Ok(())
        }
    }

    /// After sealing a data record: when the next record would take the
    /// last sequence number the key allows, a TLS 1.3 KeyUpdate takes it
    /// and the key changes (rustls's schedule); TLS 1.2 has no key update,
    /// so the connection closes with a close_notify (as rustls does).
    fn after_seal(&mut self, out: &mut Vec<u8>) -> Result<(), RecordError> {
        if self.tx_seq < self.limit - 1 {
            return Ok(());
        }
        match self.version {
            Version::Tls13 => self.update_tx(out, false),
            Version::Tls12 => {
                if self.tx_seq < self.limit {
                    return Ok(());
                }
                self.close(out)?;
                Err(RecordError::Exhausted)
            }
        }
    }

    /// Sends a KeyUpdate under the current key, then switches to the next
    /// one (RFC 8446 §4.6.3).
    fn update_tx(&mut self, out: &mut Vec<u8>, requested: bool) -> Result<(), RecordError> {
        let msg = [KEY_UPDATE, 0, 0, 1, u8::from(requested)];
        self.seal_message(HANDSHAKE, &msg, out)?;
        self.next_tx_key()
    }

    /// Switches to the next sealing key.
    fn next_tx_key(&mut self) -> Result<(), RecordError> {
        let kernel = self.kernel.as_mut().ok_or(RecordError::UnsupportedSuite)?;
        let (seq, secrets) = kernel
            .update_tx_secret()
            .map_err(|e| RecordError::KeyUpdate(e.to_string()))?;
        self.sealer = Sealer::new(self.version, &secrets, seq)?;
        self.tx_seq = seq;
        self.updates += 1;
        Ok(())
    }

    /// Seals `msg` as one record of content type `typ`, whatever it holds
    /// (tests: messages a well-behaved peer never sends).
    #[cfg(test)]
    pub(crate) fn seal_raw(&mut self, typ: u8, msg: &[u8], out: &mut Vec<u8>) {
        self.seal_message(typ, msg, out).unwrap();
    }

    /// Seals a whole small message (alert, KeyUpdate) as one record.
    fn seal_message(&mut self, typ: u8, msg: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
        let start = out.len();
        out.extend_from_slice(&[0; MAX_HEADER_ROOM][..self.header_room()]);
        out.extend_from_slice(msg);
        self.seal_at(out, start, typ)
    }

    fn send_alert(&mut self, level: u8, desc: u8, out: &mut Vec<u8>) -> Result<(), RecordError> {
        self.seal_message(ALERT, &[level, desc], out)
    }

    /// Seals the record at `buf[start..]` (room for the header, then the
    /// plaintext) with sequence number `tx_seq`.
    fn seal_at(&mut self, buf: &mut Vec<u8>, start: usize, typ: u8) -> Result<(), RecordError> {
        if self.tx_seq == u64::MAX {
            return Err(RecordError::Exhausted);
        }
        let seq = self.tx_seq;
        let front = self.header_room();
        let f = self.record_front(seq, typ, buf.len() - start - front);
        if self.version == Version::Tls13 {
            // TLSInnerPlaintext: content, type, no padding (RFC 8446 §5.2).
            buf.push(typ);
        }
        buf[start..start + front].copy_from_slice(&f.bytes[..front]);
        let tag = self.sealer.seal(seq, f.aad(), &mut buf[start + front..])?;
        buf.extend_from_slice(tag.as_ref());
        self.tx_seq += 1;
        Ok(())
    }

    /// What goes in front of the payload of the record with sequence
    /// number `seq` carrying `plain_len` bytes of type `typ`, and its AAD:
    /// TLS 1.3 hides the type (the outer one is application data; the AAD
    /// is the header, RFC 8446 §5.2), TLS 1.2 shows it and adds the
    /// explicit nonce for AES-GCM (RFC 5246 §6.2.3.3).
    fn record_front(&self, seq: u64, typ: u8, plain_len: usize) -> RecordFront {
        let front = self.header_room();
        let total = front - HEADER_LEN + plain_len + self.tail_room();
        let mut f = RecordFront {
            bytes: [0; MAX_HEADER_ROOM],
            aad: [0; 13],
            aad_len: 13,
        };
        match self.version {
            Version::Tls13 => {
                f.bytes[..HEADER_LEN].copy_from_slice(&header(APPLICATION_DATA, total));
                f.aad[..HEADER_LEN].copy_from_slice(&f.bytes[..HEADER_LEN]);
                f.aad_len = HEADER_LEN;
            }
            Version::Tls12 => {
                f.bytes[..HEADER_LEN].copy_from_slice(&header(typ, total));
                f.aad = tls12_aad(seq, typ, plain_len);
            }
        }
        if front > HEADER_LEN {
            f.bytes[HEADER_LEN..front].copy_from_slice(&self.sealer.explicit_nonce(seq));
        }
        f
    }

    // ------------------------------------------------------------------
    // Opening
    // ------------------------------------------------------------------

    /// Opens the record at the front of `buf` in place.
    ///
    /// Returns `Ok(None)` when `buf` does not hold a whole record yet (its
    /// header, when present, has been checked). On error nothing was sent;
    /// [`RecordLayer::read`] is the caller that sends the alerts.
    pub fn open_in_place(&mut self, buf: &mut [u8]) -> Result<Option<Opened>, RecordError> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let typ = buf[0];
        let len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
        let max = match self.version {
            Version::Tls13 => TLS13_MAX_CIPHERTEXT,
            Version::Tls12 => TLS12_MAX_CIPHERTEXT,
        };
        if len > max {
            return Err(RecordError::RecordOverflow(len));
        }
        match (self.version, typ) {
            (Version::Tls13, APPLICATION_DATA) => {}
            (Version::Tls13, CHANGE_CIPHER_SPEC | ALERT | HANDSHAKE) => {
                return Err(RecordError::UnexpectedMessage("plaintext record"));
            }
            (Version::Tls12, CHANGE_CIPHER_SPEC) => {
                return Err(RecordError::UnexpectedMessage("change_cipher_spec"));
            }
            (Version::Tls12, ALERT | HANDSHAKE | APPLICATION_DATA) => {}
            _ => return Err(RecordError::DecodeError("record content type")),
        }
        if buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let seq = self.rx_seq;
        let record = &mut buf[..HEADER_LEN + len];
        let (header, payload) = record.split_at_mut(HEADER_LEN);
        let explicit = self.opener.explicit_len();
        let opened = match self.version {
            Version::Tls13 => {
                let n = self.opener.open(seq, header, payload)?;
                // The whole TLSInnerPlaintext, padding included, is at
                // most 2^14 + 1 bytes (RFC 8446 §5.4, record_overflow).
                if n > MAX_FRAGMENT_LEN + 1 {
                    return Err(RecordError::RecordOverflow(n));
                }
                // Strip the zero padding; the last non-zero byte is the
                // inner content type (RFC 8446 §5.4).
                let Some(end) = payload[..n].iter().rposition(|&b| b != 0) else {
                    return Err(RecordError::UnexpectedMessage(
                        "record without content type",
                    ));
                };
                let inner = payload[end];
                if end > MAX_FRAGMENT_LEN {
                    return Err(RecordError::RecordOverflow(end));
                }
                if !matches!(inner, ALERT | HANDSHAKE | APPLICATION_DATA) {
                    return Err(RecordError::UnexpectedMessage("inner content type"));
                }
                Opened {
                    typ: inner,
                    plaintext: HEADER_LEN..HEADER_LEN + end,
                    len: HEADER_LEN + len,
                }
            }
            Version::Tls12 => {
                let plain_len = len
                    .checked_sub(explicit + TAG_LEN)
                    .ok_or(RecordError::BadRecordMac)?;
                let aad = tls12_aad_with(seq, typ, [header[1], header[2]], plain_len);
                let n = self.opener.open(seq, &aad, payload)?;
                if n > MAX_FRAGMENT_LEN {
                    return Err(RecordError::RecordOverflow(n));
                }
                Opened {
                    typ,
                    plaintext: HEADER_LEN + explicit..HEADER_LEN + explicit + n,
                    len: HEADER_LEN + len,
                }
            }
        };
        self.rx_seq += 1;
        Ok(Some(opened))
    }

    /// Processes the whole records at the front of `buf`, in place.
    ///
    /// Application data is appended to `to_backend`; what the layer sends
    /// in answer (a KeyUpdate, a refusal, the fatal alert of an error) is
    /// appended to `to_client`. Returns how many bytes of `buf` were
    /// consumed (whole records; a partial record at the end stays) and the
    /// result. After the client's close_notify, what follows is consumed
    /// unread (RFC 8446 §6.1).
    pub fn read(
        &mut self,
        buf: &mut [u8],
        to_client: &mut Vec<u8>,
        to_backend: &mut Vec<u8>,
    ) -> (usize, Result<(), RecordError>) {
        if self.failed {
            return (0, Err(RecordError::Failed));
        }
        let mut at = 0;
        while !self.peer_closed {
            let result = self
                .open_in_place(&mut buf[at..])
                .and_then(|opened| match opened {
                    None => Ok(None),
                    Some(o) => {
                        let plain = at + o.plaintext.start..at + o.plaintext.end;
                        self.handle(o.typ, &buf[plain], to_client, to_backend)
                            .map(|()| Some(o.len))
                    }
                });
            match result {
                Ok(None) => break,
                Ok(Some(len)) => at += len,
                Err(e) => return (at, Err(self.fail(e, to_client))),
            }
        }
        if self.peer_closed {
            at = buf.len();
        }
        (at, Ok(()))
    }

    /// Processes the one record `buf` holds (and nothing else: a whole
    /// record, no more), in place. When it is application data, nothing is
    /// copied: the plaintext's place in `buf` is returned, for the caller
    /// to forward `buf` itself. Anything else is handled as by
    /// [`RecordLayer::read`] (which appends to `to_backend`), and `None`
    /// returned.
    pub fn read_in_place(
        &mut self,
        buf: &mut [u8],
        to_client: &mut Vec<u8>,
        to_backend: &mut Vec<u8>,
    ) -> Result<Option<Range<usize>>, RecordError> {
        if self.failed {
            return Err(RecordError::Failed);
        }
        if self.peer_closed {
            return Ok(None);
        }
        let opened = match self.open_in_place(buf) {
            Ok(Some(o)) if o.len == buf.len() => o,
            Ok(_) => return Err(self.fail(RecordError::DecodeError("not one record"), to_client)),
            Err(e) => return Err(self.fail(e, to_client)),
        };
        if opened.typ == APPLICATION_DATA && self.joiner.idle() {
            self.key_updates_left = KEY_UPDATES;
            return Ok(Some(opened.plaintext));
        }
        match self.handle(opened.typ, &buf[opened.plaintext], to_client, to_backend) {
            Ok(()) => Ok(None),
            Err(e) => Err(self.fail(e, to_client)),
        }
    }

    /// A fatal error: the alert for it (if any, and unless our
    /// close_notify went already) is appended; nothing more is processed.
    fn fail(&mut self, err: RecordError, to_client: &mut Vec<u8>) -> RecordError {
        self.failed = true;
        if let Some(desc) = err.alert() {
            if !self.sent_close {
                let _ = self.send_alert(FATAL, desc, to_client);
            }
        }
        err
    }

    /// One opened record's plaintext.
    fn handle(
        &mut self,
        typ: u8,
        plain: &[u8],
        to_client: &mut Vec<u8>,
        to_backend: &mut Vec<u8>,
    ) -> Result<(), RecordError> {
        if typ != HANDSHAKE && !self.joiner.idle() {
            // A handshake message is being joined: nothing may interleave
            // (RFC 8446 §5.1).
            return Err(RecordError::UnexpectedMessage(
                "record inside a handshake message",
            ));
        }
        match typ {
            APPLICATION_DATA => {
                self.key_updates_left = KEY_UPDATES;
                to_backend.extend_from_slice(plain);
                Ok(())
            }
            ALERT => self.handle_alert(plain),
            HANDSHAKE => self.handle_handshake(plain, to_client),
            _ => Err(RecordError::UnexpectedMessage("content type")),
        }
    }

    fn handle_alert(&mut self, plain: &[u8]) -> Result<(), RecordError> {
        let &[level, desc] = plain else {
            // RFC 8446 §5.4: an Alert record with empty content is
            // unexpected_message.
            if plain.is_empty() && self.version == Version::Tls13 {
                return Err(RecordError::UnexpectedMessage("empty alert record"));
            }
            return Err(RecordError::DecodeError("alert"));
        };
        if level != WARNING && level != FATAL {
            return Err(RecordError::IllegalParameter("alert level"));
        }
        if desc == CLOSE_NOTIFY {
            self.peer_closed = true;
            return Ok(());
        }
        if level == FATAL {
            return Err(RecordError::AlertReceived(desc));
        }
        if self.warnings_left == 0 {
            return Err(RecordError::TooMany("warning alerts"));
        }
        self.warnings_left -= 1;
        // TLS 1.3 has no warnings but user_canceled (RFC 8446 §6.1);
        // rustls answers the others with decode_error.
        if self.version == Version::Tls13 && desc != USER_CANCELED {
            return Err(RecordError::DecodeError("warning alert"));
        }
        Ok(())
    }

    fn handle_handshake(
        &mut self,
        mut plain: &[u8],
        to_client: &mut Vec<u8>,
    ) -> Result<(), RecordError> {
        if plain.is_empty() {
            // RFC 8446 §5.4 names unexpected_message; RFC 5246 §6.2.1 only
            // forbids them.
            return Err(match self.version {
                Version::Tls13 => RecordError::UnexpectedMessage("empty handshake record"),
                Version::Tls12 => RecordError::DecodeError("empty handshake record"),
            });
        }
        while !plain.is_empty() {
            let j = &mut self.joiner;
            if j.skip > 0 {
                let n = j.skip.min(plain.len());
                j.skip -= n;
                plain = &plain[n..];
                continue;
            }
            let want = if j.len < 4 { 4 } else { 5 };
            let n = (want - usize::from(j.len)).min(plain.len());
            j.buf[usize::from(j.len)..usize::from(j.len) + n].copy_from_slice(&plain[..n]);
            j.len += n as u8;
            plain = &plain[n..];
            if j.len < 4 {
                break;
            }
            let typ = j.buf[0];
            let len = u32::from_be_bytes([0, j.buf[1], j.buf[2], j.buf[3]]) as usize;
            match (self.version, typ) {
                (Version::Tls13, KEY_UPDATE) => {
                    if len != 1 {
                        return Err(RecordError::DecodeError("KeyUpdate length"));
                    }
                    if j.len < 5 {
                        continue;
                    }
                    let request = j.buf[4];
                    *j = Joiner::default();
                    // A KeyUpdate must end its record: the next record is
                    // under the next key (RFC 8446 §5.1; rustls's
                    // `check_aligned_handshake`).
                    if !plain.is_empty() {
                        return Err(RecordError::UnexpectedMessage(
                            "data after KeyUpdate in its record",
                        ));
                    }
                    self.handle_key_update(request, to_client)?;
                }
                (Version::Tls12, CLIENT_HELLO) => {
                    // Renegotiation: refused with a warning the first time,
                    // fatal the second (rustls).
                    if len > MAX_SKIPPED_MESSAGE {
                        return Err(RecordError::DecodeError("handshake message too large"));
                    }
                    if self.renegotiations_left == 0 {
                        return Err(RecordError::TooMany("renegotiation requests"));
                    }
                    self.renegotiations_left -= 1;
                    *j = Joiner {
                        skip: len,
                        ..Joiner::default()
                    };
                    self.send_alert(WARNING, NO_RENEGOTIATION, to_client)?;
                }
                _ => return Err(RecordError::UnexpectedMessage("post-handshake message")),
            }
        }
        Ok(())
    }

    fn handle_key_update(
        &mut self,
        request: u8,
        to_client: &mut Vec<u8>,
    ) -> Result<(), RecordError> {
        if request > 1 {
            return Err(RecordError::IllegalParameter("KeyUpdate request"));
        }
        if self.key_updates_left == 0 {
            return Err(RecordError::TooMany("KeyUpdates"));
        }
        self.key_updates_left -= 1;
        if request == 1 && !self.sent_close {
            // update_requested: answer with our own update, not requested,
            // before any more data (RFC 8446 §4.6.3).
            self.update_tx(to_client, false)?;
        }
        let kernel = self.kernel.as_mut().ok_or(RecordError::UnsupportedSuite)?;
        let (seq, secrets) = kernel
            .update_rx_secret()
            .map_err(|e| RecordError::KeyUpdate(e.to_string()))?;
        self.opener = Opener::new(self.version, &secrets)?;
        self.rx_seq = seq;
        self.updates += 1;
        Ok(())
    }
}

/// The suite's confidentiality limit (records per key).
fn confidentiality_limit(suite: SupportedCipherSuite) -> u64 {
    match suite {
        SupportedCipherSuite::Tls12(s) => s.common.confidentiality_limit,
        SupportedCipherSuite::Tls13(s) => s.common.confidentiality_limit,
    }
}

fn header(typ: u8, len: usize) -> [u8; HEADER_LEN] {
    let [hi, lo] = (len as u16).to_be_bytes();
    [typ, 3, 3, hi, lo]
}

/// The TLS 1.2 AAD: seq_num, type, version, length (RFC 5246 §6.2.3.3).
fn tls12_aad(seq: u64, typ: u8, len: usize) -> [u8; 13] {
    tls12_aad_with(seq, typ, [3, 3], len)
}

fn tls12_aad_with(seq: u64, typ: u8, version: [u8; 2], len: usize) -> [u8; 13] {
    let mut aad = [0; 13];
    aad[..8].copy_from_slice(&seq.to_be_bytes());
    aad[8] = typ;
    aad[9..11].copy_from_slice(&version);
    aad[11..].copy_from_slice(&(len as u16).to_be_bytes());
    aad
}
