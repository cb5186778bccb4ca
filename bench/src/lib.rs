//! easy-mqtt-bench: a load generator for MQTT 3.1.1 brokers, in the spirit
//! of emqtt-bench, built on the Easy MQTT core codec.
//!
//! Each client is one task on a smol executor (one thread per core), with a
//! reused read buffer and batched writes. Every publication carries its
//! publisher, sequence number and send time, so that subscribers account for
//! loss and duplicates exactly and measure delivery latency. See `USAGE` in
//! [`args`] for the command line.

pub mod args;
pub mod broker;
pub mod chart;
pub mod client;
pub mod clock;
pub mod control;
pub mod error;
pub mod hist;
pub mod payload;
pub mod probe;
pub mod report;
pub mod roles;
pub mod run;

pub use args::{Options, Scenario};
pub use control::{parse_result, run};
pub use error::{Error, Result};
pub use report::Report;
