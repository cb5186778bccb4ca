//! The MQTT listeners: plain TCP, TLS, WebSocket and WebSocket over TLS,
//! bound from the configuration, each with an accept loop that hands every
//! connection to its own task. That task runs the TLS handshake and the
//! WebSocket upgrade (bounded by `connect-timeout`), then the driver; a slow
//! or hostile client never holds up accepting.
//!
//! | key | speaks |
//! |---|---|
//! | `tcp-port` | MQTT, or MQTT over TLS when `is-open-ssl` |
//! | `websocket-port` | MQTT over WebSocket, over TLS (WSS) when `is-open-ssl` |
//! | `tls-port` (0 = off) | MQTT over TLS |
//! | `wss-port` (0 = off) | MQTT over WebSocket over TLS |

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_executor::Executor;
use easy_mqtt_transport::{
    ClientAuth, TcpListener, TlsContext, TlsError, TlsSettings, WsSettings, websocket,
};
use futures_io::{AsyncRead, AsyncWrite};

use crate::broker::StartError;
use crate::config::{Config, SslClientAuth};
use crate::driver::{self, ConnectionInfo, Transport};
use crate::node::Node;
use crate::runtime::SmolRuntime;

/// The TLS settings of the configuration; `None` when no listener speaks TLS.
pub fn tls_settings(config: &Config) -> Option<TlsSettings> {
    if !config.uses_tls() {
        return None;
    }
    let server = &config.mqtt.server;
    let path = |text: &str| (!text.is_empty()).then(|| PathBuf::from(text));
    Some(TlsSettings {
        certificate_path: PathBuf::from(&server.ssl_certificate_path),
        certificate_password: server.ssl_certificate_password.clone(),
        key_path: path(&server.ssl_key_path),
        client_ca_path: path(&server.ssl_client_ca_path),
        client_auth: match server.ssl_client_auth {
            SslClientAuth::None => ClientAuth::None,
            SslClientAuth::Optional => ClientAuth::Optional,
            SslClientAuth::Required => ClientAuth::Required,
        },
    })
}

/// The addresses the MQTT listeners are bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerAddrs {
    /// `tcp-port`: MQTT (over TLS when `is-open-ssl`).
    pub tcp: SocketAddr,
    /// `websocket-port`: WebSocket (WSS when `is-open-ssl`).
    pub websocket: SocketAddr,
    /// `tls-port`, when set.
    pub tls: Option<SocketAddr>,
    /// `wss-port`, when set.
    pub wss: Option<SocketAddr>,
}

/// The bound listeners, their accept loops (and the certificate watch) in
/// one task, and the TLS context to reload.
pub struct Listeners {
    pub addrs: ListenerAddrs,
    pub tls: Option<Arc<TlsContext>>,
    pub task: async_executor::Task<()>,
}

/// What every connection task needs.
struct Shared {
    node: Arc<Node<SmolRuntime>>,
    executor: Arc<Executor<'static>>,
    tls: Option<Arc<TlsContext>>,
    ws: WsSettings,
    handshake_timeout: Duration,
}

struct Bound {
    listener: TcpListener,
    transport: Transport,
}

fn describe(transport: Transport) -> &'static str {
    match transport {
        Transport::Tcp => "MQTT over TCP",
        Transport::Tls => "MQTT over TLS",
        Transport::WebSocket => "MQTT over WebSocket",
        Transport::WebSocketTls => "MQTT over WebSocket over TLS",
    }
}

