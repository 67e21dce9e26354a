//! Shared hosting: reserve room on a shared host, create the customer's EBS volume with its
//! CMK in that host's AZ, attach it, then tell hostd over SSM Run Command. Each step finds
//! what an earlier, interrupted run left and continues from there.

use aws_sdk_ec2::types::{ResourceType, VolumeState, VolumeType};
use m8trx_spec::CustomerName;
use serde::Serialize;

use crate::config::{Clients, ControlConfig};
use crate::ec2::{attached_to, customer_volumes, wait_volume};
use crate::error::{ControlError, Result};
use crate::hostd;
use crate::identity::CustomerIdentity;
use crate::inventory::{self, Host, Need, Reservation};
use crate::progress::Progress;
use crate::request::{DeploySpec, Template};
use crate::tags;
use crate::userdata;
use m8trx_spec::tenant::{self as tenant, ByteSize, TenantSpec, VolumeSource};

/// Process limit of a tenant's aggregate cgroup.
pub const TENANT_PIDS: u32 = 4096;

/// Where a shared customer ended up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SharedPlacement {
    /// The shared host.
    pub host_instance_id: String,
    /// Its availability zone (and the volume's).
    pub availability_zone: String,
    /// The tenant's EBS volume.
    pub volume_id: String,
    /// Device name it is attached as.
    pub device: String,
    /// What hostd said.
    pub hostd_messages: Vec<String>,
}

/// What a tenant of this size reserves.
pub fn need(spec: &DeploySpec) -> Need {
    Need {
        memory_mib: spec.instance.shared_memory_mib,
        cpu_millis: spec.instance.shared_cpu_millis,
    }
}

/// The tenant spec hostd receives for this deploy; a shared host needs the role's ExternalId
/// (the customer role's trust policy admits the shared-host role only with it).
pub fn tenant_spec(
    spec: &DeploySpec,
    config: &ControlConfig,
    identity: &CustomerIdentity,
    volume: VolumeSource,
) -> Result<TenantSpec> {
    let external_id = identity.external_id.clone().ok_or_else(|| {
        ControlError::Missing(format!(
            "customer role {} has no ExternalId (request secrets.external_id or the role's tag); \
             shared hosting needs it",
            identity.role_arn
        ))
    })?;
    let tspec = TenantSpec {
        version: tenant::SPEC_VERSION,
        name: spec.name.clone(),
        template: match spec.template {
            Template::Agent => tenant::Template::Agent,
            Template::Baseline => tenant::Template::Baseline,
        },
        subdomains: vec![userdata::hostname(spec, &config.platform_domain)],
        tls: Some(match spec.template {
            Template::Agent => tenant::TlsMode::Passthrough,
            Template::Baseline => tenant::TlsMode::Terminate,
        }),
        limits: tenant::Limits {
            cpu: spec.instance.shared_cpu_millis as f64 / 1000.0,
            memory: ByteSize(spec.instance.shared_memory_mib << 20),
            pids: TENANT_PIDS,
            disk: ByteSize(u64::try_from(spec.volume_size_gb).unwrap_or(0) << 30),
            io_read: tenant::DEFAULT_IO_READ,
            io_write: tenant::DEFAULT_IO_WRITE,
            egress: tenant::DEFAULT_EGRESS,
            ingress: tenant::DEFAULT_INGRESS,
        },
        volume,
        role: tenant::Role {
            arn: identity.role_arn.clone(),
            external_id,
        },
        ingress: None,
        // The template's idle policy (frozen after 30 minutes idle, asleep after 2 hours).
        idle: None,
    };
    // The same rules hostd applies, here, before anything is placed or attached.
    tspec.validate().map_err(|e| {
        ControlError::Conflict(format!(
            "the tenant spec for {} breaks hostd's rules: {e}",
            spec.name
        ))
    })?;
    Ok(tspec)
}

