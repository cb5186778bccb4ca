//! The rules checked after parsing: ranges, TLS, authentication and API
//! keys, Kvrocks nodes. Each error names its key and, for a value from a
//! text, its line.

use super::*;

impl Config {
    /// The TLS rules: a certificate when a listener speaks TLS, a client CA
    /// exactly when client certificates are asked for.
    fn check_tls(&self, spans: &Spans) -> Result<(), ConfigError> {
        // `key` is wrong; the line shown is that of `at` (the key that
        // made it wrong, when `key` itself is not in the text).
        let fail = |key: &str, at: &str, message: String| {
            let position = [key, at]
                .iter()
                .find_map(|k| spans.get(*k).copied())
                .and_then(Position::from_location);
            Err(ConfigError::invalid(key, position, message))
        };
        let server = &self.mqtt.server;
        if self.uses_tls() && server.ssl_certificate_path.is_empty() {
            let (why, at) = if server.is_open_ssl {
                ("is-open-ssl is true", "mqtt.server.is-open-ssl")
            } else if server.tls_port != 0 {
                ("tls-port is set", "mqtt.server.tls-port")
            } else {
                ("wss-port is set", "mqtt.server.wss-port")
            };
            return fail(
                "mqtt.server.ssl-certificate-path",
                at,
                format!(
                    "required because {why}: a PKCS#12 (.pfx/.p12) file with ssl-certificate-password, or a PEM certificate chain with ssl-key-path"
                ),
            );
        }
        let auth = server.ssl_client_auth;
        if auth != SslClientAuth::None && server.ssl_client_ca_path.is_empty() {
            return fail(
                "mqtt.server.ssl-client-auth",
                "mqtt.server.ssl-client-auth",
                format!(
                    "`{auth}` needs ssl-client-ca-path (the PEM CA bundle client certificates are checked against)"
                ),
            );
        }
        if auth == SslClientAuth::None && !server.ssl_client_ca_path.is_empty() {
            return fail(
                "mqtt.server.ssl-client-ca-path",
                "mqtt.server.ssl-client-ca-path",
                "is set, but ssl-client-auth is `none`: set ssl-client-auth to `optional` or `required` to verify client certificates, or remove this key".to_owned(),
            );
        }
        Ok(())
    }

    /// The rules of the authentication and HTTP API keys.
    fn check_auth_api(
        &self,
        fail: &dyn Fn(&str, String) -> Result<(), ConfigError>,
    ) -> Result<(), ConfigError> {
        let server = &self.mqtt.server;
        if server.authentication_timeout == 0 {
            return fail(
                "mqtt.server.authentication-timeout",
                "must be at least 1 (milliseconds), got 0".to_owned(),
            );
        }
        if server.authentication_max_connections == 0 {
            return fail(
                "mqtt.server.authentication-max-connections",
                "must be at least 1, got 0".to_owned(),
            );
        }
        let ca = &server.authentication_ca_path;
        if !ca.is_empty() && !server.authentication_url.starts_with("https://") {
            return fail(
                "mqtt.server.authentication-ca-path",
                "is set, but authentication-url is not an https:// URL".to_owned(),
            );
        }
        if server.api_username.is_empty() != server.api_password.is_empty() {
            let key = if server.api_username.is_empty() {
                "mqtt.server.api-password"
            } else {
                "mqtt.server.api-username"
            };
            return fail(
                key,
                "api-username and api-password go together: set both or neither".to_owned(),
            );
        }
        if server.api_username.contains(':') {
            return fail(
                "mqtt.server.api-username",
                "must not contain ':' (HTTP basic credentials are user:password)".to_owned(),
            );
        }
        if server.api_max_body_size < 1024 {
            return fail(
                "mqtt.server.api-max-body-size",
                format!(
                    "must be at least 1024 bytes, got {}",
                    server.api_max_body_size
                ),
            );
        }
        if server.api_request_timeout == 0 {
            return fail(
                "mqtt.server.api-request-timeout",
                "must be at least 1 second, got 0".to_owned(),
            );
        }
        Ok(())
    }

