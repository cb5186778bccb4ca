//! Checks on queues, the in-flight window and retained messages.

use std::sync::Arc;

use crate::packet::QoS;
use crate::session::OutboundPhase;
use crate::storage::{MessageId, Storage};

use super::support::*;

/// Queue order is id order (not enqueue order); a body enqueued for three
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
        // Stored once, referenced three times; stored and enqueued out of id order.
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
            delivery(m1, &body1, QoS::AtLeastOnce, false),
            delivery(m2, &body2, QoS::ExactlyOnce, true),
            delivery(m3, &body3, QoS::AtMostOnce, false),
        ],
        "{CHECK}: queue of a in enqueue order, with its QoS and RETAIN flag"
    );
    assert_eq!(
        queue_of(b).await,
        vec![
            delivery(m1, &body1, QoS::AtLeastOnce, false),
            delivery(m2, &body2, QoS::AtLeastOnce, false),
            delivery(m3, &body3, QoS::AtMostOnce, false),
        ],
        "{CHECK}: queue of b"
    );
    assert_eq!(
        queue_of(c).await,
        vec![
            delivery(m1, &body1, QoS::AtLeastOnce, false),
            delivery(m2, &body2, QoS::AtMostOnce, false),
            delivery(m3, &body3, QoS::AtMostOnce, false),
        ],
        "{CHECK}: queue of c"
    );

    // Storing a body again under its id is a no-op, and enqueuing an id the
    // session already queues keeps its place and takes the last QoS and
    // RETAIN flag.
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
            delivery(m1, &body1, QoS::ExactlyOnce, true),
            delivery(m2, &body2, QoS::ExactlyOnce, true),
            delivery(m3, &body3, QoS::AtMostOnce, false),
        ],
        "{CHECK}: PutMessage of a stored id is a no-op; Enqueue of a queued id sets its flags"
    );
    apply(
        storage,
        CHECK,
        vec![enqueue(a, m1, QoS::AtLeastOnce, false)],
    )
    .await;
    assert_eq!(
        queue_of(a).await,
        vec![
            delivery(m1, &body1, QoS::AtLeastOnce, false),
            delivery(m2, &body2, QoS::ExactlyOnce, true),
            delivery(m3, &body3, QoS::AtMostOnce, false),
        ],
        "{CHECK}: Enqueue of a queued id sets its flags again"
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
            delivery(m2, &body2, QoS::AtLeastOnce, false),
            delivery(m3, &body3, QoS::AtMostOnce, false),
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
            vec![m1, m2, m3],
            "{CHECK}: Dequeue for b leaves {client} alone"
        );
    }

    // Deleting a holder leaves the body to the others.
    apply(storage, CHECK, vec![delete_session(a), dequeue(c, m1)]).await;
    assert_eq!(
        queue_of(c).await,
        vec![
            delivery(m2, &body2, QoS::AtMostOnce, false),
            delivery(m3, &body3, QoS::AtMostOnce, false),
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
        vec![set_inflight(
            a,
            10,
            m2,
            OutboundPhase::Published,
            (QoS::ExactlyOnce, false),
        )],
    )
    .await;
    apply(
        storage,
        CHECK,
        vec![
            set_inflight(
                a,
                5,
                m1,
                OutboundPhase::Published,
                (QoS::AtLeastOnce, false),
            ),
            set_inflight(a, 7, m3, OutboundPhase::Published, (QoS::ExactlyOnce, true)),
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
    // Nor does an Enqueue touch it: not queued again, its flags kept.
    apply(storage, CHECK, vec![enqueue(a, m3, QoS::AtMostOnce, false)]).await;
    assert_eq!(
        session(storage, CHECK, a).await,
        loaded,
        "{CHECK}: Enqueue of an in-flight id is a no-op"
    );

    // PUBREC: phase update in place.
    apply(
        storage,
        CHECK,
        vec![set_inflight(
            a,
            10,
            m2,
            OutboundPhase::Released,
            (QoS::ExactlyOnce, false),
        )],
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
        vec![set_inflight(
            a,
            5,
            m4,
            OutboundPhase::Published,
            (QoS::AtLeastOnce, false),
        )],
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

/// Loads return the time a body was stored with (`PutMessage`'s `at_ms`)
/// for every queue and window entry of it, 0 when it was stored without
/// one; storing the body again does not change it.
pub async fn message_times(storage: &dyn Storage) {
    const CHECK: &str = "message_times";
    let clients = ["contract-times-a", "contract-times-b"];
    let [a, b] = clients;
    let m1 = MessageId::new(11, 1);
    let m2 = MessageId::new(11, 2);
    let body1 = message("contract/times/1", "one", QoS::AtLeastOnce);
    let body2 = message("contract/times/2", "two", QoS::AtLeastOnce);
    let t1 = 1_234_567_890_123;
    apply(
        storage,
        CHECK,
        vec![
            put_session(a, 1),
            put_session(b, 2),
            put_message_at(m1, Arc::clone(&body1), t1),
            put_message_at(m2, Arc::clone(&body2), 0),
            enqueue(a, m1, QoS::AtLeastOnce, false),
            enqueue(a, m2, QoS::AtLeastOnce, false),
        ],
    )
    .await;
    let times = |deliveries: &[crate::storage::StoredDelivery]| {
        deliveries
            .iter()
            .map(|d| (d.id, d.at_ms))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        times(&session(storage, CHECK, a).await.queue),
        vec![(m1, t1), (m2, 0)],
        "{CHECK}: queued deliveries carry the time of their body (0 = none)"
    );

    // A second PutMessage of the id keeps the first time; another session
    // enqueuing the held body later gets the same time; so does the window.
    apply(
        storage,
        CHECK,
        vec![
            put_message_at(m1, Arc::clone(&body1), t1 + 5_000),
            enqueue(b, m1, QoS::AtLeastOnce, false),
            set_inflight(
                a,
                1,
                m1,
                OutboundPhase::Published,
                (QoS::AtLeastOnce, false),
            ),
        ],
    )
    .await;
    let stored_a = session(storage, CHECK, a).await;
    assert_eq!(
        (stored_a.inflight.iter())
            .map(|m| (m.delivery.id, m.delivery.at_ms))
            .collect::<Vec<_>>(),
        vec![(m1, t1)],
        "{CHECK}: an in-flight delivery keeps the time of its body"
    );
    assert_eq!(times(&stored_a.queue), vec![(m2, 0)], "{CHECK}: queue of a");
    assert_eq!(
        times(&session(storage, CHECK, b).await.queue),
        vec![(m1, t1)],
        "{CHECK}: PutMessage of a stored id keeps its first time"
    );

    cleanup(storage, CHECK, &clients, &[]).await;
}
