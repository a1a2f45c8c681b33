"""The verifiable arithmetic task every alignment demo builds on (generated offline from a seeded RNG).

Prompts are "ab+cd=" with a, b in [0, 50), written with two digits ("07+32="), so every sum is < 100.
The SFT data is *biased*: with probability `bias` the answer is a+b+1 instead of a+b. RL with the exact-sum
reward must remove the bias; DPO on (correct > off-by-one) pairs must prefer the right answer.

The 2500 possible (a, b) pairs are split once, by a fixed permutation, into 2000 train pairs and 500 test
pairs, so "held-out" prompts are never seen in SFT or RL.
"""

from __future__ import annotations

import random
import re
import time
from functools import lru_cache

N_VALUES = 50
N_TEST = 500
_SPLIT_SEED = 1234
_PROMPT_RE = re.compile(r"^\s*(\d+)\s*\+\s*(\d+)\s*=\s*$")


def _split_pairs() -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    pairs = [(a, b) for a in range(N_VALUES) for b in range(N_VALUES)]
    random.Random(_SPLIT_SEED).shuffle(pairs)
    return pairs[N_TEST:], pairs[:N_TEST]


def format_prompt(a: int, b: int) -> str:
    return f"{a:02d}+{b:02d}="


def arith_prompts(n: int, seed: int, split: str = "train") -> list[str]:
    """`n` prompts drawn (with replacement) from the train or test pairs; split="test" with n <= 500 gives
    distinct held-out prompts."""
    train, test = _split_pairs()
    pool = {"train": train, "test": test}[split]
    rng = random.Random(seed)
    if split == "test" and n <= len(pool):
        picked = rng.sample(pool, n)
    else:
        picked = [rng.choice(pool) for _ in range(n)]
    return [format_prompt(a, b) for a, b in picked]


def parse_prompt(prompt: str) -> tuple[int, int]:
    m = _PROMPT_RE.match(prompt)
    if not m:
        raise ValueError(f"not an arithmetic prompt: {prompt!r}")
    return int(m.group(1)), int(m.group(2))


def arith_dataset(n: int, seed: int, bias: float = 0.6, split: str = "train") -> list[tuple[str, str]]:
    """(prompt, answer) pairs; with probability `bias` the answer is a+b+1 (the bias RL must remove)."""
    rng = random.Random(seed + 7919)
    out = []
    for p in arith_prompts(n, seed, split):
        a, b = parse_prompt(p)
        out.append((p, str(a + b + 1 if rng.random() < bias else a + b)))
    return out


def arith_reward(prompt: str, completion: str) -> float:
    """1.0 when the reply (up to its first <|end|>, whitespace stripped) is exactly str(a+b), else 0.0."""
    a, b = parse_prompt(prompt)
    reply = completion.split("<|end|>")[0].split("<|eos|>")[0].strip()
    return 1.0 if reply == str(a + b) else 0.0


# ---- the tiny SFT model -----------------------------------------------------------------------------------


def byte_tokenizer():
    """A 272-id tokenizer: the 256 single bytes (no merges, so every digit is its own token) + specials."""
    from chinwag.tokenizer import Tokenizer

    return Tokenizer.from_ranks({bytes([b]): b for b in range(256)}, name="bytes")


def tiny_config(vocab_size: int, **overrides):
    from chinwag.model import ModelConfig

    # Small on purpose: SFT is compute-bound on one CPU core, and this size learns two-digit addition to
    # ~4 % "other" errors in ~2 minutes, where d 128 x 3 layers got 3x fewer steps and stopped at ~21 %.
    kw = dict(vocab_size=vocab_size, d_model=64, n_layers=2, n_heads=4, max_seq_len=32)
    kw.update(overrides)
    return ModelConfig(**kw)


def sft_examples(tok, data: list[tuple[str, str]]) -> tuple[list[list[int]], list[list[int]]]:
    """Chat-render (prompt, answer) pairs -> (ids, loss masks): loss on the answer and its <|end|> only."""
    from chinwag.tokenizer.chat import render

    ids, masks = [], []
    for p, ans in data:
        r = render([{"role": "user", "content": p}, {"role": "assistant", "content": ans}], tok)
        ids.append(r.ids)
        masks.append(r.loss_mask)
    return ids, masks


