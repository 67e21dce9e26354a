//! A tenant's provisioning as an ordered list of steps, one module each, every one with
//! its `up`, its `down` and an idempotent `check` side by side. The executor
//! ([`crate::executor`]) runs them forward to create or converge a tenant and backward to
//! destroy it, recording progress after each one.
//!
//! Every `up` and `down` is idempotent and converges on what the record asks (present,
//! stopped, quarantined): a host reboot loses several effects (cgroup, rules, engine) while
//! the record stays, so every step runs again on reconcile. Blocking work (commands,
//! filesystem trees) runs through [`blocking`], off the async runtime.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::StepError;
use crate::host::Host;
use crate::record::Record;

mod bandwidth;
mod broker;
mod cgroup;
pub(crate) mod deploy;
pub(crate) mod engine;
mod firewall;
mod id_ranges;
mod profiles;
mod routes;
mod secrets;
mod user;
mod volume;

pub(crate) use broker::ensure_token;
pub use broker::TOKEN_OVERLAP;
pub use deploy::deploy_compose;

/// The provisioning steps, in creation order; destroy undoes them in reverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// The tenant's system user (`m8t-<name>`).
    User,
    /// Its subordinate uid/gid ranges.
    IdRanges,
    /// Its volume, found or made, formatted only when empty, mounted.
    Volume,
    /// Its cgroup with the aggregate limits (after the volume: io limits name its device).
    Cgroup,
    /// Its seccomp and AppArmor profiles, compiled, installed (and loaded where AppArmor is on).
    Profiles,
    /// Its firewall chains.
    Firewall,
    /// Its registration with the credential broker and its token file.
    Broker,
    /// Its SSM parameters, read as the customer, written to the volume.
    Secrets,
    /// Its dockerd (stopped, containers first, while the tenant is stopped).
    Engine,
    /// Its containers: the recorded compose file deployed, stopped ones started again.
    Deploy,
    /// Its bandwidth: every one of its bridges through its egress and ingress buckets.
    Bandwidth,
    /// Its public routes in sni-proxy, present only while it serves.
    Routes,
}

/// Every step, in creation order.
pub const STEPS: [StepKind; 12] = [
    StepKind::User,
    StepKind::IdRanges,
    StepKind::Volume,
    StepKind::Cgroup,
    StepKind::Profiles,
    StepKind::Firewall,
    StepKind::Broker,
    StepKind::Secrets,
    StepKind::Engine,
    StepKind::Deploy,
    StepKind::Bandwidth,
    StepKind::Routes,
];

/// What a running step works on: the host, the tenant's record (which a step may update
/// and save, as stop does with the containers it stops) and the operator's progress lines.
pub struct Run<'a> {
    /// The host.
    pub host: &'a Host,
    /// The tenant's record.
    pub rec: &'a mut Record,
    /// Where progress lines go (the CLI, or the log).
    pub progress: &'a mut (dyn FnMut(String) + Send),
}

impl Run<'_> {
    /// Reports one progress line, prefixed with the tenant's name.
    pub fn say(&mut self, line: impl std::fmt::Display) {
        (self.progress)(format!("{}: {line}", self.rec.name()));
    }

    /// Writes the record durably.
    pub fn save(&mut self) -> Result<(), StepError> {
        Ok(self.host.save(self.rec)?)
    }
}

/// One concern of a tenant's provisioning.
#[async_trait]
pub trait Step: Send + Sync {
    /// Which step this is.
    fn kind(&self) -> StepKind;
    /// Makes the effect match the record; idempotent.
    async fn up(&self, run: &mut Run<'_>) -> Result<(), StepError>;
    /// Removes the effect; idempotent, and safe when `up` never ran or ran halfway.
    async fn down(&self, run: &mut Run<'_>) -> Result<(), StepError>;
    /// Whether the effect `up` makes is in place now (read-only).
    async fn check(&self, host: &Host, rec: &Record) -> Result<bool, StepError>;
}

/// The implementation of one step.
pub fn step(kind: StepKind) -> &'static dyn Step {
    match kind {
        StepKind::User => &user::User,
        StepKind::IdRanges => &id_ranges::IdRanges,
        StepKind::Volume => &volume::Volume,
        StepKind::Cgroup => &cgroup::Cgroup,
        StepKind::Profiles => &profiles::Profiles,
        StepKind::Firewall => &firewall::Firewall,
        StepKind::Broker => &broker::Broker,
        StepKind::Secrets => &secrets::Secrets,
        StepKind::Engine => &engine::Engine,
        StepKind::Deploy => &deploy::Deploy,
        StepKind::Bandwidth => &bandwidth::Bandwidth,
        StepKind::Routes => &routes::Routes,
    }
}

/// Runs blocking work (a command, a filesystem tree) on tokio's blocking pool, so no
/// runtime worker waits on it.
pub async fn blocking<T, E>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, StepError>
where
    T: Send + 'static,
    E: Into<StepError> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await?.map_err(Into::into)
}

/// Removes a directory tree hostd made (a token directory, the secret files), off the
/// runtime; one already gone is not an error.
pub async fn remove_tree(dir: std::path::PathBuf) -> Result<(), StepError> {
    blocking(move || match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StepError::Io {
            action: "remove",
            path: dir,
            source: e,
        }),
        _ => Ok(()),
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_is_listed_once_in_order_and_implemented() {
        let mut sorted = STEPS.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, STEPS.to_vec(), "creation order is the enum's order");
        for k in STEPS {
            assert_eq!(step(k).kind(), k);
        }
    }
}
