//! Worker thread management: CPU pinning, a common start gate, and the
//! count/duration budget every loop is bounded by.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Shared bound on the run: a total operation count and/or a duration.
pub struct Budget {
    count: Option<u64>,
    issued: AtomicU64,
}

impl Budget {
    pub fn new(count: Option<u64>) -> Self {
        Self {
            count,
            issued: AtomicU64::new(0),
        }
    }

    /// Claims one operation; false once `--count` operations were claimed.
    pub fn take(&self) -> bool {
        match self.count {
            Some(c) => self.issued.fetch_add(1, Ordering::Relaxed) < c,
            None => true,
        }
    }
}

/// The measured phase of a run, as seen by one worker.
#[derive(Clone, Copy)]
pub struct Run {
    pub start: Instant,
    pub deadline: Option<Instant>,
}

impl Run {
    pub fn expired(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// True if another operation may start (claims it from the budget).
    pub fn next(&self, budget: &Budget) -> bool {
        !self.expired() && budget.take()
    }
}

struct GateState {
    arrived: usize,
    start: Option<Option<Instant>>,
}

/// Start gate: workers finish their setup, then wait until every worker is
/// ready; the measured phase starts for all of them at the same instant.
pub struct Gate {
    state: Mutex<GateState>,
    cv: Condvar,
    duration: Option<Duration>,
}

impl Gate {
    fn new(duration: Option<Duration>) -> Self {
        Self {
            state: Mutex::new(GateState {
                arrived: 0,
                start: None,
            }),
            cv: Condvar::new(),
            duration,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn arrive(&self) -> Option<Instant> {
        let mut st = self.lock();
        st.arrived += 1;
        self.cv.notify_all();
        loop {
            if let Some(start) = st.start {
                return start;
            }
            st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Waits for `n` arrivals, then opens the gate; returns the start time.
    fn open_when(&self, n: usize) -> Instant {
        let mut st = self.lock();
        while st.arrived < n {
            st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        let now = Instant::now();
        st.start = Some(Some(now));
        self.cv.notify_all();
        now
    }

    fn abort(&self) {
        let mut st = self.lock();
        st.start = Some(None);
        self.cv.notify_all();
    }
}

/// A worker's ticket for the start gate. Waiting is mandatory; if a worker
/// returns (or unwinds) without waiting, dropping the ticket arrives for it.
pub struct Arrival {
    gate: Arc<Gate>,
    done: bool,
}

impl Arrival {
    /// Signals that setup is done and blocks until all workers are ready.
    /// Returns None if the run was aborted.
    pub fn wait(mut self) -> Option<Run> {
        self.done = true;
        let start = self.gate.arrive()?;
        Some(Run {
            start,
            deadline: self.gate.duration.map(|d| start + d),
        })
    }
}

impl Drop for Arrival {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.gate.arrive();
        }
    }
}

/// Spawns `n` workers (pinned round-robin to `cpus` if given), starts them
/// together and collects their results. Returns the results and the time
/// from the common start until the last worker finished.
pub fn run_workers<T, F>(
    n: usize,
    cpus: Option<&[usize]>,
    duration: Option<Duration>,
    f: F,
) -> Result<(Vec<T>, Duration), String>
where
    T: Send + 'static,
    F: Fn(usize, Arrival) -> T + Send + Sync + 'static,
{
    let gate = Arc::new(Gate::new(duration));
    let f = Arc::new(f);
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let core = cpus.filter(|c| !c.is_empty()).map(|c| c[i % c.len()]);
        let arrival = Arrival {
            gate: gate.clone(),
            done: false,
        };
        let f = f.clone();
        let spawned = thread::Builder::new()
            .name(format!("load-{i}"))
            .stack_size(1 << 20)
            .spawn(move || {
                if let Some(id) = core {
                    if !core_affinity::set_for_current(core_affinity::CoreId { id }) {
                        eprintln!("warning: could not pin worker {i} to CPU {id}");
                    }
                }
                f(i, arrival)
            });
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                gate.abort();
                for h in handles {
                    let _ = h.join();
                }
                return Err(format!("cannot spawn worker thread {i}: {e}"));
            }
        }
    }
    let start = gate.open_when(n);
    let mut out = Vec::with_capacity(n);
    let mut panicked = 0;
    for h in handles {
        match h.join() {
            Ok(v) => out.push(v),
            Err(_) => panicked += 1,
        }
    }
    let elapsed = start.elapsed();
    if panicked > 0 {
        return Err(format!("{panicked} worker thread(s) panicked"));
    }
    Ok((out, elapsed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_count() {
        let b = Budget::new(Some(3));
        assert!(b.take());
        assert!(b.take());
        assert!(b.take());
        assert!(!b.take());
        let unlimited = Budget::new(None);
        for _ in 0..1000 {
            assert!(unlimited.take());
        }
    }

    #[test]
    fn workers_start_together_and_respect_count() {
        let budget = Arc::new(Budget::new(Some(100)));
        let b = budget.clone();
        let (res, elapsed) = run_workers(4, None, Some(Duration::from_secs(30)), move |_, a| {
            let run = a.wait().expect("not aborted");
            let mut n = 0u64;
            while run.next(&b) {
                n += 1;
            }
            n
        })
        .unwrap();
        assert_eq!(res.iter().sum::<u64>(), 100);
        assert!(elapsed < Duration::from_secs(30));
    }

    #[test]
    fn deadline_stops_workers_even_without_waiting() {
        let budget = Arc::new(Budget::new(None));
        let b = budget.clone();
        let (res, elapsed) = run_workers(3, None, Some(Duration::from_millis(50)), move |i, a| {
            if i == 0 {
                // Drops its arrival without waiting: must not block the others.
                return 0u64;
            }
            let run = a.wait().expect("not aborted");
            let mut n = 0u64;
            while run.next(&b) {
                n += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            n
        })
        .unwrap();
        assert_eq!(res.len(), 3);
        assert!(elapsed >= Duration::from_millis(50));
        assert!(elapsed < Duration::from_secs(5));
    }
}
