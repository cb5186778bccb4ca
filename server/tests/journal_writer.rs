//! The node-wide journal writer (`easy_mqtt_server::journal`): small
//! batches of many connections merged into one `Storage::apply`, in order,
//! failures reaching every contributor, a bounded queue, fencing.
//!
//! On the reference backend (observed: every batch it is given is recorded
//! before it is applied) and on a real `redis-server` (an outage, a corrupt
//! session).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../storage-kvrocks/tests/common/mod.rs"]
#[allow(unused)]
mod redis_common;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use easy_mqtt_core::ByteStr;
use easy_mqtt_core::QoS;
use easy_mqtt_core::session::Message;
use easy_mqtt_core::storage::{
    BoxFuture, Op, SessionRecord, SessionSubscriptions, Storage, StorageError, StoredSession,
};
use easy_mqtt_server::journal::{Fence, JournalWriter, WriterLimits};
use easy_mqtt_storage_memory::MemoryStorage;
use futures_lite::future;

/// The reference backend, recording each batch it is asked to apply.
#[derive(Default)]
struct Recorded {
    inner: MemoryStorage,
    batches: Mutex<Vec<Vec<Op>>>,
}

impl Recorded {
    fn batches(&self) -> Vec<Vec<Op>> {
        self.batches.lock().unwrap().clone()
    }
}

impl Storage for Recorded {
    fn name(&self) -> &'static str {
        "recorded"
    }
    fn is_durable(&self) -> bool {
        true
    }
    fn apply(&self, ops: Vec<Op>) -> BoxFuture<'_, Result<(), StorageError>> {
        self.batches.lock().unwrap().push(ops.clone());
        self.inner.apply(ops)
    }
    fn load_session<'a>(
        &'a self,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredSession>, StorageError>> {
        self.inner.load_session(client_id)
    }
    fn load_subscriptions(&self) -> BoxFuture<'_, Result<Vec<SessionSubscriptions>, StorageError>> {
        self.inner.load_subscriptions()
    }
    fn load_retained(&self) -> BoxFuture<'_, Result<Vec<Arc<Message>>, StorageError>> {
        self.inner.load_retained()
    }
}

fn put(client: &str) -> Op {
    Op::PutSession(SessionRecord {
        client_id: ByteStr::from(client),
        created_at_ms: 1,
    })
}

fn subscribe(client: &str, filter: &str) -> Op {
    Op::Subscribe {
        client_id: ByteStr::from(client),
        filter: ByteStr::from(filter),
        qos: QoS::AtLeastOnce,
    }
}

fn unsubscribe(client: &str, filter: &str) -> Op {
    Op::Unsubscribe {
        client_id: ByteStr::from(client),
        filter: ByteStr::from(filter),
    }
}

fn always() -> Fence {
    Arc::new(|_| Ok(std::time::Instant::now()))
}

type Write = BoxFuture<'static, Result<(), StorageError>>;
type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A writer whose task is kept here, not run, until the test runs it.
struct Harness {
    writer: JournalWriter,
    task: Arc<Mutex<Option<Task>>>,
}

impl Harness {
    fn new(storage: Arc<dyn Storage>, limits: WriterLimits) -> Harness {
        Harness {
            writer: JournalWriter::new(storage, limits),
            task: Arc::new(Mutex::new(None)),
        }
    }

    fn write(&self, ops: Vec<Op>, incarnation: Option<u64>, fence: Fence) -> Write {
        self.write_by(ops, incarnation, None, fence)
    }

    fn write_by(
        &self,
        ops: Vec<Op>,
        incarnation: Option<u64>,
        write_by: Option<std::time::Instant>,
        fence: Fence,
    ) -> Write {
        let task = self.task.clone();
        self.writer.write(
            vec![Arc::new(ops)],
            incarnation,
            write_by,
            move |t| *task.lock().unwrap() = Some(t),
            move || fence,
        )
    }

    /// Polls each write once: it enters the queue (or waits for room).
    fn submit(&self, writes: &mut [Write]) -> Vec<bool> {
        writes
            .iter_mut()
            .map(|w| future::block_on(future::poll_once(w.as_mut())).is_some())
            .collect()
    }

