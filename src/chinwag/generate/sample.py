"""Minimal sampling loop over the model's KV cache: what `chinwag chat` and the quickstart use.

One prompt at a time, prefill once, then one token per forward. The full engine (batching, paged cache,
beam search, speculative decoding) builds on the same model API.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch


@dataclass
class SamplingParams:
    temperature: float = 0.8  # 0 = greedy
    top_k: int = 50  # 0 = off
    top_p: float = 0.95  # 1.0 = off
    max_new_tokens: int = 256
    seed: int | None = None

    def validate(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


def sample_token(logits: torch.Tensor, p: SamplingParams, gen: torch.Generator | None) -> int:
    """Pick one id from a [vocab] logits row: greedy, or temperature + top-k + top-p."""
    if p.temperature == 0:
        return int(logits.argmax())
    logits = logits.float() / p.temperature
    if p.top_k:
        kth = torch.topk(logits, min(p.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if p.top_p < 1.0:
        sorted_p, idx = torch.sort(probs, descending=True)
        # keep the smallest prefix whose mass reaches top_p (always at least the top token)
        drop = sorted_p.cumsum(-1) - sorted_p > p.top_p
        sorted_p[drop] = 0
        probs = torch.zeros_like(probs).scatter_(0, idx, sorted_p)
    return int(torch.multinomial(probs, 1, generator=gen))


@torch.inference_mode()
def generate(
    model, prompt_ids: list[int], params: SamplingParams, stop_ids: Iterable[int] = ()
) -> Iterator[int]:
    """Yield new token ids until a stop id (not yielded), max_new_tokens, or the context is full."""
    from chinwag.model.model import KVCache

    params.validate()
    cfg = model.config
    if not prompt_ids:
        raise ValueError("empty prompt")
    if len(prompt_ids) >= cfg.max_seq_len:
        raise ValueError(f"prompt has {len(prompt_ids)} tokens; the model's context is {cfg.max_seq_len}")
    device = next(model.parameters()).device
    gen = None
    if params.seed is not None:
        gen = torch.Generator(device=device).manual_seed(params.seed)
    stop = set(stop_ids)
    budget = min(params.max_new_tokens, cfg.max_seq_len - len(prompt_ids))
    cache = KVCache.for_model(model, batch_size=1, max_len=len(prompt_ids) + budget)
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    logits, _ = model(ids, kv_cache=cache, start_pos=0)
    pos = len(prompt_ids)
    for _ in range(budget):
        nxt = sample_token(logits[0, -1], params, gen)
        if nxt in stop:
            return
        yield nxt
        logits, _ = model(torch.tensor([[nxt]], device=device), kv_cache=cache, start_pos=pos)
        pos += 1


def stream_text(tok, ids: Iterable[int]) -> Iterator[str]:
    """Turn a stream of ids into text deltas without ever splitting a multi-byte UTF-8 character."""
    dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for i in ids:
        piece = dec.decode(tok.decode_bytes([i]))
        if piece:
            yield piece
    tail = dec.decode(b"", final=True)
    if tail:
        yield tail
