"""Verifiable preference tasks B and C of issue 6: `run_task("B"|"C", algo, seed) -> dict`.

B. DPO without breaking generation. Reference = the biased arithmetic SFT model (`tasks.sft_arith`, 60 %
   of its training answers are a+b+1). Pairs: chosen str(a+b), rejected str(a+b+1). Pass: held-out
   preference accuracy (log π(c) > log π(r)) from ≤ 0.40 to ≥ 0.90, sampled accuracy (T=1) not below the
   SFT model's, KL(π‖π_ref) ≤ 3 nats.
C. Reward model + RLHF + constitutional, against a hidden rule judge on short word responses:
   judge(y) = +1·[please] + 0.5·[thanks] − 2·count(xx) − 0.1·|len − 8|.
   algo "rm": Bradley–Terry RM on judge-labelled pairs, held-out pairwise accuracy ≥ 0.90.
   algo "ppo": PPO driven by that RM (never the judge) must raise the judge's mean score.
   algo "constitutional": rule critique → revision → SFT + (revision ≻ original) DPO must cut the
   held-out rule-violation rate by ≥ 50 % relative.
Every result is {"task", "algo", "before", "after", "kl", "seconds", ...extras}.
"""

from __future__ import annotations

import random
import time
from functools import lru_cache

TASKS = {"B": ("dpo", "dpo-pure", "ipo", "hinge", "robust"), "C": ("rm", "ppo", "grpo", "constitutional")}

# ---- task B ------------------------------------------------------------------------------------------------


def arith_pairs(tok, n: int, seed: int, split: str):
    """(prompt strings, PrefPairs): chosen = the exact sum, rejected = the off-by-one answer the SFT data
    taught 60 % of the time."""
    from chinwag.align.common import chat_prompt_ids
    from chinwag.align.rm import PrefPair
    from chinwag.align.tasks import arith_prompts, parse_prompt

    prompts = arith_prompts(n, seed, split)
    pairs = []
    for p in prompts:
        a, b = parse_prompt(p)
        pairs.append(
            PrefPair(
                chat_prompt_ids(tok, p),
                tok.encode(str(a + b)) + [tok.end_id],
                tok.encode(str(a + b + 1)) + [tok.end_id],
            )
        )
    return prompts, pairs


# algo -> DPOConfig overrides. The SFT term (weight 1 on the chosen NLL) is what keeps sampling intact:
# pure DPO lowers log π(chosen) too and sampled accuracy collapses (see docs/alignment_pref.md).
B_ALGOS = {
    "dpo": dict(loss_types=["sigmoid", "sft"], loss_weights=[1.0, 1.0], beta=0.1),
    "dpo-pure": dict(loss_types=["sigmoid"], beta=0.1),
    "ipo": dict(loss_types=["ipo", "sft"], loss_weights=[1.0, 1.0], beta=0.5),  # target 1 nat/token
    "hinge": dict(loss_types=["hinge", "sft"], loss_weights=[1.0, 1.0], beta=0.1),
    "robust": dict(loss_types=["robust", "sft"], loss_weights=[1.0, 1.0], beta=0.1, label_smoothing=0.1),
}


def task_b(algo: str = "dpo", seed: int = 0, steps: int = 150, log=None) -> dict:
    import torch

    from chinwag.align.dpo import DPOConfig, dpo_train, preference_accuracy
    from chinwag.align.tasks import evaluate_arith, sft_arith

    t0 = time.perf_counter()
    policy, tok = sft_arith(seed)
    ref, _ = sft_arith(seed)  # evaluation only (KL); training uses precomputed reference log-probs
    _, train_pairs = arith_pairs(tok, 4000, seed + 1, "train")
    test_prompts, test_pairs = arith_pairs(tok, 500, seed + 2, "test")
    before = preference_accuracy(policy, tok, test_pairs)
    sampled_before = evaluate_arith(policy, ref, tok, test_prompts, seed=seed)["accuracy"]
    cfg = DPOConfig(lr=1e-4, steps=steps, batch_size=64, seed=seed, log_every=25, **B_ALGOS[algo])
    torch.manual_seed(seed)
    history = dpo_train(policy, tok, train_pairs, cfg, log=log)
    after = preference_accuracy(policy, tok, test_pairs)
    ev = evaluate_arith(policy, ref, tok, test_prompts, seed=seed)
    return {
        "task": "B",
        "algo": algo,
        "before": round(before, 4),
        "after": round(after, 4),
        "kl": round(ev["kl"], 4),
        "seconds": round(time.perf_counter() - t0, 1),
        "sampled_before": round(sampled_before, 4),
        "sampled_after": round(ev["accuracy"], 4),
        "loss_types": cfg.loss_types,
        "beta": cfg.beta,
        "final": {k: round(v, 4) for k, v in history[-1].items()},
    }


