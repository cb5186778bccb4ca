//! Backend-specific checks the contract cannot make through the trait: that
//! bodies are stored once and released when the last reference goes.

use std::collections::HashMap;

use bytes::Bytes;
use futures_lite::future::block_on;

use super::*;

fn storage() -> MemoryStorage {
    MemoryStorage::new()
}

fn apply(storage: &MemoryStorage, ops: Vec<Op>) {
    let result = block_on(storage.apply(ops));
    assert!(result.is_ok(), "apply: {result:?}");
    storage.lock().check_invariants();
}

fn load(storage: &MemoryStorage, client_id: &str) -> StoredSession {
    match block_on(storage.load_session(client_id)) {
        Ok(Some(session)) => session,
        other => panic!("load_session({client_id}): {other:?}"),
    }
}

fn pid(n: u16) -> PacketId {
    let Some(id) = PacketId::new(n) else {
        panic!("packet id 0")
    };
    id
}

fn id(n: u64) -> MessageId {
    MessageId::new(1, n)
}

fn body(n: u64) -> Arc<Message> {
    Arc::new(Message {
        topic: ByteStr::from(format!("t/{n}")),
        payload: Bytes::from(n.to_be_bytes().to_vec()),
        qos: QoS::ExactlyOnce,
        retain: false,
    })
}

fn put_session(client: &str) -> Op {
    Op::PutSession(SessionRecord {
        client_id: ByteStr::from(client),
        created_at_ms: 0,
    })
}

fn delete_session(client: &str) -> Op {
    Op::DeleteSession {
        client_id: ByteStr::from(client),
    }
}

fn put_message(n: u64) -> Op {
    Op::PutMessage {
        id: id(n),
        message: body(n),
        at_ms: n,
    }
}

fn enqueue(client: &str, n: u64) -> Op {
    Op::Enqueue {
        client_id: ByteStr::from(client),
        id: id(n),
        qos: QoS::ExactlyOnce,
        retain: false,
    }
}

fn dequeue(client: &str, n: u64) -> Op {
    Op::Dequeue {
        client_id: ByteStr::from(client),
        id: id(n),
    }
}

fn set_inflight(client: &str, packet_id: u16, n: u64, phase: OutboundPhase) -> Op {
    Op::SetInflight {
        client_id: ByteStr::from(client),
        packet_id: pid(packet_id),
        id: id(n),
        phase,
        qos: QoS::AtLeastOnce,
        retain: false,
    }
}

fn complete(client: &str, packet_id: u16) -> Op {
    Op::CompleteInflight {
        client_id: ByteStr::from(client),
        packet_id: pid(packet_id),
    }
}

impl Inner {
    /// Every body is referenced, and its count is the number of queue and
    /// window entries naming it; every session holds an id at most once.
    fn check_invariants(&self) {
        let mut counted: HashMap<MessageId, usize> = HashMap::new();
        for (client, session) in &self.sessions {
            let ids: Vec<MessageId> = session
                .queue
                .iter()
                .map(|entry| entry.id)
                .chain(session.inflight.iter().map(|inflight| inflight.entry.id))
                .collect();
            let held: HashSet<MessageId> = ids.iter().copied().collect();
            assert_eq!(held.len(), ids.len(), "{client}: an id held twice");
            assert_eq!(held, session.held, "{client}: held set out of date");
            let packet_ids: HashSet<PacketId> = session
                .inflight
                .iter()
                .map(|inflight| inflight.packet_id)
                .collect();
            assert_eq!(
                packet_ids.len(),
                session.inflight.len(),
                "{client}: a packet id in flight twice"
            );
            for id in ids {
                *counted.entry(id).or_default() += 1;
            }
        }
        for (id, body) in &self.messages {
            assert!(body.refs > 0, "{id:?} stored without a reference");
            assert_eq!(counted.get(id), Some(&body.refs), "{id:?} reference count");
        }
        for id in counted.keys() {
            assert!(
                self.messages.contains_key(id),
                "{id:?} referenced, not stored"
            );
        }
    }
}

