//! Codec micro-benchmarks: encode and decode of a 64-byte QoS 1 PUBLISH and
//! of a CONNECT, and decoding a buffer of 1000 PUBLISH packets.

use std::hint::black_box;
use std::num::NonZeroU16;

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use easy_mqtt_core::codec::{Decoded, decode, encode, encoded_len};
use easy_mqtt_core::{ByteStr, Connect, LastWill, Packet, ProtocolVersion, Publish, QoS, QosPid};

const MAX_PACKET_SIZE: usize = 1 << 20;

fn publish_packet(id: u16) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos_pid: QosPid::AtLeastOnce(NonZeroU16::new(id).unwrap_or(NonZeroU16::MIN)),
        retain: false,
        topic: ByteStr::from_static("sensors/building-7/floor-3/temperature"),
        payload: Bytes::from(vec![0x5A; 64]),
    })
}

fn connect_packet() -> Packet {
    Packet::Connect(Connect {
        protocol: ProtocolVersion::V3_1_1,
        clean_session: true,
        keep_alive: 60,
        client_id: ByteStr::from_static("bench-client-0001"),
        will: Some(LastWill {
            topic: ByteStr::from_static("clients/bench-client-0001/status"),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
        }),
        username: Some(ByteStr::from_static("bench")),
        password: Some(Bytes::from_static(b"secret-password")),
    })
}

fn encoded(packet: &Packet) -> BytesMut {
    let mut buf = BytesMut::new();
    if let Err(error) = encode(packet, &mut buf) {
        panic!("benchmark packet does not encode: {error}");
    }
    buf
}

fn bench_one(c: &mut Criterion, name: &str, packet: &Packet) {
    let wire = encoded(packet).freeze();
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Bytes(wire.len() as u64));

    group.bench_function("encode", |b| {
        let mut buf = BytesMut::with_capacity(4096);
        b.iter(|| {
            buf.clear();
            let result = encode(black_box(packet), &mut buf);
            black_box((result, buf.len()))
        })
    });
    group.bench_function("encoded_len", |b| {
        b.iter(|| black_box(encoded_len(black_box(packet))))
    });
    group.bench_function("decode", |b| {
        // Refilling the buffer is part of the measurement, as it is in a
        // server (a socket read copies into the read buffer).
        let mut buf = BytesMut::with_capacity(4096);
        b.iter(|| {
            buf.extend_from_slice(&wire);
            let decoded = decode(&mut buf, MAX_PACKET_SIZE);
            black_box(decoded)
        })
    });
    group.finish();
}

fn publish(c: &mut Criterion) {
    bench_one(c, "publish_qos1_64b", &publish_packet(1));
}

fn connect(c: &mut Criterion) {
    bench_one(c, "connect", &connect_packet());
}

fn publish_stream(c: &mut Criterion) {
    let mut stream = BytesMut::new();
    for id in 1..=1000 {
        stream.extend_from_slice(&encoded(&publish_packet(id)));
    }
    let stream = stream.freeze();
    let mut group = c.benchmark_group("publish_stream_1000");
    group.throughput(Throughput::Elements(1000));
    group.bench_function("decode", |b| {
        let mut buf = BytesMut::with_capacity(stream.len());
        b.iter(|| {
            buf.extend_from_slice(&stream);
            let mut count = 0usize;
            while let Ok(Decoded::Packet(packet)) = decode(&mut buf, MAX_PACKET_SIZE) {
                black_box(packet);
                count += 1;
            }
            assert_eq!(count, 1000);
            count
        })
    });
    group.finish();
}

criterion_group!(benches, publish, connect, publish_stream);
criterion_main!(benches);
