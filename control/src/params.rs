//! Pre-deploy: the customer's six SSM parameters under `/m8trx/<name>/`, written before any
//! compute exists, idempotently (unchanged values are not rewritten), and rolled back to what
//! was there before when one write fails, so an aborted deploy leaves nothing half-made.

use std::collections::HashMap;

use aws_sdk_ssm::types::{ParameterStringFilter, ParameterType, Tag};
use m8trx_spec::{CustomerName, SSM_PARAMETERS};

use crate::error::{ControlError, Result};
use crate::progress::Progress;
use crate::request::DeploySpec;
use crate::tags;

/// The value one parameter should hold; `None` means "generate only if the parameter is missing".
#[derive(Clone, PartialEq, Eq)]
pub struct Desired {
    /// Full parameter name, `/m8trx/<name>/<leaf>`.
    pub name: String,
    /// SecureString (encrypted with the customer's CMK) or String.
    pub secure: bool,
    /// The value, or `None` for a generated value that must survive re-runs.
    pub value: Option<String>,
}

impl std::fmt::Debug for Desired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Desired")
            .field("name", &self.name)
            .field("secure", &self.secure)
            .finish_non_exhaustive()
    }
}

/// What one run did to one parameter, for the job log and the outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamAction {
    /// Did not exist; written.
    Created,
    /// Existed with another value, type or key; overwritten.
    Updated,
    /// Already held the desired value.
    Unchanged,
}

/// The six parameters for `spec`, in the platform's documented order.
pub fn desired(spec: &DeploySpec, brain_url: &str) -> Vec<Desired> {
    let s = &spec.secrets;
    SSM_PARAMETERS
        .iter()
        .map(|p| {
            let value = match p.leaf {
                "brain-key" => s.brain_key.clone(),
                "brain-customer-id" => Some(spec.name.uid()),
                "brain-url" => Some(brain_url.to_owned()),
                "tailscale-auth-key" => s.tailscale_auth_key.clone(),
                "agent-fetch-pat" => s.agent_fetch_pat.clone(),
                "agent-ui-password" => s.agent_ui_password.clone(),
                _ => None,
            };
            Desired {
                name: format!("{}{}", spec.name.ssm_prefix(), p.leaf),
                secure: p.secure,
                value,
            }
        })
        .collect()
}

/// A random password for the agent UI: 24 characters from the kernel's CSPRNG.
pub fn generate_password() -> Result<String> {
    use std::io::Read;
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| ControlError::Missing(format!("cannot read /dev/urandom: {e}")))?;
    Ok(bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect())
}

#[derive(Clone)]
struct Existing {
    secure: bool,
    key_id: Option<String>,
    value: String,
}

/// Whether an existing SecureString is encrypted with `key_arn` (AWS reports id or ARN).
fn same_key(existing: Option<&str>, key_arn: &str) -> bool {
    match existing {
        Some(k) => k == key_arn || key_arn.ends_with(&format!("/{k}")),
        None => false,
    }
}

async fn read_existing(
    ssm: &aws_sdk_ssm::Client,
    names: &[String],
) -> Result<HashMap<String, Existing>> {
    let described = ssm
        .describe_parameters()
        .parameter_filters(
            ParameterStringFilter::builder()
                .key("Name")
                .option("Equals")
                .set_values(Some(names.to_vec()))
                .build()
                .map_err(|e| ControlError::aws("DescribeParameters (filter)", e))?,
        )
        .send()
        .await
        .map_err(|e| ControlError::aws("DescribeParameters", e))?;
    let key_ids: HashMap<String, Option<String>> = described
        .parameters()
        .iter()
        .filter_map(|p| Some((p.name()?.to_owned(), p.key_id().map(str::to_owned))))
        .collect();
    let got = ssm
        .get_parameters()
        .set_names(Some(names.to_vec()))
        .with_decryption(true)
        .send()
        .await
        .map_err(|e| ControlError::aws("GetParameters", e))?;
    Ok(got
        .parameters()
        .iter()
        .filter_map(|p| {
            let name = p.name()?.to_owned();
            let existing = Existing {
                secure: p.r#type() == Some(&ParameterType::SecureString),
                key_id: key_ids.get(&name).cloned().flatten(),
                value: p.value()?.to_owned(),
            };
            Some((name, existing))
        })
        .collect())
}

async fn put(
    ssm: &aws_sdk_ssm::Client,
    customer: &CustomerName,
    name: &str,
    value: &str,
    secure: bool,
    key_arn: &str,
    overwrite: bool,
) -> Result<()> {
    let mut req = ssm
        .put_parameter()
        .name(name)
        .value(value)
        .overwrite(overwrite);
    if secure {
        req = req.r#type(ParameterType::SecureString).key_id(key_arn);
    } else {
        req = req.r#type(ParameterType::String);
    }
    if !overwrite {
        // SSM refuses tags together with Overwrite; new parameters get them at creation.
        for (k, v) in [
            (tags::CUSTOMER, customer.as_str()),
            (tags::MANAGED_BY, tags::MANAGED_BY_VALUE),
        ] {
            req = req.tags(
                Tag::builder()
                    .key(k)
                    .value(v)
                    .build()
                    .map_err(|e| ControlError::aws("PutParameter (tag)", e))?,
            );
        }
    }
    req.send()
        .await
        .map_err(|e| ControlError::aws(format!("PutParameter {name}"), e))?;
    Ok(())
}

