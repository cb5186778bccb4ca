//! Checks on sessions, subscriptions and inbound QoS 2 ids.

use std::sync::Arc;

use crate::packet::{ByteStr, QoS};
use crate::session::OutboundPhase;
use crate::storage::{MessageId, Storage};

use super::support::*;

/// `PutSession` creates an empty session and keeps an existing one as it is;
/// `DeleteSession` removes it with its subscriptions and queue; a session put
/// again after a delete starts empty.
pub async fn session_lifecycle(storage: &dyn Storage) {
    const CHECK: &str = "session_lifecycle";
    let a = "contract-lifecycle-a";
    let b = "contract-lifecycle-b";
    let m1 = MessageId::new(1, 1);

    assert_eq!(
        load(storage, CHECK, a).await,
        None,
        "{CHECK}: unknown session"
    );

    apply(storage, CHECK, vec![put_session(a, 1_000)]).await;
    assert_eq!(
        load(storage, CHECK, a).await,
        Some(empty(a, 1_000)),
        "{CHECK}: a new session is empty"
    );

    apply(
        storage,
        CHECK,
        vec![
            subscribe(a, "contract/lifecycle/#", QoS::AtLeastOnce),
            put_message(m1, message("contract/lifecycle/x", "one", QoS::AtLeastOnce)),
            enqueue(a, m1, QoS::AtLeastOnce, false),
            add_inbound(a, 7),
        ],
    )
    .await;
    let full = session(storage, CHECK, a).await;

    // PutSession again, even with another record, keeps the session as is.
    apply(storage, CHECK, vec![put_session(a, 2_000)]).await;
    assert_eq!(
        session(storage, CHECK, a).await,
        full,
        "{CHECK}: PutSession of an existing session keeps it (record included)"
    );

    apply(storage, CHECK, vec![put_session(b, 3_000)]).await;
    assert_eq!(
        subscriptions_of(storage, CHECK, "contract-lifecycle-").await,
        vec![
            (
                record(a, 1_000),
                vec![(ByteStr::from("contract/lifecycle/#"), QoS::AtLeastOnce)]
            ),
            (record(b, 3_000), vec![]),
        ],
        "{CHECK}: load_subscriptions lists every session, with or without subscriptions"
    );

    apply(storage, CHECK, vec![delete_session(a)]).await;
    assert_eq!(load(storage, CHECK, a).await, None, "{CHECK}: deleted");
    assert_eq!(
        subscriptions_of(storage, CHECK, "contract-lifecycle-").await,
        vec![(record(b, 3_000), vec![])],
        "{CHECK}: a deleted session and its subscriptions are not listed"
    );
    assert_eq!(
        load(storage, CHECK, b).await,
        Some(empty(b, 3_000)),
        "{CHECK}: deleting one session leaves the others"
    );

    // Deleting again (or deleting an unknown session) is a no-op.
    apply(storage, CHECK, vec![delete_session(a)]).await;
    assert_eq!(
        load(storage, CHECK, a).await,
        None,
        "{CHECK}: deleted twice"
    );

    apply(storage, CHECK, vec![put_session(a, 4_000)]).await;
    assert_eq!(
        load(storage, CHECK, a).await,
        Some(empty(a, 4_000)),
        "{CHECK}: a session put again after a delete starts empty"
    );

    cleanup(storage, CHECK, &[a, b], &[]).await;
}

