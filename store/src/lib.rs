//! What the root's and the cluster's stores share, written once: a SQLite database
//! opened and migrated the same way ([`open`]), and the bookkeeping of their lower
//! peers' keys ([`PeerKeys`]: a pending next key beside the one in use, committed when
//! the peer speaks with it), which both stores' `link::upper::KeyStore` impls call.
//! The agent never links it (no SQLite on workers).

use grove_proto::link::PeerKey;
use rusqlite::{Connection, OptionalExtension, params};
use std::path::Path;

/// Why a database could not be opened, or a key not kept.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite.
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    /// The database file's permissions could not be narrowed.
    #[error("database {0}: {1}")]
    Private(String, std::io::Error),
    /// The file's schema is newer than this program.
    #[error("database schema version {found} is newer than this program ({known}); upgrade it")]
    Newer {
        /// The file's version.
        found: usize,
        /// This program's.
        known: usize,
    },
    /// No such (non-evicted) peer.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The peer went through every key generation its sender id can carry.
    #[error("key generations exhausted")]
    Exhausted,
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Open the database at `path` (in memory when none): kept to its owner (0600, with
/// its WAL and shared-memory files: it holds keys), WAL with `synchronous = FULL`
/// (nothing acknowledged is lost), foreign keys on, and `migrations` applied in order
/// from the one `PRAGMA user_version` says comes next, each in its transaction.
pub fn open(path: Option<&Path>, migrations: &[&str]) -> Result<Connection, StoreError> {
    let mut conn = match path {
        Some(p) => {
            let conn = Connection::open(p)?;
            grove_proto::util::private_database(p)
                .map_err(|e| StoreError::Private(p.display().to_string(), e))?;
            conn
        }
        None => Connection::open_in_memory()?,
    };
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let version: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > migrations.len() {
        return Err(StoreError::Newer {
            found: version,
            known: migrations.len(),
        });
    }
    for (i, m) in migrations.iter().enumerate().skip(version) {
        let tx = conn.transaction()?;
        tx.execute_batch(m)?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
    }
    Ok(conn)
}

/// A key's secret and salt.
type SecretAndSalt = (Vec<u8>, Vec<u8>);

/// Where a store keeps its lower peers' keys: a table with `id`, `evicted`, `key_gen`,
/// the key in use (`secret`, `salt`: named per table), `pending_secret`,
/// `pending_salt` and `rekey`.
#[derive(Debug, Clone, Copy)]
pub struct PeerKeys {
    /// The table.
    pub table: &'static str,
    /// Its column of the secret in use.
    pub secret: &'static str,
    /// Its column of the salt in use.
    pub salt: &'static str,
    /// What a peer is, for errors ("worker", "cluster").
    pub what: &'static str,
}

impl PeerKeys {
    /// Peer `id`'s next key, kept as pending beside the one in use: the key and
    /// whether it is new. While one is pending, asking again gives the same one (a
    /// peer whose answer was lost asks again, and must not be handed a key other than
    /// the one it may already use).
    pub fn begin_rekey(
        &self,
        conn: &mut Connection,
        id: u32,
        candidate: &PeerKey,
    ) -> Result<(PeerKey, bool), StoreError> {
        let tx = conn.transaction()?;
        let (gen_now, pending): (u32, Option<SecretAndSalt>) = tx
            .query_row(
                &format!(
                    "SELECT key_gen, pending_secret, pending_salt FROM {} \
                     WHERE id = ?1 AND NOT evicted",
                    self.table
                ),
                [id],
                |r| {
                    let (a, b): (Option<Vec<u8>>, Option<Vec<u8>>) = (r.get(1)?, r.get(2)?);
                    Ok((r.get(0)?, a.zip(b)))
                },
            )
            .optional()?
            .ok_or(StoreError::NotFound(self.what))?;
        if let Some((secret, salt)) = pending {
            let key = PeerKey {
                generation: gen_now + 1,
                secret,
                salt,
            };
            return Ok((key, false));
        }
        if gen_now >= grove_proto::util::MAX_KEY_GENERATION {
            return Err(StoreError::Exhausted);
        }
        tx.execute(
            &format!(
                "UPDATE {} SET pending_secret = ?2, pending_salt = ?3 WHERE id = ?1",
                self.table
            ),
            params![id, candidate.secret, candidate.salt],
        )?;
        tx.commit()?;
        let key = PeerKey {
            generation: gen_now + 1,
            ..candidate.clone()
        };
        Ok((key, true))
    }

    /// Peer `id` spoke with its pending key of `generation`: it becomes the key in
    /// use. False when there was no such pending key.
    pub fn commit_rekey(
        &self,
        conn: &Connection,
        id: u32,
        generation: u32,
    ) -> Result<bool, StoreError> {
        let n = conn.execute(
            &format!(
                "UPDATE {t} SET {s} = pending_secret, {a} = pending_salt, key_gen = ?2,
                   pending_secret = NULL, pending_salt = NULL, rekey = 0
                 WHERE id = ?1 AND key_gen + 1 = ?2 AND pending_secret IS NOT NULL",
                t = self.table,
                s = self.secret,
                a = self.salt
            ),
            params![id, generation],
        )?;
        Ok(n > 0)
    }
}

/// The migration adding the re-key bookkeeping to a table of peers (`$table`, a
/// literal): the key in use is generation `key_gen`, a new one waits in `pending_*`
/// until the peer speaks with it, `rekey` says one was asked for, `evicted` that the
/// peer has no key at all.
#[macro_export]
macro_rules! rekey_columns {
    ($table:literal) => {
        concat!(
            "ALTER TABLE ",
            $table,
            " ADD COLUMN key_gen INTEGER NOT NULL DEFAULT 0;\n",
            "ALTER TABLE ",
            $table,
            " ADD COLUMN pending_secret BLOB;\n",
            "ALTER TABLE ",
            $table,
            " ADD COLUMN pending_salt BLOB;\n",
            "ALTER TABLE ",
            $table,
            " ADD COLUMN rekey INTEGER NOT NULL DEFAULT 0;\n",
            "ALTER TABLE ",
            $table,
            " ADD COLUMN evicted INTEGER NOT NULL DEFAULT 0;\n",
        )
    };
}

/// `link::upper::KeyStore` for a store type `$store` with a `conn` field, its peers'
/// keys kept where `$keys` (a [`PeerKeys`]) says, its errors converted from
/// [`StoreError`].
#[macro_export]
macro_rules! impl_key_store {
    ($store:ty, $error:ty, $keys:expr) => {
        impl grove_proto::link::upper::KeyStore for $store {
            type Error = $error;

            fn begin_rekey(
                &mut self,
                id: u32,
                candidate: &grove_proto::link::PeerKey,
            ) -> ::std::result::Result<(grove_proto::link::PeerKey, bool), $error> {
                Ok($keys.begin_rekey(&mut self.conn, id, candidate)?)
            }

            fn commit_rekey(
                &mut self,
                id: u32,
                generation: u32,
            ) -> ::std::result::Result<bool, $error> {
                Ok($keys.commit_rekey(&self.conn, id, generation)?)
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &[&str] = &[
        "CREATE TABLE peers (id INTEGER PRIMARY KEY, evicted INTEGER NOT NULL DEFAULT 0,
           key_gen INTEGER NOT NULL DEFAULT 0, s BLOB, a BLOB,
           pending_secret BLOB, pending_salt BLOB, rekey INTEGER NOT NULL DEFAULT 0)",
        "INSERT INTO peers (id, s, a, rekey) VALUES (7, x'01', x'02', 1)",
    ];
    const KEYS: PeerKeys = PeerKeys {
        table: "peers",
        secret: "s",
        salt: "a",
        what: "peer",
    };

    fn key(b: u8) -> PeerKey {
        PeerKey {
            generation: 0,
            secret: vec![b; 32],
            salt: vec![b; 8],
        }
    }

    #[test]
    fn a_pending_key_is_handed_out_once_and_committed_only_at_its_generation() {
        let mut c = open(None, SCHEMA).unwrap();
        let (k1, fresh) = KEYS.begin_rekey(&mut c, 7, &key(9)).unwrap();
        assert!(fresh);
        assert_eq!((k1.generation, k1.secret.clone()), (1, vec![9; 32]));
        // Asked again (the answer was lost): the same key, not the new candidate.
        let (again, fresh) = KEYS.begin_rekey(&mut c, 7, &key(5)).unwrap();
        assert!(!fresh);
        assert_eq!(again, k1);
        assert!(
            !KEYS.commit_rekey(&c, 7, 2).unwrap(),
            "no generation 2 pending"
        );
        assert!(KEYS.commit_rekey(&c, 7, 1).unwrap());
        let (g, s, rekey): (u32, Vec<u8>, bool) = c
            .query_row(
                "SELECT key_gen, s, rekey FROM peers WHERE id = 7",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!((g, s, rekey), (1, vec![9; 32], false));
        assert!(!KEYS.commit_rekey(&c, 7, 1).unwrap(), "committed once");
        assert!(matches!(
            KEYS.begin_rekey(&mut c, 8, &key(1)),
            Err(StoreError::NotFound("peer"))
        ));
    }

    #[test]
    fn migrations_run_once_and_a_newer_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("grove-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.db");
        drop(open(Some(&path), SCHEMA).unwrap());
        // Opened again: nothing runs twice (the INSERT would fail on its key).
        let c = open(Some(&path), SCHEMA).unwrap();
        let n: u32 = c
            .query_row("SELECT count(*) FROM peers", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
        drop(c);
        let err = open(Some(&path), &SCHEMA[..1]).unwrap_err();
        assert!(
            matches!(err, StoreError::Newer { found: 2, known: 1 }),
            "{err}"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
