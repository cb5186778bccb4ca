//! Helpers shared by the checks: loads that name the check on failure, and op builders.

use std::sync::Arc;

use bytes::Bytes;

use crate::packet::{ByteStr, PacketId, QoS};
use crate::session::{Message, OutboundPhase};
use crate::storage::{
    MessageId, Op, SessionRecord, SessionSubscriptions, Storage, StoredDelivery, StoredInflight,
    StoredSession,
};

pub(super) async fn apply(storage: &dyn Storage, check: &str, ops: Vec<Op>) {
    let shown = format!("{ops:?}");
    let result = storage.apply(ops).await;
    assert!(
        result.is_ok(),
        "{check}: {} apply failed: {result:?}; batch: {shown}",
        storage.name()
    );
}

pub(super) async fn load(
    storage: &dyn Storage,
    check: &str,
    client_id: &str,
) -> Option<StoredSession> {
    match storage.load_session(client_id).await {
        Ok(session) => session.map(normalized),
        Err(error) => panic!(
            "{check}: {} load_session({client_id}): {error}",
            storage.name()
        ),
    }
}

pub(super) async fn session(storage: &dyn Storage, check: &str, client_id: &str) -> StoredSession {
    let Some(session) = load(storage, check, client_id).await else {
        panic!("{check}: session {client_id} not found");
    };
    session
}

pub(super) async fn inbound_of(
    storage: &dyn Storage,
    check: &str,
    client_id: &str,
) -> Vec<PacketId> {
    session(storage, check, client_id).await.inbound_qos2
}

/// The sessions whose client id starts with `prefix`, by client id, as
/// `load_subscriptions` lists them.
pub(super) async fn listed_of(
    storage: &dyn Storage,
    check: &str,
    prefix: &str,
) -> Vec<SessionSubscriptions> {
    let mut all = match storage.load_subscriptions().await {
        Ok(all) => all,
        Err(error) => panic!("{check}: {} load_subscriptions: {error}", storage.name()),
    };
    all.retain(|listed| listed.record.client_id.starts_with(prefix));
    all.sort_by(|x, y| x.record.client_id.cmp(&y.record.client_id));
    all
}

/// The records and subscriptions of [`listed_of`].
pub(super) async fn subscriptions_of(
    storage: &dyn Storage,
    check: &str,
    prefix: &str,
) -> Vec<(SessionRecord, Vec<(ByteStr, QoS)>)> {
    listed_of(storage, check, prefix)
        .await
        .into_iter()
        .map(|listed| (listed.record, listed.subscriptions))
        .collect()
}

/// The retained messages whose topic starts with `prefix`, by topic.
pub(super) async fn retained_of(
    storage: &dyn Storage,
    check: &str,
    prefix: &str,
) -> Vec<Arc<Message>> {
    let mut all = match storage.load_retained().await {
        Ok(all) => all,
        Err(error) => panic!("{check}: {} load_retained: {error}", storage.name()),
    };
    all.retain(|message| message.topic.starts_with(prefix));
    all.sort_by(|x, y| x.topic.cmp(&y.topic));
    all
}

/// Everything a check can observe about its clients and topics.
pub(super) async fn snapshot(
    storage: &dyn Storage,
    check: &str,
    clients: &[&str],
    topic_prefix: &str,
) -> (
    Vec<Option<StoredSession>>,
    Vec<SessionSubscriptions>,
    Vec<Arc<Message>>,
) {
    let mut sessions = Vec::new();
    for client in clients {
        sessions.push(load(storage, check, client).await);
    }
    let mut subscriptions = listed_of(storage, check, "").await;
    subscriptions.retain(|listed| clients.contains(&listed.record.client_id.as_str()));
    let retained = retained_of(storage, check, topic_prefix).await;
    (sessions, subscriptions, retained)
}

/// Deletes the check's sessions and retained messages, then checks that they
/// are gone.
pub(super) async fn cleanup(storage: &dyn Storage, check: &str, clients: &[&str], topics: &[&str]) {
    let mut ops: Vec<Op> = clients
        .iter()
        .map(|client| delete_session(client))
        .collect();
    ops.extend(topics.iter().map(|topic| set_retained(topic, None)));
    apply(storage, check, ops).await;
    for client in clients {
        assert_eq!(
            load(storage, check, client).await,
            None,
            "{check}: cleanup deletes {client}"
        );
    }
    let retained = retained_of(storage, check, "").await;
    for topic in topics {
        assert!(
            !retained.iter().any(|message| message.topic == *topic),
            "{check}: cleanup clears retained {topic}"
        );
    }
}

/// Sorts what the contract leaves unordered.
pub(super) fn normalized(mut session: StoredSession) -> StoredSession {
    session.inbound_qos2.sort_unstable();
    session
}

