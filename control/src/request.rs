//! The deploy form as a typed request: what the dashboard sends, and the validation that
//! turns it into a [`DeploySpec`] or a list of errors that each name the offending field.

use std::fmt;

use m8trx_spec::CustomerName;
use serde::{Deserialize, Serialize};

/// Smallest and largest volume the form accepts, in GB (Deployment Guide: 20–500 GB).
pub const VOLUME_GB_RANGE: std::ops::RangeInclusive<i32> = 20..=500;
/// Volume size when the form leaves it empty (Deployment Guide example: 30 GB).
pub const DEFAULT_VOLUME_GB: i32 = 30;
/// Instance type when the form leaves it empty (Deployment Guide: t3.medium default).
pub const DEFAULT_INSTANCE_TYPE: &str = "t3.medium";

/// One allowlisted instance type with the slice a shared tenant of that size reserves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct InstanceSize {
    /// EC2 instance type name, e.g. `t3.medium`.
    pub name: &'static str,
    /// Memory a shared tenant of this size reserves on its host (a quarter of the type's memory).
    pub shared_memory_mib: u64,
    /// CPU a shared tenant of this size reserves on its host, in thousandths of a vCPU.
    pub shared_cpu_millis: u64,
}

/// The form's instance-type dropdown; shared tenants reserve a quarter of the type's memory.
pub const INSTANCE_TYPES: [InstanceSize; 6] = [
    InstanceSize {
        name: "t3.small",
        shared_memory_mib: 512,
        shared_cpu_millis: 500,
    },
    InstanceSize {
        name: "t3.medium",
        shared_memory_mib: 1024,
        shared_cpu_millis: 500,
    },
    InstanceSize {
        name: "t3.large",
        shared_memory_mib: 2048,
        shared_cpu_millis: 500,
    },
    InstanceSize {
        name: "t3.xlarge",
        shared_memory_mib: 4096,
        shared_cpu_millis: 1000,
    },
    InstanceSize {
        name: "m6i.large",
        shared_memory_mib: 2048,
        shared_cpu_millis: 500,
    },
    InstanceSize {
        name: "m6i.xlarge",
        shared_memory_mib: 4096,
        shared_cpu_millis: 1000,
    },
];

/// Which customer template runs: the packaged agent (Path B bootstrap) or an operator's app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Template {
    /// The M8trx Agent template (the form's `m8trx_agent` is accepted as an alias).
    #[serde(alias = "m8trx_agent")]
    Agent,
    /// The baseline (custom-app) template.
    Baseline,
}

impl Template {
    /// Lowercase name used in tags, user-data and the hostd spec.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::Baseline => "baseline",
        }
    }
}

/// Where the customer runs: a slot on a shared host (the opt-in) or its own EC2 instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hosting {
    /// A tenant on a shared host: own engine, volume, role; shared kernel.
    Shared,
    /// A dedicated hardened EC2 instance, exactly as every customer has today.
    Dedicated,
}

impl Hosting {
    /// Lowercase name used in tags and job lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Shared => "shared",
            Self::Dedicated => "dedicated",
        }
    }
}

/// Secret values the dashboard minted or holds in its settings; never logged, never in user-data.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Secrets {
    /// Brain bearer returned by the Brain mint (`brain-key`).
    #[serde(default)]
    pub brain_key: Option<String>,
    /// Tag-bound Tailscale auth key (`tailscale-auth-key`).
    #[serde(default)]
    pub tailscale_auth_key: Option<String>,
    /// Read-only PAT for the agent repository (`agent-fetch-pat`).
    #[serde(default)]
    pub agent_fetch_pat: Option<String>,
    /// Caddy basic-auth password (`agent-ui-password`); generated when absent.
    #[serde(default)]
    pub agent_ui_password: Option<String>,
    /// sts:ExternalId of the customer role (terraform `customer-role` output), handed to hostd
    /// in the tenant spec; the role's `m8trx:external-id` tag when absent.
    #[serde(default)]
    pub external_id: Option<String>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = |v: &Option<String>| if v.is_some() { "<set>" } else { "<unset>" };
        f.debug_struct("Secrets")
            .field("brain_key", &shown(&self.brain_key))
            .field("tailscale_auth_key", &shown(&self.tailscale_auth_key))
            .field("agent_fetch_pat", &shown(&self.agent_fetch_pat))
            .field("agent_ui_password", &shown(&self.agent_ui_password))
            .field("external_id", &shown(&self.external_id))
            .finish()
    }
}

