//! Bytes on the wire: datagrams and bytes per heartbeat, per deploy and per status
//! change, counted by the kernel (nftables counters on the hosts' UDP traffic, split
//! by CoAP message type), with OSCORE's share worked out by protecting the same kinds
//! of message with and without it; beside them what Oakestra's MQTT JSON messages for
//! the same content would take, computed from its field lists (not run here).

use crate::Ctx;
use crate::report::{Row, Section, Stats, num};
use crate::site;
use grove_proto::coap::{Config, Endpoint, Request, Response, SendOptions};
use grove_proto::msg::{
    self, Heartbeat, InstanceRef, InstanceState, InstanceStatus, NetCoord, NodeId,
};
use grove_proto::oscore::ContextParams;
use grove_tests::daemons::{self, Agent, Cluster, Root};
use grove_tests::testbed::TestBed;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// IPv4 and UDP headers: what each datagram costs besides its payload.
const IP_UDP: u64 = 28;
/// IPv4 and TCP headers with the timestamp option Linux sends: each MQTT segment.
const IP_TCP: usize = 52;
/// MQTT's PUBACK (QoS 1).
const PUBACK: usize = 4;

// Packets and bytes (IP length) of each counter of a host.
use site::Counts;

/// Counters on a host, by CoAP message type (the two type bits of the first byte of
/// the UDP payload) and direction, for UDP traffic to and from `port`. `hook`:
/// `out` only (loopback: each datagram passes once) or `out` for the way up and `in`
/// for the way down (a host's link).
fn install(ns: &str, prefix: &str, port: u16, loopback: bool) -> Result<(), String> {
    let types = [
        ("non", "0x10"),
        ("con", "0x00"),
        ("ack", "0x20"),
        ("rst", "0x30"),
    ];
    let mut counters = String::new();
    let (mut out, mut inn) = (String::new(), String::new());
    for (t, bits) in types {
        counters += &format!("  counter {prefix}_up_{t} {{}}\n  counter {prefix}_down_{t} {{}}\n");
        out += &format!(
            "    udp dport {port} @th,64,8 & 0x30 == {bits} counter name {prefix}_up_{t}\n"
        );
        let down = format!(
            "    udp sport {port} @th,64,8 & 0x30 == {bits} counter name {prefix}_down_{t}\n"
        );
        if loopback { out += &down } else { inn += &down }
    }
    let script = format!(
        "table inet grove_bench_{prefix} {{\n{counters}  chain out {{\n    type filter hook output priority 0; policy accept;\n{out}  }}\n  chain in {{\n    type filter hook input priority 0; policy accept;\n{inn}  }}\n}}\n"
    );
    site::nft_load(ns, &script)
}

fn read(ns: &str) -> Result<Counts, String> {
    site::nft_counters(ns)
}

fn delta(after: &Counts, before: &Counts) -> Counts {
    after
        .iter()
        .map(|(k, (p, b))| {
            let (p0, b0) = before.get(k).copied().unwrap_or((0, 0));
            (k.clone(), (p - p0, b - b0))
        })
        .collect()
}

/// Packets and UDP payload bytes of the counters named `prefix_<dir>_<type>` for the
/// given types, both directions (`dirs`).
fn sum(c: &Counts, prefix: &str, dirs: &[&str], types: &[&str]) -> (u64, u64) {
    let mut p = 0;
    let mut b = 0;
    for d in dirs {
        for t in types {
            if let Some((pk, by)) = c.get(&format!("{prefix}_{d}_{t}")) {
                p += pk;
                b += by - pk * IP_UDP;
            }
        }
    }
    (p, b)
}

/// Everything but heartbeats and reports (non-confirmable).
const EXCHANGES: [&str; 3] = ["con", "ack", "rst"];

/// The size of an MQTT QoS 1 PUBLISH of `payload` bytes on `topic`.
fn mqtt_publish(topic: &str, payload: usize) -> usize {
    let remaining = 2 + topic.len() + 2 + payload;
    let mut len_bytes = 1;
    let mut r = remaining >> 7;
    while r > 0 {
        len_bytes += 1;
        r >>= 7;
    }
    1 + len_bytes + remaining
}

