//! What each client of a shard does once connected: the subscriber and
//! publisher loops with exact accounting (loss, duplicates, order, latency),
//! and idle clients that only keep their connection alive.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use async_io::Timer;
use easy_mqtt_core::packet::{ByteStr, Packet, PacketId, Publish, QoS, QosPid};
use smol::channel::{Receiver, Sender};
use smol::lock::Semaphore;

use crate::args::{Options, Scenario};
use crate::client::{Client, Fill, connect_tcp, timeout};
use crate::clock::{instant_at, now_ns};
use crate::error::{Error, Result};
use crate::payload::{self, Stamp};
use crate::run::{Outcome, Role, Shared, Topics};

/// Publications written per batch (one write) at most.
const BATCH: usize = 64;

pub(crate) async fn client_task(
    options: Arc<Options>,
    shared: Arc<Shared>,
    role: Role,
    not_before: Option<Instant>,
    gate: Arc<Semaphore>,
    go: Receiver<()>,
    ready: Sender<Option<(u64, u64)>>,
) -> Outcome {
    if let Some(at) = not_before {
        Timer::at(at).await;
    }
    let permit = gate.acquire().await;
    let started = now_ns();
    let connected = timeout(
        options.connect_timeout,
        format!("{} connecting", role.client_id(&options.run_id)),
        open(&options, role),
    )
    .await;
    drop(permit);
    let mut client = match connected {
        Ok(client) => client,
        Err(error) => {
            shared.error(&error);
            let _ = ready.send(None).await;
            return Outcome::default();
        }
    };
    let connacked = now_ns();
    shared
        .connect_latency
        .record(connacked.saturating_sub(started));
    shared.connected.fetch_add(1, Ordering::Relaxed);
    shared.register(client.stream());
    if matches!(role, Role::Idle(_)) {
        client.shrink();
    }
    let _ = ready.send(Some((started, connacked))).await;
    drop(ready);
    // Subscribers read from the start (the probe publications come before
    // the release; nothing else does). The channel never carries a
    // message: it closes for "go" (or stop).
    if !matches!(role, Role::Subscriber(_)) {
        let _ = go.recv().await;
    }
    drop(go);
    if shared.stopping() && !matches!(role, Role::Subscriber(_)) {
        client.disconnect().await;
        return Outcome::default();
    }
    let result = match role {
        Role::Idle(_) => idle(&shared, &mut client)
            .await
            .map(|()| Outcome::default()),
        Role::Subscriber(index) => subscriber(&options, &shared, &mut client, index).await,
        Role::Publisher(index) => publisher(&options, &shared, &mut client, index).await,
    };
    let outcome = match result {
        Ok(outcome) => outcome,
        Err((outcome, error)) => {
            if !shared.stopping() {
                shared.error(&Error::new(format!(
                    "{}: {error}",
                    role.client_id(&options.run_id)
                )));
            }
            outcome
        }
    };
    client.disconnect().await;
    outcome
}

async fn open(options: &Options, role: Role) -> Result<Client> {
    let stream = connect_tcp(
        role.target(options),
        options.source_addr(role.global_index(options)),
    )
    .await?;
    let mut client = Client::new(stream);
    client
        .handshake(
            &role.client_id(&options.run_id),
            options.keep_alive,
            options.clean_session,
        )
        .await?;
    if let Role::Subscriber(index) = role {
        client
            .subscribe(&Topics::filter(options, index), options.qos)
            .await?;
    }
    Ok(client)
}

type RoleResult = std::result::Result<Outcome, (Outcome, Error)>;

/// Holds the connection until the run stops (end of stream).
async fn idle(shared: &Shared, client: &mut Client) -> std::result::Result<(), (Outcome, Error)> {
    loop {
        let read = client.fill().await.map_err(|e| (Outcome::default(), e))?;
        while let Some(_packet) = client.next_packet().map_err(|e| (Outcome::default(), e))? {}
        if read == 0 {
            return if shared.stopping() {
                Ok(())
            } else {
                Err((
                    Outcome::default(),
                    Error::new("broker closed the connection"),
                ))
            };
        }
    }
}

