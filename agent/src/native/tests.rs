use super::*;

#[test]
fn a_pull_past_the_image_stores_size_fails_and_keeps_what_runs() {
    let d = std::env::temp_dir().join(format!("grove-store-size-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    let Some(layout) = grove_tests::registry::make_images(&d.join("layout")) else {
        return;
    };
    let store = ImageStore::open(&d.join("store"), RegistryConfig::default()).unwrap();
    let (a, b) = (
        format!("oci:{}:amd64", layout.display()),
        format!("oci:{}:arm64", layout.display()),
    );
    store.pull(&a).unwrap();
    assert!(
        store.disk_bytes() > 1 << 20,
        "busybox takes more than a MiB"
    );
    let refs = || std::fs::read_dir(d.join("store/refs")).unwrap().count();
    // Within its size, a pull stands.
    let roomy = Containment {
        image_store_mib: 1 << 20,
        ..Containment::default()
    };
    store.pull(&b).unwrap();
    within_size(&store, &roomy, &b, vec![a.clone()]).unwrap();
    assert_eq!(refs(), 2);
    // Past it (1 MiB), with `a` in use: the new image goes and says why; `a` stays.
    let tight = Containment {
        image_store_mib: 1,
        ..Containment::default()
    };
    let e = within_size(&store, &tight, &b, vec![a.clone()]).unwrap_err();
    assert!(
        e.contains("image store is full") && e.contains("--image-store-mib"),
        "{e}"
    );
    assert_eq!(refs(), 1);
    assert!(
        std::fs::read_dir(d.join("store/refs"))
            .unwrap()
            .flatten()
            .all(|e| { e.file_name().to_string_lossy().contains("amd64") })
    );
    let _ = std::fs::remove_dir_all(&d);
}
