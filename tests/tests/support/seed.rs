//! The seed's images for tests on the test bed: `grove up`'s busybox stand-ins in a
//! registry (a module of its own: only the tests that use it link `grove-cli`).

/// The seed's images (busybox stand-ins) in a registry on host 0 of `bed`.
pub fn seed_registry(
    bed: &grove_tests::testbed::TestBed,
    dir: &std::path::Path,
) -> Option<grove_tests::registry::Registry> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(std::path::PathBuf::from)
        .find(|p| grove_cli::up::images::is_static(p));
    let Some(busybox) = busybox else {
        grove_tests::missing("a static busybox (Debian: busybox-static)");
        return None;
    };
    let layout = dir.join("layout");
    grove_cli::up::images::Images::stand_ins(&busybox)
        .expect("stand-ins")
        .write_layout(&layout)
        .expect("layout");
    let registry = grove_tests::registry::Registry::start_at(
        &dir.join("registry"),
        bed.hosts[0].ip,
        &grove_tests::registry::Protection::default(),
    )?;
    registry.push(&layout, "nginx", "library/nginx:latest", None);
    registry.push(&layout, "curl", "curlimages/curl:7.82.0", None);
    Some(registry)
}
