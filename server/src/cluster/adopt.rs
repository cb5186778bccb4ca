//! Dead nodes, and this node's own previous life.
//!
//! A node whose heartbeat expired is adopted by the one live node that wins
//! `claim_adoption` (which fences the dead incarnation). The adopter:
//! 1. claims the persistent sessions the dead node owned: their
//!    subscriptions enter its trie and its routes, and messages for them are
//!    stored in their queues until the clients return, to any node. Those
//!    claimed away from the dead node meanwhile are held on its behalf until
//!    the claim's kick, read from the dead node's inbox, is answered;
//! 2. publishes the will of every client that was still connected there,
//!    in the batch that clears its presence (so a will is published once
//!    even if the adopter dies too);
//! 3. serves the dead node's inbox like its own (answering its kicks on its
//!    behalf), and keeps watching it for
//!    `ADOPTED_WATCH` (a publisher's batch computed with a stale route
//!    cache may still land there); then forgets the incarnation. An
//!    adoption that fails half-way (storage) is taken up again next round:
//!    every step is idempotent.
//!
//! An adopter that dies before it finished passes what it adopted on to
//! its own adopter.
//!
//! A node that restarts under the same node id adopts its previous
//! incarnation itself when nobody else did: it waits for that incarnation's
//! heartbeat to expire, then does the same.

use std::sync::Arc;
use std::time::{Duration, Instant};

use easy_mqtt_core::ByteStr;
use easy_mqtt_core::cluster::{ClusterOp, InboxId, Member};
use easy_mqtt_core::storage::{Op, StorageError};

use super::apply_while_leased;
use super::takeover::kick;
use crate::metrics::Metrics;
use crate::node::{Node, write};
use crate::runtime::{Runtime, sleep_until};
use crate::sessions::{SessionKey, lock};

/// How long an adopter keeps serving a dead node's inbox.
const ADOPTED_WATCH: Duration = Duration::from_secs(120);

/// A dead node's inbox served by this node.
#[derive(Debug, Clone)]
pub(crate) struct Adopted {
    pub node: ByteStr,
    pub after: Option<InboxId>,
    pub until: Instant,
    /// The sessions adopted from it (claimed, or held on its behalf): its
    /// inbox is routed to them only.
    pub sessions: Arc<std::collections::HashSet<ByteStr>>,
    /// The persistent sessions it had just released (and still forwarded
    /// for when it died), by subscription, with the node each was released
    /// to: what its inbox holds for them goes there, as the dead node would
    /// have sent it.
    pub departed: Arc<easy_mqtt_core::topic::SubscriptionTrie<(ByteStr, ByteStr)>>,
}

impl<R: Runtime> Node<R> {
    /// Serves the inboxes of adopted nodes once; true when one held entries.
    pub(crate) async fn serve_adopted_inboxes(self: &Arc<Self>) -> bool {
        if self.cluster.is_none() {
            return false;
        }
        let adopted: Vec<Adopted> = lock(&self.adopted).clone();
        let mut any = false;
        for mut dead in adopted {
            // An incarnation never comes back (a restarted node is a new
            // one, a partitioned one was fenced and drops everything), so
            // its inbox is served until the watch ends.
            let result = self
                .serve_inbox_once(
                    &dead.node,
                    &mut dead.after,
                    Some((&dead.sessions, &dead.departed)),
                    Duration::ZERO,
                )
                .await
                .map(|read| read > 0);
            tracing::trace!(node = %dead.node, ?result, "adopted inbox served");
            any |= matches!(result, Ok(true));
            let finished = result == Ok(false) && self.runtime.now() >= dead.until;
            {
                let mut list = lock(&self.adopted);
                if let Some(slot) = list.iter_mut().find(|a| a.node == dead.node) {
                    slot.after = dead.after;
                }
                if finished {
                    list.retain(|a| a.node != dead.node);
                    if let Some(cluster) = self.cluster.as_ref() {
                        lock(&cluster.seen).remove(&dead.node);
                    }
                }
            }
            if finished && let Some(store) = self.storage.cluster() {
                let forget_served = Op::from(ClusterOp::PushLog {
                    space: ByteStr::from(super::bus::SERVED_SPACE),
                    key: dead.node.clone(),
                    entry: bytes::Bytes::new(),
                    keep: 0,
                });
                if let Err(error) = self.storage.apply(vec![forget_served]).await {
                    self.storage_failed("forget served log", &error);
                }
                match store.forget_member(&dead.node).await {
                    Err(error) => self.storage_failed("forget node", &error),
                    Ok(()) => tracing::info!(node = %dead.node, "dead node forgotten"),
                }
            }
        }
        any
    }

