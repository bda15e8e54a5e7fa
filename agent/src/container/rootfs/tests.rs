use super::*;

/// Records every call; fails the call named in `fail_at` (if any); says that every
/// target exists unless named in `absent`.
#[derive(Debug, Default)]
pub struct Recording {
    pub calls: Vec<String>,
    pub fail_at: Option<String>,
    pub absent: Vec<String>,
}

impl Recording {
    fn note(&mut self, call: String) -> io::Result<()> {
        let fail = self
            .fail_at
            .as_ref()
            .is_some_and(|f| call.starts_with(f.as_str()));
        self.calls.push(call);
        if fail {
            Err(io::Error::other("refused by the test"))
        } else {
            Ok(())
        }
    }
}

impl Sys for Recording {
    fn private_mounts(&mut self) -> io::Result<()> {
        self.note("private".into())
    }
    fn mkdir(&mut self, p: &Path) -> io::Result<()> {
        self.note(format!("mkdir {}", p.display()))
    }
    fn chown(&mut self, p: &Path, u: u32, g: u32) -> io::Result<()> {
        self.note(format!("chown {} {u}:{g}", p.display()))
    }
    fn bind_layer(&mut self, l: &Path, at: &Path, idmap: bool) -> io::Result<()> {
        self.note(format!(
            "layer {} {} idmap={idmap}",
            l.display(),
            at.display()
        ))
    }
    fn overlay(&mut self, d: &str, p: &Path, nodev: bool) -> io::Result<()> {
        self.note(format!("overlay {} {d} nodev={nodev}", p.display()))
    }
    fn enter_root(&mut self, p: &Path) -> io::Result<()> {
        self.note(format!("root {}", p.display()))
    }
    fn mount_in(&mut self, fs: &str, o: &str, t: &str, a: Attrs) -> io::Result<()> {
        self.note(format!("mount {fs} {t} {o} {a:?}"))
    }
    fn bind_in(&mut self, h: &Path, t: &str, k: Kind, a: Attrs) -> io::Result<()> {
        self.note(format!("bind {} {t} {k:?} {a:?}", h.display()))
    }
    fn read_only_in(&mut self, t: &str) -> io::Result<bool> {
        self.note(format!("ro {t}"))?;
        Ok(!self.absent.iter().any(|a| a == t))
    }
    fn mask_in(&mut self, t: &str) -> io::Result<bool> {
        self.note(format!("mask {t}"))?;
        Ok(!self.absent.iter().any(|a| a == t))
    }
    fn symlink_in(&mut self, to: &str, l: &str) -> io::Result<()> {
        self.note(format!("symlink {l} {to}"))
    }
    fn sethostname(&mut self, n: &str) -> io::Result<()> {
        self.note(format!("hostname {n}"))
    }
    fn pivot(&mut self, p: &Path) -> io::Result<()> {
        self.note(format!("pivot {}", p.display()))
    }
}

const MOUNTINFO: &str = "\
25 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 25 0:26 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
32 30 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
33 30 0:29 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,release_agent=/lib/systemd/x,name=systemd
34 30 0:30 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate
35 25 0:31 / /tmp/crun-hugetlb rw - cgroup cgroup rw,hugetlb
";

fn run(fail_at: Option<&str>, userns: bool) -> (Recording, io::Result<()>) {
    let mut r = Recording {
        fail_at: fail_at.map(str::to_owned),
        absent: vec!["/proc/sched_debug".into()],
        ..Recording::default()
    };
    let layers = vec!["/l/bottom".to_owned(), "/l/top".to_owned()];
    let dirs = Dirs::under(Path::new("/c/x"));
    let cgroups = hierarchies(MOUNTINFO);
    let files = [(PathBuf::from("/c/x/hostname"), "/etc/hostname")];
    let plan = Plan {
        layers: &layers,
        dirs: &dirs,
        hostname: "web-0",
        root_ids: userns.then_some((524_288, 524_288)),
        cgroups: &cgroups,
        mask: true,
        nodev: true,
        files: &files,
    };
    let res = enter(&mut r, &plan);
    (r, res)
}

fn pos(r: &Recording, needle: &str) -> usize {
    r.calls
        .iter()
        .position(|c| c.contains(needle))
        .unwrap_or_else(|| panic!("no {needle:?} in {:#?}", r.calls))
}

