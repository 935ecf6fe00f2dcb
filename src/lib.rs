//! ringterm: an io_uring-based, thread-per-core TLS terminator.
//!
//! # Architecture in one screen
//!
//! ```text
//!            ┌────────────── worker (one pinned OS thread per CPU) ──────────────┐
//!  client ──►│ SO_REUSEPORT listener → accept → conn driver ──► backend (TCP)   │
//!            │                              │  ▲                                  │
//!            │        completed read bytes  ▼  │ bytes to write + what's next    │
//!            │                     TlsSession (sans-IO step function, rustls)     │
//!            └───────────────────────────────────────────────────────────────────┘
//! ```
//!
//! The core is sans-IO: [`tls`], [`config`], [`metrics`] and [`deadline`]
//! never touch a socket, never import `io_uring`, `socket2` or `std::net`,
//! and never read the clock: bytes and time come in as arguments. All io_uring
//! code lives in [`rt`], so the runtime could be replaced without touching the
//! core.
//!
//! A worker's loop submits what the connection machine ([`conn::Conn`]) asks
//! for and feeds the completions back; the machine hands client bytes to
//! [`tls::TlsSession::handle_read`], which answers with bytes for the client,
//! plaintext for the backend, and a [`tls::Status`]. No readiness polling
//! anywhere. No op is abandoned in flight: a connection ends only once all
//! of its ops have completed; cancellation and timeouts are io_uring ops of
//! their own.

#![recursion_limit = "512"] // the settings! declaration block (src/options.rs)

pub mod acme;
pub mod config;
pub mod conn;
pub mod deadline;
pub mod frontend;
#[doc(hidden)]
pub mod fuzzing;
pub mod metrics;
pub mod options;
pub mod proxy;
pub mod record;
pub mod reload_plan;
pub mod route;
pub mod rt;
pub mod session;
pub mod tls;
