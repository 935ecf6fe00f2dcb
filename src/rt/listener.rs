//! Listening sockets: one per worker per address, SO_REUSEPORT, bound on the
//! main thread so that a port in use is a clear startup error.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Binds one listener with SO_REUSEADDR and SO_REUSEPORT.
pub fn bind(addr: SocketAddr, backlog: u32) -> io::Result<std::net::TcpListener> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_nodelay(true)?;
    sock.bind(&addr.into())?;
    sock.listen(backlog.min(i32::MAX as u32) as i32)?;
    defer_accept(&sock);
    Ok(sock.into())
}

/// `TCP_DEFER_ACCEPT`: TLS clients speak first, so a connection is handed
/// to the worker with its ClientHello already there (one read, no wait);
/// a client that says nothing is handed over after about a second anyway,
/// and the handshake timeout deals with it.
fn defer_accept(sock: &Socket) {
    use std::os::fd::AsRawFd;
    let secs: libc::c_int = 1;
    // SAFETY: plain setsockopt on a socket we own, from a live int.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&secs as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Binds `workers` listeners on `addr`. When the port is 0, the first bind
/// picks the port and the others reuse it, so every worker shares one port.
///
/// A port already held by another process fails with `EADDRINUSE`: with
/// SO_REUSEPORT the kernel only lets sockets of the same user share a port,
/// and we also refuse a port that something else already listens on (a
/// connect probe succeeds), so two ringterm instances do not silently split
/// traffic.
pub fn bind_all(
    addr: SocketAddr,
    workers: usize,
    backlog: u32,
) -> io::Result<Vec<std::net::TcpListener>> {
    if addr.port() != 0 && already_listening(addr) {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "address already in use (another process listens on it)",
        ));
    }
    let first = bind(addr, backlog)?;
    let actual = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..workers {
        all.push(bind(actual, backlog)?);
    }
    Ok(all)
}

fn already_listening(addr: SocketAddr) -> bool {
    let probe = if addr.ip().is_unspecified() {
        match addr {
            SocketAddr::V4(_) => SocketAddr::from(([127, 0, 0, 1], addr.port())),
            SocketAddr::V6(_) => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port())),
        }
    } else {
        addr
    };
    std::net::TcpStream::connect_timeout(&probe, std::time::Duration::from_millis(200)).is_ok()
}

/// `ringterm check`: whether `addr` can be bound by this user, with
/// SO_REUSEPORT and without listening (a socket that does not listen
/// receives no connection, so checking next to a running ringterm that
/// holds the port is harmless). Fails for an address this host does not
/// have, a port below 1024 without the capability, or a port another
/// user's or a non-SO_REUSEPORT socket holds.
pub fn check_bind(addr: SocketAddr) -> io::Result<()> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.bind(&addr.into())
}
