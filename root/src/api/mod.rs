//! The HTTP API on TCP 10000: Oakestra's paths, methods and bodies.
//!
//! Documents keep Oakestra's shapes (`_id: {"$oid": …}`, `microservices` as id lists,
//! `instance_list`), returned as plain JSON; Oakestra's own CLI accepts both that and
//! the JSON-in-a-string its Flask server sends.

mod apps;

pub use apps::{cluster_views, demand_of, microservice_of, place_new_instance, spec_microservice};
mod docs;
mod users;

use crate::auth::{AuthKeys, Claims, Role, TokenKind};
use crate::sla::FieldError;
use crate::store::{Store, StoreError, UserRow, now_secs};
use axum::extract::FromRequestParts;
use axum::http::{StatusCode, request::Parts};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex, MutexGuard};

/// Everything a handler needs.
#[derive(Debug)]
pub struct AppState {
    /// The database.
    pub store: Mutex<Store>,
    /// Token keys.
    pub keys: AuthKeys,
    /// The cluster link, once started.
    pub link: std::sync::OnceLock<crate::link::LinkHandle>,
    /// Which clusters' workers reach which (cross-cluster traffic).
    pub reach: Mutex<crate::link::Reach>,
}

/// Shared state of the router.
pub type Shared = Arc<AppState>;

impl AppState {
    /// Lock the store (a poisoned lock still holds a consistent database: every change
    /// is a committed transaction).
    pub fn db(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lock the cross-cluster reach.
    pub fn reach(&self) -> MutexGuard<'_, crate::link::Reach> {
        self.reach.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tell the link that the service directory changed.
    pub fn directory_changed(&self, u: crate::link::DirectoryUpdate) {
        if let Some(link) = self.link.get() {
            link.directory_changed(u);
        }
    }

    /// Tell the link that these clusters' instance sets changed.
    pub fn clusters_changed(&self, clusters: impl IntoIterator<Item = Option<u32>>) {
        if let Some(link) = self.link.get() {
            let mut seen = std::collections::HashSet::new();
            for c in clusters.into_iter().flatten() {
                if seen.insert(c) {
                    link.cluster_changed(c);
                }
            }
        }
    }
}

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
    /// 500.
    Internal(String),
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

/// The claims of a valid token of `kind` in `Authorization: Bearer …`.
fn verified(parts: &Parts, state: &Shared, kind: TokenKind) -> Result<Claims, ApiError> {
    let token = bearer(parts)?;
    state
        .keys
        .verify(token, kind, now_secs())
        .map_err(|e| ApiError::Unauthorized(format!("{e}: log in again")))
}

impl FromRequestParts<Shared> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Shared,
    ) -> Result<Self, Self::Rejection> {
        verified(parts, state, TokenKind::Access).map(Caller)
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
        verified(parts, state, TokenKind::Refresh).map(Refresher)
    }
}

impl Caller {
    /// Admin only.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.0.has(Role::Admin) {
            Ok(())
        } else {
            Err(ApiError::Forbidden("only Admin may do this".into()))
        }
    }

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

/// The route table the OpenAPI description is generated from (method, path, summary,
/// needs a token, who may call).
pub fn docs_routes() -> &'static [(&'static str, &'static str, &'static str, bool, &'static str)] {
    docs::ROUTES
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
    match path.strip_suffix('/') {
        Some(bare) => r.route(path, m.clone()).route(bare, m),
        None => r.route(path, m),
    }
}

/// The router of the whole API.
pub fn router(state: Shared) -> Router {
    use axum::routing::delete;
    let routes: Vec<(&str, axum::routing::MethodRouter<Shared>)> = vec![
        ("/api/auth/login", post(users::login)),
        ("/api/auth/refresh", post(users::refresh)),
        ("/api/auth/register", post(users::register)),
        ("/api/auth/coap", post(users::coap_credentials)),
        ("/api/permission/{username}", get(users::permission)),
        (
            "/api/user/{username}",
            get(users::get_user)
                .put(users::put_user)
                .delete(users::delete_user)
                .post(users::change_password),
        ),
        ("/api/users/", get(users::list_users)),
        ("/api/users/{org_id}", get(users::list_org_users)),
        (
            "/api/organization/",
            get(users::list_orgs).post(users::create_org),
        ),
        (
            "/api/organization/{id}",
            get(users::get_org)
                .put(users::put_org)
                .delete(users::delete_org),
        ),
        ("/api/application/", post(apps::create_applications)),
        (
            "/api/application/{appid}",
            get(apps::get_application)
                .put(apps::put_application)
                .delete(apps::delete_application),
        ),
        ("/api/applications/", get(apps::all_applications)),
        ("/api/applications/{userid}", get(apps::user_applications)),
        ("/api/service/", post(apps::create_services)),
        (
            "/api/service/{serviceid}",
            get(apps::get_service)
                .delete(apps::delete_service)
                .put(apps::put_service),
        ),
        ("/api/services/", get(apps::all_services)),
        ("/api/services/{appid}", get(apps::app_services)),
        (
            "/api/service/{serviceid}/instance",
            post(apps::add_instance),
        ),
        (
            "/api/service/{serviceid}/instance/{number}",
            delete(apps::remove_instance),
        ),
        ("/api/clusters/", get(apps::clusters)),
        ("/api/clusters/active", get(apps::active_clusters)),
        ("/api/clusters/token", post(apps::create_cluster_token)),
        (
            "/api/clusters/token/{id}",
            delete(apps::revoke_cluster_token),
        ),
        ("/api/docs/", get(docs::page)),
        ("/api/docs/openapi.json", get(docs::openapi)),
    ];
    routes
        .into_iter()
        .fold(Router::new(), |r, (path, m)| both(r, path, m))
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .with_state(state)
}

/// Serve the API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Shared,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
