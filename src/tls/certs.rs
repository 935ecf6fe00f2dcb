//! Certificate and key loading, and the rustls `ServerConfig` built from them.
//!
//! Everything takes bytes: the caller reads the files. Errors name the file.

use std::sync::Arc;

use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{NoServerSessionStorage, ProducesTickets, StoresServerSessions};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use super::sni::{SniResolver, UnknownSni};
use super::TlsError;
pub use crate::record::RecordLayerKind;

/// The TLS policy a listener applies. The defaults: TLS 1.2 and 1.3,
/// rustls's cipher suites, key exchange groups X25519MLKEM768 (hybrid
/// post-quantum), X25519, secp256r1, secp384r1, no ALPN, no client auth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPolicy {
    /// Accept TLS 1.2 (`--min-tls 1.2`).
    pub tls12: bool,
    /// Accept TLS 1.3 (`--max-tls 1.3`).
    pub tls13: bool,
    /// ALPN protocols to offer, in preference order.
    pub alpn: Vec<Vec<u8>>,
    /// Cipher suites by rustls name (`TLS13_AES_128_GCM_SHA256`,
    /// `TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256`, ...), in preference order;
    /// empty means rustls's defaults. TLS 1.2 and 1.3 suites share the list.
    pub cipher_suites: Vec<String>,
    /// Key exchange groups by name (`X25519MLKEM768`, `X25519`,
    /// `secp256r1`, `secp384r1`), in preference order; empty means the
    /// defaults above.
    pub groups: Vec<String>,
    /// Choose the cipher suite in the server's order rather than the
    /// client's (rustls's `ignore_client_order`). With the default suites,
    /// the server's order puts AES-128-GCM first in each TLS version.
    pub prefer_server_ciphers: bool,
    /// Client certificates: PEM of the CA(s) that sign them, and whether a
    /// certificate is required (else optional: verified when presented).
    pub client_auth: Option<ClientAuth>,
    /// What to do when the SNI matches no certificate.
    pub unknown_sni: UnknownSni,
    /// Which record layer carries established connections
    /// (`--record-layer`): ringterm's own ([`crate::record`]) or rustls's.
    /// It travels as the configuration's `enable_secret_extraction`, which
    /// [`super::TlsSession`] reads.
    pub record_layer: RecordLayerKind,
}

/// Mutual TLS settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuth {
    /// Name of the CA file, for errors.
    pub file: String,
    /// PEM of the CA certificates.
    pub ca_pem: Vec<u8>,
    /// Refuse clients without a certificate.
    pub required: bool,
}

impl Default for TlsPolicy {
    fn default() -> Self {
        Self {
            tls12: true,
            tls13: true,
            alpn: Vec::new(),
            cipher_suites: Vec::new(),
            groups: Vec::new(),
            prefer_server_ciphers: false,
            client_auth: None,
            unknown_sni: UnknownSni::Default,
            record_layer: RecordLayerKind::default(),
        }
    }
}

/// One certificate: its chain, its key, and optionally the SNI names it
/// serves (default: its subjectAltName DNS names).
#[derive(Debug)]
pub struct CertSpec {
    /// Leaf first, then intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key.
    pub key: PrivateKeyDer<'static>,
    /// Names to serve it for instead of its own; may hold `*.` wildcards.
    pub names: Vec<String>,
    /// Names the files in errors (`cert.pem/key.pem`).
    pub label: String,
}

