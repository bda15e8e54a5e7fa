//! Footprint: RSS, PSS and CPU of `grove-root`, `grove-cluster` and the agent (with
//! its supervisor, the one other Grove process that serves it outside the
//! containers), idle with one cluster and two workers, then with 100 busybox
//! instances running on one worker; and the size of each release binary.

use crate::Ctx;
use crate::procs::{self, Usage};
use crate::report::{Row, Section, Target, num};
use crate::site::{self, Site};
use std::time::Duration;

/// The agent's processes: itself and its supervisor.
fn agent_pids(site: &Site, name: &str) -> Result<Vec<u32>, String> {
    let a = site.agent(name);
    let agent = a.daemon.pid().ok_or("the agent is not running")?;
    let sup = std::fs::read_to_string(a.dir.join("supervisor.pid"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .ok_or("the agent's supervisor is not running")?;
    Ok(vec![agent, sup])
}

fn rows(prefix: &str, when: &str, u: &[Usage], targets: &[(&str, f64, f64)]) -> Vec<Row> {
    let mut out = Vec::new();
    for (i, (who, rss_target, cpu_target)) in targets.iter().enumerate() {
        let x = &u[i];
        let rss = Row::new(
            &format!("{prefix}.{who}.rss"),
            &format!("{who}: RSS, {when}"),
            format!("{} MiB (max {})", num(x.rss_mib.p50), num(x.rss_mib.max)),
            x.runs(),
        );
        out.push(if *rss_target > 0.0 {
            rss.target(
                x.rss_mib.p50,
                Target::AtMost(*rss_target),
                &format!("≤ {rss_target} MB"),
            )
        } else {
            rss
        });
        out.push(Row::new(
            &format!("{prefix}.{who}.pss"),
            &format!("{who}: PSS, {when}"),
            format!("{} MiB", num(x.pss_mib.p50)),
            x.runs(),
        ));
        let cpu = Row::new(
            &format!("{prefix}.{who}.cpu"),
            &format!("{who}: CPU, {when}"),
            format!("{} % of one core", num(x.cpu_pct)),
            x.runs(),
        );
        out.push(if *cpu_target > 0.0 {
            cpu.target(
                x.cpu_pct,
                Target::AtMost(*cpu_target),
                &format!("≤ {cpu_target} %"),
            )
        } else {
            cpu
        });
    }
    out
}

/// Run it.
pub fn run(ctx: &Ctx) -> Result<Section, String> {
    let dir = ctx.dir("footprint");
    let window = ctx.pick(Duration::from_secs(60), Duration::from_secs(4));
    let settle = ctx.pick(Duration::from_secs(15), Duration::from_secs(2));
    // Room for 100 instances on a worker: it asks for a larger prefix.
    let site = Site::native("fp", 2, &["--max-instances", "100"], &dir, None)?;
    std::thread::sleep(settle);
    let root = site.root.daemon.pid().ok_or("root not running")?;
    let cluster = site.cluster.daemon.pid().ok_or("cluster not running")?;
    let groups = vec![
        ("root", vec![root]),
        ("cluster", vec![cluster]),
        ("agent", agent_pids(&site, "w1")?),
        ("agent-w2", agent_pids(&site, "w2")?),
    ];
    let idle = procs::watch(&groups, window)?;

    // 100 busybox instances on w1.
    let n = ctx.pick(100, 20);
    let sleeper = site::service(
        "sleeper",
        "docker.io/library/busybox:latest",
        &["sleep", "1000000"],
        8,
        0.02,
        site::on_node("w1"),
    );
    let services = site::deploy(&site.root, "footprint", vec![sleeper])?;
    let svc = &services[0];
    for _ in 0..n {
        site::add_instance(&site.root, svc)?;
    }
    site::all_running(&site.root, svc, n, Duration::from_secs(300))?;
    std::thread::sleep(settle);
    let groups = vec![
        ("root", vec![root]),
        ("cluster", vec![cluster]),
        ("agent", agent_pids(&site, "w1")?),
    ];
    let busy = procs::watch(&groups, window)?;
    let running_now = site::statuses(&site.root, svc)
        .iter()
        .filter(|(_, s)| s == "RUNNING")
        .count();

    let mut s = Section {
        title: "1. Footprint".into(),
        intro: format!(
            "RSS (`VmRSS`) and PSS (`smaps_rollup`) sampled every second, CPU from \
             `/proc/PID/stat` over the window, of the release binaries on the test bed: root \
             and cluster on one host, native agents on two others (each host a network \
             namespace). *Agent* sums `grove-agent` and its supervisor (`grove-agent \
             supervise`), the only Grove processes serving a worker outside its containers; \
             containers' own processes are not counted. Idle: one cluster, two workers, no \
             instance, after {} s of settling. Then {n} busybox instances (`sleep`) placed on \
             worker w1 with a `direct` constraint (w1 asked for room for 100: \
             `--max-instances 100`).",
            settle.as_secs()
        ),
        ..Section::default()
    };
    s.rows.extend(rows(
        "footprint.idle",
        "idle",
        &idle,
        &[
            ("root", 30.0, 0.0),
            ("cluster", 15.0, 0.0),
            ("agent", 5.0, 0.1),
        ],
    ));
    let w2 = &idle[3];
    s.notes.push(format!(
        "The second worker's agent, idle: RSS {} MiB, PSS {} MiB, CPU {} %.",
        num(w2.rss_mib.p50),
        num(w2.pss_mib.p50),
        num(w2.cpu_pct)
    ));
    let when = format!("{n} instances on its worker");
    let mut busy_rows = rows(
        "footprint.busy",
        &when,
        &busy,
        &[
            ("root", 0.0, 0.0),
            ("cluster", 0.0, 0.0),
            ("agent", 0.0, 0.0),
        ],
    );
    // The 100-instance target is on the agent's PSS summed over its processes.
    for r in &mut busy_rows {
        if r.id == "footprint.busy.agent.pss" {
            *r = r
                .clone()
                .target(busy[2].pss_mib.p50, Target::AtMost(15.0), "≤ 15 MB");
        }
    }
    s.rows.extend(busy_rows);
    s.notes.push(format!(
        "{running_now} of {n} instances were RUNNING at the end of the window."
    ));
    for bin in ["grove-agent", "grove-cluster", "grove-root"] {
        let len = std::fs::metadata(ctx.bin(bin))
            .map_err(|e| format!("{bin}: {e}"))?
            .len();
        #[allow(clippy::cast_precision_loss)]
        let mib = len as f64 / 1024.0 / 1024.0;
        s.rows.push(Row::new(
            &format!("footprint.binary.{bin}"),
            &format!("{bin}: release binary, stripped (x86_64)"),
            format!("{} MiB", num(mib)),
            1,
        ));
    }
    s.notes.push(
        "Binaries are stripped by the release profile (`strip = true`); their ARM sizes \
         are printed by `cross/build.sh`."
            .into(),
    );
    s.notes.push(
        "No peer runs here (no K3s, KubeEdge or Oakestra on this machine). For scale, the \
         ATC '23 paper reports Oakestra's idle worker at 3.7 % CPU and 255 MB for the whole \
         worker VM, K3s's agent ≈ 270 MB, KubeEdge's edgecore 61–74 MB RSS."
            .into(),
    );
    Ok(s)
}
