"""Rewards for RL: a trained reward model, a Python function, or a weighted composite of named components.

Everything becomes a `Reward`: called on a batch, it returns the total score per sample and every
component's own scores (logged separately as rewards/<name>/mean, so a composite never hides which part
moved).

    r = as_reward(my_fn)                                   # f(prompt, completion) -> float
    r = as_reward(reward_model)                            # anything with score_texts(prompts, completions)
    r = Composite({"correct": (arith_reward, 1.0), "short": (LengthTarget(8), 0.2)})
    scores, parts = r(prompts, completions)

Components see a `Batch` (texts, and ids when the trainer has them). Built-ins: LengthTarget, RequiredWords,
BannedWords, DistinctN, RepetitionPenalty, SafetyVerdict (chinwag.safety's guard, optional) and Coherence
(the completion's mean log-prob under the reference model: penalises gibberish that games other terms).
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

_WORD = re.compile(r"\w+|[^\w\s]")


@dataclass
class Batch:
    prompts: list[str]
    completions: list[str]
    prompt_ids: list[list[int]] | None = None
    completion_ids: list[list[int]] | None = None


class Reward:
    """Base class: `score(batch) -> list[float]`; `__call__` returns (scores, {name: scores})."""

    name = "reward"

    def score(self, batch: Batch) -> list[float]:
        raise NotImplementedError

    def __call__(self, prompts, completions, prompt_ids=None, completion_ids=None):
        batch = Batch(list(prompts), list(completions), prompt_ids, completion_ids)
        s = [float(x) for x in self.score(batch)]
        if len(s) != len(batch.completions):
            raise ValueError(f"reward {self.name!r} returned {len(s)} scores for {len(batch.completions)}")
        return s, {self.name: s}


class FunctionReward(Reward):
    """A plain `f(prompt, completion) -> float`."""

    def __init__(self, fn: Callable[[str, str], float], name: str | None = None):
        self.fn, self.name = fn, name or getattr(fn, "__name__", "fn")

    def score(self, batch):
        return [float(self.fn(p, c)) for p, c in zip(batch.prompts, batch.completions, strict=True)]


class ModelReward(Reward):
    """A trained reward model: anything with `score_texts(prompts, completions) -> list[float]`."""

    name = "rm"

    def __init__(self, rm, name: str = "rm"):
        if not hasattr(rm, "score_texts"):
            raise TypeError(f"{type(rm).__name__} has no score_texts(prompts, completions)")
        self.rm, self.name = rm, name

    def score(self, batch):
        return list(self.rm.score_texts(batch.prompts, batch.completions))


class Composite(Reward):
    """Weighted sum of named components: {name: (component, weight)}; each component is a Reward, a
    function f(prompt, completion) or a reward model. Returns every component's raw (unweighted) scores."""

    name = "composite"

    def __init__(self, parts: dict[str, tuple[object, float]]):
        if not parts:
            raise ValueError("a composite reward needs at least one component")
        self.parts = {n: (as_reward(c, name=n), float(w)) for n, (c, w) in parts.items()}

    def score(self, batch):
        return self(batch.prompts, batch.completions, batch.prompt_ids, batch.completion_ids)[0]

    def __call__(self, prompts, completions, prompt_ids=None, completion_ids=None):
        total = [0.0] * len(completions)
        logged = {}
        for n, (r, w) in self.parts.items():
            s, _ = r(prompts, completions, prompt_ids, completion_ids)
            logged[n] = s
            total = [t + w * x for t, x in zip(total, s, strict=True)]
        return total, logged


def as_reward(spec, name: str | None = None) -> Reward:
    """Turn a Reward, a reward model (score_texts) or a function f(prompt, completion) into a Reward."""
    if isinstance(spec, Reward):
        if name is not None:
            spec.name = name
        return spec
    if hasattr(spec, "score_texts"):
        return ModelReward(spec, name or "rm")
    if callable(spec):
        return FunctionReward(spec, name)
    raise TypeError(f"cannot use {type(spec).__name__} as a reward (want a function, an RM or a Reward)")


def load_function(spec: str) -> Callable:
    """'package.module:function' -> the function (for --reward on the command line)."""
    mod, sep, fn = spec.partition(":")
    if not sep or not mod or not fn:
        raise ValueError(f"reward {spec!r}: expected 'module:function'")
    try:
        f = getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"reward {spec!r}: cannot import ({e})") from None
    if not callable(f):
        raise ValueError(f"reward {spec!r}: not callable")
    return f


# ---- built-in components ---------------------------------------------------------------------------------


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class LengthTarget(Reward):
    """-|len - target| / target (words by default, or tokens when ids are given and unit='tokens')."""

    name = "length"

    def __init__(self, target: int, unit: str = "words"):
        if target <= 0:
            raise ValueError("length target must be > 0")
        self.target, self.unit = target, unit

    def score(self, batch):
        if self.unit == "tokens" and batch.completion_ids is not None:
            lens = [len(c) for c in batch.completion_ids]
        else:
            lens = [len(words(c)) for c in batch.completions]
        return [-abs(n - self.target) / self.target for n in lens]


