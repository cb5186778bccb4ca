//! The HTTP API through a real HTTP client (ureq) against a real broker,
//! with real MQTT clients (rumqttc, mosquitto_sub and raw sockets) on the
//! other side.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{
    Client, MosquittoSub, QUIET, QoS, RawClient, TestBroker, WAIT, binary_payload, wait_until, wire,
};
use easy_mqtt_server::config::Config;
use serde_json::{Value, json};

/// A JSON client of the API.
struct Api {
    base: String,
    agent: ureq::Agent,
    authorization: Option<String>,
}

/// A response: status, content type and body.
#[derive(Debug)]
struct Reply {
    status: u16,
    content_type: String,
    headers: Vec<(String, String)>,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Checks a 4xx JSON error with this code; returns its detail.
    fn error(&self, status: u16, code: &str) -> String {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.content_type, "application/json", "{self:?}");
        let body = self.json();
        assert_eq!(body["error"], code, "{self:?}");
        body["detail"].as_str().unwrap().to_owned()
    }
}

impl Api {
    fn new(addr: SocketAddr) -> Api {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(WAIT))
            .build()
            .new_agent();
        Api {
            base: format!("http://{addr}"),
            agent,
            authorization: None,
        }
    }

    fn of(broker: &TestBroker) -> Api {
        Api::new(broker.broker().api_addr().expect("the API is on"))
    }

    fn with_authorization(mut self, value: &str) -> Api {
        self.authorization = Some(value.to_owned());
        self
    }

    fn finish(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
        let mut response = response.expect("HTTP exchange");
        let headers = response
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or_default().to_owned()))
            .collect();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        Reply {
            status: response.status().as_u16(),
            content_type,
            headers,
            text: response.body_mut().read_to_string().unwrap(),
        }
    }

    fn get(&self, path: &str) -> Reply {
        let mut request = self.agent.get(format!("{}{path}", self.base));
        if let Some(auth) = &self.authorization {
            request = request.header("Authorization", auth);
        }
        Api::finish(request.call())
    }

    fn delete(&self, path: &str) -> Reply {
        let mut request = self.agent.delete(format!("{}{path}", self.base));
        if let Some(auth) = &self.authorization {
            request = request.header("Authorization", auth);
        }
        Api::finish(request.call())
    }

    /// POST with a body as given, of the given content type.
    fn post_raw(&self, path: &str, content_type: &str, body: &[u8]) -> Reply {
        let mut request = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Content-Type", content_type);
        if let Some(auth) = &self.authorization {
            request = request.header("Authorization", auth);
        }
        Api::finish(request.send(body))
    }

    fn post(&self, path: &str, body: &Value) -> Reply {
        self.post_raw(path, "application/json", body.to_string().as_bytes())
    }

    /// A 200 JSON body.
    fn ok(reply: Reply) -> Value {
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.content_type, "application/json", "{reply:?}");
        reply.json()
    }

    fn get_ok(&self, path: &str) -> Value {
        Api::ok(self.get(path))
    }

    fn post_ok(&self, path: &str, body: &Value) -> Value {
        Api::ok(self.post(path, body))
    }
}

fn api_broker(configure: impl FnOnce(&mut Config)) -> (TestBroker, Api) {
    let broker = TestBroker::with(configure);
    let api = Api::of(&broker);
    (broker, api)
}

// ---------------------------------------------------------------------------
// Publishing
// ---------------------------------------------------------------------------

