//! Users and organizations.

use super::{Result, Store, StoreError, new_object_id, now_secs};
use rusqlite::{OptionalExtension, Row, params};

/// An organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgRow {
    /// Id (24 hex digits).
    pub id: String,
    /// Unique name.
    pub name: String,
}

/// A user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    /// Id (24 hex digits).
    pub id: String,
    /// Unique name (Oakestra's `username`).
    pub name: String,
    /// E-mail.
    pub email: String,
    /// argon2 PHC string.
    pub password_hash: String,
    /// Oakestra role names.
    pub roles: Vec<String>,
    /// Organization id.
    pub organization: Option<String>,
    /// Creation time, Unix seconds.
    pub created_at: i64,
    /// Tokens issued under another epoch are revoked (a password or role change).
    pub token_epoch: i64,
}

/// A CoAP API credential: (kid, master secret, master salt).
pub type CoapCredential = (Vec<u8>, Vec<u8>, Vec<u8>);

const USER_COLS: &str =
    "id, name, email, password_hash, roles, organization, created_at, token_epoch";

fn user(r: &Row<'_>) -> rusqlite::Result<UserRow> {
    let roles: String = r.get(4)?;
    Ok(UserRow {
        id: r.get(0)?,
        name: r.get(1)?,
        email: r.get(2)?,
        password_hash: r.get(3)?,
        roles: roles
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        organization: r.get(5)?,
        created_at: r.get(6)?,
        token_epoch: r.get(7)?,
    })
}

fn unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

impl Store {
    /// Create a user; the name must be free.
    pub fn create_user(
        &mut self,
        name: &str,
        email: &str,
        password_hash: &str,
        roles: &[String],
        organization: Option<&str>,
    ) -> Result<UserRow> {
        let row = UserRow {
            id: new_object_id(),
            name: name.to_owned(),
            email: email.to_owned(),
            password_hash: password_hash.to_owned(),
            roles: roles.to_vec(),
            organization: organization.map(str::to_owned),
            created_at: now_secs(),
            token_epoch: 0,
        };
        self.conn
            .execute(
                &format!("INSERT INTO users ({USER_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0)"),
                params![
                    row.id,
                    row.name,
                    row.email,
                    row.password_hash,
                    row.roles.join(","),
                    row.organization,
                    row.created_at
                ],
            )
            .map_err(|e| {
                if unique_violation(&e) {
                    StoreError::Conflict(format!("user \"{name}\" exists, or organization unknown"))
                } else {
                    e.into()
                }
            })?;
        Ok(row)
    }

