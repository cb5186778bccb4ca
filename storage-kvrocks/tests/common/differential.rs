//! Random batches applied to the Kvrocks backend and to the reference
//! in-memory backend; after every batch both must load the same.

use std::sync::Arc;

use bytes::Bytes;
use easy_mqtt_core::packet::{ByteStr, PacketId, QoS};
use easy_mqtt_core::session::{Message, OutboundPhase};
use easy_mqtt_core::storage::{
    MessageId, Op, SessionRecord, SessionSubscriptions, Storage, StoredSession,
};
use easy_mqtt_storage_memory::MemoryStorage;

/// xorshift64*: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[usize::try_from(self.below(items.len() as u64)).unwrap()]
    }
}

const CLIENTS: [&str; 4] = ["d-a", "d-b", "d-c", "d-{odd}"];
const FILTERS: [&str; 3] = ["x/#", "x/+", "y"];
const TOPICS: [&str; 3] = ["r/1", "r/2", "r/3"];

fn qos(rng: &mut Rng) -> QoS {
    *rng.pick(&[QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce])
}

fn body(id: u64, variant: u64) -> Arc<Message> {
    let mut payload = vec![0u8, 0xff, b'{'];
    payload.extend_from_slice(&id.to_be_bytes());
    payload.push(u8::try_from(variant % 256).unwrap());
    Arc::new(Message {
        topic: ByteStr::from(format!("x/{id}")),
        payload: Bytes::from(payload),
        qos: QoS::ExactlyOnce,
        retain: id.is_multiple_of(2),
    })
}

fn op(rng: &mut Rng, seed: u64) -> Op {
    let client_id = ByteStr::from(*rng.pick(&CLIENTS));
    let id = MessageId::new(u16::try_from(seed % 1000).unwrap(), 1 + rng.below(8));
    let packet_id = PacketId::new(u16::try_from(1 + rng.below(4)).unwrap()).unwrap();
    match rng.below(100) {
        0..=9 => Op::PutSession(SessionRecord {
            client_id,
            created_at_ms: rng.below(1000),
        }),
        10..=12 => Op::DeleteSession { client_id },
        13..=18 => Op::Subscribe {
            client_id,
            filter: ByteStr::from(*rng.pick(&FILTERS)),
            qos: qos(rng),
        },
        19..=21 => Op::Unsubscribe {
            client_id,
            filter: ByteStr::from(*rng.pick(&FILTERS)),
        },
        22..=35 => Op::PutMessage {
            id,
            // Mostly the same body for an id; sometimes another (a no-op).
            message: body(id.0, if rng.below(5) == 0 { rng.next() } else { 0 }),
            // The time of the first one stays.
            at_ms: rng.below(3),
        },
        36..=55 => Op::Enqueue {
            client_id,
            id,
            qos: qos(rng),
            retain: rng.below(2) == 0,
        },
        56..=61 => Op::Dequeue { client_id, id },
        62..=75 => Op::SetInflight {
            client_id,
            packet_id,
            id,
            phase: *rng.pick(&[OutboundPhase::Published, OutboundPhase::Released]),
            qos: qos(rng),
            retain: rng.below(2) == 0,
        },
        76..=84 => Op::CompleteInflight {
            client_id,
            packet_id,
        },
        85..=89 => Op::AddInboundQos2 {
            client_id,
            packet_id,
        },
        90..=92 => Op::RemoveInboundQos2 {
            client_id,
            packet_id,
        },
        _ => {
            let topic = *rng.pick(&TOPICS);
            Op::SetRetained {
                topic: ByteStr::from(topic),
                message: (rng.below(3) != 0).then(|| {
                    Arc::new(Message {
                        topic: ByteStr::from(topic),
                        payload: Bytes::from(rng.next().to_be_bytes().to_vec()),
                        qos: qos(rng),
                        retain: true,
                    })
                }),
            }
        }
    }
}

/// 1 to 14 random ops, half the sends acknowledged at once (the journal
/// writer merges a send with its acknowledgement when storage lags).
fn random_batch(rng: &mut Rng, seed: u64) -> Vec<Op> {
    let len = 1 + rng.below(14);
    let mut batch = Vec::new();
    for _ in 0..len {
        let op = op(rng, seed);
        let acknowledged = match &op {
            Op::SetInflight {
                client_id,
                packet_id,
                ..
            } if rng.below(2) == 0 => Some(Op::CompleteInflight {
                client_id: client_id.clone(),
                packet_id: *packet_id,
            }),
            _ => None,
        };
        batch.push(op);
        batch.extend(acknowledged);
    }
    batch
}

