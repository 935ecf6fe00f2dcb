//! Backend host names resolved again on reload: the new table is
//! published to the workers (an [`ArcSwap`] and a generation number) and
//! they are woken; each takes it into its own pools on its loop
//! ([`crate::route::Pools::update`]), so no worker waits on DNS.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::wake::WakeFd;
use crate::route::{BackendSpec, RouteTable};

/// The configured table, its resolved form, and the workers to tell.
pub struct RouteHub {
    spec: RouteTable<BackendSpec>,
    table: ArcSwap<RouteTable>,
    generation: AtomicU64,
    wakes: Vec<Arc<WakeFd>>,
}

impl RouteHub {
    /// A hub for `spec`, resolved at start into `table`.
    pub fn new(
        spec: RouteTable<BackendSpec>,
        table: RouteTable,
        wakes: Vec<Arc<WakeFd>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            spec,
            table: ArcSwap::from_pointee(table),
            generation: AtomicU64::new(0),
            wakes,
        })
    }

    /// Resolves the host names again (on the calling thread, not a
    /// worker's). When the addresses changed, the workers take the new
    /// table. Returns whether they changed; on a resolution error the old
    /// table stays.
    pub fn resolve_again(&self) -> Result<bool, super::StartError> {
        let table = super::resolve_routes(&self.spec)?;
        if **self.table.load() == table {
            return Ok(false);
        }
        self.table.store(Arc::new(table));
        self.generation.fetch_add(1, Ordering::AcqRel);
        for w in &self.wakes {
            w.wake();
        }
        Ok(true)
    }

    /// The table's generation: it moves on at every change.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current table.
    pub fn table(&self) -> Arc<RouteTable> {
        self.table.load_full()
    }
}
