//! Model-based property test of the connection machine: random
//! interleavings of completions (in any order, short reads, partial
//! writes), peers' data, EOFs and resets on either side, connect failures
//! and retries, deadline expiries (spurious ones included) and drain stops
//! at any point, checked against what a relay must guarantee:
//!
//! - what the backend received is a prefix of what the client's application
//!   sent, and what the client received a prefix of what the backend sent,
//!   in order, never duplicated;
//! - a close_notify reaches the client only with everything the machine
//!   read from the backend before it; a FIN reaches the backend only with
//!   every byte of client plaintext the machine read (checked by the
//!   harness when the machine asks for it), and a backend closed without a
//!   reset got all of it too;
//! - the connection always ends, and with no op outstanding (the harness
//!   checks that when the outcome comes);
//! - the outcome matches what happened.

use proptest::prelude::*;

use super::tests::{addr, cfg, World, BACKEND_A, BACKEND_B};
use super::*;

#[derive(Debug, Clone)]
enum Action {
    ClientSend(usize),
    ClientClose(bool),
    ClientReset,
    BackendSend(usize),
    BackendFin,
    BackendReset,
    ClientRead(usize),
    ClientWrite(usize),
    BackendRead(usize),
    BackendWrite(usize),
    Connect,
    Cancel(bool),
    Tick(u64, bool),
    Stop,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        6 => (1usize..40_000).prop_map(Action::ClientSend),
        1 => any::<bool>().prop_map(Action::ClientClose),
        1 => Just(Action::ClientReset),
        6 => (1usize..40_000).prop_map(Action::BackendSend),
        1 => Just(Action::BackendFin),
        1 => Just(Action::BackendReset),
        6 => (1usize..20_000).prop_map(Action::ClientRead),
        6 => (1usize..20_000).prop_map(Action::ClientWrite),
        6 => (1usize..20_000).prop_map(Action::BackendRead),
        6 => (1usize..20_000).prop_map(Action::BackendWrite),
        2 => Just(Action::Connect),
        3 => any::<bool>().prop_map(Action::Cancel),
        2 => (prop_oneof![4 => Just(1u64), 4 => Just(500), 2 => Just(1_000), 2 => Just(2_000), 1 => Just(10_000)], any::<bool>())
            .prop_map(|(ms, s)| Action::Tick(ms, s)),
        1 => Just(Action::Stop),
    ]
}

fn bytes(seed: usize, n: usize) -> Vec<u8> {
    (0..n).map(|i| (seed * 31 + i * 7) as u8).collect()
}

fn apply(w: &mut World, a: &Action, n: &mut usize) {
    *n += 1;
    match *a {
        Action::ClientSend(len) => {
            if w.handshake_done() {
                w.client_send(&bytes(*n, len));
            }
        }
        Action::ClientClose(notify) => {
            if w.handshake_done() {
                w.client_close(notify);
            }
        }
        Action::ClientReset => w.client_reset = true,
        Action::BackendSend(len) => {
            if w.connected.is_some() {
                w.backend_send(&bytes(*n + 1000, len));
            }
        }
        Action::BackendFin => {
            if w.connected.is_some() {
                w.backend_fin = true;
            }
        }
        Action::BackendReset => {
            if w.connected.is_some() {
                w.backend_reset = true;
            }
        }
        Action::ClientRead(max) => {
            w.complete_client_read(max);
        }
        Action::ClientWrite(max) => {
            w.complete_client_write(max);
        }
        Action::BackendRead(max) => {
            w.complete_backend_read(max);
        }
        Action::BackendWrite(max) => {
            w.complete_backend_write(max);
        }
        Action::Connect => {
            w.complete_connect();
        }
        Action::Cancel(client) => {
            w.complete_cancel(if client { Side::Client } else { Side::Backend });
        }
        Action::Tick(ms, spurious) => w.tick(ms, spurious),
        Action::Stop => w.stop(),
    }
}

fn check_prefixes(w: &World) {
    assert!(
        w.client_sent.starts_with(&w.backend_got),
        "the backend got bytes the client did not send, or out of order"
    );
    assert!(
        w.backend_sent.starts_with(&w.client_got),
        "the client got bytes the backend did not send, or out of order"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn relay_guarantees_hold_in_any_interleaving(
        refuse_a in any::<bool>(),
        settle_first in proptest::bool::weighted(0.7),
        runtime_buffers in any::<bool>(),
        lend in any::<bool>(),
        ring_buf in prop_oneof![Just(4096usize), Just(40_000)],
        actions in proptest::collection::vec(action(), 1..160),
    ) {
        let mut c = cfg();
        c.runtime_buffers = runtime_buffers;
        let mut w = World::new(c, &[BACKEND_A, BACKEND_B]);
        w.lend = lend;
        w.ring_buf = ring_buf;
        if refuse_a {
            w.refusing.push(addr(BACKEND_A).into());
        }
        if settle_first {
            // Most runs start relaying: handshake and connect done.
            w.settle();
        }
        let mut n = 0;
        for a in &actions {
            apply(&mut w, a, &mut n);
            check_prefixes(&w);
            if w.outcome.is_some() {
                break;
            }
        }
        // Let everything complete; then end it (a drain stop, the flush
        // deadline): every connection ends.
        w.settle();
        if w.outcome.is_none() {
            w.stop();
            w.settle();
        }
        if w.outcome.is_none() {
            w.tick(2_000, false);
            w.settle();
        }
        check_prefixes(&w);
        let out = w.outcome.clone().expect("the connection ended");

        // A clean TLS end carries everything read from the backend.
        if w.client_close_notify {
            prop_assert_eq!(
                w.client_got.len(),
                w.backend_read_by_server,
                "close_notify after a truncated response: {:?}",
                out
            );
        }
        // A backend closed without a reset got every byte of client
        // plaintext the machine read.
        if w.connected.is_some() && !out.reset_backend {
            prop_assert_eq!(
                w.backend_got.len(),
                w.client_plaintext_read().len(),
                "backend closed cleanly without all it was owed: {:?}",
                out
            );
        }
        // The outcome matches what happened.
        match &out.end {
            End::Closed => {
                prop_assert!(w.client_close_notify || w.client_reset);
                // A FIN by shutdown(2), or by the close that ends it.
                prop_assert!(w.backend_fin_from_server || !out.reset_backend);
            }
            End::DrainCut | End::IdleTimeout => {
                prop_assert!(out.handshake.is_some() || matches!(out.end, End::DrainCut));
            }
            End::ConnectFailed(_) => prop_assert!(out.connect_failures > 0),
            End::ConnectTimeout => prop_assert!(out.connect_timeouts > 0),
            End::Io(Side::Client, _) | End::HandshakeEof => {}
            End::Io(Side::Backend, _) => prop_assert!(w.connected.is_some()),
            End::HandshakeTimeout => prop_assert!(out.handshake.is_none()),
            other => prop_assert!(false, "unexpected end {:?}", other),
        }
        if out.handshake.is_some() {
            prop_assert!(out.established_at.is_some());
        }
    }
}
