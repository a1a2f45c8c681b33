"""Direct preference optimisation (DPO) and its family, on per-sequence *summed* completion log-probs.

With ρ = log π(y|x) − log π_ref(y|x) for the chosen (c) and rejected (r) completion and z = ρc − ρr:

    sigmoid (DPO)   L = −logsigmoid(β z)                                  β default 0.1
    cDPO            L = −(1−ε) logsigmoid(β z) − ε logsigmoid(−β z)       (sigmoid with label_smoothing ε)
    robust          L = (−(1−ε) logsigmoid(β z) + ε logsigmoid(−β z)) / (1 − 2ε)     0 ≤ ε < 0.5
    hinge (SLiC)    L = relu(1 − β z)
    ipo             L = (ρc/|y_c| − ρr/|y_r| − 1/(2β))²                   per-token averaged, as TRL
    sft             L = −Σ log π(y_c) / Σ |y_c|                            NLL on the chosen tokens

A trainer loss is Σ_k w_k · L_k over `loss_types` (TRL's `loss_type=[...]`, `loss_weights`). The implicit
reward of a completion is β ρ; the metrics carry TRL's names (rewards/chosen, rewards/rejected,
rewards/accuracies, rewards/margins, logps/chosen, logps/rejected).

Why the SFT term: DPO only sees the *difference* z, so it can win by pushing both log-probs down, and the
mass it removes from the chosen answer leaks to strings nobody preferred (on our arithmetic task pure DPO
reaches 0.99 preference accuracy while sampled accuracy collapses from 0.33 to 0.04). The NLL on chosen
pins log π(y_c) up, so the margin has to come from the rejected side (the RPO / "DPO+NLL" recipe).

The reference log-probs are computed once before training (`precompute_ref_logps`, TRL's
`precompute_ref_log_probs=True`), from the policy itself when no reference is given: no second model is
kept in memory.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from chinwag.align.common import build_pairs, token_logprobs

LOSS_TYPES = ("sigmoid", "robust", "hinge", "ipo", "sft")


def preference_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict]:
    """One DPO-family loss (mean over the batch) and TRL-named metrics (floats).

    All log-probs are per-sequence sums over completion tokens [B]. `label_smoothing` ε is cDPO for
    "sigmoid" and the robust-DPO noise rate for "robust"; lengths (completion tokens, [B]) are needed by
    "ipo" (and "sft"), which average per token.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r} (choose: {', '.join(LOSS_TYPES)})")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    rho_c = policy_chosen_logps - ref_chosen_logps
    rho_r = policy_rejected_logps - ref_rejected_logps
    z = rho_c - rho_r
    eps = label_smoothing
    if loss_type == "sigmoid":
        losses = -(1 - eps) * F.logsigmoid(beta * z) - eps * F.logsigmoid(-beta * z)
    elif loss_type == "robust":
        losses = (-(1 - eps) * F.logsigmoid(beta * z) + eps * F.logsigmoid(-beta * z)) / (1 - 2 * eps)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * z)
    elif loss_type == "ipo":
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError("loss_type 'ipo' averages per token: pass chosen_lengths and rejected_lengths")
        lc, lr = _lengths(chosen_lengths, rho_c), _lengths(rejected_lengths, rho_r)
        losses = (rho_c / lc - rho_r / lr - 1 / (2 * beta)) ** 2
    else:  # sft: token-mean NLL of the chosen completions
        if chosen_lengths is None:
            raise ValueError("loss_type 'sft' averages per token: pass chosen_lengths")
        n = _lengths(chosen_lengths, policy_chosen_logps).sum()
        losses = -policy_chosen_logps.sum() / n * torch.ones_like(policy_chosen_logps)
    return losses.mean(), dpo_metrics(policy_chosen_logps, policy_rejected_logps, rho_c, rho_r, beta)


