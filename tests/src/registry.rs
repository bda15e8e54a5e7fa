//! Test images and a real registry on loopback: busybox images built with umoci
//! (`tests/fixtures/make-images.sh`), Debian's `docker-registry` (distribution 2.8)
//! anonymous over HTTP or with htpasswd over TLS, images pushed with skopeo.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Build the test images into the OCI layout `dir` (tags `latest`, `amd64`, `arm64`,
/// `multi`); `None` (after [`crate::missing`]) when a tool is missing.
pub fn make_images(dir: &Path) -> Option<PathBuf> {
    for t in ["busybox", "umoci", "python3"] {
        crate::tool(t)?;
    }
    let out = Command::new("bash")
        .arg(crate::repo_root().join("tests/fixtures/make-images.sh"))
        .arg(dir)
        .output()
        .expect("running make-images.sh");
    assert!(
        out.status.success(),
        "make-images.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(dir.to_path_buf())
}

/// How a registry is protected.
#[derive(Debug, Clone, Default)]
pub struct Protection {
    /// TLS certificate and key (PEM).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// An htpasswd file (bcrypt) for basic authentication.
    pub htpasswd: Option<PathBuf>,
    /// Bearer tokens from a token server.
    pub token: Option<TokenAuth>,
}

/// `auth: token` of the registry.
#[derive(Debug, Clone)]
pub struct TokenAuth {
    /// The token server's URL.
    pub realm: String,
    /// The registry's service name (the tokens' audience).
    pub service: String,
    /// The tokens' issuer.
    pub issuer: String,
    /// Certificates whose keys may sign tokens.
    pub rootcertbundle: PathBuf,
}

/// A running token server (`tests/interop/token_server.py`); stopped when dropped.
#[derive(Debug)]
pub struct TokenServer {
    child: Child,
    /// How the registry is told of it.
    pub auth: TokenAuth,
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TokenServer {
    /// Serve tokens signed with `key` (its certificate `cert`) to `user`/`password`;
    /// `None` when the venv with `cryptography` is missing.
    pub fn start(key: &Path, cert: &Path, user: &str, password: &str) -> Option<Self> {
        let py = crate::aiocoap_python()?;
        let port = free_port().port().to_string();
        let (issuer, service) = ("grove-test-issuer", "grove-test-registry");
        let mut child = Command::new(py)
            .arg(crate::interop_script("token_server.py"))
            .args([port.as_str()])
            .arg(key)
            .arg(cert)
            .args([issuer, service, user, password])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("token server");
        let mut line = String::new();
        let out = child.stdout.take().expect("stdout");
        std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line)
            .expect("token server output");
        assert_eq!(line.trim(), "listening", "token server did not start");
        Some(Self {
            child,
            auth: TokenAuth {
                realm: format!("http://127.0.0.1:{port}/token"),
                service: service.into(),
                issuer: issuer.into(),
                rootcertbundle: cert.to_path_buf(),
            },
        })
    }
}

/// A running `docker-registry`; stopped when dropped.
#[derive(Debug)]
pub struct Registry {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Whether it speaks TLS.
    pub tls: bool,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

impl Registry {
    /// Start a registry storing under `dir`; `None` when `docker-registry` is missing.
    pub fn start(dir: &Path, p: &Protection) -> Option<Self> {
        Self::start_at(dir, std::net::Ipv4Addr::LOCALHOST, p)
    }

    /// As [`Registry::start`], listening on `ip` (a test bed host's address).
    pub fn start_at(dir: &Path, ip: std::net::Ipv4Addr, p: &Protection) -> Option<Self> {
        let bin = crate::tool("docker-registry")?;
        std::fs::create_dir_all(dir).expect("registry dir");
        let addr = SocketAddr::new(ip.into(), free_port().port());
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.join("data").display()
        );
        if let Some((cert, key)) = &p.tls {
            cfg += &format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            );
        }
        if let Some(h) = &p.htpasswd {
            cfg += &format!(
                "auth:\n  htpasswd:\n    realm: grove-test\n    path: {}\n",
                h.display()
            );
        }
        if let Some(t) = &p.token {
            cfg += &format!(
                "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                t.realm,
                t.service,
                t.issuer,
                t.rootcertbundle.display()
            );
        }
        let cfg_path = dir.join("config.yml");
        std::fs::write(&cfg_path, cfg).expect("registry config");
        let log = std::fs::File::create(dir.join("registry.log")).expect("registry log");
        let child = Command::new(bin)
            .arg("serve")
            .arg(&cfg_path)
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("docker-registry");
        let reg = Self {
            child,
            addr,
            tls: p.tls.is_some(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(reg)
    }

    /// Push tag `tag` of `layout` as `name` (`repo:tag`), with every platform of an
    /// index, logging in with `creds` (`user:password`) when given.
    pub fn push(&self, layout: &Path, tag: &str, name: &str, creds: Option<&str>) {
        let skopeo = crate::tool("skopeo").expect("skopeo");
        let mut cmd = Command::new(skopeo);
        cmd.args(["copy", "--quiet", "--all", "--dest-tls-verify=false"]);
        if let Some(c) = creds {
            cmd.args(["--dest-creds", c]);
        }
        let out = cmd
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{name}", self.addr))
            .output()
            .expect("skopeo");
        assert!(
            out.status.success(),
            "skopeo copy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A CA and a server certificate for 127.0.0.1 signed by it, made with openssl in
/// `dir`: returns (ca.pem, server.pem, server.key).
pub fn make_certs(dir: &Path) -> Option<(PathBuf, PathBuf, PathBuf)> {
    let openssl = crate::tool("openssl")?;
    std::fs::create_dir_all(dir).expect("cert dir");
    let run = |args: &[&str]| {
        let out = Command::new(&openssl)
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=grove test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.pem",
    ]);
    Some((
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    ))
}

/// An htpasswd file (bcrypt) with one user, made with `htpasswd` (apache2-utils).
pub fn make_htpasswd(path: &Path, user: &str, password: &str) -> Option<PathBuf> {
    let htpasswd = crate::tool("htpasswd")?;
    let out = Command::new(htpasswd)
        .args(["-Bbn", user, password])
        .output()
        .expect("htpasswd");
    assert!(out.status.success(), "htpasswd failed");
    std::fs::write(path, out.stdout).expect("htpasswd file");
    Some(path.to_path_buf())
}

/// A registry protection with htpasswd (`user`/`password`) over TLS, its certificates
/// made under `dir`: returns the CA that signed the server's certificate, and it.
pub fn basic_over_tls(dir: &Path, user: &str, password: &str) -> Option<(PathBuf, Protection)> {
    let (ca, cert, key) = make_certs(&dir.join("certs"))?;
    let htpasswd = make_htpasswd(&dir.join("htpasswd"), user, password)?;
    Some((
        ca,
        Protection {
            tls: Some((cert, key)),
            htpasswd: Some(htpasswd),
            token: None,
        },
    ))
}
