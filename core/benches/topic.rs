//! Topic matching: a subscription trie with 1,000,000 filters and a retained
//! index with 100,000 topics.
//!
//! `cargo bench -p easy-mqtt-core --bench topic -- --warm-up-time 1 --measurement-time 3`
//!
//! Each `b.iter` does one operation, so criterion's time is per match (or per
//! insert+remove pair). The match benches cycle through 1,000 distinct topics
//! spread over the whole trie, so they pay the cache misses a broker would.

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use easy_mqtt_core::QoS;
use easy_mqtt_core::topic::{RetainedIndex, SubscriptionTrie};

const FILTERS: u64 = 1_000_000;
const TOPICS: usize = 1_000;
const FAN_OUT: u64 = 20_000;

/// Resident set size in KiB, from `/proc/self/status` (Linux only).
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn report_memory(what: &str, before: Option<u64>, items: usize, unit: &str) {
    if let (Some(before), Some(after)) = (before, rss_kib()) {
        let bytes = after.saturating_sub(before) * 1024;
        println!(
            "{what}: RSS +{:.1} MiB, {:.0} bytes per {unit}",
            bytes as f64 / (1024.0 * 1024.0),
            bytes as f64 / items as f64
        );
    }
}

/// A small deterministic generator, so every run matches the same topics.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn qos(i: u64) -> QoS {
    match i % 3 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// 1,000,000 (subscriber, filter) pairs, one subscriber each:
/// * 5 × `#`, 100 × `devices/+/status/#` (monitoring clients);
/// * 200,000 × `devices/{d}/+`, on devices that also have an exact filter;
/// * 799,895 × `devices/{d}/telemetry`.
fn build_trie() -> SubscriptionTrie<u64> {
    let mut trie = SubscriptionTrie::new();
    let mut filter = String::new();
    for i in 0..FILTERS {
        filter.clear();
        let written = if i < 5 {
            write!(filter, "#")
        } else if i < 105 {
            write!(filter, "devices/+/status/#")
        } else if i % 5 == 0 {
            // d ≡ 1 (mod 5): distinct, and those devices have `telemetry` too.
            write!(filter, "devices/{}/+", (i * 3 + 1) % FILTERS)
        } else {
            write!(filter, "devices/{i}/telemetry")
        };
        if written.is_ok() {
            trie.insert(&filter, i, qos(i));
        }
    }
    trie
}

