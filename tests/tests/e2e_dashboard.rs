//! The web dashboard in a real browser: Debian's Chromium, headless, driven by
//! Playwright (`tests/browser/dashboard.mjs`) against a running root, cluster and two
//! sim workers. It logs in, sees the workers, gets field errors for a bad SLA,
//! deploys the seed's SLA and sees its instances reach RUNNING, scales a service,
//! opens a log and deletes the application. Screenshots are left in
//! `target/test-output/`.

mod support;

use std::process::Command;
use support::{Agent, Cluster, Root, scratch, wait_until};

#[test]
fn the_dashboard_logs_in_deploys_the_seed_and_sees_it_running_in_chromium() {
    let Some(node) = grove_tests::tool("node") else {
        return;
    };
    let Some(chromium) = grove_tests::tool("chromium") else {
        return;
    };
    let browser = grove_tests::repo_root().join("tests/browser");
    if !browser.join("node_modules/playwright-core").is_dir() {
        grove_tests::missing("playwright-core in tests/browser/node_modules");
        return;
    }
    let dir = scratch("dashboard");
    let root = Root::start(&dir, &[]);
    let cluster = Cluster::start(&dir, "edge", &root, &[]);
    let room = ["--cpus", "8", "--memory-mib", "8192"];
    let _w: Vec<Agent> = ["w1", "w2"]
        .iter()
        .map(|n| Agent::start(&dir, n, cluster.addr, &cluster.worker_token, &room))
        .collect();
    wait_until(30, "both workers", || root.active_workers() == 2);

    let shots = grove_tests::repo_root().join("target/test-output");
    std::fs::create_dir_all(&shots).unwrap();
    let _ = std::fs::remove_file(shots.join("dashboard.png"));
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
    let shot = shots.join("dashboard.png");
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 10_000, "no screenshot at {}", shot.display());
    println!("screenshot: {} ({size} bytes)", shot.display());
}
