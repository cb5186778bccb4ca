//! The cluster contract: checks every backend with [`Storage::cluster`]
//! must pass ([`crate::cluster`]).
//!
//! Each check works on its own node names (`contract-<check>-…`), client
//! ids, record spaces and log keys, and forgets, deletes or empties what it
//! created, with two exceptions a backend cannot drop: the ownership of a
//! client id (its epoch must keep growing) and the fences of adopted
//! incarnations (a fenced process may still heartbeat).
//!
//! Times to live are short (a few hundred milliseconds) and the checks wait
//! for them to pass through the `sleep` closure the backend's suite gives
//! (a real sleep, or a step of a manual clock), so the contract needs no
//! particular async runtime.
//!
//! # The contract
//!
//! - `heartbeat` registers a node (membership lists its last incarnation)
//!   and keeps it alive for the time to live; after that the member is
//!   listed with `alive: None`. A new incarnation replaces the old one.
//! - `claim_adoption` of an incarnation whose heartbeat is current fails;
//!   `adopter` answers the one claimant that won, if any;
//!   once it expired, exactly one claimant wins (and wins again if it
//!   claims again: a retry after a lost answer), and the incarnation's next
//!   heartbeat answers `Fenced` without making it alive again. Another
//!   incarnation of the same node is not fenced.
//! - `claim_owner` answers an epoch higher than every earlier claim of the
//!   client id and the owner it replaced; `owner` follows. A claim adds the
//!   claimant to `owned_by` and `responsible` and leaves the previous owner
//!   there until `Disown` (idempotent).
//! - Inbox entries read back equal (payloads byte for byte) in append order
//!   with increasing ids; `after` and `max` page; `InboxAck` removes one
//!   entry (again: no-op); `wait` is an upper bound (a backend may return
//!   at once with nothing).
//! - Routes and presence are sets keyed by filter and by client id; their
//!   ops are idempotent. `routes` lists the routes of members only.
//! - Records: set, replaced, deleted; one with a time to live is gone from
//!   `get_record` and `scan_records` once it expired; setting it again
//!   without a time to live keeps it. Logs: newest first, capped at `keep`
//!   (`keep` 0 empties the log).
//! - `forget_member` removes the membership, inbox, routes, presence and
//!   owned-by index of a node; a later heartbeat registers it again.
//! - Every op but `Forward` is idempotent: a batch applied twice leaves the
//!   same state. (`Forward` appends: a replayed batch may deliver an entry
//!   twice, and receivers tell duplicates by message id or epoch.)

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::cluster::{BusEntry, Cluster, ClusterOp, InboxId, Liveness, Member, Presence};
use crate::packet::{ByteStr, QoS};
use crate::storage::{BoxFuture, MessageId, Op, Storage};

use super::cluster_data::{
    add_route, inbox_order_and_ack, logs_capped_newest_first, presence, presence_set_and_clear,
    records_with_ttl, routes, set_presence,
};
use super::support::{apply, binary_message, message};

/// Waits for a duration on the backend's clock (sleeps, or advances a
/// manual clock).
pub type Sleep = dyn Fn(Duration) -> BoxFuture<'static, ()> + Send + Sync;

/// The time to live of the checks on expiry.
pub(super) const TTL: Duration = Duration::from_millis(300);
/// Long enough for [`TTL`] to pass, with a margin for a slow machine.
pub(super) const PAST_TTL: Duration = Duration::from_millis(700);
/// A time to live no check outlives.
pub(super) const LONG_TTL: Duration = Duration::from_secs(60);

pub(super) fn cluster_op(op: ClusterOp) -> Op {
    Op::from(op)
}

pub(super) fn b(text: &str) -> ByteStr {
    ByteStr::from(text)
}

pub(super) async fn members(cluster: &dyn Cluster, check: &str, prefix: &str) -> Vec<Member> {
    let mut members = match cluster.members().await {
        Ok(members) => members,
        Err(error) => panic!("{check}: members: {error}"),
    };
    members.retain(|member| member.node.starts_with(prefix));
    members.sort_by(|x, y| x.node.cmp(&y.node));
    members
}

pub(super) async fn heartbeat(
    cluster: &dyn Cluster,
    check: &str,
    node: &str,
    incarnation: u64,
    ttl: Duration,
) -> Liveness {
    match cluster.heartbeat(node, incarnation, ttl).await {
        Ok(liveness) => liveness,
        Err(error) => panic!("{check}: heartbeat({node}, {incarnation}): {error}"),
    }
}

