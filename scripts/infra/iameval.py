"""A small, strict IAM policy evaluator for the subset of the policy language m8trx uses.

It answers "would AWS allow this request?" for one account, following the documented
evaluation logic: an explicit Deny anywhere wins; otherwise an identity policy or a
resource policy must Allow; a permission boundary caps identity-based allows and
resource-policy allows that name the role (not those naming the session); KMS keys are
special in that the key policy must allow, directly or by delegating to the account.

Anything outside the supported subset (an unknown condition operator, NotPrincipal, a
policy variable it cannot resolve) raises UnsupportedPolicy instead of guessing, so a
test can never pass because the evaluator silently ignored part of a policy.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Iterable


class UnsupportedPolicy(Exception):
    """The policy uses something this evaluator does not model; fail loudly."""


@dataclass(frozen=True)
class Principal:
    """Who makes the request: an IAM role session (or a service)."""

    account: str
    role_arn: str | None = None  # aws:PrincipalArn of a role session
    session_name: str | None = None
    service: str | None = None  # e.g. ec2.amazonaws.com for service principals
    tags: dict = field(default_factory=dict)  # aws:PrincipalTag/* (role tags + session tags)

    @property
    def session_arn(self) -> str | None:
        """The assumed-role ARN STS gives the session."""
        if not self.role_arn:
            return None
        partition = self.role_arn.split(":")[1]
        name = self.role_arn.rsplit("/", 1)[1]
        return f"arn:{partition}:sts::{self.account}:assumed-role/{name}/{self.session_name or 'session'}"


@dataclass
class Request:
    """One API call: action, resource ARN, and the request context keys."""

    principal: Principal
    action: str
    resource: str
    context: dict = field(default_factory=dict)  # condition keys: str or list of str

    def full_context(self) -> dict:
        """Context keys including the ones AWS derives from the principal."""
        ctx = dict(self.context)
        p = self.principal
        if p.role_arn:
            ctx.setdefault("aws:PrincipalArn", p.role_arn)
        if p.service:
            ctx.setdefault("aws:PrincipalServiceName", p.service)
        ctx.setdefault("aws:PrincipalAccount", p.account)
        for k, v in p.tags.items():
            ctx.setdefault(f"aws:PrincipalTag/{k}", v)
        return {k.lower(): v for k, v in ctx.items()}


SUPPORTED_OPERATORS = {
    "StringEquals",
    "StringNotEquals",
    "StringEqualsIgnoreCase",
    "StringLike",
    "StringNotLike",
    "ArnEquals",
    "ArnLike",
    "ArnNotEquals",
    "ArnNotLike",
    "Bool",
    "Null",
}
NEGATED = {"StringNotEquals", "StringNotLike", "ArnNotEquals", "ArnNotLike"}
STATEMENT_KEYS = {"Sid", "Effect", "Principal", "Action", "NotAction", "Resource", "NotResource", "Condition"}


def _as_list(v) -> list:
    if v is None:
        return []
    return v if isinstance(v, list) else [v]


def wildcard_match(pattern: str, value: str, *, case_sensitive: bool) -> bool:
    """IAM wildcard match: '*' any run of characters, '?' exactly one; nothing else special."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    flags = 0 if case_sensitive else re.IGNORECASE
    return re.fullmatch(regex, value, flags) is not None


_VAR = re.compile(r"\$\{([^}]*)\}")


def substitute_policy_variables(text: str, ctx: dict) -> str | None:
    """Replace ${aws:...} policy variables from the request context; None if one is missing."""
    missing = False

    def repl(m: re.Match) -> str:
        nonlocal missing
        key = m.group(1)
        if key in ("*", "?", "$"):
            return key
        v = ctx.get(key.lower())
        if v is None or isinstance(v, list):
            missing = True
            return ""
        return str(v)

    out = _VAR.sub(repl, text)
    return None if missing else out


