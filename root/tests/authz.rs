//! The authorization matrix: every route of the router's own table, called by every
//! kind of caller on their own object, on an object of their organization and on a
//! foreign one, against the rule this test expects for it. A route added without a
//! rule here fails; a rule taken off a route fails (second test).

mod support;

use axum::Router;
use grove_root::api::{self, Shared, routes};
use grove_root::auth::TokenKind;
use grove_root::store::{UserRow, now_secs};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use support::call;

/// Who may call a route, as this test expects it (written apart from the router's
/// table on purpose: the two must agree).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    Public,
    Refresh,
    AnyUser,
    Admin,
    /// Admin, or the Organization_Admin of the organization in the path.
    OrgAdmin,
    /// The user in the path, or Admin.
    UserOrAdmin,
    /// Only the user in the path.
    OnlyUser,
    /// The object's owner, their organization's Organization_Admin, Admin (the object
    /// in the path, or for `POST /api/service/` in the body).
    Owner,
}

const EXPECTED: &[(&str, &str, Rule)] = &[
    ("post", "/api/auth/login", Rule::Public),
    ("post", "/api/auth/refresh", Rule::Refresh),
    ("post", "/api/auth/logout", Rule::AnyUser),
    ("post", "/api/auth/register", Rule::Admin),
    ("post", "/api/auth/coap", Rule::AnyUser),
    ("get", "/api/permission/{username}", Rule::UserOrAdmin),
    ("get", "/api/user/{username}", Rule::UserOrAdmin),
    ("put", "/api/user/{username}", Rule::Admin),
    ("delete", "/api/user/{username}", Rule::Admin),
    ("post", "/api/user/{username}", Rule::OnlyUser),
    ("get", "/api/users/", Rule::Admin),
    ("get", "/api/users/{org_id}", Rule::OrgAdmin),
    ("get", "/api/organization/", Rule::Admin),
    ("post", "/api/organization/", Rule::Admin),
    ("get", "/api/organization/{id}", Rule::Admin),
    ("put", "/api/organization/{id}", Rule::Admin),
    ("delete", "/api/organization/{id}", Rule::Admin),
    ("post", "/api/application/", Rule::AnyUser),
    ("get", "/api/application/{appid}", Rule::Owner),
    ("put", "/api/application/{appid}", Rule::Owner),
    ("delete", "/api/application/{appid}", Rule::Owner),
    ("get", "/api/applications/", Rule::Admin),
    ("get", "/api/applications/{userid}", Rule::UserOrAdmin),
    ("post", "/api/service/", Rule::Owner),
    ("get", "/api/service/{serviceid}", Rule::Owner),
    ("put", "/api/service/{serviceid}", Rule::Owner),
    ("delete", "/api/service/{serviceid}", Rule::Owner),
    ("get", "/api/services/", Rule::Admin),
    ("get", "/api/services/{appid}", Rule::Owner),
    ("post", "/api/service/{serviceid}/instance", Rule::Owner),
    (
        "delete",
        "/api/service/{serviceid}/instance/{number}",
        Rule::Owner,
    ),
    (
        "get",
        "/api/service/{serviceid}/instance/{number}/logs",
        Rule::Owner,
    ),
    ("get", "/api/clusters/", Rule::AnyUser),
    ("get", "/api/clusters/active", Rule::AnyUser),
    ("delete", "/api/clusters/{id}", Rule::Admin),
    ("post", "/api/clusters/{id}/rekey", Rule::Admin),
    ("get", "/api/clusters/token", Rule::Admin),
    ("post", "/api/clusters/token", Rule::Admin),
    ("delete", "/api/clusters/token/{id}", Rule::Admin),
    ("get", "/api/clusters/{id}/nodes", Rule::AnyUser),
    ("get", "/api/clusters/{id}/tokens", Rule::Admin),
    ("post", "/api/clusters/{id}/tokens", Rule::Admin),
    ("delete", "/api/clusters/{id}/tokens/{token}", Rule::Admin),
    ("get", "/metrics", Rule::Public),
    ("get", "/", Rule::Public),
    ("get", "/ui/{file}", Rule::Public),
    ("get", "/api/docs/", Rule::Public),
    ("get", "/api/docs/openapi.json", Rule::Public),
];

