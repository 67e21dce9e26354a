//! The host: its configuration, its state store, the machinery every tenant's steps share
//! (cgroup layout, engine children, secrets reader, sidecar) and the per-tenant locks.
//! What a tenant's resources are called and where they live is derived here, from its
//! record, in one place; what is done to them lives in [`crate::steps`], and the operations
//! that run steps in [`crate::executor`].

use std::path::PathBuf;
use std::time::Duration;

use crate::cgroup::CgroupFs;
use crate::engine::{Engine, EngineConfig};
use crate::error::{HostError, StepError};
use crate::ids;
use crate::locks::TenantLocks;
use crate::network::{Firewall, HostServices, TenantNet};
use crate::record::{Desired, Record};
use crate::spec::VolumeSource;

/// Seconds a read-only engine request (status, metrics) may take before it gives up.
const READ_TIMEOUT_SECS: u64 = 5;
use crate::state::Store;

/// Where containers see the tenant's broker token directory.
pub const TOKEN_MOUNT: &str = "/run/m8trx/aws";

/// Host-wide settings every tenant's steps use.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// State directory (records live in `<state>/tenants`).
    pub state_dir: PathBuf,
    /// Where tenant volumes are mounted (`<tenants_root>/<name>`, `/srv/m8trx/tenants`).
    pub tenants_root: PathBuf,
    /// Run directory for engines (`/run/m8trx/engines`).
    pub run_root: PathBuf,
    /// Engine logs (`<log_dir>/<name>.log`).
    pub log_dir: PathBuf,
    /// The shared containerd socket.
    pub containerd: PathBuf,
    /// The dockerd binary.
    pub dockerd: PathBuf,
    /// Where subordinate ids are recorded (`/etc`, a temporary dir never: dockerd reads /etc).
    pub etc: PathBuf,
    /// Where tenant seccomp and AppArmor profiles are installed (`/etc/m8trx/profiles`).
    pub profiles_dir: PathBuf,
    /// Host services tenants may reach.
    pub services: HostServices,
    /// The credential broker's admin socket; `None` on a host without a broker (containers
    /// then get no AWS credentials variables).
    pub broker_admin: Option<PathBuf>,
    /// sni-proxy's admin socket; `None` on a host without the proxy (no routes are managed).
    pub proxy_admin: Option<PathBuf>,
    /// Where tenants' broker token files live (`<dir>/<name>/token`), bind-mounted read-only.
    pub token_dir: PathBuf,
    /// Lifetime of a minted token; hostd rotates at half of it.
    pub token_ttl: Duration,
    /// Firewall target (host namespace in production).
    pub firewall: Firewall,
}

/// A tenant as `list` shows it: its record, or why its record cannot be read.
#[derive(Debug)]
pub enum Listed {
    /// A readable record.
    Tenant(Box<Record>),
    /// A record set aside: hostd leaves this tenant alone until the operator repairs it.
    Broken {
        /// The record's key (the tenant's name).
        name: String,
        /// Why it cannot be read.
        reason: String,
    },
}

/// One host's tenants: the store plus the machinery the steps drive.
pub struct Host {
    pub(crate) cfg: HostConfig,
    pub(crate) store: Store,
    /// The host's cgroup layout and driver, detected once at start.
    pub(crate) cgroups: CgroupFs,
    /// Engines this process started, kept so that a dead one is reaped, not left a zombie.
    pub(crate) children: std::sync::Mutex<Vec<std::process::Child>>,
    /// Where tenants' SSM parameters come from; `None`: hostd writes no secrets.
    pub(crate) secrets: Option<crate::secrets::SecretsSource>,
    /// The tailscale sidecar agent tenants get; `None`: no sidecar.
    pub(crate) tailscale: Option<crate::tailscale::TailscaleConfig>,
    /// One change lock per tenant.
    pub(crate) locks: TenantLocks,
    /// Held only while a create picks a free slot and records it.
    pub(crate) slots: tokio::sync::Mutex<()>,
    /// The highest open files limit a container can be given here (detected once at start).
    pub(crate) nofile_ceiling: u64,
    /// When an operator last acted on each tenant (seconds since the epoch): the idle
    /// policy counts it as activity, so a tenant being worked on is not put to sleep.
    touched: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    /// What hostd exports to Prometheus (`--metrics-listen`).
    pub metrics: crate::metrics::Metrics,
}

