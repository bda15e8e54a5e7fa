//! `/api/docs/openapi.json` and an offline docs page that renders it (no CDN).

use axum::Json;
use axum::response::Html;
use serde_json::{Map, Value, json};

/// Every route: method, path, summary, whether a token is needed, and who may call it.
pub const ROUTES: &[(&str, &str, &str, bool, &str)] = &[
    (
        "post",
        "/api/auth/login",
        "Log in: {username, password, organization_name?} → {token, refresh_token}",
        false,
        "anyone",
    ),
    (
        "post",
        "/api/auth/refresh",
        "A new access token (bearer: the refresh token)",
        true,
        "any user",
    ),
    (
        "post",
        "/api/auth/register",
        "Create a user {name, password, roles, email, organization}",
        true,
        "Admin",
    ),
    (
        "post",
        "/api/auth/coap",
        "OSCORE credentials for the CoAP API (an aiocoap settings.json)",
        true,
        "any user",
    ),
    (
        "get",
        "/api/permission/{username}",
        "A user's roles",
        true,
        "the user, Admin",
    ),
    (
        "get",
        "/api/user/{username}",
        "A user",
        true,
        "the user, Admin",
    ),
    (
        "put",
        "/api/user/{username}",
        "Change a user's e-mail, roles, organization",
        true,
        "Admin",
    ),
    (
        "delete",
        "/api/user/{username}",
        "Delete a user",
        true,
        "Admin",
    ),
    (
        "post",
        "/api/user/{username}",
        "Change one's password {oldPassword, newPassword}",
        true,
        "the user",
    ),
    ("get", "/api/users/", "All users", true, "Admin"),
    (
        "get",
        "/api/users/{org_id}",
        "An organization's users",
        true,
        "Admin, Organization_Admin",
    ),
    (
        "get",
        "/api/organization/",
        "All organizations",
        true,
        "Admin",
    ),
    (
        "post",
        "/api/organization/",
        "Create an organization {name}",
        true,
        "Admin",
    ),
    (
        "get",
        "/api/organization/{id}",
        "An organization",
        true,
        "Admin",
    ),
    (
        "put",
        "/api/organization/{id}",
        "Rename an organization {name}",
        true,
        "Admin",
    ),
    (
        "delete",
        "/api/organization/{id}",
        "Delete an organization",
        true,
        "Admin",
    ),
    (
        "post",
        "/api/application/",
        "Deploy an SLA v2.0: create its applications and services",
        true,
        "any user",
    ),
    (
        "get",
        "/api/application/{appid}",
        "An application",
        true,
        "owner, Admin",
    ),
    (
        "put",
        "/api/application/{appid}",
        "Rename or describe an application",
        true,
        "owner, Admin",
    ),
    (
        "delete",
        "/api/application/{appid}",
        "Delete an application with its services and instances",
        true,
        "owner, Admin",
    ),
    (
        "get",
        "/api/applications/",
        "All applications",
        true,
        "Admin",
    ),
    (
        "get",
        "/api/applications/{userid}",
        "A user's applications",
        true,
        "the user, Admin",
    ),
    (
        "post",
        "/api/service/",
        "Add services to an application (SLA with applicationID)",
        true,
        "owner, Admin",
    ),
    (
        "get",
        "/api/service/{serviceid}",
        "A service with its instances and their status",
        true,
        "owner, Admin",
    ),
    (
        "put",
        "/api/service/{serviceid}",
        "Replace a service's spec; instances roll one at a time",
        true,
        "owner, Admin",
    ),
    (
        "delete",
        "/api/service/{serviceid}",
        "Delete a service and its instances",
        true,
        "owner, Admin",
    ),
    ("get", "/api/services/", "All services", true, "Admin"),
    (
        "get",
        "/api/services/{appid}",
        "An application's services",
        true,
        "owner, Admin",
    ),
    (
        "post",
        "/api/service/{serviceid}/instance",
        "Add an instance",
        true,
        "owner, Admin",
    ),
    (
        "delete",
        "/api/service/{serviceid}/instance/{number}",
        "Remove an instance",
        true,
        "owner, Admin",
    ),
    ("get", "/api/clusters/", "All clusters", true, "any user"),
    (
        "get",
        "/api/clusters/active",
        "Clusters that reported within 15 s",
        true,
        "any user",
    ),
    (
        "post",
        "/api/clusters/token",
        "A cluster join token {expires_in_secs?, single_use?} for grove-cluster --join-token",
        true,
        "Admin",
    ),
    (
        "delete",
        "/api/clusters/token/{id}",
        "Revoke a cluster join token",
        true,
        "Admin",
    ),
];

/// The OpenAPI 3 description, generated from [`ROUTES`].
pub async fn openapi() -> Json<Value> {
    let mut paths: Map<String, Value> = Map::new();
    for (method, path, summary, auth, who) in ROUTES {
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|p| json!({ "name": p, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        let mut op = json!({
            "summary": summary,
            "description": format!("Who: {who}."),
            "parameters": params,
            "responses": {
                "200": { "description": "OK" },
                "400": { "description": "Bad request; SLA errors name each field" },
                "401": { "description": "No or invalid token" },
                "403": { "description": "Not yours" },
                "404": { "description": "Not found" },
            },
        });
        if *auth {
            op["security"] = json!([{ "bearer": [] }]);
        }
        if matches!(*method, "post" | "put") {
            op["requestBody"] =
                json!({ "content": { "application/json": { "schema": { "type": "object" } } } });
        }
        let entry = paths.entry((*path).to_owned()).or_insert_with(|| json!({}));
        entry[*method] = op;
    }
    Json(json!({
        "openapi": "3.0.3",
        "info": { "title": "Grove root API (Oakestra-compatible)", "version": env!("CARGO_PKG_VERSION") },
        "components": { "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" } } },
        "paths": paths,
    }))
}

/// A self-contained page listing the API from its OpenAPI description.
pub async fn page() -> Html<&'static str> {
    Html(PAGE)
}

const PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Grove API</title>
<style>
body{font-family:system-ui,sans-serif;margin:2rem;max-width:60rem;color:#222}
h1{font-size:1.4rem} .op{border:1px solid #ddd;border-radius:6px;margin:.4rem 0;padding:.5rem .8rem}
.m{display:inline-block;width:4.5rem;font-weight:600;text-transform:uppercase}
.get{color:#0a6}.post{color:#06c}.put{color:#a60}.delete{color:#c22} code{font-size:.95rem}
small{color:#666}
</style></head><body>
<h1>Grove root API</h1>
<p>Oakestra-compatible. Log in with <code>POST /api/auth/login</code>, then send
<code>Authorization: Bearer &lt;token&gt;</code>. Machine-readable:
<a href="/api/docs/openapi.json">openapi.json</a>.</p>
<div id="ops">Loading…</div>
<script>
fetch('/api/docs/openapi.json').then(r => r.json()).then(spec => {
  const box = document.getElementById('ops'); box.textContent = '';
  for (const [path, ops] of Object.entries(spec.paths)) {
    for (const [m, op] of Object.entries(ops)) {
      const d = document.createElement('div'); d.className = 'op';
      const s = document.createElement('span'); s.className = 'm ' + m; s.textContent = m;
      const c = document.createElement('code'); c.textContent = path;
      const p = document.createElement('div'); p.textContent = op.summary;
      const w = document.createElement('small'); w.textContent = op.description;
      d.append(s, c, p, w); box.append(d);
    }
  }
});
</script></body></html>"#;
