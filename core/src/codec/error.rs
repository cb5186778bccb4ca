//! Decoder and encoder errors.
//!
//! Every [`DecodeError`] is a protocol violation after which MQTT 3.1.1 wants
//! the network connection closed ([MQTT-4.8.0-1]); the variants exist so that
//! logs say *which* rule the peer broke, and so that the one case that needs a
//! reply before closing, [`DecodeError::UnsupportedProtocolLevel`], can be
//! told apart.

use crate::topic::TopicError;

/// Why bytes could not be decoded into a packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Control packet types 0 and 15 are reserved (section 2.2.1, table 2.1).
    #[error("control packet type {0} is reserved (MQTT 3.1.1 section 2.2.1)")]
    ReservedPacketType(u8),

    /// The fixed-header flags of a packet other than PUBLISH differ from the
    /// reserved values that table 2.2 prescribes.
    #[error("reserved flags of {packet} must be {expected:04b}, got {flags:04b} {rule}")]
    InvalidFlags {
        packet: &'static str,
        flags: u8,
        expected: u8,
        rule: &'static str,
    },

    /// A PUBLISH with both QoS bits set.
    #[error("PUBLISH must not have both QoS bits set [MQTT-3.3.1-4]")]
    PublishQos3,

    /// A QoS 0 PUBLISH with the DUP flag set.
    #[error("DUP flag must be 0 in a QoS 0 PUBLISH [MQTT-3.3.1-2]")]
    PublishDupWithQos0,

    /// The remaining length continues past its fourth byte.
    #[error("remaining length must not be longer than 4 bytes (MQTT 3.1.1 section 2.2.3)")]
    MalformedRemainingLength,

    /// The packet (fixed header included) is larger than the configured
    /// maximum; reported as soon as the remaining length is known.
    #[error("packet of {size} bytes exceeds the maximum packet size of {max} bytes")]
    PacketTooLarge { size: usize, max: usize },

    /// The remaining length ends before a field of the packet does.
    #[error(
        "{packet} ended inside its {field}: the remaining length is too short \
         for the packet's fields (MQTT 3.1.1 section 2.2.3)"
    )]
    Truncated {
        packet: &'static str,
        field: &'static str,
    },

    /// Bytes are left over after the last field of the packet.
    #[error(
        "{packet} has {extra} bytes after its last field: the remaining length \
         is too long for the packet's fields (MQTT 3.1.1 section 2.2.3)"
    )]
    TrailingBytes { packet: &'static str, extra: usize },

    /// A UTF-8 encoded string field is not well-formed UTF-8.
    #[error("{field} of {packet} is not well-formed UTF-8 [MQTT-1.5.3-1]")]
    InvalidUtf8 {
        packet: &'static str,
        field: &'static str,
    },

    /// A UTF-8 encoded string field contains U+0000.
    #[error("{field} of {packet} must not contain U+0000 [MQTT-1.5.3-2]")]
    NullCharacter {
        packet: &'static str,
        field: &'static str,
    },

    /// A packet identifier of zero.
    #[error("packet identifier of {packet} must be non-zero [MQTT-2.3.1-1]")]
    ZeroPacketId { packet: &'static str },

    /// The topic name of a PUBLISH is not a valid topic name ([MQTT-3.3.2-2],
    /// [MQTT-4.7.3-1]; the inner error names the rule).
    #[error("invalid topic name in PUBLISH: {0}")]
    InvalidTopicName(TopicError),

    /// The CONNECT protocol name is neither `MQTT` nor `MQIsdp`.
    #[error("protocol name must be \"MQTT\" (or \"MQIsdp\" for MQTT 3.1) [MQTT-3.1.2-1]")]
    InvalidProtocolName,

    /// A known protocol name with a level this server does not speak
    /// (`MQTT` other than 4, `MQIsdp` other than 3; the value is the level).
    ///
    /// Unlike every other variant this one must not just close the
    /// connection: the server MUST first answer with CONNACK return code
    /// 0x01, unacceptable protocol version, and then disconnect
    /// [MQTT-3.1.2-2].
    #[error(
        "unsupported protocol level {0}: answer with CONNACK return code 1, \
         then disconnect [MQTT-3.1.2-2]"
    )]
    UnsupportedProtocolLevel(u8),

    /// Bit 0 of the CONNECT flags is set.
    #[error("reserved flag of CONNECT must be 0 [MQTT-3.1.2-3]")]
    ConnectReservedFlag,

    /// Will QoS is not 0 although the will flag is 0.
    #[error("will QoS must be 0 when the will flag is 0 [MQTT-3.1.2-11], [MQTT-3.1.2-13]")]
    WillQosWithoutWill,

    /// Will retain is set although the will flag is 0.
    #[error("will retain must be 0 when the will flag is 0 [MQTT-3.1.2-11], [MQTT-3.1.2-15]")]
    WillRetainWithoutWill,

    /// Will QoS 3.
    #[error("will QoS must not be 3 [MQTT-3.1.2-14]")]
    InvalidWillQos,

    /// The will topic is not a valid topic name (the inner error names the rule).
    #[error("invalid will topic in CONNECT: {0}")]
    InvalidWillTopic(TopicError),

    /// The password flag is set but the user name flag is not.
    #[error("password flag must be 0 when the user name flag is 0 [MQTT-3.1.2-22]")]
    PasswordWithoutUsername,

    /// Reserved bits 7-1 of the CONNACK acknowledge flags are not 0. MQTT
    /// 3.1.1 gives this rule no statement number ([MQTT-3.2.2-1] is the one
    /// about Session Present after a clean session).
    #[error(
        "reserved bits 7-1 of the CONNACK acknowledge flags must be 0, got {0:#04x} \
         (MQTT 3.1.1 section 3.2.2.1)"
    )]
    InvalidConnAckFlags(u8),

    /// A CONNACK return code above 5.
    #[error("CONNACK return code {0} is reserved (MQTT 3.1.1 section 3.2.2.3)")]
    InvalidConnectReturnCode(u8),

    /// A SUBSCRIBE without topic filters.
    #[error("SUBSCRIBE must contain at least one topic filter [MQTT-3.8.3-3]")]
    EmptySubscribe,

    /// A topic filter of SUBSCRIBE or UNSUBSCRIBE is not a valid filter
    /// ([MQTT-4.7.1-2], [MQTT-4.7.1-3], [MQTT-4.7.3-1]; the inner error names
    /// the rule).
    #[error("invalid topic filter in {packet}: {error}")]
    InvalidTopicFilter {
        packet: &'static str,
        error: TopicError,
    },

    /// A requested-QoS byte of SUBSCRIBE with reserved bits set or QoS 3.
    #[error(
        "requested QoS byte {0:#04x} of SUBSCRIBE must have its upper 6 bits 0 \
         and a QoS of 0, 1 or 2 [MQTT-3-8.3-4]"
    )]
    InvalidSubscribeQos(u8),

    /// A SUBACK return code other than 0x00, 0x01, 0x02 or 0x80.
    #[error("SUBACK return code {0:#04x} is reserved (MQTT 3.1.1 section 3.9.3)")]
    InvalidSubAckReturnCode(u8),

    /// An UNSUBSCRIBE without topic filters.
    #[error("UNSUBSCRIBE must contain at least one topic filter [MQTT-3.10.3-2]")]
    EmptyUnsubscribe,
}

