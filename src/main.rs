//! The `ringterm` binary: CLI → Config → run. Exit code 64 on a bad config.

use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use ringterm::config::{CertEntry, Config, Settings};
use ringterm::rt::reload::{DiskFiles, TlsReloader};
use ringterm::rt::{config_file, notify, upgrade};
use ringterm::tls;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// EX_USAGE: a bad flag, config file, certificate, or address.
const EX_USAGE: u8 = 64;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "ringterm",
    version,
    about = "io_uring thread-per-core TLS terminator"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Same as the `demo` subcommand.
    #[arg(long, global = true)]
    demo: bool,
    /// TOML configuration file; flags override it.
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<String>,
    /// Every option (`ringterm::config::Settings`, declared once: flag,
    /// TOML key, help).
    #[command(flatten)]
    settings: Settings,
}

#[derive(Subcommand, Debug, Clone)]
enum Cmd {
    /// Terminate TLS in front of a built-in demo backend, with a generated
    /// self-signed certificate for localhost.
    Demo,
    /// Run only the built-in demo HTTP/1.1 backend (plaintext), e.g. for
    /// benchmarks.
    Backend,
    /// Check the configuration: load every certificate, key, OCSP response
    /// and CA, check the listen addresses can be bound, print a summary.
    /// Exit 0, or 64 with one line.
    Check,
}

