//! Tests of the subscription trie, and the reference matcher shared with
//! the retained index's tests.

use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

use QoS::{AtLeastOnce as Q1, AtMostOnce as Q0, ExactlyOnce as Q2};

fn trie(filters: &[&str]) -> SubscriptionTrie<u32> {
    let mut trie = SubscriptionTrie::new();
    for (i, filter) in filters.iter().enumerate() {
        trie.insert(filter, i as u32, Q0);
    }
    trie
}

/// Sorted subscribers (filter indexes) matching `topic`.
fn matching(trie: &SubscriptionTrie<u32>, topic: &str) -> Vec<u32> {
    let mut out = Vec::new();
    trie.matches_dedup(topic, &mut out);
    let mut subs: Vec<u32> = out.into_iter().map(|(s, _)| s).collect();
    subs.sort_unstable();
    subs
}

fn matches(filter: &str, topic: &str) -> bool {
    !matching(&trie(&[filter]), topic).is_empty()
}

#[test]
fn mqtt_4_7_1_2_multi_level_wildcard_matches_parent_and_children() {
    let f = "sport/tennis/player1/#";
    assert!(matches(f, "sport/tennis/player1"));
    assert!(matches(f, "sport/tennis/player1/ranking"));
    assert!(matches(f, "sport/tennis/player1/score/wimbledon"));
    assert!(!matches(f, "sport/tennis/player2"));
    assert!(!matches(f, "sport/tennis"));
    assert!(matches("sport/#", "sport"));
    assert!(matches("sport/#", "sport/"));
    assert!(!matches("sport/#", "sports"));
    assert!(matches("#", "sport"));
    assert!(matches("#", "/"));
    assert!(matches("#", "a/b/c/d"));
    assert!(matches("/#", "/"));
    assert!(matches("/#", "/a"));
    assert!(!matches("/#", "a"));
}

#[test]
fn mqtt_4_7_1_3_single_level_wildcard_matches_one_level() {
    let f = "sport/tennis/+";
    assert!(matches(f, "sport/tennis/player1"));
    assert!(matches(f, "sport/tennis/player2"));
    assert!(!matches(f, "sport/tennis/player1/ranking"));
    assert!(!matches(f, "sport/tennis"));
    assert!(!matches("sport/+", "sport"));
    assert!(matches("sport/+", "sport/"));
    assert!(matches("+/+", "/finance"));
    assert!(matches("/+", "/finance"));
    assert!(!matches("+", "/finance"));
    assert!(matches("+", "finance"));
    assert!(matches("+/tennis/#", "sport/tennis/player1"));
    assert!(matches("+/+/+", "//"));
    assert!(!matches("+/+/+", "/"));
    assert!(matches("a/+/+/#", "a//"));
}

#[test]
fn empty_levels_are_levels() {
    assert!(matches("/a", "/a"));
    assert!(!matches("/a", "a"));
    assert!(!matches("a", "a/"));
    assert!(matches("a//b", "a//b"));
    assert!(matches("a/+/b", "a//b"));
    assert!(!matches("a/+/b", "a/b"));
}

#[test]
fn mqtt_4_7_2_1_wildcards_at_first_level_do_not_match_dollar_topics() {
    let t = "$SYS/monitor/Clients";
    assert!(!matches("#", t));
    assert!(!matches("+/monitor/Clients", t));
    assert!(!matches("+/#", t));
    assert!(matches("$SYS/#", t));
    assert!(matches("$SYS/monitor/+", t));
    assert!(matches("$SYS/monitor/Clients", t));
    assert!(matches("$SYS/+/Clients", t));
    assert!(matches("$SYS/#", "$SYS"));
    // Only the first level is special.
    assert!(matches("#", "a/$SYS"));
    assert!(matches("a/+", "a/$SYS"));
    assert!(matches("+/$x", "a/$x"));
}

