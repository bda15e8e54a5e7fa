//! Stand-ins for the seed's images, built from this machine's static busybox: one
//! layer with busybox and its applets (shared), and one small layer each with the
//! image's own program. `library/nginx:latest` serves a page naming its instance on
//! ports 80 and 60; `curlimages/curl:7.82.0` has a `curl` that GETs a URL.

use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;

/// A blob: its bytes and media type.
#[derive(Debug, Clone)]
pub struct Blob {
    /// Content.
    pub data: Vec<u8>,
    /// Media type (for manifests).
    pub media_type: String,
}

/// Images by repository and tag, blobs by digest: what a registry serves.
#[derive(Debug, Default, Clone)]
pub struct Images {
    /// `(repository, tag)` → manifest digest.
    pub tags: HashMap<(String, String), String>,
    /// `sha256:…` → blob.
    pub blobs: HashMap<String, Blob>,
    /// The busybox layer every image starts from.
    base: Vec<u8>,
}

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

const NGINX: &str = r#"#!/bin/sh
# A stand-in for nginx (grove up without internet): a page naming this instance, on
# ports 80 and 60.
mkdir -p /www
echo "Welcome to $(hostname), a stand-in for nginx served by busybox httpd" >/www/index.html
httpd -p 60 -h /www
echo "$(hostname): nginx stand-in serving /www on ports 80 and 60"
exec httpd -f -p 80 -h /www
"#;

const CURL: &str = r#"#!/bin/sh
# A stand-in for curl (grove up without internet): GET the URL among the arguments
# and print the body; options are ignored.
url=
for a in "$@"; do
    case "$a" in -*) ;; *) url=$a ;; esac
done
[ -n "$url" ] || { echo "curl: no URL specified" >&2; exit 2; }
case "$url" in *://*) ;; *) url="http://$url" ;; esac
f=/tmp/.curl.$$
if wget -q -O "$f" "$url"; then cat "$f"; rm -f "$f"; else rm -f "$f"; exit 7; fi
"#;

fn digest(b: &[u8]) -> String {
    let h = Sha256::digest(b);
    let hex: String = h.iter().map(|x| format!("{x:02x}")).collect();
    format!("sha256:{hex}")
}

/// Whether the ELF file at `path` is statically linked (has no program interpreter).
pub fn is_static(path: &Path) -> bool {
    let Ok(b) = std::fs::read(path) else {
        return false;
    };
    if b.get(..4) != Some(b"\x7fELF") || b.get(4) != Some(&2) {
        return false;
    }
    let u16_at = |o: usize| b.get(o..o + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
    let u64_at = |o: usize| {
        b.get(o..o + 8)
            .and_then(|s| <[u8; 8]>::try_from(s).ok())
            .map(u64::from_le_bytes)
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    let Ok(phoff) = usize::try_from(phoff) else {
        return false;
    };
    // PT_INTERP = 3.
    !(0..usize::from(phnum)).any(|i| {
        let o = phoff + i * usize::from(phentsize);
        b.get(o..o + 4) == Some(&3u32.to_le_bytes()[..])
    })
}

/// A tar header owned by root, dated 0 (so the layer's digest is the same each run).
fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

fn tar_of(files: &[(&str, &[u8], u32)], links: &[(String, &str)], dirs: &[&str]) -> Vec<u8> {
    let mut t = tar::Builder::new(Vec::new());
    for d in dirs {
        let mode = if *d == "tmp" { 0o1777 } else { 0o755 };
        let mut h = header(tar::EntryType::Directory, mode, 0);
        let _ = t.append_data(&mut h, d, std::io::empty());
    }
    for (path, data, mode) in files {
        let mut h = header(tar::EntryType::Regular, *mode, data.len() as u64);
        let _ = t.append_data(&mut h, path, *data);
    }
    for (path, target) in links {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        let _ = t.append_link(&mut h, path, target);
    }
    t.into_inner().unwrap_or_default()
}

/// This machine's architecture as OCI names it.
fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        other => other,
    }
}

impl Images {
    fn put(&mut self, data: Vec<u8>, media_type: &str) -> (String, usize) {
        let d = digest(&data);
        let n = data.len();
        self.blobs.insert(
            d.clone(),
            Blob {
                data,
                media_type: media_type.to_owned(),
            },
        );
        (d, n)
    }

