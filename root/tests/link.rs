//! The cluster link with test clusters that speak the real protocol through `proto/`.

mod support;

use support::call as http;

use clap::Parser;
use grove_proto::coap::driver::{self, Handle, Observation, Router};
use grove_proto::coap::{Code, Config, ContextKey, Endpoint, Request, SendOptions};
use grove_proto::msg::{
    self, Capacity, ClusterCommands, ClusterId, ClusterRegistered, ClusterReport, GeoPoint,
    InstanceRef, InstanceState, InstanceStatus, NodeCommand, RegisterCluster,
};
use grove_proto::oscore::{ContextParams, SecurityContext, join_context};
use grove_proto::paths;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;

struct Root {
    base: String,
    coap: SocketAddr,
    rt: tokio::runtime::Runtime,
    dir: std::path::PathBuf,
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start(name: &str, lost_after: i64) -> Root {
    let dir = std::env::temp_dir().join(format!("grove-root-link-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let args = grove_root::Args::parse_from([
        "grove-root",
        "--data-dir",
        dir.to_str().unwrap(),
        "--admin-password",
        "Admin",
        "--cluster-lost-after",
        &lost_after.to_string(),
    ]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(3)
        .enable_all()
        .build()
        .unwrap();
    let args = grove_root::Args {
        http: "127.0.0.1:0".parse().unwrap(),
        coap: "127.0.0.1:0".parse().unwrap(),
        ..args
    };
    let r = rt.block_on(grove_root::start(&args)).unwrap();
    let (base, coap) = (format!("http://{}", r.http), r.coap);
    Root {
        base,
        coap,
        rt,
        dir,
    }
}

fn admin(base: &str) -> String {
    let (_, v) = http(
        base,
        "POST",
        "/api/auth/login",
        None,
        Some(json!({"username": "Admin", "password": "Admin"})),
    );
    v["token"].as_str().unwrap().to_owned()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

struct TestCluster {
    coap: Handle,
    key: ContextKey,
    id: u32,
    root: SocketAddr,
}

async fn client() -> Handle {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    driver::spawn(sock, Endpoint::new(Config::default()), Router::new())
        .unwrap()
        .0
}

fn registration(name: &str, major: u16) -> Vec<u8> {
    msg::to_cbor(&RegisterCluster {
        version: msg::ProtocolVersion { major, minor: 0 },
        name: name.into(),
        location: Some(GeoPoint {
            lat: 48.1,
            lon: 11.6,
        }),
        max_workers: None,
    })
}

async fn join(root: SocketAddr, token: &str, name: &str) -> Result<TestCluster, (Code, String)> {
    let (id, secret) = token.split_once('.').unwrap();
    let coap = client().await;
    let mut attempt = [0u8; 8];
    getrandom::getrandom(&mut attempt).unwrap();
    let jk = coap
        .add_context(SecurityContext::in_memory(&join_context(
            &unhex(id),
            &unhex(secret),
            &attempt,
            true,
        )))
        .await
        .unwrap();
    let r = coap
        .request(
            root,
            Request::post_cbor(paths::CLUSTERS, registration(name, 1)),
            SendOptions::secure(jk),
        )
        .await
        .unwrap();
    if r.code != Code::CREATED {
        return Err((r.code, String::from_utf8_lossy(&r.payload).into_owned()));
    }
    let reg: ClusterRegistered = msg::from_cbor(&r.payload).unwrap();
    let c = reg.credentials.unwrap();
    let key = coap
        .add_context(SecurityContext::in_memory(&ContextParams {
            master_secret: c.master_secret,
            master_salt: c.master_salt,
            sender_id: c.sender_id,
            recipient_id: c.recipient_id,
            id_context: None,
        }))
        .await
        .unwrap();
    Ok(TestCluster {
        coap,
        key,
        id: reg.cluster.0,
        root,
    })
}

fn capacity(cpu: u32, mem: u32) -> Vec<Capacity> {
    vec![Capacity {
        arch: "x86_64".into(),
        virtualization: "container".into(),
        nodes: 1,
        free_millicpus: u64::from(cpu),
        free_memory_mib: u64::from(mem),
        max_free_millicpus: cpu,
        max_free_memory_mib: mem,
        free_vgpus: None,
        max_free_vgpus: None,
    }]
}

impl TestCluster {
    async fn report(
        &self,
        seq: u32,
        capacity: Option<Vec<Capacity>>,
        changes: Vec<InstanceStatus>,
    ) {
        let body = msg::to_cbor(&ClusterReport {
            cluster: ClusterId(self.id),
            seq,
            capacity,
            changes,
            workers: None,
            changes_from: None,
        });
        let r = self
            .coap
            .request(
                self.root,
                Request::post_cbor(&paths::cluster_status(ClusterId(self.id)), body),
                SendOptions::secure(self.key.clone()),
            )
            .await
            .unwrap();
        assert_eq!(r.code, Code::CHANGED);
    }

    async fn observe(&self) -> Observation {
        let o = self
            .coap
            .observe(
                self.root,
                Request::get(&paths::cluster_commands(ClusterId(self.id))),
                SendOptions::secure(self.key.clone()),
            )
            .await
            .unwrap();
        assert_eq!(o.first.code, Code::CONTENT);
        o
    }
}

fn deploys(c: &ClusterCommands) -> Vec<InstanceRef> {
    c.commands
        .iter()
        .filter_map(|x| match x {
            NodeCommand::Deploy(s) => Some(s.instance.clone()),
            NodeCommand::Undeploy(_) => None,
        })
        .collect()
}

/// Wait (at most `secs`) for a notification whose decoded body satisfies `want`.
async fn wait_for<T: for<'b> minicbor::Decode<'b, ()>>(
    o: &mut Observation,
    secs: u64,
    want: impl Fn(&T) -> bool,
) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let n = tokio::time::timeout_at(deadline, o.notifications.recv())
            .await
            .expect("no such notification in time")
            .expect("observation ended");
        let v: T = msg::from_cbor(&n.payload).unwrap();
        if want(&v) {
            return v;
        }
    }
}

fn seed() -> Value {
    serde_json::from_str(include_str!("seed_sla.json")).unwrap()
}

#[test]
fn a_registered_cluster_receives_an_api_deploy_through_its_observed_commands() {
    let root = start("deploy", 15);
    let t = admin(&root.base);
    let (s, tok) = http(
        &root.base,
        "POST",
        "/api/clusters/token",
        Some(&t),
        Some(json!({"expires_in_secs": 600})),
    );
    assert_eq!(s, 200, "{tok}");
    let token = tok["token"].as_str().unwrap().to_owned();
    let base = root.base.clone();
    root.rt.block_on(async move {
        let c = join(root.coap, &token, "munich").await.unwrap();
        // The token was single-use.
        let again = join(root.coap, &token, "munich2")
            .await
            .err()
            .expect("a used token is refused");
        assert_eq!(again.0, Code::FORBIDDEN, "{}", again.1);
        c.report(1, Some(capacity(4000, 8000)), vec![]).await;
        let mut obs = c.observe().await;
        let first: ClusterCommands = msg::from_cbor(&obs.first.payload).unwrap();
        assert!(first.commands.is_empty());

        let (_, active) = http(&base, "GET", "/api/clusters/active", Some(&t), None);
        assert_eq!(active[0]["cluster_name"], "munich");
        let (_, apps) = http(&base, "POST", "/api/application/", Some(&t), Some(seed()));
        let sid = apps[0]["microservices"][1].as_str().unwrap().to_owned();
        let (s, inst) = http(
            &base,
            "POST",
            &format!("/api/service/{sid}/instance"),
            Some(&t),
            None,
        );
        assert_eq!(
            (s, inst["status"].as_str()),
            (200, Some("CLUSTER_SCHEDULED")),
            "{inst}"
        );
        assert_eq!(inst["cluster_id"], c.id.to_string());

        let cmds = wait_for::<ClusterCommands>(&mut obs, 10, |c| !c.commands.is_empty()).await;
        let NodeCommand::Deploy(spec) = &cmds.commands[0] else {
            panic!("{cmds:?}")
        };
        assert_eq!(
            spec.instance,
            InstanceRef {
                service: sid.clone(),
                instance: 0
            }
        );
        assert_eq!(spec.image, "docker.io/library/nginx:latest");
        assert_eq!(spec.ports.as_deref(), Some("6080:60/tcp"));
        assert_eq!(spec.name, "clientsrvr.test.nginx.test");
        assert!(cmds.generation > first.generation);

        // The cluster reports the instance running; the API shows it.
        let running = InstanceStatus {
            instance: spec.instance.clone(),
            state: InstanceState::Running,
            detail: None,
            ip: spec.ip,
            worker: None,
            addr: None,
            addr6: None,
        };
        c.report(2, None, vec![running]).await;
        let (_, svc) = http(&base, "GET", &format!("/api/service/{sid}"), Some(&t), None);
        assert_eq!(svc["instance_list"][0]["status"], "RUNNING");
        assert_eq!(svc["status"], "RUNNING");

        // Removing the instance through the API takes it out of the cluster's set.
        http(
            &base,
            "DELETE",
            &format!("/api/service/{sid}/instance/0"),
            Some(&t),
            None,
        );
        wait_for::<ClusterCommands>(&mut obs, 10, |c| c.commands.is_empty()).await;
    });
}

#[test]
fn a_lost_cluster_s_instances_move_and_on_return_it_is_told_to_stop_them() {
    // Lost after 2 s here (15 s by default) to keep the test short.
    let root = start("lost", 2);
    let t = admin(&root.base);
    let tok = |single: bool| {
        let (_, v) = http(
            &root.base,
            "POST",
            "/api/clusters/token",
            Some(&t),
            Some(json!({"single_use": single})),
        );
        v["token"].as_str().unwrap().to_owned()
    };
    let (ta, tb) = (tok(false), tok(true));
    let base = root.base.clone();
    root.rt.block_on(async move {
        let a = join(root.coap, &ta, "tight").await.unwrap();
        let b = join(root.coap, &tb, "roomy").await.unwrap();
        a.report(1, Some(capacity(1200, 200)), vec![]).await;
        b.report(1, Some(capacity(16_000, 32_000)), vec![]).await;
        let mut obs_a = a.observe().await;
        let mut obs_b = b.observe().await;
        // B keeps reporting; A falls silent after the deploy.
        let b_reporter = tokio::spawn(async move {
            for seq in 2.. {
                tokio::time::sleep(Duration::from_millis(400)).await;
                b.report(seq, None, vec![]).await;
            }
        });
        let (_, apps) = http(&base, "POST", "/api/application/", Some(&t), Some(seed()));
        let sid = apps[0]["microservices"][1].as_str().unwrap().to_owned();
        let (_, inst) = http(
            &base,
            "POST",
            &format!("/api/service/{sid}/instance"),
            Some(&t),
            None,
        );
        assert_eq!(
            inst["cluster_id"],
            a.id.to_string(),
            "best fit picks the tight cluster"
        );
        let wanted = InstanceRef {
            service: sid.clone(),
            instance: 0,
        };
        wait_for::<ClusterCommands>(&mut obs_a, 10, |c| deploys(c).contains(&wanted)).await;

        // A is silent: within the loss time plus a check period the instance is on B.
        wait_for::<ClusterCommands>(&mut obs_b, 10, |c| deploys(c).contains(&wanted)).await;
        let (_, svc) = http(&base, "GET", &format!("/api/service/{sid}"), Some(&t), None);
        assert_eq!(svc["instance_list"][0]["cluster_id"], "2");
        // A was told to stop it (its set no longer holds it), and so it stays when A
        // comes back and reports, even if it claims the instance runs.
        wait_for::<ClusterCommands>(&mut obs_a, 10, |c| !deploys(c).contains(&wanted)).await;
        let stale = InstanceStatus {
            instance: wanted.clone(),
            state: InstanceState::Running,
            detail: None,
            ip: None,
            worker: None,
            addr: None,
            addr6: None,
        };
        a.report(2, Some(capacity(1200, 200)), vec![stale]).await;
        let (_, svc) = http(&base, "GET", &format!("/api/service/{sid}"), Some(&t), None);
        assert_eq!(
            svc["instance_list"][0]["cluster_id"], "2",
            "the returning cluster does not take it back"
        );
        let now: ClusterCommands = {
            let r = a
                .coap
                .request(
                    a.root,
                    Request::get(&paths::cluster_commands(ClusterId(a.id))),
                    SendOptions::secure(a.key.clone()),
                )
                .await
                .unwrap();
            msg::from_cbor(&r.payload).unwrap()
        };
        assert!(!deploys(&now).contains(&wanted));
        b_reporter.abort();
    });
}

#[test]
fn registration_refuses_other_major_versions_and_unknown_tokens() {
    let root = start("refuse", 15);
    let t = admin(&root.base);
    let (_, tok) = http(
        &root.base,
        "POST",
        "/api/clusters/token",
        Some(&t),
        Some(json!({})),
    );
    let token = tok["token"].as_str().unwrap().to_owned();
    let (_, revoke_me) = http(
        &root.base,
        "POST",
        "/api/clusters/token",
        Some(&t),
        Some(json!({})),
    );
    let (s, _) = http(
        &root.base,
        "DELETE",
        &format!("/api/clusters/token/{}", revoke_me["id"].as_str().unwrap()),
        Some(&t),
        None,
    );
    assert_eq!(s, 200);
    let revoked = revoke_me["token"].as_str().unwrap().to_owned();
    let (_, short) = http(
        &root.base,
        "POST",
        "/api/clusters/token",
        Some(&t),
        Some(json!({"expires_in_secs": 1})),
    );
    let short_id = short["id"].as_str().unwrap().to_owned();
    let expired = short["token"].as_str().unwrap().to_owned();
    // The listing says when it is no longer usable (and never shows a secret).
    let usable = |id: &str| {
        let (_, list) = http(&root.base, "GET", "/api/clusters/token", Some(&t), None);
        assert!(
            !list
                .to_string()
                .contains(expired.split('.').nth(1).unwrap())
        );
        list.as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"] == id)
            .map(|x| x["usable"] == true)
    };
    assert_eq!(usable(&short_id), Some(true));
    grove_tests::daemons::wait_until(10, "the token to expire", || {
        usable(&short_id) == Some(false)
    });
    let coap_addr = root.coap;
    let base = root.base.clone();
    let t2 = t.clone();
    root.rt.block_on(async move {
        // An expired token's registration is refused and registers nothing.
        let err = join(coap_addr, &expired, "late")
            .await
            .err()
            .expect("expired token refused");
        assert_eq!(err.0, Code::FORBIDDEN, "{}", err.1);
        let (_, clusters) = tokio::task::spawn_blocking(move || {
            http(&base, "GET", "/api/clusters/", Some(&t2), None)
        })
        .await
        .unwrap();
        assert!(!clusters.to_string().contains("\"late\""), "{clusters}");
        let (id, secret) = token.split_once('.').unwrap();
        let coap = client().await;
        let jk = coap
            .add_context(SecurityContext::in_memory(&join_context(
                &unhex(id),
                &unhex(secret),
                b"attempt1",
                true,
            )))
            .await
            .unwrap();
        let r = coap
            .request(
                coap_addr,
                Request::post_cbor(paths::CLUSTERS, registration("future", 2)),
                SendOptions::secure(jk),
            )
            .await
            .unwrap();
        assert_eq!(r.code, Code::NOT_ACCEPTABLE);
        let diag = String::from_utf8_lossy(&r.payload);
        assert!(diag.contains("2.0") && diag.contains("1.0"), "{diag}");
        // A revoked token's registration cannot even be verified.
        let err = join(coap_addr, &revoked, "x")
            .await
            .err()
            .expect("revoked token refused");
        assert_eq!(err.0, Code::UNAUTHORIZED);
        // A made-up token likewise.
        let err = join(
            coap_addr,
            "0011223344556677.00112233445566778899aabbccddeeff",
            "x",
        )
        .await
        .err()
        .unwrap();
        assert_eq!(err.0, Code::UNAUTHORIZED);
    });
}

/// A Grove CoAP client holding the OSCORE credentials a user got from the HTTP API.
async fn coap_user(root: SocketAddr, creds: &Value) -> (Handle, ContextKey) {
    let c = client().await;
    let key = c
        .add_context(SecurityContext::in_memory(&ContextParams {
            master_secret: unhex(creds["secret_hex"].as_str().unwrap()),
            master_salt: unhex(creds["salt_hex"].as_str().unwrap()),
            sender_id: unhex(creds["sender-id_hex"].as_str().unwrap()),
            recipient_id: unhex(creds["recipient-id_hex"].as_str().unwrap()),
            id_context: None,
        }))
        .await
        .unwrap();
    let _ = root;
    (c, key)
}

fn cbor_request(method: grove_proto::coap::Method, path: &str, body: Option<&Value>) -> Request {
    let mut r = Request::new(method, path);
    if let Some(b) = body {
        r.content_format = Some(60);
        r.payload = grove_root::coap_api::json_to_cbor(b);
    }
    r
}

#[test]
fn the_user_api_answers_over_coap_with_credentials_from_http() {
    use grove_proto::coap::Method;
    let root = start("coap-api", 15);
    let t = admin(&root.base);
    let (s, creds) = http(&root.base, "POST", "/api/auth/coap", Some(&t), None);
    assert_eq!(s, 200, "{creds}");
    assert_eq!(
        creds["coap_port"].as_u64(),
        Some(u64::from(root.coap.port()))
    );
    http(
        &root.base,
        "POST",
        "/api/auth/register",
        Some(&t),
        Some(json!({"name": "eve", "password": "pw"})),
    );
    let (_, et) = http(
        &root.base,
        "POST",
        "/api/auth/login",
        None,
        Some(json!({"username": "eve", "password": "pw"})),
    );
    let (_, eve_creds) = http(
        &root.base,
        "POST",
        "/api/auth/coap",
        et["token"].as_str(),
        None,
    );
    let (_, me) = http(&root.base, "GET", "/api/user/Admin", Some(&t), None);
    let admin_id = me["_id"]["$oid"].as_str().unwrap().to_owned();
    let coap_addr = root.coap;
    root.rt.block_on(async move {
        let (c, key) = coap_user(coap_addr, &creds).await;
        let go = |r: Request| {
            let (c, key) = (c.clone(), key.clone());
            async move {
                c.request(coap_addr, r, SendOptions::secure(key))
                    .await
                    .unwrap()
            }
        };
        let decode = |p: &[u8]| grove_root::coap_api::cbor_to_json(p).unwrap();
        // Deploy the seed SLA with a CBOR body (block-wise: it is over 1 KiB).
        let r = go(cbor_request(
            Method::Post,
            "/api/application/",
            Some(&seed()),
        ))
        .await;
        assert_eq!(
            r.code,
            Code::CHANGED,
            "{}",
            String::from_utf8_lossy(&r.payload)
        );
        let apps = decode(&r.payload);
        let sid = apps[0]["microservices"][1].as_str().unwrap().to_owned();
        // List, add an instance, read its status, remove it.
        let r = go(cbor_request(
            Method::Get,
            &format!("/api/applications/{admin_id}"),
            None,
        ))
        .await;
        assert_eq!(r.code, Code::CONTENT);
        assert_eq!(decode(&r.payload)[0]["application_name"], "clientsrvr");
        let r = go(cbor_request(
            Method::Post,
            &format!("/api/service/{sid}/instance"),
            None,
        ))
        .await;
        assert_eq!(decode(&r.payload)["instance_number"], 0);
        let r = go(cbor_request(
            Method::Get,
            &format!("/api/service/{sid}"),
            None,
        ))
        .await;
        assert_eq!(
            decode(&r.payload)["instance_list"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        let r = go(cbor_request(
            Method::Delete,
            &format!("/api/service/{sid}/instance/0"),
            None,
        ))
        .await;
        assert_eq!(r.code, Code::DELETED);
        // A bad SLA over CoAP names the field, like over HTTP.
        let mut bad = seed();
        bad["applications"][0]["microservices"][0]["port"] = json!("70000");
        let r = go(cbor_request(Method::Post, "/api/application/", Some(&bad))).await;
        assert_eq!(r.code, Code::BAD_REQUEST);
        assert_eq!(
            decode(&r.payload)["errors"][0]["field"],
            "applications[0].microservices[0].port"
        );

        // Another user's credentials do not reach Admin's objects.
        let (e, ekey) = coap_user(coap_addr, &eve_creds).await;
        let r = e
            .request(
                coap_addr,
                cbor_request(Method::Get, &format!("/api/service/{sid}"), None),
                SendOptions::secure(ekey),
            )
            .await
            .unwrap();
        assert_eq!(r.code, Code::FORBIDDEN);
        // No credentials: 4.01, nothing runs.
        let plain = client().await;
        let r = plain
            .request(
                coap_addr,
                cbor_request(Method::Get, "/api/applications/", None),
                SendOptions::default(),
            )
            .await
            .unwrap();
        assert_eq!(r.code, Code::UNAUTHORIZED);
    });
}

#[test]
fn the_directory_pushes_an_instance_placed_in_one_cluster_to_another_that_observes_it() {
    let root = start("directory", 15);
    let t = admin(&root.base);
    let tok = |_: ()| {
        let (_, v) = http(
            &root.base,
            "POST",
            "/api/clusters/token",
            Some(&t),
            Some(json!({})),
        );
        v["token"].as_str().unwrap().to_owned()
    };
    let (ta, tb) = (tok(()), tok(()));
    let (_, apps) = http(
        &root.base,
        "POST",
        "/api/application/",
        Some(&t),
        Some(seed()),
    );
    let sid = apps[0]["microservices"][1].as_str().unwrap().to_owned();
    let base = root.base.clone();
    root.rt.block_on(async move {
        let a = join(root.coap, &ta, "edge-a").await.unwrap();
        let b = join(root.coap, &tb, "edge-b").await.unwrap();
        a.report(1, Some(capacity(1200, 200)), vec![]).await;
        b.report(1, Some(capacity(16_000, 32_000)), vec![]).await;
        // B is interested in the nginx service by name, A by its round-robin IP.
        let name = "clientsrvr.test.nginx.test";
        let mut by_name = b
            .coap
            .observe(
                b.root,
                Request::get(&paths::service(name)),
                SendOptions::secure(b.key.clone()),
            )
            .await
            .unwrap();
        let first: msg::ServiceEntry = msg::from_cbor(&by_name.first.payload).unwrap();
        assert_eq!((first.name.as_str(), first.instances.len()), (name, 0));
        assert_eq!(
            first.rr_ip,
            Some(u32::from(std::net::Ipv4Addr::new(10, 30, 30, 30)))
        );
        let ip_path = paths::service_by_ip("10.30.30.30".parse().unwrap());
        let mut by_ip = a
            .coap
            .observe(
                a.root,
                Request::get(&ip_path),
                SendOptions::secure(a.key.clone()),
            )
            .await
            .unwrap();
        assert_eq!(by_ip.first.code, Code::CONTENT);

        let (_, inst) = http(
            &base,
            "POST",
            &format!("/api/service/{sid}/instance"),
            Some(&t),
            None,
        );
        assert_eq!(inst["cluster_id"], a.id.to_string());
        let wanted = InstanceRef {
            service: sid.clone(),
            instance: 0,
        };
        a.report(
            2,
            None,
            vec![InstanceStatus {
                instance: wanted.clone(),
                state: InstanceState::Running,
                detail: None,
                ip: None,
                worker: Some("192.0.2.7".into()),
                addr: None,
                addr6: None,
            }],
        )
        .await;
        let e = wait_for::<msg::ServiceEntry>(&mut by_name, 10, |e| {
            e.instances
                .iter()
                .any(|i| i.state == InstanceState::Running)
        })
        .await;
        let i = &e.instances[0];
        assert_eq!(
            (i.worker.as_str(), i.cluster, &i.instance),
            ("192.0.2.7", ClusterId(a.id), &wanted)
        );
        assert_eq!(
            i.ip >> 16,
            u32::from(std::net::Ipv4Addr::new(10, 30, 0, 0)) >> 16
        );
        wait_for::<msg::ServiceEntry>(&mut by_ip, 10, |e| {
            e.instances.iter().any(|i| i.worker == "192.0.2.7")
        })
        .await;

        // Its removal is pushed too.
        http(
            &base,
            "DELETE",
            &format!("/api/service/{sid}/instance/0"),
            Some(&t),
            None,
        );
        wait_for::<msg::ServiceEntry>(&mut by_name, 10, |e| e.instances.is_empty()).await;
    });
}

#[test]
fn put_service_replaces_instances_one_at_a_time_never_all_down() {
    let root = start("rolling", 15);
    let t = admin(&root.base);
    let (_, tok) = http(
        &root.base,
        "POST",
        "/api/clusters/token",
        Some(&t),
        Some(json!({})),
    );
    let token = tok["token"].as_str().unwrap().to_owned();
    let (_, apps) = http(
        &root.base,
        "POST",
        "/api/application/",
        Some(&t),
        Some(seed()),
    );
    let sid = apps[0]["microservices"][1].as_str().unwrap().to_owned();
    let base = root.base.clone();
    root.rt.block_on(async move {
        let c = join(root.coap, &token, "edge").await.unwrap();
        c.report(1, Some(capacity(64_000, 64_000)), vec![]).await;
        let mut obs = c.observe().await;
        for _ in 0..3 {
            http(
                &base,
                "POST",
                &format!("/api/service/{sid}/instance"),
                Some(&t),
                None,
            );
        }
        // The test cluster runs whatever it is told to: every new instance reports
        // RUNNING as soon as it appears in the command set.
        let mut running: Vec<InstanceRef> = Vec::new();
        let mut seq = 2;
        let mut history: Vec<Vec<(u32, u32)>> = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut put_done = false;
        loop {
            let n = tokio::time::timeout_at(deadline, obs.notifications.recv())
                .await
                .expect("rollout did not finish")
                .unwrap();
            let cmds: ClusterCommands = msg::from_cbor(&n.payload).unwrap();
            let set: Vec<(u32, u32)> = cmds
                .commands
                .iter()
                .filter_map(|x| match x {
                    NodeCommand::Deploy(s) => Some((s.instance.instance, s.memory_mib)),
                    NodeCommand::Undeploy(_) => None,
                })
                .collect();
            let fresh: Vec<InstanceStatus> = cmds
                .commands
                .iter()
                .filter_map(|x| match x {
                    NodeCommand::Deploy(s) if !running.contains(&s.instance) => {
                        Some(InstanceStatus {
                            instance: s.instance.clone(),
                            state: InstanceState::Running,
                            detail: None,
                            ip: s.ip,
                            worker: Some("192.0.2.9".into()),
                            addr: None,
                            addr6: None,
                        })
                    }
                    _ => None,
                })
                .collect();
            running.retain(|r| set.iter().any(|(n, _)| *n == r.instance));
            running.extend(fresh.iter().map(|f| f.instance.clone()));
            if !fresh.is_empty() {
                c.report(seq, None, fresh).await;
                seq += 1;
            }
            if put_done {
                history.push(set.clone());
            }
            if !put_done && set.len() == 3 && running.len() == 3 {
                let mut ms = seed()["applications"][0]["microservices"][1].clone();
                ms["memory"] = json!(256);
                let (s, _) = http(
                    &base,
                    "PUT",
                    &format!("/api/service/{sid}"),
                    Some(&t),
                    Some(ms),
                );
                assert_eq!(s, 200);
                put_done = true;
            }
            if put_done && set.len() == 3 && set.iter().all(|(_, m)| *m == 256) {
                break;
            }
        }
        // Never fewer than three instances while rolling, never more than one extra,
        // and old instances kept their old spec until they went.
        for set in &history {
            assert!(
                (3..=4).contains(&set.len()),
                "instances during rollout: {history:?}"
            );
            assert!(set.iter().all(|(_, m)| *m == 100 || *m == 256));
        }
        assert!(
            history.iter().any(|s| s.len() == 4),
            "no surge instance seen: {history:?}"
        );
        assert!(
            history
                .iter()
                .any(|s| s.iter().any(|x| x.1 == 100) && s.iter().any(|x| x.1 == 256)),
            "old and new never ran side by side: {history:?}"
        );
        let (_, svc) = http(&base, "GET", &format!("/api/service/{sid}"), Some(&t), None);
        let gens: Vec<u64> = svc["instance_list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["generation"].as_u64().unwrap())
            .collect();
        assert_eq!(gens, [2, 2, 2]);
    });
}
