//! The per-connection protocol state machine.
