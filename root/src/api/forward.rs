//! What the root does not hold and asks a cluster for, over the link the cluster
//! opened: the cluster's workers, its worker join tokens, and instance logs (which the
//! cluster asks of the worker hosting the instance).

use super::apps::{cluster_id, token_terms};
use super::{ApiError, ApiResult, Caller, Shared};
use crate::clusters_link::AskError;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use grove_proto::coap::{Code, Method, Request, Response};
use grove_proto::msg::{
    self, InstanceRef, LogAsk, LogChunk, NodeInfo, WorkerTokenAsk, WorkerTokenInfo,
};
use grove_proto::paths;
use serde::Deserialize;
use serde_json::{Value, json};

/// Ask cluster `id` and turn its answer into the API's.
async fn ask(st: &Shared, cluster: u32, req: Request) -> ApiResult<Response> {
    let row = st.db().cluster(cluster)?;
    if row.evicted {
        return Err(ApiError::NotFound(format!("cluster {cluster} was evicted")));
    }
    let link = st
        .link
        .get()
        .ok_or_else(|| ApiError::Unavailable("the root is starting".into()))?;
    let r = link.ask(cluster, req).await.map_err(|e| match e {
        AskError::NotHeard => ApiError::Unavailable(format!("cluster {}: {e}", row.name)),
        AskError::NoAnswer(_) => ApiError::Timeout(format!("cluster {}: {e}", row.name)),
    })?;
    if r.code.is_success() {
        return Ok(r);
    }
    let why = String::from_utf8_lossy(&r.payload).into_owned();
    let why = format!("cluster {}: {why}", row.name);
    Err(match r.code {
        Code::NOT_FOUND => ApiError::NotFound(why),
        Code::BAD_REQUEST => ApiError::BadRequest(why),
        Code::GATEWAY_TIMEOUT => ApiError::Timeout(why),
        Code::SERVICE_UNAVAILABLE => ApiError::Unavailable(why),
        _ => ApiError::Internal(why),
    })
}

fn decode<T: for<'b> minicbor::Decode<'b, ()>>(r: &Response) -> ApiResult<T> {
    msg::from_cbor(&r.payload).map_err(|e| ApiError::Internal(format!("cluster's answer: {e}")))
}

fn cbor_request(method: Method, path: &str, body: Vec<u8>) -> Request {
    Request {
        content_format: Some(msg::CONTENT_FORMAT_CBOR),
        payload: body,
        ..Request::new(method, path)
    }
}

/// `GET /api/clusters/{id}/nodes`: the cluster's workers, asked of the cluster.
pub async fn nodes(State(st): State<Shared>, _c: Caller, Path(id): Path<String>) -> ApiResult {
    let id = cluster_id(&id)?;
    let r = ask(&st, id, Request::get(paths::CLUSTER_NODES)).await?;
    let list: Vec<NodeInfo> = decode(&r)?;
    Ok(Json(Value::Array(
        list.iter()
            .map(|n| {
                json!({
                    "id": n.id.0,
                    "name": n.name,
                    "arch": n.arch,
                    "cpus": n.cpus,
                    "memory_mib": n.memory_mib,
                    "active": n.active,
                    "last_seen_ms": n.last_seen_ms,
                    "cpu_percent": n.cpu_centi_pct.map(|c| f64::from(c) / 100.0),
                    "memory_used_mib": n.mem_used_mib,
                    "memory_total_mib": n.mem_total_mib,
                    "instances": n.instances,
                    "underlay": n.underlay,
                    "key_generation": n.key_generation,
                    "virtualizations": n.virtualizations,
                })
            })
            .collect(),
    )))
}

fn token_doc(t: &WorkerTokenInfo, now: i64) -> Value {
    let mut v = json!({
        "id": t.id,
        "expires_at": t.expires_at,
        "single_use": t.single_use,
        "used": t.used,
        "usable": t.expires_at > now && !(t.single_use && t.used),
    });
    if let Some(token) = &t.token {
        v["token"] = json!(token);
    }
    v
}

