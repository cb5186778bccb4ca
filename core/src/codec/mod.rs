//! Placeholder: the codec is being written.
