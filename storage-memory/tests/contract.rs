//! The storage contract ([`easy_mqtt_core::storage_contract`]) on the
//! in-memory backend: each check on a fresh storage, then all of them on one.

use easy_mqtt_core::storage::Storage;
use easy_mqtt_core::storage_contract as contract;
use easy_mqtt_storage_memory::MemoryStorage;
use futures_lite::future::block_on;

#[test]
fn session_lifecycle() {
    block_on(contract::session_lifecycle(&MemoryStorage::new()));
}

#[test]
fn subscriptions_in_filter_order() {
    block_on(contract::subscriptions_in_filter_order(
        &MemoryStorage::new(),
    ));
}

#[test]
fn queue_order_and_shared_bodies() {
    block_on(contract::queue_order_and_shared_bodies(
        &MemoryStorage::new(),
    ));
}

#[test]
fn inflight_window() {
    block_on(contract::inflight_window(&MemoryStorage::new()));
}

#[test]
fn inbound_qos2() {
    block_on(contract::inbound_qos2(&MemoryStorage::new()));
}

#[test]
fn message_times() {
    block_on(contract::message_times(&MemoryStorage::new()));
}

#[test]
fn retained() {
    block_on(contract::retained(&MemoryStorage::new()));
}

#[test]
fn idempotence() {
    block_on(contract::idempotence(&MemoryStorage::new()));
}

#[test]
fn unknown_sessions_are_not_created() {
    block_on(contract::unknown_sessions_are_not_created(
        &MemoryStorage::new(),
    ));
}

#[test]
fn batch_applied_in_order() {
    block_on(contract::batch_applied_in_order(&MemoryStorage::new()));
}

/// Every check on one storage; each cleans up after itself, so the storage
/// ends empty, with no message body left behind.
#[test]
fn run_all_on_one_storage_leaves_it_empty() {
    let storage = MemoryStorage::new();
    block_on(contract::run_all(&storage));
    assert_eq!(storage.session_count(), 0, "sessions left behind");
    assert_eq!(storage.message_count(), 0, "message bodies leaked");
    let retained = block_on(storage.load_retained());
    assert!(
        matches!(retained.as_deref(), Ok([])),
        "retained left: {retained:?}"
    );
}

/// Every check after every check: the contract also holds on a storage that
/// others use (a shared Kvrocks), since each works on its own keys.
#[test]
fn run_all_twice_on_one_storage() {
    let storage = MemoryStorage::new();
    block_on(contract::run_all(&storage));
    block_on(contract::run_all(&storage));
    assert_eq!(storage.message_count(), 0, "message bodies leaked");
}

#[test]
fn identity() {
    let storage = MemoryStorage::new();
    assert_eq!(storage.name(), "memory");
    assert!(!storage.is_durable());
}

#[test]
fn queued_ids_listed() {
    block_on(contract::queued_ids_listed(&MemoryStorage::new()));
}
