//! The `grove` CLI against a running system on the test bed: root and cluster on
//! host 0, `grove-agent --runtime native` on hosts 1 and 2 running busybox containers
//! from a loopback registry, and a sim worker that joins with a token the CLI made
//! through the root. Every command runs as a user runs it, a child process with its
//! configuration in `$XDG_CONFIG_HOME/grove/`. Needs root (fails under CI without it).

mod support;

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{Agent, bin, wait_until};

/// `grove` with its configuration under `home`.
struct Grove {
    home: PathBuf,
}

/// What a command did: success, stdout, stderr.
type Ran = (bool, String, String);

impl Grove {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin("grove"));
        c.args(args)
            .env("XDG_CONFIG_HOME", self.home.join("xdg"))
            .env("HOME", &self.home)
            .env_remove("GROVE_CLI_CONFIG")
            .env_remove("GROVE_ROOT")
            .env_remove("GROVE_OUTPUT")
            .env_remove("GROVE_PASSWORD");
        c
    }

    fn run_with(&self, args: &[&str], stdin: &str) -> Ran {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("grove");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn run(&self, args: &[&str]) -> Ran {
        self.run_with(args, "")
    }

    /// Run; it must succeed. Its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args);
        assert!(ok, "grove {}: failed:\n{out}\n{err}", args.join(" "));
        out
    }

    /// Run with `--output json`; it must succeed. Its JSON.
    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["--output", "json"]);
        let out = self.ok(&a);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("grove {args:?}: {e}:\n{out}"))
    }

    /// Run; it must fail. Its stderr.
    fn fails(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args);
        assert!(!ok, "grove {}: succeeded:\n{out}\n{err}", args.join(" "));
        err
    }
}

fn names(list: &Value, key: &str) -> Vec<String> {
    let mut v: Vec<String> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x[key].as_str().map(str::to_owned))
        .collect();
    v.sort();
    v
}

/// The seed's SLA with busybox stand-ins: the client counts, a line every 0.2 s; the
/// server serves a page.
fn sla_file(dir: &Path) -> PathBuf {
    let mut sla = support::seed();
    let ms = &mut sla["applications"][0]["microservices"];
    ms[0]["code"] = json!("docker.io/library/busybox:latest");
    ms[0]["cmd"] = json!([
        "sh",
        "-c",
        "i=0; while :; do i=$((i+1)); echo \"tick $i\"; sleep 0.2; done"
    ]);
    ms[1]["code"] = json!("docker.io/library/busybox:latest");
    ms[1]["cmd"] = json!([
        "sh",
        "-c",
        "mkdir -p /www && echo hello > /www/index.html && exec httpd -f -p 80 -h /www"
    ]);
    let path = dir.join("sla.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&sla).unwrap()).unwrap();
    path
}

/// The highest `tick N` in `text`.
fn last_tick(text: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.strip_prefix("tick ")?.trim().parse().ok())
        .max()
        .unwrap_or(0)
}

