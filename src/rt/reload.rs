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

/// One frontend's TLS configuration.
#[derive(Debug, Clone)]
pub struct FrontendTls {
    /// The configuration its connections take.
    pub config: Arc<ServerConfig>,
    /// Its session tag, when it has one: with several frontends, or with
    /// mutual TLS, its sessions are its own (see [`crate::tls::isolation`]).
    pub isolate: Option<String>,
}

/// Every frontend's TLS configuration (by frontend index), swapped whole on
/// reload; each new connection takes its frontend's.
pub type TlsSet = Arc<ArcSwap<Vec<FrontendTls>>>;

/// Frontend `i`'s session parts: with several frontends, or with mutual
/// TLS, its tickets and cache keys carry its session tag, so that no
/// session crosses frontends or client-certificate policies.
fn resumption_for(
    parts: &ResumptionParts,
    config: &Config,
    i: usize,
    files: &dyn FileSource,
) -> (ResumptionParts, Option<String>) {
    use crate::tls::isolation::{session_tag, FrontendStore, FrontendTicketer};
    let f = &config.frontends[i];
    let ca = f.tls.client_ca.as_ref().map(|path| {
        (
            files.read(path).unwrap_or_default(),
            f.tls.client_auth_required,
        )
    });
    let name = (config.frontends.len() > 1).then_some(f.name.as_str());
    let Some(tag) = session_tag(name, ca.as_ref().map(|(b, r)| (b.as_slice(), *r))) else {
        return (parts.clone(), None);
    };
    let parts = ResumptionParts {
        storage: parts.storage.clone().map(|s| {
            Arc::new(FrontendStore::new(s, &tag)) as Arc<dyn rustls::server::StoresServerSessions>
        }),
        ticketer: parts.ticketer.clone().map(|t| {
            // Stateful tickets are isolated by the store's keys.
            if crate::session::stateful::is_stateful(&*t) {
                return t;
            }
            Arc::new(FrontendTicketer::new(t, &tag)) as Arc<dyn rustls::server::ProducesTickets>
        }),
        tls13_tickets: parts.tls13_tickets,
    };
    (parts, Some(tag))
}

struct State {
    config: Config,
    /// Each frontend's certificates, by frontend index.
    loaded: Vec<Loaded>,
}

/// Holds the current TLS configurations and rebuilds them.
pub struct TlsReloader {
    state: Mutex<State>,
    tls: TlsSet,
    files: DiskFiles,
    resumption: ResumptionParts,
    config_source: Option<ConfigSource>,
}

/// What a successful reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// Certificates now served (over every frontend).
    pub certificates: usize,
    /// OCSP responses now stapled.
    pub stapled: usize,
    /// Certificate files skipped (`PATH: reason`).
    pub skipped: Vec<String>,
}

/// Certificates loaded and TLS configurations built for a configuration,
/// not yet in use ([`TlsReloader::prepare`], [`TlsReloader::commit`]).
pub struct Prepared {
    config: Config,
    loaded: Vec<Loaded>,
    servers: Vec<FrontendTls>,
}

/// Every frontend's certificates, one after the other (for gauges and the
/// OCSP fetcher).
fn all_certs(loaded: &[Loaded]) -> Loaded {
    Loaded {
        certs: loaded.iter().flat_map(|l| l.certs.clone()).collect(),
        skipped: loaded.iter().flat_map(|l| l.skipped.clone()).collect(),
    }
}

/// Loads and builds every frontend of `config`. On reload, frontend `i`'s
/// previous certificates are those of the frontend of the same name.
fn load_all(
    config: &Config,
    files: &DiskFiles,
    resumption: &ResumptionParts,
    mode: LoadMode,
    previous: Option<(&Config, &[Loaded])>,
) -> Result<(Vec<Loaded>, Vec<FrontendTls>), loader::LoadError> {
    let now = now_unix();
    let mut loaded = Vec::with_capacity(config.frontends.len());
    let mut servers = Vec::with_capacity(config.frontends.len());
    for (i, f) in config.frontends.iter().enumerate() {
        let view = config.for_frontend(i);
        let before = previous.and_then(|(c, l)| {
            let j = c.frontends.iter().position(|p| p.name == f.name)?;
            l.get(j)
        });
        let l = loader::load(&view, files, now, mode, before)?;
        let (parts, isolate) = resumption_for(resumption, config, i, files);
        servers.push(FrontendTls {
            config: loader::build(&view, &l, files, parts)?,
            isolate,
        });
        loaded.push(l);
    }
    Ok((loaded, servers))
}

impl TlsReloader {
    /// Loads everything for `config` (every bad file is an error naming
    /// it) and builds each frontend's first `ServerConfig`. `config_source`
    /// re-reads the configuration on [`TlsReloader::reload`]; without it a
    /// reload re-reads the files of `config`.
    pub fn new(
        config: &Config,
        files: DiskFiles,
        resumption: ResumptionParts,
        config_source: Option<ConfigSource>,
    ) -> Result<Self, loader::LoadError> {
        let (loaded, servers) = load_all(config, &files, &resumption, LoadMode::Start, None)?;
        let all = all_certs(&loaded);
        warn_ocsp(None, &all);
        process::global().set_certs(process::cert_gauges(&all));
        Ok(Self {
            state: Mutex::new(State {
                config: config.clone(),
                loaded,
            }),
            tls: Arc::new(ArcSwap::from_pointee(servers)),
            files,
            resumption,
            config_source,
        })
    }

    /// The configurations each new connection takes (by frontend).
    pub fn tls(&self) -> TlsSet {
        self.tls.clone()
    }

