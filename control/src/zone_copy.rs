//! A tenant volume copied into another availability zone for a move: an EBS volume attaches
//! only in its own zone. The copy is a snapshot of the stopped tenant's volume and a new
//! volume made from it in the target's zone, encrypted under the same customer key — never
//! decrypted or re-encrypted by control, which only asks EBS. Each piece is tagged with the
//! volume it comes from, so a re-run after a crash finds it instead of making another; the
//! source volume and the snapshot are deleted only after the move completed.

use aws_sdk_ec2::types::{ResourceType, SnapshotState, VolumeState, VolumeType};
use m8trx_spec::CustomerName;

use crate::config::{Clients, ControlConfig};
use crate::error::{ControlError, Result};
use crate::progress::Progress;
use crate::tags;

/// On a copy: the volume it was made from.
pub const COPY_OF: &str = "m8trx:copy-of";
/// On a snapshot: the volume it was taken of.
pub const SNAPSHOT_OF: &str = "m8trx:snapshot-of";
/// The role of a move's snapshot.
pub const COMPONENT_TENANT_SNAPSHOT: &str = "tenant-snapshot";

/// The volume made from `volume_id` in `zone` for `name`, made now unless it exists.
pub async fn copy_to_zone(
    clients: &Clients,
    config: &ControlConfig,
    name: &CustomerName,
    volume_id: &str,
    zone: &str,
    progress: &Progress,
) -> Result<String> {
    if let Some(id) = existing_copy(clients, volume_id).await? {
        progress.line(format!("volume: copy {id} of {volume_id} already exists"));
        crate::ec2::wait_usable(&clients.ec2, config, &id).await?;
        return Ok(id);
    }
    let source = crate::ec2::volume(&clients.ec2, volume_id)
        .await?
        .ok_or_else(|| ControlError::Conflict(format!("volume {volume_id} disappeared")))?;
    let snapshot = snapshot_of(clients, config, name, volume_id, progress).await?;
    let mut copy_tags = tags::customer_tags(name, tags::COMPONENT_TENANT_VOLUME, Some("data"));
    copy_tags.push(tags::tag(COPY_OF, volume_id));
    if let Some(t) = tags::get(source.tags(), tags::TEMPLATE) {
        copy_tags.push(tags::tag(tags::TEMPLATE, t));
    }
    let mut req = clients
        .ec2
        .create_volume()
        .snapshot_id(&snapshot)
        .availability_zone(zone)
        .volume_type(VolumeType::Gp3)
        .encrypted(true)
        .tag_specifications(tags::spec(ResourceType::Volume, copy_tags));
    if let Some(key) = source.kms_key_id() {
        req = req.kms_key_id(key);
    }
    let id = req
        .send()
        .await
        .map_err(|e| ControlError::aws(format!("CreateVolume from {snapshot} in {zone}"), e))?
        .volume_id()
        .unwrap_or_default()
        .to_owned();
    progress.line(format!(
        "volume: {id} made from {snapshot} in {zone}, under the same key ({})",
        source.kms_key_id().unwrap_or("the customer's")
    ));
    crate::ec2::wait_usable(&clients.ec2, config, &id).await?;
    Ok(id)
}

async fn existing_copy(clients: &Clients, volume_id: &str) -> Result<Option<String>> {
    let out = clients
        .ec2
        .describe_volumes()
        .filters(tags::filter(COPY_OF, volume_id))
        .filters(tags::attr("status", &["creating", "available", "in-use"]))
        .send()
        .await
        .map_err(|e| ControlError::aws(format!("DescribeVolumes (copies of {volume_id})"), e))?;
    Ok(out
        .volumes()
        .first()
        .and_then(|v| v.volume_id())
        .map(str::to_owned))
}

async fn snapshots(
    clients: &Clients,
    volume_id: &str,
) -> Result<Vec<aws_sdk_ec2::types::Snapshot>> {
    let out = clients
        .ec2
        .describe_snapshots()
        .owner_ids("self")
        .filters(tags::filter(SNAPSHOT_OF, volume_id))
        .send()
        .await
        .map_err(|e| ControlError::aws(format!("DescribeSnapshots (of {volume_id})"), e))?;
    Ok(out.snapshots().to_vec())
}

