//! Tests of parsing, defaults and the rules, with the original's own file.

use super::*;

/// The original's own configuration file, as its users have it.
const ORIGINAL_FILE: &str = "\
mqtt:
  server:
    is-use-epoll: true
    is-open-ssl: false
    ssl-certificate-path:
    ssl-certificate-password:
    tcp-port: 1883
    websocket-port: 8083
    api-port: 8084
    websocket-path: /mqtt
    authentication-url: http://127.0.0.1:8080/auth
    listener-pool-size: 16
    deal-message-thread-pool-size: 24
  kvrocks:
    password: secret
    cluster:
      nodes: 127.0.0.1:6666,127.0.0.1:6667
      max-redirects: 3
    pool:
      min-idle: 4
      max-active: 16
      max-idle: 8
      max-wait: 2000
      time-between-eviction-runs: 30000
";

fn parse_err(text: &str) -> ConfigError {
    match Config::from_yaml_str(text) {
        Ok(config) => panic!("expected an error for {text:?}, got {config:?}"),
        Err(err) => err,
    }
}

/// Each `(yaml, key, message)` written under `mqtt.<section>` is refused
/// with an error naming `key`, on the line of the YAML (the third), whose
/// text contains `message`. Returns the errors.
fn assert_rejected(section: &str, cases: &[(&str, &str, &str)]) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    for (yaml, key, message) in cases {
        let err = parse_err(&format!("mqtt:\n  {section}:\n    {yaml}\n"));
        assert_eq!(err.key(), Some(*key), "{yaml}: {err}");
        assert_eq!(err.position().map(|p| p.line), Some(3), "{yaml}: {err}");
        assert!(err.to_string().contains(message), "{yaml}: {err}");
        errors.push(err);
    }
    errors
}

fn parse(text: &str) -> Config {
    match Config::from_yaml_str(text) {
        Ok(config) => config,
        Err(err) => panic!("{text:?} should parse: {err}"),
    }
}

fn pos(line: u64, column: u64) -> Option<Position> {
    Some(Position { line, column })
}

#[test]
fn defaults_are_the_originals() {
    let c = Config::default();
    let s = &c.mqtt.server;
    assert!(!s.is_use_epoll);
    assert!(!s.is_open_ssl);
    assert_eq!(s.ssl_certificate_path, "");
    assert_eq!(s.ssl_certificate_password, "");
    assert_eq!(s.tcp_port, 8081);
    assert_eq!(s.websocket_port, 8082);
    assert_eq!(s.api_port, 8083);
    assert_eq!(s.websocket_path, "/websocket");
    assert_eq!(s.authentication_url, "");
    assert_eq!(s.listener_pool_size, 0);
    assert_eq!(s.deal_message_thread_pool_size, 0);
    let k = &c.mqtt.kvrocks;
    assert_eq!(k.password, "");
    assert!(k.cluster.nodes.is_empty());
    assert_eq!(k.cluster.max_redirects, 5);
    assert_eq!(
        (k.pool.min_idle, k.pool.max_active, k.pool.max_idle),
        (12, 12, 12)
    );
    assert_eq!(k.pool.max_wait, -1);
    assert_eq!(k.pool.time_between_eviction_runs, -1);
    assert!(!c.uses_kvrocks());
    assert!(c.ignored_keys().is_empty());
    c.validate()
        .unwrap_or_else(|e| panic!("defaults must be valid: {e}"));
}

