//! OCSP responses to staple (RFC 6960, RFC 6066 `status_request`).
//!
//! A response is checked before it is stapled, the way a careful client
//! would check it:
//! - it is a successful `id-pkix-ocsp-basic` response;
//! - one of its `SingleResponse`s covers this certificate: the `CertID`'s
//!   issuer name hash and issuer key hash are those of the issuer's subject
//!   and public key (under the `CertID`'s own hash algorithm), and the
//!   serial number is the certificate's;
//! - the responder's signature checks against the issuer's key, or against
//!   a delegated responder certificate (RFC 6960 §4.2.2.2: issued by the
//!   issuer, with the `id-kp-OCSPSigning` extended key usage, valid now)
//!   carried in the response;
//! - `now` lies within `thisUpdate` (minus a clock-skew allowance) and
//!   `nextUpdate`; a response without `nextUpdate` is taken as valid for
//!   [`MAX_AGE_WITHOUT_NEXT_UPDATE_S`] after `thisUpdate`;
//! - the status is `good`.
//!
//! Sans-IO: the caller passes the response bytes, the certificates and the
//! current time in seconds since the Unix epoch.

use der::{Decode, Encode, Reader, SliceReader};
use rustls::pki_types::CertificateDer;
use x509_cert::Certificate;
use x509_ocsp::{BasicOcspResponse, CertStatus, OcspResponse, OcspResponseStatus, ResponderId};

/// How far `thisUpdate` may lie in the future (responder clock ahead of
/// ours), seconds.
pub const CLOCK_SKEW_S: u64 = 300;

/// How long a response without `nextUpdate` is used after its `thisUpdate`,
/// seconds (7 days, the longest validity the CA/Browser Forum baseline
/// requirements allow for a response).
pub const MAX_AGE_WITHOUT_NEXT_UPDATE_S: u64 = 7 * 86_400;

const ID_PKIX_OCSP_BASIC: &str = "1.3.6.1.5.5.7.48.1.1";
const ID_KP_OCSP_SIGNING: &str = "1.3.6.1.5.5.7.3.9";
const ID_CE_EXT_KEY_USAGE: &str = "2.5.29.37";

/// Why a response is not stapled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OcspError {
    /// The bytes are not a DER OCSP response.
    #[error("not a DER OCSP response: {0}")]
    Malformed(String),
    /// The responder answered with an error status.
    #[error("responder status is {0}, not successful")]
    NotSuccessful(String),
    /// The response is not an `id-pkix-ocsp-basic` response.
    #[error("not a basic OCSP response")]
    NotBasic,
    /// The certificate chain has no issuer certificate to check against.
    #[error("the certificate chain holds no issuer certificate (leaf only)")]
    NoIssuer,
    /// A certificate could not be parsed.
    #[error("certificate: {0}")]
    Certificate(String),
    /// No `SingleResponse` covers this certificate.
    #[error("the response is for another certificate")]
    WrongCertificate,
    /// The `CertID` uses a hash algorithm we do not compute.
    #[error("unsupported CertID hash algorithm {0}")]
    UnsupportedHash(String),
    /// The response is signed by neither the issuer nor a responder it
    /// delegated to.
    #[error("the responder is neither the issuer nor a delegated responder")]
    UnknownResponder,
    /// The signature does not check.
    #[error("bad responder signature")]
    BadSignature,
    /// `thisUpdate` lies in the future.
    #[error("not yet valid: thisUpdate is {} (responder clock ahead?)", crate::tls::loader::format_utc(*this_update))]
    NotYetValid {
        /// `thisUpdate`, seconds since the epoch.
        this_update: u64,
        /// The time checked against.
        now: u64,
    },
    /// The response expired.
    #[error("expired: nextUpdate was {}", crate::tls::loader::format_utc(*next_update))]
    Expired {
        /// `nextUpdate` (or the assumed end of validity), seconds since the
        /// epoch.
        next_update: u64,
        /// The time checked against.
        now: u64,
    },
    /// The certificate is revoked.
    #[error("the certificate is revoked")]
    Revoked,
    /// The responder does not know the certificate.
    #[error("the responder does not know the certificate (status unknown)")]
    Unknown,
}

