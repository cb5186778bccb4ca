//! The configuration file (`conf/conf.yml`), compatible with the original
//! Easy MQTT: same keys, same defaults, plus our own keys under `mqtt.server`.
//!
//! Every section and every key is optional; a key that is missing, or present
//! with no value (`password:`), takes its default. Unknown keys are errors.
//! [`Config::from_yaml_str`] and [`Config::load`] parse and then validate;
//! their errors name the key path (`mqtt.server.tcp-port`) and, for values
//! from a text, the line and column. `docs/configuration.md` lists every key.
//!
//! Parsing goes through private "raw" structs whose fields are
//! `Option<Spanned<T>>`: `None` for a missing or empty key, and the location
//! of every value that was given, so that the rules checked after parsing can
//! point at the line too.

mod error;
mod nodes;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

pub use error::{ConfigError, Position};
use nodes::NodeList;

/// Where each value given in the text was: key path → location.
type Spans = BTreeMap<String, Location>;

/// `section` + `field_name` → `section.field-name`.
fn key_of(section: &str, field: &str) -> String {
    format!("{section}.{}", field.replace('_', "-"))
}

/// The type a field is read as: its own type, or the `as` type converted
/// with `From`.
macro_rules! raw_type {
    ($ty:ty) => {
        $ty
    };
    ($ty:ty, $via:ty) => {
        $via
    };
}

