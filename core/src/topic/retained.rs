//! Retained messages by topic, found by topic filter.
//!
//! A trie of topic levels (the same [`Children`] containers as the
//! subscription trie: a short `Vec`, or a `HashMap` for wide levels). A node
//! holding a retained value also holds the full topic, so a match hands out
//! `&str` without rebuilding it from the levels. `a/b/+` visits the children
//! of `a/b` only, and `a/#` the subtree under `a` only.

use std::fmt;

use super::trie::{Children, ChildrenIntoIter, InlineVec};

/// Retained values by topic name ([MQTT-3.3.1-5]), matched by filters with
/// the same rules as subscriptions, [MQTT-4.7.2-1] included.
pub struct RetainedIndex<V> {
    root: Node<V>,
    len: usize,
}

struct Node<V> {
    children: Children<Node<V>>,
    value: Option<(Box<str>, V)>,
}

impl<V> Node<V> {
    fn new() -> Self {
        Node {
            children: Children::default(),
            value: None,
        }
    }
}

impl<V> Drop for Node<V> {
    /// Iterative, so that a topic thousands of levels deep cannot overflow
    /// the stack when dropped.
    fn drop(&mut self) {
        if self.children.is_empty() {
            return;
        }
        let mut stack: Vec<ChildrenIntoIter<Node<V>>> =
            vec![std::mem::take(&mut self.children).into_nodes()];
        while let Some(top) = stack.last_mut() {
            match top.next() {
                Some(mut node) => {
                    if !node.children.is_empty() {
                        stack.push(std::mem::take(&mut node.children).into_nodes());
                    }
                }
                None => {
                    stack.pop();
                }
            }
        }
    }
}

impl<V> Default for RetainedIndex<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> fmt::Debug for RetainedIndex<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetainedIndex")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// Where [`RetainedIndex::for_each_match`] stands in the filter: the byte
/// offset of the next filter level, or one of these.
const FILTER_END: usize = usize::MAX - 1;
const WHOLE_SUBTREE: usize = usize::MAX;

impl<V> RetainedIndex<V> {
    pub fn new() -> Self {
        RetainedIndex {
            root: Node::new(),
            len: 0,
        }
    }

    /// Stores `value` for `topic`, returning the value it replaces.
    pub fn insert(&mut self, topic: &str, value: V) -> Option<V> {
        debug_assert!(
            super::validate_topic_name(topic).is_ok(),
            "invalid topic {topic:?}"
        );
        let mut node = &mut self.root;
        for level in topic.split('/') {
            node = node.children.get_or_insert_with(level, Node::new);
        }
        match &mut node.value {
            Some((_, old)) => Some(std::mem::replace(old, value)),
            None => {
                node.value = Some((topic.into(), value));
                self.len += 1;
                None
            }
        }
    }

    /// Removes the value of `topic`, pruning the nodes that only led to it.
    pub fn remove(&mut self, topic: &str) -> Option<V> {
        // The deepest node on the path that stays: the root, or one with a
        // value or another child.
        let mut keep = 0;
        let mut node = &self.root;
        for (depth, level) in topic.split('/').enumerate() {
            if depth == 0 || node.value.is_some() || node.children.len() > 1 {
                keep = depth;
            }
            node = node.children.get(level)?;
        }
        node.value.as_ref()?;
        let cut = node.children.is_empty();

        let mut node = &mut self.root;
        for (depth, level) in topic.split('/').enumerate() {
            if cut && depth == keep {
                let mut detached = node.children.remove(level)?;
                let mut end = &mut detached;
                for level in topic.split('/').skip(depth + 1) {
                    end = end.children.get_mut(level)?;
                }
                self.len -= 1;
                return end.value.take().map(|(_, value)| value);
            }
            node = node.children.get_mut(level)?;
        }
        let (_, value) = node.value.take()?;
        self.len -= 1;
        Some(value)
    }

    pub fn get(&self, topic: &str) -> Option<&V> {
        let mut node = &self.root;
        for level in topic.split('/') {
            node = node.children.get(level)?;
        }
        node.value.as_ref().map(|(_, value)| value)
    }