type Snapshot = (
    Vec<Option<StoredSession>>,
    Vec<SessionSubscriptions>,
    Vec<Arc<Message>>,
);

async fn snapshot(storage: &dyn Storage) -> Snapshot {
    let mut sessions = Vec::new();
    for client in CLIENTS {
        let mut session = storage
            .load_session(client)
            .await
            .unwrap_or_else(|error| panic!("{} load_session: {error}", storage.name()));
        if let Some(session) = &mut session {
            session.inbound_qos2.sort_unstable();
        }
        sessions.push(session);
    }
    let mut subscriptions = storage.load_subscriptions().await.unwrap();
    subscriptions.sort_by(|a, b| a.record.client_id.cmp(&b.record.client_id));
    let mut retained = storage.load_retained().await.unwrap();
    retained.sort_by(|a, b| a.topic.cmp(&b.topic));
    (sessions, subscriptions, retained)
}

/// Runs `batches` random batches from `seed` on `storage` (empty at first,
/// with a key prefix of its own) and on a fresh reference, comparing both
/// after each batch; some batches are applied twice (to both). Leaves
/// `storage` empty.
pub async fn run(storage: &dyn Storage, seed: u64, batches: usize) {
    let reference = MemoryStorage::new();
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    for batch_index in 0..batches {
        let batch = random_batch(&mut rng, seed);
        let times = if rng.below(4) == 0 { 2 } else { 1 };
        // A third of them as parts (the journal writer's merged batches):
        // the backend must read them as the one batch they make.
        let parts = if rng.below(3) == 0 {
            split(&mut rng, &batch)
        } else {
            Vec::new()
        };
        for _ in 0..times {
            reference.apply(batch.clone()).await.unwrap();
            let result = if parts.is_empty() {
                storage.apply(batch.clone()).await
            } else {
                storage.apply_parts(parts.clone()).await
            };
            if let Err(error) = result {
                panic!(
                    "seed {seed} batch {batch_index}: apply ({} parts): {error}; {batch:#?}",
                    parts.len()
                );
            }
        }
        let expected = snapshot(&reference).await;
        let actual = snapshot(storage).await;
        assert_eq!(
            actual, expected,
            "seed {seed} batch {batch_index} (applied {times}x): {batch:#?}"
        );
    }
    let mut cleanup: Vec<Op> = CLIENTS
        .iter()
        .map(|client| Op::DeleteSession {
            client_id: ByteStr::from(*client),
        })
        .collect();
    cleanup.extend(TOPICS.iter().map(|topic| Op::SetRetained {
        topic: ByteStr::from(*topic),
        message: None,
    }));
    storage.apply(cleanup.clone()).await.unwrap();
    reference.apply(cleanup).await.unwrap();
    assert_eq!(reference.message_count(), 0);
}

/// `batch` cut at random places into shared parts.
fn split(rng: &mut Rng, batch: &[Op]) -> Vec<std::sync::Arc<Vec<Op>>> {
    let mut parts = Vec::new();
    let mut rest = batch;
    while !rest.is_empty() {
        let len = 1 + usize::try_from(rng.below(rest.len() as u64)).unwrap();
        let (part, after) = rest.split_at(len);
        parts.push(std::sync::Arc::new(part.to_vec()));
        rest = after;
    }
    parts
}

/// Every message id some session holds (queued or in flight).
async fn held_ids(storage: &dyn Storage) -> std::collections::HashSet<MessageId> {
    let (sessions, _, _) = snapshot(storage).await;
    sessions
        .iter()
        .flatten()
        .flat_map(|session| {
            session
                .queue
                .iter()
                .map(|delivery| delivery.id)
                .chain(session.inflight.iter().map(|inflight| inflight.delivery.id))
        })
        .collect()
}

