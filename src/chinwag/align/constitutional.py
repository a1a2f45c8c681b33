"""Constitutional critique–revise (Bai et al. 2022, the supervised stage), with a model or a rule checker.

For each principle, in order:  critique = critic.critique(prompt, response, principle)
                               if it found a problem:
                                   response = critic.revise(prompt, response, principle, critique)
The final revision becomes an SFT target ({"messages": [user, assistant=revision]}) and, when it differs
from the original, a DPO pair {prompt, chosen: revision, rejected: original} (revision ≻ original).

Principles live in a YAML or JSON file, a list (or {"principles": [...]}) of
    {name, critique: "critique request", revision: "revision request", rule: {...}?}
`rule` makes the principle checkable without a model (and lets us measure violation rates):
    require: [words]        at least one of these words must appear     (revise: prepend the first)
    ban: [words]            none of these words may appear              (revise: delete them)
    min_words / max_words   word-count bounds                            (revise: trim, or pad with `filler`)
    ban_regex: "pattern"    no match allowed                             (revise: delete matches)
`ModelCritic` instead asks the policy itself, Anthropic-style: the conversation continues with the
critique request as a user turn, the model's critique, then the revision request, the model's revision.
"""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

RULE_KEYS = {"require", "ban", "min_words", "max_words", "ban_regex", "filler"}


class PrincipleFileError(ValueError):
    """A principles file that cannot be used; the message names the file, entry and field."""


@dataclass
class Principle:
    name: str
    critique: str  # the critique request ("Identify ways the response is ...")
    revision: str  # the revision request ("Rewrite the response to ...")
    rule: dict | None = field(default=None)

    def violated(self, response: str) -> str | None:
        """The rule's verdict: a short critique if `response` breaks it, None if it is fine (or no rule)."""
        r = self.rule or {}
        words = response.split()
        low = [_norm(w) for w in words]
        if r.get("require") and not any(w.lower() in low for w in r["require"]):
            return f"{self.name}: does not contain any of {r['require']}"
        if r.get("ban"):
            bad = [w for w in r["ban"] if w.lower() in low]
            if bad:
                return f"{self.name}: contains banned {bad}"
        if r.get("ban_regex") and re.search(r["ban_regex"], response):
            return f"{self.name}: matches banned pattern {r['ban_regex']!r}"
        if r.get("min_words") is not None and len(words) < r["min_words"]:
            return f"{self.name}: {len(words)} words, fewer than {r['min_words']}"
        if r.get("max_words") is not None and len(words) > r["max_words"]:
            return f"{self.name}: {len(words)} words, more than {r['max_words']}"
        return None


def _norm(word: str) -> str:
    """A word as the rules compare it: lower case, surrounding punctuation stripped."""
    return word.lower().strip(".,!?;:\"'()")


def load_principles(path: str | os.PathLike) -> list[Principle]:
    """Read principles from YAML (.yaml/.yml) or JSON; every problem names file, entry and field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PrincipleFileError(f"{path}: file not found") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            raise PrincipleFileError(f"{path}{line}: invalid YAML ({getattr(e, 'problem', e)})") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise PrincipleFileError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    return parse_principles(data, str(path))


def parse_principles(data, where: str = "<principles>") -> list[Principle]:
    if isinstance(data, dict) and "principles" in data:
        data = data["principles"]
    if not isinstance(data, list) or not data:
        raise PrincipleFileError(f"{where}: expected a non-empty list of principles")
    out = []
    for i, d in enumerate(data):
        at = f"{where}: principles[{i}]"
        if not isinstance(d, dict):
            raise PrincipleFileError(f"{at}: expected an object with name/critique/revision")
        for k in ("name", "critique", "revision"):
            if not isinstance(d.get(k), str) or not d[k].strip():
                raise PrincipleFileError(f"{at}: field {k!r} must be a non-empty string")
        unknown = set(d) - {"name", "critique", "revision", "rule"}
        if unknown:
            raise PrincipleFileError(f"{at}: unknown field(s) {sorted(unknown)}")
        rule = d.get("rule")
        if rule is not None:
            _check_rule(rule, f"{at}.rule")
        out.append(Principle(d["name"], d["critique"], d["revision"], rule))
    return out


def _check_rule(rule, at: str) -> None:
    if not isinstance(rule, dict):
        raise PrincipleFileError(f"{at}: must be an object")
    unknown = set(rule) - RULE_KEYS
    if unknown:
        raise PrincipleFileError(f"{at}: unknown key(s) {sorted(unknown)} (allowed: {sorted(RULE_KEYS)})")
    for k in ("require", "ban", "filler"):
        v = rule.get(k)
        if v is not None and not (isinstance(v, list) and v and all(isinstance(x, str) for x in v)):
            raise PrincipleFileError(f"{at}.{k}: must be a non-empty list of strings")
    for k in ("min_words", "max_words"):
        v = rule.get(k)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise PrincipleFileError(f"{at}.{k}: must be a non-negative integer")
    if rule.get("ban_regex") is not None:
        try:
            re.compile(rule["ban_regex"])
        except (re.error, TypeError) as e:
            raise PrincipleFileError(f"{at}.ban_regex: invalid pattern ({e})") from None


# ---- critics ---------------------------------------------------------------------------------------------


class RuleCritic:
    """Critiques with each principle's rule and revises by the smallest edit that satisfies it."""

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)

    def critique(self, prompt: str, response: str, principle: Principle) -> str | None:
        return principle.violated(response)

    def revise(self, prompt: str, response: str, principle: Principle, critique: str) -> str:
        r = principle.rule or {}
        words = response.split()
        if r.get("ban"):
            banned = {w.lower() for w in r["ban"]}
            words = [w for w in words if _norm(w) not in banned]
        if r.get("ban_regex"):
            words = re.sub(r["ban_regex"], "", " ".join(words)).split()
        if r.get("require") and not any(w.lower() in {_norm(x) for x in words} for w in r["require"]):
            words = [r["require"][0], *words]
        protect = {w.lower() for w in r.get("require", [])}
        if r.get("max_words") is not None:
            while len(words) > r["max_words"]:  # drop from the end, keeping required words
                j = max((i for i, w in enumerate(words) if _norm(w) not in protect), default=len(words) - 1)
                words.pop(j)
        if r.get("min_words") is not None and len(words) < r["min_words"]:
            filler = r.get("filler") or ["ok"]
            words += [self.rng.choice(filler) for _ in range(r["min_words"] - len(words))]
        return " ".join(words)


