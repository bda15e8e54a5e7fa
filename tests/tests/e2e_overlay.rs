//! The overlay end to end on the multi-host test bed: root, cluster and a registry on
//! host 0, a `grove-agent --runtime native` on hosts 1 and 2, each host a network
//! namespace made by the test. Two instances of one service land on the two workers
//! and reach each other over the kernel's VXLAN overlay, which the agents programmed
//! from what the cluster told them. Needs root (fails under CI without it).

mod support;

use serde_json::json;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::{Agent, Cluster, Root, wait_for, wait_until};

/// The IPv4 address of `eth0` inside the namespace held at `netns`.
fn address_in(netns: &Path) -> Option<String> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["ip", "-o", "-4", "addr", "show", "eth0"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let word = text
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)?;
    Some(word.split('/').next()?.to_owned())
}

/// The network namespaces of an agent's running containers, through their processes.
fn netns_of(agent: &Agent) -> Vec<PathBuf> {
    std::fs::read_dir(agent.dir.join("containers"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let pid = std::fs::read_to_string(e.path().join("pid")).ok()?;
                    let pid = pid.split_whitespace().next()?.to_owned();
                    let ns = PathBuf::from(format!("/proc/{pid}/ns/net"));
                    ns.exists().then_some(ns)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The PID of the container of `agent` whose name starts with `prefix` (a service id).
fn pid_of(agent: &Agent, prefix: &str) -> Option<String> {
    std::fs::read_dir(agent.dir.join("containers"))
        .ok()?
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .and_then(|e| std::fs::read_to_string(e.path().join("pid")).ok())
        .and_then(|t| t.split_whitespace().next().map(str::to_owned))
}

/// GET `url` from inside the network namespace of process `pid` (busybox wget, which
/// writes to `file`); the body, trimmed, or empty.
fn fetch_from(pid: &str, file: &Path, url: &str) -> String {
    let _ = std::fs::remove_file(file);
    let _ = Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args(["timeout", "3", "busybox", "wget", "-q", "-O"])
        .arg(file)
        .arg(url)
        .status();
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// A test bed of three hosts (this thread in host 0), a scratch folder, and a registry
/// on host 0 with busybox as `docker.io/library/busybox:latest`; `None` (after saying
/// what is missing) without root or tools.
#[test]
fn instances_on_two_worker_hosts_reach_each_other_over_the_overlay() {
    let Some((bed, dir, registry)) = support::bed_with_busybox("ov", "overlay") else {
        return;
    };
    let flags = support::native_flags(registry.addr);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let (root, cluster, mut agents) = support::control_and_workers(&bed, &dir, &flags);

    // The seed's application with busybox stand-ins: the server answers with its
    // instance's host name on port 80 behind rr_ip 10.30.30.30; the client asks it
    // again and again.
    let ids = root.deploy_seed(|sla| {
        let ms = &mut sla["applications"][0]["microservices"];
        ms[1]["code"] = json!("docker.io/library/busybox:latest");
        ms[1]["cmd"] = json!([
            "sh", "-c",
            "mkdir -p /www && hostname > /www/index.html && httpd -p 60 -h /www && exec httpd -f -p 80 -h /www"
        ]);
        // One-shot, so that a killed server stays dead (a service would be restarted
        // within a second and come back into the tables).
        ms[1]["one_shot"] = json!(true);
        ms[0]["code"] = json!("docker.io/library/busybox:latest");
        ms[0]["cmd"] = json!([
            "sh", "-c", // (Debian's busybox-static 1.35 wget crashes with `-O -` or `-T`: a file, and
            // `timeout`.)
            "while :; do timeout 3 wget -q -O /tmp/p http://10.30.30.30/ && cat /tmp/p; sleep 0.2; done"
        ]);
    });
    let (client, svc) = (&ids[0], &ids[1]);
    root.add_instance(svc);
    root.add_instance(svc);
    wait_until(60, "both instances RUNNING, one on each worker", || {
        let list = root.instances(svc);
        list.len() == 2
            && list.iter().all(|i| i["status"] == "RUNNING")
            && agents.iter().all(|a| netns_of(a).len() == 1)
    });
    let (na, nb) = (
        netns_of(&agents[0]).remove(0),
        netns_of(&agents[1]).remove(0),
    );
    let (a, b) = (address_in(&na).unwrap(), address_in(&nb).unwrap());
    assert_ne!(a, b);
    // Each address is in its own worker's subnet (10.18.x.y/26, different blocks).
    assert!(
        a.starts_with("10.18.") && b.starts_with("10.18."),
        "{a} {b}"
    );

    let ping = |from: &Path, to: &str| {
        Command::new("nsenter")
            .arg(format!("--net={}", from.display()))
            .args(["busybox", "ping", "-c", "1", "-W", "1", to])
            .status()
            .is_ok_and(|s| s.success())
    };
    wait_until(20, "the instance on w1 reaching the one on w2", || {
        ping(&na, &b)
    });
    assert!(ping(&nb, &a), "w2's instance does not reach w1's");

    // Through the service IP, round-robin: the client hears from both servers.
    root.add_instance(client);
    wait_until(60, "the client RUNNING", || {
        root.instances(client)
            .first()
            .is_some_and(|i| i["status"] == "RUNNING")
    });
    let client_log = || {
        agents
            .iter()
            .flat_map(|a| {
                std::fs::read_dir(a.dir.join("containers"))
                    .into_iter()
                    .flatten()
            })
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(client.as_str()))
            .map(|e| std::fs::read_to_string(e.path().join("log")).unwrap_or_default())
            .collect::<String>()
    };
    let names = [format!("{svc}-0"), format!("{svc}-1")];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !names.iter().all(|n| client_log().contains(n.as_str())) {
        if std::time::Instant::now() > deadline {
            let state: String = bed.hosts[1..]
                .iter()
                .map(|h| {
                    format!(
                        "{}:\n{}\n{}",
                        h.ns,
                        h.run(&["nft", "list", "ruleset"]).1,
                        h.run(&["ip", "route"]).1
                    )
                })
                .collect();
            let probe = |args: &[&str]| {
                let pid = agents
                    .iter()
                    .flat_map(|a| {
                        std::fs::read_dir(a.dir.join("containers"))
                            .into_iter()
                            .flatten()
                    })
                    .flatten()
                    .find(|e| e.file_name().to_string_lossy().starts_with(client.as_str()))
                    .and_then(|e| std::fs::read_to_string(e.path().join("pid")).ok())
                    .unwrap_or_default();
                let pid = pid.split_whitespace().next().unwrap_or("0").to_owned();
                let out = Command::new("nsenter")
                    .arg(format!("--net=/proc/{pid}/ns/net"))
                    .args(args)
                    .output()
                    .unwrap();
                format!(
                    "{args:?}: {} {}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                )
            };
            let p1 = probe(&[
                "busybox",
                "wget",
                "-q",
                "-T",
                "2",
                "-O",
                "-",
                "http://10.18.0.2/",
            ]);
            let p2 = probe(&["busybox", "ping", "-c", "1", "-W", "1", "10.30.30.30"]);
            let p3 = probe(&["ip", "route"]);
            let p4 = probe(&["ip", "-o", "addr"]);
            panic!(
                "no answers from both servers through 10.30.30.30:\n{}\n{state}\n{p1}\n{p2}\n{p3}\n{p4}",
                client_log().len()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    // The seed's port mapping 6080:60/tcp, over IPv4 and IPv6: each worker's own
    // address answers on 6080 with the server it hosts (host port 6080 kept the two
    // apart: one per worker).
    let server_on = |i: usize| -> String {
        std::fs::read_dir(agents[i].dir.join("containers"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|n| n.starts_with(svc.as_str()))
            .expect("a server on that worker")
    };
    for (i, h) in bed.hosts[1..3].iter().enumerate() {
        for url in [
            format!("http://{}:6080/", h.ip),
            format!("http://[{}]:6080/", h.ip6),
        ] {
            let mut body = String::new();
            wait_until(20, "the port mapping answering", || {
                body = ureq::get(&url)
                    .timeout(std::time::Duration::from_secs(2))
                    .call()
                    .ok()
                    .and_then(|r| r.into_string().ok())
                    .unwrap_or_default();
                !body.is_empty()
            });
            assert_eq!(
                body.trim(),
                server_on(i),
                "{url} answered {body:?}, not the instance on that worker"
            );
        }
    }

    // From the client's namespace: closest_ip, and the IPv6 service IPs.
    let ci = agents
        .iter()
        .position(|a| {
            std::fs::read_dir(a.dir.join("containers"))
                .unwrap()
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(client.as_str()))
        })
        .expect("the client's worker");
    let client_pid = pid_of(&agents[ci], client).expect("the client's pid");
    let scratch_file = dir.join("fetched");
    let fetch = |url: &str| fetch_from(&client_pid, &scratch_file, url);
    let doc = root.api("GET", &format!("/api/service/{svc}"), None);
    let addr_of = |k: &str| doc["addresses"][k].as_str().expect(k).to_owned();
    let closest = format!("http://{}/", addr_of("closest_ip"));
    let rr6 = format!("http://[{}]/", addr_of("rr_ip_v6"));
    let closest6 = format!("http://[{}]/", addr_of("closest_ip_v6"));
    let (near, far) = (server_on(ci), server_on(1 - ci));
    assert_eq!(
        fetch(&closest),
        near,
        "closest_ip is the server beside the client"
    );
    assert_eq!(fetch(&closest6), near, "closest_ip_v6 too");
    let mut heard = std::collections::BTreeSet::new();
    wait_until(20, "both servers answering through rr_ip_v6", || {
        heard.insert(fetch(&rr6));
        heard.contains(&near) && heard.contains(&far)
    });

    // The server beside the client dies: within 2 s it is out of every worker's
    // table, the client's requests keep being answered (by the other one), and the
    // closest is now the other one.
    let (victim_addr, survivor_addr) = if ci == 0 { (&a, &b) } else { (&b, &a) };
    let victim_pid =
        std::fs::read_to_string(agents[ci].dir.join("containers").join(&near).join("pid"))
            .ok()
            .and_then(|t| t.split_whitespace().next().map(str::to_owned))
            .expect("the server beside the client");
    let killed = std::time::Instant::now();
    assert!(
        Command::new("kill")
            .args(["-9", &victim_pid])
            .status()
            .unwrap()
            .success()
    );
    // (nsenter: lighter than `ip netns exec`, so the polling adds little to the time.)
    let rr_targets = |h: &grove_tests::testbed::Host| {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", h.path().display()))
            .args(["nft", "list", "ruleset"])
            .output()
            .unwrap();
        let r = String::from_utf8_lossy(&out.stdout).into_owned();
        r.lines()
            .find(|l| l.contains("10.30.30.30"))
            .unwrap_or_default()
            .to_owned()
    };
    wait_until(10, "the dead server out of both workers' tables", || {
        bed.hosts[1..3].iter().all(|h| {
            let rule = rr_targets(h);
            !rule.contains(&format!("{victim_addr} "))
                && !rule.contains(&format!("{victim_addr},"))
                && rule.contains(survivor_addr.as_str())
        })
    });
    let took = killed.elapsed();
    eprintln!("a dead instance was out of every table {took:?} after its death");
    assert!(took < std::time::Duration::from_secs(2), "took {took:?}");
    let before = client_log().len();
    wait_until(10, "answers after the death", || {
        let log = client_log();
        log.len() > before + 3 * names[0].len()
    });
    assert_eq!(fetch(&closest), far, "closest_ip moves to the other host");
    assert_eq!(fetch(&closest6), far, "closest_ip_v6 too");

    // Both agents SIGKILLed and restarted: they adopt what runs (same processes) and
    // the data plane is the same, each object once: links, routes, the flooding
    // entries towards the other worker, the service table. (A restarted agent makes
    // its VXLAN device afresh, so its MAC address and learned entries differ.)
    let data_plane = |h: &grove_tests::testbed::Host| {
        let mut out = Vec::new();
        for args in [
            &["ip", "-o", "link", "show"][..],
            &["ip", "route"],
            &["ip", "-6", "route"],
            &["bridge", "fdb", "show"],
            &["nft", "list", "ruleset"],
        ] {
            let (ok, text) = h.run(args);
            assert!(ok, "{args:?}: {text}");
            // Link lines carry counters and indexes that may change; names do not.
            out.extend(
                text.lines()
                    .filter(|l| args[0] != "bridge" || l.starts_with("00:00:00:00:00:00"))
                    .map(|l| {
                        if args[1] == "-o" {
                            l.split(':').nth(1).unwrap_or_default().trim().to_owned()
                        } else {
                            l.trim().to_owned()
                        }
                    }),
            );
        }
        out.sort();
        out
    };
    let pids = |a: &Agent| {
        let mut p: Vec<String> = std::fs::read_dir(a.dir.join("containers"))
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("pid")).ok())
            .collect();
        p.sort();
        p
    };
    let before: Vec<_> = bed.hosts[1..3].iter().map(data_plane).collect();
    let running_before: Vec<_> = agents.iter().map(pids).collect();
    for a in &mut agents {
        a.daemon.kill();
        a.daemon.restart();
    }
    wait_until(30, "both agents back with their cluster", || {
        agents
            .iter()
            .all(|a| a.daemon.log().matches("converged").count() >= 2)
    });
    let mut after = Vec::new();
    let same = wait_for(20, || {
        after = bed.hosts[1..3].iter().map(data_plane).collect();
        after == before
    });
    assert!(
        same,
        "the data plane after the restart differs:\nbefore {before:#?}\nafter {after:#?}"
    );
    assert_eq!(
        agents.iter().map(pids).collect::<Vec<_>>(),
        running_before,
        "the containers were adopted, not restarted"
    );
    assert_eq!(fetch(&closest), far, "service IPs still answer");

    // Deleting the application takes both down and leaves their namespaces empty.
    let apps = root.api("GET", "/api/applications/", None);
    let app = apps[0]["applicationID"].as_str().unwrap().to_owned();
    root.api("DELETE", &format!("/api/application/{app}"), None);
    wait_until(30, "the containers gone", || {
        agents.iter().all(|a| netns_of(a).is_empty())
    });
    // And their service rules and instance links with them (each agent replaces its
    // table right after).
    let instance_link = |name: &str| {
        name.len() == 15
            && name.starts_with('g')
            && name.as_bytes()[6] == b'v'
            && name[1..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b'v')
    };
    wait_until(
        10,
        "both workers' service rules and instance links gone",
        || {
            bed.hosts[1..3].iter().all(|h| {
                // (The table stays while the agent runs, with its lookup filter.)
                let (_, rules) = h.run(&["nft", "list", "ruleset"]);
                let (_, links) = h.run(&["ip", "-o", "link", "show"]);
                !rules.contains("dnat ip")
                    && !links
                        .lines()
                        .filter_map(|l| l.split(':').nth(1))
                        .any(|n| instance_link(n.trim().split('@').next().unwrap_or_default()))
            })
        },
    );
    // The workers taken out for good: `grove-agent reset` leaves nothing of them.
    for (a, h) in agents.iter_mut().zip(&bed.hosts[1..3]) {
        a.daemon.kill();
        let supervisor: i32 = std::fs::read_to_string(a.dir.join("supervisor.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let out = h
            .command(&support::bin("grove-agent"))
            .args(["--name", &a.name, "--state-dir"])
            .arg(&a.dir)
            .arg("reset")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "reset: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (_, links) = h.run(&["ip", "-o", "link", "show"]);
        let (_, tables) = h.run(&["nft", "list", "tables"]);
        assert!(
            !links.contains(": g") && !tables.contains("grove_"),
            "left behind:\n{links}\n{tables}"
        );
        assert!(!a.dir.exists(), "its state directory is gone");
        // (Gone, or a zombie its new parent has not reaped: PID 1 here reaps nothing.)
        let stat = std::fs::read_to_string(format!("/proc/{supervisor}/stat")).unwrap_or_default();
        assert!(
            stat.rsplit_once(") ")
                .is_none_or(|(_, rest)| rest.starts_with('Z')),
            "its supervisor is gone"
        );
    }
    drop((agents, cluster, root, registry));
    let _ = std::fs::remove_dir_all(&dir);
    drop(bed);
}

#[test]
fn a_client_in_one_cluster_reaches_a_service_that_runs_only_in_another() {
    let Some((bed, dir, registry)) = support::bed_with_busybox("xc", "cross-cluster") else {
        return;
    };
    let control = bed.hosts[0].ip;
    let root = Root::start(&dir, &[]);
    // Two clusters on host 0; worker w1 (host 1) joins "near", w2 (host 2) "far".
    let clusters: Vec<(Cluster, SocketAddr)> = ["near", "far"]
        .iter()
        .map(|name| {
            let addr = SocketAddr::new(control.into(), support::free_udp().port());
            // (Entries no worker uses are dropped after 2 s instead of a minute.)
            let idle = ["--directory-idle-secs", "2"];
            (Cluster::start_at(&dir, name, &root, addr, &idle), addr)
        })
        .collect();
    let mut flags = support::native_flags(registry.addr);
    flags.extend(["--lookup-idle-secs".into(), "2".into()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut agents: Vec<Agent> = [1, 2]
        .iter()
        .map(|&i| {
            let (c, addr) = &clusters[i - 1];
            Agent::start_in(
                Some(&bed.hosts[i]),
                &dir,
                &format!("x{i}"),
                *addr,
                &c.worker_token,
                &flags,
            )
        })
        .collect();
    wait_until(30, "both workers", || root.active_workers() == 2);

    // The server only in "far", the client only in "near", asking through the
    // service's round-robin IP and its IPv6 one.
    let ids = root.deploy_seed(|sla| {
        let ms = &mut sla["applications"][0]["microservices"];
        ms[1]["code"] = json!("docker.io/library/busybox:latest");
        ms[1]["cmd"] = json!([
            "sh", "-c",
            "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www"
        ]);
        ms[1]["port"] = json!(null);
        ms[1]["constraints"] = json!([{"type": "direct", "cluster": "far"}]);
        ms[0]["code"] = json!("docker.io/library/busybox:latest");
        ms[0]["cmd"] = json!([
            "sh", "-c",
            "while :; do timeout 3 wget -q -O /tmp/p http://10.30.30.30/ && cat /tmp/p; sleep 0.2; done"
        ]);
        ms[0]["constraints"] = json!([{"type": "direct", "cluster": "near"}]);
    });
    let (client, svc) = (&ids[0], &ids[1]);
    root.add_instance(svc);
    wait_until(60, "the server RUNNING in the far cluster", || {
        root.instances(svc)
            .first()
            .is_some_and(|i| i["status"] == "RUNNING")
            && netns_of(&agents[1]).len() == 1
    });
    root.add_instance(client);
    let server = format!("{svc}-0");
    let client_log = || {
        std::fs::read_dir(agents[0].dir.join("containers"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(client.as_str()))
            .map(|e| std::fs::read_to_string(e.path().join("log")).unwrap_or_default())
            .collect::<String>()
    };
    let started = std::time::Instant::now();
    let reached = wait_for(60, || client_log().contains(&server));
    if !reached {
        let state: String = bed.hosts[1..]
            .iter()
            .map(|h| {
                format!(
                    "{}:\n{}\n{}\n{}",
                    h.ns,
                    h.run(&["nft", "list", "ruleset"]).1,
                    h.run(&["ip", "route"]).1,
                    h.run(&["bridge", "fdb", "show"]).1
                )
            })
            .collect();
        let logs: String = agents.iter().map(|a| a.daemon.log()).collect();
        panic!(
            "the client in 'near' never heard from the server in 'far':\n{}\n{state}\n{logs}",
            client_log()
        );
    }
    eprintln!(
        "the client reached the other cluster's server {:?} after it was asked for",
        started.elapsed()
    );
    // Over IPv6 too: the service's round-robin IPv6, from the client's namespace.
    let doc = root.api("GET", &format!("/api/service/{svc}"), None);
    let rr6 = format!(
        "http://[{}]/",
        doc["addresses"]["rr_ip_v6"].as_str().expect("rr_ip_v6")
    );
    let client_pid = pid_of(&agents[0], client).expect("the client's pid");
    let file = dir.join("fetched");
    wait_until(20, "the far server over IPv6", || {
        fetch_from(&client_pid, &file, &rr6) == server
    });
    // The client's worker holds the looked-up service, and logs its use.
    let (_, rules) = bed.hosts[1].run(&["nft", "list", "ruleset"]);
    assert!(
        rules
            .lines()
            .any(|l| l.contains("10.30.30.30") && l.contains("log group")),
        "{rules}"
    );
    // The two workers reach each other only because of that interest: each has a
    // flooding entry towards the other.
    let floods_to = |from: usize, to: usize| {
        let (_, fdb) = bed.hosts[from].run(&["bridge", "fdb", "show"]);
        let dst = format!("dst {} ", bed.hosts[to].ip);
        fdb.lines()
            .any(|l| l.starts_with("00:00:00:00:00:00") && l.contains(&dst))
    };
    assert!(floods_to(1, 2) && floods_to(2, 1));

    // The client goes: its worker drops the entry once unused, the cluster ends its
    // interest at the root, and both clusters' workers stop reaching each other.
    root.api("DELETE", &format!("/api/service/{client}"), None);
    wait_until(
        30,
        "the looked-up service and the cross-cluster reach gone",
        || {
            let (_, rules) = bed.hosts[1].run(&["nft", "list", "ruleset"]);
            !rules.contains("10.30.30.30 log") && !floods_to(1, 2) && !floods_to(2, 1)
        },
    );
    assert_eq!(
        fetch_from(
            &pid_of(&agents[1], svc).unwrap(),
            &file,
            "http://127.0.0.1/"
        ),
        server,
        "the server itself is untouched"
    );

    let apps = root.api("GET", "/api/applications/", None);
    let app = apps[0]["applicationID"].as_str().unwrap().to_owned();
    root.api("DELETE", &format!("/api/application/{app}"), None);
    wait_until(30, "the containers gone", || {
        agents.iter().all(|a| netns_of(a).is_empty())
    });
    for (a, h) in agents.iter_mut().zip(&bed.hosts[1..3]) {
        a.daemon.kill();
        let reset = h
            .command(&support::bin("grove-agent"))
            .args(["--name", &a.name, "--state-dir"])
            .arg(&a.dir)
            .arg("reset")
            .status();
        assert!(reset.is_ok_and(|s| s.success()));
    }
    drop((agents, clusters, root, registry));
    let _ = std::fs::remove_dir_all(&dir);
    drop(bed);
}

/// `coap-client-notls` GET of the discovery resource at `addr`, run in the network
/// namespace at `netns`; whether it got an answer.
fn coap_discovery_from(netns: &str, addr: SocketAddr) -> bool {
    let out = Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .args(["coap-client-notls", "-m", "get", "-B", "3"])
        .arg(format!(
            "coap://{}:{}/.well-known/core",
            addr.ip(),
            addr.port()
        ))
        .output()
        .expect("coap-client-notls");
    String::from_utf8_lossy(&out.stdout).contains("</")
}

/// A TCP connection from the network namespace at `netns` to `ip:port` (busybox nc,
/// 3 s); whether it was made.
fn tcp_from(netns: &str, ip: &str, port: u16) -> bool {
    Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .args([
            "timeout",
            "4",
            "busybox",
            "nc",
            "-w",
            "3",
            ip,
            &port.to_string(),
        ])
        .stdin(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn instances_cannot_reach_their_worker_or_the_cluster_s_control_port() {
    let Some((bed, dir, registry)) = support::bed_with_busybox("iso", "isolation-net") else {
        return;
    };
    grove_tests::tool("coap-client-notls").expect("coap-client-notls");
    let flags = support::native_flags(registry.addr);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let (root, cluster, agents) = support::control_and_workers(&bed, &dir, &flags);
    let ids = root.deploy_seed(|sla| {
        let ms = &mut sla["applications"][0]["microservices"];
        ms[1]["code"] = json!("docker.io/library/busybox:latest");
        ms[1]["cmd"] = json!(["sleep", "100000"]);
        ms[1]["port"] = json!("");
    });
    root.add_instance(&ids[1]);
    wait_until(60, "the instance RUNNING", || {
        root.instances(&ids[1])
            .iter()
            .any(|i| i["status"] == "RUNNING")
            && agents.iter().any(|a| netns_of(a).len() == 1)
    });
    let (agent, host) = agents
        .iter()
        .zip(&bed.hosts[1..])
        .find(|(a, _)| netns_of(a).len() == 1)
        .unwrap();
    let container = netns_of(agent).remove(0).display().to_string();
    let worker = host.path().display().to_string();

    // The cluster's CoAP port answers the worker itself, not its instance.
    assert!(
        coap_discovery_from(&worker, cluster.addr),
        "the probe works from the worker"
    );
    assert!(
        !coap_discovery_from(&container, cluster.addr),
        "an instance reached the cluster's control port"
    );

    // Something listening on the worker (its underlay address, or the instances'
    // gateway): the instance cannot connect, another host can.
    let gateway = {
        let out = Command::new("nsenter")
            .arg(format!("--net={container}"))
            .args(["ip", "-4", "route", "show", "default"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split_whitespace()
            .skip_while(|w| *w != "via")
            .nth(1)
            .unwrap_or_else(|| panic!("no default route: {text}"))
            .to_owned()
    };
    for (target, port) in [(host.ip.to_string(), 7781), (gateway.clone(), 7782)] {
        let mut listener = host
            .command(&grove_tests::tool("busybox").unwrap())
            .args(["nc", "-l", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let listening = || {
            let (_, out) = host.run(&["ss", "-ltn"]);
            out.contains(&format!(":{port} "))
        };
        wait_until(10, "the listener on the worker", listening);
        assert!(
            !tcp_from(&container, &target, port),
            "an instance connected to its worker at {target}:{port}"
        );
        assert!(listening(), "the listener took a connection");
        // The control: host 0 (this thread's) connects to the worker's address.
        if target == host.ip.to_string() {
            assert!(tcp_from(
                &bed.hosts[0].path().display().to_string(),
                &target,
                port
            ));
        }
        let _ = listener.kill();
        let _ = listener.wait();
    }
    // The instance still reaches what it should: ICMP to its gateway answers.
    let ping = Command::new("nsenter")
        .arg(format!("--net={container}"))
        .args(["busybox", "ping", "-c", "1", "-W", "2", &gateway])
        .output()
        .unwrap();
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stdout)
    );
}
