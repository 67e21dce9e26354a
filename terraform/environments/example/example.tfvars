# Example values only: replace every id with your account's. The dashboard writes
# shared_customers into its own tfvars file; external ids never go into git.
aws_region         = "us-east-2"
environment        = "example"
shared_host_ami_id = "ami-0123456789abcdef0"
vpc_id             = "vpc-0123456789abcdef0"

hosts = {
  shared-a = {
    subnet_id = "subnet-0123456789abcdef0"
  }
}

control_trusted_arns = ["arn:aws:iam::123456789012:role/m8trx-dashboard"]
key_admin_arns       = ["arn:aws:iam::123456789012:role/m8trx-terraform"]

shared_customers = {
  acme = {
    external_id = "example-only-0f3c9a7e5b2d4c1a8e6f0b9d3a7c5e1f"
  }
}
