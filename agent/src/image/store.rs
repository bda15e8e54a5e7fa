//! The agent's image store: content-addressed blobs (every digest checked before a
//! blob gets its name), layers unpacked once and shared by every image and instance
//! that uses them, references resolved to manifests, and garbage collection.
//!
//! ```text
//! <root>/blobs/sha256/<hex>     verified blobs (manifests, configs, layer archives)
//! <root>/layers/<hex>/          a layer unpacked (named by its archive's digest)
//! <root>/refs/<escaped ref>     the manifest digest a reference resolved to
//! <root>/tmp/                   downloads and unpacks in progress
//! ```
//!
//! A download or unpack happens under `tmp/` and is renamed into place only when
//! complete and verified, so an interrupted pull never leaves a corrupt blob or layer
//! in use; what it left in `tmp/` is removed when the store opens.

use super::layer::{self, LayerError};
use super::oci::{self, AnyManifest, Descriptor, ImageConfig, Platform};
use super::reference::Reference;
use super::registry::{Registries, RegistryConfig, RegistryError};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Largest manifest, index or config accepted.
const MAX_DOCUMENT: u64 = 4 << 20;

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// A bad reference.
    #[error(transparent)]
    Reference(#[from] super::reference::BadReference),
    /// The registry.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Content that does not match its digest.
    #[error("{what}: content has digest {got}, expected {want}")]
    Digest {
        /// What was fetched.
        what: String,
        /// Its digest.
        got: String,
        /// The digest asked for.
        want: String,
    },
    /// A document that is not what it claims.
    #[error("{0}")]
    Format(String),
    /// No manifest for this node's platform in an index.
    #[error("{image} has no image for {platform} (it has: {has})")]
    Platform {
        /// The image.
        image: String,
        /// This node's platform.
        platform: String,
        /// The platforms it has.
        has: String,
    },
    /// A layer.
    #[error("layer {digest}: {source}")]
    Layer {
        /// Which.
        digest: String,
        /// Why.
        source: LayerError,
    },
    /// Local I/O.
    #[error("{0}")]
    Io(String),
}

fn io(context: &Path, e: impl std::fmt::Display) -> PullError {
    PullError::Io(format!("{}: {e}", context.display()))
}

/// A pulled image, ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The reference as given.
    pub reference: String,
    /// The manifest's digest.
    pub manifest: String,
    /// The configuration.
    pub config: ImageConfig,
    /// Unpacked layer directories, bottom first.
    pub layers: Vec<PathBuf>,
}

/// An image as a registry serves it (see [`ImageStore::export`]).
#[derive(Debug, Clone)]
pub struct Exported {
    /// The manifest's digest.
    pub manifest: String,
    /// Digest, bytes and media type of each blob, the manifest first.
    pub blobs: Vec<(String, Vec<u8>, String)>,
}

/// Where blobs come from during one pull.
enum Source<'a> {
    Registry(&'a Registries, &'a super::reference::RegistryRef),
    Layout(PathBuf),
}

fn hex_of(digest: &str) -> Result<&str, PullError> {
    oci::digest_hex(digest).map_err(PullError::Format)
}

fn platform_name(p: &Platform) -> String {
    match &p.variant {
        Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
        None => format!("{}/{}", p.os, p.architecture),
    }
}

/// The store.
#[derive(Debug)]
pub struct ImageStore {
    root: PathBuf,
    registries: Registries,
    platform: Platform,
}

