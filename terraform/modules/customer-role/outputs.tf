output "role_arn" {
  description = "The customer role: hostd puts it in the tenant spec, cred-broker assumes it."
  value       = aws_iam_role.customer.arn
}

output "role_name" {
  description = "Name of the customer role."
  value       = aws_iam_role.customer.name
}

output "external_id" {
  description = "The sts:ExternalId the trust policy requires (sensitive; goes into the tenant spec)."
  value       = var.external_id
  sensitive   = true
}

output "role_session_name" {
  description = "The only RoleSessionName the trust policy admits."
  value       = "m8trx-${var.name}"
}

output "session_tags" {
  description = "The session tags cred-broker must pass (transitive), and the only ones admitted."
  value       = { Customer = var.name }
}

output "kms_key_arn" {
  description = "The customer CMK: control creates the tenant EBS volume with it."
  value       = aws_kms_key.customer.arn
}

output "kms_alias" {
  description = "Alias of the customer CMK."
  value       = aws_kms_alias.customer.name
}

output "ssm_prefix" {
  description = "SSM path of the customer's six parameters; the only path the role may read."
  value       = "/m8trx/${var.name}/"
}

output "permission_boundary_arn" {
  description = "The customer's permission boundary."
  value       = aws_iam_policy.boundary.arn
}
