//! The `ringterm` binary: CLI → Config → run. Exit code 64 on a bad config.

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use ringterm::config::{CertSetting, Config, Files, Settings};
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
    /// Plaintext backend address (repeatable: round-robin, a backend that
    /// fails to connect is skipped for --backend-eject ms).
    #[arg(long, value_name = "ADDR", global = true)]
    backend: Vec<String>,
    /// Per-SNI backends: NAME[,NAME...]=ADDR[,ADDR...] (repeatable; names
    /// may be *.wildcards). Other connections go to --backend.
    #[arg(long, value_name = "ROUTE", global = true)]
    route: Vec<String>,
    /// How long a backend that failed to connect is skipped, ms.
    #[arg(long, value_name = "MS", global = true)]
    backend_eject: Option<u64>,
    /// PEM certificate chain (repeatable: one per certificate, chosen by SNI;
    /// the first is the default).
    #[arg(long, value_name = "PEM", global = true)]
    cert: Vec<String>,
    /// PEM private key (repeatable, paired with --cert by position).
    #[arg(long, value_name = "PEM", global = true)]
    key: Vec<String>,
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
    /// Lowest TLS version: 1.2 or 1.3.
    #[arg(long, value_name = "VERSION", global = true)]
    min_tls: Option<String>,
    /// Highest TLS version: 1.2 or 1.3.
    #[arg(long, value_name = "VERSION", global = true)]
    max_tls: Option<String>,
    /// Cipher suites by rustls name, comma-separated, in preference order.
    #[arg(long, value_name = "LIST", value_delimiter = ',', global = true)]
    ciphers: Vec<String>,
    /// Key exchange groups, comma-separated (default
    /// X25519MLKEM768,X25519,secp256r1,secp384r1).
    #[arg(long, value_name = "LIST", value_delimiter = ',', global = true)]
    groups: Vec<String>,
    /// ALPN protocols, comma-separated, e.g. h2,http/1.1.
    #[arg(long, value_name = "LIST", value_delimiter = ',', global = true)]
    alpn: Vec<String>,
    /// CA certificates (PEM) for client certificates: turns on mutual TLS.
    #[arg(long, value_name = "PEM", global = true)]
    client_ca: Option<String>,
    /// With --client-ca: required (default) or optional.
    #[arg(long, value_name = "MODE", global = true)]
    client_auth: Option<String>,
    /// Unknown or missing SNI: default (serve the first certificate) or
    /// reject (unrecognized_name alert).
    #[arg(long, value_name = "MODE", global = true)]
    unknown_sni: Option<String>,
    /// Record layer after the handshake: own (ringterm's, default) or
    /// rustls (A/B comparison, fallback).
    #[arg(long, value_name = "LAYER", global = true)]
    record_layer: Option<String>,
    /// Close established connections idle this long, ms (0 = off; default 300000).
    #[arg(long, value_name = "MS", global = true)]
    idle_timeout: Option<u64>,
    /// Connections per worker above which new ones are closed at once (0 = unlimited).
    #[arg(long, value_name = "N", global = true)]
    max_connections: Option<u64>,
    /// On SIGTERM/SIGINT, how long open connections may finish, ms (default 30000).
    #[arg(long, value_name = "MS", global = true)]
    drain_timeout: Option<u64>,
    /// Switch to this user after binding (needs root).
    #[arg(long, value_name = "NAME", global = true)]
    user: Option<String>,
    /// Switch to this group after binding (default: the user's primary group).
    #[arg(long, value_name = "NAME", global = true)]
    group: Option<String>,
    /// Send a PROXY protocol header to the backend: off, v1 or v2 (v2
    /// carries ALPN, SNI and TLS facts as TLVs).
    #[arg(long, value_name = "VERSION", global = true)]
    proxy_protocol: Option<String>,
    /// Expect a PROXY protocol v1/v2 header from a fronting L4 balancer.
    #[arg(long, global = true)]
    accept_proxy: bool,
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
            backend: (!self.backend.is_empty()).then(|| Files::Many(self.backend.clone())),
            route: None,
            backend_eject: self.backend_eject,
            cert: (!self.cert.is_empty())
                .then(|| CertSetting::Files(Files::Many(self.cert.clone()))),
            key: (!self.key.is_empty()).then(|| Files::Many(self.key.clone())),
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
            min_tls: self.min_tls.clone(),
            max_tls: self.max_tls.clone(),
            ciphers: (!self.ciphers.is_empty()).then(|| self.ciphers.clone()),
            groups: (!self.groups.is_empty()).then(|| self.groups.clone()),
            alpn: (!self.alpn.is_empty()).then(|| self.alpn.clone()),
            client_ca: self.client_ca.clone(),
            client_auth: self.client_auth.clone(),
            unknown_sni: self.unknown_sni.clone(),
            record_layer: self.record_layer.clone(),
            idle_timeout: self.idle_timeout,
            max_connections: self.max_connections,
            drain_timeout: self.drain_timeout,
            user: self.user.clone(),
            group: self.group.clone(),
            proxy_protocol: self.proxy_protocol.clone(),
            accept_proxy: self.accept_proxy.then_some(true),
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
    let mut settings = load_settings(&cli)?;
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
        wait_for_signal(Handlers::default());
        return Ok(());
    }

    let generated = if mode == Mode::Demo {
        let backend = ringterm::rt::demo::start(([127, 0, 0, 1], 0).into())
            .map_err(|e| format!("demo backend: {e}"))?;
        settings.backend = Some(Files::One(backend.to_string()));
        if settings.listen.is_none() {
            settings.listen = Some(vec!["127.0.0.1:8443".to_owned()]);
        }
        settings
            .cert
            .get_or_insert_with(|| CertSetting::Files(Files::One("(generated)".to_owned())));
        settings
            .key
            .get_or_insert_with(|| Files::One("(generated)".to_owned()));
        Some(tls::generate_self_signed(&["localhost", "127.0.0.1"]).map_err(|e| e.to_string())?)
    } else {
        None
    };

    let config = settings
        .validate(&allowed_cpus())
        .map_err(|e| e.to_string())?;
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
        // Each worker puts its own counting store and ticketer in its copy
        // of the configuration (`rt::worker`); these stand for them.
        storage: config.resumption.uses_cache().then(|| {
            Arc::new(ringterm::rt::session_store::WorkerStore::unbound())
                as Arc<dyn rustls::server::StoresServerSessions>
        }),
        ticketer: ticketer
            .clone()
            .map(|t| t as Arc<dyn rustls::server::ProducesTickets>),
        tls13_tickets: config.tls13_tickets,
    };
    let tls_config = build_tls(&config, generated.as_ref(), resumption.clone())?;
    if let Some(t) = &ticketer {
        if config.ticket_key_files.is_empty() {
            ringterm::rt::ticket_keys::start_rotation(
                t.clone(),
                std::time::Duration::from_secs(config.ticket_rotation_s),
            )
            .map_err(|e| format!("--ticket-rotation: {e}"))?;
        }
    }

    let tls_config = Arc::new(arc_swap::ArcSwap::new(tls_config));
    let server = ringterm::rt::start(&config, tls_config.clone()).map_err(|e| e.to_string())?;
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
    let drain_timeout = std::time::Duration::from_millis(config.drain_timeout_ms);
    let mut reload = move || {
        // Certificates and TLS policy: everything is re-read and rebuilt;
        // on any error the old configuration stays. New connections get the
        // new one; established ones keep theirs.
        if mode != Mode::Demo {
            let rebuilt = load_settings(&cli)
                .and_then(|s| s.validate(&allowed_cpus()).map_err(|e| e.to_string()))
                .and_then(|c| build_tls(&c, None, resumption.clone()));
            match rebuilt {
                Ok(new) => {
                    tls_config.store(new);
                    tracing::info!("certificates and TLS policy reloaded");
                }
                Err(e) => tracing::error!("reload failed, keeping the old TLS configuration: {e}"),
            }
        }
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
    let hists = server.histograms.clone();
    let summary = move || {
        hists
            .collect_merged(ringterm::rt::admin::COLLECT_WAIT)
            .summary()
    };
    let mut usr1 = || tracing::info!("latency summary (SIGUSR1):\n{}", summary());
    wait_for_signal(Handlers {
        hup: Some(&mut reload),
        usr1: Some(&mut usr1),
    });
    drain(&server, drain_timeout);
    tracing::info!("latency summary at shutdown:\n{}", summary());
    Ok(())
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

fn init_logging(level: &str) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(format!("ringterm={level}"))
        .map_err(|_| format!("--log-level: invalid level {level:?}"))?;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    Ok(())
}