#[tokio::test]
async fn publish_to_a_topic_reaches_every_subscriber() {
    let (broker, api) = api_broker(|_| {});
    let mut a = Client::connect(broker.addr(), "sub-a").await;
    a.subscribe("room/+/temp", QoS::AtLeastOnce).await;
    let mut b = Client::connect(broker.addr(), "sub-b").await;
    b.subscribe("room/#", QoS::AtMostOnce).await;
    let mut mosquitto = MosquittoSub::spawn(broker.port(), &["-q", "1", "-t", "room/1/temp"]);
    mosquitto.wait_subscribed();
    let mut other = Client::connect(broker.addr(), "sub-other").await;
    other.subscribe("hall/#", QoS::AtLeastOnce).await;

    let answer = api.post_ok(
        "/api/v1/publish",
        &json!({ "topic": "room/1/temp", "payload": "21.5", "qos": 1 }),
    );
    assert_eq!(answer, json!({ "delivered": 3 }));
    let got = a.recv().await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("room/1/temp", &b"21.5"[..])
    );
    assert_eq!(got.qos, QoS::AtLeastOnce);
    let got = b.recv().await;
    assert_eq!(&got.payload[..], b"21.5");
    assert_eq!(
        got.qos,
        QoS::AtMostOnce,
        "downgraded to the subscription's QoS"
    );
    assert_eq!(mosquitto.recv().payload, b"21.5");

    // Binary payloads travel as base64 and arrive byte for byte.
    let payload = binary_payload();
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(&payload);
    let answer = api.post_ok(
        "/api/v1/publish",
        &json!({ "topic": "room/2/temp", "payload": encoded, "encoding": "base64" }),
    );
    assert_eq!(answer["delivered"], 2);
    assert_eq!(a.recv().await.payload.to_vec(), payload);
    assert_eq!(b.recv().await.payload.to_vec(), payload);
    other.expect_no_message(QUIET).await;
    mosquitto.expect_no_message(QUIET);
}

#[tokio::test]
async fn publish_to_a_client_reaches_that_client_and_nobody_else() {
    let (broker, api) = api_broker(|_| {});
    let mut target = Client::connect(broker.addr(), "device/42").await;
    target.subscribe("commands/#", QoS::AtLeastOnce).await;
    let mut bystander = Client::connect(broker.addr(), "device/43").await;
    bystander.subscribe("commands/#", QoS::AtLeastOnce).await;
    bystander.subscribe("#", QoS::AtLeastOnce).await;
    let mut unsubscribed = Client::connect(broker.addr(), "device-44").await;

    // The client id travels percent-encoded in the path.
    let answer = api.post_ok(
        "/api/v1/clients/device%2F42/publish",
        &json!({ "topic": "commands/reboot", "payload": "now", "qos": 1 }),
    );
    assert_eq!(answer, json!({ "delivered": 1 }));
    let got = target.recv().await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..], got.qos),
        ("commands/reboot", &b"now"[..], QoS::AtLeastOnce)
    );
    // Delivered whatever the client subscribed to (here: nothing).
    let answer = api.post_ok(
        "/api/v1/clients/device-44/publish",
        &json!({ "topic": "direct/44", "payload": "hi" }),
    );
    assert_eq!(answer["delivered"], 1);
    let got = unsubscribed.recv().await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("direct/44", &b"hi"[..])
    );

    bystander.expect_no_message(QUIET).await;
    target.expect_no_message(Duration::ZERO).await;

    let detail = api
        .post(
            "/api/v1/clients/nobody/publish",
            &json!({ "topic": "t", "payload": "x" }),
        )
        .error(404, "client-not-found");
    assert!(detail.contains("nobody"), "{detail}");
    let detail = api
        .post(
            "/api/v1/clients/device-44/publish",
            &json!({ "topic": "t", "payload": "x", "retain": true }),
        )
        .error(400, "invalid-body");
    assert!(detail.contains("retain"), "{detail}");
}

#[tokio::test]
async fn qos1_to_an_offline_persistent_session_arrives_on_reconnect() {
    let (broker, api) = api_broker(|_| {});
    let (mut client, _) = Client::connect_session(broker.addr(), "sleeper", false).await;
    client.subscribe("news/#", QoS::AtLeastOnce).await;
    client.disconnect().await;
    wait_until(WAIT, "the session to be offline", || {
        api.get_ok("/api/v1/clients/sleeper")["connected"] == false
    });

    let to_topic = api.post_ok(
        "/api/v1/publish",
        &json!({ "topic": "news/today", "payload": "via topic", "qos": 1 }),
    );
    assert_eq!(to_topic["delivered"], 1, "queued for the offline session");
    let to_client = api.post_ok(
        "/api/v1/clients/sleeper/publish",
        &json!({ "topic": "direct/sleeper", "payload": "via client id", "qos": 1 }),
    );
    assert_eq!(to_client["delivered"], 1);
    let qos0 = api.post_ok(
        "/api/v1/clients/sleeper/publish",
        &json!({ "topic": "direct/sleeper", "payload": "lost", "qos": 0 }),
    );
    assert_eq!(qos0["delivered"], 0, "QoS 0 is not kept offline");
    let details = api.get_ok("/api/v1/clients/sleeper");
    assert_eq!(details["queued"], 2);
    assert_eq!(details["connectedSince"], Value::Null);
    assert_eq!(details["cleanSession"], false);

    let (mut client, connack) = Client::connect_session(broker.addr(), "sleeper", false).await;
    assert!(connack.session_present);
    let first = client.recv().await;
    let second = client.recv().await;
    assert_eq!(
        [&first.payload[..], &second.payload[..]],
        [&b"via topic"[..], &b"via client id"[..]]
    );
    assert_eq!(
        (first.qos, second.qos),
        (QoS::AtLeastOnce, QoS::AtLeastOnce)
    );
    client.expect_no_message(QUIET).await;
}

