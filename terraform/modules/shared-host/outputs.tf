output "hosts" {
  description = "Per shared host: instance id, availability zone (control creates tenant volumes there), private IP and public EIP (the DNS A records of its tenants)."
  value = {
    for name, inst in aws_instance.host : name => {
      instance_id       = inst.id
      availability_zone = inst.availability_zone
      private_ip        = inst.private_ip
      public_ip         = aws_eip.host[name].public_ip
    }
  }
}

output "host_role_arn" {
  description = "The shared-host instance role; cred-broker assumes customer roles from it."
  value       = aws_iam_role.host.arn
}

output "host_role_path" {
  description = "IAM path of shared-host roles; pass it to the customer-role module's shared_host_role_path."
  value       = local.host_role_path
}

output "customer_role_path" {
  description = "IAM path the host role may assume roles under; the customer-role module's role_path must equal it."
  value       = var.customer_role_path
}

output "control_role_arn" {
  description = "control's role: pass it to the customer-role module (key grant path) and run control as it."
  value       = aws_iam_role.control.arn
}

output "security_group_id" {
  description = "Security group of the shared hosts."
  value       = aws_security_group.host.id
}

output "tenant_volume_tags" {
  description = "Tags control must put on every tenant volume it creates (its role requires them; DLM snapshots what carries them)."
  value       = local.tenant_volume_tags
}

output "host_selector_tags" {
  description = "Tags that identify shared hosts for control's placement (capacity in m8trx:max-tenants, m8trx:reservable-mem-mib, m8trx:reservable-cpu-mcpu)."
  value       = { "m8trx:role" = "shared-host", "m8trx:fleet" = var.fleet_name }
}

output "log_group_names" {
  description = "CloudWatch log groups of the hosts, by component."
  value       = { for k, g in aws_cloudwatch_log_group.host : k => g.name }
}

output "platform_key_arn" {
  description = "Platform key of root volumes and log groups (no customer data)."
  value       = aws_kms_key.host.arn
}
