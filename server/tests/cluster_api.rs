//! The HTTP API across a cluster: two broker nodes on one real
//! `redis-server`, real MQTT clients (rumqttc, mosquitto_pub) on one node,
//! a real HTTP client (ureq) asking the other.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../storage-kvrocks/tests/common/mod.rs"]
#[allow(unused)]
mod redis_common;

use std::time::Duration;

use common::{
    Client, QoS, TestBroker, WAIT, cluster_node as node_on, mosquitto_pub_ok, wait_until,
};
use redis_common::Server;
use serde_json::{Value, json};

/// Two nodes, `n1` and `n2`, on one redis-server.
fn two_nodes() -> (Server, TestBroker, TestBroker) {
    let redis = Server::standalone();
    let nodes = vec![redis.node()];
    let n1 = node_on(&nodes, "n1");
    let n2 = node_on(&nodes, "n2");
    (redis, n1, n2)
}

/// The time within which a new subscription is seen by publishes on other
/// nodes (README: one heartbeat interval, plus an inbox read).
async fn route_bound() {
    tokio::time::sleep(Duration::from_millis(150)).await;
}

/// A blocking JSON client of one node's API.
struct Api {
    base: String,
    agent: ureq::Agent,
}

impl Api {
    fn of(broker: &TestBroker) -> Api {
        let addr = broker.broker().api_addr().expect("the API is on");
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(WAIT))
            .build()
            .new_agent();
        Api {
            base: format!("http://{addr}"),
            agent,
        }
    }

    fn answer(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, String) {
        let mut response = response.expect("HTTP exchange");
        let status = response.status().as_u16();
        (status, response.body_mut().read_to_string().unwrap())
    }

    fn get_text(&self, path: &str) -> (u16, String) {
        Api::answer(self.agent.get(format!("{}{path}", self.base)).call())
    }

    fn get(&self, path: &str) -> (u16, Value) {
        let (status, text) = self.get_text(path);
        (status, serde_json::from_str(&text).unwrap())
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let request = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Content-Type", "application/json");
        let (status, text) = Api::answer(request.send(body.to_string().as_bytes()));
        (status, serde_json::from_str(&text).unwrap())
    }

    fn delete(&self, path: &str) -> (u16, Value) {
        let (status, text) = Api::answer(self.agent.delete(format!("{}{path}", self.base)).call());
        (status, serde_json::from_str(&text).unwrap())
    }

    fn get_ok(&self, path: &str) -> Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }
}

/// Waits until `client_id` shows in `node`'s presence as seen by `api`
/// (the presence is stored before the CONNACK, so this is immediate).
fn remote_client(api: &Api, client_id: &str) -> Value {
    api.get_ok(&format!("/api/v1/clients/{client_id}"))
}

