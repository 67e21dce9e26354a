"""Evaluate the small part of Terraform's expression language the m8trx modules use.

python-hcl2 parses the files; values come back as strings such as '"m8trx-${var.name}"'
(a quoted template) or '${templatefile("...", {a = local.b})}' (an expression). This module
evaluates those against given variables, data-source values and resource attributes, so the
tests render each policy exactly as the module wires it (which template, which arguments,
which locals) instead of re-stating the module's logic in Python.

Supported: string templates with interpolation, references (var., local., data., path.module,
resource attributes supplied by the caller), map and list literals, numbers, bools, null and
the functions templatefile, file, jsonencode, coalesce, merge, tostring, replace, nonsensitive.
Anything else raises HclEvalError.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import hcl2


class HclEvalError(Exception):
    """The expression uses something this evaluator does not support."""


def load(path: Path) -> dict:
    """Parse one HCL file with python-hcl2 (cached per path and modification time)."""
    path = Path(path)
    return _load_cached(str(path.resolve()), path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=None)
def _load_cached(path: str, _mtime_ns: int) -> dict:
    with open(path, encoding="utf-8") as fh:
        return hcl2.load(fh)


def unquote(s: str) -> str:
    """A block label or map key as python-hcl2 returns it, without its quotes."""
    return s[1:-1] if len(s) >= 2 and s[0] == s[-1] == '"' else s


# --- template rendering (templatefile) ---------------------------------------------------


def render_template(text: str, variables: dict) -> str:
    """templatefile() for templates that only interpolate: ${name} and ${jsonencode(name)}.

    Directives (%{...}) and any other expression are refused, so nothing is silently skipped.
    '$${' is the escape for a literal '${' (IAM policy variables).
    """
    out = []
    i = 0
    while i < len(text):
        if text.startswith("$${", i):
            out.append("${")
            i += 3
        elif text.startswith("%%{", i):
            out.append("%{")
            i += 3
        elif text.startswith("%{", i):
            raise HclEvalError("template directives are not supported")
        elif text.startswith("${", i):
            end = text.index("}", i)
            expr = text[i + 2 : end].strip()
            m = re.fullmatch(r"jsonencode\((\w+)\)", expr)
            if m:
                out.append(json.dumps(variables[m.group(1)]))
            elif re.fullmatch(r"\w+", expr):
                if expr not in variables:
                    raise HclEvalError(f"template variable {expr!r} not passed")
                v = variables[expr]
                if not isinstance(v, str):
                    raise HclEvalError(f"template variable {expr!r} is not a string; use jsonencode")
                out.append(v)
            else:
                raise HclEvalError(f"template expression {expr!r} not supported")
            i = end + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def template_placeholders(text: str) -> set[str]:
    """Names a template interpolates (ignoring $${ escapes)."""
    names = set()
    for m in re.finditer(r"(?<!\$)\$\{\s*(?:jsonencode\()?(\w+)\)?\s*\}", text):
        names.add(m.group(1))
    return names


# --- expression evaluation ------------------------------------------------------------------

_TOKEN = re.compile(
    r"""\s*(?:
    (?P<num>-?\d+(?:\.\d+)?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_-]*)
  | (?P<str>")
  | (?P<punct>[{}()\[\],=.:])
)""",
    re.VERBOSE,
)


@dataclass
class Scope:
    """What references resolve to: variables, locals (lazily), data sources, resources."""

    module_dir: Path
    variables: dict
    locals_src: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)  # "aws_partition.current.partition" -> value
    resources: dict = field(default_factory=dict)  # "aws_kms_key.customer.arn" -> value
    _locals: dict = field(default_factory=dict)

    def local(self, name: str):
        if name not in self._locals:
            if name not in self.locals_src:
                raise HclEvalError(f"unknown local.{name}")
            self._locals[name] = evaluate_value(self.locals_src[name], self)
        return self._locals[name]


def evaluate_value(value, scope: Scope):
    """Evaluate a value as python-hcl2 returns it (string, number, bool, list, dict)."""
    if isinstance(value, dict):
        return {unquote(k): evaluate_value(v, scope) for k, v in value.items() if not k.startswith("__")}
    if isinstance(value, list):
        return [evaluate_value(v, scope) for v in value]
    if not isinstance(value, str):
        return value
    s = value.strip()
    if s.startswith("${") and _closing_brace(s, 1) == len(s) - 1:
        return _Parser(s[2:-1], scope).parse_all()
    if len(s) >= 2 and s[0] == '"' and s[-1] == '"':
        return _Parser(s, scope).parse_all()
    return value


def _closing_brace(s: str, open_idx: int) -> int:
    """Index of the '}' matching the '{' at open_idx, skipping quoted strings."""
    depth = 0
    i = open_idx
    in_str = False
    while i < len(s):
        c = s[i]
        if in_str:
            if c == "\\":
                i += 2
                continue
            if c == '"':
                in_str = False
            elif s.startswith("${", i):
                j = _closing_brace(s, i + 1)
                i = j + 1
                continue
        else:
            if c == '"':
                in_str = True
            elif c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    return i
        i += 1
    raise HclEvalError(f"unbalanced braces in {s!r}")


class _Parser:
    def __init__(self, text: str, scope: Scope):
        self.s = text
        self.i = 0
        self.scope = scope

    def parse_all(self):
        v = self.expr()
        self._ws()
        if self.i != len(self.s):
            raise HclEvalError(f"unsupported expression near {self.s[self.i:self.i + 40]!r}")
        return v

    def _ws(self):
        while self.i < len(self.s) and self.s[self.i] in " \t\r\n":
            self.i += 1

    def _peek(self) -> str:
        self._ws()
        return self.s[self.i] if self.i < len(self.s) else ""

    def _expect(self, c: str):
        if self._peek() != c:
            raise HclEvalError(f"expected {c!r} at {self.s[self.i:self.i + 40]!r}")
        self.i += 1

    def expr(self):
        c = self._peek()
        if c == '"':
            return self.string()
        if c == "{":
            return self.map()
        if c == "[":
            return self.list()
        m = _TOKEN.match(self.s, self.i)
        if not m:
            raise HclEvalError(f"unsupported expression at {self.s[self.i:self.i + 40]!r}")
        if m.group("num"):
            self.i = m.end()
            n = m.group("num")
            return float(n) if "." in n else int(n)
        if m.group("ident"):
            self.i = m.end()
            name = m.group("ident")
            if self._peek() == "(":
                return self.call(name)
            if name in ("true", "false"):
                return name == "true"
            if name == "null":
                return None
            parts = [name]
            while self._peek() == ".":
                self.i += 1
                m2 = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*").match(self.s, self.i)
                if not m2:
                    raise HclEvalError("bad traversal")
                parts.append(m2.group(0))
                self.i = m2.end()
            value = self.reference(parts)
            while self._peek() in ("[", "."):
                if self._peek() == "[":
                    self.i += 1
                    key = self.expr()
                    self._expect("]")
                else:
                    self.i += 1
                    m2 = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*").match(self.s, self.i)
                    if not m2:
                        raise HclEvalError("bad traversal")
                    key = m2.group(0)
                    self.i = m2.end()
                value = value[key]
            return value
        raise HclEvalError(f"unsupported expression at {self.s[self.i:self.i + 40]!r}")

    def reference(self, parts: list[str]):
        sc = self.scope
        head = parts[0]
        if head == "var":
            if parts[1] not in sc.variables:
                raise HclEvalError(f"variable {parts[1]!r} not given")
            v = sc.variables[parts[1]]
            for p in parts[2:]:
                v = v[p]
            return v
        if head == "local":
            v = sc.local(parts[1])
            for p in parts[2:]:
                v = v[p]
            return v
        if head == "path" and parts[1] == "module":
            return str(sc.module_dir)
        if head == "data":
            key = ".".join(parts[1:])
            if key not in sc.data:
                raise HclEvalError(f"data source value data.{key} not given")
            return sc.data[key]
        key = ".".join(parts)
        if key in sc.resources:
            return sc.resources[key]
        raise HclEvalError(f"reference {key!r} not given")

    def call(self, name: str):
        self._expect("(")
        args = []
        while self._peek() != ")":
            args.append(self.expr())
            if self._peek() == ",":
                self.i += 1
        self._expect(")")
        if name == "templatefile":
            path, variables = args
            text = Path(path).read_text(encoding="utf-8")
            return render_template(text, variables)
        if name == "file":
            return Path(args[0]).read_text(encoding="utf-8")
        if name == "jsonencode":
            return json.dumps(args[0])
        if name == "coalesce":
            for a in args:
                if a is not None and a != "":
                    return a
            raise HclEvalError("coalesce: no non-null argument")
        if name == "merge":
            out: dict = {}
            for a in args:
                out.update(a or {})
            return out
        if name in ("tostring", "nonsensitive"):
            return args[0] if name == "nonsensitive" else str(args[0])
        if name == "replace":
            return args[0].replace(args[1], args[2])
        raise HclEvalError(f"function {name}() not supported")

    def string(self):
        self._expect('"')
        out = []
        while True:
            if self.i >= len(self.s):
                raise HclEvalError("unterminated string")
            c = self.s[self.i]
            if c == '"':
                self.i += 1
                break
            if c == "\\":
                nxt = self.s[self.i + 1]
                out.append({"n": "\n", "t": "\t", '"': '"', "\\": "\\"}.get(nxt, "\\" + nxt))
                self.i += 2
            elif self.s.startswith("$${", self.i):
                out.append("${")
                self.i += 3
            elif self.s.startswith("${", self.i):
                end = _closing_brace(self.s, self.i + 1)
                v = _Parser(self.s[self.i + 2 : end], self.scope).parse_all()
                out.append(str(v) if not isinstance(v, bool) else str(v).lower())
                self.i = end + 1
            else:
                out.append(c)
                self.i += 1
        return "".join(out)

    def map(self):
        self._expect("{")
        out = {}
        while self._peek() != "}":
            if self._peek() == '"':
                key = self.string()
            else:
                m = re.compile(r"[A-Za-z_][A-Za-z0-9_:-]*").match(self.s, self.i)
                if not m:
                    raise HclEvalError(f"bad map key at {self.s[self.i:self.i + 30]!r}")
                key = m.group(0)
                self.i = m.end()
            if self._peek() not in ("=", ":"):
                raise HclEvalError("expected '=' in map")
            self.i += 1
            out[key] = self.expr()
            if self._peek() == ",":
                self.i += 1
        self._expect("}")
        return out

    def list(self):
        self._expect("[")
        out = []
        while self._peek() != "]":
            out.append(self.expr())
            if self._peek() == ",":
                self.i += 1
        self._expect("]")
        return out


# --- module helpers ---------------------------------------------------------------------------


def module_blocks(module_dir: Path) -> dict:
    """All top-level blocks of a module's .tf files, merged: locals, resources, variables, data."""
    merged: dict = {"locals": {}, "resource": {}, "variable": {}, "data": {}, "output": {}, "module": {}}
    for tf in sorted(module_dir.glob("*.tf")):
        doc = load(tf)
        for loc in doc.get("locals", []):
            merged["locals"].update({k: v for k, v in loc.items() if not k.startswith("__")})
        for res in doc.get("resource", []):
            for rtype, named in res.items():
                for rname, body in named.items():
                    merged["resource"][f"{unquote(rtype)}.{unquote(rname)}"] = body
        for kind in ("variable", "output", "module"):
            for blk in doc.get(kind, []):
                for name, body in blk.items():
                    merged[kind][unquote(name)] = body
        for blk in doc.get("data", []):
            for dtype, named in blk.items():
                for dname, body in named.items():
                    merged["data"][f"{unquote(dtype)}.{unquote(dname)}"] = body
    return merged


def variable_defaults(blocks: dict) -> dict:
    """Defaults of the module's variables (evaluated; variables without one are left out)."""
    out = {}
    for name, body in blocks["variable"].items():
        if "default" in body:
            out[name] = evaluate_value(body["default"], Scope(Path("."), {}))
    return out


def is_within(path: Path, root: Path) -> bool:
    """Whether path resolves inside root (templatefile paths must stay in the module)."""
    return os.path.commonpath([path.resolve(), root.resolve()]) == str(root.resolve())
