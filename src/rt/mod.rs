//! The runtime: the only code that touches io_uring, sockets or the clock.
//!
//! - `worker`: one pinned OS thread per core with its own io_uring and a
//!   plain completion loop;
//! - `ring`: ring setup and the kernel probe; `bufring`: the provided read
//!   buffers; `wake`: the eventfd other threads wake a worker with;
//! - `listener`: SO_REUSEPORT listening sockets (socket2); `live`: what a
//!   reload changes while workers run (backends, routes, frontends,
//!   listeners) and the SIGHUP reload itself;
//! - `conn`: the connection driver: submits what the connection machine
//!   (`crate::conn`) asks for and feeds the completions back;
//! - `ctx`: what a worker's connections share (worker context, signals);
//! - `ops`: the io_uring ops we submit ourselves (recv, send, connect,
//!   shutdown, timeout, cancel);
//! - `admin`: the admin/metrics endpoint, on its own thread;
//! - `demo`: the built-in demo HTTP/1.1 backend;
//! - `drain`: graceful shutdown (stop accepting, drain, cut);
//! - `privdrop`: `--user`/`--group`, after binding;
//! - `handover`: listening sockets handed to a new process (upgrades);
//! - `notify`: systemd readiness notifications (`sd_notify`);
//! - `upgrade`: taking over on start, handing over, `SIGUSR2`.

pub mod access_log;
pub mod acme;
pub mod admin;
pub mod bufring;
pub mod coalesce;
pub mod config_file;
pub mod conn;
pub mod ctx;
pub mod demo;
pub mod drain;
pub mod handover;
pub mod health;
pub mod heap;
pub mod hist_hub;
pub mod listener;
pub mod live;
pub mod notify;
pub mod ocsp_fetch;
pub mod ops;
pub mod privdrop;
pub mod reload;
pub mod ring;
pub mod session_store;
pub mod store;
pub mod ticket_keys;
pub mod upgrade;
pub mod wake;
pub mod worker;

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::metrics::WorkerCounters;