#[test]
fn the_root_is_an_overlay_of_idmapped_layers_top_first_with_proc_dev_and_sys() {
    let (r, res) = run(None, true);
    res.unwrap();
    assert_eq!(r.calls[0], "private");
    let overlay = &r.calls[pos(&r, "overlay /c/x/rootfs")];
    assert!(
        overlay
            .contains("lowerdir=/c/x/lower/1:/c/x/lower/0,upperdir=/c/x/upper,workdir=/c/x/work"),
        "{overlay}"
    );
    assert!(pos(&r, "layer /l/top /c/x/lower/1 idmap=true") < pos(&r, "overlay"));
    assert!(pos(&r, "chown /c/x/upper 524288:524288") < pos(&r, "overlay"));
    assert!(pos(&r, "root /c/x/rootfs") > pos(&r, "overlay"));
    assert!(pos(&r, "mount proc /proc") > pos(&r, "root /c/x/rootfs"));
    assert!(r.calls[pos(&r, "mount sysfs /sys")].contains("rdonly: true"));
    assert!(
        r.calls
            .iter()
            .any(|c| c.starts_with("bind /dev/null /dev/null File"))
    );
    assert!(
        !r.calls
            .iter()
            .any(|c| c.contains("/dev/sda") || c.contains("/dev/mem"))
    );
    assert!(pos(&r, "hostname web-0") < pos(&r, "pivot"));
    assert_eq!(
        r.calls.last().map(String::as_str),
        Some("pivot /c/x/rootfs")
    );
}

#[test]
fn without_a_user_namespace_the_layers_are_used_as_they_are() {
    let (r, res) = run(None, false);
    res.unwrap();
    assert!(
        !r.calls
            .iter()
            .any(|c| c.starts_with("layer ") || c.starts_with("chown"))
    );
    assert!(r.calls[pos(&r, "overlay")].contains("lowerdir=/l/top:/l/bottom,"));
}

#[test]
fn proc_and_sys_are_masked_and_write_protected_before_the_pivot() {
    let (r, res) = run(None, true);
    res.unwrap();
    for p in MASKED {
        assert!(pos(&r, &format!("mask {p}")) < pos(&r, "pivot"), "{p}");
    }
    for p in READ_ONLY {
        assert!(pos(&r, &format!("ro {p}")) > pos(&r, "mount proc"), "{p}");
    }
    assert!(pos(&r, "bind /c/x/hostname /etc/hostname") < pos(&r, "pivot"));
}

#[test]
fn the_hosts_cgroup_hierarchies_are_mounted_read_only_as_the_host_has_them() {
    let h = hierarchies(MOUNTINFO);
    let names: Vec<(&str, &str)> = h
        .iter()
        .map(|h| (h.at.as_str(), h.options.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("cpu,cpuacct", "cpu,cpuacct"),
            ("memory", "memory"),
            ("systemd", "name=systemd"),
            ("unified", "")
        ]
    );
    let (r, res) = run(None, true);
    res.unwrap();
    assert!(pos(&r, "mount tmpfs /sys/fs/cgroup") > pos(&r, "mount sysfs"));
    let mem = &r.calls[pos(&r, "mount cgroup /sys/fs/cgroup/memory memory")];
    assert!(mem.contains("rdonly: true"), "{mem}");
    assert!(pos(&r, "mount cgroup2 /sys/fs/cgroup/unified") < pos(&r, "ro /sys/fs/cgroup"));
    assert!(!r.calls.iter().any(|c| c.contains("hugetlb")));
    // On a pure cgroup v2 machine: the one hierarchy at /sys/fs/cgroup itself.
    let v2 = hierarchies("40 25 0:40 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n");
    assert_eq!(
        v2,
        [Hierarchy {
            at: String::new(),
            fstype: "cgroup2".into(),
            options: String::new()
        }]
    );
}

#[test]
fn a_failing_step_stops_the_setup_before_the_pivot() {
    let (r, res) = run(Some("mount sysfs"), true);
    assert!(res.is_err());
    assert!(
        !r.calls.iter().any(|c| c.starts_with("pivot")),
        "{:#?}",
        r.calls
    );
}
