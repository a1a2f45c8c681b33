"""PPO for language models (Ziegler et al. 2019 / InstructGPT), the way TRL's classic PPOTrainer does it.

Per iteration:
1. Rollout: sample one completion per prompt from the current policy (engine, stop at <|end|>/<|eos|>).
   Record log pi_old, log pi_ref and the critic's values V_old on every completion token.
2. Rewards per token (only completion tokens; padding never counts):
       kl_t = log pi_old - log pi_ref   (k1)   or   exp(-x) - 1 + x, x = log pi_old - log pi_ref   (k3)
       r_t  = -beta * kl_t,   r_last += score            (the score lands on the LAST REAL token: the EOS)
3. GAE (gamma, lambda) backwards over the completion:
       delta_t = r_t + gamma V_{t+1} - V_t        (V after the last token = 0)
       A_t     = delta_t + gamma lambda A_{t+1},   R_t = A_t + V_t
   then A is whitened over the batch's completion tokens.
4. ppo_epochs passes of shuffled mini-batches:
       rho     = exp(log pi - log pi_old)
       L_pg    = mean_t max(-A rho, -A clip(rho, 1-eps, 1+eps))
       V_clip  = V_old + clip(V - V_old, -eps_v, eps_v)
       L_v     = 0.5 mean_t max((V - R)^2, (V_clip - R)^2)
       loss    = L_pg + vf_coef L_v - entropy_coef mean_t H_t
   A mini-batch whose mean ratio exceeds ratio_threshold is skipped (the policy diverged on it); with
   early_stopping, the iteration stops (no more updates) at the first mini-batch whose KL to pi_old,
   policy/approxkl = 0.5 mean (log pi - log pi_old)^2, exceeds 1.5 target_kl.
5. Adaptive KL controller (Ziegler et al.): e = clip(KL/target - 1, -0.2, 0.2),
       beta <- beta (1 + e n / horizon),   KL = objective/kl (per-sequence sum), n = rollouts this step.

The critic is a copy of the policy's backbone with a scalar head (`critic="separate"`, the default, as in
TRL's PPO) or a head on the policy's own final hidden states (`critic="shared"`, TRL's classic value head).
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from chinwag.align.common import (
    collect,
    entropy_from_logits,
    hidden_states,
    kl_estimate,
    last_token_index,
    logits_logprobs,
    masked_mean,
    masked_whiten,
    record_step,
    warmup_scheduler,
)
from chinwag.align.rewards import as_reward


@dataclass
class PPOConfig:
    steps: int = 60  # rollout + optimisation iterations
    batch_size: int = 128  # prompts (= rollouts) per iteration
    mini_batch_size: int = 64
    ppo_epochs: int = 4
    lr: float = 3e-4
    critic_lr: float | None = None  # None = lr
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    warmup_steps: int = 10  # optimizer steps of linear lr warmup (Adam's first steps are sign-sized)
    gamma: float = 1.0
    lam: float = 0.95
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    entropy_coef: float = 0.0
    init_kl_coef: float = 0.05
    kl_estimator: str = "k1"  # k1 | k3 (per-token penalty in the reward)
    adaptive_kl: bool = False
    kl_target: float = 6.0
    kl_horizon: int = 10000
    early_stopping: bool = False
    target_kl: float = 1.0
    ratio_threshold: float = 10.0
    whiten_rewards: bool = False
    missing_eos_penalty: float | None = None  # subtracted from the score of a truncated completion
    critic: str = "separate"  # separate | shared
    temperature: float = 1.0
    max_new_tokens: int = 32
    shuffle_rewards: bool = False  # negative control
    seed: int = 0

    def validate(self) -> None:
        if self.kl_estimator not in ("k1", "k3"):
            raise ValueError(f"kl_estimator must be k1 or k3 (got {self.kl_estimator!r})")
        if self.critic not in ("separate", "shared"):
            raise ValueError(f"critic must be separate or shared (got {self.critic!r})")
        for name in ("steps", "batch_size", "mini_batch_size", "ppo_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (got {getattr(self, name)})")
        if not 0 <= self.lam <= 1 or not 0 <= self.gamma <= 1:
            raise ValueError("gamma and lam must lie in [0, 1]")


class AdaptiveKLController:
    """beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n_steps / horizon)."""

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        self.value, self.target, self.horizon = float(init_kl_coef), float(target), int(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        err = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + err * n_steps / self.horizon
        return self.value


class FixedKLController:
    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value


class ValueModel(nn.Module):
    """A scalar value per position: a backbone (its own copy, or the policy itself when shared) + head.
    The head starts at zero so the first advantages are the raw returns."""

    def __init__(self, policy, shared: bool = False):
        super().__init__()
        self.shared = shared
        if not shared:
            self.backbone = copy.deepcopy(policy)
            for p in self.backbone.parameters():
                p.requires_grad_(True)
        self.head = nn.Linear(policy.config.d_model, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def values(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden.float()).squeeze(-1)


def policy_and_values(policy, critic: ValueModel, ids, attn):
    """(logits [B, T, V], values [B, T]) — one forward when the critic shares the policy's backbone."""
    if critic.shared:
        logits, h = hidden_states(policy, ids, attn)
        return logits, critic.values(h)
    logits, _ = policy(ids, attention_mask=attn)
    h = critic.backbone.hidden(ids, attn)  # the critic needs no logits
    return logits, critic.values(h)


