//! The JSON documents of OCI and Docker v2 images: index / manifest list, manifest,
//! image configuration; and the choice of a platform from an index.

use serde::Deserialize;
use std::collections::BTreeMap;

/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker image manifest (schema 2).
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Everything a registry may answer for a manifest request.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// What it points to.
    #[serde(default)]
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Bytes.
    pub size: u64,
    /// For index entries: the platform of that manifest.
    #[serde(default)]
    pub platform: Option<Platform>,
    /// Annotations (the ref name of layout entries).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// A platform.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Platform {
    /// `amd64`, `arm64`, `arm`, ...
    pub architecture: String,
    /// `linux`.
    pub os: String,
    /// `v7`, `v8`, ...
    #[serde(default)]
    pub variant: Option<String>,
}

/// An index or a manifest, told apart by their fields (a manifest has `layers`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnyManifest {
    /// Media type, when the document states it.
    #[serde(default)]
    pub media_type: Option<String>,
    /// Index entries.
    #[serde(default)]
    pub manifests: Option<Vec<Descriptor>>,
    /// Manifest: the configuration.
    #[serde(default)]
    pub config: Option<Descriptor>,
    /// Manifest: the layers, bottom first.
    #[serde(default)]
    pub layers: Option<Vec<Descriptor>>,
}

/// The image configuration's runtime part.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct RunConfig {
    /// `KEY=value`.
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    /// Entrypoint.
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    /// Default arguments.
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    /// Working directory.
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
    /// `uid[:gid]` or a name.
    #[serde(rename = "User", default)]
    pub user: Option<String>,
}

/// The image configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ImageConfig {
    /// Architecture.
    #[serde(default)]
    pub architecture: String,
    /// OS.
    #[serde(default)]
    pub os: String,
    /// How to run it.
    #[serde(default)]
    pub config: Option<RunConfig>,
}

/// The hex of a `sha256:<64 hex>` digest (the only kind stored: a blob's file name is
/// this, so nothing else may reach a path).
pub fn digest_hex(digest: &str) -> Result<&str, String> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| format!("unsupported digest {digest:?} (sha256 only)"))
}

/// This node's platform as OCI names it.
pub fn this_platform() -> Platform {
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    let variant = match architecture {
        "arm" => Some("v7".to_owned()),
        "arm64" => Some("v8".to_owned()),
        _ => None,
    };
    Platform {
        architecture: architecture.to_owned(),
        os: "linux".to_owned(),
        variant,
    }
}

/// The entry of an index for `want`: same OS and architecture, and the variant when
/// both say one (arm64's `v8` is also what an entry without a variant means).
pub fn choose<'a>(entries: &'a [Descriptor], want: &Platform) -> Option<&'a Descriptor> {
    let fits = |d: &&Descriptor, strict: bool| {
        d.platform.as_ref().is_some_and(|p| {
            p.os == want.os
                && p.architecture == want.architecture
                && (!strict
                    || p.variant.is_none()
                    || want.variant.is_none()
                    || p.variant == want.variant)
        })
    };
    let mut exact = entries.iter().filter(|d| fits(d, true));
    exact.next().or_else(|| {
        // An arm64 node can run an entry whose variant differs (v8 vs none) only when
        // nothing matched exactly; 32-bit arm variants are not interchangeable.
        (want.architecture == "arm64")
            .then(|| entries.iter().find(|d| fits(d, false)))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(arch: &str, variant: Option<&str>) -> Descriptor {
        Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: format!("sha256:{arch}{}", variant.unwrap_or("")),
            size: 1,
            platform: Some(Platform {
                architecture: arch.into(),
                os: "linux".into(),
                variant: variant.map(str::to_owned),
            }),
            annotations: BTreeMap::new(),
        }
    }

    #[test]
    fn the_node_s_platform_is_chosen_with_its_variant() {
        let idx = [
            entry("amd64", None),
            entry("arm", Some("v6")),
            entry("arm", Some("v7")),
            entry("arm64", Some("v8")),
        ];
        let pi32 = Platform {
            architecture: "arm".into(),
            os: "linux".into(),
            variant: Some("v7".into()),
        };
        assert_eq!(choose(&idx, &pi32).unwrap().digest, "sha256:armv7");
        let pc = Platform {
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
        };
        assert_eq!(choose(&idx, &pc).unwrap().digest, "sha256:amd64");
        let riscv = Platform {
            architecture: "riscv64".into(),
            os: "linux".into(),
            variant: None,
        };
        assert!(choose(&idx, &riscv).is_none());
        assert!(choose(&idx[..2], &pi32).is_none(), "v6 is not v7");
    }
}
