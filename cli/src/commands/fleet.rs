//! `grove cluster`, `grove node` and `grove token`: the fleet and its join tokens.

use super::*;

/// `grove cluster …`.
pub fn cluster(g: &Global, cmd: &ClusterCmd) -> CmdResult {
    let ClusterCmd::Ls = cmd;
    let mut api = api(g)?;
    let list = api.call("GET", "/api/clusters/", None).map_err(err)?;
    if g.output == Output::Json {
        print_json(&list);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let agg = c["aggregation_per_architecture"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let sum = |k: &str| {
                agg.iter()
                    .filter_map(|a| a[k].as_u64())
                    .sum::<u64>()
                    .to_string()
            };
            vec![
                s(&c["cluster_id"]),
                s(&c["cluster_name"]),
                if c["evicted"] == true {
                    "evicted".into()
                } else {
                    s(&c["active"])
                },
                sum("active_nodes"),
                sum("free_millicpus"),
                sum("free_memory_mib"),
                s(&c["cluster_location"]),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "NAME",
            "ACTIVE",
            "NODES",
            "FREE_MCPU",
            "FREE_MIB",
            "LOCATION",
        ],
        &rows,
    );
    Ok(())
}

/// `grove node …`.
pub fn node(g: &Global, cmd: &NodeCmd) -> CmdResult {
    let NodeCmd::Ls { cluster } = cmd;
    let mut api = api(g)?;
    let clusters = match cluster {
        Some(c) => vec![find_cluster(&mut api, c)?],
        None => api
            .call("GET", "/api/clusters/", None)
            .map_err(err)?
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c["evicted"] != true)
            .collect(),
    };
    let mut all = Vec::new();
    for c in &clusters {
        let id = s(&c["cluster_id"]);
        match api.call("GET", &format!("/api/clusters/{id}/nodes"), None) {
            Ok(list) => {
                for mut n in list.as_array().cloned().unwrap_or_default() {
                    n["cluster"] = c["cluster_name"].clone();
                    all.push(n);
                }
            }
            Err(e) if cluster.is_none() => eprintln!("cluster {}: {e}", s(&c["cluster_name"])),
            Err(e) => return Err(e.to_string()),
        }
    }
    if g.output == Output::Json {
        print_json(&Value::Array(all));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|n| {
            let cpu = n["cpu_percent"]
                .as_f64()
                .map_or("-".into(), |c| format!("{c:.1}%"));
            let seen = n["last_seen_ms"]
                .as_u64()
                .map_or("-".into(), |ms| format!("{:.1}s ago", ms as f64 / 1000.0));
            vec![
                s(&n["cluster"]),
                s(&n["name"]),
                s(&n["id"]),
                s(&n["arch"]),
                s(&n["cpus"]),
                cpu,
                format!("{}/{}", s(&n["memory_used_mib"]), s(&n["memory_total_mib"])),
                s(&n["memory_mib"]),
                s(&n["instances"]),
                if n["active"] == true {
                    "yes".into()
                } else {
                    "no".into()
                },
                seen,
            ]
        })
        .collect();
    table(
        &[
            "CLUSTER",
            "NAME",
            "ID",
            "ARCH",
            "CPUS",
            "CPU",
            "MEM_MIB",
            "OFFERS_MIB",
            "INSTANCES",
            "ACTIVE",
            "SEEN",
        ],
        &rows,
    );
    Ok(())
}

/// `grove token …`.
pub fn token(g: &Global, cmd: &TokenCmd) -> CmdResult {
    let mut api = api(g)?;
    let base = |api: &mut Api, cluster: &Option<String>| -> Result<String, String> {
        Ok(match cluster {
            Some(c) => format!(
                "/api/clusters/{}/tokens",
                s(&find_cluster(api, c)?["cluster_id"])
            ),
            None => "/api/clusters/token".into(),
        })
    };
    match cmd {
        TokenCmd::Create {
            cluster,
            expires_in_secs,
            reusable,
        } => {
            let path = base(&mut api, cluster)?;
            let body = json!({ "expires_in_secs": expires_in_secs, "single_use": !reusable });
            let t = api.call("POST", &path, Some(body)).map_err(err)?;
            match g.output {
                Output::Json => print_json(&t),
                Output::Table => println!("{}", s(&t["token"])),
            }
            Ok(())
        }
        TokenCmd::Ls { cluster } => {
            let path = base(&mut api, cluster)?;
            let list = api.call("GET", &path, None).map_err(err)?;
            if g.output == Output::Json {
                print_json(&list);
                return Ok(());
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
            let rows: Vec<Vec<String>> = list
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    let left = t["expires_at"].as_i64().unwrap_or_default() - now;
                    vec![
                        s(&t["id"]),
                        s(&t["usable"]),
                        s(&t["single_use"]),
                        s(&t["used"]),
                        if left > 0 {
                            format!("in {left} s")
                        } else {
                            format!("{} s ago", -left)
                        },
                    ]
                })
                .collect();
            table(&["ID", "USABLE", "SINGLE_USE", "USED", "EXPIRES"], &rows);
            Ok(())
        }
        TokenCmd::Revoke { id, cluster } => {
            let path = base(&mut api, cluster)?;
            let id = id.split('.').next().unwrap_or_default();
            api.call("DELETE", &format!("{path}/{id}"), None)
                .map_err(err)?;
            eprintln!("revoked {id}");
            Ok(())
        }
    }
}
