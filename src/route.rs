//! Backend routing, sans-IO: which backend pool serves a connection (by
//! SNI), and which backend of the pool (round-robin, skipping backends that
//! recently failed to connect).
//!
//! Each worker owns one [`Pools`] (no sharing, no lock): a failure seen by
//! one worker takes the backend out of that worker's rotation only, as
//! haproxy does per process. Time comes in as milliseconds.

#![forbid(unsafe_code)]

use core::net::SocketAddr;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::metrics::{BackendCounters, WorkerCounters};

/// A resolved backend address: TCP (IPv4 or IPv6) or a UNIX socket path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BackendAddr {
    /// `IP:PORT`.
    Tcp(SocketAddr),
    /// `unix:/path`: a stream socket on this host.
    Unix(Arc<str>),
}

impl From<SocketAddr> for BackendAddr {
    fn from(a: SocketAddr) -> Self {
        Self::Tcp(a)
    }
}

impl fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(a) => a.fmt(f),
            Self::Unix(p) => write!(f, "unix:{p}"),
        }
    }
}

/// A backend as configured: an address, or a host name resolved by the
/// runtime (at start and on reload) into every address it has.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BackendSpec {
    /// `IP:PORT` or `unix:/path`.
    Addr(BackendAddr),
    /// `NAME:PORT`.
    Name {
        /// The host name.
        host: String,
        /// The port.
        port: u16,
    },
}

impl BackendSpec {
    /// Parses `IP:PORT`, `[IPv6]:PORT`, `unix:/path` or `NAME:PORT`.
    /// `None` when it is none of those.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        if let Some(path) = s.strip_prefix("unix:") {
            return (!path.is_empty()).then(|| Self::Addr(BackendAddr::Unix(path.into())));
        }
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Some(Self::Addr(BackendAddr::Tcp(a)));
        }
        let (host, port) = s.rsplit_once(':')?;
        let port = port.parse().ok()?;
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        let host = host.strip_suffix('.').unwrap_or(host);
        if host.len() > 253 || !host.split('.').all(label_ok) {
            return None;
        }
        Some(Self::Name {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

impl fmt::Display for BackendSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Addr(a) => a.fmt(f),
            Self::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// A change of a backend's state in one worker's rotation, for the
/// runtime to log and count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendEvent {
    /// A failed connect took the backend out of rotation.
    Ejected(BackendAddr),
    /// A connect succeeded on a backend that was out: it is back.
    Reinstated(BackendAddr),
}

/// One route: SNI names (exact or `*.suffix`) and their backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route<B = BackendAddr> {
    /// Names, lowercased; `*.example.com` matches one label.
    pub names: Vec<String>,
    /// Backends, tried round-robin.
    pub backends: Vec<B>,
}

/// The routing table: routes by SNI, and the default pool for every other
/// connection. As configured its backends are [`BackendSpec`]s; the
/// runtime resolves it ([`RouteTable::resolve`]) into addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTable<B = BackendAddr> {
    /// Per-SNI routes, in configuration order.
    pub routes: Vec<Route<B>>,
    /// The default backends (`--backend`, repeatable).
    pub default: Vec<B>,
    /// How long a backend that failed to connect stays out, ms.
    pub eject_ms: u64,
}

impl<B: Clone + PartialEq> RouteTable<B> {
    /// A table with only a default pool.
    pub fn single(backends: Vec<B>, eject_ms: u64) -> Self {
        Self {
            routes: Vec::new(),
            default: backends,
            eject_ms,
        }
    }

    /// Every distinct backend, in order of first appearance (the default
    /// pool first): the index of a backend in this list is its id in
    /// [`Pools::backend_id`] and in per-backend metrics.
    pub fn distinct(&self) -> Vec<B> {
        let mut out: Vec<B> = Vec::new();
        let all = self
            .default
            .iter()
            .chain(self.routes.iter().flat_map(|r| r.backends.iter()));
        for b in all {
            if !out.contains(b) {
                out.push(b.clone());
            }
        }
        out
    }
}

