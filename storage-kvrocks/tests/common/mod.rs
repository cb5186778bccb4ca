//! Real `redis-server` processes for the tests (Kvrocks speaks the same
//! protocol and is not packaged here): standalone or a three-node cluster,
//! on free loopback ports, in a temporary directory, without persistence.
//!
//! Each server runs under a small `sh` wrapper that kills it when the
//! wrapper's stdin closes: on `Drop`, and also when the test process exits
//! (servers kept in a `static` are never dropped).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod differential;

use easy_mqtt_core::storage::{Op, Storage as _, StoredSession};

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use easy_mqtt_storage_kvrocks::{KvrocksSettings, KvrocksStorage};

const WRAPPER: &str = r#"exec 3<&0
redis-server "$@" &
srv=$!
echo "$srv"
( read -r _ <&3; kill "$srv" 2>/dev/null ) &
wait "$srv"
"#;

fn require(binary: &str) {
    match Command::new(binary).arg("--version").output() {
        Ok(output) if output.status.success() => {}
        Ok(output) => panic!("`{binary} --version` failed: {output:?}"),
        Err(error) => panic!(
            "`{binary}` is needed by these tests and could not be run ({error}); \
             install the Debian package `redis-server` (apt-get install redis-server), \
             which provides redis-server and redis-cli"
        ),
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("bind 127.0.0.1:0")
}

static DIRS: AtomicUsize = AtomicUsize::new(0);

/// Removes the directories of earlier test processes that are gone (the
/// servers kept in a `static` are never dropped, so never cleaned).
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name
            .to_str()
            .and_then(|n| n.strip_prefix("easy-mqtt-kvrocks-"))
        else {
            continue;
        };
        let Some(pid) = rest.split('-').next() else {
            continue;
        };
        if pid != std::process::id().to_string() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn temp_dir() -> PathBuf {
    static CLEANED: std::sync::Once = std::sync::Once::new();
    CLEANED.call_once(remove_stale_dirs);
    let dir = std::env::temp_dir().join(format!(
        "easy-mqtt-kvrocks-{}-{}",
        std::process::id(),
        DIRS.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// One `redis-server` process.
pub struct Server {
    pub port: u16,
    cluster_port: Option<u16>,
    extra: Vec<String>,
    dir: PathBuf,
    process: Option<(Child, ChildStdin)>,
    pid: u32,
}

impl Server {
    /// A standalone server on a free port.
    pub fn standalone() -> Server {
        Server::start_fresh(false, &[])
    }

    /// A standalone server with more `redis-server` arguments.
    pub fn standalone_with(extra: &[&str]) -> Server {
        Server::start_fresh(false, extra)
    }

    fn start_fresh(cluster: bool, extra: &[&str]) -> Server {
        require("redis-server");
        let dir = temp_dir();
        let mut errors = Vec::new();
        for _ in 0..10 {
            let port = free_port();
            let cluster_port = cluster.then(free_port);
            let mut server = Server {
                port,
                cluster_port,
                extra: extra.iter().map(|arg| (*arg).to_owned()).collect(),
                dir: dir.clone(),
                process: None,
                pid: 0,
            };
            match server.start() {
                Ok(()) => return server,
                Err(error) => errors.push(error),
            }
        }
        panic!("could not start redis-server on a free port (10 attempts): {errors:?}");
    }

    fn args(&self) -> Vec<String> {
        let mut args = vec![
            "--port".to_owned(),
            self.port.to_string(),
            "--bind".to_owned(),
            "127.0.0.1".to_owned(),
            "--save".to_owned(),
            String::new(),
            "--appendonly".to_owned(),
            "no".to_owned(),
            "--protected-mode".to_owned(),
            "no".to_owned(),
            "--dir".to_owned(),
            self.dir.display().to_string(),
            "--logfile".to_owned(),
            self.dir
                .join(format!("redis-{}.log", self.port))
                .display()
                .to_string(),
        ];
        if let Some(cluster_port) = self.cluster_port {
            args.extend([
                "--cluster-enabled".to_owned(),
                "yes".to_owned(),
                "--cluster-config-file".to_owned(),
                self.dir
                    .join(format!("nodes-{}.conf", self.port))
                    .display()
                    .to_string(),
                "--cluster-port".to_owned(),
                cluster_port.to_string(),
                "--cluster-node-timeout".to_owned(),
                "5000".to_owned(),
            ]);
        }
        args.extend(self.extra.iter().cloned());
        args
    }

    /// Starts the process on `self.port` and waits until it answers PING.
    fn start(&mut self) -> Result<(), String> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(WRAPPER)
            .arg("sh")
            .args(self.args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| format!("spawn sh: {error}"))?;
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|error| format!("read pid: {error}"))?;
        self.pid = line.trim().parse().map_err(|_| format!("pid {line:?}"))?;
        self.process = Some((child, stdin));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.ping() {
                return Ok(());
            }
            if let Some((child, _)) = &mut self.process
                && let Ok(Some(status)) = child.try_wait()
            {
                self.process = None;
                return Err(format!("redis-server on {} exited: {status}", self.port));
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(format!("redis-server on {} never answered", self.port));
            }
            sleep(Duration::from_millis(10));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn node(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn connection(&self) -> redis::Connection {
        let client = redis::Client::open(self.url()).expect("client");
        client
            .get_connection_with_timeout(Duration::from_secs(2))
            .expect("connect")
    }

    fn ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let Ok(mut connection) = client.get_connection_with_timeout(Duration::from_millis(200))
        else {
            return false;
        };
        match redis::cmd("PING").query::<String>(&mut connection) {
            Ok(_) => true,
            // Up, and wants a password.
            Err(error) => error.code() == Some("NOAUTH"),
        }
    }

    /// Stops the process (the port stays this server's, for `restart`).
    pub fn stop(&mut self) {
        if let Some((mut child, stdin)) = self.process.take() {
            drop(stdin);
            let _ = child.wait();
        }
    }

    /// Starts the process again on the same port (with no data).
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.start() {
                Ok(()) => return,
                Err(error) if Instant::now() > deadline => panic!("restart: {error}"),
                Err(_) => sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the process: a hung server.
    pub fn freeze(&self, frozen: bool) {
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let status = Command::new("kill")
            .arg(signal)
            .arg(self.pid.to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} {}", self.pid);
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.pid != 0 && self.process.is_some() {
            // A frozen process does not die of SIGTERM until thawed.
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(self.pid.to_string())
                .status();
        }
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A three-node redis cluster, no replicas.
pub struct Cluster {
    pub servers: Vec<Server>,
}

impl Cluster {
    pub fn start() -> Cluster {
        require("redis-server");
        require("redis-cli");
        let servers: Vec<Server> = (0..3).map(|_| Server::start_fresh(true, &[])).collect();
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for server in &servers {
            create.arg(server.node());
        }
        let output = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        for server in &servers {
            let mut connection = server.connection();
            loop {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut connection)
                    .expect("CLUSTER INFO");
                if info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384") {
                    break;
                }
                assert!(Instant::now() < deadline, "cluster never became ok: {info}");
                sleep(Duration::from_millis(20));
            }
        }
        Cluster { servers }
    }

    pub fn nodes(&self) -> Vec<String> {
        self.servers.iter().map(Server::node).collect()
    }
}

/// A prefix of its own for each test sharing a server.
pub fn prefix(test: &str) -> String {
    format!("t-{test}")
}

pub fn settings(nodes: Vec<String>, prefix: &str) -> KvrocksSettings {
    KvrocksSettings {
        key_prefix: prefix.to_owned(),
        connections: 2,
        ..KvrocksSettings::new(nodes)
    }
}

/// This test binary's standalone server, started on first use.
pub fn standalone() -> &'static Server {
    static SERVER: std::sync::OnceLock<Server> = std::sync::OnceLock::new();
    SERVER.get_or_init(Server::standalone)
}

/// A backend on [`standalone`], under the test's own key prefix.
pub fn standalone_storage(test: &str) -> KvrocksStorage {
    connect(settings(vec![standalone().node()], &prefix(test)))
}

/// Applies `ops`, which must succeed.
pub fn apply(storage: &KvrocksStorage, ops: Vec<Op>) {
    let result = smol::block_on(storage.apply(ops));
    assert!(result.is_ok(), "apply: {result:?}");
}

/// The stored session of `client`, which must exist.
pub fn load(storage: &KvrocksStorage, client: &str) -> StoredSession {
    smol::block_on(storage.load_session(client))
        .expect("load_session")
        .expect("session exists")
}

pub fn connect(settings: KvrocksSettings) -> KvrocksStorage {
    match smol::block_on(KvrocksStorage::connect(settings)) {
        Ok(storage) => storage,
        Err(error) => panic!("connect: {error}"),
    }
}

/// Every key under `prefix` on these servers but the layout version (which
/// connecting writes), with a readable dump of its content (sorted where
/// the type is unordered).
pub fn dump(servers: &[&Server], prefix: &str) -> BTreeMap<Vec<u8>, String> {
    let mut all = BTreeMap::new();
    let layout = format!("{prefix}:layout").into_bytes();
    for server in servers {
        let mut connection = server.connection();
        let keys: Vec<Vec<u8>> = redis::cmd("KEYS")
            .arg(format!("{prefix}:*"))
            .query(&mut connection)
            .expect("KEYS");
        // KEYS on a cluster node lists only its own keys.
        for key in keys.into_iter().filter(|key| *key != layout) {
            let kind: String = redis::cmd("TYPE")
                .arg(&key)
                .query(&mut connection)
                .expect("TYPE");
            let content = match kind.as_str() {
                "string" => {
                    let value: Vec<u8> =
                        redis::cmd("GET").arg(&key).query(&mut connection).unwrap();
                    format!("{value:?}")
                }
                "hash" => {
                    let value: BTreeMap<Vec<u8>, Vec<u8>> = redis::cmd("HGETALL")
                        .arg(&key)
                        .query(&mut connection)
                        .unwrap();
                    format!("{value:?}")
                }
                "set" => {
                    let mut value: Vec<Vec<u8>> = redis::cmd("SMEMBERS")
                        .arg(&key)
                        .query(&mut connection)
                        .unwrap();
                    value.sort();
                    format!("{value:?}")
                }
                "zset" => {
                    let value: Vec<(Vec<u8>, String)> = redis::cmd("ZRANGE")
                        .arg(&key)
                        .arg(0)
                        .arg(-1)
                        .arg("WITHSCORES")
                        .query(&mut connection)
                        .unwrap();
                    format!("{value:?}")
                }
                other => format!("<{other}>"),
            };
            all.insert(key, format!("{kind} {content}"));
        }
    }
    all
}

/// How many keys under `pattern` (e.g. `t-x:m:*`) these servers hold,
/// counted with SCAN.
pub fn count_keys(servers: &[&Server], pattern: &str) -> usize {
    let mut count = 0;
    for server in servers {
        let mut connection = server.connection();
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000)
                .query(&mut connection)
                .expect("SCAN");
            count += keys.len();
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    count
}

/// A proxy in front of a server that answers `-TRYAGAIN` instead of
/// forwarding, for the first `errors` data commands it sees (handshake
/// commands always pass), as a cluster does while a slot migrates.
pub struct TryAgainProxy {
    pub port: u16,
    pub injected: std::sync::Arc<AtomicUsize>,
}

impl TryAgainProxy {
    pub fn start(target: u16, errors: usize) -> TryAgainProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        let injected = std::sync::Arc::new(AtomicUsize::new(0));
        let counter = std::sync::Arc::clone(&injected);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let counter = std::sync::Arc::clone(&counter);
                std::thread::spawn(move || {
                    let _ = proxy_connection(client, target, errors, &counter);
                });
            }
        });
        TryAgainProxy { port, injected }
    }

    pub fn node(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

fn proxy_connection(
    client: std::net::TcpStream,
    target: u16,
    errors: usize,
    injected: &AtomicUsize,
) -> std::io::Result<()> {
    use std::io::Write;
    let server = std::net::TcpStream::connect(("127.0.0.1", target))?;
    let mut from_client = BufReader::new(client.try_clone()?);
    let mut to_client = client;
    let mut from_server = BufReader::new(server.try_clone()?);
    let mut to_server = server;
    loop {
        let (raw, name, key) = read_request(&mut from_client)?;
        let handshake = is_handshake(&name, &key);
        if !handshake
            && injected
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    (n < errors).then_some(n + 1)
                })
                .is_ok()
        {
            to_client.write_all(b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n")?;
            continue;
        }
        to_server.write_all(&raw)?;
        let mut reply = Vec::new();
        read_reply(&mut from_server, &mut reply)?;
        to_client.write_all(&reply)?;
    }
}

