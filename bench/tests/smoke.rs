//! CI smoke test of the bench tool: our broker in-process on a free
//! loopback port, tiny runs of each scenario, asserting exact accounting
//! (every delivery arrives, no QoS 2 duplicate). No timing is asserted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{InProcessBroker, options, run_exact};
use easy_mqtt_bench::args::Scenario;
use easy_mqtt_bench::run;
use easy_mqtt_core::packet::QoS;

#[test]
fn every_scenario_accounts_exactly() {
    let broker = InProcessBroker::start();
    let pid = std::process::id();

    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let mut o = options(Scenario::Fanout, broker.addr);
        o.qos = qos;
        o.subscribers = 5;
        o.publishers = 2;
        o.messages = 10;
        o.inflight = 4; // smaller than the messages: the window turns over
        o.broker_pids = vec![pid];
        let (line, result) = run_exact(o, 100);
        assert_eq!(result["qos"], (qos as u8).to_string(), "{line}");
        assert!(result.contains_key("p99_us") && result.contains_key("broker_rss_kb"));
    }

    let mut fanin = options(Scenario::Fanin, broker.addr);
    fanin.publishers = 3;
    fanin.messages = 20;
    fanin.qos = QoS::ExactlyOnce;
    let report = run(fanin).expect("fanin runs");
    assert_eq!(
        report.shard.progress.received,
        60,
        "{}",
        report.result_line()
    );
    assert_eq!((report.lost(), report.dup()), (0, 0));

    let mut pairs = options(Scenario::Pairs, broker.addr);
    pairs.subscribers = 4;
    pairs.publishers = 4;
    pairs.messages = 5;
    let report = run(pairs).expect("pairs runs");
    assert_eq!(
        report.shard.progress.received,
        20,
        "{}",
        report.result_line()
    );
    assert_eq!(report.exit_code(), 0, "{}", report.result_line());

    let mut publish = options(Scenario::Pub, broker.addr);
    publish.publishers = 2;
    publish.messages = 50;
    publish.rate = 2000.0; // paced: 25 ms
    let report = run(publish).expect("pub runs");
    assert_eq!(report.shard.progress.acked, 100, "{}", report.result_line());

    let mut conn = options(Scenario::Conn, broker.addr);
    conn.connections = 20;
    conn.broker_pids = vec![pid];
    let report = run(conn).expect("conn runs");
    let line = report.result_line();
    assert_eq!(report.shard.connected, 20, "{line}");
    assert!(
        line.contains(" conn_rate=") && line.contains(" bytes_per_conn="),
        "{line}"
    );
    assert_eq!(report.exit_code(), 0, "{line}");
}

#[test]
fn connection_failure_is_reported() {
    // A port nobody listens on: the run reports failures and exits 1.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let mut o = options(Scenario::Fanout, SocketAddr::from(([127, 0, 0, 1], port)));
    o.subscribers = 2;
    o.publishers = 1;
    o.messages = 1;
    o.connect_timeout = Duration::from_secs(2);
    let report = run(o).expect("the run itself completes");
    assert_eq!(report.shard.conn_failures, 3, "{}", report.result_line());
    assert_eq!(report.exit_code(), 1);
    assert!(report.problems().iter().any(|p| p.contains("connect")));
}
