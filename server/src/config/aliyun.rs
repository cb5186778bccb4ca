//! The rules of `mqtt.aliyun`.

use super::*;

impl Config {
    pub(super) fn check_aliyun(
        &self,
        fail: &dyn Fn(&str, String) -> Result<(), ConfigError>,
    ) -> Result<(), ConfigError> {
        let aliyun = &self.mqtt.aliyun;
        if !aliyun.enabled {
            return Ok(());
        }
        if aliyun.instance_id.is_empty() || aliyun.instance_id.contains('|') {
            return fail(
                "mqtt.aliyun.instance-id",
                format!(
                    "required when mqtt.aliyun.enabled is true, without '|', got {:?}",
                    aliyun.instance_id
                ),
            );
        }
        if aliyun.access_keys.is_empty() && aliyun.identities.is_empty() {
            return fail(
                "mqtt.aliyun.access-keys",
                "at least one access key (or custom identity) is required when mqtt.aliyun.enabled is true".to_owned(),
            );
        }
        for (i, key) in aliyun.access_keys.iter().enumerate() {
            if key.id.is_empty() || key.id.contains('|') || key.secret.is_empty() {
                return fail(
                    "mqtt.aliyun.access-keys",
                    format!("entry {i}: `id` (without '|') and `secret` must not be empty"),
                );
            }
        }
        for (i, identity) in aliyun.identities.iter().enumerate() {
            let name = &identity.username;
            if name.is_empty() || name.starts_with("Signature|") || name.starts_with("Token|") {
                return fail(
                    "mqtt.aliyun.identities",
                    format!(
                        "entry {i}: `username` must be set and not start with Signature| or Token|, got {name:?}"
                    ),
                );
            }
            if identity.secret.is_empty() {
                return fail(
                    "mqtt.aliyun.identities",
                    format!("entry {i}: `secret` must not be empty"),
                );
            }
        }
        if aliyun.offline_message_retention == 0 {
            return fail(
                "mqtt.aliyun.offline-message-retention",
                "must be at least 1 second, got 0".to_owned(),
            );
        }
        if let Err(e) = easy_mqtt_core::topic::validate_topic_name(&aliyun.status_topic) {
            return fail(
                "mqtt.aliyun.status-topic",
                format!("not a valid topic name ({e}): {:?}", aliyun.status_topic),
            );
        }
        if aliyun.token_min_expiry == 0 || aliyun.token_min_expiry > aliyun.token_max_expiry {
            return fail(
                "mqtt.aliyun.token-min-expiry",
                format!(
                    "must be at least 1 and at most token-max-expiry ({}), got {}",
                    aliyun.token_max_expiry, aliyun.token_min_expiry
                ),
            );
        }
        Ok(())
    }
}