/// Subscriptions load in filter order whatever the subscribe order;
/// subscribing again replaces the QoS; unsubscribing removes the filter.
pub async fn subscriptions_in_filter_order(storage: &dyn Storage) {
    const CHECK: &str = "subscriptions_in_filter_order";
    let a = "contract-subscriptions-a";
    let b = "contract-subscriptions-b";

    apply(
        storage,
        CHECK,
        vec![
            put_session(a, 1),
            put_session(b, 2),
            subscribe(a, "c/+", QoS::ExactlyOnce),
            subscribe(a, "a/#", QoS::AtMostOnce),
            subscribe(a, "b", QoS::AtLeastOnce),
            subscribe(a, "a", QoS::AtLeastOnce),
            subscribe(b, "#", QoS::AtMostOnce),
        ],
    )
    .await;
    let expected_a = vec![
        (ByteStr::from("a"), QoS::AtLeastOnce),
        (ByteStr::from("a/#"), QoS::AtMostOnce),
        (ByteStr::from("b"), QoS::AtLeastOnce),
        (ByteStr::from("c/+"), QoS::ExactlyOnce),
    ];
    let expected_b = vec![(ByteStr::from("#"), QoS::AtMostOnce)];
    assert_eq!(
        subscriptions_of(storage, CHECK, "contract-subscriptions-").await,
        vec![
            (record(a, 1), expected_a.clone()),
            (record(b, 2), expected_b.clone()),
        ],
        "{CHECK}: load_subscriptions in filter order"
    );
    assert_eq!(
        session(storage, CHECK, a).await.subscriptions,
        expected_a,
        "{CHECK}: load_session subscriptions in filter order"
    );

    // Resubscribe replaces the QoS; unsubscribe removes; unsubscribing an
    // unknown filter is a no-op.
    apply(
        storage,
        CHECK,
        vec![
            subscribe(a, "a/#", QoS::ExactlyOnce),
            unsubscribe(a, "b"),
            unsubscribe(a, "not/subscribed"),
        ],
    )
    .await;
    let expected_a = vec![
        (ByteStr::from("a"), QoS::AtLeastOnce),
        (ByteStr::from("a/#"), QoS::ExactlyOnce),
        (ByteStr::from("c/+"), QoS::ExactlyOnce),
    ];
    assert_eq!(
        subscriptions_of(storage, CHECK, "contract-subscriptions-").await,
        vec![
            (record(a, 1), expected_a.clone()),
            (record(b, 2), expected_b)
        ],
        "{CHECK}: resubscribe replaces the QoS, unsubscribe removes"
    );
    assert_eq!(
        session(storage, CHECK, a).await.subscriptions,
        expected_a,
        "{CHECK}: load_session after resubscribe"
    );

    cleanup(storage, CHECK, &[a, b], &[]).await;
}

/// Inbound QoS 2 ids are a set: added, added again (no change), removed.
pub async fn inbound_qos2(storage: &dyn Storage) {
    const CHECK: &str = "inbound_qos2";
    let a = "contract-inbound-a";
    let b = "contract-inbound-b";

    apply(
        storage,
        CHECK,
        vec![
            put_session(a, 1),
            put_session(b, 2),
            add_inbound(a, 3),
            add_inbound(a, 1),
            add_inbound(a, 2),
            add_inbound(a, 1),
            add_inbound(b, 2),
        ],
    )
    .await;
    assert_eq!(
        inbound_of(storage, CHECK, a).await,
        vec![pid(1), pid(2), pid(3)],
        "{CHECK}: added"
    );

    apply(
        storage,
        CHECK,
        vec![remove_inbound(a, 2), remove_inbound(a, 9)],
    )
    .await;
    assert_eq!(
        inbound_of(storage, CHECK, a).await,
        vec![pid(1), pid(3)],
        "{CHECK}: removed; removing an unknown id is a no-op"
    );
    assert_eq!(
        inbound_of(storage, CHECK, b).await,
        vec![pid(2)],
        "{CHECK}: another session's ids are its own"
    );

    apply(
        storage,
        CHECK,
        vec![remove_inbound(a, 1), remove_inbound(a, 3)],
    )
    .await;
    assert_eq!(
        session(storage, CHECK, a).await,
        empty(a, 1),
        "{CHECK}: all removed"
    );

    cleanup(storage, CHECK, &[a, b], &[]).await;
}

