//! The customer's own AWS identity, which exists before control runs (the per-customer
//! terraform modules create it): its CMK, found by alias, and its instance profile and role,
//! found by name. control checks both before touching anything.

use m8trx_spec::CustomerName;
use serde::Serialize;

use crate::error::{ControlError, Result};

/// Role tag that carries the ExternalId the customer role's trust policy requires.
pub const EXTERNAL_ID_TAG: &str = "m8trx:external-id";

/// KMS alias of the customer's CMK: `alias/m8trx-<name>`.
pub fn kms_alias(name: &CustomerName) -> String {
    format!("alias/m8trx-{name}")
}

/// Name of the customer's instance profile (and of the role in it): `m8trx-<name>`.
pub fn instance_profile_name(name: &CustomerName) -> String {
    format!("m8trx-{name}")
}

/// What control needs of the customer's identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CustomerIdentity {
    /// ARN of the customer's CMK (volumes and SecureStrings are encrypted with it).
    pub kms_key_arn: String,
    /// Instance profile a dedicated instance runs with.
    pub instance_profile_name: String,
    /// Customer role: dedicated instances run as it, shared tenants get its credentials via the broker.
    pub role_arn: String,
    /// ExternalId for AssumeRole, from the role's `m8trx:external-id` tag.
    pub external_id: Option<String>,
}

/// Finds the customer's CMK and instance profile; a missing one is a clear error, not a guess.
pub async fn resolve(
    kms: &aws_sdk_kms::Client,
    iam: &aws_sdk_iam::Client,
    name: &CustomerName,
) -> Result<CustomerIdentity> {
    let alias = kms_alias(name);
    let key = kms
        .describe_key()
        .key_id(&alias)
        .send()
        .await
        .map_err(|e| {
            if e.as_service_error()
                .is_some_and(|s| s.is_not_found_exception())
            {
                ControlError::Missing(format!(
                    "the customer's CMK {alias} does not exist: create the customer's KMS key \
                 (and alias) before deploying"
                ))
            } else {
                ControlError::aws(format!("DescribeKey {alias}"), e)
            }
        })?;
    let meta = key
        .key_metadata()
        .ok_or_else(|| ControlError::Missing(format!("DescribeKey {alias} returned no key")))?;
    if !meta.enabled() {
        return Err(ControlError::Missing(format!(
            "the customer's CMK {alias} ({}) is disabled or pending deletion: enable it first",
            meta.key_id()
        )));
    }
    let kms_key_arn = meta
        .arn()
        .map(str::to_owned)
        .unwrap_or_else(|| meta.key_id().to_owned());

    let profile_name = instance_profile_name(name);
    let profile = iam
        .get_instance_profile()
        .instance_profile_name(&profile_name)
        .send()
        .await
        .map_err(|e| {
            if e.as_service_error()
                .is_some_and(|s| s.is_no_such_entity_exception())
            {
                ControlError::Missing(format!(
                    "the customer's instance profile {profile_name} does not exist: create the \
                     customer's IAM role and instance profile before deploying"
                ))
            } else {
                ControlError::aws(format!("GetInstanceProfile {profile_name}"), e)
            }
        })?;
    let role = profile
        .instance_profile()
        .and_then(|p| p.roles().first())
        .ok_or_else(|| {
            ControlError::Missing(format!(
                "instance profile {profile_name} holds no role: add the customer's role to it"
            ))
        })?;
    let external_id = match iam.get_role().role_name(role.role_name()).send().await {
        Ok(r) => r.role().and_then(|r| {
            r.tags()
                .iter()
                .find(|t| t.key() == EXTERNAL_ID_TAG)
                .map(|t| t.value().to_owned())
        }),
        Err(e) => {
            return Err(ControlError::aws(
                format!("GetRole {}", role.role_name()),
                e,
            ))
        }
    };
    Ok(CustomerIdentity {
        kms_key_arn,
        instance_profile_name: profile_name,
        role_arn: role.arn().to_owned(),
        external_id,
    })
}
