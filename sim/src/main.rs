//! `easy-mqtt-sim`: runs simulation seeds.
//!
//! ```text
//! cargo run -p easy-mqtt-sim --release -- --seeds 100000 [--from S] [--scenario cluster|partitioned-subscriber]
//! cargo run -p easy-mqtt-sim --release -- --scenario cluster --seed 17    # one seed, whole trace
//! ```
//!
//! Prints the throughput in seeds per second, and for every failing seed
//! its violations and the one command that replays it. Exits with status 1
//! when a seed failed, 2 on bad arguments.

use std::process::ExitCode;
use std::time::Instant;

use easy_mqtt_sim::Trace;

const USAGE: &str = "usage: easy-mqtt-sim [--seeds N] [--from S] [--seed S] [--scenario cluster|partitioned-subscriber] [--keep-going]";

struct Args {
    seeds: u64,
    from: u64,
    /// One seed, printing its trace.
    single: bool,
    scenario: fn(u64) -> Trace,
    /// Go on after a failing seed (otherwise stop at the first).
    keep_going: bool,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        seeds: 1000,
        from: 0,
        single: false,
        scenario: easy_mqtt_sim::run_cluster,
        keep_going: false,
    };
    let mut it = std::env::args().skip(1);
    let number = |name: &str, value: Option<String>| -> Result<u64, String> {
        let value = value.ok_or_else(|| format!("{name} needs a value"))?;
        value
            .parse()
            .map_err(|_| format!("{name}: {value:?} is not a number"))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--seeds" => args.seeds = number("--seeds", it.next())?,
            "--from" => args.from = number("--from", it.next())?,
            "--seed" => {
                args.from = number("--seed", it.next())?;
                args.seeds = 1;
                args.single = true;
            }
            "--scenario" => {
                args.scenario = match it.next().as_deref() {
                    Some("cluster") => easy_mqtt_sim::run_cluster,
                    Some("partitioned-subscriber") => easy_mqtt_sim::run_scenario,
                    other => return Err(format!("unknown scenario {other:?}")),
                }
            }
            "--keep-going" => args.keep_going = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(args) => args,
        Err(error) => {
            if !error.is_empty() {
                eprintln!("{error}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let mut failed = Vec::new();
    let mut ran = 0u64;
    for seed in args.from..args.from.saturating_add(args.seeds) {
        let trace = (args.scenario)(seed);
        ran += 1;
        if args.single {
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
            failed.push(seed);
            if !args.keep_going {
                break;
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{ran} seed(s) in {secs:.1}s ({:.1} seeds/s), {} failed",
        ran as f64 / secs.max(1e-9),
        failed.len()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("failing seeds: {failed:?}");
        ExitCode::FAILURE
    }
}
