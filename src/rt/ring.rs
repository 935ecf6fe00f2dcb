//! Ring setup and the kernel probe.
//!
//! Each worker owns one ring, set up with `IORING_SETUP_SINGLE_ISSUER |
//! IORING_SETUP_DEFER_TASKRUN` (completion work runs only inside the
//! worker's own `io_uring_enter(GETEVENTS)`, in batches, with no
//! inter-processor interrupt) and `IORING_SETUP_COOP_TASKRUN`, falling back
//! step by step on kernels that refuse them. The completion queue is four
//! times the submission queue, and `IORING_FEAT_NODROP` (5.5) keeps
//! completions that do not fit in the kernel until there is room.
//!
//! What ringterm cannot run without is checked at start, and a missing
//! piece ends the process with one line naming it and the kernel that has
//! it; optional pieces fall back and are logged once.

use std::io;

use io_uring::{opcode, IoUring, Probe};

/// A kernel feature ringterm needs and did not find.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("io_uring: the kernel lacks {feature} (needs Linux {kernel} or later)")]
pub struct Missing {
    /// What is missing.
    pub feature: &'static str,
    /// The first kernel version that has it.
    pub kernel: &'static str,
}

/// Why a ring could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// `io_uring_setup` failed (io_uring disabled by `kernel.io_uring_disabled`
    /// or a seccomp filter, or out of locked memory).
    #[error("io_uring setup failed: {0} (is kernel.io_uring_disabled set, or io_uring blocked by seccomp?)")]
    Setup(io::Error),
    /// A required feature is missing.
    #[error(transparent)]
    Missing(#[from] Missing),
}

/// What the ring was set up with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Setup {
    /// `IORING_SETUP_DEFER_TASKRUN` (6.1).
    pub defer_taskrun: bool,
    /// `IORING_SETUP_SINGLE_ISSUER` (6.0).
    pub single_issuer: bool,
    /// `IORING_SETUP_COOP_TASKRUN` (5.19).
    pub coop_taskrun: bool,
    /// SQPOLL.
    pub sqpoll: bool,
}

/// The opcodes the runtime submits, with the first kernel that has each.
const REQUIRED_OPS: &[(u8, &str, &str)] = &[
    (opcode::Accept::CODE, "IORING_OP_ACCEPT", "5.5"),
    (opcode::Recv::CODE, "IORING_OP_RECV", "5.6"),
    (opcode::Send::CODE, "IORING_OP_SEND", "5.6"),
    (opcode::SendMsg::CODE, "IORING_OP_SENDMSG", "5.3"),
    (opcode::Connect::CODE, "IORING_OP_CONNECT", "5.5"),
    (opcode::Close::CODE, "IORING_OP_CLOSE", "5.6"),
    (opcode::Timeout::CODE, "IORING_OP_TIMEOUT", "5.4"),
    (opcode::AsyncCancel::CODE, "IORING_OP_ASYNC_CANCEL", "5.5"),
    (opcode::Read::CODE, "IORING_OP_READ", "5.6"),
    (opcode::Socket::CODE, "IORING_OP_SOCKET", "5.19"),
];

/// Pretend the kernel lacks a feature, for tests of the failure path:
/// `RINGTERM_TEST_PROBE_MISSING=IORING_OP_SOCKET` (an opcode's name as in
/// [`REQUIRED_OPS`], or `buffer rings`; `SOCKET_URING_OP_SETSOCKOPT`
/// makes the io_uring `TCP_NODELAY` fail as an older kernel's would).
pub const PROBE_OVERRIDE_ENV: &str = "RINGTERM_TEST_PROBE_MISSING";

pub(super) fn forced_missing(name: &str) -> bool {
    std::env::var(PROBE_OVERRIDE_ENV).is_ok_and(|v| v.split(',').any(|f| f == name))
}

/// Checks the opcodes of a probe result.
pub fn check_ops(supported: impl Fn(u8) -> bool) -> Result<(), Missing> {
    for &(code, feature, kernel) in REQUIRED_OPS {
        if !supported(code) || forced_missing(feature) {
            return Err(Missing { feature, kernel });
        }
    }
    Ok(())
}

/// Sets a ring up with the best flags the kernel takes.
pub fn build(entries: u32, sqpoll_idle_ms: Option<u32>) -> Result<(IoUring, Setup), RingError> {
    // From the most to the least tuned; the first the kernel takes wins.
    let tries: [(bool, bool, bool); 4] = [
        (true, true, true),
        (false, true, true),
        (false, false, true),
        (false, false, false),
    ];
    let mut last = None;
    for (defer, single, coop) in tries {
        // SQPOLL and DEFER_TASKRUN do not go together.
        let defer = defer && sqpoll_idle_ms.is_none();
        let mut b = IoUring::builder();
        b.setup_cqsize(entries.saturating_mul(4));
        if let Some(idle) = sqpoll_idle_ms {
            b.setup_sqpoll(idle);
        }
        if defer {
            b.setup_defer_taskrun();
        }
        if single {
            b.setup_single_issuer();
        }
        if coop {
            b.setup_coop_taskrun();
        }
        match b.build(entries) {
            Ok(ring) => {
                let setup = Setup {
                    defer_taskrun: defer,
                    single_issuer: single,
                    coop_taskrun: coop,
                    sqpoll: sqpoll_idle_ms.is_some(),
                };
                let mut probe = Probe::new();
                ring.submitter()
                    .register_probe(&mut probe)
                    .map_err(|_| Missing {
                        feature: "IORING_REGISTER_PROBE",
                        kernel: "5.6",
                    })?;
                check_ops(|code| probe.is_supported(code))?;
                if !ring.params().is_feature_nodrop() {
                    return Err(Missing {
                        feature: "IORING_FEAT_NODROP",
                        kernel: "5.5",
                    }
                    .into());
                }
                return Ok((ring, setup));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(RingError::Setup(
        last.unwrap_or_else(|| io::Error::other("no ring")),
    ))
}

/// One line for the log: what the ring runs with and what fell back.
pub fn describe(setup: &Setup) -> String {
    let mut missing = Vec::new();
    if !setup.defer_taskrun && !setup.sqpoll {
        missing.push("DEFER_TASKRUN (6.1)");
    }
    if !setup.single_issuer {
        missing.push("SINGLE_ISSUER (6.0)");
    }
    if !setup.coop_taskrun {
        missing.push("COOP_TASKRUN (5.19)");
    }
    if missing.is_empty() {
        "io_uring: DEFER_TASKRUN, SINGLE_ISSUER, COOP_TASKRUN".to_owned()
    } else {
        format!("io_uring: running without {}", missing.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_opcode_is_named_with_its_kernel() {
        let err = check_ops(|code| code != opcode::Socket::CODE).unwrap_err();
        assert_eq!(err.feature, "IORING_OP_SOCKET");
        assert_eq!(
            err.to_string(),
            "io_uring: the kernel lacks IORING_OP_SOCKET (needs Linux 5.19 or later)"
        );
        assert!(check_ops(|_| true).is_ok());
    }

    #[test]
    fn this_kernel_sets_a_ring_up() {
        let (_ring, setup) = build(64, None).expect("a ring");
        assert!(!describe(&setup).is_empty());
    }
}
