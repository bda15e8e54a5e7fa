//! The registry side of a pull (Docker Registry HTTP API v2 / OCI distribution):
//! manifests and blobs, over the mirrors configured for the registry first, then the
//! registry itself; anonymous, basic and bearer-token authentication; TLS with the
//! system's roots or a CA from the config; plain HTTP only for registries listed as
//! insecure.

use super::reference::{DOCKER_HUB, DOCKER_HUB_API, RegistryRef};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Registry settings of the agent's config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryConfig {
    /// Per registry (as named in references, e.g. `docker.io`), endpoints tried before
    /// it, as containerd's `registry.mirrors` (`http://127.0.0.1:5000`).
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// Registries (host[:port]) reached over plain HTTP.
    pub insecure: BTreeSet<String>,
    /// A PEM file of CAs trusted besides the system's.
    pub ca_file: Option<PathBuf>,
    /// Credentials per registry host: (user, password).
    pub auth: BTreeMap<String, (String, String)>,
}

impl RegistryConfig {
    /// Parse `REGISTRY=URL` mirror flags.
    pub fn add_mirror(&mut self, flag: &str) -> Result<(), String> {
        let (reg, url) = flag
            .split_once('=')
            .ok_or_else(|| format!("--registry-mirror {flag}: expected REGISTRY=URL"))?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!(
                "--registry-mirror {flag}: the URL must start with http:// or https://"
            ));
        }
        self.mirrors
            .entry(reg.to_owned())
            .or_default()
            .push(url.trim_end_matches('/').to_owned());
        Ok(())
    }

    /// Whether `host[:port]` is where one of the configured mirrors answers.
    pub fn is_mirror_host(&self, host: &str) -> bool {
        self.mirrors.values().flatten().any(|url| {
            let rest = url
                .strip_prefix("http://")
                .or_else(|| url.strip_prefix("https://"))
                .unwrap_or(url);
            rest.split('/').next() == Some(host)
        })
    }

    /// Parse `HOST=USER:PASSWORD` credential flags.
    pub fn add_auth(&mut self, flag: &str) -> Result<(), String> {
        let (host, cred) = flag
            .split_once('=')
            .and_then(|(h, c)| Some((h, c.split_once(':')?)))
            .ok_or_else(|| "--registry-auth: expected HOST=USER:PASSWORD".to_owned())?;
        self.auth
            .insert(host.to_owned(), (cred.0.to_owned(), cred.1.to_owned()));
        Ok(())
    }
}

/// Why talking to a registry failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Nothing answered, or the answer was not HTTP.
    #[error("{endpoint}: {why}")]
    Transport {
        /// The endpoint tried.
        endpoint: String,
        /// What went wrong.
        why: String,
    },
    /// An HTTP error status.
    #[error("{endpoint}: HTTP {status} for {what}{}", if .body.is_empty() { String::new() } else { format!(": {}", .body) })]
    Status {
        /// The endpoint.
        endpoint: String,
        /// Status code.
        status: u16,
        /// What was asked.
        what: String,
        /// The start of the body.
        body: String,
    },
    /// Authentication could not be done.
    #[error("{0}")]
    Auth(String),
    /// TLS configuration.
    #[error("TLS: {0}")]
    Tls(String),
}

/// A body being fetched, with its media type.
pub struct Fetched {
    /// `Content-Type`.
    pub media_type: String,
    /// The body.
    pub body: Box<dyn Read + Send>,
}

impl std::fmt::Debug for Fetched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetched")
            .field("media_type", &self.media_type)
            .finish_non_exhaustive()
    }
}

/// A client for every registry the agent pulls from.
#[derive(Debug)]
pub struct Registries {
    cfg: RegistryConfig,
    http: ureq::Agent,
    /// Bearer tokens per (endpoint, scope).
    tokens: Mutex<HashMap<(String, String), String>>,
}