impl RouteTable<BackendSpec> {
    /// The table with every host name replaced by all the addresses
    /// `lookup` gives for it (in its order, duplicates dropped). The first
    /// name that does not resolve to any address is the error.
    pub fn resolve<E>(
        &self,
        mut lookup: impl FnMut(&str, u16) -> Result<Vec<SocketAddr>, E>,
    ) -> Result<RouteTable, (BackendSpec, Option<E>)> {
        let mut one =
            |specs: &[BackendSpec]| -> Result<Vec<BackendAddr>, (BackendSpec, Option<E>)> {
                let mut out: Vec<BackendAddr> = Vec::new();
                for spec in specs {
                    let addrs = match spec {
                        BackendSpec::Addr(a) => vec![a.clone()],
                        BackendSpec::Name { host, port } => {
                            let found = lookup(host, *port).map_err(|e| (spec.clone(), Some(e)))?;
                            if found.is_empty() {
                                return Err((spec.clone(), None));
                            }
                            found.into_iter().map(BackendAddr::Tcp).collect()
                        }
                    };
                    for a in addrs {
                        if !out.contains(&a) {
                            out.push(a);
                        }
                    }
                }
                Ok(out)
            };
        let default = one(&self.default)?;
        let mut routes = Vec::with_capacity(self.routes.len());
        for r in &self.routes {
            routes.push(Route {
                names: r.names.clone(),
                backends: one(&r.backends)?,
            });
        }
        Ok(RouteTable {
            routes,
            default,
            eject_ms: self.eject_ms,
        })
    }

    /// Whether any backend is a host name.
    pub fn has_names(&self) -> bool {
        self.distinct()
            .iter()
            .any(|b| matches!(b, BackendSpec::Name { .. }))
    }
}

/// Pool index: 0 is the default pool, `i + 1` is route `i`.
pub type PoolId = usize;

/// A worker's routing state.
#[derive(Debug)]
pub struct Pools {
    pools: Vec<Pool>,
    /// Per frontend: its default pool and its routes' names.
    fronts: Vec<Front>,
    eject_ms: u64,
    /// Per distinct backend (see [`RouteTable::distinct`]): whether it is
    /// out of rotation, and the transitions not yet taken by the runtime.
    distinct: Vec<BackendAddr>,
    down: Vec<bool>,
    events: Vec<BackendEvent>,
    /// Where per-backend figures are counted (ids as `distinct`), and
    /// where that set is published.
    counters: Vec<Arc<BackendCounters>>,
    published: Option<Arc<WorkerCounters>>,
}

/// One frontend's pools: its default pool and its routes by name.
#[derive(Debug, Default)]
struct Front {
    default: PoolId,
    exact: HashMap<String, PoolId>,
    wildcard: HashMap<String, PoolId>,
}

#[derive(Debug)]
struct Pool {
    backends: Vec<BackendAddr>,
    /// `down_until[i]`: backend i is skipped while `now_ms < down_until[i]`.
    down_until: Vec<u64>,
    /// `held[i]`: backend i failed its health checks; skipped until they
    /// pass again.
    held: Vec<bool>,
    next: usize,
}

impl Pools {
    /// The state for `table` (each worker builds its own).
    pub fn new(table: &RouteTable) -> Self {
        Self::new_multi(std::slice::from_ref(table))
    }

    /// The state for several frontends' tables (frontend `i` routes by
    /// `tables[i]`, see [`Pools::pool_for_frontend`]); a backend that
    /// several name is one backend (one ejection state, one set of
    /// counters). The ejection time is the first table's.
    pub fn new_multi(tables: &[RouteTable]) -> Self {
        let mut pools = Vec::new();
        let mut fronts = Vec::with_capacity(tables.len());
        let mut distinct: Vec<BackendAddr> = Vec::new();
        for table in tables {
            let mut front = Front {
                default: pools.len(),
                ..Front::default()
            };
            pools.push(Pool::new(table.default.clone()));
            for route in &table.routes {
                let id = pools.len();
                pools.push(Pool::new(route.backends.clone()));
                for name in &route.names {
                    let name = name.to_ascii_lowercase();
                    // The first route naming a name wins.
                    match name.strip_prefix("*.") {
                        Some(suffix) => front.wildcard.entry(suffix.to_owned()).or_insert(id),
                        None => front.exact.entry(name).or_insert(id),
                    };
                }
            }
            fronts.push(front);
            for b in table.distinct() {
                if !distinct.contains(&b) {
                    distinct.push(b);
                }
            }
        }
        Self {
            pools,
            fronts,
            eject_ms: tables.first().map_or(0, |t| t.eject_ms),
            down: vec![false; distinct.len()],
            distinct,
            events: Vec::new(),
            counters: Vec::new(),
            published: None,
        }
    }