pub(super) async fn adopt(
    cluster: &dyn Cluster,
    check: &str,
    dead: &str,
    incarnation: u64,
    by: &str,
) -> bool {
    match cluster.claim_adoption(dead, incarnation, by).await {
        Ok(won) => won,
        Err(error) => panic!("{check}: claim_adoption({dead}, {incarnation}, {by}): {error}"),
    }
}

pub(super) async fn forget(cluster: &dyn Cluster, check: &str, node: &str) {
    if let Err(error) = cluster.forget_member(node).await {
        panic!("{check}: forget_member({node}): {error}");
    }
}

pub(super) async fn inbox(
    cluster: &dyn Cluster,
    check: &str,
    node: &str,
    after: Option<InboxId>,
    max: usize,
) -> Vec<(InboxId, BusEntry)> {
    match cluster.read_inbox(node, after, max, Duration::ZERO).await {
        Ok(entries) => entries,
        Err(error) => panic!("{check}: read_inbox({node}, {after:?}, {max}): {error}"),
    }
}

pub(super) async fn routes_of(
    cluster: &dyn Cluster,
    check: &str,
    prefix: &str,
) -> Vec<(ByteStr, Vec<ByteStr>)> {
    let mut routes = match cluster.routes().await {
        Ok(routes) => routes,
        Err(error) => panic!("{check}: routes: {error}"),
    };
    routes.retain(|(node, _)| node.starts_with(prefix));
    for (_, filters) in &mut routes {
        filters.sort();
    }
    // A member without routes may be listed with none, or not at all.
    routes.retain(|(_, filters)| !filters.is_empty());
    routes.sort();
    routes
}

pub(super) async fn presence_of(cluster: &dyn Cluster, check: &str, node: &str) -> Vec<Presence> {
    let mut presence = match cluster.presence(node).await {
        Ok(presence) => presence,
        Err(error) => panic!("{check}: presence({node}): {error}"),
    };
    presence.sort_by(|x, y| x.client_id.cmp(&y.client_id));
    presence
}

pub(super) async fn owned(cluster: &dyn Cluster, check: &str, node: &str) -> Vec<ByteStr> {
    let mut owned = match cluster.owned_by(node).await {
        Ok(owned) => owned,
        Err(error) => panic!("{check}: owned_by({node}): {error}"),
    };
    owned.sort();
    owned
}

pub(super) async fn record(
    cluster: &dyn Cluster,
    check: &str,
    space: &str,
    key: &str,
) -> Option<Bytes> {
    match cluster.get_record(space, key).await {
        Ok(value) => value,
        Err(error) => panic!("{check}: get_record({space}, {key}): {error}"),
    }
}

pub(super) async fn records(
    cluster: &dyn Cluster,
    check: &str,
    space: &str,
) -> Vec<(ByteStr, Bytes)> {
    let mut records = match cluster.scan_records(space).await {
        Ok(records) => records,
        Err(error) => panic!("{check}: scan_records({space}): {error}"),
    };
    records.sort();
    records
}

pub(super) async fn log(
    cluster: &dyn Cluster,
    check: &str,
    space: &str,
    key: &str,
    max: usize,
) -> Vec<Bytes> {
    match cluster.read_log(space, key, max).await {
        Ok(entries) => entries,
        Err(error) => panic!("{check}: read_log({space}, {key}, {max}): {error}"),
    }
}

/// An incarnation no earlier run used (runs take more than a
/// microsecond): microseconds since the Unix epoch, times 10.
pub(super) fn fresh_incarnation() -> u64 {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|time| time.as_micros())
        .unwrap_or_default();
    u64::try_from(micros).unwrap_or(u64::MAX / 20) * 10
}

pub(super) fn member(node: &str, alive: Option<u64>, incarnation: u64) -> Member {
    Member {
        node: b(node),
        alive,
        incarnation,
    }
}

