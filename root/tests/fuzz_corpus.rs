//! Replays the `cargo fuzz` corpus of `root/fuzz/corpus/sla` on stable Rust: every
//! body the fuzzer kept is parsed (as JSON and as CBOR) without a panic, and refused
//! SLAs name a field.

use std::path::Path;

#[test]
fn every_sla_of_the_corpus_is_handled() {
    let inputs =
        grove_tests::corpus(&Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/sla"));
    assert!(inputs.len() >= 5, "the corpus lost its seeds");
    let mut valid = 0;
    for (name, data) in &inputs {
        let r = std::panic::catch_unwind(|| grove_root::fuzzing::sla(data));
        valid += r.unwrap_or_else(|_| panic!("corpus input {name} panics"));
    }
    assert!(valid >= 1, "the seed SLA no longer parses");
}
