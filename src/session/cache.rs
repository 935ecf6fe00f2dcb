//! Per-worker TLS session cache, sans-IO, in the spirit of mbedTLS `ssl_cache`.
//!
//! Each worker owns one [`SessionCache`]: no locks, no atomics. The cache never
//! reads the clock; every operation takes `now_ms`, milliseconds of the
//! monotonic clock that all workers share. Workers keep their caches roughly
//! in step by publishing the [`SyncMsg`] that [`SessionCache::put`] and
//! [`SessionCache::take`] return, and by feeding the messages of other workers
//! to [`SessionCache::merge`].
//!
//! # Lifetime
//!
//! An entry created at `t` is valid while `now_ms < t + timeout_ms`. A remote
//! entry keeps the creation time of the worker that made it, so syncing never
//! extends a session's life. Expired entries are removed lazily: when a lookup
//! finds one, or when a full cache needs room.
//!
//! # Capacity and eviction
//!
//! The cache never holds more than `capacity` entries. When an insert of a new
//! key finds it full, it removes the oldest entry by creation time (ties
//! broken by insertion order). With one timeout for all entries, the expired
//! entries are exactly the oldest ones, so "reuse an expired slot first,
//! otherwise evict the oldest" is the same rule; the removal is counted in
//! [`CacheStats::expired`] or [`CacheStats::evictions`] accordingly. Lookups
//! do not refresh an entry's age: eviction is by creation time, not LRU.
//!
//! # Cost
//!
//! Entries live in a `HashMap` (SipHash with a random key, since session IDs
//! come from clients). Their ages are indexed by `(created_ms, seq)` in two
//! parts: a FIFO `VecDeque` for entries that arrive in creation order (every
//! local put, and remote ones no older than the newest entry), and a
//! `BTreeMap` only for the rare remote entry older than that. The oldest
//! entry is the smaller of the two fronts, so eviction stays exact. Removals
//! from the FIFO are lazy (stale records are skipped when they reach the
//! front) and the FIFO is compacted when stale records outnumber live ones,
//! so it stays within a constant factor of `capacity`. Every operation is
//! O(1) amortized, except inserting or removing an out-of-order remote
//! entry, which is O(log m) in the number of such entries.

use std::collections::{BTreeMap, HashMap, VecDeque};

/// Limits of a cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    /// Most entries held at once; 0 caches nothing.
    pub capacity: usize,
    /// Lifetime of an entry in milliseconds: an entry created at `t` is valid
    /// while `now_ms < t + timeout_ms`.
    pub timeout_ms: u64,
}

/// What an entry holds, for per-kind counters only: the cache treats every
/// kind alike. The runtime tags each put with the kind of the handshake that
/// made it (rustls's store API does not say), and the tag travels with the
/// entry across cores.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionKind {
    /// Not known to the caller.
    #[default]
    Unknown,
    /// A TLS 1.2 session, looked up by session ID.
    Tls12Id,
    /// A TLS 1.3 stateful (single-use) ticket.
    Tls13Stateful,
}

impl SessionKind {
    /// Every kind, in [`index`](Self::index) order.
    pub const ALL: [SessionKind; 3] = [Self::Unknown, Self::Tls12Id, Self::Tls13Stateful];

    /// The kind of a session rustls stores, read from its serialized value:
    /// rustls encodes a `ServerSessionValue` as an optional SNI (a presence
    /// byte, then a u8-length name), then the protocol version
    /// (`msgs/persist.rs`). A unit test with real handshakes pins it.
    pub fn of_value(value: &[u8]) -> Self {
        let at = match value.first() {
            Some(0) => 1,
            Some(1) => match value.get(1) {
                Some(&len) => 2 + len as usize,
                None => return Self::Unknown,
            },
            _ => return Self::Unknown,
        };
        match value.get(at..at + 2) {
            Some([3, 4]) => Self::Tls13Stateful,
            Some([3, 3]) => Self::Tls12Id,
            _ => Self::Unknown,
        }
    }

    /// Position in [`CacheStats::by_kind`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// A short label for metrics: `unknown`, `tls12_id`, `tls13_stateful`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Tls12Id => "tls12_id",
            Self::Tls13Stateful => "tls13_stateful",
        }
    }
}

/// Removals and arrivals of one [`SessionKind`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KindStats {
    /// Expired entries of this kind removed.
    pub expired: u64,
    /// Valid entries of this kind evicted to make room.
    pub evictions: u64,
    /// Remote puts of this kind stored.
    pub remote_puts: u64,
    /// Remote takes that removed a local entry of this kind.
    pub remote_takes: u64,
}

/// Counters (plain u64, owned by the cache; the runtime copies them out).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// Calls to [`SessionCache::put`], stored or not (capacity 0).
    pub puts: u64,
    /// Lookups ([`SessionCache::get`] and [`SessionCache::take`]) that found
    /// a valid entry.
    pub hits: u64,
    /// Lookups ([`SessionCache::get`] and [`SessionCache::take`]) that found
    /// no valid entry, expired ones included.
    pub misses: u64,
    /// Expired entries removed, by a lookup or to make room.
    pub expired: u64,
    /// Valid entries removed to make room for a new one.
    pub evictions: u64,
    /// Successful [`SessionCache::take`]s (also counted in `hits`).
    pub takes: u64,
    /// Remote [`SyncMsg::Put`]s that were stored (ignored ones are not
    /// counted: expired, older than the local copy, or too old to keep).
    pub remote_puts: u64,
    /// Remote [`SyncMsg::Take`]s that removed a local entry.
    pub remote_takes: u64,
    /// `expired`, `evictions`, `remote_puts` and `remote_takes` split by the
    /// entry's [`SessionKind`], indexed by [`SessionKind::index`].
    pub by_kind: [KindStats; 3],
}

