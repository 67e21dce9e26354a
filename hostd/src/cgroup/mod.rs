//! Aggregate limits of a tenant: one cgroup per tenant that holds the tenant's dockerd and,
//! below it, every container of the tenant, so the engine and the workload are both charged
//! to the tenant and bounded by it.
//!
//! ```text
//! tenant envelope      limits + the engine allowance; cpu and io limits apply here
//! ├── engine           the tenant's dockerd
//! └── workload         dockerd's --cgroup-parent: the customer's own limits
//!     └── <container>  one per container, made by dockerd
//! ```
//!
//! Three managers, one per way the host runs cgroups (as youki has one per version):
//! - [`v1`]: cgroupfs v1 (this development machine): `/sys/fs/cgroup/<controller>/m8trx/<name>`;
//! - [`v2`]: cgroupfs v2 without systemd: `/sys/fs/cgroup/m8trx/<name>`;
//! - [`systemd`]: cgroup v2 under systemd (production): slices `m8trx-<name>.slice` and
//!   `m8trx-<name>-workload.slice` below `m8trx.slice`, the engine a transient service
//!   `m8trx-engine-<name>.service`, limits set as unit properties. systemd is the only writer
//!   of its tree; dockerd uses its systemd cgroup driver.
//!
//! Own code rather than youki's `libcgroups`: we manage a tenant envelope that dockerd fills,
//! never containers, and we need a root we can point at a fixture tree to test the layouts.

pub use stats::Stats;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

mod freezer;
mod stats;
pub mod systemd;
mod v1;
mod v2;

/// The directory (below each controller root) that holds every tenant cgroup (cgroupfs).
pub const PARENT: &str = "m8trx";
/// The child of a tenant cgroup that holds its dockerd.
pub const ENGINE: &str = "engine";
/// The child of a tenant cgroup that dockerd puts containers below.
pub const WORKLOAD: &str = "workload";
/// Memory a tenant's envelope has on top of its workload limit, for its dockerd (~75 MiB
/// resident) and the engine's transient work (image pulls, healthcheck execs).
pub const ENGINE_MEMORY_ALLOWANCE: u64 = 256 << 20;
/// Processes and threads the envelope has on top of the workload's, for its dockerd.
pub const ENGINE_PIDS_ALLOWANCE: u32 = 512;

/// Failures talking to cgroupfs or systemd; each names the file or unit and what to check.
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
    /// systemctl or systemd-run refused.
    #[error("systemd: `{command}` failed: {message}; see `journalctl -u {unit}`")]
    Systemd {
        /// What was run.
        command: String,
        /// The unit concerned.
        unit: String,
        /// Its stderr, or why it could not run.
        message: String,
    },
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

/// Who creates and writes the tenant cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// hostd writes cgroupfs itself (no systemd as PID 1).
    Cgroupfs,
    /// systemd owns the tree; hostd asks it for slices, units and properties.
    Systemd,
}

impl Driver {
    /// dockerd's `native.cgroupdriver` for this driver.
    pub fn docker_name(self) -> &'static str {
        match self {
            Driver::Cgroupfs => "cgroupfs",
            Driver::Systemd => "systemd",
        }
    }
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

/// The limits hostd puts on a whole tenant (its workload; the envelope adds the engine's).
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// CPU cores in aggregate (0.5 = half a core), engine included.
    pub cpu: f64,
    /// Memory ceiling of the workload in bytes; swap is not allowed on top of it.
    pub memory: u64,
    /// Maximum processes and threads of the workload.
    pub pids: u32,
    /// Optional throttles on block devices (engine and workload together).
    pub io: Vec<IoLimit>,
}

impl Limits {
    /// The envelope's memory: the workload's plus the engine allowance.
    pub fn envelope_memory(&self) -> u64 {
        self.memory.saturating_add(ENGINE_MEMORY_ALLOWANCE)
    }