#[tokio::test(flavor = "current_thread")]
async fn one_to_one_publish_reaches_a_client_on_another_node() {
    let (_redis, n1, n2) = two_nodes();
    let api = Api::of(&n1);
    let mut device = Client::connect(n2.addr(), "device-1").await;
    let received_before = n2.metric(|m| &m.bus_received);

    // Connected to n2, published through n1's API: it arrives, once.
    for (qos, payload) in [(1, "reboot"), (0, "ping")] {
        let (status, body) = api.post(
            "/api/v1/clients/device-1/publish",
            &json!({ "topic": "commands", "payload": payload, "qos": qos }),
        );
        assert_eq!((status, &body), (200, &json!({ "delivered": 1 })));
        let got = device.recv().await;
        assert_eq!(
            (got.topic.as_str(), &got.payload[..]),
            ("commands", payload.as_bytes())
        );
    }
    device.expect_no_message(Duration::from_millis(300)).await;
    // It came through n2's inbox.
    assert!(n2.metric(|m| &m.bus_received) >= received_before + 2);

    // A batch item to it too.
    let (status, body) = api.post(
        "/api/v1/publish/batch",
        &json!([{ "clientId": "device-1", "topic": "commands", "payload": "batched", "qos": 1 }]),
    );
    assert_eq!((status, &body["results"][0]["delivered"]), (200, &json!(1)));
    assert_eq!(&device.recv().await.payload[..], b"batched");

    // Unknown everywhere: 404, as on a single node.
    let (status, body) = api.post(
        "/api/v1/clients/nobody/publish",
        &json!({ "topic": "commands", "payload": "x" }),
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("client-not-found"))
    );

    // A persistent session whose client left n2: QoS 1 is kept for its
    // return, QoS 0 is not (as on a single node).
    let (keeper, _) = Client::connect_session(n2.addr(), "keeper", false).await;
    keeper.disconnect().await;
    let (status, body) = api.post(
        "/api/v1/clients/keeper/publish",
        &json!({ "topic": "jobs", "payload": "kept", "qos": 1 }),
    );
    assert_eq!((status, &body), (200, &json!({ "delivered": 1 })));
    // Stored on n2 once its inbox is read.
    wait_until(WAIT, "n2 read its inbox", || {
        n2.metric(|m| &m.bus_received) >= received_before + 4
    });
    let (mut keeper, connack) = Client::connect_session(n2.addr(), "keeper", false).await;
    assert!(connack.session_present);
    let got = keeper.recv().await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("jobs", &b"kept"[..])
    );
    keeper.expect_no_message(Duration::from_millis(300)).await;

    // Statistics of both nodes count the cluster.
    let stats = api.get_ok("/api/v1/stats");
    assert_eq!(stats["clusterNodes"], 2, "{stats}");
    let stats2 = Api::of(&n2).get_ok("/api/v1/stats");
    assert!(stats2["busReceived"].as_u64().unwrap() >= 4, "{stats2}");
    let (status, metrics) = api.get_text("/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("\neasy_mqtt_cluster_nodes 2\n"),
        "{metrics}"
    );
    assert!(metrics.contains("\n# TYPE easy_mqtt_bus_received_total counter\n"));
}

/// A retained message deleted through one node's API is gone from every
/// node: each keeps every retained message in memory, and is told to read
/// them again once the delete is stored.
#[tokio::test(flavor = "current_thread")]
async fn a_retained_message_deleted_on_one_node_is_gone_on_the_other() {
    let (_redis, n1, n2) = two_nodes();
    let (api1, api2) = (Api::of(&n1), Api::of(&n2));
    mosquitto_pub_ok(n1.port(), &["-t", "r/door", "-q", "1", "-r", "-m", "open"]);
    mosquitto_pub_ok(n1.port(), &["-t", "r/kept", "-q", "1", "-r", "-m", "kept"]);
    let path = "/api/v1/retained/message?topic=r/door";
    wait_until(WAIT, "the retained message on n2", || {
        api2.get(path).0 == 200
    });

    let (status, body) = api1.delete(path);
    assert_eq!(
        (status, &body),
        (200, &json!({ "topic": "r/door", "deleted": true }))
    );
    wait_until(WAIT, "the delete to reach n2", || api2.get(path).0 == 404);
    // The other retained message stays, and a subscriber on n2 gets it
    // alone.
    let kept = api2.get_ok("/api/v1/retained/message?topic=r/kept");
    assert_eq!(kept["payload"], "kept");
    let mut sub = Client::connect(n2.addr(), "r-sub").await;
    sub.subscribe("r/#", QoS::AtLeastOnce).await;
    let got = sub.recv().await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("r/kept", &b"kept"[..])
    );
    sub.expect_no_message(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_client_on_another_node_is_kicked_and_keeps_its_session() {
    let (_redis, n1, n2) = two_nodes();
    let api = Api::of(&n1);
    let mut watcher = Client::connect(n1.addr(), "watcher").await;
    watcher.subscribe("will/#", QoS::AtLeastOnce).await;
    route_bound().await;

    let mut options = common::options(n2.addr(), "victim");
    options.set_clean_session(false);
    options.set_last_will(rumqttc::LastWill::new(
        "will/victim",
        "gone",
        QoS::AtLeastOnce,
        false,
    ));
    let (mut victim, _) = Client::connect_opts(options).await;
    victim.subscribe("v/#", QoS::AtLeastOnce).await;

    let (status, body) = api.post("/api/v1/clients/victim/kick", &json!({}));
    assert_eq!(
        (status, &body),
        (200, &json!({ "clientId": "victim", "kicked": true }))
    );
    victim.expect_closed().await;
    // Its will, as for any close without DISCONNECT.
    let will = watcher.recv().await;
    assert_eq!(
        (will.topic.as_str(), &will.payload[..]),
        ("will/victim", &b"gone"[..])
    );
    assert_eq!(n1.metric(|m| &m.clients_kicked), 1);

    // Nobody has it connected any more: 409 (its session is kept), and an
    // unknown client is 404.
    wait_until(WAIT, "presence cleared", || {
        api.post("/api/v1/clients/victim/kick", &json!({})).0 == 409
    });
    let (status, body) = api.post("/api/v1/clients/nobody/kick", &json!({}));
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("client-not-found"))
    );

    // Its persistent session keeps receiving once the old node stopped
    // forwarding for it (node-timeout: 1 s here), and is found on return.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    mosquitto_pub_ok(n2.port(), &["-t", "v/1", "-q", "1", "-m", "while-away"]);
    let (mut back, connack) = Client::connect_session(n2.addr(), "victim", false).await;
    assert!(connack.session_present);
    let got = back.recv().await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("v/1", &b"while-away"[..])
    );
    back.expect_no_message(Duration::from_millis(300)).await;
    watcher.expect_no_message(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "current_thread")]
