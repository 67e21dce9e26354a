//! The tenant's cgroup envelope (engine and workload inside it) with the aggregate limits
//! of its spec: cpu, memory, pids, and io on its volume's device (hence after the volume).

use async_trait::async_trait;

use super::{blocking, Run, Step, StepKind};
use crate::cgroup::{IoLimit, Limits};
use crate::error::StepError;
use crate::host::Host;
use crate::record::Record;

/// Creates the cgroup and writes its limits; removes it.
pub struct Cgroup;

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
        blocking(move || cg.apply(&limits)).await
    }

    async fn down(&self, run: &mut Run<'_>) -> Result<(), StepError> {
        let cg = run.host.cgroups.tenant(run.rec.name());
        blocking(move || cg.remove()).await
    }

    async fn check(&self, host: &Host, rec: &Record) -> Result<bool, StepError> {
        Ok(host.cgroups.tenant(rec.name()).exists())
    }
}
