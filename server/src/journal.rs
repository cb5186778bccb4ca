//! The node-wide journal writer: the storage batches of every connection
//! merged into few `Storage::apply` calls.
//!
//! Every connection of a durable node writes its own batches one at a time,
//! in order (see `driver/durable.rs`). A persistent subscriber's batches are
//! tiny (a `SetInflight` for a PUBLISH sent, a `CompleteInflight` for a
//! PUBACK), so written alone each costs the backend's round trips for one or
//! two ops; 20,000 subscribers of one topic made ~4 round trips per
//! delivery. A publisher's routing batch (one `Enqueue` per persistent
//! subscriber) written alone reads and writes every subscriber once per
//! message, and its deliveries reach each subscriber one message at a time.
//! Here all batches are queued node-wide and a task writes what is queued
//! as one batch (up to [`WriterLimits::max_merged_ops`] ops), a few batches
//! at a time: the round trips are shared, a session touched by several
//! routing batches is read and written once, and the busier the node, the
//! more each batch carries. Nothing waits for a batch to fill: a queue that
//! holds one submission is written at once.
//!
//! Why merging keeps every guarantee of a batch written alone:
//!
//! - **Order per session.** A connection submits its next batch only once
//!   the previous one is stored (its FIFO), so one merged batch holds at
//!   most one batch of each connection, in submission order, and two
//!   merged batches running at once never hold two of the same connection.
//!   A backend applies a batch's ops of one session in batch order.
//! - **Stored, then acknowledged.** A submission completes only when the
//!   whole merged batch holding it is stored; the driver acknowledges after
//!   that, as before.
//! - **Failures.** A merged batch that fails fails every submission in it
//!   with the same error, and each connection retries (or gives up on) its
//!   own batch under the usual policy; the ops are idempotent, so a replay
//!   of the part that was written is harmless. A [`StorageError::Corrupt`]
//!   can come from one session's data: the merged batch is then written
//!   again one submission at a time, so that the other connections' ops are
//!   not refused with it.
//! - **Fencing.** Each submission carries the cluster incarnation it was
//!   made under; a merged batch holds one incarnation only, and is checked
//!   against the node's (and its lease) when it is formed: a stale one is
//!   failed, never written.
//! - **Deadlines.** A submission may carry the instant after which it must
//!   not be written (a publish routed with the cluster's routes of that
//!   time: see `StorageBatch::write_by` in `driver/durable.rs`); one taken
//!   into a batch after it is failed, never written. So that a busy
//!   journal (seconds of routing batches queued) does not fail every
//!   publish to other nodes' subscribers, these do not queue behind the
//!   others: they skip the queue and its bound, and are merged among
//!   themselves into a batch written in a slot of their own, beside the
//!   `concurrency` others. Still bounded: a connection has one submission
//!   at a time. Skipping ahead changes no guarantee: merged batches
//!   already run concurrently, so submissions of different connections
//!   are never ordered by the queue (a connection's deliveries wait for
//!   its routing batch to be stored before they are sent).
//! - **Bounded.** The queue holds at most [`WriterLimits::max_queued_ops`]
//!   ops (besides the submissions with a deadline, one per connection at
//!   most); a submission that does not fit waits (its connection's FIFO with
//!   it, which stops the connection's reading once its backlog is full).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use easy_mqtt_core::storage::{BoxFuture, Op, Storage, StorageError};

use crate::sessions::lock;

/// Whether a submission's incarnation may be written now (see the module
/// documentation, "Fencing"); when it may, the node's clock now (against
/// which the submissions' deadlines are checked).
pub type Fence = Arc<dyn Fn(Option<u64>) -> Result<Instant, StorageError> + Send + Sync>;

/// The writer's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterLimits {
    /// Ops in one merged batch (submissions are never split: a larger one
    /// goes alone).
    pub max_merged_ops: usize,
    /// Ops queued and not yet taken into a batch; a submission waits for
    /// room beyond this (one alone is always let in).
    pub max_queued_ops: usize,
    /// Merged batches written at once (besides one of submissions with a
    /// deadline: see the module documentation).
    pub concurrency: usize,
}

