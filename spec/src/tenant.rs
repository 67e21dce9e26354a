//! The tenant spec an operator (or control) hands to `hostd ctl create -f SPEC`: one
//! type, here in the shared model crate, that control builds and hostd parses, with its
//! validation in one place. Versioned so a hostd can refuse a spec it does not understand
//! instead of guessing.

use std::fmt;

use crate::{check_dns_label, CustomerName};
use serde::{Deserialize, Serialize};

/// The only spec version this hostd understands.
pub const SPEC_VERSION: u32 = 1;

/// Why a spec was refused; always names the field so the operator knows what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tenant spec field `{field}`: {message}")]
pub struct SpecError {
    /// Dotted path of the offending field, e.g. `limits.memory`.
    pub field: String,
    /// What is wrong and what is accepted.
    pub message: String,
}

fn err(field: &str, message: impl Into<String>) -> SpecError {
    SpecError {
        field: field.to_owned(),
        message: message.into(),
    }
}

/// Which customer stack the tenant runs; decides defaults such as the TLS mode and the sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Template {
    /// The packaged M8trx Agent: its own Caddy with its own certificate, plus tailscale.
    Agent,
    /// An operator-supplied stack serving plain HTTP on :8080.
    Baseline,
}

impl Template {
    /// The aggregate limits a tenant of this template gets when the placement names none,
    /// and what `hostd ctl check --template` checks a compose file against: agent 1 CPU,
    /// 1 GiB, 1024 pids, 10 GiB disk; baseline 0.5 CPU, 512 MiB, 512 pids, 5 GiB disk.
    pub fn default_limits(self) -> Limits {
        let (cpu, memory, pids, disk) = match self {
            Template::Agent => (1.0, GIB, 1024, 10 * GIB),
            Template::Baseline => (0.5, 512 * MIB, 512, 5 * GIB),
        };
        Limits {
            cpu,
            memory: ByteSize(memory),
            pids,
            disk: ByteSize(disk),
            io_read: DEFAULT_IO_READ,
            io_write: DEFAULT_IO_WRITE,
            egress: DEFAULT_EGRESS,
            ingress: DEFAULT_INGRESS,
        }
    }
}

/// Where TLS ends for the tenant's subdomains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// sni-proxy routes the TLS stream untouched to the tenant's own Caddy.
    Passthrough,
    /// sni-proxy terminates TLS (rustls-acme) for tenants with no TLS of their own.
    Terminate,
}

/// Aggregate limits of the whole tenant (all its containers and its engine together).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// CPU cores the tenant may use in aggregate, e.g. 0.5.
    pub cpu: f64,
    /// Memory ceiling, e.g. "512Mi", "1G" or a byte count.
    pub memory: ByteSize,
    /// Maximum number of processes and threads.
    pub pids: u32,
    /// Size of the tenant volume, which is also its disk quota.
    pub disk: ByteSize,
    /// Read bandwidth on the tenant volume's device, per second (cgroup io.max rbps);
    /// default 100Mi.
    #[serde(default = "default_io_read")]
    pub io_read: ByteSize,
    /// Write bandwidth on the tenant volume's device, per second (io.max wbps); default 50Mi.
    #[serde(default = "default_io_write")]
    pub io_write: ByteSize,
    /// Bytes per second the tenant's containers may send out of their networks (to the
    /// world, to sni-proxy's clients, to the broker), all networks together; default 10Mi.
    #[serde(default = "default_egress")]
    pub egress: ByteSize,
    /// Bytes per second that may reach the tenant's containers from outside their networks,
    /// all networks together; default 20Mi.
    #[serde(default = "default_ingress")]
    pub ingress: ByteSize,
}

/// Read bandwidth a tenant gets when its spec names none.
pub const DEFAULT_IO_READ: ByteSize = ByteSize(100 * MIB);
/// Write bandwidth a tenant gets when its spec names none.
pub const DEFAULT_IO_WRITE: ByteSize = ByteSize(50 * MIB);

/// Egress bandwidth a tenant gets when its spec names none.
pub const DEFAULT_EGRESS: ByteSize = ByteSize(10 * MIB);
/// Ingress bandwidth a tenant gets when its spec names none.
pub const DEFAULT_INGRESS: ByteSize = ByteSize(20 * MIB);

fn default_egress() -> ByteSize {
    DEFAULT_EGRESS
}

fn default_ingress() -> ByteSize {
    DEFAULT_INGRESS
}

fn default_io_read() -> ByteSize {
    DEFAULT_IO_READ
}

fn default_io_write() -> ByteSize {
    DEFAULT_IO_WRITE
}