/// Errors starting the server. Each names the flag at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A listen address could not be bound.
    #[error("--listen {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The admin address could not be bound.
    #[error("--admin {addr}: {source}")]
    Admin {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A worker's io_uring could not be set up: a kernel feature is
    /// missing (the message names it and the kernel that has it), io_uring
    /// is disabled, or `--ring-entries`/`--sqpoll`/`--read-buffers` asked
    /// for more than the kernel gives.
    #[error("{0}")]
    Runtime(String),
    /// A worker thread could not be started.
    #[error("worker thread: {0}")]
    Thread(std::io::Error),
    /// The listening sockets could not be taken over (`--upgrade-socket`).
    #[error("--upgrade-socket {path}: {source}")]
    Upgrade {
        /// The socket path.
        path: String,
        /// Why.
        source: handover::HandoverError,
    },
    /// `--user`/`--group` could not be resolved or applied.
    #[error("{0}")]
    Privileges(#[from] privdrop::PrivError),
    /// The session store's address or password file (`--session-store*`).
    #[error("{0}")]
    SessionStore(String),
    /// A backend host name did not resolve.
    #[error("--backend {backend}: {reason}")]
    Backend {
        /// The backend as configured.
        backend: String,
        /// Why.
        reason: String,
    },
    /// The access log file could not be opened.
    #[error("--access-log {path}: {source}")]
    AccessLog {
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// The workers' store settings: the address resolved and the password
/// read, once, at startup.
fn store_spec(config: &Config) -> Result<Option<store::StoreSpec>, StartError> {
    use crate::config::StoreAddr;
    let Some(spec) = &config.session_store else {
        return Ok(None);
    };
    let addr = match &spec.addr {
        StoreAddr::Tcp(host, port) => {
            use std::net::ToSocketAddrs;
            let found = (host.as_str(), *port)
                .to_socket_addrs()
                .map_err(|e| {
                    StartError::SessionStore(format!("--session-store {host}:{port}: {e}"))
                })?
                .next()
                .ok_or_else(|| {
                    StartError::SessionStore(format!("--session-store {host}:{port}: no address"))
                })?;
            socket2::SockAddr::from(found)
        }
        StoreAddr::Unix(path) => socket2::SockAddr::unix(path)
            .map_err(|e| StartError::SessionStore(format!("--session-store unix://{path}: {e}")))?,
    };
    let password = match &spec.password_file {
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|e| {
                StartError::SessionStore(format!("--session-store-password-file {path}: {e}"))
            })?;
            let text = String::from_utf8_lossy(&bytes);
            let pw = text.trim_end_matches(['\r', '\n']);
            if pw.is_empty() || pw.contains(['\r', '\n']) {
                return Err(StartError::SessionStore(format!(
                    "--session-store-password-file {path}: must hold one non-empty line"
                )));
            }
            Some(pw.as_bytes().to_vec())
        }
        None => None,
    };
    Ok(Some(store::StoreSpec {
        addr,
        config: crate::session::l2::L2Config {
            prefix: spec.prefix.clone().into_bytes(),
            password,
            db: spec.db,
            ttl_s: config.settings.session_timeout(),
            timeout: Duration::from_millis(spec.timeout_ms),
            connect_timeout: Duration::from_millis(spec.connect_timeout_ms),
        },
    }))
}

/// Resolves the host names of `routes` (every address of each name, by
/// the system resolver), at start and on reload.
pub fn resolve_routes(
    routes: &crate::route::RouteTable<crate::route::BackendSpec>,
) -> Result<crate::route::RouteTable, StartError> {
    use std::net::ToSocketAddrs;
    routes
        .resolve(|host, port| {
            (host, port)
                .to_socket_addrs()
                .map(|a| a.collect::<Vec<_>>())
        })
        .map_err(|(spec, err)| StartError::Backend {
            backend: spec.to_string(),
            reason: match err {
                Some(e) => format!("cannot resolve: {e}"),
                None => "the name has no address".into(),
            },
        })
}

/// A running server.
pub struct Server {
    /// The bound listen addresses (ports resolved).
    pub listen: Vec<SocketAddr>,
    /// The bound admin address, if any.
    pub admin: Option<SocketAddr>,
    /// Each worker's counters.
    pub counters: Vec<Arc<WorkerCounters>>,
    /// Each worker's histograms, on demand.
    pub histograms: Arc<hist_hub::HistHub>,
    /// Shutdown signalling shared with the workers.
    pub drain_hub: Arc<drain::DrainHub>,
    /// A duplicate of every listening socket, for a hand-over to a new
    /// process (`--upgrade-socket`); drop them when not needed.
    pub offered: Vec<handover::Offered>,
    /// The access log, when on (reopen it on SIGHUP/SIGUSR1).
    pub access_log: Option<access_log::AccessLog>,
    /// What reloads change live (backends, routes, frontends' settings,
    /// listeners); [`live::ConfigReloader`] publishes there.
    pub live: Arc<live::LiveHub>,
}

impl Server {
    /// Graceful shutdown, on the calling thread: every worker stops
    /// accepting and closes its listeners; open connections run until they
    /// finish or `timeout` passes, then are cut. Returns early once `abort`
    /// is set (a second signal). The workers keep running afterwards (the
    /// process is about to exit), so histograms can still be collected.
    pub fn drain(&self, timeout: Duration, abort: &AtomicBool) -> drain::DrainOutcome {
        drain::run(&self.drain_hub, &self.counters, timeout, abort)
    }
}

/// Binds every socket, starts every worker, and returns once all serve.
/// `tls` is swapped on reload; each new connection takes the current one.
pub fn start(config: &Config, tls: reload::TlsSet) -> Result<Server, StartError> {
    start_inherited(config, tls, Vec::new(), None)
}

/// [`start`], serving on the listening sockets another process handed over
/// where their addresses match `--listen` (and `--admin`), and binding the
/// rest. See [`listener::adopt`].
pub fn start_inherited(
    config: &Config,
    tls: reload::TlsSet,
    inherited: Vec<std::net::TcpListener>,
    inherited_admin: Option<std::net::TcpListener>,
) -> Result<Server, StartError> {
    let workers = config.workers();
    // Host names resolve before anything is bound: a name that does not is
    // a clear startup error.
    let tables = config
        .frontends
        .iter()
        .map(|f| resolve_routes(&f.routes))
        .collect::<Result<Vec<_>, _>>()?;
    let mut all_backends: Vec<crate::route::BackendAddr> = Vec::new();
    for b in tables.iter().flat_map(|t| t.distinct()) {
        if !all_backends.contains(&b) {
            tracing::debug!(backend = %b, "backend");
            all_backends.push(b);
        }
    }
    let access_log = match &config.access_log {
        Some(target) => {
            let format = if config.access_log_json {
                access_log::Format::Json
            } else {
                access_log::Format::Text
            };
            let target = access_log::Target::parse(target).unwrap_or(access_log::Target::Stderr);
            Some(
                access_log::AccessLog::start(target, format, workers).map_err(|source| {
                    StartError::AccessLog {
                        path: config.access_log.clone().unwrap_or_default(),
                        source,
                    }
                })?,
            )
        }
        None => None,
    };
    let settings = Arc::new(config.settings.clone());
    let health_check_interval = settings.health_check_interval();
    let health = (health_check_interval > 0).then(|| {
        health::HealthHub::new(
            all_backends.clone(),
            std::time::Duration::from_millis(health_check_interval),
            std::time::Duration::from_millis(settings.connect_timeout()),
        )
    });
    let mut inherited = listener::Inherited::new(inherited);
    // Unknown users and groups are startup errors before anything is bound.
    let privileges = privdrop::resolve(config.user.as_deref(), config.group.as_deref())?;
    // Read before privileges are dropped (the password file may be root's).
    let store = store_spec(config)?;
    // Bind everything on this thread first: a port in use is a clear error
    // before any worker starts.
    let mut per_worker: Vec<Vec<(std::net::TcpListener, u64)>> =
        (0..workers).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    let mut groups = Vec::new();
    let mut offered = Vec::new();
    // Each group's duplicates, for a hand-over after a reload changed the
    // listeners (dropped when upgrades are off).
    let mut group_offers = Vec::new();
    let addrs = config
        .frontends
        .iter()
        .enumerate()
        .flat_map(|(f, fe)| fe.listen.iter().map(move |a| (f, *a)));
    for (group, (frontend, addr)) in addrs.enumerate() {
        let group = group as u64;
        let listeners = match inherited.take(addr) {
            Some(taken) => listener::adopt(taken, workers, settings.backlog()),
            None => listener::bind_all(addr, workers, settings.backlog()),
        }
        .map_err(|source| StartError::Bind { addr, source })?;
        let local = listeners[0]
            .local_addr()
            .map_err(|source| StartError::Bind { addr, source })?;
        bound.push(local);
        groups.push(live::ListenerGroup::started(group, addr, local, frontend));
        let mut dups = Vec::new();
        for l in &listeners {
            let dup = l
                .try_clone()
                .map_err(|source| StartError::Bind { addr, source })?;
            dups.push(std::os::fd::OwnedFd::from(dup));
        }
        group_offers.push((group, dups));
        for (i, l) in listeners.into_iter().enumerate() {
            let dup = l
                .try_clone()
                .map_err(|source| StartError::Bind { addr, source })?;
            offered.push(handover::Offered {
                kind: handover::Kind::Listener,
                fd: dup.into(),
            });
            // Adopted sockets may outnumber the workers: none is closed.
            per_worker[i % workers].push((l, group));
        }
    }
    inherited.close_unused();
    let counters: Vec<Arc<WorkerCounters>> = (0..workers)
        .map(|_| Arc::new(WorkerCounters::default()))
        .collect();
    let wakes: Vec<Arc<wake::WakeFd>> = (0..workers)
        .map(|_| wake::WakeFd::new().map(Arc::new))
        .collect::<Result<_, _>>()
        .map_err(StartError::Thread)?;
    let histograms = hist_hub::HistHub::new(wakes.clone());
    let live_hub = live::LiveHub::new(
        live::Live::new(config, tables, groups),
        config.frontends.iter().map(|f| f.routes.clone()).collect(),
        wakes.clone(),
        health.clone(),
    );
    live_hub.set_offers(group_offers);
    let admin_listener = match config.admin {
        Some(addr) => {
            let l = match inherited_admin.filter(|l| {
                l.local_addr()
                    .is_ok_and(|have| listener::same_address(addr, have))
            }) {
                Some(l) => l,
                None => std::net::TcpListener::bind(addr)
                    .map_err(|source| StartError::Admin { addr, source })?,
            };
            let dup = l
                .try_clone()
                .map_err(|source| StartError::Admin { addr, source })?;
            offered.push(handover::Offered {
                kind: handover::Kind::Admin,
                fd: dup.into(),
            });
            Some((addr, l))
        }
        None => None,
    };
    // Every socket is bound: drop root before any thread serves.
    if let Some(target) = &privileges {
        privdrop::apply(target)?;
        match target.uid {
            Some(uid) => tracing::info!(uid, gid = target.gid, "switched user and group"),
            None => tracing::info!(gid = target.gid, "switched group"),
        }
    }
    let admin = match admin_listener {
        Some((addr, listener)) => Some(
            admin::serve(listener, counters.clone(), histograms.clone())
                .map_err(|source| StartError::Admin { addr, source })?,
        ),
        None => None,
    };
    let drain_hub = drain::DrainHub::new(wakes.clone());

    let cache = config.resumption.uses_cache().then(|| worker::CacheSpec {
        config: crate::session::cache::CacheConfig {
            capacity: settings.session_cache_size(),
            timeout_ms: settings.session_timeout() * 1000,
        },
        hub: session_store::SyncHub::new(workers, session_store::SYNC_QUEUE_CAPACITY),
        epoch: std::time::Instant::now(),
        sync_interval_ms: settings.session_sync_interval(),
    });
    let (tx, rx) = std::sync::mpsc::channel();
    for (id, listeners) in per_worker.into_iter().enumerate() {
        let spec = worker::WorkerSpec {
            id,
            cpu: config.pins[id],
            listeners,
            tls: tls.clone(),
            live: live_hub.clone(),
            access_log: access_log
                .as_ref()
                .map(|l| l.for_worker(id, counters[id].clone())),
            health: health.clone(),
            acme: config.acme.as_ref().map(|_| acme::challenges()),
            settings: settings.clone(),
            drain: drain_hub.clone(),
            counters: counters[id].clone(),
            histograms: histograms.clone(),
            wake: wakes[id].clone(),
            cache: cache.clone(),
            store: store.clone(),
        };
        let tx = tx.clone();
        std::thread::Builder::new()
            .name(format!("ringterm-w{id}"))
            .spawn(move || worker::run(spec, tx))
            .map_err(StartError::Thread)?;
    }
    drop(tx);
    for _ in 0..workers {
        match rx.recv() {
            Ok(Ok(_)) => {}
            Ok(Err(msg)) => return Err(StartError::Runtime(msg)),
            Err(_) => return Err(StartError::Runtime("a worker exited during start".into())),
        }
    }
    if let Some(h) = &health {
        h.start(wakes.clone()).map_err(StartError::Thread)?;
    }
    Ok(Server {
        live: live_hub,
        access_log,
        listen: bound,
        admin,
        counters,
        histograms,
        drain_hub,
        offered,
    })
}
