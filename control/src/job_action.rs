//! What a job does, as one enum: the API turns each request into a [`JobAction`], the job
//! table stores it (sealed when it carries secrets) and runs it, and a restarted control runs
//! the stored action again. Every action is idempotent, so running it again resumes it.

use m8trx_spec::bundle::Bundle;
use m8trx_spec::CustomerName;
use serde::{Deserialize, Serialize};

use crate::ops::Control;
use crate::progress::Progress;
use crate::request::DeployRequest;

/// One job's work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum JobAction {
    /// Deploy (or complete deploying) a customer from the deploy form.
    Deploy {
        /// The form, with the customer's secrets.
        request: Box<DeployRequest>,
    },
    /// Deploy a compose bundle into a shared tenant (through hostd on its host).
    Compose {
        /// The tenant.
        name: CustomerName,
        /// Its compose file, env and files (may hold secrets).
        bundle: Bundle,
    },
    /// Move a shared tenant to another shared host (`host`, or the best fit in its zone).
    Move {
        /// The tenant.
        name: CustomerName,
        /// The target host; None: the best fit.
        host: Option<String>,
    },
    /// Keep new tenants off a shared host and move its tenants away, one by one.
    Drain {
        /// The host's instance id.
        host: String,
    },
    /// Delete (or complete deleting) everything of a customer.
    Delete {
        /// The customer.
        name: CustomerName,
        /// Keep its data volume.
        keep_volume: bool,
    },
}

impl JobAction {
    /// The job kind shown to the dashboard.
    pub fn kind(&self) -> &'static str {
        match self {
            JobAction::Deploy { .. } => "deploy",
            JobAction::Compose { .. } => "compose",
            JobAction::Delete { .. } => "delete",
            JobAction::Move { .. } => "move",
            JobAction::Drain { .. } => "drain",
        }
    }

    /// The customer the job works on (one running job per customer).
    pub fn customer(&self) -> String {
        match self {
            JobAction::Deploy { request } => request.name.clone(),
            JobAction::Compose { name, .. }
            | JobAction::Delete { name, .. }
            | JobAction::Move { name, .. } => name.to_string(),
            // One drain per host at a time; the key cannot be a customer's name.
            JobAction::Drain { host } => format!("host:{host}"),
        }
    }

    /// True when the action carries customer secrets: it is then stored sealed under the
    /// customer's CMK. A delete carries none, so it never depends on that key (a customer
    /// whose key is gone can still be deleted).
    pub fn holds_secrets(&self) -> bool {
        matches!(self, JobAction::Deploy { .. } | JobAction::Compose { .. })
    }

    /// Runs the action; the JSON outcome or the error's text.
    pub async fn run(
        &self,
        control: &Control,
        progress: &Progress,
    ) -> Result<serde_json::Value, String> {
        let outcome = match self {
            JobAction::Deploy { request } => {
                let spec = request
                    .validate()
                    .map_err(|errors| crate::ControlError::Invalid(errors).to_string())?;
                control.deploy(&spec, progress).await.and_then(json)
            }
            JobAction::Compose { name, bundle } => control
                .deploy_compose(name, bundle, progress)
                .await
                .and_then(json),
            JobAction::Delete { name, keep_volume } => control
                .delete(name, *keep_volume, progress)
                .await
                .and_then(json),
            JobAction::Move { name, host } => crate::moves::move_shared(
                &control.clients,
                &control.config,
                name,
                host.as_deref(),
                progress,
            )
            .await
            .and_then(json),
            JobAction::Drain { host } => {
                crate::moves::drain(&control.clients, &control.config, host, progress)
                    .await
                    .and_then(json)
            }
        };
        outcome.map_err(|e| {
            progress.line(format!("{} failed: {e}", self.kind()));
            e.to_string()
        })
    }
}

fn json<T: Serialize>(v: T) -> crate::error::Result<serde_json::Value> {
    serde_json::to_value(v)
        .map_err(|e| crate::ControlError::Conflict(format!("cannot encode the outcome: {e}")))
}