# ---- the numerics ----------------------------------------------------------------------------------------


def token_rewards(scores, logp, ref_logp, mask, kl_coef: float, estimator: str = "k1"):
    """Per-token rewards [B, T']: -kl_coef * kl_t on completion tokens, plus the score on each row's last
    completion token (its EOS when it stopped). Returns (rewards, kl [B, T'] masked to 0 off the mask)."""
    m = mask.to(logp.dtype)
    kl = kl_estimate(logp, ref_logp, estimator) * m
    rewards = -kl_coef * kl
    last = last_token_index(mask)
    rows = torch.arange(len(scores))
    ok = last >= 0  # a row without completion tokens gets no score (it cannot be credited anywhere)
    rewards[rows[ok], last[ok]] += scores[ok].to(rewards.dtype)
    return rewards, kl


def gae(rewards, values, mask, gamma: float = 1.0, lam: float = 0.95):
    """Generalised advantage estimation over the masked (completion) positions of [B, T'] tensors.
    Values and rewards off the mask count as 0, so V after the last token is 0. Returns (A, R)."""
    m = mask.to(values.dtype)
    values, rewards = values * m, rewards * m
    T = rewards.shape[1]
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        nxt = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * nxt - values[:, t]
        last = delta + gamma * lam * last
        last = last * m[:, t]  # nothing flows back across positions that are not completion tokens
        adv[:, t] = last
    return adv, (adv + values) * m


def ppo_losses(logp, old_logp, adv, values, old_values, returns, mask, cliprange=0.2, cliprange_value=0.2):
    """Clipped surrogate + clipped value loss, both masked means. Returns (pg_loss, vf_loss, stats)."""
    ratio = torch.exp((logp - old_logp).clamp(-20, 20))
    pg1 = -adv * ratio
    pg2 = -adv * ratio.clamp(1 - cliprange, 1 + cliprange)
    pg_loss = masked_mean(torch.max(pg1, pg2), mask)
    v_clip = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
    vf1, vf2 = (values - returns) ** 2, (v_clip - returns) ** 2
    vf_loss = 0.5 * masked_mean(torch.max(vf1, vf2), mask)
    with torch.no_grad():
        d = logp - old_logp
        stats = {
            "policy/approxkl": float(0.5 * masked_mean(d**2, mask)),
            "policy/policykl": float(masked_mean(-d, mask)),
            "policy/clipfrac": float(masked_mean((pg2 > pg1).float(), mask)),
            "val/clipfrac": float(masked_mean((vf2 > vf1).float(), mask)),
            "val/ratio": float(masked_mean(ratio, mask)),
        }
    return pg_loss, vf_loss, stats


# ---- training --------------------------------------------------------------------------------------------


