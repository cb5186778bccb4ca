//! Helpers of the TLS and WebSocket tests: the broker's log lines captured
//! in memory, free ports, Node.js scripts from `tests/js`, and a raw
//! WebSocket client (async-tungstenite's client side on smol).

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::client::IntoClientRequest;
use async_tungstenite::tungstenite::http::{HeaderValue, header};
use async_tungstenite::tungstenite::{Bytes, Error as WsError, Message};
use futures_util::StreamExt;

use crate::common::{PubOutput, WAIT, require_program, run_with_timeout};

// ---------------------------------------------------------------------------
// Logs
// ---------------------------------------------------------------------------

/// What the broker logged (at info and above, or `RUST_LOG`), for tests
/// that check a log line. Installed as the global subscriber by the first
/// test of the process that asks for it; every test here asks first.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

struct LogWriter(Logs);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.0.lock().unwrap().extend_from_slice(buf);
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = std::io::stderr().write_all(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    pub fn get() -> &'static Logs {
        static LOGS: OnceLock<Logs> = OnceLock::new();
        LOGS.get_or_init(|| {
            let logs = Logs::default();
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
            let writer = logs.clone();
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(false)
                .with_writer(move || LogWriter(writer.clone()))
                .try_init();
            logs
        })
    }

    /// Waits for a line that contains every one of `parts`; returns it.
    pub fn wait_line(&self, parts: &[&str]) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            {
                let text = self.0.lock().unwrap();
                let text = String::from_utf8_lossy(&text);
                if let Some(line) = text
                    .lines()
                    .find(|line| parts.iter().all(|part| line.contains(part)))
                {
                    return line.to_owned();
                }
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {parts:?} within {WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

// ---------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------

/// A port that was free a moment ago, for the keys where 0 means "off"
/// (`tls-port`, `wss-port`) rather than "any free port".
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

// ---------------------------------------------------------------------------
// Node.js
// ---------------------------------------------------------------------------

/// `tests/js`, with its `node_modules` installed (`npm ci`, which
/// scripts/test.sh runs); fails the test with what to do otherwise.
pub fn js_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/js");
    let dir = dir.canonicalize().unwrap_or(dir);
    require_program("node", "nodejs");
    for package in ["mqtt", "playwright-core"] {
        assert!(
            dir.join("node_modules").join(package).is_dir(),
            "the npm package `{package}` is missing in {}: run `npm ci` there \
             (scripts/test.sh does it)",
            dir.display()
        );
    }
    dir
}

/// Runs `node <script> <args>` in `tests/js` with a deadline; returns its
/// output whatever the exit status.
pub fn node(script: &str, args: &[&str], timeout: Duration) -> PubOutput {
    let dir = js_dir();
    let mut command = Command::new(require_program("node", "nodejs"));
    command.current_dir(&dir).arg(script).args(args);
    run_with_timeout(command, timeout)
}

/// Runs a Node script and fails the test unless it exits 0.
pub fn node_ok(script: &str, args: &[&str], timeout: Duration) -> String {
    let output = node(script, args, timeout);
    assert!(
        output.status.success(),
        "node {script} {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        output.stdout,
        output.stderr
    );
    output.stdout
}

// ---------------------------------------------------------------------------
// Raw WebSocket
// ---------------------------------------------------------------------------

pub type Ws = WebSocketStream<async_net::TcpStream>;

/// Opens a WebSocket to `ws://addr<path>` offering `protocols` (none when
/// empty). The error is tungstenite's (an HTTP refusal is `WsError::Http`).
pub async fn ws_connect(
    addr: SocketAddr,
    path: &str,
    protocols: &[&str],
) -> Result<(Ws, Option<String>), WsError> {
    let mut request = format!("ws://{addr}{path}").into_client_request()?;
    if !protocols.is_empty() {
        request.headers_mut().insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_str(&protocols.join(", ")).unwrap(),
        );
    }
    let stream = async_net::TcpStream::connect(addr).await.unwrap();
    let (ws, response) = async_tungstenite::client_async(request, stream).await?;
    let chosen = response
        .headers()
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .map(|v| v.to_str().unwrap().to_owned());
    Ok((ws, chosen))
}

/// The HTTP status of a refused upgrade; fails the test if it succeeded.
pub async fn ws_refusal(addr: SocketAddr, path: &str, protocols: &[&str]) -> u16 {
    match ws_connect(addr, path, protocols).await {
        Err(WsError::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok((_, chosen)) => panic!("upgrade accepted (subprotocol {chosen:?})"),
    }
}

/// The next message within [`WAIT`]; `None` when the stream ended.
pub async fn ws_next(ws: &mut Ws) -> Option<Message> {
    let next = futures_lite::future::or(async { Some(ws.next().await) }, async {
        async_io::Timer::after(WAIT).await;
        None
    })
    .await;
    match next {
        None => panic!("no WebSocket message within {WAIT:?}"),
        Some(None) | Some(Some(Err(_))) => None,
        Some(Some(Ok(message))) => Some(message),
    }
}

/// Reads binary messages until `len` bytes came; fails on anything else.
pub async fn ws_read_bytes(ws: &mut Ws, len: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    while bytes.len() < len {
        match ws_next(ws).await {
            Some(Message::Binary(data)) => bytes.extend_from_slice(&data),
            other => panic!("expected binary data, got {other:?} after {bytes:02x?}"),
        }
    }
    assert_eq!(bytes.len(), len, "more bytes than expected: {bytes:02x?}");
    bytes
}

/// Sends one binary message.
pub async fn ws_send(ws: &mut Ws, bytes: &[u8]) {
    ws.send(Message::Binary(Bytes::copy_from_slice(bytes)))
        .await
        .unwrap();
}
