//! User-data of a dedicated instance: the platform's first-boot bootstrap (`bootstrap.sh`)
//! with the customer name, template and hostname filled in. Secrets are never in it: the
//! instance reads them from SSM with its own role.

use crate::error::{ControlError, Result};
use crate::request::{check_dns_label, DeploySpec};

/// AWS's hard limit on user-data, before base64.
pub const USER_DATA_LIMIT: usize = 16 * 1024;

const TEMPLATE: &str = include_str!("bootstrap.sh");

/// `{label}.{platform-domain}`, the customer's public hostname.
pub fn hostname(spec: &DeploySpec, platform_domain: &str) -> String {
    format!("{}.{platform_domain}", spec.subdomain)
}

/// Checks the platform domain is a dotted list of DNS labels (it is pasted into a script).
pub fn check_domain(domain: &str) -> Result<()> {
    if domain.len() > 253 || !domain.contains('.') {
        return Err(ControlError::Missing(format!(
            "platform domain {domain:?} is not a DNS name: set --platform-domain"
        )));
    }
    for label in domain.split('.') {
        check_dns_label(label).map_err(|m| {
            ControlError::Missing(format!("platform domain {domain:?}: label {label:?} {m}"))
        })?;
    }
    Ok(())
}

/// Renders the bootstrap for `spec`; refuses a result at or over the 16 KB limit.
pub fn render(spec: &DeploySpec, platform_domain: &str) -> Result<String> {
    check_domain(platform_domain)?;
    // Every substituted value is a validated DNS label / customer name: [a-z0-9.-] only,
    // so it cannot break out of the single quotes it is placed in.
    let text = TEMPLATE
        .replace("@@NAME@@", spec.name.as_str())
        .replace("@@TEMPLATE@@", spec.template.as_str())
        .replace("@@HOSTNAME@@", &hostname(spec, platform_domain));
    if text.len() >= USER_DATA_LIMIT {
        return Err(ControlError::Conflict(format!(
            "rendered user-data is {} bytes, over the {USER_DATA_LIMIT}-byte EC2 limit: \
             move steps into the cloned repository",
            text.len()
        )));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{DeployRequest, Secrets};

    fn spec(name: &str, template: &str, subdomain: Option<&str>) -> DeploySpec {
        DeployRequest {
            name: name.into(),
            template: Some(template.into()),
            subdomain: subdomain.map(Into::into),
            secrets: Secrets {
                brain_key: Some("br_SECRET_BRAIN".into()),
                tailscale_auth_key: Some("tskey-SECRET-TS".into()),
                agent_fetch_pat: Some("ghp_SECRET_PAT".into()),
                agent_ui_password: Some("SECRET-UI-PASSWORD".into()),
                external_id: None,
            },
            ..Default::default()
        }
        .validate()
        .unwrap()
    }

    #[test]
    fn stays_under_16_kb_for_the_longest_inputs() {
        let longest = spec(
            &format!("a{}", "b".repeat(31)),
            "agent",
            Some(&"c".repeat(63)),
        );
        let domain = format!("{}.{}.{}", "d".repeat(63), "e".repeat(63), "f".repeat(63));
        let text = render(&longest, &domain).unwrap();
        assert!(
            text.len() < USER_DATA_LIMIT,
            "user-data is {} bytes, limit {USER_DATA_LIMIT}",
            text.len()
        );
        // And with a comfortable margin, so the next bootstrap step does not hit the limit.
        assert!(text.len() < USER_DATA_LIMIT / 2, "{} bytes", text.len());
    }

    #[test]
    fn carries_the_contract_and_no_secret() {
        let s = spec("acme", "agent", Some("acme-finance"));
        let text = render(&s, "m8trx.ai").unwrap();
        assert!(!text.contains("@@"), "unreplaced placeholder");
        assert!(text.contains("M8TRX_EXPECTED_CUSTOMER='acme'"));
        assert!(text.contains("M8TRX_HOSTNAME='acme-finance.m8trx.ai'"));
        assert!(text.contains("meta-data/$1"));
        assert!(text.contains("imds tags/instance/Customer"));
        assert!(text.contains("X-aws-ec2-metadata-token"));
        assert!(text.contains("/m8trx/$CUSTOMER/$1"));
        for leaf in m8trx_spec::SSM_PARAMETERS.iter().map(|p| p.leaf) {
            assert!(text.contains(&format!("param {leaf}")), "reads {leaf}");
        }
        assert!(text.contains("--advertise-tags=\"tag:m8trx-cust-$CUSTOMER\""));
        assert!(text.contains("/var/log/m8trx-agent/first-boot.log"));
        for secret in ["SECRET_BRAIN", "SECRET-TS", "SECRET_PAT", "SECRET-UI"] {
            assert!(!text.contains(secret), "user-data leaks {secret}");
        }
    }

    #[test]
    fn is_valid_bash_for_both_templates() {
        for template in ["agent", "baseline"] {
            let text = render(&spec("acme", template, None), "m8trx.ai").unwrap();
            let dir = std::env::temp_dir().join(format!(
                "control-userdata-{}-{template}.sh",
                std::process::id()
            ));
            std::fs::write(&dir, &text).unwrap();
            let out = std::process::Command::new("bash")
                .arg("-n")
                .arg(&dir)
                .output()
                .unwrap();
            let _ = std::fs::remove_file(&dir);
            assert!(
                out.status.success(),
                "bash -n rejects the {template} user-data: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    #[test]
    fn refuses_a_bad_platform_domain() {
        let s = spec("acme", "agent", None);
        for bad in ["m8trx", "m8trx.ai; rm -rf /", "-x.ai", "a..b"] {
            assert!(render(&s, bad).is_err(), "{bad}");
        }
    }
}
