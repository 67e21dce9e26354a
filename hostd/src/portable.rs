//! What a tenant's volume carries so that another host can take the tenant over (a move): a
//! manifest naming the id range the volume's files belong to and the deployment hostd last
//! recorded. The tenant's ids come from its slot on a host, and a new host may give it
//! another slot; so when a volume arrives with files of another range, they are shifted into
//! this host's range for the tenant (and the engine's `<uid>.<gid>` data directory renamed)
//! before the engine starts, and the deployment is adopted so the Deploy step runs it again.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::record::Deployment;

/// The manifest's name at the volume's root.
pub const FILE: &str = "m8trx-volume.json";

/// What the volume says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// First id of the range the volume's tenant files are owned by.
    pub id_base: u64,
    /// The deployment recorded when the manifest was written.
    #[serde(default)]
    pub deployment: Option<Deployment>,
}

/// Why the volume's manifest or ids could not be handled.
#[derive(Debug, thiserror::Error)]
pub enum PortableError {
    /// Reading, writing or changing a file failed.
    #[error("{action} {path}: {source}; check the tenant volume (fsck, free space)")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The manifest does not parse.
    #[error("{path} does not parse ({message}); move it aside to take the volume as is (its files keep their owners)")]
    Damaged {
        /// The manifest.
        path: PathBuf,
        /// serde's message.
        message: String,
    },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PortableError {
    let path = path.to_path_buf();
    move |source| PortableError::Io {
        action,
        path,
        source,
    }
}

/// The volume's manifest, if it has one.
pub fn read(mount: &Path) -> Result<Option<Manifest>, PortableError> {
    let path = mount.join(FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| PortableError::Damaged {
                path,
                message: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("read", &path)(e)),
    }
}

/// Writes the manifest durably: a temporary file, synced, renamed over the old one.
pub fn write(mount: &Path, m: &Manifest) -> Result<(), PortableError> {
    use std::io::Write;
    let path = mount.join(FILE);
    let tmp = mount.join(format!(".{FILE}.tmp"));
    let bytes = serde_json::to_vec_pretty(m).unwrap_or_default();
    let mut f = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
    f.write_all(&bytes).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("sync", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io("rename", &path))?;
    std::fs::File::open(mount)
        .and_then(|d| d.sync_all())
        .map_err(io("sync", mount))
}

/// The engine's data directory for a remapped range (dockerd's userns-remap layout).
fn engine_dir(mount: &Path, base: u64) -> PathBuf {
    mount.join("engine").join(format!("{base}.{base}"))
}

/// Moves every file of the volume owned by an id in `[from, from + count)` to the same
/// offset from `to`, without following links or leaving the volume's filesystem, then
/// renames the engine's data directory; returns how many files changed. Safe to run again
/// after a crash: the ranges are disjoint, so a shifted file is not shifted twice.
pub fn shift_ids(mount: &Path, from: u64, to: u64, count: u64) -> Result<u64, PortableError> {
    let map = |id: u32| -> Option<u32> {
        let id = u64::from(id);
        (id >= from && id < from + count).then(|| u32::try_from(to + (id - from)).ok())?
    };
    let root = std::fs::symlink_metadata(mount).map_err(io("stat", mount))?;
    let mut changed = u64::from(shift_one(mount, &root, &map)?);
    let mut stack = vec![mount.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(io("list", &dir))? {
            let path = entry.map_err(io("list", &dir))?.path();
            let md = std::fs::symlink_metadata(&path).map_err(io("stat", &path))?;
            if md.dev() != root.dev() {
                continue;
            }
            if md.is_dir() {
                stack.push(path.clone());
            }
            changed += u64::from(shift_one(&path, &md, &map)?);
        }
    }
    let (old, new) = (engine_dir(mount, from), engine_dir(mount, to));
    if old.exists() && !new.exists() {
        std::fs::rename(&old, &new).map_err(io("rename", &old))?;
    }
    Ok(changed)
}

/// Gives one file the mapped owner and group (where they are in the old range); true if
/// it changed.
fn shift_one(
    path: &Path,
    md: &std::fs::Metadata,
    map: &impl Fn(u32) -> Option<u32>,
) -> Result<bool, PortableError> {
    let (uid, gid) = (map(md.uid()), map(md.gid()));
    if uid.is_none() && gid.is_none() {
        return Ok(false);
    }
    std::os::unix::fs::lchown(path, uid, gid).map_err(io("chown", path))?;
    // chown clears set-user-ID and set-group-ID bits, even as root: put them back.
    if !md.file_type().is_symlink() && md.mode() & 0o6000 != 0 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(md.mode() & 0o7777))
            .map_err(io("chmod", path))?;
    }
    Ok(true)
}

