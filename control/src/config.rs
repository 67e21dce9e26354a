//! Settings of one control installation (what the dashboard keeps in its settings) and the
//! AWS clients built from them, with an endpoint override for moto and other local stacks.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Fleet-wide settings: region, hardened AMI, platform domain, shared-host fleet, waits.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ControlConfig {
    /// AWS region every call goes to.
    pub region: String,
    /// Endpoint override (e.g. the moto server); the real AWS endpoints when `None`.
    pub endpoint_url: Option<String>,
    /// Hardened AMI (Packer-built) for dedicated instances.
    pub ami_id: Option<String>,
    /// Platform domain: hostnames are `{label}.{platform_domain}`.
    pub platform_domain: String,
    /// Fleet-wide Brain URL written to `brain-url` when the request carries none.
    pub brain_url: Option<String>,
    /// Subnet for dedicated instances when the request carries none.
    pub dedicated_subnet_id: Option<String>,
    /// Security groups for dedicated instances (empty: the subnet's VPC default group).
    pub security_group_ids: Vec<String>,
    /// Shared-host fleet: only hosts tagged `m8trx:role=shared-host` and `m8trx:fleet=<fleet>` are candidates.
    pub fleet: String,
    /// How often waits poll AWS.
    pub poll_interval: Duration,
    /// How long a wait (volume, instance, SSM command) may take before it fails.
    pub wait_timeout: Duration,
    /// Run after a move's target serves, before the source lets go:
    /// `HOOK <hostname> <instance-id> <public-ip or ->` per hostname, to point DNS at it.
    pub dns_hook: Option<std::path::PathBuf>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            region: "us-east-2".to_owned(),
            endpoint_url: None,
            ami_id: None,
            platform_domain: "m8trx.ai".to_owned(),
            brain_url: None,
            dedicated_subnet_id: None,
            security_group_ids: Vec::new(),
            fleet: "default".to_owned(),
            poll_interval: Duration::from_secs(2),
            wait_timeout: Duration::from_secs(600),
            dns_hook: None,
        }
    }
}

/// The four AWS service clients control uses, built once per process.
#[derive(Clone, Debug)]
pub struct Clients {
    /// Instances, volumes, tags.
    pub ec2: aws_sdk_ec2::Client,
    /// Parameter Store and Run Command.
    pub ssm: aws_sdk_ssm::Client,
    /// The customer's CMK lookup.
    pub kms: aws_sdk_kms::Client,
    /// The customer's instance profile and role lookup.
    pub iam: aws_sdk_iam::Client,
}

impl Clients {
    /// Loads credentials the standard way (env, profile, IMDS) and points every client at
    /// `config.endpoint_url` when set.
    pub async fn from_config(config: &ControlConfig) -> Self {
        Self::build(config, None).await
    }

    /// Like [`Clients::from_config`] with fixed credentials (tests against moto, scripts).
    pub async fn with_credentials(
        config: &ControlConfig,
        access_key_id: &str,
        secret_access_key: &str,
    ) -> Self {
        let creds = aws_credential_types::Credentials::new(
            access_key_id,
            secret_access_key,
            None,
            None,
            "m8trx-control-static",
        );
        Self::build(config, Some(creds)).await
    }

    async fn build(
        config: &ControlConfig,
        creds: Option<aws_credential_types::Credentials>,
    ) -> Self {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(config.region.clone()));
        if let Some(creds) = creds {
            loader = loader.credentials_provider(creds);
        }
        if let Some(url) = &config.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let shared = loader.load().await;
        Self {
            ec2: aws_sdk_ec2::Client::new(&shared),
            ssm: aws_sdk_ssm::Client::new(&shared),
            kms: aws_sdk_kms::Client::new(&shared),
            iam: aws_sdk_iam::Client::new(&shared),
        }
    }
}
