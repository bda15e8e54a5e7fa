//! OCI image layouts made by hand for tests that need images no tool would make: a
//! base image's layers with more layers on top (hostile ones among them: raw names,
//! links out, device nodes) and its configuration edited.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// One entry of a layer made by [`tar`].
#[derive(Debug, Clone)]
pub enum Entry<'a> {
    /// A directory.
    Dir(&'a str),
    /// A file with its content and mode.
    File(&'a str, &'a [u8], u32),
    /// A symlink to a target.
    Symlink(&'a str, &'a str),
    /// A hard link to a target.
    Link(&'a str, &'a str),
    /// A block device node (major, minor).
    Block(&'a str, u32, u32),
}

/// A tar layer of `entries`, names written as given (`..` and absolute names too).
pub fn tar(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut b = ::tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = ::tar::Header::new_gnu();
        let (name, data): (&str, &[u8]) = match e {
            Entry::Dir(n) => {
                h.set_entry_type(::tar::EntryType::Directory);
                h.set_mode(0o755);
                (n, b"")
            }
            Entry::File(n, d, mode) => {
                h.set_entry_type(::tar::EntryType::Regular);
                h.set_mode(*mode);
                (n, d)
            }
            Entry::Symlink(n, t) | Entry::Link(n, t) if t.len() > 100 => {
                // A long target goes in a GNU long-link entry (the name must be plain).
                h.set_entry_type(if matches!(e, Entry::Symlink(..)) {
                    ::tar::EntryType::Symlink
                } else {
                    ::tar::EntryType::Link
                });
                h.set_mode(0o777);
                h.set_size(0);
                h.set_mtime(0);
                h.set_uid(0);
                h.set_gid(0);
                b.append_link(&mut h, n, t).expect("long link");
                continue;
            }
            Entry::Symlink(n, t) | Entry::Link(n, t) => {
                h.set_entry_type(if matches!(e, Entry::Symlink(..)) {
                    ::tar::EntryType::Symlink
                } else {
                    ::tar::EntryType::Link
                });
                h.set_mode(0o777);
                h.set_link_name(t).expect("link name");
                (n, b"")
            }
            Entry::Block(n, major, minor) => {
                h.set_entry_type(::tar::EntryType::Block);
                h.set_mode(0o666);
                h.set_device_major(*major).expect("major");
                h.set_device_minor(*minor).expect("minor");
                (n, b"")
            }
        };
        h.set_size(data.len() as u64);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        // set_path refuses `..`; the raw name is what a hostile layer holds.
        let raw = h.as_gnu_mut().expect("gnu header");
        raw.name.fill(0);
        raw.name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        b.append(&h, data).expect("tar entry");
    }
    b.into_inner().expect("tar")
}

fn put(dir: &Path, bytes: &[u8]) -> (String, u64) {
    let hex = format!("{:x}", Sha256::digest(bytes));
    std::fs::write(dir.join("blobs/sha256").join(&hex), bytes).expect("blob");
    (format!("sha256:{hex}"), bytes.len() as u64)
}

fn blob(layout: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.trim_start_matches("sha256:");
    std::fs::read(layout.join("blobs/sha256").join(hex)).expect("base blob")
}

/// A layout at `dir` with one image tagged `latest`: the layers of `base`'s `latest`
/// image (a layout made by `registry::make_images`), then `extra` (uncompressed tars),
/// its configuration changed by `edit` (e.g. `config.WorkingDir`).
pub fn derive(
    base: &Path,
    dir: &Path,
    extra: &[Vec<u8>],
    edit: impl FnOnce(&mut Value),
) -> PathBuf {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join("blobs/sha256")).expect("layout dir");
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("layout");
    let index: Value =
        serde_json::from_slice(&std::fs::read(base.join("index.json")).expect("base index"))
            .expect("index");
    let entry = index["manifests"]
        .as_array()
        .and_then(|m| {
            m.iter()
                .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == "latest")
        })
        .expect("a latest image in the base layout");
    let manifest: Value =
        serde_json::from_slice(&blob(base, entry["digest"].as_str().expect("digest")))
            .expect("manifest");
    let mut config: Value = serde_json::from_slice(&blob(
        base,
        manifest["config"]["digest"].as_str().expect("config"),
    ))
    .expect("config");
    let mut layers = Vec::new();
    for l in manifest["layers"].as_array().expect("layers") {
        let d = l["digest"].as_str().expect("layer digest");
        put(dir, &blob(base, d));
        layers.push(l.clone());
    }
    for t in extra {
        let (digest, size) = put(dir, t);
        layers.push(json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": digest,
            "size": size,
        }));
        if let Some(ids) = config["rootfs"]["diff_ids"].as_array_mut() {
            ids.push(json!(digest));
        }
    }
    edit(&mut config);
    let (cd, cs) = put(dir, &serde_json::to_vec(&config).expect("config json"));
    let m = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": layers,
    });
    let (md, ms) = put(dir, &serde_json::to_vec(&m).expect("manifest json"));
    let idx = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md,
            "size": ms,
            "annotations": {"org.opencontainers.image.ref.name": "latest"},
        }],
    });
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&idx).expect("index json"),
    )
    .expect("index");
    dir.to_path_buf()
}
