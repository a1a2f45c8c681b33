"""Speculative decoding: a small draft model guesses k tokens, the target checks them in one forward.

Each round:
  1. the draft samples x1..xk one at a time from its probabilities q1..qk;
  2. the target runs ONE forward over [last token, x1..xk] and gets p1..p(k+1);
  3. x_i is accepted with probability min(1, p_i(x_i) / q_i(x_i)); at the first rejection we instead draw
     from norm(max(0, p_i - q_i)) and the round ends; if all k are accepted we get a bonus token from p(k+1).
This is the rejection scheme of Leviathan et al. / Chen et al. (2023): every emitted token is distributed
exactly as the target's next-token distribution, whatever the draft is. Both models' probabilities come
from `probs_from_logits`, so temperature / top-k / top-p / penalties shape p and q identically. With
temperature 0 both are one-hot, so a draft token is accepted iff it is the target's argmax and a rejection
emits the target's argmax: the output is token-identical to the target's greedy decode.

The caches never roll back explicitly: the target cache always holds every token but the last one, and a
forward at start_pos < cache.length simply overwrites the rejected positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from chinwag.generate.beam import budget_for, cut_at_stop_strings, decode, device_of, stop_ids_for
from chinwag.generate.sampling import SamplingParams, probs_from_logits
from chinwag.model.model import KVCache


@dataclass
class SpecStats:
    rounds: int = 0
    target_forwards: int = 0  # verification forwards (the prompt prefill is counted separately)
    draft_forwards: int = 0
    drafted: int = 0
    accepted: int = 0
    new_tokens: int = 0
    prefill_forwards: int = 0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_target_forward(self) -> float:
        return self.new_tokens / self.target_forwards if self.target_forwards else 0.0

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["acceptance_rate"] = self.acceptance_rate
        d["tokens_per_target_forward"] = self.tokens_per_target_forward
        return d


@dataclass
class SpecResult:
    ids: list[int]
    text: str
    finish_reason: str  # "stop" | "length"
    stats: SpecStats = field(default_factory=SpecStats)


def accept_or_resample(
    p: torch.Tensor, q: torch.Tensor, drafted: list[int], generator=None
) -> tuple[int, int]:
    """The acceptance rule. p [k+1, V] target probs, q [k, V] draft probs, drafted the k draft ids.

    Returns (n_accepted, next_token): the first n_accepted drafts stand, then next_token (a resample from
    norm(max(0, p - q)) at the first rejection, or the bonus draw from p[k] when all were accepted).
    """
    k = len(drafted)
    idx = torch.tensor(drafted, device=p.device)
    rows = torch.arange(k, device=p.device)
    ratio = p[rows, idx] / q[rows, idx]  # q[x] > 0: x was drawn from q
    u = torch.rand(k, generator=generator, device=p.device)
    rejected = (u >= ratio).nonzero()  # accept iff u < min(1, ratio)
    if len(rejected) == 0:
        return k, _draw(p[k], generator)
    i = int(rejected[0])
    residual = (p[i] - q[i]).clamp(min=0)
    if float(residual.sum()) <= 0:  # p == q up to rounding (a rejection then has probability ~0)
        residual = p[i]
    return i, _draw(residual / residual.sum(), generator)


def _draw(probs: torch.Tensor, generator) -> int:
    return int(torch.multinomial(probs.float(), 1, generator=generator))


@torch.inference_mode()
def speculative_generate(
    target,
    draft,
    tok,
    prompt_ids: list[int],
    params: SamplingParams | None = None,
    k: int = 4,
    generator: torch.Generator | None = None,
) -> SpecResult:
    """Generate from `target` with `draft` proposing k tokens per round. Returns ids (without the stop
    token), text (cut at params.stop strings), finish_reason and SpecStats (acceptance rate, tokens per
    target forward). Seeded by params.seed unless a generator is passed."""
    params = params or SamplingParams()
    params.validate()
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if draft.config.vocab_size != target.config.vocab_size:
        raise ValueError(
            f"draft vocab_size {draft.config.vocab_size} != target vocab_size {target.config.vocab_size}; "
            "the models must share a tokenizer"
        )
    device = device_of(target)
    if generator is None and params.seed is not None:
        generator = torch.Generator(device=device).manual_seed(params.seed)
    # a round may write k + 1 positions past the accepted text before trimming: keep that much scratch room
    budget = budget_for(target, prompt_ids, params.max_new_tokens, margin=k)
    budget = min(budget, draft.config.max_seq_len - len(prompt_ids) - k)
    if budget < 1:
        raise ValueError(f"prompt of {len(prompt_ids)} tokens leaves no room for k={k} drafts")
    max_len = len(prompt_ids) + budget + k + 1
    stops = stop_ids_for(tok, params)
    t_cache = KVCache.for_model(target, 1, max_len)
    d_cache = KVCache.for_model(draft, 1, max_len)
    stats = SpecStats()

    def fwd(model, cache, ids, start):
        x = torch.tensor([ids], dtype=torch.long, device=device)
        return model(x, kv_cache=cache, start_pos=start)[0][0].float()  # [T, V]

    seq = list(prompt_ids)
    # invariant: the target cache holds seq[:-1]; the draft cache holds seq[:d_valid]
    if len(seq) > 1:
        fwd(target, t_cache, seq[:-1], 0)
        stats.prefill_forwards += 1
    d_valid = 0
    out: list[int] = []
    finish = "length"
    while len(out) < budget:
        kk = min(k, budget - len(out))  # never draft past the budget
        # 1. draft kk tokens (the first draft forward also catches up on tokens it has not seen)
        drafted, q_rows = [], []
        feed, start = seq[d_valid:], d_valid
        for _ in range(kk):
            logits = fwd(draft, d_cache, feed, start)[-1:]
            stats.draft_forwards += 1
            q = probs_from_logits(logits, params, [out + drafted])[0]
            x = _draw(q, generator)
            q_rows.append(q)
            drafted.append(x)
            start += len(feed)
            feed = [x]
        # 2. one target forward over [last, x1..xkk] -> p1..p(kk+1)
        logits = fwd(target, t_cache, [seq[-1]] + drafted, len(seq) - 1)
        stats.target_forwards += 1
        history = [out + drafted[:i] for i in range(kk + 1)]  # penalties count generated ids
        p = probs_from_logits(logits, params, history)
        # 3. accept / resample
        n_acc, nxt = accept_or_resample(p, torch.stack(q_rows), drafted, generator)
        stats.rounds += 1
        stats.drafted += kk
        stats.accepted += n_acc
        d_valid = len(seq) + min(n_acc, kk - 1)  # the draft never saw its own last draft
        new = drafted[:n_acc] + [nxt]
        for t in new:
            if t in stops:
                finish = "stop"
                break
            out.append(t)
            seq.append(t)
            if len(out) >= budget:
                break
        if finish == "stop":
            break
        d_valid = min(d_valid, len(seq) - 1)
    stats.new_tokens = len(out) + (finish == "stop")
    text, cut = cut_at_stop_strings(decode(tok, out), getattr(params, "stop", None))
    return SpecResult(out, text, "stop" if cut else finish, stats)
