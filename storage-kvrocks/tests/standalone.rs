//! The storage contract ([`easy_mqtt_core::storage_contract`]) on a
//! standalone server: each check on its own key prefix, then all of them on
//! one; after each, nothing is left under the prefix (no leaked body, no
//! stray index entry).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{connect, count_keys, prefix, settings, standalone as server};
use easy_mqtt_core::storage_contract as contract;
use easy_mqtt_storage_kvrocks::KvrocksStorage;

fn storage(test: &str) -> KvrocksStorage {
    let storage = connect(settings(vec![server().node()], &prefix(test)));
    assert!(!storage.is_cluster());
    storage
}

fn assert_empty(test: &str) {
    let left = common::dump(&[server()], &prefix(test));
    assert!(left.is_empty(), "{test}: keys left behind: {left:#?}");
    // Only the layout version, which connecting wrote.
    assert_eq!(count_keys(&[server()], &format!("{}:*", prefix(test))), 1);
}

macro_rules! check {
    ($name:ident) => {
        #[test]
        fn $name() {
            let name = stringify!($name);
            let storage = storage(name);
            smol::block_on(contract::$name(&storage));
            assert_empty(name);
        }
    };
}

check!(session_lifecycle);
check!(subscriptions_in_filter_order);
check!(queue_order_and_shared_bodies);
check!(inflight_window);
check!(inbound_qos2);
check!(retained);
check!(idempotence);
check!(unknown_sessions_are_not_created);
check!(batch_applied_in_order);
check!(queued_ids_listed);
check!(message_times);

#[test]
fn run_all() {
    let storage = storage("run_all");
    smol::block_on(contract::run_all(&storage));
    assert_empty("run_all");
}

fn sleep(time: std::time::Duration) -> easy_mqtt_core::storage::BoxFuture<'static, ()> {
    Box::pin(async move {
        smol::Timer::after(time).await;
    })
}

/// The cluster contract, twice on one prefix; what stays behind is only
/// what must (fences of adopted incarnations, epochs and owners of client
/// ids).
#[test]
fn run_cluster() {
    use easy_mqtt_core::storage::Storage;
    let test = "run_cluster";
    let storage = storage(test);
    let cluster = storage.cluster().expect("kvrocks has a cluster");
    smol::block_on(contract::run_cluster(&storage, cluster, &sleep));
    smol::block_on(contract::run_cluster(&storage, cluster, &sleep));
    let left = common::dump(&[server()], &prefix(test));
    let (kept, stray): (Vec<_>, Vec<_>) = left.keys().partition(|key| {
        let key = String::from_utf8_lossy(key);
        key.contains("}:fence:")
            || (key.contains(":{c:") && (key.ends_with("}:e") || key.ends_with("}:o")))
    });
    assert!(stray.is_empty(), "{test}: keys left behind: {left:#?}");
    // Two fences (one per run), three clients' epoch and owner.
    assert_eq!(kept.len(), 8, "{test}: {left:#?}");
}

/// `read_inbox` with a wait blocks until an entry comes
/// (`common::check_read_inbox_blocks`).
#[test]
fn read_inbox_waits_for_an_entry() {
    let test = "read_inbox_waits";
    common::check_read_inbox_blocks(&storage(test), storage(test));
    assert_empty(test);
}
