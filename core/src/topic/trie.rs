//! Topic filters → subscribers.
//!
//! # Layout
//!
//! Filters are split by kind, as EMQX does with its route table and trie:
//!
//! * **Exact filters** (no `+` or `#`, the large majority in practice:
//!   `devices/42/telemetry`) live in one `HashMap<Box<str>, Subscribers>`
//!   keyed by the whole filter. Matching them costs one hash of the topic,
//!   whatever the depth, and one map slot plus one key allocation per filter.
//! * **Wildcard filters** live in a trie of levels. Each [`Node`] holds its
//!   literal children (a short `Vec` scanned linearly, turned into a
//!   `HashMap` past [`SMALL_CHILDREN`] entries), a separate `plus` child slot
//!   and a `hash` subscriber list for `<this level>/#`, so the wildcard
//!   branches never cost a map lookup, and the subscribers of filters ending
//!   at the node.
//!
//! A subscriber list ([`Subscribers`]) is inline for the common single
//! subscriber, a `Vec` for a few, and a `Vec` plus a `HashMap<S, index>`
//! (insert/remove in O(1) with `swap_remove`) once it holds more than
//! [`INDEX_AT`] subscribers, so a 20,000-subscriber topic is as cheap to
//! change as a one-subscriber one.
//!
//! Matching walks the trie iteratively (the explicit stack only holds the
//! pending `+` branches and lives on the call stack for up to eight of them),
//! so a deep filter cannot overflow the thread stack; dropping a deep trie is
//! iterative for the same reason.

use std::collections::HashMap;
use std::collections::hash_map;
use std::fmt;
use std::hash::Hash;

use crate::packet::QoS;

/// Literal children are kept in a `Vec` up to this many, then in a `HashMap`.
const SMALL_CHILDREN: usize = 8;
/// A subscriber list gets a hash index once it is longer than this.
const INDEX_AT: usize = 16;
/// `matches_dedup` de-duplicates without allocating up to this many entries
/// outside the largest matching list (or with any number of entries when
/// only two lists match).
const PAIRWISE_MAX: usize = 64;

/// The subscriptions of a broker: which subscribers' filters match a topic.
///
/// Each (subscriber, filter) pair is stored once with its QoS; subscribing
/// again replaces the QoS ([MQTT-3.8.4-3]). Filters are expected to have
/// passed [`super::validate_topic_filter`] and topics
/// [`super::validate_topic_name`].
pub struct SubscriptionTrie<S> {
    /// Filters without wildcards, by the whole filter. No entry is empty.
    exact: HashMap<Box<str>, Subscribers<S>>,
    /// Filters with at least one wildcard.
    root: Node<S>,
    /// (subscriber, filter) pairs.
    len: usize,
    /// Distinct filters with at least one subscriber.
    filters: usize,
}

impl<S: Clone + Eq + Hash> Default for SubscriptionTrie<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> fmt::Debug for SubscriptionTrie<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionTrie")
            .field("len", &self.len)
            .field("filters", &self.filters)
            .finish_non_exhaustive()
    }
}

impl<S: Clone + Eq + Hash> SubscriptionTrie<S> {
    pub fn new() -> Self {
        SubscriptionTrie {
            exact: HashMap::new(),
            root: Node::new(),
            len: 0,
            filters: 0,
        }
    }

    /// Adds `subscriber` to `filter` with `qos`. Returns the previous QoS if
    /// this subscriber already had this exact filter; it is then replaced
    /// ([MQTT-3.8.4-3]).
    pub fn insert(&mut self, filter: &str, subscriber: S, qos: QoS) -> Option<QoS> {
        debug_assert!(
            super::validate_topic_filter(filter).is_ok(),
            "invalid filter {filter:?}"
        );
        let subs = if has_wildcard(filter) {
            let mut node = &mut self.root;
            let mut hash = false;
            for level in filter.split('/') {
                match level {
                    "#" => {
                        hash = true;
                        break;
                    }
                    "+" => node = node.plus.get_or_insert_with(|| Box::new(Node::new())),
                    _ => node = node.children.get_or_insert_with(level, Node::new),
                }
            }
            if hash { &mut node.hash } else { &mut node.subs }
        } else {
            map_get_or_insert_with(&mut self.exact, filter, || Subscribers::Empty)
        };
        let was_empty = subs.is_empty();
        let previous = subs.insert(subscriber, qos);
        if previous.is_none() {
            self.len += 1;
            if was_empty {
                self.filters += 1;
            }
        }
        previous
    }