/// Which publications a subscriber expects: `publishers` publishers from
/// `first`, `messages` each.
pub(crate) struct Expectation {
    pub(crate) first: usize,
    pub(crate) publishers: usize,
    pub(crate) messages: u32,
}

pub(crate) fn expectation(options: &Options, subscriber: usize) -> Expectation {
    match options.scenario {
        Scenario::Pairs => Expectation {
            first: subscriber,
            publishers: 1,
            messages: options.messages,
        },
        _ => Expectation {
            first: 0,
            publishers: options.publishers,
            messages: options.messages,
        },
    }
}

async fn subscriber(
    options: &Options,
    shared: &Shared,
    client: &mut Client,
    index: usize,
) -> RoleResult {
    let expect = expectation(options, index);
    let slots = expect.publishers * expect.messages as usize;
    // One byte per expected message: 1 MB for 1,000 subscribers x 1,000
    // messages; a count of 255 means "255 or more".
    let mut counts = vec![0u8; slots];
    let mut outcome = Outcome {
        expected: slots as u64,
        ..Outcome::default()
    };
    // QoS 2 publications received and PUBREC'd, awaiting PUBREL.
    let mut awaiting_rel: HashSet<PacketId> = HashSet::new();
    let mut done = slots == 0;
    // Probes seen, one bit per probing broker; reported once all are set.
    let probing = options.probes().len();
    let all_probes = u64::MAX >> (64 - probing.clamp(1, 64));
    let mut probes_seen = 0u64;
    let mut probed = probing == 0;
    loop {
        let mut batch = 0u64;
        let mut released = 0u64;
        let mut last = 0u64;
        loop {
            let packet = match client.next_packet() {
                Ok(Some(packet)) => packet,
                Ok(None) => break,
                Err(error) => return Err((outcome, error)),
            };
            let queued = match packet {
                Packet::Publish(publish) if payload::decode_probe(&publish.payload).is_some() => {
                    // Not part of the measurement: neither counted nor timed.
                    if let Some(broker) = payload::decode_probe(&publish.payload) {
                        probes_seen |= 1u64.checked_shl(broker).unwrap_or(0) & all_probes;
                    }
                    if !probed && probes_seen == all_probes {
                        probed = true;
                        shared.probed.fetch_add(1, Ordering::Relaxed);
                    }
                    acknowledge(client, publish.qos_pid, &mut awaiting_rel)
                }
                Packet::Publish(publish) => {
                    let now = now_ns();
                    batch += 1;
                    last = now;
                    match payload::decode(&publish.payload) {
                        Some(stamp) => {
                            shared.latency.record(now.saturating_sub(stamp.sent_ns));
                            let slot = (stamp.publisher as usize)
                                .checked_sub(expect.first)
                                .filter(|&p| p < expect.publishers && stamp.seq < expect.messages)
                                .map(|p| p * expect.messages as usize + stamp.seq as usize);
                            match slot.and_then(|s| counts.get_mut(s)) {
                                Some(count) => {
                                    if *count == 0 {
                                        outcome.unique += 1;
                                    } else {
                                        outcome.dup += 1;
                                    }
                                    *count = count.saturating_add(1);
                                }
                                None => outcome.unexpected += 1,
                            }
                        }
                        None => outcome.unexpected += 1,
                    }
                    acknowledge(client, publish.qos_pid, &mut awaiting_rel)
                }
                Packet::PubRel(id) => {
                    if awaiting_rel.remove(&id) {
                        released += 1;
                    }
                    client.queue(&Packet::PubComp(id))
                }
                Packet::PingResp => Ok(()),
                other => Err(Error::new(format!(
                    "unexpected {} from the broker",
                    other.name()
                ))),
            };
            if let Err(error) = queued {
                return Err((outcome, error));
            }
        }
        if batch > 0 {
            shared.received.fetch_add(batch, Ordering::Relaxed);
            shared.last_delivery_ns.fetch_max(last, Ordering::Relaxed);
        }
        if released > 0 {
            shared.released.fetch_add(released, Ordering::Relaxed);
        }
        if let Err(error) = client.flush().await {
            return Err((outcome, error));
        }
        if !done && outcome.unique == outcome.expected && awaiting_rel.is_empty() {
            done = true;
            shared.subs_done.fetch_add(1, Ordering::Relaxed);
        }
        let read = client.fill().await;
        outcome.awaiting_rel = awaiting_rel.len() as u64;
        match read {
            Ok(0) if shared.stopping() => return Ok(outcome),
            Ok(0) => return Err((outcome, Error::new("broker closed the connection"))),
            Ok(_) => {}
            Err(error) => return Err((outcome, error)),
        }
    }
}