/// Read-only check that a deploy can be placed: an existing reservation, or a host with room.
pub async fn preflight(
    clients: &Clients,
    config: &ControlConfig,
    spec: &DeploySpec,
    progress: &Progress,
) -> Result<()> {
    let name = spec.name.as_str();
    if let Some((host, _)) = inventory::find_reservation(&clients.ec2, &config.fleet, name).await? {
        progress.line(format!(
            "placement: {name} already holds a reservation on {}",
            host.instance_id
        ));
        return Ok(());
    }
    let zone = existing_volume_zone(clients, &spec.name).await?;
    let hosts = inventory::list_hosts(&clients.ec2, &config.fleet, progress).await?;
    if inventory::choose(&hosts, need(spec), zone.as_deref()).is_none() {
        return Err(ControlError::NoCapacity(inventory::no_room_message(
            &config.fleet,
            name,
            &hosts,
            need(spec),
            zone.as_deref(),
        )));
    }
    Ok(())
}

async fn existing_volume_zone(clients: &Clients, name: &CustomerName) -> Result<Option<String>> {
    let vols = customer_volumes(&clients.ec2, name).await?;
    Ok(vols
        .first()
        .and_then(|v| v.availability_zone())
        .map(str::to_owned))
}

async fn ensure_volume(
    clients: &Clients,
    config: &ControlConfig,
    spec: &DeploySpec,
    identity: &CustomerIdentity,
    host: &Host,
    progress: &Progress,
) -> Result<String> {
    let name = &spec.name;
    let existing = customer_volumes(&clients.ec2, name).await?;
    if existing.len() > 1 {
        let ids: Vec<_> = existing.iter().filter_map(|v| v.volume_id()).collect();
        return Err(ControlError::Conflict(format!(
            "{name} has {} tenant volumes ({}); control expects one: delete the extra ones",
            existing.len(),
            ids.join(", ")
        )));
    }
    let volume_id = if let Some(v) = existing.first() {
        let id = v.volume_id().unwrap_or_default().to_owned();
        let az = v.availability_zone().unwrap_or_default();
        if az != host.availability_zone {
            return Err(ControlError::Conflict(format!(
                "{name}'s volume {id} is in {az} but its shared host {} is in {}: an EBS volume \
                 attaches only in its own AZ (see `control move` in the README)",
                host.instance_id, host.availability_zone
            )));
        }
        progress.line(format!("volume: {id} already exists in {az}; reusing it"));
        id
    } else {
        let mut volume_tags =
            tags::customer_tags(name, tags::COMPONENT_TENANT_VOLUME, Some("data"));
        volume_tags.push(tags::tag(tags::TEMPLATE, spec.template.as_str()));
        let out = clients
            .ec2
            .create_volume()
            .availability_zone(&host.availability_zone)
            .size(spec.volume_size_gb)
            .volume_type(VolumeType::Gp3)
            .encrypted(true)
            .kms_key_id(&identity.kms_key_arn)
            .tag_specifications(tags::spec(ResourceType::Volume, volume_tags))
            .send()
            .await
            .map_err(|e| ControlError::aws(format!("CreateVolume for {name}"), e))?;
        let id = out.volume_id().unwrap_or_default().to_owned();
        progress.line(format!(
            "volume: created {id} ({} GB gp3, encrypted with {}) in {}",
            spec.volume_size_gb, identity.kms_key_arn, host.availability_zone
        ));
        id
    };
    crate::ec2::wait_usable(&clients.ec2, config, &volume_id).await?;
    Ok(volume_id)
}