async fn bind(
    key: &'static str,
    addr: SocketAddr,
    transport: Transport,
) -> Result<(Bound, SocketAddr), StartError> {
    let failed = |source| StartError::Listen {
        what: describe(transport),
        key,
        addr,
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(failed)?;
    let local = listener.local_addr().map_err(failed)?;
    Ok((
        Bound {
            listener,
            transport,
        },
        local,
    ))
}

/// Loads the certificates (when a listener speaks TLS), binds every MQTT
/// listener and starts accepting.
pub async fn start(
    config: &Config,
    node: &Arc<Node<SmolRuntime>>,
    executor: &Arc<Executor<'static>>,
) -> Result<Listeners, StartError> {
    let server = &config.mqtt.server;
    let tls = match tls_settings(config) {
        Some(settings) => {
            let context = smol::unblock(move || TlsContext::load(settings)).await?;
            Some(Arc::new(context))
        }
        None => None,
    };
    let (tcp_transport, ws_transport) = if server.is_open_ssl {
        (Transport::Tls, Transport::WebSocketTls)
    } else {
        (Transport::Tcp, Transport::WebSocket)
    };
    let mut bound = Vec::new();
    let (listener, tcp) = bind(
        "mqtt.server.tcp-port",
        config.tcp_bind_addr(),
        tcp_transport,
    )
    .await
    .map_err(|err| match err {
        // The TCP port keeps its own error, as before TLS.
        StartError::Listen { addr, source, .. } if tcp_transport == Transport::Tcp => {
            StartError::Bind { addr, source }
        }
        other => other,
    })?;
    bound.push(listener);
    let (listener, websocket) = bind(
        "mqtt.server.websocket-port",
        config.websocket_bind_addr(),
        ws_transport,
    )
    .await?;
    bound.push(listener);
    let extra = |port: u16| (port != 0).then(|| SocketAddr::new(server.host, port));
    let tls_addr = match extra(server.tls_port) {
        Some(addr) => {
            let (listener, local) = bind("mqtt.server.tls-port", addr, Transport::Tls).await?;
            bound.push(listener);
            Some(local)
        }
        None => None,
    };
    let wss_addr = match extra(server.wss_port) {
        Some(addr) => {
            let (listener, local) =
                bind("mqtt.server.wss-port", addr, Transport::WebSocketTls).await?;
            bound.push(listener);
            Some(local)
        }
        None => None,
    };
    let addrs = ListenerAddrs {
        tcp,
        websocket,
        tls: tls_addr,
        wss: wss_addr,
    };
    for Bound {
        listener,
        transport,
    } in &bound
    {
        let addr = listener.local_addr().ok();
        match transport {
            Transport::WebSocket | Transport::WebSocketTls => tracing::info!(
                node = %node.config().node_id,
                addr = ?addr,
                path = %server.websocket_path,
                "listening for {}",
                describe(*transport)
            ),
            _ => tracing::info!(
                node = %node.config().node_id,
                addr = ?addr,
                storage = node.storage().name(),
                "listening for {}",
                describe(*transport)
            ),
        }
    }

    let shared = Arc::new(Shared {
        node: node.clone(),
        executor: executor.clone(),
        tls: tls.clone(),
        ws: WsSettings::new(
            server.websocket_path.clone(),
            server.max_packet_size as usize,
        ),
        handshake_timeout: Duration::from_secs(u64::from(server.connect_timeout)),
    });
    let mut tasks: Vec<async_executor::Task<()>> = bound
        .into_iter()
        .map(|bound| executor.spawn(accept_loop(bound, shared.clone())))
        .collect();
    if let Some(context) = &tls {
        let interval = server.ssl_reload_interval;
        if interval > 0 {
            let watch = context
                .clone()
                .watch(Duration::from_secs(u64::from(interval)));
            tasks.push(executor.spawn(watch));
        }
    }
    // One task owns the others: cancelling it drops (and so cancels) them.
    let task = executor.spawn(async move {
        for task in tasks {
            task.await;
        }
    });
    Ok(Listeners { addrs, tls, task })
}

async fn accept_loop(bound: Bound, shared: Arc<Shared>) {
    let Bound {
        listener,
        transport,
    } = bound;
    loop {
        let (stream, peer) = listener.accept().await;
        if shared.node.is_shutting_down() {
            break;
        }
        // A plain TCP connection's task is the driver alone: an async state
        // machine is as large as its largest state, and the TLS and
        // WebSocket handshakes would make every idle connection pay for them.
        let task = match transport {
            Transport::Tcp => shared.executor.spawn(driver::serve(
                shared.node.clone(),
                stream,
                ConnectionInfo::tcp(peer),
            )),
            _ => shared
                .executor
                .spawn(serve(shared.clone(), stream, peer, transport)),
        };
        task.detach();
    }
}

/// Why a connection ended before its first byte of MQTT.
enum HandshakeError {
    TimedOut,
    Tls(io::Error),
    WebSocket(websocket::WsAcceptError),
}

/// Bounds a handshake by `timeout`.
async fn bounded<T>(
    timeout: Duration,
    handshake: impl std::future::Future<Output = Result<T, HandshakeError>>,
) -> Result<T, HandshakeError> {
    futures_lite::future::or(handshake, async {
        async_io::Timer::after(timeout).await;
        Err(HandshakeError::TimedOut)
    })
    .await
}

async fn tls_handshake<S>(
    shared: &Shared,
    stream: S,
) -> Result<easy_mqtt_transport::TlsAccepted<S>, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match &shared.tls {
        Some(context) => context.accept(stream).await.map_err(HandshakeError::Tls),
        // Not reachable: a TLS listener is only bound with a context.
        None => Err(HandshakeError::Tls(io::Error::other(
            "no TLS configuration",
        ))),
    }
}