/// Queues the acknowledgement of a delivery (QoS 2: PUBREC, and its
/// PUBREL is awaited).
fn acknowledge(
    client: &mut Client,
    qos_pid: QosPid,
    awaiting_rel: &mut HashSet<PacketId>,
) -> Result<()> {
    match qos_pid {
        QosPid::AtMostOnce => Ok(()),
        QosPid::AtLeastOnce(id) => client.queue(&Packet::PubAck(id)),
        QosPid::ExactlyOnce(id) => {
            awaiting_rel.insert(id);
            client.queue(&Packet::PubRec(id))
        }
    }
}

/// An unacknowledged publication.
struct Pending {
    sent_ns: u64,
}

async fn publisher(
    options: &Options,
    shared: &Shared,
    client: &mut Client,
    index: usize,
) -> RoleResult {
    let topic = ByteStr::from(Topics::publish(options, index));
    let messages = options.messages;
    let qos = options.qos;
    let window = if qos == QoS::AtMostOnce {
        usize::MAX
    } else {
        usize::from(options.inflight)
    };
    // Paced: the publishers take turns on one schedule at --rate, message
    // k of publisher j due at (k x publishers + j) / rate, so that the
    // load is even rather than in bursts of one message per publisher.
    let paced = options.rate > 0.0;
    let publishers = options.publishers.max(1) as f64;
    let record_acks = options.scenario == Scenario::Pub;
    let start_ns = now_ns();
    let mut inflight: HashMap<u16, Pending> = HashMap::with_capacity(window.min(1024));
    let mut sent: u32 = 0;
    let mut outcome = Outcome::default();
    let mut done = false;
    let due = |seq: u32| -> u64 {
        let slot = f64::from(seq) * publishers + index as f64;
        start_ns.saturating_add((slot / options.rate * 1e9) as u64)
    };
    loop {
        // Send what the window and the schedule allow, in one write.
        let mut batch = 0usize;
        let mut now = now_ns();
        while sent < messages && inflight.len() < window && batch < BATCH && !shared.stopping() {
            if paced && due(sent) > now {
                break;
            }
            let id = PacketId::new((sent % 65_535) as u16 + 1).unwrap_or(PacketId::MIN);
            let qos_pid = match qos {
                QoS::AtMostOnce => QosPid::AtMostOnce,
                QoS::AtLeastOnce => QosPid::AtLeastOnce(id),
                QoS::ExactlyOnce => QosPid::ExactlyOnce(id),
            };
            let stamp = Stamp {
                publisher: index as u32,
                seq: sent,
                sent_ns: now,
            };
            let publish = Packet::Publish(Publish {
                dup: false,
                qos_pid,
                retain: false,
                topic: topic.clone(),
                payload: payload::encode(stamp, options.size),
            });
            if let Err(error) = client.queue(&publish) {
                return Err((outcome, error));
            }
            if qos != QoS::AtMostOnce {
                inflight.insert(id.get(), Pending { sent_ns: now });
            }
            sent += 1;
            batch += 1;
            now = now_ns();
        }
        if batch > 0 {
            if sent as usize == batch {
                shared.first_send_ns.fetch_min(start_ns, Ordering::Relaxed);
            }
            if let Err(error) = client.flush().await {
                return Err((outcome, error));
            }
            shared.published.fetch_add(batch as u64, Ordering::Relaxed);
            shared.last_send_ns.fetch_max(now_ns(), Ordering::Relaxed);
        }
        if !done && sent == messages && inflight.is_empty() {
            done = true;
            shared.pubs_done.fetch_add(1, Ordering::Relaxed);
        }
        if shared.stopping() && !done {
            outcome.unacked = inflight.len() as u64;
            return Ok(outcome);
        }
        // Wait for acknowledgements, the next scheduled publication, or (QoS
        // 0, unpaced) nothing at all.
        let can_send = sent < messages && inflight.len() < window;
        let timer = if can_send && paced {
            Some(Timer::at(instant_at(due(sent))))
        } else {
            None
        };
        if can_send && timer.is_none() {
            // Let the other clients of this thread run between batches.
            futures_lite::future::yield_now().await;
            if qos == QoS::AtMostOnce {
                continue;
            }
            // QoS 1/2 with room in the window: take the acks that arrived.
            if !read_ready(client).await.map_err(|e| (outcome.clone(), e))? {
                continue;
            }
        } else {
            match client.fill_or(timer).await {
                Ok(Fill::Timer) => continue,
                Ok(Fill::Data(_)) => {}
                Ok(Fill::Eof) if shared.stopping() => {
                    outcome.unacked = inflight.len() as u64;
                    return Ok(outcome);
                }
                Ok(Fill::Eof) => {
                    outcome.unacked = inflight.len() as u64;
                    return Err((outcome, Error::new("broker closed the connection")));
                }
                Err(error) => {
                    outcome.unacked = inflight.len() as u64;
                    return Err((outcome, error));
                }
            }
        }
        let mut acked = 0u64;
        loop {
            let packet = match client.next_packet() {
                Ok(Some(packet)) => packet,
                Ok(None) => break,
                Err(error) => return Err((outcome, error)),
            };
            let finished = match packet {
                Packet::PubAck(id) if qos == QoS::AtLeastOnce => inflight.remove(&id.get()),
                Packet::PubRec(id) if qos == QoS::ExactlyOnce => {
                    if let Err(error) = client.queue(&Packet::PubRel(id)) {
                        return Err((outcome, error));
                    }
                    None
                }
                Packet::PubComp(id) if qos == QoS::ExactlyOnce => inflight.remove(&id.get()),
                Packet::PingResp => None,
                other => {
                    return Err((
                        outcome,
                        Error::new(format!("unexpected {} from the broker", other.name())),
                    ));
                }
            };
            if let Some(pending) = finished {
                acked += 1;
                if record_acks {
                    shared
                        .latency
                        .record(now_ns().saturating_sub(pending.sent_ns));
                }
            }
        }
        if acked > 0 {
            shared.acked.fetch_add(acked, Ordering::Relaxed);
            shared.last_ack_ns.fetch_max(now_ns(), Ordering::Relaxed);
        }
        if let Err(error) = client.flush().await {
            return Err((outcome, error));
        }
    }
}

/// Reads whatever is already waiting on the socket, without blocking:
/// `true` if bytes came.
async fn read_ready(client: &mut Client) -> Result<bool> {
    // A timer already due makes `fill_or` return at once when nothing is
    // readable.
    match client.fill_or(Some(Timer::at(Instant::now()))).await? {
        Fill::Data(_) => Ok(true),
        Fill::Timer => Ok(false),
        Fill::Eof => Err(Error::new("broker closed the connection")),
    }
}
