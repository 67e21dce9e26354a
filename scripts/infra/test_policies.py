"""The IAM and KMS policy documents themselves, evaluated request by request.

Every policy comes from the Terraform templates as the example environment wires them
(world.py); iameval.py decides like AWS does for one account. Each test names the
property of issue #9 it proves.
"""

import pytest

from iameval import Principal, Request, assume_role, decide
from world import ACCOUNT, CONTROL_RUNS_AS, REGION

SSM = f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter"
LEAVES = ["brain-key", "brain-customer-id", "brain-url", "tailscale-auth-key", "agent-fetch-pat", "agent-ui-password"]
EC2 = f"arn:aws:ec2:{REGION}:{ACCOUNT}"
VIA_EC2 = {"kms:ViaService": f"ec2.{REGION}.amazonaws.com", "kms:CallerAccount": ACCOUNT}
ADMIN = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


def host_principal(w):
    return Principal(ACCOUNT, role_arn=w.host.arn, session_name="i-0abc", tags=w.host.tags)


def customer_principal(c):
    return Principal(
        ACCOUNT, role_arn=c.role.arn, session_name=f"m8trx-{c.name}", tags={**c.role.tags, "Customer": c.name}
    )


def control_principal(w):
    return Principal(ACCOUNT, role_arn=w.control.arn, session_name="control", tags=w.control.tags)


def key_request(principal, action, c, extra=None):
    # AWS puts kms:CallerAccount on every KMS request.
    ctx = {f"aws:ResourceTag/{k}": v for k, v in c.key_tags.items()}
    ctx["kms:CallerAccount"] = principal.account
    ctx.update(extra or {})
    return Request(principal, action, c.key_arn, ctx)


def host_assume(w, c, **over):
    args = dict(
        external_id=c.external_id,
        session_name=f"m8trx-{c.name}",
        session_tags={"Customer": c.name},
        transitive_tag_keys=["Customer"],
        source_identity="i-0abc",
    )
    args.update(over)
    return assume_role(
        host_principal(w), c.role.arn, c.role.tags, c.role.trust, w.host.identity, w.host.boundary, **args
    )


# --- the host role ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "action",
    [
        "ssm:GetParameter",
        "ssm:GetParameters",
        "ssm:GetParametersByPath",
        "ssm:GetParameterHistory",
        "ssm:DescribeParameters",
        "ssm:PutParameter",
        "ssm:DeleteParameter",
    ],
)
def test_host_role_cannot_read_or_write_any_ssm_parameter(world, action):
    targets = [f"{SSM}/m8trx/{n}/{leaf}" for n in world.customers for leaf in LEAVES]
    targets += [f"{SSM}/m8trx/brain-url", f"{SSM}/other/thing", "*"]
    for resource in targets:
        req = Request(host_principal(world), action, resource)
        d = decide(req, world.host.identity, world.host.boundary)
        assert not d, f"host role may {action} {resource}: {d.reason}"
        assert "explicit deny" in d.reason, d.reason
        # Each layer holds on its own: the role's policy without the boundary, and the
        # boundary against a policy that would allow everything.
        assert "explicit deny in identity" in decide(req, world.host.identity, None).reason
        assert "explicit deny in permission boundary" in decide(req, [ADMIN], world.host.boundary).reason


@pytest.mark.parametrize(
    "action",
    [
        "kms:Decrypt",
        "kms:GenerateDataKey",
        "kms:GenerateDataKeyWithoutPlaintext",
        "kms:CreateGrant",
        "kms:Encrypt",
        "kms:ReEncryptFrom",
        "kms:DescribeKey",
        "kms:PutKeyPolicy",
    ],
)
@pytest.mark.parametrize("via", ["direct", "through-ebs"])
def test_host_role_cannot_use_any_customer_key(world, action, via):
    extra = {"kms:GrantIsForAWSResource": "true", **VIA_EC2} if via == "through-ebs" else {}
    for c in world.customers.values():
        req = key_request(host_principal(world), action, c, extra)
        d = decide(req, world.host.identity, world.host.boundary, c.key_policy, kms_key_policy=True)
        assert not d, f"host role may {action} on {c.name}'s key: {d.reason}"
        # Denied by the key policy on its own too, whatever IAM policy the host role gets later.
        d_key_only = decide(req, [ADMIN], None, c.key_policy, kms_key_policy=True)
        assert not d_key_only and "resource policy" in d_key_only.reason, d_key_only.reason


def test_host_role_cannot_use_its_own_platform_key_either(world):
    req = Request(host_principal(world), "kms:Decrypt", world.host_key_arn, {})
    assert not decide(req, world.host.identity, world.host.boundary, world.host_key_policy, kms_key_policy=True)


