//! Restarts and upgrades that drop nothing: the listening sockets move from
//! the old process to the new one over a UNIX socket (`--upgrade-socket`),
//! HAProxy-style (`expose-fd listeners` + `-x`).
//!
//! Why this mechanism:
//! - the sockets themselves are handed over (`SCM_RIGHTS`), so their accept
//!   queues survive: a connection queued on the old process is accepted by
//!   the new one, never reset; nothing is ever closed or re-bound;
//! - SO_REUSEPORT alone with fresh sockets resets what sits in the queues
//!   of the sockets the old process closes, unless the host enables
//!   `net.ipv4.tcp_migrate_req` (a sysctl we cannot count on, and which
//!   only migrates between sockets of the same reuseport group);
//! - nginx's re-exec passes fds by inheritance, which ties the new process
//!   to being the old one's child; here any process can take over (systemd
//!   `SIGUSR2`, a shell, a test) and the old one need not exec anything.
//!
//! The exchange, on a `SOCK_SEQPACKET` socket (one message each):
//! 1. the new process connects and sends `TAKE <pid>`;
//! 2. the old process sends `L` with one listening socket attached, once
//!    per listener (every worker's, every address), `A` with the admin
//!    listener, then `END <pid>`;
//! 3. the new process builds its workers on those sockets (they accept
//!    from the same queues as the old ones at once), binds the upgrade
//!    socket path for the next upgrade, and sends `READY`;
//! 4. the old process stops accepting and drains (the usual SIGTERM drain):
//!    its established connections finish there.
//!
//! If the new process goes away before `READY`, the old one keeps serving
//! and keeps answering on the upgrade socket. Only a peer with the same
//! user id (or root) is served; the socket file is mode 0600.

use std::io;
use std::mem::size_of;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use socket2::{Domain, SockAddr, Socket, Type};

/// How long the new process waits for each message of the old one.
const TAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the old process waits for `READY` (the new one starts its
/// workers and rings in between).
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// The largest message (requests and replies are a few bytes).
const MAX_MSG: usize = 64;

/// What a socket handed over is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A TLS listener (one per worker per `--listen` address).
    Listener,
    /// The admin endpoint's listener.
    Admin,
}

/// A duplicate of a listening socket, kept to hand it over.
#[derive(Debug)]
pub struct Offered {
    /// What it is.
    pub kind: Kind,
    /// The duplicate descriptor (same socket, same accept queue).
    pub fd: OwnedFd,
}

/// What a new process took over from the old one.
#[derive(Debug)]
pub struct Inherited {
    /// Every TLS listener of the old process (several per address).
    pub listeners: Vec<TcpListener>,
    /// The old process's admin listener.
    pub admin: Option<TcpListener>,
    /// The old process.
    pub from_pid: u32,
    conn: Socket,
}

impl Inherited {
    /// Tells the old process that this one serves: it stops accepting and
    /// drains. Call once every worker accepts.
    pub fn confirm(&self) -> io::Result<()> {
        send_msg(&self.conn, b"READY", None)
    }
}

/// Errors taking the sockets over.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandoverError {
    /// The socket could not be reached or the exchange failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The old process answered something else than the protocol.
    #[error("unexpected answer from the old process: {0:?}")]
    Protocol(String),
}

/// New-process side: connects to `path` and takes every listening socket
/// over. `Ok(None)` when no process serves there (a fresh start).
pub fn take_over(path: &Path) -> Result<Option<Inherited>, HandoverError> {
    let conn = Socket::new(Domain::UNIX, Type::SEQPACKET, None)?;
    match conn.connect(&SockAddr::unix(path)?) {
        Ok(()) => {}
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e.into()),
    }
    conn.set_read_timeout(Some(TAKE_TIMEOUT))?;
    conn.set_write_timeout(Some(TAKE_TIMEOUT))?;
    send_msg(
        &conn,
        format!("TAKE {}", std::process::id()).as_bytes(),
        None,
    )?;
    let mut listeners = Vec::new();
    let mut admin = None;
    loop {
        let (text, fd) = recv_msg(&conn)?;
        let listener = || -> Result<TcpListener, HandoverError> {
            let fd =
                fd.ok_or_else(|| HandoverError::Protocol(format!("{text} without a socket")))?;
            if !is_listening(&fd) {
                return Err(HandoverError::Protocol(format!(
                    "{text}: not a listening socket"
                )));
            }
            Ok(TcpListener::from(fd))
        };
        match text.as_str() {
            "L" => listeners.push(listener()?),
            "A" => admin = Some(listener()?),
            "" => {
                return Err(HandoverError::Protocol(
                    "the old process closed the upgrade socket".into(),
                ))
            }
            other => {
                let Some(pid) = other.strip_prefix("END ") else {
                    return Err(HandoverError::Protocol(other.to_owned()));
                };
                let from_pid = pid
                    .parse()
                    .map_err(|_| HandoverError::Protocol(other.to_owned()))?;
                return Ok(Some(Inherited {
                    listeners,
                    admin,
                    from_pid,
                    conn,
                }));
            }
        }
    }
}

