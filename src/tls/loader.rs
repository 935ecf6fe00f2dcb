//! From a validated [`Config`] to a rustls `ServerConfig`: read every
//! certificate, key, certificate folder, OCSP response and client CA,
//! check them, and build.
//!
//! Sans-IO: files come through a [`FileSource`] the caller passes in (the
//! runtime's reads the disk, tests may serve memory), and the time for the
//! OCSP checks is an argument. The runtime's reloader (`rt::reload`) keeps
//! the last [`Loaded`] set so that a reload can keep the previous version
//! of a certificate-folder file that went bad.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;

use super::ocsp::{self, OcspValidity};
use super::{ClientAuth, ResumptionParts, TlsError, TlsPolicy, UnknownSni};
use crate::config::{CertFiles, Config};

/// Where the loader gets file contents.
pub trait FileSource {
    /// The file's bytes.
    fn read(&self, path: &str) -> std::io::Result<Vec<u8>>;
    /// The paths of the `*.pem` files in `dir`, sorted by name.
    fn pem_files(&self, dir: &str) -> std::io::Result<Vec<String>>;
    /// An OCSP response fetched from the responder for the certificate
    /// file `cert_file` (`--ocsp-fetch`), if any. Used when the response
    /// file is missing or not valid.
    fn fetched_ocsp(&self, cert_file: &str) -> Option<Vec<u8>> {
        let _ = cert_file;
        None
    }
}

/// Start (every bad file is an error) or reload (a bad file of a
/// certificate folder is skipped, its previous version kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadMode {
    /// At start, and for `ringterm check`.
    Start,
    /// On SIGHUP.
    Reload,
}

/// The OCSP state of one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OcspState {
    /// No response file (none set, none in the OCSP folder).
    None,
    /// A checked response, stapled.
    Stapled {
        /// The DER response.
        der: Vec<u8>,
        /// Its validity.
        validity: OcspValidity,
    },
    /// A response file that is not stapled, and why.
    Rejected(String),
}

/// One loaded certificate.
#[derive(Debug, Clone)]
pub struct LoadedCert {
    /// The certificate file.
    pub file: String,
    /// The flag or key it came from (`--cert`, `--cert-dir`).
    pub flag: &'static str,
    /// The chain and key (checked to match), without a staple.
    pub key: Arc<CertifiedKey>,
    /// Configured names (empty: the certificate's own).
    pub names: Vec<String>,
    /// The names it is served for (configured, or its DNS SANs).
    pub served_names: Vec<String>,
    /// Its `notAfter`, seconds since the Unix epoch.
    pub not_after: u64,
    /// The OCSP response file looked at, if any.
    pub ocsp_file: Option<String>,
    /// Whether that file was set explicitly (`ocsp = ...`): then it must
    /// exist.
    pub ocsp_explicit: bool,
    /// The OCSP state.
    pub ocsp: OcspState,
}

/// Every certificate, in configuration order (the default first).
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// The certificates.
    pub certs: Vec<LoadedCert>,
    /// Files skipped on reload (their previous version, if any, kept), with
    /// why: `PATH: reason`.
    pub skipped: Vec<String>,
}

/// A loading error: names the flag (or key) and the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    /// The flag or key (`--cert`, `--key`, `--cert-dir`, `--client-ca`,
    /// `--ocsp-dir`, `ocsp`).
    pub flag: &'static str,
    /// The file or folder.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}: {}", self.flag, self.message)
        } else {
            write!(f, "{} {}: {}", self.flag, self.path, self.message)
        }
    }
}

impl std::error::Error for LoadError {}

impl LoadError {
    fn new(flag: &'static str, path: &str, message: impl ToString) -> Self {
        Self {
            flag,
            path: path.to_owned(),
            message: message.to_string(),
        }
    }
}

