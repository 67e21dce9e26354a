//! Removing every trace of a tenant engine, whether it answers or not: containers,
//! process, containerd namespaces, bridges, mounts, exec root and (with wipe) data root.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{Engine, EngineConfig, EngineError};

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
        engine.stop(Duration::from_secs(15)).await?;
    }
    // Tasks an engine left behind (live-restore keeps them when dockerd dies).
    let ns = cfg.containerd_namespace();
    for namespace in [ns.clone(), format!("{ns}-plugins")] {
        let ctr = Ctr {
            address: &cfg.containerd,
            namespace: &namespace,
        };
        for task in ctr.words(&["tasks", "ls", "-q"]).await {
            ctr.words(&["tasks", "kill", "--signal", "SIGKILL", &task])
                .await;
            for _ in 0..50 {
                if ctr.words(&["tasks", "rm", &task]).await.is_empty()
                    && !ctr.words(&["tasks", "ls", "-q"]).await.contains(&task)
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        for container in ctr.words(&["containers", "ls", "-q"]).await {
            ctr.words(&["containers", "rm", &container]).await;
        }
        let _ = tokio::process::Command::new("ctr")
            .arg("--address")
            .arg(&cfg.containerd)
            .args(["namespaces", "remove", &namespace])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
    }
    // Bridges a dead engine could not remove: any interface holding an address of the
    // tenant's subnet belongs to the tenant.
    let subnet = cfg.subnet;
    let links = tokio::task::spawn_blocking(move || links_in_subnet(subnet))
        .await
        .unwrap_or_default();
    for link in links {
        let _ = tokio::process::Command::new("ip")
            .args(["link", "delete", &link])
            .stderr(Stdio::null())
            .status()
            .await;
    }
    let roots = vec![cfg.exec_root(), cfg.data_root.clone()];
    for root in &roots {
        unmount_below(root).await;
    }
    let (exec_root, data_root) = (cfg.exec_root(), cfg.data_root.clone());
    let io_err = |action: &'static str, path: &Path| {
        let (tenant, path) = (cfg.name.to_string(), path.to_path_buf());
        move |source| EngineError::Io {
            tenant,
            action,
            path,
            source,
        }
    };
    // Removing an engine's data root walks a whole image store: off the runtime.
    let remove_tree = |dir: PathBuf| {
        tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        })
    };
    let joined = |e: tokio::task::JoinError| std::io::Error::other(e.to_string());
    remove_tree(exec_root.clone())
        .await
        .map_err(joined)
        .and_then(|r| r)
        .map_err(io_err("remove", &exec_root))?;
    if wipe_data {
        remove_tree(data_root.clone())
            .await
            .map_err(joined)
            .and_then(|r| r)
            .map_err(io_err("remove", &data_root))?;
    }
    Ok(())
}

/// `ctr` against one containerd namespace.
struct Ctr<'a> {
    address: &'a Path,
    namespace: &'a str,
}

impl Ctr<'_> {
    /// Runs `ctr` with `args`; the words of its output (nothing when it fails).
    async fn words(&self, args: &[&str]) -> Vec<String> {
        let out = tokio::process::Command::new("ctr")
            .arg("--address")
            .arg(self.address)
            .args(["--namespace", self.namespace])
            .args(args)
            .stderr(Stdio::null())
            .output()
            .await;
        out.map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
    }
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

async fn unmount_below(root: &Path) {
    for m in mounts_below(root) {
        let ok = tokio::process::Command::new("umount")
            .arg(&m)
            .stderr(Stdio::null())
            .status()
            .await
            .is_ok_and(|s| s.success());
        if !ok {
            // Busy (a process still holds it): detach now, the kernel frees it when released.
            let _ = tokio::process::Command::new("umount")
                .arg("--lazy")
                .arg(&m)
                .stderr(Stdio::null())
                .status()
                .await;
        }
    }
}
