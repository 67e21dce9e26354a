//! The tenant's volume: its EBS volume (found by serial) or, in dev, a loop image made
//! full-size; formatted only when it holds no filesystem, mounted `nodev,nosuid` at
//! `<tenants_root>/<name>` with its root owned by the tenant's remapped root, mode 0700. A
//! volume from another host (a move) is taken over: its files shifted into this host's id
//! range for the tenant and its recorded deployment adopted (`portable`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use super::{blocking, Run, Step, StepKind};
use crate::error::StepError;
use crate::host::Host;
use crate::portable;
use crate::record::Record;
use crate::spec::VolumeSource;
use crate::volume::{self, VolumeError};

/// Mounts and releases the volume.
pub struct Volume;

/// What the volume work needs, owned, so it can run on the blocking pool.
struct Target {
    rec: Record,
    mountpoint: PathBuf,
}

fn mount(t: &Target) -> Result<(), VolumeError> {
    let device = match &t.rec.spec.volume {
        VolumeSource::Ebs(_) => Host::volume_device(&t.rec)?,
        VolumeSource::LoopImage(image) => {
            volume::loop_device(Path::new(image), t.rec.spec.limits.disk.0)?
        }
    };
    volume::ensure_ext4(&device, Host::remapped_root(&t.rec))?;
    volume::mount(&device, &t.mountpoint)?;
    std::fs::set_permissions(&t.mountpoint, std::fs::Permissions::from_mode(0o700)).map_err(
        |source| VolumeError::Io {
            action: "chmod",
            path: t.mountpoint.clone(),
            source,
        },
    )
}

/// Unmounts; a loop image is detached too, and deleted with `--wipe`.
fn release(t: &Target) -> Result<(), VolumeError> {
    volume::unmount(&t.mountpoint)?;
    if let VolumeSource::LoopImage(image) = &t.rec.spec.volume {
        let image = Path::new(image);
        volume::detach_loops(image)?;
        if t.rec.wipe {
            match std::fs::remove_file(image) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(VolumeError::Io {
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

/// The volume's manifest for `rec`: this host's id range for the tenant and its deployment,
/// what another host needs to take the tenant over with this volume.
fn manifest(rec: &Record) -> portable::Manifest {
    portable::Manifest {
        id_base: crate::ids::range_base(rec.slot),
        deployment: rec.deployment.clone(),
    }
}

/// Writes the volume's manifest (after a deploy changed the deployment).
pub async fn record(host: &Host, rec: &Record) -> Result<(), StepError> {
    let (at, manifest) = (host.mountpoint(rec), manifest(rec));
    blocking(move || portable::write(&at, &manifest)).await
}

fn target(host: &Host, rec: &Record) -> Target {
    Target {
        rec: rec.clone(),
        mountpoint: host.mountpoint(rec),
    }
}

#[async_trait]
impl Step for Volume {
    fn kind(&self) -> StepKind {
        StepKind::Volume
    }

    async fn up(&self, run: &mut Run<'_>) -> Result<(), StepError> {
        let t = target(run.host, run.rec);
        let at = t.mountpoint.clone();
        blocking(move || mount(&t)).await?;
        // A volume another host used (a move) arrives with its files in that host's id
        // range for the tenant, and with the deployment it ran there.
        let base = crate::ids::range_base(run.rec.slot);
        let (found, shifted) = blocking(move || portable::take_over(&at, base)).await?;
        // What is on the volume now: take_over recorded this host's range if it shifted.
        let on_volume = found
            .clone()
            .map(|m| portable::Manifest { id_base: base, ..m });
        if shifted > 0 {
            run.say(format!(
                "volume: {shifted} files moved into this host's id range for the tenant (the volume came from another host)"
            ));
        }
        if run.rec.deployment.is_none() {
            if let Some(dep) = found.and_then(|m| m.deployment) {
                run.say(format!(
                    "volume: adopted deploy revision {} recorded on it; the Deploy step runs it",
                    dep.revision
                ));
                run.rec.deployment = Some(dep);
                run.save()?;
            }
        }
        // Written only when it changes: not on every start and reconcile of every tenant.
        if on_volume.as_ref() == Some(&manifest(run.rec)) {
            return Ok(());
        }
        record(run.host, run.rec).await
    }

    async fn down(&self, run: &mut Run<'_>) -> Result<(), StepError> {
        let t = target(run.host, run.rec);
        blocking(move || release(&t)).await
    }

    async fn check(&self, host: &Host, rec: &Record) -> Result<bool, StepError> {
        Ok(volume::mounted_source(&host.mountpoint(rec)).is_some())
    }
}
