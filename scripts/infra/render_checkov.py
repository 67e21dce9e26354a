"""Writes every rendered policy of the example environment as plain Terraform for checkov.

checkov cannot evaluate templatefile(), so on terraform/ its IAM and KMS policy checks see
no document at all (they pass vacuously). This renders each document (world.py) into a
heredoc on a resource of the right type, so checkov's policy checks run on the real text.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import world as world_mod

# Checks skipped on the rendered policies only, each with its reason (listed in terraform/README.md).
RENDERED_SKIPS: dict[str, str] = {}


def _heredoc(doc: dict) -> str:
    return "<<POLICY\n" + json.dumps(doc, indent=2, sort_keys=True) + "\nPOLICY"


def render(out_dir: Path) -> Path:
    w = world_mod.build()
    blocks = []

    def role(tf_name, r, name):
        blocks.append(
            f'resource "aws_iam_role" "{tf_name}" {{\n  name = "{name}"\n'
            f"  assume_role_policy = {_heredoc(r.trust)}\n}}\n"
        )
        for pol_name, doc in r.inline.items():
            blocks.append(
                f'resource "aws_iam_role_policy" "{tf_name}_{pol_name}" {{\n  name = "{pol_name}"\n'
                f"  role = aws_iam_role.{tf_name}.id\n  policy = {_heredoc(doc)}\n}}\n"
            )
        if r.boundary is not None:
            blocks.append(
                f'resource "aws_iam_policy" "{tf_name}_boundary" {{\n  name = "{name}-boundary"\n'
                f"  policy = {_heredoc(r.boundary)}\n}}\n"
            )

    def key(tf_name, doc):
        blocks.append(
            f'resource "aws_kms_key" "{tf_name}" {{\n  description = "{tf_name}"\n'
            f"  enable_key_rotation = true\n  deletion_window_in_days = 30\n  policy = {_heredoc(doc)}\n}}\n"
        )

    role("host", w.host, "m8trx-shared-host")
    role("control", w.control, "m8trx-control")
    role("dlm", w.dlm, "m8trx-dlm")
    key("platform", w.host_key_policy)
    for name, c in w.customers.items():
        tf = name.replace("-", "_")
        role(f"customer_{tf}", c.role, f"m8trx-{name}")
        key(f"customer_{tf}", c.key_policy)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "rendered_policies.tf"
    target.write_text("\n".join(blocks))
    return target


if __name__ == "__main__":
    print(render(Path(sys.argv[1])))
