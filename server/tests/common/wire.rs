//! Encoders of MQTT 3.1.1 packets, for the raw client.

pub fn remaining_length(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            return out;
        }
    }
}

/// A packet: first byte, remaining length, body.
pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    out.extend(remaining_length(body.len()));
    out.extend_from_slice(body);
    out
}

/// A length-prefixed string or binary field.
pub fn field(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

#[derive(Debug, Clone)]
pub struct Will {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
}

#[derive(Debug, Clone)]
pub struct Connect {
    pub protocol_name: Vec<u8>,
    pub level: u8,
    pub client_id: String,
    pub clean_session: bool,
    pub keep_alive: u16,
    pub will: Option<Will>,
}

impl Connect {
    /// MQTT 3.1.1, clean session, keep-alive 60 s, no will.
    pub fn new(client_id: &str) -> Connect {
        Connect {
            protocol_name: b"MQTT".to_vec(),
            level: 4,
            client_id: client_id.to_owned(),
            clean_session: true,
            keep_alive: 60,
            will: None,
        }
    }

    pub fn will(mut self, topic: &str, payload: &[u8], qos: u8, retain: bool) -> Connect {
        self.will = Some(Will {
            topic: topic.to_owned(),
            payload: payload.to_vec(),
            qos,
            retain,
        });
        self
    }

    pub fn keep_alive(mut self, seconds: u16) -> Connect {
        self.keep_alive = seconds;
        self
    }

    pub fn clean(mut self, clean: bool) -> Connect {
        self.clean_session = clean;
        self
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut body = field(&self.protocol_name);
        body.push(self.level);
        let mut flags = 0u8;
        if self.clean_session {
            flags |= 0b10;
        }
        if let Some(will) = &self.will {
            flags |= 0b100 | (will.qos << 3);
            if will.retain {
                flags |= 0b10_0000;
            }
        }
        body.push(flags);
        body.extend(self.keep_alive.to_be_bytes());
        body.extend(field(self.client_id.as_bytes()));
        if let Some(will) = &self.will {
            body.extend(field(will.topic.as_bytes()));
            body.extend(field(&will.payload));
        }
        packet(0x10, &body)
    }
}

pub fn publish(topic: &str, qos: u8, packet_id: u16, retain: bool, payload: &[u8]) -> Vec<u8> {
    let mut body = field(topic.as_bytes());
    if qos > 0 {
        body.extend(packet_id.to_be_bytes());
    }
    body.extend_from_slice(payload);
    packet(0x30 | (qos << 1) | u8::from(retain), &body)
}

pub fn subscribe(packet_id: u16, filters: &[(&str, u8)]) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    for (filter, qos) in filters {
        body.extend(field(filter.as_bytes()));
        body.push(*qos);
    }
    packet(0x82, &body)
}

pub fn unsubscribe(packet_id: u16, filters: &[&str]) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    for filter in filters {
        body.extend(field(filter.as_bytes()));
    }
    packet(0xA2, &body)
}

pub fn puback(packet_id: u16) -> Vec<u8> {
    packet(0x40, &packet_id.to_be_bytes())
}

pub fn pubrec(packet_id: u16) -> Vec<u8> {
    packet(0x50, &packet_id.to_be_bytes())
}

pub fn pubrel(packet_id: u16) -> Vec<u8> {
    packet(0x62, &packet_id.to_be_bytes())
}

pub fn pubcomp(packet_id: u16) -> Vec<u8> {
    packet(0x70, &packet_id.to_be_bytes())
}

pub fn pingreq() -> Vec<u8> {
    vec![0xC0, 0x00]
}

pub fn disconnect() -> Vec<u8> {
    vec![0xE0, 0x00]
}
