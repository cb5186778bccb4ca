//! Kvrocks storage backend: arrives with the persistence issue; the crate reserves its place in the layering.
