//! The storage contract ([`easy_mqtt_core::storage_contract`]) on a
//! three-node redis cluster (shared by the tests of this binary), plus the
//! shared-body and batch-size checks where keys spread over the nodes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Cluster, Server, connect, count_keys, prefix, settings};
use easy_mqtt_core::packet::{ByteStr, PacketId, QoS};
use easy_mqtt_core::session::{Message, OutboundPhase};
use easy_mqtt_core::storage::{MessageId, Op, SessionRecord, Storage};
use easy_mqtt_core::storage_contract as contract;
use easy_mqtt_storage_kvrocks::KvrocksStorage;

fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(Cluster::start)
}

fn servers() -> Vec<&'static Server> {
    cluster().servers.iter().collect()
}

fn storage(test: &str) -> KvrocksStorage {
    let storage = connect(settings(cluster().nodes(), &prefix(test)));
    assert!(storage.is_cluster());
    storage
}

fn assert_empty(test: &str) {
    let left = common::dump(&servers(), &prefix(test));
    assert!(left.is_empty(), "{test}: keys left behind: {left:#?}");
}

macro_rules! check {
    ($name:ident) => {
        #[test]
        fn $name() {
            let name = concat!("cluster-", stringify!($name));
            let storage = storage(name);
            smol::block_on(contract::$name(&storage));
            assert_empty(name);
        }
    };
}

check!(session_lifecycle);
check!(subscriptions_in_filter_order);
check!(queue_order_and_shared_bodies);
check!(inflight_window);
check!(inbound_qos2);
check!(retained);
check!(idempotence);
check!(unknown_sessions_are_not_created);
check!(batch_applied_in_order);
check!(queued_ids_listed);
check!(message_times);

#[test]
fn run_all() {
    let storage = storage("cluster-run_all");
    smol::block_on(contract::run_all(&storage));
    assert_empty("cluster-run_all");
}

fn sleep(time: Duration) -> easy_mqtt_core::storage::BoxFuture<'static, ()> {
    Box::pin(async move {
        smol::Timer::after(time).await;
    })
}

/// The cluster contract on the cluster: node, client, space and log keys
/// spread over the three nodes. What stays behind is only what must
/// (fences of adopted incarnations, epochs and owners of client ids).
#[test]
fn run_cluster() {
    let test = "cluster-run_cluster";
    let storage = storage(test);
    let cluster = storage.cluster().expect("kvrocks has a cluster");
    smol::block_on(contract::run_cluster(&storage, cluster, &sleep));
    let left = common::dump(&servers(), &prefix(test));
    let (kept, stray): (Vec<_>, Vec<_>) = left.keys().partition(|key| {
        let key = String::from_utf8_lossy(key);
        key.contains("}:fence:")
            || (key.contains(":{c:") && (key.ends_with("}:e") || key.ends_with("}:o")))
    });
    assert!(stray.is_empty(), "{test}: keys left behind: {left:#?}");
    // One fence, three clients' epoch and owner.
    assert_eq!(kept.len(), 7, "{test}: {left:#?}");
}

fn apply(storage: &KvrocksStorage, ops: Vec<Op>) {
    let result = smol::block_on(storage.apply(ops));
    assert!(result.is_ok(), "apply: {result:?}");
}

fn put_session(client: &str) -> Op {
    Op::PutSession(SessionRecord {
        client_id: ByteStr::from(client),
        created_at_ms: 1,
    })
}

fn message(text: &str) -> Arc<Message> {
    Arc::new(Message {
        topic: ByteStr::from("cluster/topic"),
        payload: Bytes::copy_from_slice(text.as_bytes()),
        qos: QoS::AtLeastOnce,
        retain: false,
    })
}