impl CacheStats {
    /// The split counters of `kind`.
    pub fn kind(&self, kind: SessionKind) -> KindStats {
        self.by_kind[kind.index()]
    }

    fn kind_mut(&mut self, kind: SessionKind) -> &mut KindStats {
        &mut self.by_kind[kind.index()]
    }
}

/// A cross-core sync message: what one worker tells the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncMsg {
    /// A worker stored `value` under `key` at `created_ms`.
    Put {
        /// The session key (session ID or ticket name).
        key: Vec<u8>,
        /// The encoded session.
        value: Vec<u8>,
        /// What kind of session it is (for counters).
        kind: SessionKind,
        /// When the publishing worker created the entry (shared monotonic
        /// clock, milliseconds).
        created_ms: u64,
    },
    /// A worker consumed `key` (single-use session): drop any copy.
    Take {
        /// The session key to invalidate.
        key: Vec<u8>,
    },
}

/// One stored session.
#[derive(Debug)]
struct Entry {
    value: Vec<u8>,
    created_ms: u64,
    kind: SessionKind,
    /// Insertion number, the tie-breaker of the age index.
    seq: u64,
    /// Whether its age record is in the FIFO (else in `out_of_order`).
    in_fifo: bool,
}

/// A bounded, expiring TLS session cache owned by one worker.
///
/// # Sync ordering
///
/// [`merge`](Self::merge) assumes that the messages of any one worker arrive
/// in the order that worker published them (one FIFO channel per pair of
/// workers). Messages from different workers may interleave arbitrarily, and
/// a `Take` is not remembered (no tombstone): if worker B takes a session it
/// learned from worker A and B's `Take` reaches worker C before A's `Put`
/// does, C keeps a copy until it expires or is evicted. Callers that need
/// strict single use across workers must tolerate that window (for TLS 1.3
/// resumption it only allows a resumption on another core, which anti-replay
/// for 0-RTT must not rely on this cache to prevent).
#[derive(Debug)]
pub struct SessionCache {
    config: CacheConfig,
    entries: HashMap<Vec<u8>, Entry>,
    /// Age records `(created_ms, seq, key)` in creation order; may hold
    /// stale records of removed or replaced entries (lazy deletion).
    fifo: VecDeque<(u64, u64, Vec<u8>)>,
    /// Age records of entries that arrived older than the FIFO's newest.
    out_of_order: BTreeMap<(u64, u64), Vec<u8>>,
    next_seq: u64,
    stats: CacheStats,
}

impl SessionCache {
    /// Creates an empty cache with the given limits.
    pub fn new(config: CacheConfig) -> Self {
        Self {
            config,
            entries: HashMap::with_capacity(config.capacity.min(1 << 12)),
            fifo: VecDeque::new(),
            out_of_order: BTreeMap::new(),
            next_seq: 0,
            stats: CacheStats::default(),
        }
    }

