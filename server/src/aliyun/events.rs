//! Online/offline events: `connect`, `disconnect` (the client sent
//! DISCONNECT) and `tcpclean` (the connection ended any other way), each
//! published as JSON on `status-topic` (QoS 1, not retained) at once, and
//! stored for the HTTP API of every node ([`super::store`]): a log per
//! client (newest first, the last [`STATUS_LOG_KEEP`]) and the client's
//! current status as a record.
//!
//! `{"clientId", "time" (ms since the epoch), "eventType", "channelId"
//! (node id and connection id), "clientIp" (address:port)}`.
//!
//! Storing never holds up a connection: events go through a bounded queue
//! ([`STATUS_QUEUE`]) to one writer task per node, which retries a failed
//! write ([`STATUS_RETRIES`]), then logs and counts the event as lost
//! (`aliyun_status_lost`), as it does when the queue is full.
//!
//! Events of one client can cross (a takeover's new `connect` before the
//! old connection's `tcpclean`, possibly on another node): the record keeps
//! the channel of the last `connect`, and a `disconnect`/`tcpclean` of
//! another channel leaves the client online. (The record is read, then
//! written: two nodes writing events of one client at the same instant can
//! still cross; consumers can order events by `time` and `channelId`.)

use std::sync::Weak;
use std::time::Duration;

use bytes::Bytes;
use easy_mqtt_core::QoS;
use easy_mqtt_core::cluster::ClusterOp;
use easy_mqtt_core::session::Message;
use easy_mqtt_core::storage::StorageError;

use super::store::{STATUS_LOG_KEEP, STATUS_LOG_SPACE, STATUS_SPACE, decode};
use super::{Aliyun, now_ms};
use crate::driver::ConnectionInfo;
use crate::metrics::Metrics;
use crate::node::ClientCtx;

/// Events waiting for the writer, at most.
pub const STATUS_QUEUE: usize = 10_000;
/// The pauses between the attempts to store one event.
pub const STATUS_RETRIES: [Duration; 3] = [
    Duration::from_millis(100),
    Duration::from_secs(1),
    Duration::from_secs(5),
];

/// One status change.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusEvent {
    pub client_id: String,
    pub time: u64,
    pub event_type: String,
    pub channel_id: String,
    pub client_ip: Option<String>,
}

/// What storage holds of a client's status.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusRecord {
    pub last_event: StatusEvent,
    /// The channel of the last `connect` while it is connected.
    pub online_channel: Option<String>,
}

impl Aliyun {
    pub(super) fn event(&self, client: &ClientCtx<'_>, kind: &'static str, info: &ConnectionInfo) {
        let node = self.node_id.get().map_or("node", String::as_str);
        let event = StatusEvent {
            client_id: client.client_id.to_owned(),
            time: now_ms(),
            event_type: kind.to_owned(),
            channel_id: format!("{node}-{}", client.connection_id),
            client_ip: info.peer.map(|p| p.to_string()),
        };
        let payload = serde_json::to_vec(&event).unwrap_or_default();
        let node = self.node();
        if self.status_tx.try_send(event).is_err() {
            tracing::warn!(
                client_id = client.client_id,
                kind,
                "status event not stored: the writer's queue is full (storage slow or down)"
            );
            if let Some(node) = &node {
                Metrics::inc(&node.metrics().aliyun_status_lost);
            }
        }
        if let Some(node) = node {
            node.publish(Message {
                topic: self.config.status_topic.as_str().into(),
                payload: Bytes::from(payload),
                qos: QoS::AtLeastOnce,
                retain: false,
            });
        }
    }

    /// Stores the events of `events` in order until the mode is gone.
    pub(super) async fn status_writer(
        aliyun: Weak<Aliyun>,
        events: async_channel::Receiver<StatusEvent>,
    ) {
        while let Ok(event) = events.recv().await {
            let Some(aliyun) = aliyun.upgrade() else {
                return;
            };
            aliyun.store_event(&event).await;
        }
    }

    pub(super) async fn store_event(&self, event: &StatusEvent) {
        let mut pauses = STATUS_RETRIES.iter();
        loop {
            let error = match self.try_store_event(event).await {
                Ok(()) => return,
                Err(error) => error,
            };
            let node = self.node();
            if let Some(node) = &node {
                Metrics::inc(&node.metrics().storage_errors);
            }
            match pauses.next() {
                Some(pause) => {
                    tracing::debug!(client_id = event.client_id, %error, "storing a status event failed; retrying");
                    async_io::Timer::after(*pause).await;
                }
                None => {
                    tracing::warn!(
                        client_id = event.client_id,
                        event_type = event.event_type,
                        %error,
                        "status event not stored: storage kept failing"
                    );
                    if let Some(node) = &node {
                        Metrics::inc(&node.metrics().aliyun_status_lost);
                    }
                    return;
                }
            }
        }
    }

    async fn try_store_event(&self, event: &StatusEvent) -> Result<(), StorageError> {
        let shared = self.shared()?;
        let online_channel = if event.event_type == "connect" {
            Some(event.channel_id.clone())
        } else {
            let current = match shared.get(STATUS_SPACE, &event.client_id).await? {
                Some(bytes) => decode::<StatusRecord>(STATUS_SPACE, &event.client_id, &bytes)
                    .inspect_err(|error| tracing::warn!(%error, "status record replaced"))
                    .ok(),
                None => None,
            };
            current
                .and_then(|r| r.online_channel)
                .filter(|channel| *channel != event.channel_id)
        };
        let record = StatusRecord {
            last_event: event.clone(),
            online_channel,
        };
        let entry = serde_json::to_vec(event).unwrap_or_default();
        let record = serde_json::to_vec(&record).unwrap_or_default();
        shared
            .apply(vec![
                ClusterOp::PushLog {
                    space: STATUS_LOG_SPACE.into(),
                    key: event.client_id.as_str().into(),
                    entry: Bytes::from(entry),
                    keep: STATUS_LOG_KEEP,
                },
                ClusterOp::PutRecord {
                    space: STATUS_SPACE.into(),
                    key: event.client_id.as_str().into(),
                    value: Bytes::from(record),
                    ttl: None,
                },
            ])
            .await
    }

    /// Whether the client is online, and its last event, if any is stored.
    pub async fn status_of(
        &self,
        client_id: &str,
    ) -> Result<(bool, Option<StatusEvent>), StorageError> {
        match self.shared()?.get(STATUS_SPACE, client_id).await? {
            Some(bytes) => {
                let record: StatusRecord = decode(STATUS_SPACE, client_id, &bytes)?;
                Ok((record.online_channel.is_some(), Some(record.last_event)))
            }
            None => Ok((false, None)),
        }
    }

    /// The client's newest `max` events, newest first (entries that do not
    /// decode are skipped, and logged).
    pub async fn history(
        &self,
        client_id: &str,
        max: usize,
    ) -> Result<Vec<StatusEvent>, StorageError> {
        let entries = self
            .shared()?
            .read_log(STATUS_LOG_SPACE, client_id, max)
            .await?;
        Ok(entries
            .iter()
            .filter_map(|bytes| {
                decode::<StatusEvent>(STATUS_LOG_SPACE, client_id, bytes)
                    .inspect_err(|error| tracing::warn!(%error, "status log entry skipped"))
                    .ok()
            })
            .collect())
    }
}

/// Keeps the writer's sender type in one place.
pub(super) fn status_channel() -> (
    async_channel::Sender<StatusEvent>,
    async_channel::Receiver<StatusEvent>,
) {
    async_channel::bounded(STATUS_QUEUE)
}
