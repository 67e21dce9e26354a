//! Moving a shared tenant to another shared host of its fleet, and draining a host.
//!
//! A move in one availability zone hands the tenant's EBS volume over: the target is
//! reserved first (`moving-in`, with `from=<source>`), so its room is held; the tenant is
//! destroyed on the source without wiping (the engine stops, the volume is released, its
//! data stays); the volume is detached, attached to the target, and hostd there creates the
//! tenant from its recorded spec — it takes the volume over (its files shifted into the
//! target's id range for the tenant) and runs the deployment recorded on it. Then the
//! target's entry becomes `running` and the source's is released.
//!
//! A move to another zone cannot attach the volume there: the stopped tenant's volume is
//! snapshotted and a volume made from the snapshot in the target's zone, under the same
//! customer key (`zone_copy`); the original and the snapshot are deleted once the move
//! completed, and discarded copies on a roll-back.
//!
//! Every step reads where things are before acting, so re-running the same move after a
//! crash (or `kill -9` of control) continues it. A step that fails after the source stopped
//! rolls back: the volume goes back to the source, hostd there creates the tenant again, and
//! the target's reservation is released — the tenant serves from its source again.

use aws_sdk_ec2::types::VolumeState;
use m8trx_spec::tenant::VolumeSource;
use m8trx_spec::CustomerName;
use serde::Serialize;

use crate::config::{Clients, ControlConfig};
use crate::ec2::{attached_to, wait_volume};
use crate::error::{ControlError, Result};
use crate::hostd;
use crate::inventory::{self, Host, Reservation, MOVING_IN};
use crate::progress::Progress;
use crate::shared::{ensure_attached, set_state};

/// State of the source's entry once the tenant stopped there for a move.
pub const MOVING_OUT: &str = "moving-out";

/// Where a move took the tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MoveOutcome {
    /// Customer name.
    pub name: String,
    /// The host it left.
    pub from_host: String,
    /// The host it runs on now.
    pub to_host: String,
    /// Its volume (the same one: moved, not copied).
    pub volume_id: String,
    /// Device name on the target.
    pub device: String,
}

