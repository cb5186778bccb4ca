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
//!   it or while another entry still holds it. Loads give every delivery
//!   the `at_ms` its body was first stored with (0 when stored with 0).
//! - `Enqueue` inserts in id order (`MessageId::queue_order`: sequence, then
//!   node tag), whatever the enqueue order; it is a no-op when the session already holds the id
//!   in its queue or its window. `Dequeue` removes the id from the queue only.
//! - `SetInflight` moves a queued message to the end of the window (send
//!   order) with its queued QoS and RETAIN flag, or updates the phase of the
//!   packet id already in the window. `CompleteInflight` removes it.
//! - Inbound QoS 2 ids form a set (load order unspecified).
//! - Retained messages are set, replaced and cleared per topic; load order
//!   is unspecified.
//! - The order of sessions in `load_subscriptions` is unspecified; each
//!   lists its queued ids (not those in flight) in queue order.

mod batches;
mod cluster;
mod cluster_data;
mod messages;
mod sessions;
mod support;

use crate::storage::Storage;

pub use batches::{batch_applied_in_order, idempotence};
pub use cluster::{Sleep, forget_member_removes_everything, membership, ownership, run_cluster};
pub use cluster_data::{
    inbox_order_and_ack, logs_capped_newest_first, presence_set_and_clear, records_with_ttl, routes,
};
pub use messages::{inflight_window, message_times, queue_order_and_shared_bodies, retained};
pub use sessions::{
    inbound_qos2, queued_ids_listed, session_lifecycle, subscriptions_in_filter_order,
    unknown_sessions_are_not_created,
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
    queued_ids_listed(storage).await;
    message_times(storage).await;
}