    /// Removes `subscriber` from `filter`. Returns true if it was there.
    /// Nodes left empty are pruned and shrunk maps give memory back.
    pub fn remove(&mut self, filter: &str, subscriber: &S) -> bool {
        if !has_wildcard(filter) {
            let Some(subs) = self.exact.get_mut(filter) else {
                return false;
            };
            if subs.remove(subscriber).is_none() {
                return false;
            }
            self.len -= 1;
            if subs.is_empty() {
                self.exact.remove(filter);
                self.filters -= 1;
                shrink_map(&mut self.exact);
            }
            return true;
        }

        let mut node = &mut self.root;
        let mut hash = false;
        for level in filter.split('/') {
            let next = match level {
                "#" => {
                    hash = true;
                    break;
                }
                "+" => node.plus.as_deref_mut(),
                _ => node.children.get_mut(level),
            };
            match next {
                Some(next) => node = next,
                None => return false,
            }
        }
        let subs = if hash { &mut node.hash } else { &mut node.subs };
        if subs.remove(subscriber).is_none() {
            return false;
        }
        self.len -= 1;
        if subs.is_empty() {
            self.filters -= 1;
            if node.is_empty() {
                self.prune(filter);
            }
        }
        true
    }

    /// Cuts the chain of nodes that only led to the (now empty) node at the
    /// end of `filter`'s path.
    fn prune(&mut self, filter: &str) {
        let levels = || filter.split('/').take_while(|level| *level != "#");
        // The deepest node on the path that must stay: the root, or a node
        // with subscribers or with another branch.
        let mut keep = 0;
        let mut node = &self.root;
        for (depth, level) in levels().enumerate() {
            let branches = node.children.len() + usize::from(node.plus.is_some());
            if depth == 0 || !node.subs.is_empty() || !node.hash.is_empty() || branches > 1 {
                keep = depth;
            }
            match node.child(level) {
                Some(next) => node = next,
                None => return,
            }
        }
        let mut node = &mut self.root;
        for (depth, level) in levels().enumerate() {
            if depth == keep {
                if level == "+" {
                    node.plus = None;
                } else {
                    node.children.remove(level);
                }
                return;
            }
            match node.child_mut(level) {
                Some(next) => node = next,
                None => return,
            }
        }
    }

    /// Calls `f(subscriber, qos)` for every (subscriber, filter) pair whose
    /// filter matches `topic`. A subscriber with several matching filters is
    /// reported once per filter; see [`Self::matches_dedup`].
    pub fn for_each_match(&self, topic: &str, mut f: impl FnMut(&S, QoS)) {
        self.visit_matches(topic, |subs| {
            for (subscriber, qos) in subs.as_slice() {
                f(subscriber, *qos);
            }
        });
    }