    /// Calls `f(topic, value)` for every retained topic matching `filter`
    /// ([MQTT-4.7.1-2], [MQTT-4.7.1-3], [MQTT-4.7.2-1]), in no particular
    /// order.
    pub fn for_each_match(&self, filter: &str, mut f: impl FnMut(&str, &V)) {
        debug_assert!(
            super::validate_topic_filter(filter).is_ok(),
            "invalid filter {filter:?}"
        );
        let mut stack: InlineVec<(&Node<V>, usize), 8> = InlineVec::new();
        stack.push((&self.root, 0));
        while let Some((node, pos)) = stack.pop() {
            if pos == WHOLE_SUBTREE {
                if let Some((topic, value)) = &node.value {
                    f(topic, value);
                }
                for (_, child) in node.children.iter() {
                    stack.push((child, WHOLE_SUBTREE));
                }
                continue;
            }
            if pos == FILTER_END {
                if let Some((topic, value)) = &node.value {
                    f(topic, value);
                }
                continue;
            }
            let rest = filter.get(pos..).unwrap_or_default();
            let (level, next) = match rest.find('/') {
                Some(slash) => (rest.get(..slash).unwrap_or_default(), pos + slash + 1),
                None => (rest, FILTER_END),
            };
            // Wildcards at the first level skip `$` topics [MQTT-4.7.2-1].
            let visible = |key: &str| pos != 0 || !key.starts_with('$');
            match level {
                // The node itself (`a/#` matches `a`) and everything below.
                "#" => {
                    if let Some((topic, value)) = &node.value {
                        f(topic, value);
                    }
                    for (key, child) in node.children.iter() {
                        if visible(key) {
                            stack.push((child, WHOLE_SUBTREE));
                        }
                    }
                }
                "+" => {
                    for (key, child) in node.children.iter() {
                        if visible(key) {
                            stack.push((child, next));
                        }
                    }
                }
                _ => {
                    if let Some(child) = node.children.get(level) {
                        stack.push((child, next));
                    }
                }
            }
        }
    }

    /// Number of retained topics.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Up to `limit` retained `(topic, value)` pairs after the cursor `after`
    /// (exclusive; `None` starts at the beginning), for paged listings.
    ///
    /// The order is by levels: topics compare level by level, each level by
    /// its bytes, and a topic comes before those it is a prefix of (`a`,
    /// `a/b`, `a/c`, `a-b`). It is a total order, stable across calls, and a
    /// page can resume from any topic, retained or not. It differs from plain
    /// string order only where a level is followed by a byte below `/`.
    ///
    /// Topics are borrowed rather than copied (call `to_owned` to keep them).
    /// Cost: the children of each node on the cursor's path are scanned and
    /// at most `limit` of them sorted, so O(width of the path + limit log
    /// limit) without any extra index to maintain on `insert`.
    pub fn iter_from(&self, after: Option<&str>, limit: usize) -> Vec<(&str, &V)> {
        let mut out = Vec::with_capacity(limit.min(self.len));
        if limit == 0 {
            return out;
        }
        // One frame per level: the children still to visit, in reverse order.
        let mut stack: Vec<Vec<&Node<V>>> = Vec::new();
        match after {
            None => stack.push(sorted_children(&self.root, None, limit)),
            Some(after) => {
                let mut node = Some(&self.root);
                for level in after.split('/') {
                    let Some(current) = node else { break };
                    stack.push(sorted_children(current, Some(level), limit));
                    node = current.children.get(level);
                }
                // The cursor itself was retained: its subtree follows it.
                if let Some(node) = node {
                    stack.push(sorted_children(node, None, limit));
                }
            }
        }
        while out.len() < limit {
            let Some(frame) = stack.last_mut() else { break };
            let Some(node) = frame.pop() else {
                stack.pop();
                continue;
            };
            if let Some((topic, value)) = &node.value {
                out.push((&**topic, value));
            }
            if !node.children.is_empty() && out.len() < limit {
                stack.push(sorted_children(node, None, limit - out.len()));
            }
        }
        out
    }

    /// Trie nodes, the root included; 1 when empty.
    #[cfg(test)]
    fn node_count(&self) -> usize {
        let mut count = 0;
        let mut stack = vec![&self.root];
        while let Some(node) = stack.pop() {
            count += 1;
            stack.extend(node.children.iter().map(|(_, child)| child));
        }
        count
    }
}

/// The (at most `limit`) smallest children of `node` with a level above
/// `after`, largest first so that `pop` yields them in order. Every child
/// holds at least one value, so `limit` children are enough for a page.
fn sorted_children<'a, V>(
    node: &'a Node<V>,
    after: Option<&str>,
    limit: usize,
) -> Vec<&'a Node<V>> {
    let mut children: Vec<(&str, &Node<V>)> = node
        .children
        .iter()
        .filter(|(key, _)| after.is_none_or(|after| *key > after))
        .collect();
    if children.len() > limit {
        children.select_nth_unstable_by(limit, |a, b| a.0.cmp(b.0));
        children.truncate(limit);
    }
    children.sort_unstable_by(|a, b| b.0.cmp(a.0));
    children.into_iter().map(|(_, child)| child).collect()
}

