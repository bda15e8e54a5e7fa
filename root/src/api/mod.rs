//! The HTTP API on TCP 10000: Oakestra's paths, methods and bodies.
//!
//! Documents keep Oakestra's shapes (`_id: {"$oid": …}`, `microservices` as id lists,
//! `instance_list`), returned as plain JSON; Oakestra's own CLI accepts both that and
//! the JSON-in-a-string its Flask server sends.

mod apps;
mod docs;
mod forward;
pub mod routes;
pub mod tls;
mod ui;
mod users;

use crate::auth::{Claims, Role, TokenKind};
use crate::sla::FieldError;
pub use crate::state::{AppState, Shared};
use crate::store::{StoreError, UserRow, now_secs};
use axum::extract::FromRequestParts;
use axum::http::{StatusCode, request::Parts};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::{Value, json};

/// An API error: a status and a JSON body with a message (and field errors).
#[derive(Debug)]
pub enum ApiError {
    /// 400 with a message.
    BadRequest(String),
    /// 400 naming each bad field.
    Invalid(Vec<FieldError>),
    /// 401.
    Unauthorized(String),
    /// 403.
    Forbidden(String),
    /// 404.
    NotFound(String),
    /// 409.
    Conflict(String),
    /// 429, with how long to wait.
    TooMany(String, std::time::Duration),
    /// 500.
    Internal(String),
    /// 503: what the answer needs is not reachable now (a cluster, a worker).
    Unavailable(String),
    /// 504: a cluster or worker asked gave no answer in time.
    Timeout(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            Self::BadRequest(m) => (StatusCode::BAD_REQUEST, json!({ "message": m })),
            Self::Invalid(errors) => {
                let list: Vec<Value> = errors
                    .iter()
                    .map(|e| json!({ "field": e.field, "reason": e.reason }))
                    .collect();
                let first = errors.first().map(ToString::to_string).unwrap_or_default();
                (
                    StatusCode::BAD_REQUEST,
                    json!({ "message": format!("invalid SLA: {first}"), "errors": list }),
                )
            }
            Self::Unauthorized(m) => (StatusCode::UNAUTHORIZED, json!({ "message": m })),
            Self::Forbidden(m) => (StatusCode::FORBIDDEN, json!({ "message": m })),
            Self::NotFound(m) => (StatusCode::NOT_FOUND, json!({ "message": m })),
            Self::Conflict(m) => (StatusCode::CONFLICT, json!({ "message": m })),
            Self::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, json!({ "message": m })),
            Self::Timeout(m) => (StatusCode::GATEWAY_TIMEOUT, json!({ "message": m })),
            Self::TooMany(m, wait) => {
                let secs = wait.as_secs().max(1);
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(axum::http::header::RETRY_AFTER, secs.to_string())],
                    Json(json!({ "message": m, "retry_after_secs": secs })),
                )
                    .into_response();
            }
            Self::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({ "message": "internal error" }),
                )
            }
        };
        (status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => Self::NotFound(format!("{what} not found")),
            StoreError::Conflict(m) => Self::Conflict(m),
            StoreError::Exhausted(what) => Self::Conflict(format!("{what} exhausted")),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<crate::orchestrate::PlaceError> for ApiError {
    fn from(e: crate::orchestrate::PlaceError) -> Self {
        match e {
            crate::orchestrate::PlaceError::Store(e) => e.into(),
            spec @ crate::orchestrate::PlaceError::Spec(_) => Self::Internal(spec.to_string()),
        }
    }
}

/// Handler result.
pub type ApiResult<T = Json<Value>> = Result<T, ApiError>;

/// The caller, from a valid access token in `Authorization: Bearer …`.
#[derive(Debug, Clone)]
pub struct Caller(pub Claims);

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or_else(|| {
            ApiError::Unauthorized("missing bearer token: log in at /api/auth/login".into())
        })
}

/// The claims of a valid token of `kind` in `Authorization: Bearer …`: signed by this
/// root, unexpired, of a user who still exists, of the user's current token epoch
/// (a password or role change revokes older ones) and not logged out.
fn verified(parts: &Parts, state: &Shared, kind: TokenKind) -> Result<Claims, ApiError> {
    let token = bearer(parts)?;
    let claims = state
        .keys
        .verify(token, kind, now_secs())
        .map_err(|e| ApiError::Unauthorized(format!("{e}: log in again")))?;
    live(state, claims)
}

/// `claims` if its token was not revoked.
fn live(state: &Shared, claims: Claims) -> Result<Claims, ApiError> {
    let db = state.db();
    let user = db
        .user_by_name(&claims.sub)?
        .ok_or_else(|| ApiError::Unauthorized("user no longer exists".into()))?;
    if user.token_epoch != claims.epoch || db.token_revoked(&claims.jti)? {
        return Err(ApiError::Unauthorized("token revoked: log in again".into()));
    }
    Ok(claims)
}

