//! TLS 1.3 stateful tickets through rustls's ticketer hook.
//!
//! rustls 0.23 advertises a fixed 24 h lifetime in the stateful TLS 1.3
//! tickets it makes with its session store (`server/tls13.rs`,
//! `emit_ticket`), while ringterm's per-core cache keeps them for
//! `--session-timeout`. Through its ticketer (`ProducesTickets`) rustls
//! advertises the ticketer's `lifetime()`. So, in the default cache mode,
//! ringterm installs a ticketer (`rt::session_store::StatefulTickets`) that
//! is stateful underneath: for a TLS 1.3 session it stores the value in the
//! per-core cache under a random ID, exactly as rustls's stateful path does,
//! and returns that ID as the ticket; `decrypt` takes the session out of the
//! cache (single use). For a TLS 1.2 session it makes no ticket: rustls then
//! sends an empty NewSessionTicket (RFC 5077 §3.3) while the session ID
//! resumption goes on through the session store as before.
//!
//! The rest of ringterm must still see it as stateful (resumption counters,
//! the L2 store's `GETDEL` of TLS 1.3 tickets): [`is_stateful`] tells.

use std::fmt::{self, Write};

use rustls::server::ProducesTickets;

use super::cache::SessionKind;

/// The name the stateful ticketer's `Debug` starts with: how
/// [`is_stateful`] recognises it.
pub const DEBUG_NAME: &str = "StatefulTickets";

/// Length of a stateful ticket (the cache key), as rustls's own stateful
/// tickets.
pub const ID_LEN: usize = 32;

/// Whether the ticketer makes a ticket for `value`, a session rustls
/// serialized: only TLS 1.3 sessions get one (see the module
/// documentation).
pub fn issues_ticket_for(value: &[u8]) -> bool {
    SessionKind::of_value(value) == SessionKind::Tls13Stateful
}

/// Whether an entry of `kind` found under an offered ticket may be taken:
/// only TLS 1.3 sessions. A TLS 1.2 client offering its session ID as a
/// ticket must not consume (or resume) the session stored under that ID.
pub fn may_take(kind: Option<SessionKind>) -> bool {
    matches!(kind, None | Some(SessionKind::Tls13Stateful))
}

/// Whether `ticketer` is ringterm's stateful ticketer (its `Debug` starts
/// with [`DEBUG_NAME`]). `dyn ProducesTickets` cannot be downcast and a
/// `ServerConfig` carries nothing else, so the name is the mark; the check
/// stops at the first bytes and allocates nothing.
pub fn is_stateful(ticketer: &dyn ProducesTickets) -> bool {
    if !ticketer.enabled() {
        return false;
    }
    let mut probe = Prefix {
        want: DEBUG_NAME.as_bytes(),
        seen: 0,
        matched: false,
    };
    let _ = write!(probe, "{ticketer:?}");
    probe.matched
}

/// A `fmt::Write` that compares what is written with `want` and stops the
/// formatting (with an error) as soon as it knows.
struct Prefix<'a> {
    want: &'a [u8],
    seen: usize,
    matched: bool,
}

impl Write for Prefix<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let rest = &self.want[self.seen..];
        let n = rest.len().min(s.len());
        if s.as_bytes()[..n] != rest[..n] {
            return Err(fmt::Error);
        }
        self.seen += n;
        if self.seen == self.want.len() {
            // The name must end there: not a longer identifier.
            self.matched = !s.as_bytes()[n..]
                .first()
                .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_');
            return Err(fmt::Error);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct StatefulTickets {
        _lifetime: u32,
    }

    #[derive(Debug)]
    struct StatefulTicketsLater;

    #[derive(Debug)]
    struct Other;

    macro_rules! other {
        ($t:ty) => {
            impl ProducesTickets for $t {
                fn enabled(&self) -> bool {
                    true
                }
                fn lifetime(&self) -> u32 {
                    0
                }
                fn encrypt(&self, _: &[u8]) -> Option<Vec<u8>> {
                    None
                }
                fn decrypt(&self, _: &[u8]) -> Option<Vec<u8>> {
                    None
                }
            }
        };
    }
    other!(StatefulTickets);
    other!(StatefulTicketsLater);
    other!(Other);

    #[test]
    fn recognises_the_stateful_ticketer_by_name() {
        assert!(is_stateful(&StatefulTickets { _lifetime: 300 }));
        assert!(!is_stateful(&StatefulTicketsLater));
        assert!(!is_stateful(&Other));
        let ticketer = crate::session::tickets::Ticketer::new(
            vec![crate::session::tickets::TicketKey::random().unwrap()],
            300,
        )
        .unwrap();
        assert!(!is_stateful(&ticketer));
        // rustls's default: no tickets at all.
        let default = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(std::sync::Arc::new(
            rustls::server::ResolvesServerCertUsingSni::new(),
        ));
        assert!(!is_stateful(&*default.ticketer));
    }

    #[test]
    fn only_tls13_sessions_get_tickets_and_are_taken() {
        // No SNI, then the protocol version (rustls's persist encoding).
        assert!(issues_ticket_for(&[0, 3, 4, 0x13, 0x01]));
        assert!(!issues_ticket_for(&[0, 3, 3, 0xc0, 0x2f]));
        assert!(!issues_ticket_for(&[]));
        assert!(may_take(None));
        assert!(may_take(Some(SessionKind::Tls13Stateful)));
        assert!(!may_take(Some(SessionKind::Tls12Id)));
        assert!(!may_take(Some(SessionKind::Unknown)));
    }
}