class RequiredWords(Reward):
    """Fraction of the required words present (1.0 when all are)."""

    name = "required"

    def __init__(self, required: Sequence[str]):
        self.required = [w.lower() for w in required]

    def score(self, batch):
        out = []
        for c in batch.completions:
            ws = set(words(c))
            out.append(sum(w in ws for w in self.required) / max(1, len(self.required)))
        return out


class BannedWords(Reward):
    """-(number of banned-word occurrences)."""

    name = "banned"

    def __init__(self, banned: Sequence[str]):
        self.banned = {w.lower() for w in banned}

    def score(self, batch):
        return [-float(sum(w in self.banned for w in words(c))) for c in batch.completions]


class DistinctN(Reward):
    """distinct-n: unique n-grams / n-grams in the completion (1.0 = no repeated n-gram)."""

    name = "distinct"

    def __init__(self, n: int = 2):
        self.n = n

    def score(self, batch):
        out = []
        for c in batch.completions:
            w = words(c)
            grams = [tuple(w[i : i + self.n]) for i in range(len(w) - self.n + 1)]
            out.append(len(set(grams)) / len(grams) if grams else 1.0)
        return out


class RepetitionPenalty(Reward):
    """-(fraction of words that repeat an earlier word in the completion)."""

    name = "repetition"

    def score(self, batch):
        out = []
        for c in batch.completions:
            w = words(c)
            out.append(-(len(w) - len(set(w))) / len(w) if w else 0.0)
        return out


class SafetyVerdict(Reward):
    """+1 when chinwag.safety's guard allows the completion, -1 when it blocks it. Optional: the guard
    loads lazily, and `available()` says whether chinwag.safety is installed and loadable."""

    name = "safety"

    def __init__(self, guard=None):
        self._guard = guard

    @staticmethod
    def available() -> bool:
        try:
            from chinwag.safety import Guard  # noqa: F401
        except Exception:  # noqa: BLE001 - optional dependency: any failure means "not available"
            return False
        return True

    @property
    def guard(self):
        if self._guard is None:
            from chinwag.safety import Guard

            self._guard = Guard.load()
        return self._guard

    def score(self, batch):
        check = getattr(self.guard, "check_output", None) or self.guard.check  # outputs have their own rules
        return [1.0 if _allowed(check(c)) else -1.0 for c in batch.completions]


def _allowed(verdict) -> bool:
    """Accept the shapes a guard verdict may take: bool, an object with .allowed / .blocked / .action."""
    if isinstance(verdict, bool):
        return verdict
    for attr, ok in (("allowed", True), ("blocked", False), ("flagged", False)):
        if hasattr(verdict, attr):
            return bool(getattr(verdict, attr)) == ok
    action = getattr(verdict, "action", None)
    if action is not None:
        return str(action).lower() in ("allow", "pass", "ok")
    return bool(verdict)


class Coherence(Reward):
    """The completion's mean per-token log-prob under a frozen reference model (higher = more fluent).
    Needs ids: the trainers pass them."""

    name = "coherence"

    def __init__(self, ref_model, tok):
        self.ref, self.tok = ref_model, tok

    def score(self, batch):
        import torch

        from chinwag.align.common import build_pairs, token_logprobs

        if batch.prompt_ids is None or batch.completion_ids is None:
            raise ValueError("the coherence reward needs token ids (pass prompt_ids and completion_ids)")
        ids, attn, cm = build_pairs(self.tok, batch.prompt_ids, batch.completion_ids)
        with torch.no_grad():
            lp = token_logprobs(self.ref, ids, attn)
        m = cm[:, 1:].float()
        mean = (lp * m).sum(-1) / m.sum(-1).clamp(min=1)
        return [x if math.isfinite(x) else -1e4 for x in mean.tolist()]


BUILTINS = {
    "length": LengthTarget,
    "required": RequiredWords,
    "banned": BannedWords,
    "distinct": DistinctN,
    "repetition": RepetitionPenalty,
    "safety": SafetyVerdict,
}


def from_config(cfg: dict, ref_model=None, tok=None) -> Composite:
    """Build a composite from JSON/YAML, e.g.
    {"correct": {"fn": "chinwag.align.tasks:arith_reward", "weight": 1.0},
     "short": {"type": "length", "target": 8, "weight": 0.2},
     "clean": {"type": "banned", "banned": ["xx"], "weight": 1.0},
     "fluent": {"type": "coherence", "weight": 0.05}}"""
    parts = {}
    for name, spec in cfg.items():
        if not isinstance(spec, dict):
            raise ValueError(f"reward component {name!r}: expected an object")
        spec = dict(spec)
        weight = float(spec.pop("weight", 1.0))
        if "fn" in spec:
            comp = load_function(spec.pop("fn"))
        else:
            kind = spec.pop("type", None)
            if kind == "coherence":
                if ref_model is None or tok is None:
                    raise ValueError(f"reward component {name!r}: coherence needs the reference model")
                comp = Coherence(ref_model, tok)
            elif kind in BUILTINS:
                try:
                    comp = BUILTINS[kind](**spec)
                except TypeError as e:
                    raise ValueError(f"reward component {name!r}: {e}") from None
            else:
                choices = ", ".join([*BUILTINS, "coherence"])
                raise ValueError(
                    f"reward component {name!r}: unknown type {kind!r} (one of {choices}, or fn)"
                )
        parts[name] = (comp, weight)
    return Composite(parts)
