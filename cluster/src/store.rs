//! The cluster's SQLite store: nodes, instances, worker join tokens, the root link's
//! credentials. WAL, foreign keys, numbered migrations; every change committed before
//! it is acknowledged, so a cluster killed at any moment resumes with its nodes and
//! instances.

use rusqlite::{Connection, OptionalExtension, params};
use std::path::Path;

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite.
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    /// Not there.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A pool is used up.
    #[error("{0} exhausted")]
    Exhausted(&'static str),
    /// Opening or migrating the database, or keeping a worker's next key.
    #[error(transparent)]
    Shared(grove_store::StoreError),
}

impl From<grove_store::StoreError> for StoreError {
    fn from(e: grove_store::StoreError) -> Self {
        // A query's failure reads the same from either side.
        if let grove_store::StoreError::Sql(e) = e {
            return Self::Sql(e);
        }
        Self::Shared(e)
    }
}

/// Where the workers' keys are kept.
const NODE_KEYS: grove_store::PeerKeys = grove_store::PeerKeys {
    table: "nodes",
    secret: "secret",
    salt: "salt",
    what: "worker",
};

/// Result of store operations.
pub type Result<T> = std::result::Result<T, StoreError>;

const MIGRATIONS: &[&str] = &[
    r#"
    CREATE TABLE nodes (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        name            TEXT NOT NULL UNIQUE,
        arch            TEXT NOT NULL,
        cpus            INTEGER NOT NULL,
        memory_mib      INTEGER NOT NULL,
        virtualizations TEXT NOT NULL,
        lat             REAL,
        lon             REAL,
        secret          BLOB NOT NULL,
        salt            BLOB NOT NULL,
        subnet          INTEGER NOT NULL UNIQUE
    );
    CREATE TABLE instances (
        service TEXT NOT NULL,
        number  INTEGER NOT NULL,
        spec    BLOB NOT NULL,
        node    INTEGER REFERENCES nodes(id) ON DELETE SET NULL,
        status  TEXT NOT NULL,
        reason  TEXT,
        PRIMARY KEY (service, number)
    );
    CREATE TABLE worker_tokens (
        id         TEXT PRIMARY KEY,
        secret     BLOB NOT NULL,
        expires_at INTEGER NOT NULL,
        single_use INTEGER NOT NULL,
        used       INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE root_link (
        key   TEXT PRIMARY KEY,
        value BLOB NOT NULL
    );
"#,
    r#"
    ALTER TABLE instances ADD COLUMN addr INTEGER;
"#,
    r#"
    ALTER TABLE nodes ADD COLUMN subnet_size INTEGER NOT NULL DEFAULT 1;
"#,
    // Re-keying (the key in use is generation key_gen; a new one waits in pending_*
    // until the worker speaks with it) and eviction (done by the running daemon).
    grove_store::rekey_columns!("nodes"),
    // What a worker gives a service that sets no limits, the limits it cannot enforce
    // and the host ports it maps (msg::WorkerLimits as CBOR; NULL from older agents).
    r#"
    ALTER TABLE nodes ADD COLUMN limits BLOB;
"#,
];

/// A registered worker.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRow {
    /// Id.
    pub id: u32,
    /// Unique name.
    pub name: String,
    /// Architecture.
    pub arch: String,
    /// CPUs.
    pub cpus: u32,
    /// Memory, MiB.
    pub memory_mib: u32,
    /// Virtualizations.
    pub virtualizations: Vec<String>,
    /// Location.
    pub location: Option<(f64, f64)>,
    /// OSCORE master secret and salt.
    pub secret: Vec<u8>,
    /// Salt.
    pub salt: Vec<u8>,
    /// Index of its first /26 in the cluster's block.
    pub subnet: u32,
    /// How many /26s its subnet spans (a power of two; its first index a multiple).
    pub subnet_size: u32,
    /// The generation of the key in use (0: the one given at the join).
    pub key_gen: u32,
    /// The next key (secret, salt), handed out and not yet used by the worker.
    pub pending: Option<Key>,
    /// The operator asked for a new key (`grove-cluster node rekey`).
    pub rekey: bool,
    /// Its defaults, unenforced limits and host ports (none from older agents).
    pub limits: Option<grove_proto::msg::WorkerLimits>,
}

/// An OSCORE master secret and salt.
pub type Key = (Vec<u8>, Vec<u8>);

/// A join token as listed (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    /// Id (16 hex digits).
    pub id: String,
    /// Expiry, Unix seconds.
    pub expires_at: i64,
    /// One join uses it up.
    pub single_use: bool,
    /// A join used it.
    pub used: bool,
}

