//! Clusters, their last aggregate, and cluster join tokens.

use super::{Result, Store, StoreError, now_secs};
use rusqlite::{OptionalExtension, Row, params};

/// A registered cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterRow {
    /// Id, assigned at registration.
    pub id: u32,
    /// Unique name.
    pub name: String,
    /// Location (lat, lon) in degrees.
    pub location: Option<(f64, f64)>,
    /// The last aggregate report (CBOR of the capacity list), if any.
    pub aggregate: Option<Vec<u8>>,
    /// Unix seconds of the last report.
    pub last_report: Option<i64>,
    /// Unix seconds of the (first) registration.
    pub registered: i64,
    /// Long-term OSCORE master secret and salt handed to the cluster.
    pub credentials: Option<(Vec<u8>, Vec<u8>)>,
    /// The generation of that key (0: the one given at the join).
    pub key_gen: u32,
    /// The next key, handed out and not yet used by the cluster.
    pub pending: Option<(Vec<u8>, Vec<u8>)>,
    /// An Admin asked for a new key.
    pub rekey: bool,
    /// Evicted: no key works (it may join again with a new token).
    pub evicted: bool,
}

const COLS: &str = "id, name, lat, lon, aggregate, last_report, registered, oscore_secret, oscore_salt, key_gen, pending_secret, pending_salt, rekey, evicted";

fn cluster(r: &Row<'_>) -> rusqlite::Result<ClusterRow> {
    let (lat, lon): (Option<f64>, Option<f64>) = (r.get(2)?, r.get(3)?);
    Ok(ClusterRow {
        id: r.get(0)?,
        name: r.get(1)?,
        location: lat.zip(lon),
        aggregate: r.get(4)?,
        last_report: r.get(5)?,
        registered: r.get(6)?,
        credentials: {
            let (secret, salt): (Option<Vec<u8>>, Option<Vec<u8>>) = (r.get(7)?, r.get(8)?);
            secret.zip(salt)
        },
        key_gen: r.get(9)?,
        pending: {
            let (secret, salt): (Option<Vec<u8>>, Option<Vec<u8>>) = (r.get(10)?, r.get(11)?);
            secret.zip(salt)
        },
        rekey: r.get(12)?,
        evicted: r.get(13)?,
    })
}

/// A join token as listed (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinTokenRow {
    /// Its id (16 hex digits).
    pub id: String,
    /// Expiry, Unix seconds.
    pub expires_at: i64,
    /// Whether one join uses it up.
    pub single_use: bool,
    /// Whether a join used it.
    pub used: bool,
    /// Who made it.
    pub created_by: Option<String>,
}

impl Store {
    /// Register a cluster; a known name keeps its id (a cluster re-joining after losing
    /// its state) and gets its location updated.
    pub fn register_cluster(
        &mut self,
        name: &str,
        location: Option<(f64, f64)>,
    ) -> Result<ClusterRow> {
        let tx = self.conn.transaction()?;
        let (lat, lon) = location.unzip();
        tx.execute(
            "INSERT INTO clusters (name, lat, lon, registered) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (name) DO UPDATE SET lat = excluded.lat, lon = excluded.lon,
               key_gen = 0, pending_secret = NULL, pending_salt = NULL, rekey = 0, evicted = 0",
            params![name, lat, lon, now_secs()],
        )?;
        let row = tx.query_row(
            &format!("SELECT {COLS} FROM clusters WHERE name = ?1"),
            [name],
            cluster,
        )?;
        tx.commit()?;
        Ok(row)
    }

    /// Run an UPDATE of one cluster's row; `NotFound` when no row matched.
    fn update_cluster(&mut self, sql: &str, params: impl rusqlite::Params) -> Result<()> {
        match self.conn.execute(sql, params)? {
            0 => Err(StoreError::NotFound("cluster")),
            _ => Ok(()),
        }
    }

    /// Store the OSCORE credentials handed to a cluster.
    pub fn set_cluster_credentials(&mut self, id: u32, secret: &[u8], salt: &[u8]) -> Result<()> {
        self.update_cluster(
            "UPDATE clusters SET oscore_secret = ?2, oscore_salt = ?3 WHERE id = ?1",
            params![id, secret, salt],
        )
    }

    /// Evict a cluster: its key is gone (the link drops it at once), it reports no
    /// more, so its instances move to other clusters.
    pub fn evict_cluster(&mut self, id: u32) -> Result<()> {
        self.update_cluster(
            "UPDATE clusters SET oscore_secret = NULL, oscore_salt = NULL, pending_secret = NULL,
               pending_salt = NULL, rekey = 0, evicted = 1, last_report = NULL WHERE id = ?1",
            [id],
        )
    }

