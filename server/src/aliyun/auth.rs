//! CONNECT checks of the Alibaba Cloud mode: client ids, signature, token
//! and custom-identity user names, and the authenticator that puts them in
//! front of the HTTP one.
//!
//! Order: a user name that starts with `Signature|` or `Token|`, or that
//! is a configured custom identity, is decided here and never sent to the
//! authentication URL. Any other CONNECT goes to the authentication URL
//! when one is set, and is accepted otherwise (as without this mode).
//!
//! A token-mode CONNECT reads its tokens from storage ([`super::tokens`]):
//! when storage cannot answer, it is refused with return code 3 (server
//! unavailable), never accepted unchecked.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use base64::Engine;
use easy_mqtt_core::ConnectReturnCode;
use ring::hmac;

use super::Aliyun;
use crate::auth::{AuthDecision, AuthRequest, Authenticator};
use crate::config::AliyunSignMode;

/// `Base64(HMAC-SHA1(secret, client_id))`, as Alibaba Cloud's samples compute it.
pub fn sign(secret: &str, client_id: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(hmac::sign(&key, client_id.as_bytes()))
}

/// Checks `password` against the signature of `client_id`, in constant time.
fn signature_ok(secret: &str, client_id: &str, password: &[u8]) -> bool {
    let Ok(tag) = base64::engine::general_purpose::STANDARD.decode(password) else {
        return false;
    };
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    hmac::verify(&key, client_id.as_bytes(), &tag).is_ok()
}

/// Equality whose time does not depend on where the bytes differ.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn group_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// `GroupID@@@DeviceID`: at most 64 characters; the group starts with
/// `GID_` or `GID-` and has 7 to 64 letters, digits, `-` and `_`; the
/// device id is not empty and uses the same characters.
pub fn check_client_id(client_id: &str) -> Result<(), &'static str> {
    if client_id.len() > 64 {
        return Err("client id longer than 64 characters");
    }
    let Some((group, device)) = client_id.split_once("@@@") else {
        return Err("client id is not GroupID@@@DeviceID");
    };
    if !(group.starts_with("GID_") || group.starts_with("GID-")) {
        return Err("group id does not start with GID_ or GID-");
    }
    if group.len() < 7 || !group.chars().all(group_char) {
        return Err("group id must be 7 to 64 letters, digits, - or _");
    }
    if device.is_empty() || !device.chars().all(group_char) {
        return Err("device id must be letters, digits, - or _");
    }
    Ok(())
}

/// What the password of a token-mode CONNECT names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenPair {
    pub read: Option<String>,
    pub write: Option<String>,
}

/// `R|token`, `W|token`, `R|token|W|token` (either order).
pub fn parse_token_password(password: &str) -> Option<TokenPair> {
    let parts: Vec<&str> = password.split('|').collect();
    if parts.len() != 2 && parts.len() != 4 {
        return None;
    }
    let mut pair = TokenPair::default();
    for chunk in parts.chunks(2) {
        let (kind, token) = (chunk[0], chunk[1]);
        if token.is_empty() {
            return None;
        }
        let slot = match kind {
            "R" => &mut pair.read,
            "W" => &mut pair.write,
            _ => return None,
        };
        if slot.replace(token.to_owned()).is_some() {
            return None;
        }
    }
    Some(pair)
}

/// Which Alibaba Cloud form a user name has, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode<'a> {
    Signature {
        key_id: &'a str,
        instance: &'a str,
    },
    Token {
        key_id: &'a str,
        instance: &'a str,
    },
    Identity,
    /// Starts with `Signature|` or `Token|` but is not three fields.
    Malformed,
}

