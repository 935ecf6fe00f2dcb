//! What the workers take live from a reload, and the reload itself.
//!
//! [`LiveHub`] holds the part of the configuration that workers apply on
//! their own loops: every frontend's backend table (host names resolved on
//! the calling thread, never on a worker), its PROXY settings, the
//! timeouts and connection limit, and the listening sockets (each address
//! with its frontend). A change is published as a new snapshot with a new
//! generation, and the workers are woken through their eventfds; each takes
//! it into its pools, its connection settings and its listeners
//! (`worker::apply_live`). Sockets bound by a reload wait in the snapshot,
//! one per worker, until that worker takes its own.
//!
//! [`ConfigReloader`] is SIGHUP: it re-reads the configuration, keeps what
//! needs a restart ([`crate::reload_plan`], one warning per changed
//! setting), prepares everything that can fail (host names, certificates,
//! new listening sockets) and only then swaps the TLS configurations and
//! publishes the snapshot. On any error nothing changes.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use std::os::fd::OwnedFd;

use super::handover::{Kind, Offered};
use super::reload::{ConfigSource, ReloadReport, TlsReloader};
use super::wake::WakeFd;
use crate::config::{Config, Settings};
use crate::metrics::process;
use crate::reload_plan::{self, RestartNeeded};
use crate::route::{BackendSpec, RouteTable};

/// One listen address: its sockets and its frontend.
#[derive(Debug, Clone)]
pub struct ListenerGroup {
    /// Stable id: a worker's listeners know their group by it.
    pub id: u64,
    /// The configured address (port 0 stays 0).
    pub want: SocketAddr,
    /// The bound address.
    pub bound: SocketAddr,
    /// Index of its frontend in [`Live::frontends`].
    pub frontend: usize,
    /// Sockets bound by a reload, one per worker, each taken by its worker
    /// (the worker-indexed slot is emptied then). Empty for the sockets of
    /// the start, which the workers got with their spec.
    inbox: Arc<Vec<Mutex<Vec<TcpListener>>>>,
}

impl ListenerGroup {
    /// A group whose sockets the workers already hold.
    pub fn started(id: u64, want: SocketAddr, bound: SocketAddr, frontend: usize) -> Self {
        Self {
            id,
            want,
            bound,
            frontend,
            inbox: Arc::new(Vec::new()),
        }
    }

    /// Worker `worker`'s sockets of a group a reload added (taken once).
    pub fn take_for(&self, worker: usize) -> Vec<TcpListener> {
        match self.inbox.get(worker) {
            // Only the signal thread and worker `worker` touch this slot,
            // once each per reload: never on the accept path.
            Some(slot) => std::mem::take(&mut *slot.lock().unwrap_or_else(|p| p.into_inner())),
            None => Vec::new(),
        }
    }
}

/// One frontend's connection settings that apply live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrontendLive {
    /// Expect a PROXY header before the ClientHello.
    pub accept_proxy: bool,
    /// PROXY header toward the backends.
    pub proxy_out: Option<crate::proxy::Version>,
}

/// The snapshot workers apply.
#[derive(Debug, Clone)]
pub struct Live {
    /// Each frontend's backends and routes, resolved.
    pub tables: Vec<RouteTable>,
    /// Each frontend's PROXY settings.
    pub frontends: Vec<FrontendLive>,
    /// Every listen address.
    pub listeners: Vec<ListenerGroup>,
    /// The settings of the configuration running now: workers read the
    /// `live` options among them (timeouts, the connection limit) through
    /// their accessors when they take the snapshot, into their own
    /// fields; nothing reads them per connection.
    pub settings: Arc<Settings>,
}

impl Live {
    /// The snapshot for `config`, with its resolved `tables` and
    /// `listeners`.
    pub fn new(config: &Config, tables: Vec<RouteTable>, listeners: Vec<ListenerGroup>) -> Self {
        Self {
            tables,
            frontends: config
                .frontends
                .iter()
                .map(|f| FrontendLive {
                    accept_proxy: f.accept_proxy,
                    proxy_out: f.proxy_protocol,
                })
                .collect(),
            listeners,
            settings: Arc::new(config.settings.clone()),
        }
    }

    /// The frontend of listener group `id`.
    pub fn frontend_of(&self, id: u64) -> Option<usize> {
        self.listeners
            .iter()
            .find(|g| g.id == id)
            .map(|g| g.frontend)
    }
}

/// The listener groups a reload runs with, and the addresses added and
/// removed.
type ListenerPlan = (
    Vec<ListenerGroup>,
    Vec<SocketAddr>,
    Vec<SocketAddr>,
    Vec<(u64, Vec<OwnedFd>)>,
);