#[tokio::test]
async fn batch_publishes_in_order_after_checking_every_item() {
    let (broker, api) = api_broker(|_| {});
    let mut sub = Client::connect(broker.addr(), "batch-sub").await;
    sub.subscribe("batch/#", QoS::AtLeastOnce).await;
    let answer = api.post_ok(
        "/api/v1/publish/batch",
        &json!([
            { "topic": "batch/1", "payload": "one" },
            { "clientId": "batch-sub", "topic": "batch/2", "payload": "dHdv", "encoding": "base64", "qos": 1 },
            { "clientId": "ghost", "topic": "batch/3", "payload": "three" },
            { "topic": "nobody/listens", "payload": "four" },
        ]),
    );
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 4);
    assert_eq!(results[0], json!({ "delivered": 1 }));
    assert_eq!(results[1], json!({ "delivered": 1 }));
    assert_eq!(results[2]["error"], "client-not-found");
    assert_eq!(results[3], json!({ "delivered": 0 }));
    assert_eq!(&sub.recv().await.payload[..], b"one");
    assert_eq!(&sub.recv().await.payload[..], b"two");

    // One bad item refuses the whole batch, naming it; nothing is sent.
    let detail = api
        .post(
            "/api/v1/publish/batch",
            &json!([
                { "topic": "batch/ok", "payload": "fine" },
                { "topic": "batch/#", "payload": "wildcard" },
            ]),
        )
        .error(400, "invalid-topic");
    assert!(detail.starts_with("item 1: "), "{detail}");
    api.post("/api/v1/publish/batch", &json!([]))
        .error(400, "invalid-body");
    sub.expect_no_message(QUIET).await;
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

#[tokio::test]
async fn clients_are_listed_paged_and_described() {
    let (broker, api) = api_broker(|_| {});
    let mut clients = Vec::new();
    for n in 1..=5 {
        clients.push(Client::connect(broker.addr(), &format!("fleet-{n}")).await);
    }
    let mut lone = Client::connect(broker.addr(), "lone").await;
    lone.subscribe_many(&[("b/#", QoS::AtLeastOnce), ("a/+", QoS::AtMostOnce)])
        .await;
    let raw = RawClient::connect(broker.addr(), "raw-one");

    let mut ids = Vec::new();
    let mut path = "/api/v1/clients?prefix=fleet-&limit=2".to_owned();
    loop {
        let page = api.get_ok(&path);
        let list = page["clients"].as_array().unwrap();
        assert!(list.len() <= 2);
        ids.extend(
            list.iter()
                .map(|c| c["clientId"].as_str().unwrap().to_owned()),
        );
        match page["next"].as_str() {
            Some(next) => {
                assert_eq!(next, ids.last().unwrap());
                path = format!("/api/v1/clients?prefix=fleet-&limit=2&after={next}");
            }
            None => break,
        }
    }
    assert_eq!(ids, ["fleet-1", "fleet-2", "fleet-3", "fleet-4", "fleet-5"]);
    let all = api.get_ok("/api/v1/clients");
    assert_eq!(all["clients"].as_array().unwrap().len(), 7);
    assert_eq!(all["next"], Value::Null);

    let details = api.get_ok("/api/v1/clients/raw-one");
    let local = raw.stream.local_addr().unwrap().to_string();
    assert_eq!(details["clientId"], "raw-one");
    assert_eq!(details["connected"], true);
    assert_eq!(details["address"], local.as_str());
    assert_eq!(details["transport"], "tcp");
    assert_eq!(details["protocol"], "3.1.1");
    assert_eq!(details["protocolLevel"], 4);
    assert_eq!(details["cleanSession"], true);
    assert_eq!(details["keepAlive"], 60);
    assert_eq!(details["inflight"], 0);
    assert_eq!(details["queued"], 0);
    assert_eq!(details["subscriptions"], json!([]));
    let since = details["connectedSince"].as_str().unwrap();
    assert!(
        since.len() == 24 && since.ends_with('Z') && since.as_bytes()[10] == b'T',
        "RFC 3339: {since}"
    );

    let subscriptions = json!([{ "filter": "a/+", "qos": 0 }, { "filter": "b/#", "qos": 1 }]);
    let details = api.get_ok("/api/v1/clients/lone");
    assert_eq!(details["subscriptions"], subscriptions);
    assert_eq!(details["subscriptionCount"], 2);
    let listed = api.get_ok("/api/v1/clients/lone/subscriptions");
    assert_eq!(
        listed,
        json!({ "clientId": "lone", "subscriptions": subscriptions })
    );

    api.get("/api/v1/clients/nobody")
        .error(404, "client-not-found");
    api.get("/api/v1/clients/nobody/subscriptions")
        .error(404, "client-not-found");
    drop(clients);
}

