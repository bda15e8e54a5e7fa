//! A Grove site on the test bed, as the benchmarks use it: hosts as network namespaces
//! made for the run (no route out), the images in a real `docker-registry` on host 0
//! serving as the workers' `docker.io` mirror, root and cluster on host 0, native
//! agents on the other hosts; SLAs and instances through the HTTP API.

use grove_cli::up::images::{self, Images};
use grove_tests::daemons::{self, Agent, Cluster, Root};
use grove_tests::registry::{Protection, Registry};
use grove_tests::relay::{self, Link, Relay};
use grove_tests::testbed::TestBed;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The static busybox the images are made of.
pub fn static_busybox() -> Option<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| images::is_static(p))
}

/// The files a dynamically linked program needs: itself and what `ldd` lists.
fn with_libraries(program: &Path) -> Result<Vec<(String, Vec<u8>)>, String> {
    let out = std::process::Command::new("ldd")
        .arg(program)
        .output()
        .map_err(|e| format!("ldd: {e}"))?;
    let mut files = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or `/lib64/ld-… (0x…)`.
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            let bytes = std::fs::read(p).map_err(|e| format!("{p}: {e}"))?;
            files.push((p.trim_start_matches('/').to_owned(), bytes));
        }
    }
    let bytes = std::fs::read(program).map_err(|e| format!("{}: {e}", program.display()))?;
    files.push(("bin/iperf3".to_owned(), bytes));
    Ok(files)
}

/// The benchmarks' images: the seed's stand-ins (`library/nginx`, `curlimages/curl`),
/// plain `library/busybox`, and `grove/iperf3` (this machine's iperf3 and its
/// libraries on the busybox layer, serving by default).
pub fn images() -> Result<Images, String> {
    let busybox = static_busybox().ok_or("a static busybox is needed (Debian: busybox-static)")?;
    let mut i = Images::stand_ins(&busybox)?;
    i.add("library/busybox", "latest", &[], &["sh"]);
    let iperf = PathBuf::from("/usr/bin/iperf3");
    let files = with_libraries(&iperf)?;
    let files: Vec<(&str, &[u8], u32)> = files
        .iter()
        .map(|(p, b)| (p.as_str(), b.as_slice(), 0o755))
        .collect();
    i.add("grove/iperf3", "latest", &files, &["iperf3", "-s"]);
    Ok(i)
}

/// The whole system on a test bed.
#[derive(Debug)]
pub struct Site {
    /// The workers, `w1` on host 1 and so on (dropped first: each resets itself).
    pub agents: Vec<Agent>,
    /// The cluster `edge` on host 0.
    pub cluster: Cluster,
    /// The root on host 0's loopback.
    pub root: Root,
    /// The registry on host 0 (held: it stops when dropped).
    _registry: Registry,
    /// The link emulator between the workers and their cluster, when shaped, and the
    /// runtime it runs on.
    pub relay: Option<(Relay, tokio::runtime::Runtime)>,
    /// The hosts (dropped last).
    pub bed: TestBed,
}