#[test]
fn mqtt_3_3_5_1_overlapping_subscriptions_delivered_once_at_max_qos() {
    let mut trie = SubscriptionTrie::new();
    assert_eq!(trie.insert("a/b", 1u32, Q0), None);
    assert_eq!(trie.insert("a/+", 1, Q2), None);
    assert_eq!(trie.insert("#", 1, Q1), None);
    assert_eq!(trie.insert("a/#", 2, Q1), None);
    assert_eq!(trie.insert("+/b", 2, Q0), None);
    assert_eq!(trie.insert("a/b", 3, Q1), None);

    let mut per_filter = Vec::new();
    trie.for_each_match("a/b", |s, q| per_filter.push((*s, q)));
    per_filter.sort();
    assert_eq!(
        per_filter,
        vec![(1, Q0), (1, Q1), (1, Q2), (2, Q0), (2, Q1), (3, Q1)]
    );

    let mut out = vec![(99, Q0)];
    trie.matches_dedup("a/b", &mut out);
    out.sort();
    assert_eq!(out, vec![(1, Q2), (2, Q1), (3, Q1)]);
}

#[test]
fn mqtt_3_3_5_1_dedup_with_a_large_indexed_list() {
    let mut trie = SubscriptionTrie::new();
    for s in 0..1000u32 {
        trie.insert("big/topic", s, Q0);
    }
    trie.insert("big/+", 7, Q2);
    trie.insert("big/+", 5000, Q1);
    trie.insert("#", 5000, Q0);
    trie.insert("#", 7, Q1);
    let mut out = Vec::new();
    trie.matches_dedup("big/topic", &mut out);
    assert_eq!(out.len(), 1001);
    let got: BTreeMap<u32, QoS> = out.into_iter().collect();
    assert_eq!(got.len(), 1001);
    assert_eq!(got[&7], Q2);
    assert_eq!(got[&5000], Q1);
    assert_eq!(got[&8], Q0);
}

#[test]
fn mqtt_3_3_5_1_dedup_with_several_large_lists() {
    let mut trie = SubscriptionTrie::new();
    // Overlapping ranges over four filters, more than PAIRWISE_MAX each.
    for (k, filter) in ["x/y", "x/+", "+/y", "#"].iter().enumerate() {
        let k = k as u32;
        for s in (k * 50)..(k * 50 + 200) {
            let qos = if s % 7 == k { Q2 } else { Q0 };
            trie.insert(filter, s, qos);
        }
    }
    let mut out = Vec::new();
    trie.matches_dedup("x/y", &mut out);
    let got: BTreeMap<u32, QoS> = out.iter().copied().collect();
    assert_eq!(got.len(), out.len(), "no duplicates");
    assert_eq!(got.len(), 350);
    for (s, q) in got {
        let expected = (0..4u32)
            .filter(|k| (k * 50..k * 50 + 200).contains(&s))
            .any(|k| s % 7 == k);
        assert_eq!(q == Q2, expected, "subscriber {s}");
    }
}

#[test]
fn mqtt_3_8_4_3_resubscribe_replaces_qos() {
    let mut trie = SubscriptionTrie::new();
    for filter in ["a/b", "a/+", "a/#"] {
        assert_eq!(trie.insert(filter, "c1".to_owned(), Q0), None);
        assert_eq!(trie.insert(filter, "c1".to_owned(), Q2), Some(Q0));
        assert_eq!(trie.insert(filter, "c1".to_owned(), Q1), Some(Q2));
    }
    assert_eq!(trie.len(), 3);
    assert_eq!(trie.filter_count(), 3);
    let mut out = Vec::new();
    trie.for_each_match("a/b", |s, q| out.push((s.clone(), q)));
    assert_eq!(out.len(), 3);
    assert!(out.iter().all(|(_, q)| *q == Q1));
    // Also in a list long enough to be indexed.
    for s in 0..100 {
        trie.insert("a/b", format!("x{s}"), Q0);
    }
    assert_eq!(trie.insert("a/b", "x42".to_owned(), Q2), Some(Q0));
    assert_eq!(trie.len(), 103);
}