fn main() -> ExitCode {
    // Before the heap grows: no 2 MiB pages under a heap of small
    // per-connection objects (see `ringterm::rt::heap`).
    ringterm::rt::heap::disable_thp();
    // `--help` shows each declared default.
    let mut cmd = Settings::show_defaults(Cli::command());
    let parsed = cmd
        .try_get_matches_from_mut(std::env::args_os())
        .and_then(|mut m| Cli::from_arg_matches_mut(&mut m).map_err(|e| e.format(&mut cmd)));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            let text = e.to_string();
            let line = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("ringterm: {}", line.trim_start_matches("error: "));
            return ExitCode::from(EX_USAGE);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("ringterm: {msg}");
            ExitCode::from(EX_USAGE)
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    let mode = match cli.cmd {
        Some(Cmd::Demo) => Mode::Demo,
        Some(Cmd::Backend) => Mode::Backend,
        Some(Cmd::Check) => return check(&cli),
        None if cli.demo => Mode::Demo,
        None => Mode::Serve,
    };
    let mut layered = config_file::load_layered(cli.config.as_deref(), cli.settings.clone())?;
    let settings = &mut layered.settings;
    init_logging(&settings.log_level(), &settings.log_format())?;

    if mode == Mode::Backend {
        let addr = settings
            .listen
            .as_ref()
            .and_then(|l| l.first().cloned())
            .unwrap_or_else(|| "127.0.0.1:8080".to_owned());
        if let Some(path) = addr.strip_prefix("unix:") {
            ringterm::rt::demo::start_unix(std::path::Path::new(path))
                .map_err(|e| format!("--listen {addr}: {e}"))?;
            tracing::info!("demo backend listening on {addr}");
            wait_for_signal(catch_signals(false), Handlers::default());
            return Ok(());
        }
        let addr: std::net::SocketAddr = addr
            .parse()
            .map_err(|_| format!("--listen: invalid address {addr:?}"))?;
        let bound = ringterm::rt::demo::start(addr).map_err(|e| format!("--listen {addr}: {e}"))?;
        tracing::info!("demo backend listening on {bound}");
        wait_for_signal(catch_signals(false), Handlers::default());
        return Ok(());
    }

    let generated = if mode == Mode::Demo {
        let backend = ringterm::rt::demo::start(([127, 0, 0, 1], 0).into())
            .map_err(|e| format!("demo backend: {e}"))?;
        settings.backend = Some(vec![backend.to_string()]);
        if settings.listen.is_none() {
            settings.listen = Some(vec!["127.0.0.1:8443".to_owned()]);
        }
        settings
            .cert
            .get_or_insert_with(|| vec![CertEntry::from("(generated)")]);
        settings
            .key
            .get_or_insert_with(|| vec!["(generated)".to_owned()]);
        Some(tls::generate_self_signed(&["localhost", "127.0.0.1"]).map_err(|e| e.to_string())?)
    } else {
        None
    };

    let upgrade_socket = settings.upgrade_socket.clone();
    let mut files = DiskFiles::default();
    if let Some((cert, key)) = &generated {
        files.overlay.insert(
            "(generated)".to_owned(),
            format!("{cert}{key}").into_bytes(),
        );
    }
    let config = layered.validate(&config_file::allowed_cpus())?;
    // The ticket lifetime clients are told: --session-timeout.
    let lifetime = config.settings.session_timeout().min(u32::MAX as u64) as u32;
    let ticketer = if config.resumption.uses_tickets() {
        Some(ringterm::rt::ticket_keys::ticketer(
            &config.ticket_key_files,
            lifetime,
        )?)
    } else {
        None
    };
    let resumption = tls::ResumptionParts {
        // Each worker puts its own counting store and ticketer in its copy
        // of the configuration (`rt::worker`); these stand for them.
        storage: config.resumption.uses_cache().then(|| {
            Arc::new(ringterm::rt::session_store::WorkerStore::unbound())
                as Arc<dyn rustls::server::StoresServerSessions>
        }),
        ticketer: match &ticketer {
            Some(t) => Some(t.clone() as Arc<dyn rustls::server::ProducesTickets>),
            // TLS 1.3 stateful tickets through the ticketer hook, so they
            // advertise --session-timeout (rustls's own say 24 h).
            None if config.resumption.uses_cache() && config.settings.tls13_tickets() > 0 => Some(
                Arc::new(ringterm::rt::session_store::StatefulTickets::unbound(
                    lifetime,
                )) as _,
            ),
            None => None,
        },
        tls13_tickets: config.settings.tls13_tickets(),
    };
    // SIGHUP re-reads the configuration and applies what it can
    // (`rt::live::ConfigReloader`; not in demo mode: its certificate is
    // generated once, so only the files are re-read); on any error the old
    // configuration stays. New connections get the new one; established
    // ones keep theirs.
    let config_source: Option<ringterm::rt::reload::ConfigSource> = if mode == Mode::Demo {
        None
    } else {
        let cli = cli.clone();
        Some(Box::new(move || {
            config_file::load(cli.config.as_deref(), cli.settings.clone())
        }))
    };
    if let Some(acme) = &config.acme {
        // The state folder (0700) and the CA file, before the certificates
        // in it load.
        let owner =
            ringterm::rt::privdrop::resolve(config.user.as_deref(), config.group.as_deref())
                .map_err(|e| e.to_string())?
                .and_then(|t| t.uid.map(|uid| (uid, t.gid)));
        ringterm::rt::acme::prepare(acme, owner)?;
    }
    let fetched = files.fetched.clone();
    let reloader = Arc::new(
        TlsReloader::new(&config, files, resumption, None)
            .map_err(|e| config_file::load_error(&layered, e))?,
    );
    if config.settings.ocsp_fetch() {
        ringterm::rt::ocsp_fetch::spawn(reloader.clone(), fetched)
            .map_err(|e| format!("--ocsp-fetch: fetch thread: {e}"))?;
    }
    // Always started: a reload may add OCSP files; without any, each tick
    // (every --ocsp-refresh s) only finds nothing changed.
    reloader
        .spawn_ocsp_timer()
        .map_err(|e| format!("--ocsp-refresh: OCSP timer thread: {e}"))?;
    if let Some(t) = &ticketer {
        if config.ticket_key_files.is_empty() {
            ringterm::rt::ticket_keys::start_rotation(
                t.clone(),
                std::time::Duration::from_secs(config.settings.ticket_rotation()),
            )
            .map_err(|e| format!("--ticket-rotation: {e}"))?;
        }
    }

    let signals = catch_signals(true);
    let mut upgrade = upgrade::Upgrade::new(upgrade_socket);
    let (server, took_over) = upgrade
        .start(&config, reloader.tls())
        .map_err(|e| e.to_string())?;
    log_started(&config, &server, mode);
    if let Some(acme) = &config.acme {
        // After the listeners: validations reach the TLS port.
        ringterm::rt::acme::spawn(acme.clone(), reloader.clone())
            .map_err(|e| format!("--acme-domain: ACME thread: {e}"))?;
    }
    notify::ready(
        &format!(
            "serving {} listener(s) with {} workers",
            server.listen.len(),
            config.workers()
        ),
        took_over,
    );
    let drain_timeout = std::time::Duration::from_millis(config.settings.drain_timeout());
    let alog_hup = server.access_log.clone();
    let live_hub = server.live.clone();
    let config_reloader = config_source.map(|source| {
        Arc::new(ringterm::rt::live::ConfigReloader::new(
            config.clone(),
            source,
            reloader.clone(),
            server.live.clone(),
        ))
    });
    let running = config_reloader.clone();
    let alog_usr1 = server.access_log.clone();
    let mut reload = move || {
        notify::reloading();
        if let Some(l) = &alog_hup {
            l.reopen();
        }
        let mut result = "reload: done".to_owned();
        match &config_reloader {
            Some(r) => match r.reload() {
                Ok(o) => {
                    set_log_level(&r.current().settings.log_level());
                    for w in &o.restart_needed {
                        tracing::warn!("{w}");
                    }
                    for a in &o.listeners_added {
                        tracing::info!("reload: listening on {a}");
                    }
                    for a in &o.listeners_removed {
                        tracing::info!("reload: no longer listening on {a}");
                    }
                    tracing::info!(
                        frontends = o.frontends,
                        backends = o.backends,
                        certificates = o.tls.certificates,
                        ocsp_stapled = o.tls.stapled,
                        skipped = o.tls.skipped.len(),
                        restart_needed = o.restart_needed.len(),
                        "configuration reloaded; backend host names resolved again"
                    );
                }
                Err(e) => {
                    tracing::error!("reload failed, keeping the old configuration: {e}");
                    result = format!("reload failed, keeping the old configuration: {e}");
                }
            },
            // Demo: the same configuration; files and names again.
            None => {
                match live_hub.resolve_again() {
                    Ok(changed) => tracing::info!(changed, "backend host names resolved again"),
                    Err(e) => tracing::error!("{e}; keeping the old backend addresses"),
                }
                if let Err(e) = reloader.reload() {
                    tracing::error!("reload failed, keeping the old configuration: {e}");
                    result = format!("reload failed, keeping the old configuration: {e}");
                }
            }
        }
        if let Some(t) = &ticketer {
            if !config.ticket_key_files.is_empty() {
                match ringterm::rt::ticket_keys::reload(t, &config.ticket_key_files) {
                    Ok(n) => tracing::info!(keys = n, "ticket keys reloaded"),
                    Err(e) => {
                        tracing::error!("ticket key reload failed, keeping the old keys: {e}");
                        result = format!("ticket key reload failed, keeping the old keys: {e}");
                    }
                }
            }
        }
        notify::reloaded(&result);
    };
    let hists = server.histograms.clone();
    let summary = move || {
        hists
            .collect_merged(ringterm::rt::admin::COLLECT_WAIT)
            .summary()
    };
    let mut usr1 = || {
        if let Some(l) = &alog_usr1 {
            l.reopen();
        }
        tracing::info!("latency summary (SIGUSR1):\n{}", summary())
    };
    let mut usr2 = || upgrade.spawn_new_process();
    wait_for_signal(
        signals,
        Handlers {
            hup: Some(&mut reload),
            usr1: Some(&mut usr1),
            usr2: Some(&mut usr2),
        },
    );
    upgrade.before_drain();
    // The drain timeout in force (a reload may have changed it).
    let drain_timeout = running
        .map(|r| std::time::Duration::from_millis(r.current().settings.drain_timeout()))
        .unwrap_or(drain_timeout);
    drain(&server, drain_timeout);
    if let Some(l) = &server.access_log {
        // The drained connections' lines reach the file before exit.
        l.finish(std::time::Duration::from_secs(2));
    }
    tracing::info!("latency summary at shutdown:\n{}", summary());
    Ok(())
}

