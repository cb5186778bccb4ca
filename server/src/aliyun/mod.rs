//! The Alibaba Cloud MQTT compatibility mode (`mqtt.aliyun`), so that
//! devices built for Alibaba Cloud's MQTT service ("ApsaraMQ for MQTT")
//! connect unchanged:
//!
//! - CONNECT: signature, token and custom-identity user names and
//!   `GroupID@@@DeviceID` client ids ([`auth`]), in front of the
//!   authentication URL;
//! - tokens ([`tokens`]): applied and revoked through the HTTP API,
//!   enforced on SUBSCRIBE (R) and PUBLISH (W), replaced by a publish to
//!   `$SYS/uploadToken`, with `$SYS/tokenExpireNotice` and
//!   `$SYS/tokenInvalidNotice` pushed to the clients using them;
//! - point-to-point topics `<parent>/p2p/<clientId>` ([`p2p`]);
//! - `connect`/`disconnect`/`tcpclean` events on `status-topic` and in the
//!   HTTP API ([`events`]);
//! - offline messages older than `offline-message-retention` are dropped
//!   when their client comes back (`Aliyun::expire_offline`).
//!
//! The node sees this mode through [`Policy`] (rights, p2p, connection
//! events) and the [`Authenticator`] chain. Tokens and client status are
//! kept in storage ([`store`]): with a durable backend every node of a
//! cluster sees them and they survive a restart.

pub mod auth;
pub mod events;
pub mod p2p;
pub mod store;
pub mod tokens;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_executor::Executor;
use bytes::Bytes;
use easy_mqtt_core::QoS;
use easy_mqtt_core::packet::{Connect, Publish};
use easy_mqtt_core::session::{CloseReason, Message};
use easy_mqtt_core::storage::{Storage, StorageError};
use easy_mqtt_storage_memory::MemoryStorage;

use crate::auth::Authenticator;
use crate::config::{AliyunConfig, AliyunSignMode, Config};
use crate::driver::ConnectionInfo;
use crate::metrics::Metrics;
use crate::node::{ClientCtx, Node, Policy};
use crate::runtime::Runtime;
use crate::sessions::lock;
use auth::{AliyunAuthenticator, Mode, TokenPair};
use events::StatusEvent;
use store::Shared;
use tokens::{TOKEN_RECHECK, TokenStore};

/// The topic a client publishes a new token to.
pub const UPLOAD_TOKEN_TOPIC: &str = "$SYS/uploadToken";
/// Pushed to a client before its token expires.
pub const EXPIRE_NOTICE_TOPIC: &str = "$SYS/tokenExpireNotice";
/// Pushed to a client whose token was revoked.
pub const INVALID_NOTICE_TOPIC: &str = "$SYS/tokenInvalidNotice";
/// How often tokens in use are checked.
const TICK: Duration = Duration::from_millis(250);
/// Between a `tokenInvalidNotice` and closing a connection left with no
/// rights, so that the notice reaches the client first.
const CLOSE_GRACE_MS: u64 = 1000;

/// Milliseconds since the Unix epoch (the unit of token expiry times).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What this mode asks of the node, without its runtime type.
pub(crate) trait NodeOps: Send + Sync {
    /// Routes a message as a client's publish would.
    fn publish(&self, message: Message) -> usize;
    /// Hands a message to one session.
    fn deliver_to(&self, client_id: &str, message: Message) -> bool;
    /// Closes one network connection by id.
    fn close_connection_id(&self, id: u64) -> bool;
    /// Drops the messages queued for the session of connection `id` that
    /// were enqueued before `before_ms`; how many.
    fn expire_queued(&self, id: u64, before_ms: u64) -> usize;
    fn metrics(&self) -> &Metrics;
    /// Runs a task in the background.
    fn spawn(&self, task: Pin<Box<dyn Future<Output = ()> + Send + 'static>>);
}

impl<R: Runtime> NodeOps for Node<R> {
    fn publish(&self, message: Message) -> usize {
        self.route(Arc::new(message), &mut Vec::new())
    }

    fn deliver_to(&self, client_id: &str, message: Message) -> bool {
        self.deliver_direct(client_id, Arc::new(message))
    }

    fn close_connection_id(&self, id: u64) -> bool {
        let cell = lock(&self.connections).get(&id).and_then(Weak::upgrade);
        let Some(cell) = cell else { return false };
        cell.close(CloseReason::Kicked, self.runtime.now());
        true
    }

