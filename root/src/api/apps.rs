//! Applications, services, instances and clusters.

use super::{ApiError, ApiResult, Caller, Shared, body, oid};
use crate::orchestrate::{self, DirectoryUpdate, cluster_views};
use crate::scheduler::ClusterView;
use crate::sla::{self, Microservice};
use crate::store::{AppRow, ClusterRow, InstanceRow, NewService, ServiceRow, now_secs};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use serde_json::{Map, Value, json};
use std::net::Ipv4Addr;

/// Lifecycle order, to report the least advanced instance as the service status.
const ORDER: [&str; 6] = [
    "REQUESTED",
    "CLUSTER_SCHEDULED",
    "NODE_SCHEDULED",
    "CREATING",
    "CREATED",
    "RUNNING",
];

fn service_status(instances: &[InstanceRow]) -> &str {
    if instances.is_empty() {
        return "REQUESTED";
    }
    if let Some(failed) = instances
        .iter()
        .find(|i| !ORDER.contains(&i.status.as_str()))
    {
        return &failed.status;
    }
    instances
        .iter()
        .map(|i| i.status.as_str())
        .min_by_key(|s| ORDER.iter().position(|o| o == s))
        .unwrap_or("REQUESTED")
}

fn ip(v: u32) -> String {
    Ipv4Addr::from(v).to_string()
}

fn app_doc(a: &AppRow, services: &[ServiceRow]) -> Value {
    let mut doc: Map<String, Value> = serde_json::from_str(&a.extra).unwrap_or_default();
    doc.insert("_id".into(), oid(&a.id));
    doc.insert("applicationID".into(), json!(a.id));
    doc.insert("application_name".into(), json!(a.name));
    doc.insert("application_namespace".into(), json!(a.namespace));
    doc.insert("application_desc".into(), json!(a.desc));
    doc.insert(
        "microservices".into(),
        json!(services.iter().map(|s| s.id.clone()).collect::<Vec<_>>()),
    );
    doc.insert("userId".into(), json!(a.owner));
    Value::Object(doc)
}

fn instance_doc(i: &InstanceRow) -> Value {
    json!({
        "instance_number": i.number,
        "status": i.status,
        "status_detail": i.reason,
        "cluster_id": i.cluster.map(|c| c.to_string()),
        "worker_id": i.node,
        "instance_ip": i.ip.map(ip),
        "instance_ip_v6": i.ip6,
        "generation": i.generation,
        "last_modified_timestamp": i.updated_at,
    })
}

fn service_doc(a: &AppRow, s: &ServiceRow, instances: &[InstanceRow]) -> Value {
    let mut doc: Map<String, Value> = serde_json::from_str(&s.spec).unwrap_or_default();
    doc.insert("_id".into(), oid(&s.id));
    doc.insert("microserviceID".into(), json!(s.id));
    doc.insert("applicationID".into(), json!(a.id));
    doc.insert("app_name".into(), json!(a.name));
    doc.insert("app_ns".into(), json!(a.namespace));
    doc.insert("microservice_name".into(), json!(s.name));
    doc.insert("microservice_namespace".into(), json!(s.namespace));
    doc.insert(
        "job_name".into(),
        json!(format!(
            "{}.{}.{}.{}",
            a.name, a.namespace, s.name, s.namespace
        )),
    );
    doc.insert("RR_ip".into(), json!(ip(s.rr_ip)));
    let mut addresses = doc
        .get("addresses")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    addresses.insert("rr_ip".into(), json!(ip(s.rr_ip)));
    addresses.insert("closest_ip".into(), json!(ip(s.closest_ip)));
    addresses.insert("rr_ip_v6".into(), json!(s.rr_ip_v6));
    addresses.insert("closest_ip_v6".into(), json!(s.closest_ip_v6));
    doc.insert("addresses".into(), Value::Object(addresses));
    doc.insert("status".into(), json!(service_status(instances)));
    doc.insert(
        "instance_list".into(),
        Value::Array(instances.iter().map(instance_doc).collect()),
    );
    doc.insert("generation".into(), json!(s.generation));
    Value::Object(doc)
}

