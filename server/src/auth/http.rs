//! The HTTP authenticator: `POST <authentication-url>` per CONNECT.
//!
//! Calls share a bounded pool of keep-alive connections: at most
//! `max_connections` requests are in flight, each on its own connection,
//! and a connection that finished its request waits idle for the next one.
//! A connection is opened only when no idle one is left, so the pool never
//! holds more than `max_connections` sockets; CONNECTs beyond that wait
//! for a free connection, within their timeout. The timeout covers the
//! whole call: the wait for a connection, connecting (TLS included), the
//! request and the response body. A call that is abandoned (timeout, or
//! the MQTT connection went away) closes its HTTP connection, so a hung
//! service cannot make sockets pile up.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_executor::Executor;
use async_lock::Semaphore;
use bytes::Bytes;
use easy_mqtt_core::ConnectReturnCode;
use futures_io::{AsyncRead, AsyncWrite};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use smol_hyper::rt::FuturesIo;

use super::cache::AuthCache;
use super::{AuthDecision, AuthRequest, Authenticator};
use crate::sessions::lock;

/// Largest response body read; a longer one is an error (code 3).
const MAX_RESPONSE_BODY: usize = 64 * 1024;
/// Idle connections older than this are closed rather than reused: many
/// servers close idle keep-alive connections after a few seconds.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Failed calls are logged at warn at most this often.
const WARN_INTERVAL: Duration = Duration::from_secs(1);
/// Entries of the positive-answer cache at most.
pub const CACHE_MAX_ENTRIES: usize = 100_000;

/// Settings of [`HttpAuthenticator`] (from `mqtt.server.authentication-*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAuthConfig {
    /// `http://` or `https://` URL.
    pub url: String,
    /// Bound on one decision: wait for a connection, connect, request, response.
    pub timeout: Duration,
    /// Connections (and so concurrent requests) to the service at most.
    pub max_connections: usize,
    /// How long an acceptance is remembered; zero turns the cache off.
    pub cache_ttl: Duration,
    /// Extra trusted CA certificates (PEM) for an `https` URL, on top of
    /// the system's.
    pub ca_path: Option<PathBuf>,
}

/// Asks an HTTP service about each CONNECT (see the module documentation).
#[derive(Clone)]
pub struct HttpAuthenticator {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    timeout: Duration,
    pool: Pool,
    cache: Option<AuthCache>,
    last_warning: Mutex<Option<Instant>>,
    /// Failures logged at debug only since the last warning.
    suppressed: AtomicU64,
}

