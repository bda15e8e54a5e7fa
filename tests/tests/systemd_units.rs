//! The systemd units in `systemd/` pass `systemd-analyze verify` (every key known, every
//! value valid, the binary where `ExecStart` points: here the built ones stand in for
//! the packaged `/usr/bin/grove-*`), and say what a user of each daemon relies on.

mod support;

use std::path::Path;
use std::process::Command;
use support::{bin, scratch};

fn unit(name: &str) -> String {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    std::fs::read_to_string(repo.join("systemd").join(format!("{name}.service")))
        .unwrap_or_else(|e| panic!("{name}.service: {e}"))
}

#[test]
fn the_units_verify_and_keep_what_users_rely_on() {
    let Some(analyze) = grove_tests::tool("systemd-analyze") else {
        return;
    };
    let dir = scratch("units");
    let mut files = Vec::new();
    for daemon in ["grove-root", "grove-cluster", "grove-agent"] {
        let text = unit(daemon);
        // What each unit promises.
        for want in [
            "Type=notify",
            "WatchdogSec=",
            "Restart=on-failure",
            "StateDirectory=",
        ] {
            assert!(text.contains(want), "{daemon}.service lacks {want}");
        }
        let exe = format!("/usr/bin/{daemon}");
        assert!(text.contains(&exe), "{daemon}.service does not run {exe}");
        let local = text.replace(&exe, &bin(daemon).display().to_string());
        let f = dir.join(format!("{daemon}.service"));
        std::fs::write(&f, local).unwrap();
        files.push(f);
    }
    // Root and cluster: a dynamic user, a read-only system. The agent: its containers
    // survive its restarts.
    for d in ["grove-root", "grove-cluster"] {
        let t = unit(d);
        for want in [
            "DynamicUser=yes",
            "ProtectSystem=strict",
            "NoNewPrivileges=yes",
        ] {
            assert!(t.contains(want), "{d}.service lacks {want}");
        }
    }
    let agent = unit("grove-agent");
    for want in [
        "Delegate=yes",
        "KillMode=process",
        "CapabilityBoundingSet=CAP_SYS_ADMIN",
    ] {
        assert!(agent.contains(want), "grove-agent.service lacks {want}");
    }
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .args(&files)
        .output()
        .expect("systemd-analyze");
    let said =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "systemd-analyze verify: {said}");
    assert!(
        !said.contains(".service"),
        "systemd-analyze has something to say about the units:\n{said}"
    );
}
