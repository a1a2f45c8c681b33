"""Shared pieces of every alignment algorithm: batching, log-probs, masked statistics, KL estimators and
rollouts from the inference engine.

Conventions (used by rm, dpo, ppo, group):
- Sequences are right-padded. `attention_mask` marks real tokens; `completion_mask` marks the tokens the
  policy generated (including the final <|end|>/<|eos|> when there is one), never the prompt or padding.
- `token_logprobs` returns [B, T-1]: column t is log p(ids[t+1] | ids[:t+1]). Slice a mask with `[:, 1:]`
  to line it up with these columns.
- Every statistic is masked: padding never enters a mean, a variance, an entropy or a KL.
"""

from __future__ import annotations

import dataclasses

import torch

# ---- batching --------------------------------------------------------------------------------------------


def pad_batch(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad `seqs` -> (ids LongTensor [B, T], attention_mask BoolTensor [B, T])."""
    if not seqs:
        raise ValueError("pad_batch needs at least one sequence")
    T = max(1, max(len(s) for s in seqs))
    ids = torch.full((len(seqs), T), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.bool)
    for i, s in enumerate(seqs):
        if s:
            ids[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
            mask[i, : len(s)] = True
    return ids, mask


def build_pairs(
    tok, prompts: list[list[int]], completions: list[list[int]]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """prompt + completion per row, right-padded -> (ids, attention_mask, completion_mask), all [B, T].

    completion_mask is True exactly on the completion's tokens (its stop token included when present)."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    seqs = [list(p) + list(c) for p, c in zip(prompts, completions, strict=True)]
    ids, attn = pad_batch(seqs, tok.pad_id)
    comp = torch.zeros_like(attn)
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        comp[i, len(p) : len(p) + len(c)] = True
    return ids, attn, comp


# ---- log-probs -------------------------------------------------------------------------------------------


def logits_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """logits [B, T, V] (from a forward over ids) -> fp32 log p(ids[:, t+1]) [B, T-1]."""
    logits = logits[:, :-1].float()
    # gather - logsumexp avoids materialising a second [B, T, V] log_softmax tensor
    picked = logits.gather(-1, ids[:, 1:, None]).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Categorical entropy per position: logsumexp(l) - sum softmax(l) * l  ([B, T, V] -> [B, T])."""
    logits = logits.float()
    p = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (p * logits).sum(-1)


def token_logprobs(model, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """log p(ids[:, t+1] | ids[:, :t+1]) for every position, fp32 [B, T-1]. Gradients flow if enabled."""
    logits, _ = model(ids, attention_mask=attention_mask)
    return logits_logprobs(logits, ids)


def sequence_logprobs(model, ids, attention_mask, completion_mask) -> torch.Tensor:
    """SUM of the completion tokens' log-probs per row [B] (prompt and padding excluded)."""
    lp = token_logprobs(model, ids, attention_mask)
    return (lp * completion_mask[:, 1:].to(lp.dtype)).sum(-1)


# ---- masked statistics (TRL's definitions) ---------------------------------------------------------------


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """Mean of x where mask is True. An empty mask gives 0 (not NaN), so an all-padding batch is inert."""
    m = mask.to(x.dtype)
    x = torch.where(mask.bool(), x, torch.zeros_like(x))  # NaN/inf under padding must not leak via 0 * x
    if dim is None:
        return (x * m).sum() / m.sum().clamp(min=1)
    return (x * m).sum(dim) / m.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of x where mask is True; unbiased applies Bessel's n/(n-1) like TRL."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        if n < 2:
            raise ValueError(f"masked_var(unbiased=True) needs at least 2 unmasked values, got {int(n)}")
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / sqrt(var + 1e-8) over the mask; shift_mean=False adds the mean back (reward whitening
    keeps the reward's level, advantage whitening centres it)."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    return out if shift_mean else out + mean


# ---- KL ---------------------------------------------------------------------------------------------------


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) on tokens sampled from pi (Schulman's estimators).

    k1 = logp - ref_logp              unbiased, can be negative per sample, high variance
    k2 = 0.5 (logp - ref_logp)^2      biased, >= 0
    k3 = exp(r) - 1 - r, r = ref_logp - logp   unbiased, always >= 0, low variance (GRPO's choice)
    """
    log_ratio = logp - ref_logp
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        r = (-log_ratio).clamp(-20.0, 20.0)  # exp() of a huge ratio would overflow to inf
        return torch.exp(r) - 1.0 - r
    raise ValueError(f"unknown KL estimator {kind!r} (choose k1, k2 or k3)")


# ---- rollouts --------------------------------------------------------------------------------------------


def chat_prompt_ids(tok, user_text: str, system: str | None = None) -> list[int]:
    """The chat-template ids of a one-turn user prompt, ending with the <|assistant|> generation prompt."""
    from chinwag.tokenizer.chat import render

    msgs = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user_text}
    ]
    return render(msgs, tok, add_generation_prompt=True).ids


def strip_stop(tok, completion: list[int]) -> list[int]:
    """Completion ids without a trailing <|end|>/<|eos|> (for decoding to the reply text)."""
    if completion and completion[-1] in (tok.end_id, tok.eos_id):
        return completion[:-1]
    return completion


def decode_completion(tok, completion: list[int]) -> str:
    return tok.decode(strip_stop(tok, completion))


def rollout(model, tok, prompts: list[list[int]], params, n: int = 1, seed: int = 0, max_batch: int = 256):
    """Sample `n` completions per prompt with the inference engine; returns len(prompts) * n id lists,
    prompt-major (prompt 0's n samples first).

    Each returned list ends with its stop token (<|end|> or <|eos|>) when the model produced one, so a
    reward placed on the last real token lands on the EOS. A truncated completion (max_new_tokens) has no
    stop token. Request i gets seed `seed * 1_000_003 + i`: reproducible and independent of batching.

    The engine reads the model's modules directly (no weight copy), so calling this every iteration always
    samples from the current policy weights.
    """
    from chinwag.generate.engine import Engine

    was_training = model.training
    # The engine reports *that* a stop token ended a request but not which one. Stopping only at <|end|>
    # and cutting at the first <|eos|> ourselves keeps the exact token that ended each completion.
    max_len = max(len(p) for p in prompts) + params.max_new_tokens + 1
    eng = Engine(model, tok, max_batch=max_batch, max_len=min(max_len, model.config.max_seq_len))
    eng.default_stop_ids = {tok.end_id}
    reqs = []
    for i in range(len(prompts) * n):
        p = dataclasses.replace(params, seed=seed * 1_000_003 + i, logprobs=False, top_logprobs=0)
        reqs.append((prompts[i // n], p))
    try:
        outs = eng.generate([r[0] for r in reqs], [r[1] for r in reqs])
    finally:
        model.train(was_training)
    comps = []
    for c in outs:
        ids = list(c.token_ids)
        if tok.eos_id in ids:
            ids = ids[: ids.index(tok.eos_id) + 1]
        elif c.finish_reason == "stop":
            ids.append(tok.end_id)
        comps.append(ids)
    return comps


def ended(tok, completion: list[int]) -> bool:
    """Did the completion end with a stop token (as opposed to being truncated)?"""
    return bool(completion) and completion[-1] in (tok.end_id, tok.eos_id)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last True per row of a right-aligned-free mask [B, T] (-1 for an all-False row)."""
    T = mask.shape[1]
    idx = torch.arange(T, device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), idx, torch.full_like(idx, -1)).max(dim=1).values


def hidden_states(model, ids: torch.Tensor, attention_mask=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [B, T, V], final normed hidden states [B, T, d]) from one pass of the model."""
    h = model.hidden(ids, attention_mask)
    return model.lm_head(h), h


def freeze(model):
    """A reference model: eval mode, no gradients."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def clone_frozen(model):
    """A frozen deep copy (the reference policy)."""
    import copy

    return freeze(copy.deepcopy(model))


def shift_mask(mask: torch.Tensor) -> torch.Tensor:
    """A [B, T] token mask lined up with `token_logprobs` columns [B, T-1]."""
    return mask[:, 1:]


__all__ = [
    "build_pairs",
    "chat_prompt_ids",
    "clone_frozen",
    "decode_completion",
    "ended",
    "entropy_from_logits",
    "freeze",
    "hidden_states",
    "kl_estimate",
    "last_token_index",
    "logits_logprobs",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "pad_batch",
    "rollout",
    "sequence_logprobs",
    "shift_mask",
    "strip_stop",
    "token_logprobs",
]


# ---- one RL batch ----------------------------------------------------------------------------------------


def encode_prompt(tok, prompt) -> list[int]:
    """A prompt as chat ids: a user string, a messages list, or ids already rendered."""
    from chinwag.tokenizer.chat import render

    if isinstance(prompt, str):
        return chat_prompt_ids(tok, prompt)
    if prompt and isinstance(prompt[0], dict):
        return render(prompt, tok, add_generation_prompt=True).ids
    return [int(i) for i in prompt]


def prompt_text(prompt) -> str:
    """What a reward function sees as the prompt: the user text (last message for a conversation)."""
    if isinstance(prompt, str):
        return prompt
    if prompt and isinstance(prompt[0], dict):
        return str(prompt[-1].get("content", ""))
    return ""


@dataclasses.dataclass
class RolloutBatch:
    """n completions per prompt, scored, with old/ref log-probs on the logprob grid [B, T-1]."""

    prompts: list  # per sample (repeated n times)
    prompt_ids: list[list[int]]
    completions: list[list[int]]
    texts: list[str]
    scores: torch.Tensor  # [B] total reward
    components: dict  # name -> list[float]
    ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor  # [B, T]
    action_mask: torch.Tensor  # [B, T-1] = completion_mask[:, 1:]
    old_logprobs: torch.Tensor  # [B, T-1] (policy at sampling time)
    ref_logprobs: torch.Tensor  # [B, T-1]
    ended: torch.Tensor  # [B] bool: completion stopped with <|end|>/<|eos|>


def collect(policy, ref, tok, prompts: list, reward, params, n: int = 1, seed: int = 0) -> RolloutBatch:
    """Sample n completions per prompt from the current policy, score them, and compute the log-probs
    PPO/GRPO need (under no_grad)."""
    pids = [encode_prompt(tok, p) for p in prompts]
    comps = rollout(policy, tok, pids, params, n=n, seed=seed)
    rep_p = [p for p in prompts for _ in range(n)]
    rep_ids = [p for p in pids for _ in range(n)]
    texts = [decode_completion(tok, c) for c in comps]
    scores, parts = reward([prompt_text(p) for p in rep_p], texts, rep_ids, comps)
    ids, attn, cm = build_pairs(tok, rep_ids, comps)
    was = policy.training
    policy.eval()
    with torch.no_grad():
        old = token_logprobs(policy, ids, attn)
        ref_lp = token_logprobs(ref, ids, attn)
    policy.train(was)
    return RolloutBatch(
        prompts=rep_p,
        prompt_ids=rep_ids,
        completions=comps,
        texts=texts,
        scores=torch.tensor(scores, dtype=torch.float32),
        components=parts,
        ids=ids,
        attention_mask=attn,
        completion_mask=cm,
        action_mask=cm[:, 1:],
        old_logprobs=old,
        ref_logprobs=ref_lp,
        ended=torch.tensor([ended(tok, c) for c in comps], dtype=torch.bool),
    )


def write_metrics_line(path, rec: dict) -> None:
    """Append one JSON line (RL metrics.jsonl; `chinwag plot` reads step + loss). A line append is the
    same pattern the trainer uses for its log, not an artifact rewrite."""
    import json
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec) + "\n")


def record_step(rec: dict, components: dict, history: list, metrics_path=None, log=None) -> None:
    """Finish one RL iteration's metrics: add each reward component's mean, keep, write and report it."""
    for name, vals in components.items():
        rec[f"rewards/{name}/mean"] = sum(vals) / max(1, len(vals))
    history.append(rec)
    if metrics_path is not None:
        write_metrics_line(metrics_path, rec)
    if log is not None:
        log(rec["step"], rec)


def warmup_scheduler(opt, warmup_steps: int):
    """Linear lr warmup over the first optimizer steps, then constant. Adam's first updates are
    sign-sized on every weight; on a sharp SFT model one full-lr step can move the KL by nats."""
    w = max(1, int(warmup_steps))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / w))