    /// The certificates as last loaded, every frontend's.
    pub fn loaded(&self) -> Loaded {
        all_certs(&self.lock().loaded)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (every
        // update is a whole-value store).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads the certificates, OCSP responses and client CAs of `config`
    /// (a bad certificate-folder file is skipped, its previous version
    /// kept) and builds each frontend's `ServerConfig`, without using
    /// them yet.
    pub fn prepare(&self, config: &Config) -> Result<Prepared, String> {
        let state = self.lock();
        let (loaded, servers) = load_all(
            config,
            &self.files,
            &self.resumption,
            LoadMode::Reload,
            Some((&state.config, &state.loaded)),
        )
        .map_err(|e| e.to_string())?;
        Ok(Prepared {
            config: config.clone(),
            loaded,
            servers,
        })
    }

    /// Puts `prepared` in use: new connections take its configurations.
    /// Skipped files and newly rejected OCSP responses are warned about and
    /// counted.
    pub fn commit(&self, prepared: Prepared) -> ReloadReport {
        let mut state = self.lock();
        let all = all_certs(&prepared.loaded);
        for skipped in &all.skipped {
            tracing::warn!("reload: skipped certificate file {skipped} (its previous version, if any, keeps serving)");
        }
        process::global().files_skipped(all.skipped.len() as u64);
        warn_ocsp(Some(&all_certs(&state.loaded)), &all);
        process::global().set_certs(process::cert_gauges(&all));
        self.tls.store(Arc::new(prepared.servers));
        let report = ReloadReport {
            certificates: all.certs.len(),
            stapled: stapled(&all),
            skipped: all.skipped,
        };
        *state = State {
            config: prepared.config,
            loaded: prepared.loaded,
        };
        report
    }

    /// Re-reads the configuration (through the source given at start),
    /// the certificates, OCSP responses and client CAs, and swaps the new
    /// configurations in. On error the old ones stay. Counted in
    /// `ringterm_reloads_total{result}`. (The server's SIGHUP reloads
    /// everything through [`super::live::ConfigReloader`].)
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
        let config = match &self.config_source {
            Some(source) if reread_config => source()?,
            _ => self.lock().config.clone(),
        };
        let prepared = self.prepare(&config)?;
        Ok(self.commit(prepared))
    }

    /// The OCSP timer's step: re-reads and re-checks every response at the
    /// current time; rebuilds and swaps only when a staple changed. Returns
    /// whether it did.
    pub fn refresh_ocsp(&self) -> bool {
        let mut state = self.lock();
        let now = now_unix();
        let refreshed: Vec<Loaded> = state
            .loaded
            .iter()
            .map(|l| loader::refresh_ocsp(l, &self.files, now))
            .collect();
        let changed = refreshed
            .iter()
            .zip(&state.loaded)
            .any(|(n, o)| n.certs.iter().zip(&o.certs).any(|(a, b)| a.ocsp != b.ocsp));
        if !changed {
            return false;
        }
        let mut servers = Vec::with_capacity(refreshed.len());
        for (i, l) in refreshed.iter().enumerate() {
            let view = state.config.for_frontend(i);
            let (parts, isolate) = resumption_for(&self.resumption, &state.config, i, &self.files);
            match loader::build(&view, l, &self.files, parts) {
                Ok(config) => servers.push(FrontendTls { config, isolate }),
                Err(e) => {
                    tracing::warn!("OCSP refresh: rebuilding the TLS configuration failed: {e}");
                    return false;
                }
            }
        }
        let all = all_certs(&refreshed);
        warn_ocsp(Some(&all_certs(&state.loaded)), &all);
        process::global().set_certs(process::cert_gauges(&all));
        self.tls.store(Arc::new(servers));
        tracing::info!(stapled = stapled(&all), "OCSP responses refreshed");
        state.loaded = refreshed;
        true
    }

    /// The OCSP refresh period in force, seconds.
    pub fn refresh_period(&self) -> u64 {
        self.lock().config.settings.ocsp_refresh()
    }

    /// How long the timer sleeps: the refresh period, or less when a
    /// stapled response reaches its `nextUpdate` sooner.
    fn next_wait(&self) -> Duration {
        let state = self.lock();
        let period = state.config.settings.ocsp_refresh();
        let now = now_unix();
        let soonest = state
            .loaded
            .iter()
            .flat_map(|l| &l.certs)
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
    let mut summaries = Vec::with_capacity(config.frontends.len());
    for i in 0..config.frontends.len() {
        let view = config.for_frontend(i);
        let loaded =
            loader::load(&view, &files, now, LoadMode::Start, None).map_err(CheckError::Load)?;
        loader::build(&view, &loaded, &files, ResumptionParts::default())
            .map_err(CheckError::Load)?;
        summaries.push(loader::summary(&view, &loaded, now));
    }
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
    for f in &config.frontends {
        super::resolve_routes(&f.routes).map_err(|e| CheckError::Other(e.to_string()))?;
    }
    let mut out = if config.frontends.len() == 1 && config.frontends[0].name == "default" {
        summaries.remove(0)
    } else {
        // Frontend tables: each one's summary under its name.
        let mut out = format!("frontends: {}\n", config.frontends.len());
        for (f, summary) in config.frontends.iter().zip(summaries) {
            out.push_str(&format!("frontend {}:\n", f.name));
            for line in summary.lines() {
                out.push_str(&format!("  {line}\n"));
            }
        }
        out
    };
    if let Some(acme) = &config.acme {
        super::acme::check_ca_file(acme).map_err(CheckError::Other)?;
        out.push_str(&crate::acme::summary(
            acme,
            &loader::acme_state(acme, &files),
            now,
        ));
    }
    Ok(out)
}
