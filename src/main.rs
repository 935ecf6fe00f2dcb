//! The `ringterm` binary: CLI → Config → run. Exit code 64 on a bad config.

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use ringterm::config::Settings;
use ringterm::tls;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// EX_USAGE: a bad flag, config file, certificate, or address.
const EX_USAGE: u8 = 64;

#[derive(Parser, Debug)]
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
    /// Address to accept TLS on (repeatable).
    #[arg(long, value_name = "ADDR", global = true)]
    listen: Vec<String>,
    /// Plaintext backend address.
    #[arg(long, value_name = "ADDR", global = true)]
    backend: Option<String>,
    /// PEM certificate chain.
    #[arg(long, value_name = "PEM", global = true)]
    cert: Option<String>,
    /// PEM private key.
    #[arg(long, value_name = "PEM", global = true)]
    key: Option<String>,
    /// Number of workers (default: one per CPU this process may run on).
    #[arg(long, value_name = "N", global = true)]
    workers: Option<usize>,
    /// CPUs to pin workers to, e.g. `0-3,8`.
    #[arg(long, value_name = "LIST", global = true)]
    cpus: Option<String>,
    /// io_uring submission queue entries per worker (power of two).
    #[arg(long, value_name = "N", global = true)]
    ring_entries: Option<u32>,
    /// Enable SQPOLL, with the kernel thread's idle time in ms (default 1000).
    #[arg(long, value_name = "IDLE_MS", num_args = 0..=1, default_missing_value = "1000", global = true)]
    sqpoll: Option<u32>,
    /// Listen backlog (capped by net.core.somaxconn).
    #[arg(long, value_name = "N", global = true)]
    backlog: Option<u32>,
    /// Relay buffer size per direction, bytes.
    #[arg(long, value_name = "BYTES", global = true)]
    buffer_size: Option<usize>,
    /// TOML configuration file; flags override it.
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<String>,
    /// Admin/metrics listener (off by default; use loopback).
    #[arg(long, value_name = "ADDR", global = true)]
    admin: Option<String>,
    /// Handshake timeout, ms.
    #[arg(long, value_name = "MS", global = true)]
    handshake_timeout: Option<u64>,
    /// Backend connect timeout, ms.
    #[arg(long, value_name = "MS", global = true)]
    connect_timeout: Option<u64>,
    /// Refuse TLS 1.2 (TLS 1.3 only).
    #[arg(long, global = true)]
    no_tls12: bool,
    /// Log level: error, warn, info, debug, trace, off.
    #[arg(long, value_name = "LEVEL", global = true)]
    log_level: Option<String>,
    /// Session resumption: cache, tickets, both or off.
    #[arg(long, value_name = "MODE", global = true)]
    resumption: Option<String>,
    /// Session lifetime, seconds.
    #[arg(long, value_name = "SECS", global = true)]
    session_timeout: Option<u64>,
    /// Session cache entries per worker.
    #[arg(long, value_name = "N", global = true)]
    session_cache_size: Option<usize>,
    /// Cross-core session sync interval, ms.
    #[arg(long, value_name = "MS", global = true)]
    session_sync_interval: Option<u64>,
    /// Ticket key rotation period, seconds (random keys only).
    #[arg(long, value_name = "SECS", global = true)]
    ticket_rotation: Option<u64>,
    /// Ticket key file, 80 bytes (repeatable; the first encrypts). Re-read on SIGHUP.
    #[arg(long, value_name = "FILE", global = true)]
    ticket_key_file: Vec<String>,
    /// TLS 1.3 tickets sent after a full handshake.
    #[arg(long, value_name = "N", global = true)]
    tls13_tickets: Option<usize>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Terminate TLS in front of a built-in demo backend, with a generated
    /// self-signed certificate for localhost.
    Demo,
    /// Run only the built-in demo HTTP/1.1 backend (plaintext), e.g. for
    /// benchmarks.
    Backend,
}

