//! Which fatal alert a failed step sent, for the `alerts_sent` counters.
//!
//! rustls picks the alert itself and does not report it. Before the record
//! layer is encrypted the alert is a plaintext record, read here exactly;
//! after that (TLS 1.3 alerts following the ServerHello) it is inferred from
//! the error, following rustls's own choices for the common cases.

use super::TlsError;

/// The fatal alerts ringterm counts by name; the rest are [`AlertKind::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlertKind {
    /// `unexpected_message` (10).
    UnexpectedMessage,
    /// `bad_record_mac` (20).
    BadRecordMac,
    /// `record_overflow` (22).
    RecordOverflow,
    /// `handshake_failure` (40).
    HandshakeFailure,
    /// `bad_certificate` (42).
    BadCertificate,
    /// `illegal_parameter` (47).
    IllegalParameter,
    /// `decode_error` (50).
    DecodeError,
    /// `decrypt_error` (51).
    DecryptError,
    /// `protocol_version` (70).
    ProtocolVersion,
    /// `internal_error` (80).
    InternalError,
    /// `missing_extension` (109).
    MissingExtension,
    /// `unrecognized_name` (112).
    UnrecognizedName,
    /// `certificate_required` (116).
    CertificateRequired,
    /// `no_application_protocol` (120).
    NoApplicationProtocol,
    /// Any other alert.
    Other,
}

impl AlertKind {
    /// Every kind, in a stable order.
    pub const ALL: [AlertKind; 15] = [
        Self::UnexpectedMessage,
        Self::BadRecordMac,
        Self::RecordOverflow,
        Self::HandshakeFailure,
        Self::BadCertificate,
        Self::IllegalParameter,
        Self::DecodeError,
        Self::DecryptError,
        Self::ProtocolVersion,
        Self::InternalError,
        Self::MissingExtension,
        Self::UnrecognizedName,
        Self::CertificateRequired,
        Self::NoApplicationProtocol,
        Self::Other,
    ];

    /// The kind of alert description `code` (RFC 8446 §6).
    pub fn from_code(code: u8) -> Self {
        match code {
            10 => Self::UnexpectedMessage,
            20 => Self::BadRecordMac,
            22 => Self::RecordOverflow,
            40 => Self::HandshakeFailure,
            42 => Self::BadCertificate,
            47 => Self::IllegalParameter,
            50 => Self::DecodeError,
            51 => Self::DecryptError,
            70 => Self::ProtocolVersion,
            80 => Self::InternalError,
            109 => Self::MissingExtension,
            112 => Self::UnrecognizedName,
            116 => Self::CertificateRequired,
            120 => Self::NoApplicationProtocol,
            _ => Self::Other,
        }
    }

    /// The RFC name, for metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Self::UnexpectedMessage => "unexpected_message",
            Self::BadRecordMac => "bad_record_mac",
            Self::RecordOverflow => "record_overflow",
            Self::HandshakeFailure => "handshake_failure",
            Self::BadCertificate => "bad_certificate",
            Self::IllegalParameter => "illegal_parameter",
            Self::DecodeError => "decode_error",
            Self::DecryptError => "decrypt_error",
            Self::ProtocolVersion => "protocol_version",
            Self::InternalError => "internal_error",
            Self::MissingExtension => "missing_extension",
            Self::UnrecognizedName => "unrecognized_name",
            Self::CertificateRequired => "certificate_required",
            Self::NoApplicationProtocol => "no_application_protocol",
            Self::Other => "other",
        }
    }

    /// The alert a failed step queued in `sent` (the bytes it produced for
    /// the client), or `None` when it queued none.
    pub fn of_failure(err: &TlsError, sent: &[u8]) -> Option<Self> {
        if sent.is_empty() {
            return None;
        }
        if let Some(code) = plaintext_alert(sent) {
            return Some(Self::from_code(code));
        }
        Some(match err {
            TlsError::Rustls(e) => Self::of_rustls(e),
            TlsError::Record(e) => e.alert().map_or(Self::InternalError, Self::from_code),
            _ => Self::InternalError,
        })
    }

    /// rustls's usual alert for `err` (used when the alert was encrypted).
    fn of_rustls(err: &rustls::Error) -> Self {
        use rustls::Error as E;
        match err {
            E::InvalidMessage(_) => Self::DecodeError,
            E::DecryptError => Self::BadRecordMac,
            E::InappropriateMessage { .. } | E::InappropriateHandshakeMessage { .. } => {
                Self::UnexpectedMessage
            }
            E::PeerIncompatible(_) => Self::HandshakeFailure,
            E::PeerMisbehaved(_) => Self::IllegalParameter,
            E::NoCertificatesPresented => Self::CertificateRequired,
            E::InvalidCertificate(_) => Self::BadCertificate,
            E::NoApplicationProtocol => Self::NoApplicationProtocol,
            E::PeerSentOversizedRecord => Self::RecordOverflow,
            _ => Self::Other,
        }
    }
}

/// The description of the last record of `sent` if it is a plaintext
/// alert record (`21, 3, x, 0, 2, level, description`).
fn plaintext_alert(sent: &[u8]) -> Option<u8> {
    let tail = sent.get(sent.len().checked_sub(7)?..)?;
    (tail[0] == 21 && tail[1] == 3 && tail[3] == 0 && tail[4] == 2).then_some(tail[6])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_plaintext_alert_exactly() {
        let err = TlsError::Rustls(rustls::Error::General("x".into()));
        let sent = [21, 3, 3, 0, 2, 2, 70];
        assert_eq!(
            AlertKind::of_failure(&err, &sent),
            Some(AlertKind::ProtocolVersion)
        );
        assert_eq!(AlertKind::of_failure(&err, &[]), None);
    }

    #[test]
    fn infers_encrypted_alert_from_error() {
        let err = TlsError::Rustls(rustls::Error::DecryptError);
        // An encrypted record (type 23) carrying the alert.
        let sent = [
            23, 3, 3, 0, 19, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19,
        ];
        assert_eq!(
            AlertKind::of_failure(&err, &sent),
            Some(AlertKind::BadRecordMac)
        );
    }

    #[test]
    fn codes_round_trip_names() {
        for k in AlertKind::ALL {
            assert!(!k.name().is_empty());
        }
        assert_eq!(AlertKind::from_code(50), AlertKind::DecodeError);
        assert_eq!(AlertKind::from_code(255), AlertKind::Other);
    }
}
