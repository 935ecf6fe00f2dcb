//! Sans-IO TLS: the handshake/record step function over rustls, and
//! certificate loading. Nothing here touches a socket or reads the clock.

#![forbid(unsafe_code)]

pub mod acme;
mod alert;
mod certs;
pub mod hello;
pub mod isolation;
pub mod loader;
pub mod ocsp;
mod session;
pub mod sni;

pub use alert::AlertKind;

pub use certs::{
    build_server_config, build_server_config_from_keys, build_server_config_multi,
    build_server_config_multi_with_provider, build_server_config_with,
    build_server_config_with_provider, generate_self_signed, load_cert_chain, load_private_key,
    provider_for, CertSpec, ClientAuth, ResumptionParts, TlsPolicy,
};
pub use session::{
    subject_cn, HandshakeInfo, Resumption, Status, TlsSession, MAX_FRAGMENT_LEN,
    MAX_PENDING_ESTABLISHED, MAX_PENDING_HANDSHAKE, MAX_RECORD_LEN,
};
pub use sni::UnknownSni;

/// Errors of the TLS layer.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum TlsError {
    /// rustls rejected the peer's bytes (bad record, handshake failure...).
    /// The alert, if any, has been queued for the client.
    #[error("tls: {0}")]
    Rustls(rustls::Error),
    /// ringterm's own record layer failed (after the handshake). The alert,
    /// if any, has been queued for the client.
    #[error("tls: {0}")]
    Record(crate::record::RecordError),
    /// Application data was offered before the handshake completed.
    #[error("tls: handshake not complete")]
    NotEstablished,
    /// Application data was offered after our close_notify.
    #[error("tls: connection already closed")]
    AlreadyClosed,
    /// The session failed earlier; it processes nothing more.
    #[error("tls: session already failed")]
    Failed,
    /// rustls returned a state this version of ringterm does not know.
    #[error("tls: unexpected connection state")]
    UnexpectedState,
    /// The client made the session hold more unprocessed bytes than any
    /// well-behaved client does (a handshake message in tiny records).
    #[error("tls: {pending} bytes of unprocessed records, over the limit of {limit}")]
    TooMuchPending {
        /// Bytes held.
        pending: usize,
        /// The limit in force.
        limit: usize,
    },
    /// rustls made no progress within the step budget.
    #[error("tls: no progress")]
    NoProgress,
    /// Encoding a handshake record failed.
    #[error("tls: encoding a record failed")]
    Encode,
    /// The record sequence space is exhausted.
    #[error("tls: encryption limit reached")]
    EncryptExhausted,
    /// A PEM file holds no certificate.
    #[error("{0}: no certificate found")]
    NoCertificate(String),
    /// A PEM file holds no private key.
    #[error("{0}: no private key found")]
    NoPrivateKey(String),
    /// A PEM file could not be parsed.
    #[error("{0}: invalid PEM: {1}")]
    Pem(String, String),
    /// The certificate and key do not fit together, or the key type is unsupported.
    #[error("certificate/key: {0}")]
    CertKey(String),
    /// A TLS policy setting is invalid; names the flag.
    #[error("{0}: {1}")]
    Policy(&'static str, String),
    /// Generating a certificate failed.
    #[error("generating a certificate failed: {0}")]
    Generate(String),
    /// The ClientHello offered `acme-tls/1` (an ACME TLS-ALPN-01
    /// validation) for a name with no pending challenge.
    #[error("tls: acme-tls/1 for a name with no pending ACME challenge")]
    AcmeNoChallenge,
}
