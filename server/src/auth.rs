//! Connect-time authentication.
//!
//! The node asks an [`Authenticator`] about every CONNECT before accepting
//! it. The trait is runtime-agnostic: it hands back a future that the
//! connection's driver polls in its own loop (no extra task, nothing
//! blocks), while the connection waits in its awaiting-decision state with
//! input paused. [`HttpAuthenticator`] is the implementation the broker
//! wires when `mqtt.server.authentication-url` is set: the original Easy
//! MQTT's contract (`POST` JSON, a body of `true` accepts) over a bounded
//! pool of keep-alive HTTP(S) connections, with a timeout and an optional
//! cache of positive answers.

mod cache;
mod http;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use easy_mqtt_core::{ConnectReturnCode, ProtocolVersion};

use crate::config::Config;
use crate::driver::Transport;

pub use http::{HttpAuthConfig, HttpAuthenticator};

/// What an authenticator is told about a CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthRequest {
    pub username: Option<String>,
    /// Binary in MQTT ([MQTT-3.1.3.5]); see [`AuthRequest::body`] for how
    /// it travels.
    pub password: Option<Bytes>,
    /// As sent by the client: empty when the client left it to the server
    /// (clean session), which assigns one only after acceptance.
    pub client_id: String,
    pub remote_address: Option<SocketAddr>,
    pub protocol: ProtocolVersion,
    pub transport: Transport,
    /// Common name of a verified TLS client certificate.
    pub client_cert_cn: Option<String>,
}

/// An authenticator's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthDecision {
    Accept,
    /// Refused with this CONNACK return code (never `Accepted`).
    Refuse(ConnectReturnCode),
}

/// Decides on CONNECTs. Runtime-agnostic: the future is polled by the
/// connection's driver; it must not block, and it is dropped unfinished
/// when the connection closes meanwhile. It must finish in bounded time
/// (the connection waits for it, with no deadline of its own).
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate(
        &self,
        request: AuthRequest,
    ) -> Pin<Box<dyn Future<Output = AuthDecision> + Send>>;
}

/// The authenticator the configuration asks for: [`HttpAuthenticator`]
/// when `authentication-url` is set, none otherwise. Connection tasks run
/// on `executor`.
pub fn from_config(
    config: &Config,
    executor: Arc<async_executor::Executor<'static>>,
) -> Result<Option<Arc<dyn Authenticator>>, String> {
    let server = &config.mqtt.server;
    if server.authentication_url.is_empty() {
        return Ok(None);
    }
    let http = HttpAuthConfig {
        url: server.authentication_url.clone(),
        timeout: Duration::from_millis(u64::from(server.authentication_timeout)),
        max_connections: server.authentication_max_connections as usize,
        cache_ttl: Duration::from_secs(u64::from(server.authentication_cache_ttl)),
        ca_path: (!server.authentication_ca_path.is_empty())
            .then(|| PathBuf::from(&server.authentication_ca_path)),
    };
    let authenticator = HttpAuthenticator::new(&http, executor)?;
    tracing::info!(
        url = %http.url,
        timeout_ms = http.timeout.as_millis() as u64,
        max_connections = http.max_connections,
        cache_ttl_s = http.cache_ttl.as_secs(),
        "connect-time authentication on"
    );
    Ok(Some(Arc::new(authenticator)))
}

/// The JSON body sent to the authentication service. Field order is the
/// wire order: the original's two fields first, unchanged.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct AuthBody<'a> {
    username: Option<&'a str>,
    password: Option<&'a str>,
    client_id: &'a str,
    remote_address: Option<String>,
    protocol: String,
    transport: &'static str,
    client_cert_cn: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    password_base64: Option<String>,
}

impl AuthRequest {
    /// The JSON body of the HTTP call:
    ///
    /// `{"username", "password", "clientId", "remoteAddress", "protocol",
    /// "transport", "clientCertCn"}`. Absent values are `null`. MQTT
    /// passwords are bytes while the original sent a string: a password
    /// that is valid UTF-8 is sent as that string; one that is not is sent
    /// as `"password": null` plus `"passwordBase64"` with its exact bytes
    /// (never a lossy conversion, which could make two passwords equal).
    pub fn body(&self) -> Vec<u8> {
        let password_text = self
            .password
            .as_ref()
            .and_then(|p| std::str::from_utf8(p).ok());
        let password_base64 = match (&self.password, password_text) {
            (Some(raw), None) => Some(base64::engine::general_purpose::STANDARD.encode(raw)),
            _ => None,
        };
        let body = AuthBody {
            username: self.username.as_deref(),
            password: password_text,
            client_id: &self.client_id,
            remote_address: self.remote_address.map(|a| a.to_string()),
            protocol: self.protocol.to_string(),
            transport: self.transport.as_str(),
            client_cert_cn: self.client_cert_cn.as_deref(),
            password_base64,
        };
        // Serializing strings and options cannot fail.
        serde_json::to_vec(&body).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(password: Option<&[u8]>) -> AuthRequest {
        AuthRequest {
            username: Some("dev".into()),
            password: password.map(Bytes::copy_from_slice),
            client_id: "c1".into(),
            remote_address: Some("127.0.0.1:4000".parse().unwrap_or_else(|e| panic!("{e}"))),
            protocol: ProtocolVersion::V3_1_1,
            transport: Transport::Tcp,
            client_cert_cn: None,
        }
    }

    #[test]
    fn body_keeps_the_originals_fields_first() {
        let body = String::from_utf8(request(Some(b"s3cret")).body()).unwrap_or_default();
        assert_eq!(
            body,
            r#"{"username":"dev","password":"s3cret","clientId":"c1","remoteAddress":"127.0.0.1:4000","protocol":"3.1.1","transport":"tcp","clientCertCn":null}"#
        );
    }

    #[test]
    fn binary_password_travels_as_base64_only() {
        let body = String::from_utf8(request(Some(&[0xFF, 0x00])).body()).unwrap_or_default();
        assert!(
            body.starts_with(r#"{"username":"dev","password":null,"#),
            "{body}"
        );
        assert!(body.ends_with(r#""passwordBase64":"/wA="}"#), "{body}");
        let body = String::from_utf8(request(None).body()).unwrap_or_default();
        assert!(body.contains(r#""password":null"#), "{body}");
        assert!(!body.contains("passwordBase64"), "{body}");
    }
}
