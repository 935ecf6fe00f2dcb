//! The worker's connection to the L2 session store (`--session-store`): the
//! sans-IO client ([`crate::session::l2::Client`]) driven on the worker's
//! own io_uring, like the client connections: one socket, one read and at
//! most one write in flight, tagged `Store*` in `user_data` with the store
//! connection's generation in place of a slot's.
//!
//! Lookups come from connection machines ([`Op::LookupSession`]); their
//! answers go into the per-core cache ([`session_store::l1_insert`]) before
//! the machine steps its handshake, where rustls finds them. Puts come
//! from the worker's session store ([`session_store::take_l2_puts`]).
//!
//! [`Op::LookupSession`]: crate::conn::Op::LookupSession

use std::collections::HashMap;
use std::os::fd::{IntoRawFd, RawFd};
use std::time::Instant;

use io_uring::{opcode, types};

use super::ops::{self, Tag, UserData};
use super::session_store;
use super::worker::Worker;
use crate::metrics::hist::Metric;
use crate::session::l2::{Answered, Client, Event, L2Config, L2Op};

/// Read size of the store connection.
const RECV_SIZE: usize = 64 * 1024;

/// What a worker needs to reach the store.
#[derive(Debug, Clone)]
pub struct StoreSpec {
    /// The store's address (TCP or UNIX).
    pub addr: socket2::SockAddr,
    /// The client's settings.
    pub config: L2Config,
}

/// The worker's store connection.
pub(super) struct Store {
    client: Client,
    addr: Box<socket2::SockAddr>,
    fd: Option<RawFd>,
    /// Moves on at every close: completions of an older connection are
    /// recognised.
    gen: u32,
    connecting: bool,
    recv_buf: Box<[u8]>,
    send_buf: Option<Vec<u8>>,
    /// Timers in flight: their sequence number, deadline and timespec.
    timers: Vec<(u32, Instant, Box<types::Timespec>)>,
    timer_seq: u32,
    /// Lookups waiting: token → (key, take, asked at).
    waiting: HashMap<u64, (Vec<u8>, bool, Instant)>,
    puts: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Store {
    pub(super) fn new(spec: StoreSpec, now: Instant) -> Self {
        session_store::enable_l2_puts();
        Self {
            client: Client::new(spec.config, now),
            addr: Box::new(spec.addr),
            fd: None,
            gen: 0,
            connecting: false,
            recv_buf: vec![0u8; RECV_SIZE].into_boxed_slice(),
            send_buf: None,
            timers: Vec::new(),
            timer_seq: 0,
            waiting: HashMap::new(),
            puts: Vec::new(),
        }
    }
}

/// A lookup's token: the connection's slot and generation.
pub(super) fn token(slot: u32, gen: u32) -> u64 {
    u64::from(gen) << 32 | u64::from(slot)
}

impl Worker {
    fn store_ud(&self, tag: Tag, gen: u32) -> u64 {
        UserData { tag, gen, slot: 0 }.encode()
    }

    /// A connection asks for a session lookup: answered at once (the
    /// session is in the cache, or no store is up) or later by
    /// [`Worker::drive_store`]. Returns whether the connection waits.
    pub(super) fn start_lookup(
        &mut self,
        slot: u32,
        key: Vec<u8>,
        take: bool,
        now: Instant,
    ) -> bool {
        let gen = self.gens[slot as usize];
        let Some(store) = self.store.as_mut() else {
            return false;
        };
        if !take && session_store::l1_contains(&key) {
            return false;
        }
        let t = token(slot, gen);
        if !store.client.lookup(t, &key, take, now) {
            return false;
        }
        store.waiting.insert(t, (key, take, now));
        true
    }

    /// A connection that waited for a lookup ended.
    pub(super) fn forget_lookup(&mut self, slot: u32) {
        let gen = self.gens[slot as usize];
        if let Some(store) = self.store.as_mut() {
            let t = token(slot, gen);
            if store.waiting.remove(&t).is_some() {
                store.client.forget(t);
            }
        }
    }

