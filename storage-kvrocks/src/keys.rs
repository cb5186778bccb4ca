//! Key names (see the crate documentation for the layout).

use easy_mqtt_core::storage::MessageId;

/// Shards of the session index and of the retained messages: enough to
/// spread them over the slots of a cluster, few enough to scan them all
/// cheaply. Part of the stored layout: changing it strands stored entries.
pub(crate) const SHARDS: u16 = 16;

/// The hash field of a message body in its key; holder fields start with
/// [`HOLDER_PREFIX`], so they never collide with it.
pub(crate) const BODY_FIELD: &[u8] = b"b";
pub(crate) const HOLDER_PREFIX: &[u8] = b"h:";

#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

/// The keys of one client, all under the hash tag `{c:<escaped id>}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SessionKeys {
    /// String: the session record; the session exists iff this key does.
    pub record: String,
    /// Hash: filter → QoS digit.
    pub subscriptions: String,
    /// Set: every message id the session holds (queued or in flight).
    pub held: String,
    /// Hash: packet id → in-flight entry.
    pub window: String,
    /// Set: inbound QoS 2 packet ids.
    pub inbound: String,
}

impl SessionKeys {
    /// Every key, for a `DEL` that removes the session at once.
    pub fn all(&self) -> [&str; 5] {
        [
            &self.record,
            &self.subscriptions,
            &self.held,
            &self.window,
            &self.inbound,
        ]
    }

    /// Every key but the record.
    pub fn data(&self) -> [&str; 4] {
        [&self.subscriptions, &self.held, &self.window, &self.inbound]
    }
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    pub fn session(&self, client_id: &str) -> SessionKeys {
        let tag = format!("{}:{{c:{}}}:", self.prefix, escape(client_id));
        SessionKeys {
            record: format!("{tag}r"),
            subscriptions: format!("{tag}s"),
            held: format!("{tag}h"),
            window: format!("{tag}w"),
            inbound: format!("{tag}i"),
        }
    }

    /// Layout 1's held set (a sorted set), which the migration to layout 2
    /// reads and deletes.
    pub fn legacy_held(&self, client_id: &str) -> String {
        format!("{}:{{c:{}}}:q", self.prefix, escape(client_id))
    }

    /// String: the version of the stored layout (see the `migrate` module).
    pub fn layout(&self) -> String {
        format!("{}:layout", self.prefix)
    }

    /// Hash: the body (field `b`) and one field per holder (`h:<client>`).
    pub fn body(&self, id: MessageId) -> String {
        format!("{}:m:{:016x}", self.prefix, id.0)
    }

    /// Set of client ids, one shard of the index of persistent sessions.
    pub fn index(&self, shard: u16) -> String {
        format!("{}:{{i:{shard}}}", self.prefix)
    }

    /// Hash topic → message, one shard of the retained messages.
    pub fn retained(&self, shard: u16) -> String {
        format!("{}:{{r:{shard}}}", self.prefix)
    }

    pub fn index_of(&self, client_id: &str) -> String {
        self.index(shard(client_id.as_bytes()))
    }

    pub fn retained_of(&self, topic: &str) -> String {
        self.retained(shard(topic.as_bytes()))
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Hash node → last incarnation that heartbeated: the members.
    pub fn members(&self) -> String {
        format!("{}:{{n}}:members", self.prefix)
    }

    /// The keys of one node, all under the hash tag `{n:<escaped node>}`.
    pub fn node(&self, node: &str) -> NodeKeys {
        let tag = format!("{}:{{n:{}}}:", self.prefix, escape(node));
        NodeKeys {
            alive: format!("{tag}alive"),
            inbox: format!("{tag}inbox"),
            routes: format!("{tag}routes"),
            presence: format!("{tag}presence"),
            owned: format!("{tag}owned"),
            tag,
        }
    }

    /// String: the epoch counter of a client id (in the client's slot).
    pub fn epoch(&self, client_id: &str) -> String {
        format!("{}:{{c:{}}}:e", self.prefix, escape(client_id))
    }

    /// String: the owner of a client id (in the client's slot).
    pub fn owner(&self, client_id: &str) -> String {
        format!("{}:{{c:{}}}:o", self.prefix, escape(client_id))
    }

    /// String: one record of a space.
    pub fn record(&self, space: &str, key: &str) -> String {
        format!("{}:{{x:{}}}:k:{key}", self.prefix, escape(space))
    }

    /// Sorted set key → expiry (Unix ms, `+inf` without one): the index of
    /// the records of a space, in the space's slot.
    pub fn record_index(&self, space: &str) -> String {
        format!("{}:{{x:{}}}:i", self.prefix, escape(space))
    }

    /// List: one log, newest first. Tagged by its key, not its space: a
    /// space may hold a log per client (every PUBREC of a QoS 2 delivery
    /// writes one), which in the space's slot would make one hot slot.
    pub fn log(&self, space: &str, key: &str) -> String {
        format!("{}:l:{}:{{{}}}", self.prefix, escape(space), escape(key))
    }
}

/// The keys of one broker node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeKeys {
    tag: String,
    /// String: the incarnation whose heartbeat is current (expires).
    pub alive: String,
    /// Stream: the node's inbox.
    pub inbox: String,
    /// Hash filter → `1`.
    pub routes: String,
    /// Hash client id → presence.
    pub presence: String,
    /// Set of client ids owned by the node.
    pub owned: String,
}

