//! Concurrent writers to one session: several tasks apply enqueue batches
//! for the same client at the same time (two publishers on different
//! connections, or a publisher's batch and the subscriber's own journal).
//! Every message must be held exactly once, in id order (sequence, then
//! node tag), with its own QoS and RETAIN flag, on a standalone server and
//! on a three-node cluster; replaying every batch changes nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use common::{Cluster, Server, connect, dump, prefix, settings, standalone};
use easy_mqtt_core::packet::{ByteStr, QoS};
use easy_mqtt_core::session::Message;
use easy_mqtt_core::storage::{MessageId, Op, SessionRecord, Storage};
use easy_mqtt_storage_kvrocks::KvrocksStorage;

const TASKS: u64 = 8;
const BATCHES: u64 = 12;
const PER_BATCH: u64 = 5;
const CLIENT: &str = "shared-subscriber";

fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(Cluster::start)
}

fn qos_of(n: u64) -> QoS {
    match n % 3 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// Task `t` mints ids with node tag `TASKS - t` (so tag order is not task
/// order) and sequences `t × 1000 + n`: id order is task 0's messages, then
/// task 1's, and so on, whatever order the batches land in.
fn id_of(task: u64, n: u64) -> MessageId {
    MessageId::new(u16::try_from(TASKS - task).unwrap(), task * 1000 + n)
}

fn batch(task: u64, batch: u64) -> Vec<Op> {
    let mut ops = Vec::new();
    for i in 0..PER_BATCH {
        let n = batch * PER_BATCH + i + 1;
        let id = id_of(task, n);
        ops.push(Op::PutMessage {
            id,
            message: Arc::new(Message {
                topic: ByteStr::from(format!("concurrent/{task}").as_str()),
                payload: Bytes::from(format!("{task}-{n}")),
                qos: QoS::ExactlyOnce,
                retain: false,
            }),
            at_ms: 0,
        });
        ops.push(Op::Enqueue {
            client_id: ByteStr::from(CLIENT),
            id,
            qos: qos_of(n),
            retain: n.is_multiple_of(2),
        });
    }
    ops
}

async fn run(storage: Arc<KvrocksStorage>) {
    storage
        .apply(vec![Op::PutSession(SessionRecord {
            client_id: ByteStr::from(CLIENT),
            created_at_ms: 1,
        })])
        .await
        .unwrap();
    // Every task applies its batches one after the other; the tasks run at
    // once, so their reads and writes interleave. Then once more (a replay
    // of every batch, also concurrent).
    for _round in 0..2 {
        let tasks: Vec<_> = (0..TASKS)
            .map(|task| {
                let storage = Arc::clone(&storage);
                smol::spawn(async move {
                    for b in 0..BATCHES {
                        storage.apply(batch(task, b)).await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await;
        }
        let session = storage.load_session(CLIENT).await.unwrap().unwrap();
        let mut expected: Vec<MessageId> = (0..TASKS)
            .flat_map(|task| (1..=BATCHES * PER_BATCH).map(move |n| id_of(task, n)))
            .collect();
        expected.sort_by_key(|id| id.queue_order());
        let got: Vec<MessageId> = session.queue.iter().map(|d| d.id).collect();
        assert_eq!(got.len(), expected.len(), "every message held exactly once");
        let first_difference = got.iter().zip(&expected).position(|(a, b)| a != b);
        assert_eq!(first_difference, None, "queue in id order");
        for delivery in &session.queue {
            let n = delivery.id.sequence() % 1000;
            let task = delivery.id.sequence() / 1000;
            assert_eq!(delivery.qos, qos_of(n), "QoS of {:?}", delivery.id);
            assert_eq!(
                delivery.retain,
                n.is_multiple_of(2),
                "RETAIN of {:?}",
                delivery.id
            );
            assert_eq!(
                delivery.message.payload,
                Bytes::from(format!("{task}-{n}")),
                "body of {:?}",
                delivery.id
            );
        }
        assert!(session.inflight.is_empty());
    }
    storage
        .apply(vec![Op::DeleteSession {
            client_id: ByteStr::from(CLIENT),
        }])
        .await
        .unwrap();
}

#[test]
fn concurrent_enqueues_to_one_session_standalone() {
    let name = "concurrent-standalone";
    let storage = Arc::new(connect(settings(vec![standalone().node()], &prefix(name))));
    smol::block_on(run(storage));
    let left = dump(&[standalone()], &prefix(name));
    assert!(left.is_empty(), "keys left behind: {left:#?}");
}

#[test]
fn concurrent_enqueues_to_one_session_cluster() {
    let name = "concurrent-cluster";
    let storage = Arc::new(connect(settings(cluster().nodes(), &prefix(name))));
    assert!(storage.is_cluster());
    smol::block_on(run(storage));
    let servers: Vec<&Server> = cluster().servers.iter().collect();
    let left = dump(&servers, &prefix(name));
    assert!(left.is_empty(), "keys left behind: {left:#?}");
}
