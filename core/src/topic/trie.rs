//! Placeholder: the subscription trie is being written.
pub struct SubscriptionTrie;