/// Reads and checks every certificate of `config` (explicit ones, then
/// each certificate folder's `*.pem` files by name) and their OCSP
/// responses, checked at `now` (seconds since the Unix epoch).
///
/// In [`LoadMode::Reload`], a certificate-folder file that fails is
/// skipped (listed in [`Loaded::skipped`]) and its version in `previous`
/// kept; every other failure is an error in both modes.
pub fn load(
    config: &Config,
    files: &dyn FileSource,
    now: u64,
    mode: LoadMode,
    previous: Option<&Loaded>,
) -> Result<Loaded, LoadError> {
    let mut out = Loaded::default();
    for spec in &config.certs {
        let cert = load_one(spec, "--cert", files)?;
        out.certs.push(cert);
    }
    for dir in &config.cert_dirs {
        let paths = files
            .pem_files(dir)
            .map_err(|e| LoadError::new("--cert-dir", dir, e))?;
        for path in paths {
            let spec = CertFiles {
                cert: path.clone(),
                key: None,
                names: Vec::new(),
                ocsp: None,
            };
            match (load_one(&spec, "--cert-dir", files), mode) {
                (Ok(cert), _) => out.certs.push(cert),
                (Err(e), LoadMode::Start) => return Err(e),
                (Err(e), LoadMode::Reload) => {
                    out.skipped.push(format!("{path}: {}", e.message));
                    if let Some(old) = previous
                        .into_iter()
                        .flat_map(|p| &p.certs)
                        .find(|c| c.file == path)
                    {
                        out.certs.push(old.clone());
                    }
                }
            }
        }
    }
    if let Some(acme) = &config.acme {
        load_acme(acme, files, &mut out)?;
    }
    if out.certs.is_empty() {
        let dir = config.cert_dirs.join(", ");
        return Err(LoadError::new(
            "--cert-dir",
            &dir,
            "no certificate (*.pem) found",
        ));
    }
    for (cert, spec) in out
        .certs
        .iter_mut()
        .zip(config.certs.iter().map(Some).chain(std::iter::repeat(None)))
    {
        let explicit = spec.and_then(|s| s.ocsp.clone());
        cert.ocsp_explicit = explicit.is_some();
        cert.ocsp_file = explicit.or_else(|| {
            config.ocsp_dir.as_ref().map(|dir| {
                let name = std::path::Path::new(&cert.file)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                std::path::Path::new(dir)
                    .join(format!("{name}.ocsp"))
                    .display()
                    .to_string()
            })
        });
        cert.ocsp = ocsp_state(cert, files, now, mode)?;
    }
    Ok(out)
}

/// The ACME certificates of the state folder, after the static ones
/// (`--cert`, `--cert-dir`), each served for those of its names that ACME
/// is configured for and no static certificate serves (a static one wins
/// for the same name). A state file not there yet is skipped silently (the
/// ACME thread obtains it); a bad one is listed in [`Loaded::skipped`],
/// never an error (the ACME thread replaces it). With no certificate at
/// all, a self-signed placeholder for the ACME names serves until the
/// first one is obtained.
fn load_acme(
    acme: &crate::acme::AcmeConfig,
    files: &dyn FileSource,
    out: &mut Loaded,
) -> Result<(), LoadError> {
    let statics: std::collections::HashSet<String> = out
        .certs
        .iter()
        .flat_map(|c| c.served_names.iter().cloned())
        .collect();
    for names in &acme.certs {
        let path = acme.cert_file(names);
        match files.read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            _ => {}
        }
        let spec = CertFiles {
            cert: path.clone(),
            key: None,
            names: Vec::new(),
            ocsp: None,
        };
        match load_one(&spec, "--acme-state-dir", files) {
            Ok(mut cert) => {
                let served: Vec<String> = cert
                    .served_names
                    .iter()
                    .filter(|n| names.contains(n) && !statics.contains(*n))
                    .cloned()
                    .collect();
                if served.is_empty() {
                    continue;
                }
                cert.names = served.clone();
                cert.served_names = served;
                out.certs.push(cert);
            }
            Err(e) => out.skipped.push(format!("{path}: {}", e.message)),
        }
    }
    if out.certs.is_empty() {
        let names: Vec<&str> = acme.certs.iter().flatten().map(String::as_str).collect();
        let (cert, key) = super::generate_self_signed(&names)
            .map_err(|e| LoadError::new("--acme-domain", "", e))?;
        let mem = Placeholder(format!("{cert}{key}").into_bytes());
        let spec = CertFiles {
            cert: PLACEHOLDER.to_owned(),
            key: None,
            names: Vec::new(),
            ocsp: None,
        };
        out.certs.push(load_one(&spec, "--acme-domain", &mem)?);
    }
    Ok(())
}

/// The file name of the ACME placeholder certificate.
pub const PLACEHOLDER: &str = "(acme placeholder)";