impl Default for WriterLimits {
    fn default() -> WriterLimits {
        WriterLimits {
            // Routing batches are merged too: a session enqueued to by
            // several of them is read once and gets one `ZADD` (Kvrocks),
            // and its deliveries arrive together (one wake-up, one socket
            // write for several PUBLISH packets). With 19,500 persistent
            // subscribers a publication is 19,500 ops: 100,000 merged ~5
            // of them (89k deliveries/s on redis), 1,000,000 ~51 (316k/s).
            // A batch this big is hundreds of pipelines of 2,000 commands
            // and takes hundreds of MB while it runs, `concurrency` of
            // them at most; `mqtt.kvrocks.write-batch-ops` and
            // `write-queue-ops` trade it back.
            max_merged_ops: 1_000_000,
            max_queued_ops: 2_000_000,
            concurrency: 4,
        }
    }
}

/// The node's journal writer (see the module documentation).
pub struct JournalWriter {
    shared: Arc<Shared>,
    storage: Arc<dyn Storage>,
    started: AtomicBool,
}

struct Shared {
    limits: WriterLimits,
    state: Mutex<State>,
    /// Notified when queued ops were taken (room for waiting submitters).
    room: event_listener::Event,
    /// See [`WriterStats`].
    batches: AtomicU64,
    merged: AtomicU64,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Submission>,
    /// Submissions with a deadline (see "Deadlines"): not counted in
    /// `queued_ops`.
    urgent: VecDeque<Submission>,
    queued_ops: usize,
    task: Option<Waker>,
    /// The writer is gone (its node was dropped): nothing more is written.
    closed: bool,
}

/// A connection's batch, in parts (see `Submission::parts`).
type Parts = Vec<Arc<Vec<Op>>>;

struct Submission {
    /// Shared with the connection that wrote it, which keeps it to write
    /// it again after a failure: merged, it is not copied. In parts (a
    /// connection's batch grows in chunks).
    parts: Parts,
    /// Ops in `parts`.
    ops: usize,
    incarnation: Option<u64>,
    write_by: Option<Instant>,
    done: Arc<Done>,
}

type WriteResult = Result<(), StorageError>;

/// Where a submission's result is left for its writer.
#[derive(Default)]
struct Done {
    slot: Mutex<(Option<WriteResult>, Option<Waker>)>,
}