/// Attaches the volume to `host` unless it is (waits for it); returns the device name.
pub(crate) async fn ensure_attached(
    clients: &Clients,
    config: &ControlConfig,
    host: &Host,
    volume_id: &str,
    progress: &Progress,
) -> Result<String> {
    let v = crate::ec2::volume(&clients.ec2, volume_id)
        .await?
        .ok_or_else(|| ControlError::Conflict(format!("volume {volume_id} disappeared")))?;
    if let Some(dev) = attached_to(&v, &host.instance_id) {
        progress.line(format!(
            "volume: {volume_id} already attached to {} as {dev}",
            host.instance_id
        ));
        return Ok(dev);
    }
    if let Some(other) = v.attachments().iter().find_map(|a| a.instance_id()) {
        if other != host.instance_id {
            return Err(ControlError::Conflict(format!(
                "volume {volume_id} is attached to {other}, not to the tenant's host {}: detach it first",
                host.instance_id
            )));
        }
    }
    let pending = v.attachments().iter().find_map(|a| {
        (a.instance_id() == Some(host.instance_id.as_str())).then(|| a.device().map(str::to_owned))
    });
    let device = match pending.flatten() {
        Some(dev) => dev,
        None => {
            // Re-read the host so devices attached since placement are seen.
            let fresh = inventory::get_host(&clients.ec2, &host.instance_id).await?;
            let dev = fresh.free_device().ok_or_else(|| {
                ControlError::NoCapacity(format!(
                    "shared host {} has no free device name for another volume",
                    host.instance_id
                ))
            })?;
            clients
                .ec2
                .attach_volume()
                .volume_id(volume_id)
                .instance_id(&host.instance_id)
                .device(&dev)
                .send()
                .await
                .map_err(|e| {
                    ControlError::aws(
                        format!("AttachVolume {volume_id} to {}", host.instance_id),
                        e,
                    )
                })?;
            progress.line(format!(
                "volume: attaching {volume_id} to {} as {dev}",
                host.instance_id
            ));
            dev
        }
    };
    let host_id = host.instance_id.clone();
    wait_volume(&clients.ec2, config, volume_id, "attached", move |v| {
        v.and_then(|v| attached_to(v, &host_id)).is_some()
    })
    .await?;
    progress.line(format!(
        "volume: attached {volume_id} to {}",
        host.instance_id
    ));
    Ok(device)
}

/// Places the customer on a shared host and has hostd create the tenant.
pub async fn deploy(
    clients: &Clients,
    config: &ControlConfig,
    spec: &DeploySpec,
    identity: &CustomerIdentity,
    progress: &Progress,
) -> Result<SharedPlacement> {
    let name = spec.name.as_str();
    let (host, mut reservation) =
        match inventory::find_reservation(&clients.ec2, &config.fleet, name).await? {
            Some((h, r)) => {
                progress.line(format!(
                    "placement: resuming on {} (reservation state {})",
                    h.instance_id, r.state
                ));
                (h, r)
            }
            None => {
                let zone = existing_volume_zone(clients, &spec.name).await?;
                inventory::place(
                    &clients.ec2,
                    &clients.ssm,
                    &config.fleet,
                    name,
                    need(spec),
                    zone.as_deref(),
                    progress,
                )
                .await?
            }
        };
    let volume_id = ensure_volume(clients, config, spec, identity, &host, progress).await?;
    if reservation.volume_id.as_deref() != Some(volume_id.as_str()) {
        reservation.volume_id = Some(volume_id.clone());
        inventory::write_reservation(&clients.ec2, &host.instance_id, &reservation).await?;
    }
    let device = ensure_attached(clients, config, &host, &volume_id, progress).await?;
    set_state(clients, &host.instance_id, &mut reservation, "attached").await?;

    let tspec = tenant_spec(spec, config, identity, VolumeSource::Ebs(volume_id.clone()))?;
    // Kept for a later move, which creates the same tenant on another host.
    crate::tenant_record::save(&clients.ssm, &tspec).await?;
    let lines = hostd::run(
        &clients.ssm,
        config,
        &host.instance_id,
        &format!("create tenant {name}"),
        hostd::create_commands(&tspec)?,
        progress,
    )
    .await?;
    set_state(clients, &host.instance_id, &mut reservation, "running").await?;
    progress.line(format!("shared: {name} running on {}", host.instance_id));
    Ok(SharedPlacement {
        host_instance_id: host.instance_id.clone(),
        availability_zone: host.availability_zone.clone(),
        volume_id,
        device,
        hostd_messages: lines.into_iter().map(|l| l.text).collect(),
    })
}

/// Rewrites the reservation's state when it differs.
pub(crate) async fn set_state(
    clients: &Clients,
    host: &str,
    r: &mut Reservation,
    state: &str,
) -> Result<()> {
    if r.state != state {
        r.state = state.to_owned();
        inventory::write_reservation(&clients.ec2, host, r).await?;
    }
    Ok(())
}

/// Where a compose deploy ran and what hostd said.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ComposeDeployment {
    /// The shared host the tenant lives on.
    pub host_instance_id: String,
    /// hostd's messages (its deploy progress and result).
    pub hostd_messages: Vec<String>,
}