impl NodeKeys {
    /// String: the adopter of an incarnation (set once, expires).
    pub fn fence(&self, incarnation: u64) -> String {
        format!("{}fence:{incarnation}", self.tag)
    }
}

/// The holder field of a client in a body's hash, as a command argument
/// written straight into the command (a routing batch names one per
/// delivery: building each in a buffer of its own first was an allocation
/// per delivery).
#[derive(Debug, Clone, Copy)]
pub(crate) struct HolderField<'a>(pub &'a str);

impl redis::ToRedisArgs for HolderField<'_> {
    fn write_redis_args<W>(&self, out: &mut W)
    where
        W: ?Sized + redis::RedisWrite,
    {
        use std::io::Write as _;
        let mut writer = out.writer_for_next_arg();
        // The writer appends to the command's buffer in memory, which
        // cannot fail (short of allocation failure, which aborts).
        let _ = writer.write_all(HOLDER_PREFIX);
        let _ = writer.write_all(self.0.as_bytes());
    }
}

/// Escapes `%`, `{` and `}` as `%25`, `%7B`, `%7D`, so that the hash tag of
/// a client's keys is exactly `c:<escaped id>` and the escaping is
/// injective (distinct ids, distinct keys).
pub(crate) fn escape(client_id: &str) -> std::borrow::Cow<'_, str> {
    if !client_id.contains(['%', '{', '}']) {
        return std::borrow::Cow::Borrowed(client_id);
    }
    let mut escaped = String::with_capacity(client_id.len() + 8);
    for c in client_id.chars() {
        match c {
            '%' => escaped.push_str("%25"),
            '{' => escaped.push_str("%7B"),
            '}' => escaped.push_str("%7D"),
            c => escaped.push(c),
        }
    }
    std::borrow::Cow::Owned(escaped)
}

/// FNV-1a (64 bit) modulo [`SHARDS`]: stable across versions and platforms,
/// as the stored layout requires.
pub(crate) fn shard(bytes: &[u8]) -> u16 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    u16::try_from(hash % u64::from(SHARDS)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_keeps_one_tag_per_client_and_is_injective() {
        let keys = Keys::new("emq");
        let plain = keys.session("sensor-1");
        assert_eq!(plain.record, "emq:{c:sensor-1}:r");
        let odd = keys.session("a}b{c%");
        assert_eq!(odd.held, "emq:{c:a%7Db%7Bc%25}:h");
        assert_ne!(keys.session("%7D").record, keys.session("}").record);
        assert_eq!(escape("%7D"), "%257D");
    }

    #[test]
    fn cluster_keys_share_a_slot_per_node_client_space_and_log() {
        let keys = Keys::new("emq");
        let node = keys.node("n{1}");
        assert_eq!(node.alive, "emq:{n:n%7B1%7D}:alive");
        assert_eq!(node.fence(7), "emq:{n:n%7B1%7D}:fence:7");
        assert_eq!(keys.epoch("c"), "emq:{c:c}:e");
        assert_eq!(keys.owner("c"), "emq:{c:c}:o");
        assert_eq!(keys.record("s{", "k}"), "emq:{x:s%7B}:k:k}");
        assert_eq!(keys.record_index("s"), "emq:{x:s}:i");
        assert_eq!(keys.log("s", "k"), "emq:l:s:{k}");
        // Escaped, the space cannot hold the `:{` that starts the tag.
        assert_eq!(keys.log("s:{", "k}"), "emq:l:s:%7B:{k%7D}");
        assert_ne!(keys.log("a", "b"), keys.log("a:{b}", ""));
        assert_eq!(keys.members(), "emq:{n}:members");
    }

    #[test]
    fn a_holder_field_is_the_prefix_and_the_client_id() {
        use redis::ToRedisArgs as _;
        let field = HolderField("c{1}");
        assert_eq!(field.to_redis_args(), vec![b"h:c{1}".to_vec()]);
        let mut command = redis::cmd("HDEL");
        command.arg("k").arg(field).arg(HolderField(""));
        let args: Vec<Vec<u8>> = command
            .args_iter()
            .map(|arg| match arg {
                redis::Arg::Simple(bytes) => bytes.to_vec(),
                _ => b"?".to_vec(),
            })
            .collect();
        assert_eq!(
            args,
            vec![
                b"HDEL".to_vec(),
                b"k".to_vec(),
                b"h:c{1}".to_vec(),
                b"h:".to_vec()
            ]
        );
    }

    #[test]
    fn shards_are_stable() {
        assert_eq!(shard(b""), (0xcbf2_9ce4_8422_2325_u64 % 16) as u16);
        assert!(shard(b"client").lt(&SHARDS));
    }
}
