//! Aggregate limits of a tenant: one cgroup per tenant (`m8trx/<name>`) that the tenant's
//! dockerd uses as `--cgroup-parent`, so every container of the tenant is charged to it.
//! cgroup v1 (this dev machine) and v2 (production Ubuntu 22.04) behind one interface.
//!
//! Own code rather than youki's `libcgroups`: we manage a single parent cgroup per tenant
//! that dockerd fills, never containers; we need v2 controller delegation
//! (`cgroup.subtree_control`) down to that parent for dockerd's children, and a root we can
//! point at a fixture tree to test the v2 layout on a v1 host. libcgroups is built around
//! OCI `LinuxResources` for one container and drags in oci-spec and nix for that.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The directory (below each controller root) that holds every tenant cgroup.
pub const PARENT: &str = "m8trx";

/// Failures talking to cgroupfs; each names the file and what to check.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A cgroupfs file or directory operation failed.
    #[error("cgroup {action} {path}: {source}")]
    Io {
        /// What hostd was doing.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The kernel's answer.
        source: std::io::Error,
    },
    /// The host's cgroup layout is not one hostd knows.
    #[error("cgroup layout not recognised under {0}: expected cgroup v2 (cgroup.controllers) or v1 controller directories (memory, cpu, pids)")]
    UnknownLayout(PathBuf),
    /// A required controller is absent.
    #[error("cgroup controller `{0}` is not available on this host; enable it in the kernel command line")]
    MissingController(&'static str),
    /// The cgroup still holds processes when it should be removed.
    #[error("cgroup {0} still holds processes; stop the tenant engine before removing it")]
    Busy(PathBuf),
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Which cgroup hierarchy the host mounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// One directory per controller (`/sys/fs/cgroup/memory/…`).
    V1,
    /// The unified hierarchy (`/sys/fs/cgroup/…` with `cgroup.controllers`).
    V2,
}

/// A block-device throttle, for the tenant volume's device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoLimit {
    /// Device major number.
    pub major: u32,
    /// Device minor number.
    pub minor: u32,
    /// Read bytes per second, if limited.
    pub read_bps: Option<u64>,
    /// Write bytes per second, if limited.
    pub write_bps: Option<u64>,
}

/// The limits hostd puts on a whole tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// CPU cores in aggregate (0.5 = half a core).
    pub cpu: f64,
    /// Memory ceiling in bytes; swap is not allowed on top of it.
    pub memory: u64,
    /// Maximum processes and threads.
    pub pids: u32,
    /// Optional throttles on block devices.
    pub io: Vec<IoLimit>,
}

/// The period hostd uses for CFS quotas, in microseconds (the kernel default).
pub const CPU_PERIOD_US: u64 = 100_000;

fn cpu_quota_us(cpu: f64) -> u64 {
    ((cpu * CPU_PERIOD_US as f64).round() as u64).max(1000)
}

/// The mounted cgroup filesystem hostd manages tenants in.
#[derive(Debug, Clone)]
pub struct CgroupFs {
    root: PathBuf,
    version: Version,
}

impl CgroupFs {
    /// Detects the layout mounted at `/sys/fs/cgroup`.
    pub fn detect() -> Result<Self, CgroupError> {
        Self::detect_at("/sys/fs/cgroup")
    }

    /// Detects the layout under `root` (a fixture tree in tests).
    pub fn detect_at(root: impl Into<PathBuf>) -> Result<Self, CgroupError> {
        let root = root.into();
        let version = if root.join("cgroup.controllers").is_file() {
            Version::V2
        } else if root.join("memory").is_dir() && root.join("pids").is_dir() {
            Version::V1
        } else {
            return Err(CgroupError::UnknownLayout(root));
        };
        Ok(Self { root, version })
    }

    /// The detected version.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The cgroup of one tenant (not created until [`TenantCgroup::apply`]).
    pub fn tenant(&self, name: &str) -> TenantCgroup {
        TenantCgroup {
            fs: self.clone(),
            rel: PathBuf::from(PARENT).join(name),
        }
    }

    fn v1_dir(&self, controller: &str, rel: &Path) -> PathBuf {
        self.root.join(controller).join(rel)
    }
}

/// One tenant's cgroup: what dockerd gets as `--cgroup-parent` and what the limits live on.
#[derive(Debug, Clone)]
pub struct TenantCgroup {
    fs: CgroupFs,
    rel: PathBuf,
}