    /// Collects into `out` (cleared first) every subscriber with a filter
    /// matching `topic`, once, with the highest QoS of its matching filters
    /// ([MQTT-3.3.5-1]).
    ///
    /// Allocation-free apart from growing `out` in the usual cases: when the
    /// matches come from a single filter there is nothing to de-duplicate.
    /// Otherwise the largest matching list is copied first, so that a
    /// subscriber's position in it is its position in `out`, and every entry
    /// of the other (usually small) lists is looked up in the largest list and
    /// the other lists; each lookup is O(1) for indexed lists and a scan of at
    /// most [`INDEX_AT`] entries otherwise. Only when more than two lists match
    /// and those outside the largest hold more than [`PAIRWISE_MAX`] entries
    /// is a temporary map used, to keep the cost linear.
    pub fn matches_dedup(&self, topic: &str, out: &mut Vec<(S, QoS)>) {
        out.clear();
        let mut lists: InlineVec<&Subscribers<S>, 8> = InlineVec::new();
        self.visit_matches(topic, |subs| lists.push(subs));

        let (mut largest_at, mut largest_len, mut total) = (0, 0, 0);
        for (i, subs) in lists.iter().enumerate() {
            let len = subs.len();
            total += len;
            if len > largest_len {
                (largest_at, largest_len) = (i, len);
            }
        }
        let Some(largest) = lists.get(largest_at) else {
            return;
        };
        out.reserve(total);
        out.extend_from_slice(largest.as_slice());
        if lists.len() == 1 {
            return;
        }

        let others = total - largest_len;
        if lists.len() > 2 && others > PAIRWISE_MAX {
            // Several long lists: pairwise lookups would cost O(others × lists),
            // one map keeps it O(others). Its allocation is small next to
            // delivering `others` messages.
            let mut seen: HashMap<&S, usize> = HashMap::with_capacity(others);
            for i in (0..lists.len()).filter(|&i| i != largest_at) {
                let Some(subs) = lists.get(i) else { continue };
                for (subscriber, qos) in subs.as_slice() {
                    let at = match largest.position(subscriber) {
                        Some(at) => at,
                        None => match seen.entry(subscriber) {
                            hash_map::Entry::Occupied(entry) => *entry.get(),
                            hash_map::Entry::Vacant(entry) => {
                                entry.insert(out.len());
                                out.push((subscriber.clone(), *qos));
                                continue;
                            }
                        },
                    };
                    if let Some((_, best)) = out.get_mut(at) {
                        *best = (*best).max(*qos);
                    }
                }
            }
            return;
        }

        for i in (0..lists.len()).filter(|&i| i != largest_at) {
            let Some(subs) = lists.get(i) else { continue };
            'entry: for (subscriber, qos) in subs.as_slice() {
                if let Some(at) = largest.position(subscriber) {
                    if let Some((_, best)) = out.get_mut(at) {
                        *best = (*best).max(*qos);
                    }
                    continue;
                }
                let mut best = *qos;
                for j in (0..lists.len()).filter(|&j| j != largest_at && j != i) {
                    let Some(other) = lists.get(j) else { continue };
                    if let Some(other_qos) = other.qos_of(subscriber) {
                        if j < i {
                            // Reported when that earlier list was processed.
                            continue 'entry;
                        }
                        best = best.max(other_qos);
                    }
                }
                out.push((subscriber.clone(), best));
            }
        }
    }

    /// Calls `visit` with every non-empty subscriber list whose filter matches
    /// `topic`.
    fn visit_matches<'a>(&'a self, topic: &str, mut visit: impl FnMut(&'a Subscribers<S>)) {
        if let Some(subs) = self.exact.get(topic) {
            visit(subs);
        }
        if self.root.is_empty() {
            return;
        }
        // [MQTT-4.7.2-1]: wildcards at the first level do not match `$...`.
        let system = topic.starts_with('$');
        let end = topic.len() + 1;
        let mut pending: InlineVec<(&Node<S>, usize), 8> = InlineVec::new();
        pending.push((&self.root, 0));
        while let Some((mut node, mut pos)) = pending.pop() {
            // `pos` is where the next level starts; `end` means none is left.
            loop {
                if pos == end {
                    if !node.subs.is_empty() {
                        visit(&node.subs);
                    }
                    // `a/#` matches `a` [MQTT-4.7.1-2].
                    if !node.hash.is_empty() {
                        visit(&node.hash);
                    }
                    break;
                }
                let rest = topic.get(pos..).unwrap_or_default();
                let (level, next) = match rest.find('/') {
                    Some(slash) => (rest.get(..slash).unwrap_or_default(), pos + slash + 1),
                    None => (rest, end),
                };
                if pos != 0 || !system {
                    if !node.hash.is_empty() {
                        visit(&node.hash);
                    }
                    if let Some(plus) = node.plus.as_deref() {
                        pending.push((plus, next));
                    }
                }
                match node.children.get(level) {
                    Some(child) => (node, pos) = (child, next),
                    None => break,
                }
            }
        }
    }

    /// Number of (subscriber, filter) pairs.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of distinct filters with at least one subscriber.
    pub fn filter_count(&self) -> usize {
        self.filters
    }

    /// Whether some subscriber has exactly `filter`.
    pub fn has_filter(&self, filter: &str) -> bool {
        if !has_wildcard(filter) {
            return self.exact.get(filter).is_some_and(|subs| !subs.is_empty());
        }
        let mut node = &self.root;
        for level in filter.split('/') {
            let next = match level {
                "#" => return !node.hash.is_empty(),
                "+" => node.plus.as_deref(),
                _ => node.children.get(level),
            };
            match next {
                Some(next) => node = next,
                None => return false,
            }
        }
        !node.subs.is_empty()
    }

    /// Trie nodes (the root included) plus exact-filter entries; 1 when empty.
    #[cfg(test)]
    fn node_count(&self) -> usize {
        let mut count = self.exact.len();
        let mut stack = vec![&self.root];
        while let Some(node) = stack.pop() {
            count += 1;
            stack.extend(node.children.iter().map(|(_, child)| child));
            stack.extend(node.plus.as_deref());
        }
        count
    }
}

