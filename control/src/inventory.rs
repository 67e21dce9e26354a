//! Shared-host inventory and reservation ledger, both kept as EC2 tags on the host instances:
//! a host is a running instance tagged `m8trx:role=shared-host`, `m8trx:fleet=<fleet>` and
//! capacity tags (terraform `modules/shared-host`), and each tenant placed on it is one
//! `m8trx:tenant:<name>` tag on it. Placement is best-fit on memory (densest packing), under a
//! per-host lock, verified after writing, so concurrent placements never over-commit.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_ec2::types::Instance;
use serde::Serialize;

use crate::error::{ControlError, Result};
use crate::progress::Progress;
use crate::tags;

/// What a host offers to tenants in total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Capacity {
    /// Memory tenants may reserve, MiB.
    pub memory_mib: u64,
    /// CPU tenants may reserve, thousandths of a vCPU.
    pub cpu_millis: u64,
    /// Maximum number of tenants.
    pub slots: u64,
}

/// One tenant's entry in a host's ledger (value of its `m8trx:tenant:<name>` tag).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reservation {
    /// Customer name.
    pub tenant: String,
    /// Reserved memory, MiB.
    pub memory_mib: u64,
    /// Reserved CPU, thousandths of a vCPU.
    pub cpu_millis: u64,
    /// Deploy progress on this host: `reserved`, `attached`, `running`, `deleting`.
    pub state: String,
    /// The tenant's EBS volume once created.
    pub volume_id: Option<String>,
    /// While `state` is `moving-in`: the host the tenant is moving from.
    pub from: Option<String>,
}

impl Reservation {
    /// Serialises to the tag value: `memory-mib=1024,cpu-millis=500,state=reserved[,volume=vol-…]`.
    pub fn to_tag_value(&self) -> String {
        let mut v = format!(
            "memory-mib={},cpu-millis={},state={}",
            self.memory_mib, self.cpu_millis, self.state
        );
        if let Some(vol) = &self.volume_id {
            v.push_str(&format!(",volume={vol}"));
        }
        if let Some(from) = &self.from {
            v.push_str(&format!(",from={from}"));
        }
        v
    }

    /// Parses a tag value written by [`Reservation::to_tag_value`].
    pub fn parse(tenant: &str, value: &str) -> Option<Self> {
        let fields: BTreeMap<&str, &str> = value
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .collect();
        Some(Self {
            tenant: tenant.to_owned(),
            memory_mib: fields.get("memory-mib")?.parse().ok()?,
            cpu_millis: fields.get("cpu-millis")?.parse().ok()?,
            state: fields.get("state").unwrap_or(&"reserved").to_string(),
            volume_id: fields.get("volume").map(|v| (*v).to_owned()),
            from: fields.get("from").map(|v| (*v).to_owned()),
        })
    }
}

/// A shared host as the inventory sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Host {
    /// EC2 instance id.
    pub instance_id: String,
    /// Availability zone: tenant volumes must be created here.
    pub availability_zone: String,
    /// Declared capacity.
    pub capacity: Capacity,
    /// Current ledger, one entry per tenant.
    pub reservations: Vec<Reservation>,
    /// Device names already in use on the instance.
    pub devices: Vec<String>,
    /// Being drained (`control drain`): no new placement, its tenants move away.
    pub draining: bool,
}

/// What a tenant needs from a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Need {
    /// Memory to reserve, MiB.
    pub memory_mib: u64,
    /// CPU to reserve, thousandths of a vCPU.
    pub cpu_millis: u64,
}