def _match_values(op: str, ctx_values: list[str], policy_values: list[str], ctx: dict) -> bool:
    """Whether one context value matches any policy value under `op` (un-negated form)."""
    base = op.replace("Not", "") if op in NEGATED else op
    for cv in ctx_values:
        for pv in policy_values:
            pv = substitute_policy_variables(str(pv), ctx)
            if pv is None:
                continue
            if base == "StringEquals" and cv == pv:
                return True
            if base == "StringEqualsIgnoreCase" and cv.lower() == pv.lower():
                return True
            if base in ("StringLike", "ArnLike", "ArnEquals") and wildcard_match(pv, cv, case_sensitive=True):
                return True
            if base == "Bool" and cv.lower() == pv.lower():
                return True
    return False


def condition_holds(condition: dict, ctx: dict) -> bool:
    """All operators, all keys within an operator must hold (AND); values within a key are OR."""
    for raw_op, block in condition.items():
        qualifier = None
        op = raw_op
        if ":" in op:
            qualifier, op = op.split(":", 1)
            if qualifier not in ("ForAllValues", "ForAnyValue"):
                raise UnsupportedPolicy(f"condition set operator {qualifier!r}")
        if_exists = op.endswith("IfExists")
        if if_exists:
            op = op[: -len("IfExists")]
        if op not in SUPPORTED_OPERATORS:
            raise UnsupportedPolicy(f"condition operator {raw_op!r}")
        for key, pvals in block.items():
            pvals = _as_list(pvals)
            present = key.lower() in ctx
            if op == "Null":
                want_null = str(pvals[0]).lower() == "true"
                if present == want_null:
                    return False
                continue
            cvals = [str(v) for v in _as_list(ctx.get(key.lower()))]
            if qualifier == "ForAllValues":
                # AWS: true when the key is absent or empty (the known trap; pair it with Null).
                if not cvals:
                    continue
                if op in NEGATED:
                    ok = all(not _match_values(op, [cv], pvals, ctx) for cv in cvals)
                else:
                    ok = all(_match_values(op, [cv], pvals, ctx) for cv in cvals)
                if not ok:
                    return False
                continue
            if qualifier == "ForAnyValue":
                if not cvals:
                    return False
                if op in NEGATED:
                    ok = any(not _match_values(op, [cv], pvals, ctx) for cv in cvals)
                else:
                    ok = _match_values(op, cvals, pvals, ctx)
                if not ok:
                    return False
                continue
            if not present:
                if if_exists or op in NEGATED:
                    continue
                return False
            if len(cvals) != 1:
                raise UnsupportedPolicy(f"single-valued operator {raw_op} on multivalued key {key}")
            matched = _match_values(op, cvals, pvals, ctx)
            if op in NEGATED:
                matched = not matched
            if not matched:
                return False
    return True


def principal_matches(element, principal: Principal) -> bool:
    """Whether a resource policy's Principal element names this principal."""
    if element == "*":
        return True
    if not isinstance(element, dict):
        raise UnsupportedPolicy(f"Principal element {element!r}")
    for kind, values in element.items():
        for v in _as_list(values):
            if kind == "AWS":
                if v == "*":
                    return True
                if re.fullmatch(r"\d{12}", v) or re.fullmatch(r"arn:[^:]+:iam::\d{12}:root", v):
                    acct = v if v.isdigit() else v.split(":")[4]
                    if acct == principal.account and principal.service is None:
                        return True
                elif v in (principal.role_arn, principal.session_arn):
                    return True
            elif kind == "Service":
                if principal.service == v:
                    return True
            else:
                raise UnsupportedPolicy(f"Principal type {kind!r}")
    return False


def _how_named(element, principal: Principal) -> str:
    """How a matching Principal element names the principal: 'session' (its assumed-role
    session ARN, or '*'), 'role' (the role ARN, or a service principal), or 'account'
    (the account, which delegates the decision to the principal's own policies)."""
    if element == "*":
        return "session"
    if principal.service and principal.service in _as_list(element.get("Service")):
        return "role"
    values = _as_list(element.get("AWS"))
    if "*" in values or (principal.session_arn and principal.session_arn in values):
        return "session"
    if principal.role_arn and principal.role_arn in values:
        return "role"
    return "account"