fn has_wildcard(filter: &str) -> bool {
    filter.bytes().any(|b| b == b'+' || b == b'#')
}

/// A node of the wildcard-filter trie.
struct Node<S> {
    children: Children<Node<S>>,
    plus: Option<Box<Node<S>>>,
    /// Filters ending at this node.
    subs: Subscribers<S>,
    /// Filters ending at this node followed by `/#`.
    hash: Subscribers<S>,
}

impl<S> Node<S> {
    fn new() -> Self {
        Node {
            children: Children::default(),
            plus: None,
            subs: Subscribers::Empty,
            hash: Subscribers::Empty,
        }
    }

    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.subs.is_empty()
            && self.hash.is_empty()
    }

    fn child(&self, level: &str) -> Option<&Node<S>> {
        if level == "+" {
            self.plus.as_deref()
        } else {
            self.children.get(level)
        }
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut Node<S>> {
        if level == "+" {
            self.plus.as_deref_mut()
        } else {
            self.children.get_mut(level)
        }
    }

    /// Moves this node's children onto `stack` so it drops shallowly.
    fn detach(&mut self, stack: &mut Vec<ChildrenIntoIter<Node<S>>>) {
        if let Some(plus) = self.plus.take() {
            stack.push(ChildrenIntoIter::One(Some(*plus).into_iter()));
        }
        if !self.children.is_empty() {
            stack.push(std::mem::take(&mut self.children).into_nodes());
        }
    }
}

impl<S> Drop for Node<S> {
    /// Iterative, so that a trie thousands of levels deep cannot overflow the
    /// stack when dropped; the stack holds one iterator per level.
    fn drop(&mut self) {
        let mut stack = Vec::new();
        self.detach(&mut stack);
        while let Some(top) = stack.last_mut() {
            match top.next() {
                Some(mut node) => node.detach(&mut stack),
                None => {
                    stack.pop();
                }
            }
        }
    }
}

/// The subscribers of one filter, each with its QoS, each at most once.
enum Subscribers<S> {
    Empty,
    One((S, QoS)),
    Many(Box<Many<S>>),
}

struct Many<S> {
    list: Vec<(S, QoS)>,
    /// Position of each subscriber in `list`, once it is longer than `INDEX_AT`.
    index: Option<HashMap<S, usize>>,
}

impl<S> Subscribers<S> {
    fn is_empty(&self) -> bool {
        matches!(self, Subscribers::Empty)
    }

    fn len(&self) -> usize {
        self.as_slice().len()
    }

    fn as_slice(&self) -> &[(S, QoS)] {
        match self {
            Subscribers::Empty => &[],
            Subscribers::One(entry) => std::slice::from_ref(entry),
            Subscribers::Many(many) => &many.list,
        }
    }
}

impl<S: Clone + Eq + Hash> Subscribers<S> {
    /// Position of `subscriber` in [`Self::as_slice`].
    fn position(&self, subscriber: &S) -> Option<usize> {
        match self {
            Subscribers::Empty => None,
            Subscribers::One((s, _)) => (s == subscriber).then_some(0),
            Subscribers::Many(many) => self_position(many, subscriber),
        }
    }

    fn qos_of(&self, subscriber: &S) -> Option<QoS> {
        let at = self.position(subscriber)?;
        self.as_slice().get(at).map(|(_, qos)| *qos)
    }

