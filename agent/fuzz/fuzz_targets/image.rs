//! Fuzz target: a registry's answer as manifest, index, image configuration (resolved
//! into a launch specification) and image reference.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    grove_agent::fuzzing::image_documents(data);
});
