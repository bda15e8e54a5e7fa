//! Kill `grove-root` with SIGKILL in the middle of a workload; everything it
//! acknowledged is there after a restart.

use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn(dir: &std::path::Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_grove-root"))
        .args([
            "--data-dir",
            dir.to_str().unwrap(),
            "--http",
            &format!("127.0.0.1:{port}"),
            "--admin-password",
            "Admin",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start grove-root")
}

fn login(base: &str) -> Option<String> {
    let r = ureq::post(&format!("{base}/api/auth/login"))
        .timeout(Duration::from_secs(5))
        .send_json(json!({"username": "Admin", "password": "Admin"}))
        .ok()?;
    let v: Value = r.into_json().ok()?;
    v["token"].as_str().map(str::to_owned)
}

/// Wait until the root answers a login (it is up), at most 30 s.
fn wait_up(base: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(t) = login(base) {
            return t;
        }
        assert!(Instant::now() < deadline, "grove-root did not come up");
        std::thread::yield_now();
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sla(name: &str) -> Value {
    let mut v: Value = serde_json::from_str(include_str!("seed_sla.json")).unwrap();
    v["applications"][0]["application_name"] = json!(name);
    v["applications"][0]["microservices"][1]["addresses"] = json!({});
    v
}

#[test]
fn a_sigkilled_root_loses_nothing_it_acknowledged() {
    let dir = std::env::temp_dir().join(format!("grove-root-kill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = spawn(&dir, port);
    let token = wait_up(&base);

    // A writer acknowledges applications one after another; the root is killed while
    // it writes, at a moment the writer does not choose.
    let writer = {
        let (base, token) = (base.clone(), token.clone());
        std::thread::spawn(move || {
            let mut acked = Vec::new();
            for i in 0..10_000 {
                let name = format!("app{i}");
                let r = ureq::post(&format!("{base}/api/application/"))
                    .set("Authorization", &format!("Bearer {token}"))
                    .timeout(Duration::from_secs(5))
                    .send_json(sla(&name));
                match r {
                    Ok(resp) if resp.status() == 200 => acked.push(name),
                    _ => break,
                }
            }
            acked
        })
    };
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1500) && !writer.is_finished() {
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    let acked = writer.join().unwrap();
    assert!(
        acked.len() >= 5,
        "the workload barely ran: {} writes",
        acked.len()
    );

    let mut child = spawn(&dir, port);
    let token = wait_up(&base);
    let apps: Value = ureq::get(&format!("{base}/api/applications/"))
        .set("Authorization", &format!("Bearer {token}"))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    let names: Vec<&str> = apps
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["application_name"].as_str())
        .collect();
    for name in &acked {
        assert!(
            names.contains(&name.as_str()),
            "{name} was acknowledged but is gone"
        );
    }
    // Every stored application is whole: both services of each are there.
    for a in apps.as_array().unwrap() {
        assert_eq!(a["microservices"].as_array().unwrap().len(), 2, "{a}");
    }
    child.kill().unwrap();
    child.wait().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_config_file_sets_what_the_command_line_does_not() {
    let dir = std::env::temp_dir().join(format!("grove-root-config-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let cfg = dir.join("root.toml");
    std::fs::write(
        &cfg,
        format!(
            "data-dir = \"{}\"\nhttp = \"127.0.0.1:{port}\"\ncoap = \"127.0.0.1:0\"\nadmin_password = \"FromFile\"\n",
            dir.join("state").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_grove-root"))
        .args(["--config", cfg.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let ok = loop {
        let r = ureq::post(&format!("{base}/api/auth/login"))
            .timeout(Duration::from_secs(5))
            .send_json(json!({"username": "Admin", "password": "FromFile"}));
        if r.is_ok() {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        ok,
        "grove-root did not serve on the configured port with the configured password"
    );
    assert!(
        dir.join("state/root.db").exists(),
        "the configured data dir is used"
    );
    // An unknown key is refused by name.
    std::fs::write(&cfg, "data-dri = \"/tmp/x\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_grove-root"))
        .args(["--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown key `data-dri`"));
    std::fs::remove_dir_all(&dir).unwrap();
}
