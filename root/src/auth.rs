//! Authentication: argon2 password hashes, JWT access and refresh tokens signed with a
//! key kept in the data directory, Oakestra's roles, and the first `Admin`.
//!
//! Tokens carry Oakestra's claims (`sub` and `user` = user name, `roles`,
//! `organization`), so clients that read them keep working.

use crate::store::{Store, StoreError, UserRow};
use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Lifetime of an access token (Oakestra's: 10 minutes).
pub const ACCESS_TTL_SECS: i64 = 10 * 60;
/// Lifetime of a refresh token (Oakestra's: 7 days).
pub const REFRESH_TTL_SECS: i64 = 7 * 24 * 3600;

/// Oakestra's roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Sees and changes everything.
    Admin,
    /// Manages its organization's users.
    OrganizationAdmin,
    /// Deploys applications.
    ApplicationProvider,
    /// Contributes clusters.
    InfrastructureProvider,
}

impl Role {
    /// As Oakestra writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "Admin",
            Self::OrganizationAdmin => "Organization_Admin",
            Self::ApplicationProvider => "Application_Provider",
            Self::InfrastructureProvider => "Infrastructure_Provider",
        }
    }

    /// Parse Oakestra's name.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Admin,
            Self::OrganizationAdmin,
            Self::ApplicationProvider,
            Self::InfrastructureProvider,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// Access or refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// Short-lived, for API calls.
    Access,
    /// Long-lived, only for `/api/auth/refresh`.
    Refresh,
}

/// The claims of a Grove (and Oakestra) token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user name.
    pub sub: String,
    /// The user name again (Oakestra's `user` claim).
    pub user: String,
    /// Role names.
    pub roles: Vec<String>,
    /// Organization id.
    pub organization: String,
    /// Access or refresh.
    #[serde(rename = "type")]
    pub kind: TokenKind,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Expires at, Unix seconds.
    pub exp: i64,
    /// The token's id (16 random bytes, hex): what logging out revokes.
    #[serde(default)]
    pub jti: String,
    /// The user's token epoch when issued: a password or role change moves the
    /// user's on, revoking every token of the old one.
    #[serde(default)]
    pub epoch: i64,
}

impl Claims {
    /// Whether the token holder has a role.
    pub fn has(&self, role: Role) -> bool {
        self.roles.iter().any(|r| r == role.as_str())
    }
}

/// Why a token or password was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The token's time is up.
    #[error("token expired")]
    Expired,
    /// A refresh token where an access token belongs, or the reverse.
    #[error("wrong kind of token: expected a {0:?} token")]
    WrongKind(TokenKind),
    /// Bad signature or malformed.
    #[error("invalid token")]
    Invalid,
    /// The key file.
    #[error("JWT key {path}: {source}")]
    Key {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Hashing failed (never with sane parameters).
    #[error("password hashing failed: {0}")]
    Hash(String),
    /// The store.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Signing and verification keys.
pub struct AuthKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for AuthKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthKeys(..)")
    }
}

/// Write a new file readable by its owner only; fails if it exists.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

