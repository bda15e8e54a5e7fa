//! Replays the `cargo fuzz` corpora of `agent/fuzz/corpus/{image,layer}` on stable
//! Rust: every input the fuzzers kept is handled without a panic, and no layer among
//! them writes outside its directory.

use grove_agent::fuzzing;
use std::path::{Path, PathBuf};

fn corpus(name: &str) -> Vec<(String, Vec<u8>)> {
    let v = grove_tests::corpus(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(name),
    );
    assert!(v.len() >= 5, "the {name} corpus lost its seeds");
    v
}

#[test]
fn every_image_document_of_the_corpus_is_handled() {
    let mut accepted = 0;
    for (name, data) in corpus("image") {
        let r = std::panic::catch_unwind(|| fuzzing::image_documents(&data));
        accepted += r.unwrap_or_else(|_| panic!("corpus input {name} panics"));
    }
    // The seeds are real manifests, indexes, configurations and references.
    assert!(accepted >= 5, "only {accepted} readings accepted");
}

#[test]
fn every_layer_of_the_corpus_stays_inside_its_directory() {
    let scratch: PathBuf =
        std::env::temp_dir().join(format!("grove-layer-corpus-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();
    let mut accepted = 0;
    for (name, data) in corpus("layer") {
        let r = std::panic::catch_unwind(|| fuzzing::layer(&data, &scratch));
        accepted +=
            usize::from(r.unwrap_or_else(|_| panic!("corpus input {name} escaped or panicked")));
    }
    let _ = std::fs::remove_dir_all(&scratch);
    assert!(accepted >= 2, "only {accepted} layers unpacked");
}
