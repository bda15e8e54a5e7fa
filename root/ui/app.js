// Grove's web dashboard: a client of the root's HTTP API, the same one the CLI uses.
// No framework and nothing fetched from elsewhere: it works offline.
"use strict";

const $ = (id) => document.getElementById(id);
const session = {
  get token() { return sessionStorage.getItem("grove.token"); },
  get refresh() { return sessionStorage.getItem("grove.refresh"); },
  get user() { return JSON.parse(sessionStorage.getItem("grove.user") || "null"); },
  save(k, v) { sessionStorage.setItem("grove." + k, typeof v === "string" ? v : JSON.stringify(v)); },
  clear() { ["token", "refresh", "user"].forEach((k) => sessionStorage.removeItem("grove." + k)); },
};

// An element: h("td", {class: "num"}, "text", child, …). Text is never parsed as HTML.
function h(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c !== undefined && c !== null) e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

async function send(method, path, body, token) {
  const headers = {};
  if (token) headers.Authorization = "Bearer " + token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  let v = null;
  try { v = text ? JSON.parse(text) : null; } catch { v = { message: text }; }
  if (!r.ok) throw new ApiError(r.status, v);
  return v;
}

// A call with the session's token, renewed once with the refresh token when it expired.
async function api(method, path, body) {
  try {
    return await send(method, path, body, session.token);
  } catch (e) {
    if (e.status !== 401 || !session.refresh) throw e;
    let fresh;
    try {
      fresh = await send("POST", "/api/auth/refresh", undefined, session.refresh);
    } catch {
      loggedOut();
      throw e;
    }
    session.save("token", fresh.token);
    return send(method, path, body, session.token);
  }
}

// ---- logging in and out ----

function loggedOut() {
  session.clear();
  stopPolling();
  $("app-view").hidden = true;
  $("logout").hidden = true;
  $("who").textContent = "";
  $("login-view").hidden = false;
}

async function login(ev) {
  ev.preventDefault();
  const f = ev.target;
  $("login-error").textContent = "";
  const body = { username: f.username.value, password: f.password.value };
  if (f.organization.value) body.organization_name = f.organization.value;
  try {
    const t = await send("POST", "/api/auth/login", body);
    session.save("token", t.token);
    session.save("refresh", t.refresh_token);
    const me = await api("GET", "/api/user/" + encodeURIComponent(body.username));
    session.save("user", { name: body.username, id: (me._id && me._id.$oid) || me._id, roles: me.roles || [] });
    f.password.value = "";
    loggedIn();
  } catch (e) {
    $("login-error").textContent = e.message;
  }
}

async function logout() {
  try { await api("POST", "/api/auth/logout", { refresh_token: session.refresh }); } catch { /* gone anyway */ }
  loggedOut();
}

function loggedIn() {
  $("login-view").hidden = true;
  $("app-view").hidden = false;
  $("logout").hidden = false;
  $("who").textContent = session.user.name;
  startPolling();
}

// ---- live views ----

let timers = [];
function startPolling() {
  stopPolling();
  const every = (ms, f) => { f(); timers.push(setInterval(f, ms)); };
  every(1000, refreshApps);
  every(3000, refreshClusters);
}
function stopPolling() {
  timers.forEach(clearInterval);
  timers = [];
  closeLog();
}

const stamp = () => "updated " + new Date().toLocaleTimeString();

function bar(used, total) {
  const pct = total > 0 ? Math.min(100, (100 * used) / total) : 0;
  const inner = h("span");
  inner.style.width = pct.toFixed(1) + "%";
  return h("span", { class: pct > 85 ? "bar high" : "bar", title: pct.toFixed(1) + "%" }, inner);
}

