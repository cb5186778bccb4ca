//! The cluster contract's checks of the shared state: inbox order and
//! acknowledgement, routes, presence, records with a time to live and
//! capped logs (see the `cluster` module for the contract).

use std::time::Duration;

use bytes::Bytes;

use crate::cluster::{BusEntry, Cluster, ClusterOp, InboxId, Presence};
use crate::packet::{ByteStr, QoS};
use crate::storage::{Op, Storage};

use super::cluster::{
    LONG_TTL, PAST_TTL, Sleep, TTL, ack, b, cluster_op, entries, forget, forward, heartbeat, inbox,
    log, presence_of, record, records, routes_of,
};
use super::support::{apply, binary_message};

/// Inbox order, paging, acknowledgement; entries read back exactly.
pub async fn inbox_order_and_ack(storage: &dyn Storage, cluster: &dyn Cluster, _sleep: &Sleep) {
    const CHECK: &str = "inbox_order_and_ack";
    let node = "contract-inbox-n";
    let other = "contract-inbox-o";
    let sent = entries();
    assert_eq!(
        inbox(cluster, CHECK, node, None, 100).await,
        vec![],
        "{CHECK}: empty at first"
    );
    let waited = cluster
        .read_inbox(node, None, 10, Duration::from_millis(50))
        .await;
    assert!(
        matches!(waited.as_deref(), Ok([])),
        "{CHECK}: waiting on an empty inbox: {waited:?}"
    );

    let (first, rest) = sent.split_at(2);
    let mut batch: Vec<Op> = first.iter().map(|e| forward(node, e.clone())).collect();
    batch.push(forward(other, sent[4].clone()));
    apply(storage, CHECK, batch).await;
    apply(
        storage,
        CHECK,
        rest.iter().map(|e| forward(node, e.clone())).collect(),
    )
    .await;

    let read = inbox(cluster, CHECK, node, None, 100).await;
    let got: Vec<BusEntry> = read.iter().map(|(_, entry)| entry.clone()).collect();
    assert_eq!(got, sent, "{CHECK}: entries in append order");
    let ids: Vec<InboxId> = read.iter().map(|(id, _)| *id).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "{CHECK}: ids not increasing: {ids:?}"
    );
    let others = inbox(cluster, CHECK, other, None, 100).await;
    assert_eq!(others.len(), 1, "{CHECK}: another node's inbox: {others:?}");

    assert_eq!(
        inbox(cluster, CHECK, node, None, 2).await,
        read[..2],
        "{CHECK}: max"
    );
    assert_eq!(
        inbox(cluster, CHECK, node, Some(ids[1]), 2).await,
        read[2..4],
        "{CHECK}: after"
    );
    let last_id = ids[ids.len() - 1];
    assert_eq!(
        inbox(cluster, CHECK, node, Some(last_id), 10).await,
        vec![],
        "{CHECK}: after the last"
    );

    // Acknowledged entries go; acknowledging again or an unknown id is a no-op.
    let unknown = InboxId { ms: 1, seq: 1 };
    let acks = vec![ack(node, ids[0]), ack(node, ids[2]), ack(node, unknown)];
    apply(storage, CHECK, acks.clone()).await;
    apply(storage, CHECK, acks).await;
    let left = inbox(cluster, CHECK, node, None, 100).await;
    let expected: Vec<(InboxId, BusEntry)> = (1..read.len())
        .filter(|i| *i != 2)
        .map(|i| read[i].clone())
        .collect();
    assert_eq!(left, expected, "{CHECK}: after the acks");
    assert_eq!(
        inbox(cluster, CHECK, node, Some(ids[0]), 1).await,
        expected[..1],
        "{CHECK}: after an acked id"
    );

    // A later entry comes after every earlier one, acknowledged or not.
    apply(storage, CHECK, vec![forward(node, sent[3].clone())]).await;
    let last = inbox(cluster, CHECK, node, Some(last_id), 10).await;
    assert_eq!(last.len(), 1, "{CHECK}: the later entry: {last:?}");
    assert!(last[0].0 > last_id, "{CHECK}: a later entry has a lower id");

    forget(cluster, CHECK, node).await;
    forget(cluster, CHECK, other).await;
    assert_eq!(
        inbox(cluster, CHECK, node, None, 100).await,
        vec![],
        "{CHECK}: forgotten"
    );
    assert_eq!(
        inbox(cluster, CHECK, other, None, 100).await,
        vec![],
        "{CHECK}: forgotten"
    );
}

pub(super) fn add_route(node: &str, filter: &str) -> Op {
    cluster_op(ClusterOp::AddRoute {
        node: b(node),
        filter: b(filter),
    })
}

fn remove_route(node: &str, filter: &str) -> Op {
    cluster_op(ClusterOp::RemoveRoute {
        node: b(node),
        filter: b(filter),
    })
}