impl Aliyun {
    /// The form of `username`, `None` for a user name this mode does not decide.
    pub fn mode<'a>(&self, username: &'a str) -> Option<Mode<'a>> {
        let fields: Vec<&str> = username.split('|').collect();
        match fields.as_slice() {
            ["Signature", key_id, instance] => Some(Mode::Signature { key_id, instance }),
            ["Token", key_id, instance] => Some(Mode::Token { key_id, instance }),
            ["Signature" | "Token", ..] => Some(Mode::Malformed),
            _ if self.identities.contains_key(username) => Some(Mode::Identity),
            _ => None,
        }
    }

    /// The decision on a CONNECT, `None` when its user name is not one this
    /// mode decides; [`Verdict::Tokens`] when it depends on tokens, which
    /// [`Aliyun::check_tokens`] reads. Refusals are logged with the reason
    /// (never a secret).
    pub fn decide(&self, request: &AuthRequest) -> Option<Verdict> {
        let username = request.username.as_deref()?;
        let mode = self.mode(username)?;
        let client_id = request.client_id.as_str();
        let password = request.password.as_deref().unwrap_or_default();
        let refuse = |code: ConnectReturnCode, reason: &str| {
            Some(Verdict::Done(refused(request, code, reason)))
        };
        let bad = ConnectReturnCode::BadUserNameOrPassword;
        if let Err(reason) = check_client_id(client_id) {
            return refuse(ConnectReturnCode::IdentifierRejected, reason);
        }
        let (key_id, instance, token_mode) = match mode {
            Mode::Malformed => return refuse(bad, "user name is not Mode|AccessKeyId|InstanceId"),
            Mode::Identity => {
                let Some((secret, sign_mode)) = self.identities.get(username) else {
                    return refuse(bad, "unknown identity");
                };
                let ok = match sign_mode {
                    AliyunSignMode::Origin => same_bytes(password, secret.as_bytes()),
                    AliyunSignMode::Signed => signature_ok(secret, client_id, password),
                };
                return if ok {
                    tracing::debug!(client_id, username, "aliyun identity accepted");
                    Some(Verdict::Done(AuthDecision::Accept))
                } else {
                    refuse(bad, "wrong password for the custom identity")
                };
            }
            Mode::Signature { key_id, instance } => (key_id, instance, false),
            Mode::Token { key_id, instance } => (key_id, instance, true),
        };
        if instance != self.config.instance_id {
            return refuse(bad, "wrong instance id");
        }
        let Some(secret) = self.keys.get(key_id) else {
            return refuse(bad, "unknown access key id");
        };
        if !token_mode {
            return if signature_ok(secret, client_id, password) {
                tracing::debug!(client_id, username, "aliyun signature accepted");
                Some(Verdict::Done(AuthDecision::Accept))
            } else {
                refuse(bad, "bad signature")
            };
        }
        let Some(pair) = std::str::from_utf8(password)
            .ok()
            .and_then(parse_token_password)
        else {
            return refuse(bad, "password is not R|token, W|token or R|token|W|token");
        };
        Some(Verdict::Tokens(pair))
    }

    /// The decision on a token-mode CONNECT whose tokens are `pair`, read
    /// from storage at `now_ms`.
    pub async fn check_tokens(
        &self,
        request: &AuthRequest,
        pair: TokenPair,
        now_ms: u64,
    ) -> AuthDecision {
        let bad = ConnectReturnCode::BadUserNameOrPassword;
        for (name, wanted, read) in [("R", &pair.read, true), ("W", &pair.write, false)] {
            let Some(wanted) = wanted else { continue };
            let token = match self.fetch_token(wanted).await {
                Ok(Some(token)) if token.is_valid(now_ms) => token,
                Ok(_) => {
                    return refused(
                        request,
                        bad,
                        &format!("{name} token unknown, revoked or expired"),
                    );
                }
                Err(error) => {
                    return refused(
                        request,
                        ConnectReturnCode::ServerUnavailable,
                        &format!("the {name} token cannot be checked: {error}"),
                    );
                }
            };
            if (read && !token.read) || (!read && !token.write) {
                return refused(
                    request,
                    ConnectReturnCode::NotAuthorized,
                    &format!("the {name} token does not grant {name}"),
                );
            }
        }
        tracing::debug!(
            client_id = request.client_id,
            username = request.username,
            "aliyun token accepted"
        );
        AuthDecision::Accept
    }
}

/// What [`Aliyun::decide`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Done(AuthDecision),
    /// Well-formed token mode: the tokens decide.
    Tokens(TokenPair),
}

/// Logs a refusal with its reason and returns it.
fn refused(request: &AuthRequest, code: ConnectReturnCode, reason: &str) -> AuthDecision {
    tracing::info!(
        client_id = request.client_id,
        username = request.username,
        peer = ?request.remote_address,
        code = code as u8,
        "aliyun authentication refused: {reason}"
    );
    AuthDecision::Refuse(code)
}

/// The Alibaba Cloud checks in front of an optional fallback (the HTTP
/// authenticator); see the module documentation for the order.
pub struct AliyunAuthenticator {
    pub aliyun: Arc<Aliyun>,
    pub fallback: Option<Arc<dyn Authenticator>>,
}

impl Authenticator for AliyunAuthenticator {
    fn authenticate(
        &self,
        request: AuthRequest,
    ) -> Pin<Box<dyn Future<Output = AuthDecision> + Send>> {
        match self.aliyun.decide(&request) {
            Some(Verdict::Done(decision)) => return Box::pin(std::future::ready(decision)),
            Some(Verdict::Tokens(pair)) => {
                let aliyun = self.aliyun.clone();
                return Box::pin(async move {
                    aliyun.check_tokens(&request, pair, super::now_ms()).await
                });
            }
            None => {}
        }
        match &self.fallback {
            Some(fallback) => fallback.authenticate(request),
            None => Box::pin(std::future::ready(AuthDecision::Accept)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids() {
        assert!(check_client_id("GID_test@@@dev-1").is_ok());
        assert!(check_client_id("GID-abc@@@d").is_ok());
        assert!(check_client_id("GID_ab@@@d").is_err()); // group too short
        assert!(check_client_id("XID_test@@@d").is_err());
        assert!(check_client_id("GID_test@@@").is_err());
        assert!(check_client_id("GID_test").is_err());
        assert!(check_client_id("GID_te st@@@d").is_err());
        assert!(check_client_id(&format!("GID_test@@@{}", "d".repeat(60))).is_err());
    }

    #[test]
    fn token_passwords() {
        let pair = parse_token_password("R|a|W|b").unwrap_or_default();
        assert_eq!(pair.read.as_deref(), Some("a"));
        assert_eq!(pair.write.as_deref(), Some("b"));
        assert!(parse_token_password("R|a|R|b").is_none());
        assert!(parse_token_password("X|a").is_none());
        assert!(parse_token_password("R|").is_none());
        assert!(parse_token_password("R|a|W").is_none());
    }

    #[test]
    fn signature_matches_the_samples() {
        // HMAC-SHA1("secret", "GID_test@@@dev-1"), base64.
        let signature = sign("secret", "GID_test@@@dev-1");
        assert!(signature_ok(
            "secret",
            "GID_test@@@dev-1",
            signature.as_bytes()
        ));
        assert!(!signature_ok(
            "other",
            "GID_test@@@dev-1",
            signature.as_bytes()
        ));
        assert_eq!(signature.len(), 28);
    }
}
