//! Fuzz target: any datagram through the message layer, OSCORE and CBOR decoding.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    grove_proto::fuzzing::datagram(data);
});
