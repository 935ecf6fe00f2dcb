//! Certificate selection by SNI: exact names and wildcards, several keys
//! (ECDSA, RSA) per name chosen by what the client supports, a default for
//! no or unknown SNI or a rejection.
//!
//! The step function learns the name the client asked for from its own look
//! at the ClientHello ([`super::hello`]): rustls's unbuffered server
//! connection does not expose it. No IO, no clock.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;

use super::TlsError;

/// What to do with a ClientHello whose SNI matches no certificate, or that
/// has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownSni {
    /// Serve the default certificate (the first one configured), as
    /// nginx, haproxy and hitch do.
    #[default]
    Default,
    /// Refuse the handshake with an `unrecognized_name` alert.
    Reject,
}

/// Certificates indexed by the DNS names in their subjectAltName.
#[derive(Debug)]
pub struct SniResolver {
    keys: Vec<Arc<CertifiedKey>>,
    /// Exact name → indexes into `keys`, in configuration order.
    exact: HashMap<String, Vec<usize>>,
    /// Wildcard suffix (`example.com` for `*.example.com`) → indexes.
    wildcard: HashMap<String, Vec<usize>>,
    /// Indexes of the default name's keys (those of the first certificate's
    /// names, i.e. every key sharing the first certificate's names).
    default: Vec<usize>,
    unknown: UnknownSni,
}

impl SniResolver {
    /// Indexes `keys` (in configuration order; the first is the default).
    /// `names[i]`, when not empty, replaces the certificate's own names.
    pub fn new(
        keys: Vec<Arc<CertifiedKey>>,
        names: &[Vec<String>],
        unknown: UnknownSni,
    ) -> Result<Self, TlsError> {
        if keys.is_empty() {
            return Err(TlsError::CertKey("no certificate configured".into()));
        }
        let mut exact: HashMap<String, Vec<usize>> = HashMap::new();
        let mut wildcard: HashMap<String, Vec<usize>> = HashMap::new();
        let mut per_key_names = Vec::with_capacity(keys.len());
        for (i, key) in keys.iter().enumerate() {
            let names = match names.get(i).filter(|n| !n.is_empty()) {
                Some(n) => n.iter().map(|s| s.to_ascii_lowercase()).collect(),
                None => dns_names(&key.cert[0])?,
            };
            for name in &names {
                match name.strip_prefix("*.") {
                    Some(suffix) => wildcard.entry(suffix.to_owned()).or_default().push(i),
                    None => exact.entry(name.clone()).or_default().push(i),
                }
            }
            per_key_names.push(names);
        }
        // The default: the first certificate and every other key for
        // exactly the same names (its RSA or ECDSA sibling).
        let default = (0..keys.len())
            .filter(|&i| i == 0 || per_key_names[i] == per_key_names[0])
            .collect();
        Ok(Self {
            keys,
            exact,
            wildcard,
            default,
            unknown,
        })
    }

    /// The candidates for `sni`: exact match first, then the wildcard one
    /// label up (`*.example.com` covers `a.example.com`, not
    /// `a.b.example.com` nor `example.com`, as RFC 6125 says).
    fn candidates(&self, sni: &str) -> Option<&[usize]> {
        if let Some(c) = self.exact.get(sni) {
            return Some(c);
        }
        let (_, parent) = sni.split_once('.')?;
        self.wildcard.get(parent).map(Vec::as_slice)
    }

    /// Picks the key for a client with `sni` offering `schemes`: among the
    /// candidates, the first ECDSA/EdDSA key the client can verify, else the
    /// first key it can verify at all. `None` means refuse the handshake.
    pub fn select(
        &self,
        sni: Option<&str>,
        schemes: &[SignatureScheme],
    ) -> Option<&Arc<CertifiedKey>> {
        let cands = match sni.and_then(|s| self.candidates(s)) {
            Some(c) => c,
            None if self.unknown == UnknownSni::Reject => return None,
            None => &self.default,
        };
        let usable = |i: &&usize| self.keys[**i].key.choose_scheme(schemes).is_some();
        let is_ec = |i: &&usize| {
            !matches!(
                self.keys[**i].key.algorithm(),
                rustls::SignatureAlgorithm::RSA
            )
        };
        cands
            .iter()
            .filter(usable)
            .find(is_ec)
            .or_else(|| cands.iter().find(usable))
            // No key the client can verify: offer the first and let
            // rustls fail the handshake with the right alert.
            .or(cands.first())
            .map(|&i| &self.keys[i])
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name().map(str::to_ascii_lowercase);
        self.select(sni.as_deref(), hello.signature_schemes())
            .cloned()
    }
}

