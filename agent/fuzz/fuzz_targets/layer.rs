//! Fuzz target: any bytes as a layer (tar, gzip or not), unpacked into a scratch
//! directory; a panic when anything appears or changes beside it.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = std::env::var_os("GROVE_FUZZ_SCRATCH")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let d = base.join(format!("grove-fuzz-layer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("scratch directory");
        d
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    grove_agent::fuzzing::layer(data, scratch());
});
