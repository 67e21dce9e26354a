//! The tenant's firewall chains: what its subnet may reach (the broker, the internet) and
//! what it may not (IMDS, the ECS credentials address, other tenants, the host); all of it
//! cut while the tenant is quarantined.

use async_trait::async_trait;

use super::{blocking, Run, Step, StepKind};
use crate::error::StepError;
use crate::host::Host;
use crate::record::Record;

/// Writes and removes the chains.
pub struct Firewall;

#[async_trait]
impl Step for Firewall {
    fn kind(&self) -> StepKind {
        StepKind::Firewall
    }

    async fn up(&self, run: &mut Run<'_>) -> Result<(), StepError> {
        let fw = run.host.cfg.firewall.clone();
        let services = run.host.cfg.services.clone();
        let (net, quarantined) = (Host::net(run.rec), run.rec.quarantined);
        blocking(move || fw.apply(&net, &services, quarantined)).await
    }

    async fn down(&self, run: &mut Run<'_>) -> Result<(), StepError> {
        let fw = run.host.cfg.firewall.clone();
        let net = Host::net(run.rec);
        blocking(move || fw.remove(&net)).await
    }

    async fn check(&self, host: &Host, rec: &Record) -> Result<bool, StepError> {
        let fw = host.cfg.firewall.clone();
        let net = Host::net(rec);
        blocking(move || fw.is_applied(&net)).await
    }
}
