//! Dedicated hosting: one hardened EC2 instance per customer, exactly as today — hardened AMI,
//! IMDSv2 required with hop limit 1, instance metadata tags on, encrypted gp3 root with the
//! customer's CMK, the customer's instance profile, `Customer=` and naming tags, and the
//! platform bootstrap as user-data.

use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, EbsInstanceBlockDeviceSpecification, HttpTokensState,
    IamInstanceProfileSpecification, InstanceBlockDeviceMappingSpecification,
    InstanceMetadataEndpointState, InstanceMetadataOptionsRequest, InstanceMetadataTagsState,
    InstanceStateName, InstanceType, ResourceType, VolumeType,
};
use serde::Serialize;

use crate::config::{Clients, ControlConfig};
use crate::ec2::{customer_instances, wait_instance, LIVE_INSTANCE_STATES};
use crate::error::{ControlError, Result};
use crate::identity::CustomerIdentity;
use crate::progress::Progress;
use crate::request::DeploySpec;
use crate::tags;
use crate::userdata;

/// Where a dedicated customer ended up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DedicatedPlacement {
    /// The customer's instance.
    pub instance_id: String,
    /// Its availability zone.
    pub availability_zone: String,
    /// Its encrypted root volume.
    pub root_volume_id: Option<String>,
}

/// Settings a dedicated launch needs from the configuration and the request.
#[derive(Debug, Clone)]
pub struct LaunchPlan {
    /// Hardened AMI.
    pub ami_id: String,
    /// Its root device name (from DescribeImages).
    pub root_device: String,
    /// Subnet to launch in.
    pub subnet_id: String,
}

/// Checks the AMI and subnet exist before anything is written (a deploy's preflight).
pub async fn preflight(
    clients: &Clients,
    config: &ControlConfig,
    spec: &DeploySpec,
) -> Result<LaunchPlan> {
    let ami_id = config.ami_id.clone().ok_or_else(|| {
        ControlError::Missing("no hardened AMI configured: set --ami-id (M8TRX_AMI_ID)".to_owned())
    })?;
    let subnet_id = spec
        .subnet_id
        .clone()
        .or_else(|| config.dedicated_subnet_id.clone())
        .ok_or_else(|| {
            ControlError::Missing(
                "no subnet for the dedicated instance: pass subnet_id in the request or set \
                 --dedicated-subnet (M8TRX_DEDICATED_SUBNET)"
                    .to_owned(),
            )
        })?;
    let images = clients
        .ec2
        .describe_images()
        .image_ids(&ami_id)
        .send()
        .await
        .map_err(|e| ControlError::aws(format!("DescribeImages {ami_id}"), e))?;
    let image = images.images().first().ok_or_else(|| {
        ControlError::Missing(format!(
            "the hardened AMI {ami_id} does not exist in {}",
            config.region
        ))
    })?;
    let root_device = image.root_device_name().unwrap_or("/dev/sda1").to_owned();
    clients
        .ec2
        .describe_subnets()
        .subnet_ids(&subnet_id)
        .send()
        .await
        .map_err(|e| ControlError::aws(format!("DescribeSubnets {subnet_id}"), e))?;
    Ok(LaunchPlan {
        ami_id,
        root_device,
        subnet_id,
    })
}

fn placement_of(i: &aws_sdk_ec2::types::Instance, root_device: &str) -> DedicatedPlacement {
    DedicatedPlacement {
        instance_id: i.instance_id().unwrap_or_default().to_owned(),
        availability_zone: i
            .placement()
            .and_then(|p| p.availability_zone())
            .unwrap_or_default()
            .to_owned(),
        root_volume_id: i
            .block_device_mappings()
            .iter()
            .find(|b| b.device_name() == Some(root_device))
            .or_else(|| i.block_device_mappings().first())
            .and_then(|b| b.ebs())
            .and_then(|e| e.volume_id())
            .map(str::to_owned),
    }
}

