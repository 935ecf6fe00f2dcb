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

/// The verdicts, shared by the checker thread and the workers.
pub struct HealthHub {
    backends: Vec<BackendAddr>,
    down: Vec<AtomicBool>,
    generation: AtomicU64,
    interval: Duration,
    timeout: Duration,
}

impl HealthHub {
    /// Checks for `backends` (all up at first).
    pub fn new(backends: Vec<BackendAddr>, interval: Duration, timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            down: backends.iter().map(|_| AtomicBool::new(false)).collect(),
            backends,
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
    pub fn verdicts(&self) -> impl Iterator<Item = (&BackendAddr, bool)> {
        self.backends
            .iter()
            .zip(&self.down)
            .map(|(b, d)| (b, !d.load(Ordering::Acquire)))
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
        let mut streak: Vec<(u32, u32)> = vec![(0, 0); self.backends.len()];
        loop {
            let mut changed = false;
            for (i, b) in self.backends.iter().enumerate() {
                let ok = self.check(b);
                let (fails, oks) = &mut streak[i];
                let down = self.down[i].load(Ordering::Relaxed);
                if ok {
                    *fails = 0;
                    *oks += 1;
                    if down && *oks >= RISE {
                        self.down[i].store(false, Ordering::Release);
                        tracing::warn!(backend = %b, "health check: backend up");
                        changed = true;
                    }
                } else {
                    *oks = 0;
                    *fails += 1;
                    if !down && *fails >= FALL {
                        self.down[i].store(true, Ordering::Release);
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
