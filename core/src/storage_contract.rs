//! The storage contract: checks every [`Storage`] backend must pass.
//!
//! Each check is an `async fn` taking a backend and panicking (through
//! `assert!`) when the backend breaks the contract; a backend's test suite
//! drives them with any executor. [`run_all`] runs every check in turn.
//!
//! Each check works on its own client ids (`contract-<check>-…`), topics
//! (`contract/<check>/…`) and message ids (node tag = the check's number), so
//! the checks also pass on a storage shared by all of them, and each one
//! deletes what it created, so a storage that was empty before [`run_all`]
//! is empty after it (a backend can check for leaked bodies then).
//!
//! # The contract
//!
//! - A batch is applied in order; when `apply` returns `Ok` every op is done.
//! - Every op is idempotent: applying a batch a second time leaves the same
//!   state. (The broker never completes a packet id and reuses it for another
//!   message in one batch; `CompleteInflight` is keyed by packet id only.)
//! - `PutSession` creates a session or keeps an existing one as it is, record
//!   included. A session exists only through `PutSession`: every other
//!   session-scoped op on an unknown client id is ignored.
//! - `DeleteSession` removes the session, its subscriptions, queue, window
//!   and inbound QoS 2 ids; a later `PutSession` starts empty.
//! - Subscriptions load in filter order (byte order); subscribing again
//!   replaces the QoS.
//! - `PutMessage` stores a body once (a second `PutMessage` of the id is a
//!   no-op); queues and windows refer to it by id, and the body lives as
//!   long as one of them does. A body is enqueued in the batch that stores
//!   it or while another entry still holds it.
//! - `Enqueue` appends; it is a no-op when the session already holds the id
//!   in its queue or its window. `Dequeue` removes the id from the queue only.
//! - `SetInflight` moves a queued message to the end of the window (send
//!   order) with its queued QoS and RETAIN flag, or updates the phase of the
//!   packet id already in the window. `CompleteInflight` removes it.
//! - Inbound QoS 2 ids form a set (load order unspecified).
//! - Retained messages are set, replaced and cleared per topic; load order
//!   is unspecified.
//! - The order of sessions in `load_subscriptions` is unspecified.

use std::sync::Arc;

use bytes::Bytes;

use crate::packet::{ByteStr, PacketId, QoS};
use crate::session::{Message, OutboundPhase};
use crate::storage::{
    MessageId, Op, SessionRecord, SessionSubscriptions, Storage, StoredDelivery, StoredInflight,
    StoredSession,
};

/// Runs every check of the contract on `storage` (empty at first).
pub async fn run_all(storage: &dyn Storage) {
    session_lifecycle(storage).await;
    subscriptions_in_filter_order(storage).await;
    queue_order_and_shared_bodies(storage).await;
    inflight_window(storage).await;
    inbound_qos2(storage).await;
    retained(storage).await;
    idempotence(storage).await;
    unknown_sessions_are_not_created(storage).await;
    batch_applied_in_order(storage).await;
}

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

