//! Overlay: iperf3 TCP throughput and ping RTT between two containers on two hosts
//! over the VXLAN overlay (to the server's overlay address, and through its service's
//! `rr_ip`, translated by nftables on the sender), against the raw host-to-host veth
//! path of the test bed in the same run, the three alternated.

use crate::Ctx;
use crate::report::{Row, Section, Stats, Target, num};
use crate::site::{self, Site};
use std::process::Command;
use std::time::Duration;

/// A command in the container of process `pid`: its namespaces and its root, as
/// `docker exec` would run it.
fn in_container(pid: u32, args: &[&str]) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--target={pid}"))
        .args([
            "--mount", "--uts", "--ipc", "--net", "--pid", "--root", "--wd", "--",
        ])
        .args(args);
    c
}

/// A command in network namespace `ns` (a test bed host), with this machine's tools.
fn in_host(ns: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).args(args);
    c
}

fn output(mut c: Command, what: &str) -> Result<String, String> {
    let out = c.output().map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{what}: {} {}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Gbit/s received, from iperf3's JSON.
fn iperf_gbps(json: &str) -> Result<f64, String> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| format!("iperf3 -J: {e}"))?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .ok_or_else(|| format!("no throughput in iperf3's answer: {}", v["error"]))
}

/// Each reply's RTT, ms, from ping's output.
fn ping_ms(out: &str) -> Vec<f64> {
    out.lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next()?.parse().ok())
        .collect()
}