    /// The validation rules; `spans` locates values that came from a text.
    pub(super) fn check(&self, spans: &Spans) -> Result<(), ConfigError> {
        let fail = |key: &str, message: String| {
            let position = spans.get(key).copied().and_then(Position::from_location);
            Err(ConfigError::invalid(key, position, message))
        };
        let server = &self.mqtt.server;

        if !server.websocket_path.starts_with('/') {
            return fail(
                "mqtt.server.websocket-path",
                format!("must start with '/', got {:?}", server.websocket_path),
            );
        }
        let url = &server.authentication_url;
        let is_http = url.starts_with("http://") || url.starts_with("https://");
        if !url.is_empty() && !is_http {
            return fail(
                "mqtt.server.authentication-url",
                format!(
                    "must be an http:// or https:// URL (or empty for no authentication), got {url:?}"
                ),
            );
        }
        let ports = [
            ("mqtt.server.tcp-port", server.tcp_port),
            ("mqtt.server.websocket-port", server.websocket_port),
            ("mqtt.server.api-port", server.api_port),
            ("mqtt.server.tls-port", server.tls_port),
            ("mqtt.server.wss-port", server.wss_port),
        ];
        for (i, (key, port)) in ports.iter().enumerate() {
            if let Some((other, _)) = ports[..i].iter().find(|(_, p)| *p == *port && *port != 0) {
                return fail(key, format!("{port} is already the {other}"));
            }
        }
        self.check_tls(spans)?;
        self.check_auth_api(&fail)?;
        if !(2..=MAX_PACKET_SIZE_LIMIT).contains(&server.max_packet_size) {
            return fail(
                "mqtt.server.max-packet-size",
                format!(
                    "must be between 2 and {MAX_PACKET_SIZE_LIMIT}, got {}",
                    server.max_packet_size
                ),
            );
        }
        if server.max_inflight == 0 {
            return fail(
                "mqtt.server.max-inflight",
                "must be between 1 and 65535, got 0".to_owned(),
            );
        }
        if server.max_queued_messages == 0 {
            return fail(
                "mqtt.server.max-queued-messages",
                "must be at least 1, got 0".to_owned(),
            );
        }
        if server.min_keep_alive > server.max_keep_alive {
            let key = if spans.contains_key("mqtt.server.max-keep-alive") {
                "mqtt.server.max-keep-alive"
            } else {
                "mqtt.server.min-keep-alive"
            };
            return fail(
                key,
                format!(
                    "min-keep-alive ({}) must not exceed max-keep-alive ({})",
                    server.min_keep_alive, server.max_keep_alive
                ),
            );
        }
        if server.connect_timeout == 0 {
            return fail(
                "mqtt.server.connect-timeout",
                "must be at least 1 second, got 0".to_owned(),
            );
        }
        if server.log_level.trim().is_empty() {
            return fail(
                "mqtt.server.log-level",
                "must not be empty (e.g. `info`)".to_owned(),
            );
        }
        if let Err(err) = tracing_subscriber::EnvFilter::builder().parse(&server.log_level) {
            return fail(
                "mqtt.server.log-level",
                format!("not a valid filter ({err}): {:?}", server.log_level),
            );
        }
        if server
            .node_id
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return fail(
                "mqtt.server.node-id",
                format!(
                    "must not contain spaces or control characters, got {:?}",
                    server.node_id
                ),
            );
        }

        let kvrocks = &self.mqtt.kvrocks;
        for (i, node) in kvrocks.cluster.nodes.iter().enumerate() {
            if let Err(message) = nodes::check_node(node) {
                let key = "mqtt.kvrocks.cluster.nodes";
                let position = spans.get(key).copied().and_then(Position::from_location);
                return Err(ConfigError::invalid(
                    format!("{key}[{i}]"),
                    position,
                    message,
                ));
            }
        }
        for (key, value) in [
            ("mqtt.kvrocks.write-batch-ops", kvrocks.write_batch_ops),
            ("mqtt.kvrocks.write-queue-ops", kvrocks.write_queue_ops),
            ("mqtt.kvrocks.pool.max-active", kvrocks.pool.max_active),
        ] {
            if value == 0 {
                return fail(key, "must be at least 1, got 0".to_owned());
            }
        }
        let cluster = &self.mqtt.cluster;
        if cluster.heartbeat_interval < 10 {
            return fail(
                "mqtt.cluster.heartbeat-interval",
                format!(
                    "must be at least 10 (milliseconds), got {}",
                    cluster.heartbeat_interval
                ),
            );
        }
        if u64::from(cluster.node_timeout) <= 2 * u64::from(cluster.heartbeat_interval) {
            return fail(
                "mqtt.cluster.node-timeout",
                format!(
                    "must be more than twice mqtt.cluster.heartbeat-interval ({} ms), got {}",
                    cluster.heartbeat_interval, cluster.node_timeout
                ),
            );
        }
        if cluster.takeover_timeout < cluster.heartbeat_interval {
            return fail(
                "mqtt.cluster.takeover-timeout",
                format!(
                    "must be at least mqtt.cluster.heartbeat-interval ({} ms), got {}",
                    cluster.heartbeat_interval, cluster.takeover_timeout
                ),
            );
        }
        if cluster.outbox_size < 16 {
            return fail(
                "mqtt.cluster.outbox-size",
                format!("must be at least 16, got {}", cluster.outbox_size),
            );
        }
        self.check_aliyun(&fail)?;
        Ok(())
    }
}