/// Declares a configuration section: the public struct (with its defaults)
/// and the private raw struct it is parsed through.
macro_rules! section {
    (
        $(#[$meta:meta])*
        pub struct $name:ident in $raw:ident at $key:literal {
            $(
                $(#[$fmeta:meta])*
                pub $field:ident: $ty:ty $(as $via:ty)? = $default:expr,
            )*
        }
        $(
            sections {
                $( $(#[$smeta:meta])* pub $sfield:ident: $sty:ident in $sraw:ident, )*
            }
        )?
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )*
            $($( $(#[$smeta])* pub $sfield: $sty, )*)?
        }

        impl Default for $name {
            fn default() -> Self {
                Self {
                    $( $field: $default, )*
                    $($( $sfield: <$sty>::default(), )*)?
                }
            }
        }

        #[derive(Default, Deserialize)]
        #[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
        struct $raw {
            $( $field: Option<Spanned<raw_type!($ty $(, $via)?)>>, )*
            $($( $sfield: Option<$sraw>, )*)?
        }

        impl $raw {
            /// The section with defaults for what was not given; records
            /// where each given value was.
            fn resolve(self, spans: &mut Spans) -> $name {
                #[allow(unused_mut)]
                let mut out = <$name>::default();
                $(
                    if let Some(given) = self.$field {
                        spans.insert(key_of($key, stringify!($field)), given.referenced);
                        out.$field = given.value.into();
                    }
                )*
                $($(
                    if let Some(given) = self.$sfield {
                        out.$sfield = given.resolve(spans);
                    }
                )*)?
                out
            }
        }
    };
}

section! {
    /// The whole configuration file: everything is under the root key `mqtt`.
    pub struct Config in RawConfig at "" {}
    sections {
        /// `mqtt`.
        pub mqtt: MqttConfig in RawMqtt,
    }
}

section! {
    /// `mqtt`: the broker (`server`) and its optional Kvrocks storage (`kvrocks`).
    pub struct MqttConfig in RawMqtt at "mqtt" {}
    sections {
        /// `mqtt.server`.
        pub server: ServerConfig in RawServer,
        /// `mqtt.kvrocks`.
        pub kvrocks: KvrocksConfig in RawKvrocks,
    }
}

section! {
    /// `mqtt.server`: listeners, limits and runtime. The first eleven keys are
    /// the original's; the rest are ours.
    pub struct ServerConfig in RawServer at "mqtt.server" {
        /// `is-use-epoll` (original): accepted for compatibility; our runtime
        /// always uses epoll on Linux (smol/polling).
        pub is_use_epoll: bool = false,
        /// `is-open-ssl` (original): TLS on the TCP and WebSocket ports (both
        /// then speak TLS only: MQTT over TLS and WSS).
        pub is_open_ssl: bool = false,
        /// `ssl-certificate-path` (original): the certificate file, PKCS#12
        /// (`.pfx`/`.p12`, the original's) or a PEM chain (with
        /// `ssl-key-path`); empty = not set.
        pub ssl_certificate_path: String = String::new(),
        /// `ssl-certificate-password` (original): its password; empty = not set.
        pub ssl_certificate_password: String = String::new(),
        /// `tcp-port` (original): MQTT over TCP. 0 = any free port.
        pub tcp_port: u16 = 8081,
        /// `websocket-port` (original): MQTT over WebSocket. 0 = any free port.
        pub websocket_port: u16 = 8082,
        /// `api-port` (original): the HTTP API. 0 = any free port.
        pub api_port: u16 = 8083,
        /// `websocket-path` (original): the WebSocket endpoint; starts with `/`.
        pub websocket_path: String = "/websocket".to_owned(),
        /// `authentication-url` (original): connect-time auth URL; empty = no auth.
        pub authentication_url: String = String::new(),
        /// `listener-pool-size` (original, ignored): 0 = cores × 2 in the
        /// original. We use `worker_threads`.
        pub listener_pool_size: u32 = 0,
        /// `deal-message-thread-pool-size` (original, ignored): 0 = cores × 3
        /// in the original. We use `worker_threads`.
        pub deal_message_thread_pool_size: u32 = 0,
        /// `ssl-key-path`: the PEM private key of a PEM `ssl-certificate-path`
        /// (PKCS#8, PKCS#1 RSA or SEC1 EC, unencrypted); empty = the key is
        /// in the certificate file. Unused with a PKCS#12 file.
        pub ssl_key_path: String = String::new(),
        /// `ssl-client-ca-path`: PEM bundle of the CAs client certificates
        /// must chain to; required when `ssl-client-auth` is not `none`.
        pub ssl_client_ca_path: String = String::new(),
        /// `ssl-client-auth`: whether TLS clients must present a certificate.
        pub ssl_client_auth: SslClientAuth = SslClientAuth::None,
        /// `tls-port`: MQTT over TLS beside the plain `tcp-port`; 0 = off.
        pub tls_port: u16 = 0,
        /// `wss-port`: MQTT over WebSocket over TLS beside the plain
        /// `websocket-port`; 0 = off.
        pub wss_port: u16 = 0,
        /// `ssl-reload-interval`: seconds between checks of the certificate
        /// files' modification times (a change reloads them); 0 = off
        /// (SIGHUP still reloads).
        pub ssl_reload_interval: u32 = 60,
        /// `host`: the address all listeners bind to.
        pub host: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        /// `worker-threads`: executor threads; 0 = one per core
        /// (see [`Config::worker_threads`]).
        pub worker_threads: u32 = 0,
        /// `max-connections`: open client connections; 0 = unlimited. At the
        /// limit a new connection is accepted and closed at once.
        pub max_connections: u32 = 100_000,
        /// `max-packet-size`: bytes, fixed header included; a larger packet
        /// closes the connection. 2 to 268435460.
        pub max_packet_size: u32 = 1_048_576,
        /// `max-inflight`: outbound QoS 1/2 messages awaiting acknowledgement
        /// per client; more wait in the queue. 1 to 65535.
        pub max_inflight: u16 = 32,
        /// `max-queued-messages`: messages waiting per session (online beyond
        /// the in-flight window, or offline persistent). At least 1.
        pub max_queued_messages: u32 = 1000,
        /// `queue-overflow`: what a full queue does with one more message.
        pub queue_overflow: QueueOverflow = QueueOverflow::DropOldest,
        /// `max-topic-levels`: levels in a topic name or filter; 0 = unlimited.
        /// A PUBLISH beyond it closes the connection; a SUBSCRIBE filter
        /// beyond it gets return code 0x80.
        pub max_topic_levels: u32 = 128,
        /// `min-keep-alive`: seconds; a client asking less (0 included) is
        /// held to this.
        pub min_keep_alive: u16 = 0,
        /// `max-keep-alive`: seconds; a client asking more is refused with
        /// CONNACK 2. At least `min_keep_alive`.
        pub max_keep_alive: u16 = 65535,
        /// `connect-timeout`: seconds allowed between TCP accept and CONNECT.
        /// At least 1.
        pub connect_timeout: u32 = 10,
        /// `authentication-timeout`: milliseconds one CONNECT's
        /// authentication may take (waiting for a pooled connection,
        /// connecting, request and answer); past it the CONNECT is refused
        /// with return code 3. At least 1.
        pub authentication_timeout: u32 = 5000,
        /// `authentication-max-connections`: keep-alive connections to the
        /// authentication service at most (and so requests in flight);
        /// further CONNECTs wait for a free one. At least 1.
        pub authentication_max_connections: u32 = 16,
        /// `authentication-cache-ttl`: seconds an acceptance is remembered
        /// for the same username, password and client id; 0 = no cache.
        pub authentication_cache_ttl: u32 = 0,
        /// `authentication-ca-path`: PEM file of extra CA certificates
        /// trusted for an `https` authentication URL (beside the system's);
        /// empty = the system's only.
        pub authentication_ca_path: String = String::new(),
        /// `api-host`: the address the HTTP API binds to (not `host`).
        pub api_host: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST),
        /// `api-token`: when set, API requests must carry
        /// `Authorization: Bearer <token>` (or the basic credentials).
        pub api_token: String = String::new(),
        /// `api-username`: with `api-password`, API requests may carry
        /// `Authorization: Basic`; when set, credentials are required.
        pub api_username: String = String::new(),
        /// `api-password`: the password of `api-username`.
        pub api_password: String = String::new(),
        /// `api-max-body-size`: bytes of an API request body at most.
        pub api_max_body_size: u32 = 1_048_576,
        /// `api-request-timeout`: seconds to receive an API request's
        /// headers, and its body. At least 1.
        pub api_request_timeout: u32 = 10,
        /// `log-level`: a `tracing` EnvFilter directive, e.g. `info` or
        /// `info,easy_mqtt_core=debug`. `RUST_LOG`, when set, is up to the binary.
        pub log_level: String = "info".to_owned(),
        /// `node-id`: this node's name in a cluster; empty = generated at start.
        pub node_id: String = String::new(),
    }
}

section! {
    /// `mqtt.kvrocks` (original): the shared storage. With no node configured
    /// the broker runs on its in-memory backend.
    pub struct KvrocksConfig in RawKvrocks at "mqtt.kvrocks" {
        /// `password` (original): empty = none.
        pub password: String = String::new(),
    }
    sections {
        /// `mqtt.kvrocks.cluster`.
        pub cluster: KvrocksClusterConfig in RawKvrocksCluster,
        /// `mqtt.kvrocks.pool`.
        pub pool: KvrocksPoolConfig in RawKvrocksPool,
    }
}

section! {
    /// `mqtt.kvrocks.cluster` (original).
    pub struct KvrocksClusterConfig in RawKvrocksCluster at "mqtt.kvrocks.cluster" {
        /// `nodes` (original): `host:port` entries, written either as the
        /// original's `host:port,host:port` string or as a YAML list.
        /// Empty = no Kvrocks (in-memory storage).
        pub nodes: Vec<String> as NodeList = Vec::new(),
        /// `max-redirects` (original): MOVED/ASK redirects followed per command.
        pub max_redirects: u32 = 5,
    }
}

section! {
    /// `mqtt.kvrocks.pool` (original): connection pool.
    pub struct KvrocksPoolConfig in RawKvrocksPool at "mqtt.kvrocks.pool" {
        /// `min-idle` (original).
        pub min_idle: u32 = 12,
        /// `max-active` (original): at least 1.
        pub max_active: u32 = 12,
        /// `max-idle` (original).
        pub max_idle: u32 = 12,
        /// `max-wait` (original): milliseconds to wait for a pooled
        /// connection; negative = forever.
        pub max_wait: i64 = -1,
        /// `time-between-eviction-runs` (original): milliseconds between idle
        /// evictions; 0 or negative = off.
        pub time_between_eviction_runs: i64 = -1,
    }
}

/// `mqtt.server.queue-overflow`: what happens to a message that arrives for a
/// session whose queue already holds `max-queued-messages`. Either way the
/// dropped message is counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QueueOverflow {
    /// `drop-oldest`: the oldest queued message is dropped to make room.
    #[default]
    DropOldest,
    /// `drop-newest`: the new message is refused for that session.
    DropNewest,
}

impl QueueOverflow {
    /// The name used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueOverflow::DropOldest => "drop-oldest",
            QueueOverflow::DropNewest => "drop-newest",
        }
    }
}

impl std::fmt::Display for QueueOverflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `mqtt.server.ssl-client-auth`: client certificates on the TLS listeners.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslClientAuth {
    /// `none`: no client certificate is asked for.
    #[default]
    None,
    /// `optional`: a client may present one; if it does, it must verify
    /// against `ssl-client-ca-path`.
    Optional,
    /// `required`: a client must present one that verifies against
    /// `ssl-client-ca-path`, or its handshake fails.
    Required,
}

impl SslClientAuth {
    /// The name used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            SslClientAuth::None => "none",
            SslClientAuth::Optional => "optional",
            SslClientAuth::Required => "required",
        }
    }
}

