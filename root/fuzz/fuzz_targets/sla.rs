//! Fuzz target: any request body as an SLA, through JSON and the SLA parser.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    grove_root::fuzzing::sla(data);
});
