//! The root's HTTP API as the CLI calls it, and the CLI's configuration
//! (`~/.config/grove/config.toml`: root URL, user, tokens).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// What `grove login` keeps.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Config {
    /// The root's API, `http://host:10000` or `https://…`.
    pub root: Option<String>,
    /// A PEM file of the CA that signed the root's certificate (for HTTPS with a
    /// private CA).
    pub ca_cert: Option<PathBuf>,
    /// Who logged in.
    pub username: Option<String>,
    /// Their user id.
    pub user_id: Option<String>,
    /// The access token (renewed with the refresh token when it expires).
    pub token: Option<String>,
    /// The refresh token.
    pub refresh_token: Option<String>,
}

/// Where the configuration lives: `$GROVE_CLI_CONFIG`, else
/// `$XDG_CONFIG_HOME/grove/config.toml`, else `~/.config/grove/config.toml`.
pub fn config_path() -> PathBuf {
    if let Some(p) = std::env::var_os("GROVE_CLI_CONFIG").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/".into())).join(".config")
        });
    base.join("grove").join("config.toml")
}

impl Config {
    /// Read `path`; a missing file is an empty configuration.
    pub fn load(path: &Path) -> Result<Self, String> {
        match std::fs::read_to_string(path) {
            Ok(t) => toml::from_str(&t).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Write `path` (0600: it holds tokens), atomically.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let text = toml::to_string(self).map_err(|e| e.to_string())?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        grove_proto::util::replace_private(path, text.as_bytes())
            .map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// An API error, in plain words.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status (0: no answer).
    pub status: u16,
    /// What went wrong.
    pub message: String,
    /// For an invalid SLA: each failing field and why.
    pub fields: Vec<(String, String)>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.fields.is_empty() {
            return f.write_str(&self.message);
        }
        write!(f, "the SLA is invalid:")?;
        for (field, reason) in &self.fields {
            write!(f, "\n  {field}: {reason}")?;
        }
        Ok(())
    }
}

/// A client of one root.
#[derive(Debug)]
pub struct Api {
    base: String,
    agent: ureq::Agent,
    /// The configuration in use (tokens renewed into it).
    pub config: Config,
    path: Option<PathBuf>,
}

fn agent(ca: Option<&Path>) -> Result<ureq::Agent, String> {
    let mut b = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(10))
        .timeout(Duration::from_secs(30));
    if let Some(ca) = ca {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(ca)
            .map_err(|e| format!("{}: {e}", ca.display()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{}: {e}", ca.display()))?;
        if certs.is_empty() {
            return Err(format!("{}: no certificate in it", ca.display()));
        }
        for c in certs {
            roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        b = b.tls_config(Arc::new(cfg));
    }
    Ok(b.build())
}

impl Api {
    /// A client of `config`'s root (`root` overriding it), saving renewed tokens to
    /// `path` (when given).
    pub fn new(
        mut config: Config,
        root: Option<String>,
        path: Option<PathBuf>,
    ) -> Result<Self, String> {
        if let Some(r) = root {
            config.root = Some(r);
        }
        let base = config
            .root
            .clone()
            .ok_or("no root given: `grove login --root URL`, --root or GROVE_ROOT")?
            .trim_end_matches('/')
            .to_owned();
        if !base.starts_with("http://") && !base.starts_with("https://") {
            return Err(format!(
                "root {base:?}: must start with http:// or https://"
            ));
        }
        let agent = agent(config.ca_cert.as_deref())?;
        Ok(Self {
            base,
            agent,
            config,
            path,
        })
    }

    /// The root's URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Value, ApiError> {
        let mut req = self.agent.request(method, &format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        let r = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match r {
            Ok(r) => {
                let text = r.into_string().unwrap_or_default();
                Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
            }
            Err(ureq::Error::Status(status, r)) => {
                let text = r.into_string().unwrap_or_default();
                let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                let message = v["message"]
                    .as_str()
                    .map_or_else(|| format!("{status} {text}"), str::to_owned);
                let fields = v["errors"]
                    .as_array()
                    .map(|l| {
                        l.iter()
                            .map(|e| {
                                let s = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
                                (s("field"), s("reason"))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                Err(ApiError {
                    status,
                    message,
                    fields,
                })
            }
            Err(e) => Err(ApiError {
                status: 0,
                message: format!("cannot reach the root at {}: {e}", self.base),
                fields: Vec::new(),
            }),
        }
    }

    /// Log in; the tokens go into the configuration, which is saved.
    pub fn login(&mut self, user: &str, password: &str, org: Option<&str>) -> Result<(), String> {
        let mut body = json!({ "username": user, "password": password });
        if let Some(o) = org {
            body["organization_name"] = json!(o);
        }
        let v = self
            .send("POST", "/api/auth/login", None, Some(&body))
            .map_err(|e| e.to_string())?;
        let token = v["token"].as_str().ok_or("the root answered no token")?;
        self.config.token = Some(token.to_owned());
        self.config.refresh_token = v["refresh_token"].as_str().map(str::to_owned);
        self.config.username = Some(user.to_owned());
        self.config.root = Some(self.base.clone());
        let me = self
            .send("GET", &format!("/api/user/{user}"), Some(token), None)
            .map_err(|e| e.to_string())?;
        self.config.user_id = me["_id"]["$oid"]
            .as_str()
            .or_else(|| me["_id"].as_str())
            .map(str::to_owned);
        self.save()
    }

    fn save(&self) -> Result<(), String> {
        self.path.as_ref().map_or(Ok(()), |p| self.config.save(p))
    }

    /// Call the API with the saved token, renewing it once when it expired.
    pub fn call(
        &mut self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ApiError> {
        let Some(token) = self.config.token.clone() else {
            return Err(ApiError {
                status: 401,
                message: "not logged in: run `grove login`".into(),
                fields: Vec::new(),
            });
        };
        match self.send(method, path, Some(&token), body.as_ref()) {
            Err(e) if e.status == 401 && self.renew() => {
                let token = self.config.token.clone().unwrap_or_default();
                self.send(method, path, Some(&token), body.as_ref())
            }
            Err(e) if e.status == 401 => Err(ApiError {
                message: format!("{}; run `grove login`", e.message),
                ..e
            }),
            r => r,
        }
    }

    fn renew(&mut self) -> bool {
        let Some(refresh) = self.config.refresh_token.clone() else {
            return false;
        };
        let Ok(v) = self.send("POST", "/api/auth/refresh", Some(&refresh), None) else {
            return false;
        };
        let Some(t) = v["token"].as_str() else {
            return false;
        };
        self.config.token = Some(t.to_owned());
        self.save().is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_configuration_round_trips_privately_and_a_missing_one_is_empty() {
        let dir = std::env::temp_dir().join(format!("grove-cli-config-{}", std::process::id()));
        let path = dir.join("grove/config.toml");
        assert!(Config::load(&path).unwrap().token.is_none());
        let c = Config {
            root: Some("https://root:10000".into()),
            token: Some("t\"ok\"en".into()),
            ..Config::default()
        };
        c.save(&path).unwrap();
        let back = Config::load(&path).unwrap();
        assert_eq!((back.root, back.token), (c.root, c.token));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::write(&path, "root = 3").unwrap();
        assert!(Config::load(&path).unwrap_err().contains("config.toml"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_invalid_sla_is_told_field_by_field() {
        let e = ApiError {
            status: 400,
            message: "invalid SLA: …".into(),
            fields: vec![
                (
                    "applications[0].microservices[0].memory".into(),
                    "-5 is out of range".into(),
                ),
                (
                    "applications[0].microservices[1].code".into(),
                    "is required".into(),
                ),
            ],
        };
        assert_eq!(
            e.to_string(),
            "the SLA is invalid:\n  applications[0].microservices[0].memory: -5 is out of range\n  \
             applications[0].microservices[1].code: is required"
        );
        assert!(
            Api::new(Config::default(), Some("root:1".into()), None)
                .unwrap_err()
                .contains("http://")
        );
        assert!(
            Api::new(Config::default(), None, None)
                .unwrap_err()
                .contains("grove login")
        );
    }
}
