//! The worker's provided-buffer ring (`IORING_REGISTER_PBUF_RING`, 5.19).
//!
//! Reads do not carry a buffer: the kernel picks one from this ring when
//! data arrives and reports its id in the completion. The worker hands the
//! bytes to the connection machine and gives the buffer back at once, so a
//! connection waiting for data holds no read buffer at all, and the ring's
//! buffers are only as many as one loop turn's completions need. When the
//! ring runs dry a read completes with `ENOBUFS`; the worker then submits
//! it again after the turn's buffers came back (nothing is lost: the data
//! stays in the socket).

use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::IoUring;

/// Bytes after each buffer that the kernel never fills: the room a record
/// sealed in place there may borrow (TLS 1.3's content type after the
/// payload, see `RecordLayer::seal_lent`). A cache line, so that buffers
/// stay aligned.
const SLACK: usize = 64;

/// A registered buffer ring and its buffers.
pub struct BufRing {
    /// The ring entries (page-aligned, mmap'ed), `entries` of them.
    ring: *mut BufRingEntry,
    ring_len: usize,
    /// The buffers, `entries * (buf_size + SLACK)` bytes, never resized
    /// (their addresses are in the ring).
    slab: Box<[u8]>,
    buf_size: usize,
    /// Buffers lent out (see [`BufRing::lend`]), not in the ring.
    lent: u16,
    entries: u16,
    bgid: u16,
    /// Our producer index (published to the kernel by `commit`).
    tail: u16,
}

impl std::fmt::Debug for BufRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufRing")
            .field("entries", &self.entries)
            .field("buf_size", &self.buf_size)
            .finish()
    }
}

impl BufRing {
    /// Registers a ring of `entries` (a power of two) buffers of
    /// `buf_size` bytes as group `bgid` on `ring`, all provided.
    pub fn new(ring: &IoUring, entries: u16, buf_size: usize, bgid: u16) -> io::Result<Self> {
        assert!(entries.is_power_of_two(), "buffer ring size");
        let ring_len = entries as usize * std::mem::size_of::<BufRingEntry>();
        // SAFETY: an anonymous private mapping; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ring_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut this = Self {
            ring: ptr.cast(),
            ring_len,
            slab: vec![0u8; entries as usize * (buf_size + SLACK)].into_boxed_slice(),
            buf_size,
            lent: 0,
            entries,
            bgid,
            tail: 0,
        };
        // SAFETY: the ring memory lives as long as `this`, which the worker
        // drops only after the io_uring instance (field order in `Worker`),
        // and it is page-aligned (mmap) and `entries` entries long.
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(ptr as u64, entries, bgid, 0)?;
        }
        for bid in 0..entries {
            this.push(bid);
        }
        this.commit();
        Ok(this)
    }

    /// The buffer group id reads select from.
    pub fn bgid(&self) -> u16 {
        self.bgid
    }

    /// Bytes per buffer.
    pub fn buf_size(&self) -> usize {
        self.buf_size
    }

    /// The first `len` bytes of buffer `bid`, as the kernel filled them.
    pub fn get(&self, bid: u16, len: usize) -> &[u8] {
        let start = self.offset(bid);
        &self.slab[start..start + len.min(self.buf_size)]
    }

    /// Where buffer `bid` starts in the slab (buffers are `SLACK` apart).
    fn offset(&self, bid: u16) -> usize {
        bid as usize * (self.buf_size + SLACK)
    }

    /// Buffer `bid` whole, with the room after it, for a buffer that a
    /// completion handed out (the kernel no longer writes into it).
    pub fn get_mut(&mut self, bid: u16) -> &mut [u8] {
        let start = self.offset(bid);
        &mut self.slab[start..start + self.buf_size + SLACK]
    }

    /// Where buffer `bid` starts, for an op that reads it.
    pub fn ptr(&self, bid: u16) -> *const u8 {
        self.slab[self.offset(bid)..].as_ptr()
    }

    /// Whether a buffer a completion handed out may stay out until a write
    /// from it completes: at most half of the ring is lent at a time, so
    /// that connections whose clients read slowly cannot starve the reads.
    pub fn may_lend(&self) -> bool {
        self.lent < self.entries / 2
    }

    /// Buffer `bid` stays out (until [`BufRing::give_back`]).
    pub fn lend(&mut self) {
        self.lent += 1;
    }

    /// A lent buffer comes back to the ring.
    pub fn give_back(&mut self, bid: u16) {
        self.lent = self.lent.saturating_sub(1);
        self.recycle(bid);
    }

    /// Gives buffer `bid` back to the kernel (visible after `commit`).
    pub fn recycle(&mut self, bid: u16) {
        self.push(bid);
        self.commit();
    }

    fn push(&mut self, bid: u16) {
        let mask = self.entries - 1;
        let index = (self.tail & mask) as usize;
        let addr = self.ptr(bid) as u64;
        // SAFETY: `index` < `entries`, within the mapping; only this thread
        // writes entries, and the kernel reads one only after the tail
        // covering it is published (`commit`).
        let entry = unsafe { &mut *self.ring.add(index) };
        entry.set_addr(addr);
        entry.set_len(self.buf_size as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn commit(&mut self) {
        // SAFETY: the tail field overlays entry 0's `resv`, inside the
        // mapping; the kernel reads it with acquire semantics, so a release
        // store publishes the entries written before it.
        unsafe {
            let tail = BufRingEntry::tail(self.ring) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once; the ring that
        // used it is gone (see the field order note in `new`).
        unsafe {
            libc::munmap(self.ring.cast(), self.ring_len);
        }
    }
}
