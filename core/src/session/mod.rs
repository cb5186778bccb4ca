//! Per-client protocol logic, sans-IO.
//!
//! [`SessionState`] is what outlives a network connection (in-flight window,
//! queue, inbound QoS 2 ids, packet-id allocator); [`Connection`] is the state
//! machine of one network connection, which holds the session while it is
//! attached.

mod connection;
mod queue;
mod state;

pub use connection::{CloseReason, Connection, ConnectionConfig, Event, ProtocolError};
pub use state::{
    Delivery, Enqueued, InflightMessage, Message, OutboundPhase, QueueOverflow, SessionChange,
    SessionLimits, SessionState,
};