#[tokio::test]
async fn kick_closes_the_client_and_publishes_its_will() {
    let (broker, api) = api_broker(|_| {});
    let mut watcher = Client::connect(broker.addr(), "watcher").await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    let mut victim = RawClient::connect_with(
        broker.addr(),
        &wire::Connect::new("victim").will("wills/victim", b"gone", 1, false),
    )
    .0;
    let answer = api.post_ok("/api/v1/clients/victim/kick", &json!({}));
    assert_eq!(answer, json!({ "clientId": "victim", "kicked": true }));
    victim.expect_closed();
    let will = watcher.recv().await;
    assert_eq!(
        (will.topic.as_str(), &will.payload[..]),
        ("wills/victim", &b"gone"[..])
    );
    assert_eq!(broker.metric(|m| &m.clients_kicked), 1);
    // A clean session leaves with its connection.
    wait_until(WAIT, "the session to go", || {
        api.get("/api/v1/clients/victim").status == 404
    });
    api.post("/api/v1/clients/victim/kick", &json!({}))
        .error(404, "client-not-found");

    // A persistent session stays, without a connection to close.
    let (keeper, _) =
        RawClient::connect_with(broker.addr(), &wire::Connect::new("keeper").clean(false));
    api.post_ok("/api/v1/clients/keeper/kick", &json!({}));
    drop(keeper);
    wait_until(WAIT, "the session to be offline", || {
        api.get_ok("/api/v1/clients/keeper")["connected"] == false
    });
    api.post("/api/v1/clients/keeper/kick", &json!({}))
        .error(409, "client-not-connected");
}

// ---------------------------------------------------------------------------
// Retained messages
// ---------------------------------------------------------------------------

#[tokio::test]
async fn retained_messages_are_listed_read_and_deleted() {
    let (broker, api) = api_broker(|_| {});
    let mut publisher = Client::connect(broker.addr(), "retainer").await;
    for topic in ["r/a", "r/b", "r/b/c", "r/c"] {
        publisher
            .publish(topic, QoS::AtLeastOnce, true, format!("value of {topic}"))
            .await;
    }
    publisher
        .publish("r/bin", QoS::AtMostOnce, true, vec![0xFF, 0x00])
        .await;
    let answer = api.post_ok(
        "/api/v1/publish",
        &json!({ "topic": "r/api", "payload": "from the API", "retain": true, "qos": 1 }),
    );
    assert_eq!(answer["delivered"], 0);

    let mut topics = Vec::new();
    let mut path = "/api/v1/retained?limit=4".to_owned();
    loop {
        let page = api.get_ok(&path);
        topics.extend(
            page["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["topic"].as_str().unwrap().to_owned()),
        );
        match page["next"].as_str() {
            Some(next) => path = format!("/api/v1/retained?limit=4&after={next}"),
            None => break,
        }
    }
    assert_eq!(topics, ["r/a", "r/api", "r/b", "r/b/c", "r/bin", "r/c"]);

    let message = api.get_ok("/api/v1/retained/message?topic=r%2Fb%2Fc");
    assert_eq!(
        message,
        json!({ "topic": "r/b/c", "payload": "value of r/b/c", "encoding": "text", "qos": 1, "size": 14 })
    );
    let binary = api.get_ok("/api/v1/retained/message?topic=r/bin");
    assert_eq!(
        (binary["payload"].as_str(), binary["encoding"].as_str()),
        (Some("/wA="), Some("base64"))
    );
    assert_eq!(
        api.get_ok("/api/v1/retained/message?topic=r/api")["payload"],
        "from the API"
    );

    let deleted = Api::ok(api.delete("/api/v1/retained/message?topic=r/b"));
    assert_eq!(deleted, json!({ "topic": "r/b", "deleted": true }));
    api.get("/api/v1/retained/message?topic=r/b")
        .error(404, "retained-not-found");
    api.delete("/api/v1/retained/message?topic=r/b")
        .error(404, "retained-not-found");
    api.get("/api/v1/retained/message")
        .error(400, "invalid-parameter");
    api.get("/api/v1/retained/message?topic=r/%2B")
        .error(400, "invalid-topic");

    // A new subscriber gets what is left.
    let mut late = Client::connect(broker.addr(), "late").await;
    late.subscribe("r/+", QoS::AtLeastOnce).await;
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(late.recv().await.topic);
    }
    got.sort();
    assert_eq!(got, ["r/a", "r/api", "r/bin", "r/c"]);
    late.expect_no_message(QUIET).await;
}

