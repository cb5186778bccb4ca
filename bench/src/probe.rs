//! The probe before the timed phase, when subscribers and publishers use
//! different brokers (the nodes of a cluster).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_io::Timer;
use easy_mqtt_core::packet::{ByteStr, Packet, Publish, QosPid};

use crate::args::Options;
use crate::client::{Client, connect_tcp, timeout};
use crate::error::{Error, Result};
use crate::payload;
use crate::roles::expectation;
use crate::run::{Shared, Topics};

/// Proves that every subscription of this shard is effective on every
/// publishers' broker before the timed phase: one client per broker
/// publishes a probe (QoS 0) on every topic this shard's subscribers
/// expect, every 100 ms, until each subscriber got one from each broker.
///
/// In a cluster a subscription reaches the other nodes' route caches
/// within a documented bound after its SUBACK (README, Cluster: one
/// heartbeat interval plus an inbox poll), usually milliseconds; waiting
/// for the deliveries themselves proves it rather than trusting a delay.
pub(crate) async fn probe(
    options: &Options,
    shared: &Shared,
    brokers: &[SocketAddr],
    subscribers: usize,
) -> Result<()> {
    let mut topics = BTreeSet::new();
    for index in (0..options.subscribers).filter(|&i| options.is_mine(i)) {
        let expect = expectation(options, index);
        for publisher in expect.first..expect.first + expect.publishers {
            topics.insert(Topics::publish(options, publisher));
        }
    }
    let shard = options.shard.map_or(0, |(shard, _)| shard);
    let mut clients = Vec::with_capacity(brokers.len());
    for (k, &broker) in brokers.iter().enumerate() {
        let id = format!("eb-{}-probe{shard}-{k}", options.run_id);
        let source = options.source_addr(options.subscribers + options.publishers + k);
        let client = timeout(options.connect_timeout, format!("{id} connecting"), async {
            let mut client = Client::new(connect_tcp(broker, source).await?);
            client.handshake(&id, options.keep_alive, true).await?;
            Ok(client)
        })
        .await?;
        clients.push(client);
    }
    let deadline = Instant::now() + options.probe_timeout;
    let result = loop {
        for (k, client) in clients.iter_mut().enumerate() {
            for topic in &topics {
                client.queue(&Packet::Publish(Publish {
                    dup: false,
                    qos_pid: QosPid::AtMostOnce,
                    retain: false,
                    topic: ByteStr::from(topic.as_str()),
                    payload: payload::probe(k as u32),
                }))?;
            }
            client.flush().await?;
        }
        let round = Instant::now() + Duration::from_millis(100);
        while Instant::now() < round && shared.probed.load(Ordering::Relaxed) < subscribers {
            Timer::after(Duration::from_millis(5)).await;
        }
        let probed = shared.probed.load(Ordering::Relaxed);
        if probed >= subscribers {
            break Ok(());
        }
        if Instant::now() >= deadline {
            break Err(Error::new(format!(
                "probe: {probed} of {subscribers} subscribers got a publication from every \
                 publishers' broker within --probe-timeout {:?}; are the brokers one cluster?",
                options.probe_timeout
            )));
        }
    };
    for client in clients {
        client.disconnect().await;
    }
    result
}