    /// Runs the task beside the writes until every write is done.
    fn finish(&self, writes: Vec<Write>) -> Vec<Result<(), StorageError>> {
        let task = self.task.lock().unwrap().take().expect("task started");
        let executor = smol::Executor::new();
        executor.spawn(task).detach();
        future::block_on(executor.run(async {
            let mut results = Vec::new();
            for write in writes {
                results.push(write.await);
            }
            results
        }))
    }
}

/// Submissions queued while the task was busy are written together, in
/// submission order, up to the bound of a merged batch; every one learns
/// its result; one session's ops keep their order across submissions.
#[test]
fn merges_in_order_up_to_the_bound() {
    let storage = Arc::new(Recorded::default());
    let harness = Harness::new(
        storage.clone(),
        WriterLimits {
            max_merged_ops: 10,
            max_queued_ops: 1_000,
            concurrency: 1,
        },
    );
    let mut submitted: Vec<Vec<Op>> = Vec::new();
    for i in 0..30 {
        let client = format!("c{i}");
        submitted.push(vec![put(&client), subscribe(&client, "a")]);
        // One session's ops in three submissions, between the others'.
        match i {
            5 => submitted.push(vec![put("same"), subscribe("same", "x")]),
            12 => submitted.push(vec![unsubscribe("same", "x")]),
            20 => submitted.push(vec![subscribe("same", "y")]),
            _ => {}
        }
    }
    let mut writes: Vec<Write> = submitted
        .iter()
        .map(|ops| harness.write(ops.clone(), None, always()))
        .collect();
    let pending = harness.submit(&mut writes);
    assert!(
        pending.iter().all(|done| !done),
        "nothing is written before the task runs"
    );
    assert_eq!(harness.writer.queued_ops(), 64);
    let results = harness.finish(writes);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(harness.writer.queued_ops(), 0);

    let batches = storage.batches();
    // 33 submissions of 1 or 2 ops, at most 10 ops a batch, never split.
    assert!(batches.iter().all(|b| b.len() <= 10), "{batches:?}");
    assert!(
        batches.len() >= 7 && batches.len() <= 9,
        "{} batches",
        batches.len()
    );
    let flat: Vec<Op> = batches.concat();
    let expected: Vec<Op> = submitted.concat();
    assert_eq!(flat, expected, "ops in submission order, each once");
    let stats = harness.writer.stats();
    assert_eq!(stats.batches, batches.len() as u64);
    assert_eq!(stats.merged, 33);

    let same = future::block_on(storage.load_session("same"))
        .unwrap()
        .expect("stored");
    assert_eq!(
        same.subscriptions,
        vec![(ByteStr::from("y"), QoS::AtLeastOnce)],
        "x subscribed, unsubscribed, then y: in that order"
    );
    let sessions = future::block_on(storage.load_subscriptions()).unwrap();
    assert_eq!(sessions.len(), 31);
}

/// The queue is bounded: a submission that does not fit waits (and is not
/// queued) until the task took queued ops, then goes through.
#[test]
fn queue_is_bounded() {
    let storage = Arc::new(Recorded::default());
    let harness = Harness::new(
        storage.clone(),
        WriterLimits {
            max_merged_ops: 4,
            max_queued_ops: 6,
            concurrency: 1,
        },
    );
    let mut writes: Vec<Write> = (0..5)
        .map(|i| {
            let client = format!("c{i}");
            harness.write(vec![put(&client), subscribe(&client, "t")], None, always())
        })
        .collect();
    harness.submit(&mut writes);
    assert_eq!(harness.writer.queued_ops(), 6, "three of five fit");
    // Polled again: still no room.
    harness.submit(&mut writes);
    assert_eq!(harness.writer.queued_ops(), 6);
    // A submission larger than the bound is let in alone only.
    let mut big = vec![harness.write(
        (0..8).map(|i| subscribe("c0", &format!("b{i}"))).collect(),
        None,
        always(),
    )];
    harness.submit(&mut big);
    assert_eq!(harness.writer.queued_ops(), 6);
    writes.extend(big);
    let results = harness.finish(writes);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(harness.writer.queued_ops(), 0);
    let batches = storage.batches();
    assert_eq!(batches.concat().len(), 18);
    assert!(batches.iter().any(|b| b.len() == 8), "the big one alone");
}

