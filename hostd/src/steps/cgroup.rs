//! The tenant's cgroup envelope (engine and workload inside it) with the aggregate limits
//! of its spec: cpu, memory, pids, and io on its volume's device (hence after the volume);
//! frozen exactly while the tenant is (`crate::power`), thawed otherwise.

use async_trait::async_trait;

use super::{blocking, Run, Step, StepKind};
use crate::cgroup::{IoLimit, Limits};
use crate::error::StepError;
use crate::host::Host;
use crate::record::Record;

/// Creates the cgroup and writes its limits; removes it.
pub struct Cgroup;

/// Whether the envelope should be frozen now.
fn frozen(rec: &Record) -> bool {
    rec.desired == crate::record::Desired::Present && rec.power == crate::record::Power::Frozen
}

fn limits(rec: &Record) -> Result<Limits, StepError> {
    let l = &rec.spec.limits;
    let dev = Host::volume_device(rec)?;
    let (major, minor) = crate::volume::device_number(&dev)?;
    Ok(Limits {
        cpu: l.cpu,
        memory: l.memory.0,
        pids: l.pids,
        io: vec![IoLimit {
            major,
            minor,
            read_bps: Some(l.io_read.0),
            write_bps: Some(l.io_write.0),
        }],
    })
}

#[async_trait]
impl Step for Cgroup {
    fn kind(&self) -> StepKind {
        StepKind::Cgroup
    }

    async fn up(&self, run: &mut Run<'_>) -> Result<(), StepError> {
        let limits = limits(run.rec)?;
        let cg = run.host.cgroups.tenant(run.rec.name());
        let frozen = frozen(run.rec);
        blocking(move || cg.apply(&limits).and_then(|()| cg.ensure_frozen(frozen))).await
    }

    async fn down(&self, run: &mut Run<'_>) -> Result<(), StepError> {
        let cg = run.host.cgroups.tenant(run.rec.name());
        // A frozen engine could not stop; it is thawed first (the step after purges it).
        blocking(move || cg.ensure_frozen(false).and_then(|()| cg.remove())).await
    }

    async fn check(&self, host: &Host, rec: &Record) -> Result<bool, StepError> {
        let cg = host.cgroups.tenant(rec.name());
        Ok(cg.exists() && cg.is_frozen().unwrap_or(false) == frozen(rec))
    }
}
