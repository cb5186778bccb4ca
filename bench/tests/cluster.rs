//! The bench tool across brokers: subscribers on one node of a cluster (two
//! in-process nodes on a real `redis-server`), publishers on the other. The
//! probe must hold the timed phase until the subscriptions are effective on
//! the publishers' node, so that the accounting is exact; between two
//! brokers that are not a cluster it must refuse to start rather than
//! report a loss. And the original's scenario in miniature on one node of
//! Kvrocks (persistent sessions), exact.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{InProcessBroker, options, run_exact};
use easy_mqtt_bench::args::Scenario;
use easy_mqtt_bench::run;
use easy_mqtt_core::packet::QoS;

/// A `redis-server` on a free loopback port, in memory; killed on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start() -> Redis {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect(
                "redis-server is needed by this test (apt-get install redis-server, \
                 as for the storage-kvrocks tests)",
            );
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis { child, port }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn node(redis: &Redis, name: &str) -> InProcessBroker {
    let nodes = vec![format!("127.0.0.1:{}", redis.port)];
    InProcessBroker::start_with(name, move |config| {
        config.mqtt.kvrocks.cluster.nodes = nodes;
        // The defaults' bound (a 1 s heartbeat) would do as well; the
        // probe waits for whatever it is.
        config.mqtt.cluster.heartbeat_interval = 100;
        config.mqtt.cluster.node_timeout = 1000;
    })
}

#[test]
fn fanout_across_two_cluster_nodes_is_exact() {
    let redis = Redis::start();
    let n1 = node(&redis, "bench-n1");
    let n2 = node(&redis, "bench-n2");
    for qos in [QoS::AtLeastOnce, QoS::AtMostOnce] {
        let mut o = options(Scenario::Fanout, n1.addr);
        o.sub_targets = vec![n1.addr];
        o.pub_targets = vec![n2.addr];
        o.qos = qos;
        o.subscribers = 20;
        o.publishers = 2;
        o.messages = 10;
        o.inflight = 4;
        o.broker_pids = vec![std::process::id(), std::process::id()];
        assert_eq!(o.probes(), vec![n2.addr]);
        // Exactly the timed phase's messages: the probes are not counted.
        let (line, result) = run_exact(o, 400);
        assert!(result.contains_key("probe_secs"), "{line}");
        assert!(result["node_cpu_s"].split(',').count() == 2, "{line}");
    }
}

#[test]
fn probe_refuses_brokers_that_are_not_one_cluster() {
    // Two separate in-memory brokers: a publication on one never reaches
    // the other's subscribers, so the timed phase must not start.
    let a = InProcessBroker::start_with("bench-a", |_| {});
    let b = InProcessBroker::start_with("bench-b", |_| {});
    let mut o = options(Scenario::Fanout, a.addr);
    o.sub_targets = vec![a.addr];
    o.pub_targets = vec![b.addr];
    o.subscribers = 3;
    o.publishers = 1;
    o.messages = 5;
    o.probe_timeout = Duration::from_millis(500);
    let report = run(o).expect("the run itself completes");
    let line = report.result_line();
    assert_eq!(report.shard.progress.published, 0, "{line}");
    assert_eq!(report.exit_code(), 1, "{line}");
    assert!(
        report.problems().iter().any(|p| p.contains("probe")),
        "{:?}",
        report.problems()
    );
}

/// The original's scenario in miniature on one Kvrocks node: persistent
/// subscribers, one QoS 1 message per publisher, all at once. The journal
/// writes 500 ops per call and the route write window is 300 ms
/// (`node-timeout` − `heartbeat-interval`), so routing batches wait in the
/// journal longer than the window, as the full scenario's do (~10 s against
/// 4 s): a storage that is busy, not down, delays the acks and every
/// delivery arrives (session 12's code refused the publishes).
#[test]
fn the_originals_scenario_in_miniature_on_kvrocks_is_exact() {
    let redis = Redis::start();
    let nodes = vec![format!("127.0.0.1:{}", redis.port)];
    let broker = InProcessBroker::start_with("bench-original", move |config| {
        config.mqtt.kvrocks.cluster.nodes = nodes;
        config.mqtt.kvrocks.write_batch_ops = 500;
        config.mqtt.cluster.heartbeat_interval = 100;
        config.mqtt.cluster.node_timeout = 400;
    });
    let mut o = options(Scenario::Fanout, broker.addr);
    o.qos = QoS::AtLeastOnce;
    o.clean_session = false;
    o.subscribers = 1000;
    o.publishers = 100;
    o.messages = 1;
    o.broker_pids = vec![std::process::id()];
    run_exact(o, 100_000);
}
