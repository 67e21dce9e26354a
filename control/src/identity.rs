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

/// Name of the customer's role (terraform `modules/customer-role`) and instance profile: `m8trx-<name>`.
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
    /// ExternalId for AssumeRole: the request's `secrets.external_id`, else the role's
    /// `m8trx:external-id` tag.
    pub external_id: Option<String>,
}

/// Finds the customer's CMK, role and (for dedicated) instance profile; a missing one is a
/// clear error, not a guess. `external_id` from the request wins over the role's tag.
pub async fn resolve(
    kms: &aws_sdk_kms::Client,
    iam: &aws_sdk_iam::Client,
    name: &CustomerName,
    need_instance_profile: bool,
    external_id: Option<&str>,
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

    let role_name = instance_profile_name(name);
    let role = iam
        .get_role()
        .role_name(&role_name)
        .send()
        .await
        .map_err(|e| {
            if e.as_service_error()
                .is_some_and(|s| s.is_no_such_entity_exception())
            {
                ControlError::Missing(format!(
                    "the customer's IAM role {role_name} does not exist: apply the customer's \
                     terraform (modules/customer-role) before deploying"
                ))
            } else {
                ControlError::aws(format!("GetRole {role_name}"), e)
            }
        })?;
    let role = role
        .role()
        .ok_or_else(|| ControlError::Missing(format!("GetRole {role_name} returned no role")))?;
    let tagged_external_id = role
        .tags()
        .iter()
        .find(|t| t.key() == EXTERNAL_ID_TAG)
        .map(|t| t.value().to_owned());
    let role_arn = role.arn().to_owned();

    // Only a dedicated instance runs with an instance profile; a shared tenant's role is
    // assumed by the host through the broker.
    let profile_name = instance_profile_name(name);
    if need_instance_profile {
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
                        "the customer's instance profile {profile_name} does not exist: a \
                         dedicated instance needs it (with the customer's role in it)"
                    ))
                } else {
                    ControlError::aws(format!("GetInstanceProfile {profile_name}"), e)
                }
            })?;
        if profile.instance_profile().map_or(0, |p| p.roles().len()) == 0 {
            return Err(ControlError::Missing(format!(
                "instance profile {profile_name} holds no role: add the customer's role to it"
            )));
        }
    }
    let external_id = external_id.map(str::to_owned).or(tagged_external_id);
    Ok(CustomerIdentity {
        kms_key_arn,
        instance_profile_name: profile_name,
        role_arn,
        external_id,
    })
}
