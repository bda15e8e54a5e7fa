//! Pulls as users make them: from an OCI layout, from a real registry on loopback
//! (anonymous over HTTP, as a mirror of docker.io, with htpasswd over TLS), the
//! platform chosen from a multi-arch index, wrong digests refused, an interrupted pull
//! recovered, unused images collected.

use grove_agent::image::oci::Platform;
use grove_agent::image::{ImageStore, PullError, RegistryConfig};
use grove_tests::registry::{Protection, Registry, basic_over_tls, make_certs, make_images};
use std::path::{Path, PathBuf};

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("grove-pull-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn platform(arch: &str) -> Platform {
    Platform {
        architecture: arch.into(),
        os: "linux".into(),
        variant: (arch == "arm64").then(|| "v8".to_owned()),
    }
}

/// The file `path` of a pulled image, from its top-most layer that has it.
fn read_in(layers: &[PathBuf], path: &str) -> Option<Vec<u8>> {
    layers
        .iter()
        .rev()
        .find_map(|l| std::fs::read(l.join(path)).ok())
}

fn has_busybox(layers: &[PathBuf]) -> bool {
    layers.iter().any(|l| l.join("bin/busybox").is_file())
}

#[test]
fn an_oci_layout_pulls_and_its_layers_are_shared() {
    let dir = scratch("layout");
    let Some(layout) = make_images(&dir.join("layout")) else {
        return;
    };
    let store = ImageStore::open(&dir.join("store"), RegistryConfig::default()).unwrap();
    let img = store
        .pull(&format!("oci:{}:latest", layout.display()))
        .unwrap();
    assert!(has_busybox(&img.layers), "{img:?}");
    let run = img.config.config.clone().unwrap();
    assert_eq!(run.cmd, Some(vec!["sh".to_owned()]));
    // The amd64 image shares the busybox layer: it is unpacked once.
    let other = store
        .pull(&format!("oci:{}:amd64", layout.display()))
        .unwrap();
    assert_eq!(other.layers[0], img.layers[0]);
    let layers = std::fs::read_dir(dir.join("store/layers")).unwrap().count();
    assert_eq!(layers, 2, "one shared layer plus amd64's extra one");
    // An archive of the layout works the same.
    let tar = dir.join("layout.tar");
    let out = std::process::Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(&layout)
        .arg(".")
        .status()
        .unwrap();
    assert!(out.success());
    let from_tar = store
        .pull(&format!("oci-archive:{}:latest", tar.display()))
        .unwrap();
    assert_eq!(from_tar.manifest, img.manifest);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_node_s_platform_is_chosen_from_a_multi_arch_index() {
    let dir = scratch("multi");
    let Some(layout) = make_images(&dir.join("layout")) else {
        return;
    };
    let reference = format!("oci:{}:multi", layout.display());
    for arch in ["amd64", "arm64"] {
        let store = ImageStore::open(
            &dir.join(format!("store-{arch}")),
            RegistryConfig::default(),
        )
        .unwrap()
        .with_platform(platform(arch));
        let img = store.pull(&reference).unwrap();
        assert_eq!(
            read_in(&img.layers, "etc/platform").unwrap(),
            format!("{arch}\n").as_bytes()
        );
        assert_eq!(img.config.architecture, arch);
    }
    let riscv = ImageStore::open(&dir.join("store-riscv"), RegistryConfig::default())
        .unwrap()
        .with_platform(platform("riscv64"));
    let e = riscv.pull(&reference).unwrap_err();
    assert!(matches!(e, PullError::Platform { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("linux/riscv64") && msg.contains("linux/arm64/v8"),
        "{msg}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn corrupt_largest_blob(layout: &Path) -> String {
    let blobs = layout.join("blobs/sha256");
    let largest = std::fs::read_dir(&blobs)
        .unwrap()
        .flatten()
        .max_by_key(|e| e.metadata().unwrap().len())
        .unwrap();
    let mut data = std::fs::read(largest.path()).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    std::fs::write(largest.path(), data).unwrap();
    largest.file_name().to_string_lossy().into_owned()
}

#[test]
fn a_blob_that_does_not_match_its_digest_is_refused_and_never_used() {
    let dir = scratch("digest");
    let Some(layout) = make_images(&dir.join("layout")) else {
        return;
    };
    let hex = corrupt_largest_blob(&layout);
    let store_dir = dir.join("store");
    let store = ImageStore::open(&store_dir, RegistryConfig::default()).unwrap();
    let e = store
        .pull(&format!("oci:{}:latest", layout.display()))
        .unwrap_err();
    assert!(matches!(e, PullError::Digest { .. }), "{e}");
    assert!(e.to_string().contains(&hex), "{e}");
    assert!(!store_dir.join("blobs/sha256").join(&hex).exists());
    assert!(!store_dir.join("layers").join(&hex).exists());
    assert_eq!(std::fs::read_dir(store_dir.join("tmp")).unwrap().count(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_interrupted_pull_leaves_nothing_in_use_and_the_next_one_completes() {
    let dir = scratch("interrupted");
    let Some(layout) = make_images(&dir.join("layout")) else {
        return;
    };
    let store_dir = dir.join("store");
    drop(ImageStore::open(&store_dir, RegistryConfig::default()).unwrap());
    // What a pull killed half-way leaves: a partial download and a half-unpacked layer.
    std::fs::write(store_dir.join("tmp/blob-0123"), b"partial").unwrap();
    std::fs::create_dir_all(store_dir.join("tmp/layer-4567/bin")).unwrap();
    let store = ImageStore::open(&store_dir, RegistryConfig::default()).unwrap();
    assert_eq!(std::fs::read_dir(store_dir.join("tmp")).unwrap().count(), 0);
    let img = store
        .pull(&format!("oci:{}:latest", layout.display()))
        .unwrap();
    assert!(has_busybox(&img.layers));
    // Collecting with nothing kept removes every blob and layer.
    let removed = store.gc(&[]).unwrap();
    assert!(removed >= 3, "{removed}");
    assert_eq!(
        std::fs::read_dir(store_dir.join("layers")).unwrap().count(),
        0
    );
    // Keeping it keeps what it needs.
    let img = store
        .pull(&format!("oci:{}:latest", layout.display()))
        .unwrap();
    store.gc(&[&img.reference]).unwrap();
    assert!(has_busybox(&img.layers));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_loopback_registry_serves_plain_pulls_multi_arch_and_a_docker_io_mirror() {
    let dir = scratch("registry");
    let Some(layout) = make_images(&dir.join("layout")) else {
        return;
    };
    let Some(reg) = Registry::start(&dir.join("registry"), &Protection::default()) else {
        return;
    };
    reg.push(&layout, "latest", "library/busybox:latest", None);
    reg.push(&layout, "multi", "tools/busybox:multi", None);
    let host = reg.addr.to_string();

    let mut cfg = RegistryConfig::default();
    cfg.insecure.insert(host.clone());
    cfg.add_mirror(&format!("docker.io=http://{host}")).unwrap();
    let store = ImageStore::open(&dir.join("store"), cfg.clone()).unwrap();
    let img = store
        .pull(&format!("{host}/library/busybox:latest"))
        .unwrap();
    assert!(has_busybox(&img.layers));
    // The seed's kind of reference, served by the mirror unchanged.
    let hub = store.pull("busybox").unwrap();
    assert_eq!(hub.manifest, img.manifest);
    let pinned = store
        .pull(&format!(
            "{host}/library/busybox@{}",
            hub_manifest_digest(&store, &host)
        ))
        .unwrap();
    assert_eq!(pinned.manifest, img.manifest);
    // The index as the registry serves it.
    let arm = ImageStore::open(&dir.join("store-arm"), cfg.clone())
        .unwrap()
        .with_platform(platform("arm64"));
    let multi = arm.pull(&format!("{host}/tools/busybox:multi")).unwrap();
    assert_eq!(read_in(&multi.layers, "etc/platform").unwrap(), b"arm64\n");
    // Unknown images name the registry's answer.
    let e = store
        .pull(&format!("{host}/library/nothere:1"))
        .unwrap_err();
    assert!(e.to_string().contains("404"), "{e}");
    // Without being listed as insecure, plain HTTP is not used.
    let strict = ImageStore::open(&dir.join("store-strict"), RegistryConfig::default()).unwrap();
    assert!(
        strict
            .pull(&format!("{host}/library/busybox:latest"))
            .is_err()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The digest the registry gives the `latest` manifest (what a user pins).
fn hub_manifest_digest(store: &ImageStore, host: &str) -> String {
    let _ = store;
    let out = std::process::Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}"])
        .arg(format!("docker://{host}/library/busybox:latest"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn a_registry_behind_tls_and_htpasswd_needs_its_ca_and_credentials() {
    let dir = scratch("tls");
    let Some(layout) = make_images(&dir.join("layout")) else {
        return;
    };
    let Some((ca, p)) = basic_over_tls(&dir, "grove", "s3cret") else {
        return;
    };
    let Some(reg) = Registry::start(&dir.join("registry"), &p) else {
        return;
    };
    reg.push(&layout, "latest", "private/busybox:1", Some("grove:s3cret"));
    let reference = format!("{}/private/busybox:1", reg.addr);
    let host = reg.addr.to_string();

    let mut cfg = RegistryConfig {
        ca_file: Some(ca.clone()),
        ..RegistryConfig::default()
    };
    cfg.add_auth(&format!("{host}=grove:s3cret")).unwrap();
    let store = ImageStore::open(&dir.join("store"), cfg).unwrap();
    assert!(has_busybox(&store.pull(&reference).unwrap().layers));

    // Without credentials: told which flag to give.
    let no_creds = RegistryConfig {
        ca_file: Some(ca),
        ..RegistryConfig::default()
    };
    let e = ImageStore::open(&dir.join("store2"), no_creds)
        .unwrap()
        .pull(&reference)
        .unwrap_err();
    assert!(e.to_string().contains("--registry-auth"), "{e}");
    // Without the CA: the certificate is not trusted.
    let mut no_ca = RegistryConfig::default();
    no_ca.add_auth(&format!("{host}=grove:s3cret")).unwrap();
    let e = ImageStore::open(&dir.join("store3"), no_ca)
        .unwrap()
        .pull(&reference)
        .unwrap_err();
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_registry_behind_a_bearer_token_server_is_pulled_with_a_token() {
    use grove_tests::registry::TokenServer;
    let dir = scratch("bearer");
    let Some(layout) = make_images(&dir.join("layout")) else {
        return;
    };
    let Some((ca, _, _)) = make_certs(&dir.join("certs")) else {
        return;
    };
    let Some(tokens) = TokenServer::start(&dir.join("certs/ca.key"), &ca, "grove", "s3cret") else {
        return;
    };
    let p = Protection {
        token: Some(tokens.auth.clone()),
        ..Protection::default()
    };
    let Some(reg) = Registry::start(&dir.join("registry"), &p) else {
        return;
    };
    reg.push(&layout, "latest", "team/busybox:2", Some("grove:s3cret"));
    let host = reg.addr.to_string();
    let reference = format!("{host}/team/busybox:2");
    let mut cfg = RegistryConfig::default();
    cfg.insecure.insert(host.clone());
    cfg.add_auth(&format!("{host}=grove:s3cret")).unwrap();
    let store = ImageStore::open(&dir.join("store"), cfg).unwrap();
    assert!(has_busybox(&store.pull(&reference).unwrap().layers));

    // The token server refuses strangers, and the pull says so.
    let mut wrong = RegistryConfig::default();
    wrong.insecure.insert(host.clone());
    wrong.add_auth(&format!("{host}=grove:guess")).unwrap();
    let e = ImageStore::open(&dir.join("store2"), wrong)
        .unwrap()
        .pull(&reference)
        .unwrap_err();
    assert!(e.to_string().contains("token"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