// ---------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------

fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{name} missing from:\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn stats_and_metrics_follow_the_broker() {
    let (broker, api) = api_broker(|_| {});
    let before = api.get_ok("/api/v1/stats");
    assert_eq!(before["connections"], 0);
    assert_eq!(before["messagesReceived"], 0);

    let mut sub = Client::connect(broker.addr(), "stats-sub").await;
    sub.subscribe_many(&[("s/#", QoS::AtLeastOnce), ("x/#", QoS::AtMostOnce)])
        .await;
    let mut publisher = Client::connect(broker.addr(), "stats-pub").await;
    for n in 0..5 {
        publisher
            .publish("s/1", QoS::AtLeastOnce, n == 0, format!("m{n}"))
            .await;
        sub.recv().await;
    }
    api.post_ok(
        "/api/v1/publish",
        &json!({ "topic": "s/2", "payload": "api" }),
    );
    sub.recv().await;

    let stats = api.get_ok("/api/v1/stats");
    assert_eq!(stats["connections"], 2);
    assert_eq!(stats["sessions"], 2);
    assert_eq!(stats["subscriptions"], 2);
    assert_eq!(stats["retained"], 1);
    assert_eq!(stats["messagesReceived"], 6);
    assert_eq!(stats["messagesSent"], 6);
    assert_eq!(stats["dropped"], 0);
    assert_eq!(stats["connectionsTotal"], 2);

    let metrics = api.get("/metrics");
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.content_type.starts_with("text/plain"),
        "{metrics:?}"
    );
    let text = &metrics.text;
    assert!(text.contains("# TYPE easy_mqtt_messages_received_total counter\n"));
    assert!(text.contains("# HELP easy_mqtt_connections "));
    assert_eq!(metric_value(text, "easy_mqtt_connections"), 2.0);
    assert_eq!(metric_value(text, "easy_mqtt_sessions"), 2.0);
    assert_eq!(metric_value(text, "easy_mqtt_subscriptions"), 2.0);
    assert_eq!(metric_value(text, "easy_mqtt_retained_messages"), 1.0);
    assert_eq!(metric_value(text, "easy_mqtt_messages_received_total"), 6.0);
    assert_eq!(metric_value(text, "easy_mqtt_messages_sent_total"), 6.0);
    assert_eq!(metric_value(text, "easy_mqtt_api_publishes_total"), 1.0);

    // Rates come from samples taken every second.
    wait_until(WAIT, "a message rate", || {
        let stats = api.get_ok("/api/v1/stats");
        stats["messagesReceivedPerSecond"].as_f64().unwrap() > 0.0
            && stats["messagesSentPerSecond"].as_f64().unwrap() > 0.0
    });

    // Offline QoS 0 is counted as dropped.
    sub.disconnect().await;
    let (mut persistent, _) = Client::connect_session(broker.addr(), "keeps", false).await;
    persistent.subscribe("x/#", QoS::AtMostOnce).await;
    persistent.disconnect().await;
    wait_until(WAIT, "the session to be offline", || {
        api.get_ok("/api/v1/clients/keeps")["connected"] == false
    });
    api.post_ok(
        "/api/v1/publish",
        &json!({ "topic": "x/1", "payload": "lost" }),
    );
    let stats = api.get_ok("/api/v1/stats");
    assert_eq!(stats["dropped"], 1);
    assert_eq!(stats["droppedOfflineQos0"], 1);
}