#[test]
fn counts() {
    let mut trie = SubscriptionTrie::new();
    assert!(trie.is_empty());
    trie.insert("a/b", 1u32, Q0);
    trie.insert("a/b", 2, Q0);
    trie.insert("a/+", 1, Q0);
    trie.insert("a/#", 1, Q0);
    trie.insert("a/+", 1, Q1);
    assert_eq!((trie.len(), trie.filter_count()), (4, 3));
    assert!(trie.remove("a/b", &1));
    assert!(!trie.remove("a/b", &1));
    assert!(!trie.remove("a/c", &1));
    assert!(!trie.remove("a/+/c", &1));
    assert!(!trie.remove("#", &1));
    assert_eq!((trie.len(), trie.filter_count()), (3, 3));
    assert!(trie.remove("a/b", &2));
    assert_eq!((trie.len(), trie.filter_count()), (2, 2));
    assert!(!trie.is_empty());
}

#[test]
fn remove_prunes_back_to_the_empty_state() {
    let filters = [
        "a/b/c",
        "a/b/+",
        "a/b/#",
        "a/+/c",
        "+/+",
        "#",
        "+",
        "/",
        "//+",
        "a/b/c/d/e/f",
        "$SYS/#",
        "a/#",
        "a/+/c/#",
    ];
    let mut trie = SubscriptionTrie::new();
    let empty = trie.node_count();
    assert_eq!(empty, 1);
    for (i, f) in filters.iter().enumerate() {
        trie.insert(f, i as u32, Q1);
        trie.insert(f, 100 + i as u32, Q1);
    }
    // Removing in a different order than inserting.
    for (i, f) in filters.iter().enumerate().rev() {
        assert!(trie.remove(f, &(100 + i as u32)));
    }
    for (i, f) in filters.iter().enumerate() {
        assert!(trie.node_count() > empty);
        assert!(trie.remove(f, &(i as u32)), "{f}");
    }
    assert_eq!(trie.node_count(), empty);
    assert!(trie.is_empty());
    assert_eq!(trie.filter_count(), 0);
}

#[test]
fn remove_keeps_branches_still_in_use() {
    let mut trie = SubscriptionTrie::new();
    trie.insert("a/b/+/d", 1u32, Q0);
    trie.insert("a/b", 2, Q0);
    trie.insert("a/+/x", 3, Q0);
    trie.insert("a/b/#", 4, Q0);
    let before = trie.node_count();
    trie.insert("a/b/+/d/e/+", 5, Q0);
    assert!(trie.remove("a/b/+/d/e/+", &5));
    assert_eq!(trie.node_count(), before);
    assert!(trie.remove("a/b/+/d", &1));
    assert_eq!(matching(&trie, "a/b"), vec![2, 4]);
    assert_eq!(matching(&trie, "a/b/x"), vec![3, 4]);
    assert!(trie.remove("a/b/#", &4));
    assert_eq!(matching(&trie, "a/b/x"), vec![3]);
    assert!(trie.remove("a/+/x", &3));
    assert!(trie.remove("a/b", &2));
    assert_eq!(trie.node_count(), 1);
}

#[test]
fn many_children_and_subscribers_switch_representation_both_ways() {
    let mut trie = SubscriptionTrie::new();
    for i in 0..200u32 {
        trie.insert(&format!("d/{i}/+"), i, Q0);
        trie.insert("d/+/x", i, Q1);
    }
    assert_eq!(matching(&trie, "d/150/y"), vec![150]);
    assert_eq!(matching(&trie, "d/150/x").len(), 200);
    for i in 0..197u32 {
        assert!(trie.remove(&format!("d/{i}/+"), &i));
        assert!(trie.remove("d/+/x", &i));
    }
    assert_eq!(matching(&trie, "d/198/x"), vec![197, 198, 199]);
    assert_eq!(matching(&trie, "d/198/y"), vec![198]);
    for i in 197..200u32 {
        assert!(trie.remove(&format!("d/{i}/+"), &i));
        assert!(trie.remove("d/+/x", &i));
    }
    assert_eq!(trie.node_count(), 1);
}