@pytest.mark.parametrize(
    "action,resource",
    [
        ("ec2:AttachVolume", f"{EC2}:volume/vol-1"),
        ("ec2:CreateVolume", f"{EC2}:volume/*"),
        ("ec2:RunInstances", f"{EC2}:instance/*"),
        ("ec2:ModifyInstanceMetadataOptions", f"{EC2}:instance/i-1"),
        ("ec2:AuthorizeSecurityGroupIngress", f"{EC2}:security-group/sg-1"),
        ("iam:PassRole", f"arn:aws:iam::{ACCOUNT}:role/anything"),
        ("iam:CreateRole", "*"),
        ("kms:CreateKey", "*"),
        ("ssm:SendCommand", f"{EC2}:instance/i-1"),
        ("secretsmanager:GetSecretValue", "*"),
        ("s3:GetObject", "arn:aws:s3:::m8trx-acme-data/x"),
        ("logs:DeleteLogGroup", "*"),
        ("cloudtrail:StopLogging", "*"),
    ],
)
def test_host_role_has_no_infrastructure_rights(world, action, resource):
    req = Request(host_principal(world), action, resource)
    d = decide(req, world.host.identity, world.host.boundary)
    assert not d, f"host role may {action}: {d.reason}"
    # Explicitly, so that a policy attached to the role later cannot grant it either.
    d = decide(req, world.host.identity + [ADMIN], None)
    assert not d and "explicit deny" in d.reason, (action, d.reason)


HOST_EXPLICIT_DENIES = [
    "ec2:CreateVolume", "ec2:TerminateInstances", "iam:CreateUser", "organizations:LeaveOrganization", "s3:PutObject",
    "secretsmanager:GetSecretValue", "ssm:SendCommand", "ssm:StartSession", "ssm:CreateDocument", "ssm:UpdateDocument",
    "cloudtrail:StopLogging", "cloudtrail:DeleteTrail", "cloudtrail:UpdateTrail", "cloudtrail:PutEventSelectors",
    "guardduty:DeleteDetector", "guardduty:DisassociateFromMasterAccount", "guardduty:DisassociateFromAdministratorAccount",
    "guardduty:UpdateDetector", "config:StopConfigurationRecorder", "config:DeleteConfigurationRecorder",
    "config:DeleteDeliveryChannel", "logs:DeleteLogGroup", "logs:DeleteLogStream", "logs:PutRetentionPolicy",
]


@pytest.mark.parametrize("action", HOST_EXPLICIT_DENIES)
def test_host_role_policy_explicitly_denies_infrastructure_and_audit_tampering(world, action):
    d = decide(Request(host_principal(world), action, "*"), world.host.identity + [ADMIN], None)
    assert not d and "explicit deny in identity" in d.reason, (action, d.reason)


SSM_AGENT = [
    ("ssm:UpdateInstanceInformation", "instance"), ("ssm:ListInstanceAssociations", "instance"),
    ("ssm:DescribeAssociation", "instance"), ("ssm:UpdateInstanceAssociationStatus", "instance"),
    ("ssm:GetDocument", "aws-document"), ("ssm:DescribeDocument", "own-document"),
    ("ssmmessages:CreateControlChannel", "*"), ("ssmmessages:CreateDataChannel", "*"),
    ("ssmmessages:OpenControlChannel", "*"), ("ssmmessages:OpenDataChannel", "*"),
    ("ec2messages:AcknowledgeMessage", "*"), ("ec2messages:DeleteMessage", "*"), ("ec2messages:FailMessage", "*"),
    ("ec2messages:GetEndpoint", "*"), ("ec2messages:GetMessages", "*"), ("ec2messages:SendReply", "*"),
]


@pytest.mark.parametrize("action,kind", SSM_AGENT)
def test_host_role_keeps_every_ssm_agent_right_session_manager_and_run_command_need(world, action, kind):
    resource = {
        "instance": f"{EC2}:instance/i-0abc",
        "aws-document": f"arn:aws:ssm:{REGION}::document/AWS-RunShellScript",
        "own-document": f"arn:aws:ssm:{REGION}:{ACCOUNT}:document/m8trx-doc",
        "*": "*",
    }[kind]
    d = decide(Request(host_principal(world), action, resource), world.host.identity, world.host.boundary)
    assert d, (action, d.reason)


def test_host_role_keeps_ssm_agent_and_log_shipping(world):
    for action, res in [
        ("ssm:UpdateInstanceInformation", f"{EC2}:instance/i-0abc"),
        ("ssm:GetDocument", f"arn:aws:ssm:{REGION}::document/AWS-RunShellScript"),
        ("ssmmessages:OpenDataChannel", "*"),
        ("ec2messages:GetMessages", "*"),
    ]:
        d = decide(Request(host_principal(world), action, res), world.host.identity, world.host.boundary)
        assert d, (action, d.reason)
    group = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/m8trx-platform/shared-host/shared/hostd:log-stream:i-1"
    assert decide(Request(host_principal(world), "logs:PutLogEvents", group), world.host.identity, world.host.boundary)
    other = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/m8trx/acme/app:log-stream:x"
    assert not decide(Request(host_principal(world), "logs:PutLogEvents", other), world.host.identity, world.host.boundary)


def test_host_assumes_customer_roles_with_the_right_external_id_and_tag(world):
    for c in world.customers.values():
        d = host_assume(world, c)
        assert d, f"{c.name}: {d.reason}"


def test_host_may_assume_only_roles_carrying_the_customer_tags(world):
    c = world.customers["acme"]
    untagged = {k: v for k, v in c.role.tags.items() if k != "m8trx:role"}
    d = assume_role(host_principal(world), c.role.arn, untagged, c.role.trust, world.host.identity, world.host.boundary,
                    external_id=c.external_id, session_name="m8trx-acme", session_tags={"Customer": "acme"},
                    source_identity="i-0abc")
    assert not d and "caller side" in d.reason, d.reason
    no_customer = {k: v for k, v in c.role.tags.items() if k != "Customer"}
    d = assume_role(host_principal(world), c.role.arn, no_customer, c.role.trust, world.host.identity, world.host.boundary,
                    external_id=c.external_id, session_name="m8trx-acme", session_tags={"Customer": "acme"},
                    source_identity="i-0abc")
    assert not d and "caller side" in d.reason, d.reason


