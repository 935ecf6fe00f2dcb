//! Adaptive completion coalescing (`--coalesce-usec`), like a NIC's
//! adaptive interrupt moderation: when the worker's recent wake-ups each
//! found several arrivals (reads, accepts, connects: it is under load),
//! its next wait asks the kernel for half as many again, bounded by
//! `min_wait_usec`; when they found one (one connection's ping-pong, light
//! load), the wait asks for one, as without coalescing, so latency at low
//! load is unchanged.
//!
//! With `DEFER_TASKRUN` the kernel wakes a waiting worker only once
//! `wait_nr` completions' task work is pending, or, after `min_wait_usec`,
//! at the first one: each wake-up it saves is a context switch, an
//! `io_uring_enter` return and, on a VM, an IPI to an idle vCPU.
//!
//! This is the estimate alone (pure); `Worker::enter` applies it.

use super::ops::{Tag, UserData};

/// Most arrivals a coalesced wait asks for.
pub const MAX_WANT: u32 = 32;

/// Below this many arrivals per wake-up on average (×16), waits do not
/// coalesce.
const ON_X16: u32 = 2 * 16;

/// The arrivals a wake-up found, from its completions' `user_data`: data
/// read, a backend connected. Sends (most complete during the submit
/// itself), closes and cancels are not counted. A wake-up that found an
/// accepted connection counts as none: the kernel never holds an accept's
/// wake-up back (it wakes the worker in the middle of a coalesced wait,
/// which then sleeps again), so waits do not coalesce while connections
/// keep coming (handshakes cost far more than wake-ups anyway).
pub fn arrivals(user_data: impl Iterator<Item = u64>) -> usize {
    const ARRIVALS: [Tag; 4] = [
        Tag::ClientRecv,
        Tag::BackendRecv,
        Tag::Connect,
        Tag::StoreRecv,
    ];
    let mut n = 0;
    for tag in user_data.map(UserData::raw_tag) {
        if tag == Tag::Accept as u8 {
            return 0;
        }
        if ARRIVALS.iter().any(|t| *t as u8 == tag) {
            n += 1;
        }
    }
    n
}

/// A running estimate of the arrivals each wake-up finds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Coalesce {
    /// Moving average (weight 1/4) of arrivals per wake-up, ×16.
    avg_x16: u32,
}

impl Coalesce {
    /// An estimate that starts with no coalescing.
    pub const fn new() -> Self {
        Coalesce { avg_x16: 0 }
    }

    /// A wake-up found `found` arrivals (see [`arrivals`]).
    pub fn observe(&mut self, found: usize) {
        let f = (found.min(2 * MAX_WANT as usize) as u32) * 16;
        self.avg_x16 = self.avg_x16 - self.avg_x16 / 4 + f / 4;
    }

    /// How many arrivals the next wait asks for: 1 (no coalescing) at
    /// light load, else half as many again as the average
    /// (so the estimate can grow while the waits fill up; a wait that
    /// does not fill ends at its bound and pulls the average down), at
    /// most [`MAX_WANT`].
    pub fn want(&self) -> u32 {
        if self.avg_x16 < ON_X16 {
            return 1;
        }
        let more = self.avg_x16 + self.avg_x16 / 2;
        more.div_ceil(16).clamp(2, MAX_WANT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settle(c: &mut Coalesce, found: usize) {
        for _ in 0..64 {
            c.observe(found);
        }
    }

    #[test]
    fn arrivals_are_reads_and_connects_unless_an_accept_came() {
        let found = |tags: &[Tag]| {
            arrivals(tags.iter().map(|&tag| {
                UserData {
                    tag,
                    gen: 7,
                    slot: 3,
                }
                .encode()
            }))
        };
        assert_eq!(found(&[Tag::ClientRecv, Tag::BackendRecv, Tag::Connect]), 3);
        let others = [Tag::ClientSend, Tag::BackendSend, Tag::Close, Tag::Timer];
        assert_eq!(found(&others), 0);
        assert_eq!(found(&[Tag::ClientSend, Tag::ClientRecv, Tag::Close]), 1);
        assert_eq!(found(&[Tag::ClientRecv, Tag::Accept, Tag::BackendRecv]), 0);
        assert_eq!(arrivals([0u64].into_iter()), 0);
    }

    #[test]
    fn light_load_never_coalesces() {
        let mut c = Coalesce::new();
        assert_eq!(c.want(), 1);
        settle(&mut c, 1);
        assert_eq!(c.want(), 1);
        settle(&mut c, 0);
        assert_eq!(c.want(), 1);
        // One wake-up that found many does not switch it on by itself.
        c.observe(3);
        assert_eq!(c.want(), 1);
    }

    #[test]
    fn load_asks_for_half_as_many_again_as_found() {
        let mut c = Coalesce::new();
        settle(&mut c, 4);
        assert_eq!(c.want(), 6);
        settle(&mut c, 8);
        assert_eq!(c.want(), 12);
        settle(&mut c, 2);
        assert!((3..=4).contains(&c.want()), "{}", c.want());
    }

    #[test]
    fn capped() {
        let mut c = Coalesce::new();
        settle(&mut c, 1000);
        assert_eq!(c.want(), MAX_WANT);
        // The average itself is bounded, so load that ends is seen soon.
        let mut n = 0;
        while c.want() > 1 {
            c.observe(1);
            n += 1;
        }
        assert!(n <= 16, "{n} wake-ups to turn off");
    }

    #[test]
    fn grows_while_waits_fill_and_falls_when_they_do_not() {
        let mut c = Coalesce::new();
        settle(&mut c, 3);
        // Waits that get what they asked for (or more) let it grow.
        for _ in 0..64 {
            let w = c.want() as usize;
            c.observe(w);
        }
        assert_eq!(c.want(), MAX_WANT);
        // Waits that end at their bound with 4 bring it back near 4.
        settle(&mut c, 4);
        assert!((6..=7).contains(&c.want()), "{}", c.want());
        // And load that stops turns it off.
        settle(&mut c, 1);
        assert_eq!(c.want(), 1);
    }
}
