//! ACME TLS-ALPN-01 (RFC 8737) on the TLS port itself: the challenge
//! certificates and the set of pending challenges the workers consult.
//!
//! A validation server connects to the TLS port with a ClientHello whose
//! SNI is the name being validated and whose ALPN offers only `acme-tls/1`.
//! When a challenge for that name is pending, the session swaps its rustls
//! configuration for the challenge's own (before rustls has seen a byte):
//! a self-signed certificate for the name carrying the critical
//! `acmeIdentifier` extension (the SHA-256 digest of the key
//! authorization), ALPN `acme-tls/1`, no resumption. The connection machine
//! closes the connection after that handshake; it never reaches a backend.
//! A ClientHello offering `acme-tls/1` for a name with no pending challenge
//! is refused with an `unrecognized_name` alert.
//!
//! The ACME client (`rt::acme`, on a thread of its own) publishes pending
//! challenges here; workers only `load` the snapshot: no locks on the
//! handshake path, and only ClientHellos offering `acme-tls/1` look at it.
//! Sans-IO: no socket, no clock.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::aws_lc_rs;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use super::hello::ACME_TLS_1;
use super::TlsError;

/// The pending TLS-ALPN-01 challenges, by DNS name (lowercase), each with
/// the configuration that answers it.
#[derive(Debug, Default)]
pub struct AcmeChallenges {
    pending: ArcSwap<HashMap<String, Arc<ServerConfig>>>,
}

impl AcmeChallenges {
    /// No challenge pending.
    pub fn new() -> Self {
        Self::default()
    }

    /// The configuration answering a challenge for `name` (lowercase), if
    /// one is pending. Lock-free: one `ArcSwap` load.
    pub fn lookup(&self, name: &str) -> Option<Arc<ServerConfig>> {
        self.pending.load().get(name).cloned()
    }

    /// Publishes a challenge for `name` (replacing any earlier one).
    pub fn insert(&self, name: &str, config: Arc<ServerConfig>) {
        let name = name.to_ascii_lowercase();
        self.pending.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(name.clone(), config.clone());
            m
        });
    }

    /// Withdraws the challenge for `name`, if any.
    pub fn remove(&self, name: &str) {
        let name = name.to_ascii_lowercase();
        self.pending.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.remove(&name);
            m
        });
    }

    /// How many challenges are pending.
    pub fn len(&self) -> usize {
        self.pending.load().len()
    }

    /// Whether no challenge is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The TLS-ALPN-01 challenge certificate for `name` (RFC 8737 §3): a
/// self-signed certificate whose only subjectAltName is `name` and which
/// carries the critical `id-pe-acmeIdentifier` extension holding
/// `digest`, the SHA-256 digest of the key authorization. Returns the
/// DER certificate and its PKCS#8 key.
pub fn challenge_cert(name: &str, digest: &[u8]) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let gen = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(gen)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(gen)?;
    let cert = params.self_signed(&key).map_err(gen)?;
    Ok((cert.der().to_vec(), key.serialize_der()))
}