/// The current snapshot, its generation, and the workers to wake.
pub struct LiveHub {
    live: ArcSwap<Live>,
    generation: AtomicU64,
    wakes: Vec<Arc<WakeFd>>,
    /// The configured (unresolved) tables, for [`LiveHub::resolve_again`],
    /// and the next listener group id. Signal thread only.
    state: Mutex<(Vec<RouteTable<BackendSpec>>, u64)>,
    /// Active health checks, told the new backends.
    health: Option<Arc<super::health::HealthHub>>,
    /// Duplicates of every listening socket, for hand-overs
    /// (`--upgrade-socket`). Signal thread and start only.
    offers: Mutex<Offers>,
}

impl std::fmt::Debug for LiveHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveHub")
            .field("generation", &self.generation())
            .field("live", &self.load())
            .finish_non_exhaustive()
    }
}

/// Listening sockets offered to a new process, by listener group.
#[derive(Default)]
struct Offers {
    enabled: bool,
    fds: Vec<(u64, Vec<OwnedFd>)>,
    /// Told the whole set when a reload changed it.
    hook: Option<Box<dyn Fn(Vec<Offered>) + Send + Sync>>,
}

impl LiveHub {
    /// A hub starting with `live` (configured as `specs`).
    pub fn new(
        live: Live,
        specs: Vec<RouteTable<BackendSpec>>,
        wakes: Vec<Arc<WakeFd>>,
        health: Option<Arc<super::health::HealthHub>>,
    ) -> Arc<Self> {
        let next = live.listeners.iter().map(|g| g.id + 1).max().unwrap_or(0);
        Arc::new(Self {
            live: ArcSwap::from_pointee(live),
            generation: AtomicU64::new(0),
            wakes,
            state: Mutex::new((specs, next)),
            health,
            offers: Mutex::new(Offers::default()),
        })
    }

    fn offers(&self) -> std::sync::MutexGuard<'_, Offers> {
        self.offers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Duplicates of the start's listening sockets, by group (kept for
    /// hand-overs until [`LiveHub::drop_offers`]).
    pub fn set_offers(&self, fds: Vec<(u64, Vec<OwnedFd>)>) {
        let mut o = self.offers();
        o.enabled = true;
        o.fds = fds;
    }

    /// No hand-overs (no `--upgrade-socket`): closes the duplicates, so a
    /// removed listener's socket closes with the workers' descriptors.
    pub fn drop_offers(&self) {
        let mut o = self.offers();
        o.enabled = false;
        o.fds.clear();
    }

    /// Calls `hook` with every listening socket (duplicates) whenever a
    /// reload adds or removes a listen address.
    pub fn on_listeners_changed(&self, hook: Box<dyn Fn(Vec<Offered>) + Send + Sync>) {
        self.offers().hook = Some(hook);
    }

    /// After a reload: keeps the duplicates of the groups in `current`,
    /// adds `new`, and tells the hook when anything changed.
    fn update_offers(&self, current: &[ListenerGroup], new: Vec<(u64, Vec<OwnedFd>)>) {
        let mut o = self.offers();
        if !o.enabled {
            return;
        }
        let before = o.fds.len();
        o.fds.retain(|(id, _)| current.iter().any(|g| g.id == *id));
        let changed = o.fds.len() != before || !new.is_empty();
        o.fds.extend(new);
        if !changed {
            return;
        }
        if let Some(hook) = &o.hook {
            let all = o
                .fds
                .iter()
                .flat_map(|(_, fds)| fds)
                .filter_map(|fd| fd.try_clone().ok())
                .map(|fd| Offered {
                    kind: Kind::Listener,
                    fd,
                })
                .collect();
            hook(all);
        }
    }

    /// The snapshot's generation: it moves on at every change.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current snapshot.
    pub fn load(&self) -> Arc<Live> {
        self.live.load_full()
    }