    /// The envelope's process limit: the workload's plus the engine allowance.
    pub fn envelope_pids(&self) -> u32 {
        self.pids.saturating_add(ENGINE_PIDS_ALLOWANCE)
    }
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
    driver: Driver,
}

impl CgroupFs {
    /// Detects the layout mounted at `/sys/fs/cgroup` and whether systemd runs the host
    /// (`/run/systemd/system`, as `sd_booted()` checks); cgroup v1 is always cgroupfs.
    pub fn detect() -> Result<Self, CgroupError> {
        let mut fs = Self::detect_at("/sys/fs/cgroup")?;
        if fs.version == Version::V2 && Path::new("/run/systemd/system").is_dir() {
            fs.driver = Driver::Systemd;
        }
        Ok(fs)
    }

    /// Detects the layout under `root` (a fixture tree in tests), written as cgroupfs.
    pub fn detect_at(root: impl Into<PathBuf>) -> Result<Self, CgroupError> {
        let root = root.into();
        let version = if root.join("cgroup.controllers").is_file() {
            Version::V2
        } else if root.join("memory").is_dir() && root.join("pids").is_dir() {
            Version::V1
        } else {
            return Err(CgroupError::UnknownLayout(root));
        };
        Ok(Self {
            root,
            version,
            driver: Driver::Cgroupfs,
        })
    }

    /// A layout given outright (unit tests of what hostd asks systemd and dockerd for).
    pub fn with_layout(root: impl Into<PathBuf>, version: Version, driver: Driver) -> Self {
        Self {
            root: root.into(),
            version,
            driver,
        }
    }

    /// The detected version.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Who writes the tree.
    pub fn driver(&self) -> Driver {
        self.driver
    }

    /// The cgroup of one tenant (not created until [`TenantCgroup::apply`]).
    pub fn tenant(&self, name: &str) -> TenantCgroup {
        TenantCgroup {
            fs: self.clone(),
            name: name.to_owned(),
        }
    }

    fn v1_dir(&self, controller: &str, rel: &Path) -> PathBuf {
        self.root.join(controller).join(rel)
    }
}

