//! Auth, users, permissions and organizations.

use super::{ApiError, ApiResult, Caller, Peer, Refresher, Shared, body, oid};
use crate::auth::{Role, TokenKind, hash_password_async, verify_password_async};
use crate::store::{OrgRow, UserRow, now_secs};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use serde_json::{Value, json};

fn user_doc(u: &UserRow) -> Value {
    json!({
        "_id": oid(&u.id),
        "name": u.name,
        "email": u.email,
        "roles": u.roles,
        "organization": u.organization,
        "created_at": u.created_at,
    })
}

fn org_doc(o: &OrgRow) -> Value {
    json!({ "_id": oid(&o.id), "name": o.name })
}

/// A user by name, or 404.
fn find_user(st: &Shared, name: &str) -> ApiResult<UserRow> {
    st.db()
        .user_by_name(name)?
        .ok_or_else(|| ApiError::NotFound(format!("user \"{name}\" not found")))
}

/// An organization by id or name, or 404.
fn find_org(st: &Shared, id_or_name: &str) -> ApiResult<OrgRow> {
    st.db()
        .org(id_or_name)?
        .ok_or_else(|| ApiError::NotFound(format!("organization \"{id_or_name}\" not found")))
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn roles_field(v: &Value) -> ApiResult<Option<Vec<String>>> {
    let Some(r) = v.get("roles") else {
        return Ok(None);
    };
    let list = r
        .as_array()
        .ok_or_else(|| ApiError::BadRequest("roles: must be a list".into()))?;
    let mut out = Vec::new();
    for (i, x) in list.iter().enumerate() {
        // Oakestra's clients send either role names or {"name": role}.
        let name = x
            .as_str()
            .or_else(|| x.get("name").and_then(Value::as_str))
            .unwrap_or_default();
        match Role::parse(name) {
            Some(role) => out.push(role.as_str().to_owned()),
            None => {
                return Err(ApiError::BadRequest(format!(
                    "roles[{i}]: \"{name}\" is not a role"
                )));
            }
        }
    }
    Ok(Some(out))
}

/// `POST /api/auth/login`: `{username, password, organization_name?}` → tokens.
/// Failures are rate-limited per user name and per client address ([`crate::limit`]).
pub async fn login(State(st): State<Shared>, Peer(addr): Peer, raw: Bytes) -> ApiResult {
    let v = body(&raw)?;
    let (Some(name), Some(password)) = (str_field(&v, "username"), str_field(&v, "password"))
    else {
        return Err(ApiError::BadRequest(
            "username and password are required".into(),
        ));
    };
    let now = std::time::Instant::now();
    let wait = st.logins().wait(name, addr, now);
    if !wait.is_zero() {
        tracing::warn!(
            user = name,
            ?addr,
            "login refused: too many failed attempts"
        );
        return Err(ApiError::TooMany(
            "too many failed logins: try again later".into(),
            wait,
        ));
    }
    let user = st.db().user_by_name(name)?;
    // Hash outside the store's lock: argon2 takes tens of milliseconds.
    let ok = match &user {
        Some(u) => verify_password_async(&u.password_hash, password).await,
        None => false,
    };
    let Some(user) = user.filter(|_| ok) else {
        st.logins().fail(name, addr, now);
        return Err(ApiError::Unauthorized(
            "invalid username or password".into(),
        ));
    };
    let db = st.db();
    let org = match str_field(&v, "organization_name") {
        Some(org_name) => {
            let org = db
                .org(org_name)?
                .ok_or_else(|| ApiError::NotFound("Found no organization with this name".into()))?;
            if user.organization.as_deref() != Some(org.id.as_str())
                && !user.roles.iter().any(|r| r == "Admin")
            {
                return Err(ApiError::Unauthorized(
                    "invalid username or password".into(),
                ));
            }
            org.id
        }
        None => user.organization.clone().unwrap_or_default(),
    };
    drop(db);
    let now = now_secs();
    Ok(Json(json!({
        "token": st.keys.issue(&user, &org, TokenKind::Access, now),
        "refresh_token": st.keys.issue(&user, &org, TokenKind::Refresh, now),
    })))
}

/// `POST /api/auth/logout`: revoke the bearer access token and, given
/// `{refresh_token}`, that one too (it must be the same user's).
pub async fn logout(State(st): State<Shared>, caller: Caller, raw: Bytes) -> ApiResult {
    let v = if raw.is_empty() {
        json!({})
    } else {
        body(&raw)?
    };
    let refresh = match str_field(&v, "refresh_token") {
        None => None,
        Some(t) => {
            let c = st
                .keys
                .verify(t, TokenKind::Refresh, now_secs())
                .map_err(|e| ApiError::BadRequest(format!("refresh_token: {e}")))?;
            if c.sub != caller.0.sub {
                return Err(ApiError::BadRequest("refresh_token: another user's".into()));
            }
            Some(c)
        }
    };
    let mut db = st.db();
    for c in std::iter::once(&caller.0).chain(refresh.as_ref()) {
        db.revoke_token(&c.jti, c.exp)?;
    }
    Ok(Json(json!({ "message": "Logged out" })))
}

/// `POST /api/auth/refresh` with the refresh token as bearer → a new access token.
pub async fn refresh(State(st): State<Shared>, Refresher(c): Refresher) -> ApiResult {
    let user = st
        .db()
        .user_by_name(&c.sub)?
        .ok_or_else(|| ApiError::NotFound("User does not exists".into()))?;
    Ok(Json(
        json!({ "token": st.keys.issue(&user, &c.organization, TokenKind::Access, now_secs()) }),
    ))
}

/// `POST /api/auth/register` (Admin): `{name, password, roles?, email?, organization?}`.
pub async fn register(State(st): State<Shared>, caller: Caller, raw: Bytes) -> ApiResult {
    let v = body(&raw)?;
    let name = str_field(&v, "name").unwrap_or_default();
    let password = str_field(&v, "password").unwrap_or_default();
    if name.is_empty() || password.is_empty() {
        return Err(ApiError::BadRequest(
            "name and password are required".into(),
        ));
    }
    let roles =
        roles_field(&v)?.unwrap_or_else(|| vec![Role::ApplicationProvider.as_str().to_owned()]);
    let org = match str_field(&v, "organization") {
        Some(o) => Some(find_org(&st, o)?.id),
        None => Some(caller.0.organization.clone()).filter(|o| !o.is_empty()),
    };
    let hash = hash_password_async(password)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let user = st
        .db()
        .create_user(
            name,
            str_field(&v, "email").unwrap_or_default(),
            &hash,
            &roles,
            org.as_deref(),
        )
        .map_err(|e| match e {
            crate::store::StoreError::Conflict(_) => {
                ApiError::Conflict("Username already exists".into())
            }
            other => other.into(),
        })?;
    Ok(Json(user_doc(&user)))
}

/// `GET /api/permission/{username}`: the user's roles.
pub async fn permission(
    State(st): State<Shared>,
    _caller: Caller,
    Path(username): Path<String>,
) -> ApiResult {
    let u = find_user(&st, &username)?;
    Ok(Json(json!({ "name": u.name, "roles": u.roles })))
}

/// `GET /api/user/{username}`: the user's own record (Admin: anyone's).
pub async fn get_user(
    State(st): State<Shared>,
    _caller: Caller,
    Path(username): Path<String>,
) -> ApiResult {
    let u = find_user(&st, &username)?;
    Ok(Json(user_doc(&u)))
}

/// `PUT /api/user/{username}` (Admin): change e-mail, roles, organization.
pub async fn put_user(
    State(st): State<Shared>,
    _caller: Caller,
    Path(username): Path<String>,
    raw: Bytes,
) -> ApiResult {
    let v = body(&raw)?;
    let roles = roles_field(&v)?;
    let org = match v.get("organization") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(o) => {
            let o = o
                .as_str()
                .ok_or_else(|| ApiError::BadRequest("organization: must be a string".into()))?;
            Some(Some(find_org(&st, o)?.id))
        }
    };
    let u = st.db().update_user(
        &username,
        str_field(&v, "email"),
        roles.as_deref(),
        org.as_ref().map(|o| o.as_deref()),
    )?;
    Ok(Json(user_doc(&u)))
}