/// Takes the mounted volume over for a tenant whose ids start at `base`: shifts the files
/// of another range, and returns the manifest found (None for a volume never used).
pub fn take_over(mount: &Path, base: u64) -> Result<(Option<Manifest>, u64), PortableError> {
    let found = read(mount)?;
    if let Some(m) = &found {
        // Only a range hostd hands out: a manifest naming another one (root's ids, say) is
        // refused rather than used to re-own files.
        let valid = m.id_base >= crate::ids::BASE
            && (m.id_base - crate::ids::BASE).is_multiple_of(crate::ids::RANGE);
        if !valid {
            return Err(PortableError::Damaged {
                path: mount.join(FILE),
                message: format!("id_base {} is not a tenant id range", m.id_base),
            });
        }
    }
    let mut shifted = 0;
    if let Some(m) = found.as_ref().filter(|m| m.id_base != base) {
        shifted = shift_ids(mount, m.id_base, base, crate::ids::RANGE)?;
        // The range is the new one from now on, even if the caller stops here.
        write(
            mount,
            &Manifest {
                id_base: base,
                deployment: m.deployment.clone(),
            },
        )?;
    }
    Ok((found, shifted))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn owner(p: &Path) -> (u32, u32) {
        let m = std::fs::symlink_metadata(p).unwrap();
        (m.uid(), m.gid())
    }

    #[test]
    fn shifts_only_the_old_range_keeps_setuid_and_renames_the_engine_dir() {
        if std::fs::metadata("/proc/self")
            .map(|m| m.uid())
            .unwrap_or(1)
            != 0
        {
            eprintln!("skipped: chown needs root");
            return;
        }
        let dir = std::env::temp_dir().join(format!("m8trx-portable-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let eng = engine_dir(&dir, 1_065_536);
        std::fs::create_dir_all(eng.join("volumes/data/_data")).unwrap();
        let file = eng.join("volumes/data/_data/f");
        std::fs::write(&file, b"x").unwrap();
        std::os::unix::fs::lchown(&file, Some(1_065_536 + 33), Some(1_065_536 + 33)).unwrap();
        let suid = eng.join("suid");
        std::fs::write(&suid, b"x").unwrap();
        std::os::unix::fs::lchown(&suid, Some(1_065_536), Some(1_065_536)).unwrap();
        std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();
        let link = eng.join("link");
        std::os::unix::fs::symlink("/etc/passwd", &link).unwrap();
        std::os::unix::fs::lchown(&link, Some(1_065_537), Some(1_065_537)).unwrap();
        let foreign = dir.join("root-owned");
        std::fs::write(&foreign, b"x").unwrap();
        for d in [
            &eng,
            &eng.join("volumes"),
            &eng.join("volumes/data"),
            &eng.join("volumes/data/_data"),
        ] {
            std::os::unix::fs::lchown(d, Some(1_065_536), Some(1_065_536)).unwrap();
        }
        write(
            &dir,
            &Manifest {
                id_base: 1_065_536,
                deployment: None,
            },
        )
        .unwrap();

        let (found, n) = take_over(&dir, 1_131_072).unwrap();
        assert_eq!(found.unwrap().id_base, 1_065_536);
        assert_eq!(n, 7, "four dirs, two files, one link");
        let eng = engine_dir(&dir, 1_131_072);
        assert!(eng.is_dir() && !engine_dir(&dir, 1_065_536).exists());
        assert_eq!(
            owner(&eng.join("volumes/data/_data/f")),
            (1_131_072 + 33, 1_131_072 + 33)
        );
        assert_eq!(owner(&eng.join("suid")), (1_131_072, 1_131_072));
        let mode = std::fs::metadata(eng.join("suid")).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o4755, "set-user-ID kept");
        assert_eq!(
            owner(&eng.join("link")),
            (1_131_073, 1_131_073),
            "the link itself"
        );
        assert_eq!(owner(Path::new("/etc/passwd")), (0, 0), "never followed");
        assert_eq!(owner(&foreign), (0, 0), "ids outside the range stay");
        assert_eq!(read(&dir).unwrap().unwrap().id_base, 1_131_072);
        // Again: nothing of the old range is left, nothing changes.
        let (_, n) = take_over(&dir, 1_131_072).unwrap();
        assert_eq!(n, 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_damaged_manifest_is_an_error_not_a_fresh_volume() {
        let dir = std::env::temp_dir().join(format!("m8trx-portable-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(FILE), b"{not json").unwrap();
        assert!(matches!(read(&dir), Err(PortableError::Damaged { .. })));
        for base in [0, 1_000_001, 999_000] {
            write(
                &dir,
                &Manifest {
                    id_base: base,
                    deployment: None,
                },
            )
            .unwrap();
            assert!(
                matches!(
                    take_over(&dir, 1_065_536),
                    Err(PortableError::Damaged { .. })
                ),
                "{base}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