#[test]
fn every_cli_command_works_against_root_cluster_and_agents_on_the_test_bed() {
    if !grove_tests::have_root("native workers on the test bed") {
        return;
    }
    let Some((bed, dir, registry)) = support::bed_with_busybox("cli", "cli") else {
        return;
    };
    let flags = support::native_flags(registry.addr);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let (root, cluster, _agents) = support::control_and_workers(&bed, &dir, &flags);
    let g = Grove {
        home: dir.join("home"),
    };

    // Plain words for not being logged in, and for a root that is not there.
    assert!(g.fails(&["app", "ls"]).contains("grove login"));
    let (ok, _, err) = g.run_with(
        &["--root", "http://127.0.0.1:1", "login", "--password-stdin"],
        "x\n",
    );
    assert!(
        !ok && err.contains("cannot reach the root at http://127.0.0.1:1"),
        "{err}"
    );

    // login: a wrong password is refused; the right one is kept, privately.
    let (ok, _, err) = g.run_with(
        &["--root", &root.base, "login", "--password-stdin"],
        "nope\n",
    );
    assert!(!ok && err.contains("invalid username or password"), "{err}");
    let (ok, _, err) = g.run_with(
        &["--root", &root.base, "login", "--password-stdin"],
        "Admin\n",
    );
    assert!(ok, "{err}");
    let config = g.home.join("xdg/grove/config.toml");
    let text = std::fs::read_to_string(&config).expect("the saved configuration");
    assert!(
        text.contains(&root.base) && text.contains("token = "),
        "{text}"
    );
    let mode = std::fs::metadata(&config).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the configuration holds tokens");

    // cluster ls, node ls (asked of the cluster: the workers' own figures).
    let clusters = g.json(&["cluster", "ls"]);
    assert_eq!(names(&clusters, "cluster_name"), ["edge"]);
    assert_eq!(clusters[0]["active"], true, "{clusters}");
    assert!(g.ok(&["cluster", "ls"]).contains("edge"));
    // (Usage comes with each worker's next heartbeat, within 2 s.)
    wait_until(10, "both workers' usage", || {
        let nodes = g.json(&["node", "ls"]);
        nodes.as_array().is_some_and(|l| {
            l.len() == 2 && l.iter().all(|n| n["memory_total_mib"].as_u64() > Some(0))
        })
    });
    let nodes = g.json(&["node", "ls"]);
    assert_eq!(names(&nodes, "name"), ["w1", "w2"], "{nodes}");
    for n in nodes.as_array().unwrap() {
        assert_eq!(
            (n["cpus"].as_u64(), n["memory_mib"].as_u64()),
            (Some(4), Some(2048)),
            "{n}"
        );
        assert_eq!(n["active"], true, "{n}");
        assert!(
            n["last_seen_ms"].as_u64().is_some_and(|ms| ms < 6000),
            "{n}"
        );
        assert_eq!(n["cluster"], "edge");
        let (used, total) = (
            n["memory_used_mib"].as_u64(),
            n["memory_total_mib"].as_u64(),
        );
        assert!(used > Some(0) && used <= total, "the machine's memory: {n}");
        assert!(
            n["cpu_percent"]
                .as_f64()
                .is_some_and(|c| (0.0..=100.0).contains(&c)),
            "{n}"
        );
    }
    let table = g.ok(&["node", "ls", "--cluster", "edge"]);
    assert!(
        table.lines().filter(|l| l.starts_with("edge ")).count() == 2,
        "{table}"
    );

    // Worker join tokens, made by the root through the cluster: one joins a worker.
    let token = g
        .ok(&["token", "create", "--cluster", "edge"])
        .trim()
        .to_owned();
    let id = token.split('.').next().unwrap().to_owned();
    assert_eq!(token.len(), 16 + 1 + 32, "{token}");
    // (A sim worker with no room: the services below run in containers, not there.)
    let _w3 = Agent::start(&dir, "w3", cluster.addr, &token, &["--memory-mib", "1"]);
    wait_until(30, "w3 listed by `grove node ls`", || {
        names(&g.json(&["node", "ls"]), "name") == ["w1", "w2", "w3"]
    });
    let listed = g.json(&["token", "ls", "--cluster", "edge"]);
    let mine = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id.as_str())
        .unwrap_or_else(|| panic!("{id} not listed: {listed}"));
    assert_eq!(
        (&mine["used"], &mine["usable"]),
        (&json!(true), &json!(false)),
        "{mine}"
    );
    assert!(
        mine.get("token").is_none(),
        "a listed token carries its secret: {mine}"
    );
    // A revoked one joins nothing.
    let revoked = g.ok(&["token", "create", "--cluster", "edge", "--reusable"]);
    let revoked = revoked.trim();
    let rid = revoked.split('.').next().unwrap();
    g.ok(&["token", "revoke", "--cluster", "edge", rid]);
    let listed = g.json(&["token", "ls", "--cluster", "edge"]);
    assert!(!names(&listed, "id").contains(&rid.to_owned()), "{listed}");
    let (stayed, said) = support::join_attempt(&dir, "w4", cluster.addr, Some(revoked));
    assert!(!stayed && said.contains("join token"), "{said}");
    // Cluster join tokens.
    let ct = g.ok(&["token", "create", "--expires-in-secs", "600"]);
    let cid = ct.trim().split('.').next().unwrap().to_owned();
    let usable = |g: &Grove| {
        g.json(&["token", "ls"])
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == cid.as_str() && t["usable"] == true)
    };
    assert!(usable(&g));
    g.ok(&["token", "revoke", &cid]);
    assert!(!usable(&g));

    // app deploy: live progress until every instance is RUNNING.
    let sla = sla_file(&dir);
    let (ok, out, err) = g.run(&["app", "deploy", sla.to_str().unwrap()]);
    assert!(ok, "deploy failed:\n{out}\n{err}\n{}", root.daemon.log());
    for s in ["clientsrvr.curl.0", "clientsrvr.nginx.0"] {
        assert!(
            err.lines()
                .any(|l| l.contains(s) && l.contains("RUNNING on node-")),
            "no RUNNING line for {s}:\n{err}"
        );
    }
    assert!(err.contains("every instance is up"), "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");

    // app and service listings.
    assert!(g.ok(&["app", "ls"]).contains("clientsrvr"));
    let shown = g.json(&["app", "show", "clientsrvr"]);
    assert_eq!(
        names(&shown["services"], "microservice_name"),
        ["curl", "nginx"]
    );
    let services = g.ok(&["service", "ls"]);
    assert!(
        services
            .lines()
            .any(|l| l.contains("clientsrvr.curl") && l.contains("RUNNING")),
        "{services}"
    );
    assert!(g.ok(&["service", "show", "curl"]).contains("RUNNING"));

    // logs: the container's own output, read by its worker through its cluster.
    wait_until(10, "ticks in the log", || {
        last_tick(&g.ok(&["logs", "curl"])) >= 3
    });
    let tail = g.ok(&["logs", "clientsrvr.curl", "--tail", "20"]);
    assert!(!tail.is_empty() && tail.len() <= 20, "{tail:?}");
    let seen = last_tick(&g.ok(&["logs", "curl"]));
    let mut follow = g
        .command(&["logs", "curl", "--follow", "--tail", "100"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    let start = Instant::now();
    let mut followed = 0;
    while followed < seen + 10 && start.elapsed() < Duration::from_secs(30) {
        match lines.next() {
            Some(Ok(l)) => followed = followed.max(last_tick(&l)),
            _ => break,
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(
        followed >= seen + 10,
        "`logs -f` stopped at tick {followed} (had {seen})"
    );

    // scale, instance add/rm.
    g.ok(&["service", "scale", "curl", "2"]);
    wait_until(60, "two curl instances RUNNING", || {
        let v = g.json(&["service", "show", "curl"]);
        let list = v["instance_list"].as_array().cloned().unwrap_or_default();
        list.len() == 2 && list.iter().all(|i| i["status"] == "RUNNING")
    });
    wait_until(10, "instance 1's own log", || {
        last_tick(&g.ok(&["logs", "curl", "--instance", "1"])) >= 1
    });
    g.ok(&["instance", "rm", "curl", "1"]);
    let numbers = |g: &Grove| {
        let v = g.json(&["service", "show", "curl"]);
        v["instance_list"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|i| i["instance_number"].as_u64())
            .collect::<Vec<_>>()
    };
    assert_eq!(numbers(&g), [0]);
    let added: u64 = g.ok(&["instance", "add", "curl"]).trim().parse().unwrap();
    assert_eq!(numbers(&g), [0, added]);
    g.ok(&["service", "scale", "curl", "1"]);
    assert_eq!(numbers(&g), [0]);

    // update: a rolling replacement to a new spec, watched until it runs everywhere.
    let mut spec = support::seed()["applications"][0]["microservices"][0].clone();
    spec["code"] = json!("docker.io/library/busybox:latest");
    spec["cmd"] = json!(["sh", "-c", "while :; do echo tock; sleep 0.2; done"]);
    let spec_file = dir.join("curl-v2.json");
    std::fs::write(&spec_file, spec.to_string()).unwrap();
    let (ok, _, err) = g.run(&["service", "update", "curl", spec_file.to_str().unwrap()]);
    assert!(
        ok && err.contains("every instance runs the new spec"),
        "{err}"
    );
    let v = g.json(&["service", "show", "curl"]);
    let n = v["instance_list"][0]["instance_number"]
        .as_u64()
        .unwrap()
        .to_string();
    wait_until(10, "the new spec's output in the log", || {
        g.ok(&["logs", "curl", "--instance", &n]).contains("tock")
    });

    // An invalid SLA names the failing field; a file that is not JSON says so.
    let mut bad = support::seed();
    bad["applications"][0]["application_name"] = json!("broken");
    bad["applications"][0]["microservices"][0]["memory"] = json!(-5);
    let bad_file = dir.join("bad.json");
    std::fs::write(&bad_file, bad.to_string()).unwrap();
    let err = g.fails(&["app", "deploy", bad_file.to_str().unwrap()]);
    assert!(
        err.contains("applications[0].microservices[0].memory: -5"),
        "{err}"
    );
    std::fs::write(&bad_file, "{ nope").unwrap();
    assert!(
        g.fails(&["app", "deploy", bad_file.to_str().unwrap()])
            .contains("not JSON")
    );

    // rm.
    g.ok(&["service", "rm", "nginx"]);
    assert_eq!(
        names(&g.json(&["service", "ls"]), "microservice_name"),
        ["curl"]
    );
    g.ok(&["app", "rm", "clientsrvr"]);
    assert_eq!(g.json(&["app", "ls"]), json!([]));

    // Completions.
    assert!(g.ok(&["completions", "bash"]).contains("_grove()"));
    assert!(g.ok(&["completions", "zsh"]).contains("#compdef grove"));

    // logout: the token is revoked and forgotten.
    g.ok(&["logout"]);
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(!text.contains("token = "), "{text}");
    assert!(g.fails(&["app", "ls"]).contains("grove login"));
}

#[test]
fn the_cli_logs_in_over_https_trusting_the_ca_it_is_given_and_only_then() {
    let dir = support::scratch("cli-tls");
    let Some((ca, cert, key)) = grove_tests::registry::make_certs(&dir.join("certs")) else {
        return;
    };
    let http = support::free_tcp();
    let args: Vec<std::ffi::OsString> = vec![
        "--data-dir".into(),
        dir.join("root").into(),
        "--admin-password".into(),
        "Admin".into(),
        "--http".into(),
        http.to_string().into(),
        "--coap".into(),
        support::free_udp().to_string().into(),
        "--tls-cert".into(),
        cert.into(),
        "--tls-key".into(),
        key.into(),
    ];
    let root = support::Daemon::start(bin("grove-root"), args, dir.join("root.log"));
    let g = Grove {
        home: dir.join("home"),
    };
    let base = format!("https://{http}");
    let ca = ca.to_str().unwrap().to_owned();
    let login = [
        "--root",
        &base,
        "login",
        "--password-stdin",
        "--ca-cert",
        &ca,
    ];
    wait_until(30, "a login over HTTPS", || g.run_with(&login, "Admin\n").0);
    // The CA is kept with the root: later commands trust it too.
    assert_eq!(g.json(&["cluster", "ls"]), json!([]));
    // A client that was not given the CA refuses the root's certificate, saying so.
    let other = Grove {
        home: dir.join("other"),
    };
    let (ok, _, err) = other.run_with(&["--root", &base, "login", "--password-stdin"], "Admin\n");
    assert!(
        !ok && err.contains("cannot reach the root") && err.contains("certificate"),
        "{err}"
    );
    drop(root);
}