/// Writes the six parameters; on any failure restores what this run changed and returns the error.
pub async fn write_parameters(
    ssm: &aws_sdk_ssm::Client,
    customer: &CustomerName,
    wanted: &[Desired],
    key_arn: &str,
    progress: &Progress,
) -> Result<Vec<(String, ParamAction)>> {
    let names: Vec<String> = wanted.iter().map(|d| d.name.clone()).collect();
    let existing = read_existing(ssm, &names).await?;
    let mut done: Vec<(String, ParamAction)> = Vec::new();
    for d in wanted {
        let before = existing.get(&d.name);
        let value = match (&d.value, before) {
            (Some(v), _) => v.clone(),
            (None, Some(e)) => e.value.clone(),
            (None, None) => match generate_password() {
                Ok(p) => p,
                Err(e) => {
                    rollback(ssm, customer, &done, &existing, key_arn, progress).await;
                    return Err(e);
                }
            },
        };
        let action = match before {
            Some(e)
                if e.value == value
                    && e.secure == d.secure
                    && (!d.secure || same_key(e.key_id.as_deref(), key_arn)) =>
            {
                ParamAction::Unchanged
            }
            Some(_) => ParamAction::Updated,
            None => ParamAction::Created,
        };
        if action != ParamAction::Unchanged {
            let overwrite = action == ParamAction::Updated;
            if let Err(e) = put(ssm, customer, &d.name, &value, d.secure, key_arn, overwrite).await
            {
                progress.line(format!(
                    "ssm: writing {} failed; restoring the parameters this run changed",
                    d.name
                ));
                rollback(ssm, customer, &done, &existing, key_arn, progress).await;
                return Err(e);
            }
        }
        let kind = if d.secure { "SecureString" } else { "String" };
        progress.line(format!(
            "ssm: {} ({kind}) {}",
            d.name,
            match action {
                ParamAction::Created => "created",
                ParamAction::Updated => "updated",
                ParamAction::Unchanged => "unchanged",
            }
        ));
        done.push((d.name.clone(), action));
    }
    Ok(done)
}

async fn rollback(
    ssm: &aws_sdk_ssm::Client,
    customer: &CustomerName,
    done: &[(String, ParamAction)],
    existing: &HashMap<String, Existing>,
    key_arn: &str,
    progress: &Progress,
) {
    for (name, action) in done.iter().rev() {
        let result = match action {
            ParamAction::Unchanged => continue,
            ParamAction::Created => ssm
                .delete_parameter()
                .name(name)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| ControlError::aws(format!("DeleteParameter {name}"), e)),
            ParamAction::Updated => match existing.get(name) {
                Some(old) => {
                    let key = old.key_id.clone().unwrap_or_else(|| key_arn.to_owned());
                    put(ssm, customer, name, &old.value, old.secure, &key, true).await
                }
                None => continue,
            },
        };
        match result {
            Ok(()) => progress.line(format!("ssm: rolled back {name}")),
            Err(e) => progress.line(format!("ssm: could not roll back {name}: {e}")),
        }
    }
}

/// Deletes the six parameters; missing ones are skipped. Returns how many existed.
pub async fn delete_parameters(
    ssm: &aws_sdk_ssm::Client,
    customer: &CustomerName,
    progress: &Progress,
) -> Result<usize> {
    let names = customer.ssm_parameter_names();
    let out = ssm
        .delete_parameters()
        .set_names(Some(names))
        .send()
        .await
        .map_err(|e| ControlError::aws(format!("DeleteParameters for {customer}"), e))?;
    let deleted = out.deleted_parameters().len();
    progress.line(format!(
        "ssm: deleted {deleted} parameter(s) under {}{}",
        customer.ssm_prefix(),
        if out.invalid_parameters().is_empty() {
            String::new()
        } else {
            format!(" ({} already absent)", out.invalid_parameters().len())
        }
    ));
    Ok(deleted)
}

/// Names of the customer's parameters that exist now (for status and tests).
pub async fn existing_parameters(
    ssm: &aws_sdk_ssm::Client,
    customer: &CustomerName,
) -> Result<Vec<String>> {
    let got = ssm
        .get_parameters()
        .set_names(Some(customer.ssm_parameter_names()))
        .send()
        .await
        .map_err(|e| ControlError::aws(format!("GetParameters for {customer}"), e))?;
    Ok(got
        .parameters()
        .iter()
        .filter_map(|p| p.name().map(str::to_owned))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_comparison_accepts_id_or_arn() {
        let arn = "arn:aws:kms:us-east-2:123456789012:key/abcd-1234";
        assert!(same_key(Some(arn), arn));
        assert!(same_key(Some("abcd-1234"), arn));
        assert!(!same_key(Some("alias/aws/ssm"), arn));
        assert!(!same_key(None, arn));
    }

    #[test]
    fn generated_passwords_are_long_and_differ() {
        let a = generate_password().unwrap();
        let b = generate_password().unwrap();
        assert_eq!(a.len(), 24);
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
    }
}
