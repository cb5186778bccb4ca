//! Wrappers around Debian's `mosquitto_sub` and `mosquitto_pub`, and
//! temporary files for configurations.

use super::*;

/// The path of a program on PATH; fails the test with what to install when
/// it is missing.
pub fn require_program(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed (or not on PATH); these tests need it: \
                 install the Debian package `{package}` (sudo apt-get install {package})"
            )
        })
}

/// `mosquitto_sub` with line-buffered output (through coreutils' `stdbuf`,
/// so that its debug lines arrive as they happen), `-d` and a parseable
/// format. Killed on drop.
pub struct MosquittoSub {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
    seen: Vec<String>,
    backlog: VecDeque<SubMessage>,
}

/// A message printed by mosquitto_sub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubMessage {
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    pub payload: Vec<u8>,
}

impl MosquittoSub {
    /// Starts `mosquitto_sub -h 127.0.0.1 -p <port> <args>`.
    pub fn spawn(port: u16, args: &[&str]) -> MosquittoSub {
        let mosquitto_sub = require_program("mosquitto_sub", "mosquitto-clients");
        let stdbuf = require_program("stdbuf", "coreutils");
        let mut child = Command::new(stdbuf)
            .arg("-oL")
            .arg(mosquitto_sub)
            .args(["-d", "-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-F", "M|%t|%q|%r|%x"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mosquitto_sub");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            sink.lock().unwrap().push_str(&text);
        });
        MosquittoSub {
            child,
            lines,
            stderr,
            seen: Vec::new(),
            backlog: VecDeque::new(),
        }
    }

    fn context(&self) -> String {
        format!(
            "mosquitto_sub output:\n{}\nstderr: {}",
            self.seen.join("\n"),
            self.stderr.lock().unwrap()
        )
    }

    /// The next line within `timeout`, `None` at timeout or exit.
    fn next_line(&mut self, timeout: Duration) -> Option<String> {
        let line = self.lines.recv_timeout(timeout).ok()?;
        self.seen.push(line.clone());
        Some(line)
    }

    fn parse_message(line: &str) -> Option<SubMessage> {
        let rest = line.strip_prefix("M|")?;
        let mut parts = rest.rsplitn(4, '|');
        let hex = parts.next()?;
        let retain = parts.next()? == "1";
        let qos = parts.next()?.parse().ok()?;
        let topic = parts.next()?.to_owned();
        let payload = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .ok()?;
        Some(SubMessage {
            topic,
            qos,
            retain,
            payload,
        })
    }

    /// Waits for the SUBACK; returns the granted QoS (or 128) per filter.
    pub fn wait_subscribed(&mut self) -> Vec<u8> {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(line) = self.next_line(left) else {
                panic!("mosquitto_sub did not subscribe; {}", self.context());
            };
            if let Some(message) = MosquittoSub::parse_message(&line) {
                self.backlog.push_back(message);
            } else if let Some(codes) = line.strip_prefix("Subscribed (mid: ") {
                let codes = codes.split_once(": ").map_or("", |(_, c)| c);
                return codes
                    .split(", ")
                    .map(|c| c.trim().parse().unwrap())
                    .collect();
            }
        }
    }

    /// The next message; fails the test if none comes within [`WAIT`].
    pub fn recv(&mut self) -> SubMessage {
        if let Some(message) = self.backlog.pop_front() {
            return message;
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(line) = self.next_line(left) else {
                panic!("mosquitto_sub received no message; {}", self.context());
            };
            if let Some(message) = MosquittoSub::parse_message(&line) {
                return message;
            }
        }
    }

    /// Fails the test if a message is printed within `within`.
    pub fn expect_no_message(&mut self, within: Duration) {
        if let Some(message) = self.backlog.pop_front() {
            panic!("unexpected message {message:?}");
        }
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            let Some(line) = self.next_line(left) else {
                return;
            };
            if let Some(message) = MosquittoSub::parse_message(&line) {
                panic!("unexpected message {message:?}; {}", self.context());
            }
        }
    }

    /// Every message printed from now until the process exits on its own
    /// (within `timeout`), and its exit status.
    pub fn messages_until_exit(&mut self, timeout: Duration) -> (ExitStatus, Vec<SubMessage>) {
        let mut messages: Vec<SubMessage> = self.backlog.drain(..).collect();
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(message) = MosquittoSub::parse_message(&line) {
                        messages.push(message);
                    }
                    self.seen.push(line);
                }
                // Its stdout closed: it exited.
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("mosquitto_sub did not exit; {}", self.context())
                }
            }
        }
        (self.child.wait().unwrap(), messages)
    }

    /// Every message printed until none came for `quiet` (the backlog
    /// first); fails the test if messages keep coming for `limit`.
    pub fn messages_until_quiet(&mut self, quiet: Duration, limit: Duration) -> Vec<SubMessage> {
        let mut messages: Vec<SubMessage> = self.backlog.drain(..).collect();
        let deadline = Instant::now() + limit;
        loop {
            assert!(
                Instant::now() < deadline,
                "mosquitto_sub still receiving after {limit:?}; {}",
                self.context()
            );
            let Some(line) = self.next_line(quiet) else {
                return messages;
            };
            if let Some(message) = MosquittoSub::parse_message(&line) {
                messages.push(message);
            }
        }
    }

    /// Kills the process (SIGKILL: its connection ends without DISCONNECT).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for MosquittoSub {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The result of a `mosquitto_pub` run.
#[derive(Debug)]
pub struct PubOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `mosquitto_pub -h 127.0.0.1 -p <port> <args>` to completion (killed
/// after [`WAIT`]).
pub fn mosquitto_pub(port: u16, args: &[&str]) -> PubOutput {
    let program = require_program("mosquitto_pub", "mosquitto-clients");
    let mut command = Command::new(program);
    command
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args);
    run_with_timeout(command, WAIT)
}

/// Runs `mosquitto_pub` and fails the test unless it succeeds.
pub fn mosquitto_pub_ok(port: u16, args: &[&str]) {
    let output = mosquitto_pub(port, args);
    assert!(
        output.status.success(),
        "mosquitto_pub {args:?} failed: {output:?}"
    );
}

/// Runs a command with piped output; kills it after `timeout`.
pub fn run_with_timeout(mut command: Command, timeout: Duration) -> PubOutput {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let mut stdout_pipe = child.stdout.take().unwrap();
    let mut stderr_pipe = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout_pipe.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr_pipe.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    PubOutput {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// A file in a fresh temporary directory, removed with the directory on drop.
pub struct TempFile {
    dir: PathBuf,
    pub path: PathBuf,
}

impl TempFile {
    pub fn new(name: &str, contents: &[u8]) -> TempFile {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("easy-mqtt-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        TempFile { dir, path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