pub(super) fn pid(n: u16) -> PacketId {
    let Some(id) = PacketId::new(n) else {
        panic!("packet id 0");
    };
    id
}

pub(super) fn message(topic: &str, payload: &str, qos: QoS) -> Arc<Message> {
    Arc::new(Message {
        topic: ByteStr::from(topic),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos,
        retain: false,
    })
}

pub(super) fn binary_message(topic: &str, payload: &[u8], qos: QoS) -> Arc<Message> {
    Arc::new(Message {
        topic: ByteStr::from(topic),
        payload: Bytes::copy_from_slice(payload),
        qos,
        retain: false,
    })
}

pub(super) fn record(client_id: &str, created_at_ms: u64) -> SessionRecord {
    SessionRecord {
        client_id: ByteStr::from(client_id),
        created_at_ms,
    }
}

pub(super) fn empty(client_id: &str, created_at_ms: u64) -> StoredSession {
    StoredSession {
        record: record(client_id, created_at_ms),
        subscriptions: vec![],
        inflight: vec![],
        queue: vec![],
        inbound_qos2: vec![],
    }
}

pub(super) fn delivery(
    id: MessageId,
    message: &Arc<Message>,
    qos: QoS,
    retain: bool,
) -> StoredDelivery {
    StoredDelivery {
        id,
        message: Arc::clone(message),
        qos,
        retain,
        at_ms: stored_at(id),
    }
}

/// The time [`put_message`] stores a body with: one per id, so that every
/// check also checks that loads return the time of the body.
pub(super) fn stored_at(id: MessageId) -> u64 {
    1_700_000_000_000 + id.sequence()
}

pub(super) fn inflight(
    packet_id: u16,
    delivery: StoredDelivery,
    phase: OutboundPhase,
) -> StoredInflight {
    StoredInflight {
        packet_id: pid(packet_id),
        delivery,
        phase,
    }
}

pub(super) fn put_session(client_id: &str, created_at_ms: u64) -> Op {
    Op::PutSession(record(client_id, created_at_ms))
}

pub(super) fn delete_session(client_id: &str) -> Op {
    Op::DeleteSession {
        client_id: ByteStr::from(client_id),
    }
}

pub(super) fn subscribe(client_id: &str, filter: &str, qos: QoS) -> Op {
    Op::Subscribe {
        client_id: ByteStr::from(client_id),
        filter: ByteStr::from(filter),
        qos,
    }
}

pub(super) fn unsubscribe(client_id: &str, filter: &str) -> Op {
    Op::Unsubscribe {
        client_id: ByteStr::from(client_id),
        filter: ByteStr::from(filter),
    }
}

pub(super) fn put_message(id: MessageId, message: Arc<Message>) -> Op {
    put_message_at(id, message, stored_at(id))
}

pub(super) fn put_message_at(id: MessageId, message: Arc<Message>, at_ms: u64) -> Op {
    Op::PutMessage { id, message, at_ms }
}

pub(super) fn enqueue(client_id: &str, id: MessageId, qos: QoS, retain: bool) -> Op {
    Op::Enqueue {
        client_id: ByteStr::from(client_id),
        id,
        qos,
        retain,
    }
}

pub(super) fn dequeue(client_id: &str, id: MessageId) -> Op {
    Op::Dequeue {
        client_id: ByteStr::from(client_id),
        id,
    }
}

/// A send of `id` under `packet_id`, with the QoS and RETAIN it is sent
/// with.
pub(super) fn set_inflight(
    client_id: &str,
    packet_id: u16,
    id: MessageId,
    phase: OutboundPhase,
    (qos, retain): (QoS, bool),
) -> Op {
    Op::SetInflight {
        client_id: ByteStr::from(client_id),
        packet_id: pid(packet_id),
        id,
        phase,
        qos,
        retain,
    }
}

pub(super) fn complete_inflight(client_id: &str, packet_id: u16) -> Op {
    Op::CompleteInflight {
        client_id: ByteStr::from(client_id),
        packet_id: pid(packet_id),
    }
}

pub(super) fn add_inbound(client_id: &str, packet_id: u16) -> Op {
    Op::AddInboundQos2 {
        client_id: ByteStr::from(client_id),
        packet_id: pid(packet_id),
    }
}

pub(super) fn remove_inbound(client_id: &str, packet_id: u16) -> Op {
    Op::RemoveInboundQos2 {
        client_id: ByteStr::from(client_id),
        packet_id: pid(packet_id),
    }
}

pub(super) fn set_retained(topic: &str, message: Option<&Arc<Message>>) -> Op {
    Op::SetRetained {
        topic: ByteStr::from(topic),
        message: message.map(Arc::clone),
    }
}