fn read_line(reader: &mut impl BufRead, out: &mut Vec<u8>) -> std::io::Result<String> {
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    out.extend_from_slice(&line);
    Ok(String::from_utf8_lossy(&line).trim_end().to_owned())
}

fn read_exact(reader: &mut impl BufRead, n: usize, out: &mut Vec<u8>) -> std::io::Result<Vec<u8>> {
    let mut data = vec![0; n];
    std::io::Read::read_exact(reader, &mut data)?;
    out.extend_from_slice(&data);
    Ok(data)
}

/// Commands the proxies always pass: the connection's handshake, and the
/// check of the stored layout's version when a backend connects, so that
/// what they count starts with the test's own commands.
fn is_handshake(name: &str, key: &str) -> bool {
    ["HELLO", "AUTH", "CLIENT", "SELECT", "PING"]
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
        || key.ends_with(":layout")
}

/// One request (an array of bulk strings): its bytes, its command name and
/// its first argument.
fn read_request(reader: &mut impl BufRead) -> std::io::Result<(Vec<u8>, String, String)> {
    let mut raw = Vec::new();
    let header = read_line(reader, &mut raw)?;
    let count: usize = header[1..]
        .parse()
        .map_err(|_| std::io::ErrorKind::InvalidData)?;
    let mut name = String::new();
    let mut key = String::new();
    for index in 0..count {
        let len = read_line(reader, &mut raw)?;
        let len: usize = len[1..]
            .parse()
            .map_err(|_| std::io::ErrorKind::InvalidData)?;
        let data = read_exact(reader, len + 2, &mut raw)?;
        match index {
            0 => name = String::from_utf8_lossy(&data[..len]).into_owned(),
            1 => key = String::from_utf8_lossy(&data[..len]).into_owned(),
            _ => {}
        }
    }
    Ok((raw, name, key))
}