    /// Ask for a new key for a cluster (told in the answers to its reports).
    pub fn request_cluster_rekey(&mut self, id: u32) -> Result<()> {
        self.update_cluster(
            "UPDATE clusters SET rekey = 1 WHERE id = ?1 AND NOT evicted",
            [id],
        )
    }

    /// Join tokens that may still be used: (id, secret).
    pub fn live_cluster_tokens(&self, now: i64) -> Result<Vec<(String, Vec<u8>)>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, secret FROM cluster_tokens WHERE expires_at > ?1 AND NOT (single_use AND used)",
        )?;
        let rows = stmt
            .query_map([now], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// The block of worker subnets of a cluster, as (first block, how many): its own
    /// if it has one, else the lowest free aligned run of `count` (a power of two) of
    /// the `blocks` there are. Blocks are never shared.
    pub fn cluster_block(&mut self, cluster: u32, blocks: u32, count: u32) -> Result<(u32, u32)> {
        let count = count.clamp(1, 16).next_power_of_two();
        let tx = self.conn.transaction()?;
        let own: Option<(u32, u32)> = tx
            .query_row(
                "SELECT block, count FROM subnet_blocks WHERE cluster = ?1",
                [cluster],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some(b) = own {
            return Ok(b);
        }
        let used: Vec<(u32, u32)> = {
            let mut stmt = tx.prepare("SELECT block, count FROM subnet_blocks")?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?
        };
        let b = (0..blocks / count)
            .map(|k| k * count)
            .find(|&start| {
                used.iter()
                    .all(|&(b, n)| b + n.max(1) <= start || start + count <= b)
            })
            .ok_or(StoreError::Exhausted("worker subnet blocks"))?;
        tx.execute(
            "INSERT INTO subnet_blocks (cluster, block, count) VALUES (?1, ?2, ?3)",
            params![cluster, b, count],
        )?;
        tx.commit()?;
        Ok((b, count))
    }

    /// All clusters.
    pub fn clusters(&self) -> Result<Vec<ClusterRow>> {
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT {COLS} FROM clusters ORDER BY id"))?;
        let rows = stmt
            .query_map([], cluster)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// One cluster.
    pub fn cluster(&self, id: u32) -> Result<ClusterRow> {
        self.conn
            .query_row(
                &format!("SELECT {COLS} FROM clusters WHERE id = ?1"),
                [id],
                cluster,
            )
            .optional()?
            .ok_or(StoreError::NotFound("cluster"))
    }

    /// Record a report: its time always, its aggregate when it carries one.
    pub fn record_report(&mut self, id: u32, aggregate: Option<&[u8]>, at: i64) -> Result<()> {
        self.update_cluster(
            "UPDATE clusters SET last_report = ?2, aggregate = COALESCE(?3, aggregate) WHERE id = ?1",
            params![id, at, aggregate],
        )
    }

    /// Clusters that reported within `within_secs` of `now`.
    pub fn active_clusters(&self, now: i64, within_secs: i64) -> Result<Vec<ClusterRow>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {COLS} FROM clusters WHERE last_report >= ?1 ORDER BY id"
        ))?;
        let rows = stmt
            .query_map([now - within_secs], cluster)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Join tokens expiring after `since`, newest first.
    pub fn cluster_tokens(&self, since: i64) -> Result<Vec<JoinTokenRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, expires_at, single_use, used, created_by FROM cluster_tokens
             WHERE expires_at > ?1 ORDER BY expires_at DESC",
        )?;
        let rows = stmt
            .query_map([since], |r| {
                Ok(JoinTokenRow {
                    id: r.get(0)?,
                    expires_at: r.get(1)?,
                    single_use: r.get(2)?,
                    used: r.get(3)?,
                    created_by: r.get(4)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Store a cluster join token.
    pub fn create_cluster_token(
        &mut self,
        id: &str,
        secret: &[u8],
        expires_at: i64,
        single_use: bool,
        created_by: &str,
    ) -> Result<()> {
        self.conn.execute(
            "INSERT INTO cluster_tokens (id, secret, expires_at, single_use, created_by) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, secret, expires_at, single_use, created_by],
        )?;
        Ok(())
    }

    /// The secret of a token that may still be used at `now`.
    pub fn valid_cluster_token(&self, id: &str, now: i64) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .query_row(
                "SELECT secret FROM cluster_tokens
                 WHERE id = ?1 AND expires_at > ?2 AND NOT (single_use AND used)",
                params![id, now],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Mark a token used (a single-use token then stops working).
    pub fn mark_cluster_token_used(&mut self, id: &str) -> Result<()> {
        self.conn
            .execute("UPDATE cluster_tokens SET used = 1 WHERE id = ?1", [id])?;
        Ok(())
    }

    /// Revoke a token.
    pub fn revoke_cluster_token(&mut self, id: &str) -> Result<()> {
        match self
            .conn
            .execute("DELETE FROM cluster_tokens WHERE id = ?1", [id])?
        {
            0 => Err(StoreError::NotFound("token")),
            _ => Ok(()),
        }
    }
}

/// The clusters' keys over time, for the link's upper half.
/// Where the clusters' keys are kept.
const CLUSTER_KEYS: grove_store::PeerKeys = grove_store::PeerKeys {
    table: "clusters",
    secret: "oscore_secret",
    salt: "oscore_salt",
    what: "cluster",
};

grove_store::impl_key_store!(Store, StoreError, CLUSTER_KEYS);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_keeps_its_id_when_it_registers_again() {
        let mut s = Store::in_memory().unwrap();
        let a = s.register_cluster("munich", Some((48.1, 11.6))).unwrap();
        let b = s.register_cluster("berlin", None).unwrap();
        let a2 = s.register_cluster("munich", Some((48.2, 11.7))).unwrap();
        assert_eq!(a.id, a2.id);
        assert_ne!(a.id, b.id);
        assert_eq!(a2.location, Some((48.2, 11.7)));
    }

    #[test]
    fn active_clusters_are_those_that_reported_recently() {
        let mut s = Store::in_memory().unwrap();
        let a = s.register_cluster("a", None).unwrap();
        let b = s.register_cluster("b", None).unwrap();
        s.record_report(a.id, Some(&[0x80]), 1000).unwrap();
        s.record_report(b.id, None, 980).unwrap();
        let active: Vec<u32> = s
            .active_clusters(1010, 15)
            .unwrap()
            .iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(active, [a.id]);
        assert_eq!(s.cluster(a.id).unwrap().aggregate, Some(vec![0x80]));
        // A liveness-only report keeps the last aggregate.
        s.record_report(a.id, None, 1005).unwrap();
        assert_eq!(s.cluster(a.id).unwrap().aggregate, Some(vec![0x80]));
        assert!(matches!(
            s.record_report(99, None, 0),
            Err(StoreError::NotFound("cluster"))
        ));
    }

    #[test]
    fn worker_subnet_blocks_are_handed_out_once_and_kept() {
        let mut s = Store::in_memory().unwrap();
        let ids: Vec<u32> = (0..4)
            .map(|i| s.register_cluster(&format!("c{i}"), None).unwrap().id)
            .collect();
        let blocks: Vec<u32> = ids[..3]
            .iter()
            .map(|&id| s.cluster_block(id, 3, 1).unwrap().0)
            .collect();
        assert_eq!(blocks, [0, 1, 2]);
        assert_eq!(
            s.cluster_block(ids[1], 3, 1).unwrap().0,
            1,
            "a cluster keeps its block"
        );
        assert!(matches!(
            s.cluster_block(ids[3], 3, 1),
            Err(StoreError::Exhausted(_))
        ));
    }

    #[test]
    fn a_cluster_expecting_many_workers_gets_an_aligned_run_of_blocks() {
        let mut s = Store::in_memory().unwrap();
        let ids: Vec<u32> = (0..4)
            .map(|i| s.register_cluster(&format!("c{i}"), None).unwrap().id)
            .collect();
        assert_eq!(s.cluster_block(ids[0], 8, 1).unwrap(), (0, 1));
        assert_eq!(
            s.cluster_block(ids[1], 8, 3).unwrap(),
            (4, 4),
            "rounded up, aligned"
        );
        assert_eq!(s.cluster_block(ids[2], 8, 1).unwrap(), (1, 1));
        assert_eq!(s.cluster_block(ids[1], 8, 1).unwrap(), (4, 4), "kept");
        assert!(matches!(
            s.cluster_block(ids[3], 8, 4),
            Err(StoreError::Exhausted(_))
        ));
    }

    #[test]
    fn tokens_expire_are_single_use_when_asked_and_can_be_revoked() {
        let mut s = Store::in_memory().unwrap();
        s.create_cluster_token("t1", b"s1", 2000, true, "Admin")
            .unwrap();
        s.create_cluster_token("t2", b"s2", 2000, false, "Admin")
            .unwrap();
        assert_eq!(
            s.valid_cluster_token("t1", 1000).unwrap(),
            Some(b"s1".to_vec())
        );
        assert_eq!(s.valid_cluster_token("t1", 2000).unwrap(), None, "expired");
        s.mark_cluster_token_used("t1").unwrap();
        s.mark_cluster_token_used("t2").unwrap();
        assert_eq!(
            s.valid_cluster_token("t1", 1000).unwrap(),
            None,
            "single use"
        );
        assert!(
            s.valid_cluster_token("t2", 1000).unwrap().is_some(),
            "reusable"
        );
        s.revoke_cluster_token("t2").unwrap();
        assert_eq!(s.valid_cluster_token("t2", 1000).unwrap(), None);
    }
}
