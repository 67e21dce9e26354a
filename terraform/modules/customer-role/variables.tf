variable "name" {
  description = "Customer name (3-32 of [a-z0-9-], starts with a letter, no trailing dash): the one string the role, key, SSM path and session tag derive from."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", var.name))
    error_message = "The customer name must be 3-32 characters of a-z, 0-9 and '-', start with a letter and not end with '-'."
  }
}

variable "external_id" {
  description = "The customer's sts:ExternalId, a random secret the dashboard mints once per customer and hands to hostd in the tenant spec; the trust policy refuses any other value."
  type        = string
  sensitive   = true

  validation {
    condition     = length(var.external_id) >= 32 && length(var.external_id) <= 256 && can(regex("^[A-Za-z0-9+=.@:/_-]+$", var.external_id))
    error_message = "The external id must be 32-256 characters of [A-Za-z0-9+=.@:/_-]: within STS's charset and storable as the role's m8trx:external-id tag; at least 32 so it cannot be guessed."
  }
}

variable "shared_host_role_arns" {
  description = "Instance roles of the shared-host fleets (the shared-host module's host_role_arn output): the only principals the trust policy admits, and only with the external id and the Customer session tag."
  type        = list(string)

  validation {
    condition     = length(var.shared_host_role_arns) > 0 && alltrue([for a in var.shared_host_role_arns : can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:role/", a))])
    error_message = "shared_host_role_arns must be a non-empty list of IAM role ARNs."
  }
}

variable "shared_host_role_path" {
  description = "IAM path of the shared-host instance roles (the shared-host module's host_role_path output): the customer key denies every role under it everything."
  type        = string
  default     = "/m8trx/shared-host/"

  validation {
    condition     = can(regex("^/([A-Za-z0-9+=,.@_-]+/)+$", var.shared_host_role_path))
    error_message = "The path must start and end with '/', e.g. /m8trx/shared-host/."
  }
}

variable "role_path" {
  description = "IAM path of customer roles; the shared-host role may assume only roles under it (the shared-host module's customer_role_path must match)."
  type        = string
  default     = "/m8trx/customer/"

  validation {
    condition     = can(regex("^/([A-Za-z0-9+=,.@_-]+/)+$", var.role_path))
    error_message = "The path must start and end with '/', e.g. /m8trx/customer/."
  }
}

variable "control_role_arn" {
  description = "ARN of control's role (the shared-host module's control_role_arn output): the key policy lets it use the customer key only through EBS, to create and attach the tenant volume."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:role/", var.control_role_arn))
    error_message = "control_role_arn must be an IAM role ARN."
  }
}

variable "key_admin_arns" {
  description = "IAM principals that administer the customer key (rotation, policy, deletion) without any data access. Must include the principal that runs terraform apply, or KMS refuses the key policy."
  type        = list(string)

  validation {
    condition     = length(var.key_admin_arns) > 0
    error_message = "At least one key administrator is required."
  }
}

variable "bucket_name" {
  description = "The customer's own S3 bucket, the only bucket the permission boundary allows. Defaults to m8trx-<name>-data."
  type        = string
  default     = null
}

variable "key_deletion_window_days" {
  description = "Days a scheduled deletion of the customer key waits (the platform keeps 30)."
  type        = number
  default     = 30
}

variable "tags" {
  description = "Tags added to every resource (the module always adds Customer=<name> and m8trx:managed-by=terraform)."
  type        = map(string)
  default     = {}
}
