//! A tenant's provisioning as an ordered list of idempotent steps, with the progress
//! persisted (atomically) before and after each one. Creating runs the steps forward,
//! destroying runs them backward, and [`Host::reconcile`] — what a restarted hostd runs
//! first — finishes whatever a crash interrupted, in the direction it was going.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cgroup::{CgroupFs, Limits};
use crate::engine::{self, Engine, EngineConfig};
use crate::ids;
use crate::network::{Firewall, HostServices, TenantNet};
use crate::spec::{TenantSpec, VolumeSource};
use crate::state::Store;

/// Where containers see the tenant's broker token directory.
pub const TOKEN_MOUNT: &str = "/run/m8trx/aws";
/// How long a rotated-out token keeps working, for requests that read the old file.
const TOKEN_OVERLAP: Duration = Duration::from_secs(300);

/// The provisioning steps, in creation order; destroy undoes them in reverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// The tenant's system user (`m8t-<name>`).
    User,
    /// Its subordinate uid/gid ranges.
    IdRanges,
    /// Its cgroup with the aggregate limits.
    Cgroup,
    /// Its volume, found or made, formatted only when empty, mounted.
    Volume,
    /// Its seccomp and AppArmor profiles, compiled, installed (and loaded where AppArmor is on).
    Profiles,
    /// Its firewall chains.
    Firewall,
    /// Its registration with the credential broker and its token file.
    Broker,
    /// Its SSM parameters, read as the customer, written to the volume.
    Secrets,
    /// Its dockerd.
    Engine,
}

/// Every step, in creation order.
pub const STEPS: [Step; 9] = [
    Step::User,
    Step::IdRanges,
    Step::Cgroup,
    Step::Volume,
    Step::Profiles,
    Step::Firewall,
    Step::Broker,
    Step::Secrets,
    Step::Engine,
];

/// Where the tenant is going; reconciliation continues in this direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Desired {
    /// Provisioned and running.
    Present,
    /// Provisioned, containers and engine stopped; everything kept (`hostd ctl stop`).
    Stopped,
    /// Torn down; the record is deleted once nothing is left.
    Absent,
}

/// The persisted record of one tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The spec it was created from.
    pub spec: TenantSpec,
    /// Its slot (subid range, subnet, chain names).
    pub slot: u16,
    /// Where it is going.
    pub desired: Desired,
    /// Steps known to be complete.
    pub done: Vec<Step>,
    /// Remove the engine's data on destroy.
    #[serde(default)]
    pub wipe: bool,
    /// All networking cut, everything kept for forensics (`hostd ctl quarantine`).
    #[serde(default)]
    pub quarantined: bool,
    /// Containers that were running when the tenant was stopped; `start` starts them again.
    #[serde(default)]
    pub stopped_containers: Vec<String>,
}

/// Failures of a lifecycle step; names the tenant and step so the operator knows where it stopped.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// A step failed; re-running create/destroy (or restarting hostd) resumes from it.
    #[error("tenant {tenant}: step {step:?} failed: {message}; fix the cause and run the command again, it resumes here")]
    Step {
        /// Tenant.
        tenant: String,
        /// The failing step.
        step: Step,
        /// The underlying error.
        message: String,
    },
    /// The state store failed.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// The operation does not fit the tenant's current state.
    #[error("tenant {0}: {1}")]
    Conflict(String, String),
}

/// The error of `step` of `tenant` failing with a message, for `map_err`.
fn step_failed(tenant: &str, step: Step) -> impl Fn(String) -> LifecycleError + Copy + '_ {
    move |message| LifecycleError::Step {
        tenant: tenant.to_owned(),
        step,
        message,
    }
}

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

/// One host's tenants: the store plus the machinery the steps drive.
pub struct Host {
    cfg: HostConfig,
    store: Store,
    /// Engines this process started, kept so that a dead one is reaped, not left a zombie.
    children: std::sync::Mutex<Vec<std::process::Child>>,
    /// Where tenants' SSM parameters come from; `None`: hostd writes no secrets.
    secrets: Option<crate::secrets::SecretsSource>,
    /// The tailscale sidecar agent tenants get; `None`: no sidecar.
    tailscale: Option<crate::tailscale::TailscaleConfig>,
}

