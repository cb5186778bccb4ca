//! The simulation client against a broker on a healthy network.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use easy_mqtt_core::{QoS, SubscribeReturnCode};
use easy_mqtt_server::node::NodeConfig;
use easy_mqtt_sim::broker_host;
use easy_mqtt_sim::client::{Client, ClientOptions};
use easy_mqtt_sim::trace::Log;
use tokio::time::Instant;

#[test]
fn publishes_to_itself_at_every_qos() {
    let mut sim = turmoil::Builder::new()
        .rng_seed(1)
        .simulation_duration(Duration::from_secs(60))
        .build();
    sim.host("broker", || {
        broker_host::serve(broker_host::new_node(NodeConfig::default()))
    });
    let log = Log::new();
    let client_log = log.clone();
    sim.client("c", async move {
        let options = ClientOptions {
            client_id: "c".into(),
            clean_session: true,
            keep_alive: 5,
            io_timeout: Duration::from_secs(1),
            will: None,
        };
        let mut client = Client::new("c", "broker:1883", options, client_log);
        assert!(!client.connect().await?);
        let codes = client.subscribe(&[("a/+", QoS::ExactlyOnce)]).await?;
        assert_eq!(codes, vec![SubscribeReturnCode::Granted(QoS::ExactlyOnce)]);
        for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
            .into_iter()
            .enumerate()
        {
            client
                .publish("a/b", Bytes::from(format!("m{i}")), qos)
                .await?;
        }
        assert!(
            client
                .drain_outbound(Instant::now() + Duration::from_secs(5))
                .await?
        );
        // Idle long enough for keep-alive pings to be needed and answered.
        client
            .run_until(Instant::now() + Duration::from_secs(12))
            .await?;
        assert_eq!(client.completed(), 2);
        let got: Vec<(String, QoS, bool)> = client
            .received()
            .iter()
            .map(|m| {
                (
                    String::from_utf8_lossy(&m.payload).into_owned(),
                    m.qos,
                    m.dup,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("m0".to_owned(), QoS::AtMostOnce, false),
                ("m1".to_owned(), QoS::AtLeastOnce, false),
                ("m2".to_owned(), QoS::ExactlyOnce, false),
            ]
        );
        assert_eq!(client.connections(), 1, "no reconnect on a healthy link");
        client.disconnect().await?;
        Ok(())
    });
    sim.run().unwrap();
    assert!(log.lines().iter().any(|l| l.contains("PUBCOMP")));
}
