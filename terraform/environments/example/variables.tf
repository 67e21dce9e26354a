variable "aws_region" {
  description = "Region of the shared hosts (the platform runs in us-east-2)."
  type        = string
  default     = "us-east-2"
}

variable "environment" {
  description = "Short name of this environment, used in tags (e.g. example, prod)."
  type        = string
  default     = "example"
}

variable "shared_host_ami_id" {
  description = "AMI built by packer/ (manifest.json artifact_id, after the region prefix)."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the shared hosts."
  type        = string
}

variable "hosts" {
  description = "Shared hosts by name, each with its subnet and optional sizing (see the shared-host module)."
  type = map(object({
    subnet_id           = string
    instance_type       = optional(string, "m6i.xlarge")
    root_volume_size_gb = optional(number, 50)
    max_tenants         = optional(number, 24)
    reservable_mem_mib  = optional(number, 14336)
    reservable_cpu_mcpu = optional(number, 3500)
  }))
}

variable "control_trusted_arns" {
  description = "Roles control runs as (the dashboard host's instance role)."
  type        = list(string)
}

variable "key_admin_arns" {
  description = "Key administrators; must include the principal running terraform apply."
  type        = list(string)
}

variable "shared_customers" {
  description = "Customers placed on shared hosts, by name, each with its sts:ExternalId (minted by the dashboard, kept in its tfvars, never in git)."
  type = map(object({
    external_id = string
    bucket_name = optional(string)
  }))
  sensitive = true
  default   = {}
}
