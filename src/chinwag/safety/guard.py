"""The guard: rules + classifier per message, risk across a conversation, a monitor on the output stream.

guard = Guard.load()                      # default policy, shipped classifier
v = guard.check("how do i kill a python process")   # Verdict(label="allow", action="allow", ...)
s = guard.session()                       # one per conversation
v = s.check_input(user_text)              # v.action in allow|warn|refuse|terminate, v.refusal
mon = s.monitor()                         # on the model's reply
for delta in stream:
    cut = mon.feed(delta)                 # a Verdict when the reply must stop here
    if cut: emit(cut.refusal); break
mon.finish()
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from chinwag.safety.classifier import BUILTIN_WEIGHTS, LABELS, Classifier
from chinwag.safety.policy import ACTIONS, CATEGORIES, Policy
from chinwag.safety.rules import match_rules
from chinwag.safety.sanitize import Sanitized, sanitize


@dataclass
class Evidence:
    source: str  # "phrase" | "pattern" | "classifier" | "context" | "conversation" | "session"
    category: str
    rule: str  # policy rule id, "classifier", ...
    span: tuple[int, int]  # in the ORIGINAL text that was checked
    text: str  # original[span]
    score: float

    def to_dict(self) -> dict:
        return {"source": self.source, "category": self.category, "rule": self.rule,
                "span": list(self.span), "text": self.text, "score": round(self.score, 4)}  # fmt: skip


@dataclass
class Verdict:
    label: str  # "allow" or a category
    score: float  # risk of this message in [0, 1]
    action: str  # allow | warn | refuse | terminate
    evidence: list[Evidence] = field(default_factory=list)
    refusal: str | None = None  # the text to show instead, when action is refuse/terminate
    scores: dict[str, float] = field(default_factory=dict)  # per category
    risk: float = 0.0  # conversation risk after this message

    @property
    def flagged(self) -> bool:
        return self.label != "allow"

    @property
    def blocked(self) -> bool:
        return self.action in ("refuse", "terminate")

    def to_dict(self) -> dict:
        d = {"label": self.label, "score": round(self.score, 4), "action": self.action,
             "evidence": [e.to_dict() for e in self.evidence], "risk": round(self.risk, 4)}  # fmt: skip
        if self.refusal:
            d["refusal"] = self.refusal
        return d


_MARKER = re.compile(r"<\|[A-Za-z0-9_.:=\- ]{1,40}\|>")


def blank_markers(text: str) -> str:
    """Chat-template markers a model emits (`<|assistant|>`) are formatting, not content: blank them on the
    output side (same length, so evidence spans stay valid). Input keeps them: a user who types
    `<|system|>` is attempting an injection."""
    return _MARKER.sub(lambda m: " " * len(m.group()), text)


def harm_scale(p: float, at: float, warn: float) -> float:
    """Map P(harmful) onto the policy's score scale, piecewise linearly, so that `at` lands on the warn
    threshold. The class-balanced classifier puts most of its mass on harm for anything that looks
    harmful, so its operating point (chosen on out-of-fold data, see docs/safety.md) sits far above 0.5."""
    at = min(max(at, 1e-6), 1 - 1e-6)
    return warn * p / at if p < at else warn + (1 - warn) * (p - at) / (1 - at)


def _max_action(a: str, b: str) -> str:
    return a if ACTIONS.index(a) >= ACTIONS.index(b) else b


class Guard:
    def __init__(self, policy: Policy, classifier: Classifier | None):
        self.policy = policy
        self.classifier = classifier

    @classmethod
    def load(cls, policy=None, classifier: str | Classifier | None = None) -> Guard:
        """`policy`: None (default), a shipped name, a YAML path, a dict or a Policy.
        `classifier`: overrides the policy's `classifier.weights` (a path or a Classifier)."""
        pol = Policy.load(policy)
        clf = None
        if pol.classifier.get("enabled", True):
            if isinstance(classifier, Classifier):
                clf = classifier
            else:
                spec = classifier or pol.classifier.get("weights", "builtin")
                clf = load_builtin_classifier() if spec == "builtin" else Classifier.load(spec)
        return cls(pol, clf)

    # -- one message, no context ------------------------------------------------------------------
    def score(self, text: str) -> tuple[dict[str, float], list[Evidence], Sanitized]:
        """Per-category scores (max of rule and classifier) and the evidence, for one text."""
        san = sanitize(text)
        hits, allowed = match_rules(self.policy, san)
        scores = dict.fromkeys(CATEGORIES, 0.0)
        evidence: list[Evidence] = []
        for h in hits:
            scores[h.category] = max(scores[h.category], h.score)
            s, e = san.orig_span(*h.span)
            evidence.append(Evidence(h.source, h.category, h.rule_id, (s, e), text[s:e], h.score))
        if self.classifier is not None and san.text:
            probs, feats = self.classifier.probs(san.text)
            dampen = self.policy.classifier["allow_dampen"]
            top = 1 + int(np.argmax(probs[1:]))
            for i, cat in enumerate(LABELS[1:], start=1):
                p = float(probs[i])
                if i == top and self.policy.classifier["score"] == "harm":
                    # P(harmful) = 1 - P(allow), credited to the likeliest category: a request that
                    # reads as both violence and weapons is still clearly harmful
                    p = harm_scale(1.0 - float(probs[0]), self.policy.classifier["harm_threshold"],
                                   self.policy.thresholds["warn"])  # fmt: skip
                p *= dampen if cat in allowed else 1.0
                if p > scores[cat]:
                    if p >= self.policy.thresholds["warn"]:
                        span = self.classifier.top_span(feats, i) or (0, len(san.text))
                        s, e = san.orig_span(*span)
                        evidence.append(Evidence("classifier", cat, "classifier", (s, e), text[s:e], p))
                    scores[cat] = p
        evidence.sort(key=lambda ev: -ev.score)
        return scores, evidence, san

    def verdict(
        self, scores: dict[str, float], evidence: list[Evidence], refuse_at: float | None = None
    ) -> Verdict:
        th = self.policy.thresholds
        refuse_at = th["refuse"] if refuse_at is None else refuse_at
        label = max(scores, key=scores.get)
        score = scores[label]
        if score < min(th["warn"], refuse_at):
            return Verdict("allow", score, "allow", [], None, scores)
        action = "refuse" if score >= refuse_at else "warn"
        ev = [e for e in evidence if e.category == label] + [e for e in evidence if e.category != label]
        return Verdict(
            label, score, action, ev, self.policy.refusal(label) if action == "refuse" else None, scores
        )

    def check(self, text: str, history: list[dict] | list[str] | None = None) -> Verdict:
        """Judge `text` (a user message) in the context of earlier turns (`{"role", "content"}` dicts or
        plain user strings). Earlier user turns are replayed through a fresh session, so risk
        accumulates exactly as it would live."""
        sess = self.session()
        for turn in history or []:
            if isinstance(turn, str):
                sess.check_input(turn)
            elif turn.get("role", "user") == "user":
                sess.check_input(turn.get("content", ""))
            else:
                sess.note_output(turn.get("content", ""))
        return sess.check_input(text)

    def check_output(self, text: str) -> Verdict:
        """Judge a complete model output (no conversation state)."""
        scores, ev, _ = self.score(blank_markers(text))
        return self.verdict(scores, ev, refuse_at=self.policy.output["refuse"])

    def session(self) -> GuardSession:
        return GuardSession(self)