/// A QoS 1 publish with its PUBACK over TCP: (segments, bytes with TCP/IP headers).
fn mqtt_exchange(topic: &str, body: &Value) -> (usize, usize) {
    let payload = body.to_string().len();
    (2, mqtt_publish(topic, payload) + PUBACK + 2 * IP_TCP)
}

/// What OSCORE adds to a request of `body` bytes at `path` and to its response with
/// `answer` bytes: the same exchange protected and in the clear, datagram lengths
/// compared, through proto's endpoint.
fn oscore_overhead(path: &str, body: Vec<u8>, answer: Vec<u8>, non: bool) -> (usize, usize) {
    let peer: SocketAddr = "127.0.0.1:10100".parse().unwrap_or_else(|_| unreachable!());
    let me: SocketAddr = "127.0.0.1:40000".parse().unwrap_or_else(|_| unreachable!());
    let params = |client: bool| ContextParams {
        master_secret: vec![7; 32],
        master_salt: vec![1; 8],
        sender_id: if client {
            4117u32.to_be_bytes().to_vec()
        } else {
            Vec::new()
        },
        recipient_id: if client {
            Vec::new()
        } else {
            4117u32.to_be_bytes().to_vec()
        },
        id_context: None,
    };
    let run = |secure: bool| -> (usize, usize) {
        let mut c = Endpoint::new(Config::default());
        let mut s = Endpoint::new(Config::default());
        let key = secure.then(|| c.add_context_params(&params(true)));
        if secure {
            s.add_context_params(&params(false));
        }
        let now = Instant::now();
        c.request(
            now,
            peer,
            Request::post_cbor(path, body.clone()),
            SendOptions {
                non_confirmable: non,
                security: key,
            },
        );
        let req = c.poll_transmit().map(|t| t.data).unwrap_or_default();
        s.handle_datagram(now, me, &req);
        let mut resp = Vec::new();
        while let Some(ev) = s.poll_event() {
            if let grove_proto::coap::Event::Request { id, .. } = ev {
                let r = if answer.is_empty() {
                    Response::new(grove_proto::coap::Code::CHANGED)
                } else {
                    Response::cbor(answer.clone())
                };
                s.respond(now, id, r);
                resp = s.poll_transmit().map(|t| t.data).unwrap_or_default();
            }
        }
        (req.len(), resp.len())
    };
    let (plain, secure) = (run(false), run(true));
    (
        secure.0.saturating_sub(plain.0),
        secure.1.saturating_sub(plain.1),
    )
}

/// A heartbeat like the ones measured: an idle 4-CPU worker.
fn sample_heartbeat(changes: Vec<InstanceStatus>) -> Heartbeat {
    Heartbeat {
        node: NodeId(1),
        seq: 1_234,
        cpu_centi_pct: 4_250,
        mem_used_mib: 1_900,
        mem_total_mib: 3_800,
        disk_used_mib: 14_500,
        disk_total_mib: 32_000,
        running: 1,
        coord: NetCoord([1.5, -0.25, 0.75]),
        digest: [0x9a; 8],
        changes,
        instances: None,
        limits: None,
        changes_from: None,
    }
}

struct Bed {
    agents: Vec<Agent>,
    cluster: Cluster,
    root: Root,
    bed: TestBed,
}

fn bed(dir: &std::path::Path) -> Result<Bed, String> {
    let bed = TestBed::new("wi", 3).ok_or("no test bed")?;
    bed.enter(0);
    let root = Root::start(dir, &[]);
    let addr = SocketAddr::new(bed.hosts[0].ip.into(), daemons::free_udp().port());
    let cluster = Cluster::start_at(dir, "edge", &root, addr, &[]);
    let agents: Vec<Agent> = (1..3)
        .map(|i| {
            Agent::start_in(
                Some(&bed.hosts[i]),
                dir,
                &format!("w{i}"),
                addr,
                &cluster.worker_token,
                &["--cpus", "4", "--memory-mib", "4096"],
            )
        })
        .collect();
    if !site::wait(Duration::from_secs(30), Duration::from_millis(100), || {
        root.active_workers() == 2
    }) {
        return Err("the workers did not join".into());
    }
    Ok(Bed {
        agents,
        cluster,
        root,
        bed,
    })
}