// ---------------------------------------------------------------------------
// Security and errors
// ---------------------------------------------------------------------------

#[test]
fn credentials_are_required_except_for_health() {
    let broker = TestBroker::with(|c| {
        c.mqtt.server.api_token = "t0ken".into();
        c.mqtt.server.api_username = "admin".into();
        c.mqtt.server.api_password = "pa55".into();
    });
    let anonymous = Api::of(&broker);
    for path in [
        "/api/v1/stats",
        "/metrics",
        "/api/v1/openapi.json",
        "/api/v1/clients",
        "/nowhere",
    ] {
        let reply = anonymous.get(path);
        reply.error(401, "unauthorized");
        let challenge = reply.header("www-authenticate").unwrap_or_default();
        assert!(
            challenge.contains("Bearer") && challenge.contains("Basic"),
            "{challenge}"
        );
    }
    anonymous
        .post("/api/v1/publish", &json!({ "topic": "t", "payload": "x" }))
        .error(401, "unauthorized");
    assert_eq!(anonymous.get_ok("/health"), json!({ "status": "ok" }));

    let wrong = Api::of(&broker).with_authorization("Bearer t0kem");
    wrong.get("/api/v1/stats").error(401, "unauthorized");
    let wrong = Api::of(&broker).with_authorization("Basic YWRtaW46d3Jvbmc="); // admin:wrong
    wrong.get("/api/v1/stats").error(401, "unauthorized");

    let bearer = Api::of(&broker).with_authorization("Bearer t0ken");
    bearer.get_ok("/api/v1/stats");
    let basic = Api::of(&broker).with_authorization("Basic YWRtaW46cGE1NQ=="); // admin:pa55
    basic.get_ok("/api/v1/stats");
    basic.get("/nowhere").error(404, "no-such-endpoint");
}

#[test]
fn the_api_listens_on_its_own_loopback_address() {
    let broker = TestBroker::start();
    let api = broker.broker().api_addr().unwrap();
    assert!(api.ip().is_loopback(), "{api}");
    assert_ne!(api.port(), broker.port());
    let mut config = Config::default();
    assert_eq!(config.mqtt.server.api_host.to_string(), "127.0.0.1");
    config.mqtt.server.host = "0.0.0.0".parse().unwrap();
    assert_eq!(config.api_bind_addr().to_string(), "127.0.0.1:8083");
}

