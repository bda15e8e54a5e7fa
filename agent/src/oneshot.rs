//! `grove-agent run IMAGE [CMD...]`: one container in the foreground on the runtime's
//! own path (pull, overlay root, namespaces, cgroup), like `docker run --rm`: output
//! passed through, the exit code returned (128 + signal when killed), everything
//! removed afterwards.

use crate::Args;
use crate::container::{self, LaunchSpec, Paths, cgroup::Group};
use crate::image::ImageStore;
use grove_proto::msg::{InstanceRef, InstanceSpec};
use nix::sys::wait::{WaitStatus, waitpid};

/// The instance spec `run` stands for (the fuzz target's too).
pub(crate) fn spec(
    image: &str,
    cmd: &[String],
    memory_mib: Option<u32>,
    millicpus: Option<u32>,
) -> InstanceSpec {
    InstanceSpec {
        instance: InstanceRef {
            service: "run".into(),
            instance: std::process::id(),
        },
        name: "run".into(),
        image: image.to_owned(),
        cmd: cmd.to_vec(),
        env: Vec::new(),
        memory_mib: memory_mib.unwrap_or(0),
        millicpus: millicpus.unwrap_or(0),
        ports: None,
        one_shot: true,
        ip: None,
        nodes: None,
        geo: None,
        latency: None,
        rr_ip: None,
        closest_ip: None,
        ip6: None,
        rr_ip6: None,
        closest_ip6: None,
        storage_mib: None,
        stop_grace_s: None,
    }
}

/// How a container ended, as a shell reports it, plus whether the OOM killer did it.
pub fn exit_code(status: WaitStatus, group: &Group) -> (i32, bool) {
    let oom = group.oom_kills() > 0;
    let code = match status {
        WaitStatus::Exited(_, c) => c,
        WaitStatus::Signaled(_, sig, _) => 128 + sig as i32,
        _ => 1,
    };
    (code, oom)
}

/// Run it; returns its exit code.
pub fn run(
    args: &Args,
    image: &str,
    cmd: &[String],
    memory_mib: Option<u32>,
    millicpus: Option<u32>,
) -> Result<i32, String> {
    let store = ImageStore::open(&args.state_dir.join("images"), args.registry_config()?)
        .map_err(|e| e.to_string())?;
    let img = store.pull(image).map_err(|e| e.to_string())?;
    container::cgroup::scope_to(&args.state_dir);
    let id = format!("run-{}", std::process::id());
    let instance = spec(image, cmd, memory_mib, millicpus);
    let mut launch = LaunchSpec::resolve(&id, &instance, &img).map_err(|e| e.to_string())?;
    let containment = args.containment()?;
    containment.apply(&mut launch, &instance);
    // Bounded writable layers: their file system is mounted for this run when no
    // agent of this state directory holds it already, and let go afterwards.
    let bounds = container::quota::mount_point(&args.state_dir);
    let held = is_mounted(&bounds);
    if launch.storage_bytes > 0 {
        container::quota::ensure(&args.state_dir, containment.storage_pool_mib)
            .map_err(|e| format!("{e} (or run with --default-storage-mib 0)"))?;
    }
    let containers = args.state_dir.join("containers");
    let paths = Paths {
        log: None,
        ..Paths::of(&containers, &id)
    };
    let (pid, group) = container::launch(&launch, &paths).map_err(|e| e.to_string())?;
    let status = loop {
        match waitpid(pid, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other.map_err(|e| format!("wait: {e}"))?,
        }
    };
    let (code, oom) = exit_code(status, &group);
    if oom {
        eprintln!(
            "grove-agent: the container was killed for going over its memory limit (OOMKilled)"
        );
    }
    container::remove(&containers, &id)?;
    if !held && crate::supervisor::call(&args.state_dir, &crate::supervisor::Request::List).is_err()
    {
        container::quota::release(&args.state_dir);
    }
    Ok(code)
}

fn is_mounted(point: &std::path::Path) -> bool {
    let p = format!(" {} ", point.display());
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| m.contains(&p))
}
