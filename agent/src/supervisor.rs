//! The container supervisor: one small process per worker (`grove-agent supervise`),
//! the parent of every container, so that the agent can be killed, restarted or
//! upgraded without disturbing them. It starts containers on request, reaps them and
//! keeps each one's exit (code, OOM) in a file, and caps their logs; the agent asks it
//! over a Unix socket in the state dir and re-adopts what runs when it comes back.
//!
//! It is single-threaded and blocking (clone(2) with Rust code in the child needs
//! that): a poll(2) loop over the socket with a 100 ms tick for reaping and logs.
//! One lock file makes sure only one runs per state dir.

use crate::container::{self, LaunchSpec, Paths, cgroup::Group};
use minicbor::{Decode, Encode};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// In a container's directory while it is being ended: the SIGKILL deadline (ms since
/// the epoch).
const END_FILE: &str = "end";

/// A log is cut (its older half kept as `log.1`) beyond this many bytes.
pub const LOG_CAP: u64 = 1 << 20;

/// How a container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct Exit {
    /// Exit code, or 128 + signal; `None` when nobody could see it end.
    #[n(0)]
    pub code: Option<i32>,
    /// The OOM killer killed a process of it.
    #[n(1)]
    pub oom: bool,
}

/// A container as the supervisor knows it.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Entry {
    /// Its id.
    #[n(0)]
    pub id: String,
    /// Its PID on the host.
    #[n(1)]
    pub pid: u32,
    /// How it ended, once it has.
    #[n(2)]
    pub exit: Option<Exit>,
}