/// What to do on SIGHUP and SIGUSR1; a signal without a handler keeps its
/// default action.
#[derive(Default)]
struct Handlers<'a> {
    hup: Option<&'a mut dyn FnMut()>,
    usr1: Option<&'a mut dyn FnMut()>,
}

/// Blocks until SIGINT or SIGTERM, running the handlers of other signals.
fn wait_for_signal(mut handlers: Handlers<'_>) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
    let mut wanted = vec![SIGINT, SIGTERM];
    if handlers.hup.is_some() {
        wanted.push(SIGHUP);
    }
    if handlers.usr1.is_some() {
        wanted.push(SIGUSR1);
    }
    match signal_hook::iterator::Signals::new(&wanted) {
        Ok(mut signals) => {
            for sig in signals.forever() {
                let handler = match sig {
                    SIGHUP => handlers.hup.as_mut(),
                    SIGUSR1 => handlers.usr1.as_mut(),
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
        Err(_) => loop {
            std::thread::park();
        },
    }
}

/// The config file (if any) with the flags on top.
fn load_settings(cli: &Cli) -> Result<Settings, String> {
    let file = match &cli.config {
        Some(path) => Settings::from_toml_bytes(path, &read_file("--config", path)?)
            .map_err(|e| e.to_string())?,
        None => Settings::default(),
    };
    let mut flags = cli.settings();
    if !cli.route.is_empty() {
        flags.route = Some(
            cli.route
                .iter()
                .map(|r| ringterm::config::RouteSetting::parse_flag(r))
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?,
        );
    }
    Ok(file.merge(flags))
}

/// Reads the certificates and keys and builds the TLS configuration.
/// `generated` replaces the files (demo mode).
fn build_tls(
    config: &Config,
    generated: Option<&(String, String)>,
    resumption: tls::ResumptionParts,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let mut specs = Vec::with_capacity(config.certs.len());
    for files in &config.certs {
        let (cert_pem, key_pem) = match generated {
            Some((c, k)) => (c.clone().into_bytes(), k.clone().into_bytes()),
            None => (
                read_file("--cert", &files.cert)?,
                read_file("--key", &files.key)?,
            ),
        };
        let chain =
            tls::load_cert_chain(&files.cert, &cert_pem).map_err(|e| format!("--cert {e}"))?;
        let key = tls::load_private_key(&files.key, &key_pem).map_err(|e| format!("--key {e}"))?;
        specs.push(tls::CertSpec {
            chain,
            key,
            names: files.names.clone(),
            label: format!("--cert/--key {}/{}", files.cert, files.key),
        });
    }
    let t = &config.tls;
    let client_auth = match &t.client_ca {
        Some(file) => Some(tls::ClientAuth {
            file: file.clone(),
            ca_pem: read_file("--client-ca", file)?,
            required: t.client_auth_required,
        }),
        None => None,
    };
    let policy = tls::TlsPolicy {
        tls12: t.tls12,
        tls13: t.tls13,
        alpn: t.alpn.iter().map(|p| p.as_bytes().to_vec()).collect(),
        cipher_suites: t.ciphers.clone(),
        groups: t.groups.clone(),
        client_auth,
        unknown_sni: if t.reject_unknown_sni {
            tls::UnknownSni::Reject
        } else {
            tls::UnknownSni::Default
        },
        record_layer: t.record_layer,
    };
    tls::build_server_config_multi(specs, &policy, resumption).map_err(|e| match e {
        tls::TlsError::CertKey(msg) if msg.starts_with("--") => msg,
        tls::TlsError::Policy(..) => e.to_string(),
        other => format!("--cert/--key: {other}"),
    })
}