/// Run it.
#[allow(clippy::too_many_lines)]
pub fn run(ctx: &Ctx) -> Result<Section, String> {
    let dir = ctx.dir("wire");
    let b = bed(&dir)?;
    let (h0, h1, h2) = (&b.bed.hosts[0].ns, &b.bed.hosts[1].ns, &b.bed.hosts[2].ns);
    let cport = b.cluster.addr.port();
    install(h1, "w1", cport, false)?;
    install(h2, "w2", cport, false)?;
    install(h0, "root", b.root.coap.port(), true)?;
    let all = |c: &Counts, p: &str| sum(c, p, &["up", "down"], &["non", "con", "ack", "rst"]);

    // Idle: heartbeats only, plus what else flows while nothing happens.
    let idle_for = ctx.pick(Duration::from_secs(120), Duration::from_secs(12));
    std::thread::sleep(Duration::from_secs(3));
    let (a0, r0) = (read(h1)?, read(h0)?);
    std::thread::sleep(idle_for);
    let (a1, r1) = (read(h1)?, read(h0)?);
    let (idle_w, idle_r) = (delta(&a1, &a0), delta(&r1, &r0));
    let minutes = idle_for.as_secs_f64() / 60.0;
    let beats = sum(&idle_w, "w1", &["up"], &["non"]);
    let answers = sum(&idle_w, "w1", &["down"], &["non"]);
    if beats.0 == 0 {
        return Err("no heartbeat counted".into());
    }
    #[allow(clippy::cast_precision_loss)]
    let per = |x: (u64, u64)| (x.1 as f64 / x.0.max(1) as f64, x.0);
    let (hb_req, n_hb) = per(beats);
    let (hb_resp, _) = per(answers);

    // Deploys on w1 (simulated containers: the protocol is what is measured).
    let runs = ctx.pick(20, 3);
    let svc = site::deploy(
        &b.root,
        "wire",
        vec![site::service(
            "sim",
            "docker.io/library/busybox:latest",
            &[],
            16,
            0.1,
            site::on_node("w1"),
        )],
    )?
    .remove(0);
    let (mut dep_w1, mut dep_w2, mut dep_root) = (Vec::new(), Vec::new(), Vec::new());
    let (mut dg_w1, mut dg_w2, mut dg_root) = (Vec::new(), Vec::new(), Vec::new());
    let mut status_up: (u64, u64) = (0, 0);
    let mut status_ack: (u64, u64) = (0, 0);
    let mut report_up: (u64, u64) = (0, 0);
    let mut report_ack: (u64, u64) = (0, 0);
    let mut notify: (u64, u64) = (0, 0);
    let mut changes_seen = 0u64;
    let mut doc = Value::Null;
    for _ in 0..runs {
        let (a0, b0, r0) = (read(h1)?, read(h2)?, read(h0)?);
        let n = site::add_instance(&b.root, &svc)?;
        if !site::wait(Duration::from_secs(30), Duration::from_millis(5), || {
            site::statuses(&b.root, &svc)
                .iter()
                .any(|(i, s)| *i == n && s == "RUNNING")
        }) {
            return Err(format!("instance {n} not RUNNING"));
        }
        // The tail: acknowledgements and the pushes the change caused.
        std::thread::sleep(Duration::from_millis(700));
        let (a1, b1, r1) = (read(h1)?, read(h2)?, read(h0)?);
        let (dw1, dw2, dr) = (delta(&a1, &a0), delta(&b1, &b0), delta(&r1, &r0));
        let x = sum(&dw1, "w1", &["up", "down"], &EXCHANGES);
        let y = sum(&dw2, "w2", &["up", "down"], &EXCHANGES);
        let z = sum(&dr, "root", &["up", "down"], &EXCHANGES);
        #[allow(clippy::cast_precision_loss)]
        {
            dep_w1.push(x.1 as f64);
            dg_w1.push(x.0 as f64);
            dep_w2.push(y.1 as f64);
            dg_w2.push(y.0 as f64);
            dep_root.push(z.1 as f64);
            dg_root.push(z.0 as f64);
        }
        let add = |acc: &mut (u64, u64), v: (u64, u64)| {
            acc.0 += v.0;
            acc.1 += v.1;
        };
        add(&mut status_up, sum(&dw1, "w1", &["up"], &["con"]));
        add(&mut status_ack, sum(&dw1, "w1", &["down"], &["ack"]));
        add(&mut notify, sum(&dw1, "w1", &["down"], &["con"]));
        add(&mut report_up, sum(&dr, "root", &["up"], &["con"]));
        add(&mut report_ack, sum(&dr, "root", &["down"], &["ack"]));
        changes_seen += sum(&dw1, "w1", &["up"], &["con"]).0;
        doc = daemons::try_http(
            &b.root.base,
            "GET",
            &format!("/api/service/{svc}"),
            Some(b.root.token().as_str()),
            None,
        )?;
        site::remove_instance(&b.root, &svc, n)?;
        if !site::wait(Duration::from_secs(30), Duration::from_millis(20), || {
            site::statuses(&b.root, &svc)
                .iter()
                .all(|(i, s)| *i != n || s == "UNDEPLOYED")
        }) {
            return Err(format!("instance {n} not removed"));
        }
        std::thread::sleep(Duration::from_millis(700));
    }
    let st = |v: &[f64]| Stats::of(v).ok_or_else(|| "no deploy".to_owned());
    let (w1s, w2s, rs) = (st(&dep_w1)?, st(&dep_w2)?, st(&dep_root)?);
    let (w1d, w2d, rd) = (st(&dg_w1)?, st(&dg_w2)?, st(&dg_root)?);

    // OSCORE's share, from proto's endpoint with messages of the same kinds.
    let hb = msg::to_cbor(&sample_heartbeat(Vec::new()));
    let (os_hb_req, os_hb_resp) = oscore_overhead(
        &grove_proto::paths::node_status(NodeId(1)),
        hb.clone(),
        Vec::new(),
        true,
    );
    let change = InstanceStatus {
        instance: InstanceRef {
            service: svc.clone(),
            instance: 1,
        },
        state: InstanceState::Running,
        detail: None,
        ip: Some(0x0A1E_0005),
        worker: None,
        addr: Some(0x0A12_0002),
        addr6: None,
    };
    let st_body = msg::to_cbor(&sample_heartbeat(vec![change]));
    let (os_st_req, os_st_resp) = oscore_overhead(
        &grove_proto::paths::node_status(NodeId(1)),
        st_body,
        Vec::new(),
        false,
    );

    // Oakestra's messages for the same content (computed).
    let information = json!({
        "cpu_percent": 42.5, "vcpus": 4, "memory_percent": 50.0, "memory": 3800,
        "ip": "10.31.0.2", "gpu_count": 0, "vram": 0, "vram_percent": 0, "gpu_temp": 0,
        "gpu_percent": 0
    });
    let resources = json!({"services": []});
    let (s1, oak_info) = mqtt_exchange("nodes/6650a1b2c3d4e5f6a7b8c9d0/information", &information);
    let (s2, oak_res) = mqtt_exchange("nodes/6650a1b2c3d4e5f6a7b8c9d0/jobs/resources", &resources);
    let oak_hb = oak_info + oak_res;
    let mut job = doc.clone();
    if let Some(o) = job.as_object_mut() {
        o.remove("instance_list");
        o.insert("instance_number".into(), json!(1));
    }
    let (s3, oak_deploy) = mqtt_exchange("nodes/6650a1b2c3d4e5f6a7b8c9d0/control/deploy", &job);
    let status = json!({
        "sname": doc["job_name"], "status": "RUNNING", "status_detail": "",
        "instance": 1, "publicip": "10.31.0.2"
    });
    let (s4, oak_status) = mqtt_exchange("nodes/6650a1b2c3d4e5f6a7b8c9d0/job", &status);
    #[allow(clippy::cast_precision_loss)]
    let per_deploy_changes = changes_seen as f64 / runs as f64;
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let oak_deploy_total = oak_deploy + oak_status * (per_deploy_changes.round() as usize).max(1);

    let hb_bytes = hb_req + hb_resp;
    #[allow(clippy::cast_precision_loss)]
    let hb_ip = hb_bytes + 2.0 * IP_UDP as f64;
    let mut s = Section {
        title: "6. Bytes on the wire".into(),
        intro: format!(
            "Counted by the kernel: nftables counters on each host of the test bed (root and \
             cluster on one, two workers with simulated containers on the others — the \
             protocol is what is measured), per direction and CoAP message type (the type \
             bits of the first payload byte: heartbeats and reports are non-confirmable, \
             everything else confirmable or an acknowledgement). Bytes are UDP payloads; \
             each datagram adds {IP_UDP} bytes of IPv4 and UDP headers (\"on the link\"). \
             Heartbeats over {} s idle; {runs} deploys of one instance on w1 (each removed \
             again), each counted from the API call until 700 ms after it was RUNNING. \
             OSCORE's share: the same kinds of message protected and in the clear through \
             proto's endpoint, lengths compared. Oakestra's side is **computed, not run**: \
             its JSON bodies built from the field lists in its code (worker ↔ cluster over \
             MQTT QoS 1: the PUBLISH with topic and packet id, its PUBACK, and {IP_TCP} \
             bytes of IPv4 and TCP headers with timestamps per segment; TCP's own \
             acknowledgements and MQTT keep-alives not counted).",
            idle_for.as_secs()
        ),
        ..Section::default()
    };
    s.rows.push(
        Row::new(
            "wire.heartbeat",
            "heartbeat, worker → cluster (NON) and its answer",
            format!(
                "2 datagrams, {} + {} bytes; {} on the link",
                num(hb_req),
                num(hb_resp),
                num(hb_ip)
            ),
            format!("{n_hb} heartbeats"),
        )
        .peer(
            format!(
                "{} segments, {oak_hb} bytes (`information` + `jobs/resources`, computed)",
                s1 + s2
            ),
            hb_ip,
            f64::from(u32::try_from(oak_hb).unwrap_or(u32::MAX)),
        ),
    );
    let w1_idle = all(&idle_w, "w1");
    let r_idle = all(&idle_r, "root");
    #[allow(clippy::cast_precision_loss)]
    let pm = |x: (u64, u64)| (x.0 as f64 / minutes, x.1 as f64 / minutes);
    let (wd, wb) = pm(w1_idle);
    let (rdg, rb) = pm(r_idle);
    s.rows.push(Row::new(
        "wire.idle.worker",
        "an idle worker ↔ its cluster, per minute (both ways, everything)",
        format!(
            "{} datagrams, {} bytes; {} on the link",
            num(wd),
            num(wb),
            num(wb + wd * 28.0)
        ),
        format!("{} s", idle_for.as_secs()),
    ));
    s.rows.push(Row::new(
        "wire.idle.cluster",
        "an idle cluster (2 workers) ↔ the root, per minute",
        format!(
            "{} datagrams, {} bytes; {} on the link",
            num(rdg),
            num(rb),
            num(rb + rdg * 28.0)
        ),
        format!("{} s", idle_for.as_secs()),
    ));
    #[allow(clippy::cast_precision_loss)]
    let oak_dep = oak_deploy_total as f64;
    s.rows.push(
        Row::new(
            "wire.deploy.worker",
            "per deploy, cluster ↔ the worker that runs it (commands, status changes, acks)",
            format!("{} datagrams, {} bytes (p90 {})", num(w1d.p50), num(w1s.p50), num(w1s.p90)),
            runs,
        )
        .peer(
            format!(
                "{} segments, {oak_deploy_total} bytes (`control/deploy` with the job document + {} `job` status, computed)",
                s3 + s4,
                per_deploy_changes.round()
            ),
            w1s.p50 + w1d.p50 * 28.0,
            oak_dep,
        ),
    );
    s.rows.push(Row::new(
        "wire.deploy.other_worker",
        "per deploy, cluster ↔ each other worker of the cluster (its new service table)",
        format!(
            "{} datagrams, {} bytes (p90 {})",
            num(w2d.p50),
            num(w2s.p50),
            num(w2s.p90)
        ),
        runs,
    ));
    s.rows.push(Row::new(
        "wire.deploy.root",
        "per deploy, root ↔ cluster (commands, status reports, acks)",
        format!(
            "{} datagrams, {} bytes (p90 {})",
            num(rd.p50),
            num(rs.p50),
            num(rs.p90)
        ),
        runs,
    ));
    #[allow(clippy::cast_precision_loss)]
    let avg = |x: (u64, u64)| x.1 as f64 / x.0.max(1) as f64;
    let st_bytes = avg(status_up) + avg(status_ack);
    s.rows.push(
        Row::new(
            "wire.status.worker",
            "per status change, worker → cluster (CON) and its ack",
            format!(
                "2 datagrams, {} + {} bytes; {} on the link",
                num(avg(status_up)),
                num(avg(status_ack)),
                num(st_bytes + 56.0)
            ),
            format!("{} changes", status_up.0),
        )
        .peer(
            format!("{s4} segments, {oak_status} bytes (`nodes/<id>/job`, computed)"),
            st_bytes + 56.0,
            f64::from(u32::try_from(oak_status).unwrap_or(u32::MAX)),
        ),
    );
    s.rows.push(Row::new(
        "wire.status.root",
        "per status report, cluster → root (CON) and its ack",
        format!(
            "2 datagrams, {} + {} bytes; {} on the link",
            num(avg(report_up)),
            num(avg(report_ack)),
            num(avg(report_up) + avg(report_ack) + 56.0)
        ),
        format!("{} reports", report_up.0),
    ));
    s.rows.push(Row::new(
        "wire.notification",
        "a command notification, cluster → worker (CON, full state of one instance)",
        format!("{} bytes", num(avg(notify))),
        format!("{} notifications", notify.0),
    ));
    s.rows.push(Row::new(
        "wire.oscore.heartbeat",
        "OSCORE's share of a heartbeat and of its answer",
        format!(
            "{os_hb_req} + {os_hb_resp} bytes ({:.0} % of the heartbeat's {} bytes)",
            100.0 * f64::from(u32::try_from(os_hb_req + os_hb_resp).unwrap_or(0)) / hb_bytes,
            num(hb_bytes)
        ),
        "computed",
    ));
    s.rows.push(Row::new(
        "wire.oscore.status",
        "OSCORE's share of a status change and of its ack",
        format!("{os_st_req} + {os_st_resp} bytes"),
        "computed",
    ));
    s.notes.push(format!(
        "A deploy here had {} status changes reach the cluster (CREATING and RUNNING are \
         sent as they happen, sometimes in one message).",
        num(per_deploy_changes)
    ));
    s.notes.push(format!(
        "Oakestra's job document is the service as Grove's API returns it in Oakestra's \
         shape ({} bytes of JSON) plus `instance_number`.",
        job.to_string().len()
    ));
    s.notes.push(
        "The idle figures include the observation refresh every 20 s (worker) and the \
         report every 5 s with its full form every 30 s (cluster)."
            .into(),
    );
    drop(b.agents);
    Ok(s)
}
