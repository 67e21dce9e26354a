//! Where credentials come from: STS AssumeRole on the tenant's role, with the host's own
//! credentials from the default aws-config chain (IMDS in production).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_sdk_sts::error::DisplayErrorContext;
use aws_sdk_sts::types::Tag;
use aws_smithy_types::date_time::{DateTime, Format};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use crate::registry::{unix_secs, TenantSpec};

/// Longest session STS grants to a role assumed with role credentials (role chaining).
pub const MAX_DURATION: Duration = Duration::from_secs(3600);
/// Shortest session STS grants.
pub const MIN_DURATION: Duration = Duration::from_secs(900);
/// Name of the transitive session tag carrying the customer name.
pub const CUSTOMER_TAG: &str = "Customer";

/// Temporary credentials of one tenant's role. `Debug` hides the secrets.
#[derive(Clone)]
pub struct Credentials {
    /// Access key id (not secret, but identifies the session).
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Session token.
    pub session_token: String,
    /// When STS says they stop working.
    pub expiration: SystemTime,
    /// Account of the assumed role, when known.
    pub account_id: Option<String>,
    /// When the broker received them (for the cached-credential age metric).
    pub issued_at: SystemTime,
}

impl Credentials {
    /// `Expiration` as the container-credentials protocol wants it: RFC 3339, UTC, whole seconds.
    pub fn expiration_rfc3339(&self) -> String {
        rfc3339(self.expiration)
    }

    /// Time left before expiry at `now` (zero once expired).
    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.expiration
            .duration_since(now)
            .unwrap_or(Duration::ZERO)
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("session_token", &"<redacted>")
            .field("expiration", &self.expiration_rfc3339())
            .field("account_id", &self.account_id)
            .finish()
    }
}

/// Formats a time as RFC 3339 in UTC with whole seconds, e.g. `2026-11-23T11:04:46Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = i64::try_from(unix_secs(t)).unwrap_or(i64::MAX);
    DateTime::from_secs(secs)
        .fmt(Format::DateTime)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

/// Why credentials could not be fetched; the message is safe to show the tenant.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct FetchError(pub String);

/// Anything that can produce credentials for a tenant; the broker uses [`StsSource`].
pub trait CredentialSource: Send + Sync + 'static {
    /// Fetches fresh credentials for `tenant`.
    fn fetch(&self, tenant: Arc<TenantSpec>)
        -> BoxFuture<'static, Result<Credentials, FetchError>>;
}

/// How the broker talks to STS.
#[derive(Debug, Clone)]
pub struct StsSettings {
    /// STS endpoint URL; `None` uses the SDK's regional endpoint.
    pub endpoint: Option<String>,
    /// Region; `None` takes it from the default chain, falling back to us-east-1.
    pub region: Option<String>,
    /// SourceIdentity of every session: the host's id.
    pub host_id: String,
    /// DurationSeconds of every session (900 to 3600).
    pub duration: Duration,
    /// Limit on one AssumeRole call including retries.
    pub call_timeout: Duration,
}

/// Why STS settings were refused.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(
        "--host-id {0:?} is not a valid SourceIdentity: 2 to 64 characters of [A-Za-z0-9_+=,.@-]"
    )]
    HostId(String),
    #[error(
        "--sts-duration-secs must be between 900 and 3600 (role chaining caps it at 3600), got {0}"
    )]
    Duration(u64),
}

impl StsSettings {
    /// Checks the host id and duration against STS's limits.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let n = self.host_id.chars().count();
        if !(2..=64).contains(&n)
            || !self
                .host_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c))
        {
            return Err(SettingsError::HostId(self.host_id.clone()));
        }
        if self.duration < MIN_DURATION || self.duration > MAX_DURATION {
            return Err(SettingsError::Duration(self.duration.as_secs()));
        }
        Ok(())
    }
}

/// AssumeRole through aws-sdk-sts.
pub struct StsSource {
    client: aws_sdk_sts::Client,
    settings: StsSettings,
}