/// The startup lines: one per listener (naming it and the worker count),
/// the admin endpoint (with a warning off loopback), then `ready`.
fn log_started(config: &Config, server: &ringterm::rt::Server, mode: Mode) {
    let workers = config.workers();
    let frontends = config
        .frontends
        .iter()
        .flat_map(|f| f.listen.iter().map(move |_| f.name.as_str()));
    for ((i, addr), frontend) in server.listen.iter().enumerate().zip(frontends) {
        tracing::info!(listener = i, workers, frontend, "listening on {addr}");
    }
    if let Some(admin) = server.admin {
        tracing::info!("admin listening on {admin}");
        if !admin.ip().is_loopback() {
            tracing::warn!(
                "--admin {admin} is not a loopback address: /metrics and /histograms are open to the network"
            );
        }
    }
    let cpus: Vec<String> = config.pins.iter().map(|c| c.to_string()).collect();
    tracing::info!(
        workers,
        cpus = %cpus.join(","),
        backend = %config.backend,
        "ready"
    );
    if mode == Mode::Demo {
        tracing::info!(
            "demo: self-signed certificate for localhost; demo backend on {}",
            config.backend
        );
        tracing::info!("try: curl -k https://{}/", server.listen[0]);
    }
}

/// Graceful shutdown after the first SIGTERM/SIGINT: stop accepting, let
/// open connections finish for up to `timeout`, cut the rest. A second
/// SIGTERM/SIGINT ends the wait at once (the process still exits 0).
fn drain(server: &ringterm::rt::Server, timeout: std::time::Duration) {
    use ringterm::rt::drain::DrainOutcome;
    use signal_hook::consts::{SIGINT, SIGTERM};
    let again = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        let _ = signal_hook::flag::register(sig, again.clone());
    }
    match server.drain(timeout, &again) {
        DrainOutcome::Finished => tracing::info!("drained: every connection finished"),
        DrainOutcome::Cut { open, left } => tracing::warn!(
            cut = open,
            still_open = left,
            "drain timeout: cut the connections still open"
        ),
        DrainOutcome::Aborted { open } => {
            tracing::warn!(open, "second signal: exiting without waiting")
        }
    }
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Mode {
    Serve,
    Demo,
    Backend,
}

