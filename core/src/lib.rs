//! The sans-IO heart of Easy MQTT.
//!
//! Nothing in this crate owns a socket, a clock or a runtime: callers hand it
//! bytes, packets and `now`, and it hands back bytes, events and its next
//! deadline. The same code therefore runs in the server, in the deterministic
//! simulator and in property tests.

pub mod cluster;
pub mod codec;
pub mod packet;
pub mod session;
pub mod storage;
pub mod storage_contract;
pub mod topic;

pub use bytes::Bytes;
pub use packet::*;