# ---- task C: the hidden judge and its little world ---------------------------------------------------------

WORDS = (
    "please thanks xx hello sure the cat sat on mat yes no maybe good day now".split()
)  # 16 words; "xx" is the banned token
NEUTRAL = [w for w in WORDS if w not in ("please", "thanks", "xx")]
TOPICS = ["cat", "mat", "day", "hello", "yes", "no", "good", "now"]


def judge(text: str) -> float:
    """The hidden rule judge the RM must learn and RL must not hack."""
    w = text.split()
    return 1.0 * ("please" in w) + 0.5 * ("thanks" in w) - 2.0 * w.count("xx") - 0.1 * abs(len(w) - 8)


def random_response(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 14)))


def c_prompts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"say {rng.choice(TOPICS)} {rng.choice(TOPICS)}" for _ in range(n)]


def judge_pairs(n: int, seed: int, with_margin: bool = False) -> list[dict]:
    """Preference records labelled by the judge; pairs with equal judge scores are re-drawn."""
    rng = random.Random(seed)
    prompts = c_prompts(n, seed + 17)
    out = []
    for p in prompts:
        while True:
            a, b = random_response(rng), random_response(rng)
            ja, jb = judge(a), judge(b)
            if abs(ja - jb) > 1e-9:
                break
        c, r = (a, b) if ja > jb else (b, a)
        rec = {"prompt": p, "chosen": c, "rejected": r}
        if with_margin:
            rec["margin"] = abs(ja - jb)
        out.append(rec)
    return out


@lru_cache(maxsize=1)
def c_tokenizer():
    """A tiny BPE trained on the task's words: every word becomes one token."""
    from chinwag.tokenizer import train_bpe

    rng = random.Random(0)
    texts = [random_response(rng) for _ in range(2000)] + c_prompts(500, 1) + ["please thanks xx"] * 50
    return train_bpe(texts, vocab_size=400, show_progress=False, min_frequency=2)


def c_config(vocab_size: int):
    from chinwag.model import ModelConfig

    return ModelConfig(vocab_size=vocab_size, d_model=64, n_layers=2, n_heads=4, max_seq_len=48)


def c_principles():
    """The judge's rules as constitutional principles (rule checkers)."""
    from chinwag.align.constitutional import Principle

    return [
        Principle(
            "polite", "Does the response say please?", "Rewrite it to say please.", {"require": ["please"]}
        ),
        Principle("no_banned", "Does the response use the banned word xx?", "Remove xx.", {"ban": ["xx"]}),
        Principle(
            "length",
            "Is the response between 6 and 10 words?",
            "Rewrite it to 6-10 words.",
            {"min_words": 6, "max_words": 10, "filler": NEUTRAL},
        ),
    ]


def _encode_pairs(tok, records):
    from chinwag.align.rm import PrefPair, encode_completion, encode_prompt

    return [
        PrefPair(
            encode_prompt(tok, r["prompt"]),
            encode_completion(tok, r["chosen"]),
            encode_completion(tok, r["rejected"]),
            r.get("margin"),
        )
        for r in records
    ]


def train_c_rm(
    seed: int = 0, steps: int = 400, center: float | None = 0.01, with_margin: bool = False, log=None
):
    """(RewardModel, held-out accuracy, held-out |mean reward|, accuracy before training)."""
    import torch

    from chinwag.align.rm import RewardModel, RMConfig, pairwise_accuracy, train_reward_model

    tok = c_tokenizer()
    torch.manual_seed(seed)
    rm = RewardModel(c_config(tok.vocab_size), tok=tok)
    train = _encode_pairs(tok, judge_pairs(6000, seed + 100, with_margin))
    test = _encode_pairs(tok, judge_pairs(1000, seed + 200))
    before = pairwise_accuracy(rm, test)
    train_reward_model(
        rm, train, RMConfig(steps=steps, batch_size=64, lr=1e-3, center_coef=center, seed=seed), log
    )
    acc = pairwise_accuracy(rm, test)
    p = [x.prompt for x in test]
    r = rm.score_ids(p + p, [x.chosen for x in test] + [x.rejected for x in test])
    return rm, acc, abs(sum(r) / len(r)), before


