//! Where the mode keeps what every node of a cluster must see: records and
//! logs of the storage backend's cluster port ([`Cluster`]), written with
//! [`ClusterOp`]s through [`Storage::apply`].
//!
//! On a durable backend that is the shared Kvrocks, so tokens and client
//! status survive a restart and are the same on every node. On the
//! in-memory backend it is that backend's own records: one node, the same
//! code.
//!
//! | space | key | value | time to live |
//! |---|---|---|---|
//! | `aliyun-token` | the token | JSON [`Token`](super::tokens::Token) | expiry + 1 h |
//! | `aliyun-status` | client id | JSON [`StatusRecord`](super::events::StatusRecord) | none |
//! | `aliyun-status-log` (log) | client id | JSON [`StatusEvent`](super::events::StatusEvent), newest first | capped at [`STATUS_LOG_KEEP`] |

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use easy_mqtt_core::cluster::{Cluster, ClusterOp};
use easy_mqtt_core::storage::{Op, Storage, StorageError};

pub const TOKEN_SPACE: &str = "aliyun-token";
pub const STATUS_SPACE: &str = "aliyun-status";
pub const STATUS_LOG_SPACE: &str = "aliyun-status-log";
/// Status events kept per client.
pub const STATUS_LOG_KEEP: u32 = 100;

/// The records and logs of one storage backend.
#[derive(Clone)]
pub struct Shared {
    storage: Arc<dyn Storage>,
}

impl Shared {
    /// `storage` itself when it offers the cluster port, otherwise `None`.
    pub fn of(storage: Arc<dyn Storage>) -> Option<Shared> {
        storage.cluster().is_some().then_some(Shared { storage })
    }

    fn cluster(&self) -> Result<&dyn Cluster, StorageError> {
        self.storage.cluster().ok_or_else(|| {
            StorageError::Invalid(format!(
                "the {} storage backend has no records",
                self.storage.name()
            ))
        })
    }

    pub async fn apply(&self, ops: Vec<ClusterOp>) -> Result<(), StorageError> {
        self.cluster()?;
        self.storage
            .apply(ops.into_iter().map(Op::from).collect())
            .await
    }

    pub async fn put(
        &self,
        space: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<(), StorageError> {
        self.apply(vec![ClusterOp::PutRecord {
            space: space.into(),
            key: key.into(),
            value: Bytes::from(value),
            ttl,
        }])
        .await
    }

    pub async fn delete(&self, space: &str, key: &str) -> Result<(), StorageError> {
        self.apply(vec![ClusterOp::DeleteRecord {
            space: space.into(),
            key: key.into(),
        }])
        .await
    }

    pub async fn get(&self, space: &str, key: &str) -> Result<Option<Bytes>, StorageError> {
        self.cluster()?.get_record(space, key).await
    }

    pub async fn read_log(
        &self,
        space: &str,
        key: &str,
        max: usize,
    ) -> Result<Vec<Bytes>, StorageError> {
        self.cluster()?.read_log(space, key, max).await
    }
}

/// Decodes a JSON record, or says where it is corrupt.
pub fn decode<T: serde::de::DeserializeOwned>(
    space: &str,
    key: &str,
    bytes: &[u8],
) -> Result<T, StorageError> {
    serde_json::from_slice(bytes).map_err(|e| StorageError::Corrupt {
        key: format!("{space}/{key}"),
        reason: e.to_string(),
    })
}