/// The placeholder's PEM, as a file.
struct Placeholder(Vec<u8>);

impl FileSource for Placeholder {
    fn read(&self, _: &str) -> std::io::Result<Vec<u8>> {
        Ok(self.0.clone())
    }
    fn pem_files(&self, _: &str) -> std::io::Result<Vec<String>> {
        Ok(Vec::new())
    }
}

/// What the ACME state folder holds for each configured certificate: the
/// DNS names and `notAfter` of its state file's certificate, or why there
/// is none usable.
pub fn acme_state(
    acme: &crate::acme::AcmeConfig,
    files: &dyn FileSource,
) -> Vec<Result<(Vec<String>, u64), String>> {
    acme.certs
        .iter()
        .map(|names| {
            let path = acme.cert_file(names);
            match files.read(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err("no certificate yet".to_owned())
                }
                _ => {}
            }
            let spec = CertFiles {
                cert: path,
                key: None,
                names: Vec::new(),
                ocsp: None,
            };
            load_one(&spec, "--acme-state-dir", files)
                .map(|c| (c.served_names, c.not_after))
                .map_err(|e| e.message)
        })
        .collect()
}

/// Re-reads and re-checks every certificate's OCSP response at `now`
/// (the timer's refresh). Unreadable files are rejected states, not
/// errors.
pub fn refresh_ocsp(loaded: &Loaded, files: &dyn FileSource, now: u64) -> Loaded {
    let mut out = loaded.clone();
    for cert in &mut out.certs {
        cert.ocsp = ocsp_state(cert, files, now, LoadMode::Reload)
            .unwrap_or_else(|e| OcspState::Rejected(e.to_string()));
    }
    out
}

/// One warning line per certificate whose OCSP response is rejected now
/// and was not rejected for the same reason in `previous` (a warning is
/// given once, not on every refresh).
pub fn ocsp_warnings(previous: Option<&Loaded>, now: &Loaded) -> Vec<String> {
    now.certs
        .iter()
        .filter_map(|c| {
            let OcspState::Rejected(why) = &c.ocsp else {
                return None;
            };
            let before = previous
                .into_iter()
                .flat_map(|p| &p.certs)
                .find(|p| p.file == c.file)
                .map(|p| &p.ocsp);
            if before == Some(&c.ocsp) {
                return None;
            }
            Some(format!(
                "OCSP response {} for {} not stapled: {why}",
                c.ocsp_file.as_deref().unwrap_or("?"),
                c.file
            ))
        })
        .collect()
}

fn load_one(
    spec: &CertFiles,
    flag: &'static str,
    files: &dyn FileSource,
) -> Result<LoadedCert, LoadError> {
    let cert_pem = files
        .read(&spec.cert)
        .map_err(|e| LoadError::new(flag, &spec.cert, e))?;
    let chain = super::load_cert_chain(&spec.cert, &cert_pem)
        .map_err(|e| LoadError::new(flag, &spec.cert, strip(&e, &spec.cert)))?;
    let key = match &spec.key {
        Some(key_file) => {
            let pem = files
                .read(key_file)
                .map_err(|e| LoadError::new("--key", key_file, e))?;
            super::load_private_key(key_file, &pem)
                .map_err(|e| LoadError::new("--key", key_file, strip(&e, key_file)))?
        }
        None => super::load_private_key(&spec.cert, &cert_pem).map_err(|e| {
            let msg = match e {
                TlsError::NoPrivateKey(_) => {
                    "no private key found (give --key, or put the key in this file)".to_owned()
                }
                other => strip(&other, &spec.cert),
            };
            LoadError::new(flag, &spec.cert, msg)
        })?,
    };
    let (pair_flag, label) = match &spec.key {
        Some(k) => ("--cert/--key", format!("{}/{}", spec.cert, k)),
        None => (flag, spec.cert.clone()),
    };
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let certified = CertifiedKey::from_der(chain, key, &provider)
        .map_err(|e| LoadError::new(pair_flag, &label, format!("certificate/key: {e}")))?;
    certified
        .keys_match()
        .map_err(|e| LoadError::new(pair_flag, &label, format!("certificate/key: {e}")))?;
    let leaf = &certified.cert[0];
    let not_after = ocsp::not_after(leaf).map_err(|e| LoadError::new(flag, &spec.cert, e))?;
    let served_names = if spec.names.is_empty() {
        super::sni::dns_names(leaf).map_err(|e| LoadError::new(flag, &spec.cert, e))?
    } else {
        spec.names.iter().map(|n| n.to_ascii_lowercase()).collect()
    };
    Ok(LoadedCert {
        file: spec.cert.clone(),
        flag,
        key: Arc::new(certified),
        names: spec.names.clone(),
        served_names,
        not_after,
        ocsp_file: None,
        ocsp_explicit: false,
        ocsp: OcspState::None,
    })
}