/// Launches the customer's instance unless it already exists, then waits until it runs.
pub async fn deploy(
    clients: &Clients,
    config: &ControlConfig,
    spec: &DeploySpec,
    identity: &CustomerIdentity,
    plan: &LaunchPlan,
    progress: &Progress,
) -> Result<DedicatedPlacement> {
    let name = &spec.name;
    let existing = customer_instances(&clients.ec2, name, &LIVE_INSTANCE_STATES).await?;
    let instance_id = match existing.as_slice() {
        [one] => {
            let id = one.instance_id().unwrap_or_default().to_owned();
            progress.line(format!(
                "dedicated: instance {id} already exists; not launching another"
            ));
            id
        }
        [] => {
            let user_data = userdata::render(spec, &config.platform_domain)?;
            progress.line(format!(
                "dedicated: launching {} from {} in {} ({} bytes of user-data, {} GB gp3 root encrypted with {})",
                spec.instance.name,
                plan.ami_id,
                plan.subnet_id,
                user_data.len(),
                spec.volume_size_gb,
                identity.kms_key_arn
            ));
            let hostname = userdata::hostname(spec, &config.platform_domain);
            let mut instance_tags = tags::customer_tags(name, tags::COMPONENT_DEDICATED, None);
            instance_tags.push(tags::tag(tags::TEMPLATE, spec.template.as_str()));
            instance_tags.push(tags::tag(tags::HOSTNAME, &hostname));
            let volume_tags = tags::customer_tags(name, tags::COMPONENT_DEDICATED, Some("root"));
            let out = clients
                .ec2
                .run_instances()
                .image_id(&plan.ami_id)
                .instance_type(InstanceType::from(spec.instance.name))
                .min_count(1)
                .max_count(1)
                .subnet_id(&plan.subnet_id)
                .set_security_group_ids(if config.security_group_ids.is_empty() {
                    None
                } else {
                    Some(config.security_group_ids.clone())
                })
                .metadata_options(
                    InstanceMetadataOptionsRequest::builder()
                        .http_tokens(HttpTokensState::Required)
                        .http_put_response_hop_limit(1)
                        .http_endpoint(InstanceMetadataEndpointState::Enabled)
                        .instance_metadata_tags(InstanceMetadataTagsState::Enabled)
                        .build(),
                )
                .block_device_mappings(
                    BlockDeviceMapping::builder()
                        .device_name(&plan.root_device)
                        .ebs(
                            EbsBlockDevice::builder()
                                .volume_size(spec.volume_size_gb)
                                .volume_type(VolumeType::Gp3)
                                .encrypted(true)
                                .kms_key_id(&identity.kms_key_arn)
                                .delete_on_termination(true)
                                .build(),
                        )
                        .build(),
                )
                .iam_instance_profile(
                    IamInstanceProfileSpecification::builder()
                        .name(&identity.instance_profile_name)
                        .build(),
                )
                .user_data(aws_smithy_types::base64::encode(user_data.as_bytes()))
                .tag_specifications(tags::spec(ResourceType::Instance, instance_tags))
                .tag_specifications(tags::spec(ResourceType::Volume, volume_tags))
                .send()
                .await
                .map_err(|e| ControlError::aws(format!("RunInstances for {name}"), e))?;
            let id = out
                .instances()
                .first()
                .and_then(|i| i.instance_id())
                .ok_or_else(|| {
                    ControlError::Conflict("RunInstances returned no instance".to_owned())
                })?
                .to_owned();
            progress.line(format!("dedicated: launched {id}"));
            id
        }
        many => {
            let ids: Vec<_> = many.iter().filter_map(|i| i.instance_id()).collect();
            return Err(ControlError::Conflict(format!(
                "{name} has {} dedicated instances ({}); control expects one: terminate the extra ones",
                many.len(),
                ids.join(", ")
            )));
        }
    };
    let inst = wait_instance(
        &clients.ec2,
        config,
        &instance_id,
        InstanceStateName::Running,
    )
    .await?
    .ok_or_else(|| ControlError::Conflict(format!("instance {instance_id} disappeared")))?;
    let placed = placement_of(&inst, &plan.root_device);
    progress.line(format!(
        "dedicated: {} running in {}",
        placed.instance_id, placed.availability_zone
    ));
    Ok(placed)
}

/// Terminates the customer's instances and waits; with `keep_volume` the root volume survives.
pub async fn delete(
    clients: &Clients,
    config: &ControlConfig,
    name: &m8trx_spec::CustomerName,
    keep_volume: bool,
    progress: &Progress,
) -> Result<Vec<String>> {
    let mut states: Vec<&str> = LIVE_INSTANCE_STATES.to_vec();
    states.push("shutting-down");
    let instances = customer_instances(&clients.ec2, name, &states).await?;
    let mut ids = Vec::new();
    for i in &instances {
        let id = i.instance_id().unwrap_or_default().to_owned();
        if keep_volume {
            for b in i.block_device_mappings() {
                if let Some(dev) = b.device_name() {
                    clients
                        .ec2
                        .modify_instance_attribute()
                        .instance_id(&id)
                        .block_device_mappings(
                            InstanceBlockDeviceMappingSpecification::builder()
                                .device_name(dev)
                                .ebs(
                                    EbsInstanceBlockDeviceSpecification::builder()
                                        .delete_on_termination(false)
                                        .build(),
                                )
                                .build(),
                        )
                        .send()
                        .await
                        .map_err(|e| {
                            ControlError::aws(format!("ModifyInstanceAttribute {id}"), e)
                        })?;
                    progress.line(format!(
                        "dedicated: {id} {dev} will be kept after termination"
                    ));
                }
            }
        }
        clients
            .ec2
            .terminate_instances()
            .instance_ids(&id)
            .send()
            .await
            .map_err(|e| ControlError::aws(format!("TerminateInstances {id}"), e))?;
        progress.line(format!("dedicated: terminating {id}"));
        wait_instance(&clients.ec2, config, &id, InstanceStateName::Terminated).await?;
        progress.line(format!("dedicated: {id} terminated"));
        ids.push(id);
    }
    if instances.is_empty() {
        progress.line("dedicated: no instance to terminate");
    }
    Ok(ids)
}
