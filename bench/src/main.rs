//! `grove-bench`: runs Grove's benchmarks on this machine and rewrites
//! `bench/RESULTS.md` — footprint, deploy latency, container start against crun,
//! control-plane scale with simulated workers, overlay throughput and RTT, and bytes on
//! the wire. Benchmarks report; they do not pass or fail on a time. `--quick` runs each
//! one briefly (CI), `--expect FILE` then checks that every row of FILE was produced.

mod deploy;
mod footprint;
mod overlay;
mod procs;
mod report;
mod scale;
mod site;
mod start;
mod wire;

use clap::Parser;
use report::Section;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The benchmarks, in RESULTS.md's order.
const ALL: [&str; 6] = ["footprint", "deploy", "start", "scale", "overlay", "wire"];

#[derive(Debug, Parser)]
#[command(name = "grove-bench", version, about = "Grove's benchmark harness")]
struct Args {
    /// Benchmarks to run: all, or any of footprint, deploy, start, scale, overlay, wire.
    #[arg(default_value = "all")]
    which: Vec<String>,
    /// Each benchmark briefly (CI keeps the harness working with this).
    #[arg(long)]
    quick: bool,
    /// Where the results go (default: bench/RESULTS.md of the repository).
    #[arg(long)]
    out: Option<PathBuf>,
    /// After writing, check that every row of this file was produced.
    #[arg(long)]
    expect: Option<PathBuf>,
    /// Workers of the control-plane scale benchmark (default 1,000 and 10,000; quick: 100 and 300).
    #[arg(long, value_delimiter = ',')]
    workers: Vec<usize>,
    /// Internal: a process of the harness's own (simulated workers, container starts).
    #[arg(long, hide = true)]
    internal: Option<String>,
    /// Arguments of an internal process.
    #[arg(long, hide = true, allow_hyphen_values = true, num_args = 0..)]
    internal_args: Vec<String>,
}

/// What every benchmark gets.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// Brief runs.
    pub quick: bool,
    /// Where the release binaries are.
    pub bins: PathBuf,
    /// A scratch folder of this run.
    pub scratch: PathBuf,
    /// Workers for the scale benchmark.
    pub workers: Vec<usize>,
}

