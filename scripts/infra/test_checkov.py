"""checkov on terraform/ (modules through the example environment) and on the rendered
policy documents (checkov cannot evaluate templatefile, see render_checkov.py). The two
scans run concurrently."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from render_checkov import RENDERED_SKIPS, render
from world import REPO


def start_checkov(directory: Path, skips: list[str]) -> subprocess.Popen:
    exe = os.environ.get("M8TRX_CHECKOV")
    assert exe and Path(exe).exists(), "M8TRX_CHECKOV is not set: run the checks through scripts/check-infra"
    cmd = [exe, "-d", str(directory), "--framework", "terraform", "--skip-download", "-o", "json"]
    if skips:
        cmd += ["--skip-check", ",".join(skips)]
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def collect(proc: subprocess.Popen) -> dict:
    stdout, stderr = proc.communicate(timeout=600)
    assert stdout.strip(), f"checkov printed nothing (exit {proc.returncode}): {stderr[-2000:]}"
    out = json.loads(stdout)
    reports = out if isinstance(out, list) else [out]
    results = {"passed": [], "failed": [], "skipped": [], "parsing_errors": 0}
    for rep in reports:
        results["parsing_errors"] += rep.get("summary", {}).get("parsing_errors", 0)
        res = rep.get("results", {})
        for kind in ("passed", "failed", "skipped"):
            results[kind] += res.get(f"{kind}_checks", [])
    return results


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    rendered = tmp_path_factory.mktemp("rendered-policies")
    render(rendered)
    procs = {
        "terraform": start_checkov(REPO / "terraform", []),
        "rendered-policies": start_checkov(rendered, sorted(RENDERED_SKIPS)),
    }
    return {name: collect(p) for name, p in procs.items()}


def describe(checks):
    return "\n".join(
        f"{c['check_id']} {c['resource']} {c['file_path']}:{c['file_line_range']} {c.get('check_name', '')}" for c in checks
    )


@pytest.mark.parametrize("target", ["terraform", "rendered-policies"])
def test_checkov_finds_no_failed_check(scans, target):
    results = scans[target]
    print(f"checkov {target}: {len(results['passed'])} passed, {len(results['failed'])} failed, {len(results['skipped'])} skipped")
    assert not results["failed"], "checkov failed checks:\n" + describe(results["failed"])
    assert results["parsing_errors"] == 0, f"checkov could not parse {results['parsing_errors']} file(s) of {target}"
    assert len(results["passed"]) >= 50, f"checkov ran too few checks on {target}: {len(results['passed'])}"
    ids = {c["check_id"] for c in results["passed"]}
    if target == "rendered-policies":
        # The policy-document checks really ran on the rendered text.
        assert {"CKV_AWS_62", "CKV_AWS_63", "CKV_AWS_290", "CKV_AWS_355", "CKV_AWS_61", "CKV_AWS_33"} <= ids, sorted(ids)
    else:
        # IMDSv2, encrypted EBS, KMS rotation, log retention and encryption were all checked.
        assert {"CKV_AWS_79", "CKV_AWS_8", "CKV_AWS_7", "CKV_AWS_338", "CKV_AWS_158"} <= ids, sorted(ids)
        skipped = {c["check_id"] for c in results["skipped"]}
        assert skipped == {"CKV_AWS_260", "CKV_AWS_382"}, f"unexpected skips: {sorted(skipped)}"
