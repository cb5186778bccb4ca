//! A slot moves to another node while the backend is connected (what a
//! resharding or a failover does): the backend follows `MOVED` and goes on.
//! Its own cluster, so that moving a slot disturbs no other test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::{Cluster, Server, connect, prefix, settings};
use easy_mqtt_core::packet::{ByteStr, QoS};
use easy_mqtt_core::session::Message;
use easy_mqtt_core::storage::{MessageId, Op, SessionRecord, Storage};

fn query<T: redis::FromRedisValue>(server: &Server, cmd: &mut redis::Cmd) -> T {
    cmd.query(&mut server.connection()).expect("query")
}

/// Moves `slot` from `from` to `to` the way `redis-cli --cluster reshard`
/// does: IMPORTING/MIGRATING, MIGRATE the keys, then assign it everywhere.
fn move_slot(cluster: &Cluster, slot: u16, from: &Server, to: &Server) {
    let from_id: String = query(from, redis::cmd("CLUSTER").arg("MYID"));
    let to_id: String = query(to, redis::cmd("CLUSTER").arg("MYID"));
    let _: () = query(
        to,
        redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("IMPORTING")
            .arg(&from_id),
    );
    let _: () = query(
        from,
        redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("MIGRATING")
            .arg(&to_id),
    );
    loop {
        let keys: Vec<Vec<u8>> = query(
            from,
            redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(100),
        );
        if keys.is_empty() {
            break;
        }
        let _: () = query(
            from,
            redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(to.port)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(keys),
        );
    }
    for server in &cluster.servers {
        let _: () = query(
            server,
            redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg("NODE")
                .arg(&to_id),
        );
    }
}

#[test]
fn follows_a_slot_to_its_new_node() {
    let cluster = Cluster::start();
    let name = "moved";
    let storage = connect(settings(cluster.nodes(), &prefix(name)));
    let client = "mover";
    let body = Arc::new(Message {
        topic: ByteStr::from("moved/1"),
        payload: Bytes::from_static(b"\x00payload\xff"),
        qos: QoS::AtLeastOnce,
        retain: false,
    });
    let apply = |ops: Vec<Op>| {
        let result = smol::block_on(storage.apply(ops));
        assert!(result.is_ok(), "apply: {result:?}");
    };
    apply(vec![
        Op::PutSession(SessionRecord {
            client_id: ByteStr::from(client),
            created_at_ms: 7,
        }),
        Op::Subscribe {
            client_id: ByteStr::from(client),
            filter: ByteStr::from("moved/#"),
            qos: QoS::AtLeastOnce,
        },
        Op::PutMessage {
            id: MessageId::new(1, 1),
            message: Arc::clone(&body),
            at_ms: 0,
        },
        Op::Enqueue {
            client_id: ByteStr::from(client),
            id: MessageId::new(1, 1),
            qos: QoS::AtLeastOnce,
            retain: false,
        },
    ]);

    let record_key = format!("{}:{{c:{client}}}:r", prefix(name));
    let slot: u16 = query(
        &cluster.servers[0],
        redis::cmd("CLUSTER").arg("KEYSLOT").arg(&record_key),
    );
    let owner = cluster
        .servers
        .iter()
        .position(|server| {
            let count: u64 = query(
                server,
                redis::cmd("CLUSTER").arg("COUNTKEYSINSLOT").arg(slot),
            );
            count > 0
        })
        .expect("a node holds the session");
    let target = (owner + 1) % cluster.servers.len();
    move_slot(
        &cluster,
        slot,
        &cluster.servers[owner],
        &cluster.servers[target],
    );
    let moved: u64 = query(
        &cluster.servers[target],
        redis::cmd("CLUSTER").arg("COUNTKEYSINSLOT").arg(slot),
    );
    assert_eq!(moved, 3, "record, subscriptions and held set moved");

    // The backend still believes the old owner: MOVED, then on.
    apply(vec![Op::Subscribe {
        client_id: ByteStr::from(client),
        filter: ByteStr::from("moved/2"),
        qos: QoS::ExactlyOnce,
    }]);
    let session = smol::block_on(storage.load_session(client))
        .unwrap()
        .expect("session");
    assert_eq!(session.subscriptions.len(), 2);
    assert_eq!(session.queue.len(), 1);
    assert_eq!(session.queue[0].message, body);

    apply(vec![Op::DeleteSession {
        client_id: ByteStr::from(client),
    }]);
    let servers: Vec<&Server> = cluster.servers.iter().collect();
    assert!(common::dump(&servers, &prefix(name)).is_empty());
}
