"""Sampling controls: one `SamplingParams` per request, and batched logits -> ids.

Every function takes a batch of logits [B, V] and either one `SamplingParams` for all rows or a list (one
per row), so a running batch can mix greedy and sampled requests. The pipeline, in order:

    penalties (repetition, presence, frequency; over `history`) -> logit_bias -> temperature
    -> top-k -> top-p -> min-p

Removed tokens become -inf. Greedy rows (temperature 0) keep only their argmax. `history[i]` is the list of
ids the penalties count for row i; the engine passes the generated tokens (as OpenAI and vLLM do), so a
chat prompt's words are not penalised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

NEG_INF = float("-inf")


@dataclass
class SamplingParams:
    temperature: float = 0.8  # 0 = greedy
    top_k: int = 50  # 0 = off
    top_p: float = 0.95  # 1.0 = off
    min_p: float = 0.0  # 0 = off: drop tokens below min_p * p(most likely token)
    repetition_penalty: float = 1.0  # 1 = off; CTRL: seen ids' logits divided (if > 0) / multiplied (if < 0)
    presence_penalty: float = 0.0  # subtracted once from every seen id's logit
    frequency_penalty: float = 0.0  # subtracted per occurrence
    logit_bias: dict[int, float] | None = None  # id -> added to the logit (-inf bans, large forces)
    stop: list[str] = field(default_factory=list)  # output is cut exactly before the first stop string
    stop_token_ids: list[int] = field(default_factory=list)  # in addition to the engine's <|end|>/<|eos|>
    max_new_tokens: int = 256
    seed: int | None = None  # same seed -> same text, whatever else is in the batch
    logprobs: bool = False  # return the chosen token's log-prob (raw model distribution)
    top_logprobs: int = 0  # ... and this many most likely alternatives

    def __post_init__(self):
        if isinstance(self.stop, str):  # a lone string is one stop string, not a list of characters
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""

        def need(ok: bool, name: str, msg: str):
            if not ok:
                raise ValueError(f"sampling field {name!r}: {msg} (got {getattr(self, name)!r})")

        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        need(is_num(self.temperature) and self.temperature >= 0, "temperature", "must be >= 0")
        need(is_int(self.top_k) and self.top_k >= 0, "top_k", "must be an integer >= 0")
        need(is_num(self.top_p) and 0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        need(is_num(self.min_p) and 0 <= self.min_p <= 1, "min_p", "must be in [0, 1]")
        need(
            is_num(self.repetition_penalty) and self.repetition_penalty > 0,
            "repetition_penalty",
            "must be > 0",
        )
        need(is_num(self.presence_penalty), "presence_penalty", "must be a finite number")
        need(is_num(self.frequency_penalty), "frequency_penalty", "must be a finite number")
        if self.logit_bias is not None:
            need(isinstance(self.logit_bias, dict), "logit_bias", "must be a dict {token id: bias}")
            for k, v in self.logit_bias.items():
                need(is_int(k) and k >= 0, "logit_bias", f"key {k!r} is not a token id")
                ok = isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)
                need(ok, "logit_bias", f"bias {v!r} for id {k} is not a number")
        need(all(isinstance(s, str) and s for s in self.stop), "stop", "must be non-empty strings")
        need(all(is_int(i) and i >= 0 for i in self.stop_token_ids), "stop_token_ids", "must be token ids")
        need(is_int(self.max_new_tokens) and self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1")
        need(self.seed is None or is_int(self.seed), "seed", "must be an integer or None")
        need(isinstance(self.logprobs, bool), "logprobs", "must be true or false")
        need(is_int(self.top_logprobs) and 0 <= self.top_logprobs <= 20, "top_logprobs", "must be in 0..20")

    @property
    def greedy(self) -> bool:
        # below ~1e-5, logits / temperature overflows float32 and softmax turns to NaN: that is greedy anyway
        return self.temperature < 1e-5

    def uses_history(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0 or self.frequency_penalty != 0


def _per_row(params: SamplingParams | list[SamplingParams], B: int) -> list[SamplingParams]:
    if isinstance(params, SamplingParams):
        return [params] * B
    params = list(params)
    if len(params) != B:
        raise ValueError(f"got {len(params)} SamplingParams for a batch of {B} rows")
    return params


def _col(ps: list[SamplingParams], name: str, device) -> torch.Tensor:
    """One field of every row as a float column [B, 1] (broadcasts over the vocabulary)."""
    return torch.tensor([float(getattr(p, name)) for p in ps], device=device)[:, None]


def _apply_penalties(x: torch.Tensor, ps: list[SamplingParams], history: list[list[int]]) -> torch.Tensor:
    B, V = x.shape
    if len(history) != B:
        raise ValueError(f"history has {len(history)} rows for a batch of {B}")
    counts = torch.zeros(B, V, device=x.device)
    for i, h in enumerate(history):
        if h and ps[i].uses_history():
            counts[i] = torch.bincount(torch.as_tensor(h, device=x.device), minlength=V)[:V].float()
    seen = counts > 0
    rep = _col(ps, "repetition_penalty", x.device)
    x = torch.where(seen, torch.where(x > 0, x / rep, x * rep), x)
    return (
        x - counts * _col(ps, "frequency_penalty", x.device) - seen * _col(ps, "presence_penalty", x.device)
    )


def _apply_bias(x: torch.Tensor, ps: list[SamplingParams]) -> torch.Tensor:
    V = x.shape[1]
    for i, p in enumerate(ps):
        if p.logit_bias:
            ids = [int(k) for k in p.logit_bias]
            if max(ids) >= V or min(ids) < 0:
                raise ValueError(f"sampling field 'logit_bias': token id outside the vocabulary (size {V})")
            vals = torch.tensor([float(v) for v in p.logit_bias.values()], device=x.device)
            x[i, ids] += vals
    return x


def _truncate(x: torch.Tensor, ps: list[SamplingParams]) -> torch.Tensor:
    """top-k, then top-p on the renormalised survivors, then min-p; rows already divided by temperature."""
    B, V = x.shape
    dev = x.device
    if any(0 < p.top_k < V for p in ps):
        k = torch.tensor([p.top_k if 0 < p.top_k < V else V for p in ps], device=dev)
        kth = x.sort(dim=-1, descending=True).values.gather(1, (k - 1)[:, None])
        x = x.masked_fill(x < kth, NEG_INF)  # ties with the k-th value survive (as in HF)
    if any(p.top_p < 1.0 for p in ps):
        sorted_x, idx = x.sort(dim=-1, descending=True)
        sp = sorted_x.softmax(-1)
        # drop a token when the mass strictly before it already reaches top_p: the kept prefix is the
        # smallest one whose mass >= top_p, and the most likely token always survives
        drop_sorted = (sp.cumsum(-1) - sp) >= _col(ps, "top_p", dev)
        drop = torch.zeros_like(drop_sorted).scatter_(1, idx, drop_sorted)
        x = x.masked_fill(drop, NEG_INF)
    if any(p.min_p > 0 for p in ps):
        probs = x.softmax(-1)
        x = x.masked_fill(probs < _col(ps, "min_p", dev) * probs.max(-1, keepdim=True).values, NEG_INF)
    return x


def process_logits(
    logits: torch.Tensor,
    params: SamplingParams | list[SamplingParams],
    history: list[list[int]] | None = None,
) -> torch.Tensor:
    """logits [B, V] (or [V]) -> processed float32 logits, -inf for every removed token.

    Greedy rows keep only their (penalised, biased) argmax, so softmax of a greedy row is one-hot.
    """
    squeeze = logits.dim() == 1
    x = logits.float().reshape(-1, logits.shape[-1]).clone()
    B, V = x.shape
    ps = _per_row(params, B)
    if history is not None and any(p.uses_history() for p in ps):
        x = _apply_penalties(x, ps, history)
    x = _apply_bias(x, ps)
    greedy = torch.tensor([p.greedy for p in ps], device=x.device)
    if bool(greedy.any()):
        onehot = torch.zeros_like(x, dtype=torch.bool).scatter_(1, x.argmax(-1, keepdim=True), True)
        x = torch.where(greedy[:, None] & ~onehot, NEG_INF, x)
    temps = torch.tensor([1.0 if p.greedy else p.temperature for p in ps], device=x.device)
    x = x / temps[:, None]
    sampled = [i for i, p in enumerate(ps) if not p.greedy]
    if sampled:
        rows = torch.tensor(sampled, device=x.device)
        x[rows] = _truncate(x[rows], [ps[i] for i in sampled])
    # a row whose penalties and bias removed every token (or produced NaN) falls back to the raw logits
    dead = ~(torch.isfinite(x) & (x > NEG_INF)).any(-1)
    if bool(dead.any()):
        raw = logits.float().reshape(-1, V)
        x[dead] = torch.where(
            raw[dead].argmax(-1, keepdim=True) == torch.arange(V, device=x.device), 0.0, NEG_INF
        )
    return x[0] if squeeze else x


def probs_from_logits(
    logits: torch.Tensor,
    params: SamplingParams | list[SamplingParams],
    history: list[list[int]] | None = None,
) -> torch.Tensor:
    """The distribution `sample` draws from: softmax of `process_logits` (one-hot at argmax if greedy)."""
    return process_logits(logits, params, history).softmax(-1)


def _needs_processing(ps: list[SamplingParams], history) -> bool:
    return any(not p.greedy or p.logit_bias or (history is not None and p.uses_history()) for p in ps)


def sample(
    logits: torch.Tensor,
    params: SamplingParams | list[SamplingParams],
    history: list[list[int]] | None = None,
    generator: torch.Generator | list[torch.Generator | None] | None = None,
) -> torch.Tensor:
    """Draw one id per row: logits [B, V] -> ids [B] (long).

    `generator` is one torch.Generator for all rows, or one per row (what makes a seeded request's text
    independent of its batch mates: each row consumes only its own random stream).
    """
    squeeze = logits.dim() == 1
    logits2 = logits.reshape(-1, logits.shape[-1])
    B = logits2.shape[0]
    ps = _per_row(params, B)
    if not _needs_processing(ps, history):  # all greedy, nothing to add: skip the copies
        out = logits2.argmax(-1)
        return out[0] if squeeze else out
    x = process_logits(logits2, ps, history)
    out = x.argmax(-1)  # greedy rows are done
    sampled = [i for i, p in enumerate(ps) if not p.greedy]
    if sampled:
        probs = x[sampled].softmax(-1)
        if isinstance(generator, (list, tuple)):
            for j, i in enumerate(sampled):
                out[i] = torch.multinomial(probs[j], 1, generator=generator[i])[0]
        else:
            out[sampled] = torch.multinomial(probs, 1, generator=generator)[:, 0]
    return out[0] if squeeze else out


def token_logprobs(
    logits: torch.Tensor, chosen: torch.Tensor, k: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-probs from the RAW model distribution (log_softmax of unprocessed logits), as OpenAI reports.

    Returns (chosen_logprob [B], top_ids [B, k], top_logprobs [B, k]); k = 0 gives empty [B, 0] tensors.
    """
    lp = torch.log_softmax(logits.float().reshape(-1, logits.shape[-1]), dim=-1)
    chosen = chosen.reshape(-1).to(device=lp.device, dtype=torch.long)
    chosen_lp = lp.gather(1, chosen[:, None])[:, 0]
    if k > 0:
        top = lp.topk(min(k, lp.shape[-1]), dim=-1)
        return chosen_lp, top.indices, top.values
    empty = lp.new_zeros(lp.shape[0], 0)
    return chosen_lp, empty.long(), empty
