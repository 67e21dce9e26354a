# Hardened shared-host AMI: Ubuntu 22.04 with the platform's hardening, docker engine and
# containerd, the m8trx host binaries under hardened systemd units, the tenant seccomp and
# AppArmor profiles, the auditd rules and sysctls of issue #8, the broker's dummy interface
# and the IMDS drop rules. See packer/README.md.

packer {
  required_version = ">= 1.9.0"

  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = "~> 1.3"
    }
  }
}

variable "region" {
  description = "Region the AMI is built in (the platform runs in us-east-2)."
  type        = string
  default     = "us-east-2"
}

variable "instance_type" {
  description = "Builder instance type."
  type        = string
  default     = "t3.medium"
}

variable "subnet_id" {
  description = "Subnet of the builder instance; it needs outbound HTTPS (apt, SSM), no inbound."
  type        = string
}

variable "ami_kms_key_id" {
  description = "KMS key (platform key, not a customer key) that encrypts the AMI's snapshots."
  type        = string
}

variable "builder_instance_profile" {
  description = "Instance profile of the builder with the SSM agent's permissions (Session Manager carries the build's SSH)."
  type        = string
}

variable "binaries_dir" {
  description = "Directory holding the release builds of hostd, sni-proxy and cred-broker (make build)."
  type        = string
  default     = "../target/release"
}

variable "tailscale_image" {
  description = "The tailscale sidecar image agent tenants get, pinned by digest (tailscale/tailscale@sha256:…); written to /etc/m8trx/hostd.env. Empty: no sidecar (hostd warns)."
  type        = string
  default     = ""
  validation {
    condition     = var.tailscale_image == "" || can(regex("@sha256:[0-9a-f]{64}$", var.tailscale_image))
    error_message = "tailscale_image must be pinned by digest (…@sha256:<64 hex>) or empty."
  }
}

variable "ami_name_prefix" {
  description = "AMI names are <prefix>-<UTC timestamp>."
  type        = string
  default     = "m8trx-shared-host"
}

locals {
  build_stamp = formatdate("YYYYMMDD-hhmmss", timestamp())
  staging     = "/tmp/m8trx"

  # Issue #8 owns the contents of these four; this template installs them.
  seccomp_profile   = "${path.root}/../seccomp/tenant.json"
  apparmor_template = "${path.root}/../apparmor/tenant.profile.tmpl"
  audit_rules       = "${path.root}/files/audit/m8trx-shared-host.rules"
  sysctl_conf       = "${path.root}/files/sysctl/99-m8trx-shared-host.conf"
}

source "amazon-ebs" "shared_host" {
  region        = var.region
  instance_type = var.instance_type
  subnet_id     = var.subnet_id
  ami_name      = "${var.ami_name_prefix}-${local.build_stamp}"

  ami_description = "m8trx hardened shared host (Ubuntu 22.04)"

  source_ami_filter {
    filters = {
      name                = "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-*"
      root-device-type    = "ebs"
      virtualization-type = "hvm"
    }
    owners      = ["099720108477"]
    most_recent = true
  }

  # No SSH ingress even while building: the communicator tunnels through Session Manager.
  communicator         = "ssh"
  ssh_username         = "ubuntu"
  ssh_interface        = "session_manager"
  iam_instance_profile = var.builder_instance_profile

  encrypt_boot = true
  kms_key_id   = var.ami_kms_key_id
  imds_support = "v2.0"

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "enabled"
  }

  launch_block_device_mappings {
    device_name           = "/dev/sda1"
    volume_size           = 20
    volume_type           = "gp3"
    encrypted             = true
    kms_key_id            = var.ami_kms_key_id
    delete_on_termination = true
  }

  tags = {
    Name              = "${var.ami_name_prefix}-${local.build_stamp}"
    "m8trx:role"      = "shared-host-ami"
    "m8trx:base-ami"  = "{{ .SourceAMI }}"
    "m8trx:build-utc" = local.build_stamp
  }
}

build {
  name    = "m8trx-shared-host"
  sources = ["source.amazon-ebs.shared_host"]

  provisioner "shell" {
    inline = [
      "mkdir -p ${local.staging}/bin ${local.staging}/systemd ${local.staging}/iptables ${local.staging}/sbin ${local.staging}/profiles ${local.staging}/host",
    ]
  }

  provisioner "file" {
    sources = [
      "${var.binaries_dir}/hostd",
      "${var.binaries_dir}/sni-proxy",
      "${var.binaries_dir}/cred-broker",
    ]
    destination = "${local.staging}/bin/"
  }

  provisioner "file" {
    sources = [
      "${path.root}/files/systemd/hostd.service",
      "${path.root}/files/systemd/sni-proxy.service",
      "${path.root}/files/systemd/cred-broker.service",
      "${path.root}/files/systemd/m8trx-broker-if.service",
      "${path.root}/files/systemd/m8trx-firewall.service",
      "${path.root}/files/systemd/m8trx-cwagent-config.service",
      "${path.root}/files/systemd/m8trx-instance-env.service",
      "${path.root}/files/systemd/docker-scope-stop.conf",
    ]
    destination = "${local.staging}/systemd/"
  }

  provisioner "file" {
    sources = [
      "${path.root}/files/iptables/host.rules",
      "${path.root}/files/iptables/host6.rules",
    ]
    destination = "${local.staging}/iptables/"
  }

  provisioner "file" {
    sources = [
      "${path.root}/files/m8trx/m8trx-firewall",
      "${path.root}/files/m8trx/m8trx-cwagent-config",
      "${path.root}/files/m8trx/m8trx-instance-env",
      "${path.root}/files/m8trx/rsyslog-m8trx.conf",
      "${path.root}/files/m8trx/tmpfiles-m8trx.conf",
    ]
    destination = "${local.staging}/sbin/"
  }

  provisioner "file" {
    sources     = [local.seccomp_profile, local.apparmor_template]
    destination = "${local.staging}/profiles/"
  }

  provisioner "file" {
    sources     = [local.audit_rules, local.sysctl_conf]
    destination = "${local.staging}/host/"
  }

  provisioner "shell" {
    execute_command = "chmod +x {{ .Path }}; sudo env {{ .Vars }} {{ .Path }}"
    environment_vars = [
      "M8TRX_STAGING=${local.staging}",
      "M8TRX_TAILSCALE_IMAGE=${var.tailscale_image}",
      "DEBIAN_FRONTEND=noninteractive",
    ]
    scripts = [
      "${path.root}/scripts/10-packages.sh",
      "${path.root}/scripts/20-harden.sh",
      "${path.root}/scripts/30-m8trx.sh",
      "${path.root}/scripts/40-verify.sh",
      "${path.root}/scripts/90-cleanup.sh",
    ]
  }

  post-processor "manifest" {
    output     = "${path.root}/manifest.json"
    strip_path = true
  }
}
