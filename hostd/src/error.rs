//! hostd's typed errors, from a step through the executor to the API and the CLI. Every
//! error has a [`ErrorKind`], which decides the HTTP status, the CLI's exit code and the
//! `kind` field of the JSON error line; the message says what failed and what to do.

use serde::{Deserialize, Serialize};

use crate::steps::StepKind;

/// The category of a failure: what the caller can do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// No tenant of that name (or no such service, container or image in it).
    NotFound,
    /// The tenant's state does not allow it now (being destroyed, stopped, other spec).
    Conflict,
    /// The input breaks a rule (spec field, compose key, image tarball); nothing was changed.
    Refused,
    /// The tenant's engine is not running or does not answer.
    Unavailable,
    /// A step or a host service failed; running the command again resumes.
    Failed,
}

impl ErrorKind {
    /// The `hostd ctl` exit code of this kind (documented in `hostd ctl --help`).
    pub fn exit_code(self) -> i32 {
        match self {
            Self::Failed => 1,
            Self::NotFound => 4,
            Self::Conflict => 5,
            Self::Refused => 6,
            Self::Unavailable => 7,
        }
    }

    /// The HTTP status of this kind.
    pub fn http_status(self) -> u16 {
        match self {
            Self::NotFound => 404,
            Self::Conflict => 409,
            Self::Refused => 422,
            Self::Unavailable => 503,
            Self::Failed => 500,
        }
    }

    /// The kind of an HTTP status, for a client that got no `kind` field.
    pub fn from_http_status(status: u16) -> Self {
        match status {
            404 => Self::NotFound,
            409 => Self::Conflict,
            400 | 422 => Self::Refused,
            503 => Self::Unavailable,
            _ => Self::Failed,
        }
    }
}

