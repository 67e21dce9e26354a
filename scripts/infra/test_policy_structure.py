"""Every rendered document is a policy AWS would accept, in the shape the evaluator models."""

import json

import pytest

from iameval import STATEMENT_KEYS, SUPPORTED_OPERATORS

IDENTITY, RESOURCE = "identity", "resource"


def documents(w):
    docs = []
    for label, role in [("host", w.host), ("control", w.control), ("dlm", w.dlm)] + [
        (f"customer {n}", c.role) for n, c in w.customers.items()
    ]:
        docs.append((f"{label} trust", RESOURCE, role.trust))
        docs += [(f"{label} {name}", IDENTITY, d) for name, d in role.inline.items()]
        if role.boundary is not None:
            docs.append((f"{label} boundary", IDENTITY, role.boundary))
    docs.append(("platform key", RESOURCE, w.host_key_policy))
    docs += [(f"customer {n} key", RESOURCE, c.key_policy) for n, c in w.customers.items()]
    return docs


def test_every_rendered_document_is_well_formed(world):
    docs = documents(world)
    assert len(docs) >= 20
    for label, kind, doc in docs:
        assert set(doc) == {"Version", "Statement"} and doc["Version"] == "2012-10-17", label
        assert isinstance(doc["Statement"], list) and doc["Statement"], label
        sids = [s.get("Sid") for s in doc["Statement"]]
        assert all(sids) and len(set(sids)) == len(sids), f"{label}: every statement needs its own Sid"
        for st in doc["Statement"]:
            where = f"{label} / {st.get('Sid')}"
            assert set(st) <= STATEMENT_KEYS, where
            assert st.get("Effect") in ("Allow", "Deny"), where
            assert ("Action" in st) != ("NotAction" in st), where
            if kind == IDENTITY:
                assert "Principal" not in st and ("Resource" in st) != ("NotResource" in st), where
            else:
                assert "Principal" in st and st["Principal"], where
                if isinstance(st["Principal"], dict):
                    assert all(st["Principal"].values()), where
                if label.endswith(" trust"):
                    assert "Resource" not in st and "NotResource" not in st, f"{where}: a trust policy names no Resource"
                else:
                    assert st.get("Resource") == "*", f"{where}: a key policy statement needs Resource \"*\""
            for op, block in st.get("Condition", {}).items():
                base = op.split(":", 1)[-1].removesuffix("IfExists")
                assert base in SUPPORTED_OPERATORS, f"{where}: operator {op}"
                assert block and all(v not in ("", [], None) for v in block.values()), f"{where}: empty {op}"
        assert len(json.dumps(doc, separators=(",", ":"))) <= {IDENTITY: 6144, RESOURCE: 32768}[kind], f"{label} too large"


def test_trust_policies_fit_the_default_iam_quota(world):
    for label, _, doc in documents(world):
        if label.endswith(" trust"):
            assert len(json.dumps(doc, separators=(",", ":"))) <= 2048, f"{label} exceeds the 2048-character trust quota"