impl std::fmt::Display for SslClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The largest `max-packet-size`: the largest MQTT remaining length
/// (268,435,455) plus the longest fixed header (5 bytes).
pub const MAX_PACKET_SIZE_LIMIT: u32 = 268_435_460;

impl Config {
    /// Parses a configuration from YAML text and validates it. An empty text
    /// (or one with only comments) gives the defaults.
    pub fn from_yaml_str(text: &str) -> Result<Config, ConfigError> {
        let mut path = None;
        let raw = serde_saphyr::with_deserializer_from_str(text, |de| {
            serde_path_to_error::deserialize::<_, Option<RawConfig>>(de).map_err(|err| {
                path = Some(err.path().clone());
                err.into_inner()
            })
        })
        .map_err(|err| ConfigError::from_yaml(&err, path.as_ref(), text))?;
        let mut spans = Spans::new();
        let config = raw.unwrap_or_default().resolve(&mut spans);
        config.check(&spans)?;
        Ok(config)
    }

    /// Reads and validates the configuration file at `path`. Errors name the
    /// file; a missing file is an error.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_yaml_str(&text).map_err(|err| err.in_file(path))
    }

    /// Checks the rules that types alone do not (ranges, formats, relations
    /// between keys), for a configuration built in code. Loading does this
    /// already.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check(&Spans::new())
    }

    /// Executor threads: `worker-threads`, or the number of cores when 0.
    pub fn worker_threads(&self) -> usize {
        match self.mqtt.server.worker_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => usize::try_from(n).unwrap_or(usize::MAX),
        }
    }

    /// The address of the MQTT-over-TCP listener (`host`, `tcp-port`).
    pub fn tcp_bind_addr(&self) -> SocketAddr {
        SocketAddr::new(self.mqtt.server.host, self.mqtt.server.tcp_port)
    }

    /// The address of the MQTT-over-WebSocket listener (`host`, `websocket-port`).
    pub fn websocket_bind_addr(&self) -> SocketAddr {
        SocketAddr::new(self.mqtt.server.host, self.mqtt.server.websocket_port)
    }

    /// The address of the HTTP API listener (`api-host`, `api-port`).
    pub fn api_bind_addr(&self) -> SocketAddr {
        SocketAddr::new(self.mqtt.server.api_host, self.mqtt.server.api_port)
    }

    /// Whether storage is Kvrocks (at least one node configured) rather
    /// than in memory.
    pub fn uses_kvrocks(&self) -> bool {
        !self.mqtt.kvrocks.cluster.nodes.is_empty()
    }

    /// The original's keys that are set but have no effect here, for the
    /// server to log once at start.
    pub fn ignored_keys(&self) -> Vec<&'static str> {
        let server = &self.mqtt.server;
        let mut keys = Vec::new();
        if server.is_use_epoll {
            keys.push("mqtt.server.is-use-epoll");
        }
        if server.listener_pool_size != 0 {
            keys.push("mqtt.server.listener-pool-size");
        }
        if server.deal_message_thread_pool_size != 0 {
            keys.push("mqtt.server.deal-message-thread-pool-size");
        }
        keys
    }

    /// Whether any listener speaks TLS: `is-open-ssl`, `tls-port` or `wss-port`.
    pub fn uses_tls(&self) -> bool {
        let server = &self.mqtt.server;
        server.is_open_ssl || server.tls_port != 0 || server.wss_port != 0
    }

    /// The TLS rules: a certificate when a listener speaks TLS, a client CA
    /// exactly when client certificates are asked for.
    fn check_tls(&self, spans: &Spans) -> Result<(), ConfigError> {
        // `key` is wrong; the line shown is that of `at` (the key that
        // made it wrong, when `key` itself is not in the text).
        let fail = |key: &str, at: &str, message: String| {
            let position = [key, at]
                .iter()
                .find_map(|k| spans.get(*k).copied())
                .and_then(Position::from_location);
            Err(ConfigError::invalid(key, position, message))
        };
        let server = &self.mqtt.server;
        if self.uses_tls() && server.ssl_certificate_path.is_empty() {
            let (why, at) = if server.is_open_ssl {
                ("is-open-ssl is true", "mqtt.server.is-open-ssl")
            } else if server.tls_port != 0 {
                ("tls-port is set", "mqtt.server.tls-port")
            } else {
                ("wss-port is set", "mqtt.server.wss-port")
            };
            return fail(
                "mqtt.server.ssl-certificate-path",
                at,
                format!(
                    "required because {why}: a PKCS#12 (.pfx/.p12) file with ssl-certificate-password, or a PEM certificate chain with ssl-key-path"
                ),
            );
        }
        let auth = server.ssl_client_auth;
        if auth != SslClientAuth::None && server.ssl_client_ca_path.is_empty() {
            return fail(
                "mqtt.server.ssl-client-auth",
                "mqtt.server.ssl-client-auth",
                format!(
                    "`{auth}` needs ssl-client-ca-path (the PEM CA bundle client certificates are checked against)"
                ),
            );
        }
        if auth == SslClientAuth::None && !server.ssl_client_ca_path.is_empty() {
            return fail(
                "mqtt.server.ssl-client-ca-path",
                "mqtt.server.ssl-client-ca-path",
                "is set, but ssl-client-auth is `none`: set ssl-client-auth to `optional` or `required` to verify client certificates, or remove this key".to_owned(),
            );
        }
        Ok(())
    }

    /// The rules of the authentication and HTTP API keys.
    fn check_auth_api(
        &self,
        fail: &dyn Fn(&str, String) -> Result<(), ConfigError>,
    ) -> Result<(), ConfigError> {
        let server = &self.mqtt.server;
        if server.authentication_timeout == 0 {
            return fail(
                "mqtt.server.authentication-timeout",
                "must be at least 1 (milliseconds), got 0".to_owned(),
            );
        }
        if server.authentication_max_connections == 0 {
            return fail(
                "mqtt.server.authentication-max-connections",
                "must be at least 1, got 0".to_owned(),
            );
        }
        let ca = &server.authentication_ca_path;
        if !ca.is_empty() && !server.authentication_url.starts_with("https://") {
            return fail(
                "mqtt.server.authentication-ca-path",
                "is set, but authentication-url is not an https:// URL".to_owned(),
            );
        }
        if server.api_username.is_empty() != server.api_password.is_empty() {
            let key = if server.api_username.is_empty() {
                "mqtt.server.api-password"
            } else {
                "mqtt.server.api-username"
            };
            return fail(
                key,
                "api-username and api-password go together: set both or neither".to_owned(),
            );
        }
        if server.api_username.contains(':') {
            return fail(
                "mqtt.server.api-username",
                "must not contain ':' (HTTP basic credentials are user:password)".to_owned(),
            );
        }
        if server.api_max_body_size < 1024 {
            return fail(
                "mqtt.server.api-max-body-size",
                format!(
                    "must be at least 1024 bytes, got {}",
                    server.api_max_body_size
                ),
            );
        }
        if server.api_request_timeout == 0 {
            return fail(
                "mqtt.server.api-request-timeout",
                "must be at least 1 second, got 0".to_owned(),
            );
        }
        Ok(())
    }

    /// The validation rules; `spans` locates values that came from a text.
    fn check(&self, spans: &Spans) -> Result<(), ConfigError> {
        let fail = |key: &str, message: String| {
            let position = spans.get(key).copied().and_then(Position::from_location);
            Err(ConfigError::invalid(key, position, message))
        };
        let server = &self.mqtt.server;

        if !server.websocket_path.starts_with('/') {
            return fail(
                "mqtt.server.websocket-path",
                format!("must start with '/', got {:?}", server.websocket_path),
            );
        }
        let url = &server.authentication_url;
        let is_http = url.starts_with("http://") || url.starts_with("https://");
        if !url.is_empty() && !is_http {
            return fail(
                "mqtt.server.authentication-url",
                format!(
                    "must be an http:// or https:// URL (or empty for no authentication), got {url:?}"
                ),
            );
        }
        let ports = [
            ("mqtt.server.tcp-port", server.tcp_port),
            ("mqtt.server.websocket-port", server.websocket_port),
            ("mqtt.server.api-port", server.api_port),
            ("mqtt.server.tls-port", server.tls_port),
            ("mqtt.server.wss-port", server.wss_port),
        ];
        for (i, (key, port)) in ports.iter().enumerate() {
            if let Some((other, _)) = ports[..i].iter().find(|(_, p)| *p == *port && *port != 0) {
                return fail(key, format!("{port} is already the {other}"));
            }
        }
        self.check_tls(spans)?;
        self.check_auth_api(&fail)?;
        if !(2..=MAX_PACKET_SIZE_LIMIT).contains(&server.max_packet_size) {
            return fail(
                "mqtt.server.max-packet-size",
                format!(
                    "must be between 2 and {MAX_PACKET_SIZE_LIMIT}, got {}",
                    server.max_packet_size
                ),
            );
        }
        if server.max_inflight == 0 {
            return fail(
                "mqtt.server.max-inflight",
                "must be between 1 and 65535, got 0".to_owned(),
            );
        }
        if server.max_queued_messages == 0 {
            return fail(
                "mqtt.server.max-queued-messages",
                "must be at least 1, got 0".to_owned(),
            );
        }
        if server.min_keep_alive > server.max_keep_alive {
            let key = if spans.contains_key("mqtt.server.max-keep-alive") {
                "mqtt.server.max-keep-alive"
            } else {
                "mqtt.server.min-keep-alive"
            };
            return fail(
                key,
                format!(
                    "min-keep-alive ({}) must not exceed max-keep-alive ({})",
                    server.min_keep_alive, server.max_keep_alive
                ),
            );
        }
        if server.connect_timeout == 0 {
            return fail(
                "mqtt.server.connect-timeout",
                "must be at least 1 second, got 0".to_owned(),
            );
        }
        if server.log_level.trim().is_empty() {
            return fail(
                "mqtt.server.log-level",
                "must not be empty (e.g. `info`)".to_owned(),
            );
        }
        if let Err(err) = tracing_subscriber::EnvFilter::builder().parse(&server.log_level) {
            return fail(
                "mqtt.server.log-level",
                format!("not a valid filter ({err}): {:?}", server.log_level),
            );
        }
        if server
            .node_id
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return fail(
                "mqtt.server.node-id",
                format!(
                    "must not contain spaces or control characters, got {:?}",
                    server.node_id
                ),
            );
        }

        let kvrocks = &self.mqtt.kvrocks;
        for (i, node) in kvrocks.cluster.nodes.iter().enumerate() {
            if let Err(message) = nodes::check_node(node) {
                let key = "mqtt.kvrocks.cluster.nodes";
                let position = spans.get(key).copied().and_then(Position::from_location);
                return Err(ConfigError::invalid(
                    format!("{key}[{i}]"),
                    position,
                    message,
                ));
            }
        }
        if kvrocks.pool.max_active == 0 {
            return fail(
                "mqtt.kvrocks.pool.max-active",
                "must be at least 1, got 0".to_owned(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The original's own configuration file, as its users have it.
    const ORIGINAL_FILE: &str = "\
mqtt:
  server:
    is-use-epoll: true
    is-open-ssl: false
    ssl-certificate-path:
    ssl-certificate-password:
    tcp-port: 1883
    websocket-port: 8083
    api-port: 8084
    websocket-path: /mqtt
    authentication-url: http://127.0.0.1:8080/auth
    listener-pool-size: 16
    deal-message-thread-pool-size: 24
  kvrocks:
    password: secret
    cluster:
      nodes: 127.0.0.1:6666,127.0.0.1:6667
      max-redirects: 3
    pool:
      min-idle: 4
      max-active: 16
      max-idle: 8
      max-wait: 2000
      time-between-eviction-runs: 30000
";

    fn parse_err(text: &str) -> ConfigError {
        match Config::from_yaml_str(text) {
            Ok(config) => panic!("expected an error for {text:?}, got {config:?}"),
            Err(err) => err,
        }
    }

    fn parse(text: &str) -> Config {
        match Config::from_yaml_str(text) {
            Ok(config) => config,
            Err(err) => panic!("{text:?} should parse: {err}"),
        }
    }

    fn pos(line: u64, column: u64) -> Option<Position> {
        Some(Position { line, column })
    }

    #[test]
    fn defaults_are_the_originals() {
        let c = Config::default();
        let s = &c.mqtt.server;
        assert!(!s.is_use_epoll);
        assert!(!s.is_open_ssl);
        assert_eq!(s.ssl_certificate_path, "");
        assert_eq!(s.ssl_certificate_password, "");
        assert_eq!(s.tcp_port, 8081);
        assert_eq!(s.websocket_port, 8082);
        assert_eq!(s.api_port, 8083);
        assert_eq!(s.websocket_path, "/websocket");
        assert_eq!(s.authentication_url, "");
        assert_eq!(s.listener_pool_size, 0);
        assert_eq!(s.deal_message_thread_pool_size, 0);
        let k = &c.mqtt.kvrocks;
        assert_eq!(k.password, "");
        assert!(k.cluster.nodes.is_empty());
        assert_eq!(k.cluster.max_redirects, 5);
        assert_eq!(
            (k.pool.min_idle, k.pool.max_active, k.pool.max_idle),
            (12, 12, 12)
        );
        assert_eq!(k.pool.max_wait, -1);
        assert_eq!(k.pool.time_between_eviction_runs, -1);
        assert!(!c.uses_kvrocks());
        assert!(c.ignored_keys().is_empty());
        c.validate()
            .unwrap_or_else(|e| panic!("defaults must be valid: {e}"));
    }

    #[test]
    fn defaults_of_our_keys() {
        let s = Config::default().mqtt.server;
        assert_eq!(s.host, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert_eq!(s.worker_threads, 0);
        assert_eq!(s.max_connections, 100_000);
        assert_eq!(s.max_packet_size, 1_048_576);
        assert_eq!(s.max_inflight, 32);
        assert_eq!(s.max_queued_messages, 1000);
        assert_eq!(s.queue_overflow, QueueOverflow::DropOldest);
        assert_eq!(s.max_topic_levels, 128);
        assert_eq!(s.min_keep_alive, 0);
        assert_eq!(s.max_keep_alive, 65535);
        assert_eq!(s.connect_timeout, 10);
        assert_eq!(s.log_level, "info");
        assert_eq!(s.node_id, "");
    }

    #[test]
    fn sample_conf_equals_defaults() {
        let sample = include_str!("../../conf/conf.yml");
        assert_eq!(parse(sample), Config::default());
        // Every key of the sample is set explicitly (none left to defaults
        // by omission), so the sample documents them all.
        let keys = [
            "is-use-epoll",
            "is-open-ssl",
            "ssl-certificate-path",
            "ssl-certificate-password",
            "ssl-key-path",
            "ssl-client-ca-path",
            "ssl-client-auth",
            "tls-port",
            "wss-port",
            "ssl-reload-interval",
            "tcp-port",
            "websocket-port",
            "api-port",
            "websocket-path",
            "authentication-url",
            "listener-pool-size",
            "deal-message-thread-pool-size",
            "host",
            "worker-threads",
            "max-connections",
            "max-packet-size",
            "max-inflight",
            "max-queued-messages",
            "queue-overflow",
            "max-topic-levels",
            "min-keep-alive",
            "max-keep-alive",
            "connect-timeout",
            "authentication-timeout",
            "authentication-max-connections",
            "authentication-cache-ttl",
            "authentication-ca-path",
            "api-host",
            "api-token",
            "api-username",
            "api-password",
            "api-max-body-size",
            "api-request-timeout",
            "log-level",
            "node-id",
            "password",
            "nodes",
            "max-redirects",
            "min-idle",
            "max-active",
            "max-idle",
            "max-wait",
            "time-between-eviction-runs",
        ];
        for key in keys {
            let set = sample
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{key}:")));
            assert!(set, "conf/conf.yml does not set `{key}`");
        }
    }

    #[test]
    fn tls_keys_parse_and_are_checked() {
        let s = Config::default().mqtt.server;
        assert_eq!((s.tls_port, s.wss_port, s.ssl_reload_interval), (0, 0, 60));
        assert_eq!(s.ssl_client_auth, SslClientAuth::None);
        assert!(!Config::default().uses_tls());

        let c = parse(
            "mqtt:\n  server:\n    ssl-certificate-path: /etc/mqtt/server.pem\n    \
             ssl-key-path: /etc/mqtt/server.key\n    ssl-client-ca-path: /etc/mqtt/ca.pem\n    \
             ssl-client-auth: required\n    tls-port: 8883\n    wss-port: 8884\n    \
             ssl-reload-interval: 0\n",
        );
        let s = &c.mqtt.server;
        assert_eq!(s.ssl_key_path, "/etc/mqtt/server.key");
        assert_eq!(s.ssl_client_ca_path, "/etc/mqtt/ca.pem");
        assert_eq!(s.ssl_client_auth, SslClientAuth::Required);
        assert_eq!(
            (s.tls_port, s.wss_port, s.ssl_reload_interval),
            (8883, 8884, 0)
        );
        assert!(c.uses_tls());

        let cases = [
            (
                "is-open-ssl: true",
                "mqtt.server.ssl-certificate-path",
                "is-open-ssl is true",
            ),
            (
                "tls-port: 8883",
                "mqtt.server.ssl-certificate-path",
                "tls-port is set",
            ),
            (
                "wss-port: 8884",
                "mqtt.server.ssl-certificate-path",
                "wss-port is set",
            ),
            (
                "tls-port: 8081",
                "mqtt.server.tls-port",
                "already the mqtt.server.tcp-port",
            ),
            (
                "wss-port: 8082",
                "mqtt.server.wss-port",
                "already the mqtt.server.websocket-port",
            ),
            (
                "ssl-client-auth: optional",
                "mqtt.server.ssl-client-auth",
                "needs ssl-client-ca-path",
            ),
            (
                "ssl-client-ca-path: /ca.pem",
                "mqtt.server.ssl-client-ca-path",
                "ssl-client-auth is `none`",
            ),
        ];
        for (yaml, key, message) in cases {
            let err = parse_err(&format!("mqtt:\n  server:\n    {yaml}\n"));
            assert_eq!(err.key(), Some(key), "{yaml}: {err}");
            assert_eq!(err.position().map(|p| p.line), Some(3), "{yaml}: {err}");
            assert!(err.to_string().contains(message), "{yaml}: {err}");
        }
        let err = parse_err("mqtt:\n  server:\n    ssl-client-auth: always\n");
        assert_eq!(err.key(), Some("mqtt.server.ssl-client-auth"));
        assert!(
            err.to_string()
                .contains("expected one of: none, optional, required"),
            "{err}"
        );
    }

    #[test]
    fn empty_texts_give_defaults() {
        for text in [
            "",
            "\n",
            "# nothing but a comment\n",
            "---\n",
            "mqtt:\n",
            "mqtt:\n  server:\n  kvrocks:\n",
            "mqtt:\n  kvrocks:\n    cluster:\n    pool:\n",
        ] {
            assert_eq!(parse(text), Config::default(), "{text:?}");
        }
    }

    #[test]
    fn keys_without_value_take_their_default() {
        let c = parse(
            "mqtt:\n  server:\n    tcp-port:\n    websocket-path:\n    log-level: ~\n  kvrocks:\n    password:\n    cluster:\n      nodes:\n",
        );
        assert_eq!(c, Config::default());
        // An empty string is "not set" for the keys whose default is empty.
        let c = parse("mqtt:\n  server:\n    authentication-url: ''\n    node-id: \"\"\n");
        assert_eq!(c, Config::default());
    }

    #[test]
    fn the_originals_file_parses() {
        let c = parse(ORIGINAL_FILE);
        let s = &c.mqtt.server;
        assert!(s.is_use_epoll);
        assert!(!s.is_open_ssl);
        assert_eq!(s.ssl_certificate_path, "");
        assert_eq!(s.tcp_port, 1883);
        assert_eq!(s.websocket_port, 8083);
        assert_eq!(s.api_port, 8084);
        assert_eq!(s.websocket_path, "/mqtt");
        assert_eq!(s.authentication_url, "http://127.0.0.1:8080/auth");
        assert_eq!(s.listener_pool_size, 16);
        assert_eq!(s.deal_message_thread_pool_size, 24);
        // Keys the original did not have keep their defaults.
        assert_eq!(s.max_inflight, 32);
        assert_eq!(s.host, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let k = &c.mqtt.kvrocks;
        assert_eq!(k.password, "secret");
        assert_eq!(k.cluster.nodes, ["127.0.0.1:6666", "127.0.0.1:6667"]);
        assert_eq!(k.cluster.max_redirects, 3);
        assert_eq!(
            (k.pool.min_idle, k.pool.max_active, k.pool.max_idle),
            (4, 16, 8)
        );
        assert_eq!(k.pool.max_wait, 2000);
        assert_eq!(k.pool.time_between_eviction_runs, 30000);
        assert!(c.uses_kvrocks());
        assert_eq!(
            c.ignored_keys(),
            [
                "mqtt.server.is-use-epoll",
                "mqtt.server.listener-pool-size",
                "mqtt.server.deal-message-thread-pool-size"
            ]
        );
        assert_eq!(c.tcp_bind_addr().to_string(), "0.0.0.0:1883");
    }

    #[test]
    fn our_keys_parse() {
        let c = parse(
            "\
mqtt:
  server:
    host: 127.0.0.1
    worker-threads: 3
    max-connections: 0
    max-packet-size: 268435460
    max-inflight: 65535
    max-queued-messages: 1
    queue-overflow: drop-newest
    max-topic-levels: 0
    min-keep-alive: 30
    max-keep-alive: 30
    connect-timeout: 1
    log-level: info,easy_mqtt_core=debug
    node-id: node-1
",
        );
        let s = &c.mqtt.server;
        assert_eq!(s.host, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(c.worker_threads(), 3);
        assert_eq!(s.max_connections, 0);
        assert_eq!(s.max_packet_size, MAX_PACKET_SIZE_LIMIT);
        assert_eq!(s.max_inflight, 65535);
        assert_eq!(s.max_queued_messages, 1);
        assert_eq!(s.queue_overflow, QueueOverflow::DropNewest);
        assert_eq!(s.max_topic_levels, 0);
        assert_eq!((s.min_keep_alive, s.max_keep_alive), (30, 30));
        assert_eq!(s.connect_timeout, 1);
        assert_eq!(s.log_level, "info,easy_mqtt_core=debug");
        assert_eq!(s.node_id, "node-1");
        assert_eq!(c.tcp_bind_addr().to_string(), "127.0.0.1:8081");
        assert_eq!(c.websocket_bind_addr().to_string(), "127.0.0.1:8082");
        assert_eq!(c.api_bind_addr().to_string(), "127.0.0.1:8083");

        let c = parse("mqtt:\n  server:\n    host: '::'\n    tcp-port: 0\n");
        assert_eq!(c.tcp_bind_addr().to_string(), "[::]:0");
    }

    #[test]
    fn worker_threads_zero_means_cores() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(Config::default().worker_threads(), cores);
    }

    #[test]
    fn nodes_as_a_list() {
        let c = parse(
            "mqtt:\n  kvrocks:\n    cluster:\n      nodes:\n        - 10.0.0.1:6666\n        - kvrocks-1:6666\n        - '[::1]:6666'\n",
        );
        assert_eq!(
            c.mqtt.kvrocks.cluster.nodes,
            ["10.0.0.1:6666", "kvrocks-1:6666", "[::1]:6666"]
        );
        assert!(c.uses_kvrocks());
        let c = parse("mqtt:\n  kvrocks:\n    cluster:\n      nodes: [a:1, b:2]\n");
        assert_eq!(c.mqtt.kvrocks.cluster.nodes, ["a:1", "b:2"]);
        // Spaces around the commas of the original form are allowed.
        let c = parse("mqtt:\n  kvrocks:\n    cluster:\n      nodes: 'a:1, b:2,'\n");
        assert_eq!(c.mqtt.kvrocks.cluster.nodes, ["a:1", "b:2"]);
        let c = parse("mqtt:\n  kvrocks:\n    cluster:\n      nodes: []\n");
        assert!(!c.uses_kvrocks());
    }

    #[test]
    fn bad_nodes_name_the_key_and_line() {
        let err =
            parse_err("mqtt:\n  kvrocks:\n    cluster:\n      nodes: 127.0.0.1:6666,127.0.0.1\n");
        assert_eq!(err.key(), Some("mqtt.kvrocks.cluster.nodes"));
        assert_eq!(err.position().map(|p| p.line), Some(4));
        assert!(
            err.to_string().contains("`127.0.0.1` is not `host:port`"),
            "{err}"
        );

        let err = parse_err(
            "mqtt:\n  kvrocks:\n    cluster:\n      nodes:\n        - a:1\n        - b:99999\n",
        );
        assert_eq!(err.key(), Some("mqtt.kvrocks.cluster.nodes[1]"));
        assert_eq!(err.position(), pos(6, 11));
        assert_eq!(
            err.to_string(),
            "line 6, column 11: mqtt.kvrocks.cluster.nodes[1]: `b:99999`: the port `99999` is not a number from 1 to 65535"
        );

        let err = parse_err("mqtt:\n  kvrocks:\n    cluster:\n      nodes: {a: 1}\n");
        assert_eq!(err.key(), Some("mqtt.kvrocks.cluster.nodes"));
        assert_eq!(err.position().map(|p| p.line), Some(4));

        // Built in code, the same rule applies.
        let mut c = Config::default();
        c.mqtt.kvrocks.cluster.nodes = vec!["a:1".into(), "nope".into()];
        let err = c.validate().err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("mqtt.kvrocks.cluster.nodes[1]: `nope` is not `host:port` (the port is missing)")
        );
    }

    #[test]
    fn unknown_key_names_path_and_line() {
        let err = parse_err("mqtt:\n  server:\n    tcp-port: 1883\n    tcp-prt: 1884\n");
        assert!(matches!(err, ConfigError::Parse { .. }));
        assert_eq!(err.key(), Some("mqtt.server.tcp-prt"));
        assert_eq!(err.position(), pos(4, 5));
        assert_eq!(
            err.to_string(),
            "line 4, column 5: mqtt.server.tcp-prt: unknown key `tcp-prt`; did you mean `tcp-port`?"
        );

        let err = parse_err("mqtt:\n  kvrocks:\n    pool:\n      size: 3\n");
        assert_eq!(err.key(), Some("mqtt.kvrocks.pool.size"));
        assert_eq!(err.position(), pos(4, 7));
        assert!(
            err.to_string()
                .contains("the keys here are: min-idle, max-active"),
            "{err}"
        );

        let err = parse_err("mqtt:\n  servers:\n    tcp-port: 1\n");
        assert_eq!(err.key(), Some("mqtt.servers"));
        assert_eq!(err.position(), pos(2, 3));

        let err = parse_err("server:\n  tcp-port: 1\n");
        assert_eq!(err.key(), Some("server"));
        assert_eq!(err.position(), pos(1, 1));
        assert!(err.to_string().contains("unknown key `server`"), "{err}");

        // A key named like the private wrapper's field is still reported.
        let err = parse_err("mqtt:\n  server:\n    value: 1\n");
        assert_eq!(err.key(), Some("mqtt.server.value"));
    }

    #[test]
    fn wrong_type_names_key_and_line() {
        let err = parse_err("mqtt:\n  server:\n    tcp-port: abc\n");
        assert_eq!(err.key(), Some("mqtt.server.tcp-port"));
        assert_eq!(
            err.to_string(),
            "line 3, column 15: mqtt.server.tcp-port: invalid type: `abc`, expected u16 (0 to 65535)"
        );

        let err = parse_err("mqtt:\n  server:\n    is-open-ssl: maybe\n");
        assert_eq!(err.key(), Some("mqtt.server.is-open-ssl"));
        assert_eq!(err.position(), pos(3, 18));
        assert!(err.to_string().contains("expected a boolean"), "{err}");

        let err = parse_err("mqtt:\n  server:\n    websocket-path: [a, b]\n");
        assert_eq!(err.key(), Some("mqtt.server.websocket-path"));
        assert_eq!(err.position().map(|p| p.line), Some(3));

        let err = parse_err("mqtt:\n  server:\n    tcp-port: [1, 2]\n");
        assert_eq!(
            err.to_string(),
            "line 3, column 15: mqtt.server.tcp-port: expected a single value, found a list or a section"
        );

        let err = parse_err("mqtt:\n  server: 8081\n");
        assert_eq!(err.key(), Some("mqtt.server"));
        assert_eq!(err.position().map(|p| p.line), Some(2));

        let err = parse_err("mqtt:\n  kvrocks:\n    pool:\n      max-wait: soon\n");
        assert_eq!(err.key(), Some("mqtt.kvrocks.pool.max-wait"));
        assert_eq!(err.position(), pos(4, 17));

        let err = parse_err("mqtt:\n  server:\n    queue-overflow: drop-all\n");
        assert_eq!(err.key(), Some("mqtt.server.queue-overflow"));
        assert_eq!(
            err.to_string(),
            "line 3, column 21: mqtt.server.queue-overflow: unknown value `drop-all`, expected one of: drop-oldest, drop-newest"
        );

        let err = parse_err("mqtt:\n  server:\n    host: localhost\n");
        assert_eq!(err.key(), Some("mqtt.server.host"));
        assert_eq!(err.position().map(|p| p.line), Some(3));
    }

    #[test]
    fn value_beyond_its_type_names_key_and_line() {
        let err = parse_err("mqtt:\n  server:\n    tcp-port: 70000\n");
        assert_eq!(
            err.to_string(),
            "line 3, column 15: mqtt.server.tcp-port: invalid value: integer `70000`, expected u16 (0 to 65535)"
        );
        let err = parse_err("mqtt:\n  server:\n    max-connections: -1\n");
        assert_eq!(err.key(), Some("mqtt.server.max-connections"));
        assert!(
            err.to_string().contains("integer `-1`, expected u32"),
            "{err}"
        );
    }

    #[test]
    fn rule_violations_name_key_and_line() {
        let err = parse_err("mqtt:\n  server:\n    tcp-port: 1883\n    max-inflight: 0\n");
        assert!(matches!(err, ConfigError::Invalid { .. }));
        assert_eq!(
            err.to_string(),
            "line 4, column 19: mqtt.server.max-inflight: must be between 1 and 65535, got 0"
        );

        let cases = [
            (
                "max-packet-size: 1",
                "mqtt.server.max-packet-size",
                "must be between 2 and 268435460, got 1",
            ),
            (
                "max-packet-size: 268435461",
                "mqtt.server.max-packet-size",
                "got 268435461",
            ),
            (
                "max-queued-messages: 0",
                "mqtt.server.max-queued-messages",
                "must be at least 1",
            ),
            (
                "connect-timeout: 0",
                "mqtt.server.connect-timeout",
                "must be at least 1 second",
            ),
            (
                "websocket-path: ws",
                "mqtt.server.websocket-path",
                "must start with '/'",
            ),
            (
                "websocket-path: ''",
                "mqtt.server.websocket-path",
                "must start with '/'",
            ),
            (
                "log-level: ''",
                "mqtt.server.log-level",
                "must not be empty",
            ),
            (
                "log-level: info=verbose",
                "mqtt.server.log-level",
                "not a valid filter",
            ),
            (
                "node-id: a b",
                "mqtt.server.node-id",
                "must not contain spaces",
            ),
            (
                "authentication-url: example.com/auth",
                "mqtt.server.authentication-url",
                "http://",
            ),
            (
                "api-port: 8081",
                "mqtt.server.api-port",
                "8081 is already the mqtt.server.tcp-port",
            ),
            (
                "max-keep-alive: 30\n    min-keep-alive: 60",
                "mqtt.server.max-keep-alive",
                "min-keep-alive (60) must not exceed max-keep-alive (30)",
            ),
            (
                "max-keep-alive: 65534\n    min-keep-alive: 65535",
                "mqtt.server.max-keep-alive",
                "must not exceed",
            ),
        ];
        for (yaml, key, message) in cases {
            let err = parse_err(&format!("mqtt:\n  server:\n    {yaml}\n"));
            assert!(matches!(err, ConfigError::Invalid { .. }), "{yaml}: {err}");
            assert_eq!(err.key(), Some(key), "{yaml}: {err}");
            assert_eq!(err.position().map(|p| p.line), Some(3), "{yaml}: {err}");
            assert!(err.to_string().contains(message), "{yaml}: {err}");
        }

        let err = parse_err("mqtt:\n  kvrocks:\n    pool:\n      max-active: 0\n");
        assert_eq!(err.key(), Some("mqtt.kvrocks.pool.max-active"));
        assert_eq!(err.position(), pos(4, 19));

        // Ports may be 0 (any free port) several times.
        let c =
            parse("mqtt:\n  server:\n    tcp-port: 0\n    websocket-port: 0\n    api-port: 0\n");
        assert_eq!(c.tcp_bind_addr().port(), 0);
    }

    #[test]
    fn authentication_and_api_keys() {
        let s = Config::default().mqtt.server;
        assert_eq!(s.authentication_timeout, 5000);
        assert_eq!(s.authentication_max_connections, 16);
        assert_eq!(s.authentication_cache_ttl, 0);
        assert_eq!(s.authentication_ca_path, "");
        assert_eq!(s.api_host, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!((s.api_token.as_str(), s.api_username.as_str()), ("", ""));
        assert_eq!(s.api_max_body_size, 1_048_576);
        assert_eq!(s.api_request_timeout, 10);

        let c = parse(
            "mqtt:\n  server:\n    host: 0.0.0.0\n    api-host: 10.0.0.5\n    api-port: 9000\n    \
             authentication-url: https://auth.example/check\n    authentication-ca-path: /etc/ca.pem\n    \
             authentication-timeout: 750\n    api-username: admin\n    api-password: secret\n",
        );
        assert_eq!(c.api_bind_addr().to_string(), "10.0.0.5:9000");
        assert_eq!(c.mqtt.server.authentication_timeout, 750);

        let cases = [
            (
                "authentication-timeout: 0",
                "mqtt.server.authentication-timeout",
                "at least 1",
            ),
            (
                "authentication-max-connections: 0",
                "mqtt.server.authentication-max-connections",
                "at least 1",
            ),
            (
                "authentication-ca-path: /ca.pem",
                "mqtt.server.authentication-ca-path",
                "not an https:// URL",
            ),
            (
                "api-username: admin",
                "mqtt.server.api-username",
                "set both or neither",
            ),
            (
                "api-password: secret",
                "mqtt.server.api-password",
                "set both or neither",
            ),
            (
                "api-max-body-size: 10",
                "mqtt.server.api-max-body-size",
                "at least 1024",
            ),
            (
                "api-request-timeout: 0",
                "mqtt.server.api-request-timeout",
                "at least 1 second",
            ),
        ];
        for (yaml, key, message) in cases {
            let err = parse_err(&format!("mqtt:\n  server:\n    {yaml}\n"));
            assert_eq!(err.key(), Some(key), "{yaml}: {err}");
            assert_eq!(err.position().map(|p| p.line), Some(3), "{yaml}: {err}");
            assert!(err.to_string().contains(message), "{yaml}: {err}");
        }
    }

    #[test]
    fn rule_violations_in_code_name_the_key() {
        let mut c = Config::default();
        c.mqtt.server.max_inflight = 0;
        let err = c.validate().err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("mqtt.server.max-inflight: must be between 1 and 65535, got 0")
        );
    }

    #[test]
    fn other_yaml_errors_carry_the_line() {
        let err = parse_err("mqtt:\n  server:\n    tcp-port: 1\n    tcp-port: 2\n");
        assert_eq!(err.key(), Some("mqtt.server.tcp-port"));
        assert_eq!(err.position(), pos(4, 5));
        assert!(err.to_string().contains("appears twice"), "{err}");

        let err = parse_err("mqtt:\n  server:\n    tcp-port: [1\n");
        assert!(err.position().is_some(), "{err}");

        let err = parse_err("mqtt:\n  server:\n    tcp-port: 1\n---\nmqtt:\n");
        assert!(err.to_string().contains("a single YAML document"), "{err}");

        let err = parse_err("mqtt:\n\tserver:\n");
        assert_eq!(err.position().map(|p| p.line), Some(2), "{err}");

        let err = parse_err("- mqtt\n");
        assert_eq!(err.position(), pos(1, 1));
    }

    #[test]
    fn load_names_the_file() {
        let missing = Path::new("/nonexistent/easy-mqtt/conf.yml");
        let err = Config::load(missing).err();
        let text = err.as_ref().map(ToString::to_string).unwrap_or_default();
        assert!(matches!(err, Some(ConfigError::Read { .. })));
        assert!(
            text.starts_with("/nonexistent/easy-mqtt/conf.yml: cannot read"),
            "{text}"
        );

        let dir = std::env::temp_dir().join(format!("easy-mqtt-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let file = dir.join("conf.yml");
        std::fs::write(&file, "mqtt:\n  server:\n    tcp-port: 70000\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let err = Config::load(&file).err().map(|e| e.to_string());
        assert_eq!(
            err,
            Some(format!(
                "{}: line 3, column 15: mqtt.server.tcp-port: invalid value: integer `70000`, expected u16 (0 to 65535)",
                file.display()
            ))
        );
        std::fs::write(&file, ORIGINAL_FILE).unwrap_or_else(|e| panic!("{e}"));
        let loaded = Config::load(&file).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(loaded, parse(ORIGINAL_FILE));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
