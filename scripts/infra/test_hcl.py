"""Terraform and Packer files: canonical formatting, parsing, template wiring, settings."""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from hcleval import load, module_blocks, template_placeholders, unquote
from world import CUSTOMER_ROLE_DIR, EXAMPLE_DIR, REPO, SHARED_HOST_DIR

HCL_FILES = sorted(
    p
    for root in (REPO / "terraform", REPO / "packer")
    for p in root.rglob("*")
    if p.suffix in (".tf", ".tfvars") or p.name.endswith(".pkr.hcl")
)
TF_FILES = [p for p in HCL_FILES if p.suffix == ".tf"]
POLICY_FILES = sorted((REPO / "terraform").rglob("policies/*.json*"))


def rel(p: Path) -> str:
    return str(p.relative_to(REPO))


def test_there_is_something_to_check():
    assert len(TF_FILES) >= 12 and any(p.name.endswith(".pkr.hcl") for p in HCL_FILES) and len(POLICY_FILES) >= 11


def test_every_hcl_file_is_canonically_formatted():
    """hclwrite.Format (what terraform fmt / packer fmt apply) must leave every file unchanged."""
    node_path = os.environ.get("M8TRX_INFRA_NODE_PATH")
    assert node_path, "M8TRX_INFRA_NODE_PATH is not set: run the checks through scripts/check-infra"
    r = subprocess.run(
        ["node", str(Path(__file__).parent / "hclfmt.js"), "--check", *map(str, HCL_FILES)],
        env={**os.environ, "NODE_PATH": node_path},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("path", HCL_FILES, ids=rel)
def test_every_hcl_file_parses(path):
    doc = load(path)
    assert doc, f"{rel(path)} parsed to nothing"


@pytest.mark.parametrize("path", POLICY_FILES, ids=rel)
def test_every_policy_template_is_used_with_exactly_its_variables(path):
    module_dir = path.parent.parent
    main = "\n".join(p.read_text() for p in module_dir.glob("*.tf"))
    calls = re.findall(r'(templatefile|file)\("\$\{path\.module\}/policies/' + re.escape(path.name) + r'"(?:, \{(.*?)\n  \}\))?', main, re.S)
    assert calls, f"{rel(path)} is not used by {rel(module_dir)}"
    text = path.read_text()
    for fn, body in calls:
        if fn == "file":
            assert not template_placeholders(text), f"{rel(path)} is read with file() but has placeholders"
            json.loads(text)
            continue
        passed = set(re.findall(r"^\s*(\w+)\s*=", body, re.M))
        assert passed == template_placeholders(text), f"{rel(path)}: passed {sorted(passed)}, template uses {sorted(template_placeholders(text))}"


def _regex_of(condition: str) -> str:
    m = re.search(r'regex\("((?:[^"\\]|\\.)*)"', condition)
    assert m, condition
    return m.group(1).encode().decode("unicode_escape")


@pytest.mark.parametrize(
    "name,ok",
    [("acme", True), ("abc", True), ("a" * 32, True), ("acme-finance", True), ("a1-2", True),
     ("ab", False), ("a" * 33, False), ("1acme", False), ("Acme", False), ("acme-", False), ("ac_me", False), ("-acme", False)],
)
def test_customer_name_validation_matches_the_platform_rule(name, ok):
    """Same rule as spec::CustomerName::parse: 3-32 of [a-z0-9-], starts with a letter, no trailing dash."""
    cond = module_blocks(CUSTOMER_ROLE_DIR)["variable"]["name"]["validation"][0]["condition"]
    assert (re.fullmatch(_regex_of(cond), name) is not None) == ok


def test_role_paths_agree_between_the_modules():
    sh = module_blocks(SHARED_HOST_DIR)
    cr = module_blocks(CUSTOMER_ROLE_DIR)
    assert unquote(sh["variable"]["customer_role_path"]["default"]) == unquote(cr["variable"]["role_path"]["default"])
    assert unquote(sh["locals"]["host_role_path"]) == unquote(cr["variable"]["shared_host_role_path"]["default"])


@pytest.mark.parametrize("module_name,module_dir", [("shared_host", SHARED_HOST_DIR), ("customer_role", CUSTOMER_ROLE_DIR)])
def test_example_passes_every_required_variable_and_no_unknown_one(module_name, module_dir):
    declared = module_blocks(module_dir)["variable"]
    required = {n for n, b in declared.items() if "default" not in b}
    call = module_blocks(EXAMPLE_DIR)["module"][module_name]
    passed = {k for k in call if k not in ("source", "for_each") and not k.startswith("__")}
    assert required <= passed, f"missing: {sorted(required - passed)}"
    assert passed <= set(declared), f"unknown: {sorted(passed - set(declared))}"


def test_every_variable_and_output_is_documented():
    for d in (SHARED_HOST_DIR, CUSTOMER_ROLE_DIR, EXAMPLE_DIR):
        b = module_blocks(d)
        for kind in ("variable", "output"):
            for name, body in b[kind].items():
                assert len(unquote(body.get("description", ""))) > 15, f"{rel(d)} {kind} {name} has no description"


def test_instances_require_imdsv2_with_hop_limit_1_and_encrypted_root():
    inst = module_blocks(SHARED_HOST_DIR)["resource"]["aws_instance.host"]
    md = inst["metadata_options"][0]
    assert unquote(md["http_tokens"]) == "required"
    assert md["http_put_response_hop_limit"] == 1
    assert unquote(md["instance_metadata_tags"]) == "enabled"
    root = inst["root_block_device"][0]
    assert root["encrypted"] is True and "kms_key_id" in root
    assert "user_data" not in inst


def test_security_group_admits_only_80_and_443():
    sg = module_blocks(SHARED_HOST_DIR)["resource"]["aws_security_group.host"]
    ports = sorted((r["from_port"], r["to_port"], unquote(r["protocol"])) for r in sg["ingress"])
    assert ports == [(80, 80, "tcp"), (443, 443, "tcp")]
    others = [a for a in module_blocks(SHARED_HOST_DIR)["resource"] if "security_group_rule" in a or "ingress_rule" in a]
    assert not others, f"extra ingress rules: {others}"


def test_dlm_snapshots_tenant_volumes_daily_at_0300_keeping_14():
    b = module_blocks(SHARED_HOST_DIR)
    dlm = b["resource"]["aws_dlm_lifecycle_policy.tenant_volumes"]["policy_details"][0]
    assert dlm["target_tags"] == "${local.tenant_volume_tags}"
    assert {unquote(k): unquote(v) for k, v in b["locals"]["tenant_volume_tags"].items()} == {"m8trx:role": "tenant-volume"}
    assert unquote(b["variable"]["snapshot_time_utc"]["default"]) == "03:00"
    assert b["variable"]["snapshot_retain_count"]["default"] == 14


CHECKOV_SKIP = re.compile(r"#\s*checkov:skip=(CKV2?_[A-Z0-9_]+):(.*)")


def test_every_checkov_skip_is_written_with_a_justification():
    skips = []
    for p in TF_FILES:
        for line in p.read_text().splitlines():
            if "checkov:skip" in line:
                m = CHECKOV_SKIP.search(line)
                assert m, f"{rel(p)}: malformed skip {line.strip()!r}"
                skips.append((rel(p), m.group(1), m.group(2).strip()))
    from render_checkov import RENDERED_SKIPS

    skips += [("rendered", k, v) for k, v in RENDERED_SKIPS.items()]
    for where, check, why in skips:
        assert len(why.split()) >= 12, f"{where}: skip of {check} needs a real justification, got {why!r}"
    readme = (REPO / "terraform" / "README.md").read_text()
    for _, check, _ in skips:
        assert check in readme, f"skip of {check} is not listed in terraform/README.md"


TAGGABLE = {"aws_kms_key", "aws_iam_role", "aws_iam_policy", "aws_iam_instance_profile", "aws_instance", "aws_eip",
            "aws_security_group", "aws_cloudwatch_log_group", "aws_dlm_lifecycle_policy"}


@pytest.mark.parametrize("module_dir", [SHARED_HOST_DIR, CUSTOMER_ROLE_DIR], ids=lambda d: d.name)
def test_every_taggable_resource_carries_the_module_tags(module_dir):
    b = module_blocks(module_dir)
    assert "m8trx:managed-by" in b["locals"]["tags"] and "var.tags" in b["locals"]["tags"]
    for address, body in b["resource"].items():
        if address.split(".")[0] in TAGGABLE:
            assert "local.tags" in str(body.get("tags", "")), f"{address} does not carry local.tags"
    if module_dir == CUSTOMER_ROLE_DIR:
        assert "Customer = var.name" in b["locals"]["tags"]


def test_example_tfvars_satisfy_the_module_validations():
    tfvars = load(EXAMPLE_DIR / "example.tfvars")
    cr = module_blocks(CUSTOMER_ROLE_DIR)["variable"]
    sh = module_blocks(SHARED_HOST_DIR)["variable"]
    name_re = _regex_of(cr["name"]["validation"][0]["condition"])
    ext_re = _regex_of(cr["external_id"]["validation"][0]["condition"])
    for name, c in tfvars["shared_customers"].items():
        ext = unquote(c["external_id"])
        assert re.fullmatch(name_re, unquote(name)) and re.fullmatch(ext_re, ext) and 32 <= len(ext) <= 256
    assert re.fullmatch(_regex_of(sh["ami_id"]["validation"][0]["condition"]), unquote(tfvars["shared_host_ami_id"]))
    host_re = _regex_of(sh["hosts"]["validation"][0]["condition"])
    assert all(re.fullmatch(host_re, unquote(h)) for h in tfvars["hosts"])
    arn_re = _regex_of(sh["control_trusted_arns"]["validation"][0]["condition"])
    assert all(re.match(arn_re, unquote(a)) for a in tfvars["control_trusted_arns"])