/// Routes form a set per node; listed for members.
pub async fn routes(storage: &dyn Storage, cluster: &dyn Cluster, _sleep: &Sleep) {
    const CHECK: &str = "routes";
    let prefix = "contract-routes-";
    let [n, m] = ["contract-routes-n", "contract-routes-m"];
    heartbeat(cluster, CHECK, n, 1, LONG_TTL).await;
    heartbeat(cluster, CHECK, m, 1, LONG_TTL).await;
    let batch = vec![
        add_route(n, "a/+"),
        add_route(n, "a/+"),
        add_route(n, "#"),
        add_route(n, "gone"),
        remove_route(n, "gone"),
        remove_route(n, "never"),
        add_route(m, "b/{x}/ü"),
    ];
    apply(storage, CHECK, batch.clone()).await;
    apply(storage, CHECK, batch).await;
    let expected = vec![(b(m), vec![b("b/{x}/ü")]), (b(n), vec![b("#"), b("a/+")])];
    assert_eq!(routes_of(cluster, CHECK, prefix).await, expected, "{CHECK}");

    apply(
        storage,
        CHECK,
        vec![remove_route(m, "b/{x}/ü"), remove_route(n, "#")],
    )
    .await;
    apply(storage, CHECK, vec![remove_route(m, "b/{x}/ü")]).await;
    let expected = vec![(b(n), vec![b("a/+")])];
    assert_eq!(
        routes_of(cluster, CHECK, prefix).await,
        expected,
        "{CHECK}: removed"
    );

    forget(cluster, CHECK, n).await;
    forget(cluster, CHECK, m).await;
    assert_eq!(
        routes_of(cluster, CHECK, prefix).await,
        vec![],
        "{CHECK}: forgotten"
    );
}

pub(super) fn presence(client_id: &str, epoch: u64, will: bool) -> Presence {
    let will = will.then(|| {
        let bytes: Vec<u8> = (0..=255).collect();
        binary_message("contract/presence/will", &bytes, QoS::AtLeastOnce)
    });
    Presence {
        client_id: b(client_id),
        epoch,
        will,
        since_ms: 1_700_000_000_000 + epoch,
    }
}

pub(super) fn set_presence(node: &str, presence: Presence) -> Op {
    cluster_op(ClusterOp::SetPresence {
        node: b(node),
        presence,
    })
}

fn clear_presence(node: &str, client_id: &str) -> Op {
    cluster_op(ClusterOp::ClearPresence {
        node: b(node),
        client_id: b(client_id),
    })
}

/// Presence is set, replaced and cleared per client.
pub async fn presence_set_and_clear(storage: &dyn Storage, cluster: &dyn Cluster, _sleep: &Sleep) {
    const CHECK: &str = "presence_set_and_clear";
    let [n, m] = ["contract-presence-n", "contract-presence-m"];
    let [c1, c2, c3] = [
        "contract-presence-1",
        "contract-presence-{2}",
        "contract-presence-3",
    ];
    let batch = vec![
        set_presence(n, presence(c1, 1, true)),
        set_presence(n, presence(c2, 2, false)),
        set_presence(n, presence(c3, 3, false)),
        clear_presence(n, c3),
        clear_presence(n, "contract-presence-never"),
        set_presence(m, presence(c3, 4, true)),
    ];
    apply(storage, CHECK, batch.clone()).await;
    apply(storage, CHECK, batch).await;
    assert_eq!(
        presence_of(cluster, CHECK, n).await,
        vec![presence(c1, 1, true), presence(c2, 2, false)],
        "{CHECK}"
    );
    assert_eq!(
        presence_of(cluster, CHECK, m).await,
        vec![presence(c3, 4, true)],
        "{CHECK}"
    );

    apply(
        storage,
        CHECK,
        vec![
            set_presence(n, presence(c1, 5, false)),
            clear_presence(n, c2),
        ],
    )
    .await;
    assert_eq!(
        presence_of(cluster, CHECK, n).await,
        vec![presence(c1, 5, false)],
        "{CHECK}: replaced and cleared"
    );

    forget(cluster, CHECK, n).await;
    apply(storage, CHECK, vec![clear_presence(m, c3)]).await;
    assert_eq!(
        presence_of(cluster, CHECK, n).await,
        vec![],
        "{CHECK}: forgotten"
    );
    assert_eq!(
        presence_of(cluster, CHECK, m).await,
        vec![],
        "{CHECK}: cleared"
    );
}

fn put_record(space: &str, key: &str, value: &[u8], ttl: Option<Duration>) -> Op {
    cluster_op(ClusterOp::PutRecord {
        space: b(space),
        key: b(key),
        value: Bytes::copy_from_slice(value),
        ttl,
    })
}

fn delete_record(space: &str, key: &str) -> Op {
    cluster_op(ClusterOp::DeleteRecord {
        space: b(space),
        key: b(key),
    })
}

