//! `grove up` end to end: agents join over lossy relays and converge on the commands.

use std::process::Command;

#[test]
fn grove_up_joins_every_agent_and_delivers_the_latest_commands_under_20_percent_loss() {
    let dir = std::env::temp_dir().join(format!("grove-up-test-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_grove"))
        .args([
            "up",
            "--duration",
            "7",
            "--workers",
            "3",
            "--loss",
            "30",
            "--dir",
        ])
        .arg(&dir)
        .output()
        .expect("run grove up");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "grove up failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("long-term OSCORE contexts: 3/3"),
        "{stdout}"
    );
    assert!(
        stdout.contains("latest command generation (1): 3/3"),
        "{stdout}"
    );
    // Each agent persisted its OSCORE sequence state (RFC 8613 Appendix B.1.1).
    for n in 1..=3 {
        let f = dir.join(format!("worker-{n}/cluster.oscore-seq"));
        let text = std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(text.contains("seq_ceiling="), "{text}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn grove_up_refuses_an_absurd_loss_rate_by_name() {
    let out = Command::new(env!("CARGO_BIN_EXE_grove"))
        .args(["up", "--loss", "95"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--loss"));
}
