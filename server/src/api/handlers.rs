//! The endpoints: request bodies in, JSON values out. Routing, security
//! and limits are in `mod.rs`; every function here gets checked input and
//! answers a value or an [`ApiError`].

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use easy_mqtt_core::session::Message;
use easy_mqtt_core::storage::StorageError;
use easy_mqtt_core::{ByteStr, QoS, topic};
use hyper::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::util::{Query, parse_json, present, rfc3339};
use crate::admin::{ClientInfo, ClientPublishError, KickOutcome, RemoteClient};
use crate::node::Node;
use crate::runtime::Runtime;

/// Standard base64 for payloads in: padding optional, stray bits in the
/// last character ignored (as most decoders do). Out, payloads are
/// written padded with [`base64::engine::general_purpose::STANDARD`].
const BASE64_LENIENT: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Messages in one `POST /api/v1/publish/batch` at most.
pub const MAX_BATCH: usize = 1000;
/// Page size when `limit` is not given, and its largest value.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Encoding {
    #[default]
    Text,
    Base64,
}

/// `POST /api/v1/publish` (and a batch item without `clientId`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    topic: String,
    payload: String,
    #[serde(default)]
    encoding: Encoding,
    #[serde(default)]
    qos: u8,
    #[serde(default)]
    retain: bool,
}

/// `POST /api/v1/clients/{clientId}/publish`: no `retain`, since a
/// retained message would reach other clients later.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientPublishBody {
    topic: String,
    payload: String,
    #[serde(default)]
    encoding: Encoding,
    #[serde(default)]
    qos: u8,
}

/// One message of a batch: to a topic, or to one client with `clientId`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct BatchItem {
    #[serde(default, deserialize_with = "present")]
    client_id: Option<String>,
    topic: String,
    payload: String,
    #[serde(default)]
    encoding: Encoding,
    #[serde(default)]
    qos: u8,
    #[serde(default)]
    retain: bool,
}

/// A checked message and, for one-to-one, its recipient.
struct Outgoing {
    client_id: Option<String>,
    message: Message,
}

/// Checks the fields of a message to publish; `context` prefixes errors.
fn message<R: Runtime>(
    node: &Node<R>,
    context: &str,
    topic_name: String,
    payload: &str,
    encoding: Encoding,
    qos: u8,
    retain: bool,
) -> Result<Message, ApiError> {
    let invalid = |code: &'static str, detail: String| {
        ApiError::bad_request(code, format!("{context}{detail}"))
    };
    topic::validate_topic_name(&topic_name)
        .and_then(|()| topic::check_levels(&topic_name, node.config().connection.max_topic_levels))
        .map_err(|e| invalid("invalid-topic", format!("topic {topic_name:?}: {e}")))?;
    let qos = match qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        other => {
            return Err(invalid(
                "invalid-qos",
                format!("qos must be 0 or 1, got {other}"),
            ));
        }
    };
    let payload = match encoding {
        Encoding::Text => Bytes::copy_from_slice(payload.as_bytes()),
        Encoding::Base64 => BASE64_LENIENT
            .decode(payload)
            .map(Bytes::from)
            .map_err(|e| {
                invalid(
                    "invalid-payload",
                    format!("payload is not valid base64: {e}"),
                )
            })?,
    };
    Ok(Message {
        topic: ByteStr::from(topic_name),
        payload,
        qos,
        retain,
    })
}

/// 503: a durable node could not store the write; nothing was delivered.
pub fn storage_unavailable(error: &StorageError) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "storage-unavailable",
        format!("the message could not be stored, nothing was delivered: {error}"),
    )
}

pub async fn publish<R: Runtime>(node: &Node<R>, body: &[u8]) -> Result<Value, ApiError> {
    let b: PublishBody = parse_json(body)?;
    let message = message(node, "", b.topic, &b.payload, b.encoding, b.qos, b.retain)?;
    let delivered = node
        .publish_message_stored(message)
        .await
        .map_err(|e| storage_unavailable(&e))?;
    Ok(json!({ "delivered": delivered }))
}

pub async fn publish_to_client<R: Runtime>(
    node: &Node<R>,
    client_id: &str,
    body: &[u8],
) -> Result<Value, ApiError> {
    let b: ClientPublishBody = parse_json(body)?;
    let message = message(node, "", b.topic, &b.payload, b.encoding, b.qos, false)?;
    match node.publish_to_client_stored(client_id, message).await {
        Ok(taken) => Ok(json!({ "delivered": u8::from(taken) })),
        Err(ClientPublishError::UnknownClient) => Err(client_not_found(client_id)),
        Err(ClientPublishError::Storage(e)) => Err(storage_unavailable(&e)),
    }
}