impl Ctx {
    /// The binary `name` of this build.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bins.join(name)
    }

    /// `full` normally, `quick` with `--quick`.
    pub fn pick<T>(&self, full: T, quick: T) -> T {
        if self.quick { quick } else { full }
    }

    /// A fresh folder for benchmark `name`.
    pub fn dir(&self, name: &str) -> PathBuf {
        let d = self.scratch.join(name);
        let _ = std::fs::remove_dir_all(&d);
        let _ = std::fs::create_dir_all(&d);
        d
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// Install what the benchmarks use and this machine lacks (Debian's packages).
fn prerequisites() -> Result<(), String> {
    let mut missing: Vec<&str> = [
        ("ip", "iproute2"),
        ("nft", "nftables"),
        ("nsenter", "util-linux"),
        ("crun", "crun"),
        ("umoci", "umoci"),
        ("skopeo", "skopeo"),
        ("docker-registry", "docker-registry"),
        ("iperf3", "iperf3"),
        ("ping", "iputils-ping"),
        ("ldd", "libc-bin"),
        ("kill", "procps"),
        ("mount", "mount"),
    ]
    .into_iter()
    .filter(|(p, _)| !have(p))
    .map(|(_, pkg)| pkg)
    .collect();
    if site::static_busybox().is_none() {
        missing.push("busybox-static");
    }
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("grove-bench: installing {} (apt-get)", missing.join(" "));
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

/// Build the daemons as users get them (release, each package on its own as the
/// Debian packages build them) and say where they are.
fn build_daemons() -> Result<PathBuf, String> {
    if let Some(d) = std::env::var_os("GROVE_BIN_DIR") {
        return Ok(PathBuf::from(d));
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let profile_dir = exe.parent().ok_or("no directory of grove-bench")?;
    let target = profile_dir.parent().ok_or("no target directory")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let started = Instant::now();
    let ok = Command::new(cargo)
        .args(["build", "--release", "--locked", "--bins"])
        .args([
            "-p",
            "grove-root",
            "-p",
            "grove-cluster",
            "-p",
            "grove-agent",
        ])
        .arg("--target-dir")
        .arg(target)
        .current_dir(repo_root())
        .status()
        .map_err(|e| format!("cargo: {e}"))?
        .success();
    if !ok {
        return Err("building the daemons failed".into());
    }
    eprintln!(
        "grove-bench: daemons built in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(target.join("release"))
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Agents' state folders below `dir` (two levels down: `<benchmark>/<worker>`).
fn agent_dirs(dir: &Path) -> Vec<PathBuf> {
    let subdirs = |d: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(d)
            .map(|r| {
                r.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default()
    };
    subdirs(dir)
        .iter()
        .flat_map(|b| subdirs(b))
        .filter(|w| w.join("node.cbor").exists() || w.join("supervisor.pid").exists())
        .collect()
}

/// Clear what an earlier run that was killed left behind: the processes in its
/// namespaces, its workers (reset: containers, cgroups, links, tables), the
/// namespaces and its scratch folder. Only runs whose process is gone are touched.
fn janitor(bins: &Path) {
    let list = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let stale: Vec<String> = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|ns| {
            ns.strip_prefix("gb")
                .and_then(|r| r.split_once('-'))
                .and_then(|(pid, _)| pid.parse::<u32>().ok())
                .is_some_and(|pid| !alive(pid))
        })
        .map(str::to_owned)
        .collect();
    for ns in &stale {
        let pids = Command::new("ip")
            .args(["netns", "pids", ns])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for pid in pids.split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
    }
    let tmp = std::env::temp_dir();
    for e in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("grove-bench-")
            .and_then(|p| p.parse().ok())
        else {
            continue;
        };
        if alive(pid) {
            continue;
        }
        for w in agent_dirs(&e.path()) {
            let name = w
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            eprintln!("grove-bench: resetting worker {name} left by run {pid}");
            let _ = Command::new(bins.join("grove-agent"))
                .args(["--name", &name, "--state-dir"])
                .arg(&w)
                .arg("reset")
                .stderr(std::process::Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(e.path());
    }
    for ns in &stale {
        eprintln!("grove-bench: removing namespace {ns} left by an earlier run");
        let _ = Command::new("ip").args(["netns", "del", ns]).status();
    }
}

fn am_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn run_one(ctx: &Ctx, which: &str) -> Section {
    let started = Instant::now();
    eprintln!("grove-bench: {which} …");
    let c = ctx.clone();
    let w = which.to_owned();
    // Each benchmark on a thread of its own: it may enter test bed namespaces, and
    // the main thread stays where it was.
    let result = std::thread::spawn(move || match w.as_str() {
        "footprint" => footprint::run(&c),
        "deploy" => deploy::run(&c),
        "start" => start::run(&c),
        "scale" => scale::run(&c),
        "overlay" => overlay::run(&c),
        "wire" => wire::run(&c),
        other => Err(format!("no benchmark {other}")),
    })
    .join()
    .unwrap_or_else(|p| {
        Err(p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "panicked".into()))
    });
    let mut s = match result {
        Ok(s) => s,
        Err(e) => Section {
            id: which.to_owned(),
            title: which.to_owned(),
            error: Some(e),
            ..Section::default()
        },
    };
    s.id = which.to_owned();
    let secs = started.elapsed().as_secs_f64();
    s.stamp = format!(
        "Run {} in {} mode, {secs:.0} s, on {}.",
        report::now_utc(),
        if ctx.quick { "quick" } else { "full" },
        report::machine()
    );
    eprintln!(
        "grove-bench: {which} done in {secs:.0} s{}",
        s.error
            .as_deref()
            .map_or(String::new(), |e| format!(": FAILED: {e}"))
    );
    s
}

fn main() {
    let args = Args::parse();
    if let Some(what) = &args.internal {
        std::process::exit(match what.as_str() {
            "workers" => scale::workers_process(&args.internal_args),
            "start-ab" => start::ab_process(&args.internal_args),
            "launch-once" => start::launch_once_process(&args.internal_args),
            other => {
                eprintln!("no internal process {other}");
                2
            }
        });
    }
    let which: Vec<String> = if args.which.iter().any(|w| w == "all") {
        ALL.iter().map(|s| (*s).to_owned()).collect()
    } else {
        args.which.clone()
    };
    if let Some(bad) = which.iter().find(|w| !ALL.contains(&w.as_str())) {
        eprintln!(
            "grove-bench: no benchmark {bad:?}; use all or any of {}",
            ALL.join(", ")
        );
        std::process::exit(2);
    }
    if !am_root() {
        eprintln!("grove-bench: run as root (it makes network namespaces, cgroups and containers)");
        std::process::exit(2);
    }
    if let Err(e) = prerequisites() {
        eprintln!("grove-bench: {e}");
        std::process::exit(1);
    }
    let bins = match build_daemons() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("grove-bench: {e}");
            std::process::exit(1);
        }
    };
    janitor(&bins);
    // The test bed's helpers find the daemons here, and fail rather than skip.
    // SAFETY: set before any other thread of this process starts.
    unsafe {
        std::env::set_var("GROVE_BIN_DIR", &bins);
        std::env::set_var("CI", "true");
    }
    let scratch = std::env::temp_dir().join(format!("grove-bench-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&scratch);
    let workers = if !args.workers.is_empty() {
        args.workers.clone()
    } else if args.quick {
        vec![100, 300]
    } else {
        vec![1_000, 10_000]
    };
    let ctx = Ctx {
        quick: args.quick,
        bins,
        scratch: scratch.clone(),
        workers,
    };
    let started = Instant::now();
    let sections: Vec<Section> = which.iter().map(|w| run_one(&ctx, w)).collect();
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| repo_root().join("bench/RESULTS.md"));
    if let Err(e) = report::write(&out, &sections, &ALL) {
        eprintln!("grove-bench: {}: {e}", out.display());
        std::process::exit(1);
    }
    let mut failed = sections.iter().any(|s| s.error.is_some());
    if failed {
        eprintln!(
            "grove-bench: the daemons' logs of the failed runs are kept in {}",
            scratch.display()
        );
    } else {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    eprintln!(
        "grove-bench: wrote {} in {:.0} s",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    if let Some(expect) = &args.expect {
        let want = report::row_ids(&std::fs::read_to_string(expect).unwrap_or_default());
        let got = report::row_ids(&std::fs::read_to_string(&out).unwrap_or_default());
        let lacking: Vec<&String> = want.iter().filter(|w| !got.contains(w)).collect();
        if want.is_empty() {
            eprintln!("grove-bench: {} lists no rows", expect.display());
            failed = true;
        } else if lacking.is_empty() {
            eprintln!(
                "grove-bench: all {} rows of {} produced",
                want.len(),
                expect.display()
            );
        } else {
            eprintln!(
                "grove-bench: rows of {} not produced: {lacking:?}",
                expect.display()
            );
            failed = true;
        }
    }
    std::process::exit(i32::from(failed));
}
