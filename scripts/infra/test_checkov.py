"""checkov on terraform/ (modules through the example environment) and on the rendered
policy documents (checkov cannot evaluate templatefile, see render_checkov.py)."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from render_checkov import RENDERED_SKIPS, render
from world import REPO


def run_checkov(directory: Path, skips: list[str]) -> dict:
    exe = os.environ.get("M8TRX_CHECKOV")
    assert exe and Path(exe).exists(), "M8TRX_CHECKOV is not set: run the checks through scripts/check-infra"
    cmd = [exe, "-d", str(directory), "--framework", "terraform", "--skip-download", "-o", "json"]
    if skips:
        cmd += ["--skip-check", ",".join(skips)]
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.stdout.strip(), f"checkov printed nothing (exit {r.returncode}): {r.stderr[-2000:]}"
    out = json.loads(r.stdout)
    reports = out if isinstance(out, list) else [out]
    results = {"passed": [], "failed": [], "skipped": []}
    for rep in reports:
        res = rep.get("results", {})
        for kind in results:
            results[kind] += res.get(f"{kind}_checks", [])
    return results


def describe(checks):
    return "\n".join(f"{c['check_id']} {c['resource']} {c['file_path']}:{c['file_line_range']} {c.get('check_name','')}" for c in checks)


@pytest.mark.parametrize("target", ["terraform", "rendered-policies"])
def test_checkov_finds_no_failed_check(target, tmp_path):
    if target == "terraform":
        results = run_checkov(REPO / "terraform", [])
    else:
        render(tmp_path)
        results = run_checkov(tmp_path, sorted(RENDERED_SKIPS))
    print(f"checkov {target}: {len(results['passed'])} passed, {len(results['failed'])} failed, {len(results['skipped'])} skipped")
    assert not results["failed"], "checkov failed checks:\n" + describe(results["failed"])
    assert len(results["passed"]) >= 50, f"checkov ran too few checks on {target}: {len(results['passed'])}"
    if target == "rendered-policies":
        ids = {c["check_id"] for c in results["passed"]}
        # The policy-document checks really ran on the rendered text.
        assert {"CKV_AWS_62", "CKV_AWS_63", "CKV_AWS_290", "CKV_AWS_355", "CKV_AWS_61", "CKV_AWS_33"} <= ids, sorted(ids)