/// The callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Anonymous,
    /// Application_Provider of organization A.
    Provider,
    /// Infrastructure_Provider of organization B.
    Infra,
    /// Organization_Admin of A.
    OrgAdmin,
    /// Admin (last: what it deletes must not change the others' cases).
    Admin,
}

const CALLERS: [Who; 5] = [
    Who::Anonymous,
    Who::Provider,
    Who::Infra,
    Who::OrgAdmin,
    Who::Admin,
];

/// Whose object a call is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// Another user's of the caller's organization.
    Mate,
    /// A user's of the other organization.
    Foreign,
    /// The caller's own (last: deleting oneself ends one's cases).
    Own,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Anything but 401 and 403.
    Allowed,
    /// 403.
    Forbidden,
    /// 401.
    Unauthenticated,
}

fn expected(rule: Rule, who: Who, target: Target) -> Outcome {
    use Outcome::*;
    if who == Who::Anonymous {
        return if rule == Rule::Public {
            Allowed
        } else {
            Unauthenticated
        };
    }
    let own = target == Target::Own;
    // The organization admin's organization is A, where the mates are.
    let org_admin_reach = who == Who::OrgAdmin && target != Target::Foreign;
    let ok = match rule {
        Rule::Public | Rule::Refresh | Rule::AnyUser => true,
        Rule::Admin => who == Who::Admin,
        Rule::OrgAdmin => who == Who::Admin || org_admin_reach,
        Rule::UserOrAdmin => who == Who::Admin || own,
        Rule::OnlyUser => own,
        Rule::Owner => who == Who::Admin || own || org_admin_reach,
    };
    if ok { Allowed } else { Forbidden }
}

/// One user of a world: the row, tokens, organization, an application with a service
/// and an instance.
#[derive(Debug, Clone)]
struct Member {
    user: UserRow,
    org: String,
    access: String,
    refresh: String,
    app: String,
    service: String,
}

/// Fresh users, organizations and objects for one route's cases.
struct World {
    members: BTreeMap<&'static str, Member>,
    token_id: String,
}

struct Server {
    base: String,
    state: Shared,
    _rt: tokio::runtime::Runtime,
    dir: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start(name: &str, table: &'static [routes::Route]) -> Server {
    use clap::Parser;
    // On tmpfs: the matrix makes thousands of committed transactions.
    let base = std::path::Path::new("/dev/shm");
    let base = if base.is_dir() {
        base.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("grove-authz-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let args = grove_root::Args::parse_from([
        "grove-root",
        "--data-dir",
        dir.to_str().unwrap(),
        "--admin-password",
        "Admin",
    ]);
    let state = grove_root::open_state(&args).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router: Router = api::router_from(state.clone(), table);
    rt.spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
    });
    Server {
        base,
        state,
        _rt: rt,
        dir,
    }
}

fn sla(app: &str, app_id: &str) -> Value {
    json!({
        "sla_version": "v2.0",
        "customerID": "x",
        "applications": [{
            "applicationID": app_id,
            "application_name": app,
            "application_namespace": "authz",
            "application_desc": "",
            "microservices": [{
                "microserviceID": "",
                "microservice_name": format!("s{}", &app[app.len().saturating_sub(6)..]),
                "microservice_namespace": "authz",
                "virtualization": "container",
                "cmd": [],
                "memory": 10,
                "vcpus": 1,
                "code": "docker.io/library/busybox:latest",
            }],
        }],
    })
}

