//! The native runtime on its own, as the control loop drives it: an instance deployed
//! from an OCI layout runs, reports its CPU and memory from its cgroup, and is removed
//! without a trace. Needs root (fails under CI without it).

use grove_agent::native::NativeRuntime;
use grove_agent::runtime::Runtime;
use grove_proto::msg::{InstanceRef, InstanceSpec, InstanceState};
use std::time::{Duration, Instant};

fn wait(rt: &mut NativeRuntime, what: &str, mut cond: impl FnMut(&mut NativeRuntime) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond(rt) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_instance_runs_reports_its_usage_and_is_removed_without_a_trace() {
    if !grove_tests::have_root("containers") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("grove-native-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let Some(layout) = grove_tests::registry::make_images(&dir.join("layout")) else {
        return;
    };
    // SAFETY: set before any thread of this test process starts.
    unsafe { std::env::set_var("GROVE_AGENT_EXE", env!("CARGO_BIN_EXE_grove-agent")) };
    let state = dir.join("state");
    // The layout's directory is one an SLA may name on this worker.
    let containment = grove_agent::limits::Containment {
        oci_dirs: vec![dir.clone()],
        ..Default::default()
    };
    let mut rt = NativeRuntime::open(&state, Default::default(), containment)
        .unwrap()
        .image_keep(Duration::from_secs(2));
    let who = InstanceRef {
        service: "busy".into(),
        instance: 0,
    };
    rt.deploy(&InstanceSpec {
        instance: who.clone(),
        name: "a.b.busy.d".into(),
        image: format!("oci:{}:latest", layout.display()),
        cmd: vec![
            "sh".into(),
            "-c".into(),
            "a=$(head -c 16000000 /dev/zero | tr '\\0' x); while :; do :; done".into(),
        ],
        env: vec![],
        memory_mib: 64,
        millicpus: 500,
        ports: None,
        one_shot: false,
        ip: None,
        nodes: None,
        geo: None,
        latency: None,
        rr_ip: None,
        closest_ip: None,
        ip6: None,
        rr_ip6: None,
        closest_ip6: None,
        storage_mib: Some(32),
        stop_grace_s: None,
    });
    let mut seen = Vec::new();
    wait(&mut rt, "RUNNING", |rt| {
        // (the image comes from a local layout: no network, seconds at most)
        seen.extend(rt.poll().into_iter().map(|c| c.state));
        rt.list() == [(who.clone(), InstanceState::Running)]
    });
    assert_eq!(seen, [InstanceState::Creating, InstanceState::Running]);
    rt.instance_usage();
    let mut usage = Vec::new();
    wait(&mut rt, "a busy loop's CPU and its memory", |rt| {
        std::thread::sleep(Duration::from_millis(500));
        usage = rt.instance_usage();
        usage.len() == 1 && usage[0].cpu_centi_pct > 0 && usage[0].mem_mib >= 8
    });
    // Half a CPU at most (its quota), with a margin for the sampling.
    assert!(usage[0].cpu_centi_pct <= 6_500, "{usage:?}");

    rt.stop(&who);
    let changes = rt.poll();
    assert!(
        changes.iter().any(|c| c.state == InstanceState::Undeployed),
        "{changes:?}"
    );
    assert!(rt.list().is_empty());
    // No instance uses the image any more: it is kept a while (a redeploy finds it
    // cached), then collected.
    let layers = state.join("images/layers");
    assert!(
        std::fs::read_dir(&layers).map(|d| d.count()).unwrap_or(0) > 0,
        "the unused image is kept for a while"
    );
    wait(&mut rt, "the unused image collected", |rt| {
        rt.poll();
        std::fs::read_dir(&layers).map(|d| d.count()).unwrap_or(1) == 0
    });
    let left: Vec<_> = std::fs::read_dir(state.join("containers"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    // Its bounded writable layer too.
    assert!(
        !state.join("upper/busy-0").exists(),
        "its writable layer stays"
    );
    // Its group (in this agent's scope) went with it.
    grove_agent::container::cgroup::scope_to(&state);
    let group = grove_agent::container::cgroup::Group::name_of("busy-0");
    assert!(
        group.starts_with("grove/") && group.ends_with("/busy-0"),
        "{group}"
    );
    assert!(!std::path::Path::new(&format!("/sys/fs/cgroup/memory/{group}")).exists());
    assert!(!std::path::Path::new(&format!("/sys/fs/cgroup/{group}")).exists());
    if let Ok(pid) = std::fs::read_to_string(state.join("supervisor.pid")) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid.trim().parse().unwrap()),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    grove_agent::container::quota::release(&state);
    let _ = std::fs::remove_dir_all(&dir);
}