/// Moves `name` to another shared host (`to`, or the best fit: in the volume's zone first).
pub async fn move_shared(
    clients: &Clients,
    config: &ControlConfig,
    name: &CustomerName,
    to: Option<&str>,
    progress: &Progress,
) -> Result<MoveOutcome> {
    let (ec2, tenant) = (&clients.ec2, name.as_str());
    let entries = inventory::reservations_of(ec2, &config.fleet, tenant).await?;
    let target = entries.iter().find(|(_, r)| r.state == MOVING_IN).cloned();
    let homes: Vec<_> = entries
        .iter()
        .filter(|(_, r)| r.state != MOVING_IN)
        .collect();
    if homes.len() > 1 {
        let ids: Vec<_> = homes.iter().map(|(h, _)| h.instance_id.as_str()).collect();
        return Err(ControlError::Conflict(format!(
            "{name} holds reservations on several shared hosts ({}): remove the stale \
             m8trx:tenant:{name} tags by hand",
            ids.join(", ")
        )));
    }
    let source = homes.first().map(|e| (*e).clone());
    let Some((source, mut from)) = source else {
        let Some((host, mut r)) = target else {
            return Err(ControlError::Missing(format!(
                "{name} has no placement on a shared host of fleet {:?}: nothing to move",
                config.fleet
            )));
        };
        // Only the target's entry is left (the source's was removed by hand): finish there.
        let volume_id = r.volume_id.clone().ok_or_else(|| {
            ControlError::Conflict(format!(
                "{name} is moving in to {} but no volume is recorded: delete and deploy it again",
                host.instance_id
            ))
        })?;
        let mut spec = crate::tenant_record::load(&clients.ssm, name).await?;
        spec.volume = VolumeSource::Ebs(volume_id.clone());
        let device = hand_over(clients, config, &host, &mut r, &volume_id, &spec, progress).await?;
        return finish(
            clients,
            config,
            &spec,
            (&host, &mut r),
            None,
            device,
            progress,
        )
        .await;
    };
    let volume_id = from.volume_id.clone().ok_or_else(|| {
        ControlError::Conflict(format!(
            "{name}'s reservation on {} names no volume: finish its deploy first",
            source.instance_id
        ))
    })?;
    // Before anything changes: the spec hostd needs on the target.
    let mut spec = crate::tenant_record::load(&clients.ssm, name).await?;
    spec.volume = VolumeSource::Ebs(volume_id.clone());

    if target.is_none() && to == Some(source.instance_id.as_str()) {
        // Nothing under way and already there: a finished move run again, or a no-op.
        progress.line(format!(
            "move: {name} already runs on {}",
            source.instance_id
        ));
        crate::zone_copy::remove_original(clients, &volume_id, progress).await?;
        let v = crate::ec2::volume(&clients.ec2, &volume_id).await?;
        return Ok(MoveOutcome {
            name: name.to_string(),
            from_host: source.instance_id.clone(),
            to_host: source.instance_id.clone(),
            device: v
                .as_ref()
                .and_then(|v| attached_to(v, &source.instance_id))
                .unwrap_or_default(),
            volume_id,
        });
    }
    let (target, mut into) = match target {
        Some((host, r)) => {
            if to.is_some_and(|t| t != host.instance_id) {
                return Err(ControlError::Conflict(format!(
                    "a move of {name} to {} is under way: run the move again without --host (or with --host {}) to finish it",
                    host.instance_id, host.instance_id
                )));
            }
            progress.line(format!(
                "move: resuming {name}'s move from {} to {}",
                source.instance_id, host.instance_id
            ));
            (host, r)
        }
        None => reserve_target(clients, config, &source, &from, to, progress).await?,
    };

    // The source stops serving only now, with the target's room held.
    let forward = async {
        stop_source(clients, config, &source, &mut from, &volume_id, progress).await?;
        // Another zone gets a copy: a snapshot of the stopped volume, a volume from it there.
        let moved = match target.availability_zone == source.availability_zone {
            true => volume_id.clone(),
            false => {
                crate::zone_copy::copy_to_zone(
                    clients,
                    config,
                    name,
                    &volume_id,
                    &target.availability_zone,
                    progress,
                )
                .await?
            }
        };
        hand_over(clients, config, &target, &mut into, &moved, &spec, progress).await
    }
    .await;
    match forward {
        Ok(device) => {
            let arrived = (&target, &mut into);
            finish(
                clients,
                config,
                &spec,
                arrived,
                Some(&source),
                device,
                progress,
            )
            .await
        }
        Err(e) => {
            progress.line(format!("move: {e}; rolling back to {}", source.instance_id));
            let ends = (&source, &target);
            match roll_back(clients, config, ends, &mut from, &into, &volume_id, &spec, progress).await {
                Ok(()) => Err(ControlError::Conflict(format!(
                    "moving {name} to {} failed and was rolled back (it runs on {} again): {e}",
                    target.instance_id, source.instance_id
                ))),
                Err(back) => Err(ControlError::Conflict(format!(
                    "moving {name} to {} failed ({e}) and so did the roll-back ({back}); run the same move again to finish it",
                    target.instance_id
                ))),
            }
        }
    }
}