    /// Takes `table` (host names resolved again): the round-robin
    /// positions, ejections and health verdicts of the backends that
    /// remain are kept, and so are their counters.
    pub fn update(&mut self, table: &RouteTable) {
        self.update_multi(std::slice::from_ref(table))
    }

    /// [`Pools::update`] for several frontends' tables (a reload: routes,
    /// backends and frontends may have changed). A backend that stays
    /// keeps its ejection, health verdict and counters.
    pub fn update_multi(&mut self, tables: &[RouteTable]) {
        let mut new = Pools::new_multi(tables);
        for (pi, np) in new.pools.iter_mut().enumerate() {
            let same = self.pools.get(pi);
            for (i, b) in np.backends.iter().enumerate() {
                let old = same
                    .into_iter()
                    .chain(self.pools.iter())
                    .find_map(|op| op.backends.iter().position(|x| x == b).map(|j| (op, j)));
                if let Some((op, j)) = old {
                    np.down_until[i] = op.down_until[j];
                    np.held[i] = op.held[j];
                }
            }
            if let Some(op) = same {
                if !np.backends.is_empty() {
                    np.next = op.next % np.backends.len();
                }
            }
        }
        for (id, b) in new.distinct.iter().enumerate() {
            if let Some(old) = self.backend_id(b) {
                new.down[id] = self.down[old];
            }
        }
        new.events = std::mem::take(&mut self.events);
        if let Some(published) = self.published.take() {
            new.count_into(published);
        }
        *self = new;
    }