fn pid(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

/// Sessions spread over the nodes hold one body, stored once, on one node;
/// it goes when the last of them lets go.
/// `read_inbox` with a wait blocks until an entry comes, on the cluster
/// node of the inbox's slot (`common::check_read_inbox_blocks`).
#[test]
fn read_inbox_waits_for_an_entry() {
    let test = "read_inbox_waits";
    common::check_read_inbox_blocks(&storage(test), storage(test));
    assert_empty(test);
}

#[test]
fn shared_body_across_nodes() {
    let name = "cluster-shared_body";
    let storage = storage(name);
    let clients: Vec<String> = (0..6).map(|n| format!("client-{n}")).collect();
    let id = MessageId::new(1, 1);
    let mut ops: Vec<Op> = clients.iter().map(|c| put_session(c)).collect();
    ops.push(Op::PutMessage {
        id,
        message: message("shared"),
        at_ms: 0,
    });
    for client in &clients {
        ops.push(Op::Enqueue {
            client_id: ByteStr::from(client.as_str()),
            id,
            qos: QoS::AtLeastOnce,
            retain: false,
        });
    }
    apply(&storage, ops);
    let bodies = format!("{}:m:*", prefix(name));
    assert_eq!(count_keys(&servers(), &bodies), 1);
    let nodes_with_sessions = servers()
        .iter()
        .filter(|server| count_keys(&[server], &format!("{}:{{c:*", prefix(name))) > 0)
        .count();
    assert!(nodes_with_sessions >= 2, "sessions spread over the nodes");

    let (last, others) = clients.split_last().unwrap();
    apply(
        &storage,
        others
            .iter()
            .map(|client| Op::Dequeue {
                client_id: ByteStr::from(client.as_str()),
                id,
            })
            .collect(),
    );
    assert_eq!(count_keys(&servers(), &bodies), 1, "still held by {last}");
    apply(
        &storage,
        vec![
            Op::SetInflight {
                client_id: ByteStr::from(last.as_str()),
                packet_id: pid(1),
                id,
                phase: OutboundPhase::Published,
                qos: QoS::AtLeastOnce,
                retain: false,
            },
            Op::CompleteInflight {
                client_id: ByteStr::from(last.as_str()),
                packet_id: pid(1),
            },
        ],
    );
    assert_eq!(count_keys(&servers(), &bodies), 0, "the last holder let go");

    apply(
        &storage,
        clients
            .iter()
            .map(|client| Op::DeleteSession {
                client_id: ByteStr::from(client.as_str()),
            })
            .collect(),
    );
    assert_empty(name);
}

/// 10,000 enqueues over 1,000 sessions on three nodes: a few round trips.
#[test]
fn large_batch() {
    let name = "cluster-large_batch";
    let storage = storage(name);
    let clients: Vec<String> = (0..1000).map(|n| format!("c{n}")).collect();
    apply(&storage, clients.iter().map(|c| put_session(c)).collect());
    let mut ops = Vec::new();
    for n in 0..10 {
        ops.push(Op::PutMessage {
            id: MessageId::new(2, n),
            message: message(&format!("m{n}")),
            at_ms: 0,
        });
    }
    for n in 0..10 {
        for client in &clients {
            ops.push(Op::Enqueue {
                client_id: ByteStr::from(client.as_str()),
                id: MessageId::new(2, n),
                qos: QoS::AtLeastOnce,
                retain: false,
            });
        }
    }
    let before = storage.round_trips();
    let started = Instant::now();
    apply(&storage, ops);
    let elapsed = started.elapsed();
    let round_trips = storage.round_trips() - before;
    eprintln!("cluster: 10,000 enqueues in {elapsed:?}, {round_trips} round trips");
    assert!(round_trips <= 3, "{round_trips} round trips");
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
    let session = smol::block_on(storage.load_session("c999"))
        .unwrap()
        .unwrap();
    assert_eq!(session.queue.len(), 10);

    apply(
        &storage,
        clients
            .iter()
            .map(|client| Op::DeleteSession {
                client_id: ByteStr::from(client.as_str()),
            })
            .collect(),
    );
    assert_empty(name);
}

/// Random batches (some applied twice) give the same loads as on the
/// reference backend, with the keys spread over three nodes.
#[test]
fn same_as_the_reference_on_random_batches() {
    for seed in 101..=104 {
        let name = format!("cluster-random-{seed}");
        let storage = storage(&name);
        smol::block_on(common::differential::run(&storage, seed, 30));
        assert_empty(&name);
    }
}

/// One configured node that turns out to be a cluster node is a seed: the
/// backend works with the whole cluster.
#[test]
fn one_seed_node_finds_the_cluster() {
    let name = "cluster-one-seed";
    let seed = cluster().servers[1].node();
    let storage = connect(settings(vec![seed], &prefix(name)));
    assert!(storage.is_cluster());
    smol::block_on(contract::session_lifecycle(&storage));
    assert_empty(name);
}
