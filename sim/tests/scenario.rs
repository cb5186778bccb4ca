//! Runs the partitioned-subscriber scenario over many seeds.
//!
//! `SIM_SEED=<n>` runs that one seed (and prints its trace);
//! `SIM_SEEDS=<count>` sets how many seeds `many_seeds` runs (from 0).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use easy_mqtt_sim::run_scenario;

const DEFAULT_SEEDS: u64 = 60;

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
    )
}

fn seeds() -> Vec<u64> {
    if let Some(seed) = env_u64("SIM_SEED") {
        return vec![seed];
    }
    (0..env_u64("SIM_SEEDS").unwrap_or(DEFAULT_SEEDS)).collect()
}

#[test]
fn many_seeds() {
    let single = std::env::var("SIM_SEED").is_ok();
    let started = Instant::now();
    let mut failures = Vec::new();
    let seeds = seeds();
    // How often each interesting path was taken, to show what the seeds cover.
    let paths = [
        ("broker keep-alive expiry", "keep-alive expired"),
        ("session takeover", "taken over"),
        ("sub keep-alive detection", "keep-alive: nothing received"),
        ("CONNACK lost", "timed out: CONNACK"),
        ("connect refused", "connect failed: i/o error"),
        ("QoS 2 resend de-duplicated", "duplicate QoS 2 id"),
        ("PUBREL for a released id", "known=false"),
        ("publisher reconnected", "pub    connected #2"),
    ];
    let mut hits = vec![0usize; paths.len()];
    for &seed in &seeds {
        let trace = run_scenario(seed);
        for ((_, needle), hit) in paths.iter().zip(&mut hits) {
            if trace.events.iter().any(|line| line.contains(needle)) {
                *hit += 1;
            }
        }
        if single {
            for line in &trace.events {
                println!("{line}");
            }
            println!(
                "seed {seed}: {} events, digest {:016x}",
                trace.events.len(),
                trace.digest()
            );
        }
        if let Err(report) = trace.check() {
            eprintln!("{report}");
            failures.push(seed);
        }
    }
    eprintln!(
        "{} seed(s) in {:.1}s, {} failed",
        seeds.len(),
        started.elapsed().as_secs_f64(),
        failures.len()
    );
    for ((name, _), hit) in paths.iter().zip(&hits) {
        eprintln!("  {name}: {hit} seed(s)");
    }
    assert!(
        failures.is_empty(),
        "failing seeds {failures:?}; rerun one with SIM_SEED=<seed> cargo test -p easy-mqtt-sim --test scenario many_seeds -- --nocapture"
    );
}

#[test]
fn same_seed_same_trace() {
    let seed = env_u64("SIM_SEED").unwrap_or(7);
    let first = run_scenario(seed);
    let second = run_scenario(seed);
    if let Some(at) = first
        .events
        .iter()
        .zip(&second.events)
        .position(|(a, b)| a != b)
    {
        panic!(
            "seed {seed}: traces diverge at event {at}:\n  first:  {}\n  second: {}",
            first.events[at], second.events[at]
        );
    }
    assert_eq!(
        first.events.len(),
        second.events.len(),
        "seed {seed}: traces have different lengths"
    );
    assert_eq!(first, second, "seed {seed}: same events, different outcome");
    assert_eq!(first.digest(), second.digest());

    let other = run_scenario(seed + 1);
    assert_ne!(
        first.digest(),
        other.digest(),
        "seeds {seed} and {} gave the same trace: the seed does not matter",
        seed + 1
    );
}