impl DecodeError {
    /// True for the one error the server must answer with CONNACK 0x01
    /// before closing the connection ([MQTT-3.1.2-2]).
    pub fn is_unsupported_protocol_level(&self) -> bool {
        matches!(self, DecodeError::UnsupportedProtocolLevel(_))
    }
}

/// Why a packet could not be encoded.
///
/// The encoder checks what the wire format needs (lengths that fit their
/// prefixes) and a few cheap structural rules. It does not re-validate topic
/// names, filters or strings: packets built from decoded input or from
/// validated configuration already satisfy those rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A string or binary field longer than its 2-byte length prefix allows.
    #[error(
        "{field} is {len} bytes long, more than the 65535 a 2-byte length prefix allows (MQTT 3.1.1 section 1.5.3)"
    )]
    StringTooLong { field: &'static str, len: usize },

    /// The remaining length would exceed [`super::MAX_REMAINING_LENGTH`].
    #[error(
        "remaining length of {remaining_length} bytes exceeds the maximum of 268435455 \
         (MQTT 3.1.1 section 2.2.3)"
    )]
    PacketTooLarge { remaining_length: usize },

    /// A SUBSCRIBE or UNSUBSCRIBE without topic filters.
    #[error("{packet} must contain at least one topic filter [MQTT-3.8.3-3], [MQTT-3.10.3-2]")]
    NoTopicFilters { packet: &'static str },

    /// A QoS 0 PUBLISH with the DUP flag set.
    #[error("DUP flag must be 0 in a QoS 0 PUBLISH [MQTT-3.3.1-2]")]
    DupWithQos0,

    /// A CONNECT with a password but no user name.
    #[error("a CONNECT password requires a user name [MQTT-3.1.2-22]")]
    PasswordWithoutUsername,
}
