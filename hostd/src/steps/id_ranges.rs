//! The tenant's subordinate uid and gid ranges (`/etc/subuid`, `/etc/subgid`), one slot's
//! worth each: what its engine's user namespace maps container ids onto.

use async_trait::async_trait;

use super::{blocking, Run, Step, StepKind};
use crate::error::StepError;
use crate::host::Host;
use crate::ids;
use crate::record::Record;

/// Records and removes the ranges.
pub struct IdRanges;

const FILES: [&str; 2] = ["subuid", "subgid"];

#[async_trait]
impl Step for IdRanges {
    fn kind(&self) -> StepKind {
        StepKind::IdRanges
    }

    async fn up(&self, run: &mut Run<'_>) -> Result<(), StepError> {
        let (etc, user, base) = (
            run.host.cfg.etc.clone(),
            run.rec.spec.name.host_user(),
            ids::range_base(run.rec.slot),
        );
        blocking(move || {
            FILES
                .iter()
                .try_for_each(|f| ids::ensure_range(&etc.join(f), &user, base))
        })
        .await
    }

    async fn down(&self, run: &mut Run<'_>) -> Result<(), StepError> {
        let (etc, user) = (run.host.cfg.etc.clone(), run.rec.spec.name.host_user());
        blocking(move || {
            FILES
                .iter()
                .try_for_each(|f| ids::remove_range(&etc.join(f), &user))
        })
        .await
    }

    async fn check(&self, host: &Host, rec: &Record) -> Result<bool, StepError> {
        let (etc, user, base) = (
            host.cfg.etc.clone(),
            rec.spec.name.host_user(),
            ids::range_base(rec.slot),
        );
        blocking(move || {
            for f in FILES {
                if !ids::has_range(&etc.join(f), &user, base)? {
                    return Ok::<_, ids::IdError>(false);
                }
            }
            Ok(true)
        })
        .await
    }
}
