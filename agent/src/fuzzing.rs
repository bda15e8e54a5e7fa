//! The agent's parsers of untrusted input as plain functions, shared by the fuzz
//! targets (`agent/fuzz`) and the stable replay of their corpora
//! (`agent/tests/fuzz_corpus.rs`).

use crate::container::spec::LaunchSpec;
use crate::image::layer::{self, Limits};
use crate::image::oci::{self, AnyManifest, ImageConfig};
use crate::image::{Image, Reference};
use std::path::Path;

/// A registry's answer as a manifest, an index and an image configuration, the
/// platform chosen and every digest checked, the configuration resolved into a launch
/// specification; and the bytes as an image reference. Returns how many of these
/// accepted the input.
pub fn image_documents(data: &[u8]) -> usize {
    let mut accepted = 0;
    if let Ok(doc) = serde_json::from_slice::<AnyManifest>(data) {
        accepted += 1;
        if let Some(entries) = &doc.manifests {
            if let Some(d) = oci::choose(entries, &oci::this_platform()) {
                accepted += usize::from(oci::digest_hex(&d.digest).is_ok());
            }
        }
        for d in doc.config.iter().chain(doc.layers.iter().flatten()) {
            accepted += usize::from(oci::digest_hex(&d.digest).is_ok());
        }
    }
    if let Ok(config) = serde_json::from_slice::<ImageConfig>(data) {
        let image = Image {
            reference: "fuzz".into(),
            manifest: String::new(),
            config,
            layers: Vec::new(),
        };
        let spec = crate::oneshot::spec("fuzz", &["a".into()], Some(64), Some(100));
        accepted += usize::from(LaunchSpec::resolve("fuzz-0", &spec, &image).is_ok());
    }
    if let Ok(s) = std::str::from_utf8(data) {
        accepted += usize::from(s.parse::<Reference>().is_ok());
    }
    accepted
}

/// The limits a fuzzed layer is unpacked within (small, so a run stays fast).
pub const LAYER_LIMITS: Limits = Limits {
    max_bytes: 8 << 20,
    max_entries: 4096,
};

/// Unpack `data` as a layer into a fresh directory under `scratch`, then check that
/// nothing appeared beside it (`scratch` holds only that directory and the untouched
/// `sentinel` file). Panics when something escaped. Returns whether the layer was
/// accepted.
pub fn layer(data: &[u8], scratch: &Path) -> bool {
    let dir = scratch.join("layer");
    let sentinel = scratch.join("sentinel");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    if !sentinel.exists() {
        std::fs::write(&sentinel, b"keep").expect("sentinel");
    }
    let ok = layer::unpack_with(data, &dir, LAYER_LIMITS).is_ok();
    let mut names: Vec<_> = std::fs::read_dir(scratch)
        .expect("scratch directory")
        .map(|e| e.expect("entry").file_name())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["layer", "sentinel"],
        "a layer wrote beside its directory"
    );
    assert_eq!(
        std::fs::read(&sentinel).ok().as_deref(),
        Some(&b"keep"[..]),
        "a layer changed a file outside"
    );
    let _ = std::fs::remove_dir_all(&dir);
    ok
}
