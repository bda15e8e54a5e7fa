//! Image references as `docker pull` reads them, and the local transports.
//!
//! `nginx` → `docker.io/library/nginx:latest`; `user/app` → `docker.io/user/app:latest`;
//! the first path component is a registry when it has a `.` or a `:` or is
//! `localhost`; `@sha256:…` pins a digest. `oci:/path[:tag]` is an OCI image layout on
//! disk, `oci-archive:/path.tar[:tag]` the same as a tar file.

use std::fmt;
use std::path::PathBuf;

/// Docker Hub's name in references.
pub const DOCKER_HUB: &str = "docker.io";
/// Where Docker Hub's registry API answers.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    /// A registry image.
    Registry(RegistryRef),
    /// An OCI image layout directory (`oci:`).
    Layout {
        /// The layout directory.
        path: PathBuf,
        /// The `org.opencontainers.image.ref.name` to pick (default: the only one).
        tag: Option<String>,
    },
    /// An OCI image layout in a tar archive (`oci-archive:`).
    Archive {
        /// The archive.
        path: PathBuf,
        /// As for [`Reference::Layout`].
        tag: Option<String>,
    },
}

/// A normalized registry reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RegistryRef {
    /// The registry as named (`docker.io`, `127.0.0.1:5000`).
    pub registry: String,
    /// The repository (`library/nginx`).
    pub repository: String,
    /// The tag (`latest` when neither tag nor digest is given).
    pub tag: Option<String>,
    /// A pinned manifest digest.
    pub digest: Option<String>,
}

impl RegistryRef {
    /// The tag or digest to ask the registry for.
    pub fn reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Registry(r) => {
                write!(f, "{}/{}", r.registry, r.repository)?;
                if let Some(t) = &r.tag {
                    write!(f, ":{t}")?;
                }
                if let Some(d) = &r.digest {
                    write!(f, "@{d}")?;
                }
                Ok(())
            }
            Self::Layout { path, tag } | Self::Archive { path, tag } => {
                let scheme = if matches!(self, Self::Layout { .. }) {
                    "oci"
                } else {
                    "oci-archive"
                };
                write!(f, "{scheme}:{}", path.display())?;
                if let Some(t) = tag {
                    write!(f, ":{t}")?;
                }
                Ok(())
            }
        }
    }
}

/// Why a reference was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("image reference {reference:?}: {why}")]
pub struct BadReference {
    /// The text given.
    pub reference: String,
    /// What is wrong with it.
    pub why: &'static str,
}

fn bad(reference: &str, why: &'static str) -> BadReference {
    BadReference {
        reference: reference.to_owned(),
        why,
    }
}

fn split_local(rest: &str) -> (PathBuf, Option<String>) {
    // The tag follows the last ':' after the last '/'.
    let slash = rest.rfind('/').map_or(0, |i| i + 1);
    match rest[slash..].rfind(':') {
        Some(i) => (
            PathBuf::from(&rest[..slash + i]),
            Some(rest[slash + i + 1..].to_owned()),
        ),
        None => (PathBuf::from(rest), None),
    }
}

fn valid_component(c: &str) -> bool {
    !c.is_empty()
        && c.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
}

impl std::str::FromStr for Reference {
    type Err = BadReference;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(rest) = s.strip_prefix("oci:") {
            let (path, tag) = split_local(rest);
            return Ok(Self::Layout { path, tag });
        }
        if let Some(rest) = s.strip_prefix("oci-archive:") {
            let (path, tag) = split_local(rest);
            return Ok(Self::Archive { path, tag });
        }
        let s = s.strip_prefix("docker://").unwrap_or(s);
        if s.is_empty() {
            return Err(bad(s, "is empty"));
        }
        let (name, digest) = match s.split_once('@') {
            Some((n, d)) => {
                let hex = d
                    .strip_prefix("sha256:")
                    .ok_or_else(|| bad(s, "digest must be sha256:<64 hex digits>"))?;
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(bad(s, "digest must be sha256:<64 hex digits>"));
                }
                (n, Some(d.to_ascii_lowercase()))
            }
            None => (s, None),
        };
        let slash = name.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name[slash..].rfind(':') {
            Some(i) => (&name[..slash + i], Some(name[slash + i + 1..].to_owned())),
            None => (name, None),
        };
        if let Some(t) = &tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !ok {
                return Err(bad(s, "tag may hold letters, digits, '.', '_' and '-'"));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), rest.to_owned())
            }
            _ => (DOCKER_HUB.to_owned(), name.to_owned()),
        };
        let registry = if registry == "index.docker.io" {
            DOCKER_HUB.to_owned()
        } else {
            registry
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if !repository.split('/').all(valid_component) {
            return Err(bad(
                s,
                "repository names are lowercase letters, digits and . _ - between slashes",
            ));
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_owned())
        } else {
            tag
        };
        Ok(Self::Registry(RegistryRef {
            registry,
            repository,
            tag,
            digest,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(s: &str) -> RegistryRef {
        match s.parse::<Reference>().unwrap() {
            Reference::Registry(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn short_names_mean_docker_hub_as_docker_pull_reads_them() {
        assert_eq!(
            "nginx".parse::<Reference>().unwrap().to_string(),
            "docker.io/library/nginx:latest"
        );
        assert_eq!(
            reg("curlimages/curl:7.82.0").to_string_pair(),
            ("docker.io", "curlimages/curl", "7.82.0")
        );
        assert_eq!(
            reg("docker.io/library/nginx:latest").to_string_pair(),
            ("docker.io", "library/nginx", "latest")
        );
        assert_eq!(reg("index.docker.io/nginx").registry, "docker.io");
    }

    #[test]
    fn registries_are_told_apart_by_a_dot_a_port_or_localhost() {
        assert_eq!(
            reg("127.0.0.1:5000/busybox:1").to_string_pair(),
            ("127.0.0.1:5000", "busybox", "1")
        );
        assert_eq!(reg("localhost/a/b").registry, "localhost");
        assert_eq!(reg("ghcr.io/o/p").registry, "ghcr.io");
        assert_eq!(reg("someuser/img").registry, "docker.io");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = reg(&format!("busybox@{d}"));
        assert_eq!((r.tag, r.digest.as_deref()), (None, Some(d.as_str())));
    }

    #[test]
    fn local_transports_keep_their_path_and_tag() {
        assert_eq!(
            "oci:/var/img:v1".parse::<Reference>().unwrap(),
            Reference::Layout {
                path: "/var/img".into(),
                tag: Some("v1".into())
            }
        );
        assert_eq!(
            "oci-archive:/tmp/a.tar".parse::<Reference>().unwrap(),
            Reference::Archive {
                path: "/tmp/a.tar".into(),
                tag: None
            }
        );
    }

    #[test]
    fn bad_references_say_what_is_wrong() {
        for (s, why) in [
            ("", "empty"),
            ("Nginx", "lowercase"),
            ("nginx@sha256:12", "64 hex"),
            ("nginx:bad tag", "tag may hold"),
        ] {
            let e = s.parse::<Reference>().unwrap_err();
            assert!(e.to_string().contains(why), "{s}: {e}");
        }
    }

    impl RegistryRef {
        fn to_string_pair(&self) -> (&str, &str, &str) {
            (
                &self.registry,
                &self.repository,
                self.tag.as_deref().unwrap_or(""),
            )
        }
    }
}
