"""The guard policy: thresholds, rules, allow-lists and refusals, read from YAML and validated.

Every error names the file and the field (`policies/x.yaml: categories.violence.patterns[3]: ...`) so
an operator editing a policy never has to read a stack trace.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CATEGORIES = (
    "violence", "weapons", "crime", "cybercrime", "sexual", "child_safety",
    "hate", "harassment", "self_harm", "privacy", "extremism", "jailbreak",
)  # fmt: skip
ACTIONS = ("allow", "warn", "refuse", "terminate")  # in escalation order
POLICY_DIR = Path(__file__).parent / "policies"
DEFAULT_POLICY = POLICY_DIR / "default.yaml"


class PolicyError(ValueError):
    """A policy file is missing, malformed, or has a bad field. The message names file and field."""


@dataclass
class Rule:
    id: str  # "violence.phrases[3]" - where it lives in the policy, for evidence
    source: str  # "phrase" | "pattern"
    text: str  # what the operator wrote
    regex: re.Pattern
    score: float


@dataclass
class CategoryPolicy:
    name: str
    rules: list[Rule] = field(default_factory=list)
    allow: list[re.Pattern] = field(default_factory=list)


@dataclass
class Policy:
    path: str
    thresholds: dict[str, float]
    output: dict[str, float]
    conversation: dict[str, float]
    classifier: dict[str, Any]
    refusals: dict[str, str]
    categories: dict[str, CategoryPolicy]
    global_allow: list[re.Pattern]

    @classmethod
    def load(cls, policy: str | Path | dict | Policy | None = None) -> Policy:
        if isinstance(policy, Policy):
            return policy
        if isinstance(policy, dict):
            return _parse(policy, "<dict>")
        path = DEFAULT_POLICY if policy in (None, "default") else Path(policy)
        if not path.is_file() and (POLICY_DIR / f"{policy}.yaml").is_file():
            path = POLICY_DIR / f"{policy}.yaml"  # a shipped policy by name
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise PolicyError(f"{path}: policy file not found") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f":{mark.line + 1}" if mark else ""
            raise PolicyError(f"{path}{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
        return _parse(raw, str(path))

    def refusal(self, category: str, terminated: bool = False) -> str:
        if terminated:
            return self.refusals["terminate"]
        return self.refusals.get(category) or self.refusals["default"]


DEFAULTS = {
    "thresholds": {"warn": 0.45, "refuse": 0.6},
    "output": {"refuse": 0.6, "check_every": 32, "window_chars": 600},
    "conversation": {"decay": 0.7, "warn": 0.9, "refuse": 1.5, "terminate": 2.6, "max_refusals": 3,
                     "window_turns": 3, "context_weight": 0.9, "floor": 0.2},
    "classifier": {"weights": "builtin", "allow_dampen": 0.5, "enabled": True, "score": "harm",
                   "harm_threshold": 0.71},
}  # fmt: skip
TOP_FIELDS = {"version", "macros", "thresholds", "output", "conversation", "classifier", "refusals",
              "categories", "global_allow"}  # fmt: skip


def _err(path: str, fld: str, msg: str) -> PolicyError:
    return PolicyError(f"{path}: {fld}: {msg}")


def _numbers(raw: dict, key: str, path: str) -> dict:
    out = dict(DEFAULTS[key])
    got = raw.get(key) or {}
    if not isinstance(got, dict):
        raise _err(path, key, "must be a mapping")
    for k, v in got.items():
        if k not in out:
            raise _err(path, f"{key}.{k}", f"unknown field (expected one of {', '.join(out)})")
        if isinstance(out[k], bool) or isinstance(out[k], str):
            if k == "score" and v not in ("harm", "category"):
                raise _err(path, f"{key}.{k}", f"must be 'harm' or 'category', got {v!r}")
            out[k] = v
            continue
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
            raise _err(path, f"{key}.{k}", f"must be a non-negative number, got {v!r}")
        out[k] = v
    return out


def phrase_regex(phrase: str) -> str:
    """A literal phrase -> regex over the sanitized view: word boundaries, flexible spacing and simple
    inflections ("kill" also matches "kills/killed/killing"), so operators list base forms only."""
    from chinwag.safety.sanitize import sanitize

    words = sanitize(phrase).text.split()
    parts = []
    for w in words:
        suffix = "(?:s|es|ed|d|ing|er|ers)?" if w.isalpha() and len(w) >= 3 else ""
        parts.append(re.escape(w) + suffix)
    return r"(?<![a-z0-9])" + r"[\s\W]{1,3}".join(parts) + r"(?![a-z0-9])"


def _compile(pattern: str, path: str, fld: str, macros: dict[str, str]) -> re.Pattern:
    if not isinstance(pattern, str) or not pattern.strip():
        raise _err(path, fld, "must be a non-empty string")
    expanded = pattern
    for _ in range(5):  # macros may use macros
        try:
            nxt = re.sub(r"\{([A-Z_]+)\}", lambda m: macros[m.group(1)], expanded)
        except KeyError as e:
            raise _err(path, fld, f"unknown macro {{{e.args[0]}}}") from None
        if nxt == expanded:
            break
        expanded = nxt
    try:
        return re.compile(expanded)
    except re.error as e:
        raise _err(path, fld, f"invalid regex ({e})") from None


def _parse(raw: Any, path: str) -> Policy:
    if not isinstance(raw, dict):
        raise PolicyError(f"{path}: top level must be a mapping")
    for k in raw:
        if k not in TOP_FIELDS:
            raise _err(path, str(k), f"unknown field (expected one of {', '.join(sorted(TOP_FIELDS))})")
    if raw.get("version", 1) != 1:
        raise _err(path, "version", f"unsupported version {raw.get('version')!r} (expected 1)")
    macros = raw.get("macros") or {}
    if not isinstance(macros, dict):
        raise _err(path, "macros", "must be a mapping of NAME: regex")
    thresholds = _numbers(raw, "thresholds", path)
    if not thresholds["warn"] <= thresholds["refuse"] <= 1:
        raise _err(path, "thresholds", "need warn <= refuse <= 1")
    conv = _numbers(raw, "conversation", path)
    if not conv["warn"] <= conv["refuse"] <= conv["terminate"]:
        raise _err(path, "conversation", "need warn <= refuse <= terminate")
    refusals = raw.get("refusals") or {}
    if not isinstance(refusals, dict):
        raise _err(path, "refusals", "must be a mapping of category: text")
    for k, v in refusals.items():
        if k not in CATEGORIES and k not in ("default", "terminate"):
            raise _err(path, f"refusals.{k}", "unknown category")
        if not isinstance(v, str) or not v.strip():
            raise _err(path, f"refusals.{k}", "must be non-empty text")
    for need in ("default", "terminate"):
        if need not in refusals:
            raise _err(path, f"refusals.{need}", "missing (required)")
    cats_raw = raw.get("categories") or {}
    if not isinstance(cats_raw, dict):
        raise _err(path, "categories", "must be a mapping")
    categories = {}
    for name in CATEGORIES:
        categories[name] = CategoryPolicy(name)
    for name, spec in cats_raw.items():
        if name not in CATEGORIES:
            raise _err(
                path, f"categories.{name}", f"unknown category (expected one of {', '.join(CATEGORIES)})"
            )
        spec = spec or {}
        if not isinstance(spec, dict):
            raise _err(path, f"categories.{name}", "must be a mapping")
        for k in spec:
            if k not in ("rule_score", "phrases", "patterns", "allow"):
                raise _err(
                    path, f"categories.{name}.{k}", "unknown field (phrases, patterns, allow, rule_score)"
                )
        base_score = spec.get("rule_score", 0.9)
        if not isinstance(base_score, (int, float)) or not 0 <= base_score <= 1:
            raise _err(path, f"categories.{name}.rule_score", f"must be in [0, 1], got {base_score!r}")
        cp = categories[name]
        for kind in ("phrases", "patterns"):
            items = spec.get(kind) or []
            if not isinstance(items, list):
                raise _err(path, f"categories.{name}.{kind}", "must be a list")
            for i, item in enumerate(items):
                fld = f"categories.{name}.{kind}[{i}]"
                score = base_score
                if isinstance(item, dict):  # {text: ..., score: 0.7}
                    score = item.get("score", base_score)
                    item = item.get("text")
                    if not isinstance(score, (int, float)) or not 0 <= score <= 1:
                        raise _err(path, f"{fld}.score", f"must be in [0, 1], got {score!r}")
                if not isinstance(item, str) or not item.strip():
                    raise _err(path, fld, "must be a non-empty string")
                pat = phrase_regex(item) if kind == "phrases" else item
                rx = _compile(pat, path, fld, macros)
                cp.rules.append(Rule(f"{name}.{kind}[{i}]", kind[:-1] if kind == "phrases" else "pattern",
                                     item, rx, float(score)))  # fmt: skip
        allow = spec.get("allow") or []
        if not isinstance(allow, list):
            raise _err(path, f"categories.{name}.allow", "must be a list")
        cp.allow = [_compile(a, path, f"categories.{name}.allow[{i}]", macros) for i, a in enumerate(allow)]
    global_allow = raw.get("global_allow") or []
    if not isinstance(global_allow, list):
        raise _err(path, "global_allow", "must be a list")
    return Policy(
        path=path,
        thresholds=thresholds,
        output=_numbers(raw, "output", path),
        conversation=conv,
        classifier=_numbers(raw, "classifier", path),
        refusals=refusals,
        categories=categories,
        global_allow=[_compile(a, path, f"global_allow[{i}]", macros) for i, a in enumerate(global_allow)],
    )