/// The old-process side, serving on `--upgrade-socket`.
#[derive(Debug, Clone)]
pub struct Handle {
    offered: Arc<Mutex<Option<Vec<Offered>>>>,
}

impl Handle {
    /// Replaces the listening sockets offered (a reload added or removed
    /// listen addresses): the admin listener stays. Nothing changes once
    /// the drain began.
    pub fn replace_listeners(&self, listeners: Vec<Offered>) {
        let mut offered = match self.offered.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(all) = offered.as_mut() {
            all.retain(|o| matches!(o.kind, Kind::Admin));
            all.extend(listeners);
        }
    }

    /// Drops the duplicates (at the start of a drain): the sockets then
    /// close with the workers' own descriptors, so a plain shutdown refuses
    /// new connections, and a takeover that starts now gets nothing.
    pub fn close(&self) {
        // A poisoned lock (a panic while handing over) still drops them.
        let mut offered = match self.offered.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        offered.take();
    }
}

/// Binds `path` (replacing a stale or older socket file, mode 0600) and
/// serves `offered` to the next process that asks, on its own thread. Once
/// a new process confirms, calls `handed_over(pid)` and stops serving (the
/// path then belongs to the new process).
pub fn serve(
    path: &Path,
    offered: Vec<Offered>,
    handed_over: impl FnOnce(u32) + Send + 'static,
) -> io::Result<Handle> {
    let listener = bind_path(path)?;
    let handle = Handle {
        offered: Arc::new(Mutex::new(Some(offered))),
    };
    let shared = handle.clone();
    let path: PathBuf = path.to_owned();
    std::thread::Builder::new()
        .name("ringterm-upgrade".into())
        .spawn(move || {
            let mut handed_over = Some(handed_over);
            loop {
                let conn = match listener.accept() {
                    Ok((conn, _)) => conn,
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "upgrade socket: accept failed");
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                };
                match hand_over(&conn, &shared) {
                    Ok(pid) => {
                        if let Some(f) = handed_over.take() {
                            f(pid);
                        }
                        return;
                    }
                    Err(e) => tracing::warn!(
                        "upgrade: hand-over failed, still serving: {e}"
                    ),
                }
            }
        })?;
    Ok(handle)
}

fn bind_path(path: &Path) -> io::Result<Socket> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let sock = Socket::new(Domain::UNIX, Type::SEQPACKET, None)?;
    sock.bind(&SockAddr::unix(path)?)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    sock.listen(4)?;
    Ok(sock)
}

/// One exchange with a new process; `Ok(pid)` once it confirmed.
fn hand_over(conn: &Socket, shared: &Handle) -> Result<u32, HandoverError> {
    conn.set_read_timeout(Some(TAKE_TIMEOUT))?;
    conn.set_write_timeout(Some(TAKE_TIMEOUT))?;
    let (uid, peer_pid) = peer_cred(conn)?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if uid != me && uid != 0 {
        return Err(HandoverError::Protocol(format!(
            "refused pid {peer_pid}: uid {uid} is neither ours ({me}) nor root"
        )));
    }
    let (req, _) = recv_msg(conn)?;
    if !req.starts_with("TAKE ") {
        return Err(HandoverError::Protocol(req));
    }
    {
        let offered = match shared.offered.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let Some(offered) = offered.as_ref() else {
            return Err(HandoverError::Protocol(
                "draining: nothing to hand over".into(),
            ));
        };
        for o in offered {
            let tag: &[u8] = match o.kind {
                Kind::Listener => b"L",
                Kind::Admin => b"A",
            };
            send_msg(conn, tag, Some(o.fd.as_raw_fd()))?;
        }
    }
    send_msg(conn, format!("END {}", std::process::id()).as_bytes(), None)?;
    tracing::info!(
        pid = peer_pid,
        "upgrade: listening sockets sent to the new process"
    );
    conn.set_read_timeout(Some(READY_TIMEOUT))?;
    let (ready, _) = recv_msg(conn)?;
    if ready != "READY" {
        return Err(HandoverError::Protocol(if ready.is_empty() {
            format!("the new process (pid {peer_pid}) went away before it was ready")
        } else {
            ready
        }));
    }
    Ok(peer_pid)
}

/// Whether `fd` is a listening socket (`SO_ACCEPTCONN`).
fn is_listening(fd: &OwnedFd) -> bool {
    let mut val: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `val` and `len` are valid for writes of the sizes given;
    // `fd` is an open descriptor we own.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut val as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    rc == 0 && val == 1
}

/// The peer's user id and pid (`SO_PEERCRED`).
fn peer_cred(conn: &Socket) -> io::Result<(u32, u32)> {
    // SAFETY: ucred is plain old data; all-zero is a valid value.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given;
    // the socket is open for the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((cred.uid, cred.pid as u32))
}

/// Room for one `SCM_RIGHTS` descriptor, aligned for `cmsghdr`.
#[repr(C, align(8))]
struct CmsgBuf([u8; 64]);