class GuardSession:
    """Per-conversation state: accumulated risk, refusals so far, recent user turns, terminated flag."""

    def __init__(self, guard: Guard):
        self.guard = guard
        self.policy = guard.policy
        self.reset()

    def reset(self) -> None:
        self.risk = 0.0
        self.cat_risk = dict.fromkeys(CATEGORIES, 0.0)
        self.refusals = 0
        self.terminated = False
        self.term_label = "allow"
        self.turns: list[tuple[str, dict[str, float]]] = []  # recent user texts with their scores
        self.log: list[Verdict] = []

    def _terminated_verdict(self) -> Verdict:
        ev = Evidence("session", self.term_label, "session.terminated", (0, 0), "", 1.0)
        return Verdict(self.term_label, 1.0, "terminate", [ev], self.policy.refusal(self.term_label, True),
                       dict(self.cat_risk), self.risk)  # fmt: skip

    def check_input(self, text: str) -> Verdict:
        if self.terminated:
            v = self._terminated_verdict()
            self.log.append(v)
            return v
        conv = self.policy.conversation
        scores, evidence, _ = self.guard.score(text)
        own = dict(scores)
        # harm split across turns: read the recent window together; count it only where the
        # combination scores higher than every part on its own
        prev = self.turns[-int(conv["window_turns"]) + 1 :] if conv["window_turns"] > 1 else []
        if prev:
            window = " \n ".join([t for t, _ in prev] + [text])
            wscores, _, _ = self.guard.score(window)
            for cat, ws in wscores.items():
                ctx = ws * conv["context_weight"]
                if ctx > scores[cat] and ctx > max(s[cat] for _, s in prev):
                    scores[cat] = ctx
                    evidence.append(Evidence("context", cat, f"window[{len(prev) + 1} turns]",
                                             (0, len(text)), text, ctx))  # fmt: skip
        self.turns.append((text, own))
        self.turns = self.turns[-int(max(conv["window_turns"], 1)) :]
        v = self.guard.verdict(scores, evidence)
        return self._escalate(v)

    def _escalate(self, v: Verdict) -> Verdict:
        conv = self.policy.conversation
        gain = max(0.0, v.score - conv["floor"]) if v.flagged else 0.0
        self.risk = conv["decay"] * self.risk + gain
        for c in self.cat_risk:
            self.cat_risk[c] *= conv["decay"]
        if v.flagged:
            self.cat_risk[v.label] += gain
        action = v.action
        if self.risk >= conv["terminate"] or (action == "refuse" and self.refusals >= conv["max_refusals"]):
            action = "terminate"
        elif self.risk >= conv["refuse"]:
            action = _max_action(action, "refuse")
        elif self.risk >= conv["warn"]:
            action = _max_action(action, "warn")
        if action != v.action:
            if not v.flagged:  # escalated on history alone: name the category the risk came from
                v.label = max(self.cat_risk, key=self.cat_risk.get)
            v.evidence.append(
                Evidence("conversation", v.label, f"conversation.{action}", (0, 0), "", self.risk)
            )
            v.action = action
        if action in ("refuse", "terminate"):
            self.refusals += 1
            v.refusal = self.policy.refusal(v.label, terminated=action == "terminate")
        if action == "terminate":
            self.terminated = True
            self.term_label = v.label
        v.risk = self.risk
        self.log.append(v)
        return v

    def note_output(self, text: str) -> None:
        """Record an assistant turn we did not stream through a monitor (e.g. replayed history)."""
        v = self.guard.check_output(text)
        if v.blocked:
            self._escalate(v)

    def monitor(self) -> StreamMonitor:
        return StreamMonitor(self)