impl Done {
    fn complete(&self, result: Result<(), StorageError>) {
        let waker = {
            let mut slot = lock(&self.slot);
            slot.0 = Some(result);
            slot.1.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn poll(&self, cx: &mut Context<'_>) -> Poll<Result<(), StorageError>> {
        let mut slot = lock(&self.slot);
        if let Some(result) = slot.0.take() {
            return Poll::Ready(result);
        }
        match &slot.1 {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => slot.1 = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

/// What the writer's task has counted so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriterStats {
    /// `Storage::apply` calls made (merged batches, and the submissions of
    /// a merged batch written again one at a time).
    pub batches: u64,
    /// Submissions written as part of a batch of several.
    pub merged: u64,
}

impl JournalWriter {
    pub fn new(storage: Arc<dyn Storage>, limits: WriterLimits) -> JournalWriter {
        JournalWriter {
            shared: Arc::new(Shared {
                limits: WriterLimits {
                    max_merged_ops: limits.max_merged_ops.max(1),
                    max_queued_ops: limits.max_queued_ops.max(1),
                    concurrency: limits.concurrency.max(1),
                },
                state: Mutex::new(State::default()),
                room: event_listener::Event::new(),
                batches: AtomicU64::new(0),
                merged: AtomicU64::new(0),
            }),
            storage,
            started: AtomicBool::new(false),
        }
    }

    /// Writes `parts` (one batch, in order, made under `incarnation`) in
    /// the next merged batch formed by `write_by` (if given): ready once
    /// that batch is stored, or with its error. The first call starts the writer's task with
    /// `start`, `fence` deciding whether an incarnation may be written.
    pub fn write(
        &self,
        parts: Vec<Arc<Vec<Op>>>,
        incarnation: Option<u64>,
        write_by: Option<Instant>,
        start: impl FnOnce(BoxFuture<'static, ()>),
        fence: impl FnOnce() -> Fence,
    ) -> BoxFuture<'static, Result<(), StorageError>> {
        if !self.started.swap(true, Ordering::AcqRel) {
            start(Box::pin(run(
                self.shared.clone(),
                self.storage.clone(),
                fence(),
            )));
        }
        let shared = self.shared.clone();
        Box::pin(async move {
            let done = Arc::new(Done::default());
            let size = parts.iter().map(|part| part.len()).sum();
            let mut submission = Some(Submission {
                parts,
                ops: size,
                incarnation,
                write_by,
                done: done.clone(),
            });
            while let Some(waiting) = submission.take() {
                let listener = {
                    let mut state = lock(&shared.state);
                    if state.closed {
                        return Err(stopped());
                    }
                    if waiting.write_by.is_some() {
                        state.urgent.push_back(waiting);
                        if let Some(task) = &state.task {
                            task.wake_by_ref();
                        }
                        break;
                    }
                    if state.queued_ops == 0
                        || state.queued_ops + size <= shared.limits.max_queued_ops
                    {
                        state.queued_ops += size;
                        state.queue.push_back(waiting);
                        if let Some(task) = &state.task {
                            task.wake_by_ref();
                        }
                        break;
                    }
                    submission = Some(waiting);
                    // Listening under the lock: the task frees room under
                    // it too, so its notice cannot fall in between.
                    shared.room.listen()
                };
                listener.await;
            }
            futures_lite::future::poll_fn(|cx| done.poll(cx)).await
        })
    }

    /// Ops queued and not yet taken into a batch.
    pub fn queued_ops(&self) -> usize {
        lock(&self.shared.state).queued_ops
    }

    pub fn stats(&self) -> WriterStats {
        WriterStats {
            batches: self.shared.batches.load(Ordering::Relaxed),
            merged: self.shared.merged.load(Ordering::Relaxed),
        }
    }
}

impl Drop for JournalWriter {
    /// The node is gone: the task fails what is queued and ends.
    fn drop(&mut self) {
        let task = {
            let mut state = lock(&self.shared.state);
            state.closed = true;
            state.task.take()
        };
        if let Some(task) = task {
            task.wake();
        }
        self.shared.room.notify(usize::MAX);
    }
}

fn stopped() -> StorageError {
    StorageError::Unavailable("journal writer stopped".into())
}

/// A write refused past its deadline (see "Deadlines" above).
pub(crate) fn too_late() -> StorageError {
    StorageError::Unavailable("not written in time: routed with routes since outdated".into())
}

/// A batch being written and the submissions it holds (their ops, to
/// write them again one at a time).
struct Running {
    future: BoxFuture<'static, Result<(), StorageError>>,
    contributors: Vec<(Parts, Arc<Done>)>,
    /// Formed from the submissions with a deadline, in their own slot.
    urgent: bool,
}

fn start_apply(
    storage: &Arc<dyn Storage>,
    parts: Vec<Arc<Vec<Op>>>,
) -> BoxFuture<'static, Result<(), StorageError>> {
    let storage = storage.clone();
    Box::pin(async move { storage.apply_parts(parts).await })
}

/// The writer's task: forms merged batches from the queue and writes up to
/// `concurrency` of them at once.
async fn run(shared: Arc<Shared>, storage: Arc<dyn Storage>, fence: Fence) {
    let mut running: Vec<Running> = Vec::new();
    futures_lite::future::poll_fn(|cx| {
        loop {
            let mut progress = false;
            let mut at = 0;
            while at < running.len() {
                let Poll::Ready(result) = running[at].future.as_mut().poll(cx) else {
                    at += 1;
                    continue;
                };
                progress = true;
                let done = running.swap_remove(at);
                finish(done, result, &storage, &shared, &mut running);
            }
            let mut state = lock(&shared.state);
            match &state.task {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                _ => state.task = Some(cx.waker().clone()),
            }
            if state.closed {
                let mut queued = std::mem::take(&mut state.queue);
                queued.extend(std::mem::take(&mut state.urgent));
                state.queued_ops = 0;
                drop(state);
                for submission in queued {
                    submission.done.complete(Err(stopped()));
                }
                // What is being written finishes (its connections may
                // still be waiting for it).
                if running.is_empty() {
                    return Poll::Ready(());
                }
                if !progress {
                    return Poll::Pending;
                }
                continue;
            }
            let mut batches = Vec::new();
            if !running.iter().any(|r| r.urgent)
                && let Some((batch, _)) =
                    take_batch(&mut state.urgent, shared.limits.max_merged_ops)
            {
                batches.push((batch, true));
            }
            let mut slots = running.iter().filter(|r| !r.urgent).count();
            while slots < shared.limits.concurrency {
                let Some((batch, ops)) = take_batch(&mut state.queue, shared.limits.max_merged_ops)
                else {
                    break;
                };
                state.queued_ops = state.queued_ops.saturating_sub(ops);
                batches.push((batch, false));
                slots += 1;
            }
            // The fence is asked without the lock: it may drop the last
            // handle on the node, whose writer then takes the lock.
            drop(state);
            if !batches.is_empty() {
                progress = true;
                shared.room.notify(usize::MAX);
            }
            for (mut batch, urgent) in batches {
                let incarnation = batch.first().and_then(|s| s.incarnation);
                let now = match fence(incarnation) {
                    Ok(now) => now,
                    Err(error) => {
                        for submission in batch {
                            submission.done.complete(Err(error.clone()));
                        }
                        continue;
                    }
                };
                if batch.iter().any(|s| s.write_by.is_some_and(|by| now > by)) {
                    batch.retain(|s| match s.write_by {
                        Some(by) if now > by => {
                            s.done.complete(Err(too_late()));
                            false
                        }
                        _ => true,
                    });
                    if batch.is_empty() {
                        continue;
                    }
                }
                running.push(merge(&storage, batch, urgent, &shared));
            }
            if !progress {
                return Poll::Pending;
            }
        }
    })
    .await;
}

/// The first submissions of `queue` of one incarnation, up to `max_ops`
/// ops (at least one submission), with their count of ops.
fn take_batch(
    queue: &mut VecDeque<Submission>,
    max_ops: usize,
) -> Option<(Vec<Submission>, usize)> {
    let first = queue.pop_front()?;
    let incarnation = first.incarnation;
    let mut ops = first.ops;
    let mut batch = vec![first];
    while let Some(next) = queue.front() {
        if next.incarnation != incarnation || ops + next.ops > max_ops {
            break;
        }
        ops += next.ops;
        if let Some(next) = queue.pop_front() {
            batch.push(next);
        }
    }
    Some((batch, ops))
}

fn merge(
    storage: &Arc<dyn Storage>,
    batch: Vec<Submission>,
    urgent: bool,
    shared: &Shared,
) -> Running {
    shared.batches.fetch_add(1, Ordering::Relaxed);
    if batch.len() > 1 {
        (shared.merged).fetch_add(batch.len() as u64, Ordering::Relaxed);
    }
    let parts = batch.iter().flat_map(|s| s.parts.iter().cloned()).collect();
    Running {
        future: start_apply(storage, parts),
        contributors: batch.into_iter().map(|s| (s.parts, s.done)).collect(),
        urgent,
    }
}

/// A batch is done: its submissions learn the result, unless a merged one
/// failed with an error that may be one session's, when each is written
/// again alone.
fn finish(
    done: Running,
    result: Result<(), StorageError>,
    storage: &Arc<dyn Storage>,
    shared: &Shared,
    running: &mut Vec<Running>,
) {
    if let Err(StorageError::Corrupt { .. }) = &result
        && done.contributors.len() > 1
    {
        tracing::debug!(
            submissions = done.contributors.len(),
            "merged journal batch refused as corrupt; writing its parts alone"
        );
        for (parts, contributor) in done.contributors {
            shared.batches.fetch_add(1, Ordering::Relaxed);
            running.push(Running {
                future: start_apply(storage, parts.clone()),
                contributors: vec![(parts, contributor)],
                urgent: done.urgent,
            });
        }
        return;
    }
    for (_, contributor) in done.contributors {
        contributor.complete(result.clone());
    }
}