fn removed_entry(a: &AppRow, s: &ServiceRow) -> DirectoryUpdate {
    DirectoryUpdate::Removed(
        format!("{}.{}.{}.{}", a.name, a.namespace, s.name, s.namespace),
        [s.rr_ip, s.closest_ip]
            .into_iter()
            .map(|a| std::net::IpAddr::V4(Ipv4Addr::from(a)))
            .chain(
                [s.rr_ip_v6.as_deref(), s.closest_ip_v6.as_deref()]
                    .into_iter()
                    .flatten()
                    .filter_map(|t| t.parse().ok()),
            )
            .collect(),
    )
}

/// The services of application `i` of an SLA, each with its spec as the user wrote it.
fn new_services(v: &Value, i: usize, app: &sla::Application) -> Vec<NewService> {
    let raws = v["applications"][i]["microservices"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    app.microservices
        .iter()
        .zip(&raws)
        .map(|(ms, r)| to_new(ms, r))
        .collect()
}

fn to_new(ms: &Microservice, raw: &Value) -> NewService {
    NewService {
        name: ms.name.clone(),
        namespace: ms.namespace.clone(),
        spec: raw.to_string(),
        rr_ip: ms.addresses.rr_ip.map(u32::from),
        closest_ip: ms.addresses.closest_ip.map(u32::from),
        rr_ip_v6: ms.addresses.rr_ip_v6,
        closest_ip_v6: ms.addresses.closest_ip_v6,
    }
}

fn user_apps(st: &Shared, owner: &str) -> ApiResult<Value> {
    let db = st.db();
    let mut out = Vec::new();
    for a in db.applications(Some(owner))? {
        let services = db.services(Some(&a.id))?;
        out.push(app_doc(&a, &services));
    }
    Ok(Value::Array(out))
}

/// `POST /api/application/`: an SLA; creates its applications and services. Answers
/// with the caller's applications, as Oakestra does.
pub async fn create_applications(
    State(st): State<Shared>,
    caller: Caller,
    raw: Bytes,
) -> ApiResult {
    let v = body(&raw)?;
    let sla = sla::parse(&v).map_err(ApiError::Invalid)?;
    let me = caller.user(&st)?;
    let existing = st.db().applications(Some(&me.id))?;
    if sla.applications.iter().any(|a| {
        existing
            .iter()
            .any(|e| e.name == a.name && e.namespace == a.namespace)
    }) {
        return Err(ApiError::Conflict(
            "An application with the same name and namespace exists already".into(),
        ));
    }
    check_addresses_free(&st, &sla)?;
    let mut created = Vec::new();
    for (i, app) in sla.applications.iter().enumerate() {
        let services = new_services(&v, i, app);
        let extra = Value::Object(app.extra.clone()).to_string();
        let result = st.db().create_application(
            &me.id,
            &app.name,
            &app.namespace,
            &app.desc,
            &extra,
            &services,
        );
        match result {
            Ok((row, _)) => created.push(row.id),
            Err(e) => {
                // All or nothing: undo the applications this request already created.
                for id in created {
                    st.db().delete_application(&id)?;
                }
                return Err(e.into());
            }
        }
    }
    Ok(Json(user_apps(&st, &me.id)?))
}

/// Requested service IPs already held by another service or instance: 400 per field.
fn check_addresses_free(st: &Shared, sla: &sla::Sla) -> ApiResult<()> {
    let db = st.db();
    let mut errors = Vec::new();
    for (i, app) in sla.applications.iter().enumerate() {
        for (j, ms) in app.microservices.iter().enumerate() {
            let a = &ms.addresses;
            let taken = [
                (
                    "rr_ip",
                    a.rr_ip.map(|x| (x.to_string(), db.ip_in_use(u32::from(x)))),
                ),
                (
                    "closest_ip",
                    a.closest_ip
                        .map(|x| (x.to_string(), db.ip_in_use(u32::from(x)))),
                ),
                (
                    "rr_ip_v6",
                    a.rr_ip_v6
                        .map(|x| (x.to_string(), db.ip6_in_use(&x.to_string()))),
                ),
                (
                    "closest_ip_v6",
                    a.closest_ip_v6
                        .map(|x| (x.to_string(), db.ip6_in_use(&x.to_string()))),
                ),
            ];
            for (key, found) in taken {
                if let Some((ip, in_use)) = found {
                    if in_use? {
                        errors.push(sla::FieldError {
                            field: format!("applications[{i}].microservices[{j}].addresses.{key}"),
                            reason: format!("{ip} is already in use"),
                        });
                    }
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Invalid(errors))
    }
}

/// The application `appid` names (its route's rule checked the caller's access).
fn owned_app(st: &Shared, _caller: &Caller, appid: &str) -> ApiResult<AppRow> {
    Ok(st.db().application(appid)?)
}

/// `GET /api/application/{appid}`.
pub async fn get_application(
    State(st): State<Shared>,
    caller: Caller,
    Path(appid): Path<String>,
) -> ApiResult {
    let app = owned_app(&st, &caller, &appid)?;
    let services = st.db().services(Some(&app.id))?;
    Ok(Json(app_doc(&app, &services)))
}

/// `PUT /api/application/{appid}`: `{application_name, application_namespace, application_desc}`.
pub async fn put_application(
    State(st): State<Shared>,
    caller: Caller,
    Path(appid): Path<String>,
    raw: Bytes,
) -> ApiResult {
    let app = owned_app(&st, &caller, &appid)?;
    let v = body(&raw)?;
    let field = |k: &str, old: &str| v.get(k).and_then(Value::as_str).unwrap_or(old).to_owned();
    let (name, ns, desc) = (
        field("application_name", &app.name),
        field("application_namespace", &app.namespace),
        field("application_desc", &app.desc),
    );
    for (k, val) in [("application_name", &name), ("application_namespace", &ns)] {
        if val.is_empty() || val.len() > 30 || !val.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(ApiError::Invalid(vec![sla::FieldError {
                field: k.into(),
                reason: format!("\"{val}\" must be 1 to 30 letters or digits"),
            }]));
        }
    }
    st.db().update_application(&appid, &name, &ns, &desc)?;
    Ok(Json(json!({ "message": "Application is updated" })))
}

/// `DELETE /api/application/{appid}`: with all its services and instances.
pub async fn delete_application(
    State(st): State<Shared>,
    caller: Caller,
    Path(appid): Path<String>,
) -> ApiResult {
    let app = owned_app(&st, &caller, &appid)?;
    let removed = st.db().services(Some(&appid))?;
    let gone = st.db().delete_application(&appid)?;
    for s in removed {
        st.directory_changed(removed_entry(&app, &s));
    }
    st.clusters_changed(gone.iter().map(|i| i.cluster));
    Ok(Json(json!({ "message": "Application Deleted" })))
}

/// `GET /api/applications/` (Admin): every application.
pub async fn all_applications(State(st): State<Shared>, _caller: Caller) -> ApiResult {
    let db = st.db();
    let mut out = Vec::new();
    for a in db.applications(None)? {
        let services = db.services(Some(&a.id))?;
        out.push(app_doc(&a, &services));
    }
    Ok(Json(Value::Array(out)))
}

/// `GET /api/applications/{userid}`: a user's applications.
pub async fn user_applications(
    State(st): State<Shared>,
    _caller: Caller,
    Path(userid): Path<String>,
) -> ApiResult {
    if st.db().user_by_id(&userid)?.is_none() {
        return Err(ApiError::NotFound("user not found".into()));
    }
    Ok(Json(user_apps(&st, &userid)?))
}

/// `POST /api/service/`: an SLA whose application carries `applicationID`; adds its
/// microservices to that application.
pub async fn create_services(State(st): State<Shared>, caller: Caller, raw: Bytes) -> ApiResult {
    let v = body(&raw)?;
    let sla = sla::parse(&v).map_err(ApiError::Invalid)?;
    let mut out = Vec::new();
    for (i, app) in sla.applications.iter().enumerate() {
        if app.id.is_empty() {
            return Err(ApiError::Invalid(vec![sla::FieldError {
                field: format!("applications[{i}].applicationID"),
                reason: "is required to add services to an application".into(),
            }]));
        }
        // The application is named in the body, not the path: checked here.
        let row = st.db().application(&app.id)?;
        caller.check_access(&st, &row.owner, "application")?;
        let services = new_services(&v, i, app);
        for s in st.db().add_services(&row.id, &services)? {
            out.push(service_doc(&row, &s, &[]));
        }
    }
    Ok(Json(Value::Array(out)))
}

/// The service `id` names and its application (its route's rule checked the
/// caller's access).
fn owned_service(st: &Shared, _caller: &Caller, id: &str) -> ApiResult<(AppRow, ServiceRow)> {
    let s = st.db().service(id)?;
    let app = st.db().application(&s.application)?;
    Ok((app, s))
}

/// `GET /api/service/{serviceid}`: the service with its instances and their status.
pub async fn get_service(
    State(st): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult {
    let (app, s) = owned_service(&st, &caller, &id)?;
    let instances = st.db().instances(Some(&s.id))?;
    Ok(Json(service_doc(&app, &s, &instances)))
}

/// `DELETE /api/service/{serviceid}`: the service and all its instances.
pub async fn delete_service(
    State(st): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult {
    let (app, s) = owned_service(&st, &caller, &id)?;
    let gone = st.db().delete_service(&id)?;
    st.directory_changed(removed_entry(&app, &s));
    st.clusters_changed(gone.iter().map(|i| i.cluster));
    Ok(Json(json!({ "message": "Job deleted" })))
}

/// Validate one microservice (bare, or the first of an SLA) in the context of its app.
fn one_microservice(v: &Value, app: &AppRow) -> ApiResult<(Microservice, Value)> {
    sla::one_microservice(v, &app.name, &app.namespace).map_err(ApiError::Invalid)
}

/// `PUT /api/service/{serviceid}`: replace the service's spec (Oakestra answers 501).
/// The name stays; the generation goes up, and the cluster link rolls the instances
/// to it one at a time.
pub async fn put_service(
    State(st): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
    raw: Bytes,
) -> ApiResult {
    let (app, s) = owned_service(&st, &caller, &id)?;
    let (ms, raw_ms) = one_microservice(&body(&raw)?, &app)?;
    if (ms.name.as_str(), ms.namespace.as_str()) != (s.name.as_str(), s.namespace.as_str()) {
        return Err(ApiError::Invalid(vec![sla::FieldError {
            field: "microservice_name".into(),
            reason: format!(
                "a service keeps its name {}.{}; create a new service to rename",
                s.name, s.namespace
            ),
        }]));
    }
    st.db().replace_service_spec(&id, &raw_ms.to_string())?;
    let s = st.db().service(&id)?;
    let instances = st.db().instances(Some(&id))?;
    st.clusters_changed(instances.iter().map(|i| i.cluster));
    st.directory_changed(DirectoryUpdate::Service(id.clone()));
    Ok(Json(service_doc(&app, &s, &instances)))
}

/// `GET /api/services/{appid}`: an application's services.
pub async fn app_services(
    State(st): State<Shared>,
    caller: Caller,
    Path(appid): Path<String>,
) -> ApiResult {
    let app = owned_app(&st, &caller, &appid)?;
    let db = st.db();
    let mut out = Vec::new();
    for s in db.services(Some(&app.id))? {
        let instances = db.instances(Some(&s.id))?;
        out.push(service_doc(&app, &s, &instances));
    }
    Ok(Json(Value::Array(out)))
}

/// `GET /api/services/` (Admin): every service.
pub async fn all_services(State(st): State<Shared>, _caller: Caller) -> ApiResult {
    let db = st.db();
    let mut out = Vec::new();
    for s in db.services(None)? {
        let app = db.application(&s.application)?;
        let instances = db.instances(Some(&s.id))?;
        out.push(service_doc(&app, &s, &instances));
    }
    Ok(Json(Value::Array(out)))
}

/// `POST /api/service/{serviceid}/instance`: one more instance, placed by the root
/// scheduler (CLUSTER_SCHEDULED) or FAILED with Oakestra's reason.
pub async fn add_instance(
    State(st): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult {
    let (app, s) = owned_service(&st, &caller, &id)?;
    let placed = orchestrate::place_new_instance(&mut st.db(), &st.metrics, &app, &s, now_secs())?;
    st.clusters_changed([placed.cluster]);
    st.directory_changed(DirectoryUpdate::Service(id.clone()));
    Ok(Json(instance_doc(&placed)))
}

/// `DELETE /api/service/{serviceid}/instance/{number}`.
pub async fn remove_instance(
    State(st): State<Shared>,
    caller: Caller,
    Path((id, number)): Path<(String, String)>,
) -> ApiResult {
    owned_service(&st, &caller, &id)?;
    let n: u32 = number
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("\"{number}\" is not an instance number")))?;
    let gone = st.db().remove_instance(&id, n)?;
    st.clusters_changed([gone.cluster]);
    st.directory_changed(DirectoryUpdate::Service(id.clone()));
    Ok(Json(json!({ "message": "Instance removed" })))
}

fn cluster_doc(v: &ClusterView, row: &ClusterRow) -> Value {
    json!({
        "_id": oid(&format!("{:024x}", row.id)),
        "cluster_id": row.id,
        "cluster_name": row.name,
        "cluster_location": row.location.map(|(a, b)| format!("{a},{b}")),
        "active": v.active,
        "evicted": row.evicted,
        "key_generation": row.key_gen,
        "last_modified_timestamp": row.last_report,
        "aggregation_per_architecture": v.capacity.iter().map(|c| json!({
            "arch": c.arch, "virtualization": c.virtualization, "active_nodes": c.nodes,
            "free_millicpus": c.free_millicpus, "free_memory_mib": c.free_memory_mib,
        })).collect::<Vec<_>>(),
    })
}

fn clusters_json(st: &Shared, only_active: bool) -> ApiResult<Value> {
    let rows = st.db().clusters()?;
    let views = cluster_views(&rows, now_secs());
    Ok(Value::Array(
        views
            .iter()
            .zip(&rows)
            .filter(|(v, _)| v.active || !only_active)
            .map(|(v, r)| cluster_doc(v, r))
            .collect(),
    ))
}

/// `GET /metrics`: Prometheus' text format.
pub async fn metrics(State(st): State<Shared>) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    let counts = st.db().instance_counts()?;
    let stats = match st.link.get() {
        Some(l) => Some(l.stats().await),
        None => None,
    };
    let text = st.metrics.render(&counts, stats);
    let kind = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    Ok(([(axum::http::header::CONTENT_TYPE, kind)], text).into_response())
}

/// `GET /api/clusters/`: every registered cluster.
pub async fn clusters(State(st): State<Shared>, _caller: Caller) -> ApiResult {
    Ok(Json(clusters_json(&st, false)?))
}

/// `GET /api/clusters/active`: clusters that reported within 15 s.
pub async fn active_clusters(State(st): State<Shared>, _caller: Caller) -> ApiResult {
    Ok(Json(clusters_json(&st, true)?))
}

/// `POST /api/clusters/token` (Admin): `{expires_in_secs?: 3600, single_use?: true}` →
/// a join token for `grove-cluster --join-token`.
pub async fn create_cluster_token(
    State(st): State<Shared>,
    caller: Caller,
    raw: Bytes,
) -> ApiResult {
    let (ttl, single_use) = token_terms(&raw)?;
    let mut id = [0u8; 8];
    let mut secret = [0u8; 16];
    getrandom::getrandom(&mut id).map_err(|e| ApiError::Internal(e.to_string()))?;
    getrandom::getrandom(&mut secret).map_err(|e| ApiError::Internal(e.to_string()))?;
    use grove_proto::util::hex;
    let expires_at = now_secs() + ttl;
    st.db()
        .create_cluster_token(&hex(&id), &secret, expires_at, single_use, &caller.0.sub)?;
    if let Some(link) = st.link.get() {
        link.add_join_token(id.to_vec(), secret.to_vec());
        // A cluster given the token at once may join at once.
        link.settled().await;
    }
    Ok(Json(json!({
        "id": hex(&id),
        "token": grove_proto::util::format_join_token(&id, &secret),
        "expires_at": expires_at,
        "single_use": single_use,
    })))
}

/// The terms of a join token asked for: `{expires_in_secs?: 3600, single_use?: true}`
/// (an empty body takes both defaults).
pub(super) fn token_terms(raw: &[u8]) -> ApiResult<(i64, bool)> {
    let v = if raw.is_empty() {
        json!({})
    } else {
        body(raw)?
    };
    let ttl = v
        .get("expires_in_secs")
        .map_or(Some(3600), Value::as_i64)
        .filter(|t| *t > 0 && *t <= 365 * 86400)
        .ok_or_else(|| ApiError::BadRequest("expires_in_secs: must be 1 to 31536000".into()))?;
    let single_use = v
        .get("single_use")
        .map_or(Some(true), Value::as_bool)
        .ok_or_else(|| ApiError::BadRequest("single_use: must be true or false".into()))?;
    Ok((ttl, single_use))
}

/// `GET /api/clusters/token` (Admin): every join token that may still be used, and
/// those used or expired within a day; never a secret.
pub async fn list_cluster_tokens(State(st): State<Shared>, _caller: Caller) -> ApiResult {
    let now = now_secs();
    let rows = st.db().cluster_tokens(now - 86400)?;
    Ok(Json(Value::Array(
        rows.into_iter()
            .map(|t| {
                json!({
                    "id": t.id,
                    "expires_at": t.expires_at,
                    "single_use": t.single_use,
                    "used": t.used,
                    "usable": t.expires_at > now && !(t.single_use && t.used),
                    "created_by": t.created_by,
                })
            })
            .collect(),
    )))
}

pub(super) fn cluster_id(id: &str) -> ApiResult<u32> {
    id.parse()
        .map_err(|_| ApiError::NotFound(format!("cluster {id:?} not found")))
}

/// `DELETE /api/clusters/{id}` (Admin): evict a cluster. Its key stops working at
/// once, its instances move to other clusters within a second, and it can join again
/// only with a new join token.
pub async fn evict_cluster(
    State(st): State<Shared>,
    _caller: Caller,
    Path(id): Path<String>,
) -> ApiResult {
    let id = cluster_id(&id)?;
    st.db().evict_cluster(id)?;
    if let Some(link) = st.link.get() {
        link.evicted(id).await;
        // "At once": the answer comes when the keys are gone.
        link.settled().await;
    }
    Ok(Json(json!({ "message": "Cluster evicted" })))
}

/// `POST /api/clusters/{id}/rekey` (Admin): give a cluster a new key without
/// downtime (it takes it with its next report; its old key then stops working).
pub async fn rekey_cluster(
    State(st): State<Shared>,
    _caller: Caller,
    Path(id): Path<String>,
) -> ApiResult {
    let id = cluster_id(&id)?;
    st.db().request_cluster_rekey(id)?;
    if let Some(link) = st.link.get() {
        link.rekey_asked(id);
    }
    Ok(Json(
        json!({ "message": "The cluster gets a new key with its next report" }),
    ))
}

/// `DELETE /api/clusters/token/{id}` (Admin).
pub async fn revoke_cluster_token(
    State(st): State<Shared>,
    _caller: Caller,
    Path(id): Path<String>,
) -> ApiResult {
    st.db().revoke_cluster_token(&id)?;
    if let Some(link) = st.link.get() {
        link.remove_join_token(grove_proto::util::unhex(&id).unwrap_or_default());
        link.settled().await;
    }
    Ok(Json(json!({ "message": "Token revoked" })))
}
