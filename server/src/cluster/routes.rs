//! The route table: which other nodes have subscribers for which filters.
//!
//! A node writes a route (`AddRoute`) before the SUBACK of the first local
//! subscription to a filter, in the same batch as a `RoutesChanged` notice
//! to every other live node; a node that reads the notice refreshes its
//! cache at once. So a publish on another node matches a new subscription
//! once that node read its inbox and then all routes: a few milliseconds
//! normally, and at worst `route_refresh` plus `heartbeat_interval` when a
//! notice is lost with a crash. Routes nothing local needs any more are
//! removed lazily (an extra route costs a useless inbox entry, never a lost
//! message).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use easy_mqtt_core::cluster::ClusterOp;
use easy_mqtt_core::packet::SubscribeReturnCode;
use easy_mqtt_core::storage::Op;
use easy_mqtt_core::topic::SubscriptionTrie;
use easy_mqtt_core::{ByteStr, QoS};

use crate::node::{Node, read, write};
use crate::runtime::Runtime;
use crate::sessions::lock;

/// Every other node's routes, as last read.
#[derive(Debug, Default)]
pub struct RouteCache {
    trie: SubscriptionTrie<ByteStr>,
    by_node: HashMap<ByteStr, Vec<ByteStr>>,
}

impl RouteCache {
    /// Rebuilds the cache from what storage holds, without `own` node.
    pub fn rebuild(routes: Vec<(ByteStr, Vec<ByteStr>)>, own: &ByteStr) -> RouteCache {
        let mut trie = SubscriptionTrie::new();
        let mut by_node = HashMap::new();
        for (node, filters) in routes {
            if node == *own {
                continue;
            }
            for filter in &filters {
                if easy_mqtt_core::topic::validate_topic_filter(filter).is_ok() {
                    trie.insert(filter, node.clone(), QoS::AtMostOnce);
                }
            }
            by_node.insert(node, filters);
        }
        RouteCache { trie, by_node }
    }

    /// The nodes with a route matching `topic`, each once.
    pub fn nodes_for(&self, topic: &str, out: &mut Vec<ByteStr>) {
        out.clear();
        if self.by_node.is_empty() {
            return;
        }
        let mut matched = Vec::new();
        self.trie.matches_dedup(topic, &mut matched);
        out.extend(matched.into_iter().map(|(node, _)| node));
    }

    /// The number of routes of `node` in the cache.
    pub fn route_count(&self, node: &str) -> usize {
        self.by_node.get(node).map_or(0, Vec::len)
    }

    /// The filters of `node` in the cache.
    pub fn filters_of(&self, node: &str) -> &[ByteStr] {
        self.by_node.get(node).map_or(&[], Vec::as_slice)
    }
}

/// The op that stores this node's route for `filter`.
fn add_route(cluster: &super::ClusterState, filter: ByteStr) -> Op {
    Op::from(ClusterOp::AddRoute {
        node: cluster.name(),
        filter,
    })
}

/// The op that removes this node's route for `filter`.
fn remove_route(cluster: &super::ClusterState, filter: ByteStr) -> Op {
    Op::from(ClusterOp::RemoveRoute {
        node: cluster.name(),
        filter,
    })
}

/// The routes this node wrote, and the filters no prune may remove yet.
#[derive(Debug, Default)]
pub(crate) struct WrittenRoutes {
    /// The filters this node stored as its routes.
    pub(crate) written: HashSet<ByteStr>,
    /// Filters of sessions loaded from storage whose routes were written
    /// before their subscriptions reach the trie (a route must be stored
    /// before the CONNACK, the trie insert happens at it): in neither
    /// place, a prune in between would remove a route about to be needed,
    /// and nothing would write it again. Counted: two loads may share one.
    pinned: HashMap<ByteStr, u32>,
}

/// Keeps filters from being pruned until the loaded session that needs them
/// has them in the trie; dropped then (or when the load is abandoned).
#[must_use = "the routes may be pruned as soon as the pin is dropped"]
#[derive(Debug, Default)]
pub struct RoutePin {
    book: Option<Arc<Mutex<WrittenRoutes>>>,
    filters: Vec<ByteStr>,
}

impl Drop for RoutePin {
    fn drop(&mut self) {
        let Some(book) = self.book.take() else {
            return;
        };
        let mut book = lock(&book);
        for filter in self.filters.drain(..) {
            if let Some(count) = book.pinned.get_mut(&filter) {
                *count -= 1;
                if *count == 0 {
                    book.pinned.remove(&filter);
                }
            }
        }
    }
}

impl<R: Runtime> Node<R> {
    /// Reads every node's routes into the cache; false when storage failed.
    pub(crate) async fn refresh_routes(&self) -> bool {
        let (Some(cluster), Some(store)) = (self.cluster.as_ref(), self.cluster_store()) else {
            return true;
        };
        match store.routes().await {
            Ok(routes) => {
                // Routes whose write failed (their SUBSCRIBE was refused)
                // or that a node adopting this one removed: written again.
                let own: std::collections::HashSet<&ByteStr> = routes
                    .iter()
                    .filter(|(node, _)| *node == cluster.name())
                    .flat_map(|(_, filters)| filters.iter())
                    .collect();
                let missing: Vec<ByteStr> = lock(&cluster.written_routes)
                    .written
                    .iter()
                    .filter(|f| !own.contains(f))
                    .cloned()
                    .collect();
                for filter in missing {
                    cluster.send_later(add_route(cluster, filter), true);
                }
                tracing::trace!(?routes, "routes read");
                let cache = RouteCache::rebuild(routes, &cluster.name());
                *write(&cluster.routes) = cache;
                true
            }
            Err(error) => {
                self.storage_failed("routes", &error);
                false
            }
        }
    }

