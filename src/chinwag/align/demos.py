"""Task A: RL removes a bias. `chinwag align demo A --algo ppo|grpo|rloo|reinforce [--shuffle-rewards]`.

A tiny model is SFT'd on "ab+cd=" where 60 % of the answers are a+b+1. RL with the exact-sum reward must
raise held-out sampled accuracy (T=1, 500 prompts never trained on) by >= 0.30 to >= 0.75, with
KL(policy || SFT) <= 3 nats per completion, within 5 minutes including SFT. The negative control shuffles
the rewards across samples (so they carry no information about the sample): its gain must be <= 0.05.
"""

from __future__ import annotations

import time

ALGOS = ("ppo", "grpo", "rloo", "reinforce")

# Settings per algorithm, tuned on seed 0 (docs/alignment.md has the measured table). Rollouts per step:
# group methods 32 prompts x 8 samples = 256; PPO 256 prompts x 1.
GROUP_DEFAULTS = dict(steps=60, prompts_per_step=32, group_size=8, inner_epochs=2, lr=3e-4, beta=0.02)
PER_ALGO = {
    "grpo": dict(),
    "rloo": dict(),
    "reinforce": dict(),
    "ppo": dict(steps=60, batch_size=256, mini_batch_size=64, ppo_epochs=2, lr=3e-4, init_kl_coef=0.02),
}


def task_a_config(algo: str, seed: int = 0, shuffle_rewards: bool = False, **overrides):
    from chinwag.align.group import GroupConfig
    from chinwag.align.ppo import PPOConfig

    if algo not in ALGOS:
        raise ValueError(f"unknown algorithm {algo!r} (choose: {', '.join(ALGOS)})")
    common = dict(max_new_tokens=6, seed=seed, shuffle_rewards=shuffle_rewards)
    if algo == "ppo":
        return PPOConfig(**{**PER_ALGO["ppo"], **common, **overrides})
    return GroupConfig(algo=algo, **{**GROUP_DEFAULTS, **PER_ALGO[algo], **common, **overrides})


def run_task_a(
    algo: str, seed: int = 0, shuffle_rewards: bool = False, log=None, metrics_path=None, **overrides
) -> dict:
    """SFT (cached per process) + RL + held-out evaluation. Returns the demo's JSON dict; `seconds` counts
    the SFT's own training time too, even when it came from the cache."""
    import torch

    from chinwag.align import tasks
    from chinwag.align.common import clone_frozen
    from chinwag.align.group import group_train
    from chinwag.align.ppo import ppo_train

    cfg = task_a_config(algo, seed, shuffle_rewards, **overrides)
    t0 = time.perf_counter()
    hits = tasks._sft_cached.cache_info().hits
    policy, tok = tasks.sft_arith(seed)
    cached = tasks._sft_cached.cache_info().hits > hits  # trained earlier in this process: count it anyway
    sft_seconds = tasks.sft_arith.last_seconds
    ref = clone_frozen(tasks.sft_arith(seed)[0])
    test = tasks.arith_prompts(500, seed + 1, "test")
    train = tasks.arith_prompts(5000, seed, "train")
    before = tasks.sampled_accuracy(policy, tok, test, 1.0, seed=seed + 2)
    torch.manual_seed(seed)
    t_rl = time.perf_counter()
    if algo == "ppo":
        ppo_train(policy, ref, tok, train, tasks.arith_reward, cfg, log=log, metrics_path=metrics_path)
    else:
        group_train(policy, ref, tok, train, tasks.arith_reward, cfg, log=log, metrics_path=metrics_path)
    rl_seconds = time.perf_counter() - t_rl
    ev = tasks.evaluate_arith(policy, ref, tok, test, seed=seed + 2)
    elapsed = time.perf_counter() - t0
    return {
        "task": "A",
        "algo": algo,
        "before": round(before, 4),
        "after": round(ev["accuracy"], 4),
        "kl": round(ev["kl"], 4),
        "seconds": round(elapsed + (sft_seconds if cached else 0.0), 1),
        "sft_seconds": round(sft_seconds, 1),
        "rl_seconds": round(rl_seconds, 1),
        "shuffle_rewards": shuffle_rewards,
        "seed": seed,
    }
