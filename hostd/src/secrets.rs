//! The tenant's six SSM parameters (`/m8trx/<name>/…`), read with the customer's own role —
//! assumed through the credential broker's library, with the same session name, `Customer`
//! tag, SourceIdentity and ExternalId the broker uses — never with the host role's rights,
//! and written as files on the tenant volume (0400, owned by the tenant's remapped root).
//! A service sees one read-only only when it lists it as an external secret (`secrets:
//! [brain-key]` with top-level `brain-key: {external: true}`, at `/run/secrets/brain-key`);
//! the tailscale sidecar gets its key at [`SECRETS_MOUNT`]. Values are never logged; only
//! parameter names appear in messages.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cred_broker::sts::CredentialSource;
use m8trx_spec::SSM_PARAMETERS;

/// Where the tailscale sidecar sees its auth key file.
pub const SECRETS_MOUNT: &str = "/run/secrets/m8trx";

/// Why the secrets could not be read or written; names parameters, never values.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// The STS client could not be configured.
    #[error("configuring STS for the customer role: {0}")]
    Settings(String),
    /// AssumeRole on the customer's role failed.
    #[error("assuming the customer role: {0}; check the role's trust policy admits this host with the tenant's ExternalId")]
    AssumeRole(String),
    /// SSM refused or failed.
    #[error("reading the tenant's SSM parameters with the customer role: {0}")]
    Ssm(String),
    /// Some parameters do not exist.
    #[error("SSM parameters missing: {}; control writes them before placing the tenant (`control deploy` re-run completes it)", .0.join(", "))]
    Missing(Vec<String>),
    /// A file could not be written.
    #[error("writing {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Where hostd reads parameters: the broker library's STS client plus an SSM endpoint.
pub struct SecretsSource {
    sts: cred_broker::StsSource,
    region: String,
    ssm_endpoint: Option<String>,
}

impl SecretsSource {
    /// Builds the clients; the host's own credentials (default chain) are used only to assume
    /// customer roles.
    pub async fn new(
        endpoint: Option<String>,
        region: String,
        host_id: String,
    ) -> Result<Self, SecretsError> {
        let sts = cred_broker::StsSource::new(cred_broker::StsSettings {
            endpoint: endpoint.clone(),
            region: Some(region.clone()),
            host_id,
            duration: std::time::Duration::from_secs(900),
            call_timeout: std::time::Duration::from_secs(10),
        })
        .await
        .map_err(|e| SecretsError::Settings(e.to_string()))?;
        Ok(Self {
            sts,
            region,
            ssm_endpoint: endpoint,
        })
    }

    /// Reads the six parameters as the customer: `(leaf, value)` in the platform's order.
    pub async fn fetch(
        &self,
        tenant: &cred_broker::TenantSpec,
    ) -> Result<Vec<(String, String)>, SecretsError> {
        let creds = self
            .sts
            .fetch(Arc::new(tenant.clone()))
            .await
            .map_err(|e| SecretsError::AssumeRole(e.to_string()))?;
        let provider = aws_sdk_ssm::config::Credentials::new(
            creds.access_key_id,
            creds.secret_access_key,
            Some(creds.session_token),
            Some(creds.expiration),
            "m8trx-customer-role",
        );
        let mut conf = aws_sdk_ssm::Config::builder()
            .behavior_version(aws_sdk_ssm::config::BehaviorVersion::latest())
            .region(aws_sdk_ssm::config::Region::new(self.region.clone()))
            .credentials_provider(provider);
        if let Some(ep) = &self.ssm_endpoint {
            conf = conf.endpoint_url(ep);
        }
        let client = aws_sdk_ssm::Client::from_conf(conf.build());
        let names = tenant.name.ssm_parameter_names();
        let out = client
            .get_parameters()
            .set_names(Some(names.clone()))
            .with_decryption(true)
            .send()
            .await
            .map_err(|e| {
                SecretsError::Ssm(aws_sdk_ssm::error::DisplayErrorContext(&e).to_string())
            })?;
        let missing = out.invalid_parameters().to_vec();
        if !missing.is_empty() {
            return Err(SecretsError::Missing(missing));
        }
        let mut values = Vec::new();
        for (p, full) in SSM_PARAMETERS.iter().zip(&names) {
            let value = out
                .parameters()
                .iter()
                .find(|x| x.name() == Some(full.as_str()))
                .and_then(|x| x.value())
                .ok_or_else(|| SecretsError::Missing(vec![full.clone()]))?;
            values.push((p.leaf.to_owned(), value.to_owned()));
        }
        Ok(values)
    }
}

/// Writes each value to `<dir>/<leaf>` atomically (mode 0400, owned by `owner`), the
/// directory itself 0500 and owned by `owner`; a crash leaves old or new files, never half.
pub fn write_secrets(
    dir: &Path,
    values: &[(String, String)],
    owner: (u32, u32),
) -> Result<(), SecretsError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SecretsError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    // Writable by root only while hostd writes; the remapped root may read and list.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
    for (leaf, value) in values {
        let path = dir.join(leaf);
        let tmp = dir.join(format!(".{leaf}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(value.as_bytes()).map_err(io(&tmp))?;
        std::os::unix::fs::fchown(&f, Some(owner.0), Some(owner.1)).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
    }
    std::os::unix::fs::chown(dir, Some(owner.0), Some(owner.1)).map_err(io(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o500)).map_err(io(dir))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn files_are_0400_atomic_and_rewritable() {
        let dir = std::env::temp_dir().join(format!("m8trx-secrets-{}", std::process::id()));
        let me = (
            std::fs::metadata("/proc/self").unwrap().uid(),
            std::fs::metadata("/proc/self").unwrap().gid(),
        );
        let v = |x: &str| vec![("brain-key".to_owned(), x.to_owned())];
        write_secrets(&dir, &v("one"), me).unwrap();
        // A rotation rewrites in place even though the directory is 0500 in between (root).
        if me.0 == 0 {
            write_secrets(&dir, &v("two"), me).unwrap();
            assert_eq!(
                std::fs::read_to_string(dir.join("brain-key")).unwrap(),
                "two"
            );
        }
        let m = std::fs::metadata(dir.join("brain-key")).unwrap();
        assert_eq!(m.mode() & 0o777, 0o400);
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o500);
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