impl Host {
    /// Opens the host's state store.
    pub fn open(cfg: HostConfig) -> Result<Self, LifecycleError> {
        let store = Store::open(cfg.state_dir.join("tenants"))?;
        Ok(Self {
            cfg,
            store,
            children: std::sync::Mutex::new(Vec::new()),
            secrets: None,
            tailscale: None,
        })
    }

    /// Gives every agent tenant a tailscale sidecar run as `cfg` says.
    pub fn with_tailscale(mut self, cfg: crate::tailscale::TailscaleConfig) -> Self {
        self.tailscale = Some(cfg);
        self
    }

    /// The sidecar configuration, when this host runs sidecars.
    pub fn tailscale(&self) -> Option<&crate::tailscale::TailscaleConfig> {
        self.tailscale.as_ref()
    }

    /// Reads tenants' SSM parameters from `source` (the Secrets step and `rotate-secrets`).
    pub fn with_secrets(mut self, source: crate::secrets::SecretsSource) -> Self {
        self.secrets = Some(source);
        self
    }

    /// The tenant's secret files on its volume.
    pub fn secrets_dir(&self, r: &Record) -> PathBuf {
        self.mountpoint(r).join("secrets")
    }

    /// The broker's (and the secrets reader's) view of the tenant.
    fn role_spec(&self, r: &Record) -> Result<cred_broker::TenantSpec, String> {
        let (net, prefix) = ids::subnet(r.slot);
        Ok(cred_broker::TenantSpec {
            name: r.spec.name.clone(),
            role_arn: r.spec.role.arn.clone(),
            external_id: r.spec.role.external_id.clone(),
            allowed_cidr: ipnet::Ipv4Net::new(net, prefix)
                .map_err(|e| e.to_string())?
                .into(),
        })
    }

