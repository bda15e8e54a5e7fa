//! Control-plane scale: one root and ten clusters (real processes) with N simulated
//! workers from a load generator — one process running N copies of the agent's own
//! control loop over the simulated runtime, each with its own UDP socket and OSCORE
//! context, so they speak the real protocol. Reported: root and cluster CPU and RSS at
//! steady state, the generator's own CPU apart, datagrams and bytes per worker per
//! minute (nftables counters on the clusters' ports), and the latency of deploys
//! through the API at that scale.

use crate::Ctx;
use crate::procs;
use crate::report::{Row, Section, Stats, Target, num};
use crate::site;
use grove_tests::daemons::{Cluster, Root};
use grove_tests::testbed::TestBed;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CLUSTERS: usize = 10;

/// The generator: args CONFIG N STATE RATE. CONFIG has a line `ADDR TOKEN` per
/// cluster; worker i joins cluster i mod clusters; RATE workers start per second.
/// Runs until killed.
pub fn workers_process(args: &[String]) -> i32 {
    let [config, n, state, rate] = args else {
        eprintln!("workers CONFIG N STATE RATE");
        return 2;
    };
    let (Ok(n), Ok(rate)) = (n.parse::<usize>(), rate.parse::<usize>()) else {
        return 2;
    };
    let clusters: Vec<(std::net::SocketAddr, String)> = std::fs::read_to_string(config)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (a, t) = l.split_once(' ')?;
            Some((a.parse().ok()?, t.to_owned()))
        })
        .collect();
    if clusters.is_empty() {
        eprintln!("no clusters in {config}");
        return 2;
    }
    // A socket and a few files per worker.
    if let Ok((_, hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        let _ =
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    }
    // Two threads: a worker's file writes (credentials, sequence numbers) never hold
    // up the others' heartbeats.
    let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    else {
        return 1;
    };
    // The workers' own log lines (joins, re-observations) go to the generator's log.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("GROVE_GENERATOR_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let state = PathBuf::from(state);
    rt.block_on(async move {
        let started = tokio::time::Instant::now();
        for i in 0..n {
            // Paced: worker i starts at i / RATE seconds.
            #[allow(clippy::cast_precision_loss)]
            let at = started + Duration::from_secs_f64(i as f64 / rate.max(1) as f64);
            tokio::time::sleep_until(at).await;
            let (addr, token) = &clusters[i % clusters.len()];
            let dir = state.join(format!("w{i}"));
            let s = grove_agent::control::Settings {
                cluster: *addr,
                name: format!("sim-{i}"),
                join_token: Some(token.clone()),
                state_dir: dir.clone(),
                location: None,
                max_instances: None,
                cpus: Some(4),
                memory_mib: Some(4096),
                // Housekeeping once a second: simulated instances need no more, and
                // status changes go out at once whatever the tick.
                limits: None,
                tick: Duration::from_secs(1),
            };
            let runtime = Box::new(grove_agent::runtime::SimRuntime::open(dir.join("sim.cbor")));
            tokio::spawn(async move {
                if let Err(e) = grove_agent::control::run(s, runtime, std::future::pending()).await
                {
                    eprintln!("worker {i}: {e}");
                }
            });
        }
        eprintln!("all {n} workers started");
        std::future::pending::<()>().await;
    });
    0
}

/// Counters of the UDP traffic to and from the clusters' worker ports in `ns`
/// (everything runs on that namespace's loopback: each datagram is seen once).
fn install_counters(ns: &str, ports: &[u16]) -> Result<(), String> {
    let set = ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let script = format!(
        "table inet grove_bench_scale {{\n  counter up {{}}\n  counter down {{}}\n  chain out {{\n    type filter hook output priority 0; policy accept;\n    udp dport {{ {set} }} counter name up\n    udp sport {{ {set} }} counter name down\n  }}\n}}\n"
    );
    site::nft_load(ns, &script)
}

/// (datagrams, bytes of UDP payload) both ways so far.
fn counted(ns: &str) -> Result<(u64, u64), String> {
    let (mut p, mut b) = (0, 0);
    for (pk, by) in site::nft_counters(ns)?.into_values() {
        p += pk;
        b += by.saturating_sub(pk * 28);
    }
    Ok((p, b))
}