/// Hands a deploy bundle (compose file, env file, files) to hostd on the tenant's shared
/// host; hostd checks it against the tenant's policy and deploys it.
pub async fn deploy_compose(
    clients: &Clients,
    config: &ControlConfig,
    name: &CustomerName,
    bundle: &m8trx_spec::bundle::Bundle,
    progress: &Progress,
) -> Result<ComposeDeployment> {
    let Some((host, r)) =
        inventory::find_reservation(&clients.ec2, &config.fleet, name.as_str()).await?
    else {
        return Err(ControlError::Missing(format!(
            "{name} has no placement on a shared host of fleet {:?}: deploy the tenant first (POST /v1/deployments); dedicated instances take their compose file through their own setup",
            config.fleet
        )));
    };
    if r.state != "running" {
        return Err(ControlError::Conflict(format!(
            "{name} is {} on {}, not running: finish or repeat its deploy first",
            r.state, host.instance_id
        )));
    }
    let lines = hostd::run(
        &clients.ssm,
        config,
        &host.instance_id,
        &format!("deploy {name}'s compose file"),
        hostd::deploy_commands(name.as_str(), bundle)?,
        progress,
    )
    .await?;
    Ok(ComposeDeployment {
        host_instance_id: host.instance_id,
        hostd_messages: lines.into_iter().map(|l| l.text).collect(),
    })
}

/// What a shared delete removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SharedRemoval {
    /// Host the tenant was destroyed on.
    pub host_instance_id: Option<String>,
    /// Volumes deleted.
    pub volumes_deleted: Vec<String>,
    /// Volumes detached and kept (`--keep-volume`).
    pub volumes_kept: Vec<String>,
}

/// Destroys the tenant on its host, detaches and deletes (or keeps) its volume, releases the reservation.
pub async fn delete(
    clients: &Clients,
    config: &ControlConfig,
    name: &CustomerName,
    keep_volume: bool,
    progress: &Progress,
) -> Result<SharedRemoval> {
    let mut removal = SharedRemoval::default();
    let reservation =
        inventory::find_reservation(&clients.ec2, &config.fleet, name.as_str()).await?;
    if let Some((host, mut r)) = reservation {
        set_state(clients, &host.instance_id, &mut r, "deleting").await?;
        hostd::run(
            &clients.ssm,
            config,
            &host.instance_id,
            &format!("destroy tenant {name}"),
            // Data leaves with the volume (deleted or kept detached): no wipe on the host needed.
            hostd::destroy_commands(name.as_str(), false),
            progress,
        )
        .await?;
        removal.host_instance_id = Some(host.instance_id.clone());
    } else {
        progress.line(format!(
            "shared: {name} holds no reservation in fleet {:?}",
            config.fleet
        ));
    }

    for v in customer_volumes(&clients.ec2, name).await? {
        let id = v.volume_id().unwrap_or_default().to_owned();
        for a in v.attachments() {
            let (Some(inst), Some(dev)) = (a.instance_id(), a.device()) else {
                continue;
            };
            clients
                .ec2
                .detach_volume()
                .volume_id(&id)
                .instance_id(inst)
                .device(dev)
                .send()
                .await
                .map_err(|e| ControlError::aws(format!("DetachVolume {id} from {inst}"), e))?;
            progress.line(format!("volume: detaching {id} from {inst}"));
        }
        wait_volume(&clients.ec2, config, &id, "detached", |v| {
            matches!(
                v.and_then(|v| v.state()),
                Some(VolumeState::Available) | None
            )
        })
        .await?;
        if keep_volume {
            progress.line(format!("volume: {id} detached and kept (--keep-volume)"));
            removal.volumes_kept.push(id);
            continue;
        }
        clients
            .ec2
            .delete_volume()
            .volume_id(&id)
            .send()
            .await
            .map_err(|e| ControlError::aws(format!("DeleteVolume {id}"), e))?;
        progress.line(format!("volume: deleted {id}"));
        removal.volumes_deleted.push(id);
    }

    // A move in progress holds a second reservation on its target: release every one.
    for (host, _) in inventory::reservations_of(&clients.ec2, &config.fleet, name.as_str()).await? {
        inventory::release(&clients.ec2, &host.instance_id, name.as_str()).await?;
        progress.line(format!(
            "placement: released {name}'s reservation on {}",
            host.instance_id
        ));
    }
    crate::tenant_record::remove(&clients.ssm, name).await?;
    Ok(removal)
}