def _lengths(lengths, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(lengths, dtype=like.dtype, device=like.device).clamp(min=1)


@torch.no_grad()
def dpo_metrics(pc, pr, rho_c, rho_r, beta: float) -> dict:
    rc, rr = beta * rho_c.detach(), beta * rho_r.detach()
    return {
        "rewards/chosen": rc.mean().item(),
        "rewards/rejected": rr.mean().item(),
        "rewards/accuracies": (rc > rr).float().mean().item(),
        "rewards/margins": (rc - rr).mean().item(),
        "logps/chosen": pc.detach().mean().item(),
        "logps/rejected": pr.detach().mean().item(),
    }


def combined_loss(
    pc, pr, rc, rr, cfg: DPOConfig, chosen_lengths, rejected_lengths
) -> tuple[torch.Tensor, dict]:
    """Σ_k w_k L_k over cfg.loss_types; metrics from the last preference term plus loss/<type> each."""
    total, metrics = 0.0, {}
    for kind, w in zip(cfg.loss_types, cfg.weights(), strict=True):
        loss, m = preference_loss(
            pc, pr, rc, rr, cfg.beta, kind, cfg.label_smoothing, chosen_lengths, rejected_lengths
        )
        total = total + w * loss
        metrics |= m
        metrics[f"loss/{kind}"] = loss.item()
    return total, metrics


# ---- config and data -------------------------------------------------------------------------------------


@dataclass
class DPOConfig:
    beta: float = 0.1
    loss_types: list[str] = field(default_factory=lambda: ["sigmoid"])
    loss_weights: list[float] | None = None  # None = 1.0 each
    label_smoothing: float = 0.0
    lr: float = 1e-6  # TRL's default; tiny models want ~1e-4
    weight_decay: float = 0.0
    steps: int = 100
    batch_size: int = 32  # pairs per step
    max_grad_norm: float = 1.0
    warmup_steps: int = 0
    ref_batch_size: int = 64
    seed: int = 0
    log_every: int = 10

    def weights(self) -> list[float]:
        return list(self.loss_weights) if self.loss_weights is not None else [1.0] * len(self.loss_types)

    def validate(self) -> None:
        if not self.loss_types:
            raise ValueError("loss_types must name at least one loss")
        for k in self.loss_types:
            if k not in LOSS_TYPES:
                raise ValueError(f"unknown loss type {k!r} (choose: {', '.join(LOSS_TYPES)})")
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_types):
            raise ValueError(f"{len(self.loss_weights)} loss_weights for {len(self.loss_types)} loss_types")
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")


