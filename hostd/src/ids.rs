//! Per-tenant host identities: a slot number, and from it the tenant's subordinate UID/GID
//! range (`/etc/subuid`, `/etc/subgid`) and subnet. Ranges never overlap each other nor any
//! range another user already holds; the files are edited atomically and idempotently.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

/// Ids per tenant: a full 16-bit range, so images that use uids up to 65535 work unchanged.
pub const RANGE: u64 = 65_536;
/// First host id of slot 0; tenant ranges start above the ranges distributions hand out.
pub const BASE: u64 = 1_000_000;
/// Highest slot: 10.250.<slot>.0/24 must be a valid subnet.
pub const MAX_SLOT: u16 = 250;

/// Failures allocating or recording ids; each says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum IdError {
    /// A subid file could not be read or replaced.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// Every slot is taken.
    #[error(
        "no free tenant slot (1..={MAX_SLOT}) whose id range is unused; destroy a tenant first"
    )]
    Exhausted,
    /// The wanted range collides with a line another user owns.
    #[error("{file}: range {base}:{count} for {user} overlaps {other}'s range; fix {file} by hand or pick another slot")]
    Overlap {
        /// The file.
        file: String,
        /// The tenant user.
        user: String,
        /// Range start.
        base: u64,
        /// Range size.
        count: u64,
        /// The user holding the colliding range.
        other: String,
    },
    /// A system command (useradd, userdel) failed.
    #[error("`{command}` failed: {message}")]
    Command {
        /// What was run.
        command: String,
        /// Its stderr or exit status.
        message: String,
    },
}

/// The first host id of a slot's range.
pub fn range_base(slot: u16) -> u64 {
    BASE + u64::from(slot) * RANGE
}

/// The tenant's /24 inside 10.250.0.0/16.
pub fn subnet(slot: u16) -> (Ipv4Addr, u8) {
    (Ipv4Addr::new(10, 250, slot.min(255) as u8, 0), 24)
}

/// One `user:start:count` line of a subid file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubIdLine {
    /// User name (or numeric uid).
    pub user: String,
    /// First id.
    pub start: u64,
    /// Number of ids.
    pub count: u64,
}

/// Parses a subid file, ignoring blank lines, comments and malformed lines.
pub fn parse_subid(text: &str) -> Vec<SubIdLine> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.is_empty() || l.starts_with('#') {
                return None;
            }
            let mut f = l.split(':');
            Some(SubIdLine {
                user: f.next()?.to_owned(),
                start: f.next()?.parse().ok()?,
                count: f.next()?.parse().ok()?,
            })
        })
        .collect()
}

fn overlaps(a_start: u64, a_count: u64, b_start: u64, b_count: u64) -> bool {
    a_start < b_start.saturating_add(b_count) && b_start < a_start.saturating_add(a_count)
}

/// The lowest slot not in `taken` whose range is free in every given subid file text.
pub fn free_slot(taken: &[u16], files: &[&str]) -> Result<u16, IdError> {
    let lines: Vec<SubIdLine> = files.iter().flat_map(|t| parse_subid(t)).collect();
    (1..=MAX_SLOT)
        .filter(|s| !taken.contains(s))
        .find(|s| {
            let base = range_base(*s);
            !lines
                .iter()
                .any(|l| overlaps(base, RANGE, l.start, l.count))
        })
        .ok_or(IdError::Exhausted)
}

fn read_or_empty(path: &Path) -> Result<String, IdError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(IdError::Io {
            path: path.display().to_string(),
            source: e,
        }),
    }
}

fn replace_file(path: &Path, text: &str) -> Result<(), IdError> {
    let err = |e| IdError::Io {
        path: path.display().to_string(),
        source: e,
    };
    let tmp = path.with_extension("m8trx-tmp");
    std::fs::write(&tmp, text).map_err(err)?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// The host's account files (`/etc/passwd` and `/etc/group` through useradd and userdel,
/// `/etc/subuid`, `/etc/subgid`) are edited one at a time: tenants are created side by side
/// under their own locks, and a read-modify-write of a shared file would lose a line (and
/// useradd refuses while another holds its lock).
static ACCOUNTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn accounts() -> std::sync::MutexGuard<'static, ()> {
    ACCOUNTS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Records `user:base:RANGE` in a subid file unless it is already there; refuses overlaps.
pub fn ensure_range(path: &Path, user: &str, base: u64) -> Result<(), IdError> {
    let _accounts = accounts();
    let text = read_or_empty(path)?;
    let lines = parse_subid(&text);
    if lines
        .iter()
        .any(|l| l.user == user && l.start == base && l.count == RANGE)
    {
        return Ok(());
    }
    if let Some(other) = lines
        .iter()
        .find(|l| overlaps(base, RANGE, l.start, l.count) || l.user == user)
    {
        return Err(IdError::Overlap {
            file: path.display().to_string(),
            user: user.to_owned(),
            base,
            count: RANGE,
            other: other.user.clone(),
        });
    }
    let mut out = text;
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&format!("{user}:{base}:{RANGE}\n"));
    replace_file(path, &out)
}

