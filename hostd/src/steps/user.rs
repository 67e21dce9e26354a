//! The tenant's system user `m8t-<name>`: the owner of its subordinate id ranges.

use async_trait::async_trait;

use super::{blocking, Run, Step, StepKind};
use crate::error::StepError;
use crate::host::Host;
use crate::ids;
use crate::record::Record;

/// Creates and deletes the user.
pub struct User;

#[async_trait]
impl Step for User {
    fn kind(&self) -> StepKind {
        StepKind::User
    }

    async fn up(&self, run: &mut Run<'_>) -> Result<(), StepError> {
        let user = run.rec.spec.name.host_user();
        blocking(move || ids::ensure_user(&user)).await
    }

    async fn down(&self, run: &mut Run<'_>) -> Result<(), StepError> {
        let user = run.rec.spec.name.host_user();
        blocking(move || ids::remove_user(&user)).await
    }

    async fn check(&self, _host: &Host, rec: &Record) -> Result<bool, StepError> {
        let user = rec.spec.name.host_user();
        blocking(move || ids::user_exists(&user)).await
    }
}