    /// Adopts the dead nodes this node wins.
    pub(crate) async fn adopt_dead_nodes(self: &Arc<Self>) {
        let (Some(cluster), Some(store)) = (self.cluster.as_ref(), self.storage.cluster()) else {
            return;
        };
        let unfinished: Vec<ByteStr> = std::mem::take(&mut *lock(&cluster.unfinished_adoptions));
        for dead in unfinished {
            if let Err(error) = self.adopt(&dead).await {
                self.storage_failed("adopt", &error);
                lock(&cluster.unfinished_adoptions).push(dead);
            }
        }
        let members = match store.members().await {
            Ok(members) => members,
            Err(error) => {
                self.storage_failed("members", &error);
                return;
            }
        };
        for member in members {
            if member.alive.is_some()
                || member.node == cluster.name()
                || member.node.starts_with(&format!("{}@", cluster.base_id))
                || lock(&self.adopted).iter().any(|a| a.node == member.node)
                // Won already, and taken up again above.
                || lock(&cluster.unfinished_adoptions).contains(&member.node)
            {
                continue;
            }
            // A claim whose answer was lost (a timeout) is made again here
            // next round, and wins again if it had won.
            match store
                .claim_adoption(&member.node, member.incarnation, &cluster.name())
                .await
            {
                Ok(true) => {
                    tracing::warn!(
                        node = %member.node,
                        incarnation = member.incarnation,
                        "node is dead; adopting its clients"
                    );
                    if let Err(error) = self.adopt(&member.node).await {
                        self.storage_failed("adopt", &error);
                        lock(&cluster.unfinished_adoptions).push(member.node);
                    }
                }
                Ok(false) => {}
                Err(error) => self.storage_failed("claim adoption", &error),
            }
        }
    }

    /// Takes over what `dead` held (wills, persistent sessions, inbox),
    /// after the adoptions it won and did not finish: those are this
    /// node's now, and taken up first. The dead node's routes, removed in
    /// the last step, may be all that routes for the sessions it held on
    /// their behalf (claimed away from them while they could not answer),
    /// until this node holds those sessions and routes for them itself. One
    /// that fails is taken up again next round, and so is this adoption,
    /// whose routes stay meanwhile.
    pub(crate) async fn adopt(self: &Arc<Self>, dead: &ByteStr) -> Result<(), StorageError> {
        let (Some(cluster), Some(store)) = (self.cluster.as_ref(), self.storage.cluster()) else {
            return Ok(());
        };
        let members = store.members().await?;
        // Depth first, the inherited ones before their adopter (a chain of
        // adopters that died in turn). Not a recursive call: its future
        // would have to be boxed, and the compiler cannot then see it is
        // `Send`.
        let mut order = Vec::new();
        let mut stack = vec![(dead.clone(), false)];
        let mut seen = std::collections::HashSet::new();
        let mut inherited_by = std::collections::HashMap::new();
        while let Some((node, expanded)) = stack.pop() {
            if expanded {
                order.push(node);
                continue;
            }
            if !seen.insert(node.clone()) {
                continue;
            }
            let inherited = self.unfinished_adoptions_of(&node, &members).await?;
            stack.push((node.clone(), true));
            stack.extend(inherited.iter().map(|n| (n.clone(), false)));
            inherited_by.insert(node, inherited);
        }
        for node in order {
            let result = self.adopt_one(&node).await;
            if result.is_ok()
                && let Some(inherited) = inherited_by.get(&node)
            {
                self.serve_for_inherited(&node, inherited);
            }
            if node != *dead {
                let mut unfinished = lock(&cluster.unfinished_adoptions);
                unfinished.retain(|n| *n != node);
                if result.is_err() {
                    unfinished.push(node);
                }
            }
            result?;
        }
        Ok(())
    }