/// Unreserved resources of a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Free {
    /// Unreserved memory, MiB (negative when over-committed).
    pub memory_mib: i64,
    /// Unreserved CPU, thousandths of a vCPU.
    pub cpu_millis: i64,
    /// Unused tenant slots.
    pub slots: i64,
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Host {
    /// Capacity minus every reservation.
    pub fn free(&self) -> Free {
        let mem: u64 = self.reservations.iter().map(|r| r.memory_mib).sum();
        let cpu: u64 = self.reservations.iter().map(|r| r.cpu_millis).sum();
        Free {
            memory_mib: to_i64(self.capacity.memory_mib) - to_i64(mem),
            cpu_millis: to_i64(self.capacity.cpu_millis) - to_i64(cpu),
            slots: to_i64(self.capacity.slots) - to_i64(self.reservations.len() as u64),
        }
    }

    /// Whether `need` fits in what is unreserved.
    pub fn fits(&self, need: Need) -> bool {
        let f = self.free();
        f.memory_mib >= to_i64(need.memory_mib)
            && f.cpu_millis >= to_i64(need.cpu_millis)
            && f.slots >= 1
    }

    /// The reservation of `tenant` on this host, if any.
    pub fn reservation(&self, tenant: &str) -> Option<&Reservation> {
        self.reservations.iter().find(|r| r.tenant == tenant)
    }

    /// First of `/dev/sdf`…`/dev/sdp` not in use (AWS's recommended range for EBS data volumes).
    pub fn free_device(&self) -> Option<String> {
        ('f'..='p').map(|c| format!("/dev/sd{c}")).find(|d| {
            !self
                .devices
                .iter()
                .any(|used| used == d || used.replace("/dev/xvd", "/dev/sd") == *d)
        })
    }
}

/// Reads a host from its instance description; `None` (with the reason) when its tags are incomplete.
pub fn host_from_instance(i: &Instance) -> std::result::Result<Host, String> {
    let id = i.instance_id().unwrap_or_default().to_owned();
    let t = i.tags();
    let num = |key: &str| -> std::result::Result<u64, String> {
        tags::get(t, key)
            .ok_or_else(|| format!("{id} has no {key} tag"))?
            .parse()
            .map_err(|_| format!("{id} has a non-numeric {key} tag"))
    };
    let capacity = Capacity {
        memory_mib: num(tags::CAPACITY_MEMORY)?,
        cpu_millis: num(tags::CAPACITY_CPU)?,
        slots: num(tags::CAPACITY_SLOTS)?,
    };
    let reservations = t
        .iter()
        .filter_map(|tag| {
            let tenant = tag.key()?.strip_prefix(tags::TENANT_PREFIX)?;
            Reservation::parse(tenant, tag.value().unwrap_or_default())
        })
        .collect();
    let devices = i
        .block_device_mappings()
        .iter()
        .filter_map(|b| b.device_name().map(str::to_owned))
        .collect();
    Ok(Host {
        instance_id: id,
        availability_zone: i
            .placement()
            .and_then(|p| p.availability_zone())
            .unwrap_or_default()
            .to_owned(),
        capacity,
        reservations,
        devices,
        draining: tags::get(t, tags::DRAINING) == Some("true"),
    })
}

/// Best fit: among hosts (in `zone` when given) where `need` fits, the one left with the least
/// free memory, so hosts fill up before a new one is used; ties broken by instance id.
pub fn choose<'a>(hosts: &'a [Host], need: Need, zone: Option<&str>) -> Option<&'a Host> {
    hosts
        .iter()
        .filter(|h| zone.is_none() || zone == Some(h.availability_zone.as_str()))
        .filter(|h| !h.draining && h.fits(need))
        .min_by_key(|h| (h.free().memory_mib, h.instance_id.clone()))
}

/// The operator-facing reason nothing fits, listing every host's free resources.
pub fn no_room_message(
    fleet: &str,
    tenant: &str,
    hosts: &[Host],
    need: Need,
    zone: Option<&str>,
) -> String {
    let mut msg = format!(
        "no shared host in fleet {fleet:?} has room for {tenant} (needs {} MiB memory, {} mCPU, 1 tenant slot{}): ",
        need.memory_mib,
        need.cpu_millis,
        zone.map(|z| format!(", in {z} where its volume is")).unwrap_or_default()
    );
    if hosts.is_empty() {
        msg.push_str("the fleet has no running host");
    } else {
        let parts: Vec<String> = hosts
            .iter()
            .map(|h| {
                let f = h.free();
                format!(
                    "{} ({}) {} MiB, {} mCPU, {} slot(s) free{}",
                    h.instance_id,
                    h.availability_zone,
                    f.memory_mib,
                    f.cpu_millis,
                    f.slots,
                    if h.draining { ", draining" } else { "" }
                )
            })
            .collect();
        msg.push_str(&parts.join("; "));
    }
    msg.push_str(". Nothing was created: add a shared host to the fleet or deploy with hosting \"dedicated\".");
    msg
}

