//! The SLA v2.0 deployment descriptor: parsing and validation with field paths.
//!
//! The descriptor is read from JSON into typed structs by hand, field by field, so
//! that every error names its field the way a user wrote it
//! (`applications[0].microservices[1].port: "70000" is not a port`) and all errors of
//! a descriptor are reported at once. Unknown keys are kept (`extra`) and passed
//! through, as Oakestra does.

use grove_proto::msg::GeoPoint;
pub use grove_proto::ports::{PortMapping, Protocol, parse_ports};
use serde_json::{Map, Value};
use std::net::{Ipv4Addr, Ipv6Addr};
use walk::{Walk, describe, exact_u64, join};

/// One problem in a descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, e.g. `applications[0].microservices[1].port`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// A whole descriptor.
#[derive(Debug, Clone, PartialEq)]
pub struct Sla {
    /// `sla_version`, "v2.0".
    pub sla_version: String,
    /// `customerID`.
    pub customer_id: String,
    /// `applications`.
    pub applications: Vec<Application>,
}

/// One application of a descriptor.
#[derive(Debug, Clone, PartialEq)]
pub struct Application {
    /// `applicationID`: empty on create.
    pub id: String,
    /// `application_name`.
    pub name: String,
    /// `application_namespace`.
    pub namespace: String,
    /// `application_desc`.
    pub desc: String,
    /// `microservices`.
    pub microservices: Vec<Microservice>,
    /// Keys Grove does not interpret, kept as given.
    pub extra: Map<String, Value>,
}

/// How a service runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Virtualization {
    /// OCI container.
    Container,
    /// Unikernel (accepted for compatibility; no worker runs them yet).
    Unikernel,
}

impl Virtualization {
    /// As the SLA writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Container => "container",
            Self::Unikernel => "unikernel",
        }
    }
}

/// `addresses`: service IPs the user asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Addresses {
    /// Round-robin IPv4, inside 10.30.0.0/16.
    pub rr_ip: Option<Ipv4Addr>,
    /// Round-robin IPv6, inside fdff:2000::/21.
    pub rr_ip_v6: Option<Ipv6Addr>,
    /// Closest IPv4, inside 10.30.0.0/16.
    pub closest_ip: Option<Ipv4Addr>,
    /// Closest IPv6, inside fdff:4000::/21.
    pub closest_ip_v6: Option<Ipv6Addr>,
}

/// A placement constraint.
#[derive(Debug, Clone, PartialEq)]
pub enum Constraint {
    /// `direct`: this cluster and/or these nodes.
    Direct {
        /// Cluster name.
        cluster: Option<String>,
        /// Eligible node names (`node`, `;`-separated).
        nodes: Vec<String>,
    },
    /// `geo`: within `threshold` km of `location`.
    Geo {
        /// The point.
        location: GeoPoint,
        /// Radius in km.
        threshold_km: f64,
        /// `rigidness` as given (0..=1).
        rigidness: Option<f64>,
    },
    /// `latency`: at most `threshold` ms from `location` (or `area`).
    Latency {
        /// The point, if given.
        location: Option<GeoPoint>,
        /// An area name, if given.
        area: Option<String>,
        /// Milliseconds.
        threshold_ms: f64,
    },
}

