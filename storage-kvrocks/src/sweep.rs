//! The sweeper of leaked bodies: `P:m:<id>` hashes left with their `b`
//! field only (no holder) by a batch cut short (see the crate
//! documentation, "Assumptions").
//!
//! A round asks `SCAN … MATCH P:m:* COUNT` for about a given number of
//! keys (on every primary of a cluster in turn) and continues where the
//! last round stopped; a body is deleted only when its id is older than the
//! grace period (ids are time based: the sequence is the minting node's
//! wall clock in µs kept to 48 bits, or a little less) and a read finds it with its `b`
//! field only. A body is stored and enqueued in one batch (retried for
//! seconds at most) and never enqueued again once its last holder is gone,
//! so a body that old with no holder can no longer gain one.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use easy_mqtt_core::storage::{MessageId, StorageError};

use crate::conn::{Command, Redis, ScanNode};
use crate::keys::{BODY_FIELD, Keys};
use crate::reply;

/// Where the sweep stands between rounds.
#[derive(Debug, Default)]
pub(crate) struct SweepCursor {
    /// The nodes of the pass under way (listed at its start), the one being
    /// scanned, and its SCAN cursor. `None`: no pass under way.
    pass: Option<(Vec<ScanNode>, usize, Vec<u8>)>,
}

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepRound {
    /// Body keys looked at.
    pub examined: usize,
    /// Leaked bodies deleted.
    pub deleted: usize,
    /// The round finished a pass over every node (the next round starts a
    /// new one).
    pub pass_complete: bool,
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `SCAN MATCH` pattern of the body keys: the prefix with glob characters
/// escaped.
fn pattern(keys: &Keys) -> String {
    let mut pattern = String::new();
    for c in keys.prefix().chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push_str(":m:*");
    pattern
}

/// Whether `id` was minted more than `grace` µs before `now` (µs since the
/// epoch). Sequences are the wall clock in µs kept to 48 bits, so they wrap
/// every 8.9 years: the age is taken modulo 2^48, and an age over half of
/// that range is a sequence ahead of the clock (a node minting fast, or
/// clocks apart), never old.
fn older_than(id: MessageId, now: u64, grace: u64) -> bool {
    const MASK: u64 = (1 << 48) - 1;
    let age = (now & MASK).wrapping_sub(id.sequence()) & MASK;
    age > grace && age < (1 << 47)
}

/// The message id of a body key, if it is one.
fn body_id(keys: &Keys, key: &[u8]) -> Option<MessageId> {
    let key = std::str::from_utf8(key).ok()?;
    let hex = key.strip_prefix(keys.prefix())?.strip_prefix(":m:")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok().map(MessageId)
}

pub(crate) async fn round(
    redis: &Redis,
    keys: &Keys,
    cursor: &mut SweepCursor,
    grace: Duration,
    budget: usize,
) -> Result<SweepRound, StorageError> {
    let mut done = SweepRound::default();
    let pattern = pattern(keys);
    let grace = u64::try_from(grace.as_micros()).unwrap_or(u64::MAX);
    let now = now_micros();
    // SCAN visits about COUNT keys of the keyspace per call, matching or
    // not: the calls are bounded too, so a round is bounded in work.
    let count = budget.clamp(10, 1000);
    let mut pages = budget.max(1).div_ceil(count);
    while done.examined < budget.max(1) && pages > 0 {
        pages -= 1;
        let (nodes, node, position) = match &mut cursor.pass {
            Some(pass) => pass,
            None => cursor
                .pass
                .insert((redis.scan_nodes().await?, 0, b"0".to_vec())),
        };
        let Some(target) = nodes.get(*node) else {
            cursor.pass = None;
            done.pass_complete = true;
            break;
        };
        let (next, page) = redis
            .scan_page(target, position, &pattern, count, redis.deadline())
            .await?;
        if next == b"0" {
            *node += 1;
            *position = b"0".to_vec();
        } else {
            *position = next;
        }
        done.examined += page.len();
        let old: Vec<String> = page
            .iter()
            .filter_map(|key| body_id(keys, key))
            .filter(|id| older_than(*id, now, grace))
            .map(|id| keys.body(id))
            .collect();
        let checks: Vec<Command> = old
            .iter()
            .flat_map(|key| {
                [
                    Command::new("HLEN", key),
                    Command::new("HEXISTS", key).arg(BODY_FIELD),
                ]
            })
            .collect();
        let answers = redis.run(&checks, redis.deadline()).await?;
        let mut deletes = Vec::new();
        for (key, answer) in old.iter().zip(answers.chunks(2)) {
            let [fields, has_body] = answer else {
                continue;
            };
            if reply::int(key, fields)? == 1 && reply::int(key, has_body)? == 1 {
                deletes.push(Command::new("DEL", key));
            }
        }
        // SCAN may return a key twice: count what DEL removed.
        for (command, answer) in deletes
            .iter()
            .zip(redis.run(&deletes, redis.deadline()).await?)
        {
            done.deleted += usize::try_from(reply::int(&command.key, &answer)?).unwrap_or(0);
        }
    }
    if done.deleted > 0 {
        tracing::info!(
            deleted = done.deleted,
            "kvrocks: leaked message bodies deleted"
        );
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_is_taken_modulo_the_sequence_range() {
        let grace = 600_000_000;
        let now = 0x0006_2000_0000_0000_u64; // past 2^48 µs, like today
        let at = |micros_ago: u64| MessageId::new(7, now - micros_ago);
        assert!(older_than(at(grace + 1), now, grace));
        assert!(!older_than(at(grace - 1), now, grace));
        assert!(!older_than(at(0), now, grace));
        // Ahead of the clock: young.
        assert!(!older_than(
            MessageId::new(7, (now + 5) & ((1 << 48) - 1)),
            now,
            grace
        ));
        // Just after the 48-bit wrap, an id minted before it is old.
        let wrapped = (1u64 << 48) + 10;
        assert!(older_than(
            MessageId::new(7, (1 << 48) - grace - 100),
            wrapped,
            grace
        ));
    }
}
