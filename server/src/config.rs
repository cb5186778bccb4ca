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

mod aliyun;
mod error;
mod nodes;
mod validate;

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
        /// `mqtt.aliyun`.
        pub aliyun: AliyunConfig in RawAliyun,
        /// `mqtt.cluster`.
        pub cluster: ClusterSection in RawCluster,
    }
}

section! {
    /// `mqtt.cluster`: the nodes sharing one Kvrocks (see the README's
    /// "Cluster" section). Only used with `mqtt.kvrocks.cluster.nodes`.
    pub struct ClusterSection in RawCluster at "mqtt.cluster" {
        /// `enabled`: nodes on one Kvrocks form a cluster; false = this
        /// node assumes it is the only one on its Kvrocks.
        pub enabled: bool = true,
        /// `heartbeat-interval`: milliseconds between membership renewals
        /// (also the longest pause of route refreshes).
        pub heartbeat_interval: u32 = 1000,
        /// `node-timeout`: milliseconds without a heartbeat after which a
        /// node is dead and adopted; more than twice `heartbeat-interval`.
        pub node_timeout: u32 = 5000,
        /// `takeover-timeout`: milliseconds a CONNECT waits for the node
        /// that had the client id to let it go (then CONNACK 3).
        pub takeover_timeout: u32 = 10_000,
        /// `outbox-size`: messages for other nodes waiting to be written to
        /// their inboxes at most. From half of it, connections that publish
        /// stop reading until it is down to a quarter; past it, QoS 0
        /// messages are dropped (and counted). At least 16.
        pub outbox_size: u32 = 65_536,
    }
}

section! {
    /// `mqtt.aliyun`: the Alibaba Cloud MQTT compatibility mode (see
    /// `server/src/aliyun/mod.rs` and the README).
    pub struct AliyunConfig in RawAliyun at "mqtt.aliyun" {
        /// `enabled`: Alibaba Cloud user names, client ids, tokens,
        /// point-to-point topics and status events.
        pub enabled: bool = false,
        /// `instance-id`: the instance id devices put in their user names.
        pub instance_id: String = String::new(),
        /// `access-keys`: `[{id, secret}]` for signature and token mode.
        pub access_keys: Vec<AliyunAccessKey> = Vec::new(),
        /// `identities`: custom identities `[{username, secret, sign-mode}]`,
        /// `sign-mode` `origin` (the password is the secret) or `signed`
        /// (Base64(HMAC-SHA1(secret, clientId))).
        pub identities: Vec<AliyunIdentity> = Vec::new(),
        /// `offline-message-retention`: seconds messages for an offline
        /// persistent session are kept (3 days).
        pub offline_message_retention: u32 = 259_200,
        /// `status-topic`: where `connect`/`disconnect`/`tcpclean` events are published.
        pub status_topic: String = "$SYS/aliyun/status".to_owned(),
        /// `token-min-expiry`: seconds a token must at least be valid for when applied.
        pub token_min_expiry: u32 = 60,
        /// `token-max-expiry`: seconds a token may at most be valid for (30 days).
        pub token_max_expiry: u32 = 2_592_000,
        /// `token-expire-notice`: seconds before a token's expiry that
        /// `$SYS/tokenExpireNotice` is pushed to the clients using it.
        pub token_expire_notice: u32 = 300,
    }
}

/// One entry of `mqtt.aliyun.access-keys`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AliyunAccessKey {
    pub id: String,
    pub secret: String,
}

/// One entry of `mqtt.aliyun.identities`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AliyunIdentity {
    pub username: String,
    pub secret: String,
    #[serde(default)]
    pub sign_mode: AliyunSignMode,
}

/// `sign-mode` of a custom identity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AliyunSignMode {
    /// `signed`: the password is Base64(HMAC-SHA1(secret, clientId)).
    #[default]
    #[serde(alias = "SIGNED")]
    Signed,
    /// `origin`: the password is the secret itself.
    #[serde(alias = "ORIGIN")]
    Origin,
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
        /// `hibernate-after`: seconds a plain TCP connection may be idle
        /// (no byte in or out) before it hibernates: its task and its reactor
        /// registration are freed until its socket turns readable, a message
        /// comes for it or its keep-alive runs out. 0 = never.
        pub hibernate_after: u32 = 10,
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
        /// `write-batch-ops`: storage writes (of every connection) merged
        /// into one batch at most; at least 1.
        pub write_batch_ops: u32 = 1_000_000,
        /// `write-queue-ops`: storage writes waiting for a batch at most,
        /// beyond which connections wait (and stop reading); at least 1.
        pub write_queue_ops: u32 = 2_000_000,
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
}

#[cfg(test)]
mod tests;