impl Host {
    /// Opens the host's state store and detects its cgroup layout.
    pub fn open(cfg: HostConfig) -> Result<Self, HostError> {
        let store = Store::open(cfg.state_dir.join("tenants"))?;
        let cgroups = CgroupFs::detect()?;
        tracing::info!(
            version = ?cgroups.version(),
            driver = cgroups.driver().docker_name(),
            "cgroup layout"
        );
        let nofile_ceiling = crate::engine::container_nofile_ceiling();
        if nofile_ceiling < crate::engine::ENGINE_NOFILE {
            tracing::warn!(
                nofile_ceiling,
                "hostd lacks CAP_SYS_RESOURCE: containers get at most {nofile_ceiling} open files; \
                 deploys asking for more are refused"
            );
        }
        Ok(Self {
            cfg,
            store,
            cgroups,
            children: std::sync::Mutex::new(Vec::new()),
            secrets: None,
            tailscale: None,
            locks: TenantLocks::default(),
            slots: tokio::sync::Mutex::new(()),
            nofile_ceiling,
            touched: Default::default(),
            metrics: Default::default(),
        })
    }

    /// Records that an operator acted on `name` now (see [`Host::touched`]).
    pub fn touch(&self, name: &str) {
        self.touched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), crate::record::now_secs());
    }

    /// When an operator last acted on `name` (seconds since the epoch), if since hostd started.
    pub fn touched(&self, name: &str) -> Option<u64> {
        self.touched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .copied()
    }

    /// What the host was started with.
    pub fn cfg(&self) -> &HostConfig {
        &self.cfg
    }

    /// Gives every agent tenant a tailscale sidecar run as `cfg` says.
    pub fn with_tailscale(mut self, cfg: crate::tailscale::TailscaleConfig) -> Self {
        self.tailscale = Some(cfg);
        self
    }

    /// Reads tenants' SSM parameters from `source` (the Secrets step and `rotate-secrets`).
    pub fn with_secrets(mut self, source: crate::secrets::SecretsSource) -> Self {
        self.secrets = Some(source);
        self
    }

    /// The record of a tenant, if any; an unreadable one is [`HostError::Broken`].
    pub fn record(&self, name: &str) -> Result<Option<Record>, HostError> {
        match self.store.get(name) {
            Ok(r) => Ok(r),
            Err(crate::state::StateError::Corrupt { path, source }) => Err(HostError::Broken {
                tenant: name.to_owned(),
                path,
                reason: source.to_string(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// The record of a tenant that exists.
    pub fn existing(&self, name: &str) -> Result<Record, HostError> {
        self.record(name)?
            .ok_or_else(|| HostError::NotFound(name.to_owned()))
    }

    /// The record of a tenant that exists and is not being destroyed.
    pub fn live_record(&self, name: &str) -> Result<Record, HostError> {
        let r = self.existing(name)?;
        if r.desired == Desired::Absent {
            return Err(HostError::conflict(
                name,
                "is being destroyed; finish `hostd ctl destroy` first",
            ));
        }
        Ok(r)
    }

    /// Every tenant, readable or not, in name order.
    pub fn list(&self) -> Result<Vec<Listed>, HostError> {
        Ok(self
            .store
            .all_entries::<Record>()?
            .into_iter()
            .map(|(name, entry)| match entry {
                Ok(r) => Listed::Tenant(Box::new(r)),
                Err(reason) => Listed::Broken { name, reason },
            })
            .collect())
    }

    /// Every readable tenant record; unreadable ones are left alone (reconcile reports them
    /// once at start, `list` shows them; the supervisor does not repeat it every round).
    pub fn records(&self) -> Result<Vec<Record>, HostError> {
        Ok(self
            .list()?
            .into_iter()
            .filter_map(|l| match l {
                Listed::Tenant(r) => Some(*r),
                Listed::Broken { .. } => None,
            })
            .collect())
    }

    /// Reaps the engines this process started that have exited, so none is left a zombie
    /// (a zombie still counts in its tenant's pids).
    pub(crate) fn reap_children(&self) {
        if let Ok(mut children) = self.children.lock() {
            children.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
        }
    }

    /// Writes the record durably.
    pub(crate) fn save(&self, r: &Record) -> Result<(), crate::state::StateError> {
        self.store.put(r.name(), r)
    }

    /// The engine configuration of a tenant.
    pub fn engine_config(&self, r: &Record) -> EngineConfig {
        let name = r.spec.name.clone();
        EngineConfig {
            data_root: self.mountpoint(r).join("engine"),
            run_root: self.cfg.run_root.clone(),
            containerd: self.cfg.containerd.clone(),
            cgroup: self.cgroups.tenant(name.as_str()),
            subnet: ids::subnet(r.slot),
            seccomp_profile: None,
            log: self.cfg.log_dir.join(format!("{name}.log")),
            dockerd: self.cfg.dockerd.clone(),
            name,
        }
    }

    /// A client of the tenant's running engine, or why there is none. Never one of a frozen
    /// engine: every call to it would hang until the thaw.
    pub async fn docker(&self, r: &Record) -> Result<bollard::Docker, HostError> {
        self.docker_within(r, 120).await
    }

    /// Like [`Host::docker`], for read-only looks that take no lock (status, metrics): the
    /// idle policy may freeze the tenant after the record was read, and a request to a
    /// frozen engine would then hang until the thaw — here it fails within seconds.
    pub async fn docker_to_read(&self, r: &Record) -> Result<bollard::Docker, HostError> {
        self.docker_within(r, READ_TIMEOUT_SECS).await
    }

    async fn docker_within(&self, r: &Record, secs: u64) -> Result<bollard::Docker, HostError> {
        let name = r.name();
        if r.desired == Desired::Present && r.power != crate::record::Power::Active {
            return Err(HostError::Unavailable {
                tenant: name.to_owned(),
                message: format!(
                    "is {} (idle) since {}; `hostd ctl wake {name}` first",
                    crate::power::word(r.power),
                    httpdate::fmt_http_date(
                        std::time::UNIX_EPOCH + std::time::Duration::from_secs(r.power_since)
                    )
                ),
            });
        }
        let engine = Engine::adopt(self.engine_config(r)).ok_or_else(|| HostError::Unavailable {
            tenant: name.to_owned(),
            message: match r.desired {
                Desired::Stopped => format!("is stopped; run `hostd ctl start {name}` first"),
                _ => "engine is not running; the supervisor restarts it within seconds, or run `hostd ctl create` again to resume".into(),
            },
        })?;
        engine
            .connect_within(secs)
            .await
            .ok_or_else(|| HostError::Unavailable {
                tenant: name.to_owned(),
                message: format!(
                    "engine does not answer; see its log {}",
                    engine.config().log.display()
                ),
            })
    }

    /// Where the tenant's volume is mounted.
    pub fn mountpoint(&self, r: &Record) -> PathBuf {
        self.cfg.tenants_root.join(r.name())
    }

    /// The tenant's secret files on its volume.
    pub fn secrets_dir(&self, r: &Record) -> PathBuf {
        self.mountpoint(r).join("secrets")
    }

    /// Where the tenant's deploy bundles are kept, on its volume.
    pub fn bundles_dir(&self, r: &Record) -> PathBuf {
        self.mountpoint(r).join(crate::compose::files::BUNDLES)
    }

    /// The tenant's broker token file on the host.
    pub fn token_path(&self, r: &Record) -> PathBuf {
        self.cfg.token_dir.join(r.name()).join("token")
    }

    /// The tenant's remapped root on the host (uid = gid = the first id of its range).
    pub(crate) fn remapped_root(r: &Record) -> (u32, u32) {
        let id = u32::try_from(ids::range_base(r.slot)).unwrap_or(u32::MAX);
        (id, id)
    }

    /// The tenant's network identity: slot and subnet.
    pub(crate) fn net(r: &Record) -> TenantNet {
        TenantNet {
            slot: r.slot,
            subnet: ids::subnet(r.slot),
        }
    }

    /// The broker's (and the secrets reader's) view of the tenant.
    pub(crate) fn role_spec(r: &Record) -> Result<cred_broker::TenantSpec, StepError> {
        let (net, prefix) = ids::subnet(r.slot);
        Ok(cred_broker::TenantSpec {
            name: r.spec.name.clone(),
            role_arn: r.spec.role.arn.clone(),
            external_id: r.spec.role.external_id.clone(),
            allowed_cidr: ipnet::Ipv4Net::new(net, prefix)
                .map_err(|e| StepError::Precondition(format!("tenant subnet: {e}")))?
                .into(),
        })
    }

    /// The tenant volume's block device (EBS by serial, or the loop device of its image).
    pub(crate) fn volume_device(r: &Record) -> Result<PathBuf, crate::volume::VolumeError> {
        use crate::volume;
        match &r.spec.volume {
            VolumeSource::Ebs(id) => volume::ebs_device(
                std::path::Path::new("/dev/disk/by-id"),
                std::path::Path::new("/sys/block"),
                id,
            )
            .ok_or_else(|| volume::VolumeError::NotAttached(id.clone())),
            VolumeSource::LoopImage(image) => volume::loops_of(std::path::Path::new(image))?
                .into_iter()
                .next()
                .ok_or_else(|| volume::VolumeError::LoopNotAttached(image.clone())),
        }
    }

    /// What hostd forces onto every container of the tenant; fails when its profiles are
    /// not installed (a create that has not finished).
    pub fn hardening(&self, r: &Record) -> Result<crate::compose::Hardening, StepError> {
        let memory = i64::try_from(r.spec.limits.memory.0).unwrap_or(i64::MAX);
        let profiles = crate::profiles::installed(&r.spec.name, &self.cfg.profiles_dir)?;
        let mut env = Vec::new();
        let mut binds = Vec::new();
        if self.cfg.broker_admin.is_some() {
            let s = &self.cfg.services;
            env.push(format!(
                "AWS_CONTAINER_CREDENTIALS_FULL_URI=http://{}:{}/v1/credentials",
                s.broker, s.broker_port
            ));
            env.push(format!(
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE={TOKEN_MOUNT}/token"
            ));
            // The directory, not the file: the token is replaced by rename, and a file
            // bind mount would keep showing the old inode.
            binds.push((
                self.cfg.token_dir.join(r.name()).display().to_string(),
                TOKEN_MOUNT.to_owned(),
            ));
        }
        Ok(crate::compose::Hardening {
            security_opt: profiles.security_opt(),
            default_memory: memory.min(512 << 20),
            max_memory: memory,
            pids_limit: i64::from(r.spec.limits.pids),
            env,
            binds,
            // A service sees only the platform secrets it lists (`secrets: [brain-key]` with
            // `external: true`); the bundle's directory is set by the deploy that writes it.
            files: crate::compose::files::FileSources {
                tree: None,
                platform: self.secrets.is_some().then(|| self.secrets_dir(r)),
            },
            labels: std::collections::HashMap::from([(
                crate::compose::labels::TENANT.to_owned(),
                r.spec.name.to_string(),
            )]),
            bridge_prefix: format!("m8t-{}-", r.slot),
        })
    }
}
