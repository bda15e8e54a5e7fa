//! What it takes to start one container, resolved from the instance's spec and its
//! image: the supervisor receives this, so it needs no image knowledge of its own.

use crate::image::Image;
use grove_proto::msg::InstanceSpec;
use minicbor::{Decode, Encode};

/// Resource limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Encode, Decode)]
pub struct Limits {
    /// Memory in bytes (0: none).
    #[n(0)]
    pub memory_bytes: u64,
    /// CPU in thousandths of a CPU (0: none).
    #[n(1)]
    pub millicpus: u32,
    /// Most processes (0: none).
    #[n(2)]
    pub pids: u32,
}

impl Limits {
    /// None at all.
    pub const NONE: Limits = Limits {
        memory_bytes: 0,
        millicpus: 0,
        pids: 0,
    };
}

/// A container, ready to launch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
pub struct LaunchSpec {
    /// A name unique on this worker: files, cgroup and mounts are named after it.
    #[n(0)]
    pub id: String,
    /// The image's layer directories, bottom first.
    #[n(1)]
    pub layers: Vec<String>,
    /// Program and arguments.
    #[n(2)]
    pub argv: Vec<String>,
    /// `KEY=value`.
    #[n(3)]
    pub env: Vec<String>,
    /// Working directory inside.
    #[n(4)]
    pub cwd: String,
    /// User id inside.
    #[n(5)]
    pub uid: u32,
    /// Group id inside.
    #[n(6)]
    pub gid: u32,
    /// Host name.
    #[n(7)]
    pub hostname: String,
    /// Limits.
    #[n(8)]
    pub limits: Limits,
    /// All capabilities (else Docker's default set).
    #[n(9)]
    pub privileged: bool,
    /// A network namespace to join (a bind-mounted nsfs file), else a new one with
    /// only loopback.
    #[n(10)]
    pub netns: Option<String>,
    /// The pool its own user namespace's ids come from (none: no user namespace of
    /// its own, as `privileged` has).
    #[n(11)]
    pub userns: Option<super::userns::IdPool>,
    /// Its IPv4 address (for its /etc/hosts), host byte order.
    #[n(12)]
    pub address: Option<u32>,
    /// Its writable layer's size in bytes (0: unbounded).
    #[n(13)]
    pub storage_bytes: u64,
}

/// Docker's default pids limit is unlimited; an edge node wants a bound.
pub const DEFAULT_PIDS: u32 = 1024;

/// Why an instance cannot be run as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(pub String);

/// A small file of a layer, read only when no component of its path is a symlink: the
/// layer's `/etc/passwd -> /etc/shadow` must not make the agent read its own machine's.
fn read_in_layer(layer: &std::path::Path, rel: &str) -> Option<String> {
    let b = crate::confined::read_small(layer, std::path::Path::new(rel), 1 << 20).ok()?;
    String::from_utf8(b).ok()
}

fn lookup_user(layers: &[String], user: &str) -> Result<(u32, u32), SpecError> {
    let (u, g) = user.split_once(':').unwrap_or((user, ""));
    let read = |file: &str| -> String {
        layers
            .iter()
            .rev()
            .find_map(|l| read_in_layer(std::path::Path::new(l), file))
            .unwrap_or_default()
    };
    let (uid, mut gid) = match u.parse::<u32>() {
        Ok(n) => (n, n),
        Err(_) => read("etc/passwd")
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.first() == Some(&u) && f.len() > 3)
            .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
            .ok_or_else(|| SpecError(format!("user {u:?} is not in the image's /etc/passwd")))?,
    };
    if !g.is_empty() {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => read("etc/group")
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.first() == Some(&g) && f.len() > 2)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| {
                    SpecError(format!("group {g:?} is not in the image's /etc/group"))
                })?,
        };
    }
    Ok((uid, gid))
}

/// The command line as Docker forms it: the SLA's `cmd` replaces the image's Cmd and
/// runs after its Entrypoint.
pub fn argv(image_entrypoint: &[String], image_cmd: &[String], cmd: &[String]) -> Vec<String> {
    let tail = if cmd.is_empty() { image_cmd } else { cmd };
    image_entrypoint.iter().chain(tail).cloned().collect()
}