/// One RESP2 reply, copied into `out`.
fn read_reply(reader: &mut impl BufRead, out: &mut Vec<u8>) -> std::io::Result<()> {
    let line = read_line(reader, out)?;
    let rest = &line[1..];
    match line.as_bytes().first() {
        Some(b'$') => {
            let len: i64 = rest.parse().map_err(|_| std::io::ErrorKind::InvalidData)?;
            if len >= 0 {
                read_exact(reader, usize::try_from(len).unwrap() + 2, out)?;
            }
        }
        Some(b'*') => {
            let count: i64 = rest.parse().map_err(|_| std::io::ErrorKind::InvalidData)?;
            for _ in 0..count.max(0) {
                read_reply(reader, out)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// A proxy that cuts the connection after a chosen number of data commands
/// (handshake commands always pass): the server has then run exactly a
/// prefix of what was sent, as when the network or the broker dies
/// mid-batch. When `dead`, later connections are closed at once too (the
/// batch is never finished) until `disarm`.
pub struct CutProxy {
    pub port: u16,
    state: std::sync::Arc<CutState>,
}

#[derive(Default)]
struct CutState {
    /// Data commands still forwarded before the cut; negative = never.
    remaining: std::sync::atomic::AtomicI64,
    dead_after_cut: std::sync::atomic::AtomicBool,
    dead: std::sync::atomic::AtomicBool,
    cuts: AtomicUsize,
}

impl CutProxy {
    pub fn start(target: u16) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        let state = std::sync::Arc::new(CutState::default());
        state.remaining.store(-1, Ordering::SeqCst);
        let shared = std::sync::Arc::clone(&state);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                if shared.dead.load(Ordering::SeqCst) {
                    continue;
                }
                let shared = std::sync::Arc::clone(&shared);
                std::thread::spawn(move || {
                    let _ = cut_connection(client, target, &shared);
                });
            }
        });
        CutProxy { port, state }
    }

    pub fn node(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Cuts after `commands` more data commands.
    pub fn arm(&self, commands: i64, dead_after_cut: bool) {
        self.state
            .dead_after_cut
            .store(dead_after_cut, Ordering::SeqCst);
        self.state.remaining.store(commands, Ordering::SeqCst);
    }

    pub fn disarm(&self) {
        self.state.remaining.store(-1, Ordering::SeqCst);
        self.state.dead.store(false, Ordering::SeqCst);
    }

    pub fn cuts(&self) -> usize {
        self.state.cuts.load(Ordering::SeqCst)
    }
}

fn cut_connection(
    client: std::net::TcpStream,
    target: u16,
    state: &CutState,
) -> std::io::Result<()> {
    use std::io::Write;
    let server = std::net::TcpStream::connect(("127.0.0.1", target))?;
    let mut from_client = BufReader::new(client.try_clone()?);
    let mut to_client = client;
    let mut from_server = BufReader::new(server.try_clone()?);
    let mut to_server = server;
    loop {
        let (raw, name, key) = read_request(&mut from_client)?;
        if state.dead.load(Ordering::SeqCst) {
            break;
        }
        let handshake = is_handshake(&name, &key);
        if !handshake {
            let before = state
                .remaining
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    (n > 0).then_some(n - 1)
                });
            if before == Err(0) {
                state.remaining.store(-1, Ordering::SeqCst);
                state.cuts.fetch_add(1, Ordering::SeqCst);
                if state.dead_after_cut.load(Ordering::SeqCst) {
                    state.dead.store(true, Ordering::SeqCst);
                }
                break;
            }
        }
        to_server.write_all(&raw)?;
        let mut reply = Vec::new();
        read_reply(&mut from_server, &mut reply)?;
        to_client.write_all(&reply)?;
    }
    let _ = to_client.shutdown(std::net::Shutdown::Both);
    Ok(())
}

