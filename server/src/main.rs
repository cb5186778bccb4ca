//! `easy-mqtt -c conf/conf.yml`: the broker.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use easy_mqtt_server::broker::Broker;
use easy_mqtt_server::config::Config;

const USAGE: &str = "usage: easy-mqtt [-c|--config FILE]   (default: conf/conf.yml)
       easy-mqtt --help | --version";

// glibc's malloc was a quarter of the broker's CPU on Kvrocks (fragmented
// frees of pipeline buffers: `malloc_consolidate`, `unlink_chunk`), and its
// per-chunk header and 16-byte rounding cost idle connections memory.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once as it initialises. `oversize_threshold:0`:
/// no dedicated arena for allocations of 8 MiB and more. That arena hands
/// freed pages back to the kernel at once, so on Kvrocks the journal's
/// batches of up to a million ops (vectors of tens of MB, made and
/// dropped many times a second) were faulted in and zeroed afresh each
/// time: a third of the broker's CPU in the kernel's `clear_page_erms`.
/// In the ordinary arenas their pages are reused, and purged after the
/// usual decay. (The original's scenario on Kvrocks: 17 % less broker CPU,
/// 17 % more deliveries/s; BENCHMARKS.md, "Session 13".)
// SAFETY: jemalloc reads `malloc_conf` (its prefixed name in
// tikv-jemalloc-sys: `_rjem_malloc_conf`), a `const char *`, once while
// it initialises, and never writes it. This is a thin pointer to a
// NUL-terminated byte string that lives for the whole program. The
// binary test `jemalloc_takes_the_options` checks that jemalloc sees it.
#[allow(unsafe_code)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &[u8; 21] = b"oversize_threshold:0\0";

/// Time given to open connections to close on SIGINT/SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    let (path, explicit) = match parse_args(std::env::args().skip(1)) {
        Ok(Some(choice)) => choice,
        Ok(None) => return ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("easy-mqtt: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let config = match load_config(&path, explicit) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("easy-mqtt: {message}");
            return ExitCode::from(1);
        }
    };
    init_logging(&config.mqtt.server.log_level);
    match run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("{message}");
            eprintln!("easy-mqtt: {message}");
            ExitCode::from(1)
        }
    }
}

/// The config path, and whether it was given on the command line.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<(PathBuf, bool)>, String> {
    let mut path = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-c" | "--config" => {
                path = Some(PathBuf::from(
                    args.next().ok_or_else(|| format!("{arg} needs a file"))?,
                ));
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(None);
            }
            "-V" | "--version" => {
                println!("easy-mqtt {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            other => return Err(format!("unexpected argument '{other}'")),
        }
    }
    Ok(Some(match path {
        Some(path) => (path, true),
        None => (PathBuf::from("conf/conf.yml"), false),
    }))
}

/// The default path may be absent (the broker then runs on defaults); a
/// path given with -c must exist.
fn load_config(path: &Path, explicit: bool) -> Result<Config, String> {
    if !explicit && !path.exists() {
        return Ok(Config::default());
    }
    Config::load(path).map_err(|e| e.to_string())
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
}

fn run(config: &Config) -> Result<(), String> {
    let server = &config.mqtt.server;
    if server.listener_pool_size != 0 || server.deal_message_thread_pool_size != 0 {
        tracing::info!(
            "mqtt.server.listener-pool-size and deal-message-thread-pool-size are accepted for compatibility; \
             the runtime uses mqtt.server.worker-threads"
        );
    }
    let signals = shutdown_signals().map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let executor = Arc::new(async_executor::Executor::new());
    let (stop_workers, workers_stopped) = async_channel::bounded::<()>(1);
    let threads = config.worker_threads();
    let mut workers = Vec::with_capacity(threads);
    for index in 0..threads {
        let executor = executor.clone();
        let stopped = workers_stopped.clone();
        let worker = std::thread::Builder::new()
            .name(format!("easy-mqtt-{index}"))
            .spawn(move || {
                // async-io's block_on: an idle worker polls the reactor itself,
                // so a socket that becomes ready wakes its task on the thread
                // that saw it, not via the "async-io" thread and a futex wake.
                async_io::block_on(executor.run(async {
                    let _ = stopped.recv().await;
                }))
            })
            .map_err(|e| format!("cannot start worker thread: {e}"))?;
        workers.push(worker);
    }
    let result = futures_lite::future::block_on(async {
        let broker = Broker::start(config, executor.clone())
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(worker_threads = threads, "easy-mqtt started");
        let signal = loop {
            match signals.recv().await {
                // SIGHUP reloads the TLS certificates and keeps serving.
                Ok("SIGHUP") => match broker.reload_tls() {
                    Ok(true) => {}
                    Ok(false) => tracing::info!("SIGHUP: no TLS listener, nothing to reload"),
                    // Logged by the reload; the previous certificate stays.
                    Err(_) => {}
                },
                Ok(signal) => break signal,
                Err(_) => break "",
            }
        };
        tracing::info!(signal, "shutting down");
        broker.shutdown(SHUTDOWN_GRACE).await;
        Ok::<(), String>(())
    });
    drop(stop_workers);
    for worker in workers {
        let _ = worker.join();
    }
    result
}

/// SIGINT and SIGTERM (stop) and SIGHUP (reload the TLS certificates),
/// delivered as their names on a channel.
fn shutdown_signals() -> std::io::Result<async_channel::Receiver<&'static str>> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    let (tx, rx) = async_channel::bounded(4);
    std::thread::Builder::new()
        .name("easy-mqtt-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                let name = match signal {
                    SIGINT => "SIGINT",
                    SIGHUP => "SIGHUP",
                    _ => "SIGTERM",
                };
                if tx.send_blocking(name).is_err() || name != "SIGHUP" {
                    return;
                }
            }
        })?;
    Ok(rx)
}