/// A merged batch holds one incarnation; a stale one is failed by the
/// fence and never written, the current one is.
#[test]
fn stale_incarnation_is_never_written() {
    let storage = Arc::new(Recorded::default());
    let harness = Harness::new(storage.clone(), WriterLimits::default());
    let fence: Fence = Arc::new(|incarnation| match incarnation {
        Some(2) => Ok(std::time::Instant::now()),
        _ => Err(StorageError::Unavailable("stale incarnation".into())),
    });
    let mut writes: Vec<Write> = Vec::new();
    for i in 0..6 {
        let client = format!("c{i}");
        let incarnation = if i % 3 == 0 { Some(1) } else { Some(2) };
        writes.push(harness.write(vec![put(&client)], incarnation, fence.clone()));
    }
    harness.submit(&mut writes);
    let results = harness.finish(writes);
    for (i, result) in results.iter().enumerate() {
        if i % 3 == 0 {
            assert_eq!(
                result,
                &Err(StorageError::Unavailable("stale incarnation".into()))
            );
        } else {
            assert_eq!(result, &Ok(()));
        }
    }
    let written: Vec<Op> = storage.batches().concat();
    assert_eq!(written, vec![put("c1"), put("c2"), put("c4"), put("c5")]);
    for batch in storage.batches() {
        assert!(!batch.is_empty());
    }
    let sessions = future::block_on(storage.load_subscriptions()).unwrap();
    let mut ids: Vec<String> = sessions
        .iter()
        .map(|s| s.record.client_id.to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, ["c1", "c2", "c4", "c5"]);
}

/// A submission taken into a batch after its deadline (a publish routed
/// with routes that may be outdated by then) is failed and never written;
/// the others of the same merged batch are.
#[test]
fn a_submission_past_its_deadline_is_never_written() {
    let storage = Arc::new(Recorded::default());
    let harness = Harness::new(storage.clone(), WriterLimits::default());
    let start = std::time::Instant::now();
    let clock = Arc::new(Mutex::new(start));
    let fence: Fence = {
        let clock = clock.clone();
        Arc::new(move |_| Ok(*clock.lock().unwrap()))
    };
    let deadline = start + Duration::from_secs(4);
    let mut writes: Vec<Write> = (0..6)
        .map(|i| {
            let write_by = (i % 2 == 0).then_some(deadline);
            harness.write_by(vec![put(&format!("c{i}"))], None, write_by, fence.clone())
        })
        .collect();
    harness.submit(&mut writes);
    // The writer's task forms its batches after the deadline.
    *clock.lock().unwrap() = deadline + Duration::from_millis(1);
    let results = harness.finish(writes);
    for (i, result) in results.iter().enumerate() {
        if i % 2 == 0 {
            assert!(
                matches!(result, Err(StorageError::Unavailable(_))),
                "c{i}: {result:?}"
            );
        } else {
            assert_eq!(result, &Ok(()), "c{i}");
        }
    }
    let written: Vec<Op> = storage.batches().concat();
    assert_eq!(written, vec![put("c1"), put("c3"), put("c5")]);

    // Before its deadline, it is written.
    *clock.lock().unwrap() = start;
    let harness = Harness::new(storage.clone(), WriterLimits::default());
    let mut writes = vec![harness.write_by(vec![put("c6")], None, Some(deadline), fence)];
    harness.submit(&mut writes);
    assert_eq!(harness.finish(writes), vec![Ok(())]);
    assert!(storage.batches().concat().contains(&put("c6")));
}

fn kvrocks(server: &redis_common::Server, prefix: &str) -> Arc<dyn Storage> {
    let settings = easy_mqtt_storage_kvrocks::KvrocksSettings {
        timeout: Duration::from_millis(500),
        ..redis_common::settings(vec![server.node()], prefix)
    };
    Arc::new(redis_common::connect(settings))
}