/// `DELETE /api/user/{username}` (Admin).
pub async fn delete_user(
    State(st): State<Shared>,
    _caller: Caller,
    Path(username): Path<String>,
) -> ApiResult {
    st.db().delete_user(&username)?;
    Ok(Json(json!({ "message": "User deleted" })))
}

/// `POST /api/user/{username}`: change one's own password `{oldPassword, newPassword}`.
pub async fn change_password(
    State(st): State<Shared>,
    caller: Caller,
    Path(username): Path<String>,
    raw: Bytes,
) -> ApiResult {
    let v = body(&raw)?;
    let (Some(old), Some(new)) = (str_field(&v, "oldPassword"), str_field(&v, "newPassword"))
    else {
        return Err(ApiError::BadRequest(
            "oldPassword and newPassword are required".into(),
        ));
    };
    let u = caller.user(&st)?;
    if !verify_password_async(&u.password_hash, old).await {
        return Err(ApiError::BadRequest("Old password is not valid!".into()));
    }
    if old == new {
        return Err(ApiError::BadRequest(
            "Old password can't be the new password!".into(),
        ));
    }
    let hash = hash_password_async(new)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    st.db().set_password(&username, &hash)?;
    Ok(Json(json!({})))
}

/// `GET /api/users/` (Admin): every user.
pub async fn list_users(State(st): State<Shared>, _caller: Caller) -> ApiResult {
    Ok(Json(Value::Array(
        st.db().users(None)?.iter().map(user_doc).collect(),
    )))
}