/// A checked response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OcspValidity {
    /// `thisUpdate`, seconds since the epoch.
    pub this_update: u64,
    /// `nextUpdate`, or `thisUpdate` plus [`MAX_AGE_WITHOUT_NEXT_UPDATE_S`]
    /// when the response has none, seconds since the epoch: the response is
    /// stapled until then.
    pub next_update: u64,
}

/// Checks `response` (DER) for `leaf`, issued by `issuer`, at `now`
/// (seconds since the Unix epoch). See the module docs for what is checked.
pub fn verify(
    response: &[u8],
    leaf: &CertificateDer<'_>,
    issuer: &CertificateDer<'_>,
    now: u64,
) -> Result<OcspValidity, OcspError> {
    let malformed = |e: der::Error| OcspError::Malformed(e.to_string());
    let outer = OcspResponse::from_der(response).map_err(malformed)?;
    if outer.response_status != OcspResponseStatus::Successful {
        return Err(OcspError::NotSuccessful(format!(
            "{:?}",
            outer.response_status
        )));
    }
    let bytes = outer.response_bytes.ok_or(OcspError::NotBasic)?;
    if bytes.response_type.to_string() != ID_PKIX_OCSP_BASIC {
        return Err(OcspError::NotBasic);
    }
    let basic_der = bytes.response.as_bytes();
    let basic = BasicOcspResponse::from_der(basic_der).map_err(malformed)?;
    // The signature covers the DER of tbsResponseData exactly as sent.
    let tbs_raw = first_element_raw(basic_der).map_err(malformed)?;

    let cert_err = |e: der::Error| OcspError::Certificate(e.to_string());
    let leaf_cert = Certificate::from_der(leaf.as_ref()).map_err(cert_err)?;
    let issuer_cert = Certificate::from_der(issuer.as_ref()).map_err(cert_err)?;

    // 1. The SingleResponse for this certificate.
    let issuer_name = issuer_cert
        .tbs_certificate
        .subject
        .to_der()
        .map_err(cert_err)?;
    let issuer_key = issuer_cert
        .tbs_certificate
        .subject_public_key_info
        .subject_public_key
        .raw_bytes();
    let serial = &leaf_cert.tbs_certificate.serial_number;
    let mut single = None;
    for s in &basic.tbs_response_data.responses {
        let id = &s.cert_id;
        if &id.serial_number != serial {
            continue;
        }
        let alg = hash_alg(&id.hash_algorithm.oid.to_string())?;
        if aws_lc_rs::digest::digest(alg, &issuer_name).as_ref() == id.issuer_name_hash.as_bytes()
            && aws_lc_rs::digest::digest(alg, issuer_key).as_ref() == id.issuer_key_hash.as_bytes()
        {
            single = Some(s);
            break;
        }
    }
    let single = single.ok_or(OcspError::WrongCertificate)?;

    // 2. The responder and its signature.
    let responder: CertificateDer<'_> =
        if responder_is(&basic.tbs_response_data.responder_id, &issuer_cert)? {
            issuer.clone()
        } else {
            delegated_responder(&basic, &issuer_cert, issuer, now)?
        };
    let sig_alg = basic.signature_algorithm.to_der().map_err(malformed)?;
    check_signature(&responder, &sig_alg, tbs_raw, basic.signature.raw_bytes())?;

    // 3. Time.
    let this_update = single.this_update.0.to_unix_duration().as_secs();
    let next_update = match &single.next_update {
        Some(t) => t.0.to_unix_duration().as_secs(),
        None => this_update.saturating_add(MAX_AGE_WITHOUT_NEXT_UPDATE_S),
    };
    if next_update <= this_update {
        return Err(OcspError::Malformed(
            "nextUpdate is not after thisUpdate".into(),
        ));
    }
    if this_update > now.saturating_add(CLOCK_SKEW_S) {
        return Err(OcspError::NotYetValid { this_update, now });
    }
    if now >= next_update {
        return Err(OcspError::Expired { next_update, now });
    }

    // 4. Status.
    match single.cert_status {
        CertStatus::Good(_) => Ok(OcspValidity {
            this_update,
            next_update,
        }),
        CertStatus::Revoked(_) => Err(OcspError::Revoked),
        CertStatus::Unknown(_) => Err(OcspError::Unknown),
    }
}

