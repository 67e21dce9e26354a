"""The Packer template, the systemd units and the firewall rules of the shared-host AMI.

`systemd-analyze verify` needs systemd as PID 1 (not the case in the test environment), so
the units are parsed here and their hardening keys asserted; the builder runs
systemd-analyze verify, iptables-restore --test and apparmor_parser on the real image
(packer/scripts/40-verify.sh).
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from hcleval import load, unquote
from world import REPO

PACKER = REPO / "packer"
TEMPLATE = PACKER / "shared-host.pkr.hcl"
UNITS = PACKER / "files" / "systemd"
# Files issue #8 writes; the template installs them. Checked once they exist.
ISSUE_8_FILES = {
    "packer/files/audit/m8trx-shared-host.rules",
    "packer/files/sysctl/99-m8trx-shared-host.conf",
    "seccomp/tenant.json",
    "apparmor/tenant.profile.tmpl",
}


@pytest.fixture(scope="module")
def template():
    return load(TEMPLATE)


def _resolve(expr: str, tpl: dict) -> str:
    """Expand ${path.root}, ${local.x}, ${var.x} (defaults) in a template string to a repo path."""
    locals_ = {k: unquote(v) for blk in tpl["locals"] for k, v in blk.items() if isinstance(v, str)}
    vars_ = {unquote(n): unquote(b.get("default", "")) for blk in tpl["variable"] for n, b in blk.items()}
    s = unquote(expr)
    for _ in range(4):
        s = re.sub(r"\$\{local\.(\w+)\}", lambda m: unquote(locals_[m.group(1)]), s)
        s = re.sub(r"\$\{var\.(\w+)\}", lambda m: "${path.root}/" + vars_[m.group(1)] if not vars_[m.group(1)].startswith("/") else vars_[m.group(1)], s)
        if s.startswith("${local.") or s.startswith("${var."):
            continue
    s = s.replace("${path.root}", str(PACKER))
    return str(Path(s).resolve())


def _uploads(tpl) -> list[str]:
    out = []
    for prov in tpl["build"][0]["provisioner"]:
        for kind, body in prov.items():
            if unquote(kind) == "file":
                out += [_resolve(s, tpl) for s in body.get("sources", [body.get("source")]) if s]
    return out


def test_source_is_ubuntu_jammy_from_canonical_with_imdsv2_and_encrypted_snapshots(template):
    (src,) = [b for blk in template["source"] for b in blk.values()]
    body = src['"shared_host"']
    flt = body["source_ami_filter"][0]
    assert "ubuntu-jammy-22.04-amd64-server" in unquote(flt["filters"]["name"])
    assert [unquote(o) for o in flt["owners"]] == ["099720108477"]
    assert body["encrypt_boot"] is True
    assert unquote(body["imds_support"]) == "v2.0"
    md = body["metadata_options"][0]
    assert unquote(md["http_tokens"]) == "required" and md["http_put_response_hop_limit"] == 1
    assert unquote(body["ssh_interface"]) == "session_manager", "the builder must need no SSH ingress"
    assert body["launch_block_device_mappings"][0]["encrypted"] is True


def test_every_uploaded_file_exists_or_is_an_issue_8_file(template):
    uploads = _uploads(template)
    binaries = {"hostd", "sni-proxy", "cred-broker"}
    pending = []
    for path in uploads:
        relp = str(Path(path).relative_to(REPO)) if path.startswith(str(REPO)) else path
        if Path(path).name in binaries:
            assert relp.startswith("target/release/"), relp  # built by `make build` before packer
            continue
        if relp in ISSUE_8_FILES and not Path(path).exists():
            pending.append(relp)
            continue
        assert Path(path).is_file(), f"the template uploads {relp}, which does not exist"
    assert set(ISSUE_8_FILES) <= {str(Path(p).relative_to(REPO)) for p in uploads if p.startswith(str(REPO))}
    if pending:
        print(f"issue #8 files not written yet (the template references them): {pending}")


def test_every_file_under_packer_files_is_uploaded(template):
    uploads = set(_uploads(template))
    for p in (PACKER / "files").rglob("*"):
        if p.is_file():
            assert str(p.resolve()) in uploads, f"{p.relative_to(REPO)} is never uploaded by the template"


def test_every_provisioning_script_exists_and_is_strict(template):
    prov = [b for p in template["build"][0]["provisioner"] for k, b in p.items() if unquote(k) == "shell" and "scripts" in b]
    scripts = [Path(_resolve(s, template)) for s in prov[0]["scripts"]]
    assert [s.name for s in scripts] == sorted(s.name for s in scripts)
    for s in scripts:
        text = s.read_text()
        assert text.startswith("#!/usr/bin/env bash") and "set -euxo pipefail" in text, s.name


def test_install_paths_of_profiles_audit_rules_and_sysctls():
    text = "".join((PACKER / "scripts" / n).read_text() for n in ["20-harden.sh", "30-m8trx.sh"])
    for dest in [
        "/etc/m8trx/seccomp/tenant.json",
        "/etc/m8trx/apparmor/tenant.profile.tmpl",
        "/etc/audit/rules.d/m8trx-shared-host.rules",
        "/etc/sysctl.d/99-m8trx-shared-host.conf",
        "/usr/local/bin/",
        "/etc/systemd/system/$unit",
    ]:
        assert dest in text, dest
    for unit in UNITS.glob("*.service"):
        assert unit.name in text, f"{unit.name} is not installed by 30-m8trx.sh"


def need(tool: str) -> str:
    path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
    assert path, f"{tool} not found: scripts/test-env installs it (make test runs infra-check after test-env)"
    return path


def test_the_builders_apparmor_rendering_compiles(tmp_path):
    """40-verify.sh renders the template with a sample tenant and compiles it; do the same here."""
    tmpl = REPO / "apparmor" / "tenant.profile.tmpl"
    verify = (PACKER / "scripts" / "40-verify.sh").read_text()
    m = re.search(r"^(sed .*?)\s+/etc/m8trx/apparmor/tenant\.profile\.tmpl", verify, re.S | re.M)
    assert m, "40-verify.sh no longer renders the AppArmor template with sed"
    rendered = subprocess.run(["bash", "-c", m.group(1).rstrip().rstrip("\\") + ' "$1"', "sed", str(tmpl)], capture_output=True, text=True, check=True).stdout
    assert "{{" not in rendered, f"placeholders left after the builder's rendering: {set(re.findall(r'{{[A-Z_]+}}', rendered))}"
    (tmp_path / "m8trx-tenant-sample").write_text(rendered)
    r = subprocess.run([need("apparmor_parser"), "--skip-kernel-load", "--skip-cache", "-Q", str(tmp_path / "m8trx-tenant-sample")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("tool,name", [("iptables-restore", "host.rules"), ("ip6tables-restore", "host6.rules")])
def test_firewall_rules_load_with_iptables_restore_test(tool, name, tmp_path):
    """iptables-restore --test checks every rule against this kernel's tables and matches
    without committing. The broker user exists only on the image, so it is swapped for nobody."""
    text = (PACKER / "files" / "iptables" / name).read_text().replace("--uid-owner m8trx-broker", "--uid-owner nobody")
    (tmp_path / name).write_text(text)
    r = subprocess.run([need(tool), "--test", "--noflush", str(tmp_path / name)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# --- systemd units ---------------------------------------------------------------------------

KNOWN = {
    "Unit": {"Description", "Documentation", "After", "Before", "Wants", "Requires", "BindsTo", "DefaultDependencies",
             "StartLimitIntervalSec", "StartLimitBurst"},
    "Service": {"Type", "User", "Group", "EnvironmentFile", "ExecStart", "ExecStop", "Restart", "RestartSec", "RemainAfterExit", "KillMode",
                "TimeoutStartSec",
                "Delegate", "TasksMax", "LimitNOFILE", "UMask", "StateDirectory", "StateDirectoryMode", "RuntimeDirectory",
                "RuntimeDirectoryMode", "RuntimeDirectoryPreserve", "LogsDirectory", "ReadWritePaths", "AmbientCapabilities",
                "CapabilityBoundingSet", "NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices",
                "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups", "ProtectClock",
                "ProtectHostname", "ProtectProc", "ProcSubset", "RestrictNamespaces", "RestrictRealtime", "RestrictSUIDSGID",
                "RemoveIPC", "LockPersonality", "MemoryDenyWriteExecute", "SystemCallArchitectures", "SystemCallFilter",
                "SystemCallErrorNumber", "RestrictAddressFamilies", "DevicePolicy", "KeyringMode"},
    "Install": {"WantedBy"},
    "Scope": {"TimeoutStopSec"},
}
BOOLS = {"NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices", "ProtectKernelTunables", "ProtectKernelModules",
         "ProtectKernelLogs", "ProtectControlGroups", "ProtectClock", "ProtectHostname", "RestrictNamespaces",
         "RestrictRealtime", "RestrictSUIDSGID", "RemoveIPC", "LockPersonality", "MemoryDenyWriteExecute", "Delegate",
         "RemainAfterExit", "DefaultDependencies", "RuntimeDirectoryPreserve"}


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """systemd unit syntax: [Section], Key=Value lines (repeatable), # and ; comments."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        m = re.fullmatch(r"\[(\w+)\]", line)
        if m:
            section = m.group(1)
            assert section in KNOWN, f"{path.name}:{n}: unknown section [{section}]"
            assert section not in out, f"{path.name}:{n}: section [{section}] twice"
            out[section] = {}
            continue
        assert section, f"{path.name}:{n}: key outside a section"
        assert "=" in line, f"{path.name}:{n}: not Key=Value: {line!r}"
        key, value = (s.strip() for s in line.split("=", 1))
        assert key in KNOWN[section], f"{path.name}:{n}: {key} is not a known [{section}] key (typo?)"
        if key in BOOLS:
            assert value in ("yes", "no", "true", "false"), f"{path.name}:{n}: {key}={value} is not a boolean"
        out[section].setdefault(key, []).append(value)
    return out