    /// Inserts (or replaces) `key`, created at `now_ms`.
    ///
    /// When the cache is full and `key` is new, the oldest entry by creation
    /// time makes room: an expired one if any (counted in `expired`), since
    /// with a uniform timeout the expired entries are the oldest, otherwise
    /// the oldest valid one (counted in `evictions`). Replacing a key gives it
    /// a fresh lifetime and evicts nothing.
    ///
    /// Returns the [`SyncMsg::Put`] to publish to other workers, even with
    /// capacity 0 (which stores nothing).
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>, now_ms: u64) -> SyncMsg {
        self.put_kind(key, value, SessionKind::Unknown, now_ms)
    }

    /// [`put`](Self::put) with the entry tagged as `kind` (for counters).
    pub fn put_kind(
        &mut self,
        key: Vec<u8>,
        value: Vec<u8>,
        kind: SessionKind,
        now_ms: u64,
    ) -> SyncMsg {
        self.stats.puts += 1;
        let msg = SyncMsg::Put {
            key: key.clone(),
            value: value.clone(),
            kind,
            created_ms: now_ms,
        };
        if self.config.capacity == 0 {
            return msg;
        }
        if self.unlink(&key).is_none() && self.entries.len() >= self.config.capacity {
            self.remove_oldest(now_ms);
        }
        self.link(key, value, kind, now_ms);
        msg
    }

    /// Returns a copy of the value of `key` if present and valid
    /// (`created_ms + timeout_ms > now_ms`), counting a hit; the entry stays.
    ///
    /// An expired entry is removed and counted in `expired`, and the lookup
    /// counts as a miss.
    pub fn get(&mut self, key: &[u8], now_ms: u64) -> Option<Vec<u8>> {
        let live = self
            .entries
            .get(key)
            .map(|e| self.is_live(e.created_ms, now_ms));
        match live {
            Some(true) => {
                self.stats.hits += 1;
                self.entries.get(key).map(|e| e.value.clone())
            }
            Some(false) => {
                if let Some(e) = self.unlink(key) {
                    self.stats.kind_mut(e.kind).expired += 1;
                }
                self.stats.expired += 1;
                self.stats.misses += 1;
                None
            }
            None => {
                self.stats.misses += 1;
                None
            }
        }
    }

    /// Removes and returns the value of `key` (single-use TLS 1.3 stateful
    /// sessions), with the [`SyncMsg::Take`] to publish so that other workers
    /// drop their copy. Counts a hit and a take.
    ///
    /// A missing or expired entry gives `(None, None)` and counts a miss (an
    /// expired one is removed and counted in `expired`; other workers' copies
    /// share its deadline, so no message is needed).
    pub fn take(&mut self, key: &[u8], now_ms: u64) -> (Option<Vec<u8>>, Option<SyncMsg>) {
        let Some(entry) = self.unlink(key) else {
            self.stats.misses += 1;
            return (None, None);
        };
        if !self.is_live(entry.created_ms, now_ms) {
            self.stats.kind_mut(entry.kind).expired += 1;
            self.stats.expired += 1;
            self.stats.misses += 1;
            return (None, None);
        }
        self.stats.hits += 1;
        self.stats.takes += 1;
        (Some(entry.value), Some(SyncMsg::Take { key: key.to_vec() }))
    }

    /// Whether `key` holds a live entry (no counter moves).
    pub fn contains(&self, key: &[u8], now_ms: u64) -> bool {
        self.entries
            .get(key)
            .is_some_and(|e| self.is_live(e.created_ms, now_ms))
    }

    /// The kind of the live entry under `key`, if any (no counter moves).
    pub fn kind_of(&self, key: &[u8], now_ms: u64) -> Option<SessionKind> {
        self.entries
            .get(key)
            .filter(|e| self.is_live(e.created_ms, now_ms))
            .map(|e| e.kind)
    }

    /// Removes `key` without counting a lookup (the L2 store said a
    /// single-use session was used elsewhere). Returns the
    /// [`SyncMsg::Take`] to publish when an entry was removed.
    pub fn remove(&mut self, key: &[u8]) -> Option<SyncMsg> {
        self.unlink(key)?;
        Some(SyncMsg::Take { key: key.to_vec() })
    }

    /// Applies a message from another worker (see the ordering assumption on
    /// [`SessionCache`]).
    ///
    /// * `Put` stores the entry with its original `created_ms`, so it expires
    ///   at the original deadline. It is ignored when already expired at
    ///   `now_ms`, when capacity is 0, or when the local copy of the key was
    ///   created later (newest wins; on a tie the remote one replaces it).
    ///   When the cache is full the usual rule applies, the oldest entry
    ///   makes room, except that a remote entry older than every valid
    ///   entry is itself the oldest and is dropped instead.
    /// * `Take` removes the key, if present. It leaves no tombstone.
    pub fn merge(&mut self, msg: SyncMsg, now_ms: u64) {
        match msg {
            SyncMsg::Put {
                key,
                value,
                kind,
                created_ms,
            } => {
                if self.config.capacity == 0 || !self.is_live(created_ms, now_ms) {
                    return;
                }
                if let Some(local) = self.entries.get(&key) {
                    if local.created_ms > created_ms {
                        return;
                    }
                    self.unlink(&key);
                } else if self.entries.len() >= self.config.capacity {
                    if let Some((oldest_ms, _)) = self.oldest() {
                        if self.is_live(oldest_ms, now_ms) && created_ms < oldest_ms {
                            return;
                        }
                    }
                    self.remove_oldest(now_ms);
                }
                self.link(key, value, kind, created_ms);
                self.stats.remote_puts += 1;
                self.stats.kind_mut(kind).remote_puts += 1;
            }
            SyncMsg::Take { key } => {
                if let Some(e) = self.unlink(&key) {
                    self.stats.remote_takes += 1;
                    self.stats.kind_mut(e.kind).remote_takes += 1;
                }
            }
        }
    }

    /// Number of entries held, including expired ones not yet removed; never
    /// more than `capacity`.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache holds no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A copy of the counters.
    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// Whether an entry created at `created_ms` is still valid at `now_ms`.
    fn is_live(&self, created_ms: u64, now_ms: u64) -> bool {
        now_ms < created_ms.saturating_add(self.config.timeout_ms)
    }

    /// Stores a new entry; `key` must not be present.
    fn link(&mut self, key: Vec<u8>, value: Vec<u8>, kind: SessionKind, created_ms: u64) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let in_fifo = self
            .fifo
            .back()
            .is_none_or(|&(newest, _, _)| created_ms >= newest);
        if in_fifo {
            self.fifo.push_back((created_ms, seq, key.clone()));
        } else {
            self.out_of_order.insert((created_ms, seq), key.clone());
        }
        let old = self.entries.insert(
            key,
            Entry {
                value,
                created_ms,
                kind,
                seq,
                in_fifo,
            },
        );
        debug_assert!(old.is_none(), "link of a present key");
    }

    /// Removes `key` from both indexes, returning its entry.
    fn unlink(&mut self, key: &[u8]) -> Option<Entry> {
        let entry = self.entries.remove(key)?;
        if !entry.in_fifo {
            self.out_of_order.remove(&(entry.created_ms, entry.seq));
        }
        // An in-FIFO record is removed lazily (skipped when it reaches the
        // front).
        self.maybe_compact();
        Some(entry)
    }

    /// Compacts the FIFO when stale records outnumber live entries. Called
    /// after every removal (whichever index the entry was in), so the FIFO
    /// never holds more than `2 × entries + 33` records, at O(1) amortized
    /// cost: a compaction removes at least `entries + 32` stale records.
    fn maybe_compact(&mut self) {
        if self.fifo.len() > 2 * self.entries.len() + 32 {
            let entries = &self.entries;
            self.fifo
                .retain(|(_, seq, k)| Self::is_current(entries, k, *seq));
        }
    }

    fn is_current(entries: &HashMap<Vec<u8>, Entry>, key: &[u8], seq: u64) -> bool {
        entries.get(key).is_some_and(|e| e.in_fifo && e.seq == seq)
    }

    /// Drops stale records from the front of the FIFO.
    fn skip_stale(&mut self) {
        while let Some((_, seq, key)) = self.fifo.front() {
            if Self::is_current(&self.entries, key, *seq) {
                break;
            }
            self.fifo.pop_front();
        }
    }

    /// `(created_ms, seq)` of the oldest entry, if any.
    fn oldest(&mut self) -> Option<(u64, u64)> {
        self.skip_stale();
        let fifo = self.fifo.front().map(|&(c, s, _)| (c, s));
        let ooo = self.out_of_order.first_key_value().map(|(&k, _)| k);
        match (fifo, ooo) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Removes the oldest entry, counting it as expired or evicted.
    fn remove_oldest(&mut self, now_ms: u64) {
        let Some((created_ms, seq)) = self.oldest() else {
            return;
        };
        let from_fifo = self
            .fifo
            .front()
            .is_some_and(|&(c, s, _)| (c, s) == (created_ms, seq));
        let key = if from_fifo {
            self.fifo.pop_front().map(|(_, _, k)| k)
        } else {
            self.out_of_order.remove(&(created_ms, seq))
        };
        let removed = key.and_then(|key| self.entries.remove(&key));
        self.maybe_compact();
        if let Some(entry) = removed {
            if self.is_live(created_ms, now_ms) {
                self.stats.evictions += 1;
                self.stats.kind_mut(entry.kind).evictions += 1;
            } else {
                self.stats.expired += 1;
                self.stats.kind_mut(entry.kind).expired += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(capacity: usize, timeout_ms: u64) -> SessionCache {
        SessionCache::new(CacheConfig {
            capacity,
            timeout_ms,
        })
    }

    fn k(n: u8) -> Vec<u8> {
        vec![n; 32]
    }

    fn v(n: u8) -> Vec<u8> {
        vec![n; 100]
    }

    fn remote_put(key: Vec<u8>, value: Vec<u8>, created_ms: u64) -> SyncMsg {
        SyncMsg::Put {
            key,
            value,
            kind: SessionKind::Unknown,
            created_ms,
        }
    }

    /// Checks that the indexes agree, the FIFO is in creation order and
    /// bounded, and the cache is within capacity.
    fn check_invariants(c: &SessionCache) {
        assert!(c.len() <= c.config.capacity);
        let live_in_fifo = c
            .fifo
            .iter()
            .filter(|(_, seq, k)| SessionCache::is_current(&c.entries, k, *seq))
            .count();
        assert_eq!(c.entries.len(), live_in_fifo + c.out_of_order.len());
        for (&(created_ms, seq), key) in &c.out_of_order {
            let e = &c.entries[key];
            assert_eq!((e.created_ms, e.seq, e.in_fifo), (created_ms, seq, false));
        }
        assert!(c
            .fifo
            .iter()
            .zip(c.fifo.iter().skip(1))
            .all(|(a, b)| a.0 <= b.0 && a.1 < b.1));
        assert!(
            c.fifo.len() <= 2 * c.entries.len() + 33,
            "fifo {} entries {}",
            c.fifo.len(),
            c.entries.len()
        );
    }

    #[test]
    fn valid_strictly_before_deadline() {
        let mut c = cache(4, 100);
        c.put(k(1), v(1), 1000);
        assert_eq!(c.get(&k(1), 1000), Some(v(1)));
        assert_eq!(c.get(&k(1), 1099), Some(v(1)));
        assert_eq!(c.get(&k(1), 1100), None);
        assert!(c.is_empty());
        let s = c.stats();
        assert_eq!((s.hits, s.misses, s.expired), (2, 1, 1));
        // A later lookup is a plain miss, not another expiry.
        assert_eq!(c.get(&k(1), 1101), None);
        assert_eq!((c.stats().misses, c.stats().expired), (2, 1));
    }

    #[test]
    fn kind_of_reads_live_entries_without_counting() {
        let mut c = cache(4, 100);
        c.put_kind(k(1), v(1), SessionKind::Tls12Id, 1000);
        c.put_kind(k(2), v(2), SessionKind::Tls13Stateful, 1000);
        assert_eq!(c.kind_of(&k(1), 1099), Some(SessionKind::Tls12Id));
        assert_eq!(c.kind_of(&k(2), 1099), Some(SessionKind::Tls13Stateful));
        assert_eq!(c.kind_of(&k(3), 1099), None);
        assert_eq!(c.kind_of(&k(1), 1100), None);
        let s = c.stats();
        assert_eq!((s.hits, s.misses, s.expired), (0, 0, 0));
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn put_returns_sync_put() {
        let mut c = cache(4, 100);
        assert_eq!(c.put(k(1), v(2), 7), remote_put(k(1), v(2), 7));
    }

    #[test]
    fn full_cache_evicts_oldest_by_creation() {
        let mut c = cache(3, 1000);
        c.put(k(1), v(1), 0);
        c.put(k(2), v(2), 1);
        c.put(k(3), v(3), 2);
        // A lookup does not refresh the age (not LRU).
        assert_eq!(c.get(&k(1), 3), Some(v(1)));
        c.put(k(4), v(4), 3);
        assert_eq!(c.len(), 3);
        assert_eq!(c.get(&k(1), 4), None);
        for n in 2..=4 {
            assert_eq!(c.get(&k(n), 4), Some(v(n)));
        }
        c.put(k(5), v(5), 5);
        assert_eq!(c.get(&k(2), 5), None);
        let s = c.stats();
        assert_eq!((s.evictions, s.expired), (2, 0));
        check_invariants(&c);
    }

    #[test]
    fn full_cache_reuses_expired_before_evicting() {
        let mut c = cache(3, 10);
        c.put(k(1), v(1), 0);
        c.put(k(2), v(2), 1);
        c.put(k(3), v(3), 5);
        // At 11, entries 1 and 2 are expired (deadlines 10, 11); 3 is not (15).
        c.put(k(4), v(4), 11);
        assert_eq!((c.stats().expired, c.stats().evictions), (1, 0));
        c.put(k(5), v(5), 11);
        assert_eq!((c.stats().expired, c.stats().evictions), (2, 0));
        // Nothing expired any more: the oldest valid entry goes.
        c.put(k(6), v(6), 11);
        assert_eq!((c.stats().expired, c.stats().evictions), (2, 1));
        assert_eq!(c.len(), 3);
        assert_eq!(c.get(&k(3), 11), None);
        for n in 4..=6 {
            assert_eq!(c.get(&k(n), 11), Some(v(n)));
        }
        check_invariants(&c);
    }

    #[test]
    fn eviction_follows_creation_time_not_insertion_order() {
        let mut c = cache(2, 10);
        c.put(k(1), v(1), 5);
        // Inserted after k(1) but created before it.
        c.merge(remote_put(k(2), v(2), 0), 5);
        // At 10, k(2) is expired (deadline 10), k(1) is not (15).
        c.put(k(3), v(3), 10);
        assert_eq!((c.stats().expired, c.stats().evictions), (1, 0));
        assert_eq!(c.get(&k(1), 10), Some(v(1)));
        assert_eq!(c.get(&k(3), 10), Some(v(3)));
        assert_eq!(c.get(&k(2), 10), None);
        // Both valid: the one created first (k(1) at 5) is evicted.
        c.put(k(4), v(4), 12);
        assert_eq!(c.stats().evictions, 1);
        assert_eq!(c.get(&k(1), 12), None);
        assert_eq!(c.get(&k(3), 12), Some(v(3)));
        check_invariants(&c);
    }

    #[test]
    fn get_does_not_remove() {
        let mut c = cache(2, 100);
        c.put(k(1), v(1), 0);
        assert_eq!(c.get(&k(1), 1), Some(v(1)));
        assert_eq!(c.get(&k(1), 2), Some(v(1)));
        assert_eq!(c.len(), 1);
        assert_eq!(c.stats().hits, 2);
    }

    #[test]
    fn take_is_single_use_and_publishes() {
        let mut c = cache(2, 100);
        c.put(k(1), v(1), 0);
        assert_eq!(
            c.take(&k(1), 1),
            (Some(v(1)), Some(SyncMsg::Take { key: k(1) }))
        );
        assert_eq!(c.take(&k(1), 2), (None, None));
        assert_eq!(c.get(&k(1), 2), None);
        assert!(c.is_empty());
        let s = c.stats();
        assert_eq!((s.takes, s.hits, s.misses, s.expired), (1, 1, 2, 0));
    }

    #[test]
    fn take_of_expired_entry_misses() {
        let mut c = cache(2, 100);
        c.put(k(1), v(1), 0);
        assert_eq!(c.take(&k(1), 100), (None, None));
        assert!(c.is_empty());
        let s = c.stats();
        assert_eq!((s.takes, s.hits, s.misses, s.expired), (0, 0, 1, 1));
    }

    #[test]
    fn replace_keeps_one_entry_with_fresh_lifetime() {
        let mut c = cache(2, 100);
        c.put(k(1), v(1), 0);
        c.put(k(2), v(2), 10);
        // Full, but a replace evicts nothing.
        c.put(k(1), v(9), 50);
        assert_eq!(c.len(), 2);
        assert_eq!(c.stats().evictions, 0);
        assert_eq!(c.get(&k(1), 120), Some(v(9)));
        assert_eq!(c.get(&k(1), 150), None);
        // k(2) is now the oldest and goes first.
        c.put(k(3), v(3), 60);
        c.put(k(1), v(1), 61);
        c.put(k(4), v(4), 62);
        assert_eq!(c.get(&k(3), 62), None);
        assert_eq!(c.get(&k(1), 62), Some(v(1)));
        assert_eq!(c.stats().puts, 6);
        check_invariants(&c);
    }

    #[test]
    fn remote_put_keeps_original_deadline() {
        let mut c = cache(4, 100);
        c.merge(remote_put(k(1), v(1), 0), 50);
        assert_eq!(c.stats().remote_puts, 1);
        assert_eq!(c.get(&k(1), 99), Some(v(1)));
        assert_eq!(c.get(&k(1), 100), None);
        assert_eq!(c.stats().expired, 1);
    }

    #[test]
    fn expired_remote_put_is_ignored() {
        let mut c = cache(4, 100);
        c.merge(remote_put(k(1), v(1), 0), 100);
        assert!(c.is_empty());
        assert_eq!(c.stats(), CacheStats::default());
    }

    #[test]
    fn remote_put_never_replaces_a_newer_local_copy() {
        let mut c = cache(4, 100);
        c.put(k(1), v(1), 20);
        c.merge(remote_put(k(1), v(2), 10), 30);
        assert_eq!(c.get(&k(1), 30), Some(v(1)));
        c.merge(remote_put(k(1), v(3), 25), 30);
        assert_eq!(c.get(&k(1), 30), Some(v(3)));
        assert_eq!(c.len(), 1);
        assert_eq!(c.stats().remote_puts, 1);
        // The replaced entry has the remote deadline.
        assert_eq!(c.get(&k(1), 125), None);
    }

    #[test]
    fn remote_put_older_than_a_full_cache_is_dropped() {
        let mut c = cache(2, 100);
        c.put(k(1), v(1), 10);
        c.put(k(2), v(2), 20);
        c.merge(remote_put(k(3), v(3), 5), 30);
        assert_eq!(c.get(&k(3), 30), None);
        assert_eq!(c.get(&k(1), 30), Some(v(1)));
        assert_eq!(c.stats().remote_puts, 0);
        // Newer than the oldest: the oldest is evicted.
        c.merge(remote_put(k(4), v(4), 15), 30);
        assert_eq!(c.get(&k(1), 30), None);
        assert_eq!(c.get(&k(4), 30), Some(v(4)));
        let s = c.stats();
        assert_eq!((s.remote_puts, s.evictions), (1, 1));
        // Same age as the oldest (k(4) at 15): ties go by insertion order,
        // so the arriving entry is the newer one and k(4) is evicted.
        c.merge(remote_put(k(5), v(5), 15), 30);
        assert_eq!(c.get(&k(4), 30), None);
        assert_eq!(c.get(&k(5), 30), Some(v(5)));
        assert_eq!(c.stats().evictions, 2);
        check_invariants(&c);
    }

    #[test]
    fn remote_take_removes_local_copy() {
        let mut c = cache(4, 100);
        c.put(k(1), v(1), 0);
        c.merge(SyncMsg::Take { key: k(1) }, 1);
        assert_eq!(c.get(&k(1), 1), None);
        assert!(c.is_empty());
        c.merge(SyncMsg::Take { key: k(2) }, 1);
        assert_eq!(c.stats().remote_takes, 1);
    }

    #[test]
    fn stats_count_every_operation() {
        let mut c = cache(2, 100);
        c.put(k(1), v(1), 0);
        c.put(k(2), v(2), 1);
        c.put(k(3), v(3), 2); // evicts k(1)
        c.get(&k(2), 3); // hit
        c.get(&k(1), 3); // miss
        c.take(&k(3), 4); // hit, take
        c.merge(remote_put(k(4), v(4), 4), 5);
        c.merge(SyncMsg::Take { key: k(2) }, 5);
        c.get(&k(4), 104); // expired miss
        assert_eq!(
            c.stats(),
            CacheStats {
                puts: 3,
                hits: 2,
                misses: 2,
                expired: 1,
                evictions: 1,
                takes: 1,
                remote_puts: 1,
                remote_takes: 1,
                by_kind: [
                    KindStats {
                        expired: 1,
                        evictions: 1,
                        remote_puts: 1,
                        remote_takes: 1,
                    },
                    KindStats::default(),
                    KindStats::default(),
                ],
            }
        );
        assert!(c.is_empty());
    }

    #[test]
    fn capacity_zero_stores_nothing() {
        let mut c = cache(0, 100);
        assert_eq!(c.put(k(1), v(1), 0), remote_put(k(1), v(1), 0));
        assert!(c.is_empty());
        assert_eq!(c.get(&k(1), 0), None);
        assert_eq!(c.take(&k(1), 0), (None, None));
        c.merge(remote_put(k(2), v(2), 0), 0);
        assert!(c.is_empty());
        let s = c.stats();
        assert_eq!((s.puts, s.misses, s.remote_puts, s.evictions), (1, 2, 0, 0));
    }

    #[test]
    fn timeout_near_u64_max_does_not_overflow() {
        let mut c = cache(1, u64::MAX);
        c.put(k(1), v(1), u64::MAX - 1);
        assert_eq!(c.get(&k(1), u64::MAX - 1), Some(v(1)));
    }

    /// (key, value, created_ms, seq, kind)
    type Item = (Vec<u8>, Vec<u8>, u64, u64, SessionKind);

    /// A naive reference: a Vec scanned linearly, same rules.
    struct Model {
        capacity: usize,
        timeout_ms: u64,
        items: Vec<Item>,
        seq: u64,
        stats: CacheStats,
    }

    impl Model {
        fn live(&self, created_ms: u64, now_ms: u64) -> bool {
            now_ms < created_ms.saturating_add(self.timeout_ms)
        }

        fn find(&self, key: &[u8]) -> Option<usize> {
            self.items.iter().position(|it| it.0 == key)
        }

        fn oldest(&self) -> usize {
            let mut best = 0;
            for (i, it) in self.items.iter().enumerate() {
                if (it.2, it.3) < (self.items[best].2, self.items[best].3) {
                    best = i;
                }
            }
            best
        }

        fn remove_oldest(&mut self, now_ms: u64) {
            let it = self.items.remove(self.oldest());
            if self.live(it.2, now_ms) {
                self.stats.evictions += 1;
                self.stats.kind_mut(it.4).evictions += 1;
            } else {
                self.stats.expired += 1;
                self.stats.kind_mut(it.4).expired += 1;
            }
        }

        fn insert(&mut self, key: Vec<u8>, value: Vec<u8>, created_ms: u64) {
            let kind = kind_of(&key);
            self.items.push((key, value, created_ms, self.seq, kind));
            self.seq += 1;
        }

        fn put(&mut self, key: Vec<u8>, value: Vec<u8>, now_ms: u64) -> SyncMsg {
            self.stats.puts += 1;
            let msg = kind_put(key.clone(), value.clone(), now_ms);
            if self.capacity == 0 {
                return msg;
            }
            if let Some(i) = self.find(&key) {
                self.items.remove(i);
            } else if self.items.len() >= self.capacity {
                self.remove_oldest(now_ms);
            }
            self.insert(key, value, now_ms);
            msg
        }

        fn get(&mut self, key: &[u8], now_ms: u64) -> Option<Vec<u8>> {
            match self.find(key) {
                Some(i) if self.live(self.items[i].2, now_ms) => {
                    self.stats.hits += 1;
                    Some(self.items[i].1.clone())
                }
                Some(i) => {
                    let it = self.items.remove(i);
                    self.stats.expired += 1;
                    self.stats.kind_mut(it.4).expired += 1;
                    self.stats.misses += 1;
                    None
                }
                None => {
                    self.stats.misses += 1;
                    None
                }
            }
        }

        fn take(&mut self, key: &[u8], now_ms: u64) -> (Option<Vec<u8>>, Option<SyncMsg>) {
            match self.find(key) {
                Some(i) => {
                    let it = self.items.remove(i);
                    if self.live(it.2, now_ms) {
                        self.stats.hits += 1;
                        self.stats.takes += 1;
                        (Some(it.1), Some(SyncMsg::Take { key: it.0 }))
                    } else {
                        self.stats.expired += 1;
                        self.stats.kind_mut(it.4).expired += 1;
                        self.stats.misses += 1;
                        (None, None)
                    }
                }
                None => {
                    self.stats.misses += 1;
                    (None, None)
                }
            }
        }

        fn merge(&mut self, msg: SyncMsg, now_ms: u64) {
            match msg {
                SyncMsg::Put {
                    key,
                    value,
                    created_ms,
                    ..
                } => {
                    if self.capacity == 0 || !self.live(created_ms, now_ms) {
                        return;
                    }
                    if let Some(i) = self.find(&key) {
                        if self.items[i].2 > created_ms {
                            return;
                        }
                        self.items.remove(i);
                    } else if self.items.len() >= self.capacity {
                        let o = self.oldest();
                        let oldest_ms = self.items[o].2;
                        if self.live(oldest_ms, now_ms) && created_ms < oldest_ms {
                            return;
                        }
                        self.remove_oldest(now_ms);
                    }
                    let kind = kind_of(&key);
                    self.insert(key, value, created_ms);
                    self.stats.remote_puts += 1;
                    self.stats.kind_mut(kind).remote_puts += 1;
                }
                SyncMsg::Take { key } => {
                    if let Some(i) = self.find(&key) {
                        let it = self.items.remove(i);
                        self.stats.remote_takes += 1;
                        self.stats.kind_mut(it.4).remote_takes += 1;
                    }
                }
            }
        }
    }

    /// The model test's kind of a key: a function of the key, so the cache
    /// and the model agree without tracking it separately.
    fn kind_of(key: &[u8]) -> SessionKind {
        SessionKind::ALL[key[0] as usize % 3]
    }

    fn kind_put(key: Vec<u8>, value: Vec<u8>, created_ms: u64) -> SyncMsg {
        SyncMsg::Put {
            kind: kind_of(&key),
            key,
            value,
            created_ms,
        }
    }

    /// xorshift64*: enough randomness for a model test, no crate needed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn run_against_model(seed: u64, capacity: usize, timeout_ms: u64, keys: u64, ops: usize) {
        let mut rng = Rng(seed);
        let mut c = cache(capacity, timeout_ms);
        let mut m = Model {
            capacity,
            timeout_ms,
            items: Vec::new(),
            seq: 0,
            stats: CacheStats::default(),
        };
        let mut now: u64 = 1_000;
        for step in 0..ops {
            if rng.below(4) == 0 {
                now += rng.below(timeout_ms / 4 + 2);
            }
            let key = k(rng.below(keys) as u8);
            match rng.below(10) {
                0..=2 => {
                    let value = rng.next().to_le_bytes().to_vec();
                    let kind = kind_of(&key);
                    assert_eq!(
                        c.put_kind(key.clone(), value.clone(), kind, now),
                        m.put(key, value, now),
                        "step {step}"
                    );
                }
                3..=5 => assert_eq!(c.get(&key, now), m.get(&key, now), "step {step}"),
                6 => assert_eq!(c.take(&key, now), m.take(&key, now), "step {step}"),
                7 | 8 => {
                    // Mostly past creation times, some already expired, a
                    // few slightly in the future (another core's clock read
                    // after ours).
                    let created_ms = (now + 3).saturating_sub(rng.below(timeout_ms + 10));
                    let msg = kind_put(key, rng.next().to_le_bytes().to_vec(), created_ms);
                    c.merge(msg.clone(), now);
                    m.merge(msg, now);
                }
                _ => {
                    let msg = SyncMsg::Take { key };
                    c.merge(msg.clone(), now);
                    m.merge(msg, now);
                }
            }
            check_invariants(&c);
            assert_eq!(c.len(), m.items.len(), "step {step}");
            assert_eq!(c.stats(), m.stats, "step {step}");
            if step % 64 == 0 {
                for it in &m.items {
                    let e = &c.entries[&it.0];
                    assert_eq!((&e.value, e.created_ms), (&it.1, it.2), "step {step}");
                }
            }
        }
        let s = c.stats();
        // The run exercised every path.
        if capacity > 0 {
            assert!(s.hits > 0 && s.misses > 0 && s.expired > 0 && s.evictions > 0);
            assert!(s.takes > 0 && s.remote_puts > 0 && s.remote_takes > 0);
            // Every kind took every path (in runs with enough keys).
            for kind in SessionKind::ALL.into_iter().filter(|_| keys >= 12) {
                let ks = s.kind(kind);
                assert!(ks.expired > 0 && ks.evictions > 0 && ks.remote_puts > 0);
            }
        }
    }

    #[test]
    fn randomized_against_naive_model() {
        run_against_model(0x9e37_79b9_7f4a_7c15, 8, 100, 24, 100_000);
    }

    #[test]
    fn randomized_small_and_degenerate_capacities() {
        run_against_model(1, 1, 50, 4, 20_000);
        run_against_model(2, 3, 20, 6, 20_000);
        run_against_model(3, 0, 100, 4, 5_000);
    }

    /// Property tests: random op sequences (put, get, take, remote put and
    /// take, clock steps) over random small limits, against [`Model`] and
    /// the cache's stated invariants.
    mod props {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Put(u8, u8),
            Get(u8),
            Take(u8),
            /// A remote put created `age` ms before now (+3: another core's
            /// clock may read slightly ahead of ours).
            RemotePut(u8, u8, u64),
            RemoteTake(u8),
            Advance(u64),
        }

        fn op(keys: u8, timeout_ms: u64) -> impl Strategy<Value = Op> {
            prop_oneof![
                3 => (0..keys, any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
                3 => (0..keys).prop_map(Op::Get),
                1 => (0..keys).prop_map(Op::Take),
                2 => (0..keys, any::<u8>(), 0..timeout_ms + 10)
                    .prop_map(|(k, v, age)| Op::RemotePut(k, v, age)),
                1 => (0..keys).prop_map(Op::RemoteTake),
                2 => (0..timeout_ms / 2 + 2).prop_map(Op::Advance),
            ]
        }

        fn case() -> impl Strategy<Value = (usize, u64, Vec<Op>)> {
            (0usize..6, 1u64..60, 1u8..10).prop_flat_map(|(capacity, timeout_ms, keys)| {
                (
                    Just(capacity),
                    Just(timeout_ms),
                    prop::collection::vec(op(keys, timeout_ms), 1..200),
                )
            })
        }

        /// `(key, created_ms, seq)` of every entry.
        fn snapshot(c: &SessionCache) -> Vec<(Vec<u8>, u64, u64)> {
            c.entries
                .iter()
                .map(|(k, e)| (k.clone(), e.created_ms, e.seq))
                .collect()
        }

        /// Checks the entries that left the cache during an op that may
        /// have made room: at most one went, it was the oldest by
        /// `(created_ms, seq)`, and it was an expired one whenever any was
        /// expired.
        fn check_victim(
            before: &[(Vec<u8>, u64, u64)],
            c: &SessionCache,
            spared: &[u8],
            now: u64,
            timeout_ms: u64,
        ) {
            let gone: Vec<_> = before
                .iter()
                .filter(|(k, _, _)| k != spared && !c.entries.contains_key(k))
                .collect();
            assert!(gone.len() <= 1, "more than one entry evicted: {gone:?}");
            if let Some(victim) = gone.first() {
                let oldest = before.iter().map(|(_, c, s)| (*c, *s)).min().unwrap();
                assert_eq!((victim.1, victim.2), oldest, "evicted a non-oldest entry");
                let expired = |created: u64| now >= created.saturating_add(timeout_ms);
                if before.iter().any(|(_, c, _)| expired(*c)) {
                    assert!(
                        expired(victim.1),
                        "evicted a live entry before an expired one"
                    );
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

            #[test]
            fn cache_keeps_its_invariants((capacity, timeout_ms, ops) in case()) {
                let mut c = cache(capacity, timeout_ms);
                let mut m = Model {
                    capacity,
                    timeout_ms,
                    items: Vec::new(),
                    seq: 0,
                    stats: CacheStats::default(),
                };
                let mut now: u64 = 1_000;
                // Whether the model's entry for `key` is valid at `now`.
                let live = |m: &Model, key: &[u8], now: u64| {
                    m.find(key).is_some_and(|i| m.live(m.items[i].2, now))
                };
                for op in ops {
                    let before = snapshot(&c);
                    match op {
                        Op::Put(key, v) => {
                            let (key, value) = (k(key), vec![v; 8]);
                            let msg = c.put_kind(key.clone(), value.clone(), kind_of(&key), now);
                            prop_assert_eq!(&msg, &m.put(key.clone(), value.clone(), now));
                            if capacity > 0 {
                                // Just stored: readable with a full lifetime.
                                prop_assert_eq!(&c.entries[&key].value, &value);
                                prop_assert_eq!(c.entries[&key].created_ms, now);
                            }
                            check_victim(&before, &c, &key, now, timeout_ms);
                        }
                        Op::Get(key) => {
                            let key = k(key);
                            let was_live = live(&m, &key, now);
                            let got = c.get(&key, now);
                            prop_assert_eq!(&got, &m.get(&key, now));
                            // Never an entry past its lifetime.
                            prop_assert_eq!(got.is_some(), was_live);
                        }
                        Op::Take(key) => {
                            let key = k(key);
                            let was_live = live(&m, &key, now);
                            let (got, msg) = c.take(&key, now);
                            let (mgot, mmsg) = m.take(&key, now);
                            prop_assert_eq!(&got, &mgot);
                            prop_assert_eq!(&msg, &mmsg);
                            prop_assert_eq!(got.is_some(), was_live);
                            // A take removes the entry, live or expired.
                            prop_assert!(!c.entries.contains_key(&key));
                            prop_assert_eq!(c.get(&key, now), None);
                            m.get(&key, now);
                        }
                        Op::RemotePut(key, v, age) => {
                            let key = k(key);
                            let created_ms = (now + 3).saturating_sub(age);
                            let msg = kind_put(key.clone(), vec![v; 8], created_ms);
                            c.merge(msg.clone(), now);
                            m.merge(msg, now);
                            if let Some(e) = c.entries.get(&key) {
                                // Syncing never extends a session's life.
                                prop_assert!(e.created_ms <= now + 3);
                            }
                            check_victim(&before, &c, &key, now, timeout_ms);
                        }
                        Op::RemoteTake(key) => {
                            let key = k(key);
                            let msg = SyncMsg::Take { key: key.clone() };
                            c.merge(msg.clone(), now);
                            m.merge(msg, now);
                            prop_assert!(!c.entries.contains_key(&key));
                        }
                        Op::Advance(ms) => now += ms,
                    }
                    // Capacity, index agreement, FIFO order and its bound.
                    prop_assert!(c.len() <= capacity);
                    check_invariants(&c);
                    prop_assert_eq!(c.len(), m.items.len());
                    prop_assert_eq!(c.stats(), m.stats);
                    // Memory: the age index stays within a constant factor
                    // of the capacity, whatever the sequence.
                    prop_assert!(c.fifo.len() + c.out_of_order.len() <= 3 * capacity + 33);
                }
            }
        }
    }
}