/// `GET /api/clusters/{id}/tokens` (Admin): the cluster's worker join tokens.
pub async fn tokens(State(st): State<Shared>, _c: Caller, Path(id): Path<String>) -> ApiResult {
    let id = cluster_id(&id)?;
    let r = ask(&st, id, Request::get(paths::CLUSTER_TOKENS)).await?;
    let list: Vec<WorkerTokenInfo> = decode(&r)?;
    let now = crate::store::now_secs();
    Ok(Json(Value::Array(
        list.iter().map(|t| token_doc(t, now)).collect(),
    )))
}

/// `POST /api/clusters/{id}/tokens` (Admin) `{expires_in_secs?: 3600, single_use?:
/// true}`: a worker join token of that cluster, for `grove-agent --join-token`.
pub async fn create_token(
    State(st): State<Shared>,
    _c: Caller,
    Path(id): Path<String>,
    raw: Bytes,
) -> ApiResult {
    let id = cluster_id(&id)?;
    let (ttl, single_use) = token_terms(&raw)?;
    let ask_body = msg::to_cbor(&WorkerTokenAsk {
        expires_in_secs: u32::try_from(ttl).unwrap_or(u32::MAX),
        single_use,
    });
    let r = ask(
        &st,
        id,
        cbor_request(Method::Post, paths::CLUSTER_TOKENS, ask_body),
    )
    .await?;
    let t: WorkerTokenInfo = decode(&r)?;
    Ok(Json(token_doc(&t, crate::store::now_secs())))
}

/// `DELETE /api/clusters/{id}/tokens/{token}` (Admin).
pub async fn revoke_token(
    State(st): State<Shared>,
    _c: Caller,
    Path((id, token)): Path<(String, String)>,
) -> ApiResult {
    let id = cluster_id(&id)?;
    let token = token.split('.').next().unwrap_or_default();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::BadRequest(format!("{token:?} is not a token id")));
    }
    let req = Request::new(Method::Delete, &paths::cluster_token(token));
    ask(&st, id, req).await?;
    Ok(Json(json!({ "message": "Token revoked" })))
}

/// The query of a log request.
#[derive(Debug, Deserialize)]
pub struct LogQuery {
    /// From this byte offset on (following the log); absent: its last `max` bytes.
    from: Option<u64>,
    /// At most this many bytes (16 KiB by default, 64 KiB at most).
    max: Option<u32>,
}

/// `GET /api/service/{serviceid}/instance/{number}/logs?from=&max=`: a piece of an
/// instance's log, read by its worker on request. `next` is the `from` that follows.
pub async fn logs(
    State(st): State<Shared>,
    _c: Caller,
    Path((service, number)): Path<(String, String)>,
    Query(q): Query<LogQuery>,
) -> ApiResult {
    let n: u32 = number
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("\"{number}\" is not an instance number")))?;
    let inst = st
        .db()
        .instances(Some(&service))?
        .into_iter()
        .find(|i| i.number == n)
        .ok_or_else(|| {
            ApiError::NotFound(format!("instance {n} of service {service} not found"))
        })?;
    let cluster = inst.cluster.ok_or_else(|| {
        ApiError::Unavailable(format!("instance {n} is in no cluster ({})", inst.status))
    })?;
    let ask_body = msg::to_cbor(&LogAsk {
        instance: InstanceRef {
            service: service.clone(),
            instance: n,
        },
        from: q.from,
        max: q.max.unwrap_or(16 << 10).clamp(1, 64 << 10),
    });
    let r = ask(
        &st,
        cluster,
        cbor_request(Method::Post, paths::LOGS, ask_body),
    )
    .await?;
    let c: LogChunk = decode(&r)?;
    Ok(Json(json!({
        "service": service,
        "instance": n,
        "offset": c.offset,
        "next": c.offset + c.data.len() as u64,
        "eof": c.eof,
        "data": String::from_utf8_lossy(&c.data),
        "status": inst.status,
    })))
}