/// UDP datagrams dropped in `ns` so far because a socket's receive buffer was full.
fn buffer_drops(ns: &str) -> u64 {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "cat", "/proc/net/snmp"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mut udp = out.lines().filter(|l| l.starts_with("Udp: "));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// A root and ten clusters on `bed`'s host 0, each cluster sized for its share of
/// `workers`.
struct Plane {
    clusters: Vec<Cluster>,
    root: Root,
}

fn plane(dir: &Path, workers: usize) -> Plane {
    let root = Root::start(dir, &[]);
    let per = (workers / CLUSTERS + 1).to_string();
    let clusters = (0..CLUSTERS)
        .map(|i| Cluster::start(dir, &format!("c{i}"), &root, &["--max-workers", &per]))
        .collect();
    Plane { clusters, root }
}

/// A folder removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One size: everything started afresh, N workers joined, steady state measured, then
/// deploys.
#[allow(clippy::too_many_lines)]
fn one(ctx: &Ctx, slot: &str, n: usize, s: &mut Section) -> Result<(), String> {
    let dir = ctx.dir(&format!("scale-{slot}-{n}"));
    let bed = TestBed::new(&format!("s{slot}"), 1).ok_or("no test bed")?;
    bed.enter(0);
    let ns = bed.hosts[0].ns.clone();
    let p = plane(&dir, n);
    let config = dir.join("clusters.txt");
    let lines: String = p
        .clusters
        .iter()
        .map(|c| format!("{} {}\n", c.addr, c.worker_token))
        .collect();
    std::fs::write(&config, lines).map_err(|e| e.to_string())?;
    // Joins paced so the 2-core machine can take them (the join is not what is
    // measured): 250 a second up to a thousand workers, 40 above.
    let rate = if n > 1_000 { 40 } else { 250 };
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let log = std::fs::File::create(dir.join("generator.log")).map_err(|e| e.to_string())?;
    // The simulated workers' own state (credentials, sequence numbers) in memory: it
    // is not what is measured, and ten thousand of them syncing to disk would be.
    let states = Scratch(PathBuf::from(format!(
        "/dev/shm/grove-bench-{}-workers",
        std::process::id()
    )));
    let _ = std::fs::remove_dir_all(&states.0);
    let generator = Kill(
        Command::new(me)
            .args(["--internal", "workers", "--internal-args"])
            .arg(&config)
            .arg(n.to_string())
            .arg(&states.0)
            .arg(rate.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| format!("the generator: {e}"))?,
    );
    let t0 = Instant::now();
    #[allow(clippy::cast_precision_loss)]
    let limit = Duration::from_secs_f64(n as f64 / rate as f64) + Duration::from_secs(300);
    let want = n as u64;
    if !site::wait(limit, Duration::from_millis(500), || {
        p.root.active_workers() >= want
    }) {
        return Err(format!(
            "only {} of {n} workers active at the root after {limit:?}",
            p.root.active_workers()
        ));
    }
    let joined = t0.elapsed();
    // Past the join: pushes and reports settle.
    std::thread::sleep(ctx.pick(Duration::from_secs(30), Duration::from_secs(5)));
    let ports: Vec<u16> = p.clusters.iter().map(|c| c.addr.port()).collect();
    install_counters(&ns, &ports)?;
    let root_pid = p.root.daemon.pid().ok_or("root gone")?;
    let cluster_pids: Vec<u32> = p.clusters.iter().filter_map(|c| c.daemon.pid()).collect();
    let gen_pid = generator.0.id();
    let window = ctx.pick(Duration::from_secs(60), Duration::from_secs(10));
    let c0 = counted(&ns)?;
    let mut all = vec![root_pid];
    all.extend(&cluster_pids);
    let u = procs::watch(
        &[
            ("root", vec![root_pid]),
            ("clusters", cluster_pids.clone()),
            ("control", all),
            ("generator", vec![gen_pid]),
        ],
        window,
    )?;
    let c1 = counted(&ns)?;
    let minutes = u[0].window.as_secs_f64() / 60.0;
    #[allow(clippy::cast_precision_loss)]
    let (dg, by) = (
        (c1.0 - c0.0) as f64 / n as f64 / minutes,
        (c1.1 - c0.1) as f64 / n as f64 / minutes,
    );
    let active = p.root.active_workers();
    let drops = buffer_drops(&ns);

    // Deploys through the API, one after another, every instance kept.
    let deploys = ctx.pick(1_000, 50);
    let svc = site::deploy(
        &p.root,
        "scale",
        vec![site::service(
            "sim",
            "docker.io/library/busybox:latest",
            &[],
            16,
            0.01,
            serde_json::json!({}),
        )],
    )?
    .remove(0);
    let mut lat = Vec::new();
    for _ in 0..deploys {
        let t = Instant::now();
        let k = site::add_instance(&p.root, &svc)?;
        let ok = site::wait(Duration::from_secs(30), Duration::from_millis(5), || {
            grove_tests::daemons::try_http(
                &p.root.base,
                "GET",
                &format!("/api/service/{svc}"),
                Some(p.root.token().as_str()),
                None,
            )
            .ok()
            .and_then(|d| d["instance_list"].as_array().cloned())
            .is_some_and(|l| {
                l.iter()
                    .any(|i| i["instance_number"] == k && i["status"] == "RUNNING")
            })
        });
        if !ok {
            return Err(format!("deploy {k} not RUNNING within 30 s at {n} workers"));
        }
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let d = Stats::of(&lat).ok_or("no deploy")?;
    let large = slot == "larger";
    let what = |x: &str| format!("{n} workers, 10 clusters: {x}");
    let id = |x: &str| format!("scale.{slot}.{x}");
    s.rows.push(Row::new(
        &id("join"),
        &what("all joined (started at a fixed rate)"),
        format!(
            "{} s at {rate} workers/s ({active} active at the root; {drops} datagrams \
             dropped by full socket buffers up to the end of the steady state)",
            num(joined.as_secs_f64())
        ),
        1,
    ));
    let cpu = u[2].cpu_pct;
    let rss = u[2].rss_mib.p50;
    let mut r = Row::new(
        &id("control.cpu"),
        &what("root + clusters, CPU at steady state"),
        format!(
            "{} % of one core (root {}, clusters {})",
            num(cpu),
            num(u[0].cpu_pct),
            num(u[1].cpu_pct)
        ),
        u[2].runs(),
    );
    if large {
        r = r.target(cpu, Target::AtMost(50.0), "≤ 50 % of one core at 10,000");
    }
    s.rows.push(r);
    let mut r = Row::new(
        &id("control.rss"),
        &what("root + clusters, RSS at steady state"),
        format!(
            "{} MiB (root {}, clusters {})",
            num(rss),
            num(u[0].rss_mib.p50),
            num(u[1].rss_mib.p50)
        ),
        u[2].runs(),
    );
    if large {
        r = r.target(rss, Target::AtMost(500.0), "≤ 500 MB at 10,000");
    }
    s.rows.push(r);
    s.rows.push(Row::new(
        &id("generator.cpu"),
        &what("the load generator's own CPU (apart)"),
        format!(
            "{} % of one core, RSS {} MiB",
            num(u[3].cpu_pct),
            num(u[3].rss_mib.p50)
        ),
        u[3].runs(),
    ));
    s.rows.push(Row::new(
        &id("wire"),
        &what("per worker per minute, cluster link, both ways"),
        format!("{} datagrams, {} bytes of UDP payload", num(dg), num(by)),
        u[0].runs(),
    ));
    let mut r = Row::new(
        &id("deploy"),
        &what("deploy, API call to RUNNING"),
        d.latency("ms"),
        d.n,
    );
    if large {
        r = r.target(d.p99, Target::AtMost(500.0), "p99 ≤ 500 ms at 10,000");
    }
    s.rows.push(r);
    drop(generator);
    drop(p);
    drop(bed);
    Ok(())
}

/// Run it.
pub fn run(ctx: &Ctx) -> Result<Section, String> {
    let mut s = Section {
        title: "4. Control-plane scale".into(),
        intro: format!(
            "One `grove-root` and {CLUSTERS} `grove-cluster` processes on the loopback of a \
             network namespace made for the run; the workers are simulated by one load \
             generator process (`grove-bench --internal workers`) running the agent's own \
             control loop (`grove_agent::control::run` over the simulated runtime) once per \
             worker, each with its own UDP socket, join token exchange and OSCORE context: \
             registration, a heartbeat every 2 s, the observed commands, status changes. \
             Workers start at a fixed rate and spread evenly over the clusters (each cluster \
             started with `--max-workers` for its share). Steady state is measured after \
             the last join has settled: CPU over the window from `/proc`, RSS the median of \
             per-second samples; datagrams and bytes counted by nftables on the clusters' \
             ports. Then sequential deploys of one more instance of a service (all kept), \
             each timed from the API call to RUNNING in the API (polled every 5 ms)."
        ),
        ..Section::default()
    };
    // Two sizes (one given: it runs twice, so the row set stays whole).
    let sizes = [
        ctx.workers[0],
        *ctx.workers.get(1).unwrap_or(&ctx.workers[0]),
    ];
    one(ctx, "smaller", sizes[0], &mut s)?;
    // The larger size failing leaves the smaller one's figures standing, and says so.
    if let Err(e) = one(ctx, "larger", sizes[1], &mut s) {
        s.notes.push(format!(
            "**Not measured at {} workers: the run failed:** {e}. The figures above are \
             those of the {} workers that worked.",
            sizes[1], sizes[0]
        ));
    }
    Ok(s)
}