impl LaunchSpec {
    /// Resolve an instance against its image.
    pub fn resolve(id: &str, spec: &InstanceSpec, image: &Image) -> Result<Self, SpecError> {
        let run = image.config.config.clone().unwrap_or_default();
        let argv = argv(
            run.entrypoint.as_deref().unwrap_or_default(),
            run.cmd.as_deref().unwrap_or_default(),
            &spec.cmd,
        );
        if argv.is_empty() {
            return Err(SpecError(format!(
                "{}: no command: the image has no Entrypoint or Cmd and the SLA gives no cmd",
                spec.image
            )));
        }
        let layers: Vec<String> = image
            .layers
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        let (uid, gid) = match run.user.as_deref() {
            None | Some("") => (0, 0),
            Some(u) => lookup_user(&layers, u)?,
        };
        let hostname: String = spec
            .instance
            .service
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(48)
            .collect::<String>()
            + &format!("-{}", spec.instance.instance);
        // The image's environment, then the SLA's (later wins), then HOSTNAME.
        let mut env: Vec<String> = run.env.unwrap_or_default();
        for e in spec
            .env
            .iter()
            .chain(std::iter::once(&format!("HOSTNAME={hostname}")))
        {
            let key = e.split('=').next().unwrap_or_default();
            env.retain(|x| x.split('=').next() != Some(key));
            env.push(e.clone());
        }
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
        }
        Ok(Self {
            id: id.to_owned(),
            layers,
            argv,
            env,
            cwd: run
                .working_dir
                .filter(|w| !w.is_empty())
                .unwrap_or_else(|| "/".into()),
            uid,
            gid,
            hostname,
            limits: Limits {
                memory_bytes: u64::from(spec.memory_mib) << 20,
                millicpus: spec.millicpus,
                pids: DEFAULT_PIDS,
            },
            privileged: false,
            netns: None,
            userns: Some(super::userns::IdPool::default()),
            address: spec.ip,
            storage_bytes: u64::from(spec.storage_mib.unwrap_or(0)) << 20,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_formed_as_docker_forms_it() {
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        assert_eq!(argv(&s(&["/entry"]), &s(&["a"]), &[]), s(&["/entry", "a"]));
        assert_eq!(
            argv(&s(&["/entry"]), &s(&["a"]), &s(&["b"])),
            s(&["/entry", "b"])
        );
        assert_eq!(
            argv(&[], &s(&["sh"]), &s(&["echo", "hi"])),
            s(&["echo", "hi"])
        );
    }

    #[test]
    fn users_are_looked_up_in_the_image() {
        let d = std::env::temp_dir().join(format!("grove-spec-{}", std::process::id()));
        std::fs::create_dir_all(d.join("etc")).unwrap();
        std::fs::write(
            d.join("etc/passwd"),
            "root:x:0:0::/:/bin/sh\nweb:x:33:44::/:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(d.join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        let layers = vec![d.display().to_string()];
        assert_eq!(lookup_user(&layers, "web").unwrap(), (33, 44));
        assert_eq!(lookup_user(&layers, "web:staff").unwrap(), (33, 50));
        assert_eq!(lookup_user(&layers, "1000:7").unwrap(), (1000, 7));
        let e = lookup_user(&layers, "ghost").unwrap_err();
        assert!(e.0.contains("ghost"), "{e}");
        // A layer whose passwd is a symlink out (here to a file of this machine's
        // naming a user) is not read through it.
        let host = d.join("host-passwd");
        std::fs::write(&host, "intruder:x:0:0::/:/bin/sh\n").unwrap();
        let evil = d.join("evil");
        std::fs::create_dir_all(evil.join("etc")).unwrap();
        std::os::unix::fs::symlink(&host, evil.join("etc/passwd")).unwrap();
        let layers = vec![evil.display().to_string()];
        assert!(lookup_user(&layers, "intruder").is_err());
        let _ = std::fs::remove_dir_all(&d);
    }
}