UNIT_FILES = sorted(UNITS.glob("*.service"))


@pytest.mark.parametrize("path", UNIT_FILES, ids=lambda p: p.name)
def test_unit_parses_and_every_exec_is_an_absolute_path(path):
    u = parse_unit(path)
    assert {"Unit", "Service", "Install"} <= set(u)
    for key in ("ExecStart", "ExecStop"):
        for cmd in u["Service"].get(key, []):
            assert cmd.lstrip("-").startswith("/"), f"{path.name}: {key} must be absolute: {cmd}"
    for dep in u["Unit"].get("Requires", []) + u["Unit"].get("BindsTo", []):
        for name in dep.split():
            if name.startswith(("m8trx-", "hostd", "sni-proxy", "cred-broker")):
                assert (UNITS / name).exists(), f"{path.name} requires {name}, which is not shipped"


def test_container_scopes_stop_in_docker_stop_time_and_the_drop_in_is_installed():
    """Without the drop-in a reboot waits systemd's 90 s for each container whose PID 1 ignores
    SIGTERM (the VM tier saw it); 30-m8trx.sh installs it for every docker-<id>.scope."""
    u = parse_unit(UNITS / "docker-scope-stop.conf")
    assert u == {"Scope": {"TimeoutStopSec": ["10s"]}}
    text = (PACKER / "scripts" / "30-m8trx.sh").read_text()
    assert "/etc/systemd/system/docker-.scope.d/10-m8trx-stop.conf" in text