    /// Adds or replaces; returns the previous QoS.
    fn insert(&mut self, subscriber: S, qos: QoS) -> Option<QoS> {
        match self {
            Subscribers::Empty => {
                *self = Subscribers::One((subscriber, qos));
                None
            }
            Subscribers::One((s, old)) if *s == subscriber => Some(std::mem::replace(old, qos)),
            Subscribers::One(_) => {
                let Subscribers::One(first) = std::mem::replace(self, Subscribers::Empty) else {
                    return None;
                };
                let list = vec![first, (subscriber, qos)];
                *self = Subscribers::Many(Box::new(Many { list, index: None }));
                None
            }
            Subscribers::Many(many) => {
                if let Some(at) = self_position(many, &subscriber) {
                    return many
                        .list
                        .get_mut(at)
                        .map(|(_, old)| std::mem::replace(old, qos));
                }
                let at = many.list.len();
                match &mut many.index {
                    Some(index) => {
                        index.insert(subscriber.clone(), at);
                    }
                    None if at >= INDEX_AT => {
                        let mut index = HashMap::with_capacity(at * 2);
                        for (i, (s, _)) in many.list.iter().enumerate() {
                            index.insert(s.clone(), i);
                        }
                        index.insert(subscriber.clone(), at);
                        many.index = Some(index);
                    }
                    None => {}
                }
                many.list.push((subscriber, qos));
                None
            }
        }
    }

    /// Removes; returns the QoS it had.
    fn remove(&mut self, subscriber: &S) -> Option<QoS> {
        match self {
            Subscribers::Empty => None,
            Subscribers::One((s, qos)) => {
                if s != subscriber {
                    return None;
                }
                let qos = *qos;
                *self = Subscribers::Empty;
                Some(qos)
            }
            Subscribers::Many(many) => {
                let at = self_position(many, subscriber)?;
                let (_, qos) = many.list.swap_remove(at);
                if let Some(index) = &mut many.index {
                    index.remove(subscriber);
                    if let Some((moved, _)) = many.list.get(at)
                        && let Some(slot) = index.get_mut(moved)
                    {
                        *slot = at;
                    }
                    if many.list.len() <= INDEX_AT / 2 {
                        many.index = None;
                    } else {
                        shrink_map(index);
                    }
                }
                match many.list.len() {
                    0 => *self = Subscribers::Empty,
                    1 => {
                        if let Some(last) = many.list.pop() {
                            *self = Subscribers::One(last);
                        }
                    }
                    len => {
                        if len * 4 < many.list.capacity() {
                            many.list.shrink_to(len * 2);
                        }
                    }
                }
                Some(qos)
            }
        }
    }
}

fn self_position<S: Eq + Hash>(many: &Many<S>, subscriber: &S) -> Option<usize> {
    match &many.index {
        Some(index) => index.get(subscriber).copied(),
        None => many.list.iter().position(|(s, _)| s == subscriber),
    }
}

/// Literal children of a trie node, by level.
pub(super) enum Children<N> {
    Small(Vec<(Box<str>, N)>),
    /// Boxed so that `Children` (and every leaf node) stays 24 bytes.
    #[expect(clippy::box_collection, reason = "keeps the common small case compact")]
    Map(Box<HashMap<Box<str>, N>>),
}

impl<N> Default for Children<N> {
    fn default() -> Self {
        Children::Small(Vec::new())
    }
}

