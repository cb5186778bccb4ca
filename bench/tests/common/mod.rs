//! Helpers of the bench tool's tests: our broker in-process, and the
//! options of a small run.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use easy_mqtt_bench::args::{Options, Scenario};
use easy_mqtt_server::broker::Broker;
use easy_mqtt_server::config::Config;

/// Our broker on 127.0.0.1, a free port, two executor threads.
pub struct InProcessBroker {
    broker: Option<Broker>,
    pub addr: SocketAddr,
    stop: Option<smol::channel::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl InProcessBroker {
    pub fn start() -> InProcessBroker {
        InProcessBroker::start_with("benchsmoke", |_| {})
    }

    /// A broker named `node_id`, its configuration changed by `configure`
    /// (storage, cluster) before it is validated.
    pub fn start_with(node_id: &str, configure: impl FnOnce(&mut Config)) -> InProcessBroker {
        let mut config = Config::default();
        config.mqtt.server.host = "127.0.0.1".parse().unwrap();
        config.mqtt.server.tcp_port = 0;
        config.mqtt.server.websocket_port = 0;
        config.mqtt.server.api_port = 0;
        config.mqtt.server.node_id = node_id.into();
        config.mqtt.server.log_level = "warn".into();
        configure(&mut config);
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

/// A quiet, small run's options against `addr`.
pub fn options(scenario: Scenario, addr: SocketAddr) -> Options {
    let mut options = Options::new(scenario, addr);
    options.progress = false;
    options.threads = 2;
    options.timeout = Duration::from_secs(20);
    options.drain = Duration::from_secs(2);
    options.hold = Duration::ZERO;
    options.source_addrs = 4;
    options
}

/// Runs `options` and checks that the accounting is exact: `received`
/// deliveries, none lost, duplicated, unexpected or failed, exit code 0.
/// Returns the RESULT line and its fields, for the caller's own checks.
pub fn run_exact(options: Options, received: u64) -> (String, HashMap<String, String>) {
    let report = easy_mqtt_bench::run(options).expect("the bench runs");
    let line = report.result_line();
    let result = easy_mqtt_bench::parse_result(&line).expect("a RESULT line");
    assert_eq!(result["received"], received.to_string(), "{line}");
    for field in ["lost", "dup", "unexpected", "errors"] {
        assert_eq!(result[field], "0", "{field}: {line}");
    }
    assert_eq!(report.exit_code(), 0, "{line}");
    (line, result)
}
