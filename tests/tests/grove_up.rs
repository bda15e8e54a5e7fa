//! The README's first command, run verbatim from the repository root: `grove up`
//! brings the system up, deploys the seed's application, prints the client's answer
//! through 10.30.30.30 and, at SIGINT (Ctrl-C), stops and leaves nothing behind.
//! Needs root (fails under CI without it). `scripts/test.sh` builds the release
//! binary first, so the command does not compile here.

use std::io::BufRead;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The first command of the README's Quick start.
fn readme_command() -> String {
    let readme = include_str!("../../README.md");
    let quick = &readme[readme.find("## Quick start").expect("a Quick start")..];
    let block = &quick[quick.find("```sh").expect("a sh block") + 5..];
    block
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .expect("a first command")
        .to_owned()
}

fn lines_of(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// The container cgroups of every hierarchy (v1 controllers or the v2 tree).
fn container_cgroups() -> Vec<String> {
    let mut out = Vec::new();
    let roots = std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .chain(std::iter::once(Path::new("/sys/fs/cgroup").to_path_buf()));
    // grove/<agent>/<container> (or grove/<container>).
    for r in roots {
        let mut dirs = vec![(r.join("grove"), 0)];
        while let Some((d, depth)) = dirs.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.path().is_dir() {
                    out.push(e.path().to_string_lossy().into_owned());
                    if depth < 1 {
                        dirs.push((e.path(), depth + 1));
                    }
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// What of a `grove up` run could be left: its namespaces, its host link, nftables
/// tables of its workers, running (not zombie) processes of its binary, mounts under
/// its folder.
fn leftovers(dir: &Path) -> Vec<String> {
    let mut left = Vec::new();
    left.extend(
        lines_of("ip", &["netns", "list"])
            .lines()
            .filter(|l| l.starts_with("gu-"))
            .map(|l| format!("namespace {l}")),
    );
    if lines_of("ip", &["-o", "link", "show"]).contains(": gu0") {
        left.push("link gu0".into());
    }
    left.extend(
        lines_of("nft", &["list", "tables"])
            .lines()
            .filter(|l| l.contains("grove_"))
            .map(|l| format!("nftables {l}")),
    );
    for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let stat = std::fs::read_to_string(p.path().join("stat")).unwrap_or_default();
        let running = stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'));
        let cmdline = std::fs::read_to_string(p.path().join("cmdline")).unwrap_or_default();
        if running && cmdline.contains("release/grove\0") {
            left.push(format!("process {}", cmdline.replace('\0', " ")));
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let d = dir.to_string_lossy().into_owned();
    left.extend(
        mounts
            .lines()
            .filter(|l| l.contains(d.as_str()))
            .map(|l| format!("mount {l}")),
    );
    left
}

/// Sends SIGINT to a process group when dropped (a failing test leaves no `grove up`
/// running), and SIGKILL if it is still there after a minute.
struct StopOnDrop(nix::unistd::Pid);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, killpg};
        if killpg(self.0, Signal::SIGINT).is_err() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while killpg(self.0, None).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = killpg(self.0, Signal::SIGKILL);
    }
}

#[test]
fn the_readmes_grove_up_deploys_the_seed_answers_through_the_service_ip_and_leaves_nothing() {
    if !grove_tests::have_root("grove up") {
        return;
    }
    let cmd = readme_command();
    assert!(
        cmd.contains("grove -- up"),
        "the README's first command: {cmd}"
    );
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the repository")
        .to_path_buf();
    let state = repo.join("grove-up");
    let log = std::env::temp_dir().join(format!("grove-up-{}.log", std::process::id()));
    let cgroups_before = container_cgroups();
    let started = Instant::now();
    // (`exec`: the shell becomes the command, so the exit status is grove up's own.)
    // The environment of a user's shell, not the test harness's (whose CARGO_* and
    // library paths would make cargo rebuild the binary).
    let keep = [
        "PATH",
        "HOME",
        "USER",
        "LANG",
        "CI",
        "CARGO_HOME",
        "RUSTUP_HOME",
        "RUSTUP_TOOLCHAIN",
        "CARGO_TARGET_DIR",
    ];
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("exec {cmd}"))
        .env_clear()
        .envs(std::env::vars().filter(|(k, _)| keep.contains(&k.as_str())))
        .current_dir(&repo)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log file"))
        // Its own process group: the SIGINT a terminal's Ctrl-C would send.
        .process_group(0)
        .spawn()
        .expect("sh");
    let pgid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    // Whatever happens, the run is stopped (as Ctrl-C would) before the test ends.
    let _stop = StopOnDrop(pgid);
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    // Up: the client's answer through the service IP, then the banner.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    while !seen
        .iter()
        .any(|l: &String| l.contains("Ctrl-C stops everything"))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => seen.push(l),
            Err(_) => {
                let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
                panic!(
                    "grove up did not come up:\n{}\n{}",
                    seen.join("\n"),
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        }
    }
    let up_after = started.elapsed();
    let answer = seen
        .iter()
        .find(|l| l.contains("curl http://10.30.30.30/"))
        .expect("the client's request");
    assert!(
        answer.contains("answered: Welcome to") && answer.contains("stand-in for nginx"),
        "{answer}"
    );
    eprintln!("grove up was up {up_after:?} after the command; {answer}");
    // The API it names works: the seed's application is there, every instance RUNNING.
    let login: serde_json::Value = ureq::post("http://127.0.0.1:10000/api/auth/login")
        .send_json(serde_json::json!({"username": "Admin", "password": "Admin"}))
        .expect("login")
        .into_json()
        .expect("a token");
    let apps: serde_json::Value = ureq::get("http://127.0.0.1:10000/api/applications/")
        .set(
            "Authorization",
            &format!("Bearer {}", login["token"].as_str().unwrap_or_default()),
        )
        .call()
        .expect("applications")
        .into_json()
        .expect("JSON");
    assert_eq!(apps[0]["application_name"], "clientsrvr", "{apps}");
    let services: Vec<String> = apps[0]["microservices"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect();
    assert_eq!(services.len(), 2);
    assert!(
        container_cgroups()
            .iter()
            .any(|c| services.iter().any(|s| c.contains(s.as_str()))),
        "the containers' cgroups are found while they run"
    );

    // Ctrl-C: everything goes.
    nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "grove up did not stop at SIGINT");
        std::thread::sleep(Duration::from_millis(100));
    };
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(
        status.success(),
        "grove up exited with {status}:\n{}\n{}",
        rest.join("\n"),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(rest.iter().any(|l| l.starts_with("stopped")), "{rest:?}");
    let mut left = leftovers(&state);
    left.extend(
        container_cgroups()
            .into_iter()
            // (Other tests running meanwhile make cgroups of their own.)
            .filter(|c| !cgroups_before.contains(c) && services.iter().any(|s| c.contains(s)))
            .map(|c| format!("cgroup {c}")),
    );
    assert!(left.is_empty(), "left behind: {left:#?}");
    let _ = std::fs::remove_dir_all(&state);
    let _ = std::fs::remove_file(&log);
}