impl FromRequestParts<Shared> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Shared,
    ) -> Result<Self, Self::Rejection> {
        match routes::checked(parts) {
            Some(c) => Ok(Caller(c)),
            None => verified(parts, state, TokenKind::Access).map(Caller),
        }
    }
}

/// The client's address, when the request came over TCP (not through the CoAP API).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        use axum::extract::ConnectInfo;
        let ext = &parts.extensions;
        let plain = ext.get::<ConnectInfo<std::net::SocketAddr>>().map(|c| c.0);
        let tls = ext.get::<ConnectInfo<tls::TlsPeer>>().map(|c| c.0.0);
        Ok(Self(plain.or(tls).map(|a| a.ip())))
    }
}

/// The caller, from a valid refresh token.
#[derive(Debug, Clone)]
pub struct Refresher(pub Claims);

impl FromRequestParts<Shared> for Refresher {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Shared,
    ) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<Refresher>() {
            Some(r) => Ok(r.clone()),
            None => verified(parts, state, TokenKind::Refresh).map(Refresher),
        }
    }
}

impl Caller {
    /// The caller's user row.
    pub fn user(&self, st: &AppState) -> ApiResult<UserRow> {
        st.db()
            .user_by_name(&self.0.sub)?
            .ok_or_else(|| ApiError::Unauthorized("user no longer exists".into()))
    }

    /// Whether the caller may see and change what `owner` owns: their own things, all
    /// of their organization's as Organization_Admin, everything as Admin.
    pub fn may_access(&self, st: &AppState, owner_id: &str) -> ApiResult<bool> {
        if self.0.has(Role::Admin) {
            return Ok(true);
        }
        let me = self.user(st)?;
        if me.id == owner_id {
            return Ok(true);
        }
        if self.0.has(Role::OrganizationAdmin) {
            let owner = st.db().user_by_id(owner_id)?;
            return Ok(owner
                .is_some_and(|o| o.organization.is_some() && o.organization == me.organization));
        }
        Ok(false)
    }

    /// Fail with 403 unless [`Self::may_access`].
    pub fn check_access(&self, st: &AppState, owner_id: &str, what: &str) -> ApiResult<()> {
        if self.may_access(st, owner_id)? {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this {what} belongs to another user"
            )))
        }
    }
}

/// A MongoDB-style id object, as Oakestra's documents carry it.
pub fn oid(id: &str) -> Value {
    json!({ "$oid": id })
}

/// A JSON body, with a parse error named rather than a bare 400/415.
pub fn body(bytes: &[u8]) -> ApiResult<Value> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::BadRequest(format!("request body is not JSON: {e}")))
}

/// Add a route under `path` and, for paths ending in `/`, under the same path without
/// it (Oakestra's clients use both spellings).
fn both(r: Router<Shared>, path: &str, m: axum::routing::MethodRouter<Shared>) -> Router<Shared> {
    match path.strip_suffix('/').filter(|b| !b.is_empty()) {
        Some(bare) => r.route(path, m.clone()).route(bare, m),
        None => r.route(path, m),
    }
}

/// Largest request body the API reads (an SLA of hundreds of services fits).
pub const MAX_BODY: usize = 1 << 20;

/// The router of the whole API, from [`routes::ROUTES`].
pub fn router(state: Shared) -> Router {
    router_from(state, routes::ROUTES)
}

/// The router of `table`, each route behind its own rule (tests give a table with a
/// rule changed, to see that the authorization matrix notices).
pub fn router_from(state: Shared, table: &[routes::Route]) -> Router {
    let mut by_path: Vec<(&str, axum::routing::MethodRouter<Shared>)> = Vec::new();
    for r in table {
        let m = routes::guarded(&state, r);
        match by_path.iter_mut().find(|(p, _)| *p == r.path) {
            Some((_, all)) => *all = std::mem::take(all).merge(m),
            None => by_path.push((r.path, m)),
        }
    }
    by_path
        .into_iter()
        .fold(Router::new(), |r, (path, m)| both(r, path, m))
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::map_response(too_large))
        .with_state(state)
}

/// axum's 413 in the API's shape.
async fn too_large(r: Response) -> Response {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        let m = format!("request body is larger than {MAX_BODY} bytes");
        return (StatusCode::PAYLOAD_TOO_LARGE, Json(json!({ "message": m }))).into_response();
    }
    r
}

/// Serve the API over TLS on `listener` until `shutdown` resolves.
pub async fn serve_tls(
    listener: tls::TlsListener,
    state: Shared,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<tls::TlsPeer>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// Serve the API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Shared,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
