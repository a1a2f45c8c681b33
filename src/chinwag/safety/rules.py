"""Phrase and pattern rules: find policy hits in the sanitized view, drop hits inside allow contexts."""

from __future__ import annotations

from dataclasses import dataclass

from chinwag.safety.policy import Policy
from chinwag.safety.sanitize import Sanitized


@dataclass
class RuleHit:
    category: str
    rule_id: str
    source: str  # "phrase" | "pattern"
    score: float
    span: tuple[int, int]  # in the sanitized view


def _overlaps(a: tuple[int, int], spans: list[tuple[int, int]]) -> bool:
    return any(a[0] < e and s < a[1] for s, e in spans)


def match_rules(policy: Policy, san: Sanitized) -> tuple[list[RuleHit], set[str]]:
    """All rule hits (first unsuppressed hit per rule), and the categories with an allow context present.

    An allow context only cancels hits it overlaps: "kill the python process, then kill my boss"
    still fires on the second half.
    """
    text = san.text
    global_spans = [m.span() for rx in policy.global_allow for m in rx.finditer(text)]
    hits: list[RuleHit] = []
    allowed: set[str] = set()
    for name, cp in policy.categories.items():
        allow_spans = [m.span() for rx in cp.allow for m in rx.finditer(text)]
        if allow_spans or global_spans:
            allowed.add(name)
        allow_spans += global_spans
        for rule in cp.rules:
            for m in rule.regex.finditer(text):
                if m.end() > m.start() and not _overlaps(m.span(), allow_spans):
                    hits.append(RuleHit(name, rule.id, rule.source, rule.score, m.span()))
                    break
    return hits, allowed