impl StsSource {
    /// Builds the STS client from the default aws-config chain and the overrides in `settings`.
    pub async fn new(settings: StsSettings) -> Result<Self, SettingsError> {
        settings.validate()?;
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .operation_timeout(settings.call_timeout)
                .build(),
        );
        if let Some(ep) = &settings.endpoint {
            loader = loader.endpoint_url(ep);
        }
        if let Some(r) = &settings.region {
            loader = loader.region(aws_config::Region::new(r.clone()));
        }
        let mut conf = loader.load().await;
        if conf.region().is_none() {
            conf = conf
                .into_builder()
                .region(aws_config::Region::new("us-east-1"))
                .build();
        }
        Ok(Self {
            client: aws_sdk_sts::Client::new(&conf),
            settings,
        })
    }
}

impl CredentialSource for StsSource {
    fn fetch(
        &self,
        tenant: Arc<TenantSpec>,
    ) -> BoxFuture<'static, Result<Credentials, FetchError>> {
        let client = self.client.clone();
        let settings = self.settings.clone();
        async move {
            let tag = Tag::builder()
                .key(CUSTOMER_TAG)
                .value(tenant.name.as_str())
                .build()
                .map_err(|e| FetchError(format!("building the Customer session tag: {e}")))?;
            let duration = i32::try_from(settings.duration.as_secs()).unwrap_or(3600);
            let out = client
                .assume_role()
                .role_arn(&tenant.role_arn)
                .role_session_name(tenant.name.role_session_name())
                .external_id(&tenant.external_id)
                .source_identity(&settings.host_id)
                .duration_seconds(duration)
                .tags(tag)
                .transitive_tag_keys(CUSTOMER_TAG)
                .send()
                .await
                .map_err(|e| {
                    FetchError(format!(
                        "STS AssumeRole on {} failed: {}",
                        tenant.role_arn,
                        DisplayErrorContext(&e)
                    ))
                })?;
            let c = out.credentials.ok_or_else(|| {
                FetchError("STS AssumeRole answered without credentials".to_owned())
            })?;
            let expiration = SystemTime::try_from(c.expiration)
                .map_err(|e| FetchError(format!("STS returned an unusable Expiration: {e}")))?;
            let account_id = out
                .assumed_role_user
                .as_ref()
                .and_then(|u| u.arn.split(':').nth(4).map(str::to_owned))
                .filter(|a| !a.is_empty())
                .or_else(|| tenant.account_id().map(str::to_owned));
            Ok(Credentials {
                access_key_id: c.access_key_id,
                secret_access_key: c.secret_access_key,
                session_token: c.session_token,
                expiration,
                account_id,
                issued_at: SystemTime::now(),
            })
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(host_id: &str, secs: u64) -> StsSettings {
        StsSettings {
            endpoint: None,
            region: None,
            host_id: host_id.into(),
            duration: Duration::from_secs(secs),
            call_timeout: Duration::from_secs(10),
        }
    }

    #[test]
    fn validates_host_id_and_duration() {
        assert!(settings("m8trx-host-01", 3600).validate().is_ok());
        assert!(settings("m8trx-host-01", 900).validate().is_ok());
        assert!(matches!(
            settings("m8trx-host-01", 3601).validate(),
            Err(SettingsError::Duration(3601))
        ));
        assert!(matches!(
            settings("m8trx-host-01", 899).validate(),
            Err(SettingsError::Duration(899))
        ));
        assert!(settings("h", 3600).validate().is_err());
        assert!(settings("bad host", 3600).validate().is_err());
        assert!(settings(&"h".repeat(65), 3600).validate().is_err());
    }

    #[test]
    fn rfc3339_is_utc_whole_seconds() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_000_500);
        assert_eq!(rfc3339(t), "2026-11-18T11:06:40Z");
    }

    #[test]
    fn debug_hides_secrets() {
        let c = Credentials {
            access_key_id: "ASIAEXAMPLE".into(),
            secret_access_key: "very-secret".into(),
            session_token: "session-secret".into(),
            expiration: SystemTime::now(),
            account_id: Some("123456789012".into()),
            issued_at: SystemTime::now(),
        };
        let s = format!("{c:?}");
        assert!(
            s.contains("ASIAEXAMPLE")
                && !s.contains("very-secret")
                && !s.contains("session-secret")
        );
    }
}