def sft_c_policy(seed: int = 0, steps: int = 300):
    """A tiny policy SFT'd to answer with random word strings: the judge's rules are not in its data."""
    import torch

    from chinwag.align.common import chat_prompt_ids
    from chinwag.align.dpo import sft_train
    from chinwag.model import ChinwagLM

    tok = c_tokenizer()
    rng = random.Random(seed + 300)
    prompts = c_prompts(4000, seed + 301)
    torch.manual_seed(seed)
    model = ChinwagLM(c_config(tok.vocab_size))
    p_ids = [chat_prompt_ids(tok, p) for p in prompts]
    c_ids = [tok.encode(random_response(rng)) + [tok.end_id] for _ in prompts]
    sft_train(model, tok, p_ids, c_ids, steps=steps, batch_size=64, lr=3e-3, seed=seed)
    model.eval()
    return model, tok


def c_sample(model, tok, prompts, seed: int = 0, temperature: float = 1.0):
    """Sampled reply texts (T=1, no top-k/p) for text prompts -> (prompt ids, completion ids, texts)."""
    from chinwag.align.common import chat_prompt_ids, decode_completion, rollout
    from chinwag.generate.sampling import SamplingParams

    pids = [chat_prompt_ids(tok, p) for p in prompts]
    params = SamplingParams(temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=20)
    comps = rollout(model, tok, pids, params, seed=seed)
    return pids, comps, [decode_completion(tok, c) for c in comps]


def kl_on_samples(policy, ref, tok, pids, comps) -> float:
    """Mean over prompts of Σ_t (log π − log π_ref) on the policy's own samples (k1, nats/completion)."""
    import torch

    from chinwag.align.common import build_pairs, token_logprobs

    ids, attn, cm = build_pairs(tok, pids, comps)
    with torch.no_grad():
        d = token_logprobs(policy, ids, attn) - token_logprobs(ref, ids, attn)
    return float((d * cm[:, 1:].float()).sum(-1).mean())


def task_c_rm(seed: int = 0, log=None) -> dict:
    t0 = time.perf_counter()
    _, acc, mean_r, before = train_c_rm(seed, log=log)
    return {
        "task": "C",
        "algo": "rm",
        "before": round(before, 4),
        "after": round(acc, 4),
        "kl": 0.0,
        "seconds": round(time.perf_counter() - t0, 1),
        "abs_mean_reward": round(mean_r, 4),
    }


def task_c_ppo(seed: int = 0, log=None, algo: str = "ppo") -> dict:
    """RL with the learned RM as the only reward (PPO: the RL half's `ppo_train`; grpo: its
    `group_train`), scored by the hidden judge it never saw."""
    import copy

    from chinwag.align.common import decode_completion, freeze

    t0 = time.perf_counter()
    rm, rm_acc, _, _ = train_c_rm(seed)
    policy, tok = sft_c_policy(seed)
    ref = freeze(copy.deepcopy(policy))
    test = c_prompts(300, seed + 999)
    _, _, texts = c_sample(policy, tok, test, seed=seed)
    before = sum(map(judge, texts)) / len(texts)
    rm_before = sum(rm.score_texts(test, texts)) / len(texts)

    # the RM (anything with score_texts) is the only reward: the judge stays hidden from training
    (_ppo if algo == "ppo" else _grpo)(policy, ref, tok, c_prompts(2000, seed + 400), rm, seed, log)
    pids, comps, texts = c_sample(policy, tok, test, seed=seed)
    after = sum(map(judge, texts)) / len(texts)
    rm_after = sum(rm.score_texts(test, texts)) / len(texts)
    return {
        "task": "C",
        "algo": algo,
        "before": round(before, 4),
        "after": round(after, 4),
        "kl": round(kl_on_samples(policy, ref, tok, pids, comps), 4),
        "seconds": round(time.perf_counter() - t0, 1),
        "rm_accuracy": round(rm_acc, 4),
        "rm_score_before": round(rm_before, 4),
        "rm_score_after": round(rm_after, 4),
        "example": decode_completion(tok, comps[0]),
    }