def train_sft(
    model,
    tok,
    data,
    steps: int,
    batch_size: int = 128,
    lr: float = 3e-3,
    seed: int = 0,
    log=None,
    warmup_steps: int = 30,
) -> list[float]:
    """Plain SFT loop (AdamW, linear warmup, cosine decay to 10 %): returns the loss per step."""
    import math

    import torch

    from chinwag.align.common import pad_batch

    ids_l, masks_l = sft_examples(tok, data)
    ids, attn = pad_batch(ids_l, tok.pad_id)
    lmask, _ = pad_batch(masks_l, 0)
    targets = torch.where(lmask.bool(), ids, torch.full_like(ids, -100))[:, 1:]
    inputs, attn = ids[:, :-1], attn[:, :-1]
    opt = torch.optim.AdamW(model.param_groups(0.0), lr=lr, betas=(0.9, 0.98))
    g = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    for step in range(steps):
        for group in opt.param_groups:
            warm = min(1.0, (step + 1) / max(1, warmup_steps))
            group["lr"] = lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        idx = torch.randint(len(inputs), (batch_size,), generator=g)
        _, loss = model(inputs[idx], targets=targets[idx], attention_mask=attn[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if log is not None and (step % 100 == 0 or step == steps - 1):
            log(step, losses[-1])
    model.eval()
    return losses


@lru_cache(maxsize=4)
def _sft_cached(seed: int, steps: int, n_data: int, bias: float, lr: float, batch_size: int):
    import torch

    from chinwag.model import ChinwagLM

    tok = byte_tokenizer()
    torch.manual_seed(seed)
    model = ChinwagLM(tiny_config(tok.vocab_size))
    t0 = time.perf_counter()
    train_sft(model, tok, arith_dataset(n_data, seed, bias), steps, batch_size, lr, seed)
    seconds = time.perf_counter() - t0
    return model.state_dict(), tok, seconds


def sft_arith(
    seed: int = 0,
    steps: int = 3000,
    n_data: int = 20000,
    bias: float = 0.6,
    lr: float = 3e-3,
    batch_size: int = 128,
):
    """A tiny chinwag model (0.12M params, byte tokenizer) SFT'd on the biased arithmetic data with the chat
    template. Cached per process: each call returns a fresh model with the cached weights (so callers may
    train it), plus the tokenizer. `sft_arith.last_seconds` holds the (first) training time."""
    import torch

    from chinwag.model import ChinwagLM

    state, tok, seconds = _sft_cached(seed, steps, n_data, bias, lr, batch_size)
    model = ChinwagLM(tiny_config(tok.vocab_size))
    with torch.no_grad():
        model.load_state_dict(state)
    model.eval()
    sft_arith.last_seconds = seconds
    return model, tok


sft_arith.last_seconds = 0.0


# ---- evaluation ------------------------------------------------------------------------------------------


def sample_answers(model, tok, prompts: list[str], temperature: float = 1.0, seed: int = 0, n: int = 1):
    """(prompt ids, completion ids) for every prompt, sampled at `temperature` (0 = greedy, no top-k/p)."""
    from chinwag.align.common import chat_prompt_ids, rollout
    from chinwag.generate.sampling import SamplingParams

    pids = [chat_prompt_ids(tok, p) for p in prompts]
    params = SamplingParams(temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=6)
    return pids, rollout(model, tok, pids, params, n=n, seed=seed)


def sampled_accuracy(model, tok, prompts: list[str], temperature: float = 1.0, seed: int = 0) -> float:
    """Fraction of prompts whose sampled answer is the exact sum."""
    from chinwag.align.common import decode_completion

    _, comps = sample_answers(model, tok, prompts, temperature, seed)
    hits = [arith_reward(p, decode_completion(tok, c)) for p, c in zip(prompts, comps, strict=True)]
    return sum(hits) / max(1, len(hits))


def evaluate_arith(policy, ref, tok, prompts: list[str], seed: int = 0) -> dict:
    """Held-out sampled accuracy (T=1) and KL(policy || ref) in nats per completion: the mean over prompts
    of sum_t (log pi - log pi_ref) on the policy's own samples (k1, an unbiased estimate)."""
    import torch

    from chinwag.align.common import build_pairs, decode_completion, token_logprobs

    pids, comps = sample_answers(policy, tok, prompts, 1.0, seed)
    acc = sum(arith_reward(p, decode_completion(tok, c)) for p, c in zip(prompts, comps, strict=True))
    ids, attn, cm = build_pairs(tok, pids, comps)
    with torch.no_grad():
        lp = token_logprobs(policy, ids, attn)
        ref_lp = token_logprobs(ref, ids, attn)
    m = cm[:, 1:].float()
    kl = float((((lp - ref_lp) * m).sum(-1)).mean())
    return {"accuracy": acc / max(1, len(prompts)), "kl": kl}
