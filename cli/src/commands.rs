//! The client commands of `grove`: each one calls the root's API and prints a table or
//! the API's JSON (`--output json`).

use crate::client::{Api, ApiError, Config, config_path};
use crate::progress::{Outcome, Watch};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};
use std::io::Write;
use std::time::{Duration, Instant};

mod args;
mod fleet;
mod session;

pub use args::*;
pub use fleet::{cluster, node, token};
pub use session::{login, logout};

/// Why a command failed.
pub type CmdResult = Result<(), String>;

fn err(e: ApiError) -> String {
    e.to_string()
}

/// A client of the configured root.
pub fn api(g: &Global) -> Result<Api, String> {
    let path = config_path();
    Api::new(Config::load(&path)?, g.root.clone(), Some(path))
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// Print rows under headers, each column as wide as its widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut width: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&width).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        println!("{}", s.trim_end());
    };
    line(headers.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(t) => t.clone(),
        other => other.to_string(),
    }
}

fn looks_like_id(s: &str) -> bool {
    s.len() == 24 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The caller's applications (every user's with `all`).
fn applications(api: &mut Api, all: bool) -> Result<Vec<Value>, String> {
    let path = if all {
        "/api/applications/".to_owned()
    } else {
        let id = api
            .config
            .user_id
            .clone()
            .ok_or("not logged in: run `grove login`")?;
        format!("/api/applications/{id}")
    };
    let v = api.call("GET", &path, None).map_err(err)?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

fn find_app(api: &mut Api, name: &str) -> Result<Value, String> {
    if looks_like_id(name) {
        return api
            .call("GET", &format!("/api/application/{name}"), None)
            .map_err(err);
    }
    let apps = applications(api, false)?;
    let found: Vec<&Value> = apps
        .iter()
        .filter(|a| {
            let (n, ns) = (s(&a["application_name"]), s(&a["application_namespace"]));
            n == name || format!("{n}.{ns}") == name
        })
        .collect();
    match found.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(format!("no application named {name:?}")),
        _ => Err(format!(
            "{name:?} names several applications: give name.namespace or the id"
        )),
    }
}