/// The error text without the file name the TLS layer puts first.
fn strip(e: &TlsError, file: &str) -> String {
    let text = e.to_string();
    text.strip_prefix(file)
        .map(|r| r.trim_start_matches(':').trim_start().to_owned())
        .unwrap_or(text)
}

fn ocsp_state(
    cert: &LoadedCert,
    files: &dyn FileSource,
    now: u64,
    mode: LoadMode,
) -> Result<OcspState, LoadError> {
    let from_file = ocsp_file_state(cert, files, now, mode)?;
    if matches!(from_file, OcspState::Stapled { .. }) {
        return Ok(from_file);
    }
    if let (Some(der), Some(issuer)) = (files.fetched_ocsp(&cert.file), cert.key.cert.get(1)) {
        if let Ok(validity) = ocsp::verify(&der, &cert.key.cert[0], issuer, now) {
            return Ok(OcspState::Stapled { der, validity });
        }
    }
    Ok(from_file)
}

fn ocsp_file_state(
    cert: &LoadedCert,
    files: &dyn FileSource,
    now: u64,
    mode: LoadMode,
) -> Result<OcspState, LoadError> {
    let Some(path) = &cert.ocsp_file else {
        return Ok(OcspState::None);
    };
    let flag = if cert.ocsp_explicit {
        "ocsp"
    } else {
        "--ocsp-dir"
    };
    let der = match files.read(path) {
        Ok(der) => der,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !cert.ocsp_explicit => {
            return Ok(OcspState::None)
        }
        Err(e) if mode == LoadMode::Start => return Err(LoadError::new(flag, path, e)),
        Err(e) => return Ok(OcspState::Rejected(format!("{path}: {e}"))),
    };
    let Some(issuer) = cert.key.cert.get(1) else {
        return Ok(OcspState::Rejected(ocsp::OcspError::NoIssuer.to_string()));
    };
    Ok(match ocsp::verify(&der, &cert.key.cert[0], issuer, now) {
        Ok(validity) => OcspState::Stapled { der, validity },
        Err(e) => OcspState::Rejected(e.to_string()),
    })
}

/// Builds the server configuration from `loaded` (staples attached) and
/// `config`'s TLS policy; reads the client CA file through `files`.
pub fn build(
    config: &Config,
    loaded: &Loaded,
    files: &dyn FileSource,
    resumption: ResumptionParts,
) -> Result<Arc<rustls::ServerConfig>, LoadError> {
    let t = &config.tls;
    let client_auth = match &t.client_ca {
        Some(file) => {
            let ca_pem = files
                .read(file)
                .map_err(|e| LoadError::new("--client-ca", file, e))?;
            // Checked here so that the error blames --client-ca.
            super::load_cert_chain(file, &ca_pem)
                .map_err(|e| LoadError::new("--client-ca", file, strip(&e, file)))?;
            Some(ClientAuth {
                file: file.clone(),
                ca_pem,
                required: t.client_auth_required,
            })
        }
        None => None,
    };
    let policy = TlsPolicy {
        tls12: t.tls12,
        tls13: t.tls13,
        alpn: t.alpn.iter().map(|p| p.as_bytes().to_vec()).collect(),
        cipher_suites: t.ciphers.clone(),
        groups: t.groups.clone(),
        prefer_server_ciphers: t.prefer_server_ciphers,
        record_layer: t.record_layer,
        client_auth,
        unknown_sni: if t.reject_unknown_sni {
            UnknownSni::Reject
        } else {
            UnknownSni::Default
        },
    };
    let provider = Arc::new(super::provider_for(&policy).map_err(policy_error)?);
    let mut keys = Vec::with_capacity(loaded.certs.len());
    let mut names = Vec::with_capacity(loaded.certs.len());
    for c in &loaded.certs {
        let staple = match &c.ocsp {
            OcspState::Stapled { der, .. } => Some(der.clone()),
            _ => None,
        };
        keys.push(Arc::new(CertifiedKey {
            ocsp: staple,
            ..(*c.key).clone()
        }));
        names.push(c.names.clone());
    }
    super::build_server_config_from_keys(keys, &names, &policy, resumption, provider).map_err(|e| {
        match e {
            TlsError::Pem(file, msg) if Some(&file) == t.client_ca.as_ref() => {
                LoadError::new("--client-ca", &file, msg)
            }
            TlsError::NoCertificate(file) if Some(&file) == t.client_ca.as_ref() => {
                LoadError::new("--client-ca", &file, "no certificate found")
            }
            other => policy_error(other),
        }
    })
}

