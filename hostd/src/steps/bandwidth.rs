//! The tenant's bandwidth (see `crate::shaping`): its bridges redirected into its two token
//! buckets at the spec's `limits.egress` and `limits.ingress`. After the deploy step: a
//! deploy may create networks, whose bridges then need the redirect too.

use async_trait::async_trait;

use super::{blocking, Run, Step, StepKind};
use crate::error::StepError;
use crate::host::Host;
use crate::record::Record;
use crate::shaping::{self, Rates};

/// Shapes and unshapes the tenant's traffic.
pub struct Bandwidth;

fn rates(rec: &Record) -> Rates {
    Rates {
        egress: rec.spec.limits.egress.0,
        ingress: rec.spec.limits.ingress.0,
    }
}

#[async_trait]
impl Step for Bandwidth {
    fn kind(&self) -> StepKind {
        StepKind::Bandwidth
    }

    async fn up(&self, run: &mut Run<'_>) -> Result<(), StepError> {
        let (fw, slot, rates) = (run.host.cfg.firewall.clone(), run.rec.slot, rates(run.rec));
        blocking(move || shaping::apply(&fw, slot, rates)).await
    }

    async fn down(&self, run: &mut Run<'_>) -> Result<(), StepError> {
        let (fw, slot) = (run.host.cfg.firewall.clone(), run.rec.slot);
        blocking(move || shaping::remove(&fw, slot)).await
    }

    async fn check(&self, host: &Host, rec: &Record) -> Result<bool, StepError> {
        let (fw, slot, rates) = (host.cfg.firewall.clone(), rec.slot, rates(rec));
        blocking(move || shaping::is_applied(&fw, slot, rates)).await
    }
}
