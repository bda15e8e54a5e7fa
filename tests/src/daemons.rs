//! Real daemons as child processes for the end-to-end tests and the benchmarks:
//! `grove-root`, `grove-cluster` and `grove-agent`, on loopback or on the test bed, each
//! with its state in a folder of the caller's own; SIGKILL and restart any of them.

use serde_json::{Value, json};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The daemons' binaries, made (or found up to date) once per test process by the
/// same cargo, profile and target directory that built this test. The build is the
/// test runner's own (`cargo test --no-run --workspace`): under `cargo nextest run
/// --workspace` it finds everything fresh and builds nothing; a narrower run gets the
/// daemons built with the same features the workspace build gives them.
///
/// With `GROVE_BIN_DIR` set (the benchmarks, which build release binaries
/// themselves) the binaries are taken from there instead.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        if let Some(d) = std::env::var_os("GROVE_BIN_DIR") {
            return PathBuf::from(d);
        }
        let exe = std::env::current_exe().expect("test executable path");
        // target/<profile>/deps/<test>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test executable lives in target/<profile>/deps");
        let target_dir = profile_dir.parent().expect("target directory");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["test", "--no-run", "--quiet", "--workspace"]);
        match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => {}
            Some("release") => {
                build.arg("--release");
            }
            Some(p) => {
                build.args(["--profile", p]);
            }
        }
        let status = build
            .arg("--target-dir")
            .arg(target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("running cargo to build the daemons");
        assert!(status.success(), "building the daemons failed");
        profile_dir.to_path_buf()
    });
    let path = dir.join(name);
    // The test build makes a package's binaries only when it has integration tests:
    // every package with a binary has some (`grove`: cli/tests/cli.rs).
    assert!(
        path.is_file(),
        "{} was not built by `cargo test --no-run --workspace`",
        path.display()
    );
    path
}

/// A free loopback UDP port (the kernel's pick; a daemon binds it right after).
pub fn free_udp() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
}

/// A free loopback TCP port.
pub fn free_tcp() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free TCP port")
}

/// A test's folder under the system's temp dir, emptied first.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("grove-e2e-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A daemon process that can be killed and started again with the same command line.
/// Its output goes to `<name>.log` in its folder (appended across restarts).
#[derive(Debug)]
pub struct Daemon {
    bin: PathBuf,
    args: Vec<OsString>,
    log: PathBuf,
    child: Option<Child>,
    env: Vec<(String, String)>,
}

impl Daemon {
    /// Start `bin` with `args`, logging to `log`.
    pub fn start(bin: PathBuf, args: Vec<OsString>, log: PathBuf) -> Self {
        let mut d = Self {
            bin,
            args,
            log,
            child: None,
            env: Vec::new(),
        };
        d.restart();
        d
    }

