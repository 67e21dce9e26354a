//! Errors of control operations: each says what failed and what the operator can do.

use crate::request::FieldError;

/// Why a control operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The request was refused; every entry names its field.
    #[error("the deploy request was refused: {}", join(.0))]
    Invalid(Vec<FieldError>),
    /// An AWS call failed; `op` names the API call and the resource.
    #[error("AWS {op} failed: {message}")]
    Aws {
        /// API call and what it was about, e.g. `RunInstances for acme`.
        op: String,
        /// The SDK's error with its context.
        message: String,
    },
    /// Something the deploy needs is missing from the account (CMK, instance profile, AMI, subnet).
    #[error("{0}")]
    Missing(String),
    /// No shared host in the fleet has room; nothing was created.
    #[error("{0}")]
    NoCapacity(String),
    /// hostd reported a failure (or the SSM command did not succeed).
    #[error("hostd on {instance_id} failed to {action}: {message}")]
    Hostd {
        /// Shared host the command ran on.
        instance_id: String,
        /// What hostd was asked to do.
        action: String,
        /// hostd's own messages, or SSM's status details.
        message: String,
    },
    /// A wait did not reach the expected state in time.
    #[error("timed out after {seconds} s waiting for {what}; re-run the same command to resume")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long it waited.
        seconds: u64,
    },
    /// The account is in a state control will not touch without an operator.
    #[error("{0}")]
    Conflict(String),
}

fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl ControlError {
    /// Wraps an SDK error with the operation it came from, keeping the SDK's full context.
    pub fn aws<E>(op: impl Into<String>, err: E) -> Self
    where
        E: std::error::Error + 'static,
    {
        Self::Aws {
            op: op.into(),
            message: aws_sdk_ec2::error::DisplayErrorContext(&err).to_string(),
        }
    }
}

/// Result of control operations.
pub type Result<T, E = ControlError> = std::result::Result<T, E>;