/// Why one step's `up`, `down` or `check` failed, keeping the underlying error's type.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The system user or the subordinate id ranges.
    #[error(transparent)]
    Ids(#[from] crate::ids::IdError),
    /// The tenant volume.
    #[error(transparent)]
    Volume(#[from] crate::volume::VolumeError),
    /// The volume's manifest or the shift of its files into this host's id range failed.
    #[error(transparent)]
    Portable(#[from] crate::portable::PortableError),
    /// The tenant cgroup.
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
    /// The seccomp or AppArmor profiles.
    #[error(transparent)]
    Profiles(#[from] crate::profiles::ProfileError),
    /// The firewall chains.
    #[error(transparent)]
    Firewall(#[from] crate::network::NetError),
    /// tc or ip refused a bandwidth rule.
    #[error(transparent)]
    Shaping(#[from] crate::shaping::ShapingError),
    /// The credential broker's admin API.
    #[error("credential broker: {0}")]
    Broker(#[from] cred_broker::AdminError),
    /// The broker token file.
    #[error("broker token file: {0}")]
    TokenFile(#[from] cred_broker::token_file::TokenFileError),
    /// Reading or writing the tenant's secrets.
    #[error(transparent)]
    Secrets(#[from] crate::secrets::SecretsError),
    /// The tenant engine.
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    /// The compose deploy.
    #[error(transparent)]
    Compose(#[from] crate::compose::ComposeError),
    /// sni-proxy's admin API.
    #[error(transparent)]
    Routes(#[from] crate::proxy_routes::RouteError),
    /// The state store (a step that records progress of its own, such as stop).
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// The engine API answered with an error.
    #[error("tenant engine: {what}: {source}")]
    EngineApi {
        /// What hostd asked the engine to do.
        what: String,
        /// The engine's answer.
        source: bollard::errors::Error,
    },
    /// A file hostd manages directly.
    #[error("{action} {path}: {source}")]
    Io {
        /// What hostd was doing.
        action: &'static str,
        /// The file or directory.
        path: std::path::PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A recorded deployment the current policy refuses (hostd was upgraded since).
    #[error("the recorded compose file (revision {revision}) is refused now: {message}; deploy a corrected file")]
    RecordedComposeRefused {
        /// The recorded revision.
        revision: u64,
        /// The refusal.
        message: String,
    },
    /// Something the step needs is missing or not running.
    #[error("{0}")]
    Precondition(String),
    /// A blocking task hostd ran off the async runtime panicked or was cancelled.
    #[error("internal task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl StepError {
    /// A failed engine API call, for `map_err`.
    pub fn engine_api(what: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> Self {
        let what = what.into();
        move |source| Self::EngineApi { what, source }
    }
}

/// Every failure of a hostd operation.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// No tenant of that name.
    #[error("no tenant named {0:?}; `hostd ctl list` shows the tenants of this host")]
    NotFound(String),
    /// Something of the tenant that was asked for does not exist.
    #[error("tenant {tenant}: {message}")]
    Missing {
        /// Tenant.
        tenant: String,
        /// What is missing and what to do.
        message: String,
    },
    /// The tenant's state does not allow the operation now.
    #[error("tenant {tenant}: {reason}")]
    Conflict {
        /// Tenant.
        tenant: String,
        /// Why not, and what to do first.
        reason: String,
    },
    /// The input breaks a rule; nothing was changed.
    #[error("{0}")]
    Refused(String),
    /// The tenant's engine is not running or does not answer.
    #[error("tenant {tenant}: {message}")]
    Unavailable {
        /// Tenant.
        tenant: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// A step failed; running the command again (or restarting hostd) resumes from it.
    #[error("tenant {tenant}: step {step:?} failed: {source}; fix the cause and run the command again, it resumes here")]
    Step {
        /// Tenant.
        tenant: String,
        /// The failing step.
        step: StepKind,
        /// The underlying error (boxed: it is large and errors are rare).
        source: Box<StepError>,
    },
    /// The tenant's record exists but cannot be read.
    #[error("tenant {tenant}: its record is unreadable ({reason}); move {path} aside (the tenant's resources stay as they are) and recreate it, or restore the file")]
    Broken {
        /// Tenant.
        tenant: String,
        /// The record's file.
        path: std::path::PathBuf,
        /// Why it cannot be read.
        reason: String,
    },
    /// The state store failed.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// The host's cgroup layout is not usable.
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
}

impl HostError {
    /// What the caller can do about it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::NotFound(_) | Self::Missing { .. } => ErrorKind::NotFound,
            Self::Conflict { .. } | Self::Broken { .. } => ErrorKind::Conflict,
            Self::Refused(_) => ErrorKind::Refused,
            Self::Unavailable { .. } => ErrorKind::Unavailable,
            Self::Step { .. } | Self::State(_) | Self::Cgroup(_) => ErrorKind::Failed,
        }
    }

    /// A conflict of `tenant`, for the operations that refuse a state.
    pub fn conflict(tenant: &str, reason: impl Into<String>) -> Self {
        Self::Conflict {
            tenant: tenant.to_owned(),
            reason: reason.into(),
        }
    }

    /// The error of `step` of `tenant` failing, for `map_err`.
    pub fn step(tenant: &str, step: StepKind) -> impl FnOnce(StepError) -> Self + '_ {
        move |source| Self::Step {
            tenant: tenant.to_owned(),
            step,
            source: Box::new(source),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_exit_code_and_status() {
        let kinds = [
            ErrorKind::NotFound,
            ErrorKind::Conflict,
            ErrorKind::Refused,
            ErrorKind::Unavailable,
            ErrorKind::Failed,
        ];
        for (i, a) in kinds.iter().enumerate() {
            for b in &kinds[i + 1..] {
                assert_ne!(a.exit_code(), b.exit_code());
                assert_ne!(a.http_status(), b.http_status());
            }
            assert_eq!(ErrorKind::from_http_status(a.http_status()), *a);
            // 2 and 3 are the CLI's own: usage and unreachable.
            assert!(![0, 2, 3].contains(&a.exit_code()));
        }
    }
}
