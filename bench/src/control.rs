//! Driving a run: in this process, as a child of a split run, or as the
//! parent of several children (`--processes N`).
//!
//! The parent and its children speak lines: a child prints `PROGRESS ...`
//! while it works, `READY ...` once its clients are connected, and at the
//! end `ERROR ...` lines and one `SHARD ...` line; the parent writes `GO`
//! (release the publishers) and `STOP` on the child's stdin.

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use async_io::Timer;
use smol::Executor;

use crate::args::{Options, Scenario};
use crate::broker::Sampler;
use crate::clock::now_ns;
use crate::error::{Context, Error, Result};
use crate::report::{BrokerStats, Display, Report, key_values};
use crate::run::{Progress, Setup, Shard, ShardReport, Shared, StopRule};

/// How often the stop rule and the progress line look at the counters.
const TICK: Duration = Duration::from_millis(50);

/// Runs `main` on an executor with `threads` threads (this one included).
fn on_executor<T>(
    threads: usize,
    main: impl FnOnce(Arc<Executor<'static>>) -> std::pin::Pin<Box<dyn Future<Output = T>>>,
) -> Result<T> {
    let executor = Arc::new(Executor::new());
    let (stop, stopped) = smol::channel::bounded::<()>(1);
    let mut workers = Vec::new();
    for index in 1..threads.max(1) {
        let executor = executor.clone();
        let stopped = stopped.clone();
        let worker = std::thread::Builder::new()
            .name(format!("bench-{index}"))
            .spawn(move || {
                smol::block_on(executor.run(async {
                    let _ = stopped.recv().await;
                }))
            })
            .context("cannot start an executor thread")?;
        workers.push(worker);
    }
    let result = smol::block_on(executor.run(main(executor.clone())));
    drop(stop);
    for worker in workers {
        let _ = worker.join();
    }
    Ok(result)
}

/// Runs the scenario: in this process, or split over `--processes`.
pub fn run(options: Options) -> Result<Report> {
    if options.processes > 1 {
        return parent(options);
    }
    let options = Arc::new(options);
    on_executor(options.threads, move |executor| {
        Box::pin(local(options, executor))
    })?
}

async fn local(options: Arc<Options>, executor: Arc<Executor<'static>>) -> Result<Report> {
    let mut sampler = Sampler::new(&options.broker_pids);
    let mut broker = BrokerStats {
        before: sampler.sample(),
        ..BrokerStats::default()
    };
    let mut display = Display::new(
        options.progress && std::io::stderr().is_terminal(),
        &options,
    );
    let shared = Arc::new(Shared::new());
    let connect = Shard::connect(options.clone(), shared.clone(), &executor);
    let mut shard = futures_lite::future::or(connect, async {
        loop {
            Timer::after(TICK).await;
            display.tick(&shared.progress());
        }
    })
    .await;
    let setup = shard.setup;
    let mut go_ns = 0;
    let mut reason = None;
    if setup.ready() {
        if options.scenario == Scenario::Conn {
            Timer::after(options.hold).await;
            broker.ready = sampler.sample();
        } else {
            broker.ready = sampler.sample();
            broker.go = sampler.sample();
            go_ns = now_ns();
            shard.go();
            let start = Instant::now();
            let mut rule = StopRule::new(&options, start);
            let mut last_sample = start;
            reason = loop {
                Timer::after(TICK).await;
                let now = Instant::now();
                let progress = shard.shared.progress();
                display.tick(&progress);
                if now.duration_since(last_sample) >= Duration::from_secs(1) {
                    sampler.sample();
                    last_sample = now;
                }
                if let Some(reason) = rule.check(&progress, now) {
                    break Some(reason);
                }
            };
            broker.end = sampler.sample();
        }
    }
    let end_ns = now_ns();
    let report = shard.stop().await;
    display.finish();
    broker.max_rss_kb = sampler.max_rss_kb;
    broker.max_rss_each_kb = sampler.max_rss_each_kb;
    broker.error = sampler.error.map(|e| e.to_string());
    Ok(Report {
        options: (*options).clone(),
        errors: shared.errors().1,
        shard: report,
        go_ns,
        end_ns,
        reason,
        broker,
    })
}

/// A child of a split run: connects its share of the clients and follows
/// the parent's GO and STOP.
pub fn child(options: Options) -> Result<()> {
    let (tx, rx) = smol::channel::unbounded::<String>();
    std::thread::Builder::new()
        .name("bench-stdin".into())
        .spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if tx.send_blocking(line).is_err() {
                    break;
                }
            }
            // End of input: the channel closes, which reads as STOP.
        })
        .context("cannot start the stdin reader")?;
    let options = Arc::new(options);
    on_executor(options.threads, move |executor| {
        Box::pin(child_main(options, executor, rx))
    })?
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