fn trie_benches(c: &mut Criterion) {
    let before = rss_kib();
    let started = Instant::now();
    let mut trie = build_trie();
    println!(
        "built {} pairs / {} filters in {:.2?}",
        trie.len(),
        trie.filter_count(),
        started.elapsed()
    );
    report_memory("1M-filter trie", before, trie.len(), "filter");

    for s in 0..FAN_OUT {
        trie.insert("broadcast/firmware", 2 * FILTERS + s, QoS::AtLeastOnce);
    }

    let mut rng = Lcg(42);
    let telemetry: Vec<String> = (0..TOPICS)
        .map(|_| format!("devices/{}/telemetry", rng.below(FILTERS)))
        .collect();
    let status: Vec<String> = (0..TOPICS)
        .map(|_| format!("devices/{}/status/online", rng.below(FILTERS)))
        .collect();
    let mut out = Vec::new();
    let mut matched = 0;
    for topic in &telemetry {
        trie.matches_dedup(topic, &mut out);
        matched += out.len();
    }
    println!(
        "telemetry topics: {:.2} subscribers per match",
        matched as f64 / TOPICS as f64
    );

    let mut group = c.benchmark_group("trie_1M");
    let mut i = 0;
    group.bench_function("matches_dedup/telemetry", |b| {
        b.iter(|| {
            i = (i + 1) % TOPICS;
            trie.matches_dedup(&telemetry[i], &mut out);
            black_box(out.len())
        })
    });
    group.bench_function("for_each_match/telemetry", |b| {
        b.iter(|| {
            i = (i + 1) % TOPICS;
            let mut n = 0;
            trie.for_each_match(&telemetry[i], |s, q| n += *s as usize + q as usize);
            black_box(n)
        })
    });
    group.bench_function("matches_dedup/status_105_subscribers", |b| {
        b.iter(|| {
            i = (i + 1) % TOPICS;
            trie.matches_dedup(&status[i], &mut out);
            black_box(out.len())
        })
    });
    group.bench_function("matches_dedup/fan_out_20k_plus_#", |b| {
        b.iter(|| {
            trie.matches_dedup("broadcast/firmware", &mut out);
            black_box(out.len())
        })
    });

    let mut n = 0u64;
    let mut filter = String::new();
    group.bench_function("insert_remove/exact", |b| {
        b.iter(|| {
            n = (n + 1) % FILTERS;
            filter.clear();
            let _ = write!(filter, "devices/{n}/cmd");
            trie.insert(&filter, n, QoS::AtLeastOnce);
            black_box(trie.remove(&filter, &n))
        })
    });
    group.bench_function("insert_remove/wildcard", |b| {
        b.iter(|| {
            n = (n + 1) % FILTERS;
            filter.clear();
            let _ = write!(filter, "devices/{n}/+/cmd");
            trie.insert(&filter, n, QoS::AtLeastOnce);
            black_box(trie.remove(&filter, &n))
        })
    });
    group.bench_function("insert_remove/into_20k_fan_out", |b| {
        b.iter(|| {
            n = (n + 1) % FILTERS;
            trie.insert("broadcast/firmware", n, QoS::AtLeastOnce);
            black_box(trie.remove("broadcast/firmware", &n))
        })
    });
    group.finish();

    // The same fan-out on its own: a single list, so no de-duplication.
    let mut alone = SubscriptionTrie::new();
    for s in 0..FAN_OUT {
        alone.insert("broadcast/firmware", s, QoS::AtLeastOnce);
    }
    c.bench_function("fan_out_20k/matches_dedup", |b| {
        b.iter(|| {
            alone.matches_dedup("broadcast/firmware", &mut out);
            black_box(out.len())
        })
    });

    let started = Instant::now();
    drop(trie);
    println!("dropped the 1M-filter trie in {:.2?}", started.elapsed());
}

/// 100,000 retained topics `site/{0..1000}/sensor/{0..100}/value`.
fn retained_benches(c: &mut Criterion) {
    let before = rss_kib();
    let mut index = RetainedIndex::new();
    let mut topic = String::new();
    for site in 0..1_000u64 {
        for sensor in 0..100u64 {
            topic.clear();
            if write!(topic, "site/{site}/sensor/{sensor}/value").is_ok() {
                index.insert(&topic, site * 100 + sensor);
            }
        }
    }
    report_memory("100k-topic retained index", before, index.len(), "topic");

    let mut group = c.benchmark_group("retained_100k");
    for (name, filter, expected) in [
        ("exact", "site/500/sensor/42/value", 1),
        ("plus_100_matches", "site/500/sensor/+/value", 100),
        ("plus_1000_matches", "site/+/sensor/42/value", 1_000),
        ("hash_100_matches", "site/500/#", 100),
    ] {
        let mut count = 0;
        index.for_each_match(filter, |_, _| count += 1);
        assert_eq!(count, expected, "{filter}");
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut sum = 0;
                index.for_each_match(black_box(filter), |_, v| sum += *v);
                black_box(sum)
            })
        });
    }
    group.bench_function("iter_from_page_100", |b| {
        b.iter(|| {
            black_box(
                index
                    .iter_from(Some(black_box("site/500/sensor/42/value")), 100)
                    .len(),
            )
        })
    });
    group.finish();
    // Keep it allocated so that the trie's RSS delta is not served from its
    // freed pages.
    std::mem::forget(index);
}

// Retained first: each structure is measured on a heap that has not had
// memory freed into it.
criterion_group!(benches, retained_benches, trie_benches);
criterion_main!(benches);