/// The certificate's `notAfter`, seconds since the Unix epoch.
pub fn not_after(cert: &CertificateDer<'_>) -> Result<u64, OcspError> {
    let c =
        Certificate::from_der(cert.as_ref()).map_err(|e| OcspError::Certificate(e.to_string()))?;
    Ok(c.tbs_certificate
        .validity
        .not_after
        .to_unix_duration()
        .as_secs())
}

/// The OCSP responder URLs in the certificate's Authority Information
/// Access extension (`id-ad-ocsp`, `http:` URIs).
pub fn responder_urls(cert: &CertificateDer<'_>) -> Vec<String> {
    use x509_cert::ext::pkix::name::GeneralName;
    use x509_cert::ext::pkix::AuthorityInfoAccessSyntax;
    let Ok(c) = Certificate::from_der(cert.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some((_, aia))) = c.tbs_certificate.get::<AuthorityInfoAccessSyntax>() else {
        return Vec::new();
    };
    aia.0
        .iter()
        .filter(|d| d.access_method.to_string() == "1.3.6.1.5.5.7.48.1")
        .filter_map(|d| match &d.access_location {
            GeneralName::UniformResourceIdentifier(u) => Some(u.as_str().to_owned()),
            _ => None,
        })
        .collect()
}

/// The DER OCSP request (RFC 6960 §4.1, no nonce, unsigned) for `leaf`
/// issued by `issuer`, with a SHA-1 `CertID` (what responders expect and
/// what `openssl ocsp` sends).
pub fn request(
    leaf: &CertificateDer<'_>,
    issuer: &CertificateDer<'_>,
) -> Result<Vec<u8>, OcspError> {
    use der::asn1::{Null, OctetString};
    use x509_ocsp::{CertId, OcspRequest, Request, TbsRequest};
    let cert_err = |e: der::Error| OcspError::Certificate(e.to_string());
    let leaf = Certificate::from_der(leaf.as_ref()).map_err(cert_err)?;
    let issuer = Certificate::from_der(issuer.as_ref()).map_err(cert_err)?;
    let sha1 = &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY;
    let name = issuer.tbs_certificate.subject.to_der().map_err(cert_err)?;
    let key = issuer
        .tbs_certificate
        .subject_public_key_info
        .subject_public_key
        .raw_bytes();
    let octets = |d: aws_lc_rs::digest::Digest| OctetString::new(d.as_ref()).map_err(cert_err);
    let cert_id = CertId {
        hash_algorithm: spki::AlgorithmIdentifierOwned {
            oid: der::asn1::ObjectIdentifier::new_unwrap("1.3.14.3.2.26"),
            parameters: Some(Null.into()),
        },
        issuer_name_hash: octets(aws_lc_rs::digest::digest(sha1, &name))?,
        issuer_key_hash: octets(aws_lc_rs::digest::digest(sha1, key))?,
        serial_number: leaf.tbs_certificate.serial_number.clone(),
    };
    OcspRequest {
        tbs_request: TbsRequest {
            request_list: vec![Request {
                req_cert: cert_id,
                single_request_extensions: None,
            }],
            ..TbsRequest::default()
        },
        optional_signature: None,
    }
    .to_der()
    .map_err(cert_err)
}

fn hash_alg(oid: &str) -> Result<&'static aws_lc_rs::digest::Algorithm, OcspError> {
    use aws_lc_rs::digest;
    Ok(match oid {
        "1.3.14.3.2.26" => &digest::SHA1_FOR_LEGACY_USE_ONLY,
        "2.16.840.1.101.3.4.2.1" => &digest::SHA256,
        "2.16.840.1.101.3.4.2.2" => &digest::SHA384,
        "2.16.840.1.101.3.4.2.3" => &digest::SHA512,
        other => return Err(OcspError::UnsupportedHash(other.to_owned())),
    })
}

