//! The privileged suite: real containers. A real root and cluster, `grove-agent
//! --runtime native` pulling busybox images (built from the host's busybox-static) from
//! a loopback `docker-registry` standing in for docker.io, and `grove-agent run` for
//! the container-level checks. Needs root; with `CI=true` a missing root fails.

mod support;

use grove_tests::registry::{Protection, Registry, make_images};
use serde_json::json;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use support::{Agent, Cluster, Root, bin, scratch, wait_until};

/// The test images in a registry serving busybox as docker.io's.
struct Images {
    registry: Registry,
}

fn images(dir: &Path) -> Option<Images> {
    let layout = make_images(&dir.join("layout"))?;
    let registry = Registry::start(&dir.join("registry"), &Protection::default())?;
    registry.push(&layout, "latest", "library/busybox:latest", None);
    Some(Images { registry })
}

/// A root, a cluster and a native worker `pi` pulling through the registry of `img`
/// as docker.io's mirror, with `extra` flags.
fn native_worker(dir: &Path, img: &Images, extra: &[&str]) -> (Root, Cluster, Agent) {
    let host = img.registry.addr.to_string();
    let root = Root::start(dir, &[]);
    let cluster = Cluster::start(dir, "edge", &root, &[]);
    let mirror = format!("docker.io=http://{host}");
    let mut flags = vec![
        "--runtime",
        "native",
        // This agent runs in the machine's own namespace: no bridge here (the data
        // plane is tested inside namespaces of its own).
        "--data-plane",
        "none",
        "--registry-mirror",
        &mirror,
        "--insecure-registry",
        &host,
    ];
    flags.extend_from_slice(extra);
    let agent = Agent::start(dir, "pi", cluster.addr, &cluster.worker_token, &flags);
    (root, cluster, agent)
}

