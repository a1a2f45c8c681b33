"""Scorers for best-of-N and tree search: anything with `score(prompt_ids, completion_ids, text) -> float`
(higher is better).

- MeanLogProbScorer: the mean log-prob of the completion under a model (the model's own confidence).
- FunctionScorer: a plain Python `f(prompt_text, completion_text) -> float` (rules, regexes, unit tests).
- RewardModelScorer: a hook for a reward model, any callable on ids `(prompt_ids, completion_ids) -> float`;
  the real reward model arrives with the alignment work and plugs in here unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F


@runtime_checkable
class Scorer(Protocol):
    def score(self, prompt_ids: list[int], completion_ids: list[int], text: str) -> float: ...


class MeanLogProbScorer:
    """Mean natural-log probability per completion token, from one uncached forward over prompt +
    completion. An empty completion scores -inf (it says nothing)."""

    def __init__(self, model):
        self.model = model

    @torch.inference_mode()
    def score(self, prompt_ids: list[int], completion_ids: list[int], text: str = "") -> float:
        if not completion_ids:
            return float("-inf")
        device = next(self.model.parameters()).device
        ids = torch.tensor([list(prompt_ids) + list(completion_ids)], dtype=torch.long, device=device)
        logits, _ = self.model(ids[:, :-1])
        logp = F.log_softmax(logits[0, len(prompt_ids) - 1 :].float(), dim=-1)
        target = ids[0, len(prompt_ids) :]
        return float(logp.gather(-1, target[:, None]).mean())


class FunctionScorer:
    """Wraps `fn(prompt_text, completion_text) -> float`; the prompt is decoded with `tok`."""

    def __init__(self, fn: Callable[[str, str], float], tok):
        self.fn, self.tok = fn, tok

    def score(self, prompt_ids: list[int], completion_ids: list[int], text: str) -> float:
        return float(self.fn(self.tok.decode(prompt_ids), text))


class RewardModelScorer:
    """Hook for a reward model: `reward_fn(prompt_ids, completion_ids) -> float` (e.g. a value head's
    output on the concatenation). Kept as a callable so this module needs no reward-model code."""

    def __init__(self, reward_fn: Callable[[list[int], list[int]], float]):
        self.reward_fn = reward_fn

    def score(self, prompt_ids: list[int], completion_ids: list[int], text: str = "") -> float:
        return float(self.reward_fn(list(prompt_ids), list(completion_ids)))