/// v1 controllers hostd uses, and whether the tenant cannot work without them.
const V1_CONTROLLERS: [(&str, bool); 4] = [
    ("memory", true),
    ("cpu", true),
    ("pids", true),
    ("blkio", false),
];
/// v2 controllers hostd delegates to the tenant subtree.
const V2_CONTROLLERS: [&str; 4] = ["cpu", "memory", "pids", "io"];

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    // cgroupfs files exist once the directory exists; never create a plain file by mistake.
    let mut f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io("open", path))?;
    f.write_all(value.as_bytes()).map_err(io("write", path))
}

fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(io("read", path))
}

impl TenantCgroup {
    /// The value for dockerd's `--cgroup-parent` (cgroupfs driver form).
    pub fn docker_parent(&self) -> String {
        format!("/{}", self.rel.display())
    }

    /// Directories making up this cgroup: one per controller on v1, one on v2.
    pub fn dirs(&self) -> Vec<PathBuf> {
        match self.fs.version {
            Version::V2 => vec![self.fs.root.join(&self.rel)],
            Version::V1 => V1_CONTROLLERS
                .iter()
                .map(|(c, _)| self.fs.v1_dir(c, &self.rel))
                .filter(|d| d.parent().and_then(Path::parent).is_some_and(Path::is_dir))
                .collect(),
        }
    }

    /// Whether the cgroup exists (any of its directories).
    pub fn exists(&self) -> bool {
        self.dirs().iter().any(|d| d.is_dir())
    }

    /// Creates the cgroup if needed and writes every limit; idempotent.
    pub fn apply(&self, limits: &Limits) -> Result<(), CgroupError> {
        match self.fs.version {
            Version::V1 => self.apply_v1(limits),
            Version::V2 => self.apply_v2(limits),
        }
    }

