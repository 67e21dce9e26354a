//! Every change an API request can ask of hostd, as one typed action. The API decodes a
//! request into an [`Action`] and encodes the [`Outcome`]; [`Host::execute`] is the only
//! way in to the executor, so a new way to change a tenant is a new variant here.

use crate::error::HostError;
use crate::executor::Progress;
use crate::host::Host;
use crate::record::Record;
use crate::spec::TenantSpec;

/// One change to one tenant.
#[derive(Debug, Clone)]
pub enum Action {
    /// Record and provision a tenant (resumes a half-done create).
    Create(Box<TenantSpec>),
    /// Record a compose file as the tenant's next revision and deploy it.
    Deploy {
        /// Tenant.
        name: String,
        /// The compose file and its variables as submitted.
        bundle: crate::compose::Bundle,
    },
    /// Stop containers and engine; keep everything else.
    Stop(String),
    /// Start a stopped tenant again.
    Start(String),
    /// Cut all of the tenant's networking, keeping everything for forensics.
    Quarantine(String),
    /// Lift a quarantine.
    Release(String),
    /// Re-read the tenant's SSM parameters and restart its containers.
    RotateSecrets(String),
    /// Freeze an idle tenant's whole cgroup (processes and memory kept).
    Freeze(String),
    /// Stop an idle tenant's containers and engine (memory released), routes held for a wake.
    Sleep(String),
    /// Bring a frozen or sleeping tenant back and route to it again.
    Wake(String),
    /// Remove the tenant and everything hostd made for it.
    Destroy {
        /// Tenant.
        name: String,
        /// Also delete the engine's data (and a loop image).
        wipe: bool,
    },
}

/// What an action produced.
#[derive(Debug)]
pub enum Outcome {
    /// The tenant's record after the change.
    Tenant(Box<Record>),
    /// A deploy: the record (with its new revision) and the containers in start order.
    Deployed {
        /// The record.
        record: Box<Record>,
        /// Container names.
        containers: Vec<String>,
    },
    /// Secrets rotated; these containers were restarted.
    Rotated {
        /// Tenant.
        tenant: String,
        /// Container names.
        restarted: Vec<String>,
    },
    /// The tenant is gone.
    Destroyed {
        /// Tenant.
        tenant: String,
        /// Whether its data went too.
        wiped: bool,
    },
}

impl Action {
    /// The tenant the action changes.
    pub fn tenant(&self) -> &str {
        match self {
            Self::Create(spec) => spec.name.as_str(),
            Self::Deploy { name, .. } | Self::Destroy { name, .. } => name,
            Self::Stop(n) | Self::Start(n) | Self::Quarantine(n) | Self::Release(n) => n,
            Self::RotateSecrets(n) | Self::Freeze(n) | Self::Sleep(n) | Self::Wake(n) => n,
        }
    }
}

impl Host {
    /// Runs one action; each operation takes the tenant's own lock, never the host's.
    pub async fn execute(
        &self,
        action: Action,
        progress: Progress<'_>,
    ) -> Result<Outcome, HostError> {
        // An operator (or control) at work on a tenant counts as its activity.
        let name = action.tenant().to_owned();
        self.touch(&name);
        let done = self.run_action(action, progress).await;
        self.touch(&name);
        done
    }

    async fn run_action(
        &self,
        action: Action,
        progress: Progress<'_>,
    ) -> Result<Outcome, HostError> {
        let tenant = |r: Record| Outcome::Tenant(Box::new(r));
        Ok(match action {
            Action::Create(spec) => tenant(self.create(*spec, progress).await?),
            Action::Deploy { name, bundle } => {
                let (record, containers) = self.deploy(&name, bundle, progress).await?;
                Outcome::Deployed {
                    record: Box::new(record),
                    containers,
                }
            }
            Action::Stop(name) => tenant(self.stop(&name, progress).await?),
            Action::Start(name) => tenant(self.start(&name, progress).await?),
            Action::Quarantine(name) => tenant(self.quarantine(&name, true, progress).await?),
            Action::Release(name) => tenant(self.quarantine(&name, false, progress).await?),
            Action::Freeze(name) => tenant(self.freeze(&name, progress).await?),
            Action::Sleep(name) => tenant(self.sleep(&name, progress).await?),
            Action::Wake(name) => tenant(self.wake(&name, progress).await?),
            Action::RotateSecrets(name) => Outcome::Rotated {
                restarted: self.rotate_secrets(&name, progress).await?,
                tenant: name,
            },
            Action::Destroy { name, wipe } => {
                self.destroy(&name, wipe, progress).await?;
                Outcome::Destroyed {
                    tenant: name,
                    wiped: wipe,
                }
            }
        })
    }
}