/// The DNS names (subjectAltName) of a certificate, lowercased.
pub fn dns_names(cert: &CertificateDer<'_>) -> Result<Vec<String>, TlsError> {
    let ee = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| TlsError::CertKey(format!("cannot parse certificate: {e:?}")))?;
    Ok(ee
        .valid_dns_names()
        .map(|n| n.to_ascii_lowercase())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::aws_lc_rs;

    fn key_for(names: &[&str], alg: &'static rcgen::SignatureAlgorithm) -> Arc<CertifiedKey> {
        let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
        // rcgen's ring backend cannot generate RSA keys: aws-lc-rs does.
        let kp = if alg == &rcgen::PKCS_RSA_SHA256 {
            use ::aws_lc_rs::encoding::AsDer;
            let kp =
                ::aws_lc_rs::rsa::KeyPair::generate(::aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
            let der = kp.as_der().unwrap();
            let der = rustls::pki_types::PrivatePkcs8KeyDer::from(der.as_ref());
            rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, alg).unwrap()
        } else {
            rcgen::KeyPair::generate_for(alg).unwrap()
        };
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .self_signed(&kp)
            .unwrap();
        let provider = aws_lc_rs::default_provider();
        let key = rustls::pki_types::PrivateKeyDer::try_from(kp.serialize_der()).unwrap();
        Arc::new(CertifiedKey::from_der(vec![cert.der().clone()], key, &provider).unwrap())
    }

    const EC: &[SignatureScheme] = &[
        SignatureScheme::ECDSA_NISTP256_SHA256,
        SignatureScheme::RSA_PSS_SHA256,
    ];
    const RSA_ONLY: &[SignatureScheme] = &[SignatureScheme::RSA_PSS_SHA256];

    #[test]
    fn exact_wildcard_and_default() {
        let a = key_for(&["a.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
        let b = key_for(&["b.test", "alt.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
        let w = key_for(&["*.example.com"], &rcgen::PKCS_ECDSA_P256_SHA256);
        let r = SniResolver::new(
            vec![a.clone(), b.clone(), w.clone()],
            &[],
            UnknownSni::Default,
        )
        .unwrap();
        let pick = |sni: Option<&str>| r.select(sni, EC).cloned();
        assert!(Arc::ptr_eq(&pick(Some("a.test")).unwrap(), &a));
        assert!(Arc::ptr_eq(&pick(Some("alt.test")).unwrap(), &b));
        assert!(Arc::ptr_eq(&pick(Some("x.example.com")).unwrap(), &w));
        // A wildcard covers one label only.
        assert!(Arc::ptr_eq(&pick(Some("y.x.example.com")).unwrap(), &a));
        assert!(Arc::ptr_eq(&pick(Some("example.com")).unwrap(), &a));
        assert!(Arc::ptr_eq(&pick(None).unwrap(), &a));
        assert!(Arc::ptr_eq(&pick(Some("unknown.test")).unwrap(), &a));

        let strict = SniResolver::new(vec![a, b, w], &[], UnknownSni::Reject).unwrap();
        assert!(strict.select(Some("unknown.test"), EC).is_none());
        assert!(strict.select(None, EC).is_none());
        assert!(strict.select(Some("b.test"), EC).is_some());
    }

    #[test]
    fn ecdsa_or_rsa_by_client_schemes() {
        let rsa = key_for(&["both.test"], &rcgen::PKCS_RSA_SHA256);
        let ec = key_for(&["both.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
        // RSA configured first: still ECDSA for clients that take it.
        let r = SniResolver::new(vec![rsa.clone(), ec.clone()], &[], UnknownSni::Default).unwrap();
        assert!(Arc::ptr_eq(r.select(Some("both.test"), EC).unwrap(), &ec));
        assert!(Arc::ptr_eq(
            r.select(Some("both.test"), RSA_ONLY).unwrap(),
            &rsa
        ));
        // Both are the default (same names as the first).
        assert!(Arc::ptr_eq(r.select(None, RSA_ONLY).unwrap(), &rsa));
        assert!(Arc::ptr_eq(r.select(None, EC).unwrap(), &ec));
    }

    #[test]
    fn configured_names_override_and_case_is_ignored() {
        let a = key_for(&["a.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
        let b = key_for(&["b.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
        let r = SniResolver::new(
            vec![a.clone(), b.clone()],
            &[vec![], vec!["Other.TEST".into()]],
            UnknownSni::Reject,
        )
        .unwrap();
        assert!(Arc::ptr_eq(r.select(Some("other.test"), EC).unwrap(), &b));
        assert!(r.select(Some("b.test"), EC).is_none());
    }
}