#[cfg(test)]
mod tests {
    use super::super::trie::tests::{filter, filter_matches, topic};
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn index(topics: &[&str]) -> RetainedIndex<usize> {
        let mut index = RetainedIndex::new();
        for (i, topic) in topics.iter().enumerate() {
            assert_eq!(index.insert(topic, i), None);
        }
        index
    }

    fn matching(index: &RetainedIndex<usize>, filter: &str) -> Vec<String> {
        let mut out = Vec::new();
        index.for_each_match(filter, |topic, value| {
            assert_eq!(index.get(topic), Some(value));
            out.push(topic.to_owned());
        });
        out.sort();
        out
    }

    const TOPICS: &[&str] = &[
        "sport",
        "sport/",
        "sport/tennis",
        "sport/tennis/player1",
        "sport/tennis/player1/ranking",
        "sport/tennis/player1/score/wimbledon",
        "sport/tennis/player2",
        "/finance",
        "finance",
        "$SYS/monitor/Clients",
        "$SYS",
        "a/$SYS",
    ];

    #[test]
    fn mqtt_4_7_1_2_multi_level_wildcard() {
        let index = index(TOPICS);
        assert_eq!(
            matching(&index, "sport/tennis/player1/#"),
            [
                "sport/tennis/player1",
                "sport/tennis/player1/ranking",
                "sport/tennis/player1/score/wimbledon"
            ]
        );
        assert_eq!(matching(&index, "sport/#").len(), 7);
        assert!(matching(&index, "sport/#").contains(&"sport".to_owned()));
        assert_eq!(matching(&index, "#").len(), 10);
    }

    #[test]
    fn mqtt_4_7_1_3_single_level_wildcard() {
        let index = index(TOPICS);
        assert_eq!(
            matching(&index, "sport/tennis/+"),
            ["sport/tennis/player1", "sport/tennis/player2"]
        );
        assert_eq!(matching(&index, "sport/+"), ["sport/", "sport/tennis"]);
        assert_eq!(
            matching(&index, "+/+"),
            ["/finance", "a/$SYS", "sport/", "sport/tennis"]
        );
        assert_eq!(matching(&index, "/+"), ["/finance"]);
        assert_eq!(matching(&index, "+"), ["finance", "sport"]);
    }

    #[test]
    fn mqtt_4_7_2_1_first_level_wildcards_skip_dollar_topics() {
        let index = index(TOPICS);
        assert!(!matching(&index, "#").iter().any(|t| t.starts_with('$')));
        assert!(matching(&index, "+/monitor/Clients").is_empty());
        assert_eq!(matching(&index, "$SYS/#"), ["$SYS", "$SYS/monitor/Clients"]);
        assert_eq!(matching(&index, "$SYS/monitor/+"), ["$SYS/monitor/Clients"]);
        assert_eq!(matching(&index, "a/+"), ["a/$SYS"]);
    }

    #[test]
    fn insert_replaces_and_get() {
        let mut index = RetainedIndex::new();
        assert_eq!(index.insert("a/b", 1), None);
        assert_eq!(index.insert("a/b", 2), Some(1));
        assert_eq!(index.insert("a", 3), None);
        assert_eq!(index.get("a/b"), Some(&2));
        assert_eq!(index.get("a"), Some(&3));
        assert_eq!(index.get("a/c"), None);
        assert_eq!(index.get("a/b/c"), None);
        assert_eq!(index.len(), 2);
    }

    #[test]
    fn remove_prunes_back_to_the_empty_state() {
        let mut index = index(TOPICS);
        let mut wide = Vec::new();
        for i in 0..100 {
            wide.push(format!("wide/{i}/x"));
        }
        for topic in &wide {
            index.insert(topic, 0);
        }
        assert_eq!(index.remove("sport/tennis/player9"), None);
        assert_eq!(index.remove("sport/tennis/player1/score"), None);
        assert_eq!(index.remove("nope/x"), None);
        for topic in wide.iter().rev() {
            assert_eq!(index.remove(topic), Some(0));
        }
        for (i, topic) in TOPICS.iter().enumerate().rev() {
            assert_eq!(index.remove(topic), Some(i), "{topic}");
            assert_eq!(index.remove(topic), None);
        }
        assert!(index.is_empty());
        assert_eq!(index.node_count(), 1);

        // Parents first this time.
        let mut index = self::index(TOPICS);
        for (i, topic) in TOPICS.iter().enumerate() {
            assert_eq!(index.remove(topic), Some(i), "{topic}");
            assert_eq!(index.get(topic), None);
        }
        assert_eq!(index.node_count(), 1);
    }