def _pair_logps(model, tok, pairs) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) summed completion log-probs [B] each, from one forward over both halves."""
    prompts = [p.prompt for p in pairs] * 2
    comps = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    ids, attn, cm = build_pairs(tok, prompts, comps)
    dev = next(model.parameters()).device
    ids, attn, cm = ids.to(dev), attn.to(dev), cm.to(dev)
    lp = token_logprobs(model, ids, attn)
    seq = (lp * cm[:, 1:].to(lp.dtype)).sum(-1)
    n = len(pairs)
    return seq[:n], seq[n:]


@torch.no_grad()
def precompute_ref_logps(model, tok, pairs, batch_size: int = 64) -> torch.Tensor:
    """Reference log-probs [N, 2] (chosen, rejected), computed once: the reference never needs to be kept."""
    was = model.training
    model.eval()
    out = []
    for i in range(0, len(pairs), batch_size):
        c, r = _pair_logps(model, tok, pairs[i : i + batch_size])
        out.append(torch.stack([c, r], dim=1).cpu())
    model.train(was)
    return torch.cat(out)


@torch.no_grad()
def preference_accuracy(model, tok, pairs, batch_size: int = 128) -> float:
    """Fraction of pairs with log π(chosen) > log π(rejected) (the model's own preference, no reference)."""
    lp = precompute_ref_logps(model, tok, pairs, batch_size)
    return (lp[:, 0] > lp[:, 1]).float().mean().item()


# ---- training --------------------------------------------------------------------------------------------


def dpo_train(
    policy,
    tok,
    pairs,
    cfg: DPOConfig,
    ref_logps: torch.Tensor | None = None,
    ref_model=None,
    log=None,
    progress: bool = False,
) -> list[dict]:
    """Train `policy` in place on `pairs` (PrefPair-like: .prompt/.chosen/.rejected id lists).

    Reference log-probs: `ref_logps` [N, 2] if given, else computed once from `ref_model`, else from the
    policy before its first update. Dropout stays off (TRL's disable_dropout) so π and π_ref match at
    step 0. Returns the history of logged metric dicts (means over each logging window)."""
    cfg.validate()
    if not pairs:
        raise ValueError("no preference pairs to train on")
    if ref_logps is None:
        ref_logps = precompute_ref_logps(
            ref_model if ref_model is not None else policy, tok, pairs, cfg.ref_batch_size
        )
    if tuple(ref_logps.shape) != (len(pairs), 2):
        raise ValueError(f"ref_logps has shape {tuple(ref_logps.shape)}, expected ({len(pairs)}, 2)")
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999))
    dev = next(policy.parameters()).device
    policy.eval()  # dropout off; gradients still flow
    history, window = [], []
    t0 = time.perf_counter()
    steps = range(cfg.steps)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="dpo", unit="step")
    for step in steps:
        for g in opt.param_groups:
            g["lr"] = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps)) if cfg.warmup_steps else cfg.lr
        idx = [rng.randrange(len(pairs)) for _ in range(min(cfg.batch_size, len(pairs)))]
        batch = [pairs[i] for i in idx]
        pc, pr = _pair_logps(policy, tok, batch)
        ref = ref_logps[idx].to(dev)
        lc = torch.tensor([len(p.chosen) for p in batch], device=dev)
        lr_ = torch.tensor([len(p.rejected) for p in batch], device=dev)
        loss, m = combined_loss(pc, pr, ref[:, 0], ref[:, 1], cfg, lc, lr_)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm) if cfg.max_grad_norm else None
        opt.step()
        m["loss"] = loss.item()
        if gn is not None:
            m["grad_norm"] = float(gn)
        window.append(m)
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            rec = {"step": step + 1, **{k: sum(w[k] for w in window) / len(window) for k in window[0]}}
            rec["seconds"] = round(time.perf_counter() - t0, 3)
            history.append(rec)
            window = []
            if log is not None:
                log(rec)
    return history


def sft_train(
    model, tok, prompts, completions, steps: int, batch_size: int = 64, lr: float = 1e-3, seed: int = 0
):
    """Plain NLL on completion tokens (prompt ids + completion ids, completion ending with its stop
    token): used for constitutional revisions as SFT targets and the task-C policy. Returns losses."""
    rng = random.Random(seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    dev = next(model.parameters()).device
    model.eval()
    losses = []
    for _ in range(steps):
        idx = [rng.randrange(len(prompts)) for _ in range(min(batch_size, len(prompts)))]
        ids, attn, cm = build_pairs(tok, [prompts[i] for i in idx], [completions[i] for i in idx])
        ids, attn, cm = ids.to(dev), attn.to(dev), cm.to(dev)
        lp = token_logprobs(model, ids, attn)
        m = cm[:, 1:].to(lp.dtype)
        loss = -(lp * m).sum() / m.sum().clamp(min=1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def save_dpo_run(
    policy, tok, out: str | os.PathLike, cfg: DPOConfig, history: list[dict], extra: dict | None = None
):
    """A run folder like `chinwag train`'s: model.safetensors + config.json + tokenizer.json +
    train_config.json (the DPO config) + metrics.jsonl."""
    from chinwag.model.io import save_model
    from chinwag.utils import atomic_write_text, write_json

    out = Path(out)
    save_model(policy, out)
    tok.save(out / "tokenizer.json")
    write_json(out / "train_config.json", {"stage": "dpo", **asdict(cfg), **(extra or {})})
    atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
    return out