impl AuthKeys {
    /// Load `<dir>/jwt.key`, creating it (32 random bytes, mode 0600) on first start.
    pub fn load_or_create(dir: &Path) -> Result<Self, AuthError> {
        let path = dir.join("jwt.key");
        let err = |source| AuthError::Key {
            path: path.display().to_string(),
            source,
        };
        let mut key = Vec::new();
        match std::fs::File::open(&path) {
            Ok(mut f) => {
                f.read_to_end(&mut key).map_err(err)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                key = vec![0u8; 32];
                getrandom::getrandom(&mut key)
                    .map_err(|e| err(std::io::Error::other(e.to_string())))?;
                write_private(&path, &key).map_err(err)?;
            }
            Err(e) => return Err(err(e)),
        }
        if key.len() < 32 {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "shorter than 32 bytes",
            )));
        }
        Ok(Self::from_secret(&key))
    }

    /// Keys from a secret (tests).
    pub fn from_secret(secret: &[u8]) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        }
    }

    /// Issue a token of `kind` for `user` in `organization`, valid from `now`.
    pub fn issue(&self, user: &UserRow, organization: &str, kind: TokenKind, now: i64) -> String {
        let mut id = [0u8; 16];
        let _ = getrandom::getrandom(&mut id);
        let ttl = match kind {
            TokenKind::Access => ACCESS_TTL_SECS,
            TokenKind::Refresh => REFRESH_TTL_SECS,
        };
        let claims = Claims {
            sub: user.name.clone(),
            user: user.name.clone(),
            roles: user.roles.clone(),
            organization: organization.to_owned(),
            kind,
            iat: now,
            exp: now + ttl,
            jti: grove_proto::util::hex(&id),
            epoch: user.token_epoch,
        };
        // HS256 over serializable claims cannot fail.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .unwrap_or_default()
    }

    /// Verify a token of the expected kind at time `now`.
    pub fn verify(&self, token: &str, kind: TokenKind, now: i64) -> Result<Claims, AuthError> {
        let mut v = Validation::new(Algorithm::HS256);
        // Expiry is checked below against the caller's clock.
        v.validate_exp = false;
        v.required_spec_claims.clear();
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &v)
            .map_err(|_| AuthError::Invalid)?
            .claims;
        if claims.exp <= now {
            return Err(AuthError::Expired);
        }
        if claims.kind != kind {
            return Err(AuthError::WrongKind(kind));
        }
        Ok(claims)
    }
}