def _ppo(policy, ref, tok, prompts, reward_fn, seed, log):
    """The RL half's PPO with settings sized for this task (their function, our knobs)."""
    from chinwag.align.ppo import PPOConfig, ppo_train

    cfg = PPOConfig(
        steps=40,
        batch_size=64,
        mini_batch_size=32,
        ppo_epochs=2,
        lr=3e-4,
        init_kl_coef=0.2,
        max_new_tokens=20,
        seed=seed,
    )
    return ppo_train(policy, ref, tok, prompts, reward_fn, cfg, log=(lambda s, r: log(r)) if log else None)


def _grpo(policy, ref, tok, prompts, reward_fn, seed, log):
    from chinwag.align.group import GroupConfig, group_train

    cfg = GroupConfig(
        algo="grpo",
        steps=40,
        prompts_per_step=16,
        group_size=8,
        lr=3e-4,
        beta=0.02,
        max_new_tokens=20,
        seed=seed,
    )
    return group_train(policy, ref, tok, prompts, reward_fn, cfg, log=(lambda s, r: log(r)) if log else None)


def task_c_constitutional(seed: int = 0, log=None) -> dict:
    """Critique–revise the policy's own answers with the rule principles; train on the revisions (SFT +
    DPO revision ≻ original); the held-out violation rate must fall by half."""
    import copy

    import torch

    from chinwag.align.common import chat_prompt_ids
    from chinwag.align.constitutional import RuleCritic, build_examples, violation_rate
    from chinwag.align.dpo import DPOConfig, dpo_train
    from chinwag.align.rm import PrefPair

    t0 = time.perf_counter()
    policy, tok = sft_c_policy(seed)
    principles = c_principles()
    critic = RuleCritic(seed=seed)
    test = c_prompts(300, seed + 999)
    _, _, texts = c_sample(policy, tok, test, seed=seed)
    before = violation_rate(texts, principles)
    train_prompts = c_prompts(1000, seed + 500)
    _, _, originals = c_sample(policy, tok, train_prompts, seed=seed + 1)
    sft_recs, pair_recs, _ = build_examples(train_prompts, originals, principles, critic)
    pairs = [
        PrefPair(
            chat_prompt_ids(tok, r["prompt"]),
            tok.encode(r["chosen"]) + [tok.end_id],
            tok.encode(r["rejected"]) + [tok.end_id],
        )
        for r in pair_recs
    ]
    cfg = DPOConfig(loss_types=["sigmoid", "sft"], beta=0.1, lr=1e-3, steps=150, batch_size=64, seed=seed)
    ref_policy = copy.deepcopy(policy)  # for the KL report only; training uses precomputed ref log-probs
    torch.manual_seed(seed)
    dpo_train(policy, tok, pairs, cfg, log=log)
    pids, comps, texts = c_sample(policy, tok, test, seed=seed)
    after = violation_rate(texts, principles)
    return {
        "task": "C",
        "algo": "constitutional",
        "before": round(before, 4),
        "after": round(after, 4),
        "kl": round(kl_on_samples(policy, ref_policy, tok, pids, comps), 4),
        "seconds": round(time.perf_counter() - t0, 1),
        "n_sft": len(sft_recs),
        "n_pairs": len(pairs),
        "relative_cut": round(1 - after / max(before, 1e-9), 4),
    }


def run_task(task: str, algo: str | None = None, seed: int = 0, log=None) -> dict:
    """Run one verifiable task; returns {"task", "algo", "before", "after", "kl", "seconds", ...}."""
    task = task.upper()
    if task not in TASKS:
        raise ValueError(f"unknown preference task {task!r} (choose: {', '.join(TASKS)})")
    algo = algo or TASKS[task][0]
    if algo not in TASKS[task]:
        raise ValueError(f"task {task} has no algo {algo!r} (choose: {', '.join(TASKS[task])})")
    if task == "B":
        return task_b(algo, seed, log=log)
    if algo in ("ppo", "grpo"):
        return task_c_ppo(seed, log=log, algo=algo)
    return {"rm": task_c_rm, "constitutional": task_c_constitutional}[algo](seed, log=log)