/// The host a move of `name` goes to, decided before anything changes: the target of a
/// move under way, `to` when it is a host of the fleet, else the best fit in the volume's
/// zone, or in any zone when none there has room. A job records it, so running the job again after a crash finishes the same
/// move instead of starting another one.
pub async fn choose_target(
    clients: &Clients,
    config: &ControlConfig,
    name: &CustomerName,
    to: Option<&str>,
    progress: &Progress,
) -> Result<String> {
    let entries = inventory::reservations_of(&clients.ec2, &config.fleet, name.as_str()).await?;
    if let Some((host, _)) = entries.iter().find(|(_, r)| r.state == MOVING_IN) {
        if to.is_some_and(|t| t != host.instance_id) {
            return Err(ControlError::Conflict(format!(
                "a move of {name} to {} is under way: run the move again without a host (or with {}) to finish it",
                host.instance_id, host.instance_id
            )));
        }
        return Ok(host.instance_id.clone());
    }
    let Some((source, from)) = entries.into_iter().next() else {
        return Err(ControlError::Missing(format!(
            "{name} has no placement on a shared host of fleet {:?}: nothing to move",
            config.fleet
        )));
    };
    if to == Some(source.instance_id.as_str()) {
        return Ok(source.instance_id);
    }
    let hosts = inventory::list_hosts(&clients.ec2, &config.fleet, progress).await?;
    if let Some(t) = to {
        let Some(h) = hosts.iter().find(|h| h.instance_id == t) else {
            return Err(ControlError::Missing(format!(
                "{t} is not a running shared host of fleet {:?}",
                config.fleet
            )));
        };
        return Ok(h.instance_id.clone());
    }
    let need = inventory::Need {
        memory_mib: from.memory_mib,
        cpu_millis: from.cpu_millis,
    };
    let others: Vec<Host> = hosts
        .into_iter()
        .filter(|h| h.instance_id != source.instance_id)
        .collect();
    // The volume's zone first (the volume itself moves); another zone only if none there
    // has room (a copy moves).
    inventory::choose(&others, need, Some(&source.availability_zone))
        .or_else(|| inventory::choose(&others, need, None))
        .map(|h| h.instance_id.clone())
        .ok_or_else(|| {
            ControlError::NoCapacity(format!(
                "no other shared host has room for {name}: {}",
                inventory::no_room_message(&config.fleet, name.as_str(), &others, need, None)
            ))
        })
}

/// Reserves the target (`moving-in`, `from=<source>`) under its placement lock.
async fn reserve_target(
    clients: &Clients,
    config: &ControlConfig,
    source: &Host,
    from: &Reservation,
    to: Option<&str>,
    progress: &Progress,
) -> Result<(Host, Reservation)> {
    let name = &from.tenant;
    let entry = Reservation {
        state: MOVING_IN.to_owned(),
        from: Some(source.instance_id.clone()),
        ..from.clone()
    };
    let hosts = inventory::list_hosts(&clients.ec2, &config.fleet, progress).await?;
    let t = match to {
        Some(t) => t.to_owned(),
        None => {
            let name = CustomerName::parse(name)
                .map_err(|e| ControlError::Conflict(format!("ledger entry {name}: {e}")))?;
            choose_target(clients, config, &name, None, progress).await?
        }
    };
    if !hosts.iter().any(|h| h.instance_id == t) {
        return Err(ControlError::Missing(format!(
            "{t} is not a running shared host of fleet {:?}",
            config.fleet
        )));
    }
    // Only the chosen host: place_as re-checks its room under its lock.
    let exclude: Vec<String> = hosts
        .iter()
        .map(|h| h.instance_id.clone())
        .filter(|id| *id != t)
        .collect();
    let zone = None;
    let (host, r) = inventory::place_as(
        &clients.ec2,
        &clients.ssm,
        &config.fleet,
        &entry,
        zone,
        &exclude,
        progress,
    )
    .await?;
    progress.line(format!(
        "move: {name} goes from {} to {} (room held there)",
        source.instance_id, host.instance_id
    ));
    Ok((host, r))
}

/// Destroys the tenant on the source without wiping, then detaches its volume.
async fn stop_source(
    clients: &Clients,
    config: &ControlConfig,
    source: &Host,
    from: &mut Reservation,
    volume_id: &str,
    progress: &Progress,
) -> Result<()> {
    let name = from.tenant.clone();
    let v = crate::ec2::volume(&clients.ec2, volume_id).await?;
    if v.as_ref()
        .and_then(|v| attached_to(v, &source.instance_id))
        .is_some()
    {
        set_state(clients, &source.instance_id, from, MOVING_OUT).await?;
        hostd::run(
            &clients.ssm,
            config,
            &source.instance_id,
            &format!("stop {name} for its move (destroy, volume kept)"),
            hostd::destroy_commands(&name, false),
            progress,
        )
        .await?;
        detach(clients, config, volume_id, &source.instance_id, progress).await?;
    }
    Ok(())
}