/// One microservice of an application.
#[derive(Debug, Clone, PartialEq)]
pub struct Microservice {
    /// `microserviceID`: empty on create.
    pub id: String,
    /// `microservice_name`.
    pub name: String,
    /// `microservice_namespace`.
    pub namespace: String,
    /// `virtualization`.
    pub virtualization: Virtualization,
    /// `code`: the image reference.
    pub code: String,
    /// `cmd`.
    pub cmd: Vec<String>,
    /// `args`.
    pub args: Vec<String>,
    /// `environment` as `KEY=VALUE`.
    pub environment: Vec<String>,
    /// `memory` in MB.
    pub memory_mb: u32,
    /// `vcpus`, in thousandths.
    pub millicpus: u32,
    /// `vgpus`.
    pub vgpus: u32,
    /// `vtpus`.
    pub vtpus: u32,
    /// `bandwidth_in`.
    pub bandwidth_in: u64,
    /// `bandwidth_out`.
    pub bandwidth_out: u64,
    /// `storage`.
    pub storage: u64,
    /// `port`, parsed.
    pub ports: Vec<PortMapping>,
    /// `port` as written.
    pub port: Option<String>,
    /// `state`.
    pub state: String,
    /// `one_shot`.
    pub one_shot: bool,
    /// `stop_grace_s` (Grove's extension): seconds between SIGTERM and SIGKILL when an
    /// instance is stopped; none: the worker's default.
    pub stop_grace_s: Option<u16>,
    /// `privileged`.
    pub privileged: bool,
    /// `added_files`.
    pub added_files: Vec<String>,
    /// `addresses`.
    pub addresses: Addresses,
    /// `constraints`.
    pub constraints: Vec<Constraint>,
    /// `connectivity`, kept as given.
    pub connectivity: Vec<Value>,
    /// `volumes`, kept as given.
    pub volumes: Vec<Value>,
    /// `arch`.
    pub arch: Vec<String>,
    /// `platform`.
    pub platform: Option<String>,
    /// Keys Grove does not interpret, kept as given.
    pub extra: Map<String, Value>,
}

impl Microservice {
    /// The full name `app.appns.service.servicens`.
    pub fn full_name(&self, app: &Application) -> String {
        self.full_name_in(&app.name, &app.namespace)
    }

    /// The full name given the application's name and namespace.
    pub fn full_name_in(&self, app: &str, app_ns: &str) -> String {
        format!("{app}.{app_ns}.{}.{}", self.name, self.namespace)
    }
}

/// An f64 as f32 (degrees keep about a metre of precision, plenty for placement).
#[allow(clippy::cast_possible_truncation)]
pub(crate) fn narrow(x: f64) -> f32 {
    x as f32
}

const KNOWN_APP: &[&str] = &[
    "applicationID",
    "application_name",
    "application_namespace",
    "application_desc",
    "microservices",
];
const KNOWN_SERVICE: &[&str] = &[
    "microserviceID",
    "microservice_name",
    "microservice_namespace",
    "virtualization",
    "code",
    "cmd",
    "args",
    "environment",
    "memory",
    "vcpus",
    "vgpus",
    "vtpus",
    "bandwidth_in",
    "bandwidth_out",
    "storage",
    "port",
    "state",
    "one_shot",
    "stop_grace_s",
    "privileged",
    "added_files",
    "addresses",
    "constraints",
    "connectivity",
    "volumes",
    "arch",
    "platform",
];

