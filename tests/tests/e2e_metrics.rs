//! `/metrics` of a running root and cluster (with sim workers), after a deploy, read
//! with Prometheus' own parser (the Python client's OpenMetrics parser): the named
//! families are there and count what happened.

mod support;

use serde_json::{Value, json};
use std::io::Write;
use std::process::{Command, Stdio};
use support::{Agent, Cluster, Root, free_tcp, scratch, wait_until};

/// GET `url` and parse it with the Prometheus parser.
fn scrape(url: &str) -> Value {
    let text = ureq::get(url)
        .call()
        .unwrap_or_else(|e| panic!("{url}: {e}"))
        .into_string()
        .unwrap();
    let py = grove_tests::aiocoap_python().expect("the .venv's python (scripts/test-deps.sh)");
    let mut p = Command::new(py)
        .arg(grove_tests::interop_script("parse_metrics.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused {url}:\n{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The sum of a family's samples named `sample` whose labels include `labels`.
fn sum(families: &Value, family: &str, sample: &str, labels: &Value) -> f64 {
    families[family]["samples"]
        .as_array()
        .unwrap_or_else(|| panic!("no family {family}: {families}"))
        .iter()
        .filter(|s| s[0] == sample)
        .filter(|s| {
            labels
                .as_object()
                .unwrap()
                .iter()
                .all(|(k, v)| s[1].get(k) == Some(v))
        })
        .filter_map(|s| s[2].as_f64())
        .sum()
}

#[test]
fn metrics_of_root_and_cluster_parse_and_count_a_deploy() {
    grove_tests::aiocoap_python().expect("the .venv's python (scripts/test-deps.sh)");
    let dir = scratch("metrics");
    let root = Root::start(&dir, &[]);
    let port = free_tcp();
    let cluster = Cluster::start(&dir, "edge", &root, &["--metrics", &port.to_string()]);
    let room = ["--cpus", "8", "--memory-mib", "8192"];
    let _w = Agent::start(&dir, "w1", cluster.addr, &cluster.worker_token, &room);
    wait_until(30, "the worker", || root.active_workers() == 1);
    let ids = root.deploy_seed(|sla| {
        sla["applications"][0]["microservices"][1]["port"] = json!("");
    });
    root.add_instance(&ids[1]);
    wait_until(20, "the instance RUNNING", || {
        root.instances(&ids[1])
            .iter()
            .any(|i| i["status"] == "RUNNING")
    });
    // A heartbeat after the start carries the running instance's usage.
    let cluster_url = format!("http://{port}/metrics");
    wait_until(10, "the worker's usage in the cluster's metrics", || {
        let m = scrape(&cluster_url);
        sum(
            &m,
            "grove_cluster_node_cpu_percent",
            "grove_cluster_node_cpu_percent",
            &json!({}),
        ) > 0.0
    });

    let r = scrape(&format!("{}/metrics", root.base));
    let none = json!({});
    assert_eq!(
        sum(
            &r,
            "grove_instances",
            "grove_instances",
            &json!({"status": "RUNNING"})
        ),
        1.0,
        "{r}"
    );
    assert_eq!(r["grove_deploy_latency_seconds"]["type"], "histogram");
    // What a deploy must have counted: (family, sample, labels, at least).
    let at_least = |m: &Value, counted: &[(&str, &str, Value, f64)]| {
        for (family, sample, labels, min) in counted {
            let got = sum(m, family, sample, labels);
            assert!(
                got >= *min,
                "{sample} {labels} is {got}, expected at least {min}:\n{m}"
            );
        }
    };
    let some = f64::MIN_POSITIVE;
    let d = "grove_deploy_latency_seconds";
    let s = "grove_schedule_latency_seconds";
    at_least(
        &r,
        &[
            (d, "grove_deploy_latency_seconds_count", none.clone(), 1.0),
            (d, "grove_deploy_latency_seconds_sum", none.clone(), some),
            (s, "grove_schedule_latency_seconds_count", none.clone(), 1.0),
            (
                "grove_cluster_reports",
                "grove_cluster_reports_total",
                none.clone(),
                some,
            ),
            (
                "grove_coap_datagrams",
                "grove_coap_datagrams_total",
                json!({"kind": "in"}),
                some,
            ),
        ],
    );

    let c = scrape(&cluster_url);
    let (used, total) = (
        "grove_cluster_node_memory_used_bytes",
        "grove_cluster_node_memory_bytes",
    );
    at_least(
        &c,
        &[
            (
                "grove_cluster_heartbeats",
                "grove_cluster_heartbeats_total",
                none.clone(),
                some,
            ),
            (used, used, none.clone(), some),
            (total, total, none.clone(), some),
            (
                "grove_cluster_coap_datagrams",
                "grove_cluster_coap_datagrams_total",
                json!({"kind": "in"}),
                some,
            ),
        ],
    );
    assert_eq!(
        sum(
            &c,
            "grove_cluster_instances",
            "grove_cluster_instances",
            &json!({"status": "RUNNING"})
        ),
        1.0
    );
}

#[test]
fn the_grafana_dashboard_names_only_families_the_daemons_export() {
    let path = grove_tests::repo_root().join("contrib/grafana/grove.json");
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let exprs: Vec<String> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");
    // The families the two metrics modules register (their sources name them).
    let src = ["root/src/metrics.rs", "cluster/src/metrics.rs"]
        .map(|f| std::fs::read_to_string(grove_tests::repo_root().join(f)).unwrap());
    for e in &exprs {
        for name in e
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("grove_"))
        {
            let family = ["_bucket", "_count", "_sum", "_total"]
                .iter()
                .fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
            // The root's families are grove_*, the cluster's grove_cluster_*.
            let in_root = family
                .strip_prefix("grove_")
                .is_some_and(|r| src[0].contains(&format!("\"{r}\"")));
            let in_cluster = family
                .strip_prefix("grove_cluster_")
                .is_some_and(|r| src[1].contains(&format!("\"{r}\"")));
            assert!(
                in_root || in_cluster,
                "the dashboard's {name} is not exported ({e})"
            );
        }
    }
}