/// Queue order is enqueue order (not id order); a body enqueued for three
/// sessions is stored once and loads the same for each; `Dequeue` removes
/// only that session's entry; a body outlives the deletion of one holder.
pub async fn queue_order_and_shared_bodies(storage: &dyn Storage) {
    const CHECK: &str = "queue_order_and_shared_bodies";
    let clients = ["contract-queue-a", "contract-queue-b", "contract-queue-c"];
    let [a, b, c] = clients;
    let m1 = MessageId::new(3, 1);
    let m2 = MessageId::new(3, 2);
    let m3 = MessageId::new(3, 3);
    let body1 = message("contract/queue/1", "one", QoS::AtLeastOnce);
    let body2 = message("contract/queue/2", "two", QoS::ExactlyOnce);
    let body3 = binary_message(
        "contract/queue/3",
        &[0xc3, 0x28, 0x00, 0xff],
        QoS::AtMostOnce,
    );

    let mut ops = vec![
        put_session(a, 1),
        put_session(b, 2),
        put_session(c, 3),
        // Stored once, referenced three times; ids not in queue order.
        put_message(m3, Arc::clone(&body3)),
        put_message(m1, Arc::clone(&body1)),
        put_message(m2, Arc::clone(&body2)),
    ];
    for client in clients {
        ops.push(enqueue(client, m3, QoS::AtMostOnce, false));
        ops.push(enqueue(client, m1, QoS::AtLeastOnce, false));
    }
    ops.push(enqueue(a, m2, QoS::ExactlyOnce, true));
    apply(storage, CHECK, ops).await;
    // In a later batch: the body is still held (by a), so it may be
    // enqueued for others without being stored again.
    apply(
        storage,
        CHECK,
        vec![
            enqueue(b, m2, QoS::AtLeastOnce, false),
            enqueue(c, m2, QoS::AtMostOnce, false),
        ],
    )
    .await;

    let queue_of =
        |client: &'static str| async move { session(storage, CHECK, client).await.queue };
    assert_eq!(
        queue_of(a).await,
        vec![
            delivery(m3, &body3, QoS::AtMostOnce, false),
            delivery(m1, &body1, QoS::AtLeastOnce, false),
            delivery(m2, &body2, QoS::ExactlyOnce, true),
        ],
        "{CHECK}: queue of a in enqueue order, with its QoS and RETAIN flag"
    );
    assert_eq!(
        queue_of(b).await,
        vec![
            delivery(m3, &body3, QoS::AtMostOnce, false),
            delivery(m1, &body1, QoS::AtLeastOnce, false),
            delivery(m2, &body2, QoS::AtLeastOnce, false),
        ],
        "{CHECK}: queue of b"
    );
    assert_eq!(
        queue_of(c).await,
        vec![
            delivery(m3, &body3, QoS::AtMostOnce, false),
            delivery(m1, &body1, QoS::AtLeastOnce, false),
            delivery(m2, &body2, QoS::AtMostOnce, false),
        ],
        "{CHECK}: queue of c"
    );

    // Storing a body again under its id is a no-op, and enqueuing an id the
    // session already holds is a no-op (the first QoS and RETAIN flag stay).
    apply(
        storage,
        CHECK,
        vec![
            put_message(m1, message("contract/queue/1", "other", QoS::AtMostOnce)),
            enqueue(a, m1, QoS::ExactlyOnce, true),
        ],
    )
    .await;
    assert_eq!(
        queue_of(a).await,
        vec![
            delivery(m3, &body3, QoS::AtMostOnce, false),
            delivery(m1, &body1, QoS::AtLeastOnce, false),
            delivery(m2, &body2, QoS::ExactlyOnce, true),
        ],
        "{CHECK}: PutMessage of a stored id and Enqueue of a held id are no-ops"
    );

    // Dequeue touches only one session's queue; dequeuing what is not
    // queued is a no-op.
    apply(
        storage,
        CHECK,
        vec![
            dequeue(b, m1),
            dequeue(b, MessageId::new(3, 99)),
            dequeue(a, MessageId::new(3, 99)),
        ],
    )
    .await;
    assert_eq!(
        queue_of(b).await,
        vec![
            delivery(m3, &body3, QoS::AtMostOnce, false),
            delivery(m2, &body2, QoS::AtLeastOnce, false),
        ],
        "{CHECK}: Dequeue removes the entry"
    );
    for client in [a, c] {
        assert_eq!(
            queue_of(client)
                .await
                .iter()
                .map(|d| d.id)
                .collect::<Vec<_>>(),
            vec![m3, m1, m2],
            "{CHECK}: Dequeue for b leaves {client} alone"
        );
    }

    // Deleting a holder leaves the body to the others.
    apply(storage, CHECK, vec![delete_session(a), dequeue(c, m1)]).await;
    assert_eq!(
        queue_of(c).await,
        vec![
            delivery(m3, &body3, QoS::AtMostOnce, false),
            delivery(m2, &body2, QoS::AtMostOnce, false),
        ],
        "{CHECK}: bodies outlive one holder"
    );

    cleanup(storage, CHECK, &clients, &[]).await;
}

