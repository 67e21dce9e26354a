# What control reads (terraform output -json) to place tenants and build tenant specs.

output "shared_hosts" {
  description = "Per host: instance id, AZ, private IP, EIP."
  value       = module.shared_host.hosts
}

output "host_selector_tags" {
  description = "Tags control filters EC2 instances by to find shared hosts."
  value       = module.shared_host.host_selector_tags
}

output "tenant_volume_tags" {
  description = "Tags control must set on every tenant volume it creates."
  value       = module.shared_host.tenant_volume_tags
}

output "control_role_arn" {
  description = "Role control assumes for volumes, Run Command and SSM parameters."
  value       = module.shared_host.control_role_arn
}

output "host_role_arn" {
  description = "Instance role of the shared hosts."
  value       = module.shared_host.host_role_arn
}

output "customers" {
  description = "Per shared customer: role ARN, CMK, SSM prefix, session name and tags for the tenant spec."
  value = {
    for name, c in module.customer_role : name => {
      role_arn          = c.role_arn
      kms_key_arn       = c.kms_key_arn
      ssm_prefix        = c.ssm_prefix
      role_session_name = c.role_session_name
      session_tags      = c.session_tags
    }
  }
}

output "customer_external_ids" {
  description = "Per shared customer: the sts:ExternalId for the tenant spec (sensitive)."
  value       = { for name, c in module.customer_role : name => c.external_id }
  sensitive   = true
}
