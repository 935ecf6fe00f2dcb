//! io_uring operations ringterm submits itself, through tokio-uring's public
//! `UnsubmittedOneshot` escape hatch. One function per syscall.
//!
//! Why our own ops: tokio-uring's `read`/`connect` are `async fn`s whose
//! futures cannot be named, stored in a struct, or cancelled; dropping one
//! does NOT cancel it in the kernel (an orphaned read can swallow bytes).
//! These return `InFlightOneshot`s, which are nameable and `Unpin`, so the
//! connection driver keeps each in a slot and polls it to completion: an
//! in-flight op is never dropped. Cancellation goes through
//! `IORING_OP_ASYNC_CANCEL` (by fd), timeouts through `IORING_OP_TIMEOUT`.
//!
//! Every op keeps an `Rc` of its socket in its stable data, so the fd cannot
//! be closed (and its number reused) while the op is queued or in flight.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use io_uring::{cqueue, opcode, types};
use tokio_uring::net::TcpStream;
use tokio_uring::{InFlightOneshot, OneshotOutputTransform, UnsubmittedOneshot};

fn result(cqe: &cqueue::Entry) -> io::Result<u32> {
    let res = cqe.result();
    if res >= 0 {
        Ok(res as u32)
    } else {
        Err(io::Error::from_raw_os_error(-res))
    }
}

/// Stable data of a buffer op: the socket and the buffer.
pub struct BufData {
    _sock: Rc<TcpStream>,
    buf: Vec<u8>,
}

/// Output transform of `recv`: advances the buffer's length.
pub struct RecvDone;

impl OneshotOutputTransform for RecvDone {
    type Output = (io::Result<usize>, Vec<u8>);
    type StoredData = BufData;

    fn transform_oneshot_output(self, data: BufData, cqe: cqueue::Entry) -> Self::Output {
        let mut buf = data.buf;
        let res = result(&cqe).map(|n| n as usize);
        if let Ok(n) = res {
            let new_len = buf.len() + n;
            assert!(new_len <= buf.capacity(), "kernel wrote past the buffer");
            // SAFETY: `recv` asked the kernel to write at most
            // `capacity - len` bytes starting at `len`; it reported `n` bytes
            // written, so `len..len + n` is initialised and within capacity.
            unsafe { buf.set_len(new_len) };
        }
        (res, buf)
    }
}

/// An in-flight `recv`.
pub type Recv = InFlightOneshot<BufData, RecvDone>;

/// `recv(2)` into the spare capacity of `buf` (after its current length).
pub fn recv(sock: &Rc<TcpStream>, mut buf: Vec<u8>) -> Recv {
    if buf.capacity() == buf.len() {
        buf.reserve(4096);
    }
    let spare = buf.capacity() - buf.len();
    // SAFETY: `len <= capacity`, so the pointer is within (or one past) the
    // allocation; the Vec is moved into the op's stable data, so its heap
    // buffer does not move until the completion hands it back.
    let ptr = unsafe { buf.as_mut_ptr().add(buf.len()) };
    let sqe = opcode::Recv::new(types::Fd(sock.as_raw_fd()), ptr, spare as u32).build();
    UnsubmittedOneshot::new(
        BufData {
            _sock: sock.clone(),
            buf,
        },
        RecvDone,
        sqe,
    )
    .submit()
}

/// Output transform of `send`.
pub struct SendDone;

impl OneshotOutputTransform for SendDone {
    type Output = (io::Result<usize>, Vec<u8>);
    type StoredData = BufData;

    fn transform_oneshot_output(self, data: BufData, cqe: cqueue::Entry) -> Self::Output {
        (result(&cqe).map(|n| n as usize), data.buf)
    }
}

/// An in-flight `send`.
pub type Send = InFlightOneshot<BufData, SendDone>;

/// `send(2)` of `buf[offset..]`, with `MSG_NOSIGNAL`.
pub fn send(sock: &Rc<TcpStream>, buf: Vec<u8>, offset: usize) -> Send {
    let offset = offset.min(buf.len());
    let len = buf.len() - offset;
    let ptr = buf[offset..].as_ptr();
    let sqe = opcode::Send::new(types::Fd(sock.as_raw_fd()), ptr, len as u32)
        .flags(libc::MSG_NOSIGNAL)
        .build();
    UnsubmittedOneshot::new(
        BufData {
            _sock: sock.clone(),
            buf,
        },
        SendDone,
        sqe,
    )
    .submit()
}

/// Output transform that returns the plain result.
pub struct Plain;

/// Stable data of a connect: the socket and its address.
pub struct ConnectData {
    _sock: Rc<TcpStream>,
    _addr: Box<socket2::SockAddr>,
}

impl OneshotOutputTransform for Plain {
    type Output = io::Result<u32>;
    type StoredData = PlainData;

    fn transform_oneshot_output(self, _data: PlainData, cqe: cqueue::Entry) -> Self::Output {
        result(&cqe)
    }
}

/// Stable data for ops that only need something kept alive.
pub enum PlainData {
    /// Nothing to keep.
    None,
    /// A connect's socket and address.
    Connect(ConnectData),
    /// A timeout's timespec.
    Timespec(Box<types::Timespec>),
}

/// An in-flight op whose output is a plain result.
pub type PlainOp = InFlightOneshot<PlainData, Plain>;

/// `connect(2)` of `sock` to `addr`.
pub fn connect(sock: &Rc<TcpStream>, addr: socket2::SockAddr) -> PlainOp {
    let addr = Box::new(addr);
    let sqe = opcode::Connect::new(types::Fd(sock.as_raw_fd()), addr.as_ptr(), addr.len()).build();
    UnsubmittedOneshot::new(
        PlainData::Connect(ConnectData {
            _sock: sock.clone(),
            _addr: addr,
        }),
        Plain,
        sqe,
    )
    .submit()
}

/// `IORING_OP_TIMEOUT`: completes after `dur` with `ETIME` (reported as `Ok`).
pub fn sleep(dur: Duration) -> PlainOp {
    let ts = Box::new(
        types::Timespec::new()
            .sec(dur.as_secs())
            .nsec(dur.subsec_nanos()),
    );
    let sqe = opcode::Timeout::new(&*ts as *const types::Timespec).build();
    UnsubmittedOneshot::new(PlainData::Timespec(ts), Plain, sqe).submit()
}

/// `IORING_OP_ASYNC_CANCEL` of every op in flight on `fd`. Cancelled ops
/// complete with `ECANCELED`; a read that was cancelled consumed no bytes.
/// The result is the number of ops cancelled, or `ENOENT` if none was.
pub fn cancel_fd(fd: RawFd) -> PlainOp {
    let sqe = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(fd)).all()).build();
    UnsubmittedOneshot::new(PlainData::None, Plain, sqe).submit()
}

/// Whether an op's error means it was cancelled by [`cancel_fd`].
pub fn is_cancelled(err: &io::Error) -> bool {
    err.raw_os_error() == Some(libc::ECANCELED) || err.raw_os_error() == Some(libc::EINTR)
}

/// Whether a timeout's result means it simply expired.
pub fn timer_fired(res: &io::Result<u32>) -> bool {
    match res {
        Ok(_) => true,
        Err(e) => e.raw_os_error() == Some(libc::ETIME),
    }
}
