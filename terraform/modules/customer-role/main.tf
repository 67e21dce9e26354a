# The customer's own role on a shared host, its permission boundary, the scoped
# brain_telemetry_ssm_read policy, and the customer CMK with the EBS grant path.
#
# Every policy document lives in policies/*.json.tftpl so that scripts/infra can render
# and evaluate exactly what AWS receives (see terraform/README.md).

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

data "aws_region" "current" {}

locals {
  account_id  = data.aws_caller_identity.current.account_id
  partition   = data.aws_partition.current.partition
  region      = data.aws_region.current.name
  role_name   = "m8trx-${var.name}"
  role_arn    = "arn:${local.partition}:iam::${local.account_id}:role${var.role_path}${local.role_name}"
  bucket_name = coalesce(var.bucket_name, "m8trx-${var.name}-data")

  # Every role under the shared-host path: the customer key denies them everything.
  shared_host_role_arn_pattern = "arn:${local.partition}:iam::${local.account_id}:role${var.shared_host_role_path}*"

  tags = merge(var.tags, {
    Customer             = var.name
    "m8trx:managed-by"   = "terraform"
    "m8trx:compute-mode" = "shared"
  })
}

resource "aws_kms_key" "customer" {
  description             = "m8trx customer ${var.name}: tenant volume, SSM SecureStrings and objects"
  enable_key_rotation     = true
  deletion_window_in_days = var.key_deletion_window_days

  # The customer role and control's role are named by aws:PrincipalArn, not as principals,
  # so the key can exist before the role (whose boundary names the key).
  policy = templatefile("${path.module}/policies/key.json.tftpl", {
    partition                    = local.partition
    account_id                   = local.account_id
    region                       = local.region
    key_admin_arns               = var.key_admin_arns
    customer_name                = var.name
    customer_role_arn            = local.role_arn
    control_role_arn             = var.control_role_arn
    shared_host_role_arn_pattern = local.shared_host_role_arn_pattern
  })

  tags = merge(local.tags, { "m8trx:role" = "customer-key" })
}

resource "aws_kms_alias" "customer" {
  name          = "alias/m8trx-${var.name}"
  target_key_id = aws_kms_key.customer.key_id
}

resource "aws_iam_policy" "boundary" {
  name        = "m8trx-${var.name}-boundary"
  path        = var.role_path
  description = "Permission boundary of customer ${var.name}: own SSM path, key, bucket, secrets and logs; platform denies."

  policy = templatefile("${path.module}/policies/boundary.json.tftpl", {
    partition     = local.partition
    region        = local.region
    account_id    = local.account_id
    customer_name = var.name
    kms_key_arn   = aws_kms_key.customer.arn
    bucket_name   = local.bucket_name
  })

  tags = local.tags
}

resource "aws_iam_role" "customer" {
  name                 = local.role_name
  path                 = var.role_path
  description          = "m8trx customer ${var.name}, assumed by shared hosts through cred-broker"
  max_session_duration = 3600
  permissions_boundary = aws_iam_policy.boundary.arn

  assume_role_policy = templatefile("${path.module}/policies/trust.json.tftpl", {
    customer_name         = var.name
    external_id           = var.external_id
    shared_host_role_arns = var.shared_host_role_arns
  })

  # m8trx:role=customer is the tag the shared-host role requires on any role it assumes;
  # control reads the external id from m8trx:external-id (iam:GetRole) for the tenant spec.
  tags = merge(local.tags, { "m8trx:role" = "customer", "m8trx:external-id" = var.external_id })
}

resource "aws_iam_role_policy" "brain_telemetry_ssm_read" {
  name = "brain_telemetry_ssm_read"
  role = aws_iam_role.customer.id

  policy = templatefile("${path.module}/policies/brain-telemetry-ssm-read.json.tftpl", {
    partition     = local.partition
    region        = local.region
    account_id    = local.account_id
    customer_name = var.name
  })
}

resource "aws_iam_role_policy" "own_key_use" {
  name = "own_key_use"
  role = aws_iam_role.customer.id

  policy = templatefile("${path.module}/policies/own-key-use.json.tftpl", {
    kms_key_arn = aws_kms_key.customer.arn
  })
}
