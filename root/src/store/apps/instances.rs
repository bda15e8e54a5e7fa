//! Instances: added with their addresses, placed, moved, their status and history.

use super::*;

impl Store {
    /// Add an instance (a number the service never had, a fresh IP, status REQUESTED).
    pub fn add_instance(&mut self, service_id: &str) -> Result<InstanceRow> {
        let tx = self.conn.transaction()?;
        let generation: i64 = tx
            .query_row(
                "SELECT generation FROM services WHERE id = ?1",
                [service_id],
                |r| r.get(0),
            )
            .optional()?
            .ok_or(StoreError::NotFound("service"))?;
        // Never a number the service had before: a late report about a removed
        // instance (from a worker or cluster that was slow or away) must not be taken
        // for news of a new one.
        let number: u32 = tx.query_row(
            "SELECT COALESCE(MAX(number) + 1, 0) FROM (
                 SELECT number FROM instances WHERE service = ?1
                 UNION ALL SELECT number FROM instance_history WHERE service = ?1)",
            [service_id],
            |r| r.get(0),
        )?;
        let row = InstanceRow {
            service: service_id.to_owned(),
            number,
            status: "REQUESTED".into(),
            reason: None,
            cluster: None,
            node: None,
            ip: Some(next_free_ip(&tx, &[])?),
            generation,
            updated_at: now_secs(),
            ip6: Some(next_free_v6(
                &tx,
                "SELECT ip6 FROM instances WHERE ip6 IS NOT NULL",
                INSTANCE_V6,
                &[],
            )?),
            addr: None,
            addr6: None,
        };
        tx.execute(
            &format!("INSERT INTO instances ({INSTANCE_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, NULL, NULL)"),
            params![
                row.service,
                row.number,
                row.status,
                row.reason,
                row.cluster,
                row.node,
                row.ip,
                row.generation,
                row.updated_at,
                row.ip6
            ],
        )?;
        history(&tx, &row)?;
        tx.commit()?;
        Ok(row)
    }

    /// The instances of a service, or all.
    pub fn instances(&self, service_id: Option<&str>) -> Result<Vec<InstanceRow>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {INSTANCE_COLS} FROM instances WHERE ?1 IS NULL OR service = ?1 ORDER BY service, number"
        ))?;
        let rows = stmt
            .query_map([service_id], instance)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// The instances handed to a cluster that it should run (not ended).
    pub fn instances_of_cluster(&self, cluster: u32) -> Result<Vec<InstanceRow>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {INSTANCE_COLS} FROM instances WHERE cluster = ?1
             AND status NOT IN ('FAILED', 'DEAD', 'COMPLETED', 'UNDEPLOYED') ORDER BY service, number"
        ))?;
        let rows = stmt
            .query_map([cluster], instance)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Hand an instance to another cluster (or to none, failing it), in one step.
    pub fn move_instance(
        &mut self,
        service_id: &str,
        number: u32,
        cluster: Option<u32>,
        reason: Option<&str>,
    ) -> Result<InstanceRow> {
        let tx = self.conn.transaction()?;
        let mut row = tx
            .query_row(
                &format!(
                    "SELECT {INSTANCE_COLS} FROM instances WHERE service = ?1 AND number = ?2"
                ),
                params![service_id, number],
                instance,
            )
            .optional()?
            .ok_or(StoreError::NotFound("instance"))?;
        row.cluster = cluster;
        row.node = None;
        row.status = if cluster.is_some() {
            "CLUSTER_SCHEDULED"
        } else {
            "FAILED"
        }
        .into();
        row.reason = reason.map(str::to_owned);
        row.updated_at = now_secs();
        tx.execute(
            "UPDATE instances SET status = ?3, reason = ?4, cluster = ?5, node = NULL, updated_at = ?6
             WHERE service = ?1 AND number = ?2",
            params![row.service, row.number, row.status, row.reason, row.cluster, row.updated_at],
        )?;
        history(&tx, &row)?;
        tx.commit()?;
        Ok(row)
    }

    /// How many instances there are in each status.
    pub fn instance_counts(&self) -> Result<Vec<(String, u64)>> {
        let mut st = self
            .conn
            .prepare("SELECT status, COUNT(*) FROM instances GROUP BY status ORDER BY status")?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Record a status change (and where the instance is).
    pub fn set_instance_status(
        &mut self,
        service_id: &str,
        number: u32,
        status: &str,
        reason: Option<&str>,
        cluster: Option<u32>,
        node: Option<&str>,
    ) -> Result<InstanceRow> {
        let tx = self.conn.transaction()?;
        let mut row = tx
            .query_row(
                &format!(
                    "SELECT {INSTANCE_COLS} FROM instances WHERE service = ?1 AND number = ?2"
                ),
                params![service_id, number],
                instance,
            )
            .optional()?
            .ok_or(StoreError::NotFound("instance"))?;
        row.status = status.to_owned();
        row.reason = reason.map(str::to_owned);
        row.cluster = cluster.or(row.cluster);
        row.node = node.map(str::to_owned).or(row.node);
        row.updated_at = now_secs();
        tx.execute(
            "UPDATE instances SET status = ?3, reason = ?4, cluster = ?5, node = ?6, updated_at = ?7
             WHERE service = ?1 AND number = ?2",
            params![row.service, row.number, row.status, row.reason, row.cluster, row.node, row.updated_at],
        )?;
        history(&tx, &row)?;
        tx.commit()?;
        Ok(row)
    }

    /// Record where an instance is reached on the overlay (`None`: not known).
    pub fn set_instance_addr(
        &mut self,
        service_id: &str,
        number: u32,
        addr: Option<u32>,
        addr6: Option<&str>,
    ) -> Result<()> {
        self.conn.execute(
            "UPDATE instances SET addr = ?3, addr6 = ?4 WHERE service = ?1 AND number = ?2",
            params![service_id, number, addr, addr6],
        )?;
        Ok(())
    }

    /// Remove one instance; returns it.
    pub fn remove_instance(&mut self, service_id: &str, number: u32) -> Result<InstanceRow> {
        let tx = self.conn.transaction()?;
        let row = tx
            .query_row(
                &format!(
                    "SELECT {INSTANCE_COLS} FROM instances WHERE service = ?1 AND number = ?2"
                ),
                params![service_id, number],
                instance,
            )
            .optional()?
            .ok_or(StoreError::NotFound("instance"))?;
        tx.execute(
            "DELETE FROM instances WHERE service = ?1 AND number = ?2",
            params![service_id, number],
        )?;
        let gone = InstanceRow {
            status: "UNDEPLOYED".into(),
            updated_at: now_secs(),
            ..row.clone()
        };
        history(&tx, &gone)?;
        tx.commit()?;
        Ok(row)
    }

    /// The status history of an instance, oldest first: (status, reason, Unix seconds).
    pub fn instance_history(
        &self,
        service_id: &str,
        number: u32,
    ) -> Result<Vec<(String, Option<String>, i64)>> {
        let mut stmt = self.conn.prepare(
            "SELECT status, reason, at FROM instance_history WHERE service = ?1 AND number = ?2 ORDER BY seq",
        )?;
        let rows = stmt
            .query_map(params![service_id, number], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }
}