    fn expire_queued(&self, id: u64, before_ms: u64) -> usize {
        let cell = lock(&self.connections).get(&id).and_then(Weak::upgrade);
        let Some(cell) = cell else { return 0 };
        let mut inner = lock(&cell.inner);
        let expired = (inner.conn.session_mut()).map_or(0, |s| s.expire_queued(before_ms));
        if expired > 0 {
            Metrics::add(&self.metrics.dropped_expired, expired as u64);
            // Its driver writes the journaled removals.
            inner.wake();
        }
        expired
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn spawn(&self, task: Pin<Box<dyn Future<Output = ()> + Send + 'static>>) {
        self.runtime.spawn(task);
    }
}

/// What a connection may do.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rights {
    /// Signature mode or a custom identity: everything but the reserved topics.
    Full,
    /// Token mode: what the tokens still in force grant.
    Tokens(TokenPair),
    /// Not an Alibaba Cloud user name (decided by the authentication URL,
    /// or anonymous): as without this mode, but the reserved topics.
    Other,
}

#[derive(Debug)]
struct Conn {
    client_id: String,
    rights: Rights,
    /// Tokens whose expiry notice was sent.
    noticed: HashSet<String>,
    /// When a connection left without rights is closed.
    close_at: Option<u64>,
    closing: bool,
}

/// Something the periodic check wants done to the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Notice {
        client_id: String,
        topic: &'static str,
        payload: String,
    },
    Close {
        connection_id: u64,
        client_id: String,
    },
}

/// The state of the mode: keys, the token cache, connections' rights, and
/// where tokens and client status are stored.
pub struct Aliyun {
    pub(crate) config: AliyunConfig,
    keys: HashMap<String, String>,
    identities: HashMap<String, (String, AliyunSignMode)>,
    /// This node's cache of the tokens in storage ([`tokens`]).
    pub tokens: TokenStore,
    conns: Mutex<HashMap<u64, Conn>>,
    /// Tokens and client status: set by [`Aliyun::attach`].
    shared: OnceLock<Shared>,
    /// Status events on their way to storage ([`events`]).
    status_tx: async_channel::Sender<StatusEvent>,
    status_rx: Mutex<Option<async_channel::Receiver<StatusEvent>>>,
    me: OnceLock<Weak<Aliyun>>,
    node: OnceLock<Weak<dyn NodeOps>>,
    node_id: OnceLock<String>,
    next_message: AtomicU64,
}

impl std::fmt::Debug for Aliyun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets.
        f.debug_struct("Aliyun")
            .field("instance_id", &self.config.instance_id)
            .finish_non_exhaustive()
    }
}

/// The authenticator and the policy the configuration asks for: with
/// `mqtt.aliyun.enabled`, the Alibaba Cloud authenticator in front of
/// `fallback` (the HTTP one, if any); otherwise `fallback` alone.
pub fn wire(
    config: &Config,
    fallback: Option<Arc<dyn Authenticator>>,
) -> (Option<Arc<dyn Authenticator>>, Option<Arc<Aliyun>>) {
    if !config.mqtt.aliyun.enabled {
        return (fallback, None);
    }
    let aliyun = Arc::new(Aliyun::new(config.mqtt.aliyun.clone()));
    tracing::info!(
        instance_id = %aliyun.config.instance_id,
        access_keys = aliyun.keys.len(),
        identities = aliyun.identities.len(),
        authentication_url = fallback.is_some(),
        status_topic = %aliyun.config.status_topic,
        "Alibaba Cloud compatibility mode on"
    );
    let authenticator = AliyunAuthenticator {
        aliyun: aliyun.clone(),
        fallback,
    };
    (Some(Arc::new(authenticator)), Some(aliyun))
}

impl Aliyun {
    pub fn new(config: AliyunConfig) -> Aliyun {
        let keys = (config.access_keys.iter())
            .map(|k| (k.id.clone(), k.secret.clone()))
            .collect();
        let identities = (config.identities.iter())
            .map(|i| (i.username.clone(), (i.secret.clone(), i.sign_mode)))
            .collect();
        let (status_tx, status_rx) = events::status_channel();
        Aliyun {
            config,
            keys,
            identities,
            tokens: TokenStore::default(),
            conns: Mutex::new(HashMap::new()),
            shared: OnceLock::new(),
            status_tx,
            status_rx: Mutex::new(Some(status_rx)),
            me: OnceLock::new(),
            node: OnceLock::new(),
            node_id: OnceLock::new(),
            next_message: AtomicU64::new(1),
        }
    }