/// Heartbeats, expiry, adoption by one winner, fencing.
pub async fn membership(_storage: &dyn Storage, cluster: &dyn Cluster, sleep: &Sleep) {
    const CHECK: &str = "membership";
    let prefix = "contract-membership-";
    let node = "contract-membership-n";
    let other = "contract-membership-o";
    let [a, by] = ["contract-membership-a", "contract-membership-b"];
    // Fences outlive the check: a run on a storage that ran it before uses
    // new incarnations.
    let base = fresh_incarnation();
    let [one, two, seven] = [base + 1, base + 2, base + 7];

    assert_eq!(
        members(cluster, CHECK, prefix).await,
        vec![],
        "{CHECK}: not empty at first"
    );
    assert_eq!(
        heartbeat(cluster, CHECK, node, one, TTL).await,
        Liveness::Alive,
        "{CHECK}"
    );
    assert_eq!(
        heartbeat(cluster, CHECK, other, seven, LONG_TTL).await,
        Liveness::Alive,
        "{CHECK}"
    );
    assert_eq!(
        members(cluster, CHECK, prefix).await,
        vec![
            member(node, Some(one), one),
            member(other, Some(seven), seven)
        ],
        "{CHECK}: after the heartbeats"
    );
    assert!(
        !adopt(cluster, CHECK, node, one, a).await,
        "{CHECK}: an adoption won while the heartbeat is current"
    );

    sleep(PAST_TTL).await;
    assert_eq!(
        members(cluster, CHECK, prefix).await,
        vec![member(node, None, one), member(other, Some(seven), seven)],
        "{CHECK}: after the time to live"
    );
    assert!(
        !adopt(cluster, CHECK, other, seven, a).await,
        "{CHECK}: adopted a live node"
    );
    let adopter = |node: &'static str, incarnation: u64| async move {
        match cluster.adopter(node, incarnation).await {
            Ok(adopter) => adopter,
            Err(error) => panic!("{CHECK}: adopter({node}, {incarnation}): {error}"),
        }
    };
    assert_eq!(
        adopter(node, one).await,
        None,
        "{CHECK}: adopter before a claim"
    );
    let first = adopt(cluster, CHECK, node, one, a).await;
    let second = adopt(cluster, CHECK, node, one, by).await;
    // The winner's retry (its first answer lost in a timeout) wins again.
    let again = adopt(cluster, CHECK, node, one, a).await;
    assert_eq!(
        (first, second, again),
        (true, false, true),
        "{CHECK}: one winner, whose claim is idempotent"
    );
    assert_eq!(
        adopter(node, one).await,
        Some(b(a)),
        "{CHECK}: the winner is the adopter"
    );

    // The fenced incarnation is not alive again, and stays fenced.
    assert_eq!(
        heartbeat(cluster, CHECK, node, one, LONG_TTL).await,
        Liveness::Fenced,
        "{CHECK}"
    );
    assert_eq!(
        members(cluster, CHECK, prefix).await,
        vec![member(node, None, one), member(other, Some(seven), seven)],
        "{CHECK}: a fenced heartbeat made the node alive"
    );
    assert_eq!(
        heartbeat(cluster, CHECK, node, one, LONG_TTL).await,
        Liveness::Fenced,
        "{CHECK}"
    );

    // A new incarnation is not fenced, and cannot be adopted while alive.
    assert_eq!(
        heartbeat(cluster, CHECK, node, two, LONG_TTL).await,
        Liveness::Alive,
        "{CHECK}"
    );
    assert_eq!(
        members(cluster, CHECK, prefix).await,
        vec![
            member(node, Some(two), two),
            member(other, Some(seven), seven)
        ],
        "{CHECK}: a new incarnation"
    );
    assert!(
        !adopt(cluster, CHECK, node, two, a).await,
        "{CHECK}: adopted a live incarnation"
    );
    // The old one can still not be adopted twice.
    assert!(
        !adopt(cluster, CHECK, node, one, by).await,
        "{CHECK}: adopted twice"
    );

    forget(cluster, CHECK, node).await;
    forget(cluster, CHECK, other).await;
    forget(cluster, CHECK, other).await;
    assert_eq!(
        members(cluster, CHECK, prefix).await,
        vec![],
        "{CHECK}: forgotten"
    );
}

pub(super) async fn responsible(cluster: &dyn Cluster, check: &str, client: &str) -> Vec<ByteStr> {
    let mut nodes = match cluster.responsible(client).await {
        Ok(nodes) => nodes,
        Err(error) => panic!("{check}: responsible({client}): {error}"),
    };
    nodes.sort();
    nodes
}

pub(super) fn disown(node: &str, client_id: &str) -> Op {
    cluster_op(ClusterOp::Disown {
        node: b(node),
        client_id: b(client_id),
    })
}

