//! Listeners.
//!
//! [`TcpListener`]: MQTT over TCP, with an accept loop that survives running
//! out of file descriptors.

mod tcp;

pub use tcp::{AcceptStats, BACKOFF_MAX, BACKOFF_MIN, LISTEN_BACKLOG, TcpListener};