fn extra(m: &Map<String, Value>, known: &[&str]) -> Map<String, Value> {
    m.iter()
        .filter(|(k, _)| !known.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn in_prefix(ip: Ipv6Addr, base: Ipv6Addr, len: u32) -> bool {
    let mask = u128::MAX << (128 - len);
    u128::from(ip) & mask == u128::from(base) & mask
}

fn parse_location(v: &Value) -> Option<GeoPoint> {
    let (lat, lon) = match v {
        Value::String(s) => {
            let (a, b) = s.split_once(',')?;
            (a.trim().parse::<f32>().ok()?, b.trim().parse::<f32>().ok()?)
        }
        Value::Object(m) => (
            narrow(m.get("lat")?.as_f64()?),
            narrow(m.get("lon")?.as_f64()?),
        ),
        _ => return None,
    };
    ((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon))
        .then_some(GeoPoint { lat, lon })
}

impl Walk {
    fn addresses(&mut self, m: &Map<String, Value>, path: &str) -> Addresses {
        let mut a = Addresses::default();
        let Some(v) = m.get("addresses").filter(|v| !v.is_null()) else {
            return a;
        };
        let path = join(path, "addresses");
        let Some(am) = self.object(v, &path) else {
            return a;
        };
        for key in ["rr_ip", "closest_ip"] {
            if let Some(s) = self.string(am, key, &path, false) {
                match s.parse::<Ipv4Addr>() {
                    Ok(ip) if ip.octets()[..2] == [10, 30] => {
                        if key == "rr_ip" {
                            a.rr_ip = Some(ip)
                        } else {
                            a.closest_ip = Some(ip)
                        }
                    }
                    Ok(_) => self.err(
                        &join(&path, key),
                        format!("\"{s}\" is not inside 10.30.0.0/16"),
                    ),
                    Err(_) => {
                        self.err(&join(&path, key), format!("\"{s}\" is not an IPv4 address"))
                    }
                }
            }
        }
        for (key, base) in [
            ("rr_ip_v6", Ipv6Addr::new(0xfdff, 0x2000, 0, 0, 0, 0, 0, 0)),
            (
                "closest_ip_v6",
                Ipv6Addr::new(0xfdff, 0x4000, 0, 0, 0, 0, 0, 0),
            ),
        ] {
            if let Some(s) = self.string(am, key, &path, false) {
                match s.parse::<Ipv6Addr>() {
                    Ok(ip) if in_prefix(ip, base, 21) => {
                        if key == "rr_ip_v6" {
                            a.rr_ip_v6 = Some(ip)
                        } else {
                            a.closest_ip_v6 = Some(ip)
                        }
                    }
                    Ok(_) => self.err(
                        &join(&path, key),
                        format!("\"{s}\" is not inside {base}/21"),
                    ),
                    Err(_) => {
                        self.err(&join(&path, key), format!("\"{s}\" is not an IPv6 address"))
                    }
                }
            }
        }
        a
    }

    fn constraints(&mut self, m: &Map<String, Value>, path: &str) -> Vec<Constraint> {
        let list = self.array(m, "constraints", path, false);
        let mut out = Vec::new();
        for (i, v) in list.iter().enumerate() {
            let p = format!("{}[{i}]", join(path, "constraints"));
            let Some(c) = self.object(v, &p) else {
                continue;
            };
            let kind = self.string(c, "type", &p, true).unwrap_or_default();
            match kind.as_str() {
                "direct" => {
                    let cluster = self
                        .string(c, "cluster", &p, false)
                        .filter(|s| !s.is_empty());
                    let nodes: Vec<String> = self
                        .string(c, "node", &p, false)
                        .map(|s| {
                            s.split(';')
                                .map(str::trim)
                                .filter(|n| !n.is_empty())
                                .map(str::to_owned)
                                .collect()
                        })
                        .unwrap_or_default();
                    if cluster.is_none() && nodes.is_empty() {
                        self.err(&p, "a direct constraint needs a cluster or a node");
                    }
                    out.push(Constraint::Direct { cluster, nodes });
                }
                "geo" => {
                    let location = match c.get("location") {
                        None => {
                            self.err(&join(&p, "location"), "is required");
                            None
                        }
                        Some(l) => {
                            let g = parse_location(l);
                            if g.is_none() {
                                self.err(
                                    &join(&p, "location"),
                                    format!("{} is not \"lat,lon\"", describe(l)),
                                );
                            }
                            g
                        }
                    };
                    let threshold = self.number(c, "threshold", &p, 40_075.0);
                    if threshold.is_none() && c.get("threshold").is_none() {
                        self.err(&join(&p, "threshold"), "is required");
                    }
                    let rigidness = self.number(c, "rigidness", &p, 1.0);
                    self.number(c, "convergence_time", &p, f64::MAX);
                    if let (Some(location), Some(threshold_km)) = (location, threshold) {
                        out.push(Constraint::Geo {
                            location,
                            threshold_km,
                            rigidness,
                        });
                    }
                }
                "latency" => {
                    let location = c.get("location").and_then(parse_location);
                    let area = self.string(c, "area", &p, false);
                    let threshold = self.number(c, "threshold", &p, 1e6);
                    if threshold.is_none() && c.get("threshold").is_none() {
                        self.err(&join(&p, "threshold"), "is required");
                    }
                    self.number(c, "rigidness", &p, 1.0);
                    self.number(c, "convergence_time", &p, f64::MAX);
                    if let Some(threshold_ms) = threshold {
                        out.push(Constraint::Latency {
                            location,
                            area,
                            threshold_ms,
                        });
                    }
                }
                "" => {}
                other => self.err(
                    &join(&p, "type"),
                    format!("\"{other}\" is not direct, geo or latency"),
                ),
            }
        }
        out
    }

    fn microservice(&mut self, v: &Value, path: &str) -> Option<Microservice> {
        let m = self.object(v, path)?;
        let virtualization = match self.string(m, "virtualization", path, true).as_deref() {
            Some("container") => Virtualization::Container,
            Some("unikernel") => Virtualization::Unikernel,
            Some(other) => {
                self.err(
                    &join(path, "virtualization"),
                    format!("\"{other}\" is not container or unikernel"),
                );
                Virtualization::Container
            }
            None => Virtualization::Container,
        };
        let code = self.string(m, "code", path, true).unwrap_or_default();
        if m.get("code").is_some_and(Value::is_string)
            && (code.trim().is_empty() || code.contains(char::is_whitespace))
        {
            self.err(
                &join(path, "code"),
                format!("\"{code}\" is not an image reference"),
            );
        }
        let environment = self.strings(m, "environment", path);
        for (i, e) in environment.iter().enumerate() {
            if e.split_once('=').is_none_or(|(k, _)| k.is_empty()) {
                self.err(
                    &format!("{}[{i}]", join(path, "environment")),
                    format!("\"{e}\" is not KEY=VALUE"),
                );
            }
        }
        let port = match m.get("port") {
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => self.string(m, "port", path, false),
        };
        let ports = match port.as_deref().map(parse_ports) {
            Some(Ok(p)) => {
                let refused = grove_proto::defence::on(grove_proto::defence::Defence::HostPorts);
                for own in p
                    .iter()
                    .filter(|m| refused && grove_proto::ports::GROVE_PORTS.contains(&m.host))
                {
                    self.err(
                        &join(path, "port"),
                        format!(
                            "host port {} is one of Grove's own (4789 VXLAN, 10000 root, \
                             10100 cluster) and cannot be mapped",
                            own.host
                        ),
                    );
                }
                p
            }
            Some(Err(reason)) => {
                self.err(&join(path, "port"), reason);
                Vec::new()
            }
            None => Vec::new(),
        };
        let vcpus = self.number(m, "vcpus", path, 1024.0).unwrap_or(0.0);
        // Every container is contained (user namespace, seccomp, capabilities); lifting
        // that is not a choice an SLA can make yet, and is refused rather than ignored.
        if self.boolean(m, "privileged", path) {
            self.err(
                &join(path, "privileged"),
                "privileged containers are not offered: every container runs in its own \
                 user namespace under seccomp with Docker's default capabilities"
                    .to_owned(),
            );
        }
        Some(Microservice {
            id: self
                .string(m, "microserviceID", path, false)
                .unwrap_or_default(),
            name: self.name(m, "microservice_name", path),
            namespace: self.name(m, "microservice_namespace", path),
            virtualization,
            code,
            cmd: self.strings(m, "cmd", path),
            args: self.strings(m, "args", path),
            environment,
            memory_mb: u32::try_from(self.whole(m, "memory", path, 1 << 24)).unwrap_or(0),
            // At most 1024 CPUs: fits u32 in thousandths.
            millicpus: u32::try_from(exact_u64((vcpus * 1000.0).round())).unwrap_or(u32::MAX),
            vgpus: u32::try_from(self.whole(m, "vgpus", path, 1024)).unwrap_or(0),
            vtpus: u32::try_from(self.whole(m, "vtpus", path, 1024)).unwrap_or(0),
            bandwidth_in: self.whole(m, "bandwidth_in", path, u64::from(u32::MAX)),
            bandwidth_out: self.whole(m, "bandwidth_out", path, u64::from(u32::MAX)),
            storage: self.whole(m, "storage", path, u64::from(u32::MAX)),
            ports,
            port,
            state: self.string(m, "state", path, false).unwrap_or_default(),
            one_shot: self.boolean(m, "one_shot", path),
            stop_grace_s: m
                .get("stop_grace_s")
                .filter(|v| !v.is_null())
                .map(|_| u16::try_from(self.whole(m, "stop_grace_s", path, 3600)).unwrap_or(0)),
            privileged: self.boolean(m, "privileged", path),
            added_files: self.strings(m, "added_files", path),
            addresses: self.addresses(m, path),
            constraints: self.constraints(m, path),
            connectivity: self.array(m, "connectivity", path, false).to_vec(),
            volumes: self.array(m, "volumes", path, false).to_vec(),
            arch: self.strings(m, "arch", path),
            platform: self.string(m, "platform", path, false),
            extra: extra(m, KNOWN_SERVICE),
        })
    }

    fn application(&mut self, v: &Value, path: &str) -> Option<Application> {
        let m = self.object(v, path)?;
        let services = self.array(m, "microservices", path, true);
        let mut microservices = Vec::new();
        for (i, s) in services.iter().enumerate() {
            if let Some(ms) = self.microservice(s, &format!("{}[{i}]", join(path, "microservices")))
            {
                microservices.push(ms);
            }
        }
        let app = Application {
            id: self
                .string(m, "applicationID", path, false)
                .unwrap_or_default(),
            name: self.name(m, "application_name", path),
            namespace: self.name(m, "application_namespace", path),
            desc: self
                .string(m, "application_desc", path, false)
                .unwrap_or_default(),
            microservices,
            extra: extra(m, KNOWN_APP),
        };
        let mut seen = std::collections::HashSet::new();
        for (i, s) in app.microservices.iter().enumerate() {
            if !seen.insert((s.name.clone(), s.namespace.clone())) {
                self.err(
                    &format!("{}[{i}].microservice_name", join(path, "microservices")),
                    format!(
                        "\"{}.{}\" appears twice in this application",
                        s.name, s.namespace
                    ),
                );
            }
        }
        Some(app)
    }
}

/// One microservice (bare, or the first of an SLA) validated as a service of
/// application `app` in namespace `app_ns`; with the microservice's JSON as given.
pub fn one_microservice(
    v: &Value,
    app: &str,
    app_ns: &str,
) -> Result<(Microservice, Value), Vec<FieldError>> {
    let raw = v
        .get("applications")
        .and_then(|a| a.get(0))
        .and_then(|a| a.get("microservices"))
        .and_then(|m| m.get(0))
        .cloned()
        .unwrap_or_else(|| v.clone());
    let wrapped = serde_json::json!({
        "sla_version": "v2.0",
        "customerID": "",
        "applications": [{
            "application_name": app,
            "application_namespace": app_ns,
            "microservices": [raw.clone()],
        }],
    });
    let mut sla = parse(&wrapped)?;
    let ms = sla.applications.remove(0).microservices.remove(0);
    Ok((ms, raw))
}

/// Parse and validate a descriptor; every problem is reported.
pub fn parse(v: &Value) -> Result<Sla, Vec<FieldError>> {
    let mut w = Walk { errors: Vec::new() };
    let Some(m) = w.object(v, "(body)") else {
        return Err(w.errors);
    };
    let sla_version = w.string(m, "sla_version", "", true).unwrap_or_default();
    if m.get("sla_version").is_some_and(Value::is_string) && sla_version != "v2.0" {
        w.err(
            "sla_version",
            format!("\"{sla_version}\" is not supported; use \"v2.0\""),
        );
    }
    let customer_id = w.string(m, "customerID", "", true).unwrap_or_default();
    let apps = w.array(m, "applications", "", true);
    if apps.is_empty() && m.get("applications").is_some_and(Value::is_array) {
        w.err("applications", "must hold at least one application");
    }
    let mut applications = Vec::new();
    for (i, a) in apps.iter().enumerate() {
        if let Some(app) = w.application(a, &format!("applications[{i}]")) {
            applications.push(app);
        }
    }
    if w.errors.is_empty() {
        Ok(Sla {
            sla_version,
            customer_id,
            applications,
        })
    } else {
        Err(w.errors)
    }
}

mod walk;

#[cfg(test)]
mod tests;
