//! The cluster contract ([`easy_mqtt_core::storage_contract::run_cluster`])
//! on the in-memory backend: on a manual clock (times to live pass when the
//! check sleeps, at once) and on the real one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use easy_mqtt_core::storage::{BoxFuture, Storage};
use easy_mqtt_core::storage_contract::{self as contract, Sleep};
use easy_mqtt_storage_memory::MemoryStorage;
use futures_lite::future::block_on;

/// A storage on a manual clock, and a sleep that advances it.
fn manual() -> (MemoryStorage, Box<Sleep>) {
    let nanos = Arc::new(AtomicU64::new(0));
    let clock = Arc::clone(&nanos);
    let storage = MemoryStorage::with_clock(Arc::new(move || {
        Duration::from_nanos(clock.load(Ordering::SeqCst))
    }));
    let sleep = move |time: Duration| -> BoxFuture<'static, ()> {
        let step = u64::try_from(time.as_nanos()).unwrap_or(u64::MAX);
        nanos.fetch_add(step, Ordering::SeqCst);
        Box::pin(std::future::ready(()))
    };
    (storage, Box::new(sleep))
}

fn real_sleep(time: Duration) -> BoxFuture<'static, ()> {
    std::thread::sleep(time);
    Box::pin(std::future::ready(()))
}

macro_rules! check {
    ($name:ident) => {
        #[test]
        fn $name() {
            let (storage, sleep) = manual();
            let Some(cluster) = storage.cluster() else {
                panic!("the memory backend has a cluster");
            };
            block_on(contract::$name(&storage, cluster, &*sleep));
        }
    };
}

check!(membership);
check!(ownership);
check!(inbox_order_and_ack);
check!(routes);
check!(presence_set_and_clear);
check!(records_with_ttl);
check!(logs_capped_newest_first);
check!(forget_member_removes_everything);

/// Every check twice on one storage (each cleans up after itself), on the
/// real clock.
#[test]
fn run_cluster_twice_on_the_real_clock() {
    let storage = MemoryStorage::new();
    let Some(cluster) = storage.cluster() else {
        panic!("the memory backend has a cluster");
    };
    block_on(contract::run_cluster(&storage, cluster, &real_sleep));
    block_on(contract::run_cluster(&storage, cluster, &real_sleep));
}

/// The manual clock really drives expiry: without a sleep nothing expires.
#[test]
fn heartbeats_expire_by_the_given_clock() {
    let (storage, sleep) = manual();
    let Some(cluster) = storage.cluster() else {
        panic!("the memory backend has a cluster");
    };
    block_on(async {
        let ttl = Duration::from_secs(3600);
        assert!(cluster.heartbeat("n", 1, ttl).await.is_ok());
        std::thread::sleep(Duration::from_millis(20));
        let members = cluster.members().await.unwrap_or_default();
        assert_eq!(members.first().and_then(|m| m.alive), Some(1));
        sleep(ttl).await;
        let members = cluster.members().await.unwrap_or_default();
        assert_eq!(
            members.first().map(|m| (m.alive, m.incarnation)),
            Some((None, 1))
        );
    });
}