/// A worker registering.
#[derive(Debug, Clone, Copy)]
pub struct NewNode<'a> {
    /// Name.
    pub name: &'a str,
    /// Architecture.
    pub arch: &'a str,
    /// CPUs.
    pub cpus: u32,
    /// Memory, MiB.
    pub memory_mib: u32,
    /// Virtualizations.
    pub virtualizations: &'a [String],
    /// Location.
    pub location: Option<(f64, f64)>,
    /// OSCORE master secret.
    pub secret: &'a [u8],
    /// OSCORE master salt.
    pub salt: &'a [u8],
    /// /26s its subnet should span (see [`subnet_size`]).
    pub subnet_size: u32,
    /// Its defaults, unenforced limits and host ports.
    pub limits: Option<&'a grove_proto::msg::WorkerLimits>,
}

/// How many /26s a worker with room for `max_instances` gets: the smallest power of
/// two whose addresses, less network, bridge and broadcast, hold them; one /26 (61
/// instances) by default, at most 16 (a /22).
pub fn subnet_size(max_instances: Option<u16>) -> u32 {
    let want = u32::from(max_instances.unwrap_or(0)) + 3;
    let mut size = 1;
    while size * 64 < want && size < 16 {
        size *= 2;
    }
    size
}

/// An instance handed to this cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceRow {
    /// Service id.
    pub service: String,
    /// Number.
    pub number: u32,
    /// The spec (CBOR of `InstanceSpec`).
    pub spec: Vec<u8>,
    /// The worker it is placed on.
    pub node: Option<u32>,
    /// Oakestra status name.
    pub status: String,
    /// Failure reason.
    pub reason: Option<String>,
    /// Its overlay address (in its worker's subnet), as the worker reported it.
    pub addr: Option<u32>,
}

/// The cluster's database.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

pub use grove_store::now_secs;

const NODE_COLS: &str = "id, name, arch, cpus, memory_mib, virtualizations, lat, lon, secret, salt, subnet, subnet_size, key_gen, pending_secret, pending_salt, rekey, limits";

fn node(r: &rusqlite::Row<'_>) -> rusqlite::Result<NodeRow> {
    let v: String = r.get(5)?;
    let (lat, lon): (Option<f64>, Option<f64>) = (r.get(6)?, r.get(7)?);
    Ok(NodeRow {
        id: r.get(0)?,
        name: r.get(1)?,
        arch: r.get(2)?,
        cpus: r.get(3)?,
        memory_mib: r.get(4)?,
        virtualizations: v
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        location: lat.zip(lon),
        secret: r.get(8)?,
        salt: r.get(9)?,
        subnet: r.get(10)?,
        subnet_size: r.get(11)?,
        key_gen: r.get(12)?,
        pending: {
            let (secret, salt): (Option<Vec<u8>>, Option<Vec<u8>>) = (r.get(13)?, r.get(14)?);
            secret.zip(salt)
        },
        rekey: r.get(15)?,
        limits: r
            .get::<_, Option<Vec<u8>>>(16)?
            .and_then(|b| grove_proto::msg::from_cbor(&b).ok()),
    })
}

fn instance(r: &rusqlite::Row<'_>) -> rusqlite::Result<InstanceRow> {
    Ok(InstanceRow {
        service: r.get(0)?,
        number: r.get(1)?,
        spec: r.get(2)?,
        node: r.get(3)?,
        status: r.get(4)?,
        reason: r.get(5)?,
        addr: r.get(6)?,
    })
}

impl Store {
    /// Open and migrate.
    pub fn open(path: &Path) -> Result<Self> {
        // It holds the workers' keys and the cluster's own.
        Ok(Self {
            conn: grove_store::open(Some(path), MIGRATIONS)?,
        })
    }

    /// In memory (tests).
    pub fn in_memory() -> Result<Self> {
        Ok(Self {
            conn: grove_store::open(None, MIGRATIONS)?,
        })
    }