#[test]
fn fan_out_of_20000_subscribers_on_one_filter() {
    let mut trie = SubscriptionTrie::new();
    for s in 0..20_000u32 {
        trie.insert("broadcast", s, Q1);
    }
    let mut out = Vec::new();
    trie.matches_dedup("broadcast", &mut out);
    assert_eq!(out.len(), 20_000);
    for s in (0..20_000u32).step_by(2) {
        assert!(trie.remove("broadcast", &s));
    }
    trie.matches_dedup("broadcast", &mut out);
    let mut subs: Vec<u32> = out.iter().map(|(s, _)| *s).collect();
    subs.sort_unstable();
    assert_eq!(subs, (1..20_000).step_by(2).collect::<Vec<_>>());
    for s in (1..20_000u32).step_by(2) {
        assert!(trie.remove("broadcast", &s));
    }
    assert!(trie.is_empty());
    assert_eq!(trie.node_count(), 1);
}

#[test]
#[cfg(target_pointer_width = "64")]
fn compact_layout() {
    // A pointer-sized subscriber handle costs 16 bytes inline.
    assert_eq!(std::mem::size_of::<Subscribers<std::sync::Arc<()>>>(), 16);
    assert_eq!(std::mem::size_of::<Children<Node<u64>>>(), 24);
    assert_eq!(std::mem::size_of::<Node<std::sync::Arc<()>>>(), 64);
}

#[test]
fn deep_filters_do_not_overflow_the_stack() {
    let mut trie = SubscriptionTrie::new();
    let deep = "+/".repeat(30_000) + "x";
    let topic = "a/".repeat(30_000) + "x";
    trie.insert(&deep, 1u32, Q0);
    trie.insert(&(deep.clone() + "/#"), 2, Q0);
    assert_eq!(matching(&trie, &topic), vec![1, 2]);
    let deep_exact_wild = "a/".repeat(30_000) + "#";
    trie.insert(&deep_exact_wild, 3, Q0);
    assert_eq!(matching(&trie, &topic), vec![1, 2, 3]);
    assert!(trie.remove(&deep, &1));
    drop(trie);
}

/// The reference: [MQTT-4.7.1-2], [MQTT-4.7.1-3], [MQTT-4.7.2-1] read literally.
pub(crate) fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let filter: Vec<&str> = filter.split('/').collect();
    let topic: Vec<&str> = topic.split('/').collect();
    let mut i = 0;
    loop {
        match (filter.get(i), topic.get(i)) {
            (None, None) => return true,
            (Some(&"#"), _) => return true,
            (Some(&"+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            _ => return false,
        }
        i += 1;
    }
}

#[test]
fn reference_matcher_agrees_with_the_spec_examples() {
    assert!(filter_matches("sport/#", "sport"));
    assert!(!filter_matches("sport/+", "sport"));
    assert!(filter_matches("+/+", "/finance"));
    assert!(!filter_matches("+", "/finance"));
    assert!(!filter_matches("#", "$SYS/x"));
    assert!(filter_matches("$SYS/#", "$SYS/x"));
}

pub(crate) fn level() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["a", "b", "", "$x"])
}

pub(crate) fn topic() -> impl Strategy<Value = String> {
    prop::collection::vec(level(), 1..5)
        .prop_map(|levels| levels.join("/"))
        .prop_filter("topics are not empty [MQTT-4.7.3-1]", |t| !t.is_empty())
}

pub(crate) fn filter() -> impl Strategy<Value = String> {
    let level = prop_oneof![3 => level(), 1 => Just("+")];
    (prop::collection::vec(level, 1..5), any::<bool>())
        .prop_map(|(mut levels, hash)| {
            if hash {
                levels.push("#");
            }
            levels.join("/")
        })
        .prop_filter("filters are not empty [MQTT-4.7.3-1]", |f| !f.is_empty())
}

fn qos() -> impl Strategy<Value = QoS> {
    prop::sample::select(vec![Q0, Q1, Q2])
}

#[derive(Debug, Clone)]
enum Op {
    Insert(String, u32, QoS),
    Remove(String, u32),
}

/// Operations on `filters` by subscribers `0..subscribers`.
fn op(filters: BoxedStrategy<String>, subscribers: u32) -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (filters.clone(), 0..subscribers, qos()).prop_map(|(f, s, q)| Op::Insert(f, s, q)),
        1 => (filters, 0..subscribers).prop_map(|(f, s)| Op::Remove(f, s)),
    ]
}

