//! systemd readiness notifications (`Type=notify`), through the `sd-notify`
//! crate: a datagram to `$NOTIFY_SOCKET`. Without that variable (not under
//! systemd) every call does nothing. A failed send is logged at debug and
//! never stops the server.
//!
//! - `READY=1` once every listener is bound and every worker accepts (with
//!   `MAINPID=` after taking over from an older process, so that systemd
//!   follows the new one: the unit needs `NotifyAccess=all`);
//! - `RELOADING=1` (with `MONOTONIC_USEC=`, as `Type=notify-reload` wants)
//!   when a `SIGHUP` reload starts, then `READY=1` and `STATUS=` with the
//!   result;
//! - `STOPPING=1` when the drain starts (not when draining after handing
//!   over to a new process: the service goes on).

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// Serving: every listener bound, every worker up. `took_over` when this
/// process replaced another one (it then names itself the main process).
pub fn ready(status: &str, took_over: bool) {
    if took_over {
        send(&[
            NotifyState::MainPid(std::process::id()),
            NotifyState::Ready,
            NotifyState::Status(status),
        ]);
    } else {
        send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }
}

/// A reload starts.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// A reload ended; `status` says how.
pub fn reloaded(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Only a status line (e.g. an upgrade in progress).
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// The drain starts: the service is stopping.
pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}