    /// A user by name.
    pub fn user_by_name(&self, name: &str) -> Result<Option<UserRow>> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {USER_COLS} FROM users WHERE name = ?1"),
                [name],
                user,
            )
            .optional()?)
    }

    /// A user by id.
    pub fn user_by_id(&self, id: &str) -> Result<Option<UserRow>> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {USER_COLS} FROM users WHERE id = ?1"),
                [id],
                user,
            )
            .optional()?)
    }

    /// All users, or those of one organization.
    pub fn users(&self, organization: Option<&str>) -> Result<Vec<UserRow>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {USER_COLS} FROM users WHERE ?1 IS NULL OR organization = ?1 ORDER BY rowid"
        ))?;
        let rows = stmt
            .query_map([organization], user)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Change a user's e-mail, roles and organization (each only when given).
    pub fn update_user(
        &mut self,
        name: &str,
        email: Option<&str>,
        roles: Option<&[String]>,
        organization: Option<Option<&str>>,
    ) -> Result<UserRow> {
        let tx = self.conn.transaction()?;
        let mut u = tx
            .query_row(
                &format!("SELECT {USER_COLS} FROM users WHERE name = ?1"),
                [name],
                user,
            )
            .optional()?
            .ok_or(StoreError::NotFound("user"))?;
        if let Some(e) = email {
            u.email = e.to_owned();
        }
        let before = (u.roles.clone(), u.organization.clone());
        if let Some(r) = roles {
            u.roles = r.to_vec();
        }
        if let Some(o) = organization {
            u.organization = o.map(str::to_owned);
        }
        // Tokens carry the roles and the organization: new ones revoke the old.
        if before != (u.roles.clone(), u.organization.clone()) {
            u.token_epoch += 1;
        }
        tx.execute(
            "UPDATE users SET email = ?2, roles = ?3, organization = ?4, token_epoch = ?5 WHERE id = ?1",
            params![u.id, u.email, u.roles.join(","), u.organization, u.token_epoch],
        )?;
        tx.commit()?;
        Ok(u)
    }

    /// Replace a user's password hash, revoking every token and CoAP credential the
    /// user holds.
    pub fn set_password(&mut self, name: &str, hash: &str) -> Result<()> {
        let tx = self.conn.transaction()?;
        let n = tx.execute(
            "UPDATE users SET password_hash = ?2, token_epoch = token_epoch + 1 WHERE name = ?1",
            params![name, hash],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound("user"));
        }
        tx.execute(
            "DELETE FROM coap_credentials WHERE user_id = (SELECT id FROM users WHERE name = ?1)",
            [name],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Revoke one token (by its id) until it would have expired anyway; ids of tokens
    /// past their expiry are forgotten on the way.
    pub fn revoke_token(&mut self, jti: &str, expires_at: i64) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "DELETE FROM revoked_tokens WHERE expires_at < ?1",
            [now_secs()],
        )?;
        tx.execute(
            "INSERT OR IGNORE INTO revoked_tokens (jti, expires_at) VALUES (?1, ?2)",
            params![jti, expires_at],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Whether a token id was revoked.
    pub fn token_revoked(&self, jti: &str) -> Result<bool> {
        Ok(self
            .conn
            .query_row("SELECT 1 FROM revoked_tokens WHERE jti = ?1", [jti], |_| {
                Ok(())
            })
            .optional()?
            .is_some())
    }

    /// Delete a user and (by cascade) their applications.
    pub fn delete_user(&mut self, name: &str) -> Result<()> {
        match self
            .conn
            .execute("DELETE FROM users WHERE name = ?1", [name])?
        {
            0 => Err(StoreError::NotFound("user")),
            _ => Ok(()),
        }
    }

    /// Store OSCORE credentials a user obtained for the CoAP API.
    pub fn create_coap_credentials(
        &mut self,
        kid: &[u8],
        user_id: &str,
        secret: &[u8],
        salt: &[u8],
    ) -> Result<()> {
        self.conn.execute(
            "INSERT INTO coap_credentials (kid, user_id, secret, salt, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![kid, user_id, secret, salt, now_secs()],
        )?;
        Ok(())
    }

    /// The user a CoAP kid belongs to.
    pub fn coap_user(&self, kid: &[u8]) -> Result<Option<UserRow>> {
        Ok(self
            .conn
            .query_row(
                &format!(
                    "SELECT {} FROM users WHERE id = (SELECT user_id FROM coap_credentials WHERE kid = ?1)",
                    USER_COLS
                ),
                [kid],
                user,
            )
            .optional()?)
    }

    /// Every CoAP credential: (kid, secret, salt).
    pub fn coap_credentials(&self) -> Result<Vec<CoapCredential>> {
        let mut stmt = self
            .conn
            .prepare("SELECT kid, secret, salt FROM coap_credentials")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Create an organization; the name must be free.
    pub fn create_org(&mut self, name: &str) -> Result<OrgRow> {
        let row = OrgRow {
            id: new_object_id(),
            name: name.to_owned(),
        };
        self.conn
            .execute(
                "INSERT INTO organizations (id, name) VALUES (?1, ?2)",
                params![row.id, row.name],
            )
            .map_err(|e| {
                if unique_violation(&e) {
                    StoreError::Conflict(format!("organization \"{name}\" exists"))
                } else {
                    e.into()
                }
            })?;
        Ok(row)
    }

    /// All organizations.
    pub fn orgs(&self) -> Result<Vec<OrgRow>> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, name FROM organizations ORDER BY name")?;
        let rows = stmt
            .query_map([], |r| {
                Ok(OrgRow {
                    id: r.get(0)?,
                    name: r.get(1)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// An organization by id or by name.
    pub fn org(&self, id_or_name: &str) -> Result<Option<OrgRow>> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, name FROM organizations WHERE id = ?1 OR name = ?1",
                [id_or_name],
                |r| {
                    Ok(OrgRow {
                        id: r.get(0)?,
                        name: r.get(1)?,
                    })
                },
            )
            .optional()?)
    }

    /// Rename an organization.
    pub fn rename_org(&mut self, id: &str, name: &str) -> Result<OrgRow> {
        match self.conn.execute(
            "UPDATE organizations SET name = ?2 WHERE id = ?1",
            params![id, name],
        ) {
            Ok(0) => Err(StoreError::NotFound("organization")),
            Ok(_) => Ok(OrgRow {
                id: id.to_owned(),
                name: name.to_owned(),
            }),
            Err(e) if unique_violation(&e) => Err(StoreError::Conflict(format!(
                "organization \"{name}\" exists"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// Delete an organization (its users stay, without organization).
    pub fn delete_org(&mut self, id: &str) -> Result<()> {
        match self
            .conn
            .execute("DELETE FROM organizations WHERE id = ?1", [id])?
        {
            0 => Err(StoreError::NotFound("organization")),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_unique_by_name_and_keep_their_fields() {
        let mut s = Store::in_memory().unwrap();
        let org = s.create_org("tum").unwrap();
        let roles = vec!["Application_Provider".to_owned()];
        let u = s
            .create_user("alice", "a@x", "$argon2id$...", &roles, Some(&org.id))
            .unwrap();
        assert!(matches!(
            s.create_user("alice", "", "h", &[], None),
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(s.user_by_name("alice").unwrap(), Some(u.clone()));
        assert_eq!(s.user_by_id(&u.id).unwrap().unwrap().roles, roles);
        assert_eq!(s.users(Some(&org.id)).unwrap().len(), 1);
        assert_eq!(s.users(Some("other")).unwrap().len(), 0);
        let u2 = s
            .update_user("alice", Some("new@x"), None, Some(None))
            .unwrap();
        assert_eq!((u2.email.as_str(), u2.organization), ("new@x", None));
        s.set_password("alice", "h2").unwrap();
        assert_eq!(
            s.user_by_name("alice").unwrap().unwrap().password_hash,
            "h2"
        );
        s.delete_user("alice").unwrap();
        assert!(matches!(
            s.delete_user("alice"),
            Err(StoreError::NotFound("user"))
        ));
    }

    #[test]
    fn organizations_are_unique_and_deleting_one_keeps_its_users() {
        let mut s = Store::in_memory().unwrap();
        let o = s.create_org("edge").unwrap();
        assert!(matches!(s.create_org("edge"), Err(StoreError::Conflict(_))));
        s.create_user("bob", "", "h", &[], Some(&o.id)).unwrap();
        assert_eq!(s.org("edge").unwrap(), Some(o.clone()));
        s.rename_org(&o.id, "edge2").unwrap();
        assert_eq!(s.orgs().unwrap()[0].name, "edge2");
        s.delete_org(&o.id).unwrap();
        assert_eq!(s.user_by_name("bob").unwrap().unwrap().organization, None);
    }
}