/// Few short filters shared by many subscribers: long, overlapping lists.
fn crowded_filter() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "+", "#", "a/#", "$x", "+/#", "a/b", "a/+", "+/b"])
        .prop_map(str::to_owned)
}

fn check_against_reference(ops: Vec<Op>, topics: &[String]) -> Result<(), TestCaseError> {
    let mut trie = SubscriptionTrie::new();
    let mut model: BTreeMap<(String, u32), QoS> = BTreeMap::new();
    for op in ops {
        match op {
            Op::Insert(f, s, q) => {
                let previous = model.insert((f.clone(), s), q);
                prop_assert_eq!(trie.insert(&f, s, q), previous);
            }
            Op::Remove(f, s) => {
                let previous = model.remove(&(f.clone(), s));
                prop_assert_eq!(trie.remove(&f, &s), previous.is_some());
            }
        }
    }
    prop_assert_eq!(trie.len(), model.len());
    let filters: std::collections::BTreeSet<&str> = model.keys().map(|(f, _)| f.as_str()).collect();
    prop_assert_eq!(trie.filter_count(), filters.len());

    let mut out = Vec::new();
    for topic in topics {
        let mut expected: BTreeMap<u32, QoS> = BTreeMap::new();
        let mut expected_all = Vec::new();
        for ((f, s), q) in &model {
            if filter_matches(f, topic) {
                expected_all.push((*s, *q));
                let best = expected.entry(*s).or_insert(*q);
                *best = (*best).max(*q);
            }
        }
        trie.matches_dedup(topic, &mut out);
        let mut got = out.clone();
        got.sort();
        let expected: Vec<(u32, QoS)> = expected.into_iter().collect();
        prop_assert_eq!(&got, &expected, "topic {:?}", topic);

        let mut all = Vec::new();
        trie.for_each_match(topic, |s, q| all.push((*s, q)));
        all.sort();
        expected_all.sort();
        prop_assert_eq!(all, expected_all, "topic {:?}", topic);
    }

    for (f, s) in model.keys() {
        prop_assert!(trie.remove(f, s));
    }
    prop_assert!(trie.is_empty());
    prop_assert_eq!(trie.filter_count(), 0);
    prop_assert_eq!(trie.node_count(), 1);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// [MQTT-4.7.1-2], [MQTT-4.7.1-3], [MQTT-4.7.2-1], [MQTT-3.3.5-1],
    /// [MQTT-3.8.4-3] against the reference, with inserts and removes.
    /// Up to 40 subscribers so that some lists pass `INDEX_AT`.
    #[test]
    fn matches_agree_with_reference(
        ops in prop::collection::vec(op(filter().boxed(), 40), 1..200),
        topics in prop::collection::vec(topic(), 1..20),
    ) {
        check_against_reference(ops, &topics)?;
    }

    /// Long overlapping lists: exercises the indexed lists and both
    /// de-duplication strategies.
    #[test]
    fn crowded_matches_agree_with_reference(
        ops in prop::collection::vec(op(crowded_filter().boxed(), 150), 1..1500),
        topics in prop::collection::vec(topic(), 1..10),
    ) {
        check_against_reference(ops, &topics)?;
    }
}

#[test]
fn has_filter_is_true_exactly_for_filters_with_subscribers() {
    let mut t = trie(&["a/b", "a/+/c", "a/#", "+", "#"]);
    for filter in ["a/b", "a/+/c", "a/#", "+", "#"] {
        assert!(t.has_filter(filter), "{filter}");
    }
    for filter in ["a", "a/+", "a/b/c", "a/+/#", "b/#", "+/+"] {
        assert!(!t.has_filter(filter), "{filter}");
    }
    assert!(t.remove("a/+/c", &1));
    assert!(t.remove("a/#", &2));
    assert!(!t.has_filter("a/+/c"));
    assert!(!t.has_filter("a/#"));
    assert!(t.has_filter("a/b"));
}
