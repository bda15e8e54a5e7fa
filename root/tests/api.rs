//! The HTTP API driven by a real HTTP client over loopback.

mod support;

use support::call;

use clap::Parser;
use grove_root::api::{self, Shared};
use serde_json::{Value, json};
use std::time::Duration;

struct Root {
    base: String,
    _rt: tokio::runtime::Runtime,
    dir: std::path::PathBuf,
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start(name: &str) -> Root {
    let dir = std::env::temp_dir().join(format!("grove-root-api-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let args = grove_root::Args::parse_from([
        "grove-root",
        "--data-dir",
        dir.to_str().unwrap(),
        "--admin-password",
        "Admin",
    ]);
    let state: Shared = grove_root::open_state(&args).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    rt.spawn(api::serve(listener, state, std::future::pending()));
    Root { base, _rt: rt, dir }
}

impl Root {
    fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        call(&self.base, method, path, token, body)
    }
    fn ok(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> Value {
        let (s, v) = self.call(method, path, Some(token), body);
        assert_eq!(s, 200, "{method} {path}: {v}");
        v
    }
    fn login(&self, user: &str, pw: &str) -> String {
        let v = self.ok_anon(
            "POST",
            "/api/auth/login",
            json!({"username": user, "password": pw}),
        );
        v["token"].as_str().unwrap().to_owned()
    }
    fn ok_anon(&self, method: &str, path: &str, body: Value) -> Value {
        let (s, v) = self.call(method, path, None, Some(body));
        assert_eq!(s, 200, "{method} {path}: {v}");
        v
    }
}

/// The seed README's `deploy_curl_application` SLA, verbatim.
fn seed_sla() -> Value {
    serde_json::from_str(include_str!("seed_sla.json")).unwrap()
}

#[test]
fn the_seed_readme_requests_replayed() {
    let root = start("seed");
    let t = root.login("Admin", "Admin");
    // Register the application and its services.
    let apps = root.ok("POST", "/api/application/", &t, Some(seed_sla()));
    let app = &apps.as_array().unwrap()[0];
    assert_eq!(app["application_name"], "clientsrvr");
    let app_id = app["_id"]["$oid"].as_str().unwrap().to_owned();
    assert_eq!(app["microservices"].as_array().unwrap().len(), 2);
    // Monitor: applications (the README's /api/aplications/ is a typo), services.
    let all = root.ok("GET", "/api/applications/", &t, None);
    assert_eq!(all.as_array().unwrap().len(), 1);
    let services = root.ok("GET", &format!("/api/services/{app_id}"), &t, None);
    let names: Vec<&str> = services
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["job_name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["clientsrvr.test.curl.test", "clientsrvr.test.nginx.test"]
    );
    let nginx = &services[1];
    assert_eq!(nginx["RR_ip"], "10.30.30.30");
    let sid = nginx["_id"]["$oid"].as_str().unwrap().to_owned();
    // Deploy an instance: no cluster is registered, so it fails with Oakestra's reason.
    let inst = root.ok("POST", &format!("/api/service/{sid}/instance"), &t, None);
    assert_eq!(
        (inst["instance_number"].as_u64(), inst["status"].as_str()),
        (Some(0), Some("FAILED"))
    );
    assert_eq!(inst["status_detail"], "NoActiveClusterWithCapacity");
    let svc = root.ok("GET", &format!("/api/service/{sid}"), &t, None);
    assert_eq!(svc["instance_list"].as_array().unwrap().len(), 1);
    assert!(
        svc["instance_list"][0]["instance_ip"]
            .as_str()
            .unwrap()
            .starts_with("10.30.")
    );
    // Undeploy one instance, then the whole application.
    root.ok(
        "DELETE",
        &format!("/api/service/{sid}/instance/0"),
        &t,
        None,
    );
    let svc = root.ok("GET", &format!("/api/service/{sid}"), &t, None);
    assert!(svc["instance_list"].as_array().unwrap().is_empty());
    root.ok("DELETE", &format!("/api/application/{app_id}"), &t, None);
    assert_eq!(root.ok("GET", "/api/applications/", &t, None), json!([]));
    assert_eq!(
        root.call("GET", &format!("/api/service/{sid}"), Some(&t), None)
            .0,
        404
    );
    assert_eq!(root.ok("GET", "/api/clusters/active", &t, None), json!([]));
}

#[test]
fn a_bad_sla_gets_400_naming_the_field_and_stores_nothing() {
    let root = start("bad-sla");
    let t = root.login("Admin", "Admin");
    let mut sla = seed_sla();
    sla["applications"][0]["microservices"][1]["port"] = json!("70000");
    let (s, v) = root.call("POST", "/api/application/", Some(&t), Some(sla));
    assert_eq!(s, 400);
    assert_eq!(
        v["errors"][0]["field"],
        "applications[0].microservices[1].port"
    );
    assert_eq!(v["errors"][0]["reason"], "\"70000\" is not a port");
    assert_eq!(root.ok("GET", "/api/applications/", &t, None), json!([]));
    // Not JSON at all.
    let (s, v) = root.call("POST", "/api/application/", Some(&t), Some(json!("{")));
    assert_eq!(s, 400, "{v}");
}

#[test]
fn taken_service_ips_and_duplicate_names_are_refused() {
    let root = start("conflicts");
    let t = root.login("Admin", "Admin");
    root.ok("POST", "/api/application/", &t, Some(seed_sla()));
    let (s, v) = root.call("POST", "/api/application/", Some(&t), Some(seed_sla()));
    assert_eq!(s, 409, "{v}");
    let mut other = seed_sla();
    other["applications"][0]["application_name"] = json!("another");
    let (s, v) = root.call("POST", "/api/application/", Some(&t), Some(other));
    assert_eq!(s, 400, "{v}");
    assert_eq!(
        v["errors"][0]["field"],
        "applications[0].microservices[1].addresses.rr_ip"
    );
    assert_eq!(
        root.ok("GET", "/api/applications/", &t, None)
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

fn fill(path: &str) -> String {
    path.replace("{username}", "Admin")
        .replace("{org_id}", "000000000000000000000000")
        .replace("{id}", "000000000000000000000000")
        .replace("{appid}", "000000000000000000000000")
        .replace("{userid}", "000000000000000000000000")
        .replace("{serviceid}", "000000000000000000000000")
        .replace("{number}", "0")
}

#[test]
fn every_protected_endpoint_answers_401_without_a_valid_token() {
    let root = start("401");
    let expired_or_forged = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJBZG1pbiJ9.c2lnbmF0dXJl";
    for r in api::routes::ROUTES {
        let (method, path) = (&r.method, &r.path);
        if r.access == api::routes::Access::Public {
            continue;
        }
        let body = matches!(*method, "post" | "put").then(|| json!({}));
        let (s, _) = root.call(&method.to_uppercase(), &fill(path), None, body.clone());
        assert_eq!(s, 401, "{method} {path} without a token");
        let (s, _) = root.call(
            &method.to_uppercase(),
            &fill(path),
            Some(expired_or_forged),
            body,
        );
        assert_eq!(s, 401, "{method} {path} with a forged token");
    }
}

#[test]
fn another_user_s_objects_are_forbidden() {
    let root = start("403");
    let admin = root.login("Admin", "Admin");
    root.ok(
        "POST",
        "/api/auth/register",
        &admin,
        Some(json!({"name": "bob", "password": "pw-bob", "roles": ["Application_Provider"]})),
    );
    let bob = root.login("bob", "pw-bob");
    let apps = root.ok("POST", "/api/application/", &admin, Some(seed_sla()));
    let app_id = apps[0]["_id"]["$oid"].as_str().unwrap().to_owned();
    let sid = apps[0]["microservices"][0].as_str().unwrap().to_owned();
    root.ok(
        "POST",
        &format!("/api/service/{sid}/instance"),
        &admin,
        None,
    );
    let admin_id = root.ok("GET", "/api/user/Admin", &admin, None)["_id"]["$oid"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut add = seed_sla();
    add["applications"][0]["applicationID"] = json!(app_id);
    add["applications"][0]["microservices"] =
        json!([add["applications"][0]["microservices"][0].clone()]);
    add["applications"][0]["microservices"][0]["microservice_name"] = json!("extra");
    let cases: Vec<(&str, String, Option<Value>)> = vec![
        ("GET", format!("/api/application/{app_id}"), None),
        (
            "PUT",
            format!("/api/application/{app_id}"),
            Some(json!({"application_name": "x"})),
        ),
        ("DELETE", format!("/api/application/{app_id}"), None),
        ("GET", format!("/api/applications/{admin_id}"), None),
        ("GET", format!("/api/services/{app_id}"), None),
        ("POST", "/api/service/".to_owned(), Some(add)),
        ("GET", format!("/api/service/{sid}"), None),
        (
            "PUT",
            format!("/api/service/{sid}"),
            Some(seed_sla()["applications"][0]["microservices"][0].clone()),
        ),
        ("DELETE", format!("/api/service/{sid}"), None),
        ("POST", format!("/api/service/{sid}/instance"), None),
        ("DELETE", format!("/api/service/{sid}/instance/0"), None),
        ("GET", "/api/permission/Admin".to_owned(), None),
        ("GET", "/api/user/Admin".to_owned(), None),
        (
            "PUT",
            "/api/user/Admin".to_owned(),
            Some(json!({"email": "x"})),
        ),
        ("DELETE", "/api/user/Admin".to_owned(), None),
        (
            "POST",
            "/api/user/Admin".to_owned(),
            Some(json!({"oldPassword": "a", "newPassword": "b"})),
        ),
        ("GET", "/api/users/".to_owned(), None),
        ("GET", "/api/organization/".to_owned(), None),
        (
            "POST",
            "/api/organization/".to_owned(),
            Some(json!({"name": "evil"})),
        ),
        (
            "POST",
            "/api/auth/register".to_owned(),
            Some(json!({"name": "mallory", "password": "x"})),
        ),
        ("GET", "/api/applications/".to_owned(), None),
        ("GET", "/api/services/".to_owned(), None),
        ("POST", "/api/clusters/token".to_owned(), Some(json!({}))),
        (
            "DELETE",
            "/api/clusters/token/0011223344556677".to_owned(),
            None,
        ),
    ];
    for (method, path, body) in cases {
        let (s, v) = root.call(method, &path, Some(&bob), body);
        assert_eq!(s, 403, "{method} {path} as bob: {v}");
    }
    // Nothing of Admin's changed.
    let svc = root.ok("GET", &format!("/api/service/{sid}"), &admin, None);
    assert_eq!(svc["instance_list"].as_array().unwrap().len(), 1);
    // Bob's own things work.
    let mut mine = seed_sla();
    mine["applications"][0]["microservices"][1]["addresses"] = json!({});
    let apps = root.ok("POST", "/api/application/", &bob, Some(mine));
    assert_eq!(
        apps.as_array().unwrap().len(),
        1,
        "bob sees only his application"
    );
}

#[test]
fn login_refresh_and_password_change() {
    let root = start("auth");
    let (s, v) = root.call(
        "POST",
        "/api/auth/login",
        None,
        Some(json!({"username": "Admin", "password": "wrong"})),
    );
    assert_eq!(
        (s, v["message"].as_str()),
        (401, Some("invalid username or password"))
    );
    let tokens = root.ok_anon(
        "POST",
        "/api/auth/login",
        json!({"username": "Admin", "password": "Admin"}),
    );
    let (access, refresh) = (
        tokens["token"].as_str().unwrap(),
        tokens["refresh_token"].as_str().unwrap(),
    );
    let fresh = root.ok("POST", "/api/auth/refresh", refresh, None);
    assert!(fresh["token"].as_str().is_some());
    assert_eq!(
        root.call("POST", "/api/auth/refresh", Some(access), None).0,
        401,
        "an access token is no refresh token"
    );
    assert_eq!(
        root.call("GET", "/api/applications/", Some(refresh), None)
            .0,
        401,
        "a refresh token is no access token"
    );
    let (s, v) = root.call(
        "POST",
        "/api/user/Admin",
        Some(access),
        Some(json!({"oldPassword": "nope", "newPassword": "N3w"})),
    );
    assert_eq!(
        (s, v["message"].as_str()),
        (400, Some("Old password is not valid!"))
    );
    root.ok(
        "POST",
        "/api/user/Admin",
        access,
        Some(json!({"oldPassword": "Admin", "newPassword": "N3w"})),
    );
    assert_eq!(
        root.call(
            "POST",
            "/api/auth/login",
            None,
            Some(json!({"username": "Admin", "password": "Admin"}))
        )
        .0,
        401
    );
    // The password change revoked every token the user held, access and refresh.
    for (t, what) in [(access, "access"), (refresh, "refresh")] {
        let path = if what == "access" {
            "/api/permission/Admin"
        } else {
            "/api/auth/refresh"
        };
        let method = if what == "access" { "GET" } else { "POST" };
        let (s, v) = root.call(method, path, Some(t), None);
        assert_eq!(
            (s, v["message"].as_str()),
            (401, Some("token revoked: log in again")),
            "the old {what} token after a password change"
        );
    }
    let new_access = root.login("Admin", "N3w");
    assert_eq!(
        root.ok("GET", "/api/permission/Admin", &new_access, None)["roles"],
        json!(["Admin"])
    );
}

#[test]
fn logout_revokes_the_token_and_the_refresh_token_given() {
    let root = start("logout");
    let tokens = root.ok_anon(
        "POST",
        "/api/auth/login",
        json!({"username": "Admin", "password": "Admin"}),
    );
    let (access, refresh) = (
        tokens["token"].as_str().unwrap(),
        tokens["refresh_token"].as_str().unwrap(),
    );
    let other = root.login("Admin", "Admin");
    root.ok("GET", "/api/users/", access, None);
    root.ok(
        "POST",
        "/api/auth/logout",
        access,
        Some(json!({ "refresh_token": refresh })),
    );
    assert_eq!(root.call("GET", "/api/users/", Some(access), None).0, 401);
    assert_eq!(
        root.call("POST", "/api/auth/refresh", Some(refresh), None)
            .0,
        401,
        "the refresh token given went too"
    );
    // Only that session ended: another login of the same user still works.
    root.ok("GET", "/api/users/", &other, None);
}

#[test]
fn failed_logins_are_rate_limited_per_user_and_per_address() {
    let root = start("ratelimit");
    let attempt = |user: &str, pw: &str| {
        root.call(
            "POST",
            "/api/auth/login",
            None,
            Some(json!({"username": user, "password": pw})),
        )
    };
    for i in 0..5 {
        assert_eq!(attempt("Admin", "guess").0, 401, "attempt {i}");
    }
    // The sixth is refused before the password is looked at, even the right one.
    let (s, v) = attempt("Admin", "Admin");
    assert_eq!(s, 429, "{v}");
    assert!(
        v["retry_after_secs"]
            .as_u64()
            .is_some_and(|w| (1..=12).contains(&w)),
        "{v}"
    );
    // This address tries other names: its own bucket (20) runs out too.
    for i in 0..15 {
        assert_eq!(attempt(&format!("nobody{i}"), "x").0, 401, "name {i}");
    }
    assert_eq!(
        attempt("someone-else", "x").0,
        429,
        "the address is limited"
    );
}

#[test]
fn request_bodies_over_a_mebibyte_are_refused() {
    let root = start("bodylimit");
    let t = root.login("Admin", "Admin");
    let big = "x".repeat(api::MAX_BODY + 1);
    let (s, v) = root.call(
        "POST",
        "/api/application/",
        Some(&t),
        Some(json!({ "sla_version": "v2.0", "pad": big })),
    );
    assert_eq!(s, 413, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("larger than"),
        "{v}"
    );
    // Still serving.
    root.ok("GET", "/api/users/", &t, None);
}

#[test]
fn organizations_and_users_are_managed_by_admin() {
    let root = start("orgs");
    let t = root.login("Admin", "Admin");
    let org = root.ok(
        "POST",
        "/api/organization/",
        &t,
        Some(json!({"name": "tum"})),
    );
    let oid = org["_id"]["$oid"].as_str().unwrap().to_owned();
    assert_eq!(
        root.call(
            "POST",
            "/api/organization/",
            Some(&t),
            Some(json!({"name": "tum"}))
        )
        .0,
        409
    );
    root.ok(
        "POST",
        "/api/auth/register",
        &t,
        Some(json!({"name": "carol", "password": "pw", "organization": "tum"})),
    );
    assert_eq!(
        root.call(
            "POST",
            "/api/auth/register",
            Some(&t),
            Some(json!({"name": "carol", "password": "pw"}))
        )
        .0,
        409
    );
    let members = root.ok("GET", &format!("/api/users/{oid}"), &t, None);
    assert_eq!(members[0]["name"], "carol");
    let u = root.ok(
        "PUT",
        "/api/user/carol",
        &t,
        Some(json!({"roles": ["Organization_Admin"]})),
    );
    assert_eq!(u["roles"], json!(["Organization_Admin"]));
    let carol = root.login("carol", "pw");
    assert_eq!(
        root.ok("GET", &format!("/api/users/{oid}"), &carol, None)
            .as_array()
            .unwrap()
            .len(),
        1
    );
    root.ok(
        "PUT",
        &format!("/api/organization/{oid}"),
        &t,
        Some(json!({"name": "tum2"})),
    );
    assert_eq!(
        root.ok("GET", &format!("/api/organization/{oid}"), &t, None)["name"],
        "tum2"
    );
    assert_eq!(
        root.call(
            "PUT",
            "/api/user/carol",
            Some(&t),
            Some(json!({"roles": ["Emperor"]}))
        )
        .0,
        400
    );
    root.ok("DELETE", "/api/user/carol", &t, None);
    assert_eq!(root.call("GET", "/api/user/carol", Some(&t), None).0, 404);
    root.ok("DELETE", &format!("/api/organization/{oid}"), &t, None);
}

#[test]
fn put_service_replaces_the_spec_and_keeps_the_name() {
    let root = start("put");
    let t = root.login("Admin", "Admin");
    let apps = root.ok("POST", "/api/application/", &t, Some(seed_sla()));
    let sid = apps[0]["microservices"][0].as_str().unwrap().to_owned();
    let mut ms = seed_sla()["applications"][0]["microservices"][0].clone();
    ms["memory"] = json!(256);
    let svc = root.ok("PUT", &format!("/api/service/{sid}"), &t, Some(ms.clone()));
    assert_eq!(
        (svc["memory"].as_u64(), svc["generation"].as_u64()),
        (Some(256), Some(2))
    );
    ms["microservice_name"] = json!("renamed");
    assert_eq!(
        root.call(
            "PUT",
            &format!("/api/service/{sid}"),
            Some(&t),
            Some(ms.clone())
        )
        .0,
        400
    );
    ms["microservice_name"] = json!("curl");
    ms["port"] = json!("99999");
    let (s, v) = root.call("PUT", &format!("/api/service/{sid}"), Some(&t), Some(ms));
    assert_eq!(s, 400);
    assert!(
        v["errors"][0]["field"].as_str().unwrap().ends_with(".port"),
        "{v}"
    );
}

#[test]
fn the_docs_work_offline() {
    let root = start("docs");
    let (s, spec) = root.call("GET", "/api/docs/openapi.json", None, None);
    assert_eq!(s, 200);
    for r in api::routes::ROUTES {
        let (method, path) = (r.method, r.path);
        assert!(
            spec["paths"][path][method].is_object(),
            "{method} {path} missing from openapi.json"
        );
    }
    let page = ureq::get(&format!("{}/api/docs", root.base))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(page.contains("openapi.json"));
    assert!(
        !page.contains("https://") && !page.contains("http://"),
        "the docs page loads nothing from elsewhere"
    );
}

#[test]
fn the_remaining_endpoints_answer_their_owner_and_say_404_for_unknown_ids() {
    let root = start("rest");
    let t = root.login("Admin", "Admin");
    let apps = root.ok("POST", "/api/application/", &t, Some(seed_sla()));
    let app_id = apps[0]["_id"]["$oid"].as_str().unwrap().to_owned();
    // Application: read and rename.
    assert_eq!(
        root.ok("GET", &format!("/api/application/{app_id}"), &t, None)["application_desc"],
        "Simple demo with curl client and Nginx server"
    );
    root.ok(
        "PUT",
        &format!("/api/application/{app_id}"),
        &t,
        Some(json!({"application_name": "renamed", "application_desc": "new"})),
    );
    let app = root.ok("GET", &format!("/api/application/{app_id}"), &t, None);
    assert_eq!(
        (
            app["application_name"].as_str(),
            app["application_desc"].as_str()
        ),
        (Some("renamed"), Some("new"))
    );
    let (s, v) = root.call(
        "PUT",
        &format!("/api/application/{app_id}"),
        Some(&t),
        Some(json!({"application_name": "bad name"})),
    );
    assert_eq!(
        (s, v["errors"][0]["field"].as_str()),
        (400, Some("application_name"))
    );
    // Add a service to it, list all services, delete one.
    let mut add = seed_sla();
    add["applications"][0]["applicationID"] = json!(app_id);
    add["applications"][0]["microservices"] =
        json!([add["applications"][0]["microservices"][0].clone()]);
    add["applications"][0]["microservices"][0]["microservice_name"] = json!("extra");
    let added = root.ok("POST", "/api/service/", &t, Some(add));
    let extra = added[0]["_id"]["$oid"].as_str().unwrap().to_owned();
    assert_eq!(added[0]["job_name"], "renamed.test.extra.test");
    assert_eq!(
        root.ok("GET", "/api/services/", &t, None)
            .as_array()
            .unwrap()
            .len(),
        3
    );
    root.ok("DELETE", &format!("/api/service/{extra}"), &t, None);
    assert_eq!(
        root.ok("GET", &format!("/api/services/{app_id}"), &t, None)
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // Admin lists users, organizations, clusters.
    assert_eq!(root.ok("GET", "/api/users/", &t, None)[0]["name"], "Admin");
    assert_eq!(
        root.ok("GET", "/api/organization/", &t, None)[0]["name"],
        "root"
    );
    assert_eq!(root.ok("GET", "/api/clusters/", &t, None), json!([]));
    // Unknown ids are 404, a malformed instance number 400.
    let missing = "ffffffffffffffffffffffff";
    for (method, path) in [
        ("GET", format!("/api/application/{missing}")),
        ("DELETE", format!("/api/application/{missing}")),
        ("GET", format!("/api/service/{missing}")),
        ("POST", format!("/api/service/{missing}/instance")),
        ("GET", format!("/api/services/{missing}")),
        ("GET", format!("/api/applications/{missing}")),
        ("GET", "/api/user/nobody".to_owned()),
        ("GET", format!("/api/organization/{missing}")),
        ("DELETE", "/api/clusters/token/0011223344556677".to_owned()),
        ("GET", "/api/no/such/endpoint".to_owned()),
    ] {
        let (s, v) = root.call(method, &path, Some(&t), None);
        assert_eq!(s, 404, "{method} {path}: {v}");
        assert!(
            v["message"].is_string(),
            "{method} {path}: errors are JSON with a message"
        );
    }
    let sid = apps[0]["microservices"][0].as_str().unwrap();
    assert_eq!(
        root.call(
            "DELETE",
            &format!("/api/service/{sid}/instance/7"),
            Some(&t),
            None
        )
        .0,
        404
    );
    assert_eq!(
        root.call(
            "DELETE",
            &format!("/api/service/{sid}/instance/x"),
            Some(&t),
            None
        )
        .0,
        400
    );
}

#[test]
fn the_api_speaks_tls_when_given_a_certificate() {
    let dir = std::env::temp_dir().join(format!("grove-root-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let Some((ca, cert, key)) = grove_tests::registry::make_certs(&dir.join("certs")) else {
        return;
    };
    let args = grove_root::Args::parse_from([
        "grove-root",
        "--data-dir",
        dir.join("data").to_str().unwrap(),
        "--admin-password",
        "Admin",
        "--http",
        "127.0.0.1:0",
        "--coap",
        "127.0.0.1:0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let running = rt.block_on(grove_root::start(&args)).unwrap();
    let port = running.http.port();
    // A client trusting the test CA logs in over HTTPS.
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    for c in CertificateDer::pem_file_iter(&ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let agent = ureq::AgentBuilder::new()
        .tls_config(std::sync::Arc::new(tls))
        .timeout(Duration::from_secs(20))
        .build();
    let v: Value = agent
        .post(&format!("https://127.0.0.1:{port}/api/auth/login"))
        .send_json(json!({"username": "Admin", "password": "Admin"}))
        .unwrap()
        .into_json()
        .unwrap();
    let token = v["token"].as_str().unwrap();
    let users: Value = agent
        .get(&format!("https://127.0.0.1:{port}/api/users/"))
        .set("Authorization", &format!("Bearer {token}"))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(users[0]["name"], "Admin");
    // Plain HTTP on the same port gets no API answer.
    let plain = ureq::get(&format!("http://127.0.0.1:{port}/api/docs/openapi.json"))
        .timeout(Duration::from_secs(5))
        .call();
    assert!(plain.is_err(), "plain HTTP was answered: {plain:?}");
    // A client that does not trust the certificate is refused by its own TLS.
    let untrusting = ureq::get(&format!("https://127.0.0.1:{port}/api/docs/openapi.json"))
        .timeout(Duration::from_secs(5))
        .call();
    assert!(untrusting.is_err());
    drop(rt);
    let _ = std::fs::remove_dir_all(&dir);
}