async fn describe(
    ec2: &aws_sdk_ec2::Client,
    filters: Vec<aws_sdk_ec2::types::Filter>,
) -> Result<Vec<Instance>> {
    let mut out = Vec::new();
    let mut token = None;
    loop {
        let page = ec2
            .describe_instances()
            .set_filters(Some(filters.clone()))
            .set_next_token(token)
            .send()
            .await
            .map_err(|e| ControlError::aws("DescribeInstances (shared hosts)", e))?;
        for r in page.reservations() {
            out.extend(r.instances().iter().cloned());
        }
        token = page.next_token().map(str::to_owned);
        if token.is_none() {
            return Ok(out);
        }
    }
}

/// Every running host of `fleet`; hosts with incomplete capacity tags are reported and skipped.
pub async fn list_hosts(
    ec2: &aws_sdk_ec2::Client,
    fleet: &str,
    progress: &Progress,
) -> Result<Vec<Host>> {
    let instances = describe(
        ec2,
        vec![
            tags::filter(tags::COMPONENT, tags::ROLE_SHARED_HOST),
            tags::filter(tags::FLEET, fleet),
            tags::attr("instance-state-name", &["running"]),
        ],
    )
    .await?;
    let mut hosts = Vec::new();
    for i in &instances {
        match host_from_instance(i) {
            Ok(h) => hosts.push(h),
            Err(why) => progress.line(format!("placement: skipping shared host: {why}")),
        }
    }
    hosts.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    Ok(hosts)
}

/// Re-reads one host (after a reservation write).
pub async fn get_host(ec2: &aws_sdk_ec2::Client, instance_id: &str) -> Result<Host> {
    let instances = describe(ec2, vec![tags::attr("instance-id", &[instance_id])]).await?;
    let i = instances.first().ok_or_else(|| {
        ControlError::Missing(format!("shared host {instance_id} no longer exists"))
    })?;
    host_from_instance(i).map_err(ControlError::Missing)
}

/// State of a move's reservation on its target host until the tenant runs there.
pub const MOVING_IN: &str = "moving-in";

/// Every host of `fleet` (any state but terminated) with a reservation for `tenant`.
pub async fn reservations_of(
    ec2: &aws_sdk_ec2::Client,
    fleet: &str,
    tenant: &str,
) -> Result<Vec<(Host, Reservation)>> {
    let instances = describe(
        ec2,
        vec![
            tags::filter(tags::COMPONENT, tags::ROLE_SHARED_HOST),
            tags::filter(tags::FLEET, fleet),
            tags::attr("tag-key", &[&format!("{}{tenant}", tags::TENANT_PREFIX)]),
            tags::attr(
                "instance-state-name",
                &["pending", "running", "stopping", "stopped"],
            ),
        ],
    )
    .await?;
    Ok(instances
        .iter()
        .filter_map(|i| host_from_instance(i).ok())
        .filter_map(|h| {
            let r = h.reservation(tenant)?.clone();
            Some((h, r))
        })
        .collect())
}

/// The host of `fleet` (any state but terminated) that holds a reservation for `tenant`.
pub async fn find_reservation(
    ec2: &aws_sdk_ec2::Client,
    fleet: &str,
    tenant: &str,
) -> Result<Option<(Host, Reservation)>> {
    let mut entries = reservations_of(ec2, fleet, tenant).await?;
    // A move holds a reservation on its target too (`moving-in`): the tenant's home is the
    // other one until the move completes.
    let moving_in = |(_, r): &(Host, Reservation)| r.state == MOVING_IN;
    if entries.len() == 2 && entries.iter().filter(|e| moving_in(e)).count() == 1 {
        entries.retain(|e| !moving_in(e));
    }
    if entries.len() > 1 {
        let ids: Vec<_> = entries
            .iter()
            .map(|(h, _)| h.instance_id.as_str())
            .collect();
        return Err(ControlError::Conflict(format!(
            "{tenant} holds reservations on several shared hosts ({}): remove the stale \
             m8trx:tenant:{tenant} tags by hand",
            ids.join(", ")
        )));
    }
    Ok(entries.into_iter().next())
}

