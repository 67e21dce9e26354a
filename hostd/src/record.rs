//! The persisted record of one tenant: what it was created from, where it is going, which
//! steps are known done and what was last deployed. Configuration (the spec, the deployed
//! compose file) and runtime progress (`done`, `stopped_containers`) live side by side in
//! one file so that one atomic write moves the tenant from one consistent state to the next.

use serde::{Deserialize, Serialize};

use crate::spec::TenantSpec;
use crate::steps::StepKind;

/// Where the tenant is going; reconciliation continues in this direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Desired {
    /// Provisioned and running.
    #[default]
    Present,
    /// Provisioned, containers and engine stopped; everything kept (`hostd ctl stop`).
    Stopped,
    /// Torn down; the record is deleted once nothing is left.
    Absent,
}

/// Whether an idle tenant's processes run (see `crate::power`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Power {
    /// Running and routed.
    #[default]
    Active,
    /// Its whole cgroup frozen: processes and memory kept, nothing scheduled.
    Frozen,
    /// Containers and engine stopped (memory released); volume, secrets and state kept.
    Asleep,
}

/// The compose file last accepted for the tenant: what reconcile redeploys after a reboot.
/// The bundle itself (compose file, variables, files) is on the tenant's encrypted volume;
/// the record on the host disk names it by digest and holds none of its contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// Counts accepted deploys from 1; shown by `hostd ctl status`.
    pub revision: u64,
    /// The bundle's directory on the tenant volume (`<volume>/bundle/<digest>/`), written
    /// before the revision is recorded; checked again by the policy before every redeploy.
    #[serde(default)]
    pub bundle: Option<String>,
    /// The files sent with it, by path, as sha256 digests (which paths to read back).
    #[serde(default)]
    pub files: std::collections::BTreeMap<String, String>,
    /// Records written before bundles moved onto the tenant volume kept the compose file
    /// here; the next deploy of such a revision writes it to the volume and clears this.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub compose: String,
    /// The variables such a record kept beside it; cleared with `compose`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub env: std::collections::BTreeMap<String, String>,
    /// When it was accepted (seconds since the epoch).
    pub accepted_at: u64,
    /// When a deploy of this revision last completed.
    #[serde(default)]
    pub deployed_at: Option<u64>,
    /// Why the last attempt to deploy this revision failed; cleared when one succeeds.
    #[serde(default)]
    pub error: Option<String>,
}

/// The persisted record of one tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The spec it was created from.
    pub spec: TenantSpec,
    /// Its slot (subid range, subnet, chain names).
    pub slot: u16,
    /// Where it is going.
    pub desired: Desired,
    /// Steps known to be complete.
    pub done: Vec<StepKind>,
    /// Remove the engine's data on destroy.
    #[serde(default)]
    pub wipe: bool,
    /// All networking cut, everything kept for forensics (`hostd ctl quarantine`).
    #[serde(default)]
    pub quarantined: bool,
    /// Containers that were running when the tenant was stopped; `start` starts them again.
    #[serde(default)]
    pub stopped_containers: Vec<String>,
    /// The compose file last accepted, if any.
    #[serde(default)]
    pub deployment: Option<Deployment>,
    /// Running, frozen or asleep (meaningful while it serves).
    #[serde(default)]
    pub power: Power,
    /// Since when (seconds since the epoch) it has been in that power state.
    #[serde(default)]
    pub power_since: u64,
    /// Whether every step of the last power change is done (`false` while freezing, going
    /// to sleep or waking: `power` is where it is going, and reconcile finishes the way).
    #[serde(default = "settled")]
    pub power_settled: bool,
    /// Why the last wake failed (the tenant was put back to sleep); cleared by a wake that works.
    #[serde(default)]
    pub wake_error: Option<String>,
    /// The ingress container's address when routes last pointed at it: a sleeping tenant's
    /// routes keep it (sni-proxy holds their connections, it connects nowhere).
    #[serde(default)]
    pub ingress_ip: Option<String>,
}

impl Record {
    /// A new record of `spec` in `slot`, going to present, nothing done yet.
    pub fn new(spec: TenantSpec, slot: u16) -> Self {
        Self {
            spec,
            slot,
            desired: Desired::Present,
            done: Vec::new(),
            wipe: false,
            quarantined: false,
            stopped_containers: Vec::new(),
            deployment: None,
            power: Power::Active,
            power_since: now_secs(),
            power_settled: true,
            wake_error: None,
            ingress_ip: None,
        }
    }

    /// The tenant's name, as the store keys it.
    pub fn name(&self) -> &str {
        self.spec.name.as_str()
    }

    /// Whether it is provisioned to serve: present and not quarantined (awake or not).
    pub fn serving(&self) -> bool {
        self.desired == Desired::Present && !self.quarantined
    }

    /// Whether its containers should be running and routed now: serving and awake.
    pub fn awake(&self) -> bool {
        self.serving() && self.power == Power::Active
    }

    /// Whether its engine should be running: present and not asleep (a frozen engine runs).
    pub fn engine_wanted(&self) -> bool {
        self.desired == Desired::Present && self.power != Power::Asleep
    }
}

fn settled() -> bool {
    true
}

/// Seconds since the epoch, for the times records keep.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_written_before_deployments_existed_still_reads() {
        let old = r#"{"spec":{"version":1,"name":"acme","template":"baseline",
            "subdomains":["acme.example.com"],
            "limits":{"cpu":0.5,"memory":"256Mi","pids":256,"disk":"1Gi"},
            "volume":{"loop_image":"/tmp/acme.img"},
            "role":{"arn":"arn:aws:iam::123456789012:role/r","external_id":"x"}},
            "slot":3,"desired":"present","done":["user","id_ranges","engine"]}"#;
        let r: Record = serde_json::from_str(old).unwrap();
        assert_eq!(r.deployment, None);
        assert_eq!(
            r.done,
            vec![StepKind::User, StepKind::IdRanges, StepKind::Engine]
        );
        assert!(r.serving());
    }
}