/// `grove-agent run` with `args`; (exit code, stdout, stderr).
fn run(state: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin("grove-agent"))
        .arg("--state-dir")
        .arg(state)
        .arg("run")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn grove_agent_run_isolates_limits_and_returns_the_exit_code() {
    if !grove_tests::have_root("containers") {
        return;
    }
    let dir = scratch("run");
    let Some(layout) = make_images(&dir.join("layout")) else {
        return;
    };
    let image = format!("oci:{}:latest", layout.display());
    let state = dir.join("state");

    let (code, out, err) = run(&state, &[&image, "sh", "-c", "echo hi; exit 7"]);
    assert_eq!((code, out.as_str()), (7, "hi\n"), "{err}");

    // The PID namespace hides the host's processes: only the container's own.
    let (code, out, err) = run(&state, &[&image, "ps", "-o", "pid,comm"]);
    assert_eq!(code, 0, "{err}");
    // Its init is PID 1, the workload its child.
    let pids: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(pids.len(), 2, "processes seen: {out}");
    assert!(pids[0].trim().starts_with("1 init"), "{out}");
    assert!(pids[1].trim().ends_with(" ps"), "{out}");

    // Docker's default capabilities but NET_RAW and MKNOD, and nothing else; no new
    // privileges.
    let (_, out, _) = run(
        &state,
        &[
            &image,
            "grep",
            "-E",
            "^(CapBnd|NoNewPrivs)",
            "/proc/self/status",
        ],
    );
    assert!(
        out.contains("00000000a00405fb") && out.contains("NoNewPrivs:\t1"),
        "{out}"
    );

    // A memory hog beyond its limit is killed, and says why.
    let hog = "a=$(head -c 50000000 /dev/zero | tr '\\0' x); echo survived";
    let (code, out, err) = run(&state, &["--memory", "20", &image, "sh", "-c", hog]);
    assert_eq!(code, 137, "{out}{err}");
    assert!(err.contains("OOMKilled"), "{err}");

    // The CPU quota holds: a busy loop for 2 s gets about a fifth of one CPU.
    let busy = "time -p timeout 2 sh -c 'while :; do :; done'";
    let (_, _, err) = run(&state, &["--vcpus", "0.2", &image, "sh", "-c", busy]);
    let user: f64 = err
        .lines()
        .find_map(|l| l.strip_prefix("user "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no time output: {err}"));
    assert!(user < 0.7, "used {user} s of CPU in 2 s at 0.2 CPU");

    // Nothing is left behind: no container dir, cgroup, mount or process.
    let left: Vec<_> = std::fs::read_dir(state.join("containers"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(!mounts.contains(state.to_str().unwrap()), "{mounts}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The PID of a process with exactly this command line on the machine.
fn process_running(cmdline: &str) -> Option<i32> {
    let want = cmdline.replace(' ', "\0") + "\0";
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let c = std::fs::read(e.path().join("cmdline")).ok()?;
        (c == want.as_bytes()).then(|| e.file_name().to_str()?.parse().ok())?
    })
}

#[test]
fn workloads_are_kept_apart_within_their_limits_and_without_new_capabilities() {
    if !grove_tests::have_root("containers") {
        return;
    }
    let dir = scratch("isolation");
    let Some(layout) = make_images(&dir.join("layout")) else {
        return;
    };
    let image = format!("oci:{}:latest", layout.display());

    // B: a workload with a secret file, its process marked by its command line.
    let mut b = Command::new(bin("grove-agent"))
        .arg("--state-dir")
        .arg(dir.join("b"))
        .arg("run")
        .arg(&image)
        .args([
            "sh",
            "-c",
            "echo s3cr3t > /tmp/secret-of-b; exec sleep 1001",
        ])
        .spawn()
        .unwrap();
    wait_until(30, "workload B running", || {
        process_running("sleep 1001").is_some()
    });
    let marker = dir.join("host-marker");
    std::fs::write(&marker, "host-file\n").unwrap();
    // A looks for B's process and file and for a file of the host's.
    let look = format!(
        // (The names are put together, so that the command line itself holds neither.)
        "ps -o pid,args; n=secret-of; find / -xdev -name \"$n-b\" 2>/dev/null; grep -rs \"s3c\"\"r3t\" /tmp /proc/*/root/tmp; cat {} 2>&1; echo done",
        marker.display()
    );
    let (code, out, err) = run(&dir.join("a"), &[&image, "sh", "-c", &look]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.ends_with("done\n"), "{out}{err}");
    assert!(!out.contains("1001"), "A sees B's process:\n{out}");
    assert!(
        !out.contains("secret-of-b") && !out.contains("s3cr3t"),
        "A sees B's file:\n{out}"
    );
    assert!(
        !out.contains("host-file"),
        "A sees the host's files:\n{out}"
    );
    // B's container outlives a killed `grove-agent run` (as a container outlives its
    // agent): end it by its process.
    if let Some(pid) = process_running("sleep 1001") {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = b.wait();

    // Its cgroup holds: it cannot write its limits, mount a cgroup file system to
    // move out, or start more processes than its pids limit (1024: the fork bomb's
    // shell dies of it; counted after by a glob, which needs no new process).
    let escape = "echo $$ > /sys/fs/cgroup/cgroup.procs 2>/dev/null; echo write=$?; \
        mount -t cgroup2 none /mnt 2>/dev/null; echo cgroup2=$?; \
        mount -t cgroup -o memory none /mnt 2>/dev/null; echo cgroup1=$?; \
        ( i=0; while [ $i -lt 1100 ]; do sleep 30 & i=$((i+1)); done ) 2>/dev/null; \
        set -- /proc/[0-9]*; echo procs=$#";
    let (_, out, err) = run(&dir.join("a"), &[&image, "sh", "-c", escape]);
    for denied in ["write", "cgroup2", "cgroup1"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("{denied}=")) && !l.ends_with("=0")),
            "{denied} was allowed:\n{out}{err}"
        );
    }
    let procs: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("procs="))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no count:\n{out}{err}"));
    assert!(
        (900..=1024).contains(&procs),
        "{procs} processes under a limit of 1024"
    );

    // No capability beyond those given: no network administration, no device nodes,
    // no host name change. (A set-user-id binary gaining nothing is the escape
    // suite's `setuid_binary_raises_its_user`: busybox drops such privileges itself.)
    let caps = "ip link add d0 type dummy 2>/dev/null; echo netadmin=$?; \
        mknod /tmp/disk b 254 0 2>/dev/null; echo mknod=$?; \
        hostname other 2>/dev/null; echo sysadmin=$?";
    let (_, out, err) = run(&dir.join("a"), &[&image, "sh", "-c", caps]);
    for denied in ["netadmin", "mknod", "sysadmin"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("{denied}=")) && !l.ends_with("=0")),
            "{denied} was allowed:\n{out}{err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Instance `n` of a service: (status, detail).
fn status(root: &Root, service: &str, n: usize) -> (String, String) {
    let list = root.instances(service);
    let i = list.get(n).cloned().unwrap_or_default();
    (
        i["status"].as_str().unwrap_or_default().to_owned(),
        i["status_detail"].as_str().unwrap_or_default().to_owned(),
    )
}

#[test]
fn instances_pulled_through_a_docker_io_mirror_run_exit_and_survive_an_agent_sigkill() {
    if !grove_tests::have_root("containers") {
        return;
    }
    let dir = scratch("native");
    let Some(img) = images(&dir) else { return };
    let (root, cluster, mut agent) =
        native_worker(&dir, &img, &["--cpus", "8", "--memory-mib", "4096"]);
    wait_until(30, "the worker", || root.active_workers() == 1);

    // A long-running service writing a line every 0.2 s, and three one-shot jobs.
    let ids = root.deploy_seed(|sla| {
        let ms = &mut sla["applications"][0]["microservices"];
        let svc = |name: &str, cmd: &str, one_shot: bool, memory: u32| {
            json!({
                "microserviceID": "", "microservice_name": name, "microservice_namespace": "test",
                "virtualization": "container", "cmd": ["sh", "-c", cmd], "memory": memory,
                "vcpus": 1, "vgpus": 0, "vtpus": 0, "bandwidth_in": 0, "bandwidth_out": 0,
                "storage": 0, "code": "docker.io/library/busybox:latest", "state": "",
                "port": "", "added_files": [], "one_shot": one_shot
            })
        };
        *ms = json!([
            svc(
                "ticker",
                "while :; do echo tick; sleep 0.2; done",
                false,
                64
            ),
            svc("ok", "echo done; exit 0", true, 64),
            svc("fails", "echo broken >&2; exit 3", true, 64),
            svc(
                "hog",
                "a=$(head -c 50000000 /dev/zero | tr '\\0' x)",
                true,
                20
            ),
            svc("slow", "sleep 4; exit 5", true, 64),
            svc("crashy", "echo up; exit 1", false, 64),
        ]);
    });
    for s in &ids {
        root.add_instance(s);
    }
    let (ticker, ok, fails, hog, slow) = (&ids[0], &ids[1], &ids[2], &ids[3], &ids[4]);
    // A service that keeps crashing is restarted with a growing wait, and says so.
    wait_until(60, "crashy restarted twice", || {
        let (_, d) = status(&root, &ids[5], 0);
        d.contains("exit code 1") && d.contains("restart 2 in 2s") && d.contains("up")
    });
    wait_until(60, "the ticker RUNNING", || {
        status(&root, ticker, 0).0 == "RUNNING"
    });
    wait_until(30, "the one-shot jobs ending", || {
        status(&root, ok, 0).0 == "COMPLETED"
            && status(&root, fails, 0).0 == "DEAD"
            && status(&root, hog, 0).0 == "DEAD"
    });
    let (_, why) = status(&root, fails, 0);
    assert!(
        why.contains("exit code 3") && why.contains("broken"),
        "{why}"
    );
    let (_, why) = status(&root, hog, 0);
    assert!(why.contains("OOMKilled"), "{why}");

    // The agent dies while `slow` runs; the containers do not notice.
    wait_until(30, "slow RUNNING", || status(&root, slow, 0).0 == "RUNNING");
    let containers = dir.join("pi/containers");
    let ticker_dir = std::fs::read_dir(&containers)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(ticker.as_str())
        })
        .expect("the ticker's container");
    let pid_before = std::fs::read_to_string(ticker_dir.join("pid")).unwrap();
    // It runs in the network namespace held for it before it started.
    {
        use std::os::unix::fs::MetadataExt;
        let held = std::fs::metadata(ticker_dir.join("netns")).unwrap().ino();
        let pid = pid_before.split_whitespace().next().unwrap();
        let ns = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
        assert_eq!(ns.to_string_lossy(), format!("net:[{held}]"));
    }
    agent.daemon.kill();
    let killed = Instant::now();
    let log_len = || {
        std::fs::metadata(ticker_dir.join("log"))
            .map(|m| m.len())
            .unwrap_or(0)
    };
    let before = log_len();
    wait_until(10, "the ticker logging on without its agent", || {
        log_len() > before + 20
    });
    // `slow` ends (exit 5) while no agent runs.
    let slow_pid: u32 = std::fs::read_dir(&containers)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with(slow.as_str()))
        .and_then(|e| std::fs::read_to_string(e.path().join("pid")).ok())
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .expect("slow's pid");
    wait_until(20, "slow ending while the agent is down", || {
        !Path::new(&format!("/proc/{slow_pid}")).exists()
    });
    assert!(killed.elapsed() < Duration::from_secs(30));
    agent.daemon.restart();
    // Re-adopted: the same process, still RUNNING; and slow's real exit code reported.
    wait_until(30, "slow reported DEAD with its exit code", || {
        let (s, d) = status(&root, slow, 0);
        s == "DEAD" && d.contains("exit code 5")
    });
    assert_eq!(status(&root, ticker, 0).0, "RUNNING");
    assert_eq!(
        std::fs::read_to_string(ticker_dir.join("pid")).unwrap(),
        pid_before
    );
    let after = log_len();
    wait_until(10, "logs flowing after re-adoption", || {
        log_len() > after + 20
    });

    // Deleting the application removes every container and leaves nothing behind.
    let apps = root.api("GET", "/api/applications/", None);
    let app = apps[0]["applicationID"].as_str().unwrap().to_owned();
    root.api("DELETE", &format!("/api/application/{app}"), None);
    wait_until(30, "every container gone", || {
        std::fs::read_dir(&containers)
            .map(|d| d.count())
            .unwrap_or(0)
            == 0
    });
    let pid: u32 = pid_before
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the ticker still runs"
    );
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(!mounts.contains(containers.to_str().unwrap()), "{mounts}");
    // Groups live at grove/<agent scope>/<container>.
    let cgroups = ["/sys/fs/cgroup/memory/grove", "/sys/fs/cgroup/grove"];
    for c in cgroups {
        let scopes = std::fs::read_dir(c).into_iter().flatten().flatten();
        for scope in scopes.filter(|e| e.path().is_dir()) {
            let ours: Vec<_> = std::fs::read_dir(scope.path())
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(ticker.as_str()))
                .collect();
            assert!(ours.is_empty(), "cgroup left: {ours:?}");
        }
    }
    drop((root, cluster, agent));
    // The supervisor is not a child of the test: stop it.
    if let Ok(pid) = std::fs::read_to_string(dir.join("pi/supervisor.pid")) {
        let _ = Command::new("kill").arg(pid.trim()).status();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn containers_launch_from_anonymous_basic_auth_over_tls_and_bearer_token_registries() {
    use grove_tests::registry::{TokenServer, basic_over_tls};
    if !grove_tests::have_root("containers") {
        return;
    }
    let dir = scratch("auth-modes");
    let Some(layout) = make_images(&dir.join("layout")) else {
        return;
    };
    let Some((ca, basic)) = basic_over_tls(&dir, "grove", "s3cret") else {
        return;
    };
    let Some(tokens) = TokenServer::start(&dir.join("certs/ca.key"), &ca, "grove", "s3cret") else {
        return;
    };
    let modes = [
        ("anonymous", Protection::default()),
        ("basic-tls", basic),
        (
            "bearer",
            Protection {
                token: Some(tokens.auth.clone()),
                ..Protection::default()
            },
        ),
    ];
    for (mode, p) in modes {
        let Some(reg) = Registry::start(&dir.join(mode), &p) else {
            return;
        };
        let creds = (mode != "anonymous").then_some("grove:s3cret");
        reg.push(&layout, "latest", "edge/busybox:1", creds);
        let host = reg.addr.to_string();
        let image = format!("{host}/edge/busybox:1");
        let auth = format!("{host}=grove:s3cret");
        let ca_path = ca.display().to_string();
        let mut args: Vec<&str> = Vec::new();
        if reg.tls {
            args.extend(["--registry-ca", &ca_path]);
        } else {
            args.extend(["--insecure-registry", &host]);
        }
        if creds.is_some() {
            args.extend(["--registry-auth", &auth]);
        }
        args.extend([image.as_str(), "echo", mode]);
        let (code, out, err) = run(&dir.join(format!("state-{mode}")), &args);
        assert_eq!((code, out.trim()), (0, mode), "{mode}: {err}");
    }
    drop(tokens);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_worker_without_the_memory_controller_gets_no_service_that_sets_a_memory_limit() {
    if !grove_tests::have_root("containers") {
        return;
    }
    let dir = scratch("no-memcg");
    let Some(img) = images(&dir) else { return };
    let (root, cluster, mut agent) = native_worker(&dir, &img, &[]);
    wait_until(30, "the worker", || root.active_workers() == 1);
    // The kernel of a Raspberry Pi booted without `cgroup_enable=memory`: a test build
    // hides the controller. The worker, restarted so, says so and tells its cluster.
    agent.daemon.kill();
    agent
        .daemon
        .set_env("GROVE_TEST_HIDE_CONTROLLERS", "memory");
    agent.daemon.restart();
    wait_until(30, "the warning naming the fix", || {
        agent
            .daemon
            .log()
            .contains("cgroup_enable=memory cgroup_memory=1")
    });
    let ids = root.deploy_seed(|sla| {
        let svc = |name: &str, memory: u32| {
            json!({
                "microserviceID": "", "microservice_name": name, "microservice_namespace": "test",
                "virtualization": "container", "cmd": ["sleep", "1000"], "memory": memory,
                "vcpus": 1, "vgpus": 0, "vtpus": 0, "bandwidth_in": 0, "bandwidth_out": 0,
                "storage": 0, "code": "docker.io/library/busybox:latest", "state": "",
                "port": "", "added_files": []
            })
        };
        sla["applications"][0]["microservices"] = json!([svc("bounded", 64), svc("free", 0)]);
    });
    for s in &ids {
        root.add_instance(s);
    }
    let mut why = String::new();
    wait_until(
        30,
        "the memory-bound service refused with the reason",
        || {
            let (s, d) = status(&root, &ids[0], 0);
            why = d.clone();
            s == "FAILED"
        },
    );
    assert!(
        why.contains("NO_QUALIFIED_WORKER_FOUND") && why.contains("memory") && why.contains("pi"),
        "{why}"
    );
    wait_until(60, "the service without a memory limit RUNNING", || {
        status(&root, &ids[1], 0).0 == "RUNNING"
    });
    drop((root, cluster, agent));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The PID of a process with exactly these arguments on the machine.
fn process_with_args(args: &[&str]) -> Option<i32> {
    let want: Vec<u8> = args
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let c = std::fs::read(e.path().join("cmdline")).ok()?;
        (c == want).then(|| e.file_name().to_str()?.parse().ok())?
    })
}

/// When each new line of `log` holding `needle` was first seen, polled until `until`
/// holds.
fn watch_lines(
    log: impl Fn() -> String,
    needle: &str,
    mut until: impl FnMut() -> bool,
) -> Vec<Instant> {
    let mut seen = Vec::new();
    let before = log().matches(needle).count();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !until() {
        assert!(Instant::now() < deadline, "still waiting after 60 s");
        let n = log().matches(needle).count() - before;
        while seen.len() < n {
            seen.push(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    seen
}

#[test]
fn stopped_containers_get_sigterm_their_grace_then_sigkill_while_heartbeats_keep_their_period() {
    if !grove_tests::have_root("containers") {
        return;
    }
    let dir = scratch("stop");
    let Some(img) = images(&dir) else { return };
    let (root, cluster, mut agent) = native_worker(&dir, &img, &["--cpus", "8"]);
    wait_until(30, "the worker", || root.active_workers() == 1);
    // Each heartbeat the agent sends, in its log.
    agent.daemon.kill();
    agent
        .daemon
        .set_env("RUST_LOG", "info,grove_agent::control=debug");
    agent.daemon.restart();

    // A handler that takes 3 s to finish; a plain shell; a shell ignoring SIGTERM with
    // the default grace (5 s) and one with a grace of 1 s from its SLA. Each command
    // line is its own, to find its process on the host.
    let handler = "trap 'sleep 3.21; exit 0' TERM; while :; do sleep 0.13; done";
    let plain = "while :; do sleep 0.11; done";
    let ignorer = "trap '' TERM; while :; do sleep 0.12; done";
    let short = "trap '' TERM; while :; do sleep 0.14; done";
    let ids = root.deploy_seed(|sla| {
        let svc = |name: &str, cmd: &str, grace: Option<u32>| {
            let mut s = json!({
                "microserviceID": "", "microservice_name": name, "microservice_namespace": "test",
                "virtualization": "container", "cmd": ["sh", "-c", cmd], "memory": 32,
                "vcpus": 0.1, "vgpus": 0, "vtpus": 0, "bandwidth_in": 0, "bandwidth_out": 0,
                "storage": 0, "code": "docker.io/library/busybox:latest", "state": "",
                "port": "", "added_files": []
            });
            if let Some(g) = grace {
                s["stop_grace_s"] = json!(g);
            }
            s
        };
        sla["applications"][0]["microservices"] = json!([
            svc("handler", handler, Some(30)),
            svc("plain", plain, Some(30)),
            svc("ignorer", ignorer, None),
            svc("short", short, Some(1)),
        ]);
    });
    for s in &ids {
        root.add_instance(s);
    }
    let shell = |cmd: &str| process_with_args(&["sh", "-c", cmd]);
    wait_until(60, "all four running", || {
        [handler, plain, ignorer, short]
            .iter()
            .all(|c| shell(c).is_some())
    });

    // Stopped together: how long each takes to end.
    let stopped = Instant::now();
    for s in &ids {
        root.api("DELETE", &format!("/api/service/{s}/instance/0"), None);
    }
    let mut ended: [Option<Duration>; 4] = [None; 4];
    let mut handler_ran = false;
    let beats = watch_lines(
        || agent.daemon.log(),
        "heartbeat sent",
        || {
            handler_ran |= process_running("sleep 3.21").is_some();
            for (i, c) in [handler, plain, ignorer, short].iter().enumerate() {
                if ended[i].is_none() && shell(c).is_none() {
                    ended[i] = Some(stopped.elapsed());
                }
            }
            ended.iter().all(Option::is_some)
        },
    );
    let [handler_end, plain_end, ignorer_end, short_end] = ended.map(Option::unwrap);
    // The handler ran (its `sleep 3.21` was seen) and the container ended by itself.
    assert!(handler_ran, "the SIGTERM handler did not run");
    assert!(
        handler_end >= Duration::from_secs(3) && handler_end < Duration::from_secs(15),
        "the handler's container ended after {handler_end:?}"
    );
    // A plain shell is not PID 1 (init is): SIGTERM's default action ends it at once.
    assert!(
        plain_end < Duration::from_secs(3),
        "a plain shell took {plain_end:?} to stop"
    );
    // Those ignoring SIGTERM are killed after their grace, and no sooner.
    assert!(
        ignorer_end >= Duration::from_secs(5) && ignorer_end < Duration::from_secs(12),
        "ignoring SIGTERM with the default grace: ended after {ignorer_end:?}"
    );
    assert!(
        short_end >= Duration::from_secs(1) && short_end < Duration::from_secs(4),
        "ignoring SIGTERM with a grace of 1 s: ended after {short_end:?}"
    );
    // Waiting for the graces held up nothing: from the stop to the last end, no gap
    // between heartbeats (or the window's ends) much over their 2 s period.
    let last = stopped + handler_end.max(ignorer_end);
    let mut times = vec![stopped];
    times.extend(beats.iter().copied().filter(|t| *t <= last));
    times.push(last);
    let longest = times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    assert!(
        longest < Duration::from_millis(3000),
        "heartbeats {longest:?} apart while containers stopped ({} in all)",
        beats.len()
    );
    // Nothing is left of them.
    let containers = dir.join("pi/containers");
    wait_until(10, "their directories removed", || {
        std::fs::read_dir(&containers).map_or(0, |d| d.count()) == 0
    });
    drop((root, cluster, agent));
    let _ = std::fs::remove_dir_all(&dir);
}