/// Writes (or rewrites) `tenant`'s ledger entry on a host.
pub async fn write_reservation(
    ec2: &aws_sdk_ec2::Client,
    instance_id: &str,
    r: &Reservation,
) -> Result<()> {
    ec2.create_tags()
        .resources(instance_id)
        .tags(tags::tag(
            &format!("{}{}", tags::TENANT_PREFIX, r.tenant),
            &r.to_tag_value(),
        ))
        .send()
        .await
        .map_err(|e| {
            ControlError::aws(
                format!("CreateTags (reservation of {} on {instance_id})", r.tenant),
                e,
            )
        })?;
    Ok(())
}

/// Removes `tenant`'s ledger entry from a host.
pub async fn release(ec2: &aws_sdk_ec2::Client, instance_id: &str, tenant: &str) -> Result<()> {
    ec2.delete_tags()
        .resources(instance_id)
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key(format!("{}{tenant}", tags::TENANT_PREFIX))
                .build(),
        )
        .send()
        .await
        .map_err(|e| {
            ControlError::aws(
                format!("DeleteTags (reservation of {tenant} on {instance_id})"),
                e,
            )
        })?;
    Ok(())
}

/// SSM parameter that serialises placements on one host: created with `Overwrite=false`,
/// which SSM performs atomically, and deleted when the placement is written. It lives under
/// `/m8trx/` (where control's terraform role may write) in `_control`, which no customer name
/// can be (names start with a letter).
pub fn lock_parameter(instance_id: &str) -> String {
    format!("/m8trx/_control/placement-lock/{instance_id}")
}

/// A lock older than this is left over from a crashed placement and is broken.
pub const LOCK_STALE: Duration = Duration::from_secs(60);
/// How long a placement waits for another placement's lock before giving up.
pub const LOCK_WAIT: Duration = Duration::from_secs(30);

