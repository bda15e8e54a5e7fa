//! Deploy latency: sequential deploys of one instance (its image already cached),
//! timed from the API call (`POST /api/service/{id}/instance`) to RUNNING as the API
//! reports it, and to the first successful HTTP request through the service's
//! `rr_ip` from a client container on a worker; with the node given (`direct`) and
//! scheduled, and over a cluster–worker link with 100 ms delay and 5 % loss each way.

use crate::Ctx;
use crate::report::{Row, Section, Stats, Target};
use crate::site::{self, Site};
use grove_tests::relay::{Link, Shape};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

/// How long a step of a deploy may take before the run fails (over the lossy link a
/// few take close to a minute; see RESULTS.md).
const LIMIT: Duration = Duration::from_secs(180);

/// Milliseconds since `t0`.
fn ms(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64() * 1000.0
}

/// One deploy: (to RUNNING in the API, to the first answer through `rr`), ms.
fn once(site: &Site, svc: &str, client: u32, rr: Ipv4Addr) -> Result<(f64, f64), String> {
    let t0 = Instant::now();
    let target = SocketAddr::new(rr.into(), 80);
    // The client keeps asking from inside its container's network namespace.
    let asking = std::thread::spawn(move || {
        site::in_netns_of(client, move || {
            let deadline = t0 + LIMIT;
            while Instant::now() < deadline {
                if site::http_ok(target, Duration::from_millis(10)) {
                    return Some(ms(t0));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            None
        })
    });
    let n = site::add_instance(&site.root, svc)?;
    let mut running = None;
    while t0.elapsed() < LIMIT {
        if site::statuses(&site.root, svc)
            .iter()
            .any(|(i, s)| *i == n && s == "RUNNING")
        {
            running = Some(ms(t0));
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let first = asking.join().map_err(|_| "client panicked")??;
    if first.is_none() || running.is_none() {
        site::pause_if_asked(&format!("deploy {n}: client pid {client}, rr {rr}"));
    }
    let running = running.ok_or_else(|| format!("instance {n} not RUNNING within {LIMIT:?}"))?;
    if first.is_some_and(|f| f > running + 3_000.0) {
        site::pause_if_asked(&format!(
            "deploy {n}: slow first answer: client pid {client}, rr {rr}"
        ));
    }
    let first = first.ok_or_else(|| format!("no answer through {rr} within {LIMIT:?}"))?;
    // Gone again before the next: removed, and the service IP answers no more.
    site::remove_instance(&site.root, svc, n)?;
    let gone = site::wait(LIMIT, Duration::from_millis(20), || {
        !site::statuses(&site.root, svc)
            .iter()
            .any(|(i, s)| *i == n && s != "UNDEPLOYED")
            && site::in_netns_of(client, move || {
                !site::http_ok(target, Duration::from_millis(50))
            })
            .unwrap_or(false)
    });
    if !gone {
        return Err(format!(
            "instance {n} still answering {LIMIT:?} after its removal"
        ));
    }
    Ok((running, first))
}

/// `runs` deploys of `svc` after one warm-up; the two series and the whole cycles
/// (deploy, first answer, removal, gone), in seconds.
fn series(
    site: &Site,
    svc: &str,
    client: u32,
    runs: usize,
) -> Result<(Stats, Stats, Stats), String> {
    let rr = site::rr_ip(&site.root, svc)?;
    once(site, svc, client, rr)?;
    let (mut running, mut first, mut cycle) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = Instant::now();
        let (r, f) = once(site, svc, client, rr)?;
        cycle.push(t.elapsed().as_secs_f64());
        running.push(r);
        first.push(f);
    }
    Ok((
        Stats::of(&running).ok_or("no run")?,
        Stats::of(&first).ok_or("no run")?,
        Stats::of(&cycle).ok_or("no run")?,
    ))
}

/// A client container (busybox, asleep) on `node`; its host PID.
fn client_on(site: &Site, node: &str) -> Result<u32, String> {
    let c = site::service(
        "client",
        "docker.io/library/busybox:latest",
        &["sleep", "1000000"],
        16,
        0.1,
        site::on_node(node),
    );
    let svc = site::deploy(&site.root, "client", vec![c])?.remove(0);
    let n = site::add_instance(&site.root, &svc)?;
    site::all_running(&site.root, &svc, 1, Duration::from_secs(120))?;
    site::container_pid(site.agent(node), &svc, n).ok_or_else(|| "the client's container".into())
}

/// The web server (grove up's nginx stand-in: busybox httpd on 80), placed by `extra`.
fn web(site: &Site, app: &str, extra: serde_json::Value) -> Result<String, String> {
    let s = site::service("web", "docker.io/library/nginx:latest", &[], 16, 0.1, extra);
    Ok(site::deploy(&site.root, app, vec![s])?.remove(0))
}

fn rows(id: &str, what: &str, r: &Stats, f: &Stats, paper: Option<f64>, target: bool) -> Vec<Row> {
    let mut out = Vec::new();
    for (suffix, label, s) in [
        ("running", "to RUNNING in the API", r),
        ("first", "to the first answer through rr_ip", f),
    ] {
        let mut row = Row::new(
            &format!("deploy.{id}.{suffix}"),
            &format!("{what}: {label}"),
            s.latency("ms"),
            s.n,
        );
        if let (Some(p), "running") = (paper, suffix) {
            row = row.reference(format!("Oakestra {p} s (ATC '23 paper, not run here)"));
            row.ratio = format!("{:.3}", s.p50 / (p * 1000.0));
        }
        if target {
            row = row.targets(
                &[
                    (s.p50, Target::AtMost(100.0)),
                    (s.p99, Target::AtMost(300.0)),
                ],
                "p50 ≤ 100 ms, p99 ≤ 300 ms",
            );
        }
        out.push(row);
    }
    out
}

/// Run it.
pub fn run(ctx: &Ctx) -> Result<Section, String> {
    let runs = ctx.pick(100, 5);
    // Over the lossy link a deploy and its removal take about half a minute here
    // (see the notes): fewer of them, so the whole run stays within the hour.
    let lossy_runs = ctx.pick(20, 3);
    let mut s = Section {
        title: "2. Deploy latency".into(),
        intro: format!(
            "{runs} sequential deploys of one instance of a web server (busybox httpd, image \
             already cached after one warm-up deploy), each removed again before the next. \
             Timed from `POST /api/service/{{id}}/instance` to the instance RUNNING in \
             `GET /api/service/{{id}}` (polled every 2 ms), and to the first HTTP 200 through \
             the service's `rr_ip` from a client container (a new TCP connection every \
             1–10 ms from inside its network namespace). Root and cluster on one host of the \
             test bed, native agents on two others; the client on w2. *direct*: the SLA \
             places the server on w1 (the request crosses the VXLAN overlay); *scheduled*: \
             the cluster picks the worker. *lossy*: a one-worker site whose agent reaches \
             its cluster through the test bed's UDP relay with 100 ms delay and 5 % loss each \
             way (this kernel has no netem), client and server on that worker \
             ({lossy_runs} deploys)."
        ),
        ..Section::default()
    };
    {
        let dir = ctx.dir("deploy");
        let site = Site::native("dl", 2, &[], &dir, None)?;
        let client = client_on(&site, "w2")?;
        let direct = web(&site, "direct", site::on_node("w1"))?;
        let (r, f, _) = series(&site, &direct, client, runs)?;
        s.rows.extend(rows(
            "direct",
            "node given (direct)",
            &r,
            &f,
            Some(3.35),
            true,
        ));
        let sched = web(&site, "sched", serde_json::json!({}))?;
        let (r, f, _) = series(&site, &sched, client, runs)?;
        s.rows
            .extend(rows("scheduled", "scheduled", &r, &f, Some(5.39), true));
    }
    {
        let dir = ctx.dir("deploy-lossy");
        let bad = Link::symmetric(Shape {
            delay: Duration::from_millis(100),
            jitter: Duration::ZERO,
            loss_pct: 5.0,
        });
        let site = Site::native("dll", 1, &[], &dir, Some(bad))?;
        let client = client_on(&site, "w1")?;
        let direct = web(&site, "lossy", site::on_node("w1"))?;
        let (r, f, cycle) = series(&site, &direct, client, lossy_runs)?;
        s.notes.push(format!(
            "Over the lossy link a whole cycle (deploy, first answer, removal, until the \
             service IP answers no more) took {} s (median; p90 {} s).",
            crate::report::num(cycle.p50),
            crate::report::num(cycle.p90)
        ));
        s.rows.extend(rows(
            "lossy",
            "direct, 100 ms and 5 % loss each way cluster–worker",
            &r,
            &f,
            None,
            false,
        ));
        if let Some((relay, _)) = &site.relay {
            s.notes.push(format!(
                "The lossy link forwarded {} and dropped {} datagrams.",
                relay.stats.forwarded(),
                relay.stats.dropped()
            ));
        }
    }
    s.notes.push(
        "The lossy figures carry no target (the issue's target is for a link without \
         emulated delay): two one-way delays (command down, status up) are 200 ms already."
            .into(),
    );
    Ok(s)
}
