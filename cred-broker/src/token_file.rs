//! Atomic token-file writer for hostd: a tenant container must only ever read a whole token,
//! old or new, never a partial one, and the file must survive a crash right after the swap.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::token::{new_token_id, Token};

/// File mode of a token file: readable by its owner only.
pub const TOKEN_FILE_MODE: u32 = 0o400;

/// Why a token file could not be written; names the path and the step.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("token file path {0} has no parent directory or file name")]
    BadPath(PathBuf),
    #[error("{step} {path}: {source}")]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Random(#[from] crate::token::RandomError),
}

/// Owner to give the token file (the tenant's remapped root, so its containers can read it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileOwner {
    /// Host uid.
    pub uid: u32,
    /// Host gid.
    pub gid: u32,
}

/// Writes `token` to `path` atomically: a temporary file in the same directory (mode 0400,
/// chowned to `owner` when given), fsync, rename over `path`, fsync of the directory.
/// The content is the token alone with no newline, exactly what SDKs send as `Authorization`.
pub fn write_token_file(
    path: &Path,
    token: &Token,
    owner: Option<FileOwner>,
) -> Result<(), TokenFileError> {
    let (dir, name) = match (path.parent(), path.file_name()) {
        (Some(d), Some(n)) => (
            if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            },
            n,
        ),
        _ => return Err(TokenFileError::BadPath(path.to_owned())),
    };
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        new_token_id()?
    ));
    let io = |step: &'static str, p: &Path| {
        let p = p.to_owned();
        move |source| TokenFileError::Io {
            step,
            path: p,
            source,
        }
    };
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(TOKEN_FILE_MODE)
            .open(&tmp)
            .map_err(io("creating temporary token file", &tmp))?;
        f.write_all(token.expose_secret().as_bytes())
            .map_err(io("writing temporary token file", &tmp))?;
        if let Some(o) = owner {
            std::os::unix::fs::fchown(&f, Some(o.uid), Some(o.gid))
                .map_err(io("changing owner of temporary token file", &tmp))?;
        }
        // The umask can only narrow the mode; set it exactly in case the file system widened it.
        f.set_permissions(fs::Permissions::from_mode(TOKEN_FILE_MODE))
            .map_err(io("setting mode of temporary token file", &tmp))?;
        f.sync_all()
            .map_err(io("fsyncing temporary token file", &tmp))?;
        drop(f);
        fs::rename(&tmp, path).map_err(io("renaming temporary token file onto", path))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsyncing token directory", dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "cred-broker-test-{tag}-{}-{}",
            std::process::id(),
            new_token_id().unwrap()
        ));
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn writes_whole_token_mode_0400_and_replaces_atomically() {
        let d = scratch("tokfile");
        let p = d.join("broker-token");
        let t1 = Token::generate().unwrap();
        write_token_file(&p, &t1, None).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), t1.expose_secret());
        let meta = fs::metadata(&p).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o400);
        let ino1 = meta.ino();

        // A reader holding the old file keeps reading the old token; the path shows the new one.
        let old_reader = File::open(&p).unwrap();
        let t2 = Token::generate().unwrap();
        write_token_file(&p, &t2, None).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), t2.expose_secret());
        assert_ne!(fs::metadata(&p).unwrap().ino(), ino1, "replaced by rename");
        let mut s = String::new();
        std::io::Read::read_to_string(&mut &old_reader, &mut s).unwrap();
        assert_eq!(s, t1.expose_secret());
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("broker-token")]);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn sets_owner_when_asked() {
        // Running as root (make test does), chown to an arbitrary uid must show on the file;
        // as another user, chown to our own ids must succeed.
        let d = scratch("owner");
        let p = d.join("tok");
        let me = fs::metadata(&d).unwrap();
        let owner = if me.uid() == 0 {
            FileOwner {
                uid: 100_000,
                gid: 100_000,
            }
        } else {
            FileOwner {
                uid: me.uid(),
                gid: me.gid(),
            }
        };
        write_token_file(&p, &Token::generate().unwrap(), Some(owner)).unwrap();
        let m = fs::metadata(&p).unwrap();
        assert_eq!((m.uid(), m.gid()), (owner.uid, owner.gid));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn reports_the_failing_step_and_leaves_no_temp_file() {
        let d = scratch("fail");
        let p = d.join("missing-dir").join("tok");
        let err = write_token_file(&p, &Token::generate().unwrap(), None).unwrap_err();
        assert!(
            err.to_string().contains("creating temporary token file"),
            "{err}"
        );
        fs::remove_dir_all(&d).unwrap();
    }
}
