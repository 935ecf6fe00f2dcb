//! Built-in ACME (RFC 8555) with the TLS-ALPN-01 challenge (RFC 8737): its
//! settings (flags and the `[acme]`/`[[acme]]` TOML tables, in one place),
//! their validation, the state folder's layout and the renewal schedule.
//!
//! Sans-IO: nothing here reads a file, opens a socket or reads the clock.
//! The ACME client itself runs on a thread of its own (`rt::acme`); the
//! workers answer challenges through [`crate::tls::acme`].

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// Let's Encrypt's production directory (the default).
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory (untrusted certificates, high rate
/// limits): try a setup against it first.
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";
/// Default state folder.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/ringterm/acme";
/// Default: renew this many days before expiry.
pub const DEFAULT_RENEW_BEFORE_DAYS: f64 = 30.0;
/// Default first retry delay after a failed order, seconds; it doubles
/// with each failure in a row up to [`MAX_RETRY_S`]. Five minutes keeps a
/// failing name under Let's Encrypt's five failed validations per hour.
pub const DEFAULT_RETRY_MIN_S: u64 = 300;
/// Longest retry delay, seconds.
pub const MAX_RETRY_S: u64 = 4 * 3600;
/// Renewal jitter: up to a tenth of the renew-before period, at most an
/// hour, so a fleet does not renew in lockstep.
pub const MAX_JITTER_S: u64 = 3600;

/// An [`AcmeConfig`] accessor of an account setting: its value (the
/// declared default when none was set), or `Option` when it has none.
macro_rules! acme_accessor {
    ($(#[doc = $doc:literal])* $name:ident, $ty:ty, [$default:expr]) => {
        $(#[doc = $doc])*
        pub fn $name(&self) -> $ty {
            self.account
                .$name
                .clone()
                .unwrap_or_else(|| $crate::options::default_of::<$ty, _>($default))
        }
    };
    ($(#[doc = $doc:literal])* $name:ident, $ty:ty, []) => {
        $(#[doc = $doc])*
        pub fn $name(&self) -> Option<&$ty> {
            self.account.$name.as_ref()
        }
    };
}

/// Declares the ACME options once each: the `--acme-*` flag
/// ([`AcmeArgs`]) and the key of the `[acme]`/`[[acme]]` tables
/// ([`AcmeTable`]) come from the same line, with its type, help and
/// marks (`+ path`: a file or folder, taken from the config file's folder
/// when relative). The checks are in [`validate`].
macro_rules! acme_options {
    ($(
        $(#[doc = $doc:literal])*
        $(#[arg($($arg:tt)*)])*
        $name:ident: $ty:ty => $flag:literal $(+ $marks:ident)*
        $(, default $default:expr)?
        $(, check $pred:expr => $reason:literal)?
        ;
    )*) => {
        /// The ACME flags, flattened into the command line (through
        /// [`crate::config::Settings`]): one per [`AcmeTable`] key.
        #[derive(Debug, Clone, Default, PartialEq, clap::Args)]
        pub struct AcmeArgs {
            $(
                $(#[doc = $doc])*
                $(#[arg($($arg)*)])*
                #[arg(id = $flag, long = $flag, global = true)]
                pub $name: Option<$ty>,
            )*
        }

        /// One ACME table: a certificate's names, and the account settings
        /// (shared: every table that sets one must set the same value). Its
        /// keys are the [`AcmeArgs`] flags without `--acme-` (`domains` for
        /// `--acme-domain`).
        #[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
        #[serde(deny_unknown_fields, rename_all = "kebab-case")]
        pub struct AcmeTable {
            $(
                $(#[doc = $doc])*
                #[doc = concat!("\n\nFlag: `--", $flag, "`.")]
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub $name: Option<$ty>,
            )*
        }

        impl AcmeArgs {
            /// The flags as one settings table, when any ACME flag is set.
            pub fn settings(&self) -> Option<AcmeSetting> {
                let t = AcmeTable {
                    $( $name: self.$name.clone(), )*
                };
                (t != AcmeTable::default()).then_some(AcmeSetting::One(t))
            }
        }

        /// The `[[acme]]` tables, for the account settings they share.
        struct Shared<'a>(&'a [AcmeTable]);

        #[allow(dead_code)] // `domains` is per table, read by `validate` itself
        impl Shared<'_> {
            $(
                /// The value every table that sets it agrees on (an error
                /// names the flag when two differ), its declared default
                /// when none sets it, checked.
                fn $name(&self) -> Result<Option<$ty>, ConfigError> {
                    let v = shared(self.0, concat!("--", $flag), |t| t.$name.clone())?;
                    $( let v = v.or_else(|| Some($crate::options::default_of::<$ty, _>($default))); )?
                    $(
                        if let Some(x) = &v {
                            if !$crate::options::holds(x, $pred) {
                                return Err($crate::options::check_failed(
                                    concat!("--", $flag),
                                    x,
                                    $reason,
                                ));
                            }
                        }
                    )?
                    Ok(v)
                }
            )*
        }

        impl AcmeTable {
            /// The account settings (the options declared `+ shared`) of
            /// `tables`, resolved: agreed on, defaults filled in, checked.
            fn resolve(tables: &[AcmeTable]) -> Result<AcmeTable, ConfigError> {
                let shared = Shared(tables);
                let mut t = AcmeTable::default();
                $(
                    $crate::option_if!([$($marks)*] shared {
                        t.$name = shared.$name()?;
                    });
                )*
                Ok(t)
            }
        }

        impl AcmeConfig {
            $(
                $crate::option_if!([$($marks)*] shared {
                    acme_accessor!($(#[doc = $doc])* $name, $ty, [$($default)?]);
                });
            )*
        }

        impl AcmeTable {
            /// Every value `over` sets replaces this table's.
            fn set_over(&mut self, over: &AcmeTable) {
                $(
                    if over.$name.is_some() {
                        self.$name = over.$name.clone();
                    }
                )*
            }

            /// Calls `f` on the paths of the options marked `+ path`.
            fn each_path(&mut self, f: &mut dyn FnMut(&mut String)) {
                $(
                    $crate::option_if!([$($marks)*] path {
                        $crate::options::Paths::each_path(&mut self.$name, f);
                    });
                )*
            }
        }
    };
}

acme_options! {
    /// Obtain and renew a certificate for NAME with ACME (TLS-ALPN-01 on
    /// the TLS port); repeatable: one certificate for all the names.
    #[arg(value_name = "NAME")]
    domains: Vec<String> => "acme-domain";
    /// ACME directory URL (default: Let's Encrypt production; staging is
    /// https://acme-staging-v02.api.letsencrypt.org/directory).
    #[arg(value_name = "URL")]
    directory: String => "acme-directory" + shared,
        default LETS_ENCRYPT,
        check |v: &String| v.starts_with("https://") => "must be an https:// URL";
    /// Contact e-mail for the ACME account.
    #[arg(value_name = "EMAIL")]
    email: String => "acme-email" + shared,
        check |e: &String| e.contains('@') && !e.contains(char::is_whitespace) && !e.contains(',')
            => "is not an e-mail address";
    /// Folder for the ACME account key, certificates and keys (created
    /// 0700; default /var/lib/ringterm/acme).
    #[arg(value_name = "DIR")]
    state_dir: String => "acme-state-dir" + path + shared,
        default DEFAULT_STATE_DIR,
        check |v: &String| !v.trim().is_empty() => "must be a folder";
    /// PEM CA certificate to trust for the ACME directory's HTTPS (a
    /// private or test CA).
    #[arg(value_name = "PEM")]
    ca_file: String => "acme-ca-file" + path + shared;
    /// Renew this many days before expiry (default 30; fractions allowed).
    #[arg(value_name = "DAYS")]
    renew_before: f64 => "acme-renew-before" + shared,
        default DEFAULT_RENEW_BEFORE_DAYS,
        check |d: &f64| d.is_finite() && *d > 0.0 && *d <= 365.0
            => "must be more than 0 and at most 365 days";
    /// First retry delay after a failed order, seconds (default 300;
    /// doubles with each failure in a row, up to 4 hours).
    #[arg(value_name = "SECS")]
    retry_min: u64 => "acme-retry-min" + shared,
        default DEFAULT_RETRY_MIN_S,
        check |v: &u64| (1..=MAX_RETRY_S).contains(v) => "must be from 1 to 14400 seconds";
    /// Accept the ACME CA's terms of service (required with ACME).
    #[arg(num_args = 0, default_missing_value = "true")]
    accept_tos: bool => "acme-accept-tos" + shared;
}

impl Eq for AcmeArgs {}
impl Eq for AcmeTable {}

/// `[acme]` (one table) or `[[acme]]` (one table per certificate).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum AcmeSetting {
    /// `[acme]`.
    One(AcmeTable),
    /// `[[acme]]`.
    Many(Vec<AcmeTable>),
}

impl Eq for AcmeSetting {}

impl AcmeSetting {
    fn into_vec(self) -> Vec<AcmeTable> {
        match self {
            Self::One(t) => vec![t],
            Self::Many(v) => v,
        }
    }
}

impl crate::options::Paths for AcmeSetting {
    fn each_path(&mut self, f: &mut dyn FnMut(&mut String)) {
        let tables: &mut [AcmeTable] = match self {
            Self::One(t) => std::slice::from_mut(t),
            Self::Many(v) => v,
        };
        for t in tables {
            t.each_path(f);
        }
    }
}

/// `over` (the flags) on top of `base` (the file): flag names replace the
/// file's certificates (one certificate for all of them); each account
/// setting a flag sets replaces the file's.
pub fn merge(base: Option<AcmeSetting>, over: Option<AcmeSetting>) -> Option<AcmeSetting> {
    let (base, over) = match (base, over) {
        (b, None) => return b,
        (None, o) => return o,
        (Some(b), Some(o)) => (b.into_vec(), o.into_vec()),
    };
    let mut tables = base;
    for mut o in over {
        if let Some(names) = o.domains.take().filter(|d| !d.is_empty()) {
            tables = vec![AcmeTable {
                domains: Some(names),
                ..tables.into_iter().next().unwrap_or_default()
            }];
        }
        for t in &mut tables {
            t.set_over(&o);
        }
    }
    Some(AcmeSetting::Many(tables))
}

/// The validated ACME configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeConfig {
    /// One entry per certificate: its names (lowercase, the first names
    /// its state file).
    pub certs: Vec<Vec<String>>,
    /// The account settings every table agreed on, defaults filled in and
    /// checked; read through the accessors (`directory()`, `email()`, …).
    account: AcmeTable,
}

fn invalid(flag: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Acme {
        flag,
        message: message.into(),
    }
}

/// One account setting from every table: the tables that set it must
/// agree.
fn shared<T: Clone + PartialEq>(
    tables: &[AcmeTable],
    flag: &'static str,
    get: impl Fn(&AcmeTable) -> Option<T>,
) -> Result<Option<T>, ConfigError> {
    let mut out: Option<T> = None;
    for v in tables.iter().filter_map(get) {
        match &out {
            Some(o) if *o != v => {
                return Err(invalid(
                    flag,
                    "set differently in two [[acme]] tables (it is shared)",
                ))
            }
            _ => out = Some(v),
        }
    }
    Ok(out)
}

/// Checks the ACME settings; `None` when ACME is off.
pub fn validate(setting: Option<AcmeSetting>) -> Result<Option<AcmeConfig>, ConfigError> {
    let Some(setting) = setting else {
        return Ok(None);
    };
    let tables = setting.into_vec();
    if tables.is_empty() {
        return Ok(None);
    }
    let mut certs = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for t in &tables {
        let domains = t.domains.as_deref().unwrap_or_default();
        if domains.is_empty() {
            return Err(invalid(
                "--acme-domain",
                "ACME settings without a name: give --acme-domain NAME (domains = [...] in [acme])",
            ));
        }
        let mut names = Vec::new();
        for d in domains {
            let name = d.trim().trim_end_matches('.').to_ascii_lowercase();
            if name.starts_with("*.") {
                return Err(invalid(
                    "--acme-domain",
                    format!("{d:?}: TLS-ALPN-01 cannot validate wildcard names"),
                ));
            }
            if rustls::pki_types::DnsName::try_from(name.as_str()).is_err()
                || name.parse::<std::net::IpAddr>().is_ok()
                || !name.contains('.')
            {
                return Err(invalid(
                    "--acme-domain",
                    format!("{d:?} is not a fully qualified DNS name"),
                ));
            }
            if !seen.insert(name.clone()) {
                return Err(invalid(
                    "--acme-domain",
                    format!("{name} is listed twice (each name goes in one certificate)"),
                ));
            }
            names.push(name);
        }
        certs.push(names);
    }
    let account = AcmeTable::resolve(&tables)?;
    let acme = AcmeConfig { certs, account };
    if acme.accept_tos() != Some(&true) {
        return Err(invalid(
            "--acme-accept-tos",
            format!(
                "ACME needs the CA's terms of service accepted: read them (the termsOfService link of {}) and pass --acme-accept-tos (accept-tos = true in [acme])",
                acme.directory()
            ),
        ));
    }
    Ok(Some(acme))
}

impl AcmeConfig {
    /// Renew this many seconds before expiry.
    pub fn renew_before_s(&self) -> u64 {
        (self.renew_before() * 86_400.0).round().max(1.0) as u64
    }

    /// First retry delay after a failure, seconds.
    pub fn retry_min_s(&self) -> u64 {
        self.retry_min()
    }

    /// The state file (combined PEM: key, then chain) of the certificate
    /// for `names`: `STATE/certs/FIRST-NAME.pem`.
    pub fn cert_file(&self, names: &[String]) -> String {
        let first = names.first().map(String::as_str).unwrap_or("_");
        std::path::Path::new(&self.state_dir())
            .join("certs")
            .join(format!("{first}.pem"))
            .display()
            .to_string()
    }

    /// The folder of the certificate state files.
    pub fn certs_dir(&self) -> String {
        std::path::Path::new(&self.state_dir())
            .join("certs")
            .display()
            .to_string()
    }

    /// The account credentials file for this directory URL:
    /// `STATE/account-HASH.json` (another directory gets another account).
    pub fn account_file(&self) -> String {
        let digest =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, self.directory().as_bytes());
        let hash: String = digest.as_ref()[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        std::path::Path::new(&self.state_dir())
            .join(format!("account-{hash}.json"))
            .display()
            .to_string()
    }

    /// When to renew a certificate valid until `not_after` (seconds since
    /// the Unix epoch) for `names`: `renew_before` ahead of it, minus a
    /// jitter of up to a tenth of that (at most an hour) that is fixed for
    /// one certificate (a hash of its names and expiry), so that the
    /// schedule does not move between looks.
    pub fn renew_at(&self, names: &[String], not_after: u64) -> u64 {
        let max_jitter = (self.renew_before_s() / 10).min(MAX_JITTER_S);
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in names
            .iter()
            .flat_map(|n| n.bytes().chain([0]))
            .chain(not_after.to_le_bytes())
        {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        let jitter = if max_jitter == 0 {
            0
        } else {
            h % (max_jitter + 1)
        };
        not_after.saturating_sub(self.renew_before_s() + jitter)
    }

    /// The delay before retrying after `failures` failures in a row:
    /// `retry_min`, doubling, at most [`MAX_RETRY_S`].
    pub fn retry_delay(&self, failures: u32) -> u64 {
        let shift = failures.saturating_sub(1).min(20);
        self.retry_min_s()
            .saturating_mul(1u64 << shift)
            .min(MAX_RETRY_S.max(self.retry_min_s()))
    }
}

/// `ringterm check`'s ACME lines: the settings, and for each certificate
/// what the state folder holds (`state`: the names and `notAfter` of the
/// state file's certificate, or why there is none).
pub fn summary(
    acme: &AcmeConfig,
    state: &[Result<(Vec<String>, u64), String>],
    now: u64,
) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "acme: directory {}, state dir {}, renew {} days before expiry{}",
        acme.directory(),
        acme.state_dir(),
        acme.renew_before_s() as f64 / 86_400.0,
        acme.email()
            .as_ref()
            .map(|e| format!(", contact {e}"))
            .unwrap_or_default()
    );
    for (names, st) in acme.certs.iter().zip(state) {
        let what = match st {
            Ok((_, not_after)) => {
                let renew = acme.renew_at(names, *not_after);
                format!(
                    "expires {}, renewal from {}{}",
                    crate::tls::loader::format_utc(*not_after),
                    crate::tls::loader::format_utc(renew),
                    if renew <= now { " (due now)" } else { "" }
                )
            }
            Err(why) => format!("not obtained yet ({why})"),
        };
        let _ = writeln!(
            out,
            "  acme {}: {what} [{}]",
            names.join(", "),
            acme.cert_file(names)
        );
    }
    out
}

/// The ACME figures: orders by result and the next renewal time, per
/// certificate. Written by the ACME thread, read by the admin thread.
#[derive(Debug, Default)]
pub struct AcmeMetrics {
    orders_ok: AtomicU64,
    orders_failed: AtomicU64,
    /// Per certificate (its first name): when the next order is due,
    /// seconds since the Unix epoch.
    next: ArcSwap<Vec<(String, u64)>>,
}

/// The one instance (all zero while ACME is off: nothing is rendered).
pub fn metrics() -> &'static AcmeMetrics {
    static GLOBAL: OnceLock<AcmeMetrics> = OnceLock::new();
    GLOBAL.get_or_init(AcmeMetrics::default)
}

impl AcmeMetrics {
    /// Counts a finished order (a certificate obtained) or a failed one.
    pub fn order_done(&self, ok: bool) {
        if ok {
            self.orders_ok.fetch_add(1, Relaxed);
        } else {
            self.orders_failed.fetch_add(1, Relaxed);
        }
    }

    /// Orders so far: (succeeded, failed).
    pub fn orders(&self) -> (u64, u64) {
        (
            self.orders_ok.load(Relaxed),
            self.orders_failed.load(Relaxed),
        )
    }

    /// Sets when each certificate's next order is due.
    pub fn set_next(&self, next: Vec<(String, u64)>) {
        self.next.store(Arc::new(next));
    }

    /// Appends the Prometheus text (nothing until ACME published a
    /// schedule).
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let next = self.next.load();
        if next.is_empty() {
            return;
        }
        let (ok, failed) = self.orders();
        let _ = writeln!(
            out,
            "# HELP ringterm_acme_orders_total ACME orders, by result.\n# TYPE ringterm_acme_orders_total counter\nringterm_acme_orders_total{{result=\"success\"}} {ok}\nringterm_acme_orders_total{{result=\"failure\"}} {failed}"
        );
        out.push_str("# HELP ringterm_acme_next_renewal_timestamp_seconds When the next ACME order (renewal, or retry after a failure) is due, by certificate (its first name).\n# TYPE ringterm_acme_next_renewal_timestamp_seconds gauge\n");
        for (name, at) in next.iter() {
            let _ = writeln!(
                out,
                "ringterm_acme_next_renewal_timestamp_seconds{{name=\"{name}\"}} {at}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(domains: &[&str]) -> AcmeTable {
        AcmeTable {
            domains: Some(domains.iter().map(|s| s.to_string()).collect()),
            accept_tos: Some(true),
            ..AcmeTable::default()
        }
    }

    #[test]
    fn defaults_and_names() {
        let c = validate(Some(AcmeSetting::One(table(&[
            "A.example.com",
            "b.example.com.",
        ]))))
        .unwrap()
        .unwrap();
        assert_eq!(c.certs, [vec!["a.example.com", "b.example.com"]]);
        assert_eq!(c.directory(), LETS_ENCRYPT);
        assert_eq!(c.state_dir(), DEFAULT_STATE_DIR);
        assert_eq!(c.renew_before_s(), 30 * 86_400);
        assert_eq!(
            c.cert_file(&c.certs[0]),
            "/var/lib/ringterm/acme/certs/a.example.com.pem"
        );
        assert!(c
            .account_file()
            .starts_with("/var/lib/ringterm/acme/account-"));
    }

    #[test]
    fn terms_must_be_accepted() {
        let mut t = table(&["a.example.com"]);
        t.accept_tos = None;
        let e = validate(Some(AcmeSetting::One(t))).unwrap_err();
        assert_eq!(e.flag(), Some("--acme-accept-tos"));
        assert!(
            e.to_string().starts_with("--acme-accept-tos: ACME needs"),
            "{e}"
        );
        assert!(!e.to_string().contains('\n'));
    }

    #[test]
    fn bad_values_name_their_flag() {
        let flag = |t: AcmeTable| validate(Some(AcmeSetting::One(t))).unwrap_err().flag();
        assert_eq!(flag(table(&[])), Some("--acme-domain"));
        assert_eq!(flag(table(&["*.example.com"])), Some("--acme-domain"));
        assert_eq!(flag(table(&["localhost"])), Some("--acme-domain"));
        assert_eq!(flag(table(&["a.test", "A.test"])), Some("--acme-domain"));
        let mut t = table(&["a.test"]);
        t.directory = Some("http://x/".into());
        assert_eq!(flag(t), Some("--acme-directory"));
        let mut t = table(&["a.test"]);
        t.renew_before = Some(0.0);
        assert_eq!(flag(t), Some("--acme-renew-before"));
        let two = AcmeSetting::Many(vec![
            AcmeTable {
                email: Some("a@x.test".into()),
                ..table(&["a.test"])
            },
            AcmeTable {
                email: Some("b@x.test".into()),
                ..table(&["b.test"])
            },
        ]);
        assert_eq!(
            validate(Some(two)).unwrap_err().flag(),
            Some("--acme-email")
        );
    }

    #[test]
    fn flags_replace_the_files_names_and_settings() {
        let file = AcmeSetting::Many(vec![
            AcmeTable {
                email: Some("a@x.test".into()),
                ..table(&["a.test"])
            },
            table(&["b.test"]),
        ]);
        let flags = AcmeSetting::One(AcmeTable {
            renew_before: Some(10.0),
            ..AcmeTable::default()
        });
        let c = validate(merge(Some(file.clone()), Some(flags)))
            .unwrap()
            .unwrap();
        assert_eq!(c.certs.len(), 2);
        assert_eq!(c.renew_before_s(), 10 * 86_400);
        assert_eq!(c.email().map(String::as_str), Some("a@x.test"));
        let flags = AcmeSetting::One(AcmeTable {
            domains: Some(vec!["c.test".into()]),
            ..AcmeTable::default()
        });
        let c = validate(merge(Some(file), Some(flags))).unwrap().unwrap();
        assert_eq!(c.certs, [vec!["c.test"]]);
    }

    #[test]
    fn toml_tables_relative_paths_and_blame() {
        use crate::config::{Layered, Settings};
        let base = "listen = [\"127.0.0.1:1\"]\nbackend = \"127.0.0.1:2\"\n";
        let one = Settings::from_toml(
            "/etc/r/r.toml",
            &format!("{base}[acme]\ndomains = [\"a.test\"]\nstate-dir = \"acme\"\naccept-tos = true\nrenew-before = 10\n"),
        )
        .unwrap();
        let c = one.validate(&[0]).unwrap().acme.unwrap();
        assert_eq!(c.certs, [vec!["a.test"]]);
        assert_eq!(c.state_dir(), "/etc/r/acme");
        assert_eq!(c.renew_before_s(), 10 * 86_400);
        let many = Settings::from_toml(
            "r.toml",
            &format!("{base}[[acme]]\ndomains = [\"a.test\"]\naccept-tos = true\n[[acme]]\ndomains = [\"b.test\", \"c.test\"]\n"),
        )
        .unwrap();
        let c = many.validate(&[0]).unwrap().acme.unwrap();
        assert_eq!(c.certs.len(), 2);
        // An error about a value the file set names the file and key.
        let file =
            Settings::from_toml("r.toml", &format!("{base}[acme]\ndomains = [\"a.test\"]\n"))
                .unwrap();
        let layered = Layered::new(Some(("r.toml".into(), file)), Settings::default());
        let e = layered.validate(&[0]).unwrap_err();
        assert!(e.starts_with("r.toml: acme: ACME needs"), "{e}");
        let bad = Settings::from_toml("r.toml", &format!("{base}[acme]\ndomain = [\"a\"]\n"));
        assert!(bad.is_err());
    }

    #[test]
    fn renewal_schedule_and_backoff() {
        let c = validate(Some(AcmeSetting::One(table(&["a.test"]))))
            .unwrap()
            .unwrap();
        let names = &c.certs[0];
        let not_after = 1_900_000_000;
        let at = c.renew_at(names, not_after);
        let earliest = not_after - 30 * 86_400 - 3600;
        assert!((earliest..=not_after - 30 * 86_400).contains(&at), "{at}");
        assert_eq!(at, c.renew_at(names, not_after));
        assert_eq!(c.retry_delay(1), 300);
        assert_eq!(c.retry_delay(2), 600);
        assert_eq!(c.retry_delay(30), MAX_RETRY_S);
    }
}