/// Epochs grow with every claim; the previous owner is answered and stays
/// responsible until disowned.
pub async fn ownership(storage: &dyn Storage, cluster: &dyn Cluster, _sleep: &Sleep) {
    const CHECK: &str = "ownership";
    let [a, bn] = ["contract-ownership-a", "contract-ownership-b"];
    let [c1, c2] = ["contract-ownership-c1", "contract-ownership-{c2}%"];
    let claim = |client: &'static str, node: &'static str| async move {
        match cluster.claim_owner(client, node).await {
            Ok(claim) => claim,
            Err(error) => panic!("{CHECK}: claim_owner({client}, {node}): {error}"),
        }
    };
    let owner = |client: &'static str| async move {
        match cluster.owner(client).await {
            Ok(owner) => owner,
            Err(error) => panic!("{CHECK}: owner({client}): {error}"),
        }
    };

    // The checks may run on a storage that ran them before: ownership stays.
    let before = owner(c1).await;
    let first = claim(c1, a).await;
    assert_eq!(
        first.previous, before,
        "{CHECK}: previous of the first claim"
    );
    if let Some(before) = &before {
        assert!(first.epoch > before.epoch, "{CHECK}: epoch did not grow");
    }
    let got = owner(c1).await.map(|owner| (owner.node, owner.epoch));
    assert_eq!(
        got,
        Some((b(a), first.epoch)),
        "{CHECK}: owner after a claim"
    );

    // Responsibility is listed for members only.
    heartbeat(cluster, CHECK, a, 1, LONG_TTL).await;
    heartbeat(cluster, CHECK, bn, 1, LONG_TTL).await;
    assert_eq!(
        responsible(cluster, CHECK, c1).await,
        vec![b(a)],
        "{CHECK}: responsible after one claim"
    );

    let second = claim(c1, bn).await;
    assert!(second.epoch > first.epoch, "{CHECK}: epoch did not grow");
    let previous = second.previous.map(|owner| (owner.node, owner.epoch));
    assert_eq!(
        previous,
        Some((b(a), first.epoch)),
        "{CHECK}: previous owner"
    );
    // The previous owner is still responsible: it was not disowned yet.
    assert_eq!(
        owned(cluster, CHECK, a).await,
        vec![b(c1)],
        "{CHECK}: owned by a before disown"
    );
    assert_eq!(
        responsible(cluster, CHECK, c1).await,
        vec![b(a), b(bn)],
        "{CHECK}: responsible after a takeover"
    );
    apply(storage, CHECK, vec![disown(a, c1)]).await;
    apply(storage, CHECK, vec![disown(a, c1)]).await;
    assert_eq!(
        owned(cluster, CHECK, a).await,
        Vec::<ByteStr>::new(),
        "{CHECK}: owned by a"
    );
    assert_eq!(
        owned(cluster, CHECK, bn).await,
        vec![b(c1)],
        "{CHECK}: owned by b"
    );
    assert_eq!(
        responsible(cluster, CHECK, c1).await,
        vec![b(bn)],
        "{CHECK}: responsible after disown"
    );

    // Claiming again from the owner: a new epoch, still owned once.
    let third = claim(c1, bn).await;
    assert!(third.epoch > second.epoch, "{CHECK}: epoch did not grow");
    let previous = third.previous.map(|owner| (owner.node, owner.epoch));
    assert_eq!(
        previous,
        Some((b(bn), second.epoch)),
        "{CHECK}: previous owner"
    );
    let other = claim(c2, bn).await;
    assert_eq!(
        owned(cluster, CHECK, bn).await,
        vec![b(c1), b(c2)],
        "{CHECK}: owned by b"
    );
    let got = owner(c2).await.map(|owner| (owner.node, owner.epoch));
    assert_eq!(
        got,
        Some((b(bn), other.epoch)),
        "{CHECK}: owner of an odd client id"
    );
    assert_eq!(
        owner("contract-ownership-none").await,
        None,
        "{CHECK}: unclaimed"
    );

    let back = claim(c1, a).await;
    assert!(back.epoch > third.epoch, "{CHECK}: epoch did not grow");
    apply(storage, CHECK, vec![disown(bn, c1)]).await;
    assert_eq!(
        owned(cluster, CHECK, a).await,
        vec![b(c1)],
        "{CHECK}: owned by a"
    );
    assert_eq!(
        owned(cluster, CHECK, bn).await,
        vec![b(c2)],
        "{CHECK}: owned by b"
    );

    forget(cluster, CHECK, a).await;
    forget(cluster, CHECK, bn).await;
    assert_eq!(
        owned(cluster, CHECK, a).await,
        Vec::<ByteStr>::new(),
        "{CHECK}: forgotten"
    );
    assert_eq!(
        responsible(cluster, CHECK, c1).await,
        Vec::<ByteStr>::new(),
        "{CHECK}: nobody responsible once forgotten"
    );
    assert_eq!(
        owned(cluster, CHECK, bn).await,
        Vec::<ByteStr>::new(),
        "{CHECK}: forgotten"
    );
}

