//! The root's SQLite store: one file, WAL, foreign keys, versioned migrations.
//!
//! Every change is one transaction, committed (synchronous = FULL) before the caller
//! acknowledges anything, so a root killed at any moment restarts with everything it
//! ever acknowledged.

mod apps;
mod clusters;
mod users;

pub use apps::{AppRow, InstanceRow, NewService, ServiceRow};
pub use clusters::ClusterRow;
pub use users::{OrgRow, UserRow};

use rusqlite::{Connection, OptionalExtension, params};
use std::path::{Path, PathBuf};

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Opening or migrating the database file.
    #[error("database {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: rusqlite::Error,
    },
    /// A query failed.
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    /// The object does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A uniqueness rule would be broken (name taken, IP in use, ...).
    #[error("{0}")]
    Conflict(String),
    /// The pool has no address left.
    #[error("{0} exhausted")]
    Exhausted(&'static str),
}

impl From<grove_store::StoreError> for StoreError {
    fn from(e: grove_store::StoreError) -> Self {
        match e {
            grove_store::StoreError::Sql(e) => Self::Sql(e),
            grove_store::StoreError::NotFound(what) => Self::NotFound(what),
            grove_store::StoreError::Exhausted => Self::Exhausted("key generations"),
            grove_store::StoreError::Newer { found, known } => Self::Conflict(format!(
                "database schema version {found} is newer than this grove-root ({known}); \
                 upgrade grove-root"
            )),
            grove_store::StoreError::Private(path, e) => Self::Open {
                path: path.into(),
                source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
            },
        }
    }
}

/// Result of store operations.
pub type Result<T> = std::result::Result<T, StoreError>;