impl ImageStore {
    /// Open (create) the store at `root`, clearing what interrupted pulls left.
    pub fn open(root: &Path, cfg: RegistryConfig) -> Result<Self, PullError> {
        for d in ["blobs/sha256", "layers", "refs"] {
            std::fs::create_dir_all(root.join(d)).map_err(|e| io(&root.join(d), e))?;
        }
        let tmp = root.join("tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
        Ok(Self {
            root: root.to_path_buf(),
            registries: Registries::new(cfg)?,
            platform: oci::this_platform(),
        })
    }

    /// Pull for another platform than this node's (tests of the platform choice).
    pub fn with_platform(mut self, p: Platform) -> Self {
        self.platform = p;
        self
    }

    fn blob_path(&self, digest: &str) -> Result<PathBuf, PullError> {
        Ok(self.root.join("blobs/sha256").join(hex_of(digest)?))
    }

    fn scratch(&self, what: &str) -> PathBuf {
        let mut r = [0u8; 6];
        let _ = getrandom::getrandom(&mut r);
        self.root
            .join("tmp")
            .join(format!("{what}-{}", grove_proto::util::hex(&r)))
    }

    /// Store `data` as blob `digest`, checking its digest (and `size` when known) on
    /// the way; a blob already there is not fetched again.
    fn put_blob(
        &self,
        digest: &str,
        size: Option<u64>,
        fetch: impl FnOnce() -> Result<Box<dyn Read + Send>, PullError>,
    ) -> Result<PathBuf, PullError> {
        let path = self.blob_path(digest)?;
        if path.exists() {
            return Ok(path);
        }
        let tmp = self.scratch("blob");
        let mut out = std::fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
        let mut hasher = Sha256::new();
        let limit = size.unwrap_or(u64::MAX).saturating_add(1);
        let mut body = fetch()?.take(limit);
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            let n = body.read(&mut buf).map_err(|e| io(&tmp, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(|e| io(&tmp, e))?;
            total += n as u64;
        }
        let got = format!("sha256:{}", grove_proto::util::hex(&hasher.finalize()));
        let bad_size = size.is_some_and(|s| s != total);
        if got != digest || bad_size {
            let _ = std::fs::remove_file(&tmp);
            return Err(PullError::Digest {
                what: format!("blob of {total} bytes"),
                got,
                want: digest.to_owned(),
            });
        }
        out.sync_all().map_err(|e| io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
        Ok(path)
    }

    /// Fetch what `d` describes (a manifest comes from the registry's manifest
    /// endpoint, anything else from its blob endpoint) into the store.
    fn fetch(
        &self,
        src: &Source<'_>,
        d: &Descriptor,
        manifest: bool,
    ) -> Result<PathBuf, PullError> {
        self.put_blob(&d.digest, Some(d.size), || match src {
            Source::Registry(reg, r) if manifest => Ok(reg.manifest(r, &d.digest)?.body),
            Source::Registry(reg, r) => Ok(reg.blob(r, &d.digest)?.body),
            Source::Layout(dir) => {
                let rel = Path::new("blobs/sha256").join(hex_of(&d.digest)?);
                Ok(Box::new(open_in_layout(dir, &rel)?))
            }
        })
    }

    fn read_document(&self, path: &Path) -> Result<Vec<u8>, PullError> {
        let mut v = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_DOCUMENT).read_to_end(&mut v))
            .map_err(|e| io(path, e))?;
        Ok(v)
    }

    /// Fetch the manifest `d` points to, following an index to this platform's entry.
    fn resolve(
        &self,
        src: &Source<'_>,
        image: &str,
        d: Descriptor,
    ) -> Result<(String, AnyManifest), PullError> {
        let mut d = d;
        for _ in 0..2 {
            let path = self.fetch(src, &d, true)?;
            let doc: AnyManifest = serde_json::from_slice(&self.read_document(&path)?)
                .map_err(|e| PullError::Format(format!("{image}: manifest {}: {e}", d.digest)))?;
            match &doc.manifests {
                Some(entries) if doc.layers.is_none() => {
                    let chosen = oci::choose(entries, &self.platform).ok_or_else(|| {
                        PullError::Platform {
                            image: image.to_owned(),
                            platform: platform_name(&self.platform),
                            has: entries
                                .iter()
                                .filter_map(|e| e.platform.as_ref().map(platform_name))
                                .collect::<Vec<_>>()
                                .join(", "),
                        }
                    })?;
                    d = chosen.clone();
                }
                _ => return Ok((d.digest, doc)),
            }
        }
        Err(PullError::Format(format!(
            "{image}: an index inside an index"
        )))
    }

    /// The descriptor a registry reference names: the manifest fetched by tag (its
    /// digest computed here) or by digest.
    fn registry_root(
        &self,
        reg: &Registries,
        r: &super::reference::RegistryRef,
    ) -> Result<Descriptor, PullError> {
        let fetched = reg.manifest(r, r.reference())?;
        let mut body = Vec::new();
        fetched
            .body
            .take(MAX_DOCUMENT)
            .read_to_end(&mut body)
            .map_err(|e| PullError::Io(e.to_string()))?;
        let digest = format!("sha256:{}", grove_proto::util::hex(&Sha256::digest(&body)));
        if let Some(want) = &r.digest {
            if *want != digest {
                return Err(PullError::Digest {
                    what: format!("manifest of {}", r.repository),
                    got: digest,
                    want: want.clone(),
                });
            }
        }
        let size = body.len() as u64;
        self.put_blob(&digest, Some(size), || {
            Ok(Box::new(std::io::Cursor::new(body)))
        })?;
        Ok(Descriptor {
            media_type: fetched.media_type,
            digest,
            size,
            platform: None,
            annotations: Default::default(),
        })
    }

    /// The descriptor `tag` names in an OCI layout's `index.json` (the only entry when
    /// no tag is given).
    fn layout_root(&self, dir: &Path, tag: Option<&str>) -> Result<Descriptor, PullError> {
        let idx_path = dir.join("index.json");
        let mut body = Vec::new();
        open_in_layout(dir, Path::new("index.json"))?
            .take(MAX_DOCUMENT)
            .read_to_end(&mut body)
            .map_err(|e| io(&idx_path, e))?;
        let idx: AnyManifest = serde_json::from_slice(&body)
            .map_err(|e| PullError::Format(format!("{}: {e}", idx_path.display())))?;
        let entries = idx.manifests.unwrap_or_default();
        let name = |d: &Descriptor| {
            d.annotations
                .get("org.opencontainers.image.ref.name")
                .cloned()
        };
        let found = match tag {
            Some(t) => entries.iter().find(|d| name(d).as_deref() == Some(t)),
            None if entries.len() == 1 => entries.first(),
            None => None,
        };
        found.cloned().ok_or_else(|| {
            PullError::Format(format!(
                "{}: no image {} (it has: {})",
                dir.display(),
                tag.map_or("without a tag".to_owned(), |t| format!("tagged {t:?}")),
                entries
                    .iter()
                    .filter_map(name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }

    /// Unpack layer `d` (its blob already verified) unless it is there already.
    fn layer(&self, src: &Source<'_>, d: &Descriptor) -> Result<PathBuf, PullError> {
        let dir = self.root.join("layers").join(hex_of(&d.digest)?);
        if dir.is_dir() {
            return Ok(dir);
        }
        if d.media_type.contains("zstd") {
            return Err(PullError::Format(format!(
                "layer {}: zstd-compressed layers are not supported",
                d.digest
            )));
        }
        let blob = self.fetch(src, d, false)?;
        let tmp = self.scratch("layer");
        std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
        let f = std::fs::File::open(&blob).map_err(|e| io(&blob, e))?;
        layer::unpack(f, &tmp).map_err(|source| PullError::Layer {
            digest: d.digest.clone(),
            source,
        })?;
        std::fs::rename(&tmp, &dir).map_err(|e| io(&dir, e))?;
        Ok(dir)
    }

    /// Pull `reference` (or find it complete in the store) and unpack its layers.
    pub fn pull(&self, reference: &str) -> Result<Image, PullError> {
        let parsed: Reference = reference.parse()?;
        let unpacked;
        let (src, root) = match &parsed {
            Reference::Registry(r) => {
                let src = Source::Registry(&self.registries, r);
                let root = self.registry_root(&self.registries, r)?;
                (src, root)
            }
            Reference::Layout { path, tag } => (
                Source::Layout(path.clone()),
                self.layout_root(path, tag.as_deref())?,
            ),
            Reference::Archive { path, tag } => {
                unpacked = self.scratch("archive");
                std::fs::create_dir_all(&unpacked).map_err(|e| io(&unpacked, e))?;
                let f = std::fs::File::open(path).map_err(|e| io(path, e))?;
                // A hostile archive is unpacked as carefully as a layer.
                layer::unpack(f, &unpacked).map_err(|e| io(path, e))?;
                let root = self.layout_root(&unpacked, tag.as_deref())?;
                (Source::Layout(unpacked.clone()), root)
            }
        };
        let (manifest, doc) = self.resolve(&src, reference, root)?;
        let config_d = doc
            .config
            .ok_or_else(|| PullError::Format(format!("{reference}: manifest without config")))?;
        let config_path = self.fetch(&src, &config_d, false)?;
        let config: ImageConfig = serde_json::from_slice(&self.read_document(&config_path)?)
            .map_err(|e| PullError::Format(format!("{reference}: config: {e}")))?;
        let mut layers = Vec::new();
        for l in doc.layers.unwrap_or_default() {
            layers.push(self.layer(&src, &l)?);
        }
        if let Reference::Archive { .. } = parsed {
            if let Source::Layout(d) = &src {
                let _ = std::fs::remove_dir_all(d);
            }
        }
        let refs = self.root.join("refs").join(escape(reference));
        std::fs::write(&refs, &manifest).map_err(|e| io(&refs, e))?;
        Ok(Image {
            reference: reference.to_owned(),
            manifest,
            config,
            layers,
        })
    }

    /// Pull `reference` and hand out what a registry would serve of it for this
    /// node's platform: its manifest's digest, and every blob (digest, bytes, media
    /// type) of the manifest, its config and its layers.
    pub fn export(&self, reference: &str) -> Result<Exported, PullError> {
        let image = self.pull(reference)?;
        let read = |digest: &str| -> Result<Vec<u8>, PullError> {
            let p = self.blob_path(digest)?;
            std::fs::read(&p).map_err(|e| io(&p, e))
        };
        let manifest = read(&image.manifest)?;
        let doc: AnyManifest = serde_json::from_slice(&manifest)
            .map_err(|e| PullError::Format(format!("{reference}: {e}")))?;
        let media_type = doc
            .media_type
            .clone()
            .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".into());
        let mut blobs = vec![(image.manifest.clone(), manifest, media_type)];
        for d in doc.config.into_iter().chain(doc.layers.unwrap_or_default()) {
            blobs.push((d.digest.clone(), read(&d.digest)?, d.media_type));
        }
        Ok(Exported {
            manifest: image.manifest,
            blobs,
        })
    }

    /// The bytes the store takes on disk (blobs and unpacked layers, by allocated
    /// blocks).
    pub fn disk_bytes(&self) -> u64 {
        fn walk(p: &Path, depth: u32) -> u64 {
            use std::os::unix::fs::MetadataExt;
            let Ok(m) = std::fs::symlink_metadata(p) else {
                return 0;
            };
            let own = m.blocks() * 512;
            if !m.is_dir() || depth > 64 {
                return own;
            }
            own + std::fs::read_dir(p)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| walk(&e.path(), depth + 1))
                .sum::<u64>()
        }
        walk(&self.root.join("blobs"), 0) + walk(&self.root.join("layers"), 0)
    }

    /// Remove images not in `keep` (references) and every blob and layer no kept image
    /// uses; returns how many blobs and layers went.
    pub fn gc(&self, keep: &[&str]) -> Result<usize, PullError> {
        let keep: HashSet<String> = keep.iter().map(|r| escape(r)).collect();
        let mut live_blobs = HashSet::new();
        let refs_dir = self.root.join("refs");
        for e in std::fs::read_dir(&refs_dir)
            .map_err(|e| io(&refs_dir, e))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name) {
                let _ = std::fs::remove_file(e.path());
                continue;
            }
            let Ok(manifest) = std::fs::read_to_string(e.path()) else {
                continue;
            };
            live_blobs.insert(manifest.clone());
            let Ok(path) = self.blob_path(&manifest) else {
                continue;
            };
            if let Ok(doc) = serde_json::from_slice::<AnyManifest>(
                &self.read_document(&path).unwrap_or_default(),
            ) {
                live_blobs.extend(doc.config.map(|c| c.digest));
                live_blobs.extend(doc.layers.unwrap_or_default().into_iter().map(|l| l.digest));
            }
        }
        let live_hex: HashSet<String> = live_blobs
            .iter()
            .filter_map(|d| hex_of(d).ok().map(str::to_owned))
            .collect();
        let mut removed = 0;
        for sub in ["blobs/sha256", "layers"] {
            let dir = self.root.join(sub);
            for e in std::fs::read_dir(&dir).map_err(|e| io(&dir, e))?.flatten() {
                if live_hex.contains(e.file_name().to_string_lossy().as_ref()) {
                    continue;
                }
                let p = e.path();
                let gone = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
                if gone.is_ok() {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

/// A file of an OCI layout, every symlink in the layout resolved inside it: a layout
/// (or an archive of one) cannot make the agent read a file of its machine as a blob.
fn open_in_layout(dir: &Path, rel: &Path) -> Result<std::fs::File, PullError> {
    let root = crate::confined::open_root(dir).map_err(|e| io(dir, e))?;
    crate::confined::resolve(
        std::os::fd::AsFd::as_fd(&root),
        rel,
        nix::fcntl::OFlag::O_RDONLY,
        crate::confined::Scope::AnyMount,
    )
    .map(std::fs::File::from)
    .map_err(|e| io(&dir.join(rel), e))
}

/// A reference as a file name.
fn escape(reference: &str) -> String {
    reference
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"._-".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02x}")
            }
        })
        .collect()
}
