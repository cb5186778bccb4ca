//! The broker node.

pub mod config;
