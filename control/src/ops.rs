//! The operations the CLI and the API expose: deploy, delete and status of one customer.
//! Order of a deploy: checks that touch nothing → the six SSM parameters → compute. Order of a
//! delete: tenant on its host → volume → instance → SSM parameters. Both resume a half-done run.

use m8trx_spec::CustomerName;
use serde::Serialize;

use crate::config::{Clients, ControlConfig};
use crate::dedicated::{self, DedicatedPlacement};
use crate::ec2::{all_customer_volumes, customer_instances, LIVE_INSTANCE_STATES};
use crate::error::{ControlError, Result};
use crate::identity;
use crate::inventory;
use crate::params::{self, ParamAction};
use crate::progress::Progress;
use crate::request::{DeploySpec, Hosting};
use crate::shared::{self, SharedPlacement, SharedRemoval};
use crate::userdata;

/// A configured control: settings plus AWS clients.
#[derive(Debug, Clone)]
pub struct Control {
    /// Settings.
    pub config: ControlConfig,
    /// AWS clients.
    pub clients: Clients,
}

/// Where a deploy placed the customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "hosting", rename_all = "lowercase")]
pub enum Placement {
    /// On a shared host.
    Shared(SharedPlacement),
    /// On its own instance.
    Dedicated(DedicatedPlacement),
}

/// Result of a deploy, returned by the CLI (JSON) and stored in the API job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeployOutcome {
    /// Customer name.
    pub name: String,
    /// `https://` hostname.
    pub hostname: String,
    /// Where it runs.
    pub placement: Placement,
    /// What happened to each SSM parameter.
    pub ssm_parameters: Vec<(String, ParamAction)>,
}

/// Result of a delete.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DeleteOutcome {
    /// Customer name.
    pub name: String,
    /// Shared-host removal, when the customer was (or half was) on a shared host.
    pub shared: SharedRemoval,
    /// Dedicated instances terminated.
    pub instances_terminated: Vec<String>,
    /// Detached volumes of the customer deleted (e.g. a root volume kept by an earlier
    /// `--keep-volume` delete).
    pub volumes_deleted: Vec<String>,
    /// SSM parameters deleted.
    pub ssm_parameters_deleted: usize,
}

/// What exists for a customer now, read from AWS.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Status {
    /// Customer name.
    pub name: String,
    /// Shared host and reservation, if any.
    pub shared_host: Option<String>,
    /// Reservation state on that host.
    pub reservation_state: Option<String>,
    /// Live dedicated instances.
    pub dedicated_instances: Vec<String>,
    /// Volumes tagged with the customer (tenant and root volumes).
    pub volumes: Vec<String>,
    /// SSM parameters that exist.
    pub ssm_parameters: Vec<String>,
}

impl Control {
    /// Builds clients from `config` with the standard credential chain.
    pub async fn new(config: ControlConfig) -> Self {
        let clients = Clients::from_config(&config).await;
        Self { config, clients }
    }

    /// Deploys a validated request; re-running it completes a half-done deploy.
    pub async fn deploy(&self, spec: &DeploySpec, progress: &Progress) -> Result<DeployOutcome> {
        let (c, cfg) = (&self.clients, &self.config);
        let name = &spec.name;
        progress.line(format!(
            "deploy {name}: {} hosting, {} template, {}, {} GB{}",
            spec.hosting.as_str(),
            spec.template.as_str(),
            spec.instance.name,
            spec.volume_size_gb,
            if spec.regulated { ", regulated" } else { "" }
        ));

        // 1. Checks that change nothing.
        userdata::check_domain(&cfg.platform_domain)?;
        let brain_url = spec
            .brain_url
            .clone()
            .or_else(|| cfg.brain_url.clone())
            .ok_or_else(|| {
                ControlError::Missing(
                    "no Brain URL: pass brain_url in the request or set --brain-url (M8TRX_BRAIN_URL)"
                        .to_owned(),
                )
            })?;
        let ident = identity::resolve(
            &c.kms,
            &c.iam,
            name,
            spec.hosting == Hosting::Dedicated,
            spec.secrets.external_id.as_deref(),
        )
        .await?;
        progress.line(format!(
            "identity: CMK {}, instance profile {}, role {}",
            ident.kms_key_arn, ident.instance_profile_name, ident.role_arn
        ));
        self.refuse_other_hosting(spec).await?;
        let plan = match spec.hosting {
            Hosting::Dedicated => Some(dedicated::preflight(c, cfg, spec).await?),
            Hosting::Shared => {
                shared::preflight(c, cfg, spec, progress).await?;
                None
            }
        };

        // 2. The six SSM parameters, before any compute.
        let wanted = params::desired(spec, &brain_url);
        let written =
            params::write_parameters(&c.ssm, name, &wanted, &ident.kms_key_arn, progress).await?;

        // 3. Compute.
        let placement = match (spec.hosting, plan) {
            (Hosting::Dedicated, Some(plan)) => Placement::Dedicated(
                dedicated::deploy(c, cfg, spec, &ident, &plan, progress).await?,
            ),
            _ => match shared::deploy(c, cfg, spec, &ident, progress).await {
                Ok(p) => Placement::Shared(p),
                Err(ControlError::NoCapacity(msg)) => {
                    // A concurrent placement took the last room after the preflight: undo the
                    // parameters this run created, so nothing is left behind.
                    self.undo_created(&written, progress).await;
                    return Err(ControlError::NoCapacity(msg));
                }
                Err(e) => return Err(e),
            },
        };
        let hostname = userdata::hostname(spec, &cfg.platform_domain);
        progress.line(format!("deploy {name}: done, https://{hostname}"));
        Ok(DeployOutcome {
            name: name.to_string(),
            hostname,
            placement,
            ssm_parameters: written,
        })
    }