pub async fn publish_batch<R: Runtime>(node: &Node<R>, body: &[u8]) -> Result<Value, ApiError> {
    let items: Vec<Value> = parse_json(body)?;
    if items.is_empty() || items.len() > MAX_BATCH {
        return Err(ApiError::bad_request(
            "invalid-body",
            format!(
                "a batch holds 1 to {MAX_BATCH} messages, got {}",
                items.len()
            ),
        ));
    }
    // Everything is checked before anything is published.
    let mut outgoing = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let context = format!("item {i}: ");
        let b: BatchItem = serde_json::from_value(item)
            .map_err(|e| ApiError::bad_request("invalid-body", format!("{context}{e}")))?;
        if b.client_id.is_some() && b.retain {
            return Err(ApiError::bad_request(
                "invalid-body",
                format!("{context}retain cannot be set on a message to one client"),
            ));
        }
        let message = message(
            node, &context, b.topic, &b.payload, b.encoding, b.qos, b.retain,
        )?;
        outgoing.push(Outgoing {
            client_id: b.client_id,
            message,
        });
    }
    let mut results: Vec<Value> = Vec::with_capacity(outgoing.len());
    for o in outgoing {
        let failed = |e: ApiError| json!({ "delivered": 0, "error": e.code, "detail": e.detail });
        results.push(match o.client_id {
            None => match node.publish_message_stored(o.message).await {
                Ok(delivered) => json!({ "delivered": delivered }),
                Err(e) => failed(storage_unavailable(&e)),
            },
            Some(id) => match node.publish_to_client_stored(&id, o.message).await {
                Ok(taken) => json!({ "delivered": u8::from(taken) }),
                Err(ClientPublishError::UnknownClient) => failed(client_not_found(&id)),
                Err(ClientPublishError::Storage(e)) => failed(storage_unavailable(&e)),
            },
        });
    }
    Ok(json!({ "results": results }))
}

/// 503: the cluster state in storage could not be read or written.
fn cluster_unavailable(error: &StorageError) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "storage-unavailable",
        format!("the cluster state in storage could not be reached: {error}"),
    )
}

fn client_not_found(client_id: &str) -> ApiError {
    ApiError::not_found(
        "client-not-found",
        format!("no session with client id {client_id:?}"),
    )
}

fn qos_number(qos: QoS) -> u8 {
    qos as u8
}

/// A session as JSON; `subscriptions` only when asked (details).
fn client_json<R: Runtime>(node: &Node<R>, client: &ClientInfo, with_subscriptions: bool) -> Value {
    let connection = client.connection.as_ref();
    let since = connection
        .filter(|_| client.connected)
        .map(|c| SystemTime::now() - node.now().saturating_duration_since(c.since))
        .map(rfc3339);
    let mut value = json!({
        "clientId": client.client_id.as_str(),
        "node": node.node_id(),
        "connected": client.connected,
        "connectedSince": since,
        "address": connection.and_then(|c| c.info.peer).map(|p| p.to_string()),
        "transport": connection.map(|c| c.info.transport.as_str()),
        "protocol": connection.map(|c| c.protocol.to_string()),
        "protocolLevel": connection.map(|c| c.protocol.level()),
        "cleanSession": client.clean_session,
        "keepAlive": connection.map(|c| c.keep_alive),
        "clientCertCn": connection.and_then(|c| c.info.client_cert_cn.as_deref()),
        "subscriptionCount": client.subscriptions.len(),
        "inflight": client.inflight,
        "queued": client.queued,
    });
    if with_subscriptions {
        value["subscriptions"] = subscriptions_json(&client.subscriptions);
    }
    value
}

/// A client connected to another node of the cluster, as its presence
/// record says.
fn remote_client_json(client: &RemoteClient) -> Value {
    let since = UNIX_EPOCH + Duration::from_millis(client.since_ms);
    json!({
        "clientId": client.client_id.as_str(),
        "node": client.node.as_str(),
        "connected": true,
        "connectedSince": rfc3339(since),
    })
}

fn subscriptions_json(subscriptions: &[(ByteStr, QoS)]) -> Value {
    subscriptions
        .iter()
        .map(|(filter, qos)| json!({ "filter": filter.as_str(), "qos": qos_number(*qos) }))
        .collect()
}

pub async fn list_clients<R: Runtime>(node: &Node<R>, query: &Query) -> Result<Value, ApiError> {
    let limit = query.number("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)?;
    let prefix = query.get("prefix").unwrap_or("");
    let cluster_scope = match query.get("scope") {
        None | Some("node") => false,
        Some("cluster") => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid-parameter",
                format!("query parameter `scope` must be `node` or `cluster`, got {other:?}"),
            ));
        }
    };
    if cluster_scope
        && let Some((clients, more)) = node
            .clients_in_cluster(prefix, query.get("after"), limit)
            .await
            .map_err(|e| cluster_unavailable(&e))?
    {
        let next = if more {
            clients.last().map(|c| c.client_id.as_str().to_owned())
        } else {
            None
        };
        let clients: Vec<Value> = clients.iter().map(remote_client_json).collect();
        return Ok(json!({ "clients": clients, "next": next }));
    }
    let (clients, more) = node.clients_page(prefix, query.get("after"), limit);
    let next = if more {
        clients.last().map(|c| c.client_id.as_str().to_owned())
    } else {
        None
    };
    let clients: Vec<Value> = clients
        .iter()
        .map(|c| client_json(node, c, false))
        .collect();
    Ok(json!({ "clients": clients, "next": next }))
}

