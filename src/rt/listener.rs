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

/// Whether a socket bound to `have` serves the configured address `want`:
/// the same address, or the same IP when `want` asks for any port (0).
pub fn same_address(want: SocketAddr, have: SocketAddr) -> bool {
    want == have || (want.port() == 0 && want.ip() == have.ip())
}

/// Listening sockets handed over by another process (see `handover`),
/// grouped by address in the order they came.
#[derive(Debug, Default)]
pub struct Inherited {
    groups: Vec<(SocketAddr, Vec<std::net::TcpListener>)>,
}

impl Inherited {
    /// Groups `listeners` by local address (one whose address cannot be
    /// read is closed).
    pub fn new(listeners: Vec<std::net::TcpListener>) -> Self {
        let mut groups: Vec<(SocketAddr, Vec<std::net::TcpListener>)> = Vec::new();
        for l in listeners {
            let Ok(addr) = l.local_addr() else { continue };
            match groups.iter_mut().find(|(a, _)| *a == addr) {
                Some((_, g)) => g.push(l),
                None => groups.push((addr, vec![l])),
            }
        }
        Self { groups }
    }

    /// The sockets for the configured address `want`: an exact match first,
    /// else (for port 0) the first group left on the same IP.
    pub fn take(&mut self, want: SocketAddr) -> Option<Vec<std::net::TcpListener>> {
        let i = self
            .groups
            .iter()
            .position(|(a, _)| *a == want)
            .or_else(|| self.groups.iter().position(|(a, _)| same_address(want, *a)))?;
        Some(self.groups.remove(i).1)
    }

    /// Closes the sockets of addresses no longer configured (their queues
    /// end when the old process closes its copies too).
    pub fn close_unused(self) {
        for (addr, _) in &self.groups {
            tracing::info!(%addr, "upgrade: address no longer in --listen, closing its inherited sockets");
        }
    }
}

/// Completes adopted sockets of one address to at least `workers`, binding
/// the missing ones with SO_REUSEPORT on the same address. Never closes one:
/// the caller spreads any extra sockets over the workers. The adopted ones
/// take `backlog` (listen(2) again on a listening socket only resizes its
/// queue; what is queued stays).
pub fn adopt(
    mut adopted: Vec<std::net::TcpListener>,
    workers: usize,
    backlog: u32,
) -> io::Result<Vec<std::net::TcpListener>> {
    let addr = adopted
        .first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no socket to adopt"))?
        .local_addr()?;
    for l in &adopted {
        socket2::SockRef::from(l).listen(backlog.min(i32::MAX as u32) as i32)?;
    }
    while adopted.len() < workers {
        adopted.push(bind(addr, backlog)?);
    }
    Ok(adopted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_address_matches_port_zero_by_ip() {
        let a: SocketAddr = "127.0.0.1:8443".parse().unwrap();
        assert!(same_address(a, a));
        assert!(same_address("127.0.0.1:0".parse().unwrap(), a));
        assert!(!same_address("127.0.0.2:0".parse().unwrap(), a));
        assert!(!same_address("127.0.0.1:8444".parse().unwrap(), a));
    }

    #[test]
    fn inherited_groups_by_address_and_adopt_fills_up() {
        let l1 = bind("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let a1 = l1.local_addr().unwrap();
        let l1b = bind(a1, 16).unwrap();
        let l2 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a2 = l2.local_addr().unwrap();
        // Queued before the adoption: still there after listen(2) again.
        // (with a byte: TCP_DEFER_ACCEPT holds back connections that said
        // nothing yet)
        let mut queued = std::net::TcpStream::connect(a1).unwrap();
        std::io::Write::write_all(&mut queued, b"x").unwrap();
        let mut inh = Inherited::new(vec![l1, l2, l1b]);
        let g1 = inh.take(a1).unwrap();
        assert_eq!(g1.len(), 2);
        assert!(inh.take(a1).is_none());
        let g2 = inh.take("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_eq!(g2[0].local_addr().unwrap(), a2);
        let all = adopt(g1, 4, 16).unwrap();
        assert_eq!(all.len(), 4);
        assert!(all.iter().all(|l| l.local_addr().unwrap() == a1));
        // The queued connection sits on one of the first two sockets.
        let accepted = all[..2].iter().filter(|l| {
            l.set_nonblocking(true).unwrap();
            l.accept().is_ok()
        });
        assert_eq!(accepted.count(), 1);
    }
}