/// Schema versions, applied in order; `PRAGMA user_version` records how many ran.
/// Never edit one that has shipped: add the next.
const MIGRATIONS: &[&str] = &[
    // 1: users, organizations, applications, services, instances and their history,
    //    clusters, cluster join tokens, address allocations.
    r#"
    CREATE TABLE organizations (
        id   TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE
    );
    CREATE TABLE users (
        id            TEXT PRIMARY KEY,
        name          TEXT NOT NULL UNIQUE,
        email         TEXT NOT NULL DEFAULT '',
        password_hash TEXT NOT NULL,
        roles         TEXT NOT NULL,
        organization  TEXT REFERENCES organizations(id) ON DELETE SET NULL,
        created_at    INTEGER NOT NULL
    );
    CREATE TABLE applications (
        id         TEXT PRIMARY KEY,
        owner      TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        name       TEXT NOT NULL,
        namespace  TEXT NOT NULL,
        descr      TEXT NOT NULL DEFAULT '',
        extra      TEXT NOT NULL DEFAULT '{}',
        created_at INTEGER NOT NULL,
        UNIQUE (owner, name, namespace)
    );
    CREATE TABLE services (
        id          TEXT PRIMARY KEY,
        application TEXT NOT NULL REFERENCES applications(id) ON DELETE CASCADE,
        name        TEXT NOT NULL,
        namespace   TEXT NOT NULL,
        spec        TEXT NOT NULL,
        rr_ip       INTEGER UNIQUE,
        closest_ip  INTEGER UNIQUE,
        generation  INTEGER NOT NULL DEFAULT 1,
        created_at  INTEGER NOT NULL,
        UNIQUE (application, name, namespace)
    );
    CREATE TABLE instances (
        service    TEXT NOT NULL REFERENCES services(id) ON DELETE CASCADE,
        number     INTEGER NOT NULL,
        status     TEXT NOT NULL,
        reason     TEXT,
        cluster    INTEGER,
        node       TEXT,
        ip         INTEGER UNIQUE,
        generation INTEGER NOT NULL DEFAULT 1,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (service, number)
    );
    CREATE TABLE instance_history (
        seq     INTEGER PRIMARY KEY AUTOINCREMENT,
        service TEXT NOT NULL,
        number  INTEGER NOT NULL,
        status  TEXT NOT NULL,
        reason  TEXT,
        at      INTEGER NOT NULL
    );
    CREATE INDEX instance_history_by_instance ON instance_history (service, number);
    CREATE TABLE clusters (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        name        TEXT NOT NULL UNIQUE,
        lat         REAL,
        lon         REAL,
        aggregate   BLOB,
        last_report INTEGER,
        registered  INTEGER NOT NULL
    );
    CREATE TABLE cluster_tokens (
        id         TEXT PRIMARY KEY,
        secret     BLOB NOT NULL,
        expires_at INTEGER NOT NULL,
        single_use INTEGER NOT NULL,
        used       INTEGER NOT NULL DEFAULT 0,
        created_by TEXT
    );
    "#,
    // 2: the long-term OSCORE credentials each cluster got at registration.
    r#"
    ALTER TABLE clusters ADD COLUMN oscore_secret BLOB;
    ALTER TABLE clusters ADD COLUMN oscore_salt BLOB;
    "#,
    // 3: OSCORE credentials of users of the CoAP API.
    r#"
    CREATE TABLE coap_credentials (
        kid        BLOB PRIMARY KEY,
        user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        secret     BLOB NOT NULL,
        salt       BLOB NOT NULL,
        created_at INTEGER NOT NULL
    );
    "#,
    // 4: every generation of a service's spec (old instances keep theirs while a
    //    replacement rolls), and the instance count a rollout keeps up.
    r#"
    CREATE TABLE service_specs (
        service    TEXT NOT NULL REFERENCES services(id) ON DELETE CASCADE,
        generation INTEGER NOT NULL,
        spec       TEXT NOT NULL,
        PRIMARY KEY (service, generation)
    );
    INSERT INTO service_specs (service, generation, spec) SELECT id, generation, spec FROM services;
    ALTER TABLE services ADD COLUMN rollout_target INTEGER;
    "#,
    // 5: IPv6 service and instance addresses, and the pool of worker-subnet blocks
    //    handed to clusters.
    r#"
    ALTER TABLE services ADD COLUMN rr_ip_v6 TEXT;
    ALTER TABLE services ADD COLUMN closest_ip_v6 TEXT;
    ALTER TABLE instances ADD COLUMN ip6 TEXT;
    CREATE UNIQUE INDEX services_rr_ip_v6 ON services (rr_ip_v6);
    CREATE UNIQUE INDEX services_closest_ip_v6 ON services (closest_ip_v6);
    CREATE UNIQUE INDEX instances_ip6 ON instances (ip6);
    CREATE TABLE subnet_blocks (
        cluster INTEGER PRIMARY KEY REFERENCES clusters(id) ON DELETE CASCADE,
        block   INTEGER NOT NULL UNIQUE
    );
    "#,
    // 6: each instance's overlay addresses in its worker's subnets, as its cluster
    //    reports them (the directory gives them to other clusters' workers).
    r#"
    ALTER TABLE instances ADD COLUMN addr INTEGER;
    ALTER TABLE instances ADD COLUMN addr6 TEXT;
    "#,
    // 7: a cluster's block of worker subnets may span several /18s (`--max-workers`).
    r#"
    ALTER TABLE subnet_blocks ADD COLUMN count INTEGER NOT NULL DEFAULT 1;
    "#,
    // 8: revoking tokens: a user's tokens name the user's epoch (a password or role
    //    change moves it on), and a logged-out token's id is kept until it expires.
    r#"
    ALTER TABLE users ADD COLUMN token_epoch INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE revoked_tokens (
        jti        TEXT PRIMARY KEY,
        expires_at INTEGER NOT NULL
    );
    "#,
    // 9: clusters' keys over time: the key in use is generation key_gen, a new one
    //    waits in pending_* until the cluster speaks with it; an evicted cluster has
    //    no key at all.
    grove_store::rekey_columns!("clusters"),
];

/// The root's database.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

pub use grove_store::now_secs;

