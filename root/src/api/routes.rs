//! Every route of the API in one table: method, path, summary, who may call it
//! ([`Access`]) and its handler. The router is built from this table, each route
//! behind the check of its own rule ([`authorize`]), and so is the OpenAPI
//! description; a route cannot be added without saying who may call it. The handlers
//! check only what a path cannot say (an application named in a request body).

use super::{ApiError, Caller, Refresher, Shared, apps, docs, forward, ui, users};
use crate::auth::{Claims, Role, TokenKind};
use axum::extract::{FromRequestParts, RawPathParams, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post, put};

/// Which objects a path parameter names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Object {
    /// `{appid}`.
    Application,
    /// `{serviceid}`.
    Service,
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without a token.
    Public,
    /// Anyone holding a valid refresh token.
    Refresh,
    /// Any user with a valid access token.
    AnyUser,
    /// Admin only.
    Admin,
    /// Admin, or the Organization_Admin of the organization `{org_id}`.
    OrgAdmin,
    /// The user the path names (`{username}` or `{userid}`), or Admin.
    UserOrAdmin,
    /// Only the user `{username}` itself.
    OnlyUser,
    /// The owner of the object, their organization's Organization_Admin, or Admin.
    Owner(Object),
}

impl Access {
    /// As the API documentation says it.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Public => "anyone",
            Self::Refresh => "any user (with the refresh token)",
            Self::AnyUser => "any user",
            Self::Admin => "Admin",
            Self::OrgAdmin => "Admin, the organization's Organization_Admin",
            Self::UserOrAdmin => "the user, Admin",
            Self::OnlyUser => "the user",
            Self::Owner(_) => "owner, their organization's Organization_Admin, Admin",
        }
    }
}

/// One route.
#[derive(Clone, Copy)]
pub struct Route {
    /// Lower-case HTTP method.
    pub method: &'static str,
    /// Path with `{param}` segments.
    pub path: &'static str,
    /// What it does.
    pub summary: &'static str,
    /// Who may call it.
    pub access: Access,
    /// Its handler.
    pub handler: fn() -> MethodRouter<Shared>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} ({:?})", self.method, self.path, self.access)
    }
}

macro_rules! route {
    ($m:ident $path:literal, $access:expr, $summary:literal, $h:path) => {
        Route {
            method: stringify!($m),
            path: $path,
            summary: $summary,
            access: $access,
            handler: || $m($h),
        }
    };
}

use Access::*;
use Object::{Application, Service};

/// The whole API.
pub const ROUTES: &[Route] = &[
    route!(post "/api/auth/login", Public,
        "Log in: {username, password, organization_name?} → {token, refresh_token}", users::login),
    route!(post "/api/auth/refresh", Refresh,
        "A new access token (bearer: the refresh token)", users::refresh),
    route!(post "/api/auth/logout", AnyUser,
        "Revoke this access token and, given {refresh_token}, that one too", users::logout),
    route!(post "/api/auth/register", Admin,
        "Create a user {name, password, roles, email, organization}", users::register),
    route!(post "/api/auth/coap", AnyUser,
        "OSCORE credentials for the CoAP API (an aiocoap settings.json)", users::coap_credentials),
    route!(get "/api/permission/{username}", UserOrAdmin, "A user's roles", users::permission),
    route!(get "/api/user/{username}", UserOrAdmin, "A user", users::get_user),
    route!(put "/api/user/{username}", Admin,
        "Change a user's e-mail, roles, organization (revokes the user's tokens)", users::put_user),
    route!(delete "/api/user/{username}", Admin, "Delete a user", users::delete_user),
    route!(post "/api/user/{username}", OnlyUser,
        "Change one's password {oldPassword, newPassword} (revokes one's tokens)", users::change_password),
    route!(get "/api/users/", Admin, "All users", users::list_users),
    route!(get "/api/users/{org_id}", OrgAdmin, "An organization's users", users::list_org_users),
    route!(get "/api/organization/", Admin, "All organizations", users::list_orgs),
    route!(post "/api/organization/", Admin, "Create an organization {name}", users::create_org),
    route!(get "/api/organization/{id}", Admin, "An organization", users::get_org),
    route!(put "/api/organization/{id}", Admin, "Rename an organization {name}", users::put_org),
    route!(delete "/api/organization/{id}", Admin, "Delete an organization", users::delete_org),
    route!(post "/api/application/", AnyUser,
        "Deploy an SLA v2.0: create its applications and services", apps::create_applications),
    route!(get "/api/application/{appid}", Owner(Application), "An application", apps::get_application),
    route!(put "/api/application/{appid}", Owner(Application),
        "Change an application's name, namespace, description", apps::put_application),
    route!(delete "/api/application/{appid}", Owner(Application),
        "Delete an application, its services and instances", apps::delete_application),
    route!(get "/api/applications/", Admin, "All applications", apps::all_applications),
    route!(get "/api/applications/{userid}", UserOrAdmin,
        "A user's applications", apps::user_applications),
    route!(post "/api/service/", AnyUser,
        "Add services to one's application (an SLA with applicationID)", apps::create_services),
    route!(get "/api/service/{serviceid}", Owner(Service),
        "A service with its instances and their status", apps::get_service),
    route!(put "/api/service/{serviceid}", Owner(Service),
        "Replace a service's spec: a rolling update of its instances", apps::put_service),
    route!(delete "/api/service/{serviceid}", Owner(Service),
        "Delete a service and its instances", apps::delete_service),
    route!(get "/api/services/", Admin, "All services", apps::all_services),
    route!(get "/api/services/{appid}", Owner(Application),
        "An application's services", apps::app_services),
    route!(post "/api/service/{serviceid}/instance", Owner(Service),
        "Add an instance", apps::add_instance),
    route!(delete "/api/service/{serviceid}/instance/{number}", Owner(Service),
        "Remove an instance", apps::remove_instance),
    route!(get "/api/service/{serviceid}/instance/{number}/logs", Owner(Service),
        "A piece of an instance's log ?from=&max=, read by its worker on request", forward::logs),
    route!(get "/api/clusters/", AnyUser, "All clusters", apps::clusters),
    route!(get "/api/clusters/active", AnyUser, "The active clusters", apps::active_clusters),
    route!(delete "/api/clusters/{id}", Admin,
        "Evict a cluster: its key stops working at once, its instances move", apps::evict_cluster),
    route!(post "/api/clusters/{id}/rekey", Admin,
        "Give a cluster a new key without downtime", apps::rekey_cluster),
    route!(get "/api/clusters/token", Admin,
        "The cluster join tokens (ids, expiry, use; never the secrets)", apps::list_cluster_tokens),
    route!(post "/api/clusters/token", Admin,
        "A cluster join token {expires_in_secs?, single_use?} for grove-cluster --join-token",
        apps::create_cluster_token),
    route!(delete "/api/clusters/token/{id}", Admin,
        "Revoke a cluster join token", apps::revoke_cluster_token),
    route!(get "/api/clusters/{id}/nodes", AnyUser,
        "A cluster's workers with their usage, asked of the cluster", forward::nodes),
    route!(get "/api/clusters/{id}/tokens", Admin,
        "A cluster's worker join tokens (never the secrets), asked of the cluster", forward::tokens),
    route!(post "/api/clusters/{id}/tokens", Admin,
        "A worker join token {expires_in_secs?, single_use?} of the cluster, for grove-agent --join-token",
        forward::create_token),
    route!(delete "/api/clusters/{id}/tokens/{token}", Admin,
        "Revoke a worker join token of the cluster", forward::revoke_token),
    route!(get "/metrics", Public,
        "Prometheus metrics: instances by status, deploy and scheduling latency, cluster reports, CoAP counters",
        apps::metrics),
    route!(get "/", Public, "The web dashboard", ui::index),
    route!(get "/ui/{file}", Public, "The web dashboard's script and style", ui::asset),
    route!(get "/api/docs/", Public, "This documentation", docs::page),
    route!(get "/api/docs/openapi.json", Public, "The OpenAPI description", docs::openapi),
];