/// One tenant's cgroup: the envelope its engine and containers are charged to.
#[derive(Debug, Clone)]
pub struct TenantCgroup {
    fs: CgroupFs,
    name: String,
}

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
    /// The tenant's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The driver dockerd must use (`--exec-opt native.cgroupdriver=…`).
    pub fn driver(&self) -> Driver {
        self.fs.driver
    }

    /// The value for dockerd's `--cgroup-parent`: the workload cgroup, in the driver's form.
    pub fn docker_parent(&self) -> String {
        match self.fs.driver {
            Driver::Cgroupfs => format!("/{PARENT}/{}/{WORKLOAD}", self.name),
            Driver::Systemd => systemd::workload_slice(&self.name),
        }
    }

    /// The envelope's path relative to the hierarchy root.
    fn rel(&self) -> PathBuf {
        match self.fs.driver {
            Driver::Cgroupfs => PathBuf::from(PARENT).join(&self.name),
            Driver::Systemd => systemd::envelope_rel(&self.name),
        }
    }

    /// The envelope's directories: one per controller on v1, one on v2.
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.dirs_of(&self.rel())
    }

    fn dirs_of(&self, rel: &Path) -> Vec<PathBuf> {
        match self.fs.version {
            Version::V2 => vec![self.fs.root.join(rel)],
            Version::V1 => v1::CONTROLLERS
                .iter()
                .map(|(c, _)| self.fs.v1_dir(c, rel))
                .filter(|d| d.parent().and_then(Path::parent).is_some_and(Path::is_dir))
                .collect(),
        }
    }

    /// The workload cgroup's path relative to the hierarchy root.
    fn workload_rel(&self) -> PathBuf {
        match self.fs.driver {
            Driver::Cgroupfs => self.rel().join(WORKLOAD),
            Driver::Systemd => self.rel().join(systemd::workload_slice(&self.name)),
        }
    }

    /// The workload cgroup's directories (where [`TenantCgroup::add_process`] puts a process).
    pub fn workload_dirs(&self) -> Vec<PathBuf> {
        self.dirs_of(&self.workload_rel())
    }

    /// The engine cgroup's path relative to the hierarchy root (as `/proc/PID/cgroup`
    /// shows it, without the leading `/`).
    pub fn engine_rel(&self) -> PathBuf {
        match self.fs.driver {
            Driver::Cgroupfs => self.rel().join(ENGINE),
            Driver::Systemd => self.rel().join(systemd::engine_unit(&self.name)),
        }
    }

    /// The engine cgroup's directories: dockerd's own charge.
    pub fn engine_dirs(&self) -> Vec<PathBuf> {
        self.dirs_of(&self.engine_rel())
    }

    /// Whether the cgroup exists (any of its directories).
    pub fn exists(&self) -> bool {
        self.dirs().iter().any(|d| d.is_dir())
    }

    /// Creates the envelope, engine and workload cgroups if needed and writes every limit;
    /// idempotent. Under systemd this runs `systemctl`: call it off the async runtime.
    pub fn apply(&self, limits: &Limits) -> Result<(), CgroupError> {
        match (self.fs.driver, self.fs.version) {
            (Driver::Systemd, _) => systemd::apply(&self.name, limits),
            (Driver::Cgroupfs, Version::V1) => v1::apply(&self.fs, &self.rel(), limits),
            (Driver::Cgroupfs, Version::V2) => v2::apply(&self.fs.root, &self.rel(), limits),
        }
    }

    /// Processes currently charged to the tenant (its engine, containers and children).
    pub fn pids_current(&self) -> Result<u64, CgroupError> {
        let path = match self.fs.version {
            Version::V1 => self.fs.v1_dir("pids", &self.rel()).join("pids.current"),
            Version::V2 => self.fs.root.join(self.rel()).join("pids.current"),
        };
        parse_u64(&path)
    }

    /// Memory currently charged to the tenant, engine included (v2 `memory.current`, v1
    /// `memory.usage_in_bytes`).
    pub fn memory_current(&self) -> Result<u64, CgroupError> {
        let path = match self.fs.version {
            Version::V1 => self
                .fs
                .v1_dir("memory", &self.rel())
                .join("memory.usage_in_bytes"),
            Version::V2 => self.fs.root.join(self.rel()).join("memory.current"),
        };
        parse_u64(&path)
    }

    /// Asks the kernel to drop the tenant's reclaimable memory (the page cache of its volume
    /// and images) once nothing runs in it: what a sleeping tenant should cost the host.
    /// v2 `memory.reclaim` (Linux 5.19 and later), v1 `memory.force_empty` on the envelope
    /// and its two children. Blocking: call it off the async runtime.
    pub fn reclaim(&self) -> Result<(), CgroupError> {
        match self.fs.version {
            Version::V2 => {
                let dir = self.fs.root.join(self.rel());
                let current = parse_u64(&dir.join("memory.current"))?;
                match write(&dir.join("memory.reclaim"), &current.to_string()) {
                    // EAGAIN: less than asked could be reclaimed, which is fine.
                    Err(CgroupError::Io { source, .. })
                        if source.raw_os_error() == Some(nix::libc::EAGAIN) =>
                    {
                        Ok(())
                    }
                    other => other,
                }
            }
            Version::V1 => {
                for rel in [self.rel().join(ENGINE), self.workload_rel(), self.rel()] {
                    write(
                        &self.fs.v1_dir("memory", &rel).join("memory.force_empty"),
                        "0",
                    )?;
                }
                Ok(())
            }
        }
    }

    /// Moves a process into the tenant's workload cgroup (every controller on v1), as if it
    /// were one of the tenant's containers.
    pub fn add_process(&self, pid: u32) -> Result<(), CgroupError> {
        for dir in self.workload_dirs() {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// How many processes the kernel OOM-killed in the tenant, its containers included.
    /// v2's `memory.events` already counts the whole subtree; v1 counts a kill only in the
    /// victim's own cgroup (a container's, below the tenant's), so v1 sums the subtree.
    pub fn oom_kills(&self) -> Result<u64, CgroupError> {
        match self.fs.version {
            Version::V2 => oom_kill_count(&self.fs.root.join(self.rel()).join("memory.events")),
            Version::V1 => v1::oom_kills(&self.fs.v1_dir("memory", &self.rel())),
        }
    }

    /// Removes the cgroup (children first); refuses while processes remain. Under systemd
    /// this stops the tenant's slices and drops their properties (runs `systemctl`).
    pub fn remove(&self) -> Result<(), CgroupError> {
        if self.fs.driver == Driver::Systemd {
            systemd::remove(&self.name)?;
        }
        for dir in self.dirs() {
            if !dir.is_dir() {
                continue;
            }
            remove_tree(&dir)?;
        }
        Ok(())
    }
}

fn parse_u64(path: &Path) -> Result<u64, CgroupError> {
    read(path)?.parse().map_err(|e| CgroupError::Io {
        action: "parse",
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })
}

fn oom_kill_count(path: &Path) -> Result<u64, CgroupError> {
    Ok(read(path)?
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0))
}

fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("list", dir)(e)),
    };
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
pub(crate) mod fixture {
    use std::path::{Path, PathBuf};

    /// A fresh scratch directory for one test.
    pub fn tempdir() -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "m8trx-cgroup-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        p
    }

    /// Reads a fixture file.
    pub fn r(root: &Path, p: &str) -> String {
        std::fs::read_to_string(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_layout_is_refused() {
        let tmp = fixture::tempdir();
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

    #[test]
    fn docker_parent_is_the_workload_in_each_drivers_form() {
        let fs = CgroupFs::with_layout("/sys/fs/cgroup", Version::V2, Driver::Cgroupfs);
        let t = fs.tenant("acme");
        assert_eq!(t.docker_parent(), "/m8trx/acme/workload");
        assert_eq!(t.dirs(), vec![PathBuf::from("/sys/fs/cgroup/m8trx/acme")]);
        assert_eq!(
            t.engine_dirs(),
            vec![PathBuf::from("/sys/fs/cgroup/m8trx/acme/engine")]
        );
        let fs = CgroupFs::with_layout("/sys/fs/cgroup", Version::V2, Driver::Systemd);
        let t = fs.tenant("my-app");
        assert_eq!(t.docker_parent(), "m8trx-my\\x2dapp-workload.slice");
        assert_eq!(
            t.dirs(),
            vec![PathBuf::from(
                "/sys/fs/cgroup/m8trx.slice/m8trx-my\\x2dapp.slice"
            )]
        );
        assert_eq!(
            t.workload_dirs(),
            vec![PathBuf::from(
                "/sys/fs/cgroup/m8trx.slice/m8trx-my\\x2dapp.slice/m8trx-my\\x2dapp-workload.slice"
            )]
        );
        assert_eq!(
            t.engine_dirs(),
            vec![PathBuf::from(
                "/sys/fs/cgroup/m8trx.slice/m8trx-my\\x2dapp.slice/m8trx-engine-my\\x2dapp.service"
            )]
        );
    }

    #[test]
    fn envelope_adds_the_engine_allowance() {
        let l = Limits {
            cpu: 1.0,
            memory: 128 << 20,
            pids: 100,
            io: vec![],
        };
        assert_eq!(l.envelope_memory(), (128 << 20) + ENGINE_MEMORY_ALLOWANCE);
        assert_eq!(l.envelope_pids(), 100 + ENGINE_PIDS_ALLOWANCE);
    }
}
