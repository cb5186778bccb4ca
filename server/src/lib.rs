//! The Easy MQTT broker node and its smol runtime.
//!
//! [`node::Node`] is runtime-agnostic: it takes a [`runtime::Runtime`] (clock,
//! timers, spawner), so the same code serves real sockets on smol
//! ([`broker::Broker`]) and simulated ones in the turmoil simulator.

pub mod admin;
pub mod aliyun;
pub mod api;
pub mod auth;
pub mod broker;
pub mod cluster;
pub mod config;
pub mod driver;
mod hibernate;
pub mod journal;
pub mod listeners;
pub mod metrics;
pub mod node;
pub mod persist;
pub mod runtime;
pub mod sessions;