    /// Set `key` to `value` in its environment from its next start on.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// Start it again (after [`Daemon::kill`]).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(&self.bin)
            .args(&self.args)
            .env(
                "RUST_LOG",
                std::env::var("GROVE_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", self.bin.display()));
        self.child = Some(child);
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether it still runs (it has not exited on its own).
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Wait for `cond`, polling; panics naming `what` after `secs`.
pub fn wait_until(secs: u64, what: &str, cond: impl FnMut() -> bool) {
    assert!(wait_for(secs, cond), "timed out waiting for {what}");
}

/// Wait up to `secs` for `cond`, polling; whether it came true.
pub fn wait_for(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// One HTTP call to the root's API; JSON in and out.
pub fn http(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Value {
    try_http(base, method, path, token, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// As [`http`], with the error returned.
pub fn try_http(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Result<Value, String> {
    let mut req = ureq::request(method, &format!("{base}{path}")).timeout(Duration::from_secs(20));
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let r = match body {
        Some(b) => req.send_json(b),
        None => req.call(),
    }
    .map_err(|e| e.to_string())?;
    r.into_json().map_err(|e| e.to_string())
}

/// A running `grove-root` with the API's base URL and an admin's access token.
#[derive(Debug)]
pub struct Root {
    /// The process.
    pub daemon: Daemon,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The cluster link.
    pub coap: SocketAddr,
    /// Admin's access token as first issued (it lasts 10 minutes; [`Root::token`]
    /// gives one that is still good).
    pub admin: String,
    /// The latest token and when it was issued.
    fresh: std::sync::Mutex<(Instant, String)>,
}

impl Root {
    /// Start a root with its data under `dir/root`; waits until the API answers.
    pub fn start(dir: &Path, extra: &[&str]) -> Self {
        let (http_addr, coap) = (free_tcp(), free_udp());
        let mut args: Vec<OsString> = vec![
            "--data-dir".into(),
            dir.join("root").into(),
            "--admin-password".into(),
            "Admin".into(),
            "--http".into(),
            http_addr.to_string().into(),
            "--coap".into(),
            coap.to_string().into(),
        ];
        args.extend(extra.iter().map(OsString::from));
        let daemon = Daemon::start(bin("grove-root"), args, dir.join("root.log"));
        let base = format!("http://{http_addr}");
        let mut root = Self {
            daemon,
            base,
            coap,
            admin: String::new(),
            fresh: std::sync::Mutex::new((Instant::now(), String::new())),
        };
        root.wait_serving();
        root.admin = root.login();
        root.fresh = std::sync::Mutex::new((Instant::now(), root.admin.clone()));
        root
    }

    fn login(&self) -> String {
        let login = json!({"username": "Admin", "password": "Admin"});
        http(&self.base, "POST", "/api/auth/login", None, Some(login))["token"]
            .as_str()
            .expect("a token")
            .to_owned()
    }

    /// Admin's access token, issued again when the last one is 5 minutes old (they
    /// last 10): for runs longer than a token.
    pub fn token(&self) -> String {
        let mut f = self.fresh.lock().unwrap_or_else(|p| p.into_inner());
        if f.0.elapsed() > Duration::from_secs(300) {
            *f = (Instant::now(), self.login());
        }
        f.1.clone()
    }

    /// Wait until the API answers (after a start or restart).
    pub fn wait_serving(&mut self) {
        let base = self.base.clone();
        let d = &mut self.daemon;
        wait_until(30, "the root's API", || {
            assert!(d.running(), "grove-root exited:\n{}", d.log());
            ureq::get(&format!("{base}/api/docs/openapi.json"))
                .timeout(Duration::from_secs(2))
                .call()
                .is_ok()
        });
    }

    /// A call as the admin.
    pub fn api(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        http(&self.base, method, path, Some(&self.token()), body)
    }

    /// A new cluster join token.
    pub fn cluster_token(&self) -> String {
        self.api("POST", "/api/clusters/token", Some(json!({})))["token"]
            .as_str()
            .expect("a cluster join token")
            .to_owned()
    }

    /// Active workers the root knows of, summed over clusters and architectures.
    pub fn active_workers(&self) -> u64 {
        let active = self.api("GET", "/api/clusters/active", None);
        active
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| {
                c["aggregation_per_architecture"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a["active_nodes"].as_u64())
            })
            .sum()
    }

    /// Post the seed's SLA changed by `edit`; returns the service ids in SLA order.
    pub fn deploy_seed(&self, edit: impl FnOnce(&mut Value)) -> Vec<String> {
        let mut sla = seed();
        edit(&mut sla);
        let apps = self.api("POST", "/api/application/", Some(sla));
        apps[0]["microservices"]
            .as_array()
            .expect("the application's services")
            .iter()
            .map(|s| s.as_str().expect("a service id").to_owned())
            .collect()
    }

    /// Ask for one more instance of a service.
    pub fn add_instance(&self, service: &str) -> Value {
        self.api("POST", &format!("/api/service/{service}/instance"), None)
    }

    /// The instances of a service as the API lists them.
    pub fn instances(&self, service: &str) -> Vec<Value> {
        self.api("GET", &format!("/api/service/{service}"), None)["instance_list"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

/// The seed's SLA (the Oakestra artifact's `deploy_curl_application`).
pub fn seed() -> Value {
    serde_json::from_str(include_str!("../../root/tests/seed_sla.json")).expect("seed SLA")
}

/// A running `grove-cluster` and a reusable worker join token for it.
#[derive(Debug)]
pub struct Cluster {
    /// The process.
    pub daemon: Daemon,
    /// Where workers reach it.
    pub addr: SocketAddr,
    /// A worker join token.
    pub worker_token: String,
    /// Its state.
    pub dir: PathBuf,
}

impl Cluster {
    /// Start a cluster named `name` with its data under `dir/<name>`, joined to `root`,
    /// with `extra` flags.
    pub fn start(dir: &Path, name: &str, root: &Root, extra: &[&str]) -> Self {
        Self::start_at(dir, name, root, free_udp(), extra)
    }

    /// As [`Cluster::start`], serving workers on `addr`.
    pub fn start_at(dir: &Path, name: &str, root: &Root, addr: SocketAddr, extra: &[&str]) -> Self {
        let cdir = dir.join(name);
        // An operator makes a worker join token with the cluster's own CLI.
        let out = Command::new(bin("grove-cluster"))
            .arg("--data-dir")
            .arg(&cdir)
            .args(["token", "--reusable"])
            .output()
            .expect("grove-cluster token");
        assert!(
            out.status.success(),
            "grove-cluster token: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let worker_token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let mut args: Vec<OsString> = vec![
            "--data-dir".into(),
            cdir.clone().into(),
            "--root".into(),
            root.coap.to_string().into(),
            "--name".into(),
            name.into(),
            "--coap".into(),
            addr.to_string().into(),
            "--join-token".into(),
            root.cluster_token().into(),
        ];
        args.extend(extra.iter().map(OsString::from));
        let daemon = Daemon::start(bin("grove-cluster"), args, dir.join(format!("{name}.log")));
        Self {
            daemon,
            addr,
            worker_token,
            dir: cdir,
        }
    }
}

/// A `grove-agent --runtime sim` process.
#[derive(Debug)]
pub struct Agent {
    /// The process.
    pub daemon: Daemon,
    /// Its state (the simulated runtime's instance records live here).
    pub dir: PathBuf,
    /// Its name.
    pub name: String,
    /// The test bed host it runs in.
    pub host: Option<crate::testbed::Host>,
}

impl Drop for Agent {
    /// A native agent leaves nothing behind, also when its test fails: stopped, it is
    /// reset (its containers, supervisor, links and table removed), in its host.
    fn drop(&mut self) {
        self.daemon.kill();
        if !self.dir.join("supervisor.pid").exists() {
            return;
        }
        let mut c = match self.host.as_ref().filter(|h| h.path().exists()) {
            Some(h) => h.command(&bin("grove-agent")),
            None => Command::new(bin("grove-agent")),
        };
        let _ = c
            .args(["--name", &self.name, "--state-dir"])
            .arg(&self.dir)
            .arg("reset")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Agent {
    /// Start an agent named `name` joining the cluster at `cluster` (a relay's address
    /// when the link is emulated) with `extra` flags (`--runtime sim` unless they name
    /// a runtime).
    pub fn start(dir: &Path, name: &str, cluster: SocketAddr, token: &str, extra: &[&str]) -> Self {
        Self::start_in(None, dir, name, cluster, token, extra)
    }

    /// As [`Agent::start`], inside test bed host `host` (when given).
    pub fn start_in(
        host: Option<&crate::testbed::Host>,
        dir: &Path,
        name: &str,
        cluster: SocketAddr,
        token: &str,
        extra: &[&str],
    ) -> Self {
        let adir = dir.join(name);
        let mut args: Vec<OsString> = Vec::new();
        if !extra.contains(&"--runtime") {
            args.extend(["--runtime".into(), "sim".into()]);
        }
        args.extend::<[OsString; 8]>([
            "--cluster".into(),
            cluster.to_string().into(),
            "--name".into(),
            name.into(),
            "--join-token".into(),
            token.into(),
            "--state-dir".into(),
            adir.clone().into(),
        ]);
        args.extend(extra.iter().map(OsString::from));
        let daemon = match host {
            None => Daemon::start(bin("grove-agent"), args, dir.join(format!("{name}.log"))),
            Some(h) => {
                // `nsenter --net` execs the agent (the PID stays the agent's) and,
                // unlike `ip netns exec`, keeps the machine's /sys and its cgroups.
                let mut wrapped: Vec<OsString> =
                    vec![format!("--net={}", h.path().display()).into()];
                wrapped.push(bin("grove-agent").into());
                wrapped.extend(args);
                Daemon::start(
                    PathBuf::from("nsenter"),
                    wrapped,
                    dir.join(format!("{name}.log")),
                )
            }
        };
        Self {
            daemon,
            dir: adir,
            name: name.to_owned(),
            host: host.cloned(),
        }
    }

    /// How many instances of `service` this worker's runtime holds.
    pub fn holds(&self, service: &str) -> usize {
        std::fs::read(self.dir.join("sim-instances.cbor"))
            .map(|b| {
                b.windows(service.len())
                    .filter(|w| *w == service.as_bytes())
                    .count()
            })
            .unwrap_or(0)
    }

    /// The runtime's records as they are now.
    pub fn records(&self) -> Vec<u8> {
        std::fs::read(self.dir.join("sim-instances.cbor")).unwrap_or_default()
    }
}

/// On the test bed `bed` (host 0 entered by this thread): a root and a cluster `edge`
/// on host 0, and an agent `w<i>` with `flags` on each other host, all joined.
pub fn control_and_workers(
    bed: &crate::testbed::TestBed,
    dir: &Path,
    flags: &[&str],
) -> (Root, Cluster, Vec<Agent>) {
    let root = Root::start(dir, &[]);
    let addr = SocketAddr::new(bed.hosts[0].ip.into(), free_udp().port());
    let cluster = Cluster::start_at(dir, "edge", &root, addr, &[]);
    let agents: Vec<Agent> = (1..bed.hosts.len())
        .map(|i| {
            let name = format!("w{i}");
            Agent::start_in(
                Some(&bed.hosts[i]),
                dir,
                &name,
                addr,
                &cluster.worker_token,
                flags,
            )
        })
        .collect();
    let want = agents.len() as u64;
    wait_until(30, "every worker joined", || root.active_workers() == want);
    (root, cluster, agents)
}

/// Flags of a native agent using the registry at `registry` (HOST:PORT, plain HTTP)
/// as its docker.io mirror, offering 4 CPUs and 2 GiB whatever the machine has.
pub fn native_flags(registry: SocketAddr) -> Vec<String> {
    let host = registry.to_string();
    vec![
        "--runtime".into(),
        "native".into(),
        "--registry-mirror".into(),
        format!("docker.io=http://{host}"),
        "--insecure-registry".into(),
        host,
        "--cpus".into(),
        "4".into(),
        "--memory-mib".into(),
        "2048".into(),
    ]
}

/// Run an agent that joins with `token` (none when `None`) until it gives up (at
/// most 60 s): whether it stayed (joined) and what it said.
pub fn join_attempt(
    dir: &Path,
    name: &str,
    cluster: SocketAddr,
    token: Option<&str>,
) -> (bool, String) {
    let state = dir.join(name);
    let mut c = Command::new(bin("grove-agent"));
    c.args([
        "--runtime",
        "sim",
        "--cluster",
        &cluster.to_string(),
        "--name",
        name,
    ])
    .arg("--state-dir")
    .arg(&state)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    if let Some(t) = token {
        c.args(["--join-token", t]);
    }
    let mut child = c.spawn().expect("grove-agent");
    let deadline = Instant::now() + Duration::from_secs(60);
    let stayed = loop {
        if let Some(_status) = child.try_wait().expect("wait") {
            break false;
        }
        if Instant::now() > deadline || state.join("node.cbor").exists() {
            let _ = child.kill();
            break true;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().expect("output");
    let said =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    (stayed, said)
}

/// A test bed of 3 hosts whose host 0 this thread entered, with a registry there
/// serving busybox as docker.io's `library/busybox:latest` (`None`: a tool is missing).
pub fn bed_with_busybox(
    tag: &str,
    test: &str,
) -> Option<(crate::testbed::TestBed, PathBuf, crate::registry::Registry)> {
    let bed = crate::testbed::TestBed::new(tag, 3)?;
    for t in ["nsenter", "busybox"] {
        crate::tool(t)?;
    }
    let dir = scratch(test);
    let layout = crate::registry::make_images(&dir.join("layout"))?;
    // Everything this thread starts from now on runs on host 0.
    bed.enter(0);
    let registry = crate::registry::Registry::start_at(
        &dir.join("registry"),
        bed.hosts[0].ip,
        &crate::registry::Protection::default(),
    )?;
    registry.push(&layout, "latest", "library/busybox:latest", None);
    Some((bed, dir, registry))
}