impl Cli {
    fn settings(&self) -> Settings {
        Settings {
            listen: (!self.listen.is_empty()).then(|| self.listen.clone()),
            backend: self.backend.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            workers: self.workers,
            cpus: self.cpus.clone(),
            ring_entries: self.ring_entries,
            sqpoll: self.sqpoll,
            backlog: self.backlog,
            buffer_size: self.buffer_size,
            admin: self.admin.clone(),
            handshake_timeout: self.handshake_timeout,
            connect_timeout: self.connect_timeout,
            tls12: self.no_tls12.then_some(false),
            log_level: self.log_level.clone(),
            resumption: self.resumption.clone(),
            session_timeout: self.session_timeout,
            session_cache_size: self.session_cache_size,
            session_sync_interval: self.session_sync_interval,
            ticket_rotation: self.ticket_rotation,
            ticket_key_file: (!self.ticket_key_file.is_empty())
                .then(|| self.ticket_key_file.clone()),
            tls13_tickets: self.tls13_tickets,
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
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

fn read_file(flag: &str, path: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{flag} {path}: {e}"))
}

fn allowed_cpus() -> Vec<usize> {
    let mut cpus: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    if cpus.is_empty() {
        cpus.push(0);
    }
    cpus
}

fn run(cli: Cli) -> Result<(), String> {
    let mode = match cli.cmd {
        Some(Cmd::Demo) => Mode::Demo,
        Some(Cmd::Backend) => Mode::Backend,
        None if cli.demo => Mode::Demo,
        None => Mode::Serve,
    };
    let file = match &cli.config {
        Some(path) => Settings::from_toml_bytes(path, &read_file("--config", path)?)
            .map_err(|e| e.to_string())?,
        None => Settings::default(),
    };
    let mut settings = file.merge(cli.settings());
    init_logging(settings.log_level.as_deref().unwrap_or("info"))?;

    if mode == Mode::Backend {
        let addr = settings
            .listen
            .as_ref()
            .and_then(|l| l.first().cloned())
            .unwrap_or_else(|| "127.0.0.1:8080".to_owned());
        let addr: std::net::SocketAddr = addr
            .parse()
            .map_err(|_| format!("--listen: invalid address {addr:?}"))?;
        let bound = ringterm::rt::demo::start(addr).map_err(|e| format!("--listen {addr}: {e}"))?;
        println!("demo backend listening on {bound}");
        wait_for_signal(None);
        return Ok(());
    }

    let generated = if mode == Mode::Demo {
        let backend = ringterm::rt::demo::start(([127, 0, 0, 1], 0).into())
            .map_err(|e| format!("demo backend: {e}"))?;
        settings.backend = Some(backend.to_string());
        if settings.listen.is_none() {
            settings.listen = Some(vec!["127.0.0.1:8443".to_owned()]);
        }
        settings
            .cert
            .get_or_insert_with(|| "(generated)".to_owned());
        settings.key.get_or_insert_with(|| "(generated)".to_owned());
        Some(tls::generate_self_signed(&["localhost", "127.0.0.1"]).map_err(|e| e.to_string())?)
    } else {
        None
    };

    let config = settings
        .validate(&allowed_cpus())
        .map_err(|e| e.to_string())?;
    let (cert_pem, key_pem) = match generated {
        Some((c, k)) => (c.into_bytes(), k.into_bytes()),
        None => (
            read_file("--cert", &config.cert)?,
            read_file("--key", &config.key)?,
        ),
    };
    let chain = tls::load_cert_chain(&config.cert, &cert_pem).map_err(|e| format!("--cert {e}"))?;
    let key = tls::load_private_key(&config.key, &key_pem).map_err(|e| format!("--key {e}"))?;
    let policy = tls::TlsPolicy {
        tls12: config.tls12,
        ..tls::TlsPolicy::default()
    };
    let ticketer = if config.resumption.uses_tickets() {
        let lifetime = config.session_timeout_s.min(u32::MAX as u64) as u32;
        Some(ringterm::rt::ticket_keys::ticketer(
            &config.ticket_key_files,
            lifetime,
        )?)
    } else {
        None
    };
    let resumption = tls::ResumptionParts {
        storage: config.resumption.uses_cache().then(|| {
            Arc::new(ringterm::rt::session_store::WorkerStore)
                as Arc<dyn rustls::server::StoresServerSessions>
        }),
        ticketer: ticketer.clone().map(|t| {
            Arc::new(ringterm::rt::ticket_keys::CountingTicketer(t))
                as Arc<dyn rustls::server::ProducesTickets>
        }),
        tls13_tickets: config.tls13_tickets,
    };
    let tls_config = tls::build_server_config_with(chain, key, &policy, resumption)
        .map_err(|e| format!("--cert/--key {}/{}: {e}", config.cert, config.key))?;
    if let Some(t) = &ticketer {
        if config.ticket_key_files.is_empty() {
            ringterm::rt::ticket_keys::start_rotation(
                t.clone(),
                std::time::Duration::from_secs(config.ticket_rotation_s),
            )
            .map_err(|e| format!("--ticket-rotation: {e}"))?;
        }
    }

    let server = ringterm::rt::start(&config, tls_config).map_err(|e| e.to_string())?;
    for addr in &server.listen {
        println!("listening on {addr}");
    }
    if let Some(admin) = server.admin {
        println!("admin listening on {admin}");
    }
    println!(
        "workers: {} pinned to CPUs {:?}, backend {}",
        config.workers(),
        config.pins,
        config.backend
    );
    if mode == Mode::Demo {
        let addr = server.listen[0];
        println!(
            "demo: self-signed certificate for localhost; demo backend on {}",
            config.backend
        );
        println!("try: curl -k https://{addr}/");
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let mut reload = move || {
        if let Some(t) = &ticketer {
            if !config.ticket_key_files.is_empty() {
                match ringterm::rt::ticket_keys::reload(t, &config.ticket_key_files) {
                    Ok(n) => tracing::info!(keys = n, "ticket keys reloaded"),
                    Err(e) => {
                        tracing::error!("ticket key reload failed, keeping the old keys: {e}")
                    }
                }
            }
        }
    };
    wait_for_signal(Some(&mut reload));
    Ok(())
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Mode {
    Serve,
    Demo,
    Backend,
}

fn init_logging(level: &str) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(format!("ringterm={level}"))
        .map_err(|_| format!("--log-level: invalid level {level:?}"))?;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    Ok(())
}

/// Blocks until SIGINT or SIGTERM. With `reload`, SIGHUP calls it and keeps
/// waiting; without, SIGHUP keeps its default action.
fn wait_for_signal(mut reload: Option<&mut dyn FnMut()>) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut wanted = vec![SIGINT, SIGTERM];
    if reload.is_some() {
        wanted.push(SIGHUP);
    }
    match signal_hook::iterator::Signals::new(&wanted) {
        Ok(mut signals) => {
            for sig in signals.forever() {
                if sig == SIGHUP {
                    if let Some(reload) = reload.as_mut() {
                        reload();
                    }
                    continue;
                }
                tracing::info!(signal = sig, "shutting down");
                return;
            }
        }
        Err(_) => loop {
            std::thread::park();
        },
    }
}