    fn image(&mut self, repo: &str, tag: &str, base: &[u8], own: Vec<u8>, cmd: &[&str]) {
        let diff = [digest(base), digest(&own)];
        let (b, bn) = self.put(base.to_vec(), LAYER);
        let (o, on) = self.put(own, LAYER);
        let config = json!({
            "architecture": arch(),
            "os": "linux",
            "config": {"Cmd": cmd, "Env": ["PATH=/bin"], "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": diff},
        });
        let (c, cn) = self.put(config.to_string().into_bytes(), CONFIG);
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": {"mediaType": CONFIG, "digest": c, "size": cn},
            "layers": [
                {"mediaType": LAYER, "digest": b, "size": bn},
                {"mediaType": LAYER, "digest": o, "size": on},
            ],
        });
        let (m, _) = self.put(manifest.to_string().into_bytes(), MANIFEST);
        self.tags.insert((repo.to_owned(), tag.to_owned()), m);
    }

    /// Write the images as an OCI layout at `dir`, each tagged with the last part of
    /// its repository (`nginx`, `curl`), for tools such as skopeo.
    pub fn write_layout(&self, dir: &Path) -> std::io::Result<()> {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs)?;
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
        for (d, b) in &self.blobs {
            std::fs::write(blobs.join(d.trim_start_matches("sha256:")), &b.data)?;
        }
        let mut manifests: Vec<_> = self
            .tags
            .iter()
            .map(|((repo, _), d)| {
                let name = repo.rsplit('/').next().unwrap_or(repo);
                json!({
                    "mediaType": MANIFEST,
                    "digest": d,
                    "size": self.blobs[d].data.len(),
                    "annotations": {"org.opencontainers.image.ref.name": name},
                })
            })
            .collect();
        manifests.sort_by_key(|m| m["digest"].as_str().map(str::to_owned));
        let index = json!({"schemaVersion": 2, "manifests": manifests});
        std::fs::write(dir.join("index.json"), index.to_string())
    }

    /// The two stand-ins, from the static busybox at `busybox`.
    pub fn stand_ins(busybox: &Path) -> Result<Self, String> {
        let bb = std::fs::read(busybox).map_err(|e| format!("{}: {e}", busybox.display()))?;
        let list = std::process::Command::new(busybox)
            .arg("--list")
            .output()
            .map_err(|e| format!("{} --list: {e}", busybox.display()))?;
        let applets: Vec<(String, &str)> = String::from_utf8_lossy(&list.stdout)
            .split_whitespace()
            .filter(|a| *a != "busybox")
            .map(|a| (format!("bin/{a}"), "busybox"))
            .collect();
        let etc = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n";
        let base = tar_of(
            &[
                ("bin/busybox", &bb, 0o755),
                ("etc/passwd", etc, 0o644),
                ("etc/group", b"root:x:0:\nnobody:x:65534:\n", 0o644),
            ],
            &applets,
            &["bin", "etc", "tmp", "proc", "dev", "sys", "root"],
        );
        let mut images = Self {
            base,
            ..Self::default()
        };
        images.add(
            "library/nginx",
            "latest",
            &[("bin/grove-nginx", NGINX.as_bytes(), 0o755)],
            &["/bin/grove-nginx"],
        );
        images.add(
            "curlimages/curl",
            "7.82.0",
            &[("bin/curl", CURL.as_bytes(), 0o755)],
            &["curl"],
        );
        Ok(images)
    }

    /// One more image `repo:tag`: the busybox layer and a layer of `files` (path
    /// inside, content, mode; their directories made), running `cmd`.
    pub fn add(&mut self, repo: &str, tag: &str, files: &[(&str, &[u8], u32)], cmd: &[&str]) {
        let mut dirs: Vec<String> = files
            .iter()
            .flat_map(|(path, _, _)| Path::new(path).ancestors().skip(1))
            .filter(|d| !d.as_os_str().is_empty())
            .map(|d| d.to_string_lossy().into_owned())
            .collect();
        dirs.sort();
        dirs.dedup();
        let dirs: Vec<&str> = dirs.iter().map(String::as_str).collect();
        let own = tar_of(files, &[], &dirs);
        let base = std::mem::take(&mut self.base);
        self.image(repo, tag, &base, own, cmd);
        self.base = base;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stand_ins_are_two_images_sharing_busybox_that_the_agent_unpacks() {
        // A shell script stands in for busybox: the structure is what is tested.
        let dir = std::env::temp_dir().join(format!("grove-images-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fake = dir.join("busybox");
        std::fs::write(&fake, "#!/bin/sh\necho sh ls wget busybox\n").unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let i = Images::stand_ins(&fake).unwrap();
        assert_eq!(i.tags.len(), 2);
        // Two manifests, two configs, two own layers, one shared base.
        assert_eq!(i.blobs.len(), 7);
        for (k, b) in &i.blobs {
            assert_eq!(*k, digest(&b.data), "content-addressed");
        }
        let curl = &i.blobs[&i.tags[&("curlimages/curl".into(), "7.82.0".into())]];
        let m: serde_json::Value = serde_json::from_slice(&curl.data).unwrap();
        let root = dir.join("rootfs");
        std::fs::create_dir_all(&root).unwrap();
        for l in m["layers"].as_array().unwrap() {
            let b = &i.blobs[l["digest"].as_str().unwrap()];
            grove_agent::image::layer::unpack(&b.data[..], &root).unwrap();
        }
        assert!(root.join("bin/busybox").is_file() && root.join("bin/curl").is_file());
        assert_eq!(
            std::fs::read_link(root.join("bin/wget")).unwrap(),
            Path::new("busybox")
        );
        assert!(
            !root.join("bin/grove-nginx").exists(),
            "nginx's own layer is not curl's"
        );
        let _ = std::fs::remove_dir_all(&dir);
        assert!(!is_static(Path::new("/nonexistent")) && !is_static(&fake));
    }
}
