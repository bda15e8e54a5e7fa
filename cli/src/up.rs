//! `grove up`: the whole system on this machine, deploying the seed's application.
//!
//! A root (HTTP API on the host's loopback), a cluster, and two workers, each worker in
//! a network namespace of its own joined to the others by a switch namespace; the
//! host reaches the switch over one veth with link-local addresses (169.254.77.0/24),
//! so no namespace has a route out and the host has none into Grove's ranges. Every
//! daemon is this same binary run as that daemon (`GROVE_AS`). The workers pull the
//! seed's images from a mirror of `docker.io` that `grove up` serves: stand-ins built
//! from the host's busybox, or with `--real-images` the real ones, pulled here first.
//! Ctrl-C stops everything and removes every namespace, link, container, cgroup and
//! nftables table it made (each worker through `grove-agent reset`).

pub mod images;
pub mod mirror;

use run::Run;

use clap::Args;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Options of `grove up`.
#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// Folder for the run's state and logs (emptied first).
    #[arg(long, default_value = "grove-up")]
    pub dir: PathBuf,
    /// The root's HTTP API (and CoAP) address.
    #[arg(long, default_value = "127.0.0.1:10000")]
    pub api: SocketAddr,
    /// The password of the API's user `Admin`.
    #[arg(long, env = "GROVE_ADMIN_PASSWORD", default_value = "Admin")]
    pub admin_password: String,
    /// Pull the seed's real images from Docker Hub (on this machine; the workers get
    /// them from the local mirror) instead of building stand-ins from busybox.
    #[arg(long)]
    pub real_images: bool,
    /// Stop after this many seconds instead of at Ctrl-C.
    #[arg(long)]
    pub duration: Option<u64>,
}