/// Whether the batch enqueues only bodies it stored before or that another
/// entry holds ("a body is enqueued in the batch that stores it or while
/// another entry still holds it"). The reference ignores an `Enqueue` of a
/// body that is not stored. Here a body can outlive its last holder when a
/// batch is cut between dropping the reference and deleting the body (a
/// leak, documented): an `Enqueue` of it without `PutMessage` then takes
/// effect. Likewise an `Enqueue` before the `PutMessage` of its body: a
/// first attempt cut after storing the body makes the replay find it.
fn stores_before_enqueuing(batch: &[Op], held: &std::collections::HashSet<MessageId>) -> bool {
    let mut stored = std::collections::HashSet::new();
    for op in batch {
        match op {
            Op::PutMessage { id, .. } => {
                stored.insert(*id);
            }
            Op::Enqueue { id, .. } if !stored.contains(id) && !held.contains(id) => return false,
            _ => {}
        }
    }
    true
}

/// Whether `batch`, after `history`, leaves the reference in the same state
/// applied once or twice.
async fn idempotent(history: &[Vec<Op>], batch: &[Op]) -> bool {
    let once = MemoryStorage::new();
    let twice = MemoryStorage::new();
    for past in history {
        once.apply(past.clone()).await.unwrap();
        twice.apply(past.clone()).await.unwrap();
    }
    once.apply(batch.to_vec()).await.unwrap();
    twice.apply(batch.to_vec()).await.unwrap();
    twice.apply(batch.to_vec()).await.unwrap();
    snapshot(&once).await == snapshot(&twice).await
}

/// Like [`run`], but each batch goes through `proxy`, which cuts the
/// connection after a random number of commands: either once (the backend
/// sends the phase again on a new connection) or for good (the batch fails
/// part-way and is never finished by that attempt). After a failed attempt
/// every session must still load (no reference to a missing body), and
/// applying the batch again through `direct` must give what the reference
/// gives for one application.
pub async fn run_with_cuts(
    proxied: &dyn Storage,
    direct: &dyn Storage,
    proxy: &super::CutProxy,
    seed: u64,
    batches: usize,
) -> (usize, usize) {
    let reference = MemoryStorage::new();
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut failed = 0;
    let mut history: Vec<Vec<Op>> = Vec::new();
    for batch_index in 0..batches {
        // Only batches the contract allows to be applied twice: the broker
        // never completes a packet id and reuses it in one batch, never acts
        // on a session before putting it, never enqueues a body before
        // storing it, never sends what it has not queued... Rather than
        // list the rules, keep a batch only if the reference gives the same
        // state for it applied once and twice.
        let held = held_ids(&reference).await;
        let batch = loop {
            let mut batch = random_batch(&mut rng, seed);
            // One body and time per id, as the broker's ids are unique: a
            // body that a cut leaked (documented) keeps the body and time
            // it was first stored with, which a later `PutMessage` of the
            // id must then not contradict.
            for op in &mut batch {
                if let Op::PutMessage { id, message, at_ms } = op {
                    *message = body(id.0, 0);
                    *at_ms = 1;
                }
            }
            if stores_before_enqueuing(&batch, &held) && idempotent(&history, &batch).await {
                break batch;
            }
        };
        history.push(batch.clone());
        let cut_after = i64::try_from(rng.below(40)).unwrap();
        let dead = rng.below(2) == 0;
        proxy.arm(cut_after, dead);
        let result = proxied.apply(batch.clone()).await;
        proxy.disarm();
        if result.is_err() {
            failed += 1;
            // Whatever was left must load: never a dangling reference.
            let _ = snapshot(direct).await;
            if let Err(error) = direct.apply(batch.clone()).await {
                panic!("seed {seed} batch {batch_index}: replay: {error}");
            }
        }
        reference.apply(batch.clone()).await.unwrap();
        let expected = snapshot(&reference).await;
        let actual = snapshot(direct).await;
        assert_eq!(
            actual,
            expected,
            "seed {seed} batch {batch_index} (cut after {cut_after}, dead {dead}, \
             failed {}): {batch:#?}",
            result.is_err()
        );
    }
    let mut cleanup: Vec<Op> = CLIENTS
        .iter()
        .map(|client| Op::DeleteSession {
            client_id: ByteStr::from(*client),
        })
        .collect();
    cleanup.extend(TOPICS.iter().map(|topic| Op::SetRetained {
        topic: ByteStr::from(*topic),
        message: None,
    }));
    direct.apply(cleanup).await.unwrap();
    (failed, proxy.cuts())
}