def statement_applies(stmt: dict, req: Request, ctx: dict, *, resource_policy: bool) -> bool:
    """Whether one statement's principal, action, resource and condition all match."""
    unknown = set(stmt) - STATEMENT_KEYS
    if unknown:
        raise UnsupportedPolicy(f"statement keys {sorted(unknown)}")
    if resource_policy:
        if "Principal" not in stmt:
            raise UnsupportedPolicy("resource policy statement without Principal")
        if not principal_matches(stmt["Principal"], req.principal):
            return False
    elif "Principal" in stmt:
        raise UnsupportedPolicy("identity policy statement with a Principal")
    if "Action" in stmt:
        if not any(wildcard_match(a, req.action, case_sensitive=False) for a in _as_list(stmt["Action"])):
            return False
    elif "NotAction" in stmt:
        if any(wildcard_match(a, req.action, case_sensitive=False) for a in _as_list(stmt["NotAction"])):
            return False
    else:
        raise UnsupportedPolicy("statement without Action or NotAction")
    if "Resource" in stmt or "NotResource" in stmt:
        patterns = _as_list(stmt.get("Resource", stmt.get("NotResource")))
        resolved = [substitute_policy_variables(p, ctx) for p in patterns]
        hit = any(p is not None and wildcard_match(p, req.resource, case_sensitive=True) for p in resolved)
        if ("Resource" in stmt) != hit:
            return False
    elif not resource_policy:
        raise UnsupportedPolicy("identity policy statement without Resource")
    return condition_holds(stmt.get("Condition", {}), ctx)


def evaluate(policy: dict, req: Request, *, resource_policy: bool = False) -> tuple[bool, bool, list[str]]:
    """(explicitly denied, allowed, matching Sids) for one policy document."""
    if policy.get("Version") != "2012-10-17":
        raise UnsupportedPolicy(f"policy Version {policy.get('Version')!r}")
    ctx = req.full_context()
    denied = allowed = False
    sids = []
    for stmt in _as_list(policy["Statement"]):
        if stmt["Effect"] not in ("Allow", "Deny"):
            raise UnsupportedPolicy(f"Effect {stmt['Effect']!r}")
        if statement_applies(stmt, req, ctx, resource_policy=resource_policy):
            sids.append(stmt.get("Sid", "?"))
            if stmt["Effect"] == "Deny":
                denied = True
            else:
                allowed = True
    return denied, allowed, sids


def _resource_allow(policy: dict | None, req: Request) -> tuple[bool, set[str]]:
    """(explicitly denied, how the allowing statements name the principal)."""
    if policy is None:
        return False, set()
    ctx = req.full_context()
    denied = False
    named: set[str] = set()
    for stmt in _as_list(policy["Statement"]):
        if not statement_applies(stmt, req, ctx, resource_policy=True):
            continue
        if stmt["Effect"] == "Deny":
            denied = True
        else:
            named.add(_how_named(stmt["Principal"], req.principal))
    return denied, named


@dataclass
class Decision:
    """The outcome and why, so a failing test can say which policy decided."""

    allowed: bool
    reason: str

    def __bool__(self) -> bool:
        return self.allowed