    /// Connects the mode to its node and its storage, and starts on
    /// `executor` the periodic token checks (every [`TICK`] in memory,
    /// every [`TOKEN_RECHECK`] against storage) and the status writer.
    /// They end when the mode is gone.
    pub fn attach<R: Runtime>(self: &Arc<Self>, node: &Arc<Node<R>>, executor: &Executor<'static>) {
        let ops: Weak<dyn NodeOps> = Arc::downgrade(node) as Weak<dyn NodeOps>;
        let _ = self.node.set(ops);
        let _ = self.me.set(Arc::downgrade(self));
        let _ = self.node_id.set(node.config().node_id.clone());
        let storage: Arc<dyn Storage> = node.storage.clone();
        let shared = Shared::of(storage.clone()).or_else(|| {
            if storage.is_durable() {
                tracing::warn!(
                    backend = storage.name(),
                    "this storage backend has no cluster records: Alibaba Cloud tokens and client status stay in this node's memory"
                );
            }
            Shared::of(Arc::new(MemoryStorage::new()))
        });
        match shared {
            Some(shared) => {
                let _ = self.shared.set(shared);
            }
            None => tracing::error!(
                "no storage for Alibaba Cloud tokens and client status: token mode CONNECTs are refused (3), token API calls answer 503"
            ),
        }
        let weak = Arc::downgrade(self);
        executor
            .spawn(async move {
                loop {
                    async_io::Timer::after(TICK).await;
                    let Some(aliyun) = weak.upgrade() else { return };
                    let actions = aliyun.tick(now_ms());
                    aliyun.apply(actions);
                }
            })
            .detach();
        let weak = Arc::downgrade(self);
        executor
            .spawn(async move {
                loop {
                    async_io::Timer::after(TOKEN_RECHECK).await;
                    let Some(aliyun) = weak.upgrade() else { return };
                    aliyun.recheck_tokens().await;
                }
            })
            .detach();
        if let Some(events) = lock(&self.status_rx).take() {
            executor
                .spawn(Aliyun::status_writer(Arc::downgrade(self), events))
                .detach();
        }
    }

    fn node(&self) -> Option<Arc<dyn NodeOps>> {
        self.node.get().and_then(Weak::upgrade)
    }

    /// Where tokens and client status are stored.
    pub(crate) fn shared(&self) -> Result<&Shared, StorageError> {
        self.shared.get().ok_or_else(|| {
            StorageError::Unavailable("no storage for the Alibaba Cloud mode".to_owned())
        })
    }

    /// The tokens this node's connections use.
    fn tokens_in_use(&self) -> HashSet<String> {
        let conns = lock(&self.conns);
        let pairs = conns.values().filter_map(|c| match &c.rights {
            Rights::Tokens(pair) => Some(pair),
            _ => None,
        });
        pairs
            .flat_map(|p| p.read.iter().chain(p.write.iter()))
            .cloned()
            .collect()
    }

    /// The allowed validity of a token, in ms.
    pub fn token_limits(&self) -> (u64, u64) {
        (
            u64::from(self.config.token_min_expiry) * 1000,
            u64::from(self.config.token_max_expiry) * 1000,
        )
    }

    /// A new message id for the `SendMessage`-style API.
    pub fn message_id(&self) -> String {
        let n = (self.next_message).fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let node = self.node_id.get().map_or("node", String::as_str);
        format!("{node}-{:x}-{n}", now_ms())
    }

    /// Checks the tokens in use at `now_ms`: expiry notices, revocations,
    /// connections left without rights. Returns what to do to the node.
    pub fn tick(&self, now_ms: u64) -> Vec<Action> {
        let notice_ms = u64::from(self.config.token_expire_notice) * 1000;
        let mut actions = Vec::new();
        let mut conns = lock(&self.conns);
        for (id, conn) in conns.iter_mut() {
            let Rights::Tokens(pair) = &mut conn.rights else {
                continue;
            };
            let mut invalidated = false;
            for (slot, kind) in [(&mut pair.read, "R"), (&mut pair.write, "W")] {
                let Some(name) = slot.clone() else { continue };
                match self.tokens.get(&name) {
                    None => {
                        *slot = None;
                        invalidated = true;
                        actions.push(Action::Notice {
                            client_id: conn.client_id.clone(),
                            topic: INVALID_NOTICE_TOPIC,
                            payload: serde_json::json!({ "token": name, "type": kind }).to_string(),
                        });
                    }
                    Some(token) if !token.is_valid(now_ms) => *slot = None,
                    Some(token)
                        if now_ms.saturating_add(notice_ms) >= token.expire_time
                            && conn.noticed.insert(name.clone()) =>
                    {
                        actions.push(Action::Notice {
                            client_id: conn.client_id.clone(),
                            topic: EXPIRE_NOTICE_TOPIC,
                            payload: serde_json::json!({
                                "token": name,
                                "type": kind,
                                "expireTime": token.expire_time,
                            })
                            .to_string(),
                        });
                    }
                    Some(_) => {}
                }
            }
            if pair.read.is_none() && pair.write.is_none() && !conn.closing {
                let grace = if invalidated { CLOSE_GRACE_MS } else { 0 };
                let at = *conn.close_at.get_or_insert(now_ms + grace);
                if now_ms >= at {
                    conn.closing = true;
                    actions.push(Action::Close {
                        connection_id: *id,
                        client_id: conn.client_id.clone(),
                    });
                }
            }
        }
        drop(conns);
        // Expired tokens are still known (as expired) for an hour.
        self.tokens.purge(now_ms.saturating_sub(3_600_000));
        actions
    }

