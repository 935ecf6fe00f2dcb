//! Per-worker deadlines (handshake and connect timeouts), sans-IO.
//!
//! The runtime registers a deadline per connection, in milliseconds of its
//! own monotonic clock, and asks which ones passed at each timer tick. One
//! `IORING_OP_TIMEOUT` per worker drives all of them, the way nginx's timer
//! tree drives `ngx_event_expire_timers`.

#![forbid(unsafe_code)]

use std::collections::{BTreeSet, HashMap};

/// Deadlines keyed by a connection key (the runtime uses the socket fd,
/// unique among a worker's live connections).
#[derive(Debug, Default)]
pub struct Deadlines {
    by_time: BTreeSet<(u64, i64)>,
    by_key: HashMap<i64, u64>,
}

impl Deadlines {
    /// Sets (or moves) the deadline of `key` to `at_ms`.
    pub fn set(&mut self, key: i64, at_ms: u64) {
        if let Some(old) = self.by_key.insert(key, at_ms) {
            self.by_time.remove(&(old, key));
        }
        self.by_time.insert((at_ms, key));
    }

    /// Removes the deadline of `key`, if any.
    pub fn clear(&mut self, key: i64) {
        if let Some(old) = self.by_key.remove(&key) {
            self.by_time.remove(&(old, key));
        }
    }

    /// Removes and returns every key whose deadline is at or before `now_ms`.
    pub fn expire(&mut self, now_ms: u64) -> Vec<i64> {
        let mut out = Vec::new();
        while let Some(&(at, key)) = self.by_time.first() {
            if at > now_ms {
                break;
            }
            self.by_time.pop_first();
            self.by_key.remove(&key);
            out.push(key);
        }
        out
    }

    /// Whether `key` has a pending deadline.
    pub fn contains(&self, key: i64) -> bool {
        self.by_key.contains_key(&key)
    }

    /// Number of pending deadlines.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether no deadline is pending.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_in_order_and_clears() {
        let mut d = Deadlines::default();
        d.set(1, 100);
        d.set(2, 50);
        d.set(3, 200);
        d.clear(3);
        assert_eq!(d.expire(49), Vec::<i64>::new());
        assert_eq!(d.expire(100), vec![2, 1]);
        assert!(d.is_empty());
    }

    #[test]
    fn set_moves_a_deadline() {
        let mut d = Deadlines::default();
        d.set(7, 100);
        d.set(7, 300);
        assert_eq!(d.expire(200), Vec::<i64>::new());
        assert_eq!(d.len(), 1);
        assert_eq!(d.expire(300), vec![7]);
    }
}
