variable "fleet_name" {
  description = "Name of this shared-host fleet; prefixes the roles, security group and key (e.g. \"shared\")."
  type        = string
  default     = "shared"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", var.fleet_name))
    error_message = "fleet_name must be 3-32 characters of a-z, 0-9 and '-', starting with a letter."
  }
}

variable "ami_id" {
  description = "The hardened shared-host AMI built by packer/ (its manifest.json artifact_id)."
  type        = string

  validation {
    condition     = can(regex("^ami-[0-9a-f]{8,17}$", var.ami_id))
    error_message = "ami_id must look like ami-0123456789abcdef0."
  }
}

variable "vpc_id" {
  description = "VPC of the shared hosts (their security group lives here)."
  type        = string
}

variable "hosts" {
  description = "The shared hosts, by name: subnet (its AZ is where control creates tenant volumes), instance type, root volume size and placement capacity control reads from the instance tags."
  type = map(object({
    subnet_id           = string
    instance_type       = optional(string, "m6i.xlarge")
    root_volume_size_gb = optional(number, 50)
    max_tenants         = optional(number, 24)
    reservable_mem_mib  = optional(number, 14336)
    reservable_cpu_mcpu = optional(number, 3500)
  }))

  validation {
    condition     = length(var.hosts) > 0 && alltrue([for k in keys(var.hosts) : can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", k))])
    error_message = "At least one host; host names are 3-32 characters of a-z, 0-9 and '-'."
  }
}

variable "customer_role_path" {
  description = "IAM path of customer roles (the customer-role module's role_path). The host role may assume only roles under it that carry m8trx:role=customer and a Customer tag."
  type        = string
  default     = "/m8trx/customer/"

  validation {
    condition     = can(regex("^/([A-Za-z0-9+=,.@_-]+/)+$", var.customer_role_path))
    error_message = "The path must start and end with '/'."
  }
}

variable "control_trusted_arns" {
  description = "IAM roles control runs as (the dashboard host's role): the only principals that may assume control's role."
  type        = list(string)

  validation {
    condition     = length(var.control_trusted_arns) > 0 && alltrue([for a in var.control_trusted_arns : can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:role/", a))])
    error_message = "control_trusted_arns must be a non-empty list of IAM role ARNs."
  }
}

variable "key_admin_arns" {
  description = "IAM principals that administer the platform key of the hosts (root volumes, log groups) and launch the hosts. Must include the principal that runs terraform apply."
  type        = list(string)

  validation {
    condition     = length(var.key_admin_arns) > 0
    error_message = "At least one key administrator is required."
  }
}

variable "log_retention_days" {
  description = "Retention of the host log groups (the platform keeps audit and auth logs 365 days)."
  type        = number
  default     = 365
}

variable "snapshot_retain_count" {
  description = "Daily DLM snapshots of tenant volumes kept (the platform keeps 14)."
  type        = number
  default     = 14
}

variable "snapshot_time_utc" {
  description = "Daily DLM snapshot time, HH:MM UTC (the platform uses 03:00)."
  type        = string
  default     = "03:00"
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