    fn publish(&self, live: Live) {
        if let Some(h) = &self.health {
            h.set_backends(distinct(&live.tables));
        }
        self.live.store(Arc::new(live));
        self.generation.fetch_add(1, Ordering::AcqRel);
        for w in &self.wakes {
            w.wake();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Vec<RouteTable<BackendSpec>>, u64)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolves the backends' host names again (on the calling thread);
    /// the workers take the new tables when an address changed. Returns
    /// whether one did; on a resolution error nothing changes.
    pub fn resolve_again(&self) -> Result<bool, super::StartError> {
        let state = self.lock();
        let tables = state
            .0
            .iter()
            .map(super::resolve_routes)
            .collect::<Result<Vec<_>, _>>()?;
        let live = self.load();
        if live.tables == tables {
            return Ok(false);
        }
        self.publish(Live {
            tables,
            ..(*live).clone()
        });
        Ok(true)
    }

    /// The listener groups for `config` on `workers` workers: the running
    /// ones whose address stays (with their frontend updated), and new ones
    /// bound here (`backlog`). Returns them with the addresses added and
    /// removed. Nothing is published: dropping the result closes what was
    /// bound.
    fn plan_listeners(&self, config: &Config, next_id: &mut u64) -> Result<ListenerPlan, String> {
        let live = self.load();
        let mut left: Vec<&ListenerGroup> = live.listeners.iter().collect();
        let mut out = Vec::new();
        let mut added = Vec::new();
        let mut dups = Vec::new();
        for (frontend, f) in config.frontends.iter().enumerate() {
            for &want in &f.listen {
                let found = left
                    .iter()
                    .position(|g| g.want == want && g.frontend == frontend)
                    .or_else(|| left.iter().position(|g| g.want == want))
                    .or_else(|| left.iter().position(|g| g.bound == want));
                match found {
                    Some(i) => {
                        let g = left.remove(i);
                        out.push(ListenerGroup {
                            frontend,
                            ..g.clone()
                        });
                    }
                    None => {
                        let socks = super::listener::bind_all(
                            want,
                            self.wakes.len(),
                            config.settings.backlog(),
                        )
                        .map_err(|e| format!("--listen {want}: {e}"))?;
                        let bound = socks[0]
                            .local_addr()
                            .map_err(|e| format!("--listen {want}: {e}"))?;
                        added.push(bound);
                        let d = socks
                            .iter()
                            .map(|s| s.try_clone().map(OwnedFd::from))
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(|e| format!("--listen {want}: {e}"))?;
                        dups.push((*next_id, d));
                        out.push(ListenerGroup {
                            id: *next_id,
                            want,
                            bound,
                            frontend,
                            inbox: Arc::new(
                                socks.into_iter().map(|s| Mutex::new(vec![s])).collect(),
                            ),
                        });
                        *next_id += 1;
                    }
                }
            }
        }
        let removed = left.iter().map(|g| g.bound).collect();
        Ok((out, added, removed, dups))
    }
}

/// Every distinct backend of `tables`, in order of first appearance.
pub fn distinct(tables: &[RouteTable]) -> Vec<crate::route::BackendAddr> {
    let mut out = Vec::new();
    for b in tables.iter().flat_map(|t| t.distinct()) {
        if !out.contains(&b) {
            out.push(b);
        }
    }
    out
}

/// What a successful reload did.
#[derive(Debug, Clone)]
pub struct ReloadOutcome {
    /// Settings that changed but need a restart (kept at their running
    /// value).
    pub restart_needed: Vec<RestartNeeded>,
    /// Certificates and OCSP.
    pub tls: ReloadReport,
    /// Listen addresses added (bound).
    pub listeners_added: Vec<SocketAddr>,
    /// Listen addresses removed (no longer accepting).
    pub listeners_removed: Vec<SocketAddr>,
    /// Frontends now served.
    pub frontends: usize,
    /// Distinct backends now used, over every frontend.
    pub backends: usize,
}

/// SIGHUP: re-reads the configuration and applies everything it can.
pub struct ConfigReloader {
    current: Mutex<Config>,
    source: ConfigSource,
    tls: Arc<TlsReloader>,
    hub: Arc<LiveHub>,
}

impl ConfigReloader {
    /// A reloader for a server started with `config`, re-reading the
    /// configuration through `source`.
    pub fn new(
        config: Config,
        source: ConfigSource,
        tls: Arc<TlsReloader>,
        hub: Arc<LiveHub>,
    ) -> Self {
        Self {
            current: Mutex::new(config),
            source,
            tls,
            hub,
        }
    }

    /// The configuration running now (after the last successful reload).
    pub fn current(&self) -> Config {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-reads the configuration and applies it; on any error nothing
    /// changes and the error is returned (one line naming the flag, key or
    /// file). Counted in `ringterm_reloads_total{result}`.
    pub fn reload(&self) -> Result<ReloadOutcome, String> {
        let result = self.try_reload();
        process::global().reload_done(result.is_ok(), super::reload::now_unix());
        result
    }

    fn try_reload(&self) -> Result<ReloadOutcome, String> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let new = (self.source)()?;
        let (run, restart_needed) = reload_plan::plan(&current, &new)?;
        // Everything that can fail, before anything changes.
        let tables = run
            .frontends
            .iter()
            .map(|f| super::resolve_routes(&f.routes))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let prepared = self.tls.prepare(&run)?;
        let mut state = self.hub.lock();
        let mut next_id = state.1;
        let (listeners, added, removed, dups) = self.hub.plan_listeners(&run, &mut next_id)?;
        // Apply.
        let tls = self.tls.commit(prepared);
        let backends = distinct(&tables).len();
        self.hub.update_offers(&listeners, dups);
        self.hub.publish(Live::new(&run, tables, listeners));
        *state = (
            run.frontends.iter().map(|f| f.routes.clone()).collect(),
            next_id,
        );
        drop(state);
        let frontends = run.frontends.len();
        *current = run;
        Ok(ReloadOutcome {
            restart_needed,
            tls,
            listeners_added: added,
            listeners_removed: removed,
            frontends,
            backends,
        })
    }
}
