"""Renders every policy of the example environment the way Terraform would, from the HCL.

The example environment's module blocks are evaluated (for two customers, acme and beta,
plus acme-finance whose name starts with another customer's), so each policy comes out of
the template the module really uses, with the arguments the module really passes, and
the wiring between the two modules is the example's own. Only what Terraform learns from
AWS at apply time is supplied here: account id, partition, region and the key ids.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from hcleval import Scope, evaluate_value, module_blocks, variable_defaults

REPO = Path(__file__).resolve().parents[2]
TERRAFORM = REPO / "terraform"
SHARED_HOST_DIR = TERRAFORM / "modules" / "shared-host"
CUSTOMER_ROLE_DIR = TERRAFORM / "modules" / "customer-role"
EXAMPLE_DIR = TERRAFORM / "environments" / "example"

ACCOUNT = "111122223333"
PARTITION = "aws"
REGION = "us-east-2"
DATA = {
    "aws_caller_identity.current.account_id": ACCOUNT,
    "aws_partition.current.partition": PARTITION,
    "aws_region.current.name": REGION,
}
CONTROL_RUNS_AS = f"arn:aws:iam::{ACCOUNT}:role/m8trx-dashboard"
TERRAFORM_ADMIN = f"arn:aws:iam::{ACCOUNT}:role/m8trx-terraform"
CUSTOMERS = {
    "acme": "ext-acme-7f3a9c1e5b2d4f608a1c3e5f7b9d2e4a",
    "beta": "ext-beta-2b4d6f8a0c1e3a5b7d9f1a3c5e7b9d0f",
    "acme-finance": "ext-acme-finance-4c6e8a0b2d4f6a8c0e2b4d6f",
}


@dataclass
class Role:
    """A rendered role: ARN, tags, trust, inline policies and boundary."""

    arn: str
    tags: dict
    trust: dict
    inline: dict = field(default_factory=dict)  # name -> policy document
    boundary: dict | None = None

    @property
    def identity(self) -> list[dict]:
        return list(self.inline.values())


@dataclass
class Customer:
    """Everything the customer-role module makes for one customer."""

    name: str
    external_id: str
    role: Role
    key_arn: str
    key_tags: dict
    key_policy: dict
    module_args: dict


@dataclass
class World:
    """The example environment, rendered."""

    host: Role
    control: Role
    dlm: Role
    host_key_arn: str
    host_key_policy: dict
    host_outputs: dict
    customers: dict[str, Customer]
    shared_host_module_args: dict


def _attr(body: dict, key: str, scope: Scope):
    return evaluate_value(body[key], scope)


def _role(blocks: dict, scope: Scope, address: str) -> tuple[str, dict]:
    body = blocks["resource"][address]
    name = _attr(body, "name", scope)
    path = _attr(body, "path", scope) if "path" in body else "/"
    tags = _attr(body, "tags", scope) if "tags" in body else {}
    return f"arn:{PARTITION}:iam::{ACCOUNT}:role{path}{name}", tags


def _policy(blocks: dict, scope: Scope, address: str, attr: str = "policy") -> dict:
    return json.loads(_attr(blocks["resource"][address], attr, scope))


def _key_arn() -> str:
    return f"arn:{PARTITION}:kms:{REGION}:{ACCOUNT}:key/{uuid.uuid4()}"


def _module_args(example: dict, name: str, scope: Scope) -> dict:
    body = example["module"][name]
    return {
        k: evaluate_value(v, scope)
        for k, v in body.items()
        if k not in ("source", "for_each") and not k.startswith("__")
    }


def build(customers: dict[str, str] | None = None) -> World:
    """Render the example environment for the given customers (name -> external id)."""
    customers = customers or CUSTOMERS
    example = module_blocks(EXAMPLE_DIR)
    example_vars = {
        "aws_region": REGION,
        "environment": "example",
        "shared_host_ami_id": "ami-0123456789abcdef0",
        "vpc_id": "vpc-0123456789abcdef0",
        "hosts": {"shared-a": {"subnet_id": "subnet-0123456789abcdef0"}},
        "control_trusted_arns": [CONTROL_RUNS_AS],
        "key_admin_arns": [TERRAFORM_ADMIN],
        "shared_customers": {n: {"external_id": e, "bucket_name": None} for n, e in customers.items()},
    }
    env_scope = Scope(EXAMPLE_DIR, example_vars)

    # --- shared-host module, with the example's arguments ---
    sh_blocks = module_blocks(SHARED_HOST_DIR)
    sh_args = _module_args(example, "shared_host", env_scope)
    sh_vars = {**variable_defaults(sh_blocks), **sh_args}
    host_key_arn = _key_arn()
    sh_scope = Scope(SHARED_HOST_DIR, sh_vars, sh_blocks["locals"], DATA, {"aws_kms_key.host.arn": host_key_arn})
    host_arn, host_tags = _role(sh_blocks, sh_scope, "aws_iam_role.host")
    control_arn, control_tags = _role(sh_blocks, sh_scope, "aws_iam_role.control")
    dlm_arn, dlm_tags = _role(sh_blocks, sh_scope, "aws_iam_role.dlm")
    host = Role(
        host_arn,
        host_tags,
        json.loads(_attr(sh_blocks["resource"]["aws_iam_role.host"], "assume_role_policy", sh_scope)),
        {"shared_host": _policy(sh_blocks, sh_scope, "aws_iam_role_policy.host")},
        _policy(sh_blocks, sh_scope, "aws_iam_policy.host_boundary"),
    )
    control = Role(
        control_arn,
        control_tags,
        json.loads(_attr(sh_blocks["resource"]["aws_iam_role.control"], "assume_role_policy", sh_scope)),
        {"control_shared_hosts": _policy(sh_blocks, sh_scope, "aws_iam_role_policy.control")},
    )
    dlm = Role(
        dlm_arn, dlm_tags, json.loads(_attr(sh_blocks["resource"]["aws_iam_role.dlm"], "assume_role_policy", sh_scope))
    )
    sh_scope.resources.update(
        {
            "aws_iam_role.control.arn": control_arn,
            "aws_iam_role.host.arn": host_arn,
        }
    )
    host_outputs = {
        name: evaluate_value(sh_blocks["output"][name]["value"], sh_scope)
        for name in ("host_role_arn", "host_role_path", "customer_role_path", "control_role_arn", "tenant_volume_tags")
    }
    host_key_policy = _policy(sh_blocks, sh_scope, "aws_kms_key.host")

    # --- customer-role module, once per customer, with the example's arguments ---
    cr_blocks = module_blocks(CUSTOMER_ROLE_DIR)
    out: dict[str, Customer] = {}
    for name, ext in customers.items():
        resources = {f"module.shared_host.{k}": v for k, v in host_outputs.items()}
        resources["each.key"] = name
        args = _module_args(example, "customer_role", Scope(EXAMPLE_DIR, example_vars, resources=resources))
        cr_vars = {**variable_defaults(cr_blocks), **args}
        key_arn = _key_arn()
        cr_scope = Scope(CUSTOMER_ROLE_DIR, cr_vars, cr_blocks["locals"], DATA, {"aws_kms_key.customer.arn": key_arn})
        role_arn, role_tags = _role(cr_blocks, cr_scope, "aws_iam_role.customer")
        role = Role(
            role_arn,
            role_tags,
            json.loads(_attr(cr_blocks["resource"]["aws_iam_role.customer"], "assume_role_policy", cr_scope)),
            {
                "brain_telemetry_ssm_read": _policy(cr_blocks, cr_scope, "aws_iam_role_policy.brain_telemetry_ssm_read"),
                "own_key_use": _policy(cr_blocks, cr_scope, "aws_iam_role_policy.own_key_use"),
            },
            _policy(cr_blocks, cr_scope, "aws_iam_policy.boundary"),
        )
        out[name] = Customer(
            name=name,
            external_id=ext,
            role=role,
            key_arn=key_arn,
            key_tags=_attr(cr_blocks["resource"]["aws_kms_key.customer"], "tags", cr_scope),
            key_policy=_policy(cr_blocks, cr_scope, "aws_kms_key.customer"),
            module_args=args,
        )
    return World(host, control, dlm, host_key_arn, host_key_policy, host_outputs, out, sh_args)