    /// Routes `adopter`'s inbox to the sessions of the adoptions it
    /// `inherited` from it too: it routed for the sessions it held on their
    /// behalf, so messages for them sit in its own inbox as well. Served
    /// to its own sessions only, such a message was acknowledged and
    /// dropped (sim seed 173606: a QoS 2 message lost).
    fn serve_for_inherited(&self, adopter: &ByteStr, inherited: &[ByteStr]) {
        if inherited.is_empty() {
            return;
        }
        let mut adopted = lock(&self.adopted);
        let held: Vec<ByteStr> = (adopted.iter())
            .filter(|a| inherited.contains(&a.node))
            .flat_map(|a| a.sessions.iter().cloned())
            .collect();
        if let Some(entry) = adopted.iter_mut().find(|a| a.node == *adopter)
            && held
                .iter()
                .any(|client_id| !entry.sessions.contains(client_id))
        {
            let mut all = (*entry.sessions).clone();
            all.extend(held);
            entry.sessions = Arc::new(all);
        }
    }

    /// The adoptions `dead` won and did not finish (it died while serving
    /// the inbox it adopted, or before).
    async fn unfinished_adoptions_of(
        &self,
        dead: &ByteStr,
        members: &[Member],
    ) -> Result<Vec<ByteStr>, StorageError> {
        let (Some(cluster), Some(store)) = (self.cluster.as_ref(), self.storage.cluster()) else {
            return Ok(Vec::new());
        };
        let mut inherited = Vec::new();
        for member in members {
            if member.alive.is_some()
                || member.node == *dead
                || member.node == cluster.name()
                || lock(&self.adopted).iter().any(|a| a.node == member.node)
            {
                continue;
            }
            if store
                .adopter(&member.node, member.incarnation)
                .await?
                .is_some_and(|adopter| adopter == *dead)
            {
                tracing::warn!(node = %member.node, from = %dead, "taking over an unfinished adoption");
                inherited.push(member.node.clone());
            }
        }
        Ok(inherited)
    }

