//! A raw TCP client that speaks MQTT byte by byte ([`RawClient`]).

use super::*;

/// One packet as read off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPacket {
    pub first: u8,
    pub body: Vec<u8>,
}

/// A PUBLISH as read off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPublish {
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    pub packet_id: Option<u16>,
    pub payload: Vec<u8>,
}

impl RawPacket {
    /// The control packet type (upper four bits of the first byte).
    pub fn kind(&self) -> u8 {
        self.first >> 4
    }

    /// (session present, return code) of a CONNACK.
    pub fn connack(&self) -> (bool, u8) {
        assert_eq!(self.first, 0x20, "expected CONNACK, got {self:?}");
        assert_eq!(self.body.len(), 2, "CONNACK body: {self:?}");
        (self.body[0] & 1 == 1, self.body[1])
    }

    /// (packet id, return codes) of a SUBACK.
    pub fn suback(&self) -> (u16, Vec<u8>) {
        assert_eq!(self.first, 0x90, "expected SUBACK, got {self:?}");
        (
            u16::from_be_bytes([self.body[0], self.body[1]]),
            self.body[2..].to_vec(),
        )
    }

    /// The packet id of a PUBACK, PUBREC, PUBREL, PUBCOMP or UNSUBACK.
    pub fn packet_id(&self) -> u16 {
        assert_eq!(self.body.len(), 2, "expected a packet id only: {self:?}");
        u16::from_be_bytes([self.body[0], self.body[1]])
    }

    pub fn publish(&self) -> RawPublish {
        assert_eq!(self.kind(), 3, "expected PUBLISH, got {self:?}");
        let qos = (self.first >> 1) & 0b11;
        let topic_len = usize::from(u16::from_be_bytes([self.body[0], self.body[1]]));
        let topic = String::from_utf8(self.body[2..2 + topic_len].to_vec()).unwrap();
        let mut at = 2 + topic_len;
        let packet_id = (qos > 0).then(|| {
            at += 2;
            u16::from_be_bytes([self.body[at - 2], self.body[at - 1]])
        });
        RawPublish {
            topic,
            qos,
            retain: self.first & 1 == 1,
            dup: self.first & 0b1000 != 0,
            packet_id,
            payload: self.body[at..].to_vec(),
        }
    }
}

/// What a read with a deadline found.
#[derive(Debug)]
pub enum Recv {
    Packet(RawPacket),
    /// EOF or reset: the broker closed the connection.
    Closed,
    Timeout,
}

