//! Certificates, OCSP staples and TLS policy at start, on SIGHUP and on the
//! OCSP timer: the IO side of [`crate::tls::loader`] (it reads the disk and
//! the clock), and the swap of the `ServerConfig` every new connection takes.
//!
//! A reload re-reads the configuration through the closure given at start,
//! loads everything again and swaps the new `ServerConfig` in; on any error
//! the old one stays and the error is returned (and counted). The OCSP timer
//! runs on a thread of its own, never on a worker: every `ocsp-refresh`
//! seconds (and when a stapled response reaches its `nextUpdate`) it re-reads
//! the response files and restaples when anything changed.
//!
//! The state sits behind a `Mutex` taken only by the signal thread and the
//! timer thread; workers only load the `ArcSwap`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::ServerConfig;

use crate::config::Config;
use crate::metrics::process;
use crate::tls::loader::{self, FileSource, LoadMode, Loaded};
use crate::tls::ResumptionParts;

/// Files from the disk, with optional in-memory files over them (the demo's
/// generated certificate), and the OCSP responses `--ocsp-fetch` fetched.
#[derive(Debug, Default, Clone)]
pub struct DiskFiles {
    /// Path → contents served instead of the disk.
    pub overlay: HashMap<String, Vec<u8>>,
    /// Certificate file → fetched OCSP response.
    pub fetched: super::ocsp_fetch::Fetched,
}

impl FileSource for DiskFiles {
    fn read(&self, path: &str) -> std::io::Result<Vec<u8>> {
        match self.overlay.get(path) {
            Some(bytes) => Ok(bytes.clone()),
            None => std::fs::read(path),
        }
    }

    fn pem_files(&self, dir: &str) -> std::io::Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "pem") && path.is_file() {
                out.push(path.display().to_string());
            }
        }
        out.sort();
        Ok(out)
    }

    fn fetched_ocsp(&self, cert_file: &str) -> Option<Vec<u8>> {
        self.fetched.load().get(cert_file).cloned()
    }
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Re-reads the configuration (the config file and the flags) on reload.
pub type ConfigSource = Box<dyn Fn() -> Result<Config, String> + Send + Sync>;

struct State {
    config: Config,
    loaded: Loaded,
}

/// Holds the current TLS configuration and rebuilds it.
pub struct TlsReloader {
    state: Mutex<State>,
    tls: Arc<ArcSwap<ServerConfig>>,
    files: DiskFiles,
    resumption: ResumptionParts,
    config_source: Option<ConfigSource>,
}

/// What a successful reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// Certificates now served.
    pub certificates: usize,
    /// OCSP responses now stapled.
    pub stapled: usize,
    /// Certificate files skipped (`PATH: reason`).
    pub skipped: Vec<String>,
}

impl TlsReloader {
    /// Loads everything for `config` (every bad file is an error naming
    /// it) and builds the first `ServerConfig`. `config_source` re-reads
    /// the configuration on reload; without it a reload re-reads the files
    /// of `config`.
    pub fn new(
        config: &Config,
        files: DiskFiles,
        resumption: ResumptionParts,
        config_source: Option<ConfigSource>,
    ) -> Result<Self, loader::LoadError> {
        let loaded = loader::load(config, &files, now_unix(), LoadMode::Start, None)?;
        let server = loader::build(config, &loaded, &files, resumption.clone())?;
        warn_ocsp(None, &loaded);
        process::global().set_certs(process::cert_gauges(&loaded));
        Ok(Self {
            state: Mutex::new(State {
                config: config.clone(),
                loaded,
            }),
            tls: Arc::new(ArcSwap::new(server)),
            files,
            resumption,
            config_source,
        })
    }

    /// The configuration each new connection takes.
    pub fn tls(&self) -> Arc<ArcSwap<ServerConfig>> {
        self.tls.clone()
    }

