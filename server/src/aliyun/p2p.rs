//! Point-to-point messages: `<parentTopic>/p2p/<clientId>` goes to that
//! client only, without a subscription, on the topic as published.
//!
//! Where the target's session is:
//! - **held here** (connected, or its persistent session kept here): as a
//!   route to that one session, stored in its queue first when it is
//!   persistent on a durable node ([`Node::prepare_direct`]);
//! - **given up** to another node during a takeover: forwarded there, as
//!   routes do;
//! - **anywhere else in a cluster**: this node does not know where, and
//!   finding out is a storage read. The message goes as a `Direct` bus
//!   entry to this node's own inbox, written in the publish's batch (so the
//!   PUBACK still means stored; QoS 0 through the outbox). Serving its
//!   inbox, this node then does what it does for any `Direct` entry it is
//!   not the owner of: it looks the owner of record up and forwards the
//!   entry there, durably; with no live owner, the message goes into the
//!   client's persistent session in storage (QoS 1/2), which the node that
//!   next loads it (its client reconnecting anywhere, or an adopter)
//!   delivers; a client unknown everywhere gets nothing. This is the path
//!   of the HTTP API's one-to-one publish to a client on another node,
//!   with one more inbox hop, so that the publisher's batch needs no read.

use std::sync::Arc;

use easy_mqtt_core::cluster::{BusEntry, ClusterOp};
use easy_mqtt_core::session::{Delivery, Message};
use easy_mqtt_core::storage::{MessageId, Op};
use easy_mqtt_core::{ByteStr, QoS};

use crate::cluster::ClusterState;
use crate::node::Node;
use crate::persist::PreparedRoute;
use crate::runtime::Runtime;
use crate::sessions::{SessionEntry, SessionKey, lock};

/// The target client id of a point-to-point topic: exactly three levels,
/// the second `p2p`, the first and third not empty.
pub fn target(topic: &str) -> Option<&str> {
    let mut levels = topic.splitn(3, '/');
    let parent = levels.next()?;
    let p2p = levels.next()?;
    let client_id = levels.next()?;
    (!parent.is_empty()
        && !parent.starts_with('$')
        && p2p == "p2p"
        && !client_id.is_empty()
        && !client_id.contains('/'))
    .then_some(client_id)
}

/// A p2p message is never retained: it goes to one client, now.
fn not_retained(message: Arc<Message>) -> Arc<Message> {
    if !message.retain {
        return message;
    }
    Arc::new(Message {
        retain: false,
        ..Message::clone(&message)
    })
}

impl<R: Runtime> Node<R> {
    /// The client a message on `topic` goes to alone, when the policy
    /// makes it a point-to-point topic.
    pub(crate) fn direct_target(&self, topic: &str) -> Option<String> {
        (self.policy.as_ref())
            .and_then(|p| p.direct_target(topic))
            .map(str::to_owned)
    }

    /// The session of `client_id` if this node holds it (not removed).
    fn held_entry(&self, client_id: &str) -> Option<Arc<SessionEntry>> {
        let entry = lock(&self.registry).get(client_id).cloned()?;
        let removed = lock(&entry.inner).removed;
        (!removed).then_some(entry)
    }

    /// Hands `message` to the session of `client_id` only if this node
    /// holds it: its connection, or the queue of its offline persistent
    /// session (QoS 1 and 2; QoS 0 is not kept offline), in memory. False
    /// when there is no such session here.
    pub(crate) fn deliver_direct(&self, client_id: &str, message: Arc<Message>) -> bool {
        let Some(entry) = self.held_entry(client_id) else {
            tracing::debug!(client_id, topic = %message.topic, "p2p message for an unknown client dropped");
            return false;
        };
        let qos = message.qos;
        entry.deliver(Delivery::routed(message, qos), &self.metrics)
    }

    /// The in-memory route of a p2p message (QoS 0, a will or a publish on
    /// a node without durable writes): delivered here when this node holds
    /// the client; in a cluster otherwise forwarded through the outbox
    /// (see the module). True when it was taken or sent on.
    pub(crate) fn route_direct(&self, client_id: &str, message: Arc<Message>) -> bool {
        let message = not_retained(message);
        let Some(cluster) = self.cluster.as_ref() else {
            return self.deliver_direct(client_id, message);
        };
        if self.holds_client(client_id) {
            return self.deliver_direct(client_id, message);
        }
        let client = ByteStr::from(client_id);
        let id = self.next_message_id();
        let qos = message.qos;
        let mut ops = Vec::with_capacity(1);
        if !self.forward_if_given_up(&client, id, &message, qos, &mut ops) {
            ops.push(own_inbox_direct(cluster, client, id, message));
        }
        for op in ops {
            cluster.send_later(op, qos != QoS::AtMostOnce);
        }
        true
    }

    /// [`Node::prepare_route`] for a p2p message on a durable node: the
    /// batch that stores it (in the target's queue when this node holds a
    /// persistent session of it; else, in a cluster, as a bus entry: see
    /// the module) and the delivery in memory once stored.
    pub(crate) fn prepare_direct(
        &self,
        client_id: &str,
        message: Arc<Message>,
    ) -> (PreparedRoute, Vec<Op>) {
        let message = not_retained(message);
        let id = self.next_message_id();
        // Taken before looking the session up, as a route does.
        let ticket = self.cluster.as_ref().map(|c| c.route_ticket());
        let mut ops = Vec::new();
        let mut targets = Vec::with_capacity(1);
        let qos = message.qos;
        match (self.held_entry(client_id), self.cluster.as_ref()) {
            (Some(entry), _) => {
                let target = (SessionKey(entry), qos);
                self.stage_target(target, id, &message, &mut false, &mut ops, &mut targets);
            }
            (None, Some(cluster)) => {
                let client = ByteStr::from(client_id);
                if !self.forward_if_given_up(&client, id, &message, qos, &mut ops) {
                    ops.push(own_inbox_direct(cluster, client, id, message.clone()));
                }
            }
            (None, None) => {
                tracing::debug!(client_id, topic = %message.topic, "p2p message for an unknown client dropped");
            }
        }
        let prepared = PreparedRoute {
            message,
            id,
            targets,
            ticket,
            // Point-to-point messages are never retained.
            updates_retained: false,
            retained_peers: None,
        };
        (prepared, ops)
    }
}

/// A `Direct` entry for `client_id` in this node's own inbox, which
/// forwards it to the client's owner of record once read (see the module).
fn own_inbox_direct(
    cluster: &ClusterState,
    client_id: ByteStr,
    id: MessageId,
    message: Arc<Message>,
) -> Op {
    tracing::debug!(client_id = %client_id, topic = %message.topic, "p2p message for a client held elsewhere");
    let qos = message.qos;
    Op::from(ClusterOp::Forward {
        node: cluster.name(),
        entry: BusEntry::Direct {
            client_id,
            id,
            message,
            qos,
        },
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn targets() {
        assert_eq!(super::target("t/p2p/GID_x@@@d"), Some("GID_x@@@d"));
        assert_eq!(super::target("t/p2p/"), None);
        assert_eq!(super::target("t/p2p/a/b"), None);
        assert_eq!(super::target("t/x/a"), None);
        assert_eq!(super::target("/p2p/a"), None);
        assert_eq!(super::target("$SYS/p2p/a"), None);
        assert_eq!(super::target("t/p2p"), None);
    }
}