/// A completed snapshot of `volume_id` taken for the move, taken now unless it exists.
async fn snapshot_of(
    clients: &Clients,
    config: &ControlConfig,
    name: &CustomerName,
    volume_id: &str,
    progress: &Progress,
) -> Result<String> {
    let found = snapshots(clients, volume_id)
        .await?
        .into_iter()
        .find(|s| s.state() != Some(&SnapshotState::Error))
        .and_then(|s| s.snapshot_id().map(str::to_owned));
    let id = match found {
        Some(id) => id,
        None => {
            let mut t = tags::customer_tags(name, COMPONENT_TENANT_SNAPSHOT, Some("move"));
            t.push(tags::tag(SNAPSHOT_OF, volume_id));
            let id = clients
                .ec2
                .create_snapshot()
                .volume_id(volume_id)
                .description(format!("m8trx move of {name}: copy of {volume_id}"))
                .tag_specifications(tags::spec(ResourceType::Snapshot, t))
                .send()
                .await
                .map_err(|e| ControlError::aws(format!("CreateSnapshot of {volume_id}"), e))?
                .snapshot_id()
                .unwrap_or_default()
                .to_owned();
            progress.line(format!("volume: snapshot {id} of {volume_id} started"));
            id
        }
    };
    let started = std::time::Instant::now();
    loop {
        let s = snapshots(clients, volume_id).await?;
        match s
            .iter()
            .find(|s| s.snapshot_id() == Some(id.as_str()))
            .and_then(|s| s.state())
        {
            Some(SnapshotState::Completed) => return Ok(id),
            Some(SnapshotState::Error) => {
                return Err(ControlError::Conflict(format!(
                    "snapshot {id} of {volume_id} failed; run the move again to take another"
                )))
            }
            _ => {}
        }
        if started.elapsed() > config.wait_timeout {
            return Err(ControlError::Timeout {
                what: format!("snapshot {id} of {volume_id} to complete"),
                seconds: config.wait_timeout.as_secs(),
            });
        }
        tokio::time::sleep(config.poll_interval).await;
    }
}

/// After a completed move onto `volume_id`: deletes the volume it was copied from and that
/// volume's snapshots. Nothing to do for a volume that is no copy.
pub async fn remove_original(
    clients: &Clients,
    volume_id: &str,
    progress: &Progress,
) -> Result<()> {
    let Some(v) = crate::ec2::volume(&clients.ec2, volume_id).await? else {
        return Ok(());
    };
    let Some(original) = tags::get(v.tags(), COPY_OF).map(str::to_owned) else {
        return Ok(());
    };
    if let Some(o) = crate::ec2::volume(&clients.ec2, &original).await? {
        if o.state() == Some(&VolumeState::Available) {
            clients
                .ec2
                .delete_volume()
                .volume_id(&original)
                .send()
                .await
                .map_err(|e| ControlError::aws(format!("DeleteVolume {original}"), e))?;
            progress.line(format!("volume: deleted {original}, copied to {volume_id}"));
        }
    }
    delete_snapshots(clients, &original, progress).await
}

/// A move that rolled back: deletes the copies of `volume_id` (detached) and its snapshots.
pub async fn discard_copies(clients: &Clients, volume_id: &str, progress: &Progress) -> Result<()> {
    while let Some(id) = existing_copy(clients, volume_id).await? {
        clients
            .ec2
            .delete_volume()
            .volume_id(&id)
            .send()
            .await
            .map_err(|e| ControlError::aws(format!("DeleteVolume {id} (discarded copy)"), e))?;
        progress.line(format!("volume: discarded copy {id} of {volume_id}"));
    }
    delete_snapshots(clients, volume_id, progress).await
}

async fn delete_snapshots(clients: &Clients, volume_id: &str, progress: &Progress) -> Result<()> {
    for s in snapshots(clients, volume_id).await? {
        let Some(id) = s.snapshot_id() else { continue };
        clients
            .ec2
            .delete_snapshot()
            .snapshot_id(id)
            .send()
            .await
            .map_err(|e| ControlError::aws(format!("DeleteSnapshot {id}"), e))?;
        progress.line(format!("volume: deleted snapshot {id}"));
    }
    Ok(())
}