    /// The certificates as last loaded.
    pub fn loaded(&self) -> Loaded {
        self.lock().loaded.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (every
        // update is a whole-value store).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// SIGHUP: re-reads the configuration, certificates, OCSP responses and
    /// client CA, and swaps the new `ServerConfig` in. On error the old one
    /// stays. Counted in `ringterm_reloads_total{result}`; skipped
    /// certificate files are warned about and counted.
    pub fn reload(&self) -> Result<ReloadReport, String> {
        let result = self.try_reload(true);
        process::global().reload_done(result.is_ok(), now_unix());
        result
    }

    /// Loads the certificates again with the configuration in force (not
    /// re-read) and swaps the result in, as a reload does: the ACME thread
    /// calls it once a new certificate is in the state folder. Not counted
    /// as a reload.
    pub fn reload_certificates(&self) -> Result<ReloadReport, String> {
        self.try_reload(false)
    }

    fn try_reload(&self, reread_config: bool) -> Result<ReloadReport, String> {
        let mut state = self.lock();
        let config = match &self.config_source {
            Some(source) if reread_config => source()?,
            _ => state.config.clone(),
        };
        let loaded = loader::load(
            &config,
            &self.files,
            now_unix(),
            LoadMode::Reload,
            Some(&state.loaded),
        )
        .map_err(|e| e.to_string())?;
        let server = loader::build(&config, &loaded, &self.files, self.resumption.clone())
            .map_err(|e| e.to_string())?;
        if config.acme != state.config.acme {
            tracing::warn!("reload: the ACME settings changed; the ACME client keeps the old ones until a restart");
        }
        for skipped in &loaded.skipped {
            tracing::warn!("reload: skipped certificate file {skipped} (its previous version, if any, keeps serving)");
        }
        process::global().files_skipped(loaded.skipped.len() as u64);
        warn_ocsp(Some(&state.loaded), &loaded);
        process::global().set_certs(process::cert_gauges(&loaded));
        self.tls.store(server);
        let report = ReloadReport {
            certificates: loaded.certs.len(),
            stapled: stapled(&loaded),
            skipped: loaded.skipped.clone(),
        };
        *state = State { config, loaded };
        Ok(report)
    }

    /// The OCSP timer's step: re-reads and re-checks every response at the
    /// current time; rebuilds and swaps only when a staple changed. Returns
    /// whether it did.
    pub fn refresh_ocsp(&self) -> bool {
        let mut state = self.lock();
        let refreshed = loader::refresh_ocsp(&state.loaded, &self.files, now_unix());
        let changed = refreshed
            .certs
            .iter()
            .zip(&state.loaded.certs)
            .any(|(a, b)| a.ocsp != b.ocsp);
        if !changed {
            return false;
        }
        match loader::build(
            &state.config,
            &refreshed,
            &self.files,
            self.resumption.clone(),
        ) {
            Ok(server) => {
                warn_ocsp(Some(&state.loaded), &refreshed);
                process::global().set_certs(process::cert_gauges(&refreshed));
                self.tls.store(server);
                tracing::info!(stapled = stapled(&refreshed), "OCSP responses refreshed");
                state.loaded = refreshed;
                true
            }
            Err(e) => {
                tracing::warn!("OCSP refresh: rebuilding the TLS configuration failed: {e}");
                false
            }
        }
    }

    /// The OCSP refresh period in force, seconds.
    pub fn refresh_period(&self) -> u64 {
        self.lock().config.ocsp_refresh_s
    }

    /// How long the timer sleeps: the refresh period, or less when a
    /// stapled response reaches its `nextUpdate` sooner.
    fn next_wait(&self) -> Duration {
        let state = self.lock();
        let period = state.config.ocsp_refresh_s;
        let now = now_unix();
        let soonest = state
            .loaded
            .certs
            .iter()
            .filter_map(|c| match &c.ocsp {
                loader::OcspState::Stapled { validity, .. } => {
                    Some(validity.next_update.saturating_sub(now))
                }
                _ => None,
            })
            .min()
            .unwrap_or(period);
        Duration::from_secs(period.min(soonest).max(1))
    }

    /// Starts the OCSP timer thread (`ringterm-ocsp`).
    pub fn spawn_ocsp_timer(self: &Arc<Self>) -> std::io::Result<()> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("ringterm-ocsp".into())
            .spawn(move || loop {
                std::thread::sleep(me.next_wait());
                me.refresh_ocsp();
            })
            .map(|_| ())
    }
}

fn stapled(loaded: &Loaded) -> usize {
    loaded
        .certs
        .iter()
        .filter(|c| matches!(c.ocsp, loader::OcspState::Stapled { .. }))
        .count()
}

/// Logs each newly rejected OCSP response once, and counts it.
fn warn_ocsp(previous: Option<&Loaded>, now: &Loaded) {
    let warnings = loader::ocsp_warnings(previous, now);
    process::global().ocsp_rejected(warnings.len() as u64);
    for w in warnings {
        tracing::warn!("{w}");
    }
}

/// Why `ringterm check` failed.
#[derive(Debug)]
pub enum CheckError {
    /// A certificate, key, OCSP response or CA (names its flag and file).
    Load(loader::LoadError),
    /// Anything else, already one line naming its flag.
    Other(String),
}

/// `ringterm check`: loads every certificate, key, certificate folder, OCSP
/// response, client CA and ticket key file of `config`, builds the TLS
/// configuration, resolves `--user`/`--group` and backend host names, and
/// checks that each listen and admin address can be bound
/// ([`super::listener::check_bind`]).
/// Returns the summary ([`loader::summary`]).
pub fn check(config: &Config) -> Result<String, CheckError> {
    let files = DiskFiles::default();
    let now = now_unix();
    let loaded =
        loader::load(config, &files, now, LoadMode::Start, None).map_err(CheckError::Load)?;
    loader::build(config, &loaded, &files, ResumptionParts::default()).map_err(CheckError::Load)?;
    if !config.ticket_key_files.is_empty() {
        super::ticket_keys::load_keys(&config.ticket_key_files).map_err(CheckError::Other)?;
    }
    super::privdrop::resolve(config.user.as_deref(), config.group.as_deref())
        .map_err(|e| CheckError::Other(e.to_string()))?;
    for &addr in &config.listen {
        super::listener::check_bind(addr)
            .map_err(|e| CheckError::Other(format!("--listen {addr}: {e}")))?;
    }
    if let Some(addr) = config.admin {
        super::listener::check_bind(addr)
            .map_err(|e| CheckError::Other(format!("--admin {addr}: {e}")))?;
    }
    // Backend host names resolve (as at start).
    super::resolve_routes(&config.routes).map_err(|e| CheckError::Other(e.to_string()))?;
    let mut summary = loader::summary(config, &loaded, now);
    if let Some(acme) = &config.acme {
        super::acme::check_ca_file(acme).map_err(CheckError::Other)?;
        summary.push_str(&crate::acme::summary(
            acme,
            &loader::acme_state(acme, &files),
            now,
        ));
    }
    Ok(summary)
}