/// The tenant's own encrypted volume: an attached EBS volume in production, a loop image in dev.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum VolumeSource {
    /// EBS volume id (`vol-…`) attached to this host by control.
    Ebs(String),
    /// Path of an image file backing a loop device (dev and test only).
    LoopImage(String),
}

/// The AWS identity the tenant's containers receive through cred-broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Role {
    /// ARN of the customer's IAM role.
    pub arn: String,
    /// ExternalId the role's trust policy demands.
    pub external_id: String,
}

/// Everything hostd needs to provision one tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSpec {
    /// Spec format version; must equal [`SPEC_VERSION`].
    pub version: u32,
    /// Customer name; every host-side name derives from it.
    pub name: CustomerName,
    /// Stack template.
    pub template: Template,
    /// Public names routed to this tenant (`label.platform-domain`).
    pub subdomains: Vec<String>,
    /// TLS mode; defaults to passthrough for agent and terminate for baseline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsMode>,
    /// Aggregate limits.
    pub limits: Limits,
    /// The tenant volume.
    pub volume: VolumeSource,
    /// The customer role.
    pub role: Role,
    /// Which service receives the public traffic; defaults by TLS mode (see [`TenantSpec::ingress`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Ingress>,
    /// When the tenant is frozen and put to sleep while idle, and woken on a schedule;
    /// see [`TenantSpec::idle`] for the defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<crate::idle::Idle>,
}

/// The compose service sni-proxy sends a tenant's public traffic to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ingress {
    /// Compose service name.
    pub service: String,
    /// Its TLS port (passthrough) or plain HTTP port (terminate).
    pub port: u16,
    /// Its plain HTTP port for ACME HTTP-01 challenges (passthrough).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_port: Option<u16>,
}

impl TenantSpec {
    /// Parses and validates a spec from JSON or YAML text; errors name the field.
    pub fn parse(text: &str) -> Result<Self, SpecError> {
        // YAML first into a JSON value: serde_norway spells enums as YAML tags, while specs
        // are written (and sent by control) as plain maps, e.g. `volume: { ebs: vol-… }`.
        let value: serde_json::Value = serde_norway::from_str(text)
            .map_err(|e| err("(document)", format!("not valid YAML or JSON: {e}")))?;
        let spec: TenantSpec =
            serde_json::from_value(value).map_err(|e| err("(document)", e.to_string()))?;
        spec.validate()?;
        Ok(spec)
    }

    /// The effective TLS mode after the template default.
    pub fn tls_mode(&self) -> TlsMode {
        self.tls.unwrap_or(match self.template {
            Template::Agent => TlsMode::Passthrough,
            Template::Baseline => TlsMode::Terminate,
        })
    }

    /// The ingress after the defaults: the agent template's Caddy (`caddy`, 443, HTTP-01 on
    /// 80) in passthrough mode, the baseline template's plain `web` on 8080 in terminate mode.
    pub fn ingress(&self) -> Ingress {
        self.ingress
            .clone()
            .unwrap_or_else(|| match self.tls_mode() {
                TlsMode::Passthrough => Ingress {
                    service: "caddy".into(),
                    port: 443,
                    http_port: Some(80),
                },
                TlsMode::Terminate => Ingress {
                    service: "web".into(),
                    port: 8080,
                    http_port: None,
                },
            })
    }

    /// The idle policy after the defaults: frozen after 30 minutes idle, asleep after 2
    /// hours; a tenant with its own TLS (passthrough) is also woken every Monday at 04:00
    /// UTC, so its Caddy renews its certificate (a third of its life before expiry) even
    /// when nobody visits for weeks.
    pub fn idle(&self) -> crate::idle::Idle {
        self.idle.clone().unwrap_or_else(|| crate::idle::Idle {
            wake_at: match self.tls_mode() {
                TlsMode::Passthrough => vec![crate::idle::WEEKLY_RENEWAL_WAKE.to_owned()],
                TlsMode::Terminate => Vec::new(),
            },
            ..crate::idle::Idle::default()
        })
    }