    /// Counts per-backend figures (connects, failures, ejections, up) into
    /// `counters`, whose per-backend set is created here.
    /// Backends counted before (same address) keep their counters.
    pub fn count_into(&mut self, counters: Arc<WorkerCounters>) {
        let old = counters.backends.load_full();
        let set: Vec<Arc<BackendCounters>> = self
            .distinct
            .iter()
            .enumerate()
            .map(|(id, b)| {
                let name = b.to_string();
                let c = old
                    .iter()
                    .find(|c| c.name == name)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(BackendCounters::new(name)));
                c.up.set(u64::from(!self.down[id]));
                c
            })
            .collect();
        counters.backends.store(Arc::new(set.clone()));
        self.counters = set;
        self.published = Some(counters);
    }

    fn counters_of(&self, backend: &BackendAddr) -> Option<&BackendCounters> {
        let id = self.backend_id(backend)?;
        self.counters.get(id).map(|c| &**c)
    }

    /// The id of `backend` among the table's distinct backends.
    pub fn backend_id(&self, backend: &BackendAddr) -> Option<usize> {
        self.distinct.iter().position(|b| b == backend)
    }

    /// The table's distinct backends, by id.
    pub fn backends(&self) -> &[BackendAddr] {
        &self.distinct
    }

    /// Whether backend `id` is out of rotation (a connect failed and none
    /// succeeded since).
    pub fn is_down(&self, id: usize) -> bool {
        self.down.get(id).copied().unwrap_or(false)
    }

    /// Takes the ejections and reinstatements since the last call.
    pub fn take_events(&mut self) -> Vec<BackendEvent> {
        std::mem::take(&mut self.events)
    }

    /// Whether a transition is waiting for [`Pools::take_events`].
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// The pool for a connection with `sni` (lowercased) on the first
    /// frontend.
    pub fn pool_for(&self, sni: Option<&str>) -> PoolId {
        self.pool_for_frontend(0, sni)
    }

    /// The pool for a connection with `sni` (lowercased) on frontend
    /// `frontend` (the first one if there is no such frontend).
    pub fn pool_for_frontend(&self, frontend: usize, sni: Option<&str>) -> PoolId {
        let Some(front) = self.fronts.get(frontend).or(self.fronts.first()) else {
            return 0;
        };
        let Some(sni) = sni else {
            return front.default;
        };
        if let Some(&p) = front.exact.get(sni) {
            return p;
        }
        sni.split_once('.')
            .and_then(|(_, parent)| front.wildcard.get(parent))
            .copied()
            .unwrap_or(front.default)
    }

    /// The next backend of `pool` at `now_ms`: round-robin over the
    /// backends that are not out; when all are out, the one that comes back
    /// first (a pool never refuses to try). `None` only for an empty pool.
    /// `skip` excludes one backend (the one that just failed, for a retry).
    pub fn pick(
        &mut self,
        pool: PoolId,
        now_ms: u64,
        skip: Option<&BackendAddr>,
    ) -> Option<BackendAddr> {
        let p = self.pools.get_mut(pool)?;
        let n = p.backends.len();
        if n == 0 {
            return None;
        }
        for k in 0..n {
            let i = (p.next + k) % n;
            if now_ms >= p.down_until[i] && !p.held[i] && Some(&p.backends[i]) != skip {
                p.next = (i + 1) % n;
                return Some(p.backends[i].clone());
            }
        }
        // Everything is out (or skipped): the earliest to come back, other
        // than `skip` if there is a choice.
        let i = (0..n)
            .filter(|&i| n == 1 || Some(&p.backends[i]) != skip)
            .min_by_key(|&i| p.down_until[i])?;
        Some(p.backends[i].clone())
    }

    /// Records that `backend` of `pool` failed to connect at `now_ms`: it
    /// is skipped for the ejection time.
    pub fn failed(&mut self, pool: PoolId, backend: &BackendAddr, now_ms: u64) {
        let until = now_ms.saturating_add(self.eject_ms);
        self.set_down_until(pool, backend, until);
        if let Some(c) = self.counters_of(backend) {
            c.failures.inc();
        }
        self.set_down(backend, true);
    }

    /// Records a successful connect: the backend is back in rotation.
    pub fn succeeded(&mut self, pool: PoolId, backend: &BackendAddr) {
        self.set_down_until(pool, backend, 0);
        if let Some(c) = self.counters_of(backend) {
            c.connects.inc();
        }
        self.set_down(backend, false);
    }

    /// Marks `backend` down or up in every pool (an active health check's
    /// verdict): a down backend is skipped until its checks pass again
    /// (unless every backend of a pool is out).
    /// A verdict that changes nothing (the same as the last) is ignored.
    pub fn set_health(&mut self, backend: &BackendAddr, up: bool) {
        let mut changed = false;
        for p in &mut self.pools {
            for ((b, held), until) in p.backends.iter().zip(&mut p.held).zip(&mut p.down_until) {
                if b == backend && *held == up {
                    changed = true;
                    *held = !up;
                    if up {
                        *until = 0;
                    }
                }
            }
        }
        if changed {
            self.set_down(backend, !up);
        }
    }

    fn set_down(&mut self, backend: &BackendAddr, down: bool) {
        let Some(id) = self.backend_id(backend) else {
            return;
        };
        if self.down[id] != down {
            self.down[id] = down;
            if let Some(c) = self.counters_of(backend) {
                c.up.set(u64::from(!down));
                if down {
                    c.ejections.inc();
                }
            }
            self.events.push(if down {
                BackendEvent::Ejected(backend.clone())
            } else {
                BackendEvent::Reinstated(backend.clone())
            });
        }
    }

    fn set_down_until(&mut self, pool: PoolId, backend: &BackendAddr, until: u64) {
        if let Some(p) = self.pools.get_mut(pool) {
            for (b, down) in p.backends.iter().zip(&mut p.down_until) {
                if b == backend {
                    *down = until;
                }
            }
        }
    }

    /// Number of backends of `pool`.
    pub fn len(&self, pool: PoolId) -> usize {
        self.pools.get(pool).map_or(0, |p| p.backends.len())
    }
}