fn services_of(api: &mut Api, app: &Value) -> Result<Vec<Value>, String> {
    let id = s(&app["applicationID"]);
    let v = api
        .call("GET", &format!("/api/services/{id}"), None)
        .map_err(err)?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

fn find_service(api: &mut Api, name: &str) -> Result<Value, String> {
    if looks_like_id(name) {
        return api
            .call("GET", &format!("/api/service/{name}"), None)
            .map_err(err);
    }
    let mut found = Vec::new();
    for app in applications(api, false)? {
        for svc in services_of(api, &app)? {
            let (a, n) = (s(&svc["app_name"]), s(&svc["microservice_name"]));
            if n == name || format!("{a}.{n}") == name || s(&svc["job_name"]) == name {
                found.push(svc);
            }
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(format!("no service named {name:?}")),
        _ => Err(format!(
            "{name:?} names several services: give app.service or the id"
        )),
    }
}

fn find_cluster(api: &mut Api, name: &str) -> Result<Value, String> {
    let list = api.call("GET", "/api/clusters/", None).map_err(err)?;
    list.as_array()
        .into_iter()
        .flatten()
        .find(|c| s(&c["cluster_name"]) == name || s(&c["cluster_id"]) == name)
        .cloned()
        .ok_or_else(|| format!("no cluster named {name:?}"))
}

fn instances(svc: &Value) -> Vec<Value> {
    svc["instance_list"].as_array().cloned().unwrap_or_default()
}

fn read_json(path: &str) -> Result<Value, String> {
    let text = if path == "-" {
        let mut t = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut t)
            .map_err(|e| format!("standard input: {e}"))?;
        t
    } else {
        std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?
    };
    serde_json::from_str(&text).map_err(|e| format!("{path}: not JSON: {e}"))
}

/// `grove app …`.
pub fn app(g: &Global, cmd: &AppCmd) -> CmdResult {
    let mut api = api(g)?;
    match cmd {
        AppCmd::Deploy {
            sla,
            instances,
            no_wait,
            timeout,
        } => deploy(&mut api, g, sla, *instances, *no_wait, *timeout),
        AppCmd::Ls { all } => {
            let apps = applications(&mut api, *all)?;
            if g.output == Output::Json {
                print_json(&Value::Array(apps));
                return Ok(());
            }
            let rows: Vec<Vec<String>> = apps
                .iter()
                .map(|a| {
                    vec![
                        s(&a["applicationID"]),
                        s(&a["application_name"]),
                        s(&a["application_namespace"]),
                        a["microservices"]
                            .as_array()
                            .map_or(0, Vec::len)
                            .to_string(),
                        s(&a["application_desc"]),
                    ]
                })
                .collect();
            table(
                &["ID", "NAME", "NAMESPACE", "SERVICES", "DESCRIPTION"],
                &rows,
            );
            Ok(())
        }
        AppCmd::Show { app } => {
            let a = find_app(&mut api, app)?;
            let services = services_of(&mut api, &a)?;
            if g.output == Output::Json {
                let mut a = a;
                a["services"] = Value::Array(services);
                print_json(&a);
                return Ok(());
            }
            println!(
                "application {}.{} ({})",
                s(&a["application_name"]),
                s(&a["application_namespace"]),
                s(&a["applicationID"])
            );
            print_services(&services);
            Ok(())
        }
        AppCmd::Rm { app } => {
            let a = find_app(&mut api, app)?;
            let id = s(&a["applicationID"]);
            api.call("DELETE", &format!("/api/application/{id}"), None)
                .map_err(err)?;
            eprintln!("deleted application {} ({id})", s(&a["application_name"]));
            Ok(())
        }
    }
}

fn print_services(services: &[Value]) {
    let rows: Vec<Vec<String>> = services
        .iter()
        .map(|v| {
            let list = instances(v);
            let running = list.iter().filter(|i| i["status"] == "RUNNING").count();
            vec![
                s(&v["microserviceID"]),
                format!("{}.{}", s(&v["app_name"]), s(&v["microservice_name"])),
                s(&v["status"]),
                format!("{running}/{}", list.len()),
                s(&v["RR_ip"]),
                s(&v["code"]),
            ]
        })
        .collect();
    table(
        &["ID", "SERVICE", "STATUS", "RUNNING", "SERVICE_IP", "IMAGE"],
        &rows,
    );
}

fn deploy(
    api: &mut Api,
    g: &Global,
    path: &str,
    count: u32,
    no_wait: bool,
    timeout: u64,
) -> CmdResult {
    let sla = read_json(path)?;
    let wanted: Vec<(String, String)> = sla["applications"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| (s(&a["application_name"]), s(&a["application_namespace"])))
        .collect();
    let apps = api
        .call("POST", "/api/application/", Some(sla))
        .map_err(|e| format!("{path}: {e}"))?;
    let mut services = Vec::new();
    for a in apps.as_array().into_iter().flatten() {
        let key = (s(&a["application_name"]), s(&a["application_namespace"]));
        if !wanted.contains(&key) {
            continue;
        }
        for id in a["microservices"].as_array().into_iter().flatten() {
            let id = s(id);
            let doc = api
                .call("GET", &format!("/api/service/{id}"), None)
                .map_err(err)?;
            services.push((id, format!("{}.{}", key.0, s(&doc["microservice_name"]))));
        }
    }
    let start = Instant::now();
    let say = |line: &str| eprintln!("{:>7.2}s  {line}", start.elapsed().as_secs_f64());
    for (id, name) in &services {
        for _ in 0..count {
            api.call("POST", &format!("/api/service/{id}/instance"), None)
                .map_err(|e| format!("{name}: {e}"))?;
        }
    }
    say(&format!(
        "deployed {} service(s), {count} instance(s) each",
        services.len()
    ));
    let ids: Vec<String> = services.iter().map(|(id, _)| id.clone()).collect();
    let outcome = if no_wait {
        Outcome::Pending
    } else {
        let deadline = start + Duration::from_secs(timeout);
        Watch::new(services.clone()).until(api, deadline, say)?
    };
    if g.output == Output::Json {
        let mut docs = Vec::new();
        for id in &ids {
            docs.push(
                api.call("GET", &format!("/api/service/{id}"), None)
                    .map_err(err)?,
            );
        }
        print_json(&Value::Array(docs));
    } else {
        for (id, name) in &services {
            println!("{id}  {name}");
        }
    }
    match outcome {
        Outcome::Done => {
            say("every instance is up");
            Ok(())
        }
        Outcome::Failed(why) => Err(why),
        Outcome::Pending if no_wait => Ok(()),
        Outcome::Pending => Err(format!("not every instance was up within {timeout} s")),
    }
}

/// `grove service …`.
pub fn service(g: &Global, cmd: &ServiceCmd) -> CmdResult {
    let mut api = api(g)?;
    match cmd {
        ServiceCmd::Ls { app } => {
            let apps = match app {
                Some(a) => vec![find_app(&mut api, a)?],
                None => applications(&mut api, false)?,
            };
            let mut all = Vec::new();
            for a in &apps {
                all.extend(services_of(&mut api, a)?);
            }
            if g.output == Output::Json {
                print_json(&Value::Array(all));
            } else {
                print_services(&all);
            }
            Ok(())
        }
        ServiceCmd::Show { service } => {
            let v = find_service(&mut api, service)?;
            if g.output == Output::Json {
                print_json(&v);
                return Ok(());
            }
            println!(
                "service {}.{} ({}), {}, service IP {}",
                s(&v["app_name"]),
                s(&v["microservice_name"]),
                s(&v["microserviceID"]),
                s(&v["status"]),
                s(&v["RR_ip"])
            );
            let rows: Vec<Vec<String>> = instances(&v)
                .iter()
                .map(|i| {
                    vec![
                        s(&i["instance_number"]),
                        s(&i["status"]),
                        s(&i["cluster_id"]),
                        s(&i["worker_id"]),
                        s(&i["instance_ip"]),
                        s(&i["status_detail"]),
                    ]
                })
                .collect();
            table(
                &["INSTANCE", "STATUS", "CLUSTER", "WORKER", "IP", "DETAIL"],
                &rows,
            );
            Ok(())
        }
        ServiceCmd::Update {
            service,
            spec,
            no_wait,
            timeout,
        } => update(&mut api, g, service, spec, *no_wait, *timeout),
        ServiceCmd::Scale {
            service,
            instances: want,
        } => {
            let v = find_service(&mut api, service)?;
            let id = s(&v["microserviceID"]);
            let mut have: Vec<u64> = instances(&v)
                .iter()
                .filter_map(|i| i["instance_number"].as_u64())
                .collect();
            have.sort_unstable();
            let want = *want as usize;
            while have.len() < want {
                let i = api
                    .call("POST", &format!("/api/service/{id}/instance"), None)
                    .map_err(err)?;
                have.push(i["instance_number"].as_u64().unwrap_or_default());
            }
            while have.len() > want {
                let n = have.pop().unwrap_or_default();
                api.call("DELETE", &format!("/api/service/{id}/instance/{n}"), None)
                    .map_err(err)?;
            }
            let after = api
                .call("GET", &format!("/api/service/{id}"), None)
                .map_err(err)?;
            if g.output == Output::Json {
                print_json(&after);
            } else {
                eprintln!("{} has {want} instance(s)", s(&v["microservice_name"]));
            }
            Ok(())
        }
        ServiceCmd::Rm { service } => {
            let v = find_service(&mut api, service)?;
            let id = s(&v["microserviceID"]);
            api.call("DELETE", &format!("/api/service/{id}"), None)
                .map_err(err)?;
            eprintln!("deleted service {} ({id})", s(&v["microservice_name"]));
            Ok(())
        }
    }
}

/// `grove service update`: the new spec, then its rollout watched.
fn update(
    api: &mut Api,
    g: &Global,
    name: &str,
    path: &str,
    no_wait: bool,
    timeout: u64,
) -> CmdResult {
    let v = find_service(api, name)?;
    let id = s(&v["microserviceID"]);
    let spec = read_json(path)?;
    let after = api
        .call("PUT", &format!("/api/service/{id}"), Some(spec))
        .map_err(|e| format!("{path}: {e}"))?;
    let generation = after["generation"].as_i64().unwrap_or_default();
    let start = Instant::now();
    let say = |line: &str| eprintln!("{:>7.2}s  {line}", start.elapsed().as_secs_f64());
    say(&format!("{name}: spec generation {generation} asked for"));
    let deadline = start + Duration::from_secs(timeout);
    let outcome = if no_wait {
        Outcome::Done
    } else {
        let service = vec![(id.clone(), s(&v["microservice_name"]))];
        Watch::new(service)
            .of_generation(generation)
            .until(api, deadline, say)?
    };
    match outcome {
        Outcome::Done if !no_wait => say("every instance runs the new spec"),
        Outcome::Done => {}
        Outcome::Failed(why) => return Err(why),
        Outcome::Pending => {
            return Err(format!(
                "not every instance ran the new spec within {timeout} s"
            ));
        }
    }
    let doc = api
        .call("GET", &format!("/api/service/{id}"), None)
        .map_err(err)?;
    if g.output == Output::Json {
        print_json(&doc);
    }
    Ok(())
}

/// `grove instance …`.
pub fn instance(g: &Global, cmd: &InstanceCmd) -> CmdResult {
    let mut api = api(g)?;
    let (service, number) = match cmd {
        InstanceCmd::Add { service } => (service, None),
        InstanceCmd::Rm { service, number } => (service, Some(*number)),
    };
    let v = find_service(&mut api, service)?;
    let id = s(&v["microserviceID"]);
    let r = match number {
        None => api.call("POST", &format!("/api/service/{id}/instance"), None),
        Some(n) => api.call("DELETE", &format!("/api/service/{id}/instance/{n}"), None),
    }
    .map_err(err)?;
    match (g.output, number) {
        (Output::Json, _) => print_json(&r),
        (Output::Table, None) => println!("{}", s(&r["instance_number"])),
        (Output::Table, Some(n)) => eprintln!("removed instance {n}"),
    }
    Ok(())
}

/// `grove logs`.
pub fn logs(g: &Global, a: &LogsArgs) -> CmdResult {
    let mut api = api(g)?;
    let v = find_service(&mut api, &a.service)?;
    let id = s(&v["microserviceID"]);
    let base = format!("/api/service/{id}/instance/{}/logs", a.instance);
    let mut path = format!("{base}?max={}", a.tail);
    let mut out = std::io::stdout();
    loop {
        match api.call("GET", &path, None) {
            Ok(chunk) => {
                if g.output == Output::Json {
                    println!("{chunk}");
                } else {
                    let _ = out.write_all(s(&chunk["data"]).as_bytes());
                    let _ = out.flush();
                }
                if !a.follow {
                    return Ok(());
                }
                let next = chunk["next"].as_u64().unwrap_or_default();
                path = format!("{base}?from={next}&max=65536");
                if chunk["eof"] == true {
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
            // A worker or cluster away for a moment: following goes on.
            Err(e) if a.follow && matches!(e.status, 0 | 502 | 503 | 504) => {
                eprintln!("grove logs: {e} (retrying)");
                std::thread::sleep(Duration::from_secs(2));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}