    async fn undo_created(&self, written: &[(String, ParamAction)], progress: &Progress) {
        for (n, a) in written {
            if *a == ParamAction::Created {
                match self.clients.ssm.delete_parameter().name(n).send().await {
                    Ok(_) => {
                        progress.line(format!("ssm: removed {n} (created by this aborted run)"))
                    }
                    Err(e) => progress.line(format!(
                        "ssm: could not remove {n}: {}",
                        aws_sdk_ssm::error::DisplayErrorContext(&e)
                    )),
                }
            }
        }
    }

    async fn refuse_other_hosting(&self, spec: &DeploySpec) -> Result<()> {
        let name = &spec.name;
        match spec.hosting {
            Hosting::Dedicated => {
                if let Some((h, _)) = inventory::find_reservation(
                    &self.clients.ec2,
                    &self.config.fleet,
                    name.as_str(),
                )
                .await?
                {
                    return Err(ControlError::Conflict(format!(
                        "{name} is placed on shared host {}: delete it first (or, once \
                         available, `control move {name} --to dedicated`)",
                        h.instance_id
                    )));
                }
            }
            Hosting::Shared => {
                let live =
                    customer_instances(&self.clients.ec2, name, &LIVE_INSTANCE_STATES).await?;
                if let Some(i) = live.first() {
                    return Err(ControlError::Conflict(format!(
                        "{name} already runs on dedicated instance {}: delete it first (or, once \
                         available, `control move {name} --to HOST`)",
                        i.instance_id().unwrap_or_default()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Removes everything of `name` in reverse order; re-running it completes a half-done delete.
    pub async fn delete(
        &self,
        name: &CustomerName,
        keep_volume: bool,
        progress: &Progress,
    ) -> Result<DeleteOutcome> {
        let (c, cfg) = (&self.clients, &self.config);
        progress.line(format!(
            "delete {name}: tenant, volume{}, instance, SSM parameters",
            if keep_volume { " (kept)" } else { "" }
        ));
        let shared = shared::delete(c, cfg, name, keep_volume, progress).await?;
        let instances_terminated = dedicated::delete(c, cfg, name, keep_volume, progress).await?;
        let volumes_deleted = if keep_volume {
            Vec::new()
        } else {
            self.delete_kept_volumes(name, progress).await?
        };
        let ssm_parameters_deleted = params::delete_parameters(&c.ssm, name, progress).await?;
        progress.line(format!("delete {name}: done"));
        Ok(DeleteOutcome {
            name: name.to_string(),
            shared,
            instances_terminated,
            volumes_deleted,
            ssm_parameters_deleted,
        })
    }

    /// Deletes detached volumes control made for `name` that earlier steps left (kept ones).
    async fn delete_kept_volumes(
        &self,
        name: &CustomerName,
        progress: &Progress,
    ) -> Result<Vec<String>> {
        let mut deleted = Vec::new();
        for v in all_customer_volumes(&self.clients.ec2, name).await? {
            let managed = crate::tags::get(v.tags(), crate::tags::MANAGED_BY)
                == Some(crate::tags::MANAGED_BY_VALUE);
            let detached = v.state() == Some(&aws_sdk_ec2::types::VolumeState::Available);
            let Some(id) = v.volume_id().filter(|_| managed && detached) else {
                continue;
            };
            self.clients
                .ec2
                .delete_volume()
                .volume_id(id)
                .send()
                .await
                .map_err(|e| ControlError::aws(format!("DeleteVolume {id}"), e))?;
            progress.line(format!("volume: deleted kept volume {id}"));
            deleted.push(id.to_owned());
        }
        Ok(deleted)
    }

    /// Deploys a compose bundle into the shared tenant `name` (through hostd on its host).
    pub async fn deploy_compose(
        &self,
        name: &CustomerName,
        bundle: &m8trx_spec::bundle::Bundle,
        progress: &Progress,
    ) -> Result<shared::ComposeDeployment> {
        shared::deploy_compose(&self.clients, &self.config, name, bundle, progress).await
    }

    /// Reads what exists for `name` (by tag, path and ledger).
    pub async fn status(&self, name: &CustomerName) -> Result<Status> {
        let c = &self.clients;
        let res = inventory::find_reservation(&c.ec2, &self.config.fleet, name.as_str()).await?;
        let instances = customer_instances(&c.ec2, name, &LIVE_INSTANCE_STATES).await?;
        let volumes = all_customer_volumes(&c.ec2, name).await?;
        Ok(Status {
            name: name.to_string(),
            shared_host: res.as_ref().map(|(h, _)| h.instance_id.clone()),
            reservation_state: res.map(|(_, r)| r.state),
            dedicated_instances: instances
                .iter()
                .filter_map(|i| i.instance_id().map(str::to_owned))
                .collect(),
            volumes: volumes
                .iter()
                .filter_map(|v| v.volume_id().map(str::to_owned))
                .collect(),
            ssm_parameters: params::existing_parameters(&c.ssm, name).await?,
        })
    }

    /// The shared hosts of the configured fleet with their free resources.
    pub async fn hosts(&self, progress: &Progress) -> Result<Vec<inventory::Host>> {
        inventory::list_hosts(&self.clients.ec2, &self.config.fleet, progress).await
    }
}
