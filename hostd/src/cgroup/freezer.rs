//! Freezing a whole tenant: its envelope (engine and containers together) stops being
//! scheduled while every process and every byte of memory stays where it is, and thawing it
//! resumes everything at once. The engine is frozen with its containers on purpose: a
//! running dockerd would exec healthchecks into frozen containers and hang on them.
//! v2 (and systemd's tree): `cgroup.freeze`; v1: the freezer controller's `freezer.state`.
//! Both freeze the whole subtree.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{io, read, write, CgroupError, TenantCgroup, Version};

/// How long the kernel may take to stop every task of the envelope.
const SETTLE: Duration = Duration::from_secs(5);

impl TenantCgroup {
    fn freezer_file(&self) -> Result<PathBuf, CgroupError> {
        Ok(match self.fs.version {
            Version::V2 => self.fs.root.join(self.rel()).join("cgroup.freeze"),
            Version::V1 => {
                let dir = self.fs.v1_dir("freezer", &self.rel());
                if !dir.is_dir() {
                    return Err(CgroupError::MissingController("freezer"));
                }
                dir.join("freezer.state")
            }
        })
    }

    /// Whether the kernel reports the envelope frozen now.
    pub fn is_frozen(&self) -> Result<bool, CgroupError> {
        Ok(match self.fs.version {
            Version::V2 => {
                let events = self.fs.root.join(self.rel()).join("cgroup.events");
                read(&events)?.lines().any(|l| l.trim() == "frozen 1")
            }
            Version::V1 => read(&self.freezer_file()?)? == "FROZEN",
        })
    }

    /// Freezes (or thaws) the envelope and waits until the kernel has done it; idempotent.
    /// Blocking (it polls the kernel): call it off the async runtime.
    pub fn set_frozen(&self, frozen: bool) -> Result<(), CgroupError> {
        let file = self.freezer_file()?;
        let value = match (self.fs.version, frozen) {
            (Version::V2, true) => "1",
            (Version::V2, false) => "0",
            (Version::V1, true) => "FROZEN",
            (Version::V1, false) => "THAWED",
        };
        write(&file, value)?;
        let until = Instant::now() + SETTLE;
        while self.is_frozen()? != frozen {
            if Instant::now() > until {
                return Err(io("settle", &file)(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the kernel did not report the tenant {value} within {SETTLE:?}"),
                )));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    /// Brings the envelope to `frozen`, doing nothing when it already is; a host without a
    /// freezer can still hold thawed tenants. Blocking: call it off the async runtime.
    pub fn ensure_frozen(&self, frozen: bool) -> Result<(), CgroupError> {
        match self.is_frozen() {
            Ok(now) if now == frozen => Ok(()),
            Err(CgroupError::MissingController(_)) if !frozen => Ok(()),
            Err(CgroupError::Io { .. }) if !frozen && !self.exists() => Ok(()),
            Err(e) => Err(e),
            Ok(_) => self.set_frozen(frozen),
        }
    }

    /// CPU time the tenant's workload (its containers, not its engine) has used, in
    /// nanoseconds (v2 `cpu.stat` usage_usec, v1 `cpuacct.usage`): what the idle decisions
    /// sample. The engine is left out on purpose: hostd's own calls to it (status, health
    /// bookkeeping) must not keep a tenant awake.
    pub fn cpu_usage_ns(&self) -> Result<u64, CgroupError> {
        let workload = self.workload_rel();
        match self.fs.version {
            Version::V2 => {
                let stat = self.fs.root.join(&workload).join("cpu.stat");
                read(&stat)?
                    .lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(|us| us.saturating_mul(1000))
                    .ok_or_else(|| {
                        io("parse", &stat)(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            "no usage_usec line",
                        ))
                    })
            }
            Version::V1 => {
                super::parse_u64(&self.fs.v1_dir("cpuacct", &workload).join("cpuacct.usage"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{fixture, CgroupFs, Driver};
    use super::*;

    #[test]
    fn v2_freezes_through_cgroup_freeze_and_reads_usage() {
        let root = fixture::tempdir();
        let fs = CgroupFs::with_layout(&root, Version::V2, Driver::Cgroupfs);
        let t = fs.tenant("acme");
        let dir = root.join("m8trx/acme");
        std::fs::create_dir_all(&dir).unwrap();
        // The fixture's "kernel" has already settled in the asked state.
        std::fs::write(dir.join("cgroup.freeze"), "0").unwrap();
        std::fs::write(dir.join("cgroup.events"), "populated 1\nfrozen 1\n").unwrap();
        t.set_frozen(true).unwrap();
        assert_eq!(fixture::r(&root, "m8trx/acme/cgroup.freeze"), "1");
        assert!(t.is_frozen().unwrap());
        std::fs::create_dir_all(dir.join("workload")).unwrap();
        std::fs::write(
            dir.join("workload/cpu.stat"),
            "usage_usec 1500\nuser_usec 1000\n",
        )
        .unwrap();
        assert_eq!(t.cpu_usage_ns().unwrap(), 1_500_000);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn v1_without_a_freezer_says_which_controller_is_missing() {
        let root = fixture::tempdir();
        for c in ["memory", "pids"] {
            std::fs::create_dir_all(root.join(c)).unwrap();
        }
        let fs = CgroupFs::detect_at(&root).unwrap();
        let err = fs.tenant("acme").set_frozen(true).unwrap_err();
        assert!(
            matches!(err, CgroupError::MissingController("freezer")),
            "{err}"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
