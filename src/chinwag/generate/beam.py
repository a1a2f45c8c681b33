"""Beam search over the model's KV cache, batched over beams.

Keeps `num_beams` live hypotheses. Each step runs ONE forward over all live beams, adds each beam's
running log-prob to its next-token log-probs, and takes the best 2 * num_beams (beam, token) pairs: a pair
ending in a stop token becomes a finished hypothesis, the rest refill the beams. The cache rows are then
gathered by the chosen parent beam, so every row again holds its own history. Scoring follows Hugging Face:
score = sum of log-probs / generated_len ** length_penalty (generated_len counts the stop token, whose
log-prob is in the sum), so length_penalty > 0 favours longer answers and < 0 shorter ones.

Also home to the small helpers the other strategies share: stop ids and cache copy / gather.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from chinwag.model.model import KVCache

# ---- shared helpers ---------------------------------------------------------------------------------------


def stop_ids_for(tok, params=None, extra=()) -> set[int]:
    """Token ids that end a completion: the tokenizer's <|end|> and <|eos|>, the params' stop_token_ids and
    `extra`. `tok` may be None (tests with a bare model)."""
    ids = set(extra)
    for name in ("end_id", "eos_id"):
        i = getattr(tok, name, None) if tok is not None else None
        if i is not None:
            ids.add(int(i))
    if params is not None:
        ids.update(int(i) for i in (getattr(params, "stop_token_ids", None) or ()))
    return ids


def decode(tok, ids: list[int]) -> str:
    return tok.decode(ids) if tok is not None else ""


def cut_at_stop_strings(text: str, stops) -> tuple[str, bool]:
    """Cut `text` at the first stop string (the stop string itself is not kept)."""
    cuts = [text.find(s) for s in (stops or ()) if s and s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


def device_of(model) -> torch.device:
    return next(model.parameters()).device


def repeat_cache(cache: KVCache, n: int) -> KVCache:
    """A batch-n copy of a batch-1 cache (prefill once, then fan out to beams / samples)."""
    out = KVCache.__new__(KVCache)
    out.k = cache.k.expand(-1, n, -1, -1, -1).contiguous()
    out.v = cache.v.expand(-1, n, -1, -1, -1).contiguous()
    out.mask = cache.mask.expand(n, -1).contiguous()
    out.length, out.batch_size, out.max_len = cache.length, n, cache.max_len
    return out


def reorder_cache(cache: KVCache, rows: torch.Tensor) -> None:
    """In place: row i of the cache becomes old row rows[i] (the beam it was extended from)."""
    cache.k = cache.k.index_select(1, rows)
    cache.v = cache.v.index_select(1, rows)
    cache.mask = cache.mask.index_select(0, rows)
    cache.batch_size = len(rows)


@torch.inference_mode()
def prefill(model, prompt_ids: list[int], max_len: int) -> tuple[torch.Tensor, KVCache]:
    """Run the prompt through a fresh batch-1 cache; returns (last-position logits [1, V], cache)."""
    cache = KVCache.for_model(model, batch_size=1, max_len=max_len)
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=device_of(model))
    logits, _ = model(ids, kv_cache=cache, start_pos=0)
    return logits[:, -1].float(), cache


def budget_for(model, prompt_ids: list[int], max_new_tokens: int, margin: int = 0) -> int:
    """New tokens that fit: max_new_tokens capped by the context window (minus `margin` scratch slots)."""
    if not prompt_ids:
        raise ValueError("empty prompt")
    room = model.config.max_seq_len - len(prompt_ids) - margin
    if room < 1:
        raise ValueError(
            f"prompt has {len(prompt_ids)} tokens; the model's context is {model.config.max_seq_len}"
        )
    return min(max_new_tokens, room)


def penalties_only(params):
    """The params with the distribution-shaping knobs (temperature, top-k/p, min-p) turned off, so
    process_logits applies only penalties and logit bias: beam scores stay true log-probs."""
    if params is None:
        return None
    return dataclasses.replace(params, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)


# ---- beam search ------------------------------------------------------------------------------------------


@dataclass
class Hypothesis:
    ids: list[int]  # completion ids, without the stop token
    logprob: float  # sum of token log-probs (the stop token's included)
    score: float  # logprob / length ** length_penalty
    finished: bool  # ended with a stop token (False: ran out of max_new_tokens)
    text: str = ""


@dataclass
class BeamResult:
    ids: list[int]
    text: str
    score: float
    logprob: float
    beams: list[Hypothesis] = field(default_factory=list)  # all kept hypotheses, best first
    steps: int = 0


def _score(logprob: float, length: int, length_penalty: float) -> float:
    return logprob / (max(length, 1) ** length_penalty)


@torch.inference_mode()
def beam_search(
    model,
    tok,
    prompt_ids: list[int],
    params=None,
    num_beams: int = 4,
    length_penalty: float = 1.0,
    early_stopping: bool = False,
    max_new_tokens: int | None = None,
    stop_token_ids=(),
) -> BeamResult:
    """Beam search from `prompt_ids`. `params` (a SamplingParams, optional) supplies max_new_tokens,
    stop_token_ids and the repetition/presence/frequency penalties and logit bias; temperature and
    top-k/top-p do not apply to beam search.

    early_stopping=True stops as soon as num_beams hypotheses are finished; False (HF's default) stops when
    no live beam can still beat the worst kept one at its current length.
    """
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    if max_new_tokens is None:
        max_new_tokens = params.max_new_tokens if params is not None else 64
    budget = budget_for(model, prompt_ids, max_new_tokens)
    stops = stop_ids_for(tok, params, stop_token_ids)
    shaping = penalties_only(params)
    if shaping is not None:
        from chinwag.generate.sampling import process_logits

    device = device_of(model)
    logits, cache = prefill(model, prompt_ids, len(prompt_ids) + budget)
    cache = repeat_cache(cache, num_beams)
    logits = logits.expand(num_beams, -1)
    seqs: list[list[int]] = [[] for _ in range(num_beams)]
    # all beams start identical: only beam 0 may be extended at step 0, or we'd pick the same token n times
    running = torch.full((num_beams,), float("-inf"), device=device)
    running[0] = 0.0
    finished: list[Hypothesis] = []
    pos, step = len(prompt_ids), 0
    while True:
        if shaping is not None:
            logits = process_logits(logits, shaping, seqs)  # penalties count generated ids
        logp = F.log_softmax(logits.float(), dim=-1) + running[:, None]  # [nb, V] total log-prob
        V = logp.shape[-1]
        top, flat = logp.view(-1).topk(min(2 * num_beams, logp.numel()))
        parents, tokens = (flat // V).tolist(), (flat % V).tolist()
        cur_len = step + 1  # tokens generated once this step's token is appended
        new_parents, new_tokens, new_scores = [], [], []
        for rank, (lp, b, t) in enumerate(zip(top.tolist(), parents, tokens, strict=True)):
            if lp == float("-inf"):
                break
            if t in stops:
                if rank < num_beams:  # HF: a stop beyond the top num_beams would have been pruned anyway
                    finished.append(Hypothesis(seqs[b], lp, _score(lp, cur_len, length_penalty), True))
                continue
            new_parents.append(b)
            new_tokens.append(t)
            new_scores.append(lp)
            if len(new_tokens) == num_beams:
                break
        finished = sorted(finished, key=lambda h: -h.score)[:num_beams]
        step += 1
        if not new_tokens or _done(finished, new_scores, cur_len, num_beams, length_penalty, early_stopping):
            break
        while len(new_tokens) < num_beams:  # fewer non-stop candidates than beams: pad with dead beams
            new_parents.append(new_parents[0])
            new_tokens.append(new_tokens[0])
            new_scores.append(float("-inf"))
        seqs = [seqs[b] + [t] for b, t in zip(new_parents, new_tokens, strict=True)]
        running = torch.tensor(new_scores, device=device)
        if step >= budget:  # out of tokens: the live beams compete as they are (HF finalize)
            for s, lp in zip(seqs, new_scores, strict=True):
                if lp > float("-inf"):
                    finished.append(Hypothesis(s, lp, _score(lp, len(s), length_penalty), False))
            break
        reorder_cache(cache, torch.tensor(new_parents, device=device))
        ids = torch.tensor(new_tokens, dtype=torch.long, device=device)[:, None]
        out, _ = model(ids, kv_cache=cache, start_pos=pos)
        logits = out[:, -1]
        pos += 1
    finished = sorted(finished, key=lambda h: -h.score)[:num_beams]
    for h in finished:
        h.text = decode(tok, h.ids)
    best = finished[0]
    return BeamResult(best.ids, best.text, best.score, best.logprob, finished, step)


def _done(finished, running_scores, cur_len, num_beams, length_penalty, early_stopping) -> bool:
    if len(finished) < num_beams:
        return False
    if early_stopping:
        return True
    # HF's heuristic: the best live beam, scored at its current length, cannot beat the worst kept one
    best_live = max(running_scores) if running_scores else float("-inf")
    return finished[-1].score >= _score(best_live, cur_len, length_penalty)