/// Whether a subid file holds exactly `user:base:RANGE` (what [`ensure_range`] writes).
pub fn has_range(path: &Path, user: &str, base: u64) -> Result<bool, IdError> {
    Ok(parse_subid(&read_or_empty(path)?)
        .iter()
        .any(|l| l.user == user && l.start == base && l.count == RANGE))
}

/// Removes every line of `user` from a subid file; a missing line is not an error.
pub fn remove_range(path: &Path, user: &str) -> Result<(), IdError> {
    let _accounts = accounts();
    let text = read_or_empty(path)?;
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| l.split(':').next() != Some(user))
        .collect();
    if kept.len() == text.lines().count() {
        return Ok(());
    }
    let mut out = kept.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    replace_file(path, &out)
}

fn run(cmd: &mut Command) -> Result<std::process::Output, IdError> {
    let shown = format!("{cmd:?}");
    cmd.output().map_err(|e| IdError::Command {
        command: shown,
        message: e.to_string(),
    })
}

/// Whether a host user exists.
pub fn user_exists(user: &str) -> Result<bool, IdError> {
    Ok(run(Command::new("getent").args(["passwd", user]))?
        .status
        .success())
}

/// Creates the tenant's system user (no home, no login) unless it exists.
pub fn ensure_user(user: &str) -> Result<(), IdError> {
    let _accounts = accounts();
    if user_exists(user)? {
        return Ok(());
    }
    let out = run(Command::new("useradd").args([
        "--system",
        "--user-group",
        "--no-create-home",
        "--home-dir",
        "/nonexistent",
        "--shell",
        "/usr/sbin/nologin",
        "--comment",
        "m8trx tenant engine remap user",
        user,
    ]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(IdError::Command {
            command: format!("useradd {user}"),
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Deletes the tenant's system user and its group; a missing user is not an error.
pub fn remove_user(user: &str) -> Result<(), IdError> {
    let _accounts = accounts();
    if !user_exists(user)? {
        return Ok(());
    }
    let out = run(Command::new("userdel").arg(user))?;
    if !out.status.success() {
        return Err(IdError::Command {
            command: format!("userdel {user}"),
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    // --user-group made a group of the same name; userdel removes it when it is empty,
    // but not on every distribution configuration.
    if run(Command::new("getent").args(["group", user]))?
        .status
        .success()
    {
        let _ = run(Command::new("groupdel").arg(user))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_skip_taken_and_foreign_ranges() {
        assert_eq!(
            range_base(1),
            1_065_536,
            "DESIGN.md's example m8t-acme:1065536:65536"
        );
        let subuid = "root:100000:65536\nbig:1065536:10\n";
        assert_eq!(
            free_slot(&[], &[subuid]).unwrap(),
            2,
            "slot 1 overlaps big's range"
        );
        assert_eq!(free_slot(&[2, 3], &[subuid]).unwrap(), 4);
        let all: Vec<u16> = (1..=MAX_SLOT).collect();
        assert!(matches!(free_slot(&all, &[""]), Err(IdError::Exhausted)));
        assert_eq!(subnet(7), (Ipv4Addr::new(10, 250, 7, 0), 24));
    }

    #[test]
    fn ensure_and_remove_ranges_are_idempotent_and_refuse_overlap() {
        let dir = std::env::temp_dir().join(format!("m8trx-ids-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("subuid");
        std::fs::write(&f, "dockremap:165536:65536").unwrap();
        ensure_range(&f, "m8t-acme", range_base(1)).unwrap();
        ensure_range(&f, "m8t-acme", range_base(1)).unwrap();
        assert_eq!(
            std::fs::read_to_string(&f).unwrap(),
            "dockremap:165536:65536\nm8t-acme:1065536:65536\n"
        );
        let e = ensure_range(&f, "m8t-beta", range_base(1) + 10).unwrap_err();
        assert!(e.to_string().contains("overlaps m8t-acme"), "{e}");
        let e = ensure_range(&f, "m8t-acme", range_base(2)).unwrap_err();
        assert!(
            e.to_string().contains("m8t-acme"),
            "a user gets one range: {e}"
        );
        remove_range(&f, "m8t-acme").unwrap();
        remove_range(&f, "m8t-acme").unwrap();
        assert_eq!(
            std::fs::read_to_string(&f).unwrap(),
            "dockremap:165536:65536\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