#[test]
fn malformed_requests_get_4xx_json_naming_the_problem() {
    let (_broker, api) = api_broker(|c| c.mqtt.server.api_max_body_size = 2048);
    let cases: Vec<(&[u8], u16, &str, &str)> = vec![
        (b"{\"topic\": ", 400, "invalid-json", "EOF"),
        (b"not json", 400, "invalid-json", "expected"),
        (b"[1, 2]", 400, "invalid-body", "invalid type"),
        (
            b"{\"payload\": \"x\"}",
            400,
            "invalid-body",
            "missing field `topic`",
        ),
        (
            b"{\"topic\": \"t\", \"payload\": \"x\", \"colour\": 1}",
            400,
            "invalid-body",
            "unknown field `colour`",
        ),
        (
            b"{\"topic\": \"a/+/c\", \"payload\": \"x\"}",
            400,
            "invalid-topic",
            "wildcard",
        ),
        (
            b"{\"topic\": \"\", \"payload\": \"x\"}",
            400,
            "invalid-topic",
            "at least one character",
        ),
        (
            b"{\"topic\": \"t\", \"payload\": \"!!\", \"encoding\": \"base64\"}",
            400,
            "invalid-payload",
            "base64",
        ),
        (
            b"{\"topic\": \"t\", \"payload\": \"x\", \"encoding\": \"hex\"}",
            400,
            "invalid-body",
            "unknown variant `hex`",
        ),
        (
            b"{\"topic\": \"t\", \"payload\": \"x\", \"qos\": 2}",
            400,
            "invalid-qos",
            "0 or 1",
        ),
        (
            b"{\"topic\": \"t\", \"payload\": \"x\", \"qos\": -1}",
            400,
            "invalid-body",
            "-1",
        ),
    ];
    for (body, status, code, needle) in cases {
        let reply = api.post_raw("/api/v1/publish", "application/json", body);
        let detail = reply.error(status, code);
        assert!(
            detail.contains(needle),
            "{}: {detail:?} should mention {needle:?}",
            String::from_utf8_lossy(body)
        );
    }
    let big = json!({ "topic": "t", "payload": "x".repeat(4096) });
    api.post("/api/v1/publish", &big)
        .error(413, "payload-too-large");
    let detail = api
        .post_raw(
            "/api/v1/publish",
            "text/plain",
            b"{\"topic\":\"t\",\"payload\":\"x\"}",
        )
        .error(415, "unsupported-media-type");
    assert!(detail.contains("application/json"), "{detail}");

    let reply = api.delete("/api/v1/stats");
    reply.error(405, "method-not-allowed");
    assert_eq!(reply.header("allow"), Some("GET"));
    let reply = api.get("/api/v1/publish");
    reply.error(405, "method-not-allowed");
    assert_eq!(reply.header("allow"), Some("POST"));
    api.get("/api/v1/nothing").error(404, "no-such-endpoint");
    api.get("/").error(404, "no-such-endpoint");
    let detail = api
        .get("/api/v1/stats?verbose=1")
        .error(400, "invalid-parameter");
    assert!(detail.contains("verbose"), "{detail}");
    let detail = api
        .get("/api/v1/clients?limit=0")
        .error(400, "invalid-parameter");
    assert!(detail.contains("limit"), "{detail}");
    api.get("/api/v1/clients?limit=abc")
        .error(400, "invalid-parameter");
    api.get("/api/v1/clients?limit=1&limit=2")
        .error(400, "invalid-parameter");
    api.get("/api/v1/clients/%zz")
        .error(400, "invalid-encoding");
    api.get("/api/v1/clients/%FF")
        .error(400, "invalid-encoding");

    // A request from a web page is refused, credentials or not.
    let mut request = api.agent.get(format!("{}/api/v1/stats", api.base));
    request = request.header("Origin", "http://example.com");
    Api::finish(request.call()).error(403, "cross-origin");

    // The API still serves.
    api.get_ok("/api/v1/stats");
}

#[test]
fn the_openapi_document_is_served_as_kept_in_the_repository() {
    let (_broker, api) = api_broker(|_| {});
    let served = api.get("/api/v1/openapi.json");
    assert_eq!(served.status, 200);
    assert_eq!(served.content_type, "application/json");
    let kept =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json"))
            .unwrap();
    assert_eq!(served.text, kept);
    let document = served.json();
    assert_eq!(document["openapi"], "3.0.3");
    // Every documented path answers something other than 404 for its
    // documented methods (a 4xx for missing input is fine).
    let paths = document["paths"].as_object().unwrap();
    for (path, item) in paths {
        let concrete = path.replace("{clientId}", "nobody");
        for method in item.as_object().unwrap().keys() {
            let reply = match method.as_str() {
                "get" => api.get(&concrete),
                "delete" => api.delete(&concrete),
                "post" => api.post(&concrete, &json!({ "topic": "t", "payload": "x" })),
                _ => continue,
            };
            let unknown_route = reply.status == 404 && reply.json()["error"] == "no-such-endpoint";
            assert!(!unknown_route, "{method} {path}: {reply:?}");
            assert!(reply.status < 500, "{method} {path}: {reply:?}");
        }
    }
}

#[test]
fn slow_or_oversized_requests_are_cut_off() {
    use std::io::{Read, Write};
    let (broker, _api) = api_broker(|c| c.mqtt.server.api_request_timeout = 1);
    let addr = broker.broker().api_addr().unwrap();
    let exchange = |request: &[u8]| -> String {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let _ = stream.write_all(request);
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    };
    // A body that never fully arrives: 408 with a JSON error.
    let answer = exchange(
        b"POST /api/v1/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\n\r\n{\"topic\"",
    );
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(answer.contains(r#""error":"request-timeout""#), "{answer}");
    // Headers that never end: the connection is closed.
    let answer = exchange(b"GET /api/v1/stats HTTP/1.1\r\nHost: x\r\n");
    assert_eq!(answer, "", "closed without an answer");
    // Headers over 64 KiB: 431.
    let mut big = b"GET /api/v1/stats HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 70_000));
    big.extend(b"\r\n\r\n");
    let answer = exchange(&big);
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
}