def ppo_train(
    policy, ref, tok, prompts: list, reward_fn, cfg: PPOConfig, log=None, metrics_path=None
) -> dict:
    """Train `policy` in place with PPO against the frozen `ref`. prompts: user strings, message lists or
    chat ids; reward_fn: function f(prompt, completion), reward model, or rewards.Reward.
    Returns {"history": [per-step metrics], "critic": ValueModel, "seconds"}."""
    from chinwag.generate.sampling import SamplingParams

    cfg.validate()
    if not prompts:
        raise ValueError("no prompts to train on")
    reward = as_reward(reward_fn)
    params = SamplingParams(
        temperature=cfg.temperature, top_k=0, top_p=1.0, max_new_tokens=cfg.max_new_tokens
    )
    critic = ValueModel(policy, shared=cfg.critic == "shared")
    groups = policy.param_groups(cfg.weight_decay)
    critic_params = [p for p in critic.parameters() if p.requires_grad]
    groups.append({"params": critic_params, "weight_decay": 0.0, "lr": cfg.critic_lr or cfg.lr})
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.99))
    sched = warmup_scheduler(opt, cfg.warmup_steps)
    ctl = (
        AdaptiveKLController(cfg.init_kl_coef, cfg.kl_target, cfg.kl_horizon)
        if cfg.adaptive_kl
        else FixedKLController(cfg.init_kl_coef)
    )
    g = torch.Generator().manual_seed(cfg.seed)
    history = []
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        idx = torch.randint(len(prompts), (cfg.batch_size,), generator=g).tolist()
        batch = collect(
            policy, ref, tok, [prompts[i] for i in idx], reward, params, 1, cfg.seed * 7919 + step
        )
        scores = batch.scores.clone()
        if cfg.shuffle_rewards:
            scores = scores[torch.randperm(len(scores), generator=g)]
        if cfg.missing_eos_penalty is not None:
            scores = scores - cfg.missing_eos_penalty * (~batch.ended).float()
        mask = batch.action_mask
        with torch.no_grad():
            _, v = policy_and_values(policy, critic, batch.ids, batch.attention_mask)
            old_values = v[:, :-1] * mask  # value of the state before each completion token
            rewards, kl = token_rewards(
                scores, batch.old_logprobs, batch.ref_logprobs, mask, ctl.value, cfg.kl_estimator
            )
            if cfg.whiten_rewards:
                rewards = masked_whiten(rewards, mask, shift_mean=False) * mask
            adv, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
            adv = masked_whiten(adv, mask) * mask
        stats = _optimise(policy, critic, opt, sched, batch, adv, returns, old_values, mask, cfg, g)
        seq_kl = kl.sum(-1)
        kl_coef = ctl.value
        ctl.update(float(seq_kl.mean()), cfg.batch_size)
        rec = {
            "step": step,
            "loss": stats.pop("loss/total"),
            "objective/kl": float(seq_kl.mean()),
            "objective/kl_coef": kl_coef,
            "objective/scores": float(batch.scores.mean()),
            "objective/non_score_reward": float((-kl_coef * kl).sum(-1).mean()),
            "objective/rlhf_reward": float(batch.scores.mean() - kl_coef * seq_kl.mean()),
            "val/num_eos_tokens": int(batch.ended.sum()),
            "completions/mean_length": float(batch.completion_mask.sum(-1).float().mean()),
            "lr": sched.get_last_lr()[0],
            **stats,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        record_step(rec, batch.components, history, metrics_path, log)
    return {"history": history, "critic": critic, "seconds": time.perf_counter() - t0, "config": asdict(cfg)}


def _optimise(policy, critic, opt, sched, batch, adv, returns, old_values, mask, cfg: PPOConfig, g) -> dict:
    policy.train()
    critic.train()
    B = batch.ids.shape[0]
    keys = ("policy/approxkl", "policy/clipfrac", "val/clipfrac", "val/ratio", "loss/policy", "loss/value")
    acc = {k: [] for k in (*keys, "loss/total", "objective/entropy", "policy/entropy", "grad_norm")}
    skipped, updates, stopped = 0, 0, False
    params = [p for grp in opt.param_groups for p in grp["params"]]
    for _ in range(cfg.ppo_epochs):
        if stopped:
            break
        perm = torch.randperm(B, generator=g)
        for s in range(0, B, cfg.mini_batch_size):
            j = perm[s : s + cfg.mini_batch_size]
            m = mask[j]
            logits, v = policy_and_values(policy, critic, batch.ids[j], batch.attention_mask[j])
            logp = logits_logprobs(logits, batch.ids[j])
            values = v[:, :-1]
            pg_loss, vf_loss, st = ppo_losses(
                logp,
                batch.old_logprobs[j],
                adv[j],
                values,
                old_values[j],
                returns[j],
                m,
                cfg.cliprange,
                cfg.cliprange_value,
            )
            loss = pg_loss + cfg.vf_coef * vf_loss
            if cfg.entropy_coef:
                ent = entropy_from_logits(logits[:, :-1])
                loss = loss - cfg.entropy_coef * masked_mean(ent, m)
            else:  # logged only: keep it out of the autograd graph
                with torch.no_grad():
                    ent = entropy_from_logits(logits[:, :-1])
            # k2 = 0.5 mean (log ratio)^2: TRL's policykl (k1) can be negative and then never triggers
            if cfg.early_stopping and st["policy/approxkl"] > 1.5 * cfg.target_kl:
                stopped = True  # the policy moved too far from the rollout policy: stop this iteration
                break
            if st["val/ratio"] > cfg.ratio_threshold:  # the policy ran away on this mini-batch: skip it
                skipped += 1
                continue
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gn = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            sched.step()
            updates += 1
            with torch.no_grad():
                mf = m.float()
                acc["objective/entropy"].append(float(((ent * mf).sum(-1)).mean()))
                acc["policy/entropy"].append(float(masked_mean(ent, m)))
            acc["loss/policy"].append(pg_loss.item())
            acc["loss/value"].append(vf_loss.item())
            acc["loss/total"].append(loss.item())
            acc["grad_norm"].append(float(gn))
            for k in ("policy/approxkl", "policy/clipfrac", "val/clipfrac", "val/ratio"):
                acc[k].append(st[k])
    policy.eval()
    critic.eval()
    out = {k: (sum(v) / len(v) if v else 0.0) for k, v in acc.items()}
    out["policy/skipped_minibatches"] = skipped
    out["policy/updates"] = updates
    out["policy/early_stopped"] = int(stopped)
    return out
