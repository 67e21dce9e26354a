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

use bollard::Docker;
use m8trx_spec::CustomerName;

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
    /// The tenant cgroup, in dockerd's `--cgroup-parent` form (`/m8trx/<name>`).
    pub cgroup_parent: String,
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
            format!("--cgroup-parent={}", self.cgroup_parent),
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
        use std::os::unix::process::CommandExt;
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
        let log2 = log.try_clone().map_err(cfg.io_err("open log", &cfg.log))?;
        let child = Command::new(&cfg.dockerd)
            .args(cfg.args())
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
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline);
        let ours = cmdline.contains("dockerd")
            && cmdline.contains(&format!("--exec-root={}", cfg.exec_root().display()));
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

    /// A client for the engine, if it answers now.
    pub async fn connect(&self) -> Option<Docker> {
        let sock = self.cfg.socket();
        let d =
            Docker::connect_with_unix(sock.to_str()?, 120, bollard::API_DEFAULT_VERSION).ok()?;
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
    pub fn stop(mut self, grace: Duration) -> Result<(), EngineError> {
        signal(self.pid, "TERM");
        let deadline = Instant::now() + grace;
        while self.is_alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if self.is_alive() {
            signal(self.pid, "KILL");
            std::thread::sleep(Duration::from_millis(200));
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
        for p in [self.cfg.pidfile(), self.cfg.socket()] {
            let _ = std::fs::remove_file(p);
        }
        Ok(())
    }
}

/// Removes every trace of a tenant engine: its containers (through the engine when it
/// answers, through containerd when it does not), the engine process, its containerd
/// namespaces, every mount below its exec and data roots, its socket and pidfile, and —
/// with `wipe_data` — its data root. Safe to repeat; used by destroy and by reconciliation.
pub async fn purge(cfg: &EngineConfig, wipe_data: bool) -> Result<(), EngineError> {
    use bollard::query_parameters::{ListContainersOptionsBuilder, RemoveContainerOptionsBuilder};
    if let Some(engine) = Engine::adopt(cfg.clone()) {
        if let Some(d) = engine.connect().await {
            let all = ListContainersOptionsBuilder::default().all(true).build();
            for c in d.list_containers(Some(all)).await.unwrap_or_default() {
                if let Some(id) = c.id {
                    let rm = RemoveContainerOptionsBuilder::default()
                        .force(true)
                        .v(true)
                        .build();
                    let _ = d.remove_container(&id, Some(rm)).await;
                }
            }
            // dockerd leaves its bridges on the host when it stops; remove its networks first.
            let nets = d
                .list_networks(None::<bollard::query_parameters::ListNetworksOptions>)
                .await;
            for n in nets.unwrap_or_default() {
                match n.name.as_deref() {
                    Some("none" | "host" | "bridge") | None => {}
                    Some(name) => {
                        let _ = d.remove_network(name).await;
                    }
                }
            }
        }
        engine.stop(Duration::from_secs(15))?;
    }
    // Tasks an engine left behind (live-restore keeps them when dockerd dies).
    let ns = cfg.containerd_namespace();
    for namespace in [ns.clone(), format!("{ns}-plugins")] {
        let ctr = |args: &[&str]| -> Vec<String> {
            let out = Command::new("ctr")
                .arg("--address")
                .arg(&cfg.containerd)
                .args(["--namespace", &namespace])
                .args(args)
                .output();
            out.map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
        };
        for task in ctr(&["tasks", "ls", "-q"]) {
            ctr(&["tasks", "kill", "--signal", "SIGKILL", &task]);
            for _ in 0..50 {
                if ctr(&["tasks", "rm", &task]).is_empty()
                    && !ctr(&["tasks", "ls", "-q"]).contains(&task)
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        for container in ctr(&["containers", "ls", "-q"]) {
            ctr(&["containers", "rm", &container]);
        }
        let _ = Command::new("ctr")
            .arg("--address")
            .arg(&cfg.containerd)
            .args(["namespaces", "remove", &namespace])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    // Bridges a dead engine could not remove: any interface holding an address of the
    // tenant's subnet belongs to the tenant.
    for link in links_in_subnet(cfg.subnet) {
        let _ = Command::new("ip")
            .args(["link", "delete", &link])
            .stderr(Stdio::null())
            .status();
    }
    let mut roots = vec![cfg.exec_root()];
    roots.push(cfg.data_root.clone());
    for root in &roots {
        unmount_below(root);
    }
    let exec_root = cfg.exec_root();
    if exec_root.exists() {
        std::fs::remove_dir_all(&exec_root).map_err(cfg.io_err("remove", &exec_root))?;
    }
    if wipe_data && cfg.data_root.exists() {
        std::fs::remove_dir_all(&cfg.data_root).map_err(cfg.io_err("remove", &cfg.data_root))?;
    }
    Ok(())
}

/// Interfaces holding an IPv4 address inside `subnet` (from `ip -4 -o addr`).
pub fn links_in_subnet(subnet: (Ipv4Addr, u8)) -> Vec<String> {
    let (net, prefix) = subnet;
    let mask = u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0);
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mut links: Vec<String> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let link = f.nth(1)?.to_owned();
            let addr: Ipv4Addr = f.nth(1)?.split('/').next()?.parse().ok()?;
            (u32::from(addr) & mask == u32::from(net) & mask && link != "lo").then_some(link)
        })
        .collect();
    links.dedup();
    links
}

/// Mount points at or below `root`, deepest first (from /proc/self/mountinfo).
pub fn mounts_below(root: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(root))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    out
}

fn unmount_below(root: &Path) {
    for m in mounts_below(root) {
        let ok = Command::new("umount")
            .arg(&m)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Busy (a process still holds it): detach now, the kernel frees it when released.
            let _ = Command::new("umount")
                .arg("--lazy")
                .arg(&m)
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn signal(pid: u32, sig: &str) {
    // The `kill` utility keeps hostd free of unsafe libc calls; the pid is ours.
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
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
            cgroup_parent: "/m8trx/acme".into(),
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
            "--cgroup-parent=/m8trx/acme",
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