    fn apply(&self, actions: Vec<Action>) {
        if actions.is_empty() {
            return;
        }
        let Some(node) = self.node() else { return };
        for action in actions {
            match action {
                Action::Notice {
                    client_id,
                    topic,
                    payload,
                } => {
                    tracing::info!(client_id, topic, "pushing token notice");
                    node.deliver_to(
                        &client_id,
                        Message {
                            topic: topic.into(),
                            payload: Bytes::from(payload),
                            qos: QoS::AtMostOnce,
                            retain: false,
                        },
                    );
                }
                Action::Close {
                    connection_id,
                    client_id,
                } => {
                    tracing::info!(
                        client_id,
                        connection_id,
                        "closing a token-mode connection: its tokens expired or were revoked"
                    );
                    node.close_connection_id(connection_id);
                }
            }
        }
    }

    /// The rights of a connection from its user name and password.
    fn rights_of(&self, connect: &Connect) -> Rights {
        let Some(username) = connect.username.as_deref() else {
            return Rights::Other;
        };
        match self.mode(username) {
            Some(Mode::Signature { .. } | Mode::Identity) => Rights::Full,
            Some(Mode::Token { .. }) => {
                let password = connect.password.as_deref().unwrap_or_default();
                let pair = std::str::from_utf8(password)
                    .ok()
                    .and_then(auth::parse_token_password)
                    .unwrap_or_default();
                Rights::Tokens(pair)
            }
            Some(Mode::Malformed) | None => Rights::Other,
        }
    }

    /// A publish to `$SYS/uploadToken`: `{"token": "...", "type": "R"}`
    /// (`R`, `W` or `RW`) replaces the connection's token(s) of that type.
    fn upload_token(&self, client: &ClientCtx<'_>, payload: &[u8]) {
        #[derive(serde::Deserialize)]
        struct Upload {
            token: String,
            #[serde(rename = "type")]
            kind: String,
        }
        let client_id = client.client_id;
        let Ok(upload) = serde_json::from_slice::<Upload>(payload) else {
            tracing::info!(
                client_id,
                "token upload ignored: not {{\"token\", \"type\"}}"
            );
            return;
        };
        let (read, write) = match upload.kind.as_str() {
            "R" => (true, false),
            "W" => (false, true),
            "RW" | "R,W" => (true, true),
            _ => {
                tracing::info!(
                    client_id,
                    kind = upload.kind,
                    "token upload ignored: bad type"
                );
                return;
            }
        };
        let now = now_ms();
        let recheck_ms = u64::try_from(TOKEN_RECHECK.as_millis()).unwrap_or(u64::MAX);
        if let Some(token) = self.tokens.get_fresh(&upload.token, now, recheck_ms) {
            self.replace_token(client, upload.token, &token, read, write, now);
            return;
        }
        // Not confirmed by storage lately: read it, then replace (the
        // PUBACK may leave before that).
        let (Some(me), Some(node)) = (self.me.get().and_then(Weak::upgrade), self.node()) else {
            return;
        };
        let client_id = client_id.to_owned();
        let connection_id = client.connection_id;
        node.spawn(Box::pin(async move {
            let client = ClientCtx {
                client_id: &client_id,
                connection_id,
            };
            match me.fetch_token(&upload.token).await {
                Ok(Some(token)) => {
                    me.replace_token(&client, upload.token, &token, read, write, now_ms());
                }
                Ok(None) => {
                    tracing::info!(client_id, "token upload ignored: unknown token");
                }
                Err(error) => {
                    tracing::warn!(client_id, %error, "token upload ignored: the token cannot be checked");
                }
            }
        }));
    }