impl Site {
    /// A bed of `1 + workers` hosts (tag `tag`), with native agents given `extra` flags
    /// besides the registry's and 4 CPUs / 2 GiB offered, reaching their cluster
    /// through a relay shaped by `link` when given. The calling thread is left in
    /// host 0.
    pub fn native(
        tag: &str,
        workers: usize,
        extra: &[&str],
        dir: &Path,
        link: Option<Link>,
    ) -> Result<Self, String> {
        let bed = TestBed::new(tag, workers + 1).ok_or("no test bed (root and ip needed)")?;
        bed.enter(0);
        let layout = dir.join("layout");
        images()?
            .write_layout(&layout)
            .map_err(|e| format!("{}: {e}", layout.display()))?;
        let registry = Registry::start_at(
            &dir.join("registry"),
            bed.hosts[0].ip,
            &Protection::default(),
        )
        .ok_or("docker-registry is needed")?;
        for (tag, name) in [
            ("nginx", "library/nginx:latest"),
            ("curl", "curlimages/curl:7.82.0"),
            ("busybox", "library/busybox:latest"),
            ("iperf3", "grove/iperf3:latest"),
        ] {
            registry.push(&layout, tag, name, None);
        }
        let mut flags = daemons::native_flags(registry.addr);
        flags.extend(extra.iter().map(|s| (*s).to_owned()));
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let root = Root::start(dir, &[]);
        let addr = SocketAddr::new(bed.hosts[0].ip.into(), daemons::free_udp().port());
        let cluster = Cluster::start_at(dir, "edge", &root, addr, &[]);
        let relay = match link {
            Some(l) => {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                let front = SocketAddr::new(bed.hosts[0].ip.into(), 0);
                let r = rt
                    .block_on(relay::start(front, addr, l, 7))
                    .map_err(|e| format!("relay: {e}"))?;
                Some((r, rt))
            }
            None => None,
        };
        let to = relay.as_ref().map_or(addr, |(r, _)| r.addr);
        let agents: Vec<Agent> = (1..bed.hosts.len())
            .map(|i| {
                Agent::start_in(
                    Some(&bed.hosts[i]),
                    dir,
                    &format!("w{i}"),
                    to,
                    &cluster.worker_token,
                    &flags,
                )
            })
            .collect();
        let want = agents.len() as u64;
        if !wait(Duration::from_secs(60), Duration::from_millis(100), || {
            root.active_workers() == want
        }) {
            return Err(format!("not all {want} workers joined within 60 s"));
        }
        Ok(Self {
            agents,
            cluster,
            root,
            _registry: registry,
            relay,
            bed,
        })
    }

    /// The agent of worker `name`.
    pub fn agent(&self, name: &str) -> &Agent {
        self.agents
            .iter()
            .find(|a| a.name == name)
            .expect("a worker of that name")
    }
}

/// A microservice of an SLA: `image` running `cmd` with `memory` MB and `vcpus`, the
/// other fields from `extra` (an object).
pub fn service(
    name: &str,
    image: &str,
    cmd: &[&str],
    memory: u32,
    vcpus: f64,
    extra: Value,
) -> Value {
    let mut s = json!({
        "microserviceID": "",
        "microservice_name": name,
        "microservice_namespace": "bench",
        "virtualization": "container",
        "cmd": cmd,
        "memory": memory,
        "vcpus": vcpus,
        "vgpus": 0, "vtpus": 0, "bandwidth_in": 0, "bandwidth_out": 0, "storage": 0,
        "code": image,
        "state": "",
        "port": "",
        "added_files": [],
    });
    if let (Some(o), Some(e)) = (s.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    s
}

/// `direct` placement on worker `node` of cluster `edge`.
pub fn on_node(node: &str) -> Value {
    json!({"constraints": [{"type": "direct", "cluster": "edge", "node": node}]})
}

/// Post an application of `services`; their ids in order.
pub fn deploy(root: &Root, app: &str, services: Vec<Value>) -> Result<Vec<String>, String> {
    let sla = json!({
        "sla_version": "v2.0",
        "customerID": "Admin",
        "applications": [{
            "applicationID": "",
            "application_name": app,
            "application_namespace": "bench",
            "application_desc": "grove-bench",
            "microservices": services,
        }],
    });
    let apps = daemons::try_http(
        &root.base,
        "POST",
        "/api/application/",
        Some(root.token().as_str()),
        Some(sla),
    )?;
    // The answer lists every application of the user: this one by its name.
    let mine = apps
        .as_array()
        .into_iter()
        .flatten()
        .rfind(|a| a["application_name"] == app)
        .ok_or_else(|| format!("application {app} not in the answer: {apps}"))?;
    mine["microservices"]
        .as_array()
        .ok_or_else(|| format!("no services in the answer: {apps}"))?
        .iter()
        .map(|s| {
            s.as_str()
                .map(str::to_owned)
                .ok_or_else(|| "a service id".to_owned())
        })
        .collect()
}

/// The statuses of a service's instances, by instance number.
pub fn statuses(root: &Root, service: &str) -> Vec<(u64, String)> {
    daemons::try_http(
        &root.base,
        "GET",
        &format!("/api/service/{service}"),
        Some(root.token().as_str()),
        None,
    )
    .ok()
    .and_then(|d| d["instance_list"].as_array().cloned())
    .unwrap_or_default()
    .iter()
    .filter_map(|i| {
        Some((
            i["instance_number"].as_u64()?,
            i["status"].as_str()?.to_owned(),
        ))
    })
    .collect()
}

/// Ask for one more instance of `service`; its number.
pub fn add_instance(root: &Root, service: &str) -> Result<u64, String> {
    let doc = daemons::try_http(
        &root.base,
        "POST",
        &format!("/api/service/{service}/instance"),
        Some(root.token().as_str()),
        None,
    )?;
    doc["instance_number"]
        .as_u64()
        .ok_or_else(|| format!("no instance number in {doc}"))
}

/// Remove instance `number` of `service`.
pub fn remove_instance(root: &Root, service: &str, number: u64) -> Result<(), String> {
    daemons::try_http(
        &root.base,
        "DELETE",
        &format!("/api/service/{service}/instance/{number}"),
        Some(root.token().as_str()),
        None,
    )
    .map(|_| ())
}

/// A service's round-robin IP.
pub fn rr_ip(root: &Root, service: &str) -> Result<std::net::Ipv4Addr, String> {
    let doc = daemons::try_http(
        &root.base,
        "GET",
        &format!("/api/service/{service}"),
        Some(root.token().as_str()),
        None,
    )?;
    doc["RR_ip"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no RR_ip in {doc}"))
}

/// With `GROVE_BENCH_PAUSE` set, stop here for ten minutes (the site still up) so a
/// failure can be looked at.
pub fn pause_if_asked(what: &str) {
    if std::env::var_os("GROVE_BENCH_PAUSE").is_some() {
        eprintln!("grove-bench: pausing 600 s: {what}");
        std::thread::sleep(Duration::from_secs(600));
    }
}

/// Wait up to `limit` for `cond`, polling every `every`; whether it came true.
pub fn wait(limit: Duration, every: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(every);
    }
}

/// Wait until `service` has `n` instances, all RUNNING.
pub fn all_running(root: &Root, service: &str, n: usize, limit: Duration) -> Result<(), String> {
    let ok = wait(limit, Duration::from_millis(100), || {
        let s = statuses(root, service);
        s.len() == n && s.iter().all(|(_, st)| st == "RUNNING")
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{service}: not {n} instances RUNNING within {limit:?}: {:?}",
            statuses(root, service)
        ))
    }
}

