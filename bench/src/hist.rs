//! A log-linear latency histogram, in nanoseconds.
//!
//! Values below 32 have a bucket each; above, every power of two is split
//! into 32 equal buckets, so a reported percentile is within 1/64 (1.6 %)
//! of the true value, over the whole `u64` range, in 1,920 buckets. Written
//! here rather than taken from a crate: it is 100 lines, and the recorder
//! below needs lock-free concurrent recording, striped per thread.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
/// Number of buckets: 32 exact values, then 59 powers of two × 32.
pub const BUCKETS: usize = ((64 - SUB_BITS as usize) + 1) * SUB as usize;

/// The bucket of a value.
pub fn bucket(value: u64) -> usize {
    if value < SUB {
        return value as usize;
    }
    let exponent = 63 - value.leading_zeros(); // >= SUB_BITS
    let shift = exponent - SUB_BITS;
    let sub = (value >> shift) & (SUB - 1);
    ((exponent - SUB_BITS + 1) as usize) * SUB as usize + sub as usize
}

/// The smallest value of a bucket and the bucket's width.
fn bounds(index: usize) -> (u64, u64) {
    let index = index as u64;
    if index < SUB {
        return (index, 1);
    }
    let group = index / SUB; // >= 1
    let sub = index % SUB;
    let shift = group - 1;
    ((SUB + sub) << shift, 1u64 << shift)
}

/// The value reported for a bucket: its middle.
pub fn representative(index: usize) -> u64 {
    let (low, width) = bounds(index);
    low.saturating_add(width / 2)
}

/// Counts per bucket; merged across clients, threads and processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram::new()
    }
}

impl Histogram {
    pub fn new() -> Histogram {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }

    pub fn record(&mut self, value: u64) {
        self.add_bucket(bucket(value), 1);
        self.max = self.max.max(value);
    }

    fn add_bucket(&mut self, index: usize, count: u64) {
        if let Some(slot) = self.counts.get_mut(index) {
            *slot += count;
            self.total += count;
        }
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (index, &count) in other.counts.iter().enumerate() {
            if count > 0 {
                self.add_bucket(index, count);
            }
        }
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value at quantile `q` (0..=1): the middle of the bucket holding
    /// the `ceil(q × count)`-th smallest value, capped at the maximum seen
    /// (the maximum itself for the last rank). 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        if rank >= self.total {
            return self.max;
        }
        let mut seen = 0;
        for (index, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return representative(index).min(self.max);
            }
        }
        self.max
    }

    /// `index:count` pairs of the non-empty buckets, then `max:value`,
    /// comma-separated: how a shard sends its histogram to the parent.
    pub fn to_wire(&self) -> String {
        let mut out = String::new();
        for (index, &count) in self.counts.iter().enumerate() {
            if count > 0 {
                out.push_str(&format!("{index}:{count},"));
            }
        }
        out.push_str(&format!("max:{}", self.max));
        out
    }

    pub fn from_wire(text: &str) -> Option<Histogram> {
        let mut histogram = Histogram::new();
        for pair in text.split(',').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once(':')?;
            let value: u64 = value.parse().ok()?;
            if key == "max" {
                histogram.max = value;
            } else {
                let index: usize = key.parse().ok()?;
                if index >= BUCKETS {
                    return None;
                }
                histogram.add_bucket(index, value);
            }
        }
        Some(histogram)
    }
}

/// Concurrent recording from many tasks on several threads: one set of
/// atomic buckets per stripe, a thread always writing to the same stripe, so
/// that two threads do not fight over a cache line.
#[derive(Debug)]
pub struct Recorder {
    stripes: Vec<Vec<AtomicU64>>,
    max: AtomicU64,
}

const STRIPES: usize = 8;

static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static STRIPE: usize = NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES;
}

impl Default for Recorder {
    fn default() -> Recorder {
        Recorder::new()
    }
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            stripes: (0..STRIPES)
                .map(|_| (0..BUCKETS).map(|_| AtomicU64::new(0)).collect())
                .collect(),
            max: AtomicU64::new(0),
        }
    }

    pub fn record(&self, value: u64) {
        let stripe = STRIPE.with(|s| *s);
        if let Some(slot) = self
            .stripes
            .get(stripe)
            .and_then(|buckets| buckets.get(bucket(value)))
        {
            slot.fetch_add(1, Ordering::Relaxed);
        }
        if value > self.max.load(Ordering::Relaxed) {
            self.max.fetch_max(value, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> Histogram {
        let mut histogram = Histogram::new();
        for buckets in &self.stripes {
            for (index, slot) in buckets.iter().enumerate() {
                let count = slot.load(Ordering::Relaxed);
                if count > 0 {
                    histogram.add_bucket(index, count);
                }
            }
        }
        histogram.max = self.max.load(Ordering::Relaxed);
        histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_monotonic() {
        let mut previous = 0;
        for value in (0..100_000u64).chain([u64::MAX / 3, u64::MAX]) {
            let index = bucket(value);
            assert!(index >= previous, "bucket({value}) went backwards");
            assert!(index < BUCKETS);
            let (low, width) = bounds(index);
            assert!(
                low <= value && value - low < width,
                "{value} outside bucket {index}"
            );
            previous = index;
        }
    }

    #[test]
    fn quantiles_are_within_two_percent() {
        let mut histogram = Histogram::new();
        for value in 1..=100_000u64 {
            histogram.record(value * 1000);
        }
        for (q, expected) in [
            (0.5, 50_000_000.0),
            (0.99, 99_000_000.0),
            (0.999, 99_900_000.0),
        ] {
            let got = histogram.quantile(q) as f64;
            assert!((got - expected).abs() / expected < 0.02, "q{q}: {got}");
        }
        assert_eq!(histogram.quantile(1.0), 100_000_000);
    }

    #[test]
    fn wire_round_trip_and_merge() {
        let recorder = Recorder::new();
        for value in [5, 500, 50_000, 5_000_000] {
            recorder.record(value);
        }
        let histogram = recorder.snapshot();
        let back = Histogram::from_wire(&histogram.to_wire());
        assert_eq!(back.as_ref(), Some(&histogram));
        let mut merged = Histogram::new();
        merged.merge(&histogram);
        merged.merge(&histogram);
        assert_eq!(merged.count(), 8);
        assert_eq!(merged.max(), 5_000_000);
        assert_eq!(Histogram::new().quantile(0.99), 0);
    }
}
