//! Certificate and key loading, and the rustls `ServerConfig` built from them.
//!
//! Everything takes bytes: the caller reads the files. Errors name the file.

use std::sync::Arc;

use rustls::crypto::aws_lc_rs;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{NoServerSessionStorage, ProducesTickets, StoresServerSessions};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use super::TlsError;

/// The TLS policy a listener applies. Later issues grow it (cipher suites,
/// groups, client auth); the defaults are what `ringterm` uses today.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPolicy {
    /// Accept TLS 1.2 (TLS 1.3 is always on).
    pub tls12: bool,
    /// ALPN protocols to offer, in preference order.
    pub alpn: Vec<Vec<u8>>,
}

impl Default for TlsPolicy {
    fn default() -> Self {
        Self {
            tls12: true,
            alpn: Vec::new(),
        }
    }
}

/// Parses a PEM certificate chain. `name` is used in errors (a file name).
pub fn load_cert_chain(name: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(name.to_owned(), e.to_string()))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(name.to_owned()));
    }
    Ok(chain)
}

/// Parses a PEM private key (PKCS#8, SEC1 or PKCS#1).
pub fn load_private_key(name: &str, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    use rustls::pki_types::pem::Error as PemError;
    match PrivateKeyDer::from_pem_slice(pem) {
        Ok(key) => Ok(key),
        Err(PemError::NoItemsFound) => Err(TlsError::NoPrivateKey(name.to_owned())),
        Err(e) => Err(TlsError::Pem(name.to_owned(), e.to_string())),
    }
}

/// How a server configuration resumes sessions. The default resumes
/// nothing.
#[derive(Clone, Default)]
pub struct ResumptionParts {
    /// The stateful session store (TLS 1.2 session IDs, TLS 1.3 stateful
    /// tickets). `None`: no store (rustls's default one takes a `Mutex`).
    pub storage: Option<Arc<dyn StoresServerSessions>>,
    /// The stateless ticket producer. `None`: no tickets.
    pub ticketer: Option<Arc<dyn ProducesTickets>>,
    /// TLS 1.3 tickets sent after each full handshake (when resuming at all).
    pub tls13_tickets: usize,
}

impl std::fmt::Debug for ResumptionParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResumptionParts")
            .field("storage", &self.storage.is_some())
            .field("ticketer", &self.ticketer.is_some())
            .field("tls13_tickets", &self.tls13_tickets)
            .finish()
    }
}

/// Builds the server configuration without session resumption. See
/// [`build_server_config_with`].
pub fn build_server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    policy: &TlsPolicy,
) -> Result<Arc<ServerConfig>, TlsError> {
    build_server_config_with(chain, key, policy, ResumptionParts::default())
}

/// Builds the server configuration: checks that the key matches the
/// certificate, applies the policy, and plugs in the resumption parts.
pub fn build_server_config_with(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    policy: &TlsPolicy,
    resumption: ResumptionParts,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(aws_lc_rs::default_provider());
    build_server_config_with_provider(chain, key, policy, resumption, provider)
}

/// [`build_server_config_with`] over a given crypto provider instead of
/// aws-lc-rs's default one. The fuzz harness uses it with a deterministic
/// provider so that recorded client sessions replay.
pub fn build_server_config_with_provider(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    policy: &TlsPolicy,
    resumption: ResumptionParts,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let certified = CertifiedKey::from_der(chain, key, &provider)
        .map_err(|e| TlsError::CertKey(e.to_string()))?;
    certified
        .keys_match()
        .map_err(|e| TlsError::CertKey(e.to_string()))?;
    let versions: &[&rustls::SupportedProtocolVersion] = if policy.tls12 {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| TlsError::CertKey(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
    config.alpn_protocols = policy.alpn.clone();
    let resumes = resumption.storage.is_some() || resumption.ticketer.is_some();
    config.session_storage = resumption
        .storage
        .unwrap_or_else(|| Arc::new(NoServerSessionStorage {}));
    if let Some(ticketer) = resumption.ticketer {
        config.ticketer = ticketer;
    }
    config.send_tls13_tickets = if resumes { resumption.tls13_tickets } else { 0 };
    config.max_early_data_size = 0;
    Ok(Arc::new(config))
}

/// Generates a self-signed ECDSA P-256 certificate for `names`, returning
/// `(cert_pem, key_pem)`. Used by the demo and by tests.
pub fn generate_self_signed(names: &[&str]) -> Result<(String, String), TlsError> {
    let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    let params =
        rcgen::CertificateParams::new(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    Ok((cert.pem(), key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_generated_pair() {
        let (cert, key) = generate_self_signed(&["localhost"]).unwrap();
        let chain = load_cert_chain("c.pem", cert.as_bytes()).unwrap();
        let key = load_private_key("k.pem", key.as_bytes()).unwrap();
        build_server_config(chain, key, &TlsPolicy::default()).unwrap();
    }

    #[test]
    fn rejects_mismatched_pair() {
        let (cert, _) = generate_self_signed(&["localhost"]).unwrap();
        let (_, other_key) = generate_self_signed(&["localhost"]).unwrap();
        let chain = load_cert_chain("c.pem", cert.as_bytes()).unwrap();
        let key = load_private_key("k.pem", other_key.as_bytes()).unwrap();
        let err = build_server_config(chain, key, &TlsPolicy::default()).unwrap_err();
        assert!(matches!(err, TlsError::CertKey(_)), "{err}");
    }

    #[test]
    fn empty_files_are_named() {
        assert_eq!(
            load_cert_chain("c.pem", b"").unwrap_err(),
            TlsError::NoCertificate("c.pem".into())
        );
        assert_eq!(
            load_private_key("k.pem", b"hello").unwrap_err(),
            TlsError::NoPrivateKey("k.pem".into())
        );
    }
}
