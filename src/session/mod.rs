//! Sans-IO session resumption: the per-core session cache and its
//! cross-core sync messages, and stateless ticket protection. Nothing here
//! touches a socket, a file or the clock: time comes in as arguments, key
//! bytes are read by the runtime.

#![forbid(unsafe_code)]

pub mod cache;
pub mod l2;
pub mod stateful;
pub mod tickets;