    fn apply_v1(&self, l: &Limits) -> Result<(), CgroupError> {
        for (controller, required) in V1_CONTROLLERS {
            let croot = self.fs.root.join(controller);
            if !croot.is_dir() {
                if required {
                    return Err(CgroupError::MissingController(controller));
                }
                continue;
            }
            let dir = self.fs.v1_dir(controller, &self.rel);
            std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        }
        let mem = self.fs.v1_dir("memory", &self.rel);
        // Lower memsw first is refused by the kernel when it would fall below the memory
        // limit, so order the writes by direction.
        let memsw = mem.join("memory.memsw.limit_in_bytes");
        let limit = l.memory.to_string();
        if memsw.exists() {
            let current: u64 = read(&memsw)?.parse().unwrap_or(u64::MAX);
            if l.memory < current {
                write(&mem.join("memory.limit_in_bytes"), &limit)?;
                write(&memsw, &limit)?;
            } else {
                write(&memsw, &limit)?;
                write(&mem.join("memory.limit_in_bytes"), &limit)?;
            }
        } else {
            write(&mem.join("memory.limit_in_bytes"), &limit)?;
        }
        let cpu = self.fs.v1_dir("cpu", &self.rel);
        write(&cpu.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
        write(
            &cpu.join("cpu.cfs_quota_us"),
            &cpu_quota_us(l.cpu).to_string(),
        )?;
        write(
            &self.fs.v1_dir("pids", &self.rel).join("pids.max"),
            &l.pids.to_string(),
        )?;
        if !l.io.is_empty() {
            let blkio = self.fs.v1_dir("blkio", &self.rel);
            if !blkio.is_dir() {
                return Err(CgroupError::MissingController("blkio"));
            }
            for d in &l.io {
                if let Some(r) = d.read_bps {
                    write(
                        &blkio.join("blkio.throttle.read_bps_device"),
                        &format!("{}:{} {r}", d.major, d.minor),
                    )?;
                }
                if let Some(w) = d.write_bps {
                    write(
                        &blkio.join("blkio.throttle.write_bps_device"),
                        &format!("{}:{} {w}", d.major, d.minor),
                    )?;
                }
            }
        }
        Ok(())
    }

    fn apply_v2(&self, l: &Limits) -> Result<(), CgroupError> {
        let available = read(&self.fs.root.join("cgroup.controllers"))?;
        let available: Vec<&str> = available.split_whitespace().collect();
        for required in ["cpu", "memory", "pids"] {
            if !available.contains(&required) {
                return Err(CgroupError::MissingController(required));
            }
        }
        let enable: Vec<String> = V2_CONTROLLERS
            .iter()
            .filter(|c| available.contains(c))
            .map(|c| format!("+{c}"))
            .collect();
        let enable = enable.join(" ");
        // Delegate controllers down every level so that limits apply at the tenant and
        // dockerd's per-container children can be limited too.
        let mut dir = self.fs.root.clone();
        for part in self.rel.components() {
            write(&dir.join("cgroup.subtree_control"), &enable)?;
            dir = dir.join(part);
            if !dir.is_dir() {
                std::fs::create_dir(&dir).map_err(io("create", &dir))?;
            }
        }
        write(&dir.join("memory.max"), &l.memory.to_string())?;
        if dir.join("memory.swap.max").exists() {
            write(&dir.join("memory.swap.max"), "0")?;
        }
        write(
            &dir.join("cpu.max"),
            &format!("{} {CPU_PERIOD_US}", cpu_quota_us(l.cpu)),
        )?;
        write(&dir.join("pids.max"), &l.pids.to_string())?;
        if !l.io.is_empty() {
            if !available.contains(&"io") {
                return Err(CgroupError::MissingController("io"));
            }
            for d in &l.io {
                let mut line = format!("{}:{}", d.major, d.minor);
                if let Some(r) = d.read_bps {
                    line.push_str(&format!(" rbps={r}"));
                }
                if let Some(w) = d.write_bps {
                    line.push_str(&format!(" wbps={w}"));
                }
                write(&dir.join("io.max"), &line)?;
            }
        }
        // dockerd's container cgroups go below; give them the same controllers.
        write(&dir.join("cgroup.subtree_control"), &enable)?;
        Ok(())
    }

    /// Processes currently charged to the tenant (all of its containers and children).
    pub fn pids_current(&self) -> Result<u64, CgroupError> {
        let path = match self.fs.version {
            Version::V1 => self.fs.v1_dir("pids", &self.rel).join("pids.current"),
            Version::V2 => self.fs.root.join(&self.rel).join("pids.current"),
        };
        read(&path)?.parse().map_err(|e| CgroupError::Io {
            action: "parse",
            path,
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })
    }

    /// Moves a process into the tenant cgroup (every controller on v1).
    pub fn add_process(&self, pid: u32) -> Result<(), CgroupError> {
        for dir in self.dirs() {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// How many processes the kernel OOM-killed in the tenant, its containers included.
    /// v2's `memory.events` already counts the whole subtree; v1 counts a kill only in the
    /// victim's own cgroup (a container's, below the tenant's), so v1 sums the subtree.
    pub fn oom_kills(&self) -> Result<u64, CgroupError> {
        let count = |path: &Path| -> Result<u64, CgroupError> {
            Ok(read(path)?
                .lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0))
        };
        match self.fs.version {
            Version::V2 => count(&self.fs.root.join(&self.rel).join("memory.events")),
            Version::V1 => {
                let mut total = 0;
                let mut dirs = vec![self.fs.v1_dir("memory", &self.rel)];
                while let Some(dir) = dirs.pop() {
                    total += count(&dir.join("memory.oom_control"))?;
                    let entries = std::fs::read_dir(&dir).map_err(io("list", &dir))?;
                    for entry in entries.flatten() {
                        if entry.file_type().is_ok_and(|t| t.is_dir()) {
                            dirs.push(entry.path());
                        }
                    }
                }
                Ok(total)
            }
        }
    }

    /// Removes the cgroup (children first); refuses while processes remain.
    pub fn remove(&self) -> Result<(), CgroupError> {
        for dir in self.dirs() {
            if !dir.is_dir() {
                continue;
            }
            remove_tree(&dir)?;
        }
        Ok(())
    }
}

fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    let entries = std::fs::read_dir(dir).map_err(io("list", dir))?;
    for e in entries {
        let e = e.map_err(io("list", dir))?;
        if e.file_type().map_err(io("stat", &e.path()))?.is_dir() {
            remove_tree(&e.path())?;
        }
    }
    let procs = dir.join("cgroup.procs");
    if procs.exists() && !read(&procs)?.is_empty() {
        return Err(CgroupError::Busy(dir.to_path_buf()));
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CgroupError::Io {
            action: "remove",
            path: dir.to_path_buf(),
            source: e,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a cgroup v2 tree the way the kernel shows it on Ubuntu 22.04: interface files
    /// exist as soon as a directory exists (the fixture pre-populates them, as mkdir would).
    fn v2_fixture(root: &Path, tenant: &str) {
        let files_root = [
            "cgroup.controllers",
            "cgroup.subtree_control",
            "cgroup.procs",
        ];
        let files_child = [
            "cgroup.controllers",
            "cgroup.subtree_control",
            "cgroup.procs",
            "cgroup.events",
            "memory.max",
            "memory.swap.max",
            "memory.current",
            "memory.events",
            "cpu.max",
            "cpu.weight",
            "pids.max",
            "pids.current",
            "io.max",
        ];
        std::fs::create_dir_all(root).unwrap();
        for f in files_root {
            std::fs::write(root.join(f), "").unwrap();
        }
        std::fs::write(
            root.join("cgroup.controllers"),
            "cpuset cpu io memory hugetlb pids rdma misc\n",
        )
        .unwrap();
        for dir in [root.join(PARENT), root.join(PARENT).join(tenant)] {
            std::fs::create_dir_all(&dir).unwrap();
            for f in files_child {
                std::fs::write(dir.join(f), "").unwrap();
            }
            std::fs::write(dir.join("pids.current"), "0\n").unwrap();
            std::fs::write(
                dir.join("memory.events"),
                "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
            )
            .unwrap();
        }
    }

    fn limits() -> Limits {
        Limits {
            cpu: 0.5,
            memory: 256 << 20,
            pids: 200,
            io: vec![IoLimit {
                major: 7,
                minor: 3,
                read_bps: Some(50 << 20),
                write_bps: Some(20 << 20),
            }],
        }
    }

    #[test]
    fn v2_layout_gets_delegation_and_limits() {
        let tmp = tempdir();
        let root = tmp.join("cgroup");
        v2_fixture(&root, "acme");
        let fs = CgroupFs::detect_at(&root).unwrap();
        assert_eq!(fs.version(), Version::V2);
        let cg = fs.tenant("acme");
        assert_eq!(cg.docker_parent(), "/m8trx/acme");
        cg.apply(&limits()).unwrap();
        let r = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
        assert_eq!(r("cgroup.subtree_control"), "+cpu +memory +pids +io");
        assert_eq!(r("m8trx/cgroup.subtree_control"), "+cpu +memory +pids +io");
        assert_eq!(
            r("m8trx/acme/cgroup.subtree_control"),
            "+cpu +memory +pids +io"
        );
        assert_eq!(r("m8trx/acme/memory.max"), (256u64 << 20).to_string());
        assert_eq!(r("m8trx/acme/memory.swap.max"), "0");
        assert_eq!(r("m8trx/acme/cpu.max"), "50000 100000");
        assert_eq!(r("m8trx/acme/pids.max"), "200");
        assert_eq!(
            r("m8trx/acme/io.max"),
            format!("7:3 rbps={} wbps={}", 50u64 << 20, 20u64 << 20)
        );
        assert_eq!(cg.oom_kills().unwrap(), 1);
        assert_eq!(cg.pids_current().unwrap(), 0);
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn v2_without_memory_controller_is_a_clear_error() {
        let tmp = tempdir();
        let root = tmp.join("cgroup");
        v2_fixture(&root, "acme");
        std::fs::write(root.join("cgroup.controllers"), "cpu io pids\n").unwrap();
        let err = CgroupFs::detect_at(&root)
            .unwrap()
            .tenant("acme")
            .apply(&limits())
            .unwrap_err();
        assert!(
            err.to_string().contains("`memory` is not available"),
            "{err}"
        );
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn v1_oom_kills_count_the_containers_below_the_tenant() {
        let tmp = tempdir();
        let root = tmp.join("cgroup");
        for c in ["cpu", "pids", "blkio"] {
            std::fs::create_dir_all(root.join(c)).unwrap();
        }
        let tenant = root.join("memory").join(PARENT).join("acme");
        let container = tenant.join("0123abcd");
        std::fs::create_dir_all(&container).unwrap();
        let oom = |n: u32| format!("oom_kill_disable 0\nunder_oom 0\noom_kill {n}\n");
        std::fs::write(tenant.join("memory.oom_control"), oom(0)).unwrap();
        std::fs::write(container.join("memory.oom_control"), oom(2)).unwrap();
        let fs = CgroupFs::detect_at(&root).unwrap();
        assert_eq!(fs.version(), Version::V1);
        assert_eq!(fs.tenant("acme").oom_kills().unwrap(), 2);
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn unknown_layout_is_refused() {
        let tmp = tempdir();
        assert!(matches!(
            CgroupFs::detect_at(&tmp),
            Err(CgroupError::UnknownLayout(_))
        ));
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn cpu_quota_rounds_and_has_a_floor() {
        assert_eq!(cpu_quota_us(1.0), 100_000);
        assert_eq!(cpu_quota_us(2.5), 250_000);
        assert_eq!(cpu_quota_us(0.001), 1000);
    }

    fn tempdir() -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "m8trx-cgroup-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        p
    }
}
