"""One-prompt helpers on top of the engine: what `chinwag chat` and the quickstart use.

`generate(model, prompt_ids, params, stop_ids)` yields token ids; `stream_text(tok, ids)` turns ids into
UTF-8-safe text deltas. Batching, paged caches, stop strings and log-probs live in `engine.Engine`.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Iterator

import torch

from chinwag.generate import sampling

SamplingParams = sampling.SamplingParams  # re-exported: the one-prompt helpers and the engine share it


def sample_token(logits: torch.Tensor, p: sampling.SamplingParams, gen: torch.Generator | None) -> int:
    """Pick one id from a [vocab] logits row with the full sampling pipeline (no history)."""
    return int(sampling.sample(logits[None], p, None, gen)[0])


def generate(
    model, prompt_ids: list[int], params: sampling.SamplingParams, stop_ids: Iterable[int] = ()
) -> Iterator[int]:
    """Yield new token ids until a stop id (not yielded), max_new_tokens, or the context is full."""
    from dataclasses import replace

    from chinwag.generate.engine import Engine

    params.validate()
    if not prompt_ids:
        raise ValueError("empty prompt")
    params = replace(params, stop_token_ids=[*params.stop_token_ids, *stop_ids], stop=[])
    engine = Engine(model, None, max_batch=1)
    for delta in engine.stream(list(prompt_ids), params):
        yield from delta.token_ids


def stream_text(tok, ids: Iterable[int]) -> Iterator[str]:
    """Turn a stream of ids into text deltas without ever splitting a multi-byte UTF-8 character."""
    dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for i in ids:
        piece = dec.decode(tok.token_bytes(i))
        if piece:
            yield piece
    tail = dec.decode(b"", final=True)
    if tail:
        yield tail
