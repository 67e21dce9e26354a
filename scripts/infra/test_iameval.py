"""The evaluator's own semantics, on cases whose AWS answer is documented."""

import pytest

from iameval import Principal, Request, UnsupportedPolicy, assume_role, condition_holds, decide, wildcard_match

P = Principal("111122223333", role_arn="arn:aws:iam::111122223333:role/r", session_name="s")


def pol(*stmts):
    return {"Version": "2012-10-17", "Statement": list(stmts)}


def allow(action, resource="*", **cond):
    s = {"Effect": "Allow", "Action": action, "Resource": resource}
    if cond:
        s["Condition"] = cond
    return s


def test_wildcards():
    assert wildcard_match("ssm:*Parameter*", "ssm:GetParametersByPath", case_sensitive=False)
    assert not wildcard_match("ssm:*Parameter*", "ssm:SendCommand", case_sensitive=False)
    assert wildcard_match("arn:aws:ssm:*:*:parameter/m8trx/acme/*", "arn:aws:ssm:us-east-2:1:parameter/m8trx/acme/brain-key", case_sensitive=True)
    assert not wildcard_match("arn:aws:ssm:*:*:parameter/m8trx/acme/*", "arn:aws:ssm:us-east-2:1:parameter/m8trx/acme-finance/x", case_sensitive=True)
    assert wildcard_match("a?c", "abc", case_sensitive=True) and not wildcard_match("a?c", "abbc", case_sensitive=True)
    assert wildcard_match("S3:GET*", "s3:GetObject", case_sensitive=False)


def test_explicit_deny_beats_allow_and_implicit_deny_is_the_default():
    req = Request(P, "s3:GetObject", "arn:aws:s3:::b/k")
    assert decide(req, [pol(allow("s3:*"))])
    assert not decide(req, [pol(allow("s3:*"), {"Effect": "Deny", "Action": "s3:Get*", "Resource": "*"})])
    assert not decide(req, [pol(allow("ec2:*"))])


def test_boundary_caps_identity_allows():
    req = Request(P, "s3:GetObject", "arn:aws:s3:::b/k")
    assert not decide(req, [pol(allow("*"))], pol(allow("ssm:*")))
    assert decide(req, [pol(allow("*"))], pol(allow("s3:GetObject")))


def test_not_action():
    stmt = {"Effect": "Deny", "NotAction": "sts:*", "Resource": "*"}
    assert not decide(Request(P, "s3:GetObject", "x"), [pol(allow("*"), stmt)])
    assert decide(Request(P, "sts:AssumeRole", "x"), [pol(allow("*"), stmt)])


def test_for_all_values_is_true_on_a_missing_key_the_known_trap():
    cond = {"ForAllValues:StringEquals": {"aws:TagKeys": ["Customer"]}}
    assert condition_holds(cond, {})
    assert condition_holds(cond, {"aws:tagkeys": ["Customer"]})
    assert not condition_holds(cond, {"aws:tagkeys": ["Customer", "Team"]})


def test_null_ifexists_and_negated_operators_on_missing_keys():
    assert condition_holds({"Null": {"k": "true"}}, {})
    assert not condition_holds({"Null": {"k": "false"}}, {})
    assert condition_holds({"Null": {"k": "false"}}, {"k": "v"})
    assert not condition_holds({"StringEquals": {"k": "v"}}, {})
    assert condition_holds({"StringEqualsIfExists": {"k": "v"}}, {})
    assert condition_holds({"StringNotEquals": {"k": "v"}}, {})
    assert not condition_holds({"StringNotEquals": {"k": "v"}}, {"k": "v"})
    assert condition_holds({"StringEquals": {"k": ["a", "v"]}}, {"k": "v"})


def test_policy_variables_resolve_from_the_request_context():
    p = Principal("1", role_arn="arn:aws:iam::1:role/r", tags={"Customer": "acme"})
    doc = pol(allow("ssm:GetParameter", "arn:aws:ssm:*:*:parameter/m8trx/${aws:PrincipalTag/Customer}/*"))
    assert decide(Request(p, "ssm:GetParameter", "arn:aws:ssm:r:1:parameter/m8trx/acme/x"), [doc])
    assert not decide(Request(p, "ssm:GetParameter", "arn:aws:ssm:r:1:parameter/m8trx/beta/x"), [doc])


def test_unsupported_constructs_fail_loudly():
    with pytest.raises(UnsupportedPolicy):
        decide(Request(P, "a:b", "x"), [pol(allow("a:b", DateGreaterThan={"aws:CurrentTime": "2020-01-01"}))])
    with pytest.raises(UnsupportedPolicy):
        decide(Request(P, "a:b", "x"), [pol({"Effect": "Allow", "NotPrincipal": {"AWS": "x"}, "Action": "*", "Resource": "*"})])
    with pytest.raises(UnsupportedPolicy):
        decide(Request(P, "a:b", "x"), [{"Version": "2008-10-17", "Statement": []}])


def test_assume_role_needs_tag_session_when_tags_are_passed():
    trust = pol({"Effect": "Allow", "Principal": {"AWS": P.role_arn}, "Action": "sts:AssumeRole"})
    caller = [pol(allow("sts:*"))]
    kw = dict(external_id=None, session_name="s")
    assert assume_role(P, "arn:aws:iam::1:role/t", {}, trust, caller, None, **kw)
    assert not assume_role(P, "arn:aws:iam::1:role/t", {}, trust, caller, None, session_tags={"Customer": "a"}, **kw)
    assert not assume_role(P, "arn:aws:iam::1:role/t", {}, trust, caller, None, source_identity="h", **kw)


def test_resource_policy_naming_role_session_or_account():
    """Same account: naming the session allows alone; naming the role needs the boundary but
    not the identity policy; naming the account delegates to the identity policy."""
    def res(principal):
        return pol({"Effect": "Allow", "Principal": {"AWS": principal}, "Action": "s3:GetObject", "Resource": "*"})

    req = Request(P, "s3:GetObject", "arn:aws:s3:::b/k")
    narrow = pol(allow("ssm:*"))
    assert decide(req, [], narrow, res(P.session_arn))
    assert decide(req, [], None, res(P.role_arn))
    assert not decide(req, [], narrow, res(P.role_arn))
    assert not decide(req, [], None, res("arn:aws:iam::111122223333:root"))
    assert decide(req, [pol(allow("s3:*"))], None, res("arn:aws:iam::111122223333:root"))
    # A KMS key is reached only through its key policy.
    assert not decide(req, [pol(allow("*"))], None, pol({"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::1:role/x"}, "Action": "*", "Resource": "*"}), kms_key_policy=True)
