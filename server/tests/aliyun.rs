//! The Alibaba Cloud compatibility mode (`mqtt.aliyun`) against a real
//! third-party client: paho-mqtt (Python), connecting as Alibaba Cloud's
//! published samples do. The scenarios are in `tests/aliyun/scenarios.py`;
//! each test starts a broker in this mode and runs one scenario, which
//! fails (non-zero exit) at the first check that does not hold.
//!
//! Tokens and client status live in storage: the tests on a real
//! `redis-server` (Kvrocks' protocol) restart a broker and run two broker
//! nodes on one server.
//!
//! paho-mqtt comes from PyPI: `scripts/test.sh` installs it into
//! `target/api-venv`; `EASY_MQTT_PAHO_PYTHON` names another Python that
//! has it. Without it these tests fail and say how to install it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../storage-kvrocks/tests/common/mod.rs"]
#[allow(unused)]
mod redis_common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{BrokerProcess, TempFile, TestBroker, free_port, run_with_timeout};
use easy_mqtt_server::config::{AliyunAccessKey, AliyunIdentity, AliyunSignMode, Config};
use redis_common::Server;

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
    let broker = TestBroker::with(|c| {
        aliyun(c);
        configure(c);
    });
    run_on(scenario, &broker, &[]);
}

/// An Alibaba Cloud mode broker named `node_id` on the redis-server at `node`.
fn broker_on_redis(node: &str, node_id: &str) -> TestBroker {
    TestBroker::with(|c| {
        aliyun(c);
        c.mqtt.kvrocks.cluster.nodes = vec![node.to_owned()];
        c.mqtt.server.node_id = node_id.into();
    })
}

/// The API port of a broker.
fn api_port(broker: &TestBroker) -> u16 {
    broker.broker().api_addr().unwrap().port()
}

/// Runs a scenario against `broker` with extra arguments; its output.
fn run_on(scenario: &str, broker: &TestBroker, args: &[&str]) -> String {
    run_on_ports(scenario, broker.port(), api_port(broker), args)
}

/// Runs a scenario against the broker at these ports; its output.
fn run_on_ports(scenario: &str, mqtt_port: u16, api_port: u16, args: &[&str]) -> String {
    let python = python();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/aliyun/scenarios.py");
    let mut command = Command::new(python);
    command
        .env("PYTHONUNBUFFERED", "1")
        .arg(script)
        .arg(scenario)
        .arg(mqtt_port.to_string())
        .arg(api_port.to_string())
        .args(args);
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
    output.stdout
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

/// A device whose connection hibernated (`hibernate-after: 1`) and then
/// ends, dropped or with DISCONNECT: its status events carry its address.
#[test]
fn status_events_of_a_hibernated_connection() {
    run("status_hibernated", |c| c.mqtt.server.hibernate_after = 1);
}

#[test]
fn send_message_api() {
    run("send", |_| {});
}

#[test]
fn offline_messages_older_than_the_retention_are_dropped() {
    let broker = TestBroker::with(|c| {
        aliyun(c);
        c.mqtt.aliyun.offline_message_retention = 2;
    });
    run_on("retention", &broker, &[]);
    // The old subscription message and the old p2p message.
    assert_eq!(broker.metric(|m| &m.dropped_expired), 2);
    let url = format!("http://127.0.0.1:{}/api/v1/stats", api_port(&broker));
    let stats = ureq::get(&url)
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["droppedExpired"], 2, "{stats}");
    assert_eq!(stats["aliyunStatusLost"], 0, "{stats}");
}

#[test]
fn a_token_outlives_a_restart_on_redis_storage() {
    let redis = Server::standalone();
    let broker = broker_on_redis(&redis.node(), "a");
    let output = run_on("restart_apply", &broker, &[]);
    let token = output
        .lines()
        .find_map(|l| l.strip_prefix("TOKEN="))
        .expect("the scenario prints the token")
        .to_owned();
    drop(broker);
    let broker = broker_on_redis(&redis.node(), "a");
    run_on("restart_use", &broker, &[&token]);
}

#[test]
fn without_storage_tokens_answer_503_and_connack_3() {
    let mut redis = Server::standalone();
    let broker = broker_on_redis(&redis.node(), "a");
    let output = run_on("restart_apply", &broker, &[]);
    let token = output
        .lines()
        .find_map(|l| l.strip_prefix("TOKEN="))
        .unwrap()
        .to_owned();
    redis.stop();
    run_on("unavailable", &broker, &[&token]);
}