/// `println!` that never fails: with stdout gone (its reader ended), `grove up` still
/// has to stop everything it started, so a failed write must not abort it.
macro_rules! say {
    () => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout());
    }};
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// `eprintln!` likewise.
macro_rules! esay {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

// After the macros, which it uses.
mod run;

/// Names and addresses of the run's network.
const SWITCH: &str = "gu-sw";
const HOST_LINK: &str = "gu0";
const HOST_ADDR: &str = "169.254.77.1";
const WORKERS: [&str; 2] = ["w1", "w2"];
const CLUSTER_PORT: u16 = 10100;
const MIRROR_PORT: u16 = 5000;
const SEED: &str = include_str!("../../root/tests/seed_sla.json");

fn worker_ns(w: &str) -> String {
    format!("gu-{w}")
}

fn worker_addr(i: usize) -> String {
    format!("169.254.77.{}", 11 + i)
}

/// `program` to run in network namespace `ns` (when given). `nsenter --net` rather
/// than `ip netns exec`, which mounts a /sys of its own and so hides the cgroup file
/// systems from the agent.
fn in_ns(ns: Option<&str>, program: &Path) -> Command {
    match ns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{ns}")).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Run a command; its stdout, or an error naming it.
fn sh(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// The static busybox the stand-ins are made of, if this machine has one.
fn static_busybox() -> Option<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| images::is_static(p))
}

/// What this machine lacks for `grove up`, installed with apt (Debian's packages).
fn prerequisites(real_images: bool) -> Result<(), String> {
    let mut missing = Vec::new();
    for (program, package) in [
        ("ip", "iproute2"),
        ("nft", "nftables"),
        ("nsenter", "util-linux"),
        // Bounded writable layers (the workers' storage limits).
        ("mkfs.btrfs", "btrfs-progs"),
    ] {
        if !have(program) {
            missing.push(package);
        }
    }
    if !real_images && static_busybox().is_none() {
        missing.push("busybox-static");
    }
    if missing.is_empty() {
        return Ok(());
    }
    if !have("apt-get") {
        return Err(format!(
            "install these packages first: {}",
            missing.join(" ")
        ));
    }
    say!("installing {} (apt-get)", missing.join(" "));
    let install = |update: bool| {
        if update {
            let _ = Command::new("apt-get").args(["update", "-q"]).status();
        }
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    if install(false) || install(true) {
        Ok(())
    } else {
        Err(format!("apt-get could not install {}", missing.join(" ")))
    }
}

fn wait_for<T>(
    secs: u64,
    stop: &AtomicBool,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if stop.load(Ordering::Relaxed) {
            return Err("interrupted".into());
        }
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Run `grove up`; whether everything worked.
pub async fn up(args: UpArgs) -> Result<bool, String> {
    if !nix::unistd::geteuid().is_root() {
        return Err(
            "grove up needs root: it makes network namespaces, containers and cgroups".into(),
        );
    }
    prerequisites(args.real_images)?;
    // One run per machine: the namespaces, the link and the ports are the same.
    let lock_path = Path::new("/run/grove-up.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(lock_path)
        .map_err(|e| format!("{}: {e}", lock_path.display()))?;
    let mut lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|_| {
            let pid = std::fs::read_to_string(lock_path).unwrap_or_default();
            format!(
                "another grove up is running (pid {}); stop it (Ctrl-C) first",
                pid.trim()
            )
        })?;
    {
        use std::io::{Seek, Write};
        let _ = lock.set_len(0);
        let _ = lock.rewind();
        let _ = write!(lock, "{}", std::process::id());
    }
    // Orphans of the run (a worker's container supervisor outlives its agent) come to
    // this process, which reaps them at the end: nothing is left, not even a zombie.
    let _ = nix::sys::prctl::set_child_subreaper(true);
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            stop.store(true, Ordering::Relaxed);
        });
    }
    std::fs::create_dir_all(&args.dir).map_err(|e| format!("{}: {e}", args.dir.display()))?;
    let dir = std::fs::canonicalize(&args.dir).map_err(|e| e.to_string())?;
    let mut run = Run {
        dir: dir.clone(),
        exe: std::env::current_exe().map_err(|e| e.to_string())?,
        agents: Vec::new(),
        tiers: Vec::new(),
        done: false,
    };
    // What an earlier run left (it was killed) goes first, then its state.
    run.teardown();
    run.done = false;
    for entry in std::fs::read_dir(&dir)
        .map_err(|e| e.to_string())?
        .flatten()
    {
        let p = entry.path();
        let _ = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
    }
    std::fs::create_dir_all(dir.join("logs")).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let result = bring_up(&mut run, &args, &stop, started).await;
    let ok = match result {
        Ok(()) => true,
        Err(e) if e == "interrupted" => true,
        Err(e) => {
            esay!("grove up: {e} (logs in {})", dir.join("logs").display());
            false
        }
    };
    say!(
        "stopping: every daemon, container, namespace, link, cgroup and nftables table of this run goes"
    );
    run.teardown();
    reap();
    drop(lock);
    say!("stopped; state and logs stay in {}", dir.display());
    Ok(ok)
}

