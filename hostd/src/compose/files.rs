//! The files a deploy mounts into containers, from `secrets:`, `configs:` and read-only
//! binds of the bundle's `./relative` paths. One module decides, for the policy, the plan
//! and the writer alike, what each service sees and where its bytes live on the host:
//!
//! - a service sees only the secrets and configs it lists (each one a read-only bind of one
//!   file; nothing else of the tenant's files is mounted into it);
//! - bundle files and inline sources are written under `<tenant volume>/bundle/<digest>/`,
//!   on the tenant's own encrypted volume, owned by the tenant's remapped ids: `files/<path>`
//!   as sent, `refs/<service>/<n>` for inline content and for files that need their own
//!   owner or mode; a directory is complete (`.complete`) before it is used, and one
//!   directory per bundle means a redeploy never rewrites a file a running container sees;
//! - platform secrets (`external: true`) are the tenant's SSM parameter files, which
//!   `crate::secrets` keeps current; they are bound as written (0400, the container's root).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::model::{ComposeFile, FileRef, FileSource, Service};
use super::Bundle;

/// Where a secret is mounted when its target is not absolute.
pub const SECRETS_DIR: &str = "/run/secrets";
/// The mode of a mounted file whose reference names none (compose's default).
pub const DEFAULT_MODE: u32 = 0o444;
/// The directory, under the tenant volume's mountpoint, holding the bundles.
pub const BUNDLES: &str = "bundle";
/// Marks a bundle directory as completely written.
const COMPLETE: &str = ".complete";
/// The bundle's compose file and variables, as submitted, under its directory: root's only
/// (0700, files 0400), never mounted into a container.
const SOURCE: &str = "source";

/// `secrets` or `configs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A top-level `secrets` entry.
    Secret,
    /// A top-level `configs` entry.
    Config,
}

impl Kind {
    /// The compose key.
    pub fn key(self) -> &'static str {
        match self {
            Kind::Secret => "secrets",
            Kind::Config => "configs",
        }
    }
}

/// Where one mounted file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A file of the bundle, by its normalised path.
    Bundle(String),
    /// Inline `content`, or the value of an `environment` variable.
    Inline(Vec<u8>),
    /// One of the tenant's platform parameters (the leaf, `brain-key`).
    Platform(String),
}

/// One file a service sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMount {
    /// The absolute path in the container.
    pub target: String,
    /// Its bytes.
    pub origin: Origin,
    /// `(uid, gid)` inside the container, when the reference names them.
    pub ids: Option<(u32, u32)>,
    /// The file mode, when the reference names one.
    pub mode: Option<u32>,
}

impl FileMount {
    /// Whether the file is written for this one mount (inline, or its own owner or mode)
    /// rather than bound where it already is.
    fn copied(&self) -> bool {
        matches!(self.origin, Origin::Inline(_))
            || (matches!(self.origin, Origin::Bundle(_))
                && (self.ids.is_some() || self.mode.is_some()))
    }
}

/// The highest mode a secret or config may have: no setuid, setgid or sticky bits.
pub const MAX_FILE_MODE: u32 = 0o777;

/// A numeric id inside the container's user namespace range.
pub fn parse_id(text: &str) -> Option<u32> {
    text.trim().parse::<u32>().ok().filter(|i| *i < 65_536)
}

/// Where a reference is mounted: secrets under `/run/secrets/` unless the target is
/// absolute; configs at `/<name>` unless a target is given.
pub fn target(kind: Kind, r: &FileRef) -> String {
    let (source, target) = match r {
        FileRef::Short(s) => (s.as_str(), None),
        FileRef::Long(l) => (l.source.as_str(), l.target.as_deref()),
    };
    match (kind, target) {
        (_, Some(t)) if t.starts_with('/') => t.to_owned(),
        (Kind::Secret, Some(t)) => format!("{SECRETS_DIR}/{t}"),
        (Kind::Secret, None) => format!("{SECRETS_DIR}/{source}"),
        (Kind::Config, Some(t)) => t.to_owned(),
        (Kind::Config, None) => format!("/{source}"),
    }
}

/// The platform parameter an external secret names: its `name`, or else its key.
pub fn platform_leaf<'a>(key: &'a str, src: &'a FileSource) -> &'a str {
    src.other
        .get("name")
        .and_then(|v| v.as_str())
        .unwrap_or(key)
}

