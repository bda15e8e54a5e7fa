//! Watching instances until each is RUNNING (or COMPLETED, for a one-shot service) or
//! has failed, saying every change: `grove app deploy` and `grove up`.

use crate::client::Api;
use serde_json::Value;
use std::collections::BTreeMap;

/// What a watch saw at one look.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Some instance is still on its way.
    Pending,
    /// Every instance is RUNNING or COMPLETED.
    Done,
    /// An instance failed: which, and why.
    Failed(String),
}

/// The instances of some services, and what was said of each.
#[derive(Debug)]
pub struct Watch {
    services: Vec<(String, String)>,
    last: BTreeMap<String, String>,
    generation: Option<i64>,
}

impl Watch {
    /// Watch the instances of `services` (id, name).
    pub fn new(services: Vec<(String, String)>) -> Self {
        Self {
            services,
            last: BTreeMap::new(),
            generation: None,
        }
    }

    /// Done only when every instance is of spec `generation` (a rolling update);
    /// failures of older ones do not count.
    pub fn of_generation(mut self, generation: i64) -> Self {
        self.generation = Some(generation);
        self
    }

    /// Look every 200 ms until the outcome is known or `deadline` passes.
    pub fn until(
        &mut self,
        api: &mut Api,
        deadline: std::time::Instant,
        mut say: impl FnMut(&str),
    ) -> Result<Outcome, String> {
        loop {
            let o = self.look(api, &mut say)?;
            if o != Outcome::Pending || std::time::Instant::now() > deadline {
                return Ok(o);
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    /// Look once; `say` gets one line per instance whose status changed.
    pub fn look(&mut self, api: &mut Api, mut say: impl FnMut(&str)) -> Result<Outcome, String> {
        let mut all = true;
        let mut failed = None;
        for (id, name) in &self.services {
            let doc = api
                .call("GET", &format!("/api/service/{id}"), None)
                .map_err(|e| e.to_string())?;
            let list = doc["instance_list"].as_array().cloned().unwrap_or_default();
            all &= !list.is_empty();
            for i in &list {
                let mut key = format!("{name}.{}", i["instance_number"]);
                let current = match self.generation {
                    Some(g) => {
                        key.push_str(&format!(" (gen {})", i["generation"]));
                        i["generation"].as_i64() == Some(g)
                    }
                    None => true,
                };
                let status = i["status"].as_str().unwrap_or("?");
                let line = describe(i);
                if self.last.get(&key) != Some(&line) {
                    say(&format!("{key:<16} {line}"));
                    self.last.insert(key.clone(), line);
                }
                all &= current && matches!(status, "RUNNING" | "COMPLETED");
                if current && matches!(status, "FAILED" | "DEAD") && failed.is_none() {
                    let why = i["status_detail"].as_str().unwrap_or("no reason given");
                    failed = Some(format!("{key} {status}: {why}"));
                }
            }
        }
        Ok(match (failed, all) {
            (Some(f), _) => Outcome::Failed(f),
            (None, true) => Outcome::Done,
            (None, false) => Outcome::Pending,
        })
    }
}

/// An instance's status as one line: status, where, why.
pub fn describe(i: &Value) -> String {
    let status = i["status"].as_str().unwrap_or("?");
    match (i["worker_id"].as_str(), i["status_detail"].as_str()) {
        (Some(w), Some(d)) => format!("{status} on {w} ({d})"),
        (Some(w), None) => format!("{status} on {w}"),
        (None, Some(d)) => format!("{status} ({d})"),
        (None, None) => status.to_owned(),
    }
}