/// The deploy form as sent by the dashboard (JSON) or built from CLI flags; unvalidated.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// Customer name (3–32 of `[a-z0-9-]`, starting with a letter).
    pub name: String,
    /// `agent` or `baseline`.
    pub template: Option<String>,
    /// One of [`INSTANCE_TYPES`]; `t3.medium` when absent.
    #[serde(default)]
    pub instance_type: Option<String>,
    /// Volume size in GB, 20–500; 30 when absent.
    #[serde(default)]
    pub volume_size_gb: Option<i64>,
    /// DNS label of the subdomain; the customer name when absent.
    #[serde(default)]
    pub subdomain: Option<String>,
    /// `shared` (opt-in) or `dedicated`; dedicated when absent.
    #[serde(default)]
    pub hosting: Option<String>,
    /// Regulated customers always run dedicated; asking for shared is refused.
    #[serde(default)]
    pub regulated: bool,
    /// Brain URL for this customer; the control configuration's value when absent.
    #[serde(default)]
    pub brain_url: Option<String>,
    /// Subnet for a dedicated instance; the control configuration's value when absent.
    #[serde(default)]
    pub subnet_id: Option<String>,
    /// The secret SSM parameter values.
    #[serde(default)]
    pub secrets: Secrets,
}

/// One validation failure: the form field it belongs to and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// Field name as the dashboard sends it, e.g. `volume_size_gb` or `secrets.brain_key`.
    pub field: String,
    /// What is wrong and what is accepted.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// A request that passed validation: every field typed, defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploySpec {
    /// Validated customer name.
    pub name: CustomerName,
    /// Customer template.
    pub template: Template,
    /// Allowlisted instance size.
    pub instance: InstanceSize,
    /// Volume size in GB, within [`VOLUME_GB_RANGE`].
    pub volume_size_gb: i32,
    /// Subdomain label (the name when the form left it empty).
    pub subdomain: String,
    /// Shared or dedicated, after applying `regulated`.
    pub hosting: Hosting,
    /// Whether the customer is regulated (then `hosting` is always dedicated).
    pub regulated: bool,
    /// Brain URL written to `brain-url`, when the request carried one.
    pub brain_url: Option<String>,
    /// Subnet for a dedicated instance, when the request carried one.
    pub subnet_id: Option<String>,
    /// Secret values for the SSM parameters.
    pub secrets: Secrets,
}

/// Checks a DNS label (the shared rule of the model crate).
pub use m8trx_spec::check_dns_label;

impl DeployRequest {
    /// Validates every field and returns all failures at once, each naming its field.
    pub fn validate(&self) -> Result<DeploySpec, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut err = |field: &str, message: String| {
            errors.push(FieldError {
                field: field.to_owned(),
                message,
            })
        };

        let name = match CustomerName::parse(&self.name) {
            Ok(n) => Some(n),
            Err(e) => {
                err("name", e.to_string());
                None
            }
        };

        let template = match self.template.as_deref() {
            None | Some("") => {
                err(
                    "template",
                    "is required: choose \"agent\" or \"baseline\"".to_owned(),
                );
                None
            }
            Some("agent") | Some("m8trx_agent") => Some(Template::Agent),
            Some("baseline") => Some(Template::Baseline),
            Some(other) => {
                err(
                    "template",
                    format!("must be \"agent\" or \"baseline\", got {other:?}"),
                );
                None
            }
        };