async fn clients_and_nodes_are_listed_across_the_cluster() {
    let (_redis, n1, n2) = two_nodes();
    let api = Api::of(&n1);
    let mut here = Client::connect(n1.addr(), "c-here").await;
    here.subscribe("a/#", QoS::AtLeastOnce).await;
    let mut there = Client::connect(n2.addr(), "c-there").await;
    there.subscribe("b/#", QoS::AtLeastOnce).await;
    there.subscribe("c/#", QoS::AtLeastOnce).await;

    // One client's details: local ones in full, a remote one by its node.
    let local = remote_client(&api, "c-here");
    assert_eq!(local["node"], "n1");
    assert_eq!(local["subscriptions"][0]["filter"], "a/#");
    let remote = remote_client(&api, "c-there");
    assert_eq!(remote["node"], "n2", "{remote}");
    assert_eq!(remote["connected"], true);
    assert!(remote["connectedSince"].as_str().unwrap().ends_with('Z'));
    let (status, _) = api.get("/api/v1/clients/nobody");
    assert_eq!(status, 404);

    // The list: this node's sessions by default, every node's with
    // scope=cluster, paged.
    let list = api.get_ok("/api/v1/clients?prefix=c-");
    assert_eq!(list["clients"].as_array().unwrap().len(), 1);
    assert_eq!(list["clients"][0]["node"], "n1");
    let page = api.get_ok("/api/v1/clients?scope=cluster&prefix=c-&limit=1");
    assert_eq!(page["clients"][0]["clientId"], "c-here");
    assert_eq!(page["clients"][0]["node"], "n1");
    assert_eq!(page["next"], "c-here");
    let page = api.get_ok("/api/v1/clients?scope=cluster&prefix=c-&after=c-here");
    assert_eq!(page["clients"][0]["clientId"], "c-there");
    assert_eq!(page["clients"][0]["node"], "n2");
    assert_eq!(page["next"], Value::Null);
    let (status, _) = api.get("/api/v1/clients?scope=everywhere");
    assert_eq!(status, 400);

    // The nodes, with their routes (after the route refresh) and clients.
    wait_until(WAIT, "n2's routes seen by n1", || {
        let cluster = api.get_ok("/api/v1/cluster");
        cluster["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["node"] == "n2" && n["routes"] == 2)
    });
    let cluster = api.get_ok("/api/v1/cluster");
    assert_eq!(cluster["enabled"], true);
    assert_eq!(cluster["node"], "n1");
    let nodes = cluster["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2, "{cluster}");
    for (node, id) in nodes.iter().zip(["n1", "n2"]) {
        assert_eq!(node["node"], id, "{cluster}");
        assert_eq!(node["alive"], true, "{cluster}");
        assert_eq!(node["clients"], 1, "{cluster}");
        assert!(node["incarnation"].as_u64().unwrap() > 0, "{cluster}");
    }
    assert_eq!(nodes[0]["routes"], 1, "{cluster}");

    // Outside a cluster the endpoint says so.
    let single = TestBroker::start();
    let alone = Api::of(&single).get_ok("/api/v1/cluster");
    assert_eq!(
        alone,
        json!({ "enabled": false, "node": "test", "nodes": [] })
    );
    let stats = Api::of(&single).get_ok("/api/v1/stats");
    assert_eq!(stats["clusterNodes"], Value::Null);
}