/// The bytes of a top-level source, when they do not live elsewhere.
fn origin(key: &str, src: &FileSource, vars: &HashMap<String, String>) -> Option<Origin> {
    if let Some(f) = &src.file {
        return super::normalize_path(f).map(Origin::Bundle);
    }
    if let Some(c) = &src.content {
        return Some(Origin::Inline(c.clone().into_bytes()));
    }
    if let Some(v) = &src.environment {
        return vars.get(v).map(|v| Origin::Inline(v.clone().into_bytes()));
    }
    (src.external == Some(true)).then(|| Origin::Platform(platform_leaf(key, src).to_owned()))
}

/// The files `svc` mounts, in order: its secrets, then its configs. References the policy
/// would refuse (undeclared, a bad mode) are left out; the policy names them.
pub fn mounts(file: &ComposeFile, svc: &Service, vars: &HashMap<String, String>) -> Vec<FileMount> {
    let mut out = Vec::new();
    for (kind, refs, decl) in [
        (Kind::Secret, &svc.secrets, &file.secrets),
        (Kind::Config, &svc.configs, &file.configs),
    ] {
        for r in refs.iter().flatten() {
            let Some(src) = decl.get(r.source()) else {
                continue;
            };
            let Some(origin) = origin(r.source(), src, vars) else {
                continue;
            };
            let (ids, mode) = match r {
                FileRef::Short(_) => (None, None),
                FileRef::Long(l) => {
                    let uid = l.uid.as_ref().and_then(|u| parse_id(&u.0));
                    let gid = l.gid.as_ref().and_then(|g| parse_id(&g.0));
                    let ids = (uid.is_some() || gid.is_some())
                        .then(|| (uid.unwrap_or(0), gid.unwrap_or(0)));
                    (
                        ids,
                        l.mode
                            .as_ref()
                            .and_then(|m| m.mode)
                            .filter(|m| *m <= MAX_FILE_MODE),
                    )
                }
            };
            out.push(FileMount {
                target: target(kind, r),
                origin,
                ids,
                mode,
            });
        }
    }
    out
}

/// Where a deploy's files are on the host.
#[derive(Debug, Clone, Default)]
pub struct FileSources {
    /// The bundle's directory (`<volume>/bundle/<digest>`), once written.
    pub tree: Option<PathBuf>,
    /// The tenant's platform parameter files, when this host reads them.
    pub platform: Option<PathBuf>,
}

impl FileSources {
    /// The host path bound for mount `n` of `service`.
    pub fn host_path(&self, service: &str, n: usize, m: &FileMount) -> Result<PathBuf, String> {
        if let Origin::Platform(leaf) = &m.origin {
            return self.platform.as_ref().map(|p| p.join(leaf)).ok_or_else(|| {
                format!("external secret `{leaf}`: this host reads no platform parameters (hostd runs without --secrets ssm)")
            });
        }
        let tree = self.tree.as_ref().ok_or_else(|| {
            format!(
                "{} is mounted from the deploy's files, which were not written",
                m.target
            )
        })?;
        Ok(match (&m.origin, m.copied()) {
            (Origin::Bundle(path), false) => tree.join("files").join(path),
            _ => tree.join("refs").join(service).join(n.to_string()),
        })
    }

    /// The host path of a bundle path bound as a volume (`./conf:/etc/app:ro`).
    pub fn bundle_path(&self, path: &str) -> Result<PathBuf, String> {
        let rel = super::normalize_path(path)
            .ok_or_else(|| format!("{path:?} is not a path inside the deploy's files"))?;
        self.tree
            .as_ref()
            .map(|t| t.join("files").join(rel))
            .ok_or_else(|| {
                format!("{path} is mounted from the deploy's files, which were not written")
            })
    }
}