        let wanted_type = self
            .instance_type
            .as_deref()
            .filter(|t| !t.is_empty())
            .unwrap_or(DEFAULT_INSTANCE_TYPE);
        let instance = INSTANCE_TYPES
            .iter()
            .find(|t| t.name == wanted_type)
            .copied();
        if instance.is_none() {
            let allowed: Vec<_> = INSTANCE_TYPES.iter().map(|t| t.name).collect();
            err(
                "instance_type",
                format!(
                    "{wanted_type:?} is not on the allowlist ({})",
                    allowed.join(", ")
                ),
            );
        }

        let size = self.volume_size_gb.unwrap_or(i64::from(DEFAULT_VOLUME_GB));
        let volume_size_gb = match i32::try_from(size) {
            Ok(s) if VOLUME_GB_RANGE.contains(&s) => Some(s),
            _ => {
                err(
                    "volume_size_gb",
                    format!(
                        "must be between {} and {} GB, got {size}",
                        VOLUME_GB_RANGE.start(),
                        VOLUME_GB_RANGE.end()
                    ),
                );
                None
            }
        };

        let subdomain = match self.subdomain.as_deref().filter(|s| !s.is_empty()) {
            Some(label) => match check_dns_label(label) {
                Ok(()) => Some(label.to_owned()),
                Err(m) => {
                    err("subdomain", format!("is not a DNS label: {m}"));
                    None
                }
            },
            None => name.as_ref().map(|n| n.as_str().to_owned()),
        };

        let hosting = match (self.hosting.as_deref(), self.regulated) {
            (Some("shared"), true) => {
                err(
                    "hosting",
                    "regulated customers run on dedicated EC2 only: shared hosting is refused \
                     for a regulated customer (choose \"dedicated\" or leave hosting empty)"
                        .to_owned(),
                );
                None
            }
            (None, _) | (Some(""), _) | (Some("dedicated"), _) => Some(Hosting::Dedicated),
            (Some("shared"), false) => Some(Hosting::Shared),
            (Some(other), _) => {
                err(
                    "hosting",
                    format!("must be \"shared\" or \"dedicated\", got {other:?}"),
                );
                None
            }
        };