/// Whether the responder ID names `cert` (by subject, or by the SHA-1 of
/// its public key, RFC 6960 §4.2.1).
fn responder_is(id: &ResponderId, cert: &Certificate) -> Result<bool, OcspError> {
    Ok(match id {
        ResponderId::ByName(name) => name == &cert.tbs_certificate.subject,
        ResponderId::ByKey(hash) => {
            let key = cert
                .tbs_certificate
                .subject_public_key_info
                .subject_public_key
                .raw_bytes();
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, key).as_ref()
                == hash.as_bytes()
        }
    })
}

/// The delegated responder certificate named by the response's responder
/// ID, checked: issued and signed by the issuer, `id-kp-OCSPSigning`, valid
/// at `now`.
fn delegated_responder(
    basic: &BasicOcspResponse,
    issuer: &Certificate,
    issuer_der: &CertificateDer<'_>,
    now: u64,
) -> Result<CertificateDer<'static>, OcspError> {
    let certs = basic.certs.as_deref().unwrap_or_default();
    for cert in certs {
        if !responder_is(&basic.tbs_response_data.responder_id, cert)? {
            continue;
        }
        let tbs = &cert.tbs_certificate;
        if tbs.issuer != issuer.tbs_certificate.subject {
            return Err(OcspError::UnknownResponder);
        }
        let ocsp_signing = tbs.extensions.iter().flatten().any(|ext| {
            ext.extn_id.to_string() == ID_CE_EXT_KEY_USAGE
                && x509_cert::ext::pkix::ExtendedKeyUsage::from_der(ext.extn_value.as_bytes())
                    .map(|eku| eku.0.iter().any(|o| o.to_string() == ID_KP_OCSP_SIGNING))
                    .unwrap_or(false)
        });
        if !ocsp_signing {
            return Err(OcspError::UnknownResponder);
        }
        let nb = tbs.validity.not_before.to_unix_duration().as_secs();
        let na = tbs.validity.not_after.to_unix_duration().as_secs();
        if now.saturating_add(CLOCK_SKEW_S) < nb || now >= na {
            return Err(OcspError::UnknownResponder);
        }
        let der = cert
            .to_der()
            .map_err(|e| OcspError::Certificate(e.to_string()))?;
        let tbs_raw = first_element_raw(&der).map_err(|e| OcspError::Certificate(e.to_string()))?;
        let alg = cert
            .signature_algorithm
            .to_der()
            .map_err(|e| OcspError::Certificate(e.to_string()))?;
        check_signature(issuer_der, &alg, tbs_raw, cert.signature.raw_bytes())
            .map_err(|_| OcspError::UnknownResponder)?;
        return Ok(CertificateDer::from(der));
    }
    Err(OcspError::UnknownResponder)
}

/// Checks `signature` over `msg` with `signer`'s public key, under the
/// algorithm whose AlgorithmIdentifier DER is `alg_der`, with the
/// algorithms rustls-webpki offers over aws-lc-rs.
fn check_signature(
    signer: &CertificateDer<'_>,
    alg_der: &[u8],
    msg: &[u8],
    signature: &[u8],
) -> Result<(), OcspError> {
    // webpki's AlgorithmIdentifier values are the SEQUENCE's contents.
    let alg_contents = sequence_contents(alg_der).ok_or(OcspError::BadSignature)?;
    let ee = webpki::EndEntityCert::try_from(signer)
        .map_err(|e| OcspError::Certificate(e.to_string()))?;
    let algs = rustls::crypto::aws_lc_rs::default_provider()
        .signature_verification_algorithms
        .all;
    for alg in algs {
        if alg.signature_alg_id().as_ref() != alg_contents {
            continue;
        }
        if ee.verify_signature(*alg, msg, signature).is_ok() {
            return Ok(());
        }
    }
    Err(OcspError::BadSignature)
}