/// An argon2id hash of a password, as a PHC string.
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).map_err(|e| AuthError::Hash(e.to_string()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| AuthError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

/// Whether `password` matches a stored hash.
pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// Password hashes computed at once (argon2 holds 19 MiB of working memory for each):
/// on tokio's blocking pool, never on an async worker, and at most this many, so a
/// burst of logins neither stalls the API nor grows the heap by a hash per login.
const HASHES_AT_ONCE: usize = 2;
static HASHING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(HASHES_AT_ONCE);

/// Run one argon2 computation off the async threads, within [`HASHES_AT_ONCE`].
async fn off_thread<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    // The semaphore is never closed.
    let _permit = HASHING.acquire().await.ok();
    match tokio::task::spawn_blocking(work).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// [`hash_password`] off the async threads.
pub async fn hash_password_async(password: &str) -> Result<String, AuthError> {
    let password = password.to_owned();
    off_thread(move || hash_password(&password)).await
}

/// [`verify_password`] off the async threads.
pub async fn verify_password_async(hash: &str, password: &str) -> bool {
    let (hash, password) = (hash.to_owned(), password.to_owned());
    off_thread(move || verify_password(&hash, &password)).await
}

/// A random password of 20 letters and digits.
pub fn random_password() -> String {
    const CHARS: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut b = [0u8; 20];
    let _ = getrandom::getrandom(&mut b);
    b.iter()
        .map(|x| char::from(CHARS[usize::from(*x) % CHARS.len()]))
        .collect()
}

/// Create the `root` organization and the `Admin` user on first start.
///
/// The password is `password` if given; otherwise a random one, written once to
/// `<dir>/initial-admin-password` (mode 0600) and returned (the caller says where it
/// is, never what it is).
/// An existing `Admin` is left as it is.
pub fn bootstrap_admin(
    store: &mut Store,
    dir: &Path,
    password: Option<&str>,
) -> Result<Option<String>, AuthError> {
    if store.user_by_name("Admin")?.is_some() {
        return Ok(None);
    }
    let org = match store.org("root")? {
        Some(o) => o,
        None => store.create_org("root")?,
    };
    let (pw, generated) = match password {
        Some(p) => (p.to_owned(), None),
        None => {
            let p = random_password();
            let path = dir.join("initial-admin-password");
            write_private(&path, format!("{p}\n").as_bytes()).map_err(|source| AuthError::Key {
                path: path.display().to_string(),
                source,
            })?;
            (p.clone(), Some(p))
        }
    };
    store.create_user(
        "Admin",
        "",
        &hash_password(&pw)?,
        &[Role::Admin.as_str().to_owned()],
        Some(&org.id),
    )?;
    Ok(generated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("grove-auth-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn user(name: &str, roles: &[String]) -> UserRow {
        UserRow {
            id: "0".repeat(24),
            name: name.into(),
            email: String::new(),
            password_hash: String::new(),
            roles: roles.to_vec(),
            organization: None,
            created_at: 0,
            token_epoch: 3,
        }
    }

    #[test]
    fn the_key_is_created_once_private_and_reused() {
        let d = tmp("key");
        let k1 = AuthKeys::load_or_create(&d).unwrap();
        let mode = std::fs::metadata(d.join("jwt.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let t = k1.issue(&user("alice", &[]), "org", TokenKind::Access, 1000);
        let k2 = AuthKeys::load_or_create(&d).unwrap();
        assert_eq!(
            k2.verify(&t, TokenKind::Access, 1001).unwrap().user,
            "alice",
            "a restart keeps tokens valid"
        );
    }

    #[test]
    fn tokens_expire_have_a_kind_and_a_signature() {
        let k = AuthKeys::from_secret(&[7; 32]);
        let roles = vec!["Admin".to_owned()];
        let admin = user("Admin", &roles);
        let access = k.issue(&admin, "o1", TokenKind::Access, 1000);
        let c = k
            .verify(&access, TokenKind::Access, 1000 + ACCESS_TTL_SECS - 1)
            .unwrap();
        assert!(c.has(Role::Admin) && !c.has(Role::ApplicationProvider));
        assert_eq!((c.sub.as_str(), c.organization.as_str()), ("Admin", "o1"));
        assert!(matches!(
            k.verify(&access, TokenKind::Access, 1000 + ACCESS_TTL_SECS),
            Err(AuthError::Expired)
        ));
        assert!(matches!(
            k.verify(&access, TokenKind::Refresh, 1001),
            Err(AuthError::WrongKind(TokenKind::Refresh))
        ));
        let refresh = k.issue(&admin, "o1", TokenKind::Refresh, 1000);
        assert!(
            k.verify(&refresh, TokenKind::Refresh, 1000 + 6 * 24 * 3600)
                .is_ok()
        );
        let other = AuthKeys::from_secret(&[8; 32]);
        assert!(matches!(
            other.verify(&access, TokenKind::Access, 1001),
            Err(AuthError::Invalid)
        ));
        assert!(matches!(
            k.verify("not.a.token", TokenKind::Access, 1001),
            Err(AuthError::Invalid)
        ));
    }

    #[test]
    fn passwords_hash_with_argon2_and_verify() {
        let h = hash_password("Admin").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password(&h, "Admin"));
        assert!(!verify_password(&h, "admin"));
        assert!(!verify_password("garbage", "Admin"));
        assert_ne!(hash_password("Admin").unwrap(), h, "salted");
    }

    #[test]
    fn the_first_admin_gets_the_given_password_or_a_random_one_written_privately() {
        let d = tmp("admin");
        let mut s = Store::in_memory().unwrap();
        assert_eq!(bootstrap_admin(&mut s, &d, Some("Admin")).unwrap(), None);
        let admin = s.user_by_name("Admin").unwrap().unwrap();
        assert!(verify_password(&admin.password_hash, "Admin"));
        assert_eq!(admin.roles, ["Admin"]);
        assert_eq!(s.org("root").unwrap().map(|o| o.id), admin.organization);

        let d2 = tmp("admin-random");
        let mut s2 = Store::in_memory().unwrap();
        let pw = bootstrap_admin(&mut s2, &d2, None)
            .unwrap()
            .expect("generated");
        let file = d2.join("initial-admin-password");
        assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), pw);
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(verify_password(
            &s2.user_by_name("Admin").unwrap().unwrap().password_hash,
            &pw
        ));
        // A second start changes nothing.
        assert_eq!(bootstrap_admin(&mut s2, &d2, Some("other")).unwrap(), None);
        assert!(verify_password(
            &s2.user_by_name("Admin").unwrap().unwrap().password_hash,
            &pw
        ));
    }
}