#[test]
fn a_body_for_three_sessions_is_stored_once() {
    let s = storage();
    let mut ops = vec![put_message(1)];
    for client in ["a", "b", "c"] {
        ops.push(put_session(client));
        ops.push(enqueue(client, 1));
    }
    apply(&s, ops);
    assert_eq!(s.message_count(), 1);
    let loaded: Vec<StoredSession> = ["a", "b", "c"].iter().map(|c| load(&s, c)).collect();
    for session in &loaded {
        assert_eq!(session.queue.len(), 1);
        assert!(
            Arc::ptr_eq(&session.queue[0].message, &loaded[0].queue[0].message),
            "one allocation shared by every queue"
        );
    }
}

#[test]
fn the_last_reference_releases_the_body() {
    let s = storage();
    apply(
        &s,
        vec![
            put_message(1),
            put_session("a"),
            put_session("b"),
            put_session("c"),
            enqueue("a", 1),
            enqueue("b", 1),
            enqueue("c", 1),
        ],
    );
    // Dropped from one queue, sent and completed from another...
    apply(&s, vec![dequeue("a", 1)]);
    assert_eq!(s.message_count(), 1);
    apply(&s, vec![set_inflight("b", 1, 1, OutboundPhase::Published)]);
    assert_eq!(s.message_count(), 1);
    apply(&s, vec![complete("b", 1)]);
    assert_eq!(s.message_count(), 1, "c still holds it");
    // ...and the last holder deleted.
    apply(&s, vec![delete_session("c")]);
    assert_eq!(s.message_count(), 0);
}

#[test]
fn deleting_a_session_releases_queue_and_window() {
    let s = storage();
    apply(
        &s,
        vec![
            put_session("a"),
            put_message(1),
            put_message(2),
            enqueue("a", 1),
            enqueue("a", 2),
            set_inflight("a", 9, 1, OutboundPhase::Released),
        ],
    );
    assert_eq!(s.message_count(), 2);
    apply(&s, vec![delete_session("a")]);
    assert_eq!(s.message_count(), 0);
    assert_eq!(s.session_count(), 0);
}

#[test]
fn a_body_nobody_references_is_dropped_at_the_end_of_its_batch() {
    let s = storage();
    apply(&s, vec![put_message(1)]);
    assert_eq!(s.message_count(), 0, "stored but never referenced");

    // Referenced by an unknown session: the op is ignored, the body dropped.
    apply(&s, vec![put_message(2), enqueue("ghost", 2)]);
    assert_eq!(s.message_count(), 0);

    // Enqueue then Dequeue in one batch.
    apply(
        &s,
        vec![
            put_session("a"),
            put_message(3),
            enqueue("a", 3),
            dequeue("a", 3),
        ],
    );
    assert_eq!(s.message_count(), 0);
    assert!(load(&s, "a").queue.is_empty());
}

#[test]
fn a_body_released_and_referenced_again_in_one_batch_survives() {
    let s = storage();
    apply(&s, vec![put_session("a"), put_message(1), enqueue("a", 1)]);
    // Dropped and queued again within one batch (back in id order).
    apply(
        &s,
        vec![
            put_message(2),
            enqueue("a", 2),
            dequeue("a", 1),
            enqueue("a", 1),
        ],
    );
    assert_eq!(s.message_count(), 2);
    let queue: Vec<MessageId> = load(&s, "a").queue.iter().map(|d| d.id).collect();
    assert_eq!(queue, vec![id(1), id(2)]);
}

#[test]
fn enqueue_of_a_body_not_stored_is_ignored() {
    let s = storage();
    apply(&s, vec![put_session("a"), enqueue("a", 1)]);
    assert!(load(&s, "a").queue.is_empty());
    // A body stored later does not revive the ignored enqueue.
    apply(&s, vec![put_message(1)]);
    assert!(load(&s, "a").queue.is_empty());
    assert_eq!(s.message_count(), 0);
}

#[test]
fn set_inflight_of_a_message_not_queued_is_ignored() {
    let s = storage();
    apply(&s, vec![put_session("a"), put_message(1), enqueue("b", 1)]);
    apply(
        &s,
        vec![
            put_message(1),
            set_inflight("a", 1, 1, OutboundPhase::Published),
        ],
    );
    let session = load(&s, "a");
    assert!(session.inflight.is_empty());
    assert!(session.queue.is_empty());
    assert_eq!(s.message_count(), 0);
}