/// A new object id in MongoDB's shape (24 hex digits: 4 bytes of time, 8 random), so
/// Oakestra's clients that parse ids keep working.
pub fn new_object_id() -> String {
    let mut b = [0u8; 12];
    let secs = u32::try_from(now_secs().max(0)).unwrap_or(u32::MAX);
    b[..4].copy_from_slice(&secs.to_be_bytes());
    // Without an OS RNG the ids are still unique per second only by the UNIQUE
    // constraints; getrandom does not fail on Linux.
    let _ = getrandom::getrandom(&mut b[4..]);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Store {
    /// Open (creating if needed) and migrate the database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        // It holds password hashes and the clusters' keys.
        let conn = grove_store::open(Some(path), MIGRATIONS).map_err(|e| match e {
            grove_store::StoreError::Sql(source) => StoreError::Open {
                path: path.to_path_buf(),
                source,
            },
            other => other.into(),
        })?;
        Ok(Self { conn })
    }

    /// An in-memory database (unit tests).
    pub fn in_memory() -> Result<Self> {
        Ok(Self {
            conn: grove_store::open(None, MIGRATIONS)?,
        })
    }

    /// The schema version.
    pub fn schema_version(&self) -> Result<usize> {
        Ok(self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    /// Whether an IPv6 address (canonical text) is taken by a service or an instance.
    pub fn ip6_in_use(&self, ip: &str) -> Result<bool> {
        let hit: Option<i64> = self
            .conn
            .query_row(
                "SELECT 1 FROM services WHERE rr_ip_v6 = ?1 OR closest_ip_v6 = ?1
                 UNION SELECT 1 FROM instances WHERE ip6 = ?1 LIMIT 1",
                [ip],
                |r| r.get(0),
            )
            .optional()?;
        Ok(hit.is_some())
    }

    /// Whether an IPv4 address (host order) is taken by a service or an instance.
    pub fn ip_in_use(&self, ip: u32) -> Result<bool> {
        let hit: Option<i64> = self
            .conn
            .query_row(
                "SELECT 1 FROM services WHERE rr_ip = ?1 OR closest_ip = ?1
                 UNION SELECT 1 FROM instances WHERE ip = ?1 LIMIT 1",
                params![ip],
                |r| r.get(0),
            )
            .optional()?;
        Ok(hit.is_some())
    }
}

/// The service and instance address range, 10.30.0.0/16, without .0 and .255 hosts of
/// each /24 (kept free for tools that treat them specially).
pub(crate) fn next_free_ip(tx: &rusqlite::Transaction<'_>, exclude: &[u32]) -> Result<u32> {
    let base = u32::from(std::net::Ipv4Addr::new(10, 30, 0, 0));
    let mut stmt = tx.prepare(
        "SELECT ip FROM (SELECT rr_ip AS ip FROM services WHERE rr_ip IS NOT NULL
                         UNION SELECT closest_ip FROM services WHERE closest_ip IS NOT NULL
                         UNION SELECT ip FROM instances WHERE ip IS NOT NULL)
         WHERE ip >= ?1 AND ip < ?2 ORDER BY ip",
    )?;
    let used: Vec<u32> = stmt
        .query_map(params![base, base + 65536], |r| r.get(0))?
        .collect::<std::result::Result<_, _>>()?;
    let mut used = used.into_iter().peekable();
    for ip in base + 1..base + 65535 {
        let host = ip & 0xff;
        if host == 0 || host == 255 {
            continue;
        }
        while used.peek().is_some_and(|&u| u < ip) {
            used.next();
        }
        if used.peek() != Some(&ip) && !exclude.contains(&ip) {
            return Ok(ip);
        }
    }
    Err(StoreError::Exhausted("service address pool 10.30.0.0/16"))
}

/// Round-robin service IPv6 range, fdff:2000::/21.
pub const RR_V6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0xfdff, 0x2000, 0, 0, 0, 0, 0, 0);
/// Closest service IPv6 range, fdff:4000::/21.
pub const CLOSEST_V6: std::net::Ipv6Addr =
    std::net::Ipv6Addr::new(0xfdff, 0x4000, 0, 0, 0, 0, 0, 0);
/// Instance IPv6 range, fdff::/21.
pub const INSTANCE_V6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0xfdff, 0, 0, 0, 0, 0, 0, 0);

/// The lowest free address after `base` among the IPv6 addresses stored in `sql`'s
/// single column (canonical text), skipping `exclude`.
pub(crate) fn next_free_v6(
    tx: &rusqlite::Transaction<'_>,
    sql: &str,
    base: std::net::Ipv6Addr,
    exclude: &[String],
) -> Result<String> {
    let mut stmt = tx.prepare(sql)?;
    let used: std::collections::HashSet<u128> = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .filter_map(|r| r.ok()?.parse::<std::net::Ipv6Addr>().ok().map(u128::from))
        .chain(
            exclude
                .iter()
                .filter_map(|e| e.parse::<std::net::Ipv6Addr>().ok().map(u128::from)),
        )
        .collect();
    // A /21 holds far more than any SQLite file will; stop at 2^32 candidates anyway.
    (1u128..1 << 32)
        .map(|n| u128::from(base) + n)
        .find(|c| !used.contains(c))
        .map(|c| std::net::Ipv6Addr::from(c).to_string())
        .ok_or(StoreError::Exhausted("IPv6 service address pool"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn temp_db(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("grove-root-store-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("root.db")
    }

    #[test]
    fn migrations_run_once_and_survive_reopening() {
        let path = temp_db("migrate");
        let s = Store::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len());
        drop(s);
        let s = Store::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len());
        let mode: String = s
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let fk: i64 = s
            .conn
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
            .unwrap();
        assert_eq!(fk, 1);
    }

    #[test]
    fn a_newer_schema_is_refused_with_advice() {
        let path = temp_db("newer");
        let s = Store::open(&path).unwrap();
        s.conn.pragma_update(None, "user_version", 99).unwrap();
        drop(s);
        let err = Store::open(&path).unwrap_err().to_string();
        assert!(err.contains("upgrade grove-root"), "{err}");
    }

    #[test]
    fn object_ids_look_like_mongo_ids_and_differ() {
        let a = new_object_id();
        let b = new_object_id();
        assert_eq!(a.len(), 24);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