impl Server {
    fn world(&self, n: usize) -> World {
        let now = now_secs();
        let (org_a, org_b, org_r) = {
            let mut db = self.state.db();
            (
                db.create_org(&format!("A{n}")).unwrap().id,
                db.create_org(&format!("B{n}")).unwrap().id,
                db.create_org(&format!("R{n}")).unwrap().id,
            )
        };
        let mut members = BTreeMap::new();
        for (key, role, org) in [
            ("provider", "Application_Provider", &org_a),
            ("mate", "Application_Provider", &org_a),
            ("orgadmin", "Organization_Admin", &org_a),
            ("infra", "Infrastructure_Provider", &org_b),
            ("foreign", "Application_Provider", &org_b),
            ("admin", "Admin", &org_r),
        ] {
            let user = self
                .state
                .db()
                .create_user(&format!("{key}{n}"), "", "-", &[role.to_owned()], Some(org))
                .unwrap();
            let access = self.state.keys.issue(&user, org, TokenKind::Access, now);
            let refresh = self.state.keys.issue(&user, org, TokenKind::Refresh, now);
            let app_name = format!("app{key}{n}");
            let (s, v) = call(
                &self.base,
                "POST",
                "/api/application/",
                Some(&access),
                Some(sla(&app_name, "")),
            );
            assert_eq!(s, 200, "{v}");
            let app = v
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["application_name"] == app_name.as_str())
                .unwrap();
            let app_id = app["_id"]["$oid"].as_str().unwrap().to_owned();
            let service = app["microservices"][0].as_str().unwrap().to_owned();
            let (s, v) = call(
                &self.base,
                "POST",
                &format!("/api/service/{service}/instance"),
                Some(&access),
                None,
            );
            assert_eq!(s, 200, "{v}");
            members.insert(
                key,
                Member {
                    user,
                    org: org.clone(),
                    access,
                    refresh,
                    app: app_id,
                    service,
                },
            );
        }
        let token_id = format!("{n:016x}");
        self.state
            .db()
            .create_cluster_token(&token_id, &[0; 16], now + 3600, true, "admin")
            .unwrap();
        World { members, token_id }
    }
}

impl World {
    fn caller(&self, who: Who) -> Option<&Member> {
        let key = match who {
            Who::Anonymous => return None,
            Who::Provider => "provider",
            Who::Infra => "infra",
            Who::OrgAdmin => "orgadmin",
            Who::Admin => "admin",
        };
        Some(&self.members[key])
    }

    /// The member whose object a call is about.
    fn target(&self, who: Who, target: Target) -> &Member {
        let caller_org = self.caller(who).map(|m| m.org.clone());
        let in_org = |m: &&Member| Some(&m.org) == caller_org.as_ref();
        match (who, target) {
            (Who::Anonymous, _) => &self.members["provider"],
            (_, Target::Own) => self.caller(who).unwrap(),
            (_, Target::Mate) => self
                .members
                .values()
                .find(|m| in_org(m) && Some(&m.user.name) != self.caller(who).map(|c| &c.user.name))
                // The Admin's organization has no one else: its "mate" is anyone's.
                .unwrap_or(&self.members["mate"]),
            (_, Target::Foreign) => self.members.values().find(|m| !in_org(m)).unwrap(),
        }
    }
}

fn fill(path: &str, w: &World, t: &Member) -> String {
    path.replace("{username}", &t.user.name)
        .replace("{userid}", &t.user.id)
        .replace("{org_id}", &t.org)
        .replace("{appid}", &t.app)
        .replace("{serviceid}", &t.service)
        .replace("{number}", "0")
        .replace(
            "{id}",
            if path.starts_with("/api/clusters/token/") {
                &w.token_id
            } else {
                &t.org
            },
        )
}

fn body_of(method: &str, path: &str, n: usize, case: usize, t: &Member) -> Option<Value> {
    Some(match (method, path) {
        ("post", "/api/application/") => sla(&format!("new{n}x{case}"), ""),
        ("post", "/api/service/") => sla(&format!("add{n}x{case}"), &t.app),
        ("post", "/api/auth/register") => {
            json!({"name": format!("reg{n}x{case}"), "password": "pw"})
        }
        ("post", "/api/organization/") => json!({"name": format!("org{n}x{case}")}),
        ("put", "/api/organization/{id}") => json!({"name": format!("ren{n}x{case}")}),
        ("put", "/api/user/{username}") => json!({"email": "e@example.org"}),
        ("post", "/api/user/{username}") => json!({"oldPassword": "wrong", "newPassword": "new"}),
        ("put", "/api/application/{appid}") => json!({"application_desc": "changed"}),
        ("put", "/api/service/{serviceid}") => {
            sla(&format!("put{n}x{case}"), "")["applications"][0]["microservices"][0].clone()
        }
        // Reaches the handler (400: no password) without a failed login to count.
        ("post", "/api/auth/login") => json!({"username": "nobody"}),
        (_, _) => return None,
    })
}