#[test]
fn set_inflight_naming_another_message_replaces_and_releases() {
    let s = storage();
    apply(
        &s,
        vec![
            put_session("a"),
            put_message(1),
            put_message(2),
            put_message(3),
            enqueue("a", 1),
            enqueue("a", 2),
            enqueue("a", 3),
            set_inflight("a", 1, 1, OutboundPhase::Published),
            set_inflight("a", 2, 2, OutboundPhase::Published),
        ],
    );
    // Packet id 1 now names message 3: message 1 is released, 3 goes last.
    apply(&s, vec![set_inflight("a", 1, 3, OutboundPhase::Published)]);
    let session = load(&s, "a");
    let window: Vec<(u16, MessageId)> = session
        .inflight
        .iter()
        .map(|m| (m.packet_id.get(), m.delivery.id))
        .collect();
    assert_eq!(window, vec![(2, id(2)), (1, id(3))]);
    assert!(session.queue.is_empty());
    assert_eq!(s.message_count(), 2);
    // Naming a message that is not queued leaves the window alone.
    apply(&s, vec![set_inflight("a", 2, 7, OutboundPhase::Released)]);
    assert_eq!(load(&s, "a").inflight, session.inflight);
}

#[test]
fn enqueue_of_a_message_in_flight_is_a_no_op() {
    let s = storage();
    let batch = vec![
        put_session("a"),
        put_message(1),
        enqueue("a", 1),
        set_inflight("a", 1, 1, OutboundPhase::Published),
    ];
    apply(&s, batch.clone());
    apply(&s, batch);
    let session = load(&s, "a");
    assert_eq!(session.inflight.len(), 1);
    assert!(
        session.queue.is_empty(),
        "not queued again behind its window"
    );
}

#[test]
fn concurrent_batches_keep_the_counts() {
    let s = storage();
    apply(&s, vec![put_session("shared")]);
    std::thread::scope(|scope| {
        for thread in 0..4_u64 {
            let s = &s;
            scope.spawn(move || {
                for n in 0..50 {
                    let m = thread * 1_000 + n;
                    let own = format!("own-{thread}");
                    apply(
                        s,
                        vec![
                            put_session(&own),
                            put_message(m),
                            enqueue("shared", m),
                            enqueue(&own, m),
                        ],
                    );
                    apply(s, vec![dequeue("shared", m)]);
                }
            });
        }
    });
    assert_eq!(s.message_count(), 200);
    assert!(load(&s, "shared").queue.is_empty());
    let deletes = (0..4)
        .map(|t| delete_session(&format!("own-{t}")))
        .collect();
    apply(&s, deletes);
    assert_eq!(s.message_count(), 0);
}

/// Random op sequences keep the reference counts exact and leak nothing.
#[test]
fn random_batches_keep_the_invariants() {
    // A small deterministic generator (no dependency for a test).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, bound: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % bound
        }
    }
    let clients = ["a", "b", "c"];
    for seed in 0..200 {
        let mut rng = Lcg(seed);
        let s = storage();
        for _ in 0..30 {
            let len = rng.next(8) + 1;
            let mut batch = Vec::new();
            for _ in 0..len {
                let client = clients[rng.next(3) as usize];
                let n = rng.next(6);
                let packet_id = rng.next(4) as u16 + 1;
                let phase = if rng.next(2) == 0 {
                    OutboundPhase::Published
                } else {
                    OutboundPhase::Released
                };
                batch.push(match rng.next(9) {
                    0 => put_session(client),
                    1 if rng.next(3) == 0 => delete_session(client),
                    1 | 2 => put_message(n),
                    3 | 4 => enqueue(client, n),
                    5 => dequeue(client, n),
                    6 | 7 => set_inflight(client, packet_id, n, phase),
                    _ => complete(client, packet_id),
                });
            }
            apply(&s, batch);
            for client in clients {
                let loaded = block_on(s.load_session(client));
                assert!(loaded.is_ok(), "seed {seed}: {loaded:?}");
            }
        }
        let deletes = clients.iter().map(|c| delete_session(c)).collect();
        apply(&s, deletes);
        assert_eq!(s.message_count(), 0, "seed {seed}: leaked bodies");
    }
}