    /// [`Node::adopt`] of `dead` alone.
    async fn adopt_one(self: &Arc<Self>, dead: &ByteStr) -> Result<(), StorageError> {
        let (Some(cluster), Some(store)) = (self.cluster.as_ref(), self.storage.cluster()) else {
            return Ok(());
        };
        Metrics::inc(&self.metrics.cluster_adoptions);
        // 1. Its persistent sessions first, so that the wills (and the
        // inbox) reach the subscribers among them.
        let mut adopted_sessions = std::collections::HashSet::new();
        let mut departed = easy_mqtt_core::topic::SubscriptionTrie::new();
        let watch_until = self.runtime.now() + ADOPTED_WATCH + cluster.config.forward_grace;
        {
            let owned: std::collections::HashSet<ByteStr> =
                store.owned_by(dead).await?.into_iter().collect();
            let forwarded: std::collections::HashMap<ByteStr, ByteStr> = store
                .scan_records(&super::forwards_space(dead))
                .await?
                .into_iter()
                .filter(|(client_id, _)| !owned.contains(client_id))
                .map(|(client_id, to)| {
                    // A record not naming a node (never written so): this
                    // node's inbox, which passes it to the owner of record.
                    let to = ByteStr::from_utf8(to).unwrap_or_else(|_| cluster.name());
                    (client_id, to)
                })
                .collect();
            if !owned.is_empty() || !forwarded.is_empty() {
                let sessions = self.storage.load_subscriptions().await?;
                for session in &sessions {
                    if let Some(to) = forwarded.get(&session.record.client_id) {
                        let subscriber = (session.record.client_id.clone(), to.clone());
                        for (filter, qos) in &session.subscriptions {
                            departed.insert(filter, subscriber.clone(), *qos);
                        }
                    }
                }
                let mut route_filters = Vec::new();
                let mut ops = Vec::new();
                let mut persistent = std::collections::HashSet::new();
                for session in sessions {
                    let (record, subscriptions) = (session.record, session.subscriptions);
                    if !owned.contains(&record.client_id) {
                        continue;
                    }
                    persistent.insert(record.client_id.clone());
                    let own = cluster.name();
                    let owner = store.owner(&record.client_id).await?;
                    let epoch = match owner {
                        Some(owner) if owner.node == own => Some(owner.epoch),
                        Some(owner) if owner.node != *dead => None,
                        _ => {
                            let claim = store.claim_owner(&record.client_id, &own).await?;
                            lock(&cluster.epochs).insert(record.client_id.clone(), claim.epoch);
                            Some(claim.epoch)
                        }
                    };
                    // Owned here now: kicked out of the dead node behind the
                    // messages for it in its inbox, so that the dead node
                    // lets go once they are served. Otherwise claimed away
                    // while the dead node could not answer: held on its
                    // behalf until that claim's kick, likewise.
                    if let Some(epoch) = epoch {
                        ops.push(kick(
                            dead.clone(),
                            record.client_id.clone(),
                            epoch,
                            own.clone(),
                        ));
                    }
                    route_filters.extend(subscriptions.iter().map(|(f, _)| f.clone()));
                    cluster.watch_adopted(record.client_id.clone(), watch_until);
                    adopted_sessions.insert(record.client_id.clone());
                    self.hold_offline_session(&record.client_id, subscriptions);
                }
                for client_id in owned.iter().filter(|c| !persistent.contains(*c)) {
                    // A clean session ended with the node; one claimed away
                    // is let go when its kick is served.
                    let owner = store.owner(client_id).await?;
                    if owner.is_none_or(|o| o.node == *dead) {
                        ops.push(Op::from(ClusterOp::Disown {
                            node: dead.clone(),
                            client_id: client_id.clone(),
                        }));
                    }
                }
                ops.extend(self.route_ops_for(route_filters, cluster));
                if !ops.is_empty() && !apply_while_leased(self, ops).await {
                    return Err(StorageError::Unavailable(
                        "the adopted sessions were not stored".into(),
                    ));
                }
            }
        }
        // 2. Wills of the clients that were connected there: a presence
        // left means the connection ended without its will published (a
        // will is stored with the presence's removal), whoever owns the
        // client now.
        let mut scratch = Vec::new();
        for presence in store.presence(dead).await? {
            let mut ops = Vec::new();
            let mut prepared = None;
            if let Some(will) = presence.will {
                Metrics::inc(&self.metrics.wills_published);
                tracing::info!(client_id = %presence.client_id, node = %dead, "publishing the will of a client of a dead node");
                let (route, more) = self.prepare_route(will, None, &mut scratch);
                ops.extend(more);
                prepared = Some(route);
            }
            ops.push(Op::from(ClusterOp::ClearPresence {
                node: dead.clone(),
                client_id: presence.client_id.clone(),
            }));
            if !apply_while_leased(self, ops).await {
                return Err(StorageError::Unavailable("storage refused the will".into()));
            }
            if let Some(route) = prepared {
                self.finish_route(route);
            }
        }
        tracing::trace!(node = %dead, "adoption: sessions and wills done");
        // 3. Its inbox. What it (or an earlier adopter) already served of
        // it first: a retried publish batch may have appended copies.
        let keep = usize::try_from(super::bus::SERVED_KEEP).unwrap_or(usize::MAX);
        let served = store.read_log(super::bus::SERVED_SPACE, dead, keep).await?;
        {
            let mut seen = lock(&cluster.seen);
            let recent = seen.entry(dead.clone()).or_default();
            // Oldest first, as they were served (the log is newest first).
            for entry in served.iter().rev() {
                for key in super::bus::decode_served(entry) {
                    recent.insert(key);
                }
            }
        }
        {
            let mut removals: Vec<Op> = {
                let routes = crate::node::read(&cluster.routes);
                routes
                    .filters_of(dead)
                    .iter()
                    .map(|filter| {
                        Op::from(ClusterOp::RemoveRoute {
                            node: dead.clone(),
                            filter: filter.clone(),
                        })
                    })
                    .collect()
            };
            if !removals.is_empty() {
                removals.extend(cluster.routes_changed_ops());
                if !apply_while_leased(self, removals).await {
                    return Err(StorageError::Unavailable(
                        "the dead node's routes were not removed".into(),
                    ));
                }
            }
            let mut adopted = lock(&self.adopted);
            let sessions = Arc::new(adopted_sessions);
            match adopted.iter_mut().find(|a| a.node == *dead) {
                // Adopted again after a failure half-way: the sessions found
                // this time (a retry finds none it already claimed).
                Some(known) => {
                    let mut all = (*known.sessions).clone();
                    all.extend(sessions.iter().cloned());
                    known.sessions = Arc::new(all);
                    if !departed.is_empty() {
                        known.departed = Arc::new(departed);
                    }
                }
                None => adopted.push(Adopted {
                    node: dead.clone(),
                    after: None,
                    until: self.runtime.now() + ADOPTED_WATCH,
                    sessions,
                    departed: Arc::new(departed),
                }),
            }
        }
        Ok(())
    }