def decide(
    req: Request,
    identity: Iterable[dict] = (),
    boundary: dict | None = None,
    resource_policy: dict | None = None,
    *,
    kms_key_policy: bool = False,
) -> Decision:
    """Single-account AWS evaluation for a role session.

    An explicit Deny anywhere denies. A resource policy naming the session ARN allows on its
    own; one naming the role ARN allows within the permission boundary (the identity policy
    is not needed); one naming the account only delegates, so the identity policy must allow,
    within the boundary. Without a resource policy the identity policy must allow within the
    boundary. A KMS key policy must allow in one of those three ways; an identity policy
    alone never reaches a key.
    """
    identity = list(identity)
    for pol in identity:
        d, _, sids = evaluate(pol, req)
        if d:
            return Decision(False, f"explicit deny in identity policy ({sids})")
    if boundary is not None:
        d, b_allow, sids = evaluate(boundary, req)
        if d:
            return Decision(False, f"explicit deny in permission boundary ({sids})")
    else:
        b_allow = True
    r_denied, named = _resource_allow(resource_policy, req)
    if r_denied:
        return Decision(False, "explicit deny in resource policy")
    id_allow = any(evaluate(pol, req)[1] for pol in identity)
    if kms_key_policy and resource_policy is None:
        raise UnsupportedPolicy("a KMS decision needs the key policy")
    if "session" in named:
        return Decision(True, "resource policy names the session")
    if "role" in named:
        if b_allow:
            return Decision(True, "resource policy names the role, within the boundary")
        return Decision(False, "resource policy names the role but the permission boundary does not allow")
    if kms_key_policy and "account" not in named:
        return Decision(False, "key policy does not allow this principal")
    if id_allow and b_allow:
        return Decision(True, "identity policy allows within the boundary" + (" (key policy delegates)" if kms_key_policy else ""))
    if id_allow and not b_allow:
        return Decision(False, "identity policy allows but the permission boundary does not")
    return Decision(False, "no statement allows (implicit deny)")


def assume_role(
    caller: Principal,
    role_arn: str,
    role_tags: dict,
    trust_policy: dict,
    caller_identity: Iterable[dict],
    caller_boundary: dict | None,
    *,
    external_id: str | None,
    session_name: str,
    session_tags: dict | None = None,
    transitive_tag_keys: list[str] | None = None,
    source_identity: str | None = None,
) -> Decision:
    """sts:AssumeRole as AWS authorises it: AssumeRole, plus TagSession when tags are passed
    and SetSourceIdentity when a source identity is set, each allowed by the role's trust
    policy and, on the caller's side, as decide() describes for a resource policy."""
    ctx: dict = {"sts:RoleSessionName": session_name}
    for k, v in role_tags.items():
        ctx[f"aws:ResourceTag/{k}"] = v
    if external_id is not None:
        ctx["sts:ExternalId"] = external_id
    if session_tags:
        ctx["aws:TagKeys"] = list(session_tags)
        for k, v in session_tags.items():
            ctx[f"aws:RequestTag/{k}"] = v
    if transitive_tag_keys:
        ctx["sts:TransitiveTagKeys"] = list(transitive_tag_keys)
    if source_identity is not None:
        ctx["sts:SourceIdentity"] = source_identity
    actions = ["sts:AssumeRole"]
    if session_tags:
        actions.append("sts:TagSession")
    if source_identity is not None:
        actions.append("sts:SetSourceIdentity")
    identity = list(caller_identity)
    for action in actions:
        req = Request(caller, action, role_arn, ctx)
        r_denied, named = _resource_allow(trust_policy, req)
        if r_denied:
            return Decision(False, f"{action}: explicit deny in trust policy")
        if not named:
            return Decision(False, f"{action}: trust policy does not allow")
        if "session" in named:
            continue
        if "role" in named:
            # The trust names the caller's role: its own policy is not needed, its boundary is.
            if caller_boundary is not None:
                d, b_allow, sids = evaluate(caller_boundary, req)
                if d or not b_allow:
                    return Decision(False, f"{action}: caller side: permission boundary does not allow ({sids})")
            for pol in identity:
                d, _, sids = evaluate(pol, req)
                if d:
                    return Decision(False, f"{action}: caller side: explicit deny in identity policy ({sids})")
            continue
        caller_side = decide(req, identity, caller_boundary)
        if not caller_side:
            return Decision(False, f"{action}: caller side: {caller_side.reason}")
    return Decision(True, "trust policy and caller policies allow " + ", ".join(actions))
