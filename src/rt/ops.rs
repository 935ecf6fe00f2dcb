//! The io_uring ops the workers submit, and how completions find their way
//! back.
//!
//! Every SQE carries a `user_data` that names what it was for: an op tag, a
//! connection slot and the slot's generation (see [`UserData`]). A slot's
//! generation changes when the slot is reused, so a completion that
//! arrives for a connection that has ended — a close, a late cancel — can
//! never reach the connection that now lives in the slot.

use std::io;
use std::os::fd::RawFd;

use io_uring::{squeue, IoUring};

/// What an op was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Tag {
    /// A listener's multishot accept (slot = listener index).
    Accept = 1,
    /// The back-off after an accept error (slot = listener index).
    AcceptBackoff,
    /// Cancelling a listener's accept at the drain (slot = listener index).
    AcceptCancel,
    /// Closing a listener (slot = listener index).
    ListenerClose,
    /// The worker's timer tick.
    Timer,
    /// A read on the worker's eventfd (another thread wants something).
    Wake,
    /// A connection's client read.
    ClientRecv,
    /// A connection's client write.
    ClientSend,
    /// A connection's backend read.
    BackendRecv,
    /// A connection's backend write.
    BackendSend,
    /// Creating the backend socket.
    Socket,
    /// Connecting it.
    Connect,
    /// A cancel of a client-side op.
    ClientCancel,
    /// A cancel of a backend-side op.
    BackendCancel,
    /// Closing a socket of a finished connection.
    Close,
    /// The session store connection's connect (gen = its generation).
    StoreConnect,
    /// Its read.
    StoreRecv,
    /// Its write.
    StoreSend,
    /// A cancel of its connect.
    StoreCancel,
    /// Its timer (gen = the timer's sequence number).
    StoreTimer,
    /// `TCP_NODELAY` on a backend socket (`SOCKET_URING_OP_SETSOCKOPT`,
    /// Linux 6.7); submitted with `CQE_SKIP_SUCCESS`, so only a failure
    /// completes.
    SockOpt,
}

impl Tag {
    const ALL: [Tag; 21] = [
        Tag::Accept,
        Tag::AcceptBackoff,
        Tag::AcceptCancel,
        Tag::ListenerClose,
        Tag::Timer,
        Tag::Wake,
        Tag::ClientRecv,
        Tag::ClientSend,
        Tag::BackendRecv,
        Tag::BackendSend,
        Tag::Socket,
        Tag::Connect,
        Tag::ClientCancel,
        Tag::BackendCancel,
        Tag::Close,
        Tag::StoreConnect,
        Tag::StoreRecv,
        Tag::StoreSend,
        Tag::StoreCancel,
        Tag::StoreTimer,
        Tag::SockOpt,
    ];

    fn from_u8(v: u8) -> Option<Tag> {
        Tag::ALL.into_iter().find(|t| *t as u8 == v)
    }
}

/// `user_data`: tag (8 bits) | generation (24 bits) | slot (32 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserData {
    /// What the op was for.
    pub tag: Tag,
    /// The slot's generation when the op was submitted.
    pub gen: u32,
    /// The connection slot (or listener index).
    pub slot: u32,
}

/// Generations wrap at 24 bits.
pub const GEN_MASK: u32 = 0xff_ffff;

impl UserData {
    /// Packs it.
    pub fn encode(self) -> u64 {
        (self.tag as u64) << 56 | u64::from(self.gen & GEN_MASK) << 32 | u64::from(self.slot)
    }

    /// The tag byte of a completion's `user_data`, undecoded (cheap: for
    /// counting completions by kind, see `coalesce::arrivals`).
    pub fn raw_tag(v: u64) -> u8 {
        (v >> 56) as u8
    }

    /// Unpacks a completion's `user_data`; `None` for a value no op of
    /// ours carries.
    pub fn decode(v: u64) -> Option<Self> {
        Some(Self {
            tag: Tag::from_u8(Self::raw_tag(v))?,
            gen: ((v >> 32) as u32) & GEN_MASK,
            slot: v as u32,
        })
    }
}

/// Queues `entry`, handing the queued SQEs to the kernel first when the
/// submission queue is full. Returns the submit error that kept it out, if
/// any (the caller counts it and fails the op; a worker never panics).
///
/// # Safety
///
/// Whatever `entry` points to (buffers, addresses, timespecs) must stay
/// valid and unmoved until its completion arrives.
pub unsafe fn push(ring: &mut IoUring, entry: &squeue::Entry) -> io::Result<()> {
    for _ in 0..64 {
        // SAFETY: forwarded from the caller.
        if unsafe { ring.submission().push(entry) }.is_ok() {
            return Ok(());
        }
        match ring.submit() {
            Ok(_) => {}
            // The completion queue is full (with NODROP the kernel holds
            // the rest): the caller's loop reaps, and we try again.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                return Err(e);
            }
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("submission queue stays full"))
}

/// A completion result as an `io::Result`.
pub fn result(res: i32) -> io::Result<u32> {
    if res >= 0 {
        Ok(res as u32)
    } else {
        Err(io::Error::from_raw_os_error(-res))
    }
}

/// Closes `fd` now, with a plain `close(2)` (the fallback when an
/// `IORING_OP_CLOSE` cannot be queued).
pub fn close_now(fd: RawFd) {
    // SAFETY: the caller owns `fd` and never uses it again.
    unsafe {
        libc::close(fd);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_round_trips_and_generations_wrap() {
        for tag in Tag::ALL {
            let ud = UserData {
                tag,
                gen: 0x12_3456,
                slot: 0xdead_beef,
            };
            assert_eq!(UserData::decode(ud.encode()), Some(ud));
        }
        let ud = UserData {
            tag: Tag::ClientRecv,
            gen: GEN_MASK + 2,
            slot: 1,
        };
        assert_eq!(UserData::decode(ud.encode()).unwrap().gen, 1);
        assert_eq!(UserData::decode(0), None);
    }
}
