//! The tenant's SSM parameters, read as the customer's role and written to its volume
//! (0400 files under a 0500 directory owned by its remapped root), read-only in containers.

use std::os::unix::fs::PermissionsExt;

use async_trait::async_trait;

use super::{blocking, Run, Step, StepKind};
use crate::error::StepError;
use crate::host::Host;
use crate::record::Record;

/// Writes and removes the secret files.
pub struct Secrets;

#[async_trait]
impl Step for Secrets {
    fn kind(&self) -> StepKind {
        StepKind::Secrets
    }

    async fn up(&self, run: &mut Run<'_>) -> Result<(), StepError> {
        let Some(source) = &run.host.secrets else {
            return Ok(());
        };
        let values = source.fetch(&Host::role_spec(run.rec)?).await?;
        let (dir, owner) = (run.host.secrets_dir(run.rec), Host::remapped_root(run.rec));
        blocking(move || crate::secrets::write_secrets(&dir, &values, owner)).await
    }

    async fn down(&self, run: &mut Run<'_>) -> Result<(), StepError> {
        let dir = run.host.secrets_dir(run.rec);
        // 0500 while it serves: make it writable again so its files can go.
        let _ = tokio::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).await;
        super::remove_tree(dir).await
    }

    async fn check(&self, host: &Host, rec: &Record) -> Result<bool, StepError> {
        Ok(host.secrets.is_none() || host.secrets_dir(rec).is_dir())
    }
}