async fn acquire_lock(ssm: &aws_sdk_ssm::Client, instance_id: &str, tenant: &str) -> Result<()> {
    let name = lock_parameter(instance_id);
    let started = Instant::now();
    let mut delay_ms = 50u64;
    loop {
        let put = ssm
            .put_parameter()
            .name(&name)
            .value(tenant)
            .r#type(aws_sdk_ssm::types::ParameterType::String)
            .overwrite(false)
            .send()
            .await;
        match put {
            Ok(_) => return Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_parameter_already_exists()) => {}
            Err(e) => {
                return Err(ControlError::aws(
                    format!("PutParameter {name} (placement lock)"),
                    e,
                ))
            }
        }
        // Held by someone else: break it if it is stale, otherwise wait. Held for this same
        // tenant: an earlier run of this operation stopped while holding it (a crash, kill -9);
        // control runs one job per customer, so it is ours to take over.
        if let Ok(got) = ssm.get_parameter().name(&name).send().await {
            if got.parameter().and_then(|p| p.value()) == Some(tenant) {
                ssm.put_parameter()
                    .name(&name)
                    .value(tenant)
                    .r#type(aws_sdk_ssm::types::ParameterType::String)
                    .overwrite(true)
                    .send()
                    .await
                    .map_err(|e| {
                        ControlError::aws(format!("PutParameter {name} (placement lock)"), e)
                    })?;
                return Ok(());
            }
            let modified = got
                .parameter()
                .and_then(|p| p.last_modified_date())
                .map(|d| d.secs());
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let age = modified.map(|m| now.saturating_sub(u64::try_from(m).unwrap_or(0)));
            if age.is_some_and(|a| a > LOCK_STALE.as_secs()) {
                let _ = ssm.delete_parameter().name(&name).send().await;
                continue;
            }
        }
        if started.elapsed() > LOCK_WAIT {
            return Err(ControlError::Conflict(format!(
                "placement lock {name} on shared host {instance_id} is held by another placement \
                 for over {} s; try again (a lock older than {} s is broken automatically)",
                LOCK_WAIT.as_secs(),
                LOCK_STALE.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        delay_ms = (delay_ms * 2).min(500);
    }
}

async fn release_lock(ssm: &aws_sdk_ssm::Client, instance_id: &str, progress: &Progress) {
    let name = lock_parameter(instance_id);
    if let Err(e) = ssm.delete_parameter().name(&name).send().await {
        progress.line(format!(
            "placement: could not remove lock {name} ({}); it expires after {} s",
            aws_sdk_ssm::error::DisplayErrorContext(&e),
            LOCK_STALE.as_secs()
        ));
    }
}

/// Picks a host and reserves room on it. Placements on one host are serialised by an SSM
/// parameter created atomically (see [`lock_parameter`]); under the lock control re-reads the
/// host, writes its ledger tag only if the tenant still fits, and verifies afterwards, so the
/// ledger never stays over capacity even if a stale lock was broken.
pub async fn place(
    ec2: &aws_sdk_ec2::Client,
    ssm: &aws_sdk_ssm::Client,
    fleet: &str,
    tenant: &str,
    need: Need,
    zone: Option<&str>,
    progress: &Progress,
) -> Result<(Host, Reservation)> {
    let fresh = Reservation {
        tenant: tenant.to_owned(),
        memory_mib: need.memory_mib,
        cpu_millis: need.cpu_millis,
        state: "reserved".to_owned(),
        volume_id: None,
        from: None,
    };
    place_as(ec2, ssm, fleet, &fresh, zone, &[], progress).await
}

/// Like [`place`], writing `entry` as the reservation, never on a host in `exclude` (a
/// move's source).
pub async fn place_as(
    ec2: &aws_sdk_ec2::Client,
    ssm: &aws_sdk_ssm::Client,
    fleet: &str,
    entry: &Reservation,
    zone: Option<&str>,
    exclude: &[String],
    progress: &Progress,
) -> Result<(Host, Reservation)> {
    let (tenant, need) = (
        entry.tenant.as_str(),
        Need {
            memory_mib: entry.memory_mib,
            cpu_millis: entry.cpu_millis,
        },
    );
    let mut tried: Vec<String> = exclude.to_vec();
    let mut collisions = 0u32;
    loop {
        let hosts = list_hosts(ec2, fleet, progress).await?;
        let candidates: Vec<Host> = hosts
            .iter()
            .filter(|h| !tried.contains(&h.instance_id))
            .cloned()
            .collect();
        let Some(host) = choose(&candidates, need, zone) else {
            return Err(ControlError::NoCapacity(no_room_message(
                fleet, tenant, &hosts, need, zone,
            )));
        };
        let id = host.instance_id.clone();
        acquire_lock(ssm, &id, tenant).await?;
        let placed = reserve_locked(ec2, &id, entry).await;
        release_lock(ssm, &id, progress).await;
        match placed? {
            Some((after, r)) => {
                let f = after.free();
                progress.line(format!(
                    "placement: reserved {} MiB, {} mCPU on shared host {} ({}); {} MiB, {} slot(s) left",
                    need.memory_mib, need.cpu_millis, after.instance_id, after.availability_zone, f.memory_mib, f.slots
                ));
                return Ok((after, r));
            }
            None if collisions < 3 => {
                // Full under the lock (another placement got there first), or over-committed
                // because a lock was broken: look again, this host last.
                collisions += 1;
                tried.push(id);
            }
            None => tried.push(id),
        }
    }
}

async fn reserve_locked(
    ec2: &aws_sdk_ec2::Client,
    instance_id: &str,
    entry: &Reservation,
) -> Result<Option<(Host, Reservation)>> {
    let tenant = entry.tenant.as_str();
    let need = Need {
        memory_mib: entry.memory_mib,
        cpu_millis: entry.cpu_millis,
    };
    let current = get_host(ec2, instance_id).await?;
    if current.reservation(tenant).is_none() && (current.draining || !current.fits(need)) {
        return Ok(None);
    }
    let r = entry.clone();
    write_reservation(ec2, instance_id, &r).await?;
    let after = get_host(ec2, instance_id).await?;
    let f = after.free();
    if f.memory_mib >= 0 && f.cpu_millis >= 0 && f.slots >= 0 {
        return Ok(Some((after, r)));
    }
    release(ec2, instance_id, tenant).await?;
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: &str, az: &str, mem: u64, slots: u64, used: &[(&str, u64)]) -> Host {
        Host {
            instance_id: id.into(),
            availability_zone: az.into(),
            capacity: Capacity {
                memory_mib: mem,
                cpu_millis: 2000,
                slots,
            },
            reservations: used
                .iter()
                .map(|(t, m)| Reservation {
                    tenant: (*t).into(),
                    memory_mib: *m,
                    cpu_millis: 500,
                    state: "running".into(),
                    volume_id: None,
                    from: None,
                })
                .collect(),
            devices: vec!["/dev/sda1".into()],
            draining: false,
        }
    }

    const NEED: Need = Need {
        memory_mib: 1024,
        cpu_millis: 500,
    };

    #[test]
    fn reservation_tag_round_trips() {
        let r = Reservation {
            tenant: "acme".into(),
            memory_mib: 1024,
            cpu_millis: 500,
            state: "attached".into(),
            volume_id: Some("vol-1".into()),
            from: None,
        };
        assert_eq!(
            r.to_tag_value(),
            "memory-mib=1024,cpu-millis=500,state=attached,volume=vol-1"
        );
        assert_eq!(
            Reservation::parse("acme", &r.to_tag_value()),
            Some(r.clone())
        );
        let moving = Reservation {
            state: MOVING_IN.into(),
            from: Some("i-0abc".into()),
            ..r
        };
        assert_eq!(
            moving.to_tag_value(),
            "memory-mib=1024,cpu-millis=500,state=moving-in,volume=vol-1,from=i-0abc"
        );
        assert_eq!(
            Reservation::parse("acme", &moving.to_tag_value()),
            Some(moving)
        );
        assert_eq!(Reservation::parse("acme", "garbage"), None);
    }

    #[test]
    fn best_fit_fills_the_fullest_host_that_fits() {
        let hosts = [
            host("i-a", "az1", 8192, 10, &[]),
            host("i-b", "az1", 8192, 10, &[("x", 6144)]),
            host("i-c", "az1", 8192, 10, &[("y", 7680)]),
        ];
        assert_eq!(
            choose(&hosts, NEED, None).map(|h| h.instance_id.as_str()),
            Some("i-b")
        );
    }

    #[test]
    fn memory_cpu_slots_and_zone_all_limit() {
        let full_slots = host("i-s", "az1", 8192, 1, &[("x", 10)]);
        assert!(!full_slots.fits(NEED));
        let mut cpu = host("i-c", "az1", 8192, 10, &[]);
        cpu.capacity.cpu_millis = 400;
        assert!(!cpu.fits(NEED));
        let mem = host("i-m", "az1", 1023, 10, &[]);
        assert!(!mem.fits(NEED));
        let exact = host("i-e", "az2", 2048, 2, &[("x", 1024)]);
        assert!(exact.fits(NEED));
        let hosts = [exact.clone()];
        assert!(choose(&hosts, NEED, Some("az1")).is_none());
        assert!(choose(&hosts, NEED, Some("az2")).is_some());
        let msg = no_room_message("p", "acme", &[full_slots, mem], NEED, None);
        assert!(
            msg.contains("i-s") && msg.contains("i-m") && msg.contains("Nothing was created"),
            "{msg}"
        );
    }

    #[test]
    fn free_device_skips_used_names() {
        let mut h = host("i-a", "az1", 1, 1, &[]);
        assert_eq!(h.free_device().as_deref(), Some("/dev/sdf"));
        h.devices.push("/dev/xvdf".into());
        h.devices.push("/dev/sdg".into());
        assert_eq!(h.free_device().as_deref(), Some("/dev/sdh"));
    }
}