impl CertSpec {
    /// One certificate served for its own names, without a label.
    pub fn single(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Self {
        Self {
            chain,
            key,
            names: Vec::new(),
            label: String::new(),
        }
    }
}

/// The crypto provider with `policy`'s suites and groups applied.
pub fn provider_for(policy: &TlsPolicy) -> Result<CryptoProvider, TlsError> {
    let mut provider = aws_lc_rs::default_provider();
    if !policy.cipher_suites.is_empty() {
        let all = provider.cipher_suites.clone();
        provider.cipher_suites = policy
            .cipher_suites
            .iter()
            .map(|name| {
                all.iter()
                    .find(|s| s.suite().as_str() == Some(name.as_str()))
                    .copied()
                    .ok_or_else(|| {
                        let known: Vec<&str> =
                            all.iter().filter_map(|s| s.suite().as_str()).collect();
                        TlsError::Policy(
                            "--ciphers",
                            format!(
                                "unknown cipher suite {name:?} (known: {})",
                                known.join(", ")
                            ),
                        )
                    })
            })
            .collect::<Result<_, _>>()?;
    }
    if policy.cipher_suites.is_empty() && policy.prefer_server_ciphers {
        // rustls lists AES-256-GCM first; when the server's order wins,
        // AES-128-GCM (TLS 1.3's mandatory suite, RFC 8446 §9.1) goes first:
        // its SHA-256 key schedule is cheaper than SHA-384's, for the same
        // security margin in practice. The sort is stable, so the rest of
        // rustls's order (AES-256-GCM, then ChaCha20) is kept.
        provider
            .cipher_suites
            .sort_by_key(|s| !is_aes128_gcm(s.suite()));
    }
    let all_groups = aws_lc_rs::ALL_KX_GROUPS;
    if !policy.groups.is_empty() {
        provider.kx_groups = policy
            .groups
            .iter()
            .map(|name| {
                all_groups
                    .iter()
                    .find(|g| g.name().as_str() == Some(name.as_str()))
                    .copied()
                    .ok_or_else(|| {
                        let known: Vec<&str> = all_groups
                            .iter()
                            .filter_map(|g| g.name().as_str())
                            .collect();
                        TlsError::Policy(
                            "--groups",
                            format!("unknown group {name:?} (known: {})", known.join(", ")),
                        )
                    })
            })
            .collect::<Result<_, _>>()?;
    }
    let versions_left = provider.cipher_suites.iter().any(|s| match s {
        rustls::SupportedCipherSuite::Tls13(_) => policy.tls13,
        rustls::SupportedCipherSuite::Tls12(_) => policy.tls12,
    });
    if !versions_left {
        return Err(TlsError::Policy(
            "--ciphers",
            "no cipher suite left for the enabled TLS versions".into(),
        ));
    }
    Ok(provider)
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

/// Builds the server configuration for one certificate. See
/// [`build_server_config_multi`].
pub fn build_server_config_with(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    policy: &TlsPolicy,
    resumption: ResumptionParts,
) -> Result<Arc<ServerConfig>, TlsError> {
    let spec = CertSpec::single(chain, key);
    build_server_config_multi(vec![spec], policy, resumption)
}

/// [`build_server_config_with`] over a given crypto provider instead of
/// the one the policy selects from aws-lc-rs (the policy's suites and
/// groups are then the provider's). The fuzz harness uses it with a
/// deterministic provider so that recorded client sessions replay.
pub fn build_server_config_with_provider(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    policy: &TlsPolicy,
    resumption: ResumptionParts,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let spec = CertSpec::single(chain, key);
    build_server_config_multi_with_provider(vec![spec], policy, resumption, provider)
}

/// Builds the server configuration: checks that each key matches its
/// certificate, indexes the certificates by SNI (the first is the
/// default), applies the policy, and plugs in the resumption parts.
pub fn build_server_config_multi(
    certs: Vec<CertSpec>,
    policy: &TlsPolicy,
    resumption: ResumptionParts,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(provider_for(policy)?);
    build_server_config_multi_with_provider(certs, policy, resumption, provider)
}

/// [`build_server_config_multi`] over a given crypto provider.
pub fn build_server_config_multi_with_provider(
    certs: Vec<CertSpec>,
    policy: &TlsPolicy,
    resumption: ResumptionParts,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut keys = Vec::with_capacity(certs.len());
    let mut names = Vec::with_capacity(certs.len());
    for spec in certs {
        let label = spec.label;
        let err = |e: rustls::Error| {
            if label.is_empty() {
                TlsError::CertKey(e.to_string())
            } else {
                TlsError::CertKey(format!("{label}: certificate/key: {e}"))
            }
        };
        let certified = CertifiedKey::from_der(spec.chain, spec.key, &provider).map_err(err)?;
        certified.keys_match().map_err(err)?;
        keys.push(Arc::new(certified));
        names.push(spec.names);
    }
    build_server_config_from_keys(keys, &names, policy, resumption, provider)
}

/// Builds the server configuration from keys already loaded and checked
/// (their `ocsp` field is stapled as it is). `names[i]`, when not empty,
/// replaces key `i`'s own names.
pub fn build_server_config_from_keys(
    keys: Vec<Arc<CertifiedKey>>,
    names: &[Vec<String>],
    policy: &TlsPolicy,
    resumption: ResumptionParts,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let resolver = SniResolver::new(keys, names, policy.unknown_sni)?;
    let mut versions: Vec<&'static rustls::SupportedProtocolVersion> = Vec::new();
    if policy.tls13 {
        versions.push(&rustls::version::TLS13);
    }
    if policy.tls12 {
        versions.push(&rustls::version::TLS12);
    }
    if versions.is_empty() {
        return Err(TlsError::Policy(
            "--min-tls/--max-tls",
            "no TLS version left".into(),
        ));
    }
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| TlsError::Policy("--ciphers/--groups", e.to_string()))?;
    let builder = match &policy.client_auth {
        None => builder.with_no_client_auth(),
        Some(auth) => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in load_cert_chain(&auth.file, &auth.ca_pem)? {
                roots
                    .add(ca)
                    .map_err(|e| TlsError::Pem(auth.file.clone(), e.to_string()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            let verifier = if auth.required {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|e| TlsError::Pem(auth.file.clone(), e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = policy.alpn.clone();
    config.ignore_client_order = policy.prefer_server_ciphers;
    let resumes = resumption.storage.is_some() || resumption.ticketer.is_some();
    config.session_storage = resumption
        .storage
        .unwrap_or_else(|| Arc::new(NoServerSessionStorage {}));
    if let Some(ticketer) = resumption.ticketer {
        config.ticketer = ticketer;
    }
    config.send_tls13_tickets = if resumes { resumption.tls13_tickets } else { 0 };
    config.max_early_data_size = 0;
    // The own record layer takes the traffic secrets over from rustls.
    config.enable_secret_extraction = policy.record_layer == RecordLayerKind::Own;
    Ok(Arc::new(config))
}

/// Whether a suite is one of the AES-128-GCM suites (TLS 1.3 or ECDHE).
fn is_aes128_gcm(suite: rustls::CipherSuite) -> bool {
    matches!(
        suite,
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
            | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
    )
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
