//! The Alibaba Cloud mode's endpoints, under `/api/v1/aliyun/`:
//!
//! - `POST tokens` (ApplyToken), `POST tokens/revoke` (RevokeToken),
//!   `POST tokens/query` (QueryToken);
//! - `POST send` (SendMessage: topic, base64 payload, returns a message id);
//! - `GET clients/{clientId}/status` and `POST clients/status` (a batch):
//!   online or not and the last `connect`/`disconnect`/`tcpclean` event;
//! - `GET clients/{clientId}/events?limit=N`: the client's last events,
//!   newest first (at most 100, 20 by default).
//!
//! Tokens and status are read from and written to storage, so every node
//! answers the same; when storage cannot answer they answer 503
//! `storage-unavailable` (an applied token is stored before the 200).
//! All answer 404 `aliyun-disabled` when `mqtt.aliyun.enabled` is false.

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::State;
use super::error::{ApiError, json_response};
use super::util::{Query, parse_json, percent_decode, present};
use crate::aliyun::store::STATUS_LOG_KEEP;
use crate::aliyun::tokens::TokenError;
use crate::aliyun::{Aliyun, now_ms};
use crate::runtime::Runtime;
use easy_mqtt_core::session::Message;
use easy_mqtt_core::storage::StorageError;
use easy_mqtt_core::{ByteStr, QoS, topic};

/// Client ids in one status batch at most.
const MAX_STATUS_BATCH: usize = 100;
/// Events a history answer holds by default.
const DEFAULT_HISTORY: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Apply,
    Revoke,
    QueryToken,
    Send,
    Status,
    StatusBatch,
    Events,
}