fn policy_error(e: TlsError) -> LoadError {
    match e {
        TlsError::Policy(flag, msg) => LoadError {
            flag,
            path: String::new(),
            message: msg,
        },
        other => LoadError::new("--cert", "", other),
    }
}

/// The leaf certificate of each loaded certificate, for callers that
/// want to look at it (the `check` summary, the OCSP fetcher).
pub fn leaves(loaded: &Loaded) -> Vec<&CertificateDer<'static>> {
    loaded.certs.iter().map(|c| &c.key.cert[0]).collect()
}

/// The `ringterm check` summary: listeners, backends, routes, and each
/// certificate's names, expiry (days left at `now`) and OCSP state.
pub fn summary(config: &Config, loaded: &Loaded, now: u64) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    fn list<T: std::fmt::Display>(p: &[T]) -> String {
        p.iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
    let _ = writeln!(out, "listen: {}", list(&config.listen));
    if let Some(admin) = config.admin {
        let _ = writeln!(out, "admin: {admin}");
    }
    let _ = writeln!(out, "workers: {}", config.workers());
    let _ = writeln!(out, "backend: {}", list(&config.routes.default));
    for r in &config.routes.routes {
        let _ = writeln!(
            out,
            "route: {} -> {}",
            r.names.join(", "),
            list(&r.backends)
        );
    }
    let _ = writeln!(out, "certificates: {}", loaded.certs.len());
    for c in &loaded.certs {
        let days = (c.not_after as i64 - now as i64).div_euclid(86_400);
        let ocsp = match &c.ocsp {
            OcspState::None => "no OCSP".to_owned(),
            OcspState::Stapled { validity, .. } => {
                format!("OCSP good until {}", format_utc(validity.next_update))
            }
            OcspState::Rejected(why) => format!("OCSP NOT STAPLED: {why}"),
        };
        let names = if c.served_names.is_empty() {
            "(no DNS names)".to_owned()
        } else {
            c.served_names.join(", ")
        };
        let expiry = if c.not_after < now {
            "EXPIRED".to_owned()
        } else {
            format!("{days} days")
        };
        let _ = writeln!(
            out,
            "  {names}: expires {} ({expiry}), {ocsp} [{}]",
            format_utc(c.not_after),
            c.file
        );
    }
    if let Some(ca) = &config.tls.client_ca {
        let _ = writeln!(out, "client CA: {ca}");
    }
    out
}