pub(super) fn entries() -> Vec<BusEntry> {
    let bytes: Vec<u8> = (0..=255).rev().collect();
    let binary = binary_message("contract/inbox/ü/{x}", &bytes, QoS::ExactlyOnce);
    let mut retained = (*message("contract/inbox/r", "", QoS::AtLeastOnce)).clone();
    retained.retain = true;
    vec![
        BusEntry::Publish {
            id: MessageId::new(50, 1),
            message: binary,
        },
        BusEntry::Direct {
            client_id: b("contract-inbox-{c}"),
            id: MessageId::new(50, 2),
            message: Arc::new(retained),
            qos: QoS::AtMostOnce,
        },
        BusEntry::Kick {
            client_id: b("contract-inbox-c"),
            epoch: u64::MAX,
            from: b("contract-inbox-from"),
        },
        BusEntry::Released {
            client_id: b(""),
            epoch: 0,
        },
        BusEntry::RoutesChanged {
            node: b("contract-inbox-ü"),
        },
        BusEntry::ReadRetained,
    ]
}

pub(super) fn forward(node: &str, entry: BusEntry) -> Op {
    cluster_op(ClusterOp::Forward {
        node: b(node),
        entry,
    })
}

pub(super) fn ack(node: &str, entry: InboxId) -> Op {
    cluster_op(ClusterOp::InboxAck {
        node: b(node),
        entry,
    })
}

/// `forget_member` removes a node's membership, inbox, routes, presence and
/// owned-by index; a later heartbeat registers it again.
pub async fn forget_member_removes_everything(
    storage: &dyn Storage,
    cluster: &dyn Cluster,
    _sleep: &Sleep,
) {
    const CHECK: &str = "forget_member_removes_everything";
    let prefix = "contract-forget-";
    let [n, m] = ["contract-forget-n", "contract-forget-m"];
    let client = "contract-forget-c";
    heartbeat(cluster, CHECK, n, 3, LONG_TTL).await;
    heartbeat(cluster, CHECK, m, 4, LONG_TTL).await;
    let claim = cluster.claim_owner(client, n).await;
    assert!(claim.is_ok(), "{CHECK}: claim_owner: {claim:?}");
    let entry = BusEntry::RoutesChanged { node: b(m) };
    apply(
        storage,
        CHECK,
        vec![
            add_route(n, "f/#"),
            add_route(m, "g/#"),
            set_presence(n, presence(client, 1, true)),
            forward(n, entry.clone()),
            forward(m, entry),
        ],
    )
    .await;

    forget(cluster, CHECK, n).await;
    assert_eq!(
        members(cluster, CHECK, prefix).await,
        vec![member(m, Some(4), 4)],
        "{CHECK}"
    );
    assert_eq!(
        routes_of(cluster, CHECK, prefix).await,
        vec![(b(m), vec![b("g/#")])],
        "{CHECK}"
    );
    assert_eq!(
        presence_of(cluster, CHECK, n).await,
        vec![],
        "{CHECK}: presence"
    );
    assert_eq!(
        inbox(cluster, CHECK, n, None, 10).await,
        vec![],
        "{CHECK}: inbox"
    );
    assert_eq!(
        inbox(cluster, CHECK, m, None, 10).await.len(),
        1,
        "{CHECK}: another inbox"
    );
    assert_eq!(
        owned(cluster, CHECK, n).await,
        Vec::<ByteStr>::new(),
        "{CHECK}: owned"
    );

    // Registered again by a heartbeat, with nothing of its former life.
    heartbeat(cluster, CHECK, n, 5, LONG_TTL).await;
    assert_eq!(
        members(cluster, CHECK, prefix).await,
        vec![member(m, Some(4), 4), member(n, Some(5), 5)],
        "{CHECK}: registered again"
    );
    assert_eq!(
        routes_of(cluster, CHECK, prefix).await,
        vec![(b(m), vec![b("g/#")])],
        "{CHECK}"
    );

    forget(cluster, CHECK, n).await;
    forget(cluster, CHECK, m).await;
    assert_eq!(
        members(cluster, CHECK, prefix).await,
        vec![],
        "{CHECK}: forgotten"
    );
    assert_eq!(
        inbox(cluster, CHECK, m, None, 10).await,
        vec![],
        "{CHECK}: inbox"
    );
}

/// Runs every cluster check in turn on `storage` and its `cluster`.
pub async fn run_cluster(storage: &dyn Storage, cluster: &dyn Cluster, sleep: &Sleep) {
    membership(storage, cluster, sleep).await;
    ownership(storage, cluster, sleep).await;
    inbox_order_and_ack(storage, cluster, sleep).await;
    routes(storage, cluster, sleep).await;
    presence_set_and_clear(storage, cluster, sleep).await;
    records_with_ttl(storage, cluster, sleep).await;
    logs_capped_newest_first(storage, cluster, sleep).await;
    forget_member_removes_everything(storage, cluster, sleep).await;
}
