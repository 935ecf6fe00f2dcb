//! Keeps idle memory small: no transparent huge pages for the process,
//! and the C heap's free pages given back once a wave of connections has
//! gone quiet.
//!
//! # Transparent huge pages
//!
//! mimalloc `madvise`s its arenas `MADV_HUGEPAGE` (its `allow_thp` option,
//! on by default on Linux), so with the kernel's THP in `madvise` mode (the
//! usual default) or `always` the heap is backed by 2 MiB pages: RSS grows
//! in 2 MiB steps and a page counts whole however little of it is used. For
//! a terminator whose heap is many small per-connection objects that is
//! pure overhead: with 3,000 idle connections (bench-peers' idle row) the
//! process baseline was ~33 MB instead of ~14 MB and each connection cost
//! 2.9–3.1 KB of RSS instead of 2.6 KB, varying with where the last huge
//! page ended. So mimalloc is built with `no_thp` (no `madvise`, which
//! also covers what it allocates before `main`), and [`disable_thp`] turns
//! THP off for the process (`PR_SET_THP_DISABLE`, what mimalloc itself does
//! with `MIMALLOC_ALLOW_THP=0`), for kernels with THP `always`, unless
//! `MIMALLOC_ALLOW_THP` is set: `=0` makes mimalloc do the same, `=1`
//! leaves huge pages to the kernel's setting.
//!
//! # The C heap
//!
//! aws-lc allocates its AEAD contexts (~600 bytes a direction) with the C
//! library's `malloc`, whatever Rust's global allocator is. A connection
//! drops them after a second without a byte (it hibernates, see
//! `crate::conn::HIBERNATE_AFTER`), so after a burst of connections that
//! then stay idle the worker thread's glibc arena holds the burst's peak of
//! contexts as free chunks: glibc returns a non-main arena's memory only
//! from its top, and one chunk still in use above the freed ones (anything
//! allocated late in the burst) keeps all of them resident. Measured with
//! 3,000 idle connections opened in ~2 s: 0.1–3.3 MB (up to 1.1 KB a
//! connection) of RSS in free chunks, depending on how many contexts were
//! alive at once, which `malloc_trim(0)` gives back.
//!
//! So the worker counts the deadlines that expired (hibernations, idle and
//! handshake timeouts: each frees memory) and calls `malloc_trim(0)` when
//! enough did and the wave is over: at a tick that expired nothing, or when
//! no tick will follow. Never more than once a second, and at least every
//! [`MAX_DEFER_MS`] while expirations go on. `malloc_trim` walks the free
//! chunks of every arena (each under its own lock, briefly) and
//! `madvise`s their whole pages away: tens of microseconds for a worker's
//! arena, far from the connection path.

/// The environment variable that, when set, leaves transparent huge pages
/// to mimalloc's own option (see [`disable_thp`]).
pub const ALLOW_THP_ENV: &str = "MIMALLOC_ALLOW_THP";

/// Turns transparent huge pages off for the whole process, unless
/// [`ALLOW_THP_ENV`] is set. Called first thing in `main`, before the heap
/// grows (pages already faulted in keep their size). Returns whether THP
/// is now off for the process.
pub fn disable_thp() -> bool {
    if std::env::var_os(ALLOW_THP_ENV).is_some() {
        return false;
    }
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and changes
    // a flag of this process's memory map.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0 }
}

/// Expirations since the last trim below which trimming is not worth it
/// (32 hibernations free ~40 KB of contexts).
pub const MIN_EXPIRED: u32 = 32;
/// The shortest interval between two trims.
pub const MIN_INTERVAL_MS: u64 = 1000;
/// The longest a trim waits for a quiet tick while expirations go on.
pub const MAX_DEFER_MS: u64 = 5000;

/// When to trim: fed each timer tick's expirations.
#[derive(Debug, Default)]
pub struct HeapTrim {
    /// Deadlines expired since the last trim.
    pending: u32,
    /// When the last trim ran (worker ms; the worker's start before the
    /// first).
    last_ms: u64,
}

impl HeapTrim {
    /// A timer tick expired `expired` deadlines at `now_ms`; `more_ticks`:
    /// whether the timer ticks again (some deadline is still set). Returns
    /// whether to trim now (and counts it as done).
    pub fn on_tick(&mut self, expired: usize, now_ms: u64, more_ticks: bool) -> bool {
        self.pending = self
            .pending
            .saturating_add(u32::try_from(expired).unwrap_or(u32::MAX));
        if self.pending < MIN_EXPIRED {
            return false;
        }
        let since = now_ms.saturating_sub(self.last_ms);
        let due =
            !more_ticks || (since >= MIN_INTERVAL_MS && (expired == 0 || since >= MAX_DEFER_MS));
        if due {
            self.pending = 0;
            self.last_ms = now_ms;
        }
        due
    }
}

/// Returns the free pages of the C heap (every glibc arena) to the kernel.
pub fn trim() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only reorganises glibc's own free lists, under
    // its arena locks; it takes no pointer.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_enough_expirations_and_a_quiet_tick() {
        let mut t = HeapTrim::default();
        assert!(!t.on_tick(10, 2100, true));
        assert!(!t.on_tick(0, 2200, true), "10 < MIN_EXPIRED");
        assert!(!t.on_tick(30, 2300, true), "expirations go on");
        assert!(t.on_tick(0, 2400, true), "the wave is over");
        assert!(!t.on_tick(0, 2500, true), "nothing pending");
    }

    #[test]
    fn at_most_once_a_second_and_at_least_every_max_defer() {
        let mut t = HeapTrim::default();
        assert!(!t.on_tick(40, 0, true), "the worker just started");
        assert!(t.on_tick(0, 100, false), "no tick follows");
        assert!(!t.on_tick(40, 200, true));
        assert!(!t.on_tick(0, 300, true), "within MIN_INTERVAL_MS");
        assert!(t.on_tick(0, 1100, true));
        // A steady stream of expirations: trimmed after MAX_DEFER_MS.
        let mut trimmed = Vec::new();
        for i in 1..=60 {
            if t.on_tick(40, 1100 + i * 100, true) {
                trimmed.push(1100 + i * 100);
            }
        }
        assert_eq!(trimmed, vec![6100]);
    }

    #[test]
    fn the_last_wave_is_trimmed_even_without_more_ticks() {
        let mut t = HeapTrim::default();
        assert!(!t.on_tick(40, 500, true), "expirations go on");
        assert!(t.on_tick(40, 600, false), "the deadline set emptied");
    }

    #[test]
    fn trim_runs() {
        trim();
    }

    #[test]
    fn thp_off_unless_mimalloc_is_told() {
        if std::env::var_os(ALLOW_THP_ENV).is_some() {
            assert!(!disable_thp());
            return;
        }
        assert!(disable_thp());
        // SAFETY: PR_GET_THP_DISABLE reads a flag of this process.
        assert_eq!(
            unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) },
            1
        );
    }
}
