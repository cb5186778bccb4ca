//! A bounded cache of positive authentication answers.
//!
//! Keyed by (username, salted SHA-256 of the password, client id): the
//! password itself is never kept. Entries live `ttl`; at `max_entries` the
//! expired entries are dropped first, then the one closest to expiry.
//! Only acceptances are cached, so a refusal always asks the service again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};

use super::AuthRequest;
use crate::sessions::lock;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    username: Option<String>,
    password: Option<[u8; 32]>,
    client_id: String,
}

pub(super) struct AuthCache {
    ttl: Duration,
    max_entries: usize,
    salt: [u8; 32],
    entries: Mutex<HashMap<Key, Instant>>,
}

impl AuthCache {
    pub(super) fn new(ttl: Duration, max_entries: usize) -> AuthCache {
        let mut salt = [0u8; 32];
        // Without randomness the hashes are merely unsalted.
        let _ = SystemRandom::new().fill(&mut salt);
        AuthCache {
            ttl,
            max_entries: max_entries.max(1),
            salt,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn key(&self, request: &AuthRequest) -> Key {
        let password = request.password.as_ref().map(|password| {
            let mut context = digest::Context::new(&digest::SHA256);
            context.update(&self.salt);
            context.update(password);
            let mut out = [0u8; 32];
            out.copy_from_slice(context.finish().as_ref());
            out
        });
        Key {
            username: request.username.clone(),
            password,
            client_id: request.client_id.clone(),
        }
    }

    /// Whether an unexpired acceptance of these credentials is cached.
    pub(super) fn hit(&self, request: &AuthRequest, now: Instant) -> bool {
        let key = self.key(request);
        let mut entries = lock(&self.entries);
        match entries.get(&key) {
            Some(expires) if *expires > now => true,
            Some(_) => {
                entries.remove(&key);
                false
            }
            None => false,
        }
    }

    /// Remembers an acceptance.
    pub(super) fn insert(&self, request: &AuthRequest, now: Instant) {
        let key = self.key(request);
        let mut entries = lock(&self.entries);
        if entries.len() >= self.max_entries && !entries.contains_key(&key) {
            entries.retain(|_, expires| *expires > now);
            if entries.len() >= self.max_entries {
                let soonest = entries
                    .iter()
                    .min_by_key(|(_, expires)| **expires)
                    .map(|(key, _)| key.clone());
                if let Some(soonest) = soonest {
                    entries.remove(&soonest);
                }
            }
        }
        entries.insert(key, now + self.ttl);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.entries).len()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use easy_mqtt_core::ProtocolVersion;

    use super::*;
    use crate::driver::Transport;

    fn request(user: &str, password: &[u8], client_id: &str) -> AuthRequest {
        AuthRequest {
            username: Some(user.into()),
            password: Some(Bytes::copy_from_slice(password)),
            client_id: client_id.into(),
            remote_address: None,
            protocol: ProtocolVersion::V3_1_1,
            transport: Transport::Tcp,
            client_cert_cn: None,
        }
    }

    #[test]
    fn hits_only_the_same_credentials_until_expiry() {
        let cache = AuthCache::new(Duration::from_secs(10), 100);
        let now = Instant::now();
        let a = request("u", b"p", "c");
        assert!(!cache.hit(&a, now));
        cache.insert(&a, now);
        assert!(cache.hit(&a, now + Duration::from_secs(9)));
        assert!(!cache.hit(&request("u", b"other", "c"), now));
        assert!(!cache.hit(&request("u", b"p", "other"), now));
        assert!(!cache.hit(&request("v", b"p", "c"), now));
        assert!(!cache.hit(&a, now + Duration::from_secs(10)));
        assert_eq!(cache.len(), 0, "an expired entry is removed when seen");
    }

    #[test]
    fn stays_within_its_size() {
        let cache = AuthCache::new(Duration::from_secs(10), 3);
        let now = Instant::now();
        for i in 0..10u64 {
            let at = now + Duration::from_millis(i);
            cache.insert(&request("u", b"p", &format!("c{i}")), at);
            assert!(cache.len() <= 3);
        }
        // The newest survive; the oldest (closest to expiry) went first.
        assert!(cache.hit(&request("u", b"p", "c9"), now));
        assert!(!cache.hit(&request("u", b"p", "c0"), now));
    }
}