/// `read_inbox` with a wait answers as soon as an entry comes, before the
/// wait is over, in one blocking read (`XREAD ... BLOCK`) rather than a
/// poll every 50 ms; and an empty inbox answers after the wait. `reader`
/// and `writer` are two connections to the same keys (so that the
/// reader's round trips are its own).
pub fn check_read_inbox_blocks(reader: &KvrocksStorage, writer: KvrocksStorage) {
    use easy_mqtt_core::cluster::{BusEntry, ClusterOp};
    use easy_mqtt_core::storage::{Op, Storage};
    let entry = BusEntry::RoutesChanged { node: "w".into() };
    let sent = entry.clone();
    let thread = std::thread::spawn(move || {
        sleep(Duration::from_millis(400));
        let op = Op::from(ClusterOp::Forward {
            node: "r".into(),
            entry: sent,
        });
        smol::block_on(writer.apply(vec![op])).unwrap();
    });
    let cluster = reader.cluster().unwrap();
    let (started, trips) = (Instant::now(), reader.round_trips());
    let read = smol::block_on(cluster.read_inbox("r", None, 10, Duration::from_secs(5))).unwrap();
    let (waited, trips) = (started.elapsed(), reader.round_trips() - trips);
    thread.join().unwrap();
    assert_eq!(read.len(), 1, "{read:?}");
    assert_eq!(read[0].1, entry);
    assert!(
        waited >= Duration::from_millis(350),
        "answered before the entry came: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(3),
        "waited too long: {waited:?}"
    );
    // Polling would have taken one round trip per 50 ms.
    assert!(trips <= 2, "{trips} round trips to wait {waited:?}");

    // An empty inbox answers after the wait, and a read that does not
    // wait at once; both read after the entry already read.
    let after = Some(read[0].0);
    let started = Instant::now();
    let none =
        smol::block_on(cluster.read_inbox("r", after, 10, Duration::from_millis(300))).unwrap();
    assert!(none.is_empty(), "{none:?}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    let none = smol::block_on(cluster.read_inbox("r", after, 10, Duration::ZERO)).unwrap();
    assert!(none.is_empty(), "{none:?}");
    // Read from the start, the entry is still there (until acknowledged).
    let again =
        smol::block_on(cluster.read_inbox("r", None, 10, Duration::from_millis(100))).unwrap();
    assert_eq!(again, read);
    smol::block_on(cluster.forget_member("r")).unwrap();
}
