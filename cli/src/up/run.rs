//! What one `grove up` made (daemons, namespaces, links), so that all of it goes again.

use super::*;

/// One daemon of the run.
#[derive(Debug)]
pub(super) struct Daemon {
    pub(super) name: String,
    pub(super) child: Child,
}

/// Everything the run made, so it can all go again.
#[derive(Debug)]
pub(super) struct Run {
    pub(super) dir: PathBuf,
    pub(super) exe: PathBuf,
    pub(super) agents: Vec<Daemon>,
    pub(super) tiers: Vec<Daemon>,
    pub(super) done: bool,
}

impl Run {
    /// Start this binary as daemon `role` (in namespace `ns`), logging to
    /// `logs/<name>.log`; in a process group of its own, so a Ctrl-C at the terminal
    /// reaches only `grove up`, which stops everything in order.
    pub(super) fn spawn(
        &self,
        name: &str,
        role: &str,
        ns: Option<&str>,
        args: &[String],
    ) -> Result<Daemon, String> {
        use std::os::unix::process::CommandExt;
        let log_path = self.dir.join("logs").join(format!("{name}.log"));
        let log =
            std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
        let mut c = in_ns(ns, &self.exe);
        c.args(args)
            .env("GROVE_AS", role)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .process_group(0);
        let child = c.spawn().map_err(|e| format!("starting {name}: {e}"))?;
        Ok(Daemon {
            name: name.to_owned(),
            child,
        })
    }

    /// Run this binary as `role` to completion (in namespace `ns`); its stdout.
    pub(super) fn once(
        &self,
        role: &str,
        ns: Option<&str>,
        args: &[&str],
    ) -> Result<String, String> {
        let out = in_ns(ns, &self.exe)
            .args(args)
            .env("GROVE_AS", role)
            .env("RUST_LOG", "warn")
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(format!(
                "{role} {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// The switch, the host's link to it, and one namespace per worker on it.
    pub(super) fn network(&self) -> Result<(), String> {
        sh("ip", &["netns", "add", SWITCH])?;
        sh(
            "ip",
            &["-n", SWITCH, "link", "add", "sw0", "type", "bridge"],
        )?;
        sh("ip", &["-n", SWITCH, "link", "set", "sw0", "up"])?;
        sh(
            "ip",
            &[
                "link", "add", HOST_LINK, "type", "veth", "peer", "name", "p0", "netns", SWITCH,
            ],
        )?;
        sh(
            "ip",
            &["-n", SWITCH, "link", "set", "p0", "master", "sw0", "up"],
        )?;
        sh(
            "ip",
            &["addr", "add", &format!("{HOST_ADDR}/24"), "dev", HOST_LINK],
        )?;
        sh("ip", &["link", "set", HOST_LINK, "up"])?;
        for (i, w) in WORKERS.iter().enumerate() {
            let ns = worker_ns(w);
            let port = format!("p{}", i + 1);
            sh("ip", &["netns", "add", &ns])?;
            sh(
                "ip",
                &[
                    "-n", SWITCH, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                    "netns", &ns,
                ],
            )?;
            sh(
                "ip",
                &["-n", SWITCH, "link", "set", &port, "master", "sw0", "up"],
            )?;
            sh(
                "ip",
                &[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("{}/24", worker_addr(i)),
                    "dev",
                    "eth0",
                ],
            )?;
            sh("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
            sh("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// Stop every daemon, reset every worker, delete the namespaces (and with them
    /// the links). Also clears what a killed earlier run left.
    pub(super) fn teardown(&mut self) {
        for a in &mut self.agents {
            let _ = a.child.kill();
            let _ = a.child.wait();
        }
        self.agents.clear();
        for w in WORKERS {
            let ns = worker_ns(w);
            let state = self.dir.join(w);
            let in_ns = sh("ip", &["netns", "list"]).is_ok_and(|l| {
                l.lines()
                    .any(|x| x.split_whitespace().next() == Some(ns.as_str()))
            });
            if state.exists() || in_ns {
                let state = state.to_string_lossy().into_owned();
                let r = self.once(
                    "agent",
                    in_ns.then_some(ns.as_str()),
                    &["--name", w, "--state-dir", &state, "reset"],
                );
                if let Err(e) = r {
                    esay!("grove up: resetting worker {w}: {e}");
                }
            }
            if in_ns {
                let _ = sh("ip", &["netns", "del", &ns]);
            }
        }
        for t in self.tiers.iter_mut().rev() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(t.child.id()).unwrap_or(0));
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(3);
            while t.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = t.child.kill();
            let _ = t.child.wait();
        }
        self.tiers.clear();
        let _ = sh("ip", &["netns", "del", SWITCH]);
        let _ = Command::new("ip")
            .args(["link", "del", HOST_LINK])
            .stderr(Stdio::null())
            .status();
        self.done = true;
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if !self.done {
            self.teardown();
        }
    }
}
