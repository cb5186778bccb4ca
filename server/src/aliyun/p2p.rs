//! Point-to-point messages: `<parentTopic>/p2p/<clientId>` goes to that
//! client only, without a subscription, on the topic as published.

use std::sync::Arc;

use easy_mqtt_core::session::{Delivery, Message};

use crate::node::Node;
use crate::runtime::Runtime;
use crate::sessions::lock;

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

impl<R: Runtime> Node<R> {
    /// Hands `message` to the session of `client_id` only: its connection,
    /// or the queue of its offline persistent session (QoS 1 and 2; QoS 0
    /// is not kept offline). False when there is no such session.
    pub(crate) fn deliver_direct(&self, client_id: &str, message: Arc<Message>) -> bool {
        let Some(entry) = lock(&self.registry).get(client_id).cloned() else {
            tracing::debug!(client_id, topic = %message.topic, "p2p message for an unknown client dropped");
            return false;
        };
        let qos = message.qos;
        entry.deliver(Delivery::routed(message, qos), &self.metrics)
    }
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