    /// Hands the turn's puts to the client, submits its ops, delivers its
    /// answers (to the machines, which are then driven) and keeps its timer.
    pub(super) fn drive_store(&mut self, now: Instant) {
        let Some(store) = self.store.as_mut() else {
            return;
        };
        session_store::take_l2_puts(&mut store.puts);
        for (key, value) in std::mem::take(&mut store.puts) {
            store.client.put(&key, &value, now);
        }
        while let Some(op) = self.store.as_mut().and_then(|s| s.client.poll_op(now)) {
            self.submit_store(op, now);
        }
        while let Some(ev) = self.store.as_mut().and_then(|s| s.client.poll_event()) {
            self.on_store_event(ev, now);
        }
        let Some(store) = self.store.as_mut() else {
            return;
        };
        let up = store.client.is_up();
        self.ctx.counters.set_store_stats(&store.client.stats(), up);
        self.arm_store_timer(now);
    }

    fn on_store_event(&mut self, ev: Event, now: Instant) {
        match ev {
            Event::Up => tracing::info!(worker = self.ctx.id, "session store up"),
            Event::Down(reason) => tracing::warn!(
                worker = self.ctx.id,
                %reason,
                "session store down: handshakes go on without it"
            ),
            Event::Answer { token, value, how } => {
                let Some(store) = self.store.as_mut() else {
                    return;
                };
                let Some((key, take, asked)) = store.waiting.remove(&token) else {
                    return;
                };
                self.ctx.record_since(Metric::StoreLookup, asked);
                match (how, value) {
                    (Answered::Hit, Some(v)) => session_store::l1_insert(key, v),
                    // A single-use ticket the store no longer has was used
                    // elsewhere (or never stored): not here either.
                    (Answered::Miss, _) if take => session_store::l1_remove(&key),
                    _ => {}
                }
                let slot = token as u32;
                let gen = (token >> 32) as u32;
                if self.gens.get(slot as usize) != Some(&gen) {
                    return;
                }
                if let Some(Some(s)) = self.slots.get_mut(slot as usize) {
                    s.conn.handle_session(now);
                    self.touched.push(slot);
                }
            }
        }
    }

    fn submit_store(&mut self, op: L2Op, now: Instant) {
        let Some(store) = self.store.as_mut() else {
            return;
        };
        let gen = store.gen;
        match op {
            L2Op::Connect => {
                let domain = store.addr.domain();
                let made = socket2::Socket::new(domain, socket2::Type::STREAM.cloexec(), None);
                let sock = match made {
                    Ok(s) => s,
                    Err(e) => {
                        store.client.handle_connect(Err(e.to_string()), now);
                        return;
                    }
                };
                if store.addr.is_ipv4() || store.addr.is_ipv6() {
                    let _ = sock.set_nodelay(true);
                }
                let fd = sock.into_raw_fd();
                store.fd = Some(fd);
                store.connecting = true;
                let entry = opcode::Connect::new(
                    types::Fd(fd),
                    store.addr.as_ptr().cast(),
                    store.addr.len(),
                )
                .build()
                .user_data(self.store_ud(Tag::StoreConnect, gen));
                // SAFETY: the address is boxed in the store, which lives as
                // long as the worker; the fd is the store's until closed.
                if unsafe { self.push(entry) }.is_err() {
                    let store = self.store.as_mut().expect("store");
                    store.connecting = false;
                    store
                        .client
                        .handle_connect(Err("submit failed".into()), now);
                }
            }
            L2Op::Recv => {
                let Some(fd) = store.fd else {
                    store.client.handle_recv(Err("no socket".into()), now);
                    return;
                };
                let ptr = store.recv_buf.as_mut_ptr();
                let len = store.recv_buf.len() as u32;
                let entry = opcode::Recv::new(types::Fd(fd), ptr, len)
                    .build()
                    .user_data(self.store_ud(Tag::StoreRecv, gen));
                // SAFETY: the buffer is boxed in the store, which lives as
                // long as the worker; one read at a time uses it.
                if unsafe { self.push(entry) }.is_err() {
                    let store = self.store.as_mut().expect("store");
                    store.client.handle_recv(Err("submit failed".into()), now);
                }
            }
            L2Op::Send(buf) => {
                let Some(fd) = store.fd else {
                    store.client.handle_send(Err("no socket".into()), buf);
                    return;
                };
                let ptr = buf.as_ptr();
                let len = buf.len().min(u32::MAX as usize) as u32;
                store.send_buf = Some(buf);
                let entry = opcode::Send::new(types::Fd(fd), ptr, len)
                    .flags(libc::MSG_NOSIGNAL)
                    .build()
                    .user_data(self.store_ud(Tag::StoreSend, gen));
                // SAFETY: the buffer is held in the store until this send
                // completes; a Vec's heap buffer does not move with it.
                if unsafe { self.push(entry) }.is_err() {
                    let store = self.store.as_mut().expect("store");
                    let buf = store.send_buf.take().unwrap_or_default();
                    store.client.handle_send(Err("submit failed".into()), buf);
                }
            }
            L2Op::Abort => {
                if let Some(fd) = store.fd {
                    // SAFETY: plain syscall on the store's socket.
                    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
                }
                if store.connecting {
                    let target = self.store_ud(Tag::StoreConnect, gen);
                    let entry = opcode::AsyncCancel::new(target)
                        .build()
                        .user_data(self.store_ud(Tag::StoreCancel, gen));
                    // SAFETY: the entry points to nothing.
                    let _ = unsafe { self.push(entry) };
                }
            }
            L2Op::Close => {
                if let Some(fd) = store.fd.take() {
                    ops::close_now(fd);
                }
                store.gen = (store.gen + 1) & ops::GEN_MASK;
            }
        }
    }

