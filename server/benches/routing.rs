//! Routing micro-benchmark: one PUBLISH through `Node::publish` (trie match,
//! one `Arc<Message>` shared, one enqueue and wake per session) to 1, 1,000
//! and 100,000 subscribers of its topic. The sessions are real ones, accepted
//! by the node on connection cells that have no socket; their queues are
//! emptied (encoded, as a driver would) outside the timed part.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use easy_mqtt_core::{
    ByteStr, Connect, ProtocolVersion, Publish, QoS, QosPid, Subscribe, SubscribeFilter,
};
use easy_mqtt_server::driver::ConnectionInfo;
use easy_mqtt_server::node::{Node, NodeConfig};
use easy_mqtt_server::runtime::SmolRuntime;
use easy_mqtt_server::sessions::{ConnCell, lock};
use easy_mqtt_storage_memory::MemoryStorage;

const TOPIC: &str = "bench/routing/topic";

struct Fixture {
    node: Arc<Node<SmolRuntime>>,
    cells: Vec<Arc<ConnCell>>,
}

fn fixture(subscribers: usize, qos: QoS) -> Fixture {
    let executor = Arc::new(async_executor::Executor::new());
    let mut config = NodeConfig::default();
    config.connection.session.max_inflight = 100;
    config.connection.session.max_queued = 10_000;
    let node = Node::new(
        config,
        SmolRuntime::new(executor),
        Arc::new(MemoryStorage::new()),
    );
    let info = ConnectionInfo::tcp("127.0.0.1:1".parse().unwrap());
    let mut cells = Vec::with_capacity(subscribers);
    for n in 0..subscribers {
        let cell = node.open_connection().expect("no connection limit");
        let connect = Connect {
            protocol: ProtocolVersion::V3_1_1,
            clean_session: true,
            keep_alive: 0,
            client_id: ByteStr::from(format!("sub-{n}")),
            will: None,
            username: None,
            password: None,
        };
        // The state machine must be waiting for the decision, as after a
        // CONNECT read from a socket.
        let mut bytes = BytesMut::new();
        easy_mqtt_core::codec::encode(
            &easy_mqtt_core::Packet::Connect(connect.clone()),
            &mut bytes,
        )
        .unwrap();
        lock(&cell.inner)
            .conn
            .handle_input(&mut bytes, Instant::now());
        let attachment = node.connect(&cell, connect, &info).expect("accepted");
        let subscribe = Subscribe {
            packet_id: NonZeroU16::MIN,
            filters: vec![SubscribeFilter {
                filter: ByteStr::from_static(TOPIC),
                qos,
            }],
        };
        node.subscribe(&attachment, &cell, &subscribe);
        cells.push(cell);
    }
    let fixture = Fixture { node, cells };
    drain(&fixture.cells);
    fixture
}

/// Empties every session's queue as its driver would (QoS 0 deliveries).
fn drain(cells: &[Arc<ConnCell>]) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    for cell in cells {
        let mut inner = lock(&cell.inner);
        while inner.conn.poll_transmit(&mut buf, 64 * 1024) > 0 {
            buf.clear();
        }
        while inner.conn.poll_event().is_some() {}
    }
}

fn publish() -> Publish {
    Publish {
        dup: false,
        qos_pid: QosPid::AtMostOnce,
        retain: false,
        topic: ByteStr::from_static(TOPIC),
        payload: Bytes::from(vec![0x5A; 64]),
    }
}

fn routing(c: &mut Criterion) {
    let mut group = c.benchmark_group("route one PUBLISH");
    for subscribers in [1usize, 1_000, 100_000] {
        let fixture = fixture(subscribers, QoS::AtMostOnce);
        let mut scratch = Vec::new();
        group.throughput(Throughput::Elements(subscribers as u64));
        if subscribers >= 100_000 {
            group.sample_size(10);
        }
        group.bench_function(BenchmarkId::from_parameter(subscribers), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    fixture.node.publish(black_box(publish()), &mut scratch);
                    timed += start.elapsed();
                    drain(&fixture.cells);
                }
                timed
            })
        });
    }
    group.finish();
}

criterion_group!(benches, routing);
criterion_main!(benches);