/// Where requests go, from the URL.
struct Target {
    host: String,
    port: u16,
    /// `Host` header: the URL's authority.
    host_header: HeaderValue,
    /// Request target: path and query.
    path: Uri,
    tls: Option<(futures_rustls::TlsConnector, ServerName<'static>)>,
}

impl HttpAuthenticator {
    /// Checks the URL and, for `https`, builds the trust store (the
    /// system's certificates plus `ca_path`). Connection tasks are spawned
    /// on `executor`.
    pub fn new(
        config: &HttpAuthConfig,
        executor: Arc<Executor<'static>>,
    ) -> Result<HttpAuthenticator, String> {
        let target = Target::parse(&config.url, config.ca_path.as_deref())?;
        let cache = (!config.cache_ttl.is_zero())
            .then(|| AuthCache::new(config.cache_ttl, CACHE_MAX_ENTRIES));
        let max_connections = config.max_connections.max(1);
        Ok(HttpAuthenticator {
            inner: Arc::new(Inner {
                url: config.url.clone(),
                timeout: config.timeout,
                pool: Pool {
                    target,
                    permits: Semaphore::new(max_connections),
                    idle: Mutex::new(Vec::new()),
                    executor,
                },
                cache,
                last_warning: Mutex::new(None),
                suppressed: AtomicU64::new(0),
            }),
        })
    }
}

impl Authenticator for HttpAuthenticator {
    fn authenticate(
        &self,
        request: AuthRequest,
    ) -> std::pin::Pin<Box<dyn Future<Output = AuthDecision> + Send>> {
        let inner = self.inner.clone();
        Box::pin(async move { inner.decide(request).await })
    }
}

impl Inner {
    async fn decide(&self, request: AuthRequest) -> AuthDecision {
        let client_id = request.client_id.as_str();
        if let Some(cache) = &self.cache
            && cache.hit(&request, Instant::now())
        {
            tracing::debug!(client_id, "authentication accepted (cached)");
            return AuthDecision::Accept;
        }
        let body = Bytes::from(request.body());
        let timeout = self.timeout;
        let call = self.pool.post(body);
        let expired = async {
            async_io::Timer::after(timeout).await;
            Err(format!("no answer within {} ms", timeout.as_millis()))
        };
        let answer = futures_lite::future::or(call, expired).await;
        let decision = match answer {
            Ok((status, body)) if status.is_success() => {
                if body.trim_ascii() == b"true" {
                    tracing::debug!(client_id, "authentication accepted");
                    AuthDecision::Accept
                } else {
                    tracing::info!(
                        client_id,
                        username = request.username.as_deref(),
                        "authentication refused: the service did not answer `true`"
                    );
                    AuthDecision::Refuse(ConnectReturnCode::BadUserNameOrPassword)
                }
            }
            Ok((status, _)) => {
                self.unavailable(client_id, &format!("the service answered HTTP {status}"));
                AuthDecision::Refuse(ConnectReturnCode::ServerUnavailable)
            }
            Err(reason) => {
                self.unavailable(client_id, &reason);
                AuthDecision::Refuse(ConnectReturnCode::ServerUnavailable)
            }
        };
        if decision == AuthDecision::Accept
            && let Some(cache) = &self.cache
        {
            cache.insert(&request, Instant::now());
        }
        decision
    }

    /// Logs a failed call: at warn at most once per [`WARN_INTERVAL`] (with
    /// how many were not logged since), at debug otherwise, so that a
    /// service outage while thousands of devices reconnect does not flood
    /// the log.
    fn unavailable(&self, client_id: &str, reason: &str) {
        let now = Instant::now();
        let mut last = lock(&self.last_warning);
        if last.is_some_and(|at| now.duration_since(at) < WARN_INTERVAL) {
            drop(last);
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(client_id, url = %self.url, "authentication unavailable: {reason}");
            return;
        }
        *last = Some(now);
        drop(last);
        let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
        tracing::warn!(
            client_id,
            url = %self.url,
            suppressed,
            "authentication unavailable (CONNACK 3): {reason}"
        );
    }
}

impl Target {
    fn parse(url: &str, ca_path: Option<&std::path::Path>) -> Result<Target, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("authentication-url {url:?} is not a valid URL: {e}"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => {
                return Err(format!(
                    "authentication-url {url:?} must start with http:// or https://"
                ));
            }
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("authentication-url {url:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "authentication-url {url:?}: credentials in the URL are not supported"
            ));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err(format!("authentication-url {url:?} has no host"));
        }
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path: Uri = uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()
            .map_err(|e| format!("authentication-url {url:?}: invalid path: {e}"))?;
        let host_header = HeaderValue::from_str(authority.as_str())
            .map_err(|e| format!("authentication-url {url:?}: invalid host: {e}"))?;
        let tls = if https {
            let name = ServerName::try_from(host.clone())
                .map_err(|e| format!("authentication-url {url:?}: invalid host name: {e}"))?;
            Some((
                futures_rustls::TlsConnector::from(tls_config(ca_path)?),
                name,
            ))
        } else {
            None
        };
        Ok(Target {
            host,
            port,
            host_header,
            path,
            tls,
        })
    }
}

