//! The HTTP API (`mqtt.server.api-port`): JSON under `/api/v1`, plus
//! `GET /health` and `GET /metrics` (Prometheus text).
//!
//! hyper 1.x HTTP/1.1 over smol. Its own port, bound to `api-host`
//! (loopback by default). When `api-token` or `api-username` and
//! `api-password` are set, every request but `/health` must carry them
//! (`Authorization: Bearer` or `Basic`, compared in constant time).
//! Requests that carry an `Origin` header (browsers, cross-site) are
//! refused, and bodies must be `application/json`, so a web page cannot
//! drive the API through a browser on the same host. Limits: request body
//! (`api-max-body-size`), header and body read time (`api-request-timeout`),
//! concurrent connections ([`MAX_CONNECTIONS`]). Every error is a 4xx JSON
//! body naming the problem; handlers never panic on input.
//!
//! `docs/openapi.json` describes all of it and is served at
//! `/api/v1/openapi.json`.

mod aliyun;
mod error;
mod handlers;
mod stats;
mod util;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_executor::{Executor, Task};
use async_lock::Semaphore;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap};
use hyper::{Method, Request, Response, StatusCode};
use smol_hyper::rt::{FuturesIo, SmolTimer};

use crate::config::Config;
use crate::node::Node;
use crate::runtime::Runtime;
use error::{ApiError, json_response, response};
use stats::Rates;
use util::{Query, percent_decode, secret_eq};

/// The OpenAPI 3 document of this API (`docs/openapi.json`).
pub const OPENAPI: &str = include_str!("../../../docs/openapi.json");

/// API connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 256;
/// Request line and headers, bytes at most.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Settings of the API server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    pub addr: SocketAddr,
    /// `api-token`: `Authorization: Bearer <token>` accepted.
    pub token: Option<String>,
    /// `api-username` / `api-password`: `Authorization: Basic` accepted.
    pub basic: Option<(String, String)>,
    pub max_body_size: usize,
    /// Bound on reading a request's headers, and on reading its body.
    pub request_timeout: Duration,
}

impl ApiConfig {
    pub fn from_config(config: &Config) -> ApiConfig {
        let server = &config.mqtt.server;
        let non_empty = |s: &String| (!s.is_empty()).then(|| s.clone());
        ApiConfig {
            addr: SocketAddr::new(server.api_host, server.api_port),
            token: non_empty(&server.api_token),
            basic: non_empty(&server.api_username).map(|u| (u, server.api_password.clone())),
            max_body_size: server.api_max_body_size as usize,
            request_timeout: Duration::from_secs(u64::from(server.api_request_timeout)),
        }
    }

    fn challenge(&self) -> &'static str {
        match (&self.token, &self.basic) {
            (Some(_), Some(_)) => "Bearer realm=\"easy-mqtt\", Basic realm=\"easy-mqtt\"",
            (None, Some(_)) => "Basic realm=\"easy-mqtt\"",
            _ => "Bearer realm=\"easy-mqtt\"",
        }
    }
}

/// The running API server; stopped by [`ApiServer::shutdown`] or on drop.
pub struct ApiServer {
    addr: SocketAddr,
    tasks: Vec<Task<()>>,
    closing: Arc<Closing>,
}

/// Tells open API connections to stop.
#[derive(Default)]
struct Closing {
    closed: AtomicBool,
    event: event_listener::Event,
}

impl Closing {
    async fn wait(&self) {
        loop {
            let listener = self.event.listen();
            if self.closed.load(Ordering::Acquire) {
                return;
            }
            listener.await;
        }
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.event.notify(usize::MAX);
    }
}

struct State<R: Runtime> {
    node: Arc<Node<R>>,
    config: ApiConfig,
    rates: Rates,
    started: Instant,
}