pub async fn get_client<R: Runtime>(node: &Node<R>, client_id: &str) -> Result<Value, ApiError> {
    if node.holds_client(client_id)
        && let Some(client) = node.client_info(client_id)
    {
        return Ok(client_json(node, &client, true));
    }
    // In a cluster: connected to another node?
    if let Some(remote) = node
        .find_remote_client(client_id)
        .await
        .map_err(|e| cluster_unavailable(&e))?
    {
        return Ok(remote_client_json(&remote));
    }
    let client = node
        .client_info(client_id)
        .ok_or_else(|| client_not_found(client_id))?;
    Ok(client_json(node, &client, true))
}

pub fn client_subscriptions<R: Runtime>(
    node: &Node<R>,
    client_id: &str,
) -> Result<Value, ApiError> {
    let client = node
        .client_info(client_id)
        .ok_or_else(|| client_not_found(client_id))?;
    Ok(json!({
        "clientId": client.client_id.as_str(),
        "subscriptions": subscriptions_json(&client.subscriptions),
    }))
}

pub async fn kick<R: Runtime>(node: &Arc<Node<R>>, client_id: &str) -> Result<Value, ApiError> {
    let outcome = node
        .kick_in_cluster(client_id)
        .await
        .map_err(|e| cluster_unavailable(&e))?;
    match outcome {
        KickOutcome::Kicked => Ok(json!({ "clientId": client_id, "kicked": true })),
        KickOutcome::NotConnected => Err(ApiError::new(
            hyper::StatusCode::CONFLICT,
            "client-not-connected",
            format!("client {client_id:?} has a session but no connection to close"),
        )),
        KickOutcome::NotFound => Err(client_not_found(client_id)),
    }
}

/// A retained message: the payload as text when it is UTF-8, else base64.
fn retained_json(message: &Message) -> Value {
    let (payload, encoding) = match std::str::from_utf8(&message.payload) {
        Ok(text) => (text.to_owned(), "text"),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(&message.payload),
            "base64",
        ),
    };
    json!({
        "topic": message.topic.as_str(),
        "payload": payload,
        "encoding": encoding,
        "qos": qos_number(message.qos),
        "size": message.payload.len(),
    })
}

pub fn list_retained<R: Runtime>(node: &Node<R>, query: &Query) -> Result<Value, ApiError> {
    let limit = query.number("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)?;
    let (messages, more) = node.retained_page(query.get("after"), limit);
    let next = if more {
        messages.last().map(|m| m.topic.as_str().to_owned())
    } else {
        None
    };
    let messages: Vec<Value> = messages.iter().map(|m| retained_json(m)).collect();
    Ok(json!({ "messages": messages, "next": next }))
}

fn topic_param(query: &Query) -> Result<&str, ApiError> {
    let topic_name = query.get("topic").ok_or_else(|| {
        ApiError::bad_request("invalid-parameter", "query parameter `topic` is required")
    })?;
    topic::validate_topic_name(topic_name).map_err(|e| {
        ApiError::bad_request("invalid-topic", format!("topic {topic_name:?}: {e}"))
    })?;
    Ok(topic_name)
}

fn retained_not_found(topic_name: &str) -> ApiError {
    ApiError::not_found(
        "retained-not-found",
        format!("no retained message on topic {topic_name:?}"),
    )
}

pub fn get_retained<R: Runtime>(node: &Node<R>, query: &Query) -> Result<Value, ApiError> {
    let topic_name = topic_param(query)?;
    let message: Arc<Message> = node
        .retained_message(topic_name)
        .ok_or_else(|| retained_not_found(topic_name))?;
    Ok(retained_json(&message))
}

pub async fn delete_retained<R: Runtime>(node: &Node<R>, query: &Query) -> Result<Value, ApiError> {
    let topic_name = topic_param(query)?;
    let deleted = node
        .delete_retained_stored(topic_name)
        .await
        .map_err(|e| storage_unavailable(&e))?;
    if deleted {
        Ok(json!({ "topic": topic_name, "deleted": true }))
    } else {
        Err(retained_not_found(topic_name))
    }
}

/// `GET /api/v1/cluster`: this node and every node storage knows.
pub async fn cluster<R: Runtime>(node: &Node<R>) -> Result<Value, ApiError> {
    let info = node
        .cluster_info()
        .await
        .map_err(|e| cluster_unavailable(&e))?;
    let Some(info) = info else {
        return Ok(json!({ "enabled": false, "node": node.node_id(), "nodes": [] }));
    };
    let nodes: Vec<Value> = info
        .members
        .iter()
        .map(|m| {
            json!({
                "node": m.node.as_str(),
                "alive": m.alive,
                "incarnation": m.incarnation,
                "routes": m.routes,
                "clients": m.clients,
            })
        })
        .collect();
    Ok(json!({ "enabled": true, "node": info.node.as_str(), "nodes": nodes }))
}