let clustersBusy = false;
async function refreshClusters() {
  if (clustersBusy) return;
  clustersBusy = true;
  try {
    const clusters = await api("GET", "/api/clusters/");
    const out = [];
    for (const c of clusters) {
      const state = c.evicted ? "evicted" : c.active ? "active" : "lost";
      out.push(h("h3", {}, c.cluster_name, " ", h("span", { class: "muted" }, `#${c.cluster_id}, ${state}`)));
      if (c.evicted) continue;
      let nodes;
      try {
        nodes = await api("GET", `/api/clusters/${c.cluster_id}/nodes`);
      } catch (e) {
        out.push(h("p", { class: "error" }, e.message));
        continue;
      }
      out.push(h("table", { class: "nodes", "data-cluster": c.cluster_name },
        h("thead", {}, h("tr", {}, ["Worker", "Arch", "CPU", "Memory", "Instances", "State", "Last heartbeat"].map((t) => h("th", {}, t)))),
        h("tbody", {}, nodes.map((n) => h("tr", { "data-node": n.name },
          h("td", {}, n.name, " ", h("span", { class: "muted" }, `node-${n.id}`)),
          h("td", {}, n.arch),
          h("td", { class: "num" }, bar(n.cpu_percent || 0, 100), `${(n.cpu_percent || 0).toFixed(1)}%, offers ${n.cpus}`),
          h("td", { class: "num" }, bar(n.memory_used_mib || 0, n.memory_total_mib || 0),
            `${n.memory_used_mib ?? "-"} / ${n.memory_total_mib ?? "-"} MiB, offers ${n.memory_mib}`),
          h("td", { class: "num" }, n.instances),
          h("td", {}, n.active ? "active" : "lost"),
          h("td", { class: "num" }, n.last_seen_ms == null ? "-" : (n.last_seen_ms / 1000).toFixed(1) + " s ago"),
        )))));
    }
    if (!clusters.length) out.push(h("p", { class: "muted" }, "No cluster has joined yet."));
    $("clusters").replaceChildren(...out);
    $("clusters-updated").textContent = stamp();
  } catch (e) {
    if (e.status !== 401) $("clusters").replaceChildren(h("p", { class: "error" }, e.message));
  } finally {
    clustersBusy = false;
  }
}

let appsBusy = false;
async function refreshApps() {
  if (appsBusy) return;
  appsBusy = true;
  try {
    const apps = await api("GET", "/api/applications/" + session.user.id);
    const out = [];
    for (const a of apps) {
      const services = await api("GET", "/api/services/" + a.applicationID);
      out.push(appView(a, services));
    }
    if (!apps.length) out.push(h("p", { class: "muted" }, "No application yet: deploy an SLA below."));
    // Keep what the user is typing in a scale box.
    const focused = document.activeElement && document.activeElement.dataset.scale;
    const typed = focused ? document.activeElement.value : null;
    $("apps").replaceChildren(...out);
    if (focused) {
      const box = document.querySelector(`input[data-scale="${focused}"]`);
      if (box) { box.value = typed; box.focus(); }
    }
    $("apps-updated").textContent = stamp();
  } catch (e) {
    if (e.status !== 401) $("apps").replaceChildren(h("p", { class: "error" }, e.message));
  } finally {
    appsBusy = false;
  }
}

function appView(a, services) {
  return h("div", { class: "app", "data-app": a.application_name },
    h("h3", {}, `${a.application_name}.${a.application_namespace} `,
      h("button", { class: "danger", "data-action": "delete-app", onclick: () => deleteApp(a) }, "Delete")),
    h("p", { class: "muted" }, a.application_desc || ""),
    services.map((s) => serviceView(s)));
}

function serviceView(s) {
  const id = s.microserviceID;
  const list = s.instance_list || [];
  const scaleBox = h("input", { type: "number", min: 0, max: 100, value: list.length, "data-scale": id, "aria-label": "instances" });
  return h("div", { class: "service", "data-service": s.microservice_name },
    h("p", {},
      h("strong", {}, s.microservice_name), " ",
      h("span", { class: "status " + s.status }, s.status), " ",
      h("span", { class: "muted" }, `${s.code || ""} · service IP ${s.RR_ip}`), " ",
      scaleBox, " ",
      h("button", { "data-action": "scale", onclick: () => scale(s, Number(scaleBox.value)) }, "Scale")),
    list.length ? h("table", { class: "instances" },
      h("thead", {}, h("tr", {}, ["#", "Status", "Cluster", "Worker", "IP", "Detail", ""].map((t) => h("th", {}, t)))),
      h("tbody", {}, list.map((i) => h("tr", { "data-instance": i.instance_number },
        h("td", { class: "num" }, i.instance_number),
        h("td", {}, h("span", { class: "status " + i.status }, i.status)),
        h("td", {}, i.cluster_id ?? "-"),
        h("td", {}, i.worker_id ?? "-"),
        h("td", {}, i.instance_ip ?? "-"),
        h("td", {}, i.status_detail ?? ""),
        h("td", {}, h("button", { "data-action": "log", onclick: () => openLog(s, i.instance_number) }, "Log"))))))
      : h("p", { class: "muted" }, "No instance."));
}

async function deleteApp(a) {
  try {
    await api("DELETE", "/api/application/" + a.applicationID);
  } catch (e) {
    alert(e.message);
  }
  refreshApps();
}

async function scale(s, want) {
  const id = s.microserviceID;
  let have = (s.instance_list || []).map((i) => i.instance_number).sort((x, y) => x - y);
  try {
    while (have.length < want) {
      const i = await api("POST", `/api/service/${id}/instance`);
      have.push(i.instance_number);
    }
    while (have.length > want) {
      await api("DELETE", `/api/service/${id}/instance/${have.pop()}`);
    }
  } catch (e) {
    alert(e.message);
  }
  refreshApps();
}