/// `2026-12-04T17:00:00Z` for `t` seconds since the Unix epoch.
pub fn format_utc(t: u64) -> String {
    match der::DateTime::from_unix_duration(std::time::Duration::from_secs(t)) {
        Ok(d) => d.to_string(),
        Err(_) => format!("@{t}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Files in memory.
    #[derive(Default)]
    struct Mem(HashMap<String, Vec<u8>>);

    impl FileSource for Mem {
        fn read(&self, path: &str) -> std::io::Result<Vec<u8>> {
            self.0
                .get(path)
                .cloned()
                .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
        }

        fn pem_files(&self, dir: &str) -> std::io::Result<Vec<String>> {
            let mut v: Vec<String> = self
                .0
                .keys()
                .filter(|k| k.starts_with(&format!("{dir}/")) && k.ends_with(".pem"))
                .cloned()
                .collect();
            v.sort();
            Ok(v)
        }
    }

    fn combined(name: &str) -> Vec<u8> {
        let (cert, key) = crate::tls::generate_self_signed(&[name]).unwrap();
        format!("{key}{cert}").into_bytes()
    }

    fn config(settings: crate::config::Settings) -> Config {
        crate::config::Settings {
            listen: Some(vec!["127.0.0.1:0".into()]),
            backend: Some(vec!["127.0.0.1:9".into()]),
            ..settings
        }
        .validate(&[0])
        .unwrap()
    }

    fn combined_for(names: &[&str]) -> Vec<u8> {
        let (cert, key) = crate::tls::generate_self_signed(names).unwrap();
        format!("{key}{cert}").into_bytes()
    }

    #[test]
    fn acme_placeholder_state_files_and_static_precedence() {
        let acme = |cert_dirs: Option<Vec<String>>| {
            config(crate::config::Settings {
                cert_dirs,
                acme: Some(crate::acme::AcmeSetting::One(crate::acme::AcmeTable {
                    domains: Some(vec!["a.test".into(), "b.test".into()]),
                    state_dir: Some("/acme".into()),
                    accept_tos: Some(true),
                    ..Default::default()
                })),
                ..Default::default()
            })
        };
        // Nothing obtained yet, no static certificate: the placeholder.
        let mut mem = Mem::default();
        let c = acme(None);
        let l = load(&c, &mem, 0, LoadMode::Start, None).unwrap();
        assert_eq!(l.certs.len(), 1);
        assert_eq!(l.certs[0].file, PLACEHOLDER);
        assert_eq!(l.certs[0].served_names, ["a.test", "b.test"]);
        assert!(acme_state(c.acme.as_ref().unwrap(), &mem)[0].is_err());
        // The state file serves its names.
        mem.0.insert(
            "/acme/certs/a.test.pem".into(),
            combined_for(&["a.test", "b.test"]),
        );
        let l = load(&c, &mem, 0, LoadMode::Start, None).unwrap();
        assert_eq!(l.certs.len(), 1);
        assert_eq!(l.certs[0].file, "/acme/certs/a.test.pem");
        assert_eq!(l.certs[0].names, ["a.test", "b.test"]);
        let (names, _) = acme_state(c.acme.as_ref().unwrap(), &mem)[0]
            .clone()
            .unwrap();
        assert_eq!(names, ["a.test", "b.test"]);
        // A static certificate for b.test wins for b.test.
        mem.0.insert("/static/b.pem".into(), combined("b.test"));
        let c = acme(Some(vec!["/static".into()]));
        let l = load(&c, &mem, 0, LoadMode::Start, None).unwrap();
        assert_eq!(l.certs.len(), 2);
        assert_eq!(l.certs[0].file, "/static/b.pem");
        assert_eq!(l.certs[1].served_names, ["a.test"]);
        // A broken state file is skipped, never an error.
        mem.0
            .insert("/acme/certs/a.test.pem".into(), b"garbage".to_vec());
        let l = load(&c, &mem, 0, LoadMode::Start, None).unwrap();
        assert_eq!(l.certs.len(), 1);
        assert_eq!(l.skipped.len(), 1);
    }

    #[test]
    fn cert_dir_start_fails_reload_skips_and_keeps_previous() {
        let mut mem = Mem::default();
        for i in 0..3 {
            mem.0
                .insert(format!("/d/n{i}.pem"), combined(&format!("n{i}.test")));
        }
        let c = config(crate::config::Settings {
            cert_dirs: Some(vec!["/d".into()]),
            ..Default::default()
        });
        let first = load(&c, &mem, 0, LoadMode::Start, None).unwrap();
        assert_eq!(first.certs.len(), 3);
        assert_eq!(first.certs[1].served_names, vec!["n1.test".to_owned()]);
        assert_eq!(first.certs[1].flag, "--cert-dir");

        mem.0.insert("/d/n1.pem".into(), b"junk".to_vec());
        mem.0.insert("/d/zz.pem".into(), b"junk".to_vec());
        let err = load(&c, &mem, 0, LoadMode::Start, None).unwrap_err();
        assert_eq!((err.flag, err.path.as_str()), ("--cert-dir", "/d/n1.pem"));

        let again = load(&c, &mem, 0, LoadMode::Reload, Some(&first)).unwrap();
        assert_eq!(again.skipped.len(), 2, "{:?}", again.skipped);
        // n1 keeps its previous version; zz had none.
        let names: Vec<&str> = again
            .certs
            .iter()
            .map(|c| c.served_names[0].as_str())
            .collect();
        assert_eq!(names, ["n0.test", "n1.test", "n2.test"]);
        build(&c, &again, &mem, ResumptionParts::default()).unwrap();
    }

    #[test]
    fn combined_file_key_and_errors_name_the_flag() {
        let mut mem = Mem::default();
        mem.0.insert("/c.pem".into(), combined("a.test"));
        let (cert_only, key_only) = crate::tls::generate_self_signed(&["b.test"]).unwrap();
        mem.0.insert("/b.pem".into(), cert_only.into_bytes());
        mem.0.insert("/b.key".into(), key_only.clone().into_bytes());
        mem.0.insert("/ca-is-key.pem".into(), key_only.into_bytes());
        let c = config(crate::config::Settings {
            cert: Some(vec!["/c.pem".into(), "/b.pem".into()]),
            key: None,
            ..Default::default()
        });
        let err = load(&c, &mem, 0, LoadMode::Start, None).unwrap_err();
        assert_eq!((err.flag, err.path.as_str()), ("--cert", "/b.pem"));
        assert!(err.message.contains("no private key"), "{err}");

        let c = config(crate::config::Settings {
            cert: Some(vec!["/c.pem".into()]),
            client_ca: Some("/ca-is-key.pem".into()),
            ..Default::default()
        });
        let loaded = load(&c, &mem, 0, LoadMode::Start, None).unwrap();
        assert_eq!(loaded.certs[0].served_names, vec!["a.test".to_owned()]);
        let err = build(&c, &loaded, &mem, ResumptionParts::default()).unwrap_err();
        assert_eq!(err.flag, "--client-ca");
        assert_eq!(
            err.to_string(),
            "--client-ca /ca-is-key.pem: no certificate found"
        );
    }

    #[test]
    fn summary_lists_listeners_backends_and_certificates() {
        let mut mem = Mem::default();
        mem.0.insert("/d/a.pem".into(), combined("a.test"));
        let c = config(crate::config::Settings {
            cert_dirs: Some(vec!["/d".into()]),
            route: Some(vec![crate::config::RouteSetting::parse_flag(
                "api.test=127.0.0.1:7",
            )
            .unwrap()]),
            ..Default::default()
        });
        let loaded = load(&c, &mem, 0, LoadMode::Start, None).unwrap();
        let text = summary(&c, &loaded, 0);
        assert!(text.contains("listen: 127.0.0.1:0\n"), "{text}");
        assert!(text.contains("backend: 127.0.0.1:9\n"), "{text}");
        assert!(text.contains("route: api.test -> 127.0.0.1:7\n"), "{text}");
        assert!(text.contains("certificates: 1\n"), "{text}");
        assert!(text.contains("  a.test: expires "), "{text}");
        assert!(text.contains("no OCSP [/d/a.pem]"), "{text}");
        let later = summary(&c, &loaded, loaded.certs[0].not_after + 1);
        assert!(later.contains("(EXPIRED)"), "{later}");
    }

    #[test]
    fn ocsp_files_missing_from_the_dir_are_not_errors() {
        let mut mem = Mem::default();
        mem.0.insert("/c.pem".into(), combined("a.test"));
        mem.0.insert("/o/c.pem.ocsp".into(), b"not DER".to_vec());
        let c = config(crate::config::Settings {
            cert: Some(vec!["/c.pem".into()]),
            ocsp_dir: Some("/elsewhere".into()),
            ..Default::default()
        });
        let loaded = load(&c, &mem, 0, LoadMode::Start, None).unwrap();
        assert_eq!(loaded.certs[0].ocsp, OcspState::None);
        assert_eq!(
            loaded.certs[0].ocsp_file.as_deref(),
            Some("/elsewhere/c.pem.ocsp")
        );
        let c = config(crate::config::Settings {
            cert: Some(vec!["/c.pem".into()]),
            ocsp_dir: Some("/o".into()),
            ..Default::default()
        });
        let loaded = load(&c, &mem, 0, LoadMode::Start, None).unwrap();
        // Self-signed: no issuer in the chain, so nothing can be checked.
        assert!(matches!(loaded.certs[0].ocsp, OcspState::Rejected(_)));
        assert_eq!(ocsp_warnings(None, &loaded).len(), 1);
        assert!(format_utc(0).starts_with("1970-01-01T00:00:00"));
    }
}