/// Run every case of the routes `only` (all when empty) against `server`; the
/// mismatches, as text.
fn matrix(server: &Server, table: &[routes::Route], only: &[&str]) -> (usize, Vec<String>) {
    let mut wrong = Vec::new();
    let mut cases = 0;
    for (n, r) in table.iter().enumerate() {
        let key = format!("{} {}", r.method, r.path);
        if !only.is_empty() && !only.contains(&key.as_str()) {
            continue;
        }
        let Some(&(_, _, rule)) = EXPECTED
            .iter()
            .find(|(m, p, _)| *m == r.method && *p == r.path)
        else {
            wrong.push(format!("{key}: no authorization rule in the matrix"));
            continue;
        };
        let w = server.world(n);
        // A route whose path names no one's object has one case per caller.
        let about_someone = r.path.contains('{') && !r.path.starts_with("/api/clusters/token/")
            || r.path == "/api/service/";
        let targets: &[Target] = if about_someone {
            &[Target::Mate, Target::Foreign, Target::Own]
        } else {
            &[Target::Own]
        };
        for who in CALLERS {
            for &target in targets {
                cases += 1;
                let t = w.target(who, target).clone();
                let token = w.caller(who).map(|m| {
                    if rule == Rule::Refresh {
                        m.refresh.as_str()
                    } else {
                        m.access.as_str()
                    }
                });
                let path = fill(r.path, &w, &t);
                let body = body_of(r.method, r.path, n, cases, &t);
                let (status, v) = call(&server.base, &r.method.to_uppercase(), &path, token, body);
                let got = match status {
                    401 => Outcome::Unauthenticated,
                    403 => Outcome::Forbidden,
                    _ => Outcome::Allowed,
                };
                let want = if about_someone {
                    expected(rule, who, target)
                } else {
                    expected(rule, who, Target::Own)
                };
                if got != want {
                    wrong.push(format!(
                        "{key} as {who:?} on {target:?}'s: {status} ({v}), expected {want:?} by rule {rule:?}"
                    ));
                }
            }
        }
    }
    (cases, wrong)
}

#[test]
fn every_route_answers_each_caller_as_its_rule_says() {
    let server = start("matrix", routes::ROUTES);
    // Every rule here names a route of the router, and the reverse (below).
    for (m, p, _) in EXPECTED {
        assert!(
            routes::ROUTES
                .iter()
                .any(|r| r.method == *m && r.path == *p),
            "{m} {p} is in the matrix but not in the router"
        );
    }
    let (cases, wrong) = matrix(&server, routes::ROUTES, &[]);
    assert!(
        wrong.is_empty(),
        "{} of {cases} cases wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert!(cases > 300, "only {cases} cases");
}

#[test]
fn the_matrix_fails_when_a_rule_is_taken_off_a_route() {
    // Each of these routes loses its rule (any user may call it) in a router of its
    // own: the matrix must notice every one.
    let weakened = [
        "delete /api/user/{username}",
        "get /api/users/{org_id}",
        "get /api/application/{appid}",
        "delete /api/service/{serviceid}/instance/{number}",
        "post /api/clusters/token",
        "post /api/user/{username}",
    ];
    let table: Vec<routes::Route> = routes::ROUTES
        .iter()
        .map(|r| {
            let mut r = *r;
            if weakened.contains(&format!("{} {}", r.method, r.path).as_str()) {
                r.access = routes::Access::AnyUser;
            }
            r
        })
        .collect();
    let table: &'static [routes::Route] = Box::leak(table.into_boxed_slice());
    let server = start("weakened", table);
    for route in weakened {
        let (_, wrong) = matrix(&server, table, &[route]);
        assert!(!wrong.is_empty(), "{route} without its rule went unnoticed");
        assert!(wrong.iter().all(|w| w.starts_with(route)), "{wrong:?}");
    }
    // And a route the matrix has no rule for fails it.
    let mut extra: Vec<routes::Route> = routes::ROUTES.to_vec();
    let mut new = routes::ROUTES[0];
    new.path = "/api/new/route";
    extra.push(new);
    let (_, wrong) = matrix(&server, &extra, &["post /api/new/route"]);
    assert_eq!(
        wrong,
        ["post /api/new/route: no authorization rule in the matrix"]
    );
}