fn param<'a>(params: &'a RawPathParams, name: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
}

/// Check `access` for the request: the token (valid, of its kind, not revoked) and
/// the rule, with the objects the path names. The caller's claims go into the
/// request's extensions for the handler. An object that does not exist passes: its
/// handler answers 404.
pub async fn authorize(st: &Shared, access: Access, parts: &mut Parts) -> Result<(), ApiError> {
    let kind = match access {
        Public => return Ok(()),
        Refresh => TokenKind::Refresh,
        _ => TokenKind::Access,
    };
    let claims = super::verified(parts, st, kind)?;
    if access == Refresh {
        parts.extensions.insert(Refresher(claims));
        return Ok(());
    }
    let params = RawPathParams::from_request_parts(parts, st)
        .await
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let caller = Caller(claims);
    let admin = caller.0.has(Role::Admin);
    let allowed = match access {
        Public | Refresh | AnyUser => true,
        Admin => admin,
        OrgAdmin => {
            admin
                || (caller.0.has(Role::OrganizationAdmin)
                    && param(&params, "org_id") == Some(caller.0.organization.as_str()))
        }
        UserOrAdmin => {
            admin
                || match (param(&params, "username"), param(&params, "userid")) {
                    (Some(name), _) => name == caller.0.sub,
                    (None, Some(id)) => caller.user(st)?.id == id,
                    (None, None) => false,
                }
        }
        OnlyUser => param(&params, "username") == Some(caller.0.sub.as_str()),
        Owner(object) => match owner_of(st, object, &params)? {
            Some(owner) => caller.may_access(st, &owner)?,
            None => true,
        },
    };
    if !allowed {
        return Err(ApiError::Forbidden(format!(
            "only {} may do this",
            access.describe()
        )));
    }
    parts.extensions.insert(caller);
    Ok(())
}

fn owner_of(
    st: &Shared,
    object: Object,
    params: &RawPathParams,
) -> Result<Option<String>, ApiError> {
    use crate::store::StoreError::NotFound;
    let db = st.db();
    let app = match object {
        Application => param(params, "appid").map(|id| db.application(id)),
        Service => param(params, "serviceid")
            .map(|id| db.service(id).and_then(|s| db.application(&s.application))),
    };
    match app {
        Some(Ok(a)) => Ok(Some(a.owner)),
        Some(Err(NotFound(_))) | None => Ok(None),
        Some(Err(e)) => Err(e.into()),
    }
}

async fn enforce(
    State((st, access)): State<(Shared, Access)>,
    req: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = req.into_parts();
    match authorize(&st, access, &mut parts).await {
        Ok(()) => next.run(Request::from_parts(parts, body)).await,
        Err(e) => e.into_response(),
    }
}

/// The method router of one route, behind its rule.
pub fn guarded(st: &Shared, r: &Route) -> MethodRouter<Shared> {
    (r.handler)().route_layer(axum::middleware::from_fn_with_state(
        (st.clone(), r.access),
        enforce,
    ))
}

/// The claims a route's check put into the request (for a handler's extractor).
pub fn checked(parts: &Parts) -> Option<Claims> {
    parts.extensions.get::<Caller>().map(|c| c.0.clone())
}
