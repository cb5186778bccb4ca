//! A clock shared by every process of one run.
//!
//! Timestamps travel inside payloads from a publisher to a subscriber that
//! may live in another process (`--processes`), so they are nanoseconds since
//! the Unix epoch. Each process reads the wall clock once, at its first call,
//! and counts from there on the monotonic clock: time never goes backwards
//! within a process, and two processes agree to within the error of one
//! wall-clock read (about a microsecond).

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

static ORIGIN: OnceLock<(u64, Instant)> = OnceLock::new();

fn origin() -> &'static (u64, Instant) {
    ORIGIN.get_or_init(|| {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        (wall, Instant::now())
    })
}

/// Nanoseconds since the Unix epoch, monotonic within the process.
pub fn now_ns() -> u64 {
    let (wall, start) = origin();
    let elapsed = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
    wall.saturating_add(elapsed)
}

/// The `Instant` that corresponds to `ns` (a value of [`now_ns`]), for timers.
pub fn instant_at(ns: u64) -> Instant {
    let (wall, start) = origin();
    *start + std::time::Duration::from_nanos(ns.saturating_sub(*wall))
}

/// Seconds between two [`now_ns`] values (0 if `to` is earlier).
pub fn secs_between(from: u64, to: u64) -> f64 {
    to.saturating_sub(from) as f64 / 1e9
}
