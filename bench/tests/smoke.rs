//! CI smoke test of the bench tool: our broker in-process on a free
//! loopback port, tiny runs of each scenario, asserting exact accounting
//! (every delivery arrives, no QoS 2 duplicate). No timing is asserted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use easy_mqtt_bench::args::{Options, Scenario};
use easy_mqtt_bench::{parse_result, run};
use easy_mqtt_core::packet::QoS;
use easy_mqtt_server::broker::Broker;
use easy_mqtt_server::config::Config;

/// Our broker on 127.0.0.1, a free port, two executor threads.
struct InProcessBroker {
    broker: Option<Broker>,
    addr: SocketAddr,
    stop: Option<smol::channel::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl InProcessBroker {
    fn start() -> InProcessBroker {
        let mut config = Config::default();
        config.mqtt.server.host = "127.0.0.1".parse().unwrap();
        config.mqtt.server.tcp_port = 0;
        config.mqtt.server.websocket_port = 0;
        config.mqtt.server.api_port = 0;
        config.mqtt.server.node_id = "benchsmoke".into();
        config.mqtt.server.log_level = "warn".into();
        config.validate().expect("valid configuration");
        let executor = Arc::new(smol::Executor::<'static>::new());
        let (stop, stopped) = smol::channel::bounded::<()>(1);
        let threads = (0..2)
            .map(|i| {
                let executor = executor.clone();
                let stopped = stopped.clone();
                std::thread::Builder::new()
                    .name(format!("smoke-broker-{i}"))
                    .spawn(move || {
                        smol::block_on(executor.run(async {
                            let _ = stopped.recv().await;
                        }))
                    })
                    .unwrap()
            })
            .collect();
        let broker = smol::block_on(Broker::start(&config, executor)).expect("broker starts");
        InProcessBroker {
            addr: broker.tcp_addr(),
            broker: Some(broker),
            stop: Some(stop),
            threads,
        }
    }
}

impl Drop for InProcessBroker {
    fn drop(&mut self) {
        if let Some(broker) = self.broker.take() {
            smol::block_on(broker.shutdown(Duration::from_secs(2)));
        }
        self.stop = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn options(scenario: Scenario, addr: SocketAddr) -> Options {
    let mut options = Options::new(scenario, addr);
    options.progress = false;
    options.threads = 2;
    options.timeout = Duration::from_secs(20);
    options.drain = Duration::from_secs(2);
    options.hold = Duration::ZERO;
    options.source_addrs = 4;
    options
}

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
        o.broker_pid = Some(pid);
        let report = run(o).expect("fanout runs");
        let line = report.result_line();
        let result = parse_result(&line).expect("a RESULT line");
        assert_eq!(result["received"], "100", "{line}");
        assert_eq!(result["lost"], "0", "{line}");
        assert_eq!(result["dup"], "0", "{line}");
        assert_eq!(result["errors"], "0", "{line}");
        assert_eq!(result["qos"], (qos as u8).to_string(), "{line}");
        assert!(result.contains_key("p99_us") && result.contains_key("broker_rss_kb"));
        assert_eq!(report.exit_code(), 0, "{line}");
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
    conn.broker_pid = Some(pid);
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
