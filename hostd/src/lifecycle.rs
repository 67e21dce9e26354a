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
use crate::spec::TenantSpec;
use crate::state::Store;

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
    /// Its firewall chains.
    Firewall,
    /// Its dockerd.
    Engine,
}

/// Every step, in creation order.
pub const STEPS: [Step; 5] = [
    Step::User,
    Step::IdRanges,
    Step::Cgroup,
    Step::Firewall,
    Step::Engine,
];

/// Where the tenant is going; reconciliation continues in this direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Desired {
    /// Provisioned and running.
    Present,
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

/// Host-wide settings every tenant's steps use.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// State directory (records live in `<state>/tenants`).
    pub state_dir: PathBuf,
    /// Where engines keep data until the tenant volume is mounted (`<data_root>/<name>`).
    pub data_root: PathBuf,
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
    /// Host services tenants may reach.
    pub services: HostServices,
    /// Firewall target (host namespace in production).
    pub firewall: Firewall,
}

/// One host's tenants: the store plus the machinery the steps drive.
pub struct Host {
    cfg: HostConfig,
    store: Store,
}

impl Host {
    /// Opens the host's state store.
    pub fn open(cfg: HostConfig) -> Result<Self, LifecycleError> {
        let store = Store::open(cfg.state_dir.join("tenants"))?;
        Ok(Self { cfg, store })
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
            data_root: self.cfg.data_root.join(name.as_str()),
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

    /// What hostd forces onto every container of the tenant.
    pub fn hardening(&self, r: &Record) -> crate::compose::Hardening {
        let memory = i64::try_from(r.spec.limits.memory.0).unwrap_or(i64::MAX);
        crate::compose::Hardening {
            // The tenant seccomp profile travels as JSON content (the API wants content,
            // not a path). AppArmor joins once profiles are installed per tenant (issue #6).
            security_opt: crate::profiles::SeccompProfile::tenant()
                .and_then(|p| p.to_compact_json())
                .map(|json| vec![format!("seccomp={json}"), "no-new-privileges:true".into()])
                .unwrap_or_else(|_| vec!["no-new-privileges:true".into()]),
            default_memory: memory.min(512 << 20),
            max_memory: memory,
            pids_limit: i64::from(r.spec.limits.pids),
            env: vec![],
            binds: vec![],
            labels: std::collections::HashMap::from([(
                crate::compose::labels::TENANT.to_owned(),
                r.spec.name.to_string(),
            )]),
        }
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
                };
                self.store.put(&name, &r)?;
                progress(format!("{name}: recorded in slot {slot}"));
                r
            }
        };
        for step in STEPS {
            // Every step is idempotent, so a step recorded as done is run again only when
            // its effect may have been lost (the engine after a reboot).
            if rec.done.contains(&step) && step != Step::Engine {
                continue;
            }
            progress(format!("{name}: {step:?}"));
            self.up(&rec, step)
                .await
                .map_err(|message| LifecycleError::Step {
                    tenant: name.clone(),
                    step,
                    message,
                })?;
            if !rec.done.contains(&step) {
                rec.done.push(step);
                self.store.put(&name, &rec)?;
            }
        }
        progress(format!("{name}: provisioned"));
        Ok(rec)
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
        for step in STEPS.iter().rev() {
            progress(format!("{name}: undo {step:?}"));
            // Undo every step, recorded or not: a crash between a step's effect and its
            // record leaves an effect the record does not know about.
            self.down(&rec, *step)
                .await
                .map_err(|message| LifecycleError::Step {
                    tenant: name.into(),
                    step: *step,
                    message,
                })?;
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
                Desired::Present => self.create(r.spec.clone(), progress).await.map(|_| ()),
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
            Step::Firewall => self
                .cfg
                .firewall
                .apply(&Self::net(r), &self.cfg.services, false)
                .map_err(|e| e.to_string()),
            Step::Engine => {
                let mut e = Engine::start(self.engine_config(r)).map_err(|e| e.to_string())?;
                e.wait_ready(Duration::from_secs(60))
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
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
            Step::IdRanges => {
                ids::remove_range(&self.cfg.etc.join("subuid"), &user)
                    .map_err(|e| e.to_string())?;
                ids::remove_range(&self.cfg.etc.join("subgid"), &user).map_err(|e| e.to_string())
            }
            Step::User => ids::remove_user(&user).map_err(|e| e.to_string()),
        }
    }
}
