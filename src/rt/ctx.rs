//! What a worker's connections share: the worker context (configuration,
//! routing, counters, deadlines, the drain's flags). Both the worker loop
//! (`worker`) and the connection driver (`conn`) use it.

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ServerConfig;

use super::{session_store, ticket_keys};
use crate::conn::ConnConfig;
use crate::deadline::Deadlines;
use crate::metrics::hist::{Histograms, Metric};
use crate::metrics::WorkerCounters;
use crate::route::Pools;

/// A worker's copy of a shared TLS configuration: (the shared one, the
/// copy).
pub(super) type LocalTls = (Arc<ServerConfig>, Arc<ServerConfig>);

/// Everything a worker's connections read.
pub struct WorkerCtx {
    /// Worker index.
    pub id: usize,
    /// Each frontend's TLS configuration (shared; swapped on reload).
    pub tls: super::reload::TlsSet,
    /// This worker's copy of each (see [`WorkerCtx::tls_config`]), with the
    /// shared one it was made from, by frontend.
    pub(super) local_tls: RefCell<Vec<Option<LocalTls>>>,
    /// This worker's backend pools (round-robin, ejection).
    pub pools: RefCell<Pools>,
    /// Per-connection settings, by frontend (see [`WorkerCtx::conn_config`]).
    pub conns: Vec<Arc<ConnConfig>>,
    /// Connections above which new ones are closed at once; 0 = unlimited.
    pub max_connections: u64,
    /// This worker's counters.
    pub counters: Arc<WorkerCounters>,
    /// This worker's latency histograms (only this thread records).
    pub hist: RefCell<Histograms>,
    /// How often the session cache merges other workers' sessions; `None`
    /// when the cache is off.
    pub(super) sync_interval_ms: Option<u64>,
    pub(super) deadlines: RefCell<Deadlines>,
    pub(super) epoch: Instant,
    /// Set once the drain began: accept loops end.
    pub(super) draining: Cell<bool>,
    /// Set once the drain timeout passed: connections stop.
    pub(super) cutting: Cell<bool>,
    /// The access log's per-worker buffer, when it is on.
    pub(super) access_log: Option<RefCell<super::access_log::WorkerLog>>,
    /// Each listener's address (by listener index), for the access log.
    pub(super) frontends: Vec<Option<std::net::SocketAddr>>,
    /// Each listener's frontend (by listener index).
    pub(super) listener_frontend: Vec<usize>,
    /// Health checks' verdicts and the generation last applied.
    pub(super) health: Option<(Arc<super::health::HealthHub>, Cell<u64>)>,
    /// What reloads change live, and the generation last taken.
    pub(super) live: (Arc<super::live::LiveHub>, Cell<u64>),
}

impl WorkerCtx {
    /// Milliseconds since the worker started (its deadlines' clock).
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// `at` on the deadlines' clock, rounded up.
    pub fn ms_at(&self, at: Instant) -> u64 {
        let d = at.saturating_duration_since(self.epoch);
        d.as_millis() as u64 + u64::from(!d.subsec_nanos().is_multiple_of(1_000_000))
    }

    /// Whether the drain timeout passed and connections must stop.
    pub fn is_cutting(&self) -> bool {
        self.cutting.get()
    }

    /// The frontend of listener `listener` (the first for an unknown one).
    pub fn frontend_of(&self, listener: usize) -> usize {
        self.listener_frontend.get(listener).copied().unwrap_or(0)
    }

    /// The connection settings of frontend `frontend`.
    pub fn conn_config(&self, frontend: usize) -> &Arc<ConnConfig> {
        self.conns
            .get(frontend)
            .or(self.conns.first())
            .expect("at least one frontend")
    }

    /// Frontend `frontend`'s TLS configuration for this worker: a copy of
    /// the shared one whose session store and ticketer count into this
    /// worker's counters (rustls calls them with no other context). Made
    /// again when a reload swapped the shared one.
    pub fn tls_config(&self, frontend: usize) -> Arc<ServerConfig> {
        let set = self.tls.load();
        let Some(front) = set.get(frontend).or(set.first()) else {
            unreachable!("a TLS configuration per frontend, at least one");
        };
        let shared = front.config.clone();
        let frontend = if frontend < set.len() { frontend } else { 0 };
        let mut all = self.local_tls.borrow_mut();
        if all.len() < set.len() {
            all.resize(set.len(), None);
        }
        let local = &mut all[frontend];
        match &*local {
            Some((from, mine)) if Arc::ptr_eq(from, &shared) => mine.clone(),
            _ => {
                let mut mine = ServerConfig::clone(&shared);
                if self.uses_session_cache() {
                    let store = Arc::new(session_store::WorkerStore::new(self.counters.clone()));
                    mine.session_storage = match &front.isolate {
                        Some(name) => {
                            Arc::new(crate::tls::isolation::FrontendStore::new(store, name))
                        }
                        None => store,
                    };
                }
                if crate::session::stateful::is_stateful(&*mine.ticketer) {
                    // Over this worker's store, isolated as the frontend's.
                    mine.ticketer = Arc::new(session_store::StatefulTickets::new(
                        mine.session_storage.clone(),
                        mine.ticketer.lifetime(),
                    ));
                } else if mine.ticketer.enabled() {
                    mine.ticketer = Arc::new(ticket_keys::CountingTicketer::new(
                        mine.ticketer.clone(),
                        self.counters.clone(),
                    ));
                }
                let mine = Arc::new(mine);
                *local = Some((Arc::clone(&shared), mine.clone()));
                mine
            }
        }
    }

    /// Arms `key`'s deadline at `at_ms` on the deadlines' clock.
    pub fn set_deadline_at(&self, key: i64, at_ms: u64) {
        self.deadlines.borrow_mut().set(key, at_ms);
    }

    /// Disarms `key`'s deadline. Returns false if it had already expired.
    pub fn clear_deadline(&self, key: i64) -> bool {
        let mut d = self.deadlines.borrow_mut();
        let armed = d.contains(key);
        d.clear(key);
        armed
    }

    /// Whether the session cache is on.
    pub fn uses_session_cache(&self) -> bool {
        self.sync_interval_ms.is_some()
    }

    /// Records `since`'s elapsed time into histogram `m`.
    pub fn record_since(&self, m: Metric, since: Instant) {
        self.record(m, since.elapsed());
    }

    /// Records a duration into histogram `m`.
    pub fn record(&self, m: Metric, d: Duration) {
        let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
        self.hist.borrow_mut().record(m, us);
    }
}