    /// Register (or re-register by name) a worker; `subnets` is the number of /26s in
    /// the cluster's block. A new worker gets the lowest free run of `subnet_size` /26s
    /// aligned to its size. Returns it with its (kept) subnet.
    pub fn register_node(&mut self, n: &NewNode<'_>, subnets: u32) -> Result<NodeRow> {
        let NewNode {
            name,
            arch,
            cpus,
            memory_mib,
            virtualizations,
            location,
            secret,
            salt,
            subnet_size,
            limits,
        } = *n;
        let limits = limits.map(grove_proto::msg::to_cbor);
        let size = subnet_size.clamp(1, 16).next_power_of_two();
        let tx = self.conn.transaction()?;
        let existing: Option<u32> = tx
            .query_row("SELECT subnet FROM nodes WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?;
        let subnet = match existing {
            Some(s) => s,
            None => {
                let used: Vec<(u32, u32)> = {
                    let mut st = tx.prepare("SELECT subnet, subnet_size FROM nodes")?;
                    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                        .collect::<rusqlite::Result<_>>()?
                };
                (0..subnets / size)
                    .map(|k| k * size)
                    .find(|&start| {
                        used.iter()
                            .all(|&(s, n)| s + n.max(1) <= start || start + size <= s)
                    })
                    .ok_or(StoreError::Exhausted("worker subnets"))?
            }
        };
        let (lat, lon) = location.unzip();
        tx.execute(
            "INSERT INTO nodes (name, arch, cpus, memory_mib, virtualizations, lat, lon, secret, salt, subnet, subnet_size, limits)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
             ON CONFLICT (name) DO UPDATE SET arch = excluded.arch, cpus = excluded.cpus, limits = excluded.limits,
               memory_mib = excluded.memory_mib, virtualizations = excluded.virtualizations,
               lat = excluded.lat, lon = excluded.lon, secret = excluded.secret, salt = excluded.salt,
               key_gen = 0, pending_secret = NULL, pending_salt = NULL, rekey = 0, evicted = 0",
            params![name, arch, cpus, memory_mib, virtualizations.join(","), lat, lon, secret, salt, subnet, size, limits],
        )?;
        let row = tx.query_row(
            &format!("SELECT {NODE_COLS} FROM nodes WHERE name = ?1"),
            [name],
            node,
        )?;
        tx.commit()?;
        Ok(row)
    }

    /// Worker `id`'s limits as it says they are now.
    pub fn set_limits(&self, id: u32, limits: &grove_proto::msg::WorkerLimits) -> Result<()> {
        self.conn.execute(
            "UPDATE nodes SET limits = ?2 WHERE id = ?1",
            params![id, grove_proto::msg::to_cbor(limits)],
        )?;
        Ok(())
    }

    /// Worker `id`.
    pub fn node(&self, id: u32) -> Result<NodeRow> {
        Ok(self.conn.query_row(
            &format!("SELECT {NODE_COLS} FROM nodes WHERE id = ?1"),
            [id],
            node,
        )?)
    }

    /// Every worker, by id (not those evicted).
    pub fn nodes(&self) -> Result<Vec<NodeRow>> {
        let mut st = self.conn.prepare(&format!(
            "SELECT {NODE_COLS} FROM nodes WHERE NOT evicted ORDER BY id"
        ))?;
        let rows = st.query_map([], node)?.collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Store or replace an instance handed down by the root (keeping its placement).
    pub fn upsert_instance(&mut self, service: &str, number: u32, spec: &[u8]) -> Result<bool> {
        let n = self.conn.execute(
            "INSERT INTO instances (service, number, spec, status) VALUES (?1, ?2, ?3, 'CLUSTER_SCHEDULED')
             ON CONFLICT (service, number) DO UPDATE SET spec = excluded.spec WHERE instances.spec <> excluded.spec",
            params![service, number, spec],
        )?;
        Ok(n > 0)
    }

    /// Remove an instance; returns where it was.
    pub fn remove_instance(&mut self, service: &str, number: u32) -> Result<Option<u32>> {
        let node: Option<Option<u32>> = self
            .conn
            .query_row(
                "SELECT node FROM instances WHERE service = ?1 AND number = ?2",
                params![service, number],
                |r| r.get(0),
            )
            .optional()?;
        self.conn.execute(
            "DELETE FROM instances WHERE service = ?1 AND number = ?2",
            params![service, number],
        )?;
        Ok(node.flatten())
    }

    /// The worker an instance is placed on (`None`: not placed, or no such instance).
    pub fn instance_node(&self, service: &str, number: u32) -> Result<Option<u32>> {
        Ok(self
            .conn
            .query_row(
                "SELECT node FROM instances WHERE service = ?1 AND number = ?2",
                params![service, number],
                |r| r.get::<_, Option<u32>>(0),
            )
            .optional()?
            .flatten())
    }

    /// Every instance.
    pub fn instances(&self) -> Result<Vec<InstanceRow>> {
        let mut st = self
            .conn
            .prepare("SELECT service, number, spec, node, status, reason, addr FROM instances ORDER BY service, number")?;
        let rows = st
            .query_map([], instance)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Place an instance (or unplace it with a failure reason).
    pub fn place(
        &mut self,
        service: &str,
        number: u32,
        node: Option<u32>,
        status: &str,
        reason: Option<&str>,
    ) -> Result<()> {
        let n = self.conn.execute(
            "UPDATE instances SET node = ?3, status = ?4, reason = ?5, addr = NULL WHERE service = ?1 AND number = ?2",
            params![service, number, node, status, reason],
        )?;
        if n == 0 {
            Err(StoreError::NotFound("instance"))
        } else {
            Ok(())
        }
    }

    /// Record a status a worker reported (only if the instance is placed there).
    pub fn report_status(
        &mut self,
        service: &str,
        number: u32,
        node: u32,
        status: &str,
        reason: Option<&str>,
        addr: Option<u32>,
    ) -> Result<bool> {
        let n = self.conn.execute(
            "UPDATE instances SET status = ?4, reason = ?5, addr = COALESCE(?6, addr) WHERE service = ?1 AND number = ?2 AND node = ?3 AND NOT (?4 = 'UNDEPLOYED' AND status IN ('COMPLETED', 'DEAD', 'FAILED'))",
            params![service, number, node, status, reason, addr],
        )?;
        Ok(n > 0)
    }

    /// Store a worker join token.
    pub fn create_worker_token(
        &mut self,
        id: &str,
        secret: &[u8],
        expires_at: i64,
        single_use: bool,
    ) -> Result<()> {
        self.conn.execute(
            "INSERT INTO worker_tokens (id, secret, expires_at, single_use) VALUES (?1, ?2, ?3, ?4)",
            params![id, secret, expires_at, single_use],
        )?;
        Ok(())
    }

    /// Tokens usable at `now`: (id, secret).
    pub fn live_worker_tokens(&self, now: i64) -> Result<Vec<(String, Vec<u8>)>> {
        let mut st = self
            .conn
            .prepare("SELECT id, secret FROM worker_tokens WHERE expires_at > ?1 AND NOT (single_use AND used)")?;
        let rows = st
            .query_map([now], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Whether a token may be used now; marks a single-use one used.
    pub fn use_worker_token(&mut self, id: &str, now: i64) -> Result<bool> {
        let n = self.conn.execute(
            "UPDATE worker_tokens SET used = 1 WHERE id = ?1 AND expires_at > ?2 AND NOT (single_use AND used)",
            params![id, now],
        )?;
        Ok(n > 0)
    }

    /// Every join token that may still be used, and those expired or used within a day.
    pub fn worker_tokens(&self, now: i64) -> Result<Vec<TokenRow>> {
        let mut st = self.conn.prepare(
            "SELECT id, expires_at, single_use, used FROM worker_tokens
             WHERE expires_at > ?1 ORDER BY expires_at DESC",
        )?;
        let rows = st
            .query_map([now - 86400], |r| {
                Ok(TokenRow {
                    id: r.get(0)?,
                    expires_at: r.get(1)?,
                    single_use: r.get(2)?,
                    used: r.get(3)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Revoke a join token.
    pub fn revoke_worker_token(&mut self, id: &str) -> Result<()> {
        match self
            .conn
            .execute("DELETE FROM worker_tokens WHERE id = ?1", [id])?
        {
            0 => Err(StoreError::NotFound("token")),
            _ => Ok(()),
        }
    }

    /// The id of a worker named `name` (or numbered so).
    pub fn node_named(&self, name: &str) -> Result<u32> {
        self.conn
            .query_row(
                "SELECT id FROM nodes WHERE name = ?1 OR CAST(id AS TEXT) = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()?
            .ok_or(StoreError::NotFound("worker"))
    }

    /// Mark a worker evicted: the running daemon drops its key at once, moves its
    /// instances elsewhere and deletes it ([`Self::delete_node`]).
    pub fn evict_node(&mut self, id: u32) -> Result<()> {
        self.conn
            .execute("UPDATE nodes SET evicted = 1 WHERE id = ?1", [id])?;
        Ok(())
    }

    /// Workers marked evicted: (id, key generation).
    pub fn evicted_nodes(&self) -> Result<Vec<(u32, u32)>> {
        let mut st = self
            .conn
            .prepare("SELECT id, key_gen FROM nodes WHERE evicted ORDER BY id")?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Delete a worker (its instances become unplaced).
    pub fn delete_node(&mut self, id: u32) -> Result<()> {
        self.conn.execute("DELETE FROM nodes WHERE id = ?1", [id])?;
        Ok(())
    }

    /// Ask for a new key for a worker (told with its next heartbeat answer).
    pub fn request_rekey(&mut self, id: u32) -> Result<()> {
        self.conn
            .execute("UPDATE nodes SET rekey = 1 WHERE id = ?1", [id])?;
        Ok(())
    }

    /// Workers the operator asked to re-key (not evicted).
    pub fn rekey_requested(&self) -> Result<Vec<u32>> {
        let mut st = self
            .conn
            .prepare("SELECT id FROM nodes WHERE rekey AND NOT evicted ORDER BY id")?;
        let rows = st
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// A value of the root link (credentials, cluster id).
    pub fn root_value(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .query_row("SELECT value FROM root_link WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Set a value of the root link.
    pub fn set_root_value(&mut self, key: &str, value: &[u8]) -> Result<()> {
        self.conn.execute(
            "INSERT INTO root_link (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }
}

// The workers' keys over time, for the link's upper half.
grove_store::impl_key_store!(Store, StoreError, NODE_KEYS);

#[cfg(test)]
mod tests;