async fn child_main(
    options: Arc<Options>,
    executor: Arc<Executor<'static>>,
    commands: smol::channel::Receiver<String>,
) -> Result<()> {
    let shared = Arc::new(Shared::new());
    let connect = Shard::connect(options.clone(), shared.clone(), &executor);
    let mut shard = futures_lite::future::or(connect, async {
        loop {
            Timer::after(Duration::from_millis(250)).await;
            say(&format!("PROGRESS {}", shared.progress().to_wire()));
        }
    })
    .await;
    say(&format!("READY {}", shard.setup.to_wire()));
    let go = matches!(commands.recv().await.as_deref(), Ok("GO"));
    if go {
        shard.go();
        let deadline = Instant::now() + options.timeout;
        loop {
            let tick = futures_lite::future::or(
                async {
                    Timer::after(Duration::from_millis(100)).await;
                    None
                },
                async { Some(commands.recv().await) },
            )
            .await;
            say(&format!("PROGRESS {}", shared.progress().to_wire()));
            match tick {
                Some(Ok(line)) if line != "STOP" => {}
                Some(_) => break,
                None if Instant::now() >= deadline => break,
                None => {}
            }
        }
    }
    let report = shard.stop().await;
    for error in shared.errors().1 {
        say(&format!("ERROR {}", error.replace('\n', " ")));
    }
    say(&format!("SHARD {}", report.to_wire()));
    Ok(())
}

/// One child process and what it said last.
struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    progress: Progress,
    setup: Option<Setup>,
    report: Option<ShardReport>,
    closed: bool,
}

impl Worker {
    fn send(&mut self, line: &str) {
        if let Some(stdin) = self.stdin.as_mut()
            && writeln!(stdin, "{line}")
                .and_then(|()| stdin.flush())
                .is_err()
        {
            self.stdin = None;
        }
    }
}

/// Kills the children still running when the parent leaves early.
struct Workers(Vec<Worker>);

impl Drop for Workers {
    fn drop(&mut self) {
        for worker in &mut self.0 {
            worker.stdin = None;
            if matches!(worker.child.try_wait(), Ok(None)) {
                let _ = worker.child.kill();
            }
            let _ = worker.child.wait();
        }
    }
}

enum Event {
    Line(usize, String),
    Closed(usize),
}

