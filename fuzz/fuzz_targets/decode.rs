//! Feeds arbitrary bytes to the MQTT decoder.
//!
//! For several maximum packet sizes it decodes packets off the front of the
//! input until it stops, checking the decoder's contract:
//! - it never panics and never consumes more than it was given;
//! - `Incomplete` and errors consume nothing, `needed` is at least 1;
//! - a decoded packet re-encodes (`encoded_len` agreeing with `encode`) to
//!   at most the bytes it was decoded from, and that encoding decodes to
//!   the same packet;
//! - feeding the same input one byte at a time yields the same packets and
//!   the same final outcome.
//!
//! Run from the repository root:
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run decode -- -max_total_time=60`

#![no_main]

use bytes::BytesMut;
use easy_mqtt_core::Packet;
use easy_mqtt_core::codec::{DecodeError, Decoded, decode, encode, encoded_len};
use libfuzzer_sys::fuzz_target;

const MAX_PACKET_SIZES: [usize; 6] = [0, 2, 16, 128, 4096, usize::MAX];

/// How a run over a whole input ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Incomplete,
    Error(DecodeError),
}

/// Decodes everything in `buf`, checking each step.
fn drain(buf: &mut BytesMut, max: usize, packets: &mut Vec<Packet>) -> End {
    loop {
        let before = buf.clone();
        match decode(buf, max) {
            Ok(Decoded::Packet(packet)) => {
                let consumed = before.len() - buf.len();
                assert!(consumed >= 2, "consumed {consumed} bytes");
                assert!(consumed <= max, "consumed {consumed} > max {max}");
                assert_eq!(&before[consumed..], &buf[..]);
                check_reencode(&packet, consumed);
                packets.push(packet);
            }
            Ok(Decoded::Incomplete { needed }) => {
                assert!(needed >= 1);
                assert_eq!(before, *buf, "Incomplete consumed bytes");
                return End::Incomplete;
            }
            Err(error) => {
                assert_eq!(before, *buf, "error consumed bytes");
                // Every error has a message.
                assert!(!error.to_string().is_empty());
                return End::Error(error);
            }
        }
    }
}

fn check_reencode(packet: &Packet, consumed: usize) {
    let mut wire = BytesMut::new();
    if let Err(error) = encode(packet, &mut wire) {
        panic!("decoded packet does not encode: {error}: {packet:?}");
    }
    assert_eq!(encoded_len(packet), Ok(wire.len()));
    // Equal unless the input used a non-minimal remaining length.
    assert!(wire.len() <= consumed);
    match decode(&mut wire, usize::MAX) {
        Ok(Decoded::Packet(again)) => assert_eq!(&again, packet),
        other => panic!("re-encoded packet does not decode: {other:?}: {packet:?}"),
    }
    assert!(wire.is_empty());
}

fuzz_target!(|data: &[u8]| {
    for max in MAX_PACKET_SIZES {
        let mut buf = BytesMut::from(data);
        let mut packets = Vec::new();
        let end = drain(&mut buf, max, &mut packets);

        // The same bytes, one at a time.
        let mut trickle = BytesMut::new();
        let mut trickled = Vec::new();
        let mut trickle_end = End::Incomplete;
        for (index, &byte) in data.iter().enumerate() {
            trickle.extend_from_slice(&[byte]);
            trickle_end = drain(&mut trickle, max, &mut trickled);
            if trickle_end != End::Incomplete {
                // An error seen on a prefix is the error of the whole input:
                // more bytes neither cure it nor change it.
                let rest = data.get(index + 1..).unwrap_or_default();
                trickle.extend_from_slice(rest);
                let count = trickled.len();
                assert_eq!(drain(&mut trickle, max, &mut trickled), trickle_end);
                assert_eq!(trickled.len(), count);
                break;
            }
        }
        assert_eq!(trickled, packets);
        assert_eq!(trickle_end, end);
        assert_eq!(trickle, buf);
    }
});