/// Resources: a comma-separated string, or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Resources {
    Text(String),
    List(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ApplyBody {
    resources: Resources,
    actions: String,
    expire_time: u64,
    #[serde(default, deserialize_with = "present")]
    instance_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TokenBody {
    token: String,
    #[serde(default, deserialize_with = "present")]
    instance_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SendBody {
    mqtt_topic: String,
    payload: String,
    #[serde(default)]
    qos: u8,
    #[serde(default, deserialize_with = "present")]
    instance_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct StatusBatchBody {
    client_ids: Vec<String>,
}

fn check_instance(aliyun: &Aliyun, given: Option<&str>) -> Result<(), ApiError> {
    match given {
        Some(id) if id != aliyun.config.instance_id => Err(ApiError::not_found(
            "no-such-instance",
            format!("instanceId {id:?} is not this broker's instance"),
        )),
        _ => Ok(()),
    }
}

impl<R: Runtime> State<R> {
    /// Answers a request whose path starts with `/api/v1/aliyun/`.
    pub(super) async fn aliyun(
        &self,
        method: &Method,
        rest: &str,
        request: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, ApiError> {
        let path = request.uri().path().to_owned();
        let segments: Vec<&str> = rest.split('/').collect();
        let (endpoint, client_id) = match segments.as_slice() {
            ["tokens"] => (Endpoint::Apply, None),
            ["tokens", "revoke"] => (Endpoint::Revoke, None),
            ["tokens", "query"] => (Endpoint::QueryToken, None),
            ["send"] => (Endpoint::Send, None),
            ["clients", "status"] => (Endpoint::StatusBatch, None),
            ["clients", id, "status"] => (Endpoint::Status, Some(*id)),
            ["clients", id, "events"] => (Endpoint::Events, Some(*id)),
            _ => {
                return Err(ApiError::not_found(
                    "no-such-endpoint",
                    format!("no endpoint at {path}; see /api/v1/openapi.json"),
                ));
            }
        };
        let allow = if matches!(endpoint, Endpoint::Status | Endpoint::Events) {
            "GET"
        } else {
            "POST"
        };
        if method.as_str() != allow {
            return Err(ApiError::method_not_allowed(method, &path, allow));
        }
        let allowed: &[&str] = if endpoint == Endpoint::Events {
            &["limit"]
        } else {
            &[]
        };
        let query = Query::parse(request.uri().query(), allowed)?;
        let client_id = client_id
            .map(|id| percent_decode(id, false, "client id in the path"))
            .transpose()?;
        let aliyun = (self.node.policy())
            .and_then(|p| p.as_any().downcast_ref::<Aliyun>())
            .ok_or_else(|| {
                ApiError::not_found(
                    "aliyun-disabled",
                    "the Alibaba Cloud mode is off (mqtt.aliyun.enabled)",
                )
            })?;
        let value = match endpoint {
            Endpoint::Status => status(aliyun, client_id.as_deref().unwrap_or_default()).await?,
            Endpoint::Events => {
                let client_id = client_id.as_deref().unwrap_or_default();
                let limit = query.number("limit", DEFAULT_HISTORY, 1, STATUS_LOG_KEEP as usize)?;
                let events = (aliyun.history(client_id, limit).await).map_err(unavailable)?;
                json!({ "clientId": client_id, "events": events })
            }
            Endpoint::Apply => apply(aliyun, &self.json_body(request).await?).await?,
            Endpoint::Revoke => {
                let b: TokenBody = parse_json(&self.json_body(request).await?)?;
                check_instance(aliyun, b.instance_id.as_deref())?;
                let revoked = (aliyun.revoke_token(&b.token).await).map_err(unavailable)?;
                if revoked {
                    tracing::info!("token revoked through the API");
                }
                json!({ "revoked": revoked })
            }
            Endpoint::QueryToken => {
                let b: TokenBody = parse_json(&self.json_body(request).await?)?;
                check_instance(aliyun, b.instance_id.as_deref())?;
                match (aliyun.fetch_token(&b.token).await).map_err(unavailable)? {
                    Some(token) => json!({
                        "valid": token.is_valid(now_ms()),
                        "expireTime": token.expire_time,
                        "resources": token.resources,
                        "actions": actions_text(token.read, token.write),
                    }),
                    None => json!({ "valid": false }),
                }
            }
            Endpoint::Send => self.send(aliyun, &self.json_body(request).await?).await?,
            Endpoint::StatusBatch => {
                let b: StatusBatchBody = parse_json(&self.json_body(request).await?)?;
                if b.client_ids.is_empty() || b.client_ids.len() > MAX_STATUS_BATCH {
                    return Err(ApiError::bad_request(
                        "invalid-body",
                        format!(
                            "clientIds holds 1 to {MAX_STATUS_BATCH} client ids, got {}",
                            b.client_ids.len()
                        ),
                    ));
                }
                let mut clients = Vec::with_capacity(b.client_ids.len());
                for id in &b.client_ids {
                    clients.push(status(aliyun, id).await?);
                }
                json!({ "clients": clients })
            }
        };
        Ok(json_response(StatusCode::OK, &value))
    }

    async fn send(&self, aliyun: &Aliyun, body: &[u8]) -> Result<Value, ApiError> {
        let b: SendBody = parse_json(body)?;
        check_instance(aliyun, b.instance_id.as_deref())?;
        topic::validate_topic_name(&b.mqtt_topic)
            .and_then(|()| {
                topic::check_levels(
                    &b.mqtt_topic,
                    self.node.config().connection.max_topic_levels,
                )
            })
            .map_err(|e| {
                ApiError::bad_request(
                    "invalid-topic",
                    format!("mqttTopic {:?}: {e}", b.mqtt_topic),
                )
            })?;
        let qos = match b.qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            other => {
                return Err(ApiError::bad_request(
                    "invalid-qos",
                    format!("qos must be 0 or 1, got {other}"),
                ));
            }
        };
        let payload = base64::engine::general_purpose::STANDARD
            .decode(&b.payload)
            .map_err(|e| {
                ApiError::bad_request("invalid-payload", format!("payload is not base64: {e}"))
            })?;
        let delivered = self
            .node
            .publish_message_stored(Message {
                topic: ByteStr::from(b.mqtt_topic),
                payload: Bytes::from(payload),
                qos,
                retain: false,
            })
            .await
            .map_err(|e| super::handlers::storage_unavailable(&e))?;
        Ok(json!({ "msgId": aliyun.message_id(), "delivered": delivered }))
    }
}

fn actions_text(read: bool, write: bool) -> &'static str {
    match (read, write) {
        (true, true) => "R,W",
        (true, false) => "R",
        _ => "W",
    }
}

fn unavailable(error: StorageError) -> ApiError {
    tracing::warn!(%error, "Alibaba Cloud API call failed: storage unavailable");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "storage-unavailable",
        format!("tokens and client status are in storage, which cannot answer: {error}"),
    )
}

async fn apply(aliyun: &Aliyun, body: &[u8]) -> Result<Value, ApiError> {
    let b: ApplyBody = parse_json(body)?;
    check_instance(aliyun, b.instance_id.as_deref())?;
    let resources: Vec<String> = match b.resources {
        Resources::Text(text) => text.split(',').map(|r| r.trim().to_owned()).collect(),
        Resources::List(list) => list,
    };
    let (read, write) = match b.actions.replace(' ', "").as_str() {
        "R" => (true, false),
        "W" => (false, true),
        "R,W" | "W,R" => (true, true),
        other => {
            return Err(ApiError::bad_request(
                "invalid-actions",
                format!("actions must be R, W or R,W, got {other:?}"),
            ));
        }
    };
    let token = aliyun
        .apply_token(resources, read, write, b.expire_time)
        .await
        .map_err(|e| match e {
            TokenError::Invalid(e) => ApiError::bad_request("invalid-token-request", e.0),
            TokenError::Storage(e) => unavailable(e),
        })?;
    tracing::info!(
        actions = actions_text(read, write),
        expire_time = b.expire_time,
        "token applied through the API"
    );
    Ok(json!({ "token": token, "expireTime": b.expire_time }))
}

async fn status(aliyun: &Aliyun, client_id: &str) -> Result<Value, ApiError> {
    let (online, last) = (aliyun.status_of(client_id).await).map_err(unavailable)?;
    Ok(json!({ "clientId": client_id, "online": online, "lastEvent": last }))
}