/// Storage out: a merged batch fails, and every submission in it gets the
/// error; back: the same ops written again are stored.
#[test]
fn merged_failure_reaches_every_contributor() {
    let server = redis_common::Server::standalone();
    let storage = kvrocks(&server, "journal-outage");
    let harness = Harness::new(storage.clone(), WriterLimits::default());
    let submitted: Vec<Vec<Op>> = (0..20)
        .map(|i| {
            let client = format!("c{i}");
            vec![put(&client), subscribe(&client, "t")]
        })
        .collect();
    let mut writes: Vec<Write> = submitted
        .iter()
        .map(|ops| harness.write(ops.clone(), None, always()))
        .collect();
    harness.submit(&mut writes);
    server.freeze(true);
    let results = harness.finish(writes);
    server.freeze(false);
    assert_eq!(results.len(), 20);
    for result in &results {
        assert!(
            matches!(result, Err(StorageError::Unavailable(_))),
            "{result:?}"
        );
    }
    assert_eq!(harness.writer.stats().batches, 1, "one merged batch");
    assert_eq!(harness.writer.stats().merged, 20);

    // Each contributor retries its own batch: stored.
    let harness = Harness::new(storage.clone(), WriterLimits::default());
    let mut writes: Vec<Write> = submitted
        .iter()
        .map(|ops| harness.write(ops.clone(), None, always()))
        .collect();
    harness.submit(&mut writes);
    let results = harness.finish(writes);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let sessions = future::block_on(storage.load_subscriptions()).unwrap();
    assert_eq!(sessions.len(), 20);
}

/// One session's corrupt data fails that session's submission only: the
/// merged batch is written again one submission at a time.
#[test]
fn corrupt_session_fails_its_contributor_only() {
    let server = redis_common::Server::standalone();
    let prefix = "journal-corrupt";
    let storage = kvrocks(&server, prefix);
    // The window of "bad" is a string, not a hash.
    let mut connection = server.connection();
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}:{{c:bad}}:w"))
        .arg("not a hash")
        .query(&mut connection)
        .unwrap();
    let harness = Harness::new(storage.clone(), WriterLimits::default());
    let mut writes: Vec<Write> = Vec::new();
    for i in 0..4 {
        let client = format!("c{i}");
        writes.push(harness.write(vec![put(&client)], None, always()));
        if i == 1 {
            writes.push(harness.write(
                vec![Op::CompleteInflight {
                    client_id: ByteStr::from("bad"),
                    packet_id: std::num::NonZeroU16::new(7).unwrap(),
                }],
                None,
                always(),
            ));
        }
    }
    harness.submit(&mut writes);
    let results = harness.finish(writes);
    for (i, result) in results.iter().enumerate() {
        if i == 2 {
            assert!(
                matches!(result, Err(StorageError::Corrupt { .. })),
                "{result:?}"
            );
        } else {
            assert_eq!(result, &Ok(()));
        }
    }
    // One merged batch, then each of the five alone.
    assert_eq!(harness.writer.stats().batches, 6);
    let sessions = future::block_on(storage.load_subscriptions()).unwrap();
    assert_eq!(sessions.len(), 4);
}

/// A submission with a deadline (a publish to other nodes' subscribers)
/// does not wait behind a full queue: it is let in without room, not
/// counted in the queue's bound, and written in a batch of its own beside
/// the others, first here, where it would otherwise come last (the queue
/// holds three batches' worth, written one at a time).
#[test]
fn a_submission_with_a_deadline_skips_the_queue() {
    let storage = Arc::new(Recorded::default());
    let harness = Harness::new(
        storage.clone(),
        WriterLimits {
            max_merged_ops: 2,
            max_queued_ops: 6,
            concurrency: 1,
        },
    );
    let mut writes: Vec<Write> = (0..3)
        .map(|i| {
            let client = format!("c{i}");
            harness.write(vec![put(&client), subscribe(&client, "t")], None, always())
        })
        .collect();
    harness.submit(&mut writes);
    assert_eq!(harness.writer.queued_ops(), 6, "the queue is full");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut urgent = vec![
        harness.write_by(vec![put("u1")], None, Some(deadline), always()),
        harness.write_by(vec![put("u2")], None, Some(deadline), always()),
    ];
    harness.submit(&mut urgent);
    assert_eq!(harness.writer.queued_ops(), 6, "not counted in the bound");
    writes.extend(urgent);
    let results = harness.finish(writes);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let batches = storage.batches();
    assert_eq!(batches.len(), 4, "{batches:?}");
    assert_eq!(batches[0], vec![put("u1"), put("u2")], "merged, first");
    assert_eq!(batches.concat().len(), 8);
}
