//! Tokens of the token authentication mode: applied and revoked through
//! the HTTP API, checked on CONNECT, SUBSCRIBE and PUBLISH.
//!
//! Times are milliseconds since the Unix epoch, passed in by the caller, so
//! that expiry is tested with a virtual clock. The store lives in the node
//! (see the module documentation of `aliyun` for what a cluster needs).

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};

use crate::sessions::lock;

/// One applied token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// Topic filters (wildcards allowed) the rights apply to.
    pub resources: Vec<String>,
    pub read: bool,
    pub write: bool,
    /// Expiry, ms since the Unix epoch.
    pub expire_time: u64,
}

impl Token {
    pub fn is_valid(&self, now_ms: u64) -> bool {
        now_ms < self.expire_time
    }

    /// Whether a PUBLISH to `topic` is within the resources.
    pub fn allows_topic(&self, topic: &str) -> bool {
        self.resources.iter().any(|r| filter_covers(r, topic))
    }

    /// Whether a subscription to `filter` stays within the resources.
    pub fn allows_filter(&self, filter: &str) -> bool {
        self.resources.iter().any(|r| filter_covers(r, filter))
    }
}

/// Whether every topic matched by `inner` (a name or a filter) is matched
/// by the filter `outer`. A topic name is the filter that matches itself.
pub fn filter_covers(outer: &str, inner: &str) -> bool {
    let mut o = outer.split('/');
    let mut i = inner.split('/');
    // The `$` rule: a wildcard at the first level does not match `$` topics.
    if inner.starts_with('$') && (outer.starts_with('+') || outer.starts_with('#')) {
        return false;
    }
    loop {
        match (o.next(), i.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(level)) if level != "#" => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Why a token could not be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyError(pub String);

/// The tokens applied and not yet revoked or purged.
#[derive(Debug, Default)]
pub struct TokenStore {
    tokens: Mutex<HashMap<String, Token>>,
}

impl TokenStore {
    /// Issues a token. `min`/`max`: the allowed validity, ms from `now_ms`.
    pub fn apply(
        &self,
        resources: Vec<String>,
        read: bool,
        write: bool,
        expire_time: u64,
        now_ms: u64,
        (min, max): (u64, u64),
    ) -> Result<String, ApplyError> {
        if resources.is_empty() {
            return Err(ApplyError("resources must name at least one topic".into()));
        }
        for resource in &resources {
            if easy_mqtt_core::topic::validate_topic_filter(resource).is_err() {
                return Err(ApplyError(format!(
                    "resource {resource:?} is not a valid topic or topic filter"
                )));
            }
        }
        if !read && !write {
            return Err(ApplyError("actions must be R, W or R,W".into()));
        }
        let validity = expire_time.saturating_sub(now_ms);
        if validity < min || validity > max {
            return Err(ApplyError(format!(
                "expireTime must be between {} s and {} s from now (ms since the epoch), got {} ms from now",
                min / 1000,
                max / 1000,
                expire_time as i128 - now_ms as i128
            )));
        }
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| ApplyError("no randomness available".into()))?;
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        lock(&self.tokens).insert(
            token.clone(),
            Token {
                resources,
                read,
                write,
                expire_time,
            },
        );
        Ok(token)
    }

    /// The token if it exists and has not expired.
    pub fn get_valid(&self, token: &str, now_ms: u64) -> Option<Token> {
        lock(&self.tokens)
            .get(token)
            .filter(|t| t.is_valid(now_ms))
            .cloned()
    }

    /// The token as stored, expired or not.
    pub fn get(&self, token: &str) -> Option<Token> {
        lock(&self.tokens).get(token).cloned()
    }

    /// Whether there was such a token.
    pub fn revoke(&self, token: &str) -> bool {
        lock(&self.tokens).remove(token).is_some()
    }

    /// Forgets tokens that expired before `before_ms`.
    pub fn purge(&self, before_ms: u64) {
        lock(&self.tokens).retain(|_, t| t.expire_time >= before_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: (u64, u64) = (60_000, 30 * 86_400_000);

    #[test]
    fn covers() {
        assert!(filter_covers("a/#", "a/b/c"));
        assert!(filter_covers("a/#", "a"));
        assert!(filter_covers("a/#", "a/+"));
        assert!(filter_covers("a/+", "a/b"));
        assert!(!filter_covers("a/+", "a/#"));
        assert!(!filter_covers("a/+", "a/b/c"));
        assert!(filter_covers("a/b", "a/b"));
        assert!(!filter_covers("a/b", "a/+"));
        assert!(!filter_covers("#", "$SYS/x"));
        assert!(filter_covers("$SYS/#", "$SYS/x"));
    }

    #[test]
    fn apply_checks_validity_and_expiry_follows_the_clock() {
        let store = TokenStore::default();
        let now = 1_000_000;
        let short = store.apply(vec!["a/#".into()], true, false, now + 59_999, now, LIMITS);
        assert!(short.is_err());
        let long = store.apply(
            vec!["a/#".into()],
            true,
            false,
            now + 31 * 86_400_000,
            now,
            LIMITS,
        );
        assert!(long.is_err());
        assert!(
            store
                .apply(vec![], true, false, now + 60_000, now, LIMITS)
                .is_err()
        );
        assert!(
            store
                .apply(vec!["a/#/b".into()], true, false, now + 60_000, now, LIMITS)
                .is_err()
        );
        let token = store
            .apply(vec!["a/#".into()], true, false, now + 60_000, now, LIMITS)
            .unwrap_or_default();
        assert!(store.get_valid(&token, now + 59_999).is_some());
        assert!(store.get_valid(&token, now + 60_000).is_none());
        store.purge(now + 60_001);
        assert!(store.get(&token).is_none());
    }
}
