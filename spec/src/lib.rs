//! Names the platform derives from a customer name, shared by hostd, control and the tests
//! so that every component spells `cust_acme`, `/m8trx/acme/…` and `m8trx-acme` the same way.

use std::fmt;

use serde::{Deserialize, Serialize};

pub mod bundle;
pub mod idle;
pub mod tenant;

pub use tenant::TenantSpec;

/// The six SSM parameters every customer has under `/m8trx/<name>/`.
pub const SSM_PARAMETERS: [SsmParameter; 6] = [
    SsmParameter {
        leaf: "brain-key",
        secure: true,
    },
    SsmParameter {
        leaf: "brain-customer-id",
        secure: false,
    },
    SsmParameter {
        leaf: "brain-url",
        secure: false,
    },
    SsmParameter {
        leaf: "tailscale-auth-key",
        secure: true,
    },
    SsmParameter {
        leaf: "agent-fetch-pat",
        secure: true,
    },
    SsmParameter {
        leaf: "agent-ui-password",
        secure: true,
    },
];

/// One per-customer SSM parameter: its leaf name and whether it is a SecureString.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SsmParameter {
    /// Last path component, e.g. `brain-key`.
    pub leaf: &'static str,
    /// SecureString (KMS-encrypted) when true, plain String otherwise.
    pub secure: bool,
}

/// Why a customer name was refused; the message says which rule failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("customer name must be 3 to 32 characters long, got {0}")]
    Length(usize),
    #[error("customer name must start with a lowercase letter a-z, got {0:?}")]
    FirstChar(char),
    #[error("customer name may contain only a-z, 0-9 and '-', found {0:?}")]
    Char(char),
    #[error("customer name must not end with '-'")]
    TrailingDash,
}

/// A validated customer name: the one string every per-customer artefact derives from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CustomerName(String);

impl CustomerName {
    /// Validates `name` against the platform rule: 3–32 of `[a-z0-9-]`, starting with a letter.
    pub fn parse(name: &str) -> Result<Self, NameError> {
        let len = name.chars().count();
        if !(3..=32).contains(&len) {
            return Err(NameError::Length(len));
        }
        let mut chars = name.chars();
        if let Some(first) = chars.next() {
            if !first.is_ascii_lowercase() {
                return Err(NameError::FirstChar(first));
            }
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(NameError::Char(bad));
        }
        // A trailing dash makes ugly DNS labels and RoleSessionNames; the platform never issues one.
        if name.ends_with('-') {
            return Err(NameError::TrailingDash);
        }
        Ok(Self(name.to_owned()))
    }

    /// The name itself, for paths and labels.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Customer UID used by the Brain: `cust_` + name with `-` turned into `_`.
    pub fn uid(&self) -> String {
        format!("cust_{}", self.0.replace('-', "_"))
    }

    /// Tailscale tag that binds the customer's devices to its private tailnet slice.
    pub fn tailscale_tag(&self) -> String {
        format!("tag:m8trx-cust-{}", self.0)
    }

    /// SSM path prefix (with trailing slash) under which the six parameters live.
    pub fn ssm_prefix(&self) -> String {
        format!("/m8trx/{}/", self.0)
    }

    /// Full names of the six SSM parameters, in the platform's documented order.
    pub fn ssm_parameter_names(&self) -> Vec<String> {
        SSM_PARAMETERS
            .iter()
            .map(|p| format!("{}{}", self.ssm_prefix(), p.leaf))
            .collect()
    }

    /// Compose project name, so the customer's containers are namespaced `m8trx-<name>`.
    pub fn compose_project(&self) -> String {
        format!("m8trx-{}", self.0)
    }

    /// Host system user whose subuid/subgid range the tenant engine remaps into.
    pub fn host_user(&self) -> String {
        format!("m8t-{}", self.0)
    }

    /// STS RoleSessionName; within STS's 64-character limit and `[\w+=,.@-]` charset by construction.
    pub fn role_session_name(&self) -> String {
        format!("m8trx-{}", self.0)
    }
}

impl fmt::Display for CustomerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for CustomerName {
    type Error = NameError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<CustomerName> for String {
    fn from(value: CustomerName) -> Self {
        value.0
    }
}

impl std::str::FromStr for CustomerName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Checks a DNS label: 1–63 of `[a-z0-9-]`, not starting or ending with `-`. The error
/// completes "the label …", e.g. "must not start or end with '-'".
pub fn check_dns_label(label: &str) -> Result<(), String> {
    if label.is_empty() || label.len() > 63 {
        return Err(format!(
            "must be 1 to 63 characters long, got {}",
            label.len()
        ));
    }
    if let Some(bad) = label
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!("may contain only a-z, 0-9 and '-', found {bad:?}"));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err("must not start or end with '-'".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_platform_names() {
        for n in [
            "acme",
            "abc",
            "a-b",
            "acme-2",
            "a234567890123456789012345678901b",
        ] {
            assert!(CustomerName::parse(n).is_ok(), "{n} should be valid");
        }
    }

    #[test]
    fn refuses_each_rule_with_its_reason() {
        assert_eq!(CustomerName::parse("ab"), Err(NameError::Length(2)));
        assert_eq!(
            CustomerName::parse(&"a".repeat(33)),
            Err(NameError::Length(33))
        );
        assert_eq!(CustomerName::parse("1abc"), Err(NameError::FirstChar('1')));
        assert_eq!(CustomerName::parse("-abc"), Err(NameError::FirstChar('-')));
        assert_eq!(CustomerName::parse("Acme"), Err(NameError::FirstChar('A')));
        assert_eq!(CustomerName::parse("ac_me"), Err(NameError::Char('_')));
        assert_eq!(CustomerName::parse("acmé"), Err(NameError::Char('é')));
        assert_eq!(CustomerName::parse("acme-"), Err(NameError::TrailingDash));
    }

    #[test]
    fn derives_documented_names() {
        let n = CustomerName::parse("acme-eu").unwrap();
        assert_eq!(n.uid(), "cust_acme_eu");
        assert_eq!(n.tailscale_tag(), "tag:m8trx-cust-acme-eu");
        assert_eq!(n.compose_project(), "m8trx-acme-eu");
        assert_eq!(n.host_user(), "m8t-acme-eu");
        assert_eq!(n.role_session_name(), "m8trx-acme-eu");
        assert_eq!(
            n.ssm_parameter_names(),
            [
                "/m8trx/acme-eu/brain-key",
                "/m8trx/acme-eu/brain-customer-id",
                "/m8trx/acme-eu/brain-url",
                "/m8trx/acme-eu/tailscale-auth-key",
                "/m8trx/acme-eu/agent-fetch-pat",
                "/m8trx/acme-eu/agent-ui-password",
            ]
        );
        let plain: Vec<_> = SSM_PARAMETERS
            .iter()
            .filter(|p| !p.secure)
            .map(|p| p.leaf)
            .collect();
        assert_eq!(plain, ["brain-customer-id", "brain-url"]);
    }

    #[test]
    fn serde_validates() {
        let ok: CustomerName = serde_json::from_str("\"beta\"").unwrap();
        assert_eq!(ok.as_str(), "beta");
        let err = serde_json::from_str::<CustomerName>("\"B\"").unwrap_err();
        assert!(err.to_string().contains("3 to 32"), "{err}");
    }
}