    #[test]
    fn paged_listing_in_level_order() {
        let index = index(&["a-b", "a/b", "a", "b", "a/b/c", "a/a", "$x", "/"]);
        let all: Vec<&str> = index
            .iter_from(None, 100)
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        assert_eq!(all, ["/", "$x", "a", "a/a", "a/b", "a/b/c", "a-b", "b"]);
        for page in 1..=8 {
            let mut cursor = None;
            let mut paged = Vec::new();
            loop {
                let got = index.iter_from(cursor, page);
                assert!(got.len() <= page);
                let Some((last, _)) = got.last() else { break };
                cursor = Some(*last);
                paged.extend(got.iter().map(|(t, _)| *t));
            }
            assert_eq!(paged, all, "page size {page}");
        }
        // Cursors that are not retained topics.
        let after = |cursor| -> Vec<&str> {
            index
                .iter_from(Some(cursor), 100)
                .into_iter()
                .map(|(t, _)| t)
                .collect()
        };
        assert_eq!(after("a/b/"), ["a/b/c", "a-b", "b"]);
        assert_eq!(after("a/0"), ["a/a", "a/b", "a/b/c", "a-b", "b"]);
        assert_eq!(after("zzz"), Vec::<&str>::new());
        assert_eq!(after(""), all);
        assert_eq!(after("$x"), ["a", "a/a", "a/b", "a/b/c", "a-b", "b"]);
        assert!(index.iter_from(None, 0).is_empty());
    }

    #[test]
    fn deep_topics_do_not_overflow_the_stack() {
        let mut index = RetainedIndex::new();
        let deep = "a/".repeat(30_000) + "x";
        index.insert(&deep, 1);
        index.insert(&(deep.clone() + "/y"), 2);
        let mut count = 0;
        index.for_each_match("#", |_, _| count += 1);
        assert_eq!(count, 2);
        assert_eq!(index.iter_from(None, 10).len(), 2);
        assert_eq!(index.remove(&deep), Some(1));
        drop(index);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(String, u32),
        Remove(String),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (topic(), any::<u32>()).prop_map(|(t, v)| Op::Insert(t, v)),
            1 => topic().prop_map(Op::Remove),
        ]
    }

    fn level_order(topic: &str) -> Vec<&str> {
        topic.split('/').collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn matches_agree_with_reference(
            ops in prop::collection::vec(op(), 1..100),
            filters in prop::collection::vec(filter(), 1..20),
            page in 1..5usize,
        ) {
            let mut index = RetainedIndex::new();
            let mut model: BTreeMap<String, u32> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Insert(t, v) => prop_assert_eq!(index.insert(&t, v), model.insert(t, v)),
                    Op::Remove(t) => prop_assert_eq!(index.remove(&t), model.remove(&t)),
                }
            }
            prop_assert_eq!(index.len(), model.len());
            for filter in &filters {
                let mut got = Vec::new();
                index.for_each_match(filter, |t, v| got.push((t.to_owned(), *v)));
                got.sort();
                let expected: Vec<(String, u32)> = model
                    .iter()
                    .filter(|(t, _)| filter_matches(filter, t))
                    .map(|(t, v)| (t.clone(), *v))
                    .collect();
                prop_assert_eq!(got, expected, "filter {:?}", filter);
            }

            let mut expected: Vec<(&str, &u32)> = model.iter().map(|(t, v)| (t.as_str(), v)).collect();
            expected.sort_by(|a, b| level_order(a.0).cmp(&level_order(b.0)));
            let mut paged = Vec::new();
            let mut cursor = None;
            loop {
                let got = index.iter_from(cursor, page);
                let Some((last, _)) = got.last() else { break };
                cursor = Some(*last);
                paged.extend(got);
            }
            prop_assert_eq!(paged, expected);

            for t in model.keys() {
                prop_assert!(index.remove(t).is_some());
            }
            prop_assert!(index.is_empty());
            prop_assert_eq!(index.node_count(), 1);
        }
    }
}