/// Detaches `volume_id` from `instance` and waits until it is available.
async fn detach(
    clients: &Clients,
    config: &ControlConfig,
    volume_id: &str,
    instance: &str,
    progress: &Progress,
) -> Result<()> {
    let v = crate::ec2::volume(&clients.ec2, volume_id).await?;
    if let Some(device) = v.as_ref().and_then(|v| attached_to(v, instance)) {
        clients
            .ec2
            .detach_volume()
            .volume_id(volume_id)
            .instance_id(instance)
            .device(&device)
            .send()
            .await
            .map_err(|e| {
                ControlError::aws(format!("DetachVolume {volume_id} from {instance}"), e)
            })?;
        progress.line(format!("volume: detaching {volume_id} from {instance}"));
    }
    wait_volume(&clients.ec2, config, volume_id, "available", |v| {
        matches!(v.and_then(|v| v.state()), Some(VolumeState::Available))
    })
    .await?;
    Ok(())
}

/// Attaches the volume to the target and has hostd there create the tenant.
async fn hand_over(
    clients: &Clients,
    config: &ControlConfig,
    target: &Host,
    into: &mut Reservation,
    volume_id: &str,
    spec: &m8trx_spec::tenant::TenantSpec,
    progress: &Progress,
) -> Result<String> {
    if into.volume_id.as_deref() != Some(volume_id) {
        into.volume_id = Some(volume_id.to_owned());
        inventory::write_reservation(&clients.ec2, &target.instance_id, into).await?;
    }
    let device = ensure_attached(clients, config, target, volume_id, progress).await?;
    let mut spec = spec.clone();
    spec.volume = VolumeSource::Ebs(volume_id.to_owned());
    hostd::run(
        &clients.ssm,
        config,
        &target.instance_id,
        &format!("create tenant {} (moved in)", spec.name),
        hostd::create_commands(&spec)?,
        progress,
    )
    .await?;
    Ok(device)
}

/// DNS pointed at the target, then the source's entry released and the target's made `running`.
async fn finish(
    clients: &Clients,
    config: &ControlConfig,
    spec: &m8trx_spec::tenant::TenantSpec,
    (target, into): (&Host, &mut Reservation),
    source: Option<&Host>,
    device: String,
    progress: &Progress,
) -> Result<MoveOutcome> {
    let name = &spec.name;
    let from_host = into.from.clone().unwrap_or_default();
    // DNS last, once the target serves; until the hook succeeds the ledger still says
    // "moving", so a re-run calls it again.
    point_dns(clients, config, &spec.subdomains, target, progress).await?;
    // The source's entry goes first: stopped here, the target's `moving-in` entry alone
    // tells a re-run what is left.
    if let Some(source) = source {
        inventory::release(&clients.ec2, &source.instance_id, name.as_str()).await?;
    }
    into.state = "running".to_owned();
    into.from = None;
    inventory::write_reservation(&clients.ec2, &target.instance_id, into).await?;
    let volume_id = into.volume_id.clone().unwrap_or_default();
    // A move between zones leaves the volume it copied and that volume's snapshot.
    crate::zone_copy::remove_original(clients, &volume_id, progress).await?;
    progress.line(format!(
        "move: {name} runs on {} (was {from_host}){}",
        target.instance_id,
        match config.dns_hook {
            Some(_) => "",
            None => "; point its DNS record at that host (no --dns-hook)",
        }
    ));
    Ok(MoveOutcome {
        name: name.to_string(),
        from_host,
        to_host: target.instance_id.clone(),
        volume_id,
        device,
    })
}

/// Runs the DNS hook for each of `hostnames`, pointing it at `target`.
async fn point_dns(
    clients: &Clients,
    config: &ControlConfig,
    hostnames: &[String],
    target: &Host,
    progress: &Progress,
) -> Result<()> {
    let Some(hook) = &config.dns_hook else {
        return Ok(());
    };
    let ip = crate::ec2::public_ip(&clients.ec2, &target.instance_id)
        .await?
        .unwrap_or_else(|| "-".to_owned());
    for hostname in hostnames {
        let run = tokio::process::Command::new(hook)
            .args([hostname, &target.instance_id, &ip])
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(std::time::Duration::from_secs(60), run)
            .await
            .map_err(|_| {
                ControlError::Conflict(format!(
                    "DNS hook {} for {hostname} took over 60 s; run the move again to retry it",
                    hook.display()
                ))
            })?
            .map_err(|e| {
                ControlError::Conflict(format!(
                    "DNS hook {} cannot run: {e}; fix --dns-hook and run the move again",
                    hook.display()
                ))
            })?;
        if !out.status.success() {
            return Err(ControlError::Conflict(format!(
                "DNS hook {} for {hostname} failed ({}): {}; the tenant serves on {} — run the move again to retry the hook",
                hook.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                target.instance_id
            )));
        }
        progress.line(format!(
            "dns: {hostname} points at {} ({ip})",
            target.instance_id
        ));
    }
    Ok(())
}

