//! The `grove-cluster` command line as an operator meets it: a worker join token
//! printed, and bad flags refused with the flag named.

use std::process::Command;

fn cluster(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_grove-cluster"))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn an_operator_gets_worker_join_tokens_and_bad_flags_are_named() {
    let dir = std::env::temp_dir().join(format!("grove-cluster-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = cluster(&dir, &["token"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let (id, secret) = token.trim().split_once('.').expect("id.secret");
    assert_eq!((id.len(), secret.len()), (16, 32), "{token}");
    let again = cluster(&dir, &["token", "--reusable"]);
    assert_ne!(
        String::from_utf8(again.stdout).unwrap(),
        token,
        "tokens are fresh"
    );

    let out = cluster(&dir, &["token", "--expires-in-secs", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--expires-in-secs"));
    let out = cluster(&dir, &["--name", "edge"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--root"));
    let out = cluster(
        &dir,
        &[
            "--root",
            "127.0.0.1:1",
            "--name",
            "edge",
            "--location",
            "north",
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--location north"));
    let _ = std::fs::remove_dir_all(&dir);
}
