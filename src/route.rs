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

/// One route: SNI names (exact or `*.suffix`) and their backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Names, lowercased; `*.example.com` matches one label.
    pub names: Vec<String>,
    /// Backends, tried round-robin.
    pub backends: Vec<SocketAddr>,
}

/// The routing table: routes by SNI, and the default pool for every other
/// connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTable {
    /// Per-SNI routes, in configuration order.
    pub routes: Vec<Route>,
    /// The default backends (`--backend`, repeatable).
    pub default: Vec<SocketAddr>,
    /// How long a backend that failed to connect stays out, ms.
    pub eject_ms: u64,
}

impl RouteTable {
    /// A table with only a default pool.
    pub fn single(backends: Vec<SocketAddr>, eject_ms: u64) -> Self {
        Self {
            routes: Vec::new(),
            default: backends,
            eject_ms,
        }
    }
}

/// Pool index: 0 is the default pool, `i + 1` is route `i`.
pub type PoolId = usize;

/// A worker's routing state.
#[derive(Debug)]
pub struct Pools {
    pools: Vec<Pool>,
    exact: HashMap<String, PoolId>,
    wildcard: HashMap<String, PoolId>,
    eject_ms: u64,
}

#[derive(Debug)]
struct Pool {
    backends: Vec<SocketAddr>,
    /// `down_until[i]`: backend i is skipped while `now_ms < down_until[i]`.
    down_until: Vec<u64>,
    next: usize,
}

impl Pools {
    /// The state for `table` (each worker builds its own).
    pub fn new(table: &RouteTable) -> Self {
        let mut pools = vec![Pool::new(table.default.clone())];
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (i, route) in table.routes.iter().enumerate() {
            pools.push(Pool::new(route.backends.clone()));
            for name in &route.names {
                let name = name.to_ascii_lowercase();
                // The first route naming a name wins.
                match name.strip_prefix("*.") {
                    Some(suffix) => wildcard.entry(suffix.to_owned()).or_insert(i + 1),
                    None => exact.entry(name).or_insert(i + 1),
                };
            }
        }
        Self {
            pools,
            exact,
            wildcard,
            eject_ms: table.eject_ms,
        }
    }

    /// The pool for a connection with `sni` (lowercased).
    pub fn pool_for(&self, sni: Option<&str>) -> PoolId {
        let Some(sni) = sni else { return 0 };
        if let Some(&p) = self.exact.get(sni) {
            return p;
        }
        sni.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .copied()
            .unwrap_or(0)
    }

    /// The next backend of `pool` at `now_ms`: round-robin over the
    /// backends that are not out; when all are out, the one that comes back
    /// first (a pool never refuses to try). `None` only for an empty pool.
    /// `skip` excludes one backend (the one that just failed, for a retry).
    pub fn pick(
        &mut self,
        pool: PoolId,
        now_ms: u64,
        skip: Option<SocketAddr>,
    ) -> Option<SocketAddr> {
        let p = self.pools.get_mut(pool)?;
        let n = p.backends.len();
        if n == 0 {
            return None;
        }
        for k in 0..n {
            let i = (p.next + k) % n;
            if now_ms >= p.down_until[i] && Some(p.backends[i]) != skip {
                p.next = (i + 1) % n;
                return Some(p.backends[i]);
            }
        }
        // Everything is out (or skipped): the earliest to come back, other
        // than `skip` if there is a choice.
        let i = (0..n)
            .filter(|&i| n == 1 || Some(p.backends[i]) != skip)
            .min_by_key(|&i| p.down_until[i])?;
        Some(p.backends[i])
    }

    /// Records that `backend` of `pool` failed to connect at `now_ms`: it
    /// is skipped for the ejection time.
    pub fn failed(&mut self, pool: PoolId, backend: SocketAddr, now_ms: u64) {
        let until = now_ms.saturating_add(self.eject_ms);
        self.set_down_until(pool, backend, until);
    }

    /// Records a successful connect: the backend is back in rotation.
    pub fn succeeded(&mut self, pool: PoolId, backend: SocketAddr) {
        self.set_down_until(pool, backend, 0);
    }

    fn set_down_until(&mut self, pool: PoolId, backend: SocketAddr, until: u64) {
        if let Some(p) = self.pools.get_mut(pool) {
            for (b, down) in p.backends.iter().zip(&mut p.down_until) {
                if *b == backend {
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
    fn new(backends: Vec<SocketAddr>) -> Self {
        let n = backends.len();
        Self {
            backends,
            down_until: vec![0; n],
            next: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
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
    fn round_robin_skips_failed_backends_until_they_come_back() {
        let mut p = Pools::new(&table());
        let picks: Vec<_> = (0..4).map(|_| p.pick(1, 0, None).unwrap()).collect();
        assert_eq!(picks, vec![a(2), a(3), a(2), a(3)]);
        p.failed(1, a(2), 100);
        assert_eq!(p.pick(1, 200, None), Some(a(3)));
        assert_eq!(p.pick(1, 300, None), Some(a(3)));
        // Back after the ejection time.
        let picks: Vec<_> = (0..2).map(|_| p.pick(1, 1100, None).unwrap()).collect();
        assert!(picks.contains(&a(2)) && picks.contains(&a(3)), "{picks:?}");
        // All out: the earliest to come back is still tried.
        p.failed(1, a(2), 2000);
        p.failed(1, a(3), 2500);
        assert_eq!(p.pick(1, 2600, None), Some(a(2)));
        p.succeeded(1, a(3));
        assert_eq!(p.pick(1, 2600, None), Some(a(3)));
    }

    #[test]
    fn retry_skips_the_backend_that_just_failed() {
        let mut p = Pools::new(&table());
        assert_eq!(p.pick(1, 0, Some(a(2))), Some(a(3)));
        assert_eq!(p.pick(1, 0, Some(a(3))), Some(a(2)));
        // A single backend is retried itself.
        assert_eq!(p.pick(2, 0, Some(a(4))), Some(a(4)));
        let empty = RouteTable::single(vec![], 10);
        assert_eq!(Pools::new(&empty).pick(0, 0, None), None);
    }
}
