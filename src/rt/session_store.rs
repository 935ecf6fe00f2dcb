//! The per-core session cache as rustls sees it, and its cross-core sync.
//!
//! rustls wants one `StoresServerSessions` object shared by every
//! connection (it must be `Send + Sync`). [`WorkerStore`] is that object, and
//! it holds no state: each worker thread keeps its own
//! [`SessionCache`](crate::session::cache::SessionCache) in a thread-local,
//! and rustls always calls the store on the thread that runs the handshake.
//! So `put`/`get`/`take` touch only the calling worker's cache: no lock, no
//! atomic.
//!
//! Cross-core sync: a put or take on one worker is published to every other
//! worker through a bounded lock-free queue per (source, destination) pair
//! ([`SyncHub`]); each worker merges its inbound queues on its own thread:
//! before each handshake ([`drain`]) and from its timer every
//! `--session-sync-interval` ([`sync`]). A full queue drops the
//! message (counted): a slow worker can delay resumption, never make memory
//! grow.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_queue::ArrayQueue;
use rustls::server::{ProducesTickets, StoresServerSessions};

use crate::metrics::WorkerCounters;
use crate::session::cache::{CacheConfig, CacheStats, SessionCache, SessionKind, SyncMsg};
use crate::session::stateful;

/// Messages one queue holds before it drops new ones.
pub const SYNC_QUEUE_CAPACITY: usize = 16 * 1024;

/// The queues between workers: `queues[dst * workers + src]`.
pub struct SyncHub {
    workers: usize,
    queues: Vec<ArrayQueue<Arc<SyncMsg>>>,
    dropped: AtomicU64,
}

impl std::fmt::Debug for SyncHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncHub")
            .field("workers", &self.workers)
            .finish()
    }
}

