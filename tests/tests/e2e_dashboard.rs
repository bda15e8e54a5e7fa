//! The web dashboard in a real browser: Debian's Chromium, headless, driven by
//! Playwright (`tests/browser/dashboard.mjs`) against root, cluster and two
//! `grove-agent --runtime native` workers on the test bed, which run the seed's
//! application from `grove up`'s stand-in images in a loopback registry. It logs in,
//! sees the workers, gets field errors for a bad SLA, uploads the seed's SLA and sees
//! its instances reach RUNNING, scales a service, follows a container's log and
//! deletes the application. Screenshots are left in `target/test-output/`. Needs root
//! (fails under CI without it, or without Chromium or playwright-core).

#[path = "support/seed.rs"]
mod seed;
mod support;

use std::process::Command;
use support::scratch;

#[test]
fn the_dashboard_deploys_the_seed_sees_it_running_and_follows_a_log_in_chromium() {
    let (Some(node), Some(chromium)) = (grove_tests::tool("node"), grove_tests::tool("chromium"))
    else {
        return;
    };
    let browser = grove_tests::repo_root().join("tests/browser");
    if !browser.join("node_modules/playwright-core").is_dir() {
        grove_tests::missing("playwright-core in tests/browser/node_modules");
        return;
    }
    let Some(bed) = grove_tests::testbed::TestBed::new("db", 3) else {
        return;
    };
    if grove_tests::tool("nsenter").is_none() {
        return;
    }
    let dir = scratch("dashboard");
    // Everything this thread starts from now on runs on host 0, the browser too.
    bed.enter(0);
    let Some(registry) = seed::seed_registry(&bed, &dir) else {
        return;
    };
    let flags = support::native_flags(registry.addr);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let (root, _cluster, _agents) = support::control_and_workers(&bed, &dir, &flags);

    let shots = grove_tests::repo_root().join("target/test-output");
    std::fs::create_dir_all(&shots).unwrap();
    for f in [
        "dashboard.png",
        "dashboard-log.png",
        "dashboard-failure.png",
    ] {
        let _ = std::fs::remove_file(shots.join(f));
    }
    let out = Command::new(node)
        .arg(browser.join("dashboard.mjs"))
        .current_dir(&browser)
        .env("GROVE_URL", &root.base)
        .env("GROVE_PASSWORD", "Admin")
        .env(
            "SEED_SLA",
            grove_tests::repo_root().join("root/tests/seed_sla.json"),
        )
        .env("WORKERS", "w1,w2")
        .env("LOG_SERVICE", "nginx")
        .env("LOG_EXPECT", "nginx stand-in serving /www")
        .env("SHOTS", &shots)
        .env("CHROMIUM", chromium)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    println!("{stdout}");
    assert!(
        out.status.success(),
        "the browser run failed (screenshot: {}):\n{stdout}\n{stderr}\nroot log:\n{}",
        shots.join("dashboard-failure.png").display(),
        root.daemon.log()
    );
    // What the browser saw is what the API says: the application is gone.
    let apps = root.api("GET", "/api/applications/", None);
    assert_eq!(apps.as_array().map(Vec::len), Some(0), "{apps}");
    for f in ["dashboard.png", "dashboard-log.png"] {
        let shot = shots.join(f);
        let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
        assert!(size > 10_000, "no screenshot at {}", shot.display());
        println!("screenshot: {} ({size} bytes)", shot.display());
    }
}
