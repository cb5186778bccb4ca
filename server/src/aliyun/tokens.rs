//! Tokens of the token authentication mode: applied and revoked through
//! the HTTP API, checked on CONNECT, SUBSCRIBE and PUBLISH.
//!
//! A token lives in storage (space `aliyun-token`, see [`super::store`]),
//! so every node sees it and it survives a restart: applying it answers
//! only once it is stored, a CONNECT reads it from storage, and a token
//! storage cannot answer for refuses the CONNECT with return code 3.
//! Each node keeps a cache ([`TokenStore`]) of the tokens its connections
//! use, for SUBSCRIBE and PUBLISH, and checks those against storage every
//! [`TOKEN_RECHECK`]: a token revoked on another node is gone from storage,
//! so within that interval its users here get `$SYS/tokenInvalidNotice`
//! and are disconnected. A check that fails leaves the cache as it was.
//!
//! Times are milliseconds since the Unix epoch, passed in by the caller, so
//! that expiry is tested with a virtual clock.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use easy_mqtt_core::storage::StorageError;
use ring::rand::{SecureRandom, SystemRandom};

use super::store::{TOKEN_SPACE, decode};
use super::{Aliyun, now_ms};
use crate::sessions::lock;

/// How often a node checks the tokens its connections use against storage:
/// the longest a revocation on another node takes to reach them.
pub const TOKEN_RECHECK: Duration = Duration::from_secs(3);
/// How long an expired token stays in storage (its time to live is the
/// expiry plus this): until then it is reported as expired, not unknown.
pub const KEEP_EXPIRED_MS: u64 = 3_600_000;
/// How long a token no connection uses stays in a node's cache.
const CACHE_KEEP_MS: u64 = 60_000;

/// One applied token, as stored (JSON).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
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

/// Why a token could not be applied through the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// A bad request (400).
    Invalid(ApplyError),
    /// Not stored (503): nothing was applied.
    Storage(StorageError),
}

#[derive(Debug, Clone)]
struct Cached {
    token: Token,
    /// When storage last confirmed it (ms since the epoch).
    checked_ms: u64,
}

/// A node's cache of tokens: those its connections use, and those it
/// applied or read recently.
#[derive(Debug, Default)]
pub struct TokenStore {
    tokens: Mutex<HashMap<String, Cached>>,
}

impl TokenStore {
    /// Checks a token request and makes up the token (nothing is kept).
    /// `min`/`max`: the allowed validity, ms from `now_ms`.
    pub fn mint(
        resources: Vec<String>,
        read: bool,
        write: bool,
        expire_time: u64,
        now_ms: u64,
        (min, max): (u64, u64),
    ) -> Result<(String, Token), ApplyError> {
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
        let name = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let token = Token {
            resources,
            read,
            write,
            expire_time,
        };
        Ok((name, token))
    }

    /// [`TokenStore::mint`], kept in this cache only (tests of the
    /// periodic check).
    pub fn apply(
        &self,
        resources: Vec<String>,
        read: bool,
        write: bool,
        expire_time: u64,
        now_ms: u64,
        limits: (u64, u64),
    ) -> Result<String, ApplyError> {
        let (name, token) = TokenStore::mint(resources, read, write, expire_time, now_ms, limits)?;
        self.insert(name.clone(), token, now_ms);
        Ok(name)
    }

    /// Caches a token storage confirmed at `checked_ms`.
    pub fn insert(&self, name: String, token: Token, checked_ms: u64) {
        lock(&self.tokens).insert(name, Cached { token, checked_ms });
    }

    /// The token if it is cached and has not expired.
    pub fn get_valid(&self, token: &str, now_ms: u64) -> Option<Token> {
        lock(&self.tokens)
            .get(token)
            .filter(|c| c.token.is_valid(now_ms))
            .map(|c| c.token.clone())
    }