/// Session-scoped ops on a client id with no session (never created, or
/// deleted) are ignored: they do not create a session.
pub async fn unknown_sessions_are_not_created(storage: &dyn Storage) {
    const CHECK: &str = "unknown_sessions_are_not_created";
    let ghost = "contract-unknown-ghost";
    let deleted = "contract-unknown-deleted";
    let m1 = MessageId::new(8, 1);
    let body1 = message("contract/unknown/1", "1", QoS::ExactlyOnce);

    let ops_on = |client: &str| {
        vec![
            put_message(m1, Arc::clone(&body1)),
            subscribe(client, "contract/unknown/#", QoS::AtLeastOnce),
            unsubscribe(client, "contract/unknown/x"),
            enqueue(client, m1, QoS::ExactlyOnce, false),
            dequeue(client, m1),
            enqueue(client, m1, QoS::ExactlyOnce, false),
            set_inflight(
                client,
                1,
                m1,
                OutboundPhase::Published,
                (QoS::ExactlyOnce, false),
            ),
            set_inflight(
                client,
                1,
                m1,
                OutboundPhase::Released,
                (QoS::ExactlyOnce, false),
            ),
            complete_inflight(client, 1),
            add_inbound(client, 2),
            remove_inbound(client, 3),
            add_inbound(client, 4),
        ]
    };

    apply(storage, CHECK, ops_on(ghost)).await;
    apply(
        storage,
        CHECK,
        vec![put_session(deleted, 1), delete_session(deleted)],
    )
    .await;
    apply(storage, CHECK, ops_on(deleted)).await;

    for client in [ghost, deleted] {
        assert_eq!(
            load(storage, CHECK, client).await,
            None,
            "{CHECK}: ops on {client} created no session"
        );
    }
    assert_eq!(
        subscriptions_of(storage, CHECK, "contract-unknown-").await,
        vec![],
        "{CHECK}: ops on unknown sessions list no session"
    );

    // A session put later starts empty: nothing was kept for it meanwhile.
    apply(storage, CHECK, vec![put_session(ghost, 5)]).await;
    assert_eq!(
        load(storage, CHECK, ghost).await,
        Some(empty(ghost, 5)),
        "{CHECK}: a session put after ignored ops starts empty"
    );

    cleanup(storage, CHECK, &[ghost, deleted], &[]).await;
}

/// `load_subscriptions` lists each session's queued ids in queue order (id
/// order, whatever the enqueue order), without the ids in flight or
/// dequeued: what the broker bounds a session not loaded yet with.
pub async fn queued_ids_listed(storage: &dyn Storage) {
    const CHECK: &str = "queued_ids_listed";
    let clients = ["contract-queued-a", "contract-queued-b"];
    let [a, b] = clients;
    let ids: Vec<MessageId> = (1..=4).map(|n| MessageId::new(10, n)).collect();
    let body = message("contract/queued/1", "q", QoS::AtLeastOnce);
    let mut ops = vec![put_session(a, 1), put_session(b, 2)];
    for id in ids.iter().rev() {
        ops.push(put_message(*id, Arc::clone(&body)));
        ops.push(enqueue(a, *id, QoS::AtLeastOnce, false));
    }
    apply(storage, CHECK, ops).await;
    let queued = |listed: Vec<crate::storage::SessionSubscriptions>| {
        listed
            .into_iter()
            .map(|l| (l.record.client_id.to_string(), l.queued))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        queued(listed_of(storage, CHECK, "contract-queued-").await),
        vec![(a.to_owned(), ids.clone()), (b.to_owned(), vec![])],
        "{CHECK}: queued ids in id order, none for an empty queue"
    );
    apply(
        storage,
        CHECK,
        vec![
            set_inflight(
                a,
                1,
                ids[0],
                OutboundPhase::Published,
                (QoS::AtLeastOnce, false),
            ),
            dequeue(a, ids[2]),
        ],
    )
    .await;
    assert_eq!(
        queued(listed_of(storage, CHECK, "contract-queued-").await),
        vec![(a.to_owned(), vec![ids[1], ids[3]]), (b.to_owned(), vec![])],
        "{CHECK}: ids in flight or dequeued are not queued"
    );
    cleanup(storage, CHECK, &clients, &[]).await;
}