fn tls_config(ca_file: Option<&PathBuf>) -> Result<Arc<rustls::ClientConfig>, RegistryError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let mut files: Vec<PathBuf> = [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
    ]
    .iter()
    .map(PathBuf::from)
    .filter(|p| p.exists())
    .take(1)
    .collect();
    files.extend(ca_file.cloned());
    for f in &files {
        let certs = CertificateDer::pem_file_iter(f)
            .map_err(|e| RegistryError::Tls(format!("{}: {e}", f.display())))?;
        for c in certs {
            let c = c.map_err(|e| RegistryError::Tls(format!("{}: {e}", f.display())))?;
            // A system bundle may hold certificates rustls cannot use; skip those.
            let _ = roots.add(c);
        }
    }
    if let Some(f) = ca_file {
        if roots.is_empty() {
            return Err(RegistryError::Tls(format!(
                "{}: no usable certificate",
                f.display()
            )));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| RegistryError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// `WWW-Authenticate: Bearer realm="…",service="…",scope="…"` → its parameters.
fn challenge(header: &str) -> Option<(String, BTreeMap<String, String>)> {
    let (scheme, rest) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    let mut params = BTreeMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let (k, after) = rest.split_once('=')?;
        let after = after.trim_start();
        let (v, tail) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (&q[..end], &q[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        params.insert(k.trim().to_ascii_lowercase(), v.to_owned());
        rest = tail.trim_start_matches([',', ' ']);
    }
    Some((scheme.to_ascii_lowercase(), params))
}

fn basic(user: &str, pass: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let raw = format!("{user}:{pass}").into_bytes();
    let mut out = String::new();
    for chunk in raw.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(T[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    format!("Basic {out}")
}

fn host_of(endpoint: &str) -> &str {
    let s = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest);
    s.split('/').next().unwrap_or(s)
}

impl Registries {
    /// A client with `cfg`.
    pub fn new(cfg: RegistryConfig) -> Result<Self, RegistryError> {
        let tls = tls_config(cfg.ca_file.as_ref())?;
        let http = ureq::AgentBuilder::new()
            .tls_config(tls)
            .timeout_connect(Duration::from_secs(10))
            .timeout_read(Duration::from_secs(60))
            .redirects(5)
            .build();
        Ok(Self {
            cfg,
            http,
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// The endpoints to try for `r`, in order: its mirrors, then itself.
    pub fn endpoints(&self, r: &RegistryRef) -> Vec<String> {
        let mut out: Vec<String> = self
            .cfg
            .mirrors
            .get(&r.registry)
            .cloned()
            .unwrap_or_default();
        let host = if r.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            r.registry.as_str()
        };
        let scheme = if self.cfg.insecure.contains(&r.registry) || self.cfg.insecure.contains(host)
        {
            "http"
        } else {
            "https"
        };
        out.push(format!("{scheme}://{host}"));
        out
    }

    // ureq's own error type, passed straight on to the one caller that matches on it.
    #[allow(clippy::result_large_err)]
    fn get_once(
        &self,
        url: &str,
        accept: Option<&str>,
        authorization: Option<&str>,
    ) -> Result<ureq::Response, ureq::Error> {
        let mut req = self.http.get(url);
        if let Some(a) = accept {
            req = req.set("Accept", a);
        }
        if let Some(a) = authorization {
            req = req.set("Authorization", a);
        }
        req.call()
    }

    /// A bearer token for `scope` from the challenge's realm.
    fn token(
        &self,
        endpoint: &str,
        params: &BTreeMap<String, String>,
        scope: &str,
    ) -> Result<String, RegistryError> {
        let realm = params.get("realm").ok_or_else(|| {
            RegistryError::Auth(format!("{endpoint}: bearer challenge without realm"))
        })?;
        let mut req = self.http.get(realm).query("scope", scope);
        if let Some(s) = params.get("service") {
            req = req.query("service", s);
        }
        if let Some((u, p)) = self.cfg.auth.get(host_of(endpoint)) {
            req = req.set("Authorization", &basic(u, p));
        }
        let resp = req
            .call()
            .map_err(|e| RegistryError::Auth(format!("{endpoint}: token from {realm}: {e}")))?;
        let body: serde_json::Value = serde_json::from_reader(resp.into_reader().take(1 << 20))
            .map_err(|e| RegistryError::Auth(format!("{endpoint}: token from {realm}: {e}")))?;
        body.get("token")
            .or_else(|| body.get("access_token"))
            .and_then(|t| t.as_str())
            .map(str::to_owned)
            .ok_or_else(|| RegistryError::Auth(format!("{endpoint}: {realm} gave no token")))
    }

    /// GET `path` (below `/v2/`) at `endpoint`, authenticating as the registry asks.
    fn get(
        &self,
        endpoint: &str,
        repository: &str,
        path: &str,
        accept: Option<&str>,
    ) -> Result<ureq::Response, RegistryError> {
        let url = format!("{endpoint}/v2/{path}");
        let scope = format!("repository:{repository}:pull");
        let key = (endpoint.to_owned(), scope.clone());
        let cached = self
            .tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        let auth = cached.map(|t| format!("Bearer {t}")).or_else(|| {
            self.cfg
                .auth
                .get(host_of(endpoint))
                .map(|(u, p)| basic(u, p))
        });
        let status_err = |status: u16, resp: ureq::Response| {
            let mut body = String::new();
            let _ = resp.into_reader().take(300).read_to_string(&mut body);
            RegistryError::Status {
                endpoint: endpoint.to_owned(),
                status,
                what: path.to_owned(),
                body: body.trim().to_owned(),
            }
        };
        let transport = |e: ureq::Transport| RegistryError::Transport {
            endpoint: endpoint.to_owned(),
            why: e.to_string(),
        };
        match self.get_once(&url, accept, auth.as_deref()) {
            Ok(r) => Ok(r),
            Err(ureq::Error::Status(401, resp)) => {
                let header = resp
                    .header("WWW-Authenticate")
                    .unwrap_or_default()
                    .to_owned();
                let (scheme, params) = challenge(&header).ok_or_else(|| {
                    RegistryError::Auth(format!("{endpoint}: 401 without a usable challenge"))
                })?;
                let retry = match scheme.as_str() {
                    "bearer" => {
                        let t = self.token(endpoint, &params, &scope)?;
                        self.tokens
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(key, t.clone());
                        format!("Bearer {t}")
                    }
                    "basic" => {
                        let (u, p) = self.cfg.auth.get(host_of(endpoint)).ok_or_else(|| {
                            RegistryError::Auth(format!(
                                "{endpoint} wants a user and password: give --registry-auth {}=USER:PASSWORD",
                                host_of(endpoint)
                            ))
                        })?;
                        basic(u, p)
                    }
                    other => {
                        return Err(RegistryError::Auth(format!(
                            "{endpoint}: unsupported authentication scheme {other:?}"
                        )));
                    }
                };
                match self.get_once(&url, accept, Some(&retry)) {
                    Ok(r) => Ok(r),
                    Err(ureq::Error::Status(s, r)) => Err(status_err(s, r)),
                    Err(ureq::Error::Transport(t)) => Err(transport(t)),
                }
            }
            Err(ureq::Error::Status(s, r)) => Err(status_err(s, r)),
            Err(ureq::Error::Transport(t)) => Err(transport(t)),
        }
    }

    /// GET something of `r` at each endpoint in turn; the first that has it answers.
    fn fetch(
        &self,
        r: &RegistryRef,
        path: &str,
        accept: Option<&str>,
    ) -> Result<Fetched, RegistryError> {
        let mut last = None;
        for endpoint in self.endpoints(r) {
            match self.get(&endpoint, &r.repository, path, accept) {
                Ok(resp) => {
                    let media_type = resp.content_type().to_owned();
                    return Ok(Fetched {
                        media_type,
                        body: Box::new(resp.into_reader()),
                    });
                }
                Err(e) => {
                    tracing::info!(%endpoint, error = %e, "registry endpoint failed; trying the next");
                    // The registry itself comes last: its answer is the one to report.
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| RegistryError::Transport {
            endpoint: r.registry.clone(),
            why: "no endpoint".into(),
        }))
    }

    /// The manifest (or index) `reference` (a tag or a digest) of `r`.
    pub fn manifest(&self, r: &RegistryRef, reference: &str) -> Result<Fetched, RegistryError> {
        self.fetch(
            r,
            &format!("{}/manifests/{reference}", r.repository),
            Some(super::oci::MANIFEST_ACCEPT),
        )
    }

    /// The blob `digest` of `r`.
    pub fn blob(&self, r: &RegistryRef, digest: &str) -> Result<Fetched, RegistryError> {
        self.fetch(r, &format!("{}/blobs/{digest}", r.repository), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_are_read_with_quoted_and_bare_values() {
        let (s, p) = challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#,
        )
        .unwrap();
        assert_eq!(s, "bearer");
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "registry.example");
        assert_eq!(p["scope"], "repository:a/b:pull");
        let (s, p) = challenge("Basic realm=registry").unwrap();
        assert_eq!((s.as_str(), p["realm"].as_str()), ("basic", "registry"));
    }

    #[test]
    fn basic_credentials_are_base64() {
        assert_eq!(
            basic("Aladdin", "open sesame"),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
        assert_eq!(basic("a", "b"), "Basic YTpi");
    }

    #[test]
    fn mirrors_come_first_and_docker_hub_is_its_api_host() {
        let mut cfg = RegistryConfig::default();
        cfg.add_mirror("docker.io=http://127.0.0.1:5000/").unwrap();
        cfg.insecure.insert("10.0.0.1:5000".into());
        let reg = Registries::new(cfg).unwrap();
        let hub: super::super::reference::Reference = "nginx".parse().unwrap();
        let super::super::reference::Reference::Registry(hub) = hub else {
            panic!()
        };
        assert_eq!(
            reg.endpoints(&hub),
            ["http://127.0.0.1:5000", "https://registry-1.docker.io"]
        );
        let local: super::super::reference::Reference = "10.0.0.1:5000/app".parse().unwrap();
        let super::super::reference::Reference::Registry(local) = local else {
            panic!()
        };
        assert_eq!(reg.endpoints(&local), ["http://10.0.0.1:5000"]);
        let mut bad = RegistryConfig::default();
        assert!(bad.add_mirror("docker.io=127.0.0.1:5000").is_err());
        assert!(bad.add_auth("host=nocolon").is_err());
    }
}