class ModelCritic:
    """Asks a chat model for the critique and the revision (Anthropic's CAI prompt layout)."""

    def __init__(self, model, tok, max_new_tokens: int = 128, temperature: float = 0.0, seed: int = 0):
        from chinwag.generate.engine import Engine
        from chinwag.generate.sampling import SamplingParams

        self.engine = Engine(model, tok)
        self.params = SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
        self.tok = tok

    def _reply(self, messages) -> str:
        from chinwag.tokenizer.chat import render

        ids = render(messages, self.tok, add_generation_prompt=True).ids
        return self.engine.generate([ids], self.params)[0].text.strip()

    def critique(self, prompt: str, response: str, principle: Principle) -> str | None:
        return self._reply(self._chat(prompt, response, principle)) or None

    def revise(self, prompt: str, response: str, principle: Principle, critique: str) -> str:
        msgs = self._chat(prompt, response, principle) + [
            {"role": "assistant", "content": critique},
            {"role": "user", "content": principle.revision},
        ]
        return self._reply(msgs) or response

    @staticmethod
    def _chat(prompt, response, principle):
        return [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": response},
            {"role": "user", "content": principle.critique},
        ]


def critique_revise(
    prompt: str, response: str, principles: list[Principle], critic, rounds: int = 3
) -> tuple[str, list[dict]]:
    """Apply every principle in turn, for up to `rounds` passes (a later revision can break an earlier
    principle, e.g. trimming drops a required word); stops after a pass that finds nothing.
    Returns (final revision, [{principle, critique, revision}])."""
    trace = []
    for _ in range(rounds):
        changed = False
        for p in principles:
            crit = critic.critique(prompt, response, p)
            if crit is None:
                continue
            response = critic.revise(prompt, response, p, crit)
            trace.append({"principle": p.name, "critique": crit, "revision": response})
            changed = True
        if not changed:
            break
    return response, trace


def build_examples(prompts, responses, principles, critic) -> tuple[list[dict], list[dict], list[dict]]:
    """-> (SFT records, preference records, traces). SFT: every final revision (an untouched response is
    a fine target too); pairs only where the revision changed the response."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    sft, pairs, traces = [], [], []
    for p, r in zip(prompts, responses, strict=True):
        rev, trace = critique_revise(p, r, principles, critic)
        sft.append({"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": rev}]})
        if rev != r:
            pairs.append({"prompt": p, "chosen": rev, "rejected": r})
        traces.append({"prompt": p, "original": r, "revision": rev, "steps": trace})
    return sft, pairs, traces


def write_examples(out_dir: str | os.PathLike, sft, pairs, traces, report: dict | None = None) -> Path:
    """Write sft.jsonl, pairs.jsonl (preference JSONL for `chinwag align dpo|rm`), traces.jsonl and
    report.json."""
    from chinwag.utils import atomic_write_text, write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, recs in (("sft", sft), ("pairs", pairs), ("traces", traces)):
        atomic_write_text(
            out / f"{name}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs)
        )
    write_json(out / "report.json", {"n_sft": len(sft), "n_pairs": len(pairs), **(report or {})})
    return out


def violation_rate(responses, principles: list[Principle]) -> float:
    """Fraction of responses that break at least one rule-backed principle."""
    if not responses:
        return 0.0
    return sum(any(p.violated(r) for p in principles) for r in responses) / len(responses)