/// The server configuration answering a TLS-ALPN-01 challenge for `name`:
/// the challenge certificate, ALPN `acme-tls/1` only, TLS 1.2 and 1.3, no
/// session resumption.
pub fn challenge_config(name: &str, digest: &[u8]) -> Result<Arc<ServerConfig>, TlsError> {
    let (cert, key) = challenge_cert(name, digest)?;
    let provider = Arc::new(aws_lc_rs::default_provider());
    // Not `with_single_cert`: it parses the certificate with webpki, which
    // refuses the critical acmeIdentifier extension it does not know.
    let signing = provider
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)))
        .map_err(|e| TlsError::CertKey(e.to_string()))?;
    let certified = Arc::new(CertifiedKey::new(vec![cert.into()], signing));
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::CertKey(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Always(certified)));
    config.alpn_protocols = vec![ACME_TLS_1.to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// Serves the challenge certificate whatever the ClientHello says (the
/// configuration was chosen by its SNI already).
#[derive(Debug)]
struct Always(Arc<CertifiedKey>);

impl ResolvesServerCert for Always {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// A client certificate verifier that accepts anything (tests look at the
/// challenge certificate themselves; webpki refuses its critical extension).
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct Accept;
#[cfg(test)]
impl rustls::client::danger::ServerCertVerifier for Accept {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_cert_carries_the_acme_identifier() {
        let digest = [7u8; 32];
        let (der, _) = challenge_cert("a.example.com", &digest).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        // id-pe-acmeIdentifier, 1.3.6.1.5.5.7.1.31 (RFC 8737 §6.1).
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier extension");
        assert!(ext.critical);
        // An OCTET STRING of the 32-byte digest.
        assert_eq!(ext.value[..2], [0x04, 0x20]);
        assert_eq!(&ext.value[2..], &digest);
        let names: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(names, ["DNSName(a.example.com)"]);
    }

    /// A handshake of a client offering `alpn` for `sni` against a session
    /// that answers `challenges`: the session, the client, and the
    /// session's last result.
    fn handshake(
        challenges: &'static AcmeChallenges,
        sni: &str,
        alpn: &[&[u8]],
    ) -> (
        super::super::TlsSession,
        rustls::ClientConnection,
        Result<super::super::Status, TlsError>,
    ) {
        let (cert, key) = super::super::generate_self_signed(&["static.test"]).unwrap();
        let server = super::super::build_server_config(
            super::super::load_cert_chain("c", cert.as_bytes()).unwrap(),
            super::super::load_private_key("k", key.as_bytes()).unwrap(),
            &super::super::TlsPolicy {
                alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
                ..Default::default()
            },
        )
        .unwrap();
        let mut session = super::super::TlsSession::new(server).unwrap();
        session.set_acme(challenges);
        let mut cc =
            rustls::ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Accept))
                .with_no_client_auth();
        cc.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(cc), name).unwrap();
        let mut last = Ok(super::super::Status::Handshaking);
        for _ in 0..10 {
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire).unwrap();
            }
            if wire.is_empty() {
                break;
            }
            let (mut tc, mut tb) = (Vec::new(), Vec::new());
            last = session.handle_ciphertext(&wire, &mut tc, &mut tb);
            let mut rd = &tc[..];
            while !rd.is_empty() {
                client.read_tls(&mut rd).unwrap();
                if client.process_new_packets().is_err() {
                    return (session, client, last);
                }
            }
            if last.is_err() {
                break;
            }
        }
        (session, client, last)
    }

    #[test]
    fn acme_tls1_gets_the_challenge_certificate() {
        let challenges: &'static _ = Box::leak(Box::new(AcmeChallenges::new()));
        let digest = [9u8; 32];
        challenges.insert(
            "a.example.com",
            challenge_config("a.example.com", &digest).unwrap(),
        );
        let (session, client, last) = handshake(challenges, "a.example.com", &[ACME_TLS_1]);
        assert!(last.is_ok(), "{last:?}");
        assert!(session.is_established());
        assert!(session.is_acme_challenge());
        assert_eq!(client.alpn_protocol(), Some(ACME_TLS_1));
        let leaf = &client.peer_certificates().unwrap()[0];
        let (_, cert) = x509_parser::parse_x509_certificate(leaf).unwrap();
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .unwrap();
        assert_eq!(&ext.value[2..], &digest);
    }

    #[test]
    fn acme_tls1_for_an_unknown_name_is_refused() {
        let challenges: &'static _ = Box::leak(Box::new(AcmeChallenges::new()));
        challenges.insert(
            "a.example.com",
            challenge_config("a.example.com", &[1; 32]).unwrap(),
        );
        let (session, _, last) = handshake(challenges, "b.example.com", &[ACME_TLS_1]);
        assert_eq!(last.unwrap_err(), TlsError::AcmeNoChallenge);
        assert!(!session.is_acme_challenge());
    }

    #[test]
    fn normal_clients_are_not_touched_while_a_challenge_is_pending() {
        let challenges: &'static _ = Box::leak(Box::new(AcmeChallenges::new()));
        challenges.insert(
            "a.example.com",
            challenge_config("a.example.com", &[1; 32]).unwrap(),
        );
        let (session, client, last) = handshake(challenges, "a.example.com", &[b"h2", b"http/1.1"]);
        assert!(last.is_ok(), "{last:?}");
        assert!(session.is_established());
        assert!(!session.is_acme_challenge());
        assert_eq!(client.alpn_protocol(), Some(&b"h2"[..]));
    }

    #[test]
    fn challenges_are_published_and_withdrawn() {
        let c = AcmeChallenges::new();
        assert!(c.lookup("a.test").is_none());
        c.insert("A.test", challenge_config("a.test", &[1; 32]).unwrap());
        assert!(c.lookup("a.test").is_some());
        assert_eq!(c.len(), 1);
        c.remove("a.test");
        assert!(c.is_empty());
    }
}
