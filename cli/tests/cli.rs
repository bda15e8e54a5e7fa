//! The `grove` binary's own behaviour without a root: its command tree, completions and
//! the plain-words errors it gives before any request. (Being an integration test of
//! this package, it also makes cargo's test build produce the `grove` binary the
//! end-to-end tests in `tests/` run.)

use std::process::Command;

fn grove(args: &[&str], home: &std::path::Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_grove"))
        .args(args)
        .env("XDG_CONFIG_HOME", home)
        .env_remove("GROVE_CLI_CONFIG")
        .env_remove("GROVE_ROOT")
        .env_remove("GROVE_AS")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_command_tree_completions_and_errors_before_any_request() {
    let home = std::env::temp_dir().join(format!("grove-cli-bin-{}", std::process::id()));
    let (ok, out, _) = grove(&["--help"], &home);
    assert!(ok);
    for c in [
        "up",
        "login",
        "logout",
        "app",
        "service",
        "instance",
        "logs",
        "cluster",
        "node",
        "token",
        "completions",
    ] {
        assert!(
            out.lines().any(|l| l.trim_start().starts_with(c)),
            "no {c}:\n{out}"
        );
    }
    let (ok, out, _) = grove(&["completions", "fish"], &home);
    assert!(ok && out.contains("complete -c grove"), "{out}");
    // Without a login: say what to do.
    let (ok, _, err) = grove(&["app", "ls"], &home);
    assert!(!ok && err.contains("grove login"), "{err}");
    // A root URL without a scheme.
    let (ok, _, err) = grove(&["--root", "root:10000", "cluster", "ls"], &home);
    assert!(
        !ok && err.contains("must start with http:// or https://"),
        "{err}"
    );
    // A wrong --output value names the ones there are.
    let (ok, _, err) = grove(&["--output", "yaml", "app", "ls"], &home);
    assert!(
        !ok && err.contains("table") && err.contains("json"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&home);
}