    /// The ops that store the routes of newly granted filters (and tell the
    /// other nodes), to be applied before the SUBACK.
    pub fn route_ops(
        &self,
        filters: impl IntoIterator<Item = (ByteStr, SubscribeReturnCode)>,
    ) -> Vec<Op> {
        let Some(cluster) = self.cluster.as_ref() else {
            return Vec::new();
        };
        self.route_ops_for(
            filters
                .into_iter()
                .filter(|(_, code)| *code != SubscribeReturnCode::Failure)
                .map(|(filter, _)| filter),
            cluster,
        )
    }

    pub(crate) fn route_ops_for(
        &self,
        filters: impl IntoIterator<Item = ByteStr>,
        cluster: &super::ClusterState,
    ) -> Vec<Op> {
        let mut ops = Vec::new();
        {
            let mut book = lock(&cluster.written_routes);
            for filter in filters {
                if book.written.insert(filter.clone()) {
                    ops.push(add_route(cluster, filter));
                }
            }
        }
        if !ops.is_empty() {
            ops.extend(cluster.routes_changed_ops());
        }
        ops
    }

    /// Stores the routes of `filters` (a session loaded from storage),
    /// pinned until the returned pin is dropped: the caller drops it once
    /// the filters are in the trie.
    pub async fn store_routes(
        &self,
        filters: impl IntoIterator<Item = ByteStr>,
    ) -> Result<RoutePin, easy_mqtt_core::storage::StorageError> {
        let Some(cluster) = self.cluster.as_ref() else {
            return Ok(RoutePin::default());
        };
        let filters: Vec<ByteStr> = filters.into_iter().collect();
        if filters.is_empty() {
            return Ok(RoutePin::default());
        }
        let mut added = Vec::new();
        {
            let mut book = lock(&cluster.written_routes);
            for filter in &filters {
                *book.pinned.entry(filter.clone()).or_insert(0) += 1;
                if book.written.insert(filter.clone()) {
                    added.push(filter.clone());
                }
            }
        }
        let pin = RoutePin {
            book: Some(cluster.written_routes.clone()),
            filters,
        };
        if added.is_empty() {
            return Ok(pin);
        }
        let mut ops: Vec<Op> = added
            .iter()
            .map(|filter| add_route(cluster, filter.clone()))
            .collect();
        ops.extend(cluster.routes_changed_ops());
        match self.storage.apply(ops).await {
            Ok(()) => Ok(pin),
            Err(error) => {
                // Not stored: let a later subscriber write them again.
                let mut book = lock(&cluster.written_routes);
                for filter in &added {
                    book.written.remove(filter);
                }
                Err(error)
            }
        }
    }

    /// Removes the stored routes no local session needs any more. Decided
    /// and taken out of `written` under one lock, so a subscriber that
    /// comes meanwhile finds the filter gone and writes its route again.
    pub(crate) fn prune_routes(&self) {
        let Some(cluster) = self.cluster.as_ref() else {
            return;
        };
        let stale: Vec<ByteStr> = {
            let mut book = lock(&cluster.written_routes);
            if book.written.is_empty() {
                return;
            }
            let trie = read(&self.trie);
            let stale: Vec<ByteStr> = book
                .written
                .iter()
                .filter(|filter| !book.pinned.contains_key(*filter) && !trie.has_filter(filter))
                .cloned()
                .collect();
            drop(trie);
            for filter in &stale {
                book.written.remove(filter);
            }
            stale
        };
        for filter in stale {
            cluster.send_later(remove_route(cluster, filter), true);
        }
    }

    /// After the outbox removed routes: those subscribed to again meanwhile
    /// are written again, since their subscriber's own `AddRoute` may have
    /// been stored before the removal.
    pub(crate) fn rewrite_resubscribed_routes(&self, removed: Vec<ByteStr>) {
        let Some(cluster) = self.cluster.as_ref() else {
            return;
        };
        let again: Vec<ByteStr> = {
            let book = lock(&cluster.written_routes);
            removed
                .into_iter()
                .filter(|filter| book.written.contains(filter))
                .collect()
        };
        if again.is_empty() {
            return;
        }
        for filter in again {
            cluster.send_later(add_route(cluster, filter), true);
        }
        for op in cluster.routes_changed_ops() {
            cluster.send_later(op, true);
        }
    }

    /// The other nodes whose routes match `topic`.
    pub(crate) fn remote_nodes(&self, topic: &str, out: &mut Vec<ByteStr>) {
        out.clear();
        if let Some(cluster) = self.cluster.as_ref() {
            read(&cluster.routes).nodes_for(topic, out);
        }
    }

    /// Marks the route cache stale and wakes the cluster task.
    pub(crate) fn routes_stale(&self) {
        if let Some(cluster) = self.cluster.as_ref() {
            cluster.routes_dirty.store(true, Ordering::Release);
            self.routes_notice.notify(1);
        }
    }
}
