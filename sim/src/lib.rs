//! Deterministic simulation of Easy MQTT nodes on turmoil.
//!
//! Broker nodes run on simulated hosts with tokio's paused clock
//! ([`runtime::TokioRuntime`]) behind simulated TCP ([`broker_host`]);
//! simulated clients ([`client`]) drive them while the scenario injects
//! faults (partitions, latency) and checks invariants ([`scenarios`]). A run
//! is a pure function of its seed: [`scenarios::run_scenario`] returns the
//! same [`trace::Trace`] every time for the same seed, whatever ran before
//! it in the process ([`isolation`]).

pub mod broker_host;
pub mod client;
pub mod cluster_scenario;
pub mod isolation;
pub mod runtime;
pub mod scenarios;
pub mod storage_host;
pub mod trace;

pub use cluster_scenario::run_cluster;
pub use scenarios::run_scenario;
pub use trace::Trace;