/// The TLS client settings: rustls on `ring`, trusting the system's CA
/// certificates (read by `rustls-native-certs` from the usual places, such
/// as /etc/ssl/certs, so that a CA installed on the host is trusted as by
/// every other program there) and the PEM certificates of `ca_path`.
fn tls_config(ca_path: Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(native.certs);
    if !native.errors.is_empty() {
        tracing::debug!(errors = ?native.errors, "some system CA certificates could not be read");
    }
    if let Some(path) = ca_path {
        let shown = path.display();
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("authentication-ca-path {shown}: {e}"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("authentication-ca-path {shown}: {e}"))?;
        if certs.is_empty() {
            return Err(format!(
                "authentication-ca-path {shown}: no PEM certificate in the file"
            ));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("authentication-ca-path {shown}: {e}"))?;
        }
    } else if added == 0 {
        tracing::warn!(
            "no system CA certificates found; https authentication will fail unless \
             mqtt.server.authentication-ca-path names the service's CA"
        );
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS settings: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// One HTTP connection: the request handle and the task that drives the
/// socket. Dropping it cancels the task, which closes the socket.
struct PooledConn {
    sender: SendRequest<Full<Bytes>>,
    _task: async_executor::Task<()>,
    idle_since: Instant,
}

struct Pool {
    target: Target,
    /// One permit per request in flight (and so per connection in use).
    permits: Semaphore,
    idle: Mutex<Vec<PooledConn>>,
    executor: Arc<Executor<'static>>,
}

impl Pool {
    /// POSTs `body`; the response's status and body.
    async fn post(&self, body: Bytes) -> Result<(StatusCode, Bytes), String> {
        let _permit = self.permits.acquire().await;
        let mut reused = self.take_idle();
        loop {
            let was_reused = reused.is_some();
            let mut conn = match reused.take() {
                Some(conn) => conn,
                None => self.connect().await?,
            };
            let response = match self.send(&mut conn, body.clone()).await {
                Ok(response) => response,
                // The service may have closed an idle connection just as
                // we used it: try once more on a fresh one.
                Err(error) if was_reused => {
                    tracing::debug!(%error, "reused authentication connection failed; reconnecting");
                    continue;
                }
                Err(error) => return Err(format!("request failed: {error}")),
            };
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BODY)
                .collect()
                .await
                .map_err(|e| format!("reading the answer failed: {e}"))?
                .to_bytes();
            conn.idle_since = Instant::now();
            self.put_idle(conn);
            return Ok((status, body));
        }
    }

    async fn send(
        &self,
        conn: &mut PooledConn,
        body: Bytes,
    ) -> hyper::Result<hyper::Response<hyper::body::Incoming>> {
        conn.sender.ready().await?;
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.target.path.clone();
        let headers = request.headers_mut();
        headers.insert(header::HOST, self.target.host_header.clone());
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, text/plain, */*"),
        );
        headers.insert(
            header::USER_AGENT,
            HeaderValue::from_static(concat!("easy-mqtt/", env!("CARGO_PKG_VERSION"))),
        );
        conn.sender.send_request(request).await
    }

    fn take_idle(&self) -> Option<PooledConn> {
        let mut idle = lock(&self.idle);
        while let Some(conn) = idle.pop() {
            if !conn.sender.is_closed() && conn.idle_since.elapsed() < IDLE_TIMEOUT {
                return Some(conn);
            }
        }
        None
    }

    fn put_idle(&self, conn: PooledConn) {
        if !conn.sender.is_closed() {
            lock(&self.idle).push(conn);
        }
    }

    async fn connect(&self) -> Result<PooledConn, String> {
        let target = &self.target;
        let address = format!("{}:{}", target.host, target.port);
        let tcp = async_net::TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|e| format!("cannot connect to {address}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = match &target.tls {
            None => Box::new(tcp),
            Some((connector, name)) => Box::new(
                connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| format!("TLS with {address} failed: {e}"))?,
            ),
        };
        let (sender, connection) = hyper::client::conn::http1::Builder::new()
            .handshake::<_, Full<Bytes>>(FuturesIo::new(io))
            .await
            .map_err(|e| format!("HTTP with {address} failed: {e}"))?;
        let task = self.executor.spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "authentication connection ended");
            }
        });
        Ok(PooledConn {
            sender,
            _task: task,
            idle_since: Instant::now(),
        })
    }
}
