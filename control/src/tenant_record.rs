//! The tenant spec control gave hostd, kept in SSM at `/m8trx/_control/tenant-spec/<name>`
//! (a String: the spec holds no secret), so a move can create the same tenant on another
//! host without the original deploy request. `_control` cannot be a customer's name.

use m8trx_spec::tenant::TenantSpec;
use m8trx_spec::CustomerName;

use crate::error::{ControlError, Result};

/// Where the spec of `name` is kept.
pub fn parameter(name: &CustomerName) -> String {
    format!("/m8trx/_control/tenant-spec/{name}")
}

/// Records the spec hostd was given (overwriting an earlier one).
pub async fn save(ssm: &aws_sdk_ssm::Client, spec: &TenantSpec) -> Result<()> {
    let name = parameter(&spec.name);
    let value = serde_json::to_string(spec)
        .map_err(|e| ControlError::Conflict(format!("cannot serialise the tenant spec: {e}")))?;
    ssm.put_parameter()
        .name(&name)
        .value(value)
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .overwrite(true)
        .send()
        .await
        .map_err(|e| ControlError::aws(format!("PutParameter {name} (tenant spec)"), e))?;
    Ok(())
}

/// The recorded spec of `name`.
pub async fn load(ssm: &aws_sdk_ssm::Client, name: &CustomerName) -> Result<TenantSpec> {
    let param = parameter(name);
    let got = match ssm.get_parameter().name(&param).send().await {
        Ok(g) => g,
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_parameter_not_found()) =>
        {
            return Err(ControlError::Missing(format!(
                "{name} has no recorded tenant spec ({param}): it was deployed by an older \
                 control; deploy it once more (same request) to record it, then move it"
            )))
        }
        Err(e) => return Err(ControlError::aws(format!("GetParameter {param}"), e)),
    };
    let text = got.parameter().and_then(|p| p.value()).unwrap_or_default();
    TenantSpec::parse(text).map_err(|e| {
        ControlError::Conflict(format!("{param} is not a tenant spec hostd accepts: {e}"))
    })
}

/// Forgets the spec of `name` (delete).
pub async fn remove(ssm: &aws_sdk_ssm::Client, name: &CustomerName) -> Result<()> {
    let param = parameter(name);
    match ssm.delete_parameter().name(&param).send().await {
        Ok(_) => Ok(()),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_parameter_not_found()) =>
        {
            Ok(())
        }
        Err(e) => Err(ControlError::aws(format!("DeleteParameter {param}"), e)),
    }
}