/// `GET /api/users/{org_id}`: an organization's users (Admin, or its Organization_Admin).
pub async fn list_org_users(
    State(st): State<Shared>,
    _caller: Caller,
    Path(org_id): Path<String>,
) -> ApiResult {
    Ok(Json(Value::Array(
        st.db().users(Some(&org_id))?.iter().map(user_doc).collect(),
    )))
}

/// `GET /api/organization/` (Admin).
pub async fn list_orgs(State(st): State<Shared>, _caller: Caller) -> ApiResult {
    Ok(Json(Value::Array(
        st.db().orgs()?.iter().map(org_doc).collect(),
    )))
}

/// `POST /api/organization/` (Admin): `{name}`.
pub async fn create_org(State(st): State<Shared>, _caller: Caller, raw: Bytes) -> ApiResult {
    let v = body(&raw)?;
    let name = str_field(&v, "name")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::BadRequest("name is required".into()))?;
    Ok(Json(org_doc(&st.db().create_org(name)?)))
}

/// `GET /api/organization/{id}` (Admin).
pub async fn get_org(
    State(st): State<Shared>,
    _caller: Caller,
    Path(id): Path<String>,
) -> ApiResult {
    let o = find_org(&st, &id)?;
    Ok(Json(org_doc(&o)))
}

/// `PUT /api/organization/{id}` (Admin): `{name}`.
pub async fn put_org(
    State(st): State<Shared>,
    _caller: Caller,
    Path(id): Path<String>,
    raw: Bytes,
) -> ApiResult {
    let v = body(&raw)?;
    let name = str_field(&v, "name")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::BadRequest("name is required".into()))?;
    Ok(Json(org_doc(&st.db().rename_org(&id, name)?)))
}

/// `DELETE /api/organization/{id}` (Admin).
pub async fn delete_org(
    State(st): State<Shared>,
    _caller: Caller,
    Path(id): Path<String>,
) -> ApiResult {
    st.db().delete_org(&id)?;
    Ok(Json(json!({ "message": "Organization deleted" })))
}

/// `POST /api/auth/coap`: OSCORE credentials for the CoAP API, as an aiocoap
/// `settings.json` (the client side of the context) plus the CoAP port.
pub async fn coap_credentials(State(st): State<Shared>, caller: Caller) -> ApiResult {
    let me = caller.user(&st)?;
    let Some(link) = st.link.get() else {
        return Err(ApiError::NotFound("the CoAP API is not running".into()));
    };
    let mut kid = [0u8; 7];
    let mut secret = [0u8; 32];
    let mut salt = [0u8; 8];
    for b in [&mut kid[1..], &mut secret[..], &mut salt[..]] {
        getrandom::getrandom(b).map_err(|e| ApiError::Internal(e.to_string()))?;
    }
    kid[0] = crate::coap_api::USER_KID_PREFIX;
    st.db()
        .create_coap_credentials(&kid, &me.id, &secret, &salt)?;
    link.add_user_context(&kid, &secret, &salt)
        .await
        .map_err(ApiError::Internal)?;
    use grove_proto::util::hex;
    Ok(Json(json!({
        "sender-id_hex": hex(&kid),
        "recipient-id_hex": "",
        "secret_hex": hex(&secret),
        "salt_hex": hex(&salt),
        "algorithm": "AES-CCM-16-64-128",
        "kdf-hashfun": "sha256",
        "coap_port": link.local_addr().port(),
    })))
}
