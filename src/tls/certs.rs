//! Certificate and key loading, and the rustls `ServerConfig` built from them.
//!
//! Everything takes bytes: the caller reads the files. Errors name the file.

use std::sync::Arc;

use rustls::crypto::aws_lc_rs;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::NoServerSessionStorage;
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

/// Builds the server configuration: checks that the key matches the
/// certificate, applies the policy, and disables the stateful session store
/// (rustls's default one takes a `Mutex`; ringterm's own lock-free cache is
/// plugged in by the resumption layer).
pub fn build_server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    policy: &TlsPolicy,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(aws_lc_rs::default_provider());
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
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
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