/// `SetInflight` moves a queued message to the window in send order with its
/// QoS and RETAIN flag; a phase update keeps the order; `CompleteInflight`
/// removes; `load_session` returns window and queue as they stand.
pub async fn inflight_window(storage: &dyn Storage) {
    const CHECK: &str = "inflight_window";
    let a = "contract-inflight-a";
    let ids = [
        MessageId::new(4, 1),
        MessageId::new(4, 2),
        MessageId::new(4, 3),
        MessageId::new(4, 4),
    ];
    let [m1, m2, m3, m4] = ids;
    let bodies = [
        message("contract/inflight/1", "1", QoS::AtLeastOnce),
        message("contract/inflight/2", "2", QoS::ExactlyOnce),
        message("contract/inflight/3", "3", QoS::ExactlyOnce),
        message("contract/inflight/4", "4", QoS::AtLeastOnce),
    ];
    let [b1, b2, b3, b4] = &bodies;
    let qos = [
        QoS::AtLeastOnce,
        QoS::ExactlyOnce,
        QoS::ExactlyOnce,
        QoS::AtLeastOnce,
    ];

    let mut ops = vec![put_session(a, 1)];
    for ((id, body), qos) in ids.iter().zip(&bodies).zip(qos) {
        ops.push(put_message(*id, Arc::clone(body)));
        ops.push(enqueue(a, *id, qos, *id == m3));
    }
    apply(storage, CHECK, ops).await;

    // Send order differs from packet-id order and from queue order.
    apply(
        storage,
        CHECK,
        vec![set_inflight(a, 10, m2, OutboundPhase::Published)],
    )
    .await;
    apply(
        storage,
        CHECK,
        vec![
            set_inflight(a, 5, m1, OutboundPhase::Published),
            set_inflight(a, 7, m3, OutboundPhase::Published),
        ],
    )
    .await;
    let loaded = session(storage, CHECK, a).await;
    assert_eq!(
        loaded.inflight,
        vec![
            inflight(
                10,
                delivery(m2, b2, QoS::ExactlyOnce, false),
                OutboundPhase::Published
            ),
            inflight(
                5,
                delivery(m1, b1, QoS::AtLeastOnce, false),
                OutboundPhase::Published
            ),
            inflight(
                7,
                delivery(m3, b3, QoS::ExactlyOnce, true),
                OutboundPhase::Published
            ),
        ],
        "{CHECK}: window in send order, with the queued QoS and RETAIN flag"
    );
    assert_eq!(
        loaded.queue,
        vec![delivery(m4, b4, QoS::AtLeastOnce, false)],
        "{CHECK}: what went in flight left the queue"
    );

    // Dequeue is for the queue only: an in-flight message stays in flight.
    apply(storage, CHECK, vec![dequeue(a, m2)]).await;
    assert_eq!(
        session(storage, CHECK, a).await,
        loaded,
        "{CHECK}: Dequeue of an in-flight id is a no-op"
    );

    // PUBREC: phase update in place.
    apply(
        storage,
        CHECK,
        vec![set_inflight(a, 10, m2, OutboundPhase::Released)],
    )
    .await;
    let loaded = session(storage, CHECK, a).await;
    assert_eq!(
        loaded.inflight,
        vec![
            inflight(
                10,
                delivery(m2, b2, QoS::ExactlyOnce, false),
                OutboundPhase::Released
            ),
            inflight(
                5,
                delivery(m1, b1, QoS::AtLeastOnce, false),
                OutboundPhase::Published
            ),
            inflight(
                7,
                delivery(m3, b3, QoS::ExactlyOnce, true),
                OutboundPhase::Published
            ),
        ],
        "{CHECK}: phase updated, send order kept"
    );
    assert_eq!(
        loaded.queue,
        vec![delivery(m4, b4, QoS::AtLeastOnce, false)],
        "{CHECK}: a phase update does not touch the queue"
    );

    // PUBACK of 5, PUBCOMP of 10; completing an unknown packet id is a no-op.
    apply(
        storage,
        CHECK,
        vec![
            complete_inflight(a, 5),
            complete_inflight(a, 10),
            complete_inflight(a, 11),
        ],
    )
    .await;
    let loaded = session(storage, CHECK, a).await;
    assert_eq!(
        loaded.inflight,
        vec![inflight(
            7,
            delivery(m3, b3, QoS::ExactlyOnce, true),
            OutboundPhase::Published
        )],
        "{CHECK}: CompleteInflight removes"
    );
    assert_eq!(
        loaded.queue,
        vec![delivery(m4, b4, QoS::AtLeastOnce, false)],
        "{CHECK}: CompleteInflight does not touch the queue"
    );

    // A completed packet id is reused for the next message.
    apply(
        storage,
        CHECK,
        vec![set_inflight(a, 5, m4, OutboundPhase::Published)],
    )
    .await;
    let loaded = session(storage, CHECK, a).await;
    assert_eq!(
        loaded.inflight,
        vec![
            inflight(
                7,
                delivery(m3, b3, QoS::ExactlyOnce, true),
                OutboundPhase::Published
            ),
            inflight(
                5,
                delivery(m4, b4, QoS::AtLeastOnce, false),
                OutboundPhase::Published
            ),
        ],
        "{CHECK}: a reused packet id goes to the end of the send order"
    );
    assert_eq!(loaded.queue, vec![], "{CHECK}: queue drained");

    cleanup(storage, CHECK, &[a], &[]).await;
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

/// Retained messages: set, replace, clear, load; independent of sessions.
pub async fn retained(storage: &dyn Storage) {
    const CHECK: &str = "retained";
    let prefix = "contract/retained/";
    let topics = [
        "contract/retained/a",
        "contract/retained/b",
        "contract/retained/c",
    ];
    let [ta, tb, tc] = topics;
    let a1 = message(ta, "a1", QoS::AtLeastOnce);
    let a2 = message(ta, "a2", QoS::ExactlyOnce);
    let b1 = message(tb, "b1", QoS::AtMostOnce);
    // Binary-safe: not UTF-8, with zero bytes.
    let c1 = binary_message(tc, &[0x00, 0xff, 0xfe, 0x00, 0x80], QoS::AtMostOnce);

    assert_eq!(
        retained_of(storage, CHECK, prefix).await,
        vec![],
        "{CHECK}: none"
    );

    apply(
        storage,
        CHECK,
        vec![
            set_retained(tb, Some(&b1)),
            set_retained(ta, Some(&a1)),
            set_retained(tc, Some(&c1)),
        ],
    )
    .await;
    assert_eq!(
        retained_of(storage, CHECK, prefix).await,
        vec![Arc::clone(&a1), Arc::clone(&b1), Arc::clone(&c1)],
        "{CHECK}: set"
    );

    apply(
        storage,
        CHECK,
        vec![
            set_retained(ta, Some(&a2)),
            set_retained(tb, None),
            set_retained("contract/retained/never-set", None),
        ],
    )
    .await;
    assert_eq!(
        retained_of(storage, CHECK, prefix).await,
        vec![Arc::clone(&a2), Arc::clone(&c1)],
        "{CHECK}: replaced and cleared"
    );

    // Sessions come and go without touching retained messages.
    let s = "contract-retained-s";
    apply(storage, CHECK, vec![put_session(s, 1), delete_session(s)]).await;
    assert_eq!(
        retained_of(storage, CHECK, prefix).await,
        vec![Arc::clone(&a2), Arc::clone(&c1)],
        "{CHECK}: independent of sessions"
    );

    cleanup(storage, CHECK, &[s], &topics).await;
}

/// Applying the same batch twice leaves the same state, for batches that
/// create, fill, send, acknowledge and drop.
pub async fn idempotence(storage: &dyn Storage) {
    const CHECK: &str = "idempotence";
    let clients = ["contract-idempotence-a", "contract-idempotence-b"];
    let [a, b] = clients;
    let topics = ["contract/idempotence/r1", "contract/idempotence/r2"];
    let [r1, r2] = topics;
    let m1 = MessageId::new(7, 1);
    let m2 = MessageId::new(7, 2);
    let m3 = MessageId::new(7, 3);
    let m4 = MessageId::new(7, 4);
    let body1 = message("contract/idempotence/1", "1", QoS::AtLeastOnce);
    let body2 = message("contract/idempotence/2", "2", QoS::ExactlyOnce);
    let body3 = message("contract/idempotence/3", "3", QoS::AtMostOnce);
    let body4 = message("contract/idempotence/4", "4", QoS::ExactlyOnce);
    let retained1 = message(r1, "r1", QoS::AtLeastOnce);
    let retained2 = message(r2, "r2", QoS::AtMostOnce);

    let batches = vec![
        // Sessions, subscriptions, messages queued and sent at once.
        vec![
            put_session(a, 1),
            put_session(b, 2),
            subscribe(a, "contract/idempotence/#", QoS::ExactlyOnce),
            subscribe(b, "contract/idempotence/+", QoS::AtLeastOnce),
            put_message(m1, Arc::clone(&body1)),
            put_message(m2, Arc::clone(&body2)),
            put_message(m3, Arc::clone(&body3)),
            enqueue(a, m1, QoS::AtLeastOnce, false),
            enqueue(a, m2, QoS::ExactlyOnce, false),
            enqueue(a, m3, QoS::AtMostOnce, false),
            enqueue(b, m1, QoS::AtLeastOnce, false),
            enqueue(b, m2, QoS::AtLeastOnce, false),
            set_inflight(a, 1, m1, OutboundPhase::Published),
            set_inflight(b, 1, m1, OutboundPhase::Published),
            add_inbound(a, 40),
            add_inbound(b, 41),
            set_retained(r1, Some(&retained1)),
            set_retained(r2, Some(&retained2)),
        ],
        // Progress: QoS 0 sent, QoS 2 sent and released, QoS 1 acknowledged,
        // a new message queued (its body stored again: a no-op), an inbound
        // QoS 2 flow completed, a subscription changed, a retained cleared.
        vec![
            dequeue(a, m3),
            set_inflight(a, 2, m2, OutboundPhase::Published),
            set_inflight(a, 2, m2, OutboundPhase::Released),
            complete_inflight(b, 1),
            put_message(m4, Arc::clone(&body4)),
            put_message(
                m2,
                message("contract/idempotence/2", "other", QoS::AtMostOnce),
            ),
            enqueue(b, m4, QoS::ExactlyOnce, false),
            enqueue(b, m2, QoS::ExactlyOnce, false),
            remove_inbound(a, 40),
            add_inbound(a, 42),
            unsubscribe(a, "contract/idempotence/#"),
            subscribe(a, "contract/idempotence/1", QoS::AtMostOnce),
            subscribe(b, "contract/idempotence/+", QoS::ExactlyOnce),
            set_retained(r1, None),
        ],
        // A message queued, sent and acknowledged in one batch; one session
        // deleted and put again.
        vec![
            complete_inflight(a, 2),
            enqueue(a, m4, QoS::AtLeastOnce, true),
            set_inflight(a, 3, m4, OutboundPhase::Published),
            complete_inflight(a, 3),
            delete_session(b),
            put_session(b, 3),
            subscribe(b, "contract/idempotence/2", QoS::AtLeastOnce),
        ],
    ];

    for (index, batch) in batches.into_iter().enumerate() {
        apply(storage, CHECK, batch.clone()).await;
        let once = snapshot(storage, CHECK, &clients, "contract/idempotence/").await;
        apply(storage, CHECK, batch).await;
        let twice = snapshot(storage, CHECK, &clients, "contract/idempotence/").await;
        assert_eq!(once, twice, "{CHECK}: batch {index} applied twice");
    }

    // Spot-check the final state, so idempotence is not met by doing nothing.
    assert_eq!(
        session(storage, CHECK, a).await,
        StoredSession {
            record: record(a, 1),
            subscriptions: vec![(ByteStr::from("contract/idempotence/1"), QoS::AtMostOnce)],
            inflight: vec![inflight(
                1,
                delivery(m1, &body1, QoS::AtLeastOnce, false),
                OutboundPhase::Published
            )],
            queue: vec![],
            inbound_qos2: vec![pid(42)],
        },
        "{CHECK}: final state of a"
    );
    assert_eq!(
        session(storage, CHECK, b).await,
        StoredSession {
            subscriptions: vec![(ByteStr::from("contract/idempotence/2"), QoS::AtLeastOnce)],
            ..empty(b, 3)
        },
        "{CHECK}: final state of b"
    );
    assert_eq!(
        retained_of(storage, CHECK, "contract/idempotence/").await,
        vec![retained2],
        "{CHECK}: final retained"
    );

    cleanup(storage, CHECK, &clients, &topics).await;
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
            set_inflight(client, 1, m1, OutboundPhase::Published),
            set_inflight(client, 1, m1, OutboundPhase::Released),
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

/// A batch is applied op by op, in order.
pub async fn batch_applied_in_order(storage: &dyn Storage) {
    const CHECK: &str = "batch_applied_in_order";
    let a = "contract-order-a";
    let b = "contract-order-b";
    let c = "contract-order-c";
    let topic = "contract/order/retained";
    let m1 = MessageId::new(9, 1);
    let m2 = MessageId::new(9, 2);
    let body1 = message("contract/order/1", "1", QoS::AtLeastOnce);
    let body2 = message("contract/order/2", "2", QoS::AtLeastOnce);
    let gone = message(topic, "gone", QoS::AtLeastOnce);
    let kept = message(topic, "kept", QoS::AtLeastOnce);

    // Enqueue then Dequeue leaves nothing; Subscribe twice keeps the last.
    apply(
        storage,
        CHECK,
        vec![
            put_session(a, 1),
            put_message(m1, Arc::clone(&body1)),
            put_message(m2, Arc::clone(&body2)),
            enqueue(a, m1, QoS::AtLeastOnce, false),
            enqueue(a, m2, QoS::AtLeastOnce, false),
            dequeue(a, m1),
            subscribe(a, "x", QoS::AtMostOnce),
            subscribe(a, "x", QoS::ExactlyOnce),
            add_inbound(a, 1),
            remove_inbound(a, 1),
        ],
    )
    .await;
    assert_eq!(
        session(storage, CHECK, a).await,
        StoredSession {
            subscriptions: vec![(ByteStr::from("x"), QoS::ExactlyOnce)],
            queue: vec![delivery(m2, &body2, QoS::AtLeastOnce, false)],
            ..empty(a, 1)
        },
        "{CHECK}: Enqueue then Dequeue, Subscribe twice, Add then Remove"
    );

    // Subscribe before PutSession is ignored; after it, kept.
    apply(
        storage,
        CHECK,
        vec![
            subscribe(b, "early", QoS::AtLeastOnce),
            put_session(b, 2),
            subscribe(b, "late", QoS::AtLeastOnce),
        ],
    )
    .await;
    assert_eq!(
        session(storage, CHECK, b).await.subscriptions,
        vec![(ByteStr::from("late"), QoS::AtLeastOnce)],
        "{CHECK}: ops before PutSession in the batch are on an unknown session"
    );

    // PutSession, DeleteSession, PutSession leaves an empty session, even
    // when the session held things before the batch.
    apply(
        storage,
        CHECK,
        vec![put_session(c, 3), delete_session(c), put_session(c, 4)],
    )
    .await;
    assert_eq!(
        load(storage, CHECK, c).await,
        Some(empty(c, 4)),
        "{CHECK}: PutSession, DeleteSession, PutSession"
    );
    apply(
        storage,
        CHECK,
        vec![
            delete_session(a),
            put_session(a, 5),
            put_session(a, 6),
            delete_session(b),
        ],
    )
    .await;
    assert_eq!(
        load(storage, CHECK, a).await,
        Some(empty(a, 5)),
        "{CHECK}: DeleteSession, PutSession on a full session starts empty"
    );
    assert_eq!(load(storage, CHECK, b).await, None, "{CHECK}: deleted last");

    // Retained: the last op of the batch wins.
    apply(
        storage,
        CHECK,
        vec![set_retained(topic, Some(&gone)), set_retained(topic, None)],
    )
    .await;
    assert_eq!(
        retained_of(storage, CHECK, "contract/order/").await,
        vec![],
        "{CHECK}: set then clear"
    );
    apply(
        storage,
        CHECK,
        vec![set_retained(topic, None), set_retained(topic, Some(&kept))],
    )
    .await;
    assert_eq!(
        retained_of(storage, CHECK, "contract/order/").await,
        vec![kept],
        "{CHECK}: clear then set"
    );

    cleanup(storage, CHECK, &[a, b, c], &[topic]).await;
}

// ---------------------------------------------------------------------------
// Helpers.

async fn apply(storage: &dyn Storage, check: &str, ops: Vec<Op>) {
    let shown = format!("{ops:?}");
    let result = storage.apply(ops).await;
    assert!(
        result.is_ok(),
        "{check}: {} apply failed: {result:?}; batch: {shown}",
        storage.name()
    );
}

async fn load(storage: &dyn Storage, check: &str, client_id: &str) -> Option<StoredSession> {
    match storage.load_session(client_id).await {
        Ok(session) => session.map(normalized),
        Err(error) => panic!(
            "{check}: {} load_session({client_id}): {error}",
            storage.name()
        ),
    }
}

async fn session(storage: &dyn Storage, check: &str, client_id: &str) -> StoredSession {
    let Some(session) = load(storage, check, client_id).await else {
        panic!("{check}: session {client_id} not found");
    };
    session
}

async fn inbound_of(storage: &dyn Storage, check: &str, client_id: &str) -> Vec<PacketId> {
    session(storage, check, client_id).await.inbound_qos2
}

/// The sessions whose client id starts with `prefix`, by client id.
async fn subscriptions_of(
    storage: &dyn Storage,
    check: &str,
    prefix: &str,
) -> Vec<SessionSubscriptions> {
    let mut all = match storage.load_subscriptions().await {
        Ok(all) => all,
        Err(error) => panic!("{check}: {} load_subscriptions: {error}", storage.name()),
    };
    all.retain(|(record, _)| record.client_id.starts_with(prefix));
    all.sort_by(|x, y| x.0.client_id.cmp(&y.0.client_id));
    all
}

/// The retained messages whose topic starts with `prefix`, by topic.
async fn retained_of(storage: &dyn Storage, check: &str, prefix: &str) -> Vec<Arc<Message>> {
    let mut all = match storage.load_retained().await {
        Ok(all) => all,
        Err(error) => panic!("{check}: {} load_retained: {error}", storage.name()),
    };
    all.retain(|message| message.topic.starts_with(prefix));
    all.sort_by(|x, y| x.topic.cmp(&y.topic));
    all
}

/// Everything a check can observe about its clients and topics.
async fn snapshot(
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
    let mut subscriptions = subscriptions_of(storage, check, "").await;
    subscriptions.retain(|(record, _)| clients.contains(&record.client_id.as_str()));
    let retained = retained_of(storage, check, topic_prefix).await;
    (sessions, subscriptions, retained)
}

/// Deletes the check's sessions and retained messages, then checks that they
/// are gone.
async fn cleanup(storage: &dyn Storage, check: &str, clients: &[&str], topics: &[&str]) {
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
fn normalized(mut session: StoredSession) -> StoredSession {
    session.inbound_qos2.sort_unstable();
    session
}

fn pid(n: u16) -> PacketId {
    let Some(id) = PacketId::new(n) else {
        panic!("packet id 0");
    };
    id
}

fn message(topic: &str, payload: &str, qos: QoS) -> Arc<Message> {
    Arc::new(Message {
        topic: ByteStr::from(topic),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos,
        retain: false,
    })
}

fn binary_message(topic: &str, payload: &[u8], qos: QoS) -> Arc<Message> {
    Arc::new(Message {
        topic: ByteStr::from(topic),
        payload: Bytes::copy_from_slice(payload),
        qos,
        retain: false,
    })
}

fn record(client_id: &str, created_at_ms: u64) -> SessionRecord {
    SessionRecord {
        client_id: ByteStr::from(client_id),
        created_at_ms,
    }
}

fn empty(client_id: &str, created_at_ms: u64) -> StoredSession {
    StoredSession {
        record: record(client_id, created_at_ms),
        subscriptions: vec![],
        inflight: vec![],
        queue: vec![],
        inbound_qos2: vec![],
    }
}

fn delivery(id: MessageId, message: &Arc<Message>, qos: QoS, retain: bool) -> StoredDelivery {
    StoredDelivery {
        id,
        message: Arc::clone(message),
        qos,
        retain,
    }
}

fn inflight(packet_id: u16, delivery: StoredDelivery, phase: OutboundPhase) -> StoredInflight {
    StoredInflight {
        packet_id: pid(packet_id),
        delivery,
        phase,
    }
}

fn put_session(client_id: &str, created_at_ms: u64) -> Op {
    Op::PutSession(record(client_id, created_at_ms))
}

fn delete_session(client_id: &str) -> Op {
    Op::DeleteSession {
        client_id: ByteStr::from(client_id),
    }
}

fn subscribe(client_id: &str, filter: &str, qos: QoS) -> Op {
    Op::Subscribe {
        client_id: ByteStr::from(client_id),
        filter: ByteStr::from(filter),
        qos,
    }
}

fn unsubscribe(client_id: &str, filter: &str) -> Op {
    Op::Unsubscribe {
        client_id: ByteStr::from(client_id),
        filter: ByteStr::from(filter),
    }
}

fn put_message(id: MessageId, message: Arc<Message>) -> Op {
    Op::PutMessage { id, message }
}

fn enqueue(client_id: &str, id: MessageId, qos: QoS, retain: bool) -> Op {
    Op::Enqueue {
        client_id: ByteStr::from(client_id),
        id,
        qos,
        retain,
    }
}

fn dequeue(client_id: &str, id: MessageId) -> Op {
    Op::Dequeue {
        client_id: ByteStr::from(client_id),
        id,
    }
}

fn set_inflight(client_id: &str, packet_id: u16, id: MessageId, phase: OutboundPhase) -> Op {
    Op::SetInflight {
        client_id: ByteStr::from(client_id),
        packet_id: pid(packet_id),
        id,
        phase,
    }
}

fn complete_inflight(client_id: &str, packet_id: u16) -> Op {
    Op::CompleteInflight {
        client_id: ByteStr::from(client_id),
        packet_id: pid(packet_id),
    }
}

fn add_inbound(client_id: &str, packet_id: u16) -> Op {
    Op::AddInboundQos2 {
        client_id: ByteStr::from(client_id),
        packet_id: pid(packet_id),
    }
}

fn remove_inbound(client_id: &str, packet_id: u16) -> Op {
    Op::RemoveInboundQos2 {
        client_id: ByteStr::from(client_id),
        packet_id: pid(packet_id),
    }
}

fn set_retained(topic: &str, message: Option<&Arc<Message>>) -> Op {
    Op::SetRetained {
        topic: ByteStr::from(topic),
        message: message.map(Arc::clone),
    }
}
