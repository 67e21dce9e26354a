//! One dockerd per tenant: user-namespace remapped to the tenant's host user, its data on
//! the tenant's volume, its containers inside the tenant's cgroup, its networks drawn from
//! the tenant's own subnet, and all engines sharing the host's one containerd (each in its
//! own containerd namespace, so engines never see — or clean up — each other's tasks).
//!
//! Engines run detached from hostd (own process group): restarting hostd leaves tenants
//! serving, and hostd re-adopts an engine from its pidfile.

use std::fs::OpenOptions;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use bollard::Docker;
use m8trx_spec::CustomerName;

use crate::cgroup::{systemd, Driver, TenantCgroup};

mod purge;

pub use purge::{links_in_subnet, mounts_below, purge};

/// The engine's open files limit (soft and hard), and the highest `ulimits.nofile` the
/// compose policy admits.
pub const ENGINE_NOFILE: u64 = 1 << 20;

/// The highest open files limit a container can be given on this host. Raising a hard
/// limit takes CAP_SYS_RESOURCE in the host's user namespace; a hostd (and so a containerd
/// and runc) without it — a sandboxed development machine — can grant no more than its own
/// hard limit, and a container asking for more would fail to start with runc's opaque
/// "error setting rlimit type 7".
pub fn container_nofile_ceiling() -> u64 {
    const CAP_SYS_RESOURCE: u32 = 24;
    let has_cap = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0);
    if has_cap {
        return ENGINE_NOFILE;
    }
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(ENGINE_NOFILE, |(_, hard)| hard.min(ENGINE_NOFILE))
}

/// Failures starting, adopting or stopping an engine; each names the log or file to read.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A file or directory operation failed.
    #[error("engine {tenant}: {action} {path}: {source}")]
    Io {
        /// Tenant name.
        tenant: String,
        /// What was being done.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// dockerd exited or never answered.
    #[error("engine {tenant}: dockerd {what}; see {log}")]
    NotReady {
        /// Tenant name.
        tenant: String,
        /// What happened.
        what: String,
        /// The engine's log file.
        log: PathBuf,
    },
}

/// Everything that decides how a tenant's dockerd is started.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The tenant.
    pub name: CustomerName,
    /// The engine's data root (on the tenant volume once it is mounted).
    pub data_root: PathBuf,
    /// Directory holding every engine's exec root (`/run/m8trx/engines`).
    pub run_root: PathBuf,
    /// The host containerd socket all engines share.
    pub containerd: PathBuf,
    /// The tenant's cgroup: where dockerd itself runs and, through `--cgroup-parent`, where
    /// its containers go.
    pub cgroup: TenantCgroup,
    /// The tenant's subnet; every network the engine creates is carved from it.
    pub subnet: (Ipv4Addr, u8),
    /// Default seccomp profile for the engine's containers.
    pub seccomp_profile: Option<PathBuf>,
    /// Where the engine's stdout/stderr go.
    pub log: PathBuf,
    /// The dockerd binary.
    pub dockerd: PathBuf,
}

impl EngineConfig {
    /// The engine's exec root, also holding its socket and pidfile.
    pub fn exec_root(&self) -> PathBuf {
        self.run_root.join(self.name.as_str())
    }

    /// The engine's API socket.
    pub fn socket(&self) -> PathBuf {
        self.exec_root().join("docker.sock")
    }

    /// The engine's pidfile.
    pub fn pidfile(&self) -> PathBuf {
        self.exec_root().join("dockerd.pid")
    }

    /// The containerd namespace of this engine's containers.
    pub fn containerd_namespace(&self) -> String {
        format!("m8trx-{}", self.name)
    }

    /// dockerd's command line; public so `hostd ctl status` and the tests can show it.
    pub fn args(&self) -> Vec<String> {
        let (net, prefix) = self.subnet;
        // Networks are /26s from the tenant's /24: a compose project may define up to four.
        let pool_size = prefix.max(24) + 2;
        let mut a = vec![
            format!("--userns-remap={}", self.name_user()),
            format!("--data-root={}", self.data_root.display()),
            format!("--exec-root={}", self.exec_root().display()),
            format!("--pidfile={}", self.pidfile().display()),
            format!("--host=unix://{}", self.socket().display()),
            format!("--containerd={}", self.containerd.display()),
            format!("--containerd-namespace={}", self.containerd_namespace()),
            format!(
                "--containerd-plugins-namespace={}-plugins",
                self.containerd_namespace()
            ),
            format!(
                "--exec-opt=native.cgroupdriver={}",
                self.cgroup.driver().docker_name()
            ),
            format!("--cgroup-parent={}", self.cgroup.docker_parent()),
            format!("--default-address-pool=base={net}/{prefix},size={pool_size}"),
            // hostd owns the tenant's iptables rules and NAT: engines fighting over the
            // same chains is the known failure of several dockerd on one host.
            "--iptables=false".into(),
            "--ip-masq=false".into(),
            // No default bridge, hence no `--icc=false`: that flag governs only the
            // default bridge, and dockerd refuses it without iptables. Compose networks
            // are user-defined bridges in the tenant subnet, isolated by hostd's chains.
            "--bridge=none".into(),
            "--no-new-privileges".into(),
            "--live-restore".into(),
            "--log-driver=json-file".into(),
            "--log-opt=max-size=10m".into(),
            "--log-opt=max-file=3".into(),
        ];
        if let Some(p) = &self.seccomp_profile {
            a.push(format!("--seccomp-profile={}", p.display()));
        }
        a
    }