    /// Checks every rule that serde's types cannot express.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.version != SPEC_VERSION {
            return Err(err(
                "version",
                format!(
                    "this hostd understands version {SPEC_VERSION}, got {}",
                    self.version
                ),
            ));
        }
        if self.subdomains.is_empty() {
            return Err(err("subdomains", "at least one subdomain is required"));
        }
        if let Some(i) = &self.ingress {
            if i.service.is_empty() || i.port == 0 || i.http_port == Some(0) {
                return Err(err(
                    "ingress",
                    "needs a service name and non-zero ports".to_owned(),
                ));
            }
        }
        for (i, s) in self.subdomains.iter().enumerate() {
            validate_hostname(s).map_err(|m| err(&format!("subdomains[{i}]"), m))?;
        }
        let l = &self.limits;
        if !(l.cpu.is_finite() && (0.05..=64.0).contains(&l.cpu)) {
            return Err(err(
                "limits.cpu",
                format!("must be between 0.05 and 64 cores, got {}", l.cpu),
            ));
        }
        if l.memory.0 < 64 * MIB {
            return Err(err(
                "limits.memory",
                format!("must be at least 64Mi, got {}", l.memory),
            ));
        }
        if !(16..=1_000_000).contains(&l.pids) {
            return Err(err(
                "limits.pids",
                format!("must be between 16 and 1000000, got {}", l.pids),
            ));
        }
        for (field, v) in [
            ("limits.io_read", l.io_read),
            ("limits.io_write", l.io_write),
            ("limits.egress", l.egress),
            ("limits.ingress", l.ingress),
        ] {
            if v.0 < MIB {
                return Err(err(
                    field,
                    format!(
                        "must be at least 1Mi (bytes per second; there is no unlimited), got {v}"
                    ),
                ));
            }
        }
        if let Some(idle) = &self.idle {
            idle.validate(l.cpu).map_err(|(f, m)| err(&f, m))?;
        }
        if l.disk.0 < GIB {
            return Err(err(
                "limits.disk",
                format!("must be at least 1Gi, got {}", l.disk),
            ));
        }
        match &self.volume {
            VolumeSource::Ebs(id) => {
                let hex = id.strip_prefix("vol-").unwrap_or("");
                if hex.len() < 8 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(err(
                        "volume.ebs",
                        format!("expected an EBS volume id like vol-0123456789abcdef0, got {id:?}"),
                    ));
                }
            }
            VolumeSource::LoopImage(p) => {
                if !p.starts_with('/') {
                    return Err(err(
                        "volume.loop_image",
                        format!("must be an absolute path, got {p:?}"),
                    ));
                }
            }
        }
        let arn = &self.role.arn;
        if !(arn.starts_with("arn:aws:iam::") && arn.contains(":role/")) {
            return Err(err(
                "role.arn",
                format!("expected arn:aws:iam::<account>:role/<name>, got {arn:?}"),
            ));
        }
        let ext = &self.role.external_id;
        if !(2..=1224).contains(&ext.len())
            || !ext
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+=,.@:/-_".contains(c))
        {
            return Err(err(
                "role.external_id",
                "must be 2-1224 characters of [A-Za-z0-9+=,.@:/_-] (STS rule)",
            ));
        }
        Ok(())
    }
}

fn validate_hostname(name: &str) -> Result<(), String> {
    if name.len() > 253 || !name.contains('.') {
        return Err(format!("{name:?} is not a fully qualified domain name"));
    }
    for label in name.split('.') {
        check_dns_label(label)
            .map_err(|why| format!("{name:?} has an invalid DNS label {label:?}: it {why}"))?;
    }
    Ok(())
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// A byte count written the way operators write it ("512Mi", "2G", "1073741824").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Value", into = "u64")]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses "512Mi", "1Gi", "1G", "100M", "4096" (binary suffixes are powers of 1024, decimal of 1000).
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("{text:?} is not a size like 512Mi or 2G"))?;
        let mult = match unit {
            "" => 1,
            "Ki" => KIB,
            "Mi" => MIB,
            "Gi" => GIB,
            "Ti" => 1024 * GIB,
            "K" | "k" => 1000,
            "M" => 1_000_000,
            "G" => 1_000_000_000,
            "T" => 1_000_000_000_000,
            _ => {
                return Err(format!(
                    "{text:?} has an unknown unit {unit:?} (use Ki, Mi, Gi, Ti, K, M, G, T)"
                ))
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("{text:?} is too large"))
    }
}

impl TryFrom<serde_json::Value> for ByteSize {
    type Error = String;
    fn try_from(v: serde_json::Value) -> Result<Self, Self::Error> {
        match v {
            serde_json::Value::Number(n) => n
                .as_u64()
                .map(ByteSize)
                .ok_or_else(|| format!("{n} is not a byte count")),
            serde_json::Value::String(s) => ByteSize::parse(&s),
            other => Err(format!("{other:?} is not a size like 512Mi or 2G")),
        }
    }
}

