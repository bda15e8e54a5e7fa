//! Applications, services, instances and the instance status history.

use super::{
    CLOSEST_V6, INSTANCE_V6, RR_V6, Result, Store, StoreError, new_object_id, next_free_ip,
    next_free_v6, now_secs,
};
use rusqlite::{OptionalExtension, Row, Transaction, params};

/// A service to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewService {
    /// `microservice_name`.
    pub name: String,
    /// `microservice_namespace`.
    pub namespace: String,
    /// The microservice as the SLA gave it (JSON).
    pub spec: String,
    /// A round-robin IP the user asked for (host order), else one is allocated.
    pub rr_ip: Option<u32>,
    /// A closest IP the user asked for, else one is allocated.
    pub closest_ip: Option<u32>,
    /// A round-robin IPv6 the user asked for, else one is allocated.
    pub rr_ip_v6: Option<std::net::Ipv6Addr>,
    /// A closest IPv6 the user asked for, else one is allocated.
    pub closest_ip_v6: Option<std::net::Ipv6Addr>,
}

/// An application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppRow {
    /// Id (24 hex digits).
    pub id: String,
    /// Owner's user id.
    pub owner: String,
    /// `application_name`.
    pub name: String,
    /// `application_namespace`.
    pub namespace: String,
    /// `application_desc`.
    pub desc: String,
    /// Keys of the SLA application Grove does not interpret (JSON object).
    pub extra: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// A service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRow {
    /// Id (24 hex digits).
    pub id: String,
    /// Application id.
    pub application: String,
    /// `microservice_name`.
    pub name: String,
    /// `microservice_namespace`.
    pub namespace: String,
    /// The microservice spec (JSON).
    pub spec: String,
    /// Round-robin IP, host order.
    pub rr_ip: u32,
    /// Closest IP, host order.
    pub closest_ip: u32,
    /// Bumped by every spec replacement.
    pub generation: i64,
    /// Unix seconds.
    pub created_at: i64,
    /// Round-robin IPv6.
    pub rr_ip_v6: Option<String>,
    /// Closest IPv6.
    pub closest_ip_v6: Option<String>,
}

/// An instance of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRow {
    /// Service id.
    pub service: String,
    /// Instance number within the service.
    pub number: u32,
    /// Oakestra status name.
    pub status: String,
    /// Failure reason or detail.
    pub reason: Option<String>,
    /// Cluster it was handed to.
    pub cluster: Option<u32>,
    /// Worker it runs on, as the cluster reported.
    pub node: Option<String>,
    /// Its IPv4 address, host order.
    pub ip: Option<u32>,
    /// The service generation it runs.
    pub generation: i64,
    /// Unix seconds of the last status change.
    pub updated_at: i64,
    /// Its IPv6 address.
    pub ip6: Option<String>,
    /// Its overlay address in its worker's subnet, as its cluster last reported.
    pub addr: Option<u32>,
    /// Its IPv6 overlay address.
    pub addr6: Option<String>,
}

const APP_COLS: &str = "id, owner, name, namespace, descr, extra, created_at";
const SERVICE_COLS: &str = "id, application, name, namespace, spec, rr_ip, closest_ip, generation, created_at, rr_ip_v6, closest_ip_v6";
const INSTANCE_COLS: &str =
    "service, number, status, reason, cluster, node, ip, generation, updated_at, ip6, addr, addr6";

fn app(r: &Row<'_>) -> rusqlite::Result<AppRow> {
    Ok(AppRow {
        id: r.get(0)?,
        owner: r.get(1)?,
        name: r.get(2)?,
        namespace: r.get(3)?,
        desc: r.get(4)?,
        extra: r.get(5)?,
        created_at: r.get(6)?,
    })
}

fn service(r: &Row<'_>) -> rusqlite::Result<ServiceRow> {
    Ok(ServiceRow {
        id: r.get(0)?,
        application: r.get(1)?,
        name: r.get(2)?,
        namespace: r.get(3)?,
        spec: r.get(4)?,
        rr_ip: r.get(5)?,
        closest_ip: r.get(6)?,
        generation: r.get(7)?,
        created_at: r.get(8)?,
        rr_ip_v6: r.get(9)?,
        closest_ip_v6: r.get(10)?,
    })
}

fn instance(r: &Row<'_>) -> rusqlite::Result<InstanceRow> {
    Ok(InstanceRow {
        service: r.get(0)?,
        number: r.get(1)?,
        status: r.get(2)?,
        reason: r.get(3)?,
        cluster: r.get(4)?,
        node: r.get(5)?,
        ip: r.get(6)?,
        generation: r.get(7)?,
        updated_at: r.get(8)?,
        ip6: r.get(9)?,
        addr: r.get(10)?,
        addr6: r.get(11)?,
    })
}

