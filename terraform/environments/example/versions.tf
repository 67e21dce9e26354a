terraform {
  required_version = ">= 1.5.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.40"
    }
  }

  # Partial configuration: see terraform/README.md for the -backend-config flags
  # (the platform's m8trx-terraform-state bucket and terraform-locks table).
  backend "s3" {}
}

provider "aws" {
  region = var.aws_region

  default_tags {
    tags = {
      Project       = "m8trx"
      "m8trx:stack" = "shared-hosts-${var.environment}"
    }
  }
}
