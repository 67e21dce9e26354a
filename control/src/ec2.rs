//! EC2 look-ups and waits control repeats across flows: the customer's instances and volumes
//! by tag, and polling until a volume or instance reaches a state.

use std::time::Instant;

use aws_sdk_ec2::types::{Instance, InstanceStateName, Volume, VolumeState};
use m8trx_spec::CustomerName;

use crate::config::ControlConfig;
use crate::error::{ControlError, Result};
use crate::tags;

/// States of an instance that still exists (anything but shutting-down/terminated).
pub const LIVE_INSTANCE_STATES: [&str; 4] = ["pending", "running", "stopping", "stopped"];

/// The customer's dedicated instances that are not terminated.
pub async fn customer_instances(
    ec2: &aws_sdk_ec2::Client,
    name: &CustomerName,
    states: &[&str],
) -> Result<Vec<Instance>> {
    let mut filters = tags::customer_filters(name, tags::COMPONENT_DEDICATED);
    filters.push(tags::attr("instance-state-name", states));
    let out = ec2
        .describe_instances()
        .set_filters(Some(filters))
        .send()
        .await
        .map_err(|e| ControlError::aws(format!("DescribeInstances for {name}"), e))?;
    Ok(out
        .reservations()
        .iter()
        .flat_map(|r| r.instances().iter().cloned())
        .collect())
}

/// The customer's tenant volumes that are not being deleted.
pub async fn customer_volumes(
    ec2: &aws_sdk_ec2::Client,
    name: &CustomerName,
) -> Result<Vec<Volume>> {
    let mut filters = tags::customer_filters(name, tags::COMPONENT_TENANT_VOLUME);
    filters.push(tags::attr(
        "status",
        &["creating", "available", "in-use", "error"],
    ));
    let out = ec2
        .describe_volumes()
        .set_filters(Some(filters))
        .send()
        .await
        .map_err(|e| ControlError::aws(format!("DescribeVolumes for {name}"), e))?;
    Ok(out.volumes().to_vec())
}

/// Every volume carrying `Customer=<name>` (any component), for status and leak checks.
pub async fn all_customer_volumes(
    ec2: &aws_sdk_ec2::Client,
    name: &CustomerName,
) -> Result<Vec<Volume>> {
    let out = ec2
        .describe_volumes()
        .filters(tags::filter(tags::CUSTOMER, name.as_str()))
        .send()
        .await
        .map_err(|e| ControlError::aws(format!("DescribeVolumes for {name}"), e))?;
    Ok(out
        .volumes()
        .iter()
        .filter(|v| {
            !matches!(
                v.state(),
                Some(VolumeState::Deleted) | Some(VolumeState::Deleting)
            )
        })
        .cloned()
        .collect())
}

/// Describes one instance; `None` when EC2 no longer lists it.
pub async fn instance(ec2: &aws_sdk_ec2::Client, instance_id: &str) -> Result<Option<Instance>> {
    let out = ec2
        .describe_instances()
        .instance_ids(instance_id)
        .send()
        .await
        .map_err(|e| ControlError::aws(format!("DescribeInstances {instance_id}"), e))?;
    Ok(out
        .reservations()
        .iter()
        .flat_map(|r| r.instances().iter())
        .next()
        .cloned())
}

/// An instance's public IPv4 address, if it has one.
pub async fn public_ip(ec2: &aws_sdk_ec2::Client, instance_id: &str) -> Result<Option<String>> {
    Ok(instance(ec2, instance_id)
        .await?
        .and_then(|i| i.public_ip_address().map(str::to_owned)))
}

/// Describes one volume; `None` once it no longer exists.
pub async fn volume(ec2: &aws_sdk_ec2::Client, volume_id: &str) -> Result<Option<Volume>> {
    match ec2.describe_volumes().volume_ids(volume_id).send().await {
        Ok(out) => Ok(out.volumes().first().cloned()),
        Err(e) => {
            let code = e.as_service_error().and_then(|s| {
                use aws_sdk_ec2::error::ProvideErrorMetadata;
                s.code().map(str::to_owned)
            });
            if code.as_deref() == Some("InvalidVolume.NotFound") {
                Ok(None)
            } else {
                Err(ControlError::aws(format!("DescribeVolumes {volume_id}"), e))
            }
        }
    }
}

/// Waits until a volume just made (or found) can be attached: available, or in use already.
pub async fn wait_usable(
    ec2: &aws_sdk_ec2::Client,
    config: &ControlConfig,
    volume_id: &str,
) -> Result<()> {
    wait_volume(ec2, config, volume_id, "available", |v| {
        matches!(
            v.and_then(|v| v.state()),
            Some(VolumeState::Available) | Some(VolumeState::InUse)
        )
    })
    .await
    .map(|_| ())
}

/// Polls until `check` accepts the volume (or its absence), or the wait times out.
pub async fn wait_volume(
    ec2: &aws_sdk_ec2::Client,
    config: &ControlConfig,
    volume_id: &str,
    what: &str,
    check: impl Fn(Option<&Volume>) -> bool,
) -> Result<Option<Volume>> {
    let started = Instant::now();
    loop {
        let v = volume(ec2, volume_id).await?;
        if check(v.as_ref()) {
            return Ok(v);
        }
        if let Some(VolumeState::Error) = v.as_ref().and_then(|v| v.state()) {
            return Err(ControlError::Conflict(format!(
                "volume {volume_id} is in state error while waiting for it to be {what}: \
                 delete it (control delete) and deploy again"
            )));
        }
        if started.elapsed() > config.wait_timeout {
            return Err(ControlError::Timeout {
                what: format!("volume {volume_id} to be {what}"),
                seconds: config.wait_timeout.as_secs(),
            });
        }
        tokio::time::sleep(config.poll_interval).await;
    }
}

/// Whether a volume is attached to `instance_id` (attachment state `attached`).
pub fn attached_to(v: &Volume, instance_id: &str) -> Option<String> {
    v.attachments()
        .iter()
        .find(|a| {
            a.instance_id() == Some(instance_id)
                && a.state() == Some(&aws_sdk_ec2::types::VolumeAttachmentState::Attached)
        })
        .and_then(|a| a.device().map(str::to_owned))
}

/// Polls until the instance reaches `want` (terminated instances may also vanish).
pub async fn wait_instance(
    ec2: &aws_sdk_ec2::Client,
    config: &ControlConfig,
    instance_id: &str,
    want: InstanceStateName,
) -> Result<Option<Instance>> {
    let started = Instant::now();
    loop {
        let inst = instance(ec2, instance_id).await?;
        let state = inst
            .as_ref()
            .and_then(|i| i.state())
            .and_then(|s| s.name())
            .cloned();
        match (&state, &want) {
            (None, InstanceStateName::Terminated) => return Ok(None),
            (Some(s), w) if s == w => return Ok(inst),
            (Some(InstanceStateName::Terminated), InstanceStateName::Running)
            | (Some(InstanceStateName::ShuttingDown), InstanceStateName::Running) => {
                return Err(ControlError::Conflict(format!(
                    "instance {instance_id} is terminating while control waits for it to run: \
                     check its console output, then re-run the deploy"
                )))
            }
            _ => {}
        }
        if started.elapsed() > config.wait_timeout {
            return Err(ControlError::Timeout {
                what: format!("instance {instance_id} to be {}", want.as_str()),
                seconds: config.wait_timeout.as_secs(),
            });
        }
        tokio::time::sleep(config.poll_interval).await;
    }
}