    /// The token if it is cached and storage confirmed it at most
    /// `max_age_ms` before `now_ms`.
    pub fn get_fresh(&self, token: &str, now_ms: u64, max_age_ms: u64) -> Option<Token> {
        lock(&self.tokens)
            .get(token)
            .filter(|c| now_ms.saturating_sub(c.checked_ms) <= max_age_ms)
            .map(|c| c.token.clone())
    }

    /// The token as cached, expired or not.
    pub fn get(&self, token: &str) -> Option<Token> {
        lock(&self.tokens).get(token).map(|c| c.token.clone())
    }

    /// Forgets a token; whether it was cached.
    pub fn revoke(&self, token: &str) -> bool {
        lock(&self.tokens).remove(token).is_some()
    }

    /// Forgets tokens that expired before `before_ms`.
    pub fn purge(&self, before_ms: u64) {
        lock(&self.tokens).retain(|_, c| c.token.expire_time >= before_ms);
    }

    /// Forgets the tokens not in `in_use` that storage last confirmed
    /// before `checked_before`.
    fn evict(&self, in_use: &HashSet<String>, checked_before: u64) {
        lock(&self.tokens)
            .retain(|name, c| in_use.contains(name) || c.checked_ms >= checked_before);
    }
}

impl Aliyun {
    /// Applies a token: answers once it is stored, with its name.
    pub async fn apply_token(
        &self,
        resources: Vec<String>,
        read: bool,
        write: bool,
        expire_time: u64,
    ) -> Result<String, TokenError> {
        let now = now_ms();
        let (name, token) = TokenStore::mint(
            resources,
            read,
            write,
            expire_time,
            now,
            self.token_limits(),
        )
        .map_err(TokenError::Invalid)?;
        let ttl = Duration::from_millis(
            expire_time
                .saturating_sub(now)
                .saturating_add(KEEP_EXPIRED_MS),
        );
        let value = serde_json::to_vec(&token).unwrap_or_default();
        (self.shared().map_err(TokenError::Storage)?)
            .put(TOKEN_SPACE, &name, value, Some(ttl))
            .await
            .map_err(TokenError::Storage)?;
        self.tokens.insert(name.clone(), token, now);
        Ok(name)
    }

    /// Revokes a token everywhere: whether storage had it.
    pub async fn revoke_token(&self, name: &str) -> Result<bool, StorageError> {
        let shared = self.shared()?;
        let existed = shared.get(TOKEN_SPACE, name).await?.is_some();
        shared.delete(TOKEN_SPACE, name).await?;
        // This node's users learn it at the next tick; other nodes at
        // their next check.
        self.tokens.revoke(name);
        Ok(existed)
    }

    /// The token as stored (expired for up to [`KEEP_EXPIRED_MS`]), and
    /// caches what it read.
    pub async fn fetch_token(&self, name: &str) -> Result<Option<Token>, StorageError> {
        let now = now_ms();
        match self.shared()?.get(TOKEN_SPACE, name).await? {
            Some(bytes) => {
                let token: Token = decode(TOKEN_SPACE, name, &bytes)?;
                self.tokens.insert(name.to_owned(), token.clone(), now);
                Ok(Some(token))
            }
            None => {
                self.tokens.revoke(name);
                Ok(None)
            }
        }
    }

    /// Checks the tokens this node's connections use against storage (see
    /// the module documentation); a token gone from storage leaves the
    /// cache, and the next tick notifies and disconnects its users.
    pub(super) async fn recheck_tokens(&self) {
        let in_use = self.tokens_in_use();
        let mut failed = 0usize;
        for name in &in_use {
            if let Err(error) = self.fetch_token(name).await {
                failed += 1;
                if failed == 1 {
                    tracing::warn!(%error, "cannot check the tokens in use against storage; keeping them for now");
                }
            }
        }
        self.tokens
            .evict(&in_use, now_ms().saturating_sub(CACHE_KEEP_MS));
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