/// The host PID of the container of `service`'s instance `number` on `agent`.
pub fn container_pid(agent: &Agent, service: &str, number: u64) -> Option<u32> {
    let id: String = service
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(64)
        .collect();
    let pid = std::fs::read_to_string(
        agent
            .dir
            .join("containers")
            .join(format!("{id}-{number}"))
            .join("pid"),
    )
    .ok()?;
    pid.split_whitespace().next()?.parse().ok()
}

/// A thread's view of a container's network: run `f` on a new thread that has
/// entered the network namespace of process `pid`.
pub fn in_netns_of<T: Send + 'static>(
    pid: u32,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))
        .map_err(|e| format!("network namespace of {pid}: {e}"))?;
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("setns: {e}"))?;
        Ok(f())
    })
    .join()
    .map_err(|_| "panicked".to_owned())?
}

/// One HTTP GET of `/` at `addr`, connecting within `limit`; whether it answered 200
/// (within two seconds once connected).
pub fn http_ok(addr: SocketAddr, limit: Duration) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, limit) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..12] == b"200"
}

/// nftables counters by name: (packets, bytes).
pub type Counts = std::collections::HashMap<String, (u64, u64)>;

/// Load the nftables `script` in namespace `ns`.
pub fn nft_load(ns: &str, script: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("nft: {e}"))?;
    child
        .stdin
        .take()
        .ok_or("nft stdin")?
        .write_all(script.as_bytes())
        .map_err(|e| e.to_string())?;
    if child.wait().map_err(|e| e.to_string())?.success() {
        Ok(())
    } else {
        Err(format!("nft refused the counters in {ns}"))
    }
}

/// Every named nftables counter in namespace `ns`.
pub fn nft_counters(ns: &str) -> Result<Counts, String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-j", "list", "counters"])
        .output()
        .map_err(|e| format!("nft: {e}"))?;
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("nft -j: {e}"))?;
    Ok(v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| {
            let c = o.get("counter")?;
            Some((
                c["name"].as_str()?.to_owned(),
                (c["packets"].as_u64()?, c["bytes"].as_u64()?),
            ))
        })
        .collect())
}
