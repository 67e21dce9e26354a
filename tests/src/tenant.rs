//! A provisioned test tenant as hostd would make it (user, subordinate ids, cgroup, engine
//! configuration), with the teardown destroy must perform and a check that nothing is left.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

use bollard::query_parameters::ImportImageOptionsBuilder;
use bollard::Docker;
use futures_util::StreamExt;
use hostd::cgroup::{CgroupFs, Limits, TenantCgroup};
use hostd::engine::{self, Engine, EngineConfig};
use hostd::ids;
use hostd::network::{Firewall, HostServices, TenantNet};
use m8trx_spec::CustomerName;

use crate::env;

static ALLOCATION: Mutex<()> = Mutex::new(());

/// A tenant's host-side identity; cleaned up on drop even after a failed assertion.
pub struct Tenant {
    /// The engine configuration hostd would use.
    pub cfg: EngineConfig,
    /// The tenant's host user.
    pub user: String,
    /// First host id of its subordinate range.
    pub base: u64,
    /// Its slot, which names its firewall chains and subnet.
    pub slot: u16,
}

impl Tenant {
    /// Provisions user, id ranges and cgroup for a fresh tenant named `<prefix>-<pid>`.
    pub fn provision(prefix: &str, limits: &Limits) -> Tenant {
        let _guard = ALLOCATION.lock().unwrap_or_else(|e| e.into_inner());
        let name = CustomerName::parse(&format!("{prefix}-{}", std::process::id())).unwrap();
        let user = name.host_user();
        let subuid = std::fs::read_to_string("/etc/subuid").unwrap_or_default();
        let subgid = std::fs::read_to_string("/etc/subgid").unwrap_or_default();
        let slot = ids::free_slot(&[], &[&subuid, &subgid]).unwrap();
        let base = ids::range_base(slot);
        let cfg = EngineConfig {
            name: name.clone(),
            data_root: PathBuf::from(format!("/var/lib/m8trx-e2e/engines/{name}")),
            run_root: PathBuf::from("/run/m8trx-e2e/engines"),
            containerd: env("M8TRX_CONTAINERD_SOCKET").into(),
            cgroup: CgroupFs::detect().unwrap().tenant(name.as_str()),
            subnet: ids::subnet(slot),
            seccomp_profile: None,
            log: PathBuf::from(env("M8TRX_TEST_HOME")).join(format!("log/engine-{name}.log")),
            dockerd: "dockerd".into(),
        };
        let t = Tenant {
            cfg,
            user: user.clone(),
            base,
            slot,
        };
        ids::ensure_user(&user).unwrap();
        ids::ensure_range("/etc/subuid".as_ref(), &user, base).unwrap();
        ids::ensure_range("/etc/subgid".as_ref(), &user, base).unwrap();
        t.cgroup().apply(limits).unwrap();
        Firewall::default()
            .apply(&t.net(), &HostServices::default(), false)
            .unwrap();
        t
    }

    /// The tenant's network identity (its firewall chains and subnet).
    pub fn net(&self) -> TenantNet {
        TenantNet {
            slot: self.slot,
            subnet: self.cfg.subnet,
        }
    }

    /// The tenant's cgroup.
    pub fn cgroup(&self) -> TenantCgroup {
        CgroupFs::detect().unwrap().tenant(self.cfg.name.as_str())
    }

    /// What destroy must do; returns what is left, which must be nothing.
    pub async fn teardown(&self) -> Vec<String> {
        engine::purge(&self.cfg, true).await.unwrap();
        Firewall::default().remove(&self.net()).unwrap();
        self.cgroup().remove().unwrap();
        ids::remove_range("/etc/subuid".as_ref(), &self.user).unwrap();
        ids::remove_range("/etc/subgid".as_ref(), &self.user).unwrap();
        ids::remove_user(&self.user).unwrap();
        let mut left = leftovers(&self.cfg, &self.user);
        let chain = format!("M8T-{}-", self.slot);
        for table in ["filter", "nat"] {
            for rule in Firewall::default().rules(table).unwrap() {
                if rule.contains(&chain) {
                    left.push(format!("iptables {table}: {rule}"));
                }
            }
        }
        left
    }
}

/// Everything of the tenant still on the host.
pub fn leftovers(cfg: &EngineConfig, user: &str) -> Vec<String> {
    let mut left = Vec::new();
    for link in engine::links_in_subnet(cfg.subnet) {
        left.push(format!("interface {link} in the tenant subnet"));
    }
    for m in engine::mounts_below(&cfg.data_root)
        .into_iter()
        .chain(engine::mounts_below(&cfg.exec_root()))
    {
        left.push(format!("mount {}", m.display()));
    }
    for p in [cfg.data_root.clone(), cfg.exec_root(), cfg.socket()] {
        if p.exists() {
            left.push(format!("path {}", p.display()));
        }
    }
    let ns = Command::new("ctr")
        .args([
            "--address",
            &env("M8TRX_CONTAINERD_SOCKET"),
            "namespaces",
            "ls",
            "-q",
        ])
        .output()
        .unwrap();
    for n in String::from_utf8_lossy(&ns.stdout).split_whitespace() {
        if n.starts_with(&cfg.containerd_namespace()) {
            left.push(format!("containerd namespace {n}"));
        }
    }
    if ids::user_exists(user).unwrap() {
        left.push(format!("user {user}"));
    }
    for f in ["/etc/subuid", "/etc/subgid"] {
        if std::fs::read_to_string(f)
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with(&format!("{user}:")))
        {
            left.push(format!("{f} line"));
        }
    }
    if CgroupFs::detect()
        .unwrap()
        .tenant(cfg.name.as_str())
        .exists()
    {
        left.push("cgroup".into());
    }
    if Engine::adopt(cfg.clone()).is_some() {
        left.push("engine process".into());
    }
    left
}

impl Drop for Tenant {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The assertion failed mid-way: clean up on a runtime of its own, on a thread of
            // its own (the test's runtime is still current on this one), best effort.
            let cfg = self.cfg.clone();
            let _ = std::thread::spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    let _ = rt.block_on(engine::purge(&cfg, true));
                }
            })
            .join();
            let _ = Firewall::default().remove(&self.net());
            if let Ok(fs) = CgroupFs::detect() {
                let _ = fs.tenant(self.cfg.name.as_str()).remove();
            }
            let _ = ids::remove_range("/etc/subuid".as_ref(), &self.user);
            let _ = ids::remove_range("/etc/subgid".as_ref(), &self.user);
            let _ = ids::remove_user(&self.user);
        }
    }
}

/// Copies an image from the main test engine into a tenant engine as a tarball stream.
pub async fn load_image(from: &Docker, to: &Docker, image: &str) {
    let mut load = to.import_image_stream(
        ImportImageOptionsBuilder::default().build(),
        from.export_image(image),
        None,
    );
    while let Some(step) = load.next().await {
        step.unwrap_or_else(|e| panic!("loading {image} into the tenant engine: {e}"));
    }
}