/// Writes the bundle's files and every copied mount of `file` under `bundles/<digest>` (once:
/// an existing complete directory is kept), owned by the tenant's remapped root `base`
/// (container ids `uid`/`gid` become `base + id`). Returns the directory.
pub fn write_tree(
    bundles: &Path,
    bundle: &Bundle,
    file: &ComposeFile,
    base: u32,
) -> std::io::Result<PathBuf> {
    let digest = super::bundle_digest(bundle);
    let dir = bundles.join(&digest);
    if dir.join(COMPLETE).exists() {
        return Ok(dir);
    }
    std::fs::create_dir_all(bundles)?;
    std::fs::set_permissions(bundles, std::fs::Permissions::from_mode(0o700))?;
    std::os::unix::fs::chown(bundles, Some(base), Some(base))?;
    let tmp = bundles.join(format!(".tmp-{digest}"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    let mut dirs = vec![tmp.clone()];
    std::fs::create_dir(&tmp)?;
    let write =
        |path: &Path, data: &[u8], owner: (u32, u32), mode: u32, dirs: &mut Vec<PathBuf>| {
            let mut d = path.parent().map(Path::to_path_buf);
            let mut fresh = Vec::new();
            while let Some(p) = d {
                if p.exists() {
                    break;
                }
                fresh.push(p.clone());
                d = p.parent().map(Path::to_path_buf);
            }
            for p in fresh.into_iter().rev() {
                std::fs::create_dir(&p)?;
                dirs.push(p);
            }
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)?;
            f.write_all(data)?;
            std::os::unix::fs::fchown(&f, Some(owner.0), Some(owner.1))?;
            f.set_permissions(std::fs::Permissions::from_mode(mode))?;
            f.sync_all()
        };
    write_source(&tmp.join(SOURCE), bundle)?;
    for (path, data) in &bundle.files {
        let rel = super::normalize_path(path).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("bundle path {path:?}"),
            )
        })?;
        write(
            &tmp.join("files").join(rel),
            data,
            (base, base),
            DEFAULT_MODE,
            &mut dirs,
        )?;
    }
    let vars = bundle.vars();
    for (name, svc) in &file.services {
        for (n, m) in mounts(file, svc, &vars).iter().enumerate() {
            if !m.copied() {
                continue;
            }
            let data = match &m.origin {
                Origin::Inline(b) => b.clone(),
                Origin::Bundle(p) => bundle.files.get(p).cloned().unwrap_or_default(),
                Origin::Platform(_) => continue,
            };
            let (uid, gid) = m.ids.unwrap_or((0, 0));
            let path = tmp.join("refs").join(name).join(n.to_string());
            let owner = (base.saturating_add(uid), base.saturating_add(gid));
            write(
                &path,
                &data,
                owner,
                m.mode.unwrap_or(DEFAULT_MODE),
                &mut dirs,
            )?;
        }
    }
    std::fs::File::create(tmp.join(COMPLETE))?.sync_all()?;
    // Directories: searchable by the tenant's remapped root (the engine mounts as it), and
    // by nobody else; not writable from inside any container.
    for d in dirs.iter().rev() {
        std::os::unix::fs::chown(d, Some(base), Some(base))?;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o500))?;
        std::fs::File::open(d)?.sync_all()?;
    }
    std::fs::rename(&tmp, &dir)?;
    std::fs::File::open(bundles)?.sync_all()?;
    Ok(dir)
}

/// Removes every bundle directory but `keep` (after a deploy of `keep` succeeded).
pub fn remove_others(bundles: &Path, keep: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(bundles) else {
        return Ok(removed);
    };
    for e in entries {
        let p = e?.path();
        if p != keep && p.is_dir() {
            std::fs::remove_dir_all(&p)?;
            removed.push(p);
        }
    }
    Ok(removed)
}

/// Reads the files named by `paths` from a bundle directory.
pub fn read_files<'a>(
    dir: &Path,
    paths: impl IntoIterator<Item = &'a String>,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let mut files = BTreeMap::new();
    for path in paths {
        let p = dir.join("files").join(path);
        let data = std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        files.insert(path.clone(), data);
    }
    Ok(files)
}