/// The IPv4 address of `eth0` in the network namespace of process `pid`.
fn overlay_addr(pid: u32) -> Result<String, String> {
    let out = output(
        {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/proc/{pid}/ns/net"))
                .args(["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
            c
        },
        "ip addr",
    )?;
    out.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .map(str::to_owned)
        .ok_or_else(|| format!("no address on the container's eth0: {out}"))
}

/// Run it.
#[allow(clippy::too_many_lines)]
pub fn run(ctx: &Ctx) -> Result<Section, String> {
    let dir = ctx.dir("overlay");
    let rounds = ctx.pick(5, 1);
    let secs = ctx.pick(10, 2);
    let pings = ctx.pick(200, 20);
    let site = Site::native("ov", 2, &[], &dir, None)?;
    let image = "docker.io/grove/iperf3:latest";
    let server = site::service("iperf", image, &[], 256, 1.0, site::on_node("w1"));
    let client = site::service(
        "client",
        image,
        &["sleep", "1000000"],
        256,
        1.0,
        site::on_node("w2"),
    );
    let ids = site::deploy(&site.root, "overlay", vec![server, client])?;
    let mut numbers = Vec::new();
    for id in &ids {
        numbers.push(site::add_instance(&site.root, id)?);
        site::all_running(&site.root, id, 1, Duration::from_secs(120))?;
    }
    let cpid = site::container_pid(site.agent("w2"), &ids[1], numbers[1])
        .ok_or("the client's container")?;
    let spid = site::container_pid(site.agent("w1"), &ids[0], numbers[0])
        .ok_or("the server's container")?;
    let server_addr = overlay_addr(spid)?;
    let rr = site::rr_ip(&site.root, &ids[0])?.to_string();
    let (h1, h2) = (site.bed.hosts[1].clone(), site.bed.hosts[2].clone());
    let raw_addr = h1.ip.to_string();
    // The raw path's server: this machine's iperf3 in host 1's namespace.
    let mut raw_server = in_host(&h1.ns, &["iperf3", "-s"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("iperf3 -s: {e}"))?;
    // Both servers listening before the first client.
    let listening = |c: Command| output(c, "ss").is_ok_and(|o| o.contains(":5201"));
    let ok = site::wait(Duration::from_secs(20), Duration::from_millis(100), || {
        listening(in_host(&h1.ns, &["ss", "-ltn"]))
            && listening({
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/proc/{spid}/ns/net"))
                    .args(["ss", "-ltn"]);
                c
            })
    });
    if !ok {
        let _ = raw_server.kill();
        return Err("the iperf3 servers did not listen".into());
    }
    let t = secs.to_string();
    let measure = |path: &str| -> Result<f64, String> {
        let c = match path {
            "raw" => in_host(&h2.ns, &["iperf3", "-c", &raw_addr, "-t", &t, "-J"]),
            "overlay" => in_container(cpid, &["iperf3", "-c", &server_addr, "-t", &t, "-J"]),
            _ => in_container(cpid, &["iperf3", "-c", &rr, "-t", &t, "-J"]),
        };
        iperf_gbps(&output(c, &format!("iperf3 over the {path} path"))?)
    };
    let mut gbps: [Vec<f64>; 3] = Default::default();
    let paths = ["raw", "overlay", "rr"];
    let mut err = None;
    'outer: for r in 0..rounds {
        for k in 0..3 {
            let i = (r + k) % 3;
            match measure(paths[i]) {
                Ok(g) => gbps[i].push(g),
                Err(e) => {
                    err = Some(e);
                    break 'outer;
                }
            }
        }
    }
    let _ = raw_server.kill();
    let _ = raw_server.wait();
    if let Some(e) = err {
        return Err(e);
    }
    let n = pings.to_string();
    let ping = |path: &str| -> Result<Vec<f64>, String> {
        let args = |to: &str| -> Vec<String> {
            ["ping", "-c", &n, "-i", "0.05", "-W", "1", to]
                .iter()
                .map(|s| (*s).to_owned())
                .collect()
        };
        let c = match path {
            "raw" => {
                let a = args(&raw_addr);
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &h2.ns]).args(&a);
                c
            }
            other => {
                let to = if other == "overlay" {
                    &server_addr
                } else {
                    &rr
                };
                let a = args(to);
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/proc/{cpid}/ns/net")).args(&a);
                c
            }
        };
        let v = ping_ms(&output(c, &format!("ping over the {path} path"))?);
        if v.is_empty() {
            Err(format!("no ping reply over the {path} path"))
        } else {
            Ok(v)
        }
    };
    let rtt: Vec<Vec<f64>> = paths.iter().map(|p| ping(p)).collect::<Result<_, _>>()?;
    let st = |v: &[f64]| Stats::of(v).ok_or_else(|| "no sample".to_owned());
    let (raw, ov, rrs) = (st(&gbps[0])?, st(&gbps[1])?, st(&gbps[2])?);
    let (rraw, rov, rrr) = (st(&rtt[0])?, st(&rtt[1])?, st(&rtt[2])?);
    let fig = |s: &Stats| {
        format!(
            "{} Gbit/s (min {}, max {})",
            num(s.p50),
            num(s.min),
            num(s.max)
        )
    };
    let runs = format!("{rounds} × {secs} s");
    let mut s = Section {
        title: "5. Overlay".into(),
        intro: format!(
            "Two containers of the image `grove/iperf3` (this machine's iperf3 and its \
             libraries on the busybox layer) on two test bed hosts: the server \
             (`iperf3 -s`) on w1, the client on w2, each wired by its agent (veth on the \
             worker's bridge, VXLAN between workers, MTU 1450). *overlay*: the client to \
             the server's overlay address; *rr_ip*: to its service's `rr_ip` \
             ({rr}, translated by nftables on the client's worker); *raw*: host 2 to host 1 \
             over the test bed's own veth link (MTU 1500) with the same iperf3, no \
             container. iperf3 TCP for {secs} s per run, the three paths in rotating order \
             in each of {rounds} rounds; ping {pings} echoes each (0.05 s apart), the \
             client's from inside its network namespace."
        ),
        ..Section::default()
    };
    s.rows.push(Row::new(
        "overlay.raw.throughput",
        "raw veth, host to host: TCP throughput",
        fig(&raw),
        &runs,
    ));
    for (id, what, x) in [
        (
            "overlay.vxlan.throughput",
            "container to container over VXLAN: TCP throughput",
            &ov,
        ),
        (
            "overlay.rr.throughput",
            "container to the service's rr_ip: TCP throughput",
            &rrs,
        ),
    ] {
        s.rows.push(
            Row::new(id, what, fig(x), &runs)
                .peer(fig(&raw), x.p50, raw.p50)
                .target(x.p50 / raw.p50, Target::AtLeast(0.9), "≥ 90 % of raw"),
        );
    }
    let rtt_fig = |s: &Stats| s.latency("ms");
    s.rows.push(Row::new(
        "overlay.raw.rtt",
        "raw veth: ping RTT",
        rtt_fig(&rraw),
        rraw.n,
    ));
    for (id, what, x) in [
        (
            "overlay.vxlan.rtt",
            "container to container over VXLAN: ping RTT",
            &rov,
        ),
        ("overlay.rr.rtt", "container to the rr_ip: ping RTT", &rrr),
    ] {
        s.rows.push(
            Row::new(id, what, rtt_fig(x), x.n)
                .peer(rtt_fig(&rraw), x.p50, rraw.p50)
                .target(x.p50 / rraw.p50, Target::AtMost(1.1), "within +10 % of raw"),
        );
    }
    s.notes.push(
        "For scale (not run here): the ATC '23 paper's median overlay RTT with one server \
         was 12.5 ms for Oakestra's userspace proxy, 10.3 ms for K3s (its own testbed)."
            .into(),
    );
    Ok(s)
}
