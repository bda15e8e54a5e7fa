//! `/api/docs/openapi.json` and an offline docs page that renders it (no CDN).

use axum::Json;
use axum::response::Html;
use serde_json::{Map, Value, json};

/// The OpenAPI 3 description, generated from the route table.
pub async fn openapi() -> Json<Value> {
    let mut paths: Map<String, Value> = Map::new();
    for r in super::routes::ROUTES {
        let (method, path, summary) = (&r.method, &r.path, r.summary);
        let who = r.access.describe();
        let auth = &(r.access != super::routes::Access::Public);
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