/// The raw DER (tag, length, value) of the first element of the SEQUENCE
/// `der`.
fn first_element_raw(der: &[u8]) -> Result<&[u8], der::Error> {
    let mut reader = SliceReader::new(der)?;
    let header = der::Header::decode(&mut reader)?;
    header.tag.assert_eq(der::Tag::Sequence)?;
    let start: usize = reader.position().try_into()?;
    let inner = der::Header::decode(&mut reader)?;
    let after_header: usize = reader.position().try_into()?;
    let len: usize = inner.length.try_into()?;
    der.get(start..after_header + len)
        .ok_or(der::Error::incomplete(reader.position()))
}

/// The contents of the SEQUENCE `der` (without its tag and length).
fn sequence_contents(der: &[u8]) -> Option<&[u8]> {
    let mut reader = SliceReader::new(der).ok()?;
    let header = der::Header::decode(&mut reader).ok()?;
    if header.tag != der::Tag::Sequence {
        return None;
    }
    let start: usize = reader.position().try_into().ok()?;
    let len: usize = header.length.try_into().ok()?;
    der.get(start..start + len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_malformed() {
        let (cert, _) = crate::tls::generate_self_signed(&["a.test"]).unwrap();
        let der = cert_der(&cert);
        for bad in [&b""[..], b"\x30\x03\x0a\x01\x00", b"hello"] {
            let err = verify(bad, &der, &der, 0).unwrap_err();
            assert!(
                matches!(err, OcspError::Malformed(_) | OcspError::NotBasic),
                "{err:?}"
            );
        }
        // A well-formed "tryLater" answer.
        let err = verify(b"\x30\x03\x0a\x01\x03", &der, &der, 0).unwrap_err();
        assert!(matches!(err, OcspError::NotSuccessful(_)), "{err:?}");
    }

    #[test]
    fn request_carries_the_cert_id() {
        use x509_ocsp::OcspRequest;
        let (leaf, _) = crate::tls::generate_self_signed(&["a.test"]).unwrap();
        let (issuer, _) = crate::tls::generate_self_signed(&["ca.test"]).unwrap();
        let (leaf, issuer) = (cert_der(&leaf), cert_der(&issuer));
        let der = request(&leaf, &issuer).unwrap();
        let req = OcspRequest::from_der(&der).unwrap();
        let id = &req.tbs_request.request_list[0].req_cert;
        assert_eq!(id.hash_algorithm.oid.to_string(), "1.3.14.3.2.26");
        let issuer_cert = Certificate::from_der(issuer.as_ref()).unwrap();
        let name = issuer_cert.tbs_certificate.subject.to_der().unwrap();
        assert_eq!(
            id.issuer_name_hash.as_bytes(),
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &name).as_ref()
        );
        let leaf_cert = Certificate::from_der(leaf.as_ref()).unwrap();
        assert_eq!(id.serial_number, leaf_cert.tbs_certificate.serial_number);
        assert!(req.optional_signature.is_none());
    }

    #[test]
    fn raw_first_element() {
        // SEQUENCE { INTEGER 5, NULL }
        let der = [0x30, 0x05, 0x02, 0x01, 0x05, 0x05, 0x00];
        assert_eq!(first_element_raw(&der).unwrap(), &[0x02, 0x01, 0x05]);
        assert_eq!(sequence_contents(&der).unwrap(), &der[2..]);
        assert!(first_element_raw(&[0x30, 0x05, 0x02]).is_err());
    }

    #[test]
    fn reads_not_after() {
        let (cert, _) = crate::tls::generate_self_signed(&["a.test"]).unwrap();
        let der = cert_der(&cert);
        // rcgen's default validity ends in 4096.
        assert!(not_after(&der).unwrap() > 4_000_000_000);
        assert!(responder_urls(&der).is_empty());
    }

    fn cert_der(pem: &str) -> CertificateDer<'static> {
        use rustls::pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }
}
