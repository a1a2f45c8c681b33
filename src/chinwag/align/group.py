"""Critic-free policy gradient: REINFORCE (with a baseline), RLOO and GRPO (incl. Dr. GRPO).

One loop serves all three; they differ only in the advantage of sample i (reward r_i, group g of G
completions of the same prompt):

    reinforce : A_i = r_i - b,  b = running (EMA) mean reward              (Williams 1992 + baseline)
    rloo      : A_i = r_i - mean_{j in g, j != i} r_j = G/(G-1) (r_i - mean_g r)     (Ahmadian et al. 2024)
    grpo      : A_i = (r_i - mean_g r) / (std_g r + 1e-4)      scale_rewards="group" (DeepSeekMath)
                      ... / (std over the batch + 1e-4)      scale_rewards="batch"
                      r_i - mean_g r                          scale_rewards="none"  (Dr. GRPO)

The sequence advantage is given to every completion token, and the loss per token is PPO's clipped
surrogate with a k3 KL penalty to the frozen reference *in the loss* (not the reward):

    rho_t = exp(log pi(y_t) - log pi_old(y_t))
    L_t   = -min(rho_t A, clip(rho_t, 1-eps, 1+eps_high) A) + beta * KL3_t - entropy_coef * H_t
    KL3_t = exp(log pi_ref - log pi) - (log pi_ref - log pi) - 1        (>= 0, unbiased)

With one inner epoch rho = 1 and the loss is plain REINFORCE (its value ~0 but its gradient is not).
Aggregation (`loss_type`): "token" = sum L M / sum M over the batch (DAPO/BNPO, length-unbiased);
"sequence" = mean over samples of each sample's token mean (original GRPO); "dr_grpo" = sum L M /
(B * max_new_tokens). `mask_truncated` drops completions that hit max_new_tokens from the loss (DAPO).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch

from chinwag.align.common import (
    collect,
    entropy_from_logits,
    kl_estimate,
    logits_logprobs,
    masked_mean,
    record_step,
    warmup_scheduler,
)
from chinwag.align.rewards import as_reward

ALGOS = ("reinforce", "rloo", "grpo")


@dataclass
class GroupConfig:
    algo: str = "grpo"
    steps: int = 60  # rollout + update iterations
    prompts_per_step: int = 32
    group_size: int = 8  # completions per prompt (G); REINFORCE works with 1
    inner_epochs: int = 2  # passes over each batch (mu); > 1 makes the ratio and the clip matter
    mini_batches: int = 1  # optimizer steps per inner epoch
    lr: float = 3e-4
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    warmup_steps: int = 10  # optimizer steps of linear lr warmup (Adam's first steps are sign-sized)
    beta: float = 0.02  # k3 KL coefficient (0 = no KL term)
    epsilon: float = 0.2
    epsilon_high: float | None = None  # None = epsilon; DAPO uses 0.28
    scale_rewards: str = "group"  # grpo: group | batch | none (Dr. GRPO)
    loss_type: str = "token"  # token | sequence | dr_grpo
    mask_truncated: bool = False
    entropy_coef: float = 0.0
    baseline_decay: float = 0.9  # reinforce's EMA baseline
    whiten: bool = False  # reinforce/rloo: also divide advantages by their batch std
    temperature: float = 1.0
    max_new_tokens: int = 32
    shuffle_rewards: bool = False  # negative control: permute rewards across the batch
    seed: int = 0

    def validate(self) -> None:
        if self.algo not in ALGOS:
            raise ValueError(f"algo must be one of {', '.join(ALGOS)} (got {self.algo!r})")
        if self.scale_rewards not in ("group", "batch", "none"):
            raise ValueError(f"scale_rewards must be group, batch or none (got {self.scale_rewards!r})")
        if self.loss_type not in ("token", "sequence", "dr_grpo"):
            raise ValueError(f"loss_type must be token, sequence or dr_grpo (got {self.loss_type!r})")
        if self.algo in ("rloo", "grpo") and self.group_size < 2:
            raise ValueError(f"{self.algo} needs group_size >= 2 (got {self.group_size})")
        for name in ("steps", "prompts_per_step", "group_size", "inner_epochs", "mini_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (got {getattr(self, name)})")


# ---- advantages ------------------------------------------------------------------------------------------


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """r_i minus the mean of the other G-1 rewards in its group. rewards [B] ordered group-major."""
    r = rewards.view(-1, group_size)
    baseline = (r.sum(1, keepdim=True) - r) / (group_size - 1)
    return (r - baseline).reshape(-1)


def grpo_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group") -> torch.Tensor:
    """r_i minus its group mean, divided by the group std (Bessel), the batch std, or nothing (Dr. GRPO)."""
    r = rewards.view(-1, group_size)
    a = r - r.mean(1, keepdim=True)
    if scale == "group":
        a = a / (r.std(1, keepdim=True) + 1e-4)
    elif scale == "batch":
        a = a / (rewards.std() + 1e-4)
    elif scale != "none":
        raise ValueError(f"scale must be group, batch or none (got {scale!r})")
    return a.reshape(-1)


def reinforce_advantages(rewards: torch.Tensor, baseline: float) -> torch.Tensor:
    return rewards - baseline


# ---- the loss --------------------------------------------------------------------------------------------


def group_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    beta: float = 0.0,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    loss_type: str = "token",
    max_len: int | None = None,
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
) -> tuple[torch.Tensor, dict]:
    """Per-token clipped surrogate + beta * k3 KL, aggregated by loss_type. logp/old/ref/mask [B, T'],
    adv [B] (one advantage per sequence). Returns (loss, metrics)."""
    m = mask.to(logp.dtype)
    eh = epsilon if epsilon_high is None else epsilon_high
    ratio = torch.exp((logp - old_logp).clamp(-20, 20))
    a = adv[:, None]
    s1, s2 = ratio * a, ratio.clamp(1 - epsilon, 1 + eh) * a
    per_tok = -torch.min(s1, s2)
    kl = kl_estimate(logp, ref_logp, "k3")
    if beta:
        per_tok = per_tok + beta * kl
    if entropy is not None and entropy_coef:
        per_tok = per_tok - entropy_coef * entropy
    if loss_type == "token":
        loss = (per_tok * m).sum() / m.sum().clamp(min=1)
    elif loss_type == "sequence":
        loss = ((per_tok * m).sum(-1) / m.sum(-1).clamp(min=1)).mean()
    elif loss_type == "dr_grpo":
        loss = (per_tok * m).sum() / (logp.shape[0] * (max_len or logp.shape[1]))
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}")
    with torch.no_grad():
        clipped = ((s2 < s1) & mask.bool()).float()  # the clip bound was the one used
        metrics = {
            "kl": float(masked_mean(kl, mask)),
            "clip_ratio": float(clipped.sum() / m.sum().clamp(min=1)),
            "ratio": float(masked_mean(ratio, mask)),
        }
    return loss, metrics


# ---- training --------------------------------------------------------------------------------------------


def group_train(policy, ref, tok, prompts: list, reward_fn, cfg: GroupConfig, log=None, metrics_path=None):
    """Train `policy` in place against a frozen `ref` on `prompts` (user strings, message lists or ids).

    reward_fn: a function f(prompt, completion) -> float, a reward model, or a rewards.Reward.
    log: optional callable(step, metrics dict) after each step. Returns {"history": [...], "seconds"}.
    """
    from chinwag.generate.sampling import SamplingParams

    cfg.validate()
    reward = as_reward(reward_fn)
    params = SamplingParams(
        temperature=cfg.temperature, top_k=0, top_p=1.0, max_new_tokens=cfg.max_new_tokens
    )  # no top-k/top-p: the sampler must be the policy the log-probs describe
    opt = torch.optim.AdamW(policy.param_groups(cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.99))
    sched = warmup_scheduler(opt, cfg.warmup_steps)
    g = torch.Generator().manual_seed(cfg.seed)
    n_prompts = len(prompts)
    if n_prompts == 0:
        raise ValueError("no prompts to train on")
    G = cfg.group_size
    baseline = None
    history = []
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        idx = torch.randint(n_prompts, (cfg.prompts_per_step,), generator=g).tolist()
        batch = collect(
            policy, ref, tok, [prompts[i] for i in idx], reward, params, G, cfg.seed * 7919 + step
        )
        r = batch.scores
        if cfg.shuffle_rewards:  # negative control: the reward no longer belongs to its sample
            r = r[torch.randperm(len(r), generator=g)]
        if cfg.algo == "grpo":
            adv = grpo_advantages(r, G, cfg.scale_rewards)
        elif cfg.algo == "rloo":
            adv = rloo_advantages(r, G)
        else:
            baseline = float(r.mean()) if baseline is None else baseline
            adv = reinforce_advantages(r, baseline)
            baseline = cfg.baseline_decay * baseline + (1 - cfg.baseline_decay) * float(r.mean())
        if cfg.whiten and cfg.algo != "grpo":
            adv = adv / (adv.std() + 1e-4)
        mask = batch.action_mask.clone()
        if cfg.mask_truncated:
            mask &= batch.ended[:, None]
        stats = _update(policy, opt, sched, batch, adv, mask, cfg, g)
        grouped = r.view(-1, G) if G > 1 else r.view(-1, 1)
        lens = batch.completion_mask.sum(-1).float()
        rec = {
            "step": step,
            "loss": stats.pop("loss"),
            "reward": float(batch.scores.mean()),
            "reward_std": float(batch.scores.std()) if len(r) > 1 else 0.0,
            "frac_reward_zero_std": float((grouped.std(1) == 0).float().mean()) if G > 1 else 0.0,
            "completions/mean_length": float(lens.mean()),
            "completions/clipped_ratio": float((~batch.ended).float().mean()),
            "lr": sched.get_last_lr()[0],
            **stats,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        record_step(rec, batch.components, history, metrics_path, log)
    return {"history": history, "seconds": time.perf_counter() - t0, "config": asdict(cfg)}


def _update(policy, opt, sched, batch, adv, mask, cfg: GroupConfig, g) -> dict:
    """cfg.inner_epochs passes over the batch in cfg.mini_batches shuffled mini-batches."""
    policy.train()
    B = batch.ids.shape[0]
    mb = math.ceil(B / cfg.mini_batches)
    acc = {"loss": [], "kl": [], "clip_ratio": [], "ratio": [], "entropy": [], "grad_norm": []}
    for _ in range(cfg.inner_epochs):
        perm = torch.randperm(B, generator=g)
        for s in range(0, B, mb):
            j = perm[s : s + mb]
            logits, _ = policy(batch.ids[j], attention_mask=batch.attention_mask[j])
            logp = logits_logprobs(logits, batch.ids[j])
            ent = entropy_from_logits(logits[:, :-1]) if cfg.entropy_coef else None
            loss, m = group_loss(
                logp,
                batch.old_logprobs[j],
                batch.ref_logprobs[j],
                adv[j],
                mask[j],
                cfg.beta,
                cfg.epsilon,
                cfg.epsilon_high,
                cfg.loss_type,
                cfg.max_new_tokens,
                ent,
                cfg.entropy_coef,
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gn = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
            opt.step()
            sched.step()
            with torch.no_grad():
                if ent is None:
                    ent = entropy_from_logits(logits[:, :-1].detach())
                acc["entropy"].append(float(masked_mean(ent, mask[j])))
            acc["loss"].append(loss.item())
            acc["grad_norm"].append(float(gn))
            for k, v in m.items():
                acc[k].append(v)
    policy.eval()
    return {k: sum(v) / len(v) for k, v in acc.items()}
