"""Best-of-N: sample N completions in one batch, score each with a scorer, return the best and all scores.

The prompt is prefilled once and its cache copied to N rows; the rows then decode together, one forward
per step, each stopping on its own (finished rows keep running but their tokens are ignored; the batch
ends when every row has stopped or the budget is spent).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from chinwag.generate.beam import (
    budget_for,
    cut_at_stop_strings,
    decode,
    device_of,
    prefill,
    repeat_cache,
    stop_ids_for,
)
from chinwag.generate.sampling import SamplingParams, sample
from chinwag.generate.scorers import Scorer


@dataclass
class Candidate:
    ids: list[int]  # without the stop token
    text: str
    score: float
    finish_reason: str  # "stop" | "length"


@dataclass
class BestOfNResult:
    ids: list[int]
    text: str
    score: float
    index: int  # which candidate won
    candidates: list[Candidate] = field(default_factory=list)  # in sampling order

    @property
    def scores(self) -> list[float]:
        return [c.score for c in self.candidates]


@torch.inference_mode()
def sample_n(
    model, tok, prompt_ids: list[int], n: int, params: SamplingParams, generator=None
) -> list[Candidate]:
    """N sampled completions (unscored: score = nan), decoded as one batch of N rows."""
    params.validate()
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    device = device_of(model)
    if generator is None and params.seed is not None:
        generator = torch.Generator(device=device).manual_seed(params.seed)
    budget = budget_for(model, prompt_ids, params.max_new_tokens)
    stops = stop_ids_for(tok, params)
    logits, cache = prefill(model, prompt_ids, len(prompt_ids) + budget)
    cache = repeat_cache(cache, n)
    logits = logits.expand(n, -1)
    outs: list[list[int]] = [[] for _ in range(n)]
    done = [False] * n
    pos = len(prompt_ids)
    for step in range(budget):
        nxt = sample(logits, params, outs, generator=generator).tolist()  # penalties see generated ids
        for i, t in enumerate(nxt):
            if not done[i]:
                if t in stops:
                    done[i] = True
                else:
                    outs[i].append(t)
        if all(done) or step == budget - 1:
            break
        ids = torch.tensor(nxt, dtype=torch.long, device=device)[:, None]
        out, _ = model(ids, kv_cache=cache, start_pos=pos)
        logits = out[:, -1]
        pos += 1
    cands = []
    for o, d in zip(outs, done, strict=True):
        text, cut = cut_at_stop_strings(decode(tok, o), getattr(params, "stop", None))
        cands.append(Candidate(o, text, float("nan"), "stop" if d or cut else "length"))
    return cands


def best_of_n(
    model,
    tok,
    prompt_ids: list[int],
    scorer: Scorer,
    n: int = 4,
    params: SamplingParams | None = None,
    generator=None,
) -> BestOfNResult:
    """Sample n completions, score each with `scorer.score(prompt_ids, completion_ids, text)`, return the
    highest-scoring one (ties: the earliest) with every candidate and score."""
    cands = sample_n(model, tok, prompt_ids, n, params or SamplingParams(), generator)
    for c in cands:
        c.score = float(scorer.score(list(prompt_ids), c.ids, c.text))
    best = max(range(n), key=lambda i: (cands[i].score, -i))
    b = cands[best]
    return BestOfNResult(b.ids, b.text, b.score, best, cands)
