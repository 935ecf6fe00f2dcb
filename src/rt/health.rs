//! Active backend health checks (`--health-check-interval`), as HAProxy's
//! `check`: every interval, a thread of its own connects to each backend
//! (TCP or UNIX) and closes at once. A backend is down after [`FALL`]
//! failed checks in a row and up again after [`RISE`] successful ones.
//!
//! Workers never wait on it: a verdict change is published in atomics with
//! a generation number and the workers are woken through their eventfds;
//! each then applies the verdicts to its own pools
//! ([`crate::route::Pools::set_health`]) on its loop.

use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::wake::WakeFd;
use crate::route::BackendAddr;

/// Failed checks in a row that take a backend down.
pub const FALL: u32 = 3;
/// Successful checks in a row that bring it back up.
pub const RISE: u32 = 2;

/// The backends checked and their verdicts (replaced whole when a reload
/// changes the backends).
struct Set {
    backends: Vec<BackendAddr>,
    down: Vec<AtomicBool>,
}

/// The verdicts, shared by the checker thread and the workers.
pub struct HealthHub {
    set: arc_swap::ArcSwap<Set>,
    generation: AtomicU64,
    interval: Duration,
    timeout: Duration,
}

impl HealthHub {
    /// Checks for `backends` (all up at first).
    pub fn new(backends: Vec<BackendAddr>, interval: Duration, timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            set: arc_swap::ArcSwap::from_pointee(Set {
                down: backends.iter().map(|_| AtomicBool::new(false)).collect(),
                backends,
            }),
            generation: AtomicU64::new(0),
            interval,
            timeout: timeout.min(interval.max(Duration::from_millis(1))),
        })
    }

    /// The verdicts' generation: it moves on at every change.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Each backend with whether it is up.
    pub fn verdicts(&self) -> Vec<(BackendAddr, bool)> {
        let set = self.set.load();
        set.backends
            .iter()
            .zip(&set.down)
            .map(|(b, d)| (b.clone(), !d.load(Ordering::Acquire)))
            .collect()
    }

    /// Checks `backends` from now on (a reload changed them): a backend
    /// that stays keeps its verdict, a new one starts up. The workers are
    /// told at the next change of a verdict or of the set.
    pub fn set_backends(&self, backends: Vec<BackendAddr>) {
        let old = self.set.load();
        if old.backends == backends {
            return;
        }
        let down = backends
            .iter()
            .map(|b| {
                let was = old
                    .backends
                    .iter()
                    .position(|x| x == b)
                    .is_some_and(|i| old.down[i].load(Ordering::Acquire));
                AtomicBool::new(was)
            })
            .collect();
        self.set.store(Arc::new(Set { backends, down }));
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Starts the checker thread; verdict changes wake `wakes`.
    pub fn start(self: &Arc<Self>, wakes: Vec<Arc<WakeFd>>) -> std::io::Result<()> {
        let hub = self.clone();
        std::thread::Builder::new()
            .name("ringterm-health".into())
            .spawn(move || hub.run(&wakes))?;
        Ok(())
    }

    fn run(&self, wakes: &[Arc<WakeFd>]) {
        let mut set = self.set.load_full();
        let mut streak: Vec<(u32, u32)> = vec![(0, 0); set.backends.len()];
        loop {
            let now = self.set.load_full();
            if !Arc::ptr_eq(&now, &set) {
                // A reload changed the backends: streaks of those that stay.
                streak = now
                    .backends
                    .iter()
                    .map(|b| {
                        set.backends
                            .iter()
                            .position(|x| x == b)
                            .map_or((0, 0), |i| streak[i])
                    })
                    .collect();
                set = now;
            }
            let mut changed = false;
            for (i, b) in set.backends.iter().enumerate() {
                let ok = self.check(b);
                let (fails, oks) = &mut streak[i];
                let down = set.down[i].load(Ordering::Relaxed);
                if ok {
                    *fails = 0;
                    *oks += 1;
                    if down && *oks >= RISE {
                        set.down[i].store(false, Ordering::Release);
                        tracing::warn!(backend = %b, "health check: backend up");
                        changed = true;
                    }
                } else {
                    *oks = 0;
                    *fails += 1;
                    if !down && *fails >= FALL {
                        set.down[i].store(true, Ordering::Release);
                        tracing::warn!(backend = %b, "health check: backend down");
                        changed = true;
                    }
                }
            }
            if changed {
                self.generation.fetch_add(1, Ordering::AcqRel);
                for w in wakes {
                    w.wake();
                }
            }
            std::thread::sleep(self.interval);
        }
    }

    fn check(&self, b: &BackendAddr) -> bool {
        match b {
            BackendAddr::Tcp(a) => TcpStream::connect_timeout(a, self.timeout).is_ok(),
            BackendAddr::Unix(p) => UnixStream::connect(&**p).is_ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_backend_set_keeps_the_verdicts_of_those_that_stay() {
        let a = BackendAddr::Tcp(([127, 0, 0, 1], 1).into());
        let b = BackendAddr::Tcp(([127, 0, 0, 1], 2).into());
        let c = BackendAddr::Tcp(([127, 0, 0, 1], 3).into());
        let hub = HealthHub::new(
            vec![a.clone(), b.clone()],
            Duration::from_secs(1),
            Duration::from_secs(1),
        );
        hub.set.load().down[1].store(true, Ordering::Release);
        let g = hub.generation();
        hub.set_backends(vec![b.clone(), c.clone()]);
        assert_eq!(hub.verdicts(), vec![(b.clone(), false), (c.clone(), true)]);
        assert!(hub.generation() > g);
        let g = hub.generation();
        hub.set_backends(vec![b, c]);
        assert_eq!(hub.generation(), g, "the same set changes nothing");
    }
}