impl SyncHub {
    /// Queues for `workers` workers.
    pub fn new(workers: usize, capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            workers,
            queues: (0..workers * workers)
                .map(|_| ArrayQueue::new(capacity.max(1)))
                .collect(),
            dropped: AtomicU64::new(0),
        })
    }

    fn publish(&self, src: usize, msg: SyncMsg) {
        if self.workers < 2 {
            return;
        }
        let msg = Arc::new(msg);
        for dst in (0..self.workers).filter(|&d| d != src) {
            if self.queues[dst * self.workers + src]
                .push(msg.clone())
                .is_err()
            {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Messages dropped because a queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

struct Local {
    id: usize,
    cache: SessionCache,
    hub: Arc<SyncHub>,
    epoch: Instant,
}

impl Local {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

thread_local! {
    /// The worker's own cache. rustls calls its session store through the
    /// `ServerConfig`, which gives the store no per-worker context, so the
    /// per-core cache lives with the worker's thread; the store object each
    /// worker installs in its own copy of the configuration
    /// ([`WorkerStore::new`]) carries the worker's counters.
    static LOCAL: RefCell<Option<Local>> = const { RefCell::new(None) };
}

/// Installs worker `id`'s cache on the current thread. `epoch` must be the
/// same for every worker: entries carry their creation time across cores.
pub fn install(id: usize, config: CacheConfig, hub: Arc<SyncHub>, epoch: Instant) {
    LOCAL.with(|l| {
        *l.borrow_mut() = Some(Local {
            id,
            cache: SessionCache::new(config),
            hub,
            epoch,
        });
    });
}

/// Merges what other workers published since the last call. Returns this
/// worker's cache statistics and the hub's drop count.
pub fn sync() -> Option<(CacheStats, usize, u64)> {
    LOCAL.with(|l| {
        let mut guard = l.borrow_mut();
        let local = guard.as_mut()?;
        merge_inbound(local);
        Some((local.cache.stats(), local.cache.len(), local.hub.dropped()))
    })
}

/// Merges what other workers published, before a handshake looks up a
/// session. With this, a session published anywhere before the client sent
/// its ClientHello is visible here, so rapid reconnections landing on
/// another core resume too (even TLS 1.3's single-use stateful tickets); the
/// timer's periodic [`sync`] covers idle workers. Cheap when nothing is
/// pending: one empty-queue check per other worker.
pub fn drain() {
    LOCAL.with(|l| {
        if let Ok(mut guard) = l.try_borrow_mut() {
            if let Some(local) = guard.as_mut() {
                merge_inbound(local);
            }
        }
    })
}

fn merge_inbound(local: &mut Local) {
    let now = local.now_ms();
    let n = local.hub.workers;
    for src in (0..n).filter(|&s| s != local.id) {
        let queue = &local.hub.queues[local.id * n + src];
        // Bounded by the queue's capacity: producers can't keep us here.
        for _ in 0..queue.capacity() {
            let Some(msg) = queue.pop() else { break };
            let msg = Arc::try_unwrap(msg).unwrap_or_else(|shared| (*shared).clone());
            local.cache.merge(msg, now);
        }
    }
}

/// Sessions (key, value) waiting to be put into the L2 store.
type Puts = Vec<(Vec<u8>, Vec<u8>)>;

thread_local! {
    /// Sessions rustls stored on this worker, for the L2 store's puts:
    /// `None` when no store is configured. The worker drains it each turn.
    static L2_PUTS: RefCell<Option<Puts>> = const { RefCell::new(None) };
}

/// Makes this worker's puts go to the L2 store as well (see
/// [`take_l2_puts`]).
pub fn enable_l2_puts() {
    L2_PUTS.with(|p| *p.borrow_mut() = Some(Vec::new()));
}

/// The sessions put since the last call, for the L2 store (appended to
/// `out`).
pub fn take_l2_puts(out: &mut Puts) {
    L2_PUTS.with(|p| {
        if let Ok(mut guard) = p.try_borrow_mut() {
            if let Some(puts) = guard.as_mut() {
                out.append(puts);
            }
        }
    });
}

/// Whether this worker's cache holds a live session for `key` (no counter
/// moves).
pub fn l1_contains(key: &[u8]) -> bool {
    with_local(|l| {
        let now = l.now_ms();
        l.cache.contains(key, now)
    })
    .unwrap_or(false)
}

/// Puts a session found in the L2 store into this worker's cache (and the
/// other workers'), without writing it back to the store.
pub fn l1_insert(key: Vec<u8>, value: Vec<u8>) {
    with_local(|l| {
        let now = l.now_ms();
        let kind = SessionKind::of_value(&value);
        let msg = l.cache.put_kind(key, value, kind, now);
        l.hub.publish(l.id, msg);
    });
}

/// Removes a single-use session the L2 store says was used elsewhere, here
/// and on the other workers.
pub fn l1_remove(key: &[u8]) {
    with_local(|l| {
        if let Some(msg) = l.cache.remove(key) {
            l.hub.publish(l.id, msg);
        }
    });
}

fn with_local<R>(f: impl FnOnce(&mut Local) -> R) -> Option<R> {
    LOCAL.with(|l| l.try_borrow_mut().ok()?.as_mut().map(f))
}

/// rustls's session store: dispatches to the calling worker's cache and
/// counts lookups by kind in that worker's counters. rustls looks TLS 1.2
/// session IDs up with `get` and single-use TLS 1.3 stateful tickets with
/// `take`. Each worker puts its own in its copy of the configuration.
#[derive(Debug)]
pub struct WorkerStore {
    counters: Arc<WorkerCounters>,
}

impl WorkerStore {
    /// The store of the worker that owns `counters`.
    pub fn new(counters: Arc<WorkerCounters>) -> Self {
        Self { counters }
    }

    /// A store that counts nowhere: the shared configuration's, which each
    /// worker replaces with its own.
    pub fn unbound() -> Self {
        Self::new(Arc::default())
    }
}

impl StoresServerSessions for WorkerStore {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        with_local(|l| {
            let now = l.now_ms();
            let kind = SessionKind::of_value(&value);
            L2_PUTS.with(|p| {
                if let Ok(mut guard) = p.try_borrow_mut() {
                    if let Some(puts) = guard.as_mut() {
                        puts.push((key.clone(), value.clone()));
                    }
                }
            });
            let msg = l.cache.put_kind(key, value, kind, now);
            l.hub.publish(l.id, msg);
            true
        })
        .unwrap_or(false)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        let found = with_local(|l| {
            let now = l.now_ms();
            l.cache.get(key, now)
        })
        .flatten();
        match found {
            Some(_) => self.counters.session_id_hits.inc(),
            None => self.counters.session_id_misses.inc(),
        }
        found
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        let found = with_local(|l| {
            let now = l.now_ms();
            // rustls takes only TLS 1.3 tickets: a TLS 1.2 session under
            // the same key (a client offering its session ID as a ticket)
            // is neither resumed nor consumed.
            if !stateful::may_take(l.cache.kind_of(key, now)) {
                return None;
            }
            let (value, msg) = l.cache.take(key, now);
            if let Some(msg) = msg {
                l.hub.publish(l.id, msg);
            }
            value
        })
        .flatten();
        match found {
            Some(_) => self.counters.session_stateful_hits.inc(),
            None => self.counters.session_stateful_misses.inc(),
        }
        found
    }

    fn can_cache(&self) -> bool {
        true
    }
}

/// TLS 1.3 stateful tickets made through rustls's ticketer hook, so that
/// they advertise `--session-timeout` instead of rustls's fixed 24 h (see
/// [`crate::session::stateful`]). Underneath it is the worker's session
/// store (its [`WorkerStore`], under the frontend's tag when sessions are
/// isolated, `tls::isolation`): a TLS 1.3 session is put under a random
/// [`stateful::ID_LEN`]-byte ID (and so reaches the other workers and the
/// L2 store like any put) and the ID is the ticket; `decrypt` takes it out
/// (single use, `GETDEL` in the L2 store). TLS 1.2 sessions get no ticket:
/// rustls sends an empty NewSessionTicket and keeps the session ID
/// resumption through the store.
pub struct StatefulTickets {
    store: Arc<dyn StoresServerSessions>,
    lifetime_s: u32,
}

impl std::fmt::Debug for StatefulTickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The name is how `stateful::is_stateful` recognises it.
        f.debug_struct(stateful::DEBUG_NAME)
            .field("lifetime_s", &self.lifetime_s)
            .finish()
    }
}

impl StatefulTickets {
    /// A ticketer over the worker's session store `store` (the one in the
    /// same configuration), advertising `lifetime_s` seconds.
    pub fn new(store: Arc<dyn StoresServerSessions>, lifetime_s: u32) -> Self {
        Self { store, lifetime_s }
    }

    /// One that counts nowhere: the shared configuration's, which each
    /// worker replaces with its own.
    pub fn unbound(lifetime_s: u32) -> Self {
        Self::new(Arc::new(WorkerStore::unbound()), lifetime_s)
    }
}

impl ProducesTickets for StatefulTickets {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        self.lifetime_s
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        if !stateful::issues_ticket_for(plain) {
            return None;
        }
        let mut id = vec![0u8; stateful::ID_LEN];
        aws_lc_rs::rand::fill(&mut id).ok()?;
        self.store.put(id.clone(), plain.to_vec()).then_some(id)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() != stateful::ID_LEN {
            // Not one of ours (a TLS 1.2 ticket from elsewhere, a stale
            // stateless one): no lookup, no miss counted.
            return None;
        }
        self.store.take(ticket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session value as rustls serializes it: no SNI, then the version.
    fn value(version: [u8; 2], tail: u8) -> Vec<u8> {
        vec![0, version[0], version[1], 0x13, 0x01, tail]
    }

    fn installed() {
        install(
            0,
            CacheConfig {
                capacity: 16,
                timeout_ms: 60_000,
            },
            SyncHub::new(1, 4),
            Instant::now(),
        );
    }

    #[test]
    fn stateful_tickets_are_single_use_cache_keys_for_tls13_only() {
        installed();
        let counters = Arc::new(WorkerCounters::default());
        let store = Arc::new(WorkerStore::new(counters.clone()));
        let t = StatefulTickets::new(store.clone(), 123);
        assert!(t.enabled());
        assert_eq!(t.lifetime(), 123);
        assert!(stateful::is_stateful(&t));

        // TLS 1.2: no ticket (rustls sends an empty NewSessionTicket).
        assert_eq!(t.encrypt(&value([3, 3], 1)), None);
        assert_eq!(with_local(|l| l.cache.len()), Some(0));

        // TLS 1.3: a random 32-byte ID, stored in the worker's cache.
        let v13 = value([3, 4], 2);
        let id = t.encrypt(&v13).expect("a TLS 1.3 ticket");
        assert_eq!(id.len(), stateful::ID_LEN);
        let other = t.encrypt(&v13).expect("a second ticket");
        assert_ne!(id, other);
        assert!(l1_contains(&id));
        assert_eq!(
            with_local(|l| l.cache.kind_of(&id, l.now_ms())).flatten(),
            Some(SessionKind::Tls13Stateful)
        );

        // Single use.
        assert_eq!(t.decrypt(&id), Some(v13.clone()));
        assert_eq!(t.decrypt(&id), None);
        assert!(!l1_contains(&id));
        assert_eq!(counters.session_stateful_hits.get(), 1);
        assert_eq!(counters.session_stateful_misses.get(), 1);

        // A TLS 1.2 session ID offered as a ticket neither resumes nor
        // consumes the session: the session-ID path still finds it.
        let sid = vec![7u8; 32];
        let v12 = value([3, 3], 3);
        assert!(store.put(sid.clone(), v12.clone()));
        assert_eq!(t.decrypt(&sid), None);
        assert_eq!(store.get(&sid), Some(v12));
        assert_eq!(counters.session_stateful_hits.get(), 1);
        assert_eq!(counters.session_stateful_misses.get(), 2);

        // Tickets of another length are not ours: not even looked up.
        assert_eq!(t.decrypt(&[1; 100]), None);
        assert_eq!(counters.session_stateful_misses.get(), 2);
    }
}