    fn name_user(&self) -> String {
        self.name.host_user()
    }

    fn io_err<'a>(
        &'a self,
        action: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(std::io::Error) -> EngineError + 'a {
        move |source| EngineError::Io {
            tenant: self.name.to_string(),
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A running tenant engine, started by this hostd or adopted from a previous one.
#[derive(Debug)]
pub struct Engine {
    cfg: EngineConfig,
    pid: u32,
    child: Option<Child>,
}

impl Engine {
    /// Starts the tenant's dockerd detached from hostd, or adopts the one already running
    /// (so a retried step never starts two); call [`Engine::wait_ready`] next.
    pub fn start(cfg: EngineConfig) -> Result<Self, EngineError> {
        if let Some(running) = Self::adopt(cfg.clone()) {
            return Ok(running);
        }
        // A dead engine's pidfile and socket would make dockerd refuse to start.
        for stale in [cfg.pidfile(), cfg.socket()] {
            match std::fs::remove_file(&stale) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(cfg.io_err("remove stale", &stale)(e)),
            }
        }
        let exec_root = cfg.exec_root();
        std::fs::create_dir_all(&exec_root).map_err(cfg.io_err("create", &exec_root))?;
        std::fs::create_dir_all(&cfg.data_root).map_err(cfg.io_err("create", &cfg.data_root))?;
        if let Some(dir) = cfg.log.parent() {
            std::fs::create_dir_all(dir).map_err(cfg.io_err("create", dir))?;
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&cfg.log)
            .map_err(cfg.io_err("open log", &cfg.log))?;
        match cfg.cgroup.driver() {
            Driver::Systemd => Self::start_unit(cfg),
            Driver::Cgroupfs => Self::start_child(cfg, log),
        }
    }

    /// Under systemd: the engine is the transient unit `m8trx-engine-<name>.service` in the
    /// tenant's envelope slice, not a child of hostd.
    fn start_unit(cfg: EngineConfig) -> Result<Self, EngineError> {
        let name = cfg.name.as_str();
        let unit = systemd::engine_unit(name);
        systemd::reset_failed(&unit);
        let out = systemd::engine_command(name, &cfg.dockerd, &cfg.args(), &cfg.log)
            .stdin(Stdio::null())
            .output()
            .map_err(cfg.io_err("run systemd-run for", &cfg.dockerd))?;
        if !out.status.success() {
            return Err(EngineError::NotReady {
                tenant: name.to_owned(),
                what: format!(
                    "could not be started as {unit}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                log: cfg.log.clone(),
            });
        }
        let pid = systemd::main_pid(&unit).ok_or_else(|| EngineError::NotReady {
            tenant: name.to_owned(),
            what: format!("exited as soon as {unit} started"),
            log: cfg.log.clone(),
        })?;
        Ok(Self {
            cfg,
            pid,
            child: None,
        })
    }

    /// Without systemd: dockerd is hostd's child in its own process group, started by a
    /// shell that first moves itself into the tenant's engine cgroup and raises its open
    /// files limit (as the systemd unit's `LimitNOFILE` does; to its hard limit where hostd
    /// may not raise that), then execs dockerd, so nothing dockerd does is charged outside
    /// the tenant.
    fn start_child(cfg: EngineConfig, log: std::fs::File) -> Result<Self, EngineError> {
        use std::os::unix::process::CommandExt;
        let log2 = log.try_clone().map_err(cfg.io_err("open log", &cfg.log))?;
        let procs: Vec<String> = cfg
            .cgroup
            .engine_dirs()
            .iter()
            .map(|d| d.join("cgroup.procs").display().to_string())
            .collect();
        let child = Command::new("/bin/sh")
            .arg("-c")
            .arg(format!(r#"for f in $M8TRX_ENGINE_CGROUP; do echo $$ > "$f" || exit 125; done; unset M8TRX_ENGINE_CGROUP; ulimit -n {ENGINE_NOFILE} 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$0" "$@""#))
            .arg(&cfg.dockerd)
            .args(cfg.args())
            .env("M8TRX_ENGINE_CGROUP", procs.join(" "))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .spawn()
            .map_err(cfg.io_err("spawn", &cfg.dockerd))?;
        Ok(Self {
            pid: child.id(),
            child: Some(child),
            cfg,
        })
    }

    /// Finds the tenant's dockerd left running by a previous hostd, from its pidfile.
    pub fn adopt(cfg: EngineConfig) -> Option<Self> {
        let pid: u32 = std::fs::read_to_string(cfg.pidfile())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        // A dockerd in this tenant's engine cgroup. Not its command line: reading a frozen
        // process's memory (`/proc/PID/cmdline`) can block until the thaw.
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let engine = format!("/{}", cfg.cgroup.engine_rel().display());
        let ours = comm.trim() == "dockerd"
            && cgroups
                .lines()
                .any(|l| l.splitn(3, ':').nth(2) == Some(engine.as_str()));
        (ours && is_running(pid)).then_some(Self {
            cfg,
            pid,
            child: None,
        })
    }

    /// The engine's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The process handle when this hostd started the engine, so its caller can reap it.
    pub fn into_child(mut self) -> Option<Child> {
        self.child.take()
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Whether dockerd is still running (a zombie counts as dead).
    pub fn is_alive(&mut self) -> bool {
        if let Some(c) = &mut self.child {
            if !matches!(c.try_wait(), Ok(None)) {
                return false;
            }
        }
        is_running(self.pid)
    }

    /// Waits until the engine answers on its socket, or fails naming its log.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<Docker, EngineError> {
        let deadline = Instant::now() + timeout;
        let (tenant, log) = (self.cfg.name.to_string(), self.cfg.log.clone());
        let not_ready = |what: String| EngineError::NotReady {
            tenant: tenant.clone(),
            what,
            log: log.clone(),
        };
        loop {
            if !self.is_alive() {
                return Err(not_ready("exited during start".into()));
            }
            if let Some(d) = self.connect().await {
                return Ok(d);
            }
            if Instant::now() > deadline {
                return Err(not_ready(format!(
                    "did not answer within {}s",
                    timeout.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A client for the engine, if it answers now; each of its requests may take 120 s
    /// (pulls, loads, deploys).
    pub async fn connect(&self) -> Option<Docker> {
        self.connect_within(120).await
    }

    /// A client for the engine whose every request gives up after `secs` seconds.
    pub async fn connect_within(&self, secs: u64) -> Option<Docker> {
        let sock = self.cfg.socket();
        let d =
            Docker::connect_with_unix(sock.to_str()?, secs, bollard::API_DEFAULT_VERSION).ok()?;
        let d = d.negotiate_version().await.ok()?;
        d.ping().await.ok()?;
        Some(d)
    }

    /// Resident memory of the engine process itself, in bytes (the fixed cost of a tenant).
    pub fn rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb * 1024)
    }

    /// Stops dockerd: SIGTERM, then SIGKILL after `grace`. With live-restore the tenant's
    /// containers keep running; stopping them is the caller's decision.
    pub async fn stop(mut self, grace: Duration) -> Result<(), EngineError> {
        signal(self.pid, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while self.is_alive() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if self.is_alive() {
            signal(self.pid, Signal::SIGKILL);
            for _ in 0..50 {
                if !self.is_alive() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        // Reaped by is_alive's try_wait when it was our child.
        self.child.take();
        for p in [self.cfg.pidfile(), self.cfg.socket()] {
            let _ = std::fs::remove_file(p);
        }
        Ok(())
    }
}

fn signal(pid: u32, sig: Signal) {
    // The pid is the engine's (read from its pidfile, checked to be a dockerd in its cgroup).
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

fn is_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3, after the parenthesised command name, is the state; Z is a zombie.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_carries_every_isolation_flag() {
        let cfg = EngineConfig {
            name: CustomerName::parse("acme").unwrap(),
            data_root: "/srv/m8trx/tenants/acme/engine".into(),
            run_root: "/run/m8trx/engines".into(),
            containerd: "/run/containerd/containerd.sock".into(),
            cgroup: crate::cgroup::CgroupFs::with_layout(
                "/sys/fs/cgroup",
                crate::cgroup::Version::V2,
                Driver::Systemd,
            )
            .tenant("acme"),
            subnet: (Ipv4Addr::new(10, 250, 1, 0), 24),
            seccomp_profile: Some("/etc/m8trx/seccomp/tenant.json".into()),
            log: "/var/log/m8trx/engines/acme.log".into(),
            dockerd: "dockerd".into(),
        };
        let args = cfg.args();
        for want in [
            "--userns-remap=m8t-acme",
            "--data-root=/srv/m8trx/tenants/acme/engine",
            "--exec-root=/run/m8trx/engines/acme",
            "--pidfile=/run/m8trx/engines/acme/dockerd.pid",
            "--host=unix:///run/m8trx/engines/acme/docker.sock",
            "--containerd=/run/containerd/containerd.sock",
            "--containerd-namespace=m8trx-acme",
            "--exec-opt=native.cgroupdriver=systemd",
            "--cgroup-parent=m8trx-acme-workload.slice",
            "--default-address-pool=base=10.250.1.0/24,size=26",
            "--iptables=false",
            "--bridge=none",
            "--no-new-privileges",
            "--live-restore",
            "--seccomp-profile=/etc/m8trx/seccomp/tenant.json",
        ] {
            assert!(args.iter().any(|a| a == want), "missing {want} in {args:?}");
        }
    }

    #[test]
    fn liveness_reads_proc() {
        assert!(is_running(std::process::id()));
        assert!(!is_running(u32::MAX - 1));
    }
}
