//! Placeholder: the retained-message index is being written.
pub struct RetainedIndex;