    /// Holds a persistent session whose client is away, for routing: its
    /// subscriptions in the trie, messages for it stored in its queue.
    pub(crate) fn hold_offline_session(
        &self,
        client_id: &ByteStr,
        subscriptions: Vec<(ByteStr, easy_mqtt_core::QoS)>,
    ) {
        // Held here again, maybe while this node still forwards for the
        // client after letting it go earlier (an adopter whose own claim
        // was superseded): that forward would send what is routed to the
        // session away and, once it ends, retire this very entry, its
        // subscriptions with it, so that what it is held for (the dead
        // node's inbox) would reach nobody.
        if let Some(cluster) = self.cluster.as_ref() {
            cluster.end_forward(client_id);
        }
        let entry = self.registered_entry(client_id);
        let mut inner = lock(&entry.inner);
        inner.clean = false;
        inner.stored = true;
        let key = SessionKey(entry.clone());
        let mut trie = write(&self.trie);
        for (filter, qos) in subscriptions {
            trie.insert(&filter, key.clone(), qos);
            inner.subscriptions.insert(filter, qos);
        }
    }

    /// [`Node::hold_offline_session`] for a session loaded from storage,
    /// returning the route ops that make it reachable from other nodes.
    pub(crate) fn hold_loaded_offline(
        &self,
        client_id: &ByteStr,
        subscriptions: Vec<(ByteStr, easy_mqtt_core::QoS)>,
        cluster: &super::ClusterState,
    ) -> Vec<Op> {
        let filters: Vec<ByteStr> = subscriptions.iter().map(|(f, _)| f.clone()).collect();
        self.hold_offline_session(client_id, subscriptions);
        self.route_ops_for(filters, cluster)
    }

    /// At start: this node id's previous incarnation, if storage still
    /// knows it, is adopted (by this node when no other node did), then
    /// this incarnation registers.
    pub(crate) async fn join_cluster(self: &Arc<Self>) -> Result<(), StorageError> {
        let (Some(cluster), Some(store)) = (self.cluster.as_ref(), self.storage.cluster()) else {
            return Ok(());
        };
        let own = cluster.name();
        let prefix = format!("{}@", cluster.base_id);
        let deadline = self.runtime.now() + cluster.config.node_ttl * 3;
        loop {
            let members = store.members().await?;
            // Wills of a previous life go to the live nodes' subscribers too.
            *write(&cluster.live) = members
                .iter()
                .filter(|m| m.alive.is_some() && m.node != own)
                .map(|m| m.node.clone())
                .collect();
            self.refresh_routes().await;
            let previous: Vec<_> = members
                .into_iter()
                .filter(|m| m.node.starts_with(&prefix) && m.node != own)
                .collect();
            if previous.iter().all(|m| m.alive.is_none()) {
                // Registered first: adopting writes under this node's lease.
                super::membership::heartbeat(self, self.runtime.now()).await;
                if !cluster.lease_valid(self.runtime.now()) {
                    return Err(StorageError::Unavailable(
                        "the first cluster heartbeat failed".into(),
                    ));
                }
                for life in previous {
                    if store
                        .claim_adoption(&life.node, life.incarnation, &own)
                        .await?
                    {
                        tracing::info!(previous = %life.node, "adopting this node's previous incarnation");
                        // Won for good: a failure half-way is taken up by
                        // the cluster task, like any unfinished adoption.
                        if let Err(error) = self.adopt(&life.node).await {
                            self.storage_failed("adopt", &error);
                            lock(&cluster.unfinished_adoptions).push(life.node);
                        }
                    }
                    // Otherwise another node adopts it.
                }
                break;
            }
            if self.runtime.now() >= deadline {
                return Err(StorageError::Invalid(format!(
                    "another process is alive under node id {} (mqtt.server.node-id must be unique)",
                    cluster.base_id
                )));
            }
            tracing::info!("waiting for this node's previous incarnation to expire");
            let at = self.runtime.now() + cluster.config.heartbeat_interval;
            sleep_until(&self.runtime, at).await;
        }
        self.refresh_routes().await;
        Ok(())
    }
}