/// Writes the compose file and variables of `bundle` under `dir` (root's only).
fn write_source(dir: &Path, bundle: &Bundle) -> std::io::Result<()> {
    std::fs::create_dir(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let env = serde_json::to_vec(&bundle.env)?;
    for (name, data) in [
        ("compose.yml", bundle.compose.as_bytes()),
        ("env.json", &env),
    ] {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .open(dir.join(name))?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::File::open(dir)?.sync_all()
}

/// Reads back the bundle a directory holds — compose file, variables and the files named by
/// `paths` — and checks it is the bundle the directory is named after: what a redeploy after
/// a reboot deploys again.
pub fn read_tree<'a>(
    dir: &Path,
    paths: impl IntoIterator<Item = &'a String>,
) -> Result<Bundle, String> {
    let read = |p: PathBuf| std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()));
    let source = dir.join(SOURCE);
    let compose = String::from_utf8(read(source.join("compose.yml"))?)
        .map_err(|_| format!("{}: not UTF-8", source.join("compose.yml").display()))?;
    let env = serde_json::from_slice(&read(source.join("env.json"))?)
        .map_err(|e| format!("{}: {e}", source.join("env.json").display()))?;
    let bundle = Bundle {
        compose,
        env,
        files: read_files(dir, paths)?,
    };
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
    if name.as_deref() != Some(super::bundle_digest(&bundle).as_str()) {
        return Err(format!(
            "{} does not hold the bundle it is named after",
            dir.display()
        ));
    }
    Ok(bundle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn load(text: &str, vars: &[(&str, &str)]) -> ComposeFile {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        let (f, p) = super::super::model::load(text, &vars).unwrap();
        assert!(p.is_empty(), "{p:#?}");
        f
    }

    #[test]
    fn modes_and_targets_read_as_compose_means_them() {
        let f = load(
            "services:\n  a:\n    image: x\n    secrets: [k, {source: k, target: other}, {source: k, target: /etc/k}]\n    configs: [c, {source: c, target: /etc/c.conf}]\nsecrets:\n  k: {content: s}\nconfigs:\n  c: {content: c}\n",
            &[],
        );
        let targets: Vec<String> = mounts(&f, &f.services["a"], &HashMap::new())
            .into_iter()
            .map(|m| m.target)
            .collect();
        assert_eq!(
            targets,
            [
                "/run/secrets/k",
                "/run/secrets/other",
                "/etc/k",
                "/c",
                "/etc/c.conf"
            ]
        );
    }

    #[test]
    fn a_service_mounts_only_what_it_lists() {
        let f = load(
            "services:\n  a:\n    image: x\n    secrets: [db]\n  b:\n    image: x\nsecrets:\n  db: {environment: DB_PASS}\n",
            &[("DB_PASS", "hunter2")],
        );
        let vars = HashMap::from([("DB_PASS".to_owned(), "hunter2".to_owned())]);
        assert_eq!(
            mounts(&f, &f.services["a"], &vars)[0].origin,
            Origin::Inline(b"hunter2".to_vec())
        );
        assert!(mounts(&f, &f.services["b"], &vars).is_empty());
    }

    #[test]
    fn the_tree_is_written_once_with_owners_and_modes() {
        let root = std::env::temp_dir().join(format!("m8trx-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let f = load(
            "services:\n  a:\n    image: x\n    configs: [{source: conf, target: /etc/app.ini, uid: '5', mode: 0400}, inline]\nconfigs:\n  conf: {file: ./app.ini}\n  inline: {content: hello}\n",
            &[],
        );
        let bundle = Bundle {
            compose: "x".into(),
            env: BTreeMap::from([("SECRET".to_owned(), "s3cr3t".to_owned())]),
            files: BTreeMap::from([("app.ini".to_owned(), b"[a]\n".to_vec())]),
        };
        let me = std::fs::metadata("/proc/self").unwrap().uid();
        let dir = write_tree(&root, &bundle, &f, me).unwrap();
        assert_eq!(std::fs::read(dir.join("files/app.ini")).unwrap(), b"[a]\n");
        assert_eq!(std::fs::read(dir.join("refs/a/1")).unwrap(), b"hello");
        let copy = std::fs::metadata(dir.join("refs/a/0")).unwrap();
        assert_eq!(copy.mode() & 0o777, 0o400);
        if me == 0 {
            assert_eq!(copy.uid(), 5);
        }
        let sources = FileSources {
            tree: Some(dir.clone()),
            platform: None,
        };
        let m = mounts(&f, &f.services["a"], &HashMap::new());
        assert_eq!(
            sources.host_path("a", 0, &m[0]).unwrap(),
            dir.join("refs/a/0")
        );
        // The same bundle again: the complete directory is kept as it is.
        assert_eq!(write_tree(&root, &bundle, &f, me).unwrap(), dir);
        // The whole bundle reads back from the directory, and only as it was written.
        let paths = ["app.ini".to_owned()];
        assert_eq!(read_tree(&dir, &paths).unwrap(), bundle);
        let source = std::fs::metadata(dir.join("source/env.json")).unwrap();
        assert_eq!(source.mode() & 0o777, 0o400);
        assert_eq!(source.uid(), me, "the source stays hostd's own");
        let forged = root.join("0000");
        std::fs::create_dir(&forged).unwrap();
        copy_dir(&dir, &forged);
        assert!(read_tree(&forged, &paths)
            .unwrap_err()
            .contains("not hold the bundle"));
        std::fs::remove_dir_all(&forged).unwrap();
        let other = root.join("old");
        std::fs::create_dir(&other).unwrap();
        assert_eq!(remove_others(&root, &dir).unwrap(), vec![other]);
        for d in walk(&root) {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        std::fs::remove_dir_all(&root).unwrap();
    }

    fn copy_dir(from: &Path, to: &Path) {
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let target = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                std::fs::create_dir(&target).unwrap();
                copy_dir(&e.path(), &target);
            } else {
                std::fs::copy(e.path(), &target).unwrap();
            }
        }
    }

    fn walk(p: &Path) -> Vec<PathBuf> {
        let mut out = vec![p.to_path_buf()];
        for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                out.extend(walk(&e.path()));
            }
        }
        out
    }
}
