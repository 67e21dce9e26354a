# Example environment: one shared-host fleet and the customer roles it may assume.
# The dashboard manages shared_customers in its own tfvars file, as it does the
# customers / m8trx_agent_customers maps of the dedicated templates.

module "shared_host" {
  source = "../../modules/shared-host"

  fleet_name           = "shared"
  ami_id               = var.shared_host_ami_id
  vpc_id               = var.vpc_id
  hosts                = var.hosts
  control_trusted_arns = var.control_trusted_arns
  key_admin_arns       = var.key_admin_arns

  tags = { Environment = var.environment }
}

module "customer_role" {
  source   = "../../modules/customer-role"
  for_each = nonsensitive(toset(keys(var.shared_customers)))

  name                  = each.key
  external_id           = var.shared_customers[each.key].external_id
  bucket_name           = var.shared_customers[each.key].bucket_name
  role_path             = module.shared_host.customer_role_path
  shared_host_role_arns = [module.shared_host.host_role_arn]
  shared_host_role_path = module.shared_host.host_role_path
  control_role_arn      = module.shared_host.control_role_arn
  key_admin_arns        = var.key_admin_arns

  tags = { Environment = var.environment }
}
