//! The FIFO behind a session's in-flight window, stored in blocks.
//!
//! A `VecDeque` grows by doubling and moves every queued element to the new
//! buffer. Under a fan-out burst (19,500 sessions each queuing a few hundred
//! deliveries faster than their clients read) that copy, into memory
//! touched for the first time once a buffer is past a few kilobytes, was
//! about a tenth of the broker's CPU. Here the queue is a short list of
//! blocks of at most [`BLOCK`] elements: growing allocates one more block
//! and copies nothing, and a drained block goes back to the allocator at
//! once, where the next session that grows takes it, still in cache. The
//! first block grows like a `VecDeque` up to [`BLOCK`], so a queue that
//! never holds more than a few elements stays as small as one.

use std::collections::VecDeque;

/// Elements per block: 32 deliveries are 1,280 bytes, one small size class
/// of the allocator.
pub(crate) const BLOCK: usize = 32;

#[derive(Debug, Clone)]
pub(crate) struct BlockQueue<T> {
    /// Only the last block takes pushes; only a lone block may be empty.
    blocks: VecDeque<VecDeque<T>>,
    len: usize,
}

impl<T> Default for BlockQueue<T> {
    fn default() -> Self {
        BlockQueue {
            blocks: VecDeque::new(),
            len: 0,
        }
    }
}

impl<T> BlockQueue<T> {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn push_back(&mut self, value: T) {
        match self.blocks.back_mut() {
            Some(last) if last.len() < BLOCK => last.push_back(value),
            Some(_) => {
                let mut block = VecDeque::with_capacity(BLOCK);
                block.push_back(value);
                self.blocks.push_back(block);
            }
            None => {
                // Not `VecDeque::from([value])`: that allocates room for one
                // element, and the next push reallocates at once.
                let mut first = VecDeque::new();
                first.push_back(value);
                self.blocks.push_back(first);
            }
        }
        self.len += 1;
    }

    pub(crate) fn front(&self) -> Option<&T> {
        self.blocks.front()?.front()
    }

    pub(crate) fn pop_front(&mut self) -> Option<T> {
        let first = self.blocks.front_mut()?;
        let value = first.pop_front()?;
        if first.is_empty() && self.blocks.len() > 1 {
            self.blocks.pop_front();
        }
        self.len -= 1;
        Some(value)
    }

    pub(crate) fn iter(&self) -> impl DoubleEndedIterator<Item = &T> {
        self.blocks.iter().flat_map(|block| block.iter())
    }

    /// Keeps the elements for which `keep` is true, in order.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        for block in &mut self.blocks {
            block.retain(&mut keep);
        }
        self.blocks.retain(|block| !block.is_empty());
        self.len = self.blocks.iter().map(VecDeque::len).sum();
    }
}

impl<T> FromIterator<T> for BlockQueue<T> {
    fn from_iter<I: IntoIterator<Item = T>>(values: I) -> Self {
        let mut queue = BlockQueue::default();
        for value in values {
            queue.push_back(value);
        }
        queue
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::{BLOCK, BlockQueue};
    use proptest::prelude::*;
    use std::collections::VecDeque;

    #[derive(Debug, Clone)]
    enum Step {
        Push(u32),
        Pop,
        Retain(u32),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => any::<u32>().prop_map(Step::Push),
            3 => Just(Step::Pop),
            1 => (2u32..5).prop_map(Step::Retain),
        ]
    }

    proptest! {
        /// Behaves exactly like a `VecDeque` under any mix of pushes, pops
        /// and retains, and never holds an empty block beside others nor a
        /// block larger than `BLOCK`.
        #[test]
        fn matches_a_vecdeque(steps in proptest::collection::vec(step(), 0..400)) {
            let mut queue = BlockQueue::default();
            let mut model = VecDeque::new();
            for step in steps {
                match step {
                    Step::Push(v) => {
                        queue.push_back(v);
                        model.push_back(v);
                    }
                    Step::Pop => prop_assert_eq!(queue.pop_front(), model.pop_front()),
                    Step::Retain(m) => {
                        queue.retain(|v| v % m != 0);
                        model.retain(|v| v % m != 0);
                    }
                }
                prop_assert_eq!(queue.len(), model.len());
                prop_assert_eq!(queue.is_empty(), model.is_empty());
                prop_assert_eq!(queue.front(), model.front());
                prop_assert!(queue.iter().eq(model.iter()));
                prop_assert!(queue.iter().rev().eq(model.iter().rev()));
                prop_assert!(queue.blocks.iter().all(|b| b.len() <= BLOCK));
                prop_assert!(queue.blocks.len() <= 1 || queue.blocks.iter().all(|b| !b.is_empty()));
            }
        }
    }

    /// Growing past a block starts a new one: what is queued is not moved.
    #[test]
    fn growing_past_a_block_does_not_move_the_queued() {
        let mut queue: BlockQueue<u64> = (0..BLOCK as u64).collect();
        let first: *const u64 = queue.front().unwrap();
        for v in 0..10 * BLOCK as u64 {
            queue.push_back(v);
        }
        assert_eq!(queue.blocks.len(), 11);
        assert!(std::ptr::eq(first, queue.front().unwrap()));
        for _ in 0..BLOCK {
            queue.pop_front();
        }
        assert_eq!(queue.blocks.len(), 10, "a drained block is freed");
    }
}