impl ApiServer {
    /// Binds `config.addr` and serves on `executor`.
    pub async fn start<R: Runtime>(
        node: Arc<Node<R>>,
        config: ApiConfig,
        executor: Arc<Executor<'static>>,
    ) -> std::io::Result<ApiServer> {
        let listener = easy_mqtt_transport::TcpListener::bind(config.addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            started: node.now(),
            node,
            config,
            rates: Rates::default(),
        });
        // The first sample: rates count from the start.
        state.rates.record(state.started, &state.node.stats());
        if !addr.ip().is_loopback() && state.config.token.is_none() && state.config.basic.is_none()
        {
            tracing::warn!(
                %addr,
                "the HTTP API is reachable beyond this host without credentials; \
                 set mqtt.server.api-token (or api-username and api-password)"
            );
        }
        let closing = Arc::new(Closing::default());
        let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let accept = {
            let state = state.clone();
            let closing = closing.clone();
            let executor = executor.clone();
            executor.clone().spawn(async move {
                loop {
                    let permit = permits.acquire_arc().await;
                    let (stream, _) = listener.accept().await;
                    let connection = serve_connection(state.clone(), stream);
                    let closing = closing.clone();
                    executor
                        .spawn(async move {
                            futures_lite::future::or(connection, closing.wait()).await;
                            drop(permit);
                        })
                        .detach();
                }
            })
        };
        let sampler = executor.spawn(async move {
            loop {
                async_io::Timer::after(stats::SAMPLE_INTERVAL).await;
                state.rates.record(state.node.now(), &state.node.stats());
            }
        });
        tracing::info!(%addr, "HTTP API listening");
        Ok(ApiServer {
            addr,
            tasks: vec![accept, sampler],
            closing,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and closes open API connections.
    pub async fn shutdown(mut self) {
        for task in self.tasks.drain(..) {
            task.cancel().await;
        }
        self.closing.close();
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.closing.close();
    }
}

async fn serve_connection<R: Runtime>(
    state: Arc<State<R>>,
    stream: easy_mqtt_transport::TcpConnection,
) {
    let timeout = state.config.request_timeout;
    let service = hyper::service::service_fn(move |request| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(state.handle(request).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(SmolTimer::new())
        .header_read_timeout(timeout)
        .keep_alive(true)
        .max_header_size(MAX_HEADER_BYTES)
        .max_buf_size(MAX_HEADER_BYTES);
    if let Err(error) = builder
        .serve_connection(FuturesIo::new(stream), service)
        .await
    {
        tracing::debug!(%error, "API connection ended");
    }
}

/// The endpoints, by path; `{}` is a client id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Metrics,
    OpenApi,
    Stats,
    Publish,
    PublishBatch,
    Clients,
    Client,
    ClientSubscriptions,
    ClientKick,
    ClientPublish,
    Retained,
    RetainedMessage,
    Cluster,
}

impl Route {
    /// The route of a path and the client id in it, if any.
    fn find(path: &str) -> Option<(Route, Option<&str>)> {
        let rest = path.strip_prefix("/")?;
        if rest == "metrics" {
            return Some((Route::Metrics, None));
        }
        let rest = rest.strip_prefix("api/v1/")?;
        let segments: Vec<&str> = rest.split('/').collect();
        let route = match segments.as_slice() {
            ["openapi.json"] => Route::OpenApi,
            ["stats"] => Route::Stats,
            ["cluster"] => Route::Cluster,
            ["publish"] => Route::Publish,
            ["publish", "batch"] => Route::PublishBatch,
            ["clients"] => Route::Clients,
            ["clients", id] => return Some((Route::Client, Some(id))),
            ["clients", id, "subscriptions"] => {
                return Some((Route::ClientSubscriptions, Some(id)));
            }
            ["clients", id, "kick"] => return Some((Route::ClientKick, Some(id))),
            ["clients", id, "publish"] => return Some((Route::ClientPublish, Some(id))),
            ["retained"] => Route::Retained,
            ["retained", "message"] => Route::RetainedMessage,
            _ => return None,
        };
        Some((route, None))
    }

    /// The methods the route answers, for `Allow`.
    fn allow(self) -> &'static str {
        match self {
            Route::Publish | Route::PublishBatch | Route::ClientKick | Route::ClientPublish => {
                "POST"
            }
            Route::RetainedMessage => "GET, DELETE",
            _ => "GET",
        }
    }

    fn allows(self, method: &Method) -> bool {
        match self.allow() {
            "POST" => method == Method::POST,
            "GET, DELETE" => method == Method::GET || method == Method::DELETE,
            _ => method == Method::GET,
        }
    }

    /// The query parameters it takes.
    fn parameters(self) -> &'static [&'static str] {
        match self {
            Route::Clients => &["prefix", "after", "limit", "scope"],
            Route::Retained => &["after", "limit"],
            Route::RetainedMessage => &["topic"],
            _ => &[],
        }
    }
}

impl<R: Runtime> State<R> {
    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let timeout = self.config.request_timeout;
        let answer = futures_lite::future::or(self.route(request), async {
            async_io::Timer::after(timeout).await;
            Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request-timeout",
                format!(
                    "the request was not received within {} s",
                    timeout.as_secs()
                ),
            ))
        })
        .await;
        answer.unwrap_or_else(ApiError::into_response)
    }

    async fn route(&self, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, ApiError> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        if path == "/health" {
            if method != Method::GET {
                return Err(ApiError::method_not_allowed(&method, &path, "GET"));
            }
            Query::parse(request.uri().query(), &[])?;
            return Ok(self.health());
        }
        if request.headers().contains_key(header::ORIGIN) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "cross-origin",
                "requests from web pages (with an Origin header) are refused",
            ));
        }
        self.check_auth(request.headers())?;
        if let Some(rest) = path.strip_prefix("/api/v1/aliyun/") {
            return self.aliyun(&method, rest, request).await;
        }
        let Some((route, client_id)) = Route::find(&path) else {
            return Err(ApiError::not_found(
                "no-such-endpoint",
                format!("no endpoint at {path}; see /api/v1/openapi.json"),
            ));
        };
        if !route.allows(&method) {
            return Err(ApiError::method_not_allowed(&method, &path, route.allow()));
        }
        let query = Query::parse(request.uri().query(), route.parameters())?;
        let client_id = client_id
            .map(|id| percent_decode(id, false, "client id in the path"))
            .transpose()?;
        let client_id = client_id.as_deref().unwrap_or_default();
        let node = &*self.node;
        let value = match route {
            Route::Metrics => return Ok(self.metrics()),
            Route::OpenApi => {
                return Ok(response(
                    StatusCode::OK,
                    "application/json",
                    Bytes::from_static(OPENAPI.as_bytes()),
                ));
            }
            Route::Stats => self.stats(),
            Route::Publish => handlers::publish(node, &self.json_body(request).await?).await?,
            Route::PublishBatch => {
                handlers::publish_batch(node, &self.json_body(request).await?).await?
            }
            Route::ClientPublish => {
                let body = self.json_body(request).await?;
                handlers::publish_to_client(node, client_id, &body).await?
            }
            Route::Clients => handlers::list_clients(node, &query).await?,
            Route::Client => handlers::get_client(node, client_id).await?,
            Route::ClientSubscriptions => handlers::client_subscriptions(node, client_id)?,
            Route::ClientKick => handlers::kick(&self.node, client_id).await?,
            Route::Cluster => handlers::cluster(node).await?,
            Route::Retained => handlers::list_retained(node, &query)?,
            Route::RetainedMessage if method == Method::DELETE => {
                handlers::delete_retained(node, &query).await?
            }
            Route::RetainedMessage => handlers::get_retained(node, &query)?,
        };
        Ok(json_response(StatusCode::OK, &value))
    }

    /// Checks the credentials when the API has any configured.
    fn check_auth(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let config = &self.config;
        if config.token.is_none() && config.basic.is_none() {
            return Ok(());
        }
        let Some(given) = headers.get(header::AUTHORIZATION) else {
            return Err(ApiError::unauthorized(
                "credentials required: send an Authorization header (Bearer token or Basic)",
                config.challenge(),
            ));
        };
        let given = given.as_bytes();
        let split = given.iter().position(|b| *b == b' ').unwrap_or(given.len());
        let (scheme, credentials) = given.split_at(split);
        let credentials = credentials.trim_ascii();
        let valid = if scheme.eq_ignore_ascii_case(b"bearer") {
            config
                .token
                .as_ref()
                .is_some_and(|token| secret_eq(credentials, token.as_bytes()))
        } else if scheme.eq_ignore_ascii_case(b"basic") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(credentials)
                .unwrap_or_default();
            config.basic.as_ref().is_some_and(|(user, password)| {
                secret_eq(&decoded, format!("{user}:{password}").as_bytes())
            })
        } else {
            false
        };
        if valid {
            Ok(())
        } else {
            Err(ApiError::unauthorized(
                "invalid credentials in the Authorization header",
                config.challenge(),
            ))
        }
    }

    /// Reads a JSON body within the size limit.
    async fn json_body(&self, request: Request<Incoming>) -> Result<Bytes, ApiError> {
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let essence = content_type.split(';').next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case("application/json") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                format!(
                    "the body must be JSON with Content-Type: application/json, got {content_type:?}"
                ),
            ));
        }
        let max = self.config.max_body_size;
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                format!("the request body is larger than {max} bytes (api-max-body-size)"),
            )
        };
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|length| length > max as u64) {
            return Err(too_large());
        }
        match Limited::new(request.into_body(), max).collect().await {
            Ok(body) => Ok(body.to_bytes()),
            Err(error) if error.is::<LengthLimitError>() => Err(too_large()),
            Err(error) => Err(ApiError::bad_request(
                "invalid-body",
                format!("cannot read the request body: {error}"),
            )),
        }
    }

    fn health(&self) -> Response<Full<Bytes>> {
        if self.node.is_shutting_down() {
            return json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({ "status": "shutting-down" }),
            );
        }
        json_response(StatusCode::OK, &serde_json::json!({ "status": "ok" }))
    }

    fn stats(&self) -> serde_json::Value {
        let now = self.node.now();
        let stats = self.node.stats();
        let rates = self.rates.per_second(now, &stats);
        let uptime = now.saturating_duration_since(self.started);
        stats::stats_json(
            &stats,
            rates,
            &self.node.metrics,
            self.cluster_stats(),
            uptime,
        )
    }

    fn cluster_stats(&self) -> stats::ClusterStats {
        stats::ClusterStats {
            live_nodes: self.node.live_nodes(),
            bus_dropped: self.node.bus_dropped(),
        }
    }

    fn metrics(&self) -> Response<Full<Bytes>> {
        let now = self.node.now();
        let stats = self.node.stats();
        let rates = self.rates.per_second(now, &stats);
        let uptime = now.saturating_duration_since(self.started);
        let text = stats::prometheus(
            &stats,
            rates,
            &self.node.metrics,
            self.cluster_stats(),
            uptime,
        );
        response(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            Bytes::from(text),
        )
    }
}