/// Sends one message, with `fd` attached when given.
fn send_msg(conn: &Socket, data: &[u8], fd: Option<RawFd>) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let mut cmsg = CmsgBuf([0; 64]);
    // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        // SAFETY: CMSG_SPACE/CMSG_LEN are pure arithmetic; the buffer is 64
        // bytes, aligned for cmsghdr, and CMSG_SPACE(4) is 24 on Linux, so
        // CMSG_FIRSTHDR returns a header inside it and CMSG_DATA points 16
        // bytes in, with room for one descriptor.
        unsafe {
            msg.msg_control = cmsg.0.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(size_of::<RawFd>() as u32) as _;
            let hdr = libc::CMSG_FIRSTHDR(&msg);
            (*hdr).cmsg_level = libc::SOL_SOCKET;
            (*hdr).cmsg_type = libc::SCM_RIGHTS;
            (*hdr).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(hdr).cast::<RawFd>(), fd);
        }
    }
    // SAFETY: `msg` points at `iov` (valid for `data.len()` bytes) and at
    // `cmsg` when a descriptor is attached; both outlive the call.
    let n = unsafe { libc::sendmsg(conn.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != data.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short send"));
    }
    Ok(())
}

/// Receives one message and the descriptor attached to it, if any (more
/// than one is a protocol error: the extra ones are closed). An empty text
/// means the peer closed.
fn recv_msg(conn: &Socket) -> io::Result<(String, Option<OwnedFd>)> {
    let mut data = [0u8; MAX_MSG];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    let mut cmsg = CmsgBuf([0; 64]);
    // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.0.as_mut_ptr().cast();
    msg.msg_controllen = cmsg.0.len() as _;
    // SAFETY: `msg` points at `data` and `cmsg`, valid for writes of the
    // lengths given, which outlive the call.
    let n = unsafe { libc::recvmsg(conn.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `msg.msg_control` with well-formed headers
    // (at most msg_controllen bytes); CMSG_FIRSTHDR/NXTHDR stay inside it,
    // and each SCM_RIGHTS payload holds (cmsg_len - CMSG_LEN(0)) / 4 fds,
    // which are new descriptors this process now owns.
    unsafe {
        let mut hdr = libc::CMSG_FIRSTHDR(&msg);
        while !hdr.is_null() {
            if (*hdr).cmsg_level == libc::SOL_SOCKET && (*hdr).cmsg_type == libc::SCM_RIGHTS {
                let bytes = (*hdr).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(hdr).cast::<RawFd>();
                for i in 0..bytes / size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            hdr = libc::CMSG_NXTHDR(&msg, hdr);
        }
    }
    if msg.msg_flags & (libc::MSG_CTRUNC | libc::MSG_TRUNC) != 0 || fds.len() > 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "upgrade socket: truncated message or more than one descriptor",
        ));
    }
    let text = String::from_utf8_lossy(&data[..n as usize]).into_owned();
    Ok((text, fds.pop()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole exchange in one process: the sockets arrive, they are the
    /// same sockets (a connection queued before the hand-over is accepted
    /// from the received descriptor), and READY reaches the old side.
    #[test]
    fn hands_listeners_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("up.sock");
        let l1 = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l1.local_addr().unwrap();
        let offered = vec![Offered {
            kind: Kind::Listener,
            fd: OwnedFd::from(l1.try_clone().unwrap()),
        }];
        let (tx, rx) = std::sync::mpsc::channel();
        let _handle = serve(&path, offered, move |pid| tx.send(pid).unwrap()).unwrap();
        // Queued before the hand-over, on the old process's socket.
        let _client = std::net::TcpStream::connect(addr).unwrap();
        drop(l1);
        let got = take_over(&path).unwrap().expect("someone serves");
        assert_eq!(got.listeners.len(), 1);
        assert!(got.admin.is_none());
        assert_eq!(got.from_pid, std::process::id());
        assert_eq!(got.listeners[0].local_addr().unwrap(), addr);
        let (_conn, _) = got.listeners[0].accept().unwrap();
        got.confirm().unwrap();
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)).unwrap(),
            std::process::id()
        );
    }

    #[test]
    fn nobody_there_is_a_fresh_start() {
        let dir = tempfile::tempdir().unwrap();
        assert!(take_over(&dir.path().join("none.sock")).unwrap().is_none());
        // A stale socket file (its process is gone): refused, also fresh.
        let path = dir.path().join("stale.sock");
        drop(bind_path(&path).unwrap());
        assert!(take_over(&path).unwrap().is_none());
    }

    #[test]
    fn a_closed_handle_hands_nothing_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("up.sock");
        let l1 = TcpListener::bind("127.0.0.1:0").unwrap();
        let offered = vec![Offered {
            kind: Kind::Listener,
            fd: OwnedFd::from(l1),
        }];
        let handle = serve(&path, offered, |_| {}).unwrap();
        handle.close();
        assert!(take_over(&path).is_err());
    }
}