async fn bring_up(
    run: &mut Run,
    args: &UpArgs,
    stop: &AtomicBool,
    started: Instant,
) -> Result<(), String> {
    let t = || format!("[{:5.1}s]", started.elapsed().as_secs_f32());
    // The images, then the network and the mirror on the host's end of it.
    let images = if args.real_images {
        real_images(&run.dir)?
    } else {
        let bb = static_busybox().ok_or("no static busybox (Debian: busybox-static)")?;
        images::Images::stand_ins(&bb)?
    };
    run.network()?;
    let mirror = format!("{HOST_ADDR}:{MIRROR_PORT}");
    let listener = tokio::net::TcpListener::bind(&mirror)
        .await
        .map_err(|e| format!("the image mirror on {mirror}: {e}"))?;
    tokio::spawn(mirror::run(listener, images));
    say!(
        "{} network: workers {} in namespaces, image mirror on {mirror}",
        t(),
        WORKERS.join(", ")
    );

    // The root, then a cluster joined to it, then the workers joined to the cluster.
    let root_dir = run.dir.join("root").to_string_lossy().into_owned();
    let d = run.spawn(
        "root",
        "root",
        None,
        &[
            "--data-dir".into(),
            root_dir,
            "--http".into(),
            args.api.to_string(),
            "--coap".into(),
            args.api.to_string(),
            "--admin-password".into(),
            args.admin_password.clone(),
        ],
    )?;
    run.tiers.push(d);
    let base = format!("http://{}", args.api);
    let mut api = crate::client::Api::new(Default::default(), Some(base), None)?;
    wait_for(30, stop, "the root's API", || {
        api.login("Admin", &args.admin_password, None).ok()
    })?;
    say!("{} root: API on {}", t(), api.base());
    let cluster_dir = run.dir.join("cluster").to_string_lossy().into_owned();
    let worker_token = run.once(
        "cluster",
        None,
        &["--data-dir", &cluster_dir, "token", "--reusable"],
    )?;
    let cluster_token = api
        .call("POST", "/api/clusters/token", Some(json!({})))
        .map_err(|e| e.to_string())?["token"]
        .as_str()
        .ok_or("no cluster token from the root")?
        .to_owned();
    let d = run.spawn(
        "cluster",
        "cluster",
        None,
        &[
            "--data-dir".into(),
            cluster_dir,
            "--root".into(),
            args.api.to_string(),
            "--name".into(),
            "edge".into(),
            "--coap".into(),
            format!("{HOST_ADDR}:{CLUSTER_PORT}"),
            "--join-token".into(),
            cluster_token,
        ],
    )?;
    run.tiers.push(d);
    for w in WORKERS {
        let d = run.spawn(
            w,
            "agent",
            Some(&worker_ns(w)),
            &[
                "--cluster".into(),
                format!("{HOST_ADDR}:{CLUSTER_PORT}"),
                "--name".into(),
                w.into(),
                "--state-dir".into(),
                run.dir.join(w).to_string_lossy().into_owned(),
                "--join-token".into(),
                worker_token.clone(),
                "--registry-mirror".into(),
                format!("docker.io=http://{mirror}"),
                "--insecure-registry".into(),
                mirror.clone(),
            ],
        )?;
        run.agents.push(d);
    }
    wait_for(60, stop, "the cluster and both workers to join", || {
        let active = api.call("GET", "/api/clusters/active", None).ok()?;
        let n: u64 = active
            .as_array()?
            .iter()
            .flat_map(|c| {
                c["aggregation_per_architecture"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|a| a["active_nodes"].as_u64())
            .sum();
        (n >= 2).then_some(())
    })?;
    say!(
        "{} cluster `edge` with workers {} joined",
        t(),
        WORKERS.join(", ")
    );
    check_daemons(run)?;

    // The seed's application, unchanged, and one instance of each service.
    let sla: Value = serde_json::from_str(SEED).map_err(|e| e.to_string())?;
    let apps = api
        .call("POST", "/api/application/", Some(sla))
        .map_err(|e| e.to_string())?;
    let services: Vec<String> = apps[0]["microservices"]
        .as_array()
        .ok_or("the root returned no services")?
        .iter()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect();
    let mut names = BTreeMap::new();
    for id in &services {
        let doc = api
            .call("GET", &format!("/api/service/{id}"), None)
            .map_err(|e| e.to_string())?;
        names.insert(
            id.clone(),
            doc["microservice_name"].as_str().unwrap_or(id).to_owned(),
        );
        api.call("POST", &format!("/api/service/{id}/instance"), None)
            .map_err(|e| e.to_string())?;
    }
    say!(
        "{} deployed the seed's application `clientsrvr` ({} services)",
        t(),
        services.len()
    );
    let mut watch = crate::progress::Watch::new(
        services
            .iter()
            .map(|id| (id.clone(), names[id].clone()))
            .collect(),
    );
    let outcome = wait_for(180, stop, "every instance RUNNING", || {
        match watch.look(&mut api, |line| say!("{}   {line}", t())) {
            Ok(crate::progress::Outcome::Pending) | Err(_) => None,
            Ok(o) => Some(o),
        }
    })?;
    if let crate::progress::Outcome::Failed(f) = outcome {
        return Err(f);
    }

    // The client asks the server through the service IP, from inside its container.
    let client = services.first().ok_or("no client service")?;
    let pid = WORKERS
        .iter()
        .find_map(|w| {
            let p = run
                .dir
                .join(w)
                .join("containers")
                .join(format!("{client}-0"))
                .join("pid");
            std::fs::read_to_string(p).ok()
        })
        .and_then(|t| t.split_whitespace().next().map(str::to_owned))
        .ok_or("the client's container is not on either worker")?;
    let answer = wait_for(30, stop, "the client's request through 10.30.30.30", || {
        let out = Command::new("nsenter")
            .args([
                "--target", &pid, "--mount", "--uts", "--ipc", "--net", "--pid", "--root", "--wd",
            ])
            .args(["curl", "-s", "http://10.30.30.30/"])
            .output()
            .ok()?;
        let body = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        (out.status.success() && !body.is_empty()).then_some(body)
    })?;
    say!(
        "{} the client's `curl http://10.30.30.30/` answered: {answer}",
        t()
    );
    say!();
    say!(
        "Grove is up: root, cluster `edge`, workers {}.",
        WORKERS.join(" and ")
    );
    say!(
        "  API       {}  (user Admin, password {})",
        api.base(),
        args.admin_password
    );
    say!("  API docs  {}/api/docs", api.base());
    say!("  dashboard {}/", api.base());
    say!(
        "  CLI       grove login --root {}; grove app ls",
        api.base()
    );
    say!(
        "  workers   namespaces {} (ip netns exec gu-w1 ...)",
        WORKERS.map(worker_ns).join(", ")
    );
    say!("  state     {} (logs in logs/)", run.dir.display());
    say!("Ctrl-C stops everything and removes what grove up made.");
    let until = args
        .duration
        .map(|s| Instant::now() + Duration::from_secs(s));
    while !stop.load(Ordering::Relaxed) && until.is_none_or(|u| Instant::now() < u) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        check_daemons(run)?;
    }
    Ok(())
}

/// Wait for every child (orphans included) that has ended or ends within a second.
fn reap() {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(20)),
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

/// An error if a daemon exited on its own.
fn check_daemons(run: &mut Run) -> Result<(), String> {
    for d in run.tiers.iter_mut().chain(run.agents.iter_mut()) {
        if let Ok(Some(status)) = d.child.try_wait() {
            return Err(format!(
                "{} exited ({status}); see logs/{}.log",
                d.name, d.name
            ));
        }
    }
    Ok(())
}

/// The seed's real images from Docker Hub, pulled on this machine (which needs
/// internet) and served to the workers by the mirror.
fn real_images(dir: &Path) -> Result<images::Images, String> {
    let store_dir = dir.join("images");
    let store = grove_agent::image::ImageStore::open(
        &store_dir,
        grove_agent::image::RegistryConfig::default(),
    )
    .map_err(|e| e.to_string())?;
    let mut out = images::Images::default();
    for (repo, tag) in [("library/nginx", "latest"), ("curlimages/curl", "7.82.0")] {
        say!("pulling docker.io/{repo}:{tag}");
        let got = store
            .export(&format!("docker.io/{repo}:{tag}"))
            .map_err(|e| format!("docker.io/{repo}:{tag}: {e}"))?;
        for (digest, data, media_type) in got.blobs {
            out.blobs.insert(digest, images::Blob { data, media_type });
        }
        out.tags
            .insert((repo.to_owned(), tag.to_owned()), got.manifest);
    }
    Ok(out)
}
