# A fleet of shared hosts: the instances from the hardened AMI, their role (which may only
# assume customer roles), the security group (:80 and :443 in), the platform key for root
# volumes and logs, control's role (volumes, Run Command, SSM parameters) and DLM for
# tenant volumes.
#
# Every policy document lives in policies/ so that scripts/infra can render and evaluate
# exactly what AWS receives (see terraform/README.md).

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

data "aws_region" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.name

  host_role_path   = "/m8trx/shared-host/"
  log_group_prefix = "/m8trx-platform/shared-host/${var.fleet_name}/"
  log_components   = ["hostd", "sni-proxy", "cred-broker", "audit", "auth", "syslog"]

  host_role_arn_pattern     = "arn:${local.partition}:iam::${local.account_id}:role${local.host_role_path}*"
  customer_role_arn_pattern = "arn:${local.partition}:iam::${local.account_id}:role${var.customer_role_path}*"

  # Control creates tenant volumes with these tags; DLM snapshots what carries them.
  tenant_volume_tags = { "m8trx:role" = "tenant-volume" }

  tags = merge(var.tags, {
    "m8trx:managed-by" = "terraform"
    "m8trx:fleet"      = var.fleet_name
  })
}

# --- platform key: host root volumes and host log groups (never a customer key) ---------

resource "aws_kms_key" "host" {
  description             = "m8trx shared-host fleet ${var.fleet_name}: root volumes and log groups"
  enable_key_rotation     = true
  deletion_window_in_days = 30

  policy = templatefile("${path.module}/policies/host-key.json.tftpl", {
    partition             = local.partition
    region                = local.region
    account_id            = local.account_id
    key_admin_arns        = var.key_admin_arns
    log_group_prefix      = local.log_group_prefix
    host_role_arn_pattern = local.host_role_arn_pattern
  })

  tags = merge(local.tags, { "m8trx:role" = "platform-key" })
}

resource "aws_kms_alias" "host" {
  name          = "alias/m8trx-shared-host-${var.fleet_name}"
  target_key_id = aws_kms_key.host.key_id
}

# --- the host role: assume customer roles, SSM agent, logs; nothing else ----------------

resource "aws_iam_policy" "host_boundary" {
  name        = "m8trx-shared-host-${var.fleet_name}-boundary"
  path        = local.host_role_path
  description = "Ceiling of the shared-host role: assume customer roles, SSM agent, own logs; no parameter, no key."

  policy = templatefile("${path.module}/policies/host-boundary.json.tftpl", {
    partition                 = local.partition
    region                    = local.region
    account_id                = local.account_id
    customer_role_arn_pattern = local.customer_role_arn_pattern
    log_group_prefix          = local.log_group_prefix
  })

  tags = local.tags
}

resource "aws_iam_role" "host" {
  name                 = "m8trx-shared-host-${var.fleet_name}"
  path                 = local.host_role_path
  description          = "Instance role of shared hosts: may only assume customer roles (plus SSM agent and logs)"
  assume_role_policy   = file("${path.module}/policies/host-trust.json")
  permissions_boundary = aws_iam_policy.host_boundary.arn
  max_session_duration = 3600

  tags = merge(local.tags, { "m8trx:role" = "shared-host" })
}

resource "aws_iam_role_policy" "host" {
  name = "shared_host"
  role = aws_iam_role.host.id

  policy = templatefile("${path.module}/policies/host-permissions.json.tftpl", {
    partition                 = local.partition
    region                    = local.region
    account_id                = local.account_id
    customer_role_arn_pattern = local.customer_role_arn_pattern
    log_group_prefix          = local.log_group_prefix
  })
}

resource "aws_iam_instance_profile" "host" {
  name = "m8trx-shared-host-${var.fleet_name}"
  path = local.host_role_path
  role = aws_iam_role.host.name

  tags = local.tags
}

# --- network: :443 and :80 in, nothing else ----------------------------------------------

resource "aws_security_group" "host" {
  name        = "m8trx-shared-host-${var.fleet_name}"
  description = "m8trx shared hosts: HTTPS and ACME HTTP-01 in; no SSH (SSM only)"
  vpc_id      = var.vpc_id

  ingress {
    description      = "HTTPS to sni-proxy (TLS passthrough to tenant Caddy)"
    from_port        = 443
    to_port          = 443
    protocol         = "tcp"
    cidr_blocks      = ["0.0.0.0/0"]
    ipv6_cidr_blocks = ["::/0"]
  }

  #checkov:skip=CKV_AWS_260:Port 80 must be open to the internet for Let's Encrypt HTTP-01 challenges and the https redirect, as on every Agent instance of the platform; sni-proxy serves nothing else there.
  ingress {
    description      = "HTTP for ACME HTTP-01 challenges and the redirect to https"
    from_port        = 80
    to_port          = 80
    protocol         = "tcp"
    cidr_blocks      = ["0.0.0.0/0"]
    ipv6_cidr_blocks = ["::/0"]
  }

  #checkov:skip=CKV_AWS_382:Hosts reach SSM, STS, CloudWatch, Let's Encrypt, image registries, Tailscale and the Brain over the internet gateway; the platform has no NAT or egress proxy to pin them to. Tenant egress is limited on the host by hostd.
  egress {
    description      = "Outbound to AWS APIs, ACME, registries, Tailscale, Brain"
    from_port        = 0
    to_port          = 0
    protocol         = "-1"
    cidr_blocks      = ["0.0.0.0/0"]
    ipv6_cidr_blocks = ["::/0"]
  }

  tags = merge(local.tags, { Name = "m8trx-shared-host-${var.fleet_name}" })
}