@pytest.mark.parametrize(
    "target",
    ["control", "dlm", f"arn:aws:iam::{ACCOUNT}:role/m8trx-terraform", f"arn:aws:iam::{ACCOUNT}:role/acme-lookalike"],
)
def test_host_cannot_assume_other_roles_even_if_they_trusted_it(world, target):
    arn = {"control": world.control.arn, "dlm": world.dlm.arn}.get(target, target)
    tags = {"Customer": "acme", "m8trx:role": "customer"}  # even with the tags copied
    open_trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": world.host.arn}, "Action": ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"]}]}
    d = assume_role(host_principal(world), arn, tags, open_trust, world.host.identity, world.host.boundary,
                    external_id="x", session_name="m8trx-acme", session_tags={"Customer": "acme"}, source_identity="i-0abc")
    assert not d, d.reason


# --- the customer trust policy -------------------------------------------------------------------


def test_trust_refuses_a_wrong_or_missing_external_id(world):
    acme, beta = world.customers["acme"], world.customers["beta"]
    for ext in [beta.external_id, acme.external_id[:-1], acme.external_id.upper(), "", None]:
        d = host_assume(world, acme, external_id=ext)
        assert not d and "trust policy" in d.reason, (ext, d.reason)


@pytest.mark.parametrize(
    "tags",
    [None, {}, {"Customer": "beta"}, {"Customer": "ACME"}, {"customer": "acme"}, {"Customer": "acme", "Team": "x"}],
    ids=["no-tags", "empty", "other-customer", "case", "key-case", "extra-tag"],
)
def test_trust_refuses_a_missing_or_wrong_customer_session_tag(world, tags):
    d = host_assume(world, world.customers["acme"], session_tags=tags, transitive_tag_keys=None)
    assert not d, d.reason


def test_trust_refuses_other_transitive_tags_wrong_session_name_or_no_source_identity(world):
    acme = world.customers["acme"]
    assert not host_assume(world, acme, transitive_tag_keys=["Customer", "Team"])
    assert not host_assume(world, acme, session_name="m8trx-beta")
    assert not host_assume(world, acme, session_name="anything")
    assert not host_assume(world, acme, source_identity=None)