/// Sets the log filter (a reload changed `--log-level`).
type SetLevel = Box<dyn Fn(tracing_subscriber::EnvFilter) -> bool + Send + Sync>;
static LOG_LEVEL: std::sync::OnceLock<SetLevel> = std::sync::OnceLock::new();

/// Applies `level` (already checked) to the running log filter.
fn set_log_level(level: &str) {
    if let (Some(set), Ok(filter)) = (
        LOG_LEVEL.get(),
        tracing_subscriber::EnvFilter::try_new(format!("ringterm={level}")),
    ) {
        set(filter);
    }
}

/// Logs go to stderr (the journal under systemd): colours only when stderr
/// is a terminal, and `json` writes one JSON object a line.
fn init_logging(level: &str, format: &str) -> Result<(), String> {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_new(format!("ringterm={level}"))
        .map_err(|_| format!("--log-level: invalid level {level:?}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // The level can change on reload: keep a way to set it.
    fn keep<H: Fn(tracing_subscriber::EnvFilter) -> bool + Send + Sync + 'static>(h: H) {
        let _ = LOG_LEVEL.set(Box::new(h));
    }
    let _ = match format {
        "text" => {
            let b = builder
                .with_ansi(std::io::stderr().is_terminal())
                .with_filter_reloading();
            let h = b.reload_handle();
            keep(move |f| h.reload(f).is_ok());
            b.try_init()
        }
        "json" => {
            let b = builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_filter_reloading();
            let h = b.reload_handle();
            keep(move |f| h.reload(f).is_ok());
            b.try_init()
        }
        other => {
            return Err(format!(
                "--log-format: invalid format {other:?} (must be text or json)"
            ))
        }
    };
    Ok(())
}

/// What to do on SIGHUP and SIGUSR1; a signal without a handler keeps its
/// default action.
#[derive(Default)]
struct Handlers<'a> {
    hup: Option<&'a mut dyn FnMut()>,
    usr1: Option<&'a mut dyn FnMut()>,
    usr2: Option<&'a mut dyn FnMut()>,
}

/// Catches SIGINT and SIGTERM, and SIGHUP, SIGUSR1 and SIGUSR2 when
/// `all`. Call before announcing readiness: a reload signal that arrives
/// before [`wait_for_signal`] runs waits for it instead of killing the
/// process (SIGHUP's default action).
fn catch_signals(all: bool) -> Option<signal_hook::iterator::Signals> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
    let mut wanted = vec![SIGINT, SIGTERM];
    if all {
        wanted.extend([SIGHUP, SIGUSR1, SIGUSR2]);
    }
    signal_hook::iterator::Signals::new(&wanted).ok()
}

/// Blocks until SIGINT or SIGTERM, running the handlers of other signals.
fn wait_for_signal(signals: Option<signal_hook::iterator::Signals>, mut handlers: Handlers<'_>) {
    use signal_hook::consts::{SIGHUP, SIGUSR1, SIGUSR2};
    let Some(mut signals) = signals else {
        loop {
            std::thread::park();
        }
    };
    for sig in signals.forever() {
        let handler = match sig {
            SIGHUP => handlers.hup.as_mut(),
            SIGUSR1 => handlers.usr1.as_mut(),
            SIGUSR2 => handlers.usr2.as_mut(),
            _ => {
                tracing::info!(signal = sig, "shutting down");
                return;
            }
        };
        if let Some(h) = handler {
            h();
        }
    }
}

/// `ringterm check`: everything `run` would load and bind, without
/// serving; a summary on stdout.
fn check(cli: &Cli) -> Result<(), String> {
    let text = config_file::check(cli.config.as_deref(), cli.settings.clone())?;
    print!("{text}");
    Ok(())
}