// ---- instance log tail ----

let logTimer = null;
function closeLog() {
  clearTimeout(logTimer);
  logTimer = null;
  $("log-view").hidden = true;
}

function openLog(s, n) {
  closeLog();
  $("log-view").hidden = false;
  $("log-title").textContent = `${s.microservice_name} #${n}`;
  $("log").textContent = "";
  $("log-error").textContent = "";
  const base = `/api/service/${s.microserviceID}/instance/${n}/logs`;
  let next = null;
  const step = async () => {
    try {
      const c = await api("GET", next === null ? `${base}?max=16384` : `${base}?from=${next}`);
      if (next !== null && c.offset < next) $("log").textContent = ""; // the log was cut
      $("log").append(c.data);
      $("log").scrollTop = $("log").scrollHeight;
      next = c.next;
      $("log-error").textContent = "";
    } catch (e) {
      $("log-error").textContent = e.message;
    }
    if (!$("log-view").hidden) logTimer = setTimeout(step, 1000);
  };
  step();
}

// ---- deploying an SLA ----

// Every field of a JSON value as [path, value], paths spelled as the API names them.
function fields(v, path, out) {
  if (Array.isArray(v)) {
    if (!v.length) out.push([path, "[]"]);
    v.forEach((x, i) => fields(x, `${path}[${i}]`, out));
  } else if (v && typeof v === "object") {
    const keys = Object.keys(v);
    if (!keys.length) out.push([path, "{}"]);
    keys.forEach((k) => fields(v[k], path ? `${path}.${k}` : k, out));
  } else {
    out.push([path, JSON.stringify(v)]);
  }
  return out;
}

function showFieldErrors(sla, errors) {
  const rows = fields(sla, "", []).map(([p, v]) => ({ p, v, reason: "" }));
  for (const e of errors) {
    // The field itself, else the first field inside it (a list or an object), else
    // the field is absent: a row of its own.
    const row = rows.find((r) => r.p === e.field)
      || rows.find((r) => r.p.startsWith(e.field + "[") || r.p.startsWith(e.field + "."));
    if (row) row.reason = row.reason ? `${row.reason}; ${e.reason}` : e.reason;
    else {
      // Absent: shown after the last field of the object it belongs in.
      const parent = e.field.replace(/(\.[^.[\]]+|\[\d+\])$/, "");
      let at = -1;
      rows.forEach((r, i) => { if (r.p.startsWith(parent)) at = i; });
      rows.splice(at + 1 || rows.length, 0, { p: e.field, v: "(missing)", reason: e.reason });
    }
  }
  $("sla-fields").querySelector("tbody").replaceChildren(...rows.map((r) =>
    h("tr", { class: r.reason ? "field-error" : "", "data-field": r.p },
      h("td", {}, h("code", {}, r.p)), h("td", {}, h("code", {}, r.v)), h("td", {}, r.reason))));
  $("sla-fields").hidden = false;
  const first = $("sla-fields").querySelector("tr.field-error");
  if (first) first.scrollIntoView({ block: "center" });
}

async function deploy(ev) {
  ev.preventDefault();
  $("deploy-error").textContent = "";
  $("deploy-ok").textContent = "";
  $("sla-fields").hidden = true;
  let sla;
  try {
    sla = JSON.parse($("sla").value);
  } catch (e) {
    $("deploy-error").textContent = "The SLA is not JSON: " + e.message;
    return;
  }
  const count = Number($("deploy-instances").value) || 0;
  try {
    const apps = await api("POST", "/api/application/", sla);
    const wanted = (sla.applications || []).map((a) => `${a.application_name}.${a.application_namespace}`);
    let started = 0;
    for (const a of apps) {
      if (!wanted.includes(`${a.application_name}.${a.application_namespace}`)) continue;
      for (const id of a.microservices) {
        for (let k = 0; k < count; k++) {
          await api("POST", `/api/service/${id}/instance`);
          started++;
        }
      }
    }
    $("deploy-ok").textContent = `Deployed ${wanted.join(", ")}: ${started} instance(s) asked for.`;
    refreshApps();
  } catch (e) {
    $("deploy-error").textContent = e.message;
    if (e.body && Array.isArray(e.body.errors)) showFieldErrors(sla, e.body.errors);
  }
}

function readFile(ev) {
  const f = ev.target.files[0];
  if (f) f.text().then((t) => { $("sla").value = t; });
}

// ---- start ----

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  $("deploy-form").addEventListener("submit", deploy);
  $("sla-file").addEventListener("change", readFile);
  $("log-close").addEventListener("click", closeLog);
  if (session.token && session.user) loggedIn();
  else loggedOut();
});
