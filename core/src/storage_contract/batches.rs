//! Checks on how batches apply: idempotence and order.

use std::sync::Arc;

use crate::packet::{ByteStr, QoS};
use crate::session::OutboundPhase;
use crate::storage::{MessageId, Storage, StoredSession};

use super::support::*;

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
            set_inflight(
                a,
                1,
                m1,
                OutboundPhase::Published,
                (QoS::AtLeastOnce, false),
            ),
            set_inflight(
                b,
                1,
                m1,
                OutboundPhase::Published,
                (QoS::AtLeastOnce, false),
            ),
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
            set_inflight(
                a,
                2,
                m2,
                OutboundPhase::Published,
                (QoS::ExactlyOnce, false),
            ),
            set_inflight(a, 2, m2, OutboundPhase::Released, (QoS::ExactlyOnce, false)),
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
            set_inflight(a, 3, m4, OutboundPhase::Published, (QoS::AtLeastOnce, true)),
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
