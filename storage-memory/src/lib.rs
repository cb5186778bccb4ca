//! In-memory storage backend.