@pytest.mark.parametrize("who", ["control", "dashboard", "customer-beta", "other-account"])
def test_trust_admits_only_shared_host_roles(world, who):
    acme = world.customers["acme"]
    callers = {
        "control": control_principal(world),
        "dashboard": Principal(ACCOUNT, role_arn=CONTROL_RUNS_AS, session_name="d"),
        "customer-beta": customer_principal(world.customers["beta"]),
        "other-account": Principal("444455556666", role_arn="arn:aws:iam::444455556666:role/m8trx/shared-host/x", session_name="i"),
    }
    allow_all = [{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:*", "Resource": "*"}]}]
    d = assume_role(callers[who], acme.role.arn, acme.role.tags, acme.role.trust, allow_all, None,
                    external_id=acme.external_id, session_name="m8trx-acme", session_tags={"Customer": "acme"},
                    transitive_tag_keys=["Customer"], source_identity="i-0abc")
    assert not d and "trust policy" in d.reason, d.reason


# --- the customer role: SSM scope, own key, permission boundary ------------------------------------


def test_customer_role_reads_its_six_parameters_and_nothing_else(world):
    acme = world.customers["acme"]
    p = customer_principal(acme)
    for leaf in LEAVES:
        for action in ["ssm:GetParameter", "ssm:GetParameters"]:
            d = decide(Request(p, action, f"{SSM}/m8trx/acme/{leaf}"), acme.role.identity, acme.role.boundary)
            assert d, f"{action} /m8trx/acme/{leaf}: {d.reason}"
        for other in ["beta", "acme-finance"]:
            d = decide(Request(p, "ssm:GetParameter", f"{SSM}/m8trx/{other}/{leaf}"), acme.role.identity, acme.role.boundary)
            assert not d, f"acme reads /m8trx/{other}/{leaf}: {d.reason}"
    for action, res in [
        ("ssm:GetParametersByPath", f"{SSM}/m8trx/acme"),
        ("ssm:PutParameter", f"{SSM}/m8trx/acme/brain-key"),
        ("ssm:GetParameter", f"{SSM}/m8trx/brain-url"),
        ("ssm:GetParameter", f"arn:aws:ssm:us-west-2:{ACCOUNT}:parameter/m8trx/acme/brain-key"),
    ]:
        assert not decide(Request(p, action, res), acme.role.identity, acme.role.boundary), (action, res)


def test_brain_telemetry_ssm_read_is_the_platform_statement_scoped_to_the_customer(world):
    for c in world.customers.values():
        doc = c.role.inline["brain_telemetry_ssm_read"]
        (stmt,) = doc["Statement"]
        assert stmt["Sid"] == "ReadOwnBrainTelemetryParams"
        assert stmt["Effect"] == "Allow"
        assert sorted(stmt["Action"]) == ["ssm:GetParameter", "ssm:GetParameters"]
        assert stmt["Resource"] == f"{SSM}/m8trx/{c.name}/*"


def test_customer_uses_its_own_key_but_not_another_customers(world):
    acme, beta = world.customers["acme"], world.customers["beta"]
    p = customer_principal(acme)
    for action in ["kms:Decrypt", "kms:GenerateDataKey", "kms:Encrypt"]:
        d = decide(key_request(p, action, acme), acme.role.identity, acme.role.boundary, acme.key_policy, kms_key_policy=True)
        assert d, f"{action} own key: {d.reason}"
        d = decide(key_request(p, action, beta), acme.role.identity, acme.role.boundary, beta.key_policy, kms_key_policy=True)
        assert not d, f"{action} on beta's key: {d.reason}"
    assert not decide(key_request(p, "kms:CreateGrant", acme), acme.role.identity, acme.role.boundary, acme.key_policy, kms_key_policy=True)


@pytest.mark.parametrize(
    "action,resource",
    [
        ("iam:CreateRole", "*"),
        ("iam:PassRole", "*"),
        ("iam:PutRolePolicy", "*"),
        ("organizations:LeaveOrganization", "*"),
        ("cloudtrail:StopLogging", "*"),
        ("cloudtrail:DeleteTrail", "*"),
        ("guardduty:DeleteDetector", "*"),
        ("config:StopConfigurationRecorder", "*"),
        ("ec2:CreateVpc", "*"),
        ("ec2:DeleteVpc", "*"),
        ("ec2:AuthorizeSecurityGroupIngress", "*"),
        ("ec2:CreateRoute", "*"),
        ("ec2:AttachVolume", "*"),
        ("ssm:SendCommand", "*"),
        ("ssm:StartSession", "*"),
        ("kms:CreateGrant", "*"),
        ("kms:ScheduleKeyDeletion", "*"),
        ("sts:AssumeRole", "*"),
        ("cloudtrail:UpdateTrail", "*"),
        ("cloudtrail:PutEventSelectors", "*"),
        ("guardduty:DisassociateFromMasterAccount", "*"),
        ("guardduty:DisassociateFromAdministratorAccount", "*"),
        ("guardduty:UpdateDetector", "*"),
        ("config:DeleteConfigurationRecorder", "*"),
        ("config:DeleteDeliveryChannel", "*"),
        ("ec2:CreateSubnet", "*"),
        ("ec2:CreateInternetGateway", "*"),
        ("ec2:AttachInternetGateway", "*"),
        ("ec2:CreateVpcPeeringConnection", "*"),
        ("ec2:AcceptVpcPeeringConnection", "*"),
        ("ssm:ResumeSession", "*"),
        ("ssm:CreateDocument", "*"),
        ("ec2:DetachVolume", "*"),
        ("ec2:DeleteVolume", "*"),
        ("ec2:ModifyInstanceAttribute", "*"),
        ("ec2:RunInstances", "*"),
        ("ec2:StopInstances", "*"),
        ("ec2:TerminateInstances", "*"),
        ("kms:PutKeyPolicy", "*"),
        ("kms:DisableKey", "*"),
    ],
)
def test_boundary_explicit_denies_hold_even_against_an_admin_policy(world, action, resource):
    for c in world.customers.values():
        d = decide(Request(customer_principal(c), action, resource), [ADMIN], c.role.boundary)
        assert not d and "explicit deny in permission boundary" in d.reason, (c.name, action, d.reason)


def test_boundary_caps_an_admin_policy_to_the_customers_own_resources(world):
    acme = world.customers["acme"]
    p = customer_principal(acme)
    assert decide(Request(p, "ssm:GetParameter", f"{SSM}/m8trx/acme/brain-key"), [ADMIN], acme.role.boundary)
    for action, res in [
        ("ssm:GetParameter", f"{SSM}/m8trx/beta/brain-key"),
        ("s3:GetObject", "arn:aws:s3:::m8trx-beta-data/x"),
        ("s3:GetObject", "arn:aws:s3:::m8trx-acme-data-extra/x"),
        ("secretsmanager:GetSecretValue", f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:m8trx/beta/x"),
        ("logs:PutLogEvents", f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/m8trx-platform/shared-host/shared/hostd:log-stream:x"),
        ("ec2:DescribeInstances", "*"),
    ]:
        d = decide(Request(p, action, res), [ADMIN], acme.role.boundary)
        assert not d and "boundary" in d.reason, (action, res, d.reason)
    assert decide(Request(p, "s3:GetObject", "arn:aws:s3:::m8trx-acme-data/x"), [ADMIN], acme.role.boundary)


def test_boundary_permits_the_brain_telemetry_read_as_the_platform_documents(world):
    for c in world.customers.values():
        p = customer_principal(c)
        for action in ["ssm:GetParameter", "ssm:GetParameters"]:
            d = decide(Request(p, action, f"{SSM}/m8trx/{c.name}/brain-key"), [], c.role.boundary)
            assert not d and "implicit" in d.reason  # boundary alone grants nothing
            assert decide(Request(p, action, f"{SSM}/m8trx/{c.name}/brain-key"), c.role.identity, c.role.boundary)


# --- control's role and the EBS grant path --------------------------------------------------------------


def test_control_creates_ebs_grants_on_customer_keys_only_for_aws_resources_through_ec2(world):
    p = control_principal(world)
    for c in world.customers.values():
        ok = key_request(p, "kms:CreateGrant", c, {**VIA_EC2, "kms:GrantIsForAWSResource": "true"})
        d = decide(ok, world.control.identity, None, c.key_policy, kms_key_policy=True)
        assert d, f"{c.name}: {d.reason}"
        for extra in [{}, VIA_EC2, {"kms:GrantIsForAWSResource": "true"},
                      {"kms:ViaService": f"s3.{REGION}.amazonaws.com", "kms:GrantIsForAWSResource": "true"}]:
            d = decide(key_request(p, "kms:CreateGrant", c, extra), world.control.identity, None, c.key_policy, kms_key_policy=True)
            assert not d, (c.name, extra, d.reason)
            # The key policy holds on its own, even if control's role were given everything.
            d = decide(key_request(p, "kms:CreateGrant", c, extra), [ADMIN], None, c.key_policy, kms_key_policy=True)
            assert not d, (c.name, extra, "key policy alone", d.reason)


def test_control_never_decrypts_customer_data_directly(world):
    p = control_principal(world)
    for c in world.customers.values():
        for action in ["kms:Decrypt", "kms:GenerateDataKey", "kms:Encrypt"]:
            d = decide(key_request(p, action, c), world.control.identity, None, c.key_policy, kms_key_policy=True)
            assert not d, (c.name, action, d.reason)
            d = decide(key_request(p, action, c), [ADMIN], None, c.key_policy, kms_key_policy=True)
            assert not d, (c.name, action, "key policy alone", d.reason)
        # EBS itself may decrypt the volume's data key on control's behalf (CreateVolume, attach).
        d = decide(key_request(p, "kms:GenerateDataKeyWithoutPlaintext", c, VIA_EC2), world.control.identity, None, c.key_policy, kms_key_policy=True)
        assert d, d.reason


def test_control_attaches_tenant_volumes_only_to_shared_hosts(world):
    p = control_principal(world)
    host = Request(p, "ec2:AttachVolume", f"{EC2}:instance/i-1", {"aws:ResourceTag/m8trx:role": "shared-host"})
    vol = Request(p, "ec2:AttachVolume", f"{EC2}:volume/vol-1", {"aws:ResourceTag/m8trx:role": "tenant-volume"})
    assert decide(host, world.control.identity) and decide(vol, world.control.identity)
    other_instance = Request(p, "ec2:AttachVolume", f"{EC2}:instance/i-2", {"aws:ResourceTag/m8trx:role": "dashboard"})
    root_volume = Request(p, "ec2:AttachVolume", f"{EC2}:volume/vol-2", {"aws:ResourceTag/m8trx:role": "shared-host-root"})
    assert not decide(other_instance, world.control.identity)
    assert not decide(root_volume, world.control.identity)


def test_control_creates_only_encrypted_tagged_volumes_and_runs_commands_only_on_shared_hosts(world):
    p = control_principal(world)
    good = {"ec2:Encrypted": "true", "aws:RequestTag/m8trx:role": "tenant-volume", "aws:RequestTag/Customer": "acme"}
    assert decide(Request(p, "ec2:CreateVolume", f"{EC2}:volume/*", good), world.control.identity)
    assert not decide(Request(p, "ec2:CreateVolume", f"{EC2}:volume/*", {**good, "ec2:Encrypted": "false"}), world.control.identity)
    untagged = {k: v for k, v in good.items() if k != "aws:RequestTag/Customer"}
    assert not decide(Request(p, "ec2:CreateVolume", f"{EC2}:volume/*", untagged), world.control.identity)
    assert decide(Request(p, "ssm:SendCommand", f"{EC2}:instance/i-1", {"ssm:resourceTag/m8trx:role": "shared-host"}), world.control.identity)
    assert not decide(Request(p, "ssm:SendCommand", f"{EC2}:instance/i-9", {"ssm:resourceTag/m8trx:role": "customer"}), world.control.identity)
    assert not decide(Request(p, "ssm:SendCommand", f"arn:aws:ssm:{REGION}::document/AWS-RunPowerShellScript"), world.control.identity)
    for action in ["iam:PassRole", "ec2:RunInstances", "ec2:TerminateInstances", "kms:PutKeyPolicy"]:
        assert not decide(Request(p, action, "*"), world.control.identity), action


def test_only_control_runs_as_control(world):
    trusted = Principal(ACCOUNT, role_arn=CONTROL_RUNS_AS, session_name="dash")
    allow_all = [{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:*", "Resource": "*"}]}]
    ok = assume_role(trusted, world.control.arn, world.control.tags, world.control.trust, allow_all, None,
                     external_id=None, session_name="control")
    assert ok, ok.reason
    for caller in [host_principal(world), customer_principal(world.customers["acme"])]:
        d = assume_role(caller, world.control.arn, world.control.tags, world.control.trust, allow_all, None,
                        external_id=None, session_name="control")
        assert not d, d.reason


def test_platform_key_serves_logs_and_launchers_only(world):
    logs = Principal(ACCOUNT, service=f"logs.{REGION}.amazonaws.com")
    group = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/m8trx-platform/shared-host/shared/audit"
    req = Request(logs, "kms:GenerateDataKey", world.host_key_arn, {"kms:EncryptionContext:aws:logs:arn": group})
    assert decide(req, [], None, world.host_key_policy, kms_key_policy=True)
    req = Request(logs, "kms:GenerateDataKey", world.host_key_arn, {"kms:EncryptionContext:aws:logs:arn": group.replace("m8trx-platform/shared-host", "m8trx/acme")})
    assert not decide(req, [], None, world.host_key_policy, kms_key_policy=True)
    for c in world.customers.values():
        d = decide(Request(customer_principal(c), "kms:Decrypt", world.host_key_arn), [ADMIN], None, world.host_key_policy, kms_key_policy=True)
        assert not d, d.reason


# --- each layer of the key path on its own, and what the roles must still be able to do -------------

PERMISSIVE_KEY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}, "Action": "kms:*", "Resource": "*"}],
}


def test_control_identity_alone_reaches_customer_keys_only_through_ebs(world):
    """Even under a key policy that delegated everything to IAM, control's own policy holds."""
    p = control_principal(world)
    acme = world.customers["acme"]
    grant = {**VIA_EC2, "kms:GrantIsForAWSResource": "true"}
    assert decide(key_request(p, "kms:CreateGrant", acme, grant), world.control.identity, None, PERMISSIVE_KEY, kms_key_policy=True)
    for action, extra in [
        ("kms:CreateGrant", VIA_EC2),
        ("kms:CreateGrant", {"kms:GrantIsForAWSResource": "true"}),
        ("kms:Decrypt", {}),
        ("kms:GenerateDataKeyWithoutPlaintext", {}),
    ]:
        d = decide(key_request(p, action, acme, extra), world.control.identity, None, PERMISSIVE_KEY, kms_key_policy=True)
        assert not d, (action, extra, d.reason)
    other_key = Request(p, "kms:CreateGrant", world.host_key_arn, {**grant, "aws:ResourceTag/m8trx:role": "platform-key", "kms:CallerAccount": ACCOUNT})
    assert not decide(other_key, world.control.identity, None, PERMISSIVE_KEY, kms_key_policy=True)


@pytest.mark.parametrize("who", ["dashboard", "customer-beta", "host"])
def test_no_other_principal_reaches_a_customer_key_even_through_ebs(world, who):
    acme = world.customers["acme"]
    p = {
        "dashboard": Principal(ACCOUNT, role_arn=CONTROL_RUNS_AS, session_name="d"),
        "customer-beta": customer_principal(world.customers["beta"]),
        "host": host_principal(world),
    }[who]
    for action in ["kms:CreateGrant", "kms:Decrypt", "kms:GenerateDataKeyWithoutPlaintext", "kms:Encrypt"]:
        for extra in [{}, {**VIA_EC2, "kms:GrantIsForAWSResource": "true"}]:
            d = decide(key_request(p, action, acme, extra), [ADMIN], None, acme.key_policy, kms_key_policy=True)
            assert not d, (who, action, extra, d.reason)


def test_platform_key_denies_the_host_role_on_its_own_and_launchers_use_it_only_through_ebs(world):
    req = Request(host_principal(world), "kms:Decrypt", world.host_key_arn, {"kms:CallerAccount": ACCOUNT, **VIA_EC2})
    d = decide(req, [ADMIN], None, world.host_key_policy, kms_key_policy=True)
    assert not d and "resource policy" in d.reason, d.reason
    admin = Principal(ACCOUNT, role_arn=world.shared_host_module_args["key_admin_arns"][0], session_name="tf")
    ok = Request(admin, "kms:CreateGrant", world.host_key_arn, {"kms:CallerAccount": ACCOUNT, **VIA_EC2})
    assert decide(ok, [], None, world.host_key_policy, kms_key_policy=True)
    for action in ["kms:Decrypt", "kms:CreateGrant", "kms:GenerateDataKeyWithoutPlaintext"]:
        direct = Request(admin, action, world.host_key_arn, {"kms:CallerAccount": ACCOUNT})
        assert not decide(direct, [ADMIN], None, world.host_key_policy, kms_key_policy=True), action
    assert decide(Request(admin, "kms:ScheduleKeyDeletion", world.host_key_arn, {}), [], None, world.host_key_policy, kms_key_policy=True)


def test_customer_role_can_use_everything_its_boundary_promises(world):
    acme = world.customers["acme"]
    p = customer_principal(acme)
    extra_policy = {  # what an operator may attach to the role; the boundary decides what is left
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": ["s3:*", "logs:*", "secretsmanager:*"], "Resource": "*"}],
    }
    for action, res in [
        ("s3:ListBucket", "arn:aws:s3:::m8trx-acme-data"),
        ("s3:GetBucketLocation", "arn:aws:s3:::m8trx-acme-data"),
        ("s3:PutObject", "arn:aws:s3:::m8trx-acme-data/k"),
        ("s3:GetObject", "arn:aws:s3:::m8trx-acme-data/k"),
        ("s3:DeleteObject", "arn:aws:s3:::m8trx-acme-data/k"),
        ("secretsmanager:GetSecretValue", f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:m8trx/acme/db-AbCdEf"),
        ("logs:CreateLogStream", f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/m8trx/acme/app"),
        ("logs:PutLogEvents", f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/m8trx/acme/app:log-stream:s"),
    ]:
        d = decide(Request(p, action, res), acme.role.identity + [extra_policy], acme.role.boundary)
        assert d, (action, res, d.reason)
    for action in ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey", "kms:ReEncryptFrom", "kms:ReEncryptTo", "kms:DescribeKey"]:
        d = decide(key_request(p, action, acme), acme.role.identity, acme.role.boundary, acme.key_policy, kms_key_policy=True)
        assert d, (action, d.reason)


def test_control_can_do_its_job(world):
    p = control_principal(world)
    tenant = {"aws:ResourceTag/m8trx:role": "tenant-volume"}
    for action, res, ctx in [
        ("ssm:PutParameter", f"{SSM}/m8trx/acme/brain-key", {}),
        ("ssm:GetParameter", f"{SSM}/m8trx/acme/brain-url", {}),
        ("ssm:DeleteParameters", f"{SSM}/m8trx/acme/brain-key", {}),
        ("ssm:AddTagsToResource", f"{SSM}/m8trx/acme/brain-key", {}),
        ("ssm:GetCommandInvocation", "*", {}),
        ("ssm:SendCommand", f"arn:aws:ssm:{REGION}::document/AWS-RunShellScript", {}),
        ("ec2:DeleteVolume", f"{EC2}:volume/vol-1", tenant),
        ("ec2:DetachVolume", f"{EC2}:volume/vol-1", tenant),
        ("ec2:CreateSnapshot", f"{EC2}:volume/vol-1", tenant),
        ("ec2:CreateSnapshot", f"arn:aws:ec2:{REGION}::snapshot/*", {}),
        ("ec2:CreateTags", f"{EC2}:volume/vol-1", {"ec2:CreateAction": "CreateVolume"}),
        ("ec2:CreateTags", f"arn:aws:ec2:{REGION}::snapshot/snap-1", {"ec2:CreateAction": "CreateSnapshot"}),
        ("ec2:DescribeInstances", "*", {}),
        ("ec2:DescribeVolumes", "*", {}),
        ("ec2:DescribeAvailabilityZones", "*", {}),
    ]:
        d = decide(Request(p, action, res, ctx), world.control.identity)
        assert d, (action, res, d.reason)
    for action, res, ctx in [
        ("ssm:PutParameter", f"{SSM}/other/x", {}),
        ("ec2:CreateTags", f"{EC2}:volume/vol-1", {}),
        ("ec2:CreateTags", f"{EC2}:instance/i-1", {"ec2:CreateAction": "CreateVolume"}),
        ("ec2:DeleteVolume", f"{EC2}:volume/vol-2", {"aws:ResourceTag/m8trx:role": "shared-host-root"}),
        ("ec2:CreateVolume", f"{EC2}:volume/*", {"ec2:Encrypted": "true", "aws:RequestTag/Customer": "acme"}),
    ]:
        d = decide(Request(p, action, res, ctx), world.control.identity)
        assert not d, (action, res, d.reason)


@pytest.mark.parametrize("role,service", [("host", "ec2.amazonaws.com"), ("dlm", "dlm.amazonaws.com")])
def test_service_roles_trust_only_their_service(world, role, service):
    r = {"host": world.host, "dlm": world.dlm}[role]
    for svc, ok in [(service, True), ("lambda.amazonaws.com", False), ("ecs-tasks.amazonaws.com", False)]:
        d = assume_role(Principal(ACCOUNT, service=svc), r.arn, r.tags, r.trust, [], None, external_id=None, session_name="s")
        assert bool(d) == ok, (role, svc, d.reason)
    d = assume_role(customer_principal(world.customers["acme"]), r.arn, r.tags, r.trust, [ADMIN], None, external_id=None, session_name="s")
    assert not d, d.reason


def test_control_reads_what_placement_needs_and_keeps_its_ledger_on_shared_hosts_only(world):
    """The calls control makes on the shared path (control/src): GetRole of the customer role
    (its m8trx:external-id tag), DescribeKey of the CMK, DescribeParameters, and the
    m8trx:tenant:<name> reservation tags on the chosen host."""
    p = control_principal(world)
    acme = world.customers["acme"]
    assert acme.role.tags["m8trx:external-id"] == acme.external_id
    assert decide(Request(p, "iam:GetRole", acme.role.arn), world.control.identity)
    assert decide(key_request(p, "kms:DescribeKey", acme), world.control.identity, None, acme.key_policy, kms_key_policy=True)
    assert decide(Request(p, "ssm:DescribeParameters", "*"), world.control.identity)
    host = {"aws:ResourceTag/m8trx:role": "shared-host"}
    for action in ["ec2:CreateTags", "ec2:DeleteTags"]:
        ok = Request(p, action, f"{EC2}:instance/i-1", {**host, "aws:TagKeys": ["m8trx:tenant:acme"]})
        assert decide(ok, world.control.identity), action
        drain = Request(p, action, f"{EC2}:instance/i-1", {**host, "aws:TagKeys": ["m8trx:draining"]})
        assert decide(drain, world.control.identity), (action, "drain")
        for ctx in [
            {**host, "aws:TagKeys": ["m8trx:role"]},
            {**host, "aws:TagKeys": ["m8trx:tenant:acme", "m8trx:max-tenants"]},
            {**host},
            {"aws:ResourceTag/m8trx:role": "dedicated-instance", "aws:TagKeys": ["m8trx:tenant:acme"]},
        ]:
            assert not decide(Request(p, action, f"{EC2}:instance/i-1", ctx), world.control.identity), (action, ctx)
    for action, res in [
        ("iam:GetRole", world.control.arn),
        ("iam:GetRole", world.host.arn),
        ("iam:PassRole", acme.role.arn),
        ("iam:TagRole", acme.role.arn),
        ("iam:UpdateAssumeRolePolicy", acme.role.arn),
    ]:
        assert not decide(Request(p, action, res), world.control.identity), (action, res)
        assert not decide(Request(p, action, res), world.control.identity + [ADMIN]) or action == "iam:GetRole", (action, res)


def test_control_writes_a_customers_secure_parameters_with_its_key_through_ssm_only(world):
    p = control_principal(world)
    acme = world.customers["acme"]
    via_ssm = {"kms:ViaService": f"ssm.{REGION}.amazonaws.com"}
    own = {**via_ssm, "kms:EncryptionContext:PARAMETER_ARN": f"{SSM}/m8trx/acme/brain-key"}
    for action in ["kms:Encrypt", "kms:GenerateDataKey", "kms:Decrypt"]:
        d = decide(key_request(p, action, acme, own), world.control.identity, None, acme.key_policy, kms_key_policy=True)
        assert d, (action, d.reason)
        for ctx in [
            {**via_ssm, "kms:EncryptionContext:PARAMETER_ARN": f"{SSM}/m8trx/beta/brain-key"},
            {**via_ssm, "kms:EncryptionContext:PARAMETER_ARN": f"{SSM}/other/x"},
            via_ssm,
            {"kms:EncryptionContext:PARAMETER_ARN": f"{SSM}/m8trx/acme/brain-key"},
        ]:
            d = decide(key_request(p, action, acme, ctx), [ADMIN], None, acme.key_policy, kms_key_policy=True)
            assert not d, (action, ctx, "key policy alone", d.reason)
    # The customer reads its SecureStrings (SSM decrypts with its key on its behalf).
    c = customer_principal(acme)
    assert decide(key_request(c, "kms:Decrypt", acme, own), acme.role.identity, acme.role.boundary, acme.key_policy, kms_key_policy=True)
    # And the host role still gets nothing, through SSM either.
    d = decide(key_request(host_principal(world), "kms:Decrypt", acme, own), [ADMIN], None, acme.key_policy, kms_key_policy=True)
    assert not d, d.reason


def test_control_seals_job_inputs_under_the_customers_key_with_that_customers_context_only(world):
    """control keeps a job's request (the customer's secrets) sealed under the customer's key:
    only with the job-input context naming that customer, never another context."""
    p = control_principal(world)
    acme = world.customers["acme"]
    own = {"kms:EncryptionContext:m8trx:purpose": "control-job-input", "kms:EncryptionContext:m8trx:customer": "acme"}
    for action in ["kms:GenerateDataKey", "kms:Decrypt"]:
        d = decide(key_request(p, action, acme, own), world.control.identity, None, acme.key_policy, kms_key_policy=True)
        assert d, (action, d.reason)
        for ctx in [
            {**own, "kms:EncryptionContext:m8trx:customer": "beta"},
            {"kms:EncryptionContext:m8trx:customer": "acme"},
            {**own, "kms:EncryptionContext:m8trx:purpose": "volume"},
            {"kms:EncryptionContext:aws:ebs:id": "vol-1"},
        ]:
            d = decide(key_request(p, action, acme, ctx), [ADMIN], None, acme.key_policy, kms_key_policy=True)
            assert not d, (action, ctx, "key policy alone", d.reason)
        # control's own policy holds too, under a key policy that delegated everything to IAM.
        d = decide(key_request(p, action, acme, {"kms:EncryptionContext:m8trx:customer": "acme"}), world.control.identity, None, PERMISSIVE_KEY, kms_key_policy=True)
        assert not d, (action, "identity policy alone", d.reason)
    # Encrypt (data not wrapped by a data key) and everyone else stay refused.
    assert not decide(key_request(p, "kms:Encrypt", acme, own), world.control.identity, None, acme.key_policy, kms_key_policy=True)
    for who in [customer_principal(world.customers["beta"]), host_principal(world)]:
        d = decide(key_request(who, "kms:Decrypt", acme, own), [ADMIN], None, acme.key_policy, kms_key_policy=True)
        assert not d, d.reason


def test_control_moves_a_volume_between_zones_through_its_own_snapshots_only(world):
    """A move to another zone snapshots the tenant volume, makes a volume from the snapshot
    there and deletes the snapshot afterwards: only snapshots tagged as a move's."""
    p = control_principal(world)
    snap = f"arn:aws:ec2:{REGION}::snapshot/snap-1"
    move_snap = {"aws:ResourceTag/m8trx:role": "tenant-snapshot"}
    for action in ["ec2:CreateVolume", "ec2:DeleteSnapshot"]:
        assert decide(Request(p, action, snap, move_snap), world.control.identity), action
        for ctx in [{}, {"aws:ResourceTag/m8trx:role": "tenant-volume"}, {"aws:ResourceTag/m8trx:role": "dlm-backup"}]:
            assert not decide(Request(p, action, snap, ctx), world.control.identity), (action, ctx)
    # The new volume itself is still only an encrypted, tagged tenant volume.
    tagged = {"ec2:Encrypted": "true", "aws:RequestTag/m8trx:role": "tenant-volume", "aws:RequestTag/Customer": "acme"}
    assert decide(Request(p, "ec2:CreateVolume", f"{EC2}:volume/*", tagged), world.control.identity)
    assert not decide(Request(p, "ec2:CreateVolume", f"{EC2}:volume/*", {**tagged, "ec2:Encrypted": "false"}), world.control.identity)