#[test]
fn defaults_of_our_keys() {
    let s = Config::default().mqtt.server;
    assert_eq!(s.host, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    assert_eq!(s.worker_threads, 0);
    assert_eq!(s.max_connections, 100_000);
    assert_eq!(s.max_packet_size, 1_048_576);
    assert_eq!(s.max_inflight, 32);
    assert_eq!(s.max_queued_messages, 1000);
    assert_eq!(s.queue_overflow, QueueOverflow::DropOldest);
    assert_eq!(s.max_topic_levels, 128);
    assert_eq!(s.min_keep_alive, 0);
    assert_eq!(s.max_keep_alive, 65535);
    assert_eq!(s.connect_timeout, 10);
    assert_eq!(s.log_level, "info");
    assert_eq!(s.node_id, "");
}

#[test]
fn sample_conf_equals_defaults() {
    let sample = include_str!("../../../conf/conf.yml");
    assert_eq!(parse(sample), Config::default());
    // Every key of the sample is set explicitly (none left to defaults
    // by omission), so the sample documents them all.
    let keys = [
        "is-use-epoll",
        "is-open-ssl",
        "ssl-certificate-path",
        "ssl-certificate-password",
        "ssl-key-path",
        "ssl-client-ca-path",
        "ssl-client-auth",
        "tls-port",
        "wss-port",
        "ssl-reload-interval",
        "tcp-port",
        "websocket-port",
        "api-port",
        "websocket-path",
        "authentication-url",
        "listener-pool-size",
        "deal-message-thread-pool-size",
        "host",
        "worker-threads",
        "max-connections",
        "max-packet-size",
        "max-inflight",
        "max-queued-messages",
        "queue-overflow",
        "max-topic-levels",
        "min-keep-alive",
        "max-keep-alive",
        "connect-timeout",
        "authentication-timeout",
        "authentication-max-connections",
        "authentication-cache-ttl",
        "authentication-ca-path",
        "api-host",
        "api-token",
        "api-username",
        "api-password",
        "api-max-body-size",
        "api-request-timeout",
        "log-level",
        "node-id",
        "password",
        "nodes",
        "max-redirects",
        "min-idle",
        "max-active",
        "max-idle",
        "max-wait",
        "time-between-eviction-runs",
        "heartbeat-interval",
        "node-timeout",
        "takeover-timeout",
        "outbox-size",
    ];
    for key in keys {
        let set = sample
            .lines()
            .any(|l| l.trim_start().starts_with(&format!("{key}:")));
        assert!(set, "conf/conf.yml does not set `{key}`");
    }
}

#[test]
fn tls_keys_parse_and_are_checked() {
    let s = Config::default().mqtt.server;
    assert_eq!((s.tls_port, s.wss_port, s.ssl_reload_interval), (0, 0, 60));
    assert_eq!(s.ssl_client_auth, SslClientAuth::None);
    assert!(!Config::default().uses_tls());

    let c = parse(
        "mqtt:\n  server:\n    ssl-certificate-path: /etc/mqtt/server.pem\n    \
             ssl-key-path: /etc/mqtt/server.key\n    ssl-client-ca-path: /etc/mqtt/ca.pem\n    \
             ssl-client-auth: required\n    tls-port: 8883\n    wss-port: 8884\n    \
             ssl-reload-interval: 0\n",
    );
    let s = &c.mqtt.server;
    assert_eq!(s.ssl_key_path, "/etc/mqtt/server.key");
    assert_eq!(s.ssl_client_ca_path, "/etc/mqtt/ca.pem");
    assert_eq!(s.ssl_client_auth, SslClientAuth::Required);
    assert_eq!(
        (s.tls_port, s.wss_port, s.ssl_reload_interval),
        (8883, 8884, 0)
    );
    assert!(c.uses_tls());

    let cases = [
        (
            "is-open-ssl: true",
            "mqtt.server.ssl-certificate-path",
            "is-open-ssl is true",
        ),
        (
            "tls-port: 8883",
            "mqtt.server.ssl-certificate-path",
            "tls-port is set",
        ),
        (
            "wss-port: 8884",
            "mqtt.server.ssl-certificate-path",
            "wss-port is set",
        ),
        (
            "tls-port: 8081",
            "mqtt.server.tls-port",
            "already the mqtt.server.tcp-port",
        ),
        (
            "wss-port: 8082",
            "mqtt.server.wss-port",
            "already the mqtt.server.websocket-port",
        ),
        (
            "ssl-client-auth: optional",
            "mqtt.server.ssl-client-auth",
            "needs ssl-client-ca-path",
        ),
        (
            "ssl-client-ca-path: /ca.pem",
            "mqtt.server.ssl-client-ca-path",
            "ssl-client-auth is `none`",
        ),
    ];
    assert_rejected("server", &cases);
    let err = parse_err("mqtt:\n  server:\n    ssl-client-auth: always\n");
    assert_eq!(err.key(), Some("mqtt.server.ssl-client-auth"));
    assert!(
        err.to_string()
            .contains("expected one of: none, optional, required"),
        "{err}"
    );
}

#[test]
fn empty_texts_give_defaults() {
    for text in [
        "",
        "\n",
        "# nothing but a comment\n",
        "---\n",
        "mqtt:\n",
        "mqtt:\n  server:\n  kvrocks:\n",
        "mqtt:\n  kvrocks:\n    cluster:\n    pool:\n",
    ] {
        assert_eq!(parse(text), Config::default(), "{text:?}");
    }
}

#[test]
fn keys_without_value_take_their_default() {
    let c = parse(
        "mqtt:\n  server:\n    tcp-port:\n    websocket-path:\n    log-level: ~\n  kvrocks:\n    password:\n    cluster:\n      nodes:\n",
    );
    assert_eq!(c, Config::default());
    // An empty string is "not set" for the keys whose default is empty.
    let c = parse("mqtt:\n  server:\n    authentication-url: ''\n    node-id: \"\"\n");
    assert_eq!(c, Config::default());
}

#[test]
fn the_originals_file_parses() {
    let c = parse(ORIGINAL_FILE);
    let s = &c.mqtt.server;
    assert!(s.is_use_epoll);
    assert!(!s.is_open_ssl);
    assert_eq!(s.ssl_certificate_path, "");
    assert_eq!(s.tcp_port, 1883);
    assert_eq!(s.websocket_port, 8083);
    assert_eq!(s.api_port, 8084);
    assert_eq!(s.websocket_path, "/mqtt");
    assert_eq!(s.authentication_url, "http://127.0.0.1:8080/auth");
    assert_eq!(s.listener_pool_size, 16);
    assert_eq!(s.deal_message_thread_pool_size, 24);
    // Keys the original did not have keep their defaults.
    assert_eq!(s.max_inflight, 32);
    assert_eq!(s.host, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let k = &c.mqtt.kvrocks;
    assert_eq!(k.password, "secret");
    assert_eq!(k.cluster.nodes, ["127.0.0.1:6666", "127.0.0.1:6667"]);
    assert_eq!(k.cluster.max_redirects, 3);
    assert_eq!(
        (k.pool.min_idle, k.pool.max_active, k.pool.max_idle),
        (4, 16, 8)
    );
    assert_eq!(k.pool.max_wait, 2000);
    assert_eq!(k.pool.time_between_eviction_runs, 30000);
    assert!(c.uses_kvrocks());
    assert_eq!(
        c.ignored_keys(),
        [
            "mqtt.server.is-use-epoll",
            "mqtt.server.listener-pool-size",
            "mqtt.server.deal-message-thread-pool-size"
        ]
    );
    assert_eq!(c.tcp_bind_addr().to_string(), "0.0.0.0:1883");
}

#[test]
fn our_keys_parse() {
    let c = parse(
        "\
mqtt:
  server:
    host: 127.0.0.1
    worker-threads: 3
    max-connections: 0
    max-packet-size: 268435460
    max-inflight: 65535
    max-queued-messages: 1
    queue-overflow: drop-newest
    max-topic-levels: 0
    min-keep-alive: 30
    max-keep-alive: 30
    connect-timeout: 1
    log-level: info,easy_mqtt_core=debug
    node-id: node-1
",
    );
    let s = &c.mqtt.server;
    assert_eq!(s.host, IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_eq!(c.worker_threads(), 3);
    assert_eq!(s.max_connections, 0);
    assert_eq!(s.max_packet_size, MAX_PACKET_SIZE_LIMIT);
    assert_eq!(s.max_inflight, 65535);
    assert_eq!(s.max_queued_messages, 1);
    assert_eq!(s.queue_overflow, QueueOverflow::DropNewest);
    assert_eq!(s.max_topic_levels, 0);
    assert_eq!((s.min_keep_alive, s.max_keep_alive), (30, 30));
    assert_eq!(s.connect_timeout, 1);
    assert_eq!(s.log_level, "info,easy_mqtt_core=debug");
    assert_eq!(s.node_id, "node-1");
    assert_eq!(c.tcp_bind_addr().to_string(), "127.0.0.1:8081");
    assert_eq!(c.websocket_bind_addr().to_string(), "127.0.0.1:8082");
    assert_eq!(c.api_bind_addr().to_string(), "127.0.0.1:8083");

    let c = parse("mqtt:\n  server:\n    host: '::'\n    tcp-port: 0\n");
    assert_eq!(c.tcp_bind_addr().to_string(), "[::]:0");
}

#[test]
fn worker_threads_zero_means_cores() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(Config::default().worker_threads(), cores);
}

#[test]
fn nodes_as_a_list() {
    let c = parse(
        "mqtt:\n  kvrocks:\n    cluster:\n      nodes:\n        - 10.0.0.1:6666\n        - kvrocks-1:6666\n        - '[::1]:6666'\n",
    );
    assert_eq!(
        c.mqtt.kvrocks.cluster.nodes,
        ["10.0.0.1:6666", "kvrocks-1:6666", "[::1]:6666"]
    );
    assert!(c.uses_kvrocks());
    let c = parse("mqtt:\n  kvrocks:\n    cluster:\n      nodes: [a:1, b:2]\n");
    assert_eq!(c.mqtt.kvrocks.cluster.nodes, ["a:1", "b:2"]);
    // Spaces around the commas of the original form are allowed.
    let c = parse("mqtt:\n  kvrocks:\n    cluster:\n      nodes: 'a:1, b:2,'\n");
    assert_eq!(c.mqtt.kvrocks.cluster.nodes, ["a:1", "b:2"]);
    let c = parse("mqtt:\n  kvrocks:\n    cluster:\n      nodes: []\n");
    assert!(!c.uses_kvrocks());
}

#[test]
fn bad_nodes_name_the_key_and_line() {
    let err = parse_err("mqtt:\n  kvrocks:\n    cluster:\n      nodes: 127.0.0.1:6666,127.0.0.1\n");
    assert_eq!(err.key(), Some("mqtt.kvrocks.cluster.nodes"));
    assert_eq!(err.position().map(|p| p.line), Some(4));
    assert!(
        err.to_string().contains("`127.0.0.1` is not `host:port`"),
        "{err}"
    );

    let err = parse_err(
        "mqtt:\n  kvrocks:\n    cluster:\n      nodes:\n        - a:1\n        - b:99999\n",
    );
    assert_eq!(err.key(), Some("mqtt.kvrocks.cluster.nodes[1]"));
    assert_eq!(err.position(), pos(6, 11));
    assert_eq!(
        err.to_string(),
        "line 6, column 11: mqtt.kvrocks.cluster.nodes[1]: `b:99999`: the port `99999` is not a number from 1 to 65535"
    );

    let err = parse_err("mqtt:\n  kvrocks:\n    cluster:\n      nodes: {a: 1}\n");
    assert_eq!(err.key(), Some("mqtt.kvrocks.cluster.nodes"));
    assert_eq!(err.position().map(|p| p.line), Some(4));

    // Built in code, the same rule applies.
    let mut c = Config::default();
    c.mqtt.kvrocks.cluster.nodes = vec!["a:1".into(), "nope".into()];
    let err = c.validate().err().map(|e| e.to_string());
    assert_eq!(
        err.as_deref(),
        Some("mqtt.kvrocks.cluster.nodes[1]: `nope` is not `host:port` (the port is missing)")
    );
}

#[test]
fn unknown_key_names_path_and_line() {
    let err = parse_err("mqtt:\n  server:\n    tcp-port: 1883\n    tcp-prt: 1884\n");
    assert!(matches!(err, ConfigError::Parse { .. }));
    assert_eq!(err.key(), Some("mqtt.server.tcp-prt"));
    assert_eq!(err.position(), pos(4, 5));
    assert_eq!(
        err.to_string(),
        "line 4, column 5: mqtt.server.tcp-prt: unknown key `tcp-prt`; did you mean `tcp-port`?"
    );

    let err = parse_err("mqtt:\n  kvrocks:\n    pool:\n      size: 3\n");
    assert_eq!(err.key(), Some("mqtt.kvrocks.pool.size"));
    assert_eq!(err.position(), pos(4, 7));
    assert!(
        err.to_string()
            .contains("the keys here are: min-idle, max-active"),
        "{err}"
    );

    let err = parse_err("mqtt:\n  servers:\n    tcp-port: 1\n");
    assert_eq!(err.key(), Some("mqtt.servers"));
    assert_eq!(err.position(), pos(2, 3));

    let err = parse_err("server:\n  tcp-port: 1\n");
    assert_eq!(err.key(), Some("server"));
    assert_eq!(err.position(), pos(1, 1));
    assert!(err.to_string().contains("unknown key `server`"), "{err}");

    // A key named like the private wrapper's field is still reported.
    let err = parse_err("mqtt:\n  server:\n    value: 1\n");
    assert_eq!(err.key(), Some("mqtt.server.value"));
}

#[test]
fn wrong_type_names_key_and_line() {
    let err = parse_err("mqtt:\n  server:\n    tcp-port: abc\n");
    assert_eq!(err.key(), Some("mqtt.server.tcp-port"));
    assert_eq!(
        err.to_string(),
        "line 3, column 15: mqtt.server.tcp-port: invalid type: `abc`, expected u16 (0 to 65535)"
    );

    let err = parse_err("mqtt:\n  server:\n    is-open-ssl: maybe\n");
    assert_eq!(err.key(), Some("mqtt.server.is-open-ssl"));
    assert_eq!(err.position(), pos(3, 18));
    assert!(err.to_string().contains("expected a boolean"), "{err}");

    let err = parse_err("mqtt:\n  server:\n    websocket-path: [a, b]\n");
    assert_eq!(err.key(), Some("mqtt.server.websocket-path"));
    assert_eq!(err.position().map(|p| p.line), Some(3));

    let err = parse_err("mqtt:\n  server:\n    tcp-port: [1, 2]\n");
    assert_eq!(
        err.to_string(),
        "line 3, column 15: mqtt.server.tcp-port: expected a single value, found a list or a section"
    );

    let err = parse_err("mqtt:\n  server: 8081\n");
    assert_eq!(err.key(), Some("mqtt.server"));
    assert_eq!(err.position().map(|p| p.line), Some(2));

    let err = parse_err("mqtt:\n  kvrocks:\n    pool:\n      max-wait: soon\n");
    assert_eq!(err.key(), Some("mqtt.kvrocks.pool.max-wait"));
    assert_eq!(err.position(), pos(4, 17));

    let err = parse_err("mqtt:\n  server:\n    queue-overflow: drop-all\n");
    assert_eq!(err.key(), Some("mqtt.server.queue-overflow"));
    assert_eq!(
        err.to_string(),
        "line 3, column 21: mqtt.server.queue-overflow: unknown value `drop-all`, expected one of: drop-oldest, drop-newest"
    );

    let err = parse_err("mqtt:\n  server:\n    host: localhost\n");
    assert_eq!(err.key(), Some("mqtt.server.host"));
    assert_eq!(err.position().map(|p| p.line), Some(3));
}

#[test]
fn value_beyond_its_type_names_key_and_line() {
    let err = parse_err("mqtt:\n  server:\n    tcp-port: 70000\n");
    assert_eq!(
        err.to_string(),
        "line 3, column 15: mqtt.server.tcp-port: invalid value: integer `70000`, expected u16 (0 to 65535)"
    );
    let err = parse_err("mqtt:\n  server:\n    max-connections: -1\n");
    assert_eq!(err.key(), Some("mqtt.server.max-connections"));
    assert!(
        err.to_string().contains("integer `-1`, expected u32"),
        "{err}"
    );
}

#[test]
fn rule_violations_name_key_and_line() {
    let err = parse_err("mqtt:\n  server:\n    tcp-port: 1883\n    max-inflight: 0\n");
    assert!(matches!(err, ConfigError::Invalid { .. }));
    assert_eq!(
        err.to_string(),
        "line 4, column 19: mqtt.server.max-inflight: must be between 1 and 65535, got 0"
    );

    let cases = [
        (
            "max-packet-size: 1",
            "mqtt.server.max-packet-size",
            "must be between 2 and 268435460, got 1",
        ),
        (
            "max-packet-size: 268435461",
            "mqtt.server.max-packet-size",
            "got 268435461",
        ),
        (
            "max-queued-messages: 0",
            "mqtt.server.max-queued-messages",
            "must be at least 1",
        ),
        (
            "connect-timeout: 0",
            "mqtt.server.connect-timeout",
            "must be at least 1 second",
        ),
        (
            "websocket-path: ws",
            "mqtt.server.websocket-path",
            "must start with '/'",
        ),
        (
            "websocket-path: ''",
            "mqtt.server.websocket-path",
            "must start with '/'",
        ),
        (
            "log-level: ''",
            "mqtt.server.log-level",
            "must not be empty",
        ),
        (
            "log-level: info=verbose",
            "mqtt.server.log-level",
            "not a valid filter",
        ),
        (
            "node-id: a b",
            "mqtt.server.node-id",
            "must not contain spaces",
        ),
        (
            "authentication-url: example.com/auth",
            "mqtt.server.authentication-url",
            "http://",
        ),
        (
            "api-port: 8081",
            "mqtt.server.api-port",
            "8081 is already the mqtt.server.tcp-port",
        ),
        (
            "max-keep-alive: 30\n    min-keep-alive: 60",
            "mqtt.server.max-keep-alive",
            "min-keep-alive (60) must not exceed max-keep-alive (30)",
        ),
        (
            "max-keep-alive: 65534\n    min-keep-alive: 65535",
            "mqtt.server.max-keep-alive",
            "must not exceed",
        ),
    ];
    for err in assert_rejected("server", &cases) {
        assert!(matches!(err, ConfigError::Invalid { .. }), "{err}");
    }

    for key in ["write-batch-ops", "write-queue-ops"] {
        let err = parse_err(&format!("mqtt:\n  kvrocks:\n    {key}: 0\n"));
        assert_eq!(err.key(), Some(format!("mqtt.kvrocks.{key}").as_str()));
        assert_eq!(err.position().map(|p| p.line), Some(3), "{err}");
        assert!(err.to_string().contains("at least 1"), "{err}");
    }
    let c = parse("mqtt:\n  kvrocks:\n    write-batch-ops: 5000\n    write-queue-ops: 7000\n");
    let limits = crate::broker::node_config(&c).journal;
    assert_eq!((limits.max_merged_ops, limits.max_queued_ops), (5000, 7000));

    let err = parse_err("mqtt:\n  kvrocks:\n    pool:\n      max-active: 0\n");
    assert_eq!(err.key(), Some("mqtt.kvrocks.pool.max-active"));
    assert_eq!(err.position(), pos(4, 19));

    // Ports may be 0 (any free port) several times.
    let c = parse("mqtt:\n  server:\n    tcp-port: 0\n    websocket-port: 0\n    api-port: 0\n");
    assert_eq!(c.tcp_bind_addr().port(), 0);
}

#[test]
fn authentication_and_api_keys() {
    let s = Config::default().mqtt.server;
    assert_eq!(s.authentication_timeout, 5000);
    assert_eq!(s.authentication_max_connections, 16);
    assert_eq!(s.authentication_cache_ttl, 0);
    assert_eq!(s.authentication_ca_path, "");
    assert_eq!(s.api_host, IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_eq!((s.api_token.as_str(), s.api_username.as_str()), ("", ""));
    assert_eq!(s.api_max_body_size, 1_048_576);
    assert_eq!(s.api_request_timeout, 10);

    let c = parse(
        "mqtt:\n  server:\n    host: 0.0.0.0\n    api-host: 10.0.0.5\n    api-port: 9000\n    \
             authentication-url: https://auth.example/check\n    authentication-ca-path: /etc/ca.pem\n    \
             authentication-timeout: 750\n    api-username: admin\n    api-password: secret\n",
    );
    assert_eq!(c.api_bind_addr().to_string(), "10.0.0.5:9000");
    assert_eq!(c.mqtt.server.authentication_timeout, 750);

    let cases = [
        (
            "authentication-timeout: 0",
            "mqtt.server.authentication-timeout",
            "at least 1",
        ),
        (
            "authentication-max-connections: 0",
            "mqtt.server.authentication-max-connections",
            "at least 1",
        ),
        (
            "authentication-ca-path: /ca.pem",
            "mqtt.server.authentication-ca-path",
            "not an https:// URL",
        ),
        (
            "api-username: admin",
            "mqtt.server.api-username",
            "set both or neither",
        ),
        (
            "api-password: secret",
            "mqtt.server.api-password",
            "set both or neither",
        ),
        (
            "api-max-body-size: 10",
            "mqtt.server.api-max-body-size",
            "at least 1024",
        ),
        (
            "api-request-timeout: 0",
            "mqtt.server.api-request-timeout",
            "at least 1 second",
        ),
    ];
    assert_rejected("server", &cases);
}

#[test]
fn rule_violations_in_code_name_the_key() {
    let mut c = Config::default();
    c.mqtt.server.max_inflight = 0;
    let err = c.validate().err().map(|e| e.to_string());
    assert_eq!(
        err.as_deref(),
        Some("mqtt.server.max-inflight: must be between 1 and 65535, got 0")
    );
}

#[test]
fn other_yaml_errors_carry_the_line() {
    let err = parse_err("mqtt:\n  server:\n    tcp-port: 1\n    tcp-port: 2\n");
    assert_eq!(err.key(), Some("mqtt.server.tcp-port"));
    assert_eq!(err.position(), pos(4, 5));
    assert!(err.to_string().contains("appears twice"), "{err}");

    let err = parse_err("mqtt:\n  server:\n    tcp-port: [1\n");
    assert!(err.position().is_some(), "{err}");

    let err = parse_err("mqtt:\n  server:\n    tcp-port: 1\n---\nmqtt:\n");
    assert!(err.to_string().contains("a single YAML document"), "{err}");

    let err = parse_err("mqtt:\n\tserver:\n");
    assert_eq!(err.position().map(|p| p.line), Some(2), "{err}");

    let err = parse_err("- mqtt\n");
    assert_eq!(err.position(), pos(1, 1));
}

#[test]
fn load_names_the_file() {
    let missing = Path::new("/nonexistent/easy-mqtt/conf.yml");
    let err = Config::load(missing).err();
    let text = err.as_ref().map(ToString::to_string).unwrap_or_default();
    assert!(matches!(err, Some(ConfigError::Read { .. })));
    assert!(
        text.starts_with("/nonexistent/easy-mqtt/conf.yml: cannot read"),
        "{text}"
    );

    let dir = std::env::temp_dir().join(format!("easy-mqtt-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let file = dir.join("conf.yml");
    std::fs::write(&file, "mqtt:\n  server:\n    tcp-port: 70000\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let err = Config::load(&file).err().map(|e| e.to_string());
    assert_eq!(
        err,
        Some(format!(
            "{}: line 3, column 15: mqtt.server.tcp-port: invalid value: integer `70000`, expected u16 (0 to 65535)",
            file.display()
        ))
    );
    std::fs::write(&file, ORIGINAL_FILE).unwrap_or_else(|e| panic!("{e}"));
    let loaded = Config::load(&file).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded, parse(ORIGINAL_FILE));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The timings and the outbox bound of `mqtt.cluster` are checked at start,
/// each error naming its key and the line it is on.
#[test]
fn cluster_keys_are_checked() {
    let cases = [
        (
            "heartbeat-interval: 5",
            "mqtt.cluster.heartbeat-interval",
            "at least 10",
        ),
        (
            "node-timeout: 2000",
            "mqtt.cluster.node-timeout",
            "more than twice",
        ),
        (
            "takeover-timeout: 999",
            "mqtt.cluster.takeover-timeout",
            "at least",
        ),
        (
            "outbox-size: 15",
            "mqtt.cluster.outbox-size",
            "at least 16, got 15",
        ),
    ];
    assert_rejected("cluster", &cases);
    let config = parse("mqtt:\n  cluster:\n    outbox-size: 16\n");
    let cluster = crate::cluster::ClusterConfig::from_config(&config.mqtt.cluster);
    assert_eq!(cluster.bus_queue, 16);
}