# --- the hosts ------------------------------------------------------------------------------

resource "aws_instance" "host" {
  for_each = var.hosts

  ami                     = var.ami_id
  instance_type           = each.value.instance_type
  subnet_id               = each.value.subnet_id
  vpc_security_group_ids  = [aws_security_group.host.id]
  iam_instance_profile    = aws_iam_instance_profile.host.name
  ebs_optimized           = true
  monitoring              = true
  disable_api_termination = true

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "enabled"
  }

  root_block_device {
    encrypted             = true
    kms_key_id            = aws_kms_key.host.arn
    volume_type           = "gp3"
    volume_size           = each.value.root_volume_size_gb
    delete_on_termination = true
    tags                  = merge(local.tags, { "m8trx:role" = "shared-host-root", "m8trx:shared-host" = each.key })
  }

  # control's placement reads these: role, name and the capacity it may reserve.
  tags = merge(local.tags, {
    Name                        = "m8trx-shared-host-${each.key}"
    "m8trx:role"                = "shared-host"
    "m8trx:shared-host"         = each.key
    "m8trx:max-tenants"         = tostring(each.value.max_tenants)
    "m8trx:reservable-mem-mib"  = tostring(each.value.reservable_mem_mib)
    "m8trx:reservable-cpu-mcpu" = tostring(each.value.reservable_cpu_mcpu)
  })

  lifecycle {
    # A new AMI is rolled out by draining and replacing a host, not by an in-place apply.
    ignore_changes = [ami]
  }
}

resource "aws_eip" "host" {
  for_each = var.hosts

  domain   = "vpc"
  instance = aws_instance.host[each.key].id

  tags = merge(local.tags, { Name = "m8trx-shared-host-${each.key}", "m8trx:shared-host" = each.key })
}

resource "aws_cloudwatch_log_group" "host" {
  for_each = toset(local.log_components)

  name              = "${local.log_group_prefix}${each.key}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.host.arn

  tags = local.tags
}

# --- control's role: tenant volumes, Run Command on shared hosts, SSM parameters -------------

resource "aws_iam_role" "control" {
  name                 = "m8trx-control-${var.fleet_name}"
  path                 = "/m8trx/control/"
  description          = "control: creates and attaches encrypted tenant volumes, runs hostd ctl through SSM, writes customer parameters"
  max_session_duration = 3600

  assume_role_policy = templatefile("${path.module}/policies/control-trust.json.tftpl", {
    control_trusted_arns = var.control_trusted_arns
  })

  tags = merge(local.tags, { "m8trx:role" = "control" })
}

resource "aws_iam_role_policy" "control" {
  name = "control_shared_hosts"
  role = aws_iam_role.control.id

  policy = templatefile("${path.module}/policies/control-permissions.json.tftpl", {
    partition          = local.partition
    region             = local.region
    account_id         = local.account_id
    customer_role_path = var.customer_role_path
  })
}

# --- DLM: daily snapshots of tenant volumes ------------------------------------------------

resource "aws_iam_role" "dlm" {
  name        = "m8trx-dlm-${var.fleet_name}"
  path        = "/m8trx/service/"
  description = "DLM snapshots of m8trx tenant volumes"

  assume_role_policy = file("${path.module}/policies/dlm-trust.json")

  tags = local.tags
}

resource "aws_iam_role_policy_attachment" "dlm" {
  role       = aws_iam_role.dlm.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AWSDataLifecycleManagerServiceRole"
}

resource "aws_dlm_lifecycle_policy" "tenant_volumes" {
  description        = "m8trx ${var.fleet_name}: daily tenant volume snapshots"
  execution_role_arn = aws_iam_role.dlm.arn
  state              = "ENABLED"

  policy_details {
    resource_types = ["VOLUME"]
    target_tags    = local.tenant_volume_tags

    schedule {
      name      = "daily-${replace(var.snapshot_time_utc, ":", "")}-keep-${var.snapshot_retain_count}"
      copy_tags = true

      create_rule {
        interval      = 24
        interval_unit = "HOURS"
        times         = [var.snapshot_time_utc]
      }

      retain_rule {
        count = var.snapshot_retain_count
      }

      tags_to_add = {
        "m8trx:snapshot" = "dlm-daily"
      }
    }
  }

  tags = local.tags
}
