//! The stored layout's migration, on real servers (standalone and a
//! three-node cluster): a store written the way layout 1 wrote it (held ids
//! in a sorted set scored by order and flags, holder fields `1`) loads the
//! same after `connect` migrated it, also when an earlier migration was cut
//! short, and a newer layout is refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::{Cluster, Server, apply, connect, dump, load, prefix, settings, standalone};
use easy_mqtt_core::packet::{ByteStr, PacketId, QoS};
use easy_mqtt_core::session::{Message, OutboundPhase};
use easy_mqtt_core::storage::{MessageId, Op, SessionRecord, StorageError};
use easy_mqtt_storage_kvrocks::KvrocksStorage;
use redis::Commands as _;

fn enqueue(client: &str, id: MessageId, qos: QoS, retain: bool) -> Op {
    Op::Enqueue {
        client_id: ByteStr::from(client),
        id,
        qos,
        retain,
    }
}

/// The servers of a store, standalone or a cluster: a command runs on the
/// one that owns its key (the others answer `MOVED`).
struct Servers(Vec<&'static Server>);

impl Servers {
    fn run<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> T {
        let mut refusals = Vec::new();
        for server in &self.0 {
            match command.query(&mut server.connection()) {
                Ok(value) => return value,
                Err(error) => refusals.push(error.to_string()),
            }
        }
        panic!(
            "no server ran {:?}: {refusals:?}",
            command.args_iter().count()
        );
    }

    fn dump(&self, prefix: &str) -> std::collections::BTreeMap<Vec<u8>, String> {
        dump(&self.0, prefix)
    }
}

/// Rewrites a client's held set as layout 1 kept it: a sorted set `:q`
/// scored by order (the id's sequence) × 8 + QoS × 2 + RETAIN, holder
/// fields `1`, no `:h`.
fn to_layout_1(servers: &Servers, prefix: &str, client: &str) {
    let held = format!("{prefix}:{{c:{client}}}:h");
    let members: Vec<Vec<u8>> = servers.run(redis::cmd("SMEMBERS").arg(&held));
    assert!(!members.is_empty(), "{client} holds something");
    for member in members {
        let id = u64::from_be_bytes(member.as_slice().try_into().unwrap());
        let body = format!("{prefix}:m:{id:016x}");
        let field = format!("h:{client}");
        let flags: Vec<u8> = servers.run(redis::cmd("HGET").arg(&body).arg(&field));
        let qos = u64::from(flags[0] - b'0');
        let retain = u64::from(flags.len() == 2);
        let score = (MessageId(id).sequence() << 3) | (qos << 1) | retain;
        let legacy = format!("{prefix}:{{c:{client}}}:q");
        let () = servers.run(redis::cmd("ZADD").arg(&legacy).arg(score).arg(&member));
        let () = servers.run(redis::cmd("HSET").arg(&body).arg(&field).arg("1"));
    }
    let () = servers.run(redis::cmd("DEL").arg(&held));
}

#[test]
fn a_layout_1_store_loads_the_same_once_migrated() {
    check_migration(
        Servers(vec![standalone()]),
        vec![standalone().node()],
        "migrate",
    );
}

/// The same on a cluster: the sessions' keys, the bodies and the index
/// shards spread over three nodes.
#[test]
fn a_layout_1_store_on_a_cluster_loads_the_same_once_migrated() {
    static CLUSTER: std::sync::OnceLock<Cluster> = std::sync::OnceLock::new();
    let cluster = CLUSTER.get_or_init(Cluster::start);
    let servers = Servers(cluster.servers.iter().collect());
    check_migration(servers, cluster.nodes(), "migrate-cluster");
}

fn check_migration(servers: Servers, nodes: Vec<String>, name: &str) {
    let prefix = prefix(name);
    let connect_store = || {
        let storage = connect(settings(nodes.clone(), &prefix));
        assert_eq!(storage.is_cluster(), servers.0.len() > 1);
        storage
    };
    let storage = connect_store();
    let body = |topic: &str| {
        Arc::new(Message {
            topic: ByteStr::from(topic),
            payload: Bytes::from_static(b"p"),
            qos: QoS::ExactlyOnce,
            retain: false,
        })
    };
    // Three nodes' ids, one sequence apart or equal: the queue is in id
    // order (sequence, then node tag).
    let ids = [
        MessageId::new(2, 10),
        MessageId::new(1, 11),
        MessageId::new(3, 11),
        MessageId::new(1, 12),
    ];
    let mut ops = vec![
        Op::PutSession(SessionRecord {
            client_id: ByteStr::from("a"),
            created_at_ms: 1,
        }),
        Op::PutSession(SessionRecord {
            client_id: ByteStr::from("b"),
            created_at_ms: 2,
        }),
    ];
    for id in ids {
        ops.push(Op::PutMessage {
            id,
            message: body("t"),
            at_ms: 5,
        });
    }
    ops.extend([
        enqueue("a", ids[3], QoS::AtLeastOnce, false),
        enqueue("a", ids[0], QoS::ExactlyOnce, true),
        enqueue("a", ids[2], QoS::AtMostOnce, true),
        enqueue("a", ids[1], QoS::ExactlyOnce, false),
        enqueue("b", ids[1], QoS::AtLeastOnce, true),
    ]);
    apply(&storage, ops);
    // One in flight: it stays in the held set, and in the window.
    apply(
        &storage,
        vec![Op::SetInflight {
            client_id: ByteStr::from("a"),
            packet_id: PacketId::new(9).unwrap(),
            id: ids[2],
            phase: OutboundPhase::Published,
            qos: QoS::AtLeastOnce,
            retain: false,
        }],
    );
    let [a, b] = ["a", "b"].map(|client| load(&storage, client));
    assert_eq!(
        a.queue.iter().map(|d| d.id).collect::<Vec<_>>(),
        [ids[0], ids[1], ids[3]]
    );
    assert_eq!(a.inflight.len(), 1);
    let layout_2 = servers.dump(&prefix);
    drop(storage);

    for client in ["a", "b"] {
        to_layout_1(&servers, &prefix, client);
    }
    let () = servers.run(redis::cmd("DEL").arg(format!("{prefix}:layout")));
    // A migration cut short after writing one of a's entries, before
    // deleting its sorted set: run again, it gets the same.
    let () = servers.run(
        redis::cmd("SADD")
            .arg(format!("{prefix}:{{c:a}}:h"))
            .arg(ids[3].0.to_be_bytes().as_slice()),
    );
    let () = servers.run(
        redis::cmd("HSET")
            .arg(format!("{prefix}:m:{:016x}", ids[3].0))
            .arg("h:a")
            .arg("1"),
    );

    let storage = connect_store();
    assert_eq!(load(&storage, "a"), a);
    assert_eq!(load(&storage, "b"), b);
    assert_eq!(
        servers.dump(&prefix),
        layout_2,
        "keys as layout 2 wrote them"
    );
    let layout: String = servers.run(redis::cmd("GET").arg(format!("{prefix}:layout")));
    assert_eq!(layout, "2");
    // Connecting again finds nothing to do.
    drop(connect_store());
    assert_eq!(servers.dump(&prefix), layout_2);

    // The migrated store takes writes: the in-flight one completes, a
    // queued one is dropped, then the sessions go with their bodies.
    apply(
        &storage,
        vec![
            Op::CompleteInflight {
                client_id: ByteStr::from("a"),
                packet_id: PacketId::new(9).unwrap(),
            },
            Op::Dequeue {
                client_id: ByteStr::from("a"),
                id: ids[0],
            },
        ],
    );
    let after = load(&storage, "a");
    assert!(after.inflight.is_empty());
    assert_eq!(after.queue, a.queue[1..]);
    apply(
        &storage,
        ["a", "b"]
            .map(|client| Op::DeleteSession {
                client_id: ByteStr::from(client),
            })
            .to_vec(),
    );
    assert!(servers.dump(&prefix).is_empty());
}

#[test]
fn a_newer_layout_is_refused() {
    let name = "migrate-newer";
    let prefix = prefix(name);
    let mut connection = standalone().connection();
    let _: () = connection.set(format!("{prefix}:layout"), "3").unwrap();
    let result = smol::block_on(KvrocksStorage::connect(settings(
        vec![standalone().node()],
        &prefix,
    )));
    match result {
        Err(StorageError::Invalid(reason)) => {
            assert!(reason.contains("layout 3"), "{reason}");
        }
        other => panic!("connected to a store of a newer layout: {other:?}"),
    }
    let _: () = connection.del(format!("{prefix}:layout")).unwrap();
}