fn ip_taken(tx: &Transaction<'_>, ip: u32) -> Result<bool> {
    let hit: Option<i64> = tx
        .query_row(
            "SELECT 1 FROM services WHERE rr_ip = ?1 OR closest_ip = ?1
             UNION SELECT 1 FROM instances WHERE ip = ?1 LIMIT 1",
            [ip],
            |r| r.get(0),
        )
        .optional()?;
    Ok(hit.is_some())
}

fn insert_services(
    tx: &Transaction<'_>,
    app_id: &str,
    services: &[NewService],
) -> Result<Vec<ServiceRow>> {
    let mut out = Vec::new();
    for s in services {
        let mut ips = [0u32; 2];
        // The address handed to rr_ip in this loop, not yet in the table.
        let mut reserved = None;
        for (slot, wanted) in ips.iter_mut().zip([s.rr_ip, s.closest_ip]) {
            *slot = match wanted {
                Some(ip) if ip_taken(tx, ip)? => {
                    return Err(StoreError::Conflict(format!(
                        "{} is already in use",
                        std::net::Ipv4Addr::from(ip)
                    )));
                }
                Some(ip) => ip,
                None => next_free_ip(
                    tx,
                    &[s.rr_ip, s.closest_ip]
                        .into_iter()
                        .flatten()
                        .chain(reserved)
                        .collect::<Vec<_>>(),
                )?,
            };
            reserved = Some(*slot);
        }
        let row = ServiceRow {
            id: new_object_id(),
            application: app_id.to_owned(),
            name: s.name.clone(),
            namespace: s.namespace.clone(),
            spec: s.spec.clone(),
            rr_ip: ips[0],
            closest_ip: ips[1],
            generation: 1,
            created_at: now_secs(),
            rr_ip_v6: Some(v6_for(tx, s.rr_ip_v6, RR_V6, "rr_ip_v6")?),
            closest_ip_v6: Some(v6_for(tx, s.closest_ip_v6, CLOSEST_V6, "closest_ip_v6")?),
        };
        if row.rr_ip == row.closest_ip {
            return Err(StoreError::Conflict(
                "rr_ip and closest_ip must differ".into(),
            ));
        }
        tx.execute(
            &format!(
                "INSERT INTO services ({SERVICE_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
            ),
            params![
                row.id,
                row.application,
                row.name,
                row.namespace,
                row.spec,
                row.rr_ip,
                row.closest_ip,
                row.generation,
                row.created_at,
                row.rr_ip_v6,
                row.closest_ip_v6
            ],
        )
        .map_err(|e| match e {
            rusqlite::Error::SqliteFailure(f, _)
                if f.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                StoreError::Conflict(format!(
                    "service {}.{} exists in this application, or its IP is in use",
                    s.name, s.namespace
                ))
            }
            e => e.into(),
        })?;
        tx.execute(
            "INSERT INTO service_specs (service, generation, spec) VALUES (?1, 1, ?2)",
            params![row.id, row.spec],
        )?;
        out.push(row);
    }
    Ok(out)
}

/// A service IPv6: the one asked for if free, else the next free one of its range.
fn v6_for(
    tx: &Transaction<'_>,
    wanted: Option<std::net::Ipv6Addr>,
    base: std::net::Ipv6Addr,
    column: &str,
) -> Result<String> {
    let sql = format!("SELECT {column} FROM services WHERE {column} IS NOT NULL");
    match wanted {
        Some(ip) => {
            let text = ip.to_string();
            let taken: Option<i64> = tx
                .query_row(
                    "SELECT 1 FROM services WHERE rr_ip_v6 = ?1 OR closest_ip_v6 = ?1
                     UNION SELECT 1 FROM instances WHERE ip6 = ?1 LIMIT 1",
                    [&text],
                    |r| r.get(0),
                )
                .optional()?;
            if taken.is_some() {
                return Err(StoreError::Conflict(format!("{ip} is already in use")));
            }
            Ok(text)
        }
        None => next_free_v6(tx, &sql, base, &[]),
    }
}

fn history(tx: &Transaction<'_>, i: &InstanceRow) -> Result<()> {
    tx.execute(
        "INSERT INTO instance_history (service, number, status, reason, at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![i.service, i.number, i.status, i.reason, i.updated_at],
    )?;
    Ok(())
}