#[test]
fn two_nodes_on_one_redis_share_tokens_revocations_and_status() {
    let redis = Server::standalone();
    let a = broker_on_redis(&redis.node(), "node-a");
    let b = broker_on_redis(&redis.node(), "node-b");
    let output = run_on(
        "cluster",
        &a,
        &[&b.port().to_string(), &api_port(&b).to_string()],
    );
    // Revocation reaches the other node within its periodic check (3 s)
    // and the grace before the close (1 s).
    let seconds: f64 = output
        .lines()
        .find_map(|l| l.strip_prefix("ok: B's client disconnected "))
        .and_then(|l| l.split(' ').next())
        .and_then(|s| s.parse().ok())
        .expect("the scenario reports the delay");
    assert!(seconds <= 5.0, "{output}");
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

#[test]
fn point_to_point_across_two_nodes_online_and_offline() {
    let redis = Server::standalone();
    let a = broker_on_redis(&redis.node(), "node-a");
    let b = broker_on_redis(&redis.node(), "node-b");
    run_on("cluster_p2p", &a, &[&b.port().to_string()]);
}

// ---------------------------------------------------------------------------
// Offline-message retention across a restart of the real binary
// ---------------------------------------------------------------------------

/// `offline-message-retention` of the binary, in seconds.
const RETENTION_S: u64 = 4;

/// The broker in Alibaba Cloud mode, once its MQTT and API ports listen.
fn start_binary(config: &TempFile, mqtt: u16, api: u16) -> BrokerProcess {
    let mut broker = BrokerProcess::start(config, mqtt);
    broker.wait_listening(api);
    broker
}

/// `droppedExpired` of `/api/v1/stats`.
fn dropped_expired(api: u16) -> serde_json::Value {
    let url = format!("http://127.0.0.1:{api}/api/v1/stats");
    let stats = ureq::get(&url)
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    stats["droppedExpired"].clone()
}

/// A restarted node first waits for its previous life's membership to
/// expire (`node-timeout`): short here, so that the client can come back
/// within the retention.
fn retention_config(redis: &Server, mqtt: u16, api: u16) -> TempFile {
    let text = format!(
        "mqtt:\n  server:\n    host: 127.0.0.1\n    tcp-port: {mqtt}\n    websocket-port: 0\n    api-port: {api}\n    node-id: keeper\n  cluster:\n    heartbeat-interval: 200\n    node-timeout: 1000\n  kvrocks:\n    cluster:\n      nodes: {}\n  aliyun:\n    enabled: true\n    instance-id: post-cn-example\n    access-keys: [{{id: LTAIexample, secret: example-secret}}]\n    offline-message-retention: {RETENTION_S}\n",
        redis.node()
    );
    TempFile::new("aliyun.yml", text.as_bytes())
}

/// Messages queued for an offline persistent client keep their age through
/// a crash and restart: past the retention they are dropped (and counted)
/// when the client returns; within it they are delivered.
#[test]
fn offline_retention_survives_a_restart_on_redis_storage() {
    let redis = Server::standalone();
    let (mqtt, api) = (free_port(), free_port());
    let config = retention_config(&redis, mqtt, api);

    let broker = start_binary(&config, mqtt, api);
    run_on_ports("retention_queue", mqtt, api, &["old"]);
    let queued = Instant::now();
    broker.kill9();
    let broker = start_binary(&config, mqtt, api);
    std::thread::sleep(
        (queued + Duration::from_secs(RETENTION_S + 1)).saturating_duration_since(Instant::now()),
    );
    run_on_ports("retention_back", mqtt, api, &["old", "expired"]);
    assert_eq!(
        dropped_expired(api),
        2,
        "both old messages dropped as expired"
    );

    // Within the retention: delivered after the restart.
    run_on_ports("retention_queue", mqtt, api, &["young"]);
    let queued = Instant::now();
    broker.kill9();
    let _broker = start_binary(&config, mqtt, api);
    run_on_ports("retention_back", mqtt, api, &["young", "kept"]);
    assert!(
        queued.elapsed() < Duration::from_secs(RETENTION_S),
        "the client came back within the retention"
    );
    assert_eq!(dropped_expired(api), 0);
}