impl<N> Children<N> {
    pub(super) fn len(&self) -> usize {
        match self {
            Children::Small(list) => list.len(),
            Children::Map(map) => map.len(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(super) fn get(&self, level: &str) -> Option<&N> {
        match self {
            Children::Small(list) => list.iter().find(|(k, _)| **k == *level).map(|(_, n)| n),
            Children::Map(map) => map.get(level),
        }
    }

    pub(super) fn get_mut(&mut self, level: &str) -> Option<&mut N> {
        match self {
            Children::Small(list) => list.iter_mut().find(|(k, _)| **k == *level).map(|(_, n)| n),
            Children::Map(map) => map.get_mut(level),
        }
    }

    pub(super) fn get_or_insert_with(&mut self, level: &str, make: impl FnOnce() -> N) -> &mut N {
        if let Children::Small(list) = self
            && list.len() >= SMALL_CHILDREN
            && !list.iter().any(|(k, _)| **k == *level)
        {
            let map: HashMap<_, _> = std::mem::take(list).into_iter().collect();
            *self = Children::Map(Box::new(map));
        }
        match self {
            Children::Small(list) => {
                let at = match list.iter().position(|(k, _)| **k == *level) {
                    Some(at) => at,
                    None => {
                        if list.len() == list.capacity() {
                            // Grow 1, 2, 4, 8: most nodes have a single child.
                            list.reserve_exact(list.len().max(1));
                        }
                        list.push((level.into(), make()));
                        list.len() - 1
                    }
                };
                match list.get_mut(at) {
                    Some((_, node)) => node,
                    None => unreachable!("index {at} was just found or pushed"),
                }
            }
            Children::Map(map) => map_get_or_insert_with(map, level, make),
        }
    }

    pub(super) fn remove(&mut self, level: &str) -> Option<N> {
        match self {
            Children::Small(list) => {
                let at = list.iter().position(|(k, _)| **k == *level)?;
                let (_, node) = list.swap_remove(at);
                if list.len() * 4 < list.capacity() {
                    list.shrink_to(list.len() * 2);
                }
                Some(node)
            }
            Children::Map(map) => {
                let node = map.remove(level)?;
                if map.len() <= SMALL_CHILDREN / 2 {
                    let list: Vec<_> = std::mem::take(&mut **map).into_iter().collect();
                    *self = Children::Small(list);
                } else {
                    shrink_map(map);
                }
                Some(node)
            }
        }
    }

    /// The children in no particular order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&str, &N)> {
        let (small, map) = match self {
            Children::Small(list) => (Some(list.iter()), None),
            Children::Map(map) => (None, Some(map.iter())),
        };
        let small = small.into_iter().flatten().map(|(k, n)| (&**k, n));
        let map = map.into_iter().flatten().map(|(k, n)| (&**k, n));
        small.chain(map)
    }

    pub(super) fn into_nodes(self) -> ChildrenIntoIter<N> {
        match self {
            Children::Small(list) => ChildrenIntoIter::Small(list.into_iter()),
            Children::Map(map) => ChildrenIntoIter::Map((*map).into_iter()),
        }
    }
}

/// The nodes of a [`Children`] by value, for iterative drops.
pub(super) enum ChildrenIntoIter<N> {
    Small(std::vec::IntoIter<(Box<str>, N)>),
    Map(hash_map::IntoIter<Box<str>, N>),
    One(std::option::IntoIter<N>),
}

impl<N> Iterator for ChildrenIntoIter<N> {
    type Item = N;

    fn next(&mut self) -> Option<N> {
        match self {
            ChildrenIntoIter::Small(iter) => iter.next().map(|(_, n)| n),
            ChildrenIntoIter::Map(iter) => iter.next().map(|(_, n)| n),
            ChildrenIntoIter::One(iter) => iter.next(),
        }
    }
}

/// `map.entry(key.into()).or_insert_with(make)` without allocating the key
/// when it is already there.
fn map_get_or_insert_with<'m, V>(
    map: &'m mut HashMap<Box<str>, V>,
    key: &str,
    make: impl FnOnce() -> V,
) -> &'m mut V {
    if !map.contains_key(key) {
        map.insert(key.into(), make());
    }
    match map.get_mut(key) {
        Some(value) => value,
        None => unreachable!("{key:?} was just inserted"),
    }
}

/// Gives memory back once a map is less than a quarter full; amortised O(1).
pub(super) fn shrink_map<K: Eq + Hash, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 64 && map.len() * 4 < map.capacity() {
        map.shrink_to(map.len() * 2);
    }
}

/// A vector that keeps its first `N` items on the stack.
pub(super) struct InlineVec<T: Copy, const N: usize> {
    inline: [Option<T>; N],
    len: usize,
    spill: Vec<T>,
}

impl<T: Copy, const N: usize> InlineVec<T, N> {
    pub(super) fn new() -> Self {
        InlineVec {
            inline: [None; N],
            len: 0,
            spill: Vec::new(),
        }
    }

    fn len(&self) -> usize {
        self.len + self.spill.len()
    }

    pub(super) fn push(&mut self, item: T) {
        match self.inline.get_mut(self.len) {
            Some(slot) => {
                *slot = Some(item);
                self.len += 1;
            }
            None => self.spill.push(item),
        }
    }

    pub(super) fn pop(&mut self) -> Option<T> {
        if let Some(item) = self.spill.pop() {
            return Some(item);
        }
        self.len = self.len.checked_sub(1)?;
        self.inline.get_mut(self.len).and_then(Option::take)
    }

    fn get(&self, i: usize) -> Option<T> {
        match i.checked_sub(N) {
            None => self.inline.get(i).copied().flatten(),
            Some(i) => self.spill.get(i).copied(),
        }
    }

    fn iter(&self) -> impl Iterator<Item = T> + '_ {
        self.inline
            .iter()
            .take(self.len)
            .flatten()
            .copied()
            .chain(self.spill.iter().copied())
    }
}

#[cfg(test)]
pub(super) mod tests;