    /// Puts an uploaded token in force for `read` and/or `write`.
    fn replace_token(
        &self,
        client: &ClientCtx<'_>,
        name: String,
        token: &tokens::Token,
        read: bool,
        write: bool,
        now_ms: u64,
    ) {
        let client_id = client.client_id;
        if !token.is_valid(now_ms) {
            tracing::info!(client_id, "token upload ignored: expired token");
            return;
        }
        if (read && !token.read) || (write && !token.write) {
            tracing::info!(
                client_id,
                "token upload ignored: the token lacks the rights"
            );
            return;
        }
        let mut conns = lock(&self.conns);
        let Some(conn) = conns.get_mut(&client.connection_id) else {
            return;
        };
        let Rights::Tokens(pair) = &mut conn.rights else {
            tracing::info!(
                client_id,
                "token upload ignored: not a token-mode connection"
            );
            return;
        };
        if read {
            pair.read = Some(name.clone());
        }
        if write {
            pair.write = Some(name);
        }
        conn.close_at = None;
        tracing::info!(client_id, read, write, "token replaced");
    }

    /// Offline-message retention: drops what was queued for this client
    /// while it was away longer than `offline-message-retention` ago,
    /// before any of it is sent (this runs right after the CONNECT is
    /// accepted, before the connection writes). A message loaded from
    /// storage counts from the time its body was stored (so its age
    /// survives a restart), or from the load when that time is unknown
    /// (stored by an older version).
    fn expire_offline(&self, client: &ClientCtx<'_>) {
        let retention_ms = u64::from(self.config.offline_message_retention) * 1000;
        let Some(node) = self.node() else { return };
        let expired =
            node.expire_queued(client.connection_id, now_ms().saturating_sub(retention_ms));
        if expired > 0 {
            tracing::info!(
                client_id = client.client_id,
                expired,
                retention_s = self.config.offline_message_retention,
                "offline messages older than the retention dropped"
            );
        }
    }

    fn rights(&self, connection_id: u64) -> Option<Rights> {
        lock(&self.conns)
            .get(&connection_id)
            .map(|c| c.rights.clone())
    }
}

impl Policy for Aliyun {
    fn authorize_publish(&self, client: &ClientCtx<'_>, publish: &Publish) -> bool {
        let topic = publish.topic.as_str();
        if topic == UPLOAD_TOKEN_TOPIC {
            self.upload_token(client, &publish.payload);
            return false;
        }
        if topic == self.config.status_topic
            || topic == EXPIRE_NOTICE_TOPIC
            || topic == INVALID_NOTICE_TOPIC
        {
            tracing::info!(
                client_id = client.client_id,
                topic,
                "publish to a reserved topic dropped"
            );
            return false;
        }
        let Some(Rights::Tokens(pair)) = self.rights(client.connection_id) else {
            return true;
        };
        let allowed = (pair.write.as_deref())
            .and_then(|t| self.tokens.get_valid(t, now_ms()))
            .is_some_and(|t| t.write && t.allows_topic(topic));
        if !allowed {
            tracing::info!(
                client_id = client.client_id,
                topic,
                "publish dropped: no W token for this topic"
            );
        }
        allowed
    }

    fn authorize_subscribe(&self, client: &ClientCtx<'_>, filter: &str) -> bool {
        let Some(Rights::Tokens(pair)) = self.rights(client.connection_id) else {
            return true;
        };
        let allowed = (pair.read.as_deref())
            .and_then(|t| self.tokens.get_valid(t, now_ms()))
            .is_some_and(|t| t.read && t.allows_filter(filter));
        if !allowed {
            tracing::info!(
                client_id = client.client_id,
                filter,
                "subscription refused: no R token for this filter"
            );
        }
        allowed
    }

    fn direct_target<'a>(&self, topic: &'a str) -> Option<&'a str> {
        p2p::target(topic)
    }

    fn on_connected(&self, client: &ClientCtx<'_>, connect: &Connect, info: &ConnectionInfo) {
        let rights = self.rights_of(connect);
        lock(&self.conns).insert(
            client.connection_id,
            Conn {
                client_id: client.client_id.to_owned(),
                rights,
                noticed: HashSet::new(),
                close_at: None,
                closing: false,
            },
        );
        self.event(client, "connect", info);
        self.expire_offline(client);
    }

    fn on_disconnected(&self, client: &ClientCtx<'_>, reason: &CloseReason, info: &ConnectionInfo) {
        lock(&self.conns).remove(&client.connection_id);
        let kind = match reason {
            CloseReason::ClientDisconnect => "disconnect",
            _ => "tcpclean",
        };
        self.event(client, kind, info);
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

#[cfg(test)]
mod tests;