    /// Re-reads the tenant's SSM parameters, rewrites the files and restarts the running
    /// containers of its project so they read the new values.
    pub async fn rotate_secrets(
        &self,
        name: &str,
        progress: &mut (dyn FnMut(String) + Send),
    ) -> Result<Vec<String>, LifecycleError> {
        use bollard::query_parameters::{
            ListContainersOptionsBuilder, RestartContainerOptionsBuilder,
        };
        let rec = self.live_record(name)?;
        let failed = step_failed(name, Step::Secrets);
        if self.secrets.is_none() {
            return Err(failed(
                "this hostd writes no secrets (started with --secrets none)".into(),
            ));
        }
        progress(format!(
            "{name}: reading SSM parameters as the customer role"
        ));
        self.up(&rec, Step::Secrets).await.map_err(failed)?;
        let mut restarted = Vec::new();
        let Some(engine) = Engine::adopt(self.engine_config(&rec)) else {
            return Ok(restarted);
        };
        let d = engine
            .connect()
            .await
            .ok_or_else(|| failed("engine does not answer".into()))?;
        let filter = crate::compose::project_filter(&rec.spec.name.compose_project(), None);
        let running = d
            .list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .filters(&filter)
                    .build(),
            ))
            .await
            .map_err(|e| failed(format!("listing containers: {e}")))?;
        for c in running {
            let Some(n) = c
                .names
                .and_then(|n| n.first().map(|n| n.trim_start_matches('/').to_owned()))
            else {
                continue;
            };
            progress(format!("{name}: restarting {n}"));
            d.restart_container(
                &n,
                Some(RestartContainerOptionsBuilder::default().t(10).build()),
            )
            .await
            .map_err(|e| failed(format!("restarting {n}: {e}")))?;
            restarted.push(n);
        }
        Ok(restarted)
    }

    /// The record of a tenant that exists and is not being destroyed.
    fn live_record(&self, name: &str) -> Result<Record, LifecycleError> {
        match self.record(name)? {
            None => Err(LifecycleError::Conflict(
                name.into(),
                "no such tenant".into(),
            )),
            Some(r) if r.desired == Desired::Absent => Err(LifecycleError::Conflict(
                name.into(),
                "is being destroyed; finish `destroy` first".into(),
            )),
            Some(r) => Ok(r),
        }
    }

    /// The record of a tenant, if any.
    pub fn record(&self, name: &str) -> Result<Option<Record>, LifecycleError> {
        Ok(self.store.get(name)?)
    }

    /// Every tenant record.
    pub fn records(&self) -> Result<Vec<Record>, LifecycleError> {
        Ok(self.store.all::<Record>()?.into_values().collect())
    }

    /// The engine configuration of a tenant.
    pub fn engine_config(&self, r: &Record) -> EngineConfig {
        let name = r.spec.name.clone();
        EngineConfig {
            data_root: self.mountpoint(r).join("engine"),
            run_root: self.cfg.run_root.clone(),
            containerd: self.cfg.containerd.clone(),
            cgroup_parent: format!("/{}/{}", crate::cgroup::PARENT, name),
            subnet: ids::subnet(r.slot),
            seccomp_profile: None,
            log: self.cfg.log_dir.join(format!("{name}.log")),
            dockerd: self.cfg.dockerd.clone(),
            name,
        }
    }

    /// What hostd forces onto every container of the tenant; fails when its profiles are
    /// not installed (a create that has not finished).
    pub fn hardening(&self, r: &Record) -> Result<crate::compose::Hardening, LifecycleError> {
        let memory = i64::try_from(r.spec.limits.memory.0).unwrap_or(i64::MAX);
        let profiles =
            crate::profiles::installed(&r.spec.name, &self.cfg.profiles_dir).map_err(|e| {
                LifecycleError::Step {
                    tenant: r.spec.name.to_string(),
                    step: Step::Profiles,
                    message: e.to_string(),
                }
            })?;
        let (env, binds) = match &self.cfg.broker_admin {
            Some(_) => {
                let s = &self.cfg.services;
                (
                    vec![
                        format!(
                            "AWS_CONTAINER_CREDENTIALS_FULL_URI=http://{}:{}/v1/credentials",
                            s.broker, s.broker_port
                        ),
                        format!("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE={TOKEN_MOUNT}/token"),
                    ],
                    // The directory, not the file: the token is replaced by rename, and a file
                    // bind mount would keep showing the old inode.
                    vec![(
                        self.token_path(r)
                            .parent()
                            .map(|p| p.display().to_string())
                            .unwrap_or_default(),
                        TOKEN_MOUNT.to_owned(),
                    )],
                )
            }
            None => (vec![], vec![]),
        };
        let mut binds = binds;
        if self.secrets.is_some() {
            binds.push((
                self.secrets_dir(r).display().to_string(),
                crate::secrets::SECRETS_MOUNT.to_owned(),
            ));
        }
        Ok(crate::compose::Hardening {
            security_opt: profiles.security_opt(),
            default_memory: memory.min(512 << 20),
            max_memory: memory,
            pids_limit: i64::from(r.spec.limits.pids),
            env,
            binds,
            labels: std::collections::HashMap::from([(
                crate::compose::labels::TENANT.to_owned(),
                r.spec.name.to_string(),
            )]),
        })
    }

    /// Points the tenant's subdomains at its ingress container while it should serve
    /// (present, not quarantined, ingress running) and removes them otherwise. A destroyed
    /// tenant's routes must go before its slot can be reused: the next tenant in the slot may
    /// get the same container address.
    pub async fn sync_routes(
        &self,
        r: &Record,
        progress: &mut (dyn FnMut(String) + Send),
    ) -> Result<(), String> {
        use crate::proxy_routes::{ProxyAdmin, TenantRoute};
        let Some(sock) = &self.cfg.proxy_admin else {
            return Ok(());
        };
        let admin = ProxyAdmin::new(sock);
        let serve = r.desired == Desired::Present && !r.quarantined;
        let ip = if serve {
            self.ingress_ip(r).await
        } else {
            None
        };
        let ingress = r.spec.ingress();
        for sni in &r.spec.subdomains {
            match &ip {
                Some(ip) => {
                    let route = TenantRoute {
                        sni: sni.clone(),
                        backend: format!("{ip}:{}", ingress.port),
                        http_backend: ingress.http_port.map(|p| format!("{ip}:{p}")),
                        terminate: r.spec.tls_mode() == crate::spec::TlsMode::Terminate,
                    };
                    admin.set(&route).await.map_err(|e| e.to_string())?;
                    progress(format!("{}: route {sni} -> {}", r.spec.name, route.backend));
                }
                None => {
                    admin.remove(sni).await.map_err(|e| e.to_string())?;
                    progress(format!("{}: route {sni} removed", r.spec.name));
                }
            }
        }
        Ok(())
    }

    /// The address of the running ingress container, if there is one.
    async fn ingress_ip(&self, r: &Record) -> Option<String> {
        use bollard::query_parameters::ListContainersOptionsBuilder;
        let engine = Engine::adopt(self.engine_config(r))?;
        let d = engine.connect().await?;
        let filter = crate::compose::project_filter(
            &r.spec.name.compose_project(),
            Some(&r.spec.ingress().service),
        );
        let list = d
            .list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .filters(&filter)
                    .build(),
            ))
            .await
            .ok()?;
        list.into_iter().find_map(|c| {
            c.network_settings?
                .networks?
                .into_values()
                .find_map(|n| n.ip_address.filter(|ip| !ip.is_empty()))
        })
    }

    /// Where the tenant's volume is mounted.
    pub fn mountpoint(&self, r: &Record) -> PathBuf {
        self.cfg.tenants_root.join(r.spec.name.as_str())
    }

    /// Finds (or, in dev, makes) the tenant's block device, formats it only when empty, and
    /// mounts it `nodev,nosuid`, its root owned by the tenant's remapped root with mode 0700.
    fn mount_volume(&self, r: &Record) -> Result<(), crate::volume::VolumeError> {
        use crate::volume;
        let device = match &r.spec.volume {
            VolumeSource::Ebs(id) => volume::ebs_device(
                std::path::Path::new("/dev/disk/by-id"),
                std::path::Path::new("/sys/block"),
                id,
            )
            .ok_or_else(|| volume::VolumeError::NotAttached(id.clone()))?,
            VolumeSource::LoopImage(image) => {
                volume::loop_device(std::path::Path::new(image), r.spec.limits.disk.0)?
            }
        };
        let id = u32::try_from(ids::range_base(r.slot)).unwrap_or(u32::MAX);
        volume::ensure_ext4(&device, (id, id))?;
        let mp = self.mountpoint(r);
        volume::mount(&device, &mp)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&mp, std::fs::Permissions::from_mode(0o700)).map_err(|source| {
            volume::VolumeError::Io {
                action: "chmod",
                path: mp.clone(),
                source,
            }
        })
    }

    /// Unmounts the volume; a loop image is detached too, and deleted with `--wipe`.
    fn release_volume(&self, r: &Record) -> Result<(), crate::volume::VolumeError> {
        use crate::volume;
        volume::unmount(&self.mountpoint(r))?;
        if let VolumeSource::LoopImage(image) = &r.spec.volume {
            let image = std::path::Path::new(image);
            volume::detach_loops(image)?;
            if r.wipe {
                match std::fs::remove_file(image) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(volume::VolumeError::Io {
                            action: "remove",
                            path: image.to_path_buf(),
                            source: e,
                        })
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// The tenant's broker token file on the host.
    pub fn token_path(&self, r: &Record) -> PathBuf {
        self.cfg.token_dir.join(r.spec.name.as_str()).join("token")
    }

    /// Registers the tenant with the broker and makes sure its token file holds a token the
    /// broker accepts: minted when missing, when the broker lost it (a broker restart keeps no
    /// tokens) or when half its lifetime has passed; the old one stays valid for a grace
    /// period so a request in flight never sees a 401.
    async fn ensure_broker(&self, r: &Record) -> Result<Option<String>, String> {
        let Some(sock) = &self.cfg.broker_admin else {
            return Ok(None);
        };
        let client = cred_broker::AdminClient::new(sock);
        let spec = self.role_spec(r)?;
        client.register(&spec).await.map_err(|e| e.to_string())?;
        let path = self.token_path(r);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let half = self.cfg.token_ttl.as_secs() / 2;
        let known = client.list().await.map_err(|e| e.to_string())?;
        let fresh_at_broker = known
            .iter()
            .filter(|t| t.spec.name == r.spec.name)
            .flat_map(|t| &t.tokens)
            .any(|t| !t.expired && t.created_at + half > now);
        if fresh_at_broker && path.exists() {
            return Ok(None);
        }
        let minted = client
            .mint(
                r.spec.name.as_str(),
                self.cfg.token_ttl,
                Some(TOKEN_OVERLAP),
            )
            .await
            .map_err(|e| e.to_string())?;
        let dir = path.parent().unwrap_or(&self.cfg.token_dir);
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let id = u32::try_from(ids::range_base(r.slot)).map_err(|e| e.to_string())?;
        cred_broker::write_token_file(
            &path,
            &cred_broker::Token::from_secret(minted.token),
            Some(cred_broker::FileOwner { uid: id, gid: id }),
        )
        .map_err(|e| e.to_string())?;
        Ok(Some(minted.id))
    }

    fn net(r: &Record) -> TenantNet {
        TenantNet {
            slot: r.slot,
            subnet: ids::subnet(r.slot),
        }
    }

    /// Records the tenant (allocating its slot) and provisions it; resumes a half-done create.
    pub async fn create(
        &self,
        spec: TenantSpec,
        progress: &mut (dyn FnMut(String) + Send),
    ) -> Result<Record, LifecycleError> {
        let name = spec.name.to_string();
        let mut rec = match self.record(&name)? {
            Some(r) if r.desired == Desired::Absent => {
                return Err(LifecycleError::Conflict(
                    name,
                    "is being destroyed; finish `destroy` first".into(),
                ))
            }
            Some(r) if r.spec != spec => {
                return Err(LifecycleError::Conflict(
                    name,
                    "exists with a different spec; destroy it or update it".into(),
                ))
            }
            Some(r) => r,
            None => {
                let taken: Vec<u16> = self.records()?.iter().map(|r| r.slot).collect();
                let subuid =
                    std::fs::read_to_string(self.cfg.etc.join("subuid")).unwrap_or_default();
                let subgid =
                    std::fs::read_to_string(self.cfg.etc.join("subgid")).unwrap_or_default();
                let slot = ids::free_slot(&taken, &[&subuid, &subgid]).map_err(|e| {
                    LifecycleError::Step {
                        tenant: name.clone(),
                        step: Step::IdRanges,
                        message: e.to_string(),
                    }
                })?;
                let r = Record {
                    spec,
                    slot,
                    desired: Desired::Present,
                    done: Vec::new(),
                    wipe: false,
                    quarantined: false,
                    stopped_containers: Vec::new(),
                };
                self.store.put(&name, &r)?;
                progress(format!("{name}: recorded in slot {slot}"));
                r
            }
        };
        self.provision(&mut rec, progress).await?;
        Ok(rec)
    }

    /// Runs every step forward. All are idempotent and all run every time, because a host
    /// reboot loses the effects of several (cgroup, rules, engine) while the record stays.
    /// A stopped tenant gets everything but a running engine.
    async fn provision(
        &self,
        rec: &mut Record,
        progress: &mut (dyn FnMut(String) + Send),
    ) -> Result<(), LifecycleError> {
        let name = rec.spec.name.to_string();
        let failed = |step: Step| step_failed(&name, step);
        for step in STEPS {
            if step == Step::Engine && rec.desired == Desired::Stopped {
                progress(format!("{name}: Engine (stopped)"));
                self.halt(rec, progress).await.map_err(failed(step))?;
            } else {
                progress(format!("{name}: {step:?}"));
                self.up(rec, step).await.map_err(failed(step))?;
            }
            if !rec.done.contains(&step) {
                rec.done.push(step);
                self.store.put(&name, rec)?;
            }
        }
        if rec.desired == Desired::Present && !rec.stopped_containers.is_empty() {
            self.resume_containers(rec, progress)
                .await
                .map_err(failed(Step::Engine))?;
            rec.stopped_containers.clear();
            self.store.put(&name, rec)?;
        }
        self.sync_routes(rec, progress)
            .await
            .map_err(failed(Step::Engine))?;
        progress(format!(
            "{name}: {}",
            if rec.desired == Desired::Stopped {
                "provisioned, stopped"
            } else {
                "provisioned"
            }
        ));
        Ok(())
    }

    /// Stops the tenant's containers (remembering which ran) and then its engine; keeps
    /// everything else. Safe to repeat.
    pub async fn stop(
        &self,
        name: &str,
        progress: &mut (dyn FnMut(String) + Send),
    ) -> Result<Record, LifecycleError> {
        self.move_to(name, Desired::Stopped, progress).await
    }

    /// Starts a stopped tenant: engine first, then the containers that ran when it stopped.
    pub async fn start(
        &self,
        name: &str,
        progress: &mut (dyn FnMut(String) + Send),
    ) -> Result<Record, LifecycleError> {
        self.move_to(name, Desired::Present, progress).await
    }

    /// Records the new desired state, then provisions towards it.
    async fn move_to(
        &self,
        name: &str,
        desired: Desired,
        progress: &mut (dyn FnMut(String) + Send),
    ) -> Result<Record, LifecycleError> {
        let mut rec = self.live_record(name)?;
        if rec.desired != desired {
            rec.desired = desired;
            self.store.put(name, &rec)?;
        }
        self.provision(&mut rec, progress).await?;
        Ok(rec)
    }

    /// Cuts (or restores) all of the tenant's networking; containers, data and engine stay
    /// as they are, and the operator keeps access through the engine socket.
    pub async fn quarantine(
        &self,
        name: &str,
        on: bool,
        progress: &mut (dyn FnMut(String) + Send),
    ) -> Result<Record, LifecycleError> {
        let mut rec = self.live_record(name)?;
        rec.quarantined = on;
        self.store.put(name, &rec)?;
        progress(format!(
            "{name}: {}",
            if on {
                "cutting all networking"
            } else {
                "restoring networking"
            }
        ));
        self.up(&rec, Step::Firewall)
            .await
            .map_err(step_failed(name, Step::Firewall))?;
        self.up(&rec, Step::Broker)
            .await
            .map_err(step_failed(name, Step::Broker))?;
        self.sync_routes(&rec, progress)
            .await
            .map_err(step_failed(name, Step::Firewall))?;
        Ok(rec)
    }

    /// Restarts the engines of running tenants whose dockerd died (containers survive it:
    /// live-restore) and keeps broker registrations and tokens fresh (a restarted broker
    /// knows nobody); what the daemon runs periodically. Returns the tenants restarted.
    pub async fn supervise(
        &self,
        progress: &mut (dyn FnMut(String) + Send),
    ) -> (Vec<String>, Vec<LifecycleError>) {
        if let Ok(mut children) = self.children.lock() {
            children.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
        }
        let (mut restarted, mut errors) = (Vec::new(), Vec::new());
        let records = match self.records() {
            Ok(r) => r,
            Err(e) => return (restarted, vec![e]),
        };
        for r in records {
            let name = r.spec.name.to_string();
            if r.desired == Desired::Present && !r.quarantined && r.done.contains(&Step::Broker) {
                match self.ensure_broker(&r).await {
                    Ok(Some(id)) => progress(format!("{name}: broker token {id} minted")),
                    Ok(None) => {}
                    Err(message) => errors.push(step_failed(&name, Step::Broker)(message)),
                }
            }
            let running = r.desired == Desired::Present && r.done.contains(&Step::Engine);
            if !running || Engine::adopt(self.engine_config(&r)).is_some() {
                continue;
            }
            progress(format!("{name}: engine is not running; restarting it"));
            match self.up(&r, Step::Engine).await {
                Ok(()) => restarted.push(name),
                Err(message) => errors.push(step_failed(&name, Step::Engine)(message)),
            }
        }
        (restarted, errors)
    }

    /// Stops the containers (recording the running ones first) and the engine.
    async fn halt(
        &self,
        rec: &mut Record,
        progress: &mut (dyn FnMut(String) + Send),
    ) -> Result<(), String> {
        use bollard::query_parameters::{
            ListContainersOptionsBuilder, StopContainerOptionsBuilder,
        };
        let Some(engine) = Engine::adopt(self.engine_config(rec)) else {
            return Ok(());
        };
        if let Some(d) = engine.connect().await {
            let running = d
                .list_containers(Some(ListContainersOptionsBuilder::default().build()))
                .await
                .map_err(|e| format!("listing containers: {e}"))?;
            let names: Vec<String> = running
                .iter()
                .filter_map(|c| {
                    c.names
                        .as_ref()?
                        .first()
                        .map(|n| n.trim_start_matches('/').to_owned())
                })
                .collect();
            // Persist the list before stopping anything: a crash mid-way must not forget
            // which containers `start` has to bring back.
            let mut changed = false;
            for n in &names {
                if !rec.stopped_containers.contains(n) {
                    rec.stopped_containers.push(n.clone());
                    changed = true;
                }
            }
            if changed {
                self.store
                    .put(rec.spec.name.as_str(), rec)
                    .map_err(|e| e.to_string())?;
            }
            for n in &names {
                progress(format!("{}: stopping container {n}", rec.spec.name));
                let opts = StopContainerOptionsBuilder::default().t(10).build();
                d.stop_container(n, Some(opts))
                    .await
                    .map_err(|e| format!("stopping container {n}: {e}"))?;
            }
        }
        progress(format!("{}: stopping engine", rec.spec.name));
        tokio::task::spawn_blocking(move || engine.stop(Duration::from_secs(30)))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    /// Starts the containers a stop recorded.
    async fn resume_containers(
        &self,
        rec: &Record,
        progress: &mut (dyn FnMut(String) + Send),
    ) -> Result<(), String> {
        let engine = Engine::adopt(self.engine_config(rec))
            .ok_or_else(|| "engine is not running".to_owned())?;
        let d = engine
            .connect()
            .await
            .ok_or_else(|| "engine does not answer".to_owned())?;
        for n in &rec.stopped_containers {
            progress(format!("{}: starting container {n}", rec.spec.name));
            match d
                .start_container(n, None::<bollard::query_parameters::StartContainerOptions>)
                .await
            {
                Ok(()) => {}
                // Already running (a repeated start) or removed since: nothing to do.
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 304 | 404,
                    ..
                }) => {}
                Err(e) => return Err(format!("starting container {n}: {e}")),
            }
        }
        Ok(())
    }

    /// Tears the tenant down in reverse order; resumes a half-done destroy; deletes the record last.
    pub async fn destroy(
        &self,
        name: &str,
        wipe: bool,
        progress: &mut (dyn FnMut(String) + Send),
    ) -> Result<(), LifecycleError> {
        let Some(mut rec) = self.record(name)? else {
            return Err(LifecycleError::Conflict(
                name.into(),
                "no such tenant".into(),
            ));
        };
        if rec.desired != Desired::Absent || (wipe && !rec.wipe) {
            rec.desired = Desired::Absent;
            rec.wipe |= wipe;
            self.store.put(name, &rec)?;
        }
        self.sync_routes(&rec, progress)
            .await
            .map_err(step_failed(name, Step::Engine))?;
        for step in STEPS.iter().rev() {
            progress(format!("{name}: undo {step:?}"));
            // Undo every step, recorded or not: a crash between a step's effect and its
            // record leaves an effect the record does not know about.
            self.down(&rec, *step)
                .await
                .map_err(step_failed(name, *step))?;
            if rec.done.contains(step) {
                rec.done.retain(|s| s != step);
                self.store.put(name, &rec)?;
            }
        }
        self.store.delete(name)?;
        progress(format!("{name}: destroyed"));
        Ok(())
    }

    /// Brings every tenant back to its desired state: what a restarted hostd runs first.
    pub async fn reconcile(
        &self,
        progress: &mut (dyn FnMut(String) + Send),
    ) -> Vec<LifecycleError> {
        let mut errors = Vec::new();
        let records = match self.records() {
            Ok(r) => r,
            Err(e) => return vec![e],
        };
        for r in records {
            let result = match r.desired {
                Desired::Present | Desired::Stopped => {
                    let mut r = r;
                    self.provision(&mut r, progress).await
                }
                Desired::Absent => self.destroy(r.spec.name.as_str(), r.wipe, progress).await,
            };
            if let Err(e) = result {
                errors.push(e);
            }
        }
        errors
    }

    async fn up(&self, r: &Record, step: Step) -> Result<(), String> {
        let user = r.spec.name.host_user();
        match step {
            Step::User => ids::ensure_user(&user).map_err(|e| e.to_string()),
            Step::IdRanges => {
                let base = ids::range_base(r.slot);
                ids::ensure_range(&self.cfg.etc.join("subuid"), &user, base)
                    .map_err(|e| e.to_string())?;
                ids::ensure_range(&self.cfg.etc.join("subgid"), &user, base)
                    .map_err(|e| e.to_string())
            }
            Step::Cgroup => {
                let l = &r.spec.limits;
                let limits = Limits {
                    cpu: l.cpu,
                    memory: l.memory.0,
                    pids: l.pids,
                    io: vec![],
                };
                let fs = CgroupFs::detect().map_err(|e| e.to_string())?;
                fs.tenant(r.spec.name.as_str())
                    .apply(&limits)
                    .map_err(|e| e.to_string())
            }
            Step::Volume => self.mount_volume(r).map_err(|e| e.to_string()),
            Step::Profiles => crate::profiles::install(
                &r.spec.name,
                &self.cfg.profiles_dir,
                crate::profiles::AppArmorLoad::Auto,
            )
            .map(|_| ())
            .map_err(|e| e.to_string()),
            Step::Firewall => self
                .cfg
                .firewall
                .apply(&Self::net(r), &self.cfg.services, r.quarantined)
                .map_err(|e| e.to_string()),
            // A stopped or quarantined tenant keeps no broker registration and no token.
            Step::Broker if r.desired == Desired::Stopped || r.quarantined => {
                Box::pin(self.down(r, Step::Broker)).await
            }
            Step::Broker => self.ensure_broker(r).await.map(|_| ()),
            Step::Secrets => {
                let Some(source) = &self.secrets else {
                    return Ok(());
                };
                let values = source
                    .fetch(&self.role_spec(r)?)
                    .await
                    .map_err(|e| e.to_string())?;
                let id = u32::try_from(ids::range_base(r.slot)).map_err(|e| e.to_string())?;
                crate::secrets::write_secrets(&self.secrets_dir(r), &values, (id, id))
                    .map_err(|e| e.to_string())
            }
            Step::Engine => {
                let mut e = Engine::start(self.engine_config(r)).map_err(|e| e.to_string())?;
                let ready = e
                    .wait_ready(Duration::from_secs(60))
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string());
                if let (Some(child), Ok(mut children)) = (e.into_child(), self.children.lock()) {
                    children.push(child);
                }
                ready
            }
        }
    }

    async fn down(&self, r: &Record, step: Step) -> Result<(), String> {
        let user = r.spec.name.host_user();
        match step {
            Step::Engine => engine::purge(&self.engine_config(r), r.wipe)
                .await
                .map_err(|e| e.to_string()),
            Step::Firewall => self
                .cfg
                .firewall
                .remove(&Self::net(r))
                .map_err(|e| e.to_string()),
            Step::Cgroup => {
                let fs = CgroupFs::detect().map_err(|e| e.to_string())?;
                fs.tenant(r.spec.name.as_str())
                    .remove()
                    .map_err(|e| e.to_string())
            }
            Step::Volume => self.release_volume(r).map_err(|e| e.to_string()),
            Step::Profiles => crate::profiles::uninstall(&r.spec.name, &self.cfg.profiles_dir)
                .map_err(|e| e.to_string()),
            Step::Secrets => {
                let dir = self.secrets_dir(r);
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
                match std::fs::remove_dir_all(&dir) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        Err(format!("removing {}: {e}", dir.display()))
                    }
                    _ => Ok(()),
                }
            }
            Step::Broker => {
                if let Some(sock) = &self.cfg.broker_admin {
                    match cred_broker::AdminClient::new(sock)
                        .deregister(r.spec.name.as_str())
                        .await
                    {
                        Ok(()) | Err(cred_broker::AdminError::Api { status: 404, .. }) => {}
                        Err(e) => return Err(e.to_string()),
                    }
                }
                let dir = self.cfg.token_dir.join(r.spec.name.as_str());
                match std::fs::remove_dir_all(&dir) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        Err(format!("removing {}: {e}", dir.display()))
                    }
                    _ => Ok(()),
                }
            }
            Step::IdRanges => {
                ids::remove_range(&self.cfg.etc.join("subuid"), &user)
                    .map_err(|e| e.to_string())?;
                ids::remove_range(&self.cfg.etc.join("subgid"), &user).map_err(|e| e.to_string())
            }
            Step::User => ids::remove_user(&user).map_err(|e| e.to_string()),
        }
    }
}