impl Pool {
    fn new(backends: Vec<BackendAddr>) -> Self {
        let n = backends.len();
        Self {
            backends,
            down_until: vec![0; n],
            held: vec![false; n],
            next: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(port: u16) -> BackendAddr {
        BackendAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    fn table() -> RouteTable {
        RouteTable {
            routes: vec![
                Route {
                    names: vec!["api.test".into(), "*.api.test".into()],
                    backends: vec![a(2), a(3)],
                },
                Route {
                    names: vec!["API.test".into(), "static.test".into()],
                    backends: vec![a(4)],
                },
            ],
            default: vec![a(1)],
            eject_ms: 1000,
        }
    }

    #[test]
    fn routes_by_sni_with_wildcards_and_default() {
        let p = Pools::new(&table());
        assert_eq!(p.pool_for(None), 0);
        assert_eq!(p.pool_for(Some("api.test")), 1);
        assert_eq!(p.pool_for(Some("v1.api.test")), 1);
        assert_eq!(p.pool_for(Some("a.v1.api.test")), 0);
        assert_eq!(p.pool_for(Some("static.test")), 2);
        assert_eq!(p.pool_for(Some("other.test")), 0);
    }

    #[test]
    fn each_frontend_routes_by_its_own_table() {
        let other = RouteTable {
            routes: vec![Route {
                names: vec!["api.test".into()],
                backends: vec![a(9), a(1)],
            }],
            default: vec![a(8)],
            eject_ms: 1000,
        };
        let mut p = Pools::new_multi(&[table(), other.clone()]);
        assert_eq!(p.pool_for_frontend(0, Some("api.test")), 1);
        assert_eq!(p.pool_for_frontend(1, None), 3);
        assert_eq!(p.pool_for_frontend(1, Some("api.test")), 4);
        assert_eq!(p.pool_for_frontend(1, Some("static.test")), 3);
        assert_eq!(p.pick(3, 0, None), Some(a(8)));
        // One backend named by both frontends is one backend.
        assert_eq!(p.backends().len(), 6);
        p.failed(0, &a(1), 0);
        assert!(p.is_down(p.backend_id(&a(1)).unwrap()));
        // A reload that drops the first frontend: the state of a(1) stays.
        p.update_multi(&[other]);
        assert_eq!(p.pool_for_frontend(0, Some("api.test")), 1);
        assert_eq!(
            p.pool_for_frontend(5, None),
            0,
            "an unknown frontend is the first"
        );
        assert!(p.is_down(p.backend_id(&a(1)).unwrap()));
        assert_eq!(p.pick(1, 10, None), Some(a(9)));
    }

    #[test]
    fn round_robin_skips_failed_backends_until_they_come_back() {
        let mut p = Pools::new(&table());
        let picks: Vec<_> = (0..4).map(|_| p.pick(1, 0, None).unwrap()).collect();
        assert_eq!(picks, vec![a(2), a(3), a(2), a(3)]);
        p.failed(1, &a(2), 100);
        assert_eq!(p.pick(1, 200, None), Some(a(3)));
        assert_eq!(p.pick(1, 300, None), Some(a(3)));
        // Back after the ejection time.
        let picks: Vec<_> = (0..2).map(|_| p.pick(1, 1100, None).unwrap()).collect();
        assert!(picks.contains(&a(2)) && picks.contains(&a(3)), "{picks:?}");
        // All out: the earliest to come back is still tried.
        p.failed(1, &a(2), 2000);
        p.failed(1, &a(3), 2500);
        assert_eq!(p.pick(1, 2600, None), Some(a(2)));
        p.succeeded(1, &a(3));
        assert_eq!(p.pick(1, 2600, None), Some(a(3)));
    }

    #[test]
    fn retry_skips_the_backend_that_just_failed() {
        let mut p = Pools::new(&table());
        assert_eq!(p.pick(1, 0, Some(&a(2))), Some(a(3)));
        assert_eq!(p.pick(1, 0, Some(&a(3))), Some(a(2)));
        // A single backend is retried itself.
        assert_eq!(p.pick(2, 0, Some(&a(4))), Some(a(4)));
        let empty = RouteTable::single(vec![], 10);
        assert_eq!(Pools::new(&empty).pick(0, 0, None), None);
    }

    #[test]
    fn ejection_and_reinstatement_are_reported_once_per_transition() {
        let mut p = Pools::new(&table());
        assert_eq!(p.backends(), &[a(1), a(2), a(3), a(4)]);
        p.failed(1, &a(2), 0);
        p.failed(1, &a(2), 10);
        assert!(p.is_down(1));
        assert_eq!(p.take_events(), vec![BackendEvent::Ejected(a(2))]);
        p.succeeded(1, &a(2));
        p.succeeded(1, &a(2));
        assert!(!p.is_down(1));
        assert_eq!(p.take_events(), vec![BackendEvent::Reinstated(a(2))]);
        // A health check's verdict applies to every pool.
        p.set_health(&a(3), false);
        assert_eq!(p.pick(1, 200, None), Some(a(2)));
        // Held out for as long as the checks fail, past the ejection time.
        assert_eq!(p.pick(1, 1_000_000, None), Some(a(2)));
        p.set_health(&a(3), true);
        let picks: Vec<_> = (0..2).map(|_| p.pick(1, 300, None).unwrap()).collect();
        assert!(picks.contains(&a(3)), "{picks:?}");
        let unix = BackendAddr::Unix("/run/app.sock".into());
        assert_eq!(unix.to_string(), "unix:/run/app.sock");
    }

    #[test]
    fn an_updated_table_keeps_the_state_and_counters_of_remaining_backends() {
        let counters = Arc::new(WorkerCounters::default());
        let mut p = Pools::new(&RouteTable::single(vec![a(1), a(2)], 1000));
        p.count_into(counters.clone());
        p.succeeded(0, &a(1));
        p.failed(0, &a(2), 0);
        let _ = p.take_events();
        // A name now resolves to a(2) and a(3); a(1) is gone.
        p.update(&RouteTable::single(vec![a(2), a(3)], 1000));
        assert!(p.is_down(p.backend_id(&a(2)).unwrap()), "still ejected");
        assert_eq!(p.pick(0, 10, None), Some(a(3)));
        let set = counters.backends.load_full();
        let names: Vec<_> = set.iter().map(|c| c.name.clone()).collect();
        assert_eq!(names, ["127.0.0.1:2", "127.0.0.1:3"]);
        assert_eq!(set[0].failures.get(), 1, "kept");
        assert_eq!(set[0].up.get(), 0);
        assert_eq!(set[1].up.get(), 1);
        p.succeeded(0, &a(3));
        assert_eq!(set[1].connects.get(), 1);
    }

    #[test]
    fn backend_specs_parse_and_names_resolve_to_every_address() {
        let p = |s: &str| BackendSpec::parse(s);
        assert_eq!(p("127.0.0.1:2"), Some(BackendSpec::Addr(a(2))));
        assert_eq!(
            p("unix:/run/app.sock"),
            Some(BackendSpec::Addr(BackendAddr::Unix("/run/app.sock".into())))
        );
        assert_eq!(
            p("LocalHost:8080"),
            Some(BackendSpec::Name {
                host: "localhost".into(),
                port: 8080
            })
        );
        assert_eq!(p("[::1]:80").unwrap().to_string(), "[::1]:80");
        for bad in [
            "nope",
            "unix:",
            "a b:80",
            "host:99999",
            ":80",
            "a..b:1",
            "x:",
        ] {
            assert_eq!(p(bad), None, "{bad}");
        }
        let table = RouteTable {
            routes: vec![Route {
                names: vec!["x.test".into()],
                backends: vec![p("app.test:9").unwrap(), p("127.0.0.1:9").unwrap()],
            }],
            default: vec![p("127.0.0.1:1").unwrap(), p("app.test:9").unwrap()],
            eject_ms: 5,
        };
        assert!(table.has_names());
        let v6: SocketAddr = "[::1]:9".parse().unwrap();
        let r = table
            .resolve(|host, port| {
                assert_eq!((host, port), ("app.test", 9));
                Ok::<_, ()>(vec![SocketAddr::from(([127, 0, 0, 1], 9)), v6])
            })
            .unwrap();
        assert_eq!(r.default, vec![a(1), a(9), BackendAddr::Tcp(v6)]);
        assert_eq!(r.routes[0].backends, vec![a(9), BackendAddr::Tcp(v6)]);
        let err = table.resolve(|_, _| Ok::<_, ()>(vec![])).unwrap_err();
        assert_eq!(err.0.to_string(), "app.test:9");
    }
}
