//! The broker node.