impl Store {
    /// Create an application and its services in one transaction (all or nothing).
    pub fn create_application(
        &mut self,
        owner: &str,
        name: &str,
        namespace: &str,
        desc: &str,
        extra: &str,
        services: &[NewService],
    ) -> Result<(AppRow, Vec<ServiceRow>)> {
        let tx = self.conn.transaction()?;
        let row = AppRow {
            id: new_object_id(),
            owner: owner.to_owned(),
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            desc: desc.to_owned(),
            extra: extra.to_owned(),
            created_at: now_secs(),
        };
        tx.execute(
            &format!("INSERT INTO applications ({APP_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"),
            params![
                row.id,
                row.owner,
                row.name,
                row.namespace,
                row.desc,
                row.extra,
                row.created_at
            ],
        )
        .map_err(|e| match e {
            rusqlite::Error::SqliteFailure(f, _)
                if f.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                StoreError::Conflict(format!("application {name}.{namespace} exists"))
            }
            e => e.into(),
        })?;
        let services = insert_services(&tx, &row.id, services)?;
        tx.commit()?;
        Ok((row, services))
    }

    /// Add services to an existing application (all or nothing).
    pub fn add_services(
        &mut self,
        app_id: &str,
        services: &[NewService],
    ) -> Result<Vec<ServiceRow>> {
        let tx = self.conn.transaction()?;
        let exists: Option<i64> = tx
            .query_row("SELECT 1 FROM applications WHERE id = ?1", [app_id], |r| {
                r.get(0)
            })
            .optional()?;
        if exists.is_none() {
            return Err(StoreError::NotFound("application"));
        }
        let rows = insert_services(&tx, app_id, services)?;
        tx.commit()?;
        Ok(rows)
    }

    /// An application.
    pub fn application(&self, id: &str) -> Result<AppRow> {
        self.conn
            .query_row(
                &format!("SELECT {APP_COLS} FROM applications WHERE id = ?1"),
                [id],
                app,
            )
            .optional()?
            .ok_or(StoreError::NotFound("application"))
    }

    /// All applications, or one owner's.
    pub fn applications(&self, owner: Option<&str>) -> Result<Vec<AppRow>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {APP_COLS} FROM applications WHERE ?1 IS NULL OR owner = ?1 ORDER BY rowid"
        ))?;
        let rows = stmt
            .query_map([owner], app)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Change an application's name, namespace and description.
    pub fn update_application(
        &mut self,
        id: &str,
        name: &str,
        namespace: &str,
        desc: &str,
    ) -> Result<AppRow> {
        let n = self
            .conn
            .execute(
                "UPDATE applications SET name = ?2, namespace = ?3, descr = ?4 WHERE id = ?1",
                params![id, name, namespace, desc],
            )
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    StoreError::Conflict(format!("application {name}.{namespace} exists"))
                }
                e => e.into(),
            })?;
        if n == 0 {
            return Err(StoreError::NotFound("application"));
        }
        self.application(id)
    }

    /// Delete an application with its services and instances; returns the instances
    /// that existed (so the caller can undeploy them).
    pub fn delete_application(&mut self, id: &str) -> Result<Vec<InstanceRow>> {
        let tx = self.conn.transaction()?;
        let instances = {
            let mut stmt = tx.prepare(&format!(
                "SELECT {INSTANCE_COLS} FROM instances WHERE service IN (SELECT id FROM services WHERE application = ?1)"
            ))?;
            stmt.query_map([id], instance)?
                .collect::<rusqlite::Result<Vec<_>>>()?
        };
        if tx.execute("DELETE FROM applications WHERE id = ?1", [id])? == 0 {
            return Err(StoreError::NotFound("application"));
        }
        tx.commit()?;
        Ok(instances)
    }

    /// A service.
    pub fn service(&self, id: &str) -> Result<ServiceRow> {
        self.conn
            .query_row(
                &format!("SELECT {SERVICE_COLS} FROM services WHERE id = ?1"),
                [id],
                service,
            )
            .optional()?
            .ok_or(StoreError::NotFound("service"))
    }

    /// The services of an application, or all.
    pub fn services(&self, app_id: Option<&str>) -> Result<Vec<ServiceRow>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {SERVICE_COLS} FROM services WHERE ?1 IS NULL OR application = ?1 ORDER BY rowid"
        ))?;
        let rows = stmt
            .query_map([app_id], service)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// A service by its full name `app.appns.service.servicens` (the first if several
    /// users use the same name).
    pub fn service_by_name(&self, full: &str) -> Result<Option<(AppRow, ServiceRow)>> {
        let parts: Vec<&str> = full.split('.').collect();
        let [a, an, s, sn] = parts[..] else {
            return Ok(None);
        };
        let id: Option<String> = self
            .conn
            .query_row(
                "SELECT s.id FROM services s JOIN applications a ON s.application = a.id
                 WHERE a.name = ?1 AND a.namespace = ?2 AND s.name = ?3 AND s.namespace = ?4 ORDER BY s.rowid LIMIT 1",
                params![a, an, s, sn],
                |r| r.get(0),
            )
            .optional()?;
        self.service_with_app(id)
    }

    /// The service owning an IPv4 address (a service IP or one of its instances').
    pub fn service_by_ip(&self, ip: std::net::IpAddr) -> Result<Option<(AppRow, ServiceRow)>> {
        let id: Option<String> = match ip {
            std::net::IpAddr::V4(v4) => self
                .conn
                .query_row(
                    "SELECT id FROM services WHERE rr_ip = ?1 OR closest_ip = ?1
                     UNION SELECT service FROM instances WHERE ip = ?1 LIMIT 1",
                    [u32::from(v4)],
                    |r| r.get(0),
                )
                .optional()?,
            std::net::IpAddr::V6(v6) => self
                .conn
                .query_row(
                    "SELECT id FROM services WHERE rr_ip_v6 = ?1 OR closest_ip_v6 = ?1
                     UNION SELECT service FROM instances WHERE ip6 = ?1 LIMIT 1",
                    [v6.to_string()],
                    |r| r.get(0),
                )
                .optional()?,
        };
        self.service_with_app(id)
    }

    fn service_with_app(&self, id: Option<String>) -> Result<Option<(AppRow, ServiceRow)>> {
        let Some(id) = id else { return Ok(None) };
        let s = self.service(&id)?;
        let a = self.application(&s.application)?;
        Ok(Some((a, s)))
    }

    /// Delete a service and its instances; returns the instances that existed.
    pub fn delete_service(&mut self, id: &str) -> Result<Vec<InstanceRow>> {
        let tx = self.conn.transaction()?;
        let instances = {
            let mut stmt = tx.prepare(&format!(
                "SELECT {INSTANCE_COLS} FROM instances WHERE service = ?1"
            ))?;
            stmt.query_map([id], instance)?
                .collect::<rusqlite::Result<Vec<_>>>()?
        };
        if tx.execute("DELETE FROM services WHERE id = ?1", [id])? == 0 {
            return Err(StoreError::NotFound("service"));
        }
        tx.commit()?;
        Ok(instances)
    }

    /// Replace a service's spec; returns the new generation.
    pub fn replace_service_spec(&mut self, id: &str, spec: &str) -> Result<i64> {
        let tx = self.conn.transaction()?;
        if tx.execute(
            "UPDATE services SET spec = ?2, generation = generation + 1 WHERE id = ?1",
            params![id, spec],
        )? == 0
        {
            return Err(StoreError::NotFound("service"));
        }
        let g: i64 = tx.query_row("SELECT generation FROM services WHERE id = ?1", [id], |r| {
            r.get(0)
        })?;
        tx.execute(
            "INSERT INTO service_specs (service, generation, spec) VALUES (?1, ?2, ?3)",
            params![id, g, spec],
        )?;
        // Roll the running instances to it, keeping their number up (unless a rollout
        // is already under way: it keeps its target).
        tx.execute(
            "UPDATE services SET rollout_target = COALESCE(rollout_target, (SELECT COUNT(*) FROM instances
               WHERE service = ?1 AND status NOT IN ('FAILED', 'DEAD', 'COMPLETED', 'UNDEPLOYED')))
             WHERE id = ?1",
            [id],
        )?;
        tx.execute(
            "UPDATE services SET rollout_target = NULL WHERE id = ?1 AND rollout_target = 0",
            [id],
        )?;
        tx.commit()?;
        Ok(g)
    }

    /// The spec of one generation of a service (the current one if that is unknown).
    pub fn spec_of(&self, service_id: &str, generation: i64) -> Result<String> {
        let spec: Option<String> = self
            .conn
            .query_row(
                "SELECT spec FROM service_specs WHERE service = ?1 AND generation = ?2",
                params![service_id, generation],
                |r| r.get(0),
            )
            .optional()?;
        match spec {
            Some(s) => Ok(s),
            None => Ok(self.service(service_id)?.spec),
        }
    }

    /// Services being rolled to a new spec: (service id, instance count to keep up).
    pub fn rollouts(&self) -> Result<Vec<(String, u32)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, rollout_target FROM services WHERE rollout_target IS NOT NULL")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// A rollout is done.
    pub fn finish_rollout(&mut self, service_id: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE services SET rollout_target = NULL WHERE id = ?1",
            [service_id],
        )?;
        Ok(())
    }
}

mod instances;

#[cfg(test)]
mod tests;
