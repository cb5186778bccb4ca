//! Item 15: the `easy-mqtt` binary: configuration errors, start on a
//! configured port, serving mosquitto clients, and a clean exit on
//! SIGTERM/SIGINT that closes client connections.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{
    MosquittoSub, PubOutput, RawClient, TempFile, WAIT, mosquitto_pub_ok, run_with_timeout,
};

const BINARY: &str = env!("CARGO_BIN_EXE_easy-mqtt");

/// A port that was free a moment ago (never 8081-8083, the defaults).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Runs the binary to completion with these arguments.
fn run(args: &[&str]) -> PubOutput {
    let mut command = Command::new(BINARY);
    command.args(args).env_remove("RUST_LOG");
    run_with_timeout(command, WAIT)
}

/// Runs the binary on a configuration text that must be refused; returns stderr.
fn refused(config: &str) -> String {
    let file = TempFile::new("conf.yml", config.as_bytes());
    let output = run(&["-c", file.path().to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        output.stderr.contains(file.path().to_str().unwrap()),
        "the error names the file: {output:?}"
    );
    output.stderr
}

#[test]
fn bad_value_is_reported_with_its_key() {
    let stderr = refused("mqtt:\n  server:\n    tcp-port: 70000\n");
    assert!(stderr.contains("mqtt.server.tcp-port"), "{stderr}");
    assert!(stderr.contains("line 3"), "{stderr}");

    let stderr = refused("mqtt:\n  server:\n    max-inflight: 0\n");
    assert!(stderr.contains("mqtt.server.max-inflight"), "{stderr}");

    let stderr = refused("mqtt:\n  server:\n    queue-overflow: drop-everything\n");
    assert!(stderr.contains("mqtt.server.queue-overflow"), "{stderr}");
}

#[test]
fn unknown_key_is_reported_with_its_path() {
    let stderr = refused("mqtt:\n  server:\n    tcp-port: 1883\n    bogus-key: 1\n");
    assert!(stderr.contains("mqtt.server.bogus-key"), "{stderr}");
    let stderr = refused("mqtt:\n  kvrocks:\n    pool:\n      max-everything: 3\n");
    assert!(
        stderr.contains("mqtt.kvrocks.pool.max-everything"),
        "{stderr}"
    );
}

#[test]
fn missing_config_file_and_bad_arguments() {
    let output = run(&["-c", "/nonexistent/easy-mqtt.yml"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        output.stderr.contains("/nonexistent/easy-mqtt.yml"),
        "{output:?}"
    );

    let output = run(&["--no-such-flag"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(
        output.stderr.contains("--no-such-flag") && output.stderr.contains("usage"),
        "{output:?}"
    );

    let output = run(&["-c"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");

    let output = run(&["--version"]);
    assert!(output.status.success(), "{output:?}");
    assert!(output.stdout.starts_with("easy-mqtt "), "{output:?}");

    let output = run(&["--help"]);
    assert!(
        output.status.success() && output.stdout.contains("usage"),
        "{output:?}"
    );
}

/// A port already in use is a start error that names the key.
#[test]
fn port_in_use_is_a_start_error() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let file = TempFile::new("conf.yml", config(port).as_bytes());
    let output = run(&["-c", file.path().to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(output.stderr.contains("mqtt.server.tcp-port"), "{output:?}");
    drop(taken);
}

/// A configuration this build cannot serve (Kvrocks) is refused at start.
#[test]
fn unreachable_storage_is_a_start_error() {
    let text = format!(
        "{}  kvrocks:\n    cluster:\n      nodes: 127.0.0.1:6666\n",
        config(free_port())
    );
    let file = TempFile::new("conf.yml", text.as_bytes());
    let output = run(&["-c", file.path().to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        output.stderr.contains("mqtt.kvrocks.cluster.nodes"),
        "{output:?}"
    );
}

fn config(port: u16) -> String {
    format!(
        "mqtt:\n  server:\n    host: 127.0.0.1\n    tcp-port: {port}\n    websocket-port: 0\n    api-port: 0\n    \
         worker-threads: 2\n    log-level: warn\n"
    )
}

/// The broker as a child process; killed on drop if still running.
struct Process {
    child: Child,
    addr: SocketAddr,
    _config: TempFile,
}

impl Process {
    /// Starts the binary on a free port and waits until the port accepts.
    fn start() -> Process {
        // The port is free when picked but released before the binary binds
        // it; should something else take it meanwhile, pick another.
        for _ in 0..3 {
            let port = free_port();
            let config = TempFile::new("conf.yml", config(port).as_bytes());
            let child = Command::new(BINARY)
                .arg("-c")
                .arg(config.path())
                .env_remove("RUST_LOG")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start easy-mqtt");
            let mut process = Process {
                child,
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                _config: config,
            };
            match process.wait_listening() {
                Ok(()) => return process,
                Err(stderr) if stderr.contains("cannot listen") => continue,
                Err(stderr) => panic!("easy-mqtt exited: {stderr}"),
            }
        }
        panic!("easy-mqtt found no free port in 3 attempts");
    }

    /// Waits until the port accepts; `Err(stderr)` if the process exited.
    fn wait_listening(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(format!("{status}: {}", self.stderr()));
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "easy-mqtt does not listen on {}",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!("easy-mqtt did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// What the process wrote to stderr (once it has exited).
    fn stderr(&mut self) -> String {
        let mut text = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binary serves mosquitto clients and exits 0 on SIGTERM, closing
/// the connections of its clients (without publishing their wills).
#[test]
fn binary_serves_and_exits_cleanly_on_sigterm() {
    let mut broker = Process::start();
    let port = broker.addr.port();

    let mut sub = MosquittoSub::spawn(port, &["-q", "1", "-t", "bin/#"]);
    assert_eq!(sub.wait_subscribed(), vec![1]);
    mosquitto_pub_ok(port, &["-q", "1", "-t", "bin/t", "-m", "from the binary"]);
    let message = sub.recv();
    assert_eq!(
        (message.topic.as_str(), message.payload.as_slice()),
        ("bin/t", &b"from the binary"[..])
    );

    let (mut client, _) = RawClient::connect_with(
        broker.addr,
        &common::wire::Connect::new("bin-raw").will("bin/will", b"no", 1, false),
    );
    client.ping();

    let started = Instant::now();
    broker.signal("TERM");
    assert_eq!(
        client.expect_closed(),
        vec![],
        "connection closed, no will echoed"
    );
    let status = broker.wait_exit(Duration::from_secs(5));
    assert!(
        status.success(),
        "exit status {status}: {}",
        broker.stderr()
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        TcpStream::connect_timeout(&broker.addr, Duration::from_millis(200)).is_err(),
        "still listening"
    );
    // No will was published on shutdown.
    sub.expect_no_message(Duration::from_millis(100));
}

/// SIGINT (Ctrl-C) stops it the same way.
#[test]
fn binary_exits_cleanly_on_sigint() {
    let mut broker = Process::start();
    let mut client = RawClient::connect(broker.addr, "bin-int");
    broker.signal("INT");
    assert_eq!(client.expect_closed(), vec![]);
    let status = broker.wait_exit(Duration::from_secs(5));
    assert!(
        status.success(),
        "exit status {status}: {}",
        broker.stderr()
    );
}

/// The broker's jemalloc options (`MALLOC_CONF` in `main.rs`) reach
/// jemalloc: no dedicated arena for big allocations, whose pages it would
/// give back and fault in again for every big storage batch. Read from
/// jemalloc's own statistics, printed at exit on request.
#[test]
fn jemalloc_takes_the_options() {
    let mut command = Command::new(BINARY);
    command
        .arg("--version")
        .env_remove("RUST_LOG")
        .env("_RJEM_MALLOC_CONF", "stats_print:true");
    let output = run_with_timeout(command, WAIT);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(
        output
            .stderr
            .contains("Global variable malloc_conf: \"oversize_threshold:0\""),
        "{}",
        output.stderr
    );
    assert!(
        output.stderr.contains("opt.oversize_threshold: 0\n"),
        "{}",
        output.stderr
    );
}
