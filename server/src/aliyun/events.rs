//! Online/offline events: `connect`, `disconnect` (the client sent
//! DISCONNECT) and `tcpclean` (the connection ended any other way), each
//! published as JSON on `status-topic` (QoS 1, not retained) and kept per
//! client for the HTTP API:
//!
//! `{"clientId", "time" (ms since the epoch), "eventType", "channelId"
//! (node id and connection id), "clientIp" (address:port)}`.
//!
//! Events of one client can cross (a takeover's new `connect` before the
//! old connection's `tcpclean`): a client is online while any of its
//! channels is, and consumers can order events by `time` and `channelId`.

use std::collections::HashSet;

use bytes::Bytes;
use easy_mqtt_core::QoS;
use easy_mqtt_core::session::Message;

use super::{Aliyun, now_ms};
use crate::driver::ConnectionInfo;
use crate::node::ClientCtx;
use crate::sessions::lock;

/// One status change.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusEvent {
    pub client_id: String,
    pub time: u64,
    pub event_type: &'static str,
    pub channel_id: String,
    pub client_ip: Option<String>,
}

/// What is known of a client's connections.
#[derive(Debug, Clone, Default)]
pub struct ClientStatus {
    /// Channels connected now.
    pub channels: HashSet<String>,
    pub last: Option<StatusEvent>,
}

impl Aliyun {
    pub(super) fn event(&self, client: &ClientCtx<'_>, kind: &'static str, info: &ConnectionInfo) {
        let node = self.node_id.get().map_or("node", String::as_str);
        let event = StatusEvent {
            client_id: client.client_id.to_owned(),
            time: now_ms(),
            event_type: kind,
            channel_id: format!("{node}-{}", client.connection_id),
            client_ip: info.peer.map(|p| p.to_string()),
        };
        {
            let mut status = lock(&self.status);
            let entry = status.entry(event.client_id.clone()).or_default();
            if kind == "connect" {
                entry.channels.insert(event.channel_id.clone());
            } else {
                entry.channels.remove(&event.channel_id);
            }
            entry.last = Some(event.clone());
        }
        let payload = serde_json::to_vec(&event).unwrap_or_default();
        if let Some(node) = self.node() {
            node.publish(Message {
                topic: self.config.status_topic.as_str().into(),
                payload: Bytes::from(payload),
                qos: QoS::AtLeastOnce,
                retain: false,
            });
        }
    }

    /// Whether the client is online, and its last event, if any is known.
    pub fn status_of(&self, client_id: &str) -> (bool, Option<StatusEvent>) {
        match lock(&self.status).get(client_id) {
            Some(status) => (!status.channels.is_empty(), status.last.clone()),
            None => (false, None),
        }
    }
}