        if let Some(url) = self.brain_url.as_deref() {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                err(
                    "brain_url",
                    format!("must be an http:// or https:// URL, got {url:?}"),
                );
            }
        }
        if let Some(subnet) = self.subnet_id.as_deref() {
            if !subnet.starts_with("subnet-") {
                err(
                    "subnet_id",
                    format!("must be an EC2 subnet id (subnet-…), got {subnet:?}"),
                );
            }
        }

        let s = &self.secrets;
        for (field, value) in [
            ("secrets.brain_key", &s.brain_key),
            ("secrets.tailscale_auth_key", &s.tailscale_auth_key),
            ("secrets.agent_fetch_pat", &s.agent_fetch_pat),
        ] {
            if value.as_deref().unwrap_or_default().is_empty() {
                err(
                    field,
                    "is required: the six SSM parameters are written before any compute".to_owned(),
                );
            }
        }
        if s.agent_ui_password.as_deref().is_some_and(|p| p.len() < 12) {
            err(
                "secrets.agent_ui_password",
                "must be at least 12 characters (leave it empty to generate one)".to_owned(),
            );
        }

        match (
            name,
            template,
            instance,
            volume_size_gb,
            subdomain,
            hosting,
            errors.is_empty(),
        ) {
            (
                Some(name),
                Some(template),
                Some(instance),
                Some(volume_size_gb),
                Some(subdomain),
                Some(hosting),
                true,
            ) => Ok(DeploySpec {
                name,
                template,
                instance,
                volume_size_gb,
                subdomain,
                hosting,
                regulated: self.regulated,
                brain_url: self.brain_url.clone(),
                subnet_id: self.subnet_id.clone(),
                secrets: self.secrets.clone(),
            }),
            _ => Err(errors),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> DeployRequest {
        DeployRequest {
            name: "acme".into(),
            template: Some("agent".into()),
            secrets: Secrets {
                brain_key: Some("br_x".into()),
                tailscale_auth_key: Some("tskey-x".into()),
                agent_fetch_pat: Some("ghp_x".into()),
                agent_ui_password: None,
                external_id: None,
            },
            ..Default::default()
        }
    }

    fn fields(r: &DeployRequest) -> Vec<String> {
        r.validate()
            .expect_err("should be refused")
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn defaults_follow_the_deployment_guide() {
        let s = good().validate().unwrap();
        assert_eq!(s.instance.name, "t3.medium");
        assert_eq!(s.volume_size_gb, 30);
        assert_eq!(s.subdomain, "acme");
        assert_eq!(s.hosting, Hosting::Dedicated);
        assert_eq!(s.template, Template::Agent);
    }

    #[test]
    fn every_error_names_its_field() {
        let r = DeployRequest {
            name: "Acme".into(),
            template: Some("wordpress".into()),
            instance_type: Some("p4d.24xlarge".into()),
            volume_size_gb: Some(19),
            subdomain: Some("-bad".into()),
            hosting: Some("cloud".into()),
            brain_url: Some("ftp://x".into()),
            subnet_id: Some("vpc-1".into()),
            ..Default::default()
        };
        let errs = r.validate().unwrap_err();
        let f: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            f,
            [
                "name",
                "template",
                "instance_type",
                "volume_size_gb",
                "subdomain",
                "hosting",
                "brain_url",
                "subnet_id",
                "secrets.brain_key",
                "secrets.tailscale_auth_key",
                "secrets.agent_fetch_pat"
            ]
        );
        assert!(errs[2].message.contains("t3.medium"), "{}", errs[2]);
        assert!(errs[3].message.contains("20 and 500"), "{}", errs[3]);
    }

    #[test]
    fn volume_bounds_are_inclusive() {
        for (gb, ok) in [
            (19, false),
            (20, true),
            (500, true),
            (501, false),
            (i64::MAX, false),
        ] {
            let r = DeployRequest {
                volume_size_gb: Some(gb),
                ..good()
            };
            assert_eq!(r.validate().is_ok(), ok, "{gb} GB");
        }
    }

    #[test]
    fn regulated_forces_dedicated_and_refuses_shared() {
        let r = DeployRequest {
            regulated: true,
            ..good()
        };
        assert_eq!(r.validate().unwrap().hosting, Hosting::Dedicated);
        let r = DeployRequest {
            regulated: true,
            hosting: Some("shared".into()),
            ..good()
        };
        let errs = r.validate().unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "hosting");
        assert!(errs[0].message.contains("regulated"), "{}", errs[0]);
        let r = DeployRequest {
            hosting: Some("shared".into()),
            ..good()
        };
        assert_eq!(r.validate().unwrap().hosting, Hosting::Shared);
    }

    #[test]
    fn form_alias_and_subdomain_rules() {
        let r = DeployRequest {
            template: Some("m8trx_agent".into()),
            subdomain: Some("acme-finance".into()),
            ..good()
        };
        let s = r.validate().unwrap();
        assert_eq!(s.template, Template::Agent);
        assert_eq!(s.subdomain, "acme-finance");
        for bad in ["acme_x", "a.b", &"a".repeat(64), "x-"] {
            let r = DeployRequest {
                subdomain: Some(bad.into()),
                ..good()
            };
            assert_eq!(fields(&r), ["subdomain"], "{bad}");
        }
    }

    #[test]
    fn short_password_is_refused_and_secrets_never_debug_print() {
        let mut r = good();
        r.secrets.agent_ui_password = Some("short".into());
        assert_eq!(fields(&r), ["secrets.agent_ui_password"]);
        let shown = format!("{:?}", good());
        assert!(
            !shown.contains("br_x") && !shown.contains("tskey-x"),
            "{shown}"
        );
    }

    #[test]
    fn json_rejects_unknown_fields() {
        let e = serde_json::from_str::<DeployRequest>(r#"{"name":"acme","size":3}"#).unwrap_err();
        assert!(e.to_string().contains("size"), "{e}");
    }
}