    /// A completion of the store connection (or of its timer).
    pub(super) fn on_store_cqe(&mut self, ud: UserData, res: i32, now: Instant) {
        let Some(store) = self.store.as_mut() else {
            return;
        };
        if ud.tag == Tag::StoreTimer {
            store.timers.retain(|(seq, _, _)| *seq != ud.gen);
            store.client.handle_timeout(now);
            return;
        }
        if ud.gen != store.gen {
            return;
        }
        let text = |res: i32| match ops::result(res) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        };
        match ud.tag {
            Tag::StoreConnect => {
                store.connecting = false;
                let r = if res == 0 { Ok(()) } else { Err(text(res)) };
                store.client.handle_connect(r, now);
            }
            Tag::StoreRecv => {
                if res >= 0 {
                    let n = (res as usize).min(store.recv_buf.len());
                    let Store {
                        client, recv_buf, ..
                    } = store;
                    client.handle_recv(Ok(&recv_buf[..n]), now);
                } else {
                    store.client.handle_recv(Err(text(res)), now);
                }
            }
            Tag::StoreSend => {
                let buf = store.send_buf.take().unwrap_or_default();
                let r = if res >= 0 {
                    Ok(res as usize)
                } else {
                    Err(text(res))
                };
                store.client.handle_send(r, buf);
            }
            _ => {}
        }
    }

    /// Keeps a timer in flight at or before the client's next deadline.
    fn arm_store_timer(&mut self, now: Instant) {
        let Some(store) = self.store.as_mut() else {
            return;
        };
        let Some(want) = store.client.poll_timeout() else {
            return;
        };
        if store.timers.iter().any(|(_, at, _)| *at <= want) {
            return;
        }
        store.timer_seq = (store.timer_seq + 1) & ops::GEN_MASK;
        let seq = store.timer_seq;
        let ts = Box::new(types::Timespec::from(want.saturating_duration_since(now)));
        let entry = opcode::Timeout::new(&*ts as *const types::Timespec)
            .build()
            .user_data(self.store_ud(Tag::StoreTimer, seq));
        let store = self.store.as_mut().expect("store");
        store.timers.push((seq, want, ts));
        // SAFETY: the timespec is boxed in the store until this timeout
        // completes (its entry is removed then).
        if unsafe { self.push(entry) }.is_err() {
            let store = self.store.as_mut().expect("store");
            store.timers.retain(|(s, _, _)| *s != seq);
        }
    }
}