/// A client that writes and reads MQTT packets as bytes on a blocking socket.
pub struct RawClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    /// Opens a TCP connection and sends nothing.
    pub fn open(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect_timeout(&addr, WAIT).expect("TCP connect to the broker");
        stream.set_nodelay(true).unwrap();
        RawClient {
            stream,
            buf: Vec::new(),
        }
    }

    /// Connects with a clean session and checks the CONNACK accepts.
    pub fn connect(addr: SocketAddr, client_id: &str) -> RawClient {
        let (client, connack) = RawClient::connect_with(addr, &wire::Connect::new(client_id));
        assert_eq!(connack, (false, 0), "{client_id}: CONNACK");
        client
    }

    /// Sends this CONNECT; returns the CONNACK's (session present, code).
    pub fn connect_with(addr: SocketAddr, connect: &wire::Connect) -> (RawClient, (bool, u8)) {
        let mut client = RawClient::open(addr);
        client.send(&connect.encode());
        let connack = client.recv().connack();
        (client, connack)
    }

    /// Writes bytes; fails the test if the socket is closed.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to the broker");
    }

    /// Writes bytes, ignoring errors (the broker may have closed already).
    pub fn send_lossy(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    /// Reads one packet within `timeout`.
    pub fn read(&mut self, timeout: Duration) -> Recv {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(packet) = self.take_packet() {
                return Recv::Packet(packet);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Recv::Timeout;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Recv::Closed,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Recv::Timeout;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return Recv::Closed,
            }
        }
    }

    fn take_packet(&mut self) -> Option<RawPacket> {
        let mut length = 0usize;
        let mut multiplier = 1usize;
        let mut at = 1;
        loop {
            let byte = *self.buf.get(at)?;
            length += usize::from(byte & 0x7F) * multiplier;
            multiplier *= 128;
            at += 1;
            if byte & 0x80 == 0 {
                break;
            }
            assert!(at <= 5, "the broker sent a malformed remaining length");
        }
        if self.buf.len() < at + length {
            return None;
        }
        let first = self.buf[0];
        let body = self.buf[at..at + length].to_vec();
        self.buf.drain(..at + length);
        Some(RawPacket { first, body })
    }

    /// The next packet; fails the test on close or timeout.
    pub fn recv(&mut self) -> RawPacket {
        match self.read(WAIT) {
            Recv::Packet(packet) => packet,
            other => panic!("expected a packet from the broker, got {other:?}"),
        }
    }

    /// The next PUBLISH (acknowledging nothing).
    pub fn recv_publish(&mut self) -> RawPublish {
        self.recv().publish()
    }

    /// Waits until the broker closes the connection; returns the packets it
    /// sent before. Fails the test if it stays open for `timeout`.
    pub fn expect_closed_within(&mut self, timeout: Duration) -> Vec<RawPacket> {
        let deadline = Instant::now() + timeout;
        let mut packets = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read(left) {
                Recv::Packet(packet) => packets.push(packet),
                Recv::Closed => return packets,
                Recv::Timeout => panic!("the broker kept the connection open; it sent {packets:?}"),
            }
        }
    }

    pub fn expect_closed(&mut self) -> Vec<RawPacket> {
        self.expect_closed_within(WAIT)
    }

    /// Fails the test if a packet arrives or the connection closes within `within`.
    pub fn expect_silence(&mut self, within: Duration) {
        match self.read(within) {
            Recv::Timeout => {}
            other => panic!("expected nothing from the broker, got {other:?}"),
        }
    }

    /// Subscribes and returns the SUBACK's return codes.
    pub fn subscribe(&mut self, packet_id: u16, filters: &[(&str, u8)]) -> Vec<u8> {
        self.send(&wire::subscribe(packet_id, filters));
        let (id, codes) = self.recv().suback();
        assert_eq!(id, packet_id, "SUBACK packet id");
        codes
    }

    /// PINGREQ, then reads (and drops) everything up to the PINGRESP: all
    /// that was sent before has been handled.
    pub fn ping_drain(&mut self) {
        self.send(&wire::pingreq());
        while self.recv().first != 0xD0 {}
    }

    /// PINGREQ → PINGRESP.
    pub fn ping(&mut self) {
        self.send(&wire::pingreq());
        let packet = self.recv();
        assert_eq!(packet.first, 0xD0, "expected PINGRESP, got {packet:?}");
    }
}

/// Checks that the broker still serves: a new client connects, subscribes,
/// publishes to itself at QoS 1 and receives its message.
pub fn assert_serves(addr: SocketAddr) {
    let mut client = RawClient::connect(addr, "");
    assert_eq!(client.subscribe(1, &[("health/check", 1)]), vec![1]);
    client.send(&wire::publish("health/check", 1, 1, false, b"ok"));
    let mut got_ack = false;
    let mut got_message = false;
    while !(got_ack && got_message) {
        let packet = client.recv();
        match packet.kind() {
            4 => {
                assert_eq!(packet.packet_id(), 1);
                got_ack = true;
            }
            3 => {
                let publish = packet.publish();
                assert_eq!(publish.payload, b"ok");
                client.send(&wire::puback(publish.packet_id.unwrap()));
                got_message = true;
            }
            _ => panic!("unexpected {packet:?}"),
        }
    }
    client.send(&wire::disconnect());
    client.expect_closed();
}