/// One connection over TLS or WebSocket: its handshakes, then the MQTT
/// driver. Each handshake and each driver is boxed, so that the task holds
/// only the one in progress (a TLS handshake's state is kilobytes).
async fn serve(
    shared: Arc<Shared>,
    stream: easy_mqtt_transport::TcpConnection,
    peer: SocketAddr,
    transport: Transport,
) {
    let node = shared.node.clone();
    let info = |client_cert_cn: Option<String>| ConnectionInfo {
        peer: Some(peer),
        transport,
        client_cert_cn: client_cert_cn.map(String::into_boxed_str),
    };
    let timeout = shared.handshake_timeout;
    let result = match transport {
        Transport::Tcp => {
            Box::pin(driver::serve(node, stream, info(None))).await;
            return;
        }
        Transport::Tls => match Box::pin(bounded(timeout, tls_handshake(&shared, stream))).await {
            Ok(tls) => {
                log_client_cert(peer, transport, &tls.client_cert_cn);
                Box::pin(driver::serve(node, tls.stream, info(tls.client_cert_cn))).await;
                return;
            }
            Err(err) => err,
        },
        Transport::WebSocket => {
            let upgrade = async {
                websocket::accept(stream, &shared.ws)
                    .await
                    .map_err(HandshakeError::WebSocket)
            };
            match Box::pin(bounded(timeout, upgrade)).await {
                Ok(ws) => {
                    Box::pin(driver::serve(node, ws, info(None))).await;
                    return;
                }
                Err(err) => err,
            }
        }
        Transport::WebSocketTls => {
            let upgrade = async {
                let tls = tls_handshake(&shared, stream).await?;
                let cn = tls.client_cert_cn;
                let ws = websocket::accept(tls.stream, &shared.ws)
                    .await
                    .map_err(HandshakeError::WebSocket)?;
                Ok((ws, cn))
            };
            match Box::pin(bounded(timeout, upgrade)).await {
                Ok((ws, cn)) => {
                    log_client_cert(peer, transport, &cn);
                    Box::pin(driver::serve(node, ws, info(cn))).await;
                    return;
                }
                Err(err) => err,
            }
        }
    };
    let transport = transport.as_str();
    match result {
        HandshakeError::TimedOut => tracing::debug!(
            %peer,
            transport,
            timeout_s = timeout.as_secs(),
            "handshake timed out (mqtt.server.connect-timeout); connection closed"
        ),
        HandshakeError::Tls(error) => {
            tracing::debug!(%peer, transport, %error, "TLS handshake failed; connection closed")
        }
        HandshakeError::WebSocket(error) => {
            tracing::debug!(%peer, transport, %error, "WebSocket upgrade failed; connection closed")
        }
    }
}

fn log_client_cert(peer: SocketAddr, transport: Transport, cn: &Option<String>) {
    if let Some(cn) = cn {
        tracing::debug!(%peer, transport = transport.as_str(), client_cert_cn = %cn, "TLS client certificate verified");
    }
}

/// Reloads the certificates now (SIGHUP, or [`Broker::reload_tls`](crate::broker::Broker::reload_tls)).
/// Logs the outcome; on error the previous certificate stays.
pub fn reload(context: &TlsContext) -> Result<(), TlsError> {
    match context.reload() {
        Ok(()) => {
            tracing::info!(
                certificate = %context.settings().certificate_path.display(),
                "TLS certificate reloaded; new connections use it"
            );
            Ok(())
        }
        Err(err) => {
            tracing::error!(error = %err, "TLS certificate reload failed; keeping the previous certificate");
            Err(err)
        }
    }
}
