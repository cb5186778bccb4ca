//! The Alibaba Cloud compatibility mode (`mqtt.aliyun`) against a real
//! third-party client: paho-mqtt (Python), connecting as Alibaba Cloud's
//! published samples do. The scenarios are in `tests/aliyun/scenarios.py`;
//! each test starts a broker in this mode and runs one scenario, which
//! fails (non-zero exit) at the first check that does not hold.
//!
//! paho-mqtt comes from PyPI: `scripts/test.sh` installs it into
//! `target/api-venv`; `EASY_MQTT_PAHO_PYTHON` names another Python that
//! has it. Without it these tests fail and say how to install it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{TestBroker, run_with_timeout};
use easy_mqtt_server::config::{AliyunAccessKey, AliyunIdentity, AliyunSignMode, Config};

/// A Python that imports paho-mqtt.
fn python() -> PathBuf {
    let candidate = std::env::var_os("EASY_MQTT_PAHO_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/api-venv/bin/python")
        });
    let works = Command::new(&candidate)
        .args(["-c", "import paho.mqtt.client"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        works,
        "{} cannot import paho-mqtt; these tests need it. Run scripts/test.sh, which installs it, \
         or: python3 -m venv target/api-venv && target/api-venv/bin/pip install paho-mqtt==2.1.0",
        candidate.display()
    );
    candidate
}

fn aliyun(config: &mut Config) {
    let aliyun = &mut config.mqtt.aliyun;
    aliyun.enabled = true;
    aliyun.instance_id = "post-cn-example".into();
    aliyun.access_keys = vec![AliyunAccessKey {
        id: "LTAIexample".into(),
        secret: "example-secret".into(),
    }];
    aliyun.identities = vec![
        AliyunIdentity {
            username: "custom-signed".into(),
            secret: "identity-secret".into(),
            sign_mode: AliyunSignMode::Signed,
        },
        AliyunIdentity {
            username: "custom-origin".into(),
            secret: "origin-secret".into(),
            sign_mode: AliyunSignMode::Origin,
        },
    ];
}

fn run(scenario: &str, configure: impl FnOnce(&mut Config)) {
    let python = python();
    let broker = TestBroker::with(|c| {
        aliyun(c);
        configure(c);
    });
    let api = broker.broker().api_addr().unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/aliyun/scenarios.py");
    let mut command = Command::new(python);
    command
        .env("PYTHONUNBUFFERED", "1")
        .arg(script)
        .arg(scenario)
        .arg(broker.port().to_string())
        .arg(api.port().to_string());
    let output = run_with_timeout(command, Duration::from_secs(60));
    assert!(
        output.status.success(),
        "scenario {scenario} failed ({}):\n{}\n{}",
        output.status,
        output.stdout,
        output.stderr
    );
    assert!(
        output
            .stdout
            .contains(&format!("scenario {scenario}: passed")),
        "{}",
        output.stdout
    );
}

#[test]
fn signature_mode_and_every_refusal() {
    run("signature", |_| {});
}

#[test]
fn token_mode_with_rights_on_subscribe_and_publish() {
    run("token", |_| {});
}

#[test]
fn token_expiry_upload_and_revocation_notices() {
    run("notices", |c| {
        c.mqtt.aliyun.token_min_expiry = 1;
        c.mqtt.aliyun.token_expire_notice = 2;
    });
}

#[test]
fn point_to_point_online_and_offline() {
    run("p2p", |_| {});
}

#[test]
fn status_events_reach_a_back_end_and_the_api() {
    run("status", |_| {});
}

#[test]
fn send_message_api() {
    run("send", |_| {});
}

#[test]
fn configuration_keys_and_validation() {
    let text = "mqtt:\n  aliyun:\n    enabled: true\n    instance-id: post-cn-example\n    access-keys: [{id: LTAIexample, secret: example-secret}]\n    identities: [{username: dev, secret: s, sign-mode: ORIGIN}]\n    offline-message-retention: 3600\n";
    let config = Config::from_yaml_str(text).unwrap();
    assert!(config.mqtt.aliyun.enabled);
    assert_eq!(config.mqtt.aliyun.access_keys[0].id, "LTAIexample");
    assert_eq!(
        config.mqtt.aliyun.identities[0].sign_mode,
        AliyunSignMode::Origin
    );
    assert_eq!(config.mqtt.aliyun.offline_message_retention, 3600);
    assert_eq!(
        Config::default().mqtt.aliyun.offline_message_retention,
        259_200
    );
    assert!(!Config::default().mqtt.aliyun.enabled);
    let error = Config::from_yaml_str("mqtt:\n  aliyun:\n    enabled: true\n").unwrap_err();
    assert!(
        error.to_string().contains("mqtt.aliyun.instance-id"),
        "{error}"
    );
    let error = Config::from_yaml_str("mqtt:\n  aliyun:\n    enabled: true\n    instance-id: i\n")
        .unwrap_err();
    assert!(
        error.to_string().contains("mqtt.aliyun.access-keys"),
        "{error}"
    );
}