/// Handles one line, or the end of output, of a child.
fn handle(workers: &mut Workers, errors: &mut Vec<String>, event: Event) {
    let (index, line) = match event {
        Event::Closed(index) => {
            if let Some(worker) = workers.0.get_mut(index) {
                worker.closed = true;
            }
            return;
        }
        Event::Line(index, line) => (index, line),
    };
    let Some(worker) = workers.0.get_mut(index) else {
        return;
    };
    let (word, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
    match word {
        "PROGRESS" => worker.progress = Progress::from_wire(rest),
        "READY" => worker.setup = Some(Setup::from_wire(rest)),
        "ERROR" => errors.push(format!("process {index}: {rest}")),
        "SHARD" => match ShardReport::from_wire(rest) {
            Ok(report) => {
                worker.progress = report.progress;
                worker.report = Some(report);
            }
            Err(e) => errors.push(format!("process {index}: {e}")),
        },
        _ => errors.push(format!("process {index} said: {line}")),
    }
}

fn parent(options: Options) -> Result<Report> {
    let mut sampler = Sampler::new(&options.broker_pids);
    let mut broker = BrokerStats {
        before: sampler.sample(),
        ..BrokerStats::default()
    };
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let (events_tx, events) = mpsc::channel::<Event>();
    let mut workers = Workers(Vec::new());
    for index in 0..options.processes {
        let mut child = Command::new(&exe)
            .args(options.child_args(index))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context(format!("cannot start child process {index}"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| Error::new("child without stdout"))?;
        let stdin = child.stdin.take();
        let tx = events_tx.clone();
        std::thread::Builder::new()
            .name(format!("bench-child-{index}"))
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(Event::Line(index, line)).is_err() {
                        return;
                    }
                }
                let _ = tx.send(Event::Closed(index));
            })
            .context("cannot start a child reader thread")?;
        workers.0.push(Worker {
            child,
            stdin,
            progress: Progress::default(),
            setup: None,
            report: None,
            closed: false,
        });
    }
    drop(events_tx);
    let mut errors = Vec::new();
    let mut display = Display::new(
        options.progress && std::io::stderr().is_terminal(),
        &options,
    );
    let sum = |workers: &Workers| {
        let mut total = Progress::default();
        for worker in &workers.0 {
            total.add(&worker.progress);
        }
        total
    };
    // Connection phase: until every child is READY (or gone).
    let setup_deadline = Instant::now() + options.setup_timeout + Duration::from_secs(10);
    while workers.0.iter().any(|w| w.setup.is_none() && !w.closed) {
        if Instant::now() >= setup_deadline {
            errors.push("child processes not ready in time".to_owned());
            break;
        }
        match events.recv_timeout(TICK) {
            Ok(event) => handle(&mut workers, &mut errors, event),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        display.tick(&sum(&workers));
    }
    let mut setup = Setup::default();
    let mut all_ready = true;
    for worker in &workers.0 {
        match worker.setup {
            Some(s) => setup.add(&s),
            None => all_ready = false,
        }
    }
    if !all_ready {
        errors.push("a child process ended before its clients were connected".to_owned());
    }
    let mut go_ns = 0;
    let mut reason = None;
    if all_ready && setup.ready() {
        if options.scenario == Scenario::Conn {
            std::thread::sleep(options.hold);
            broker.ready = sampler.sample();
        } else {
            broker.ready = sampler.sample();
            broker.go = sampler.sample();
            go_ns = now_ns();
            for worker in &mut workers.0 {
                worker.send("GO");
            }
            let start = Instant::now();
            let mut rule = StopRule::new(&options, start);
            let mut last_sample = start;
            reason = loop {
                match events.recv_timeout(TICK) {
                    Ok(event) => handle(&mut workers, &mut errors, event),
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => break None,
                }
                let now = Instant::now();
                if workers.0.iter().any(|w| w.closed) {
                    errors.push("a child process ended during the run".to_owned());
                    break None;
                }
                let progress = sum(&workers);
                display.tick(&progress);
                if now.duration_since(last_sample) >= Duration::from_secs(1) {
                    sampler.sample();
                    last_sample = now;
                }
                if let Some(reason) = rule.check(&progress, now) {
                    break Some(reason);
                }
            };
            broker.end = sampler.sample();
        }
    }
    let end_ns = now_ns();
    for worker in &mut workers.0 {
        worker.send("STOP");
        worker.stdin = None;
    }
    // Reports: each child stops its clients (up to 6 s) and reports.
    let report_deadline = Instant::now() + Duration::from_secs(20);
    while workers.0.iter().any(|w| w.report.is_none() && !w.closed) {
        if Instant::now() >= report_deadline {
            errors.push("child processes did not report in time".to_owned());
            break;
        }
        match events.recv_timeout(TICK) {
            Ok(event) => handle(&mut workers, &mut errors, event),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    display.finish();
    let mut merged = ShardReport::default();
    let mut missing = 0;
    for worker in &workers.0 {
        match &worker.report {
            Some(report) => merged.merge(report),
            None => missing += 1,
        }
    }
    if missing > 0 {
        errors.push(format!("{missing} child processes sent no report"));
    }
    // Failures of the parent's own (missing children, ...) count as errors.
    let own_errors = errors.iter().filter(|e| !e.starts_with("process ")).count() as u64;
    merged.errors += own_errors;
    if merged.clients == 0 {
        merged.clients = setup.clients;
    }
    drop(workers);
    broker.max_rss_kb = sampler.max_rss_kb;
    broker.max_rss_each_kb = sampler.max_rss_each_kb;
    broker.error = sampler.error.map(|e| e.to_string());
    Ok(Report {
        options,
        shard: merged,
        go_ns,
        end_ns,
        reason,
        broker,
        errors,
    })
}

/// The key=value pairs of a RESULT line, for scripts and tests.
pub fn parse_result(line: &str) -> Option<std::collections::HashMap<String, String>> {
    let rest = line.strip_prefix("RESULT ")?;
    Some(
        key_values(rest)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    )
}
