//! Listeners.
//!
//! [`TcpListener`]: MQTT over TCP, with an accept loop that survives running
//! out of file descriptors; it hands out [`TcpConnection`]s. [`tls`]: certificates (PKCS#12 or PEM), the TLS
//! handshake and reloading. [`websocket`]: the WebSocket upgrade and a byte
//! stream over binary messages. The handshakes run in each connection's own
//! task, never in the accept loop.

mod stream;
mod tcp;
pub mod tls;
pub mod websocket;

pub use stream::TcpConnection;
pub use tcp::{AcceptStats, BACKOFF_MAX, BACKOFF_MIN, LISTEN_BACKLOG, TcpListener};
pub use tls::{ClientAuth, TlsAccepted, TlsContext, TlsError, TlsSettings, TlsSource};
pub use websocket::{WsAcceptError, WsSettings, WsStream};