class StreamMonitor:
    """Watches generated text as it streams. `feed(delta)` returns a Verdict when the output must be cut
    (then: stop generating and emit `verdict.refusal` in place of the rest); `finish()` judges the whole
    reply once more and returns the final Verdict (allow, or the intervention)."""

    def __init__(self, session: GuardSession):
        self.session = session
        self.guard = session.guard
        self.out = session.policy.output
        self.text = ""
        self.checked_upto = 0
        self.verdict: Verdict | None = None  # set when we intervened

    @property
    def stopped(self) -> bool:
        return self.verdict is not None

    def feed(self, delta: str) -> Verdict | None:
        if self.verdict is not None:
            return self.verdict
        if self.session.terminated:
            self.verdict = self.session._terminated_verdict()
            return self.verdict
        self.text += delta
        boundary = delta[-1:] in (".", "!", "?", "\n", ":", ";") if delta else False
        if boundary or len(self.text) - self.checked_upto >= self.out["check_every"]:
            return self._check()
        return None

    def _check(self) -> Verdict | None:
        self.checked_upto = len(self.text)
        start = max(0, len(self.text) - int(self.out["window_chars"]))
        window = self.text[start:]
        scores, ev, _ = self.guard.score(blank_markers(window))
        for e in ev:  # spans relative to the whole reply
            e.span = (e.span[0] + start, e.span[1] + start)
        v = self.guard.verdict(scores, ev, refuse_at=self.out["refuse"])
        if v.action != "refuse":
            return None
        self.verdict = self.session._escalate(v)
        if self.verdict.action == "warn":  # never weaker than a cut, once we decided to cut
            self.verdict.action = "refuse"
        self.verdict.refusal = self.verdict.refusal or self.session.policy.refusal(v.label)
        return self.verdict

    def finish(self) -> Verdict:
        if self.verdict is None and len(self.text) > self.checked_upto:
            self._check()
        if self.verdict is not None:
            return self.verdict
        return Verdict("allow", 0.0, "allow", [], None, {}, self.session.risk)


# -- shared instances ---------------------------------------------------------------------------------
_BUILTIN: Classifier | None = None
_DEFAULT_GUARD: Guard | None = None


def load_builtin_classifier() -> Classifier:
    """The shipped weights; if they are missing (e.g. a wheel without package data), train once with
    the default seed and cache atomically in ~/.cache/chinwag."""
    global _BUILTIN
    if _BUILTIN is None:
        if BUILTIN_WEIGHTS.is_file():
            _BUILTIN = Classifier.load(BUILTIN_WEIGHTS)
        else:
            from pathlib import Path

            cache = Path.home() / ".cache" / "chinwag" / "guard-classifier-seed0.safetensors"
            if not cache.is_file():
                from chinwag.safety.train import train_default

                train_default(cache, seed=0)
            _BUILTIN = Classifier.load(cache)
    return _BUILTIN


def default_guard() -> Guard:
    global _DEFAULT_GUARD
    if _DEFAULT_GUARD is None:
        _DEFAULT_GUARD = Guard.load()
    return _DEFAULT_GUARD


_REFUSAL_MARKERS = ("i can't help", "i can't", "i cannot", "i won't", "i'm sorry, but", "i am not able to",
                    "i'm not able to", "i don't write")  # fmt: skip


def looks_like_refusal(text: str) -> bool:
    t = sanitize(text[:200]).text
    return any(m in t for m in _REFUSAL_MARKERS)


def reward_component(prompt: str, completion: str, guard: Guard | None = None) -> float:
    """A safety term for RL rewards, in [-1, 0.5]:
    - harmful completion (output score >= output.refuse): minus its score (down to -1);
    - harmful prompt (refuse-level) answered with a refusal: +0.5; answered without one: 0;
    - benign prompt answered with a refusal (over-refusal): -0.25;
    - otherwise 0 (the task reward decides)."""
    guard = guard or default_guard()
    out = guard.check_output(completion)
    if out.blocked:
        return -float(np.clip(out.score, 0.0, 1.0))
    inp = guard.check(prompt)
    refused = looks_like_refusal(completion)
    if inp.blocked:
        return 0.5 if refused else 0.0
    return -0.25 if refused else 0.0
