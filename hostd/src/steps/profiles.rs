//! The tenant's seccomp and AppArmor profiles: compiled, installed, and loaded where
//! AppArmor is on, before any container references them.

use async_trait::async_trait;

use super::{blocking, Run, Step, StepKind};
use crate::error::StepError;
use crate::host::Host;
use crate::profiles::{self, AppArmorLoad};
use crate::record::Record;

/// Installs and uninstalls the profiles.
pub struct Profiles;

#[async_trait]
impl Step for Profiles {
    fn kind(&self) -> StepKind {
        StepKind::Profiles
    }

    async fn up(&self, run: &mut Run<'_>) -> Result<(), StepError> {
        let (name, dir) = (run.rec.spec.name.clone(), run.host.cfg.profiles_dir.clone());
        blocking(move || profiles::install(&name, &dir, AppArmorLoad::Auto).map(|_| ())).await
    }

    async fn down(&self, run: &mut Run<'_>) -> Result<(), StepError> {
        let (name, dir) = (run.rec.spec.name.clone(), run.host.cfg.profiles_dir.clone());
        blocking(move || profiles::uninstall(&name, &dir)).await
    }

    async fn check(&self, host: &Host, rec: &Record) -> Result<bool, StepError> {
        let (name, dir) = (rec.spec.name.clone(), host.cfg.profiles_dir.clone());
        blocking(move || Ok::<_, StepError>(profiles::installed(&name, &dir).is_ok())).await
    }
}