impl From<ByteSize> for u64 {
    fn from(b: ByteSize) -> u64 {
        b.0
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b >= GIB && b.is_multiple_of(GIB) {
            write!(f, "{}Gi", b / GIB)
        } else if b >= MIB && b.is_multiple_of(MIB) {
            write!(f, "{}Mi", b / MIB)
        } else {
            write!(f, "{b}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
version: 1
name: acme
template: agent
subdomains: [acme.m8trx.ai]
limits: { cpu: 0.5, memory: 512Mi, pids: 256, disk: 10Gi }
volume: { loop_image: /var/lib/m8trx/images/acme.img }
role: { arn: "arn:aws:iam::123456789012:role/m8trx-customer-acme", external_id: ext-acme-1 }
"#;

    #[test]
    fn parses_a_good_spec_and_applies_template_defaults() {
        let s = TenantSpec::parse(GOOD).unwrap();
        assert_eq!(s.name.as_str(), "acme");
        assert_eq!(s.limits.memory, ByteSize(512 * MIB));
        assert_eq!(s.tls_mode(), TlsMode::Passthrough);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(TenantSpec::parse(&json).unwrap(), s, "JSON round trip");
    }

    fn field_of(text: &str) -> String {
        TenantSpec::parse(text).unwrap_err().field
    }

    #[test]
    fn every_refusal_names_the_field() {
        assert_eq!(
            field_of(&GOOD.replace("version: 1", "version: 2")),
            "version"
        );
        assert_eq!(
            field_of(&GOOD.replace("[acme.m8trx.ai]", "[]")),
            "subdomains"
        );
        assert_eq!(
            field_of(&GOOD.replace("[acme.m8trx.ai]", "[Acme.m8trx.ai]")),
            "subdomains[0]"
        );
        assert_eq!(
            field_of(&GOOD.replace("cpu: 0.5", "cpu: 100")),
            "limits.cpu"
        );
        assert_eq!(
            field_of(&GOOD.replace("memory: 512Mi", "memory: 1Mi")),
            "limits.memory"
        );
        assert_eq!(
            field_of(&GOOD.replace("pids: 256", "pids: 1")),
            "limits.pids"
        );
        assert_eq!(
            field_of(&GOOD.replace("disk: 10Gi", "disk: 10Mi")),
            "limits.disk"
        );
        assert_eq!(
            field_of(&GOOD.replace(
                "{ loop_image: /var/lib/m8trx/images/acme.img }",
                "{ ebs: vol-xyz }"
            )),
            "volume.ebs"
        );
        assert_eq!(
            field_of(&GOOD.replace("arn:aws:iam::123456789012:role/", "arn:aws:s3:::")),
            "role.arn"
        );
        assert_eq!(
            field_of(&GOOD.replace("ext-acme-1", "\"bad id!\"")),
            "role.external_id"
        );
    }

    #[test]
    fn idle_defaults_wake_a_tenant_with_its_own_tls_weekly() {
        let s = TenantSpec::parse(GOOD).unwrap();
        assert_eq!(s.idle().freeze_after, crate::idle::DEFAULT_FREEZE_AFTER);
        assert_eq!(s.idle().wake_at, [crate::idle::WEEKLY_RENEWAL_WAKE]);
        let b = TenantSpec::parse(&GOOD.replace("template: agent", "template: baseline")).unwrap();
        assert!(
            b.idle().wake_at.is_empty(),
            "the proxy renews a terminated tenant's certificate"
        );
        let own = TenantSpec::parse(&format!(
            "{GOOD}idle: {{ freeze_after: 0, sleep_after: 1h }}\n"
        ))
        .unwrap();
        assert_eq!(own.idle().freeze_after.0, 0);
        assert!(
            own.idle().wake_at.is_empty(),
            "a spec's own policy is taken as written"
        );
        assert_eq!(
            field_of(&format!(
                "{GOOD}idle: {{ sleep_after: 1m, freeze_after: 1h }}\n"
            )),
            "idle.sleep_after"
        );
    }

    #[test]
    fn unknown_fields_and_bad_names_are_refused() {
        let e = TenantSpec::parse(&format!("{GOOD}privileged: true\n")).unwrap_err();
        assert!(e.message.contains("privileged"), "{e}");
        let e = TenantSpec::parse(&GOOD.replace("name: acme", "name: Acme")).unwrap_err();
        assert!(e.message.contains("lowercase letter"), "{e}");
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(ByteSize::parse("1Gi").unwrap(), ByteSize(GIB));
        assert_eq!(ByteSize::parse("2G").unwrap(), ByteSize(2_000_000_000));
        assert_eq!(ByteSize::parse("4096").unwrap(), ByteSize(4096));
        assert!(ByteSize::parse("12Qi")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(ByteSize::parse("lots").is_err());
        assert!(ByteSize::parse("99999999999999Ti")
            .unwrap_err()
            .contains("too large"));
        assert_eq!(ByteSize(512 * MIB).to_string(), "512Mi");
    }
}