def test_instance_env_retries_imds_within_its_start_timeout():
    """sni-proxy requires m8trx-instance-env: a first failure would fail sni-proxy's start for
    good, so the script retries, and the unit's start timeout outlasts the script's wait."""
    script = (PACKER / "files" / "m8trx" / "m8trx-instance-env").read_text()
    m = re.search(r"M8TRX_IMDS_WAIT:-(\d+)", script)
    assert m and "until fetch" in script
    unit = parse_unit(UNITS / "m8trx-instance-env.service")["Service"]
    assert int(unit["TimeoutStartSec"][0]) > int(m.group(1))


HARDENED = {
    "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
    "PrivateDevices": "yes", "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes", "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes", "ProtectClock": "yes", "ProtectHostname": "yes", "RestrictNamespaces": "yes",
    "RestrictSUIDSGID": "yes", "LockPersonality": "yes", "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native", "ProtectProc": "invisible", "DevicePolicy": "closed",
}


@pytest.mark.parametrize("name,user", [("sni-proxy", "m8trx-sni"), ("cred-broker", "m8trx-broker")])
def test_unprivileged_daemons_keep_only_net_bind_service(name, user):
    s = parse_unit(UNITS / f"{name}.service")["Service"]
    assert s["User"] == [user] and s["Group"] == [user]
    assert s["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert s["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    for key, want in HARDENED.items():
        assert s.get(key) == [want], f"{name}: {key}={s.get(key)} (want {want})"
    assert s["SystemCallFilter"][0] == "@system-service"
    assert any(f.startswith("~") and "@privileged" in f and "@mount" in f for f in s["SystemCallFilter"])
    # Whatever comes back after the deny list is only what the daemon itself needs.
    assert all(f.startswith(("@system-service", "~")) or f == "capset" for f in s["SystemCallFilter"])
    assert set(s["RestrictAddressFamilies"][0].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}


def test_cred_broker_listens_on_the_link_local_address_of_its_dummy_interface():
    broker = parse_unit(UNITS / "cred-broker.service")
    assert "--listen 169.254.170.23:80" in broker["Service"]["ExecStart"][0]
    assert "m8trx-broker-if.service" in broker["Unit"]["Requires"][0]
    assert "m8trx-broker-if.service" in broker["Unit"]["After"][0]
    iface = parse_unit(UNITS / "m8trx-broker-if.service")["Service"]
    cmds = "\n".join(iface["ExecStart"])
    assert "type dummy" in cmds and "169.254.170.23/32 dev m8trx-broker" in cmds
    assert iface["CapabilityBoundingSet"] == ["CAP_NET_ADMIN"]


def test_sni_proxy_listens_on_the_instance_address_not_the_wildcard():
    """A wildcard :80 listener and the broker's 169.254.170.23:80 cannot both be bound."""
    u = parse_unit(UNITS / "sni-proxy.service")
    assert u["Service"]["EnvironmentFile"] == ["/run/m8trx-instance.env"]
    assert "m8trx-instance-env.service" in u["Unit"]["Requires"][0]
    script = (PACKER / "files" / "m8trx" / "m8trx-instance-env").read_text()
    assert "SNI_PROXY_LISTEN_TLS=%s:443" in script and "SNI_PROXY_LISTEN_HTTP=%s:80" in script
    assert "--listen" not in u["Service"]["ExecStart"][0]


def test_hostd_runs_as_root_without_the_capabilities_it_never_needs():
    s = parse_unit(UNITS / "hostd.service")["Service"]
    assert s.get("User", ["root"]) == ["root"]
    caps = set(s["CapabilityBoundingSet"][0].split())
    for never in ["CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_TIME", "CAP_SYS_BOOT", "CAP_BPF", "CAP_PERFMON",
                  "CAP_SYSLOG", "CAP_AUDIT_CONTROL", "CAP_LINUX_IMMUTABLE", "CAP_MAC_OVERRIDE", "CAP_WAKE_ALARM"]:
        assert never not in caps, never
    assert {"CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_MAC_ADMIN"} <= caps
    # Tenant engines are units of their own (m8trx-engine-<name>.service in the tenant's slice),
    # so hostd.service needs no delegated subtree and keeps systemd's default: stopping hostd
    # kills hostd's own processes, never a tenant.
    assert "Delegate" not in s and "KillMode" not in s
    assert s["EnvironmentFile"] == ["-/run/m8trx-instance.env", "-/etc/m8trx/hostd.env"]
    assert "m8trx-firewall.service" in parse_unit(UNITS / "hostd.service")["Unit"]["Requires"][0]
    # Options that put the service in a mount namespace of its own (its tenant-volume mounts
    # would then be invisible to the tenant engines) or under a device policy.
    for private in ["ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "PrivateMounts",
                    "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups",
                    "ProtectClock", "ProtectHostname", "ProtectProc", "ProcSubset", "ReadOnlyPaths",
                    "InaccessiblePaths", "ReadWritePaths", "DeviceAllow", "DevicePolicy", "MountFlags"]:
        assert private not in s, f"hostd.service must not set {private}"


# --- firewall rules ----------------------------------------------------------------------------


def parse_rules(path: Path) -> dict[str, list[str]]:
    """iptables-restore format: *table, :CHAIN policy, -A rules, COMMIT."""
    tables: dict[str, list[str]] = {}
    table = None
    chains: set[str] = set()
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            assert table is None, f"{path.name}:{n}: table without COMMIT before it"
            table = line[1:]
            tables[table] = []
            chains = set()
        elif line.startswith(":"):
            name = line[1:].split()[0]
            # hostd owns M8TRX-FORWARD, M8TRX-INPUT, M8TRX-POSTROUTING and M8T-*: the host rules
            # keep to M8TRX-HOST-* so that neither loader ever flushes the other's chains.
            assert name.startswith("M8TRX-HOST-"), f"{path.name}:{n}: only M8TRX-HOST-* chains may be declared (--noflush)"
            chains.add(name)
        elif line == "COMMIT":
            table = None
        else:
            assert table and line.startswith("-A "), f"{path.name}:{n}: unexpected {line!r}"
            chain = line.split()[1]
            assert chain in chains, f"{path.name}:{n}: rule in undeclared chain {chain}"
            tables[table].append(line)
    assert table is None, f"{path.name}: missing final COMMIT"
    return tables


def test_imds_is_dropped_for_every_tenant_bridge_before_any_accept():
    v4 = parse_rules(PACKER / "files" / "iptables" / "host.rules")
    v6 = parse_rules(PACKER / "files" / "iptables" / "host6.rules")
    assert "-A M8TRX-HOST-RAW -i m8t-+ -d 169.254.169.254/32 -j DROP" in v4["raw"]
    assert "-A M8TRX-HOST-RAW -i m8t-+ -d fd00:ec2::254/128 -j DROP" in v6["raw"]
    assert "-A M8TRX-HOST-FWD -i m8t-+ -d 169.254.0.0/16 -j DROP" in v4["filter"]
    assert "-A M8TRX-HOST-FWD -i m8t-+ -o m8t-+ -j DROP" in v4["filter"]
    script = (PACKER / "files" / "m8trx" / "m8trx-firewall").read_text()
    assert "hook \"$tool\" raw PREROUTING M8TRX-HOST-RAW" in script and "-I \"$3\" 1" in script


def test_tenant_bridges_reach_only_the_broker_on_the_host():
    rules = parse_rules(PACKER / "files" / "iptables" / "host.rules")["filter"]
    tenant_input = [r for r in rules if r.startswith("-A M8TRX-HOST-IN -i m8t-+")]
    accepts = [r for r in tenant_input if r.endswith("-j ACCEPT") and "ESTABLISHED" not in r]
    assert accepts == ["-A M8TRX-HOST-IN -i m8t-+ -d 169.254.170.23/32 -p tcp -m tcp --dport 80 -j ACCEPT"]
    assert tenant_input[-1] == "-A M8TRX-HOST-IN -i m8t-+ -j DROP"


def test_only_root_and_the_broker_user_reach_the_imds_from_the_host():
    rules = [r for r in parse_rules(PACKER / "files" / "iptables" / "host.rules")["filter"] if "M8TRX-HOST-OUT" in r]
    assert rules == [
        "-A M8TRX-HOST-OUT -d 169.254.169.254/32 -m owner --uid-owner 0 -j RETURN",
        "-A M8TRX-HOST-OUT -d 169.254.169.254/32 -m owner --uid-owner m8trx-broker -j RETURN",
        "-A M8TRX-HOST-OUT -d 169.254.169.254/32 -j DROP",
    ]


@pytest.mark.parametrize("unit,crate,subcommand", [
    ("hostd.service", "hostd", "Serve"),
    ("sni-proxy.service", "sni-proxy", None),
    ("cred-broker.service", "cred-broker", "Serve"),
])
def test_unit_command_lines_use_flags_the_binaries_define(unit, crate, subcommand):
    """Each --flag of ExecStart is a clap field of the binary (no drift between unit and CLI)."""
    cmd = parse_unit(UNITS / unit)["Service"]["ExecStart"][0].split()
    assert cmd[0] == f"/usr/local/bin/{crate}"
    src = (REPO / crate / "src" / "main.rs").read_text()
    if subcommand:
        assert subcommand.lower() in cmd, f"{unit} does not run `{crate} {subcommand.lower()}`"
        assert re.search(rf"\b{subcommand}\b\s*[({{]", src), f"{crate} has no {subcommand} subcommand"
    for arg in cmd[1:]:
        if arg.startswith("--"):
            field = arg[2:].replace("-", "_")
            assert re.search(rf"\b{field}\s*:", src), f"{unit}: {arg} is not an argument of {crate} (src/main.rs)"
