//! hostd's persisted state: one JSON record per tenant under the state directory,
//! replaced atomically (write a temporary file, fsync it, rename over the old one, fsync
//! the directory). A `kill -9` or power loss at any instant leaves either the old record
//! or the new one, never a torn one — which is what reconciliation relies on.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Failures of the state store; each names the file so the operator can inspect it.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading, writing or syncing a state file failed.
    #[error("state store: {action} {path}: {source}")]
    Io {
        /// What the store was doing.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A record exists but does not parse: a bug or a hand edit, never a crash (writes are atomic).
    #[error("state store: {path} is not a valid record ({source}); move it aside and run `hostd ctl status` to see what is left")]
    Corrupt {
        /// The record.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// A key that would escape the store directory.
    #[error("state store: invalid record key {0:?}")]
    BadKey(String),
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// A directory of atomically replaced JSON records, one per key.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

const SUFFIX: &str = ".json";
const TMP_SUFFIX: &str = ".json.tmp";

impl Store {
    /// Opens (creating, mode 0700) the store directory and removes temporaries a crash left.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StateError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        set_mode(&dir, 0o700)?;
        for e in std::fs::read_dir(&dir).map_err(io("list", &dir))? {
            let p = e.map_err(io("list", &dir))?.path();
            if p.to_string_lossy().ends_with(TMP_SUFFIX) {
                std::fs::remove_file(&p).map_err(io("remove stale temporary", &p))?;
            }
        }
        Ok(Self { dir })
    }

    /// Where the store lives.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, key: &str) -> Result<PathBuf, StateError> {
        let ok = !key.is_empty()
            && key.len() <= 64
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok {
            return Err(StateError::BadKey(key.to_owned()));
        }
        Ok(self.dir.join(format!("{key}{SUFFIX}")))
    }

    /// Replaces the record for `key` atomically and durably.
    pub fn put<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StateError> {
        let path = self.path(key)?;
        let tmp = self.dir.join(format!("{key}{TMP_SUFFIX}"));
        let bytes = serde_json::to_vec_pretty(value).map_err(|e| StateError::Io {
            action: "serialise",
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)
                .map_err(io("create", &tmp))?;
            set_mode(&tmp, 0o600)?;
            f.write_all(&bytes).map_err(io("write", &tmp))?;
            f.sync_all().map_err(io("fsync", &tmp))?;
        }
        std::fs::rename(&tmp, &path).map_err(io("rename into place", &path))?;
        sync_dir(&self.dir)
    }

    /// Reads the record for `key`, if there is one.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StateError> {
        let path = self.path(key)?;
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| StateError::Corrupt { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StateError::Io {
                action: "read",
                path,
                source: e,
            }),
        }
    }

    /// Deletes the record for `key` durably; deleting a missing record is not an error.
    pub fn delete(&self, key: &str) -> Result<(), StateError> {
        let path = self.path(key)?;
        match std::fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StateError::Io {
                action: "remove",
                path,
                source: e,
            }),
        }
    }

    /// Every record, by key, in key order; one that cannot be read or parsed is an `Err`
    /// with the reason, so one bad file spoils nothing else.
    pub fn all_entries<T: DeserializeOwned>(
        &self,
    ) -> Result<BTreeMap<String, Result<T, String>>, StateError> {
        let mut out = BTreeMap::new();
        for e in std::fs::read_dir(&self.dir).map_err(io("list", &self.dir))? {
            let name = e
                .map_err(io("list", &self.dir))?
                .file_name()
                .to_string_lossy()
                .into_owned();
            let Some(key) = name.strip_suffix(SUFFIX) else {
                continue;
            };
            match self.get(key) {
                Ok(Some(v)) => {
                    out.insert(key.to_owned(), Ok(v));
                }
                // Deleted between the listing and the read.
                Ok(None) => {}
                Err(e) => {
                    out.insert(key.to_owned(), Err(e.to_string()));
                }
            }
        }
        Ok(out)
    }

    /// Every readable record, by key, in key order; unreadable ones are left out.
    pub fn all<T: DeserializeOwned>(&self) -> Result<BTreeMap<String, T>, StateError> {
        Ok(self
            .all_entries()?
            .into_iter()
            .filter_map(|(k, v)| Some((k, v.ok()?)))
            .collect())
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), StateError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io("chmod", path))
}

fn sync_dir(dir: &Path) -> Result<(), StateError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("m8trx-state-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        p
    }

    #[test]
    fn put_get_delete_all() {
        let dir = tempdir("basic");
        let s = Store::open(&dir).unwrap();
        assert_eq!(s.get::<u32>("acme").unwrap(), None);
        s.put("acme", &1u32).unwrap();
        s.put("acme", &2u32).unwrap();
        s.put("beta", &3u32).unwrap();
        assert_eq!(s.get::<u32>("acme").unwrap(), Some(2));
        assert_eq!(
            s.all::<u32>().unwrap().into_iter().collect::<Vec<_>>(),
            [("acme".into(), 2), ("beta".into(), 3)]
        );
        s.delete("acme").unwrap();
        s.delete("acme").unwrap();
        assert_eq!(s.get::<u32>("acme").unwrap(), None);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn keys_cannot_escape_and_stale_temporaries_are_cleaned() {
        let dir = tempdir("keys");
        let s = Store::open(&dir).unwrap();
        for bad in ["", "../etc/passwd", "a/b", "a.json"] {
            assert!(
                matches!(s.put(bad, &1u32), Err(StateError::BadKey(_))),
                "{bad}"
            );
        }
        std::fs::write(dir.join("acme.json.tmp"), b"{torn").unwrap();
        let s = Store::open(&dir).unwrap();
        assert!(!dir.join("acme.json.tmp").exists());
        assert!(s.all::<u32>().unwrap().is_empty());
        std::fs::write(dir.join("beta.json"), b"{torn").unwrap();
        let e = s.get::<u32>("beta").unwrap_err();
        assert!(
            e.to_string().contains("beta.json is not a valid record"),
            "{e}"
        );
        // One bad record spoils nothing else: listed with its reason, the rest read.
        s.put("acme", &7u32).unwrap();
        let all = s.all_entries::<u32>().unwrap();
        assert_eq!(all["acme"], Ok(7));
        assert!(all["beta"]
            .as_ref()
            .is_err_and(|r| r.contains("not a valid record")));
        assert_eq!(s.all::<u32>().unwrap().len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