/// A request to the supervisor.
#[derive(Debug, Clone, Encode, Decode)]
pub enum Request {
    /// Start a container.
    #[n(0)]
    Start(#[n(0)] Box<LaunchSpec>),
    /// SIGTERM, then SIGKILL after the grace period (ms).
    #[n(1)]
    Stop(#[n(0)] String, #[n(1)] u32),
    /// Kill it if needed and remove everything it left.
    #[n(2)]
    Remove(#[n(0)] String),
    /// Every container and its state.
    #[n(3)]
    List,
    /// Make (or keep) container `id`'s network namespace before it starts; the answer
    /// is its path.
    #[n(4)]
    Prepare(#[n(0)] String),
    /// End it and remove everything it left: SIGTERM, SIGKILL after the grace (ms)
    /// unless it ended before, then the removal. Answered at once; the end survives a
    /// restart of the supervisor. A start or prepare of the same id cuts the grace
    /// short.
    #[n(5)]
    End(#[n(0)] String, #[n(1)] u32),
}

/// The answer.
#[derive(Debug, Clone, Encode, Decode)]
pub enum Reply {
    /// Done.
    #[n(0)]
    Ok,
    /// Started with this PID.
    #[n(1)]
    Started(#[n(0)] u32),
    /// The containers.
    #[n(2)]
    List(#[n(0)] Vec<Entry>),
    /// Refused, with why.
    #[n(3)]
    Error(#[n(0)] String),
    /// Prepared: the network namespace's path.
    #[n(4)]
    Prepared(#[n(0)] String),
}

/// The socket of the supervisor of state dir `dir`.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join("supervisor.sock")
}

fn containers_dir(dir: &Path) -> PathBuf {
    dir.join("containers")
}

fn write_frame(s: &mut UnixStream, body: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(body.len()).map_err(|_| std::io::Error::other("frame too large"))?;
    s.write_all(&len.to_be_bytes())?;
    s.write_all(body)
}

fn read_frame(s: &mut UnixStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len);
    if len > 16 << 20 {
        return Err(std::io::Error::other("frame too large"));
    }
    let mut body = vec![0u8; len as usize];
    s.read_exact(&mut body)?;
    Ok(body)
}

/// One request to the supervisor of `dir`, answered.
pub fn call(dir: &Path, req: &Request) -> Result<Reply, String> {
    let mut s = UnixStream::connect(socket_path(dir))
        .map_err(|e| format!("the container supervisor: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let body = minicbor::to_vec(req).map_err(|e| e.to_string())?;
    write_frame(&mut s, &body).map_err(|e| format!("the container supervisor: {e}"))?;
    let answer = read_frame(&mut s).map_err(|e| format!("the container supervisor: {e}"))?;
    minicbor::decode(&answer).map_err(|e| format!("the container supervisor: {e}"))
}

/// Make sure a supervisor serves `dir`: start one (detached, in a session of its own)
/// if none answers, and wait until it does.
pub fn ensure(dir: &Path) -> Result<(), String> {
    if call(dir, &Request::List).is_ok() {
        return Ok(());
    }
    // The agent's own binary (a program embedding the runtime names it instead).
    let exe = match std::env::var_os("GROVE_AGENT_EXE") {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe().map_err(|e| e.to_string())?,
    };
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("supervisor.log"))
        .map_err(|e| e.to_string())?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--state-dir")
        .arg(dir)
        .arg("supervise")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("starting the supervisor: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if call(dir, &Request::List).is_ok() {
            // It lives on in its own session; the agent does not wait for it (should it
            // end first, it stays a zombie until the agent goes).
            drop(child);
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "the container supervisor exited ({status}); see {}",
                dir.join("supervisor.log").display()
            ));
        }
        if Instant::now() > deadline {
            return Err("the container supervisor did not come up".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Tracked {
    pid: Pid,
    /// Our child (reaped with waitpid), or adopted from an earlier supervisor (only
    /// watched).
    ours: bool,
    kill_at: Option<Instant>,
    /// Removed once it ended ([`Request::End`]).
    remove: bool,
}

struct Supervisor {
    dir: PathBuf,
    running: HashMap<String, Tracked>,
}

fn write_atomic(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, body)?;
    std::fs::rename(&tmp, path)
}

/// A process's start time (field 22 of /proc/PID/stat), to tell it from a later
/// process that got the same PID.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(19)?.parse().ok()
}

impl Supervisor {
    fn container(&self, id: &str) -> PathBuf {
        containers_dir(&self.dir).join(id)
    }

    fn exit_of(&self, id: &str) -> Option<Exit> {
        std::fs::read(self.container(id).join("exit"))
            .ok()
            .and_then(|b| minicbor::decode(&b).ok())
    }

    fn record_exit(&mut self, id: &str, code: Option<i32>) {
        let oom = Group::load(id).oom_kills() > 0;
        let exit = Exit { code, oom };
        if let Ok(b) = minicbor::to_vec(exit) {
            let _ = write_atomic(&self.container(id).join("exit"), &b);
        }
        // What it started may still run in its cgroup (PID 1 gone kills the namespace,
        // so normally nothing does).
        let ended = self.running.remove(id);
        tracing::info!(container = id, ?code, oom, "container ended");
        if ended.is_some_and(|t| t.remove) {
            self.remove(id);
        }
    }

    /// Remove what a container that ended left.
    fn remove(&mut self, id: &str) {
        match container::remove(&containers_dir(&self.dir), id) {
            Ok(()) => tracing::info!(container = id, "container removed"),
            Err(e) => tracing::warn!(container = id, error = %e, "removing the container"),
        }
    }

    /// Begin ending container `id`: SIGTERM now, SIGKILL at the end of its grace, its
    /// removal once it ended. The deadline is kept in its directory, so a supervisor
    /// started after this one was killed keeps it.
    fn end(&mut self, id: &str, grace_ms: u32) -> Reply {
        let Some(t) = self.running.get_mut(id) else {
            // Ended already: only its remains go.
            if containers_dir(&self.dir).join(id).exists() {
                self.remove(id);
            }
            return Reply::Ok;
        };
        let grace = Duration::from_millis(u64::from(grace_ms));
        let deadline = std::time::SystemTime::now() + grace;
        let ms = deadline
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let _ = write_atomic(
            &containers_dir(&self.dir).join(id).join(END_FILE),
            ms.to_string().as_bytes(),
        );
        let _ = nix::sys::signal::kill(t.pid, nix::sys::signal::Signal::SIGTERM);
        t.kill_at = Some(Instant::now() + grace);
        t.remove = true;
        tracing::info!(container = id, grace_ms, "container stopping");
        Reply::Ok
    }

    /// A container still in its grace under `id` goes now: its id is wanted again.
    fn preempt(&mut self, id: &str) {
        if !self.running.get(id).is_some_and(|t| t.remove) {
            return;
        }
        if let Some(t) = self.running.get(id) {
            let (pid, ours) = (t.pid, t.ours);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            if ours {
                let _ = waitpid(pid, None);
            }
        }
        self.record_exit(id, Some(137));
    }

    /// Containers started by an earlier supervisor that still run.
    fn adopt(&mut self) {
        let Ok(entries) = std::fs::read_dir(containers_dir(&self.dir)) else {
            return;
        };
        for e in entries.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            if self.exit_of(&id).is_some() {
                continue;
            }
            let Some((pid, since)) =
                std::fs::read_to_string(e.path().join("pid"))
                    .ok()
                    .and_then(|t| {
                        let (a, b) = t.trim().split_once(' ')?;
                        Some((a.parse::<u32>().ok()?, b.parse::<u64>().ok()?))
                    })
            else {
                continue;
            };
            if start_time(pid) == Some(since) {
                // One being ended keeps its deadline.
                let end = std::fs::read_to_string(e.path().join(END_FILE))
                    .ok()
                    .and_then(|t| t.trim().parse::<u64>().ok())
                    .map(|ms| {
                        let at = std::time::UNIX_EPOCH + Duration::from_millis(ms);
                        let left = at
                            .duration_since(std::time::SystemTime::now())
                            .unwrap_or_default();
                        Instant::now() + left
                    });
                self.running.insert(
                    id,
                    Tracked {
                        pid: Pid::from_raw(i32::try_from(pid).unwrap_or(0)),
                        ours: false,
                        kill_at: end,
                        remove: end.is_some(),
                    },
                );
            } else {
                // It ended while no supervisor watched: its code is lost.
                self.record_exit(&id, None);
                if e.path().join(END_FILE).exists() {
                    self.remove(&id);
                }
            }
        }
    }

    fn start(&mut self, spec: &LaunchSpec) -> Reply {
        if spec.id.is_empty() || spec.id.contains('/') || spec.id.starts_with('.') {
            return Reply::Error(format!("bad container id {:?}", spec.id));
        }
        self.preempt(&spec.id);
        if self.running.contains_key(&spec.id) {
            return Reply::Error(format!("container {} runs already", spec.id));
        }
        let containers = containers_dir(&self.dir);
        // A container of this id that ended before starts afresh (its prepared
        // network namespace stays).
        if self.exit_of(&spec.id).is_some() {
            let _ = container::remove(&containers, &spec.id);
        }
        let paths = Paths::of(&containers, &spec.id);
        match container::launch(spec, &paths) {
            Ok((pid, _group)) => {
                let raw = u32::try_from(pid.as_raw()).unwrap_or(0);
                let since = start_time(raw).unwrap_or(0);
                let _ = write_atomic(&paths.dir.join("pid"), format!("{raw} {since}").as_bytes());
                if let Ok(b) = minicbor::to_vec(spec) {
                    let _ = write_atomic(&paths.dir.join("spec.cbor"), &b);
                }
                self.running.insert(
                    spec.id.clone(),
                    Tracked {
                        pid,
                        ours: true,
                        kill_at: None,
                        remove: false,
                    },
                );
                Reply::Started(raw)
            }
            Err(e) => Reply::Error(e.to_string()),
        }
    }

    fn list(&self) -> Vec<Entry> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(containers_dir(&self.dir)) else {
            return out;
        };
        for e in entries.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            let pid = self
                .running
                .get(&id)
                .map(|t| u32::try_from(t.pid.as_raw()).unwrap_or(0))
                .or_else(|| {
                    std::fs::read_to_string(e.path().join("pid"))
                        .ok()?
                        .split_whitespace()
                        .next()?
                        .parse()
                        .ok()
                });
            let Some(pid) = pid else { continue };
            out.push(Entry {
                exit: if self.running.contains_key(&id) {
                    None
                } else {
                    self.exit_of(&id)
                },
                id,
                pid,
            });
        }
        out
    }

    fn handle(&mut self, req: Request) -> Reply {
        match req {
            Request::Start(spec) => self.start(&spec),
            Request::Stop(id, grace_ms) => match self.running.get_mut(&id) {
                Some(t) => {
                    let _ = nix::sys::signal::kill(t.pid, nix::sys::signal::Signal::SIGTERM);
                    t.kill_at = Some(Instant::now() + Duration::from_millis(u64::from(grace_ms)));
                    Reply::Ok
                }
                None => Reply::Ok,
            },
            Request::Remove(id) => {
                if id.is_empty() || id.contains('/') || id.starts_with('.') {
                    return Reply::Error(format!("bad container id {id:?}"));
                }
                // Its init first (and reaped, if ours): then the cgroup can go.
                if let Some(t) = self.running.remove(&id) {
                    let _ = nix::sys::signal::kill(t.pid, nix::sys::signal::Signal::SIGKILL);
                    if t.ours {
                        let _ = waitpid(t.pid, None);
                    }
                }
                let r = container::remove(&containers_dir(&self.dir), &id);
                match r {
                    Ok(()) => Reply::Ok,
                    Err(e) => Reply::Error(e),
                }
            }
            Request::List => Reply::List(self.list()),
            Request::End(id, grace_ms) => {
                if id.is_empty() || id.contains('/') || id.starts_with('.') {
                    return Reply::Error(format!("bad container id {id:?}"));
                }
                self.end(&id, grace_ms)
            }
            Request::Prepare(id) => {
                if id.is_empty() || id.contains('/') || id.starts_with('.') {
                    return Reply::Error(format!("bad container id {id:?}"));
                }
                self.preempt(&id);
                let path = container::netns_path(&containers_dir(&self.dir), &id);
                let held = std::fs::read_to_string("/proc/self/mountinfo")
                    .is_ok_and(|m| m.contains(path.to_string_lossy().as_ref()));
                if held {
                    return Reply::Prepared(path.display().to_string());
                }
                match container::hold_netns(&path) {
                    Ok(()) => Reply::Prepared(path.display().to_string()),
                    Err(e) => Reply::Error(e),
                }
            }
        }
    }

    fn tick(&mut self) {
        // Our children that ended.
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => self.ended(pid, Some(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => self.ended(pid, Some(128 + sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
        // Adopted ones that are gone; stops past their grace.
        let now = Instant::now();
        let ids: Vec<String> = self.running.keys().cloned().collect();
        for id in ids {
            let Some(t) = self.running.get_mut(&id) else {
                continue;
            };
            if t.kill_at.is_some_and(|k| k <= now) {
                t.kill_at = None;
                let _ = nix::sys::signal::kill(t.pid, nix::sys::signal::Signal::SIGKILL);
            }
            if !t.ours && nix::sys::signal::kill(t.pid, None).is_err() {
                self.record_exit(&id, None);
            }
        }
        // Logs over their cap: the older half goes.
        for id in self.running.keys() {
            let log = self.container(id).join("log");
            if std::fs::metadata(&log).is_ok_and(|m| m.len() > LOG_CAP) {
                let _ = std::fs::copy(&log, log.with_extension("1"));
                let _ = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&log)
                    .and_then(|f| f.set_len(0));
            }
        }
    }

    fn ended(&mut self, pid: Pid, code: Option<i32>) {
        let id = self
            .running
            .iter()
            .find(|(_, t)| t.pid == pid)
            .map(|(id, _)| id.clone());
        if let Some(id) = id {
            self.record_exit(&id, code);
        }
    }
}

/// Serve until killed.
pub fn run(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(containers_dir(dir)).map_err(|e| format!("{}: {e}", dir.display()))?;
    container::cgroup::scope_to(dir);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("supervisor.lock"))
        .map_err(|e| e.to_string())?;
    let lock = match nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err(_) => return Err("another supervisor serves this state dir".into()),
    };
    let _ = write_atomic(
        &dir.join("supervisor.pid"),
        std::process::id().to_string().as_bytes(),
    );
    // Orphans of our containers' processes come to us, not to init.
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let sock = socket_path(dir);
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).map_err(|e| format!("{}: {e}", sock.display()))?;
    std::fs::set_permissions(&sock, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(|e| e.to_string())?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let mut sup = Supervisor {
        dir: dir.to_path_buf(),
        running: HashMap::new(),
    };
    sup.adopt();
    tracing::info!(adopted = sup.running.len(), "container supervisor up");
    loop {
        {
            use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
            use std::os::fd::AsFd;
            let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
            let _ = poll(&mut fds, PollTimeout::from(100u16));
        }
        while let Ok((mut s, _)) = listener.accept() {
            let _ = s.set_nonblocking(false);
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            if let Ok(body) = read_frame(&mut s) {
                let reply = match minicbor::decode::<Request>(&body) {
                    Ok(req) => sup.handle(req),
                    Err(e) => Reply::Error(format!("bad request: {e}")),
                };
                if let Ok(b) = minicbor::to_vec(&reply) {
                    let _ = write_frame(&mut s, &b);
                }
            }
        }
        sup.tick();
        let _ = &lock;
    }
}