/// Puts the tenant back on its source: the target's tenant removed and its volume (the
/// same one, or a copy) detached, the volume back on the source, hostd create there, the
/// target's room released, a copy and its snapshot discarded.
#[allow(clippy::too_many_arguments)] // the two ends of the move and what travels between them
async fn roll_back(
    clients: &Clients,
    config: &ControlConfig,
    (source, target): (&Host, &Host),
    from: &mut Reservation,
    into: &Reservation,
    volume_id: &str,
    spec: &m8trx_spec::tenant::TenantSpec,
    progress: &Progress,
) -> Result<()> {
    let on_target = into.volume_id.as_deref().unwrap_or(volume_id);
    let v = crate::ec2::volume(&clients.ec2, on_target).await?;
    if v.as_ref()
        .and_then(|v| attached_to(v, &target.instance_id))
        .is_some()
    {
        let _ = hostd::run(
            &clients.ssm,
            config,
            &target.instance_id,
            &format!("remove {} again (roll-back)", spec.name),
            hostd::destroy_commands(spec.name.as_str(), false),
            progress,
        )
        .await;
        detach(clients, config, on_target, &target.instance_id, progress).await?;
    }
    ensure_attached(clients, config, source, volume_id, progress).await?;
    hostd::run(
        &clients.ssm,
        config,
        &source.instance_id,
        &format!("create tenant {} again (roll-back)", spec.name),
        hostd::create_commands(spec)?,
        progress,
    )
    .await?;
    set_state(clients, &source.instance_id, from, "running").await?;
    inventory::release(&clients.ec2, &target.instance_id, spec.name.as_str()).await?;
    crate::zone_copy::discard_copies(clients, volume_id, progress).await?;
    progress.line(format!(
        "move: rolled back; {} runs on {} again",
        spec.name, source.instance_id
    ));
    Ok(())
}

/// Marks `host` as draining (no new placement) and moves each of its tenants to another
/// host, one by one; returns the moves made.
pub async fn drain(
    clients: &Clients,
    config: &ControlConfig,
    host_id: &str,
    progress: &Progress,
) -> Result<Vec<MoveOutcome>> {
    let host = inventory::get_host(&clients.ec2, host_id).await?;
    if !host.draining {
        clients
            .ec2
            .create_tags()
            .resources(host_id)
            .tags(crate::tags::tag(crate::tags::DRAINING, "true"))
            .send()
            .await
            .map_err(|e| ControlError::aws(format!("CreateTags (drain {host_id})"), e))?;
        progress.line(format!("drain: {host_id} takes no new tenant"));
    }
    let mut moved = Vec::new();
    for r in &host.reservations {
        let name = CustomerName::parse(&r.tenant)
            .map_err(|e| ControlError::Conflict(format!("ledger entry {}: {e}", r.tenant)))?;
        // A tenant moving in here goes back where it came from by finishing elsewhere: the
        // move's own target is this host, so it is finished first, then moved on.
        progress.line(format!("drain: moving {name} off {host_id}"));
        let to = choose_target(clients, config, &name, None, progress).await?;
        let mut out = move_shared(clients, config, &name, Some(&to), progress).await?;
        if out.to_host == host_id {
            let to = choose_target(clients, config, &name, None, progress).await?;
            out = move_shared(clients, config, &name, Some(&to), progress).await?;
        }
        moved.push(out);
    }
    progress.line(format!(
        "drain: {host_id} holds no tenant ({} moved)",
        moved.len()
    ));
    Ok(moved)
}
