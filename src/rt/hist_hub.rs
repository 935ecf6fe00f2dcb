//! Reading the workers' histograms from other threads, on demand.
//!
//! A worker records into its own [`Histograms`] (a `RefCell` on its thread;
//! no lock, no atomic, no allocation per record). A reader (the admin
//! endpoint, SIGUSR1, shutdown) calls [`HistHub::collect`]: it bumps a
//! generation, wakes every worker (its eventfd), and waits briefly for
//! each worker to publish a copy into its `ArcSwap` slot. A worker that does
//! not answer in time (busy for longer than the wait) is read from its last
//! copy. Workers never wait for readers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::wake::WakeFd;
use arc_swap::ArcSwap;

use crate::metrics::hist::Histograms;

/// A worker's published copy.
#[derive(Debug, Default)]
pub struct Published {
    /// The request generation this copy answers.
    pub generation: u64,
    /// The copy.
    pub hist: Histograms,
}

/// The slots and wake-ups shared by the workers and the readers.
pub struct HistHub {
    slots: Vec<ArcSwap<Published>>,
    wake: Vec<Arc<WakeFd>>,
    wanted: AtomicU64,
}

impl std::fmt::Debug for HistHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistHub")
            .field("workers", &self.slots.len())
            .finish()
    }
}

impl HistHub {
    /// A hub for `workers` workers, with empty copies.
    pub fn new(wake: Vec<Arc<WakeFd>>) -> Arc<Self> {
        Arc::new(Self {
            slots: (0..wake.len())
                .map(|_| ArcSwap::from_pointee(Published::default()))
                .collect(),
            wake,
            wanted: AtomicU64::new(0),
        })
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.slots.len()
    }

    /// Worker side (after a wake-up): the request generation to answer,
    /// when it is newer than `answered`.
    pub fn wanted_since(&self, answered: u64) -> Option<u64> {
        let wanted = self.wanted.load(Ordering::Acquire);
        (wanted > answered).then_some(wanted)
    }

    /// Worker side: publishes a copy answering `generation`.
    pub fn publish(&self, id: usize, generation: u64, hist: Histograms) {
        self.slots[id].store(Arc::new(Published { generation, hist }));
    }

    /// Reader side: asks every worker for a fresh copy and waits up to
    /// `wait` for them. Returns one copy per worker, fresh or the last one.
    pub fn collect(&self, wait: Duration) -> Vec<Arc<Published>> {
        let generation = self.wanted.fetch_add(1, Ordering::AcqRel) + 1;
        for w in &self.wake {
            w.wake();
        }
        let deadline = Instant::now() + wait;
        loop {
            let copies: Vec<Arc<Published>> = self.slots.iter().map(|s| s.load_full()).collect();
            if copies.iter().all(|c| c.generation >= generation) || Instant::now() >= deadline {
                return copies;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// [`collect`](Self::collect), merged over all workers.
    pub fn collect_merged(&self, wait: Duration) -> Histograms {
        let mut all = Histograms::new();
        for c in self.collect(wait) {
            all.merge(&c.hist);
        }
        all
    }
}