/// Records are set, replaced, deleted and expire.
pub async fn records_with_ttl(storage: &dyn Storage, cluster: &dyn Cluster, sleep: &Sleep) {
    const CHECK: &str = "records_with_ttl";
    let space = "contract-records-{s}";
    let other = "contract-records-o";
    let binary: Vec<u8> = (0..=255).collect();
    let [k1, k2, k3] = ["k1", "k/{2}", "k3"];
    let batch = vec![
        put_record(space, k1, b"one", None),
        put_record(space, k1, &binary, None),
        put_record(space, k2, b"two", Some(TTL)),
        put_record(space, k3, b"three", Some(TTL)),
        put_record(space, k3, b"three", None),
        put_record(space, "gone", b"gone", None),
        delete_record(space, "gone"),
        delete_record(space, "never"),
        put_record(other, k1, b"other", Some(LONG_TTL)),
    ];
    apply(storage, CHECK, batch.clone()).await;
    apply(storage, CHECK, batch).await;
    let value = |v: &[u8]| Some(Bytes::copy_from_slice(v));
    assert_eq!(
        record(cluster, CHECK, space, k1).await,
        value(&binary),
        "{CHECK}"
    );
    assert_eq!(
        record(cluster, CHECK, space, k2).await,
        value(b"two"),
        "{CHECK}"
    );
    assert_eq!(
        record(cluster, CHECK, space, "gone").await,
        None,
        "{CHECK}: deleted"
    );
    assert_eq!(
        record(cluster, CHECK, other, k1).await,
        value(b"other"),
        "{CHECK}"
    );
    let listed = |pairs: &[(&str, &[u8])]| -> Vec<(ByteStr, Bytes)> {
        let mut pairs: Vec<(ByteStr, Bytes)> = pairs
            .iter()
            .map(|(k, v)| (b(k), Bytes::copy_from_slice(v)))
            .collect();
        pairs.sort();
        pairs
    };
    assert_eq!(
        records(cluster, CHECK, space).await,
        listed(&[(k1, &binary), (k2, b"two"), (k3, b"three")]),
        "{CHECK}: scan"
    );

    sleep(PAST_TTL).await;
    assert_eq!(
        record(cluster, CHECK, space, k2).await,
        None,
        "{CHECK}: expired"
    );
    assert_eq!(
        record(cluster, CHECK, space, k3).await,
        value(b"three"),
        "{CHECK}: TTL removed"
    );
    assert_eq!(
        records(cluster, CHECK, space).await,
        listed(&[(k1, &binary), (k3, b"three")]),
        "{CHECK}: scan after expiry"
    );

    let cleanup = vec![
        delete_record(space, k1),
        delete_record(space, k2),
        delete_record(space, k3),
        delete_record(other, k1),
    ];
    apply(storage, CHECK, cleanup.clone()).await;
    apply(storage, CHECK, cleanup).await;
    assert_eq!(
        records(cluster, CHECK, space).await,
        vec![],
        "{CHECK}: deleted"
    );
    assert_eq!(
        records(cluster, CHECK, other).await,
        vec![],
        "{CHECK}: deleted"
    );
}

fn push_log(space: &str, key: &str, entry: &str, keep: u32) -> Op {
    cluster_op(ClusterOp::PushLog {
        space: b(space),
        key: b(key),
        entry: Bytes::copy_from_slice(entry.as_bytes()),
        keep,
    })
}

/// Logs read newest first, capped.
pub async fn logs_capped_newest_first(
    storage: &dyn Storage,
    cluster: &dyn Cluster,
    _sleep: &Sleep,
) {
    const CHECK: &str = "logs_capped_newest_first";
    let space = "contract-logs-{s}";
    let [k, other] = ["k/{1}", "k2"];
    let batch: Vec<Op> = ["e1", "e2", "e3", "e4", "e5"]
        .iter()
        .map(|entry| push_log(space, k, entry, 3))
        .chain([push_log(space, other, "x", 10)])
        .collect();
    apply(storage, CHECK, batch).await;
    let texts = |entries: Vec<Bytes>| -> Vec<String> {
        entries
            .iter()
            .map(|entry| String::from_utf8_lossy(entry).into_owned())
            .collect()
    };
    assert_eq!(
        texts(log(cluster, CHECK, space, k, 10).await),
        ["e5", "e4", "e3"],
        "{CHECK}"
    );
    assert_eq!(
        texts(log(cluster, CHECK, space, k, 2).await),
        ["e5", "e4"],
        "{CHECK}: max"
    );
    assert_eq!(
        texts(log(cluster, CHECK, space, other, 10).await),
        ["x"],
        "{CHECK}"
    );
    assert_eq!(
        log(cluster, CHECK, space, "never", 10).await,
        Vec::<Bytes>::new(),
        "{CHECK}"
    );

    apply(storage, CHECK, vec![push_log(space, k, "e6", 1)]).await;
    assert_eq!(
        texts(log(cluster, CHECK, space, k, 10).await),
        ["e6"],
        "{CHECK}: keep 1"
    );
    apply(
        storage,
        CHECK,
        vec![push_log(space, k, "e7", 0), push_log(space, other, "y", 0)],
    )
    .await;
    assert_eq!(
        log(cluster, CHECK, space, k, 10).await,
        Vec::<Bytes>::new(),
        "{CHECK}: keep 0"
    );
    assert_eq!(
        log(cluster, CHECK, space, other, 10).await,
        Vec::<Bytes>::new(),
        "{CHECK}: keep 0"
    );
}
