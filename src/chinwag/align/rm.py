"""Reward model: the chinwag backbone + a scalar head read at the last real token, trained Bradley–Terry.

    r(x, y)  = w · h_last + b          h_last = final hidden state at the last real token (the EOS / <|end|>)
    L        = -logsigmoid(r_c - r_r - m)  +  λ · mean((r_c + r_r)^2)

m is an optional per-pair margin (Llama-2: "chosen is *much* better" ⇒ larger m); the λ term (TRL's
`center_rewards_coefficient`, 0.01 in its docs) pulls rewards toward zero mean so a PPO score has a stable
scale. Only reward *differences* are identified by the loss; centering pins the free offset.

Preference data is JSONL, one pair per line, either
    {"prompt": "...", "chosen": "...", "rejected": "...", "margin": 0.5?}          (standard)
    {"prompt": [msgs], "chosen": [{"role": "assistant", ...}], "rejected": [...]}  (messages + prompt)
    {"chosen": [msgs..., assistant], "rejected": [msgs..., assistant]}            (messages, implicit prompt)
Every malformed line is a `PreferenceFileError` naming `file:line` and the field.

A saved reward model is a folder: the backbone as `model.safetensors` + `config.json` (loadable by
`chinwag.model.load_model`), the head as `reward_head.safetensors`, `reward_model.json` (metadata) and
`tokenizer.json`. Nothing is pickled.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from chinwag.align.common import pad_batch
from chinwag.model.config import ModelConfig
from chinwag.model.model import ChinwagLM
from chinwag.utils import read_json, write_json

HEAD = "reward_head.safetensors"
META = "reward_model.json"
FORMAT = "chinwag-reward-model"
TEMPLATES = ("chat", "raw")


class PreferenceFileError(ValueError):
    """A preference file (or record) that cannot be read; the message names file:line and field."""


# ---- the model -------------------------------------------------------------------------------------------


def hidden_states(lm: ChinwagLM, ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
    """The backbone's final normed hidden states [B, T, d] (no lm_head: a large vocab costs nothing here)."""
    return lm.hidden(ids, attention_mask)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token per row ([B]); works for right, left or no padding."""
    T = attention_mask.shape[1]
    pos = torch.arange(T, device=attention_mask.device).expand_as(attention_mask)
    return torch.where(attention_mask.bool(), pos, torch.full_like(pos, -1)).max(dim=1).values.clamp(min=0)


class RewardModel(nn.Module):
    """`lm` (a ChinwagLM; its lm_head is unused) + `score` Linear(d, 1) on the last real token."""

    def __init__(self, config: ModelConfig, lm: ChinwagLM | None = None, tok=None, template: str = "chat"):
        super().__init__()
        self.config = config
        self.lm = lm if lm is not None else ChinwagLM(config)
        self.score = nn.Linear(config.d_model, 1)
        # TRL / HF init of a sequence-classification head: N(0, 1/sqrt(d+1)), bias 0
        nn.init.normal_(self.score.weight, std=1.0 / math.sqrt(config.d_model + 1))
        nn.init.zeros_(self.score.bias)
        self.tok = tok
        self.template = template

    @classmethod
    def from_lm(cls, lm: ChinwagLM, tok=None, template: str = "chat") -> RewardModel:
        """Start from a trained LM's backbone (a deep copy, so the LM itself is untouched)."""
        import copy

        return cls(lm.config, copy.deepcopy(lm), tok, template)

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """ids [B, T] -> rewards [B] read at each row's last real token."""
        if attention_mask is None:
            attention_mask = torch.ones_like(ids, dtype=torch.bool)
        h = hidden_states(self.lm, ids, attention_mask)
        last = last_token_index(attention_mask)
        h_last = h[torch.arange(ids.shape[0], device=ids.device), last]
        return self.score(h_last).squeeze(-1).float()

    # ---- scoring --------------------------------------------------------------------------------------
    @torch.no_grad()
    def score_ids(self, prompts, completions, batch_size: int = 64) -> list[float]:
        """Rewards for token-id prompts + completions (each completion should end with its stop token)."""
        if len(prompts) != len(completions):
            raise ValueError(f"got {len(prompts)} prompts and {len(completions)} completions")
        was = self.training
        self.eval()
        pad = self.tok.pad_id if self.tok is not None else 0
        out: list[float] = []
        for i in range(0, len(prompts), batch_size):
            seqs = [
                list(p) + list(c)
                for p, c in zip(prompts[i : i + batch_size], completions[i : i + batch_size], strict=True)
            ]
            ids, mask = pad_batch(seqs, pad)
            out += self(ids.to(self.device), mask.to(self.device)).tolist()
        self.train(was)
        return out

    def score_texts(self, prompts, completions, batch_size: int = 64) -> list[float]:
        """Rewards for text prompts (or message lists) + text completions, encoded with `self.template`."""
        if self.tok is None:
            raise ValueError("this reward model has no tokenizer; use score_ids")
        p_ids = [encode_prompt(self.tok, p, self.template) for p in prompts]
        c_ids = [encode_completion(self.tok, c, self.template) for c in completions]
        return self.score_ids(p_ids, c_ids, batch_size)

    @property
    def device(self):
        return next(self.parameters()).device

    # ---- persistence ----------------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike, meta: dict | None = None) -> Path:
        from chinwag.model.io import save_model, save_safetensors

        folder = Path(folder)
        save_model(self.lm, folder)
        head = {
            "score.weight": self.score.weight.detach().contiguous(),
            "score.bias": self.score.bias.detach(),
        }
        save_safetensors(head, folder / HEAD)
        if self.tok is not None:
            self.tok.save(folder / "tokenizer.json")
        write_json(folder / META, {"format": FORMAT, "version": 1, "template": self.template, **(meta or {})})
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, device="cpu") -> RewardModel:
        from chinwag.model.io import ModelFileError, load_model, load_state_file

        folder = Path(folder)
        meta_path = folder / META
        if not meta_path.is_file():
            raise ModelFileError(f"{meta_path}: not found ({folder} is not a reward-model folder)")
        meta = read_json(meta_path)
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ModelFileError(f"{meta_path}: field 'format' must be {FORMAT!r}")
        lm = load_model(folder, device=device)
        tok = None
        if (folder / "tokenizer.json").is_file():
            from chinwag.tokenizer import Tokenizer

            tok = Tokenizer.load(folder / "tokenizer.json")
        rm = cls(lm.config, lm, tok, meta.get("template", "chat"))
        head = load_state_file(folder / HEAD, device)
        if set(head) != {"score.weight", "score.bias"} or tuple(head["score.weight"].shape) != (
            1,
            lm.config.d_model,
        ):
            raise ModelFileError(
                f"{folder / HEAD}: expected score.weight [1, {lm.config.d_model}] and score.bias"
            )
        rm.score.load_state_dict({"weight": head["score.weight"], "bias": head["score.bias"]})
        return rm.to(device)


# ---- the loss --------------------------------------------------------------------------------------------


def bradley_terry_loss(
    r_chosen: torch.Tensor,
    r_rejected: torch.Tensor,
    margin: torch.Tensor | None = None,
    center_coef: float | None = None,
) -> tuple[torch.Tensor, dict]:
    """TRL RewardTrainer's loss and metrics. Returns (loss, {accuracy, margin, mean/min/max_reward})."""
    diff = r_chosen - r_rejected
    loss = -F.logsigmoid(diff - (margin if margin is not None else 0.0)).mean()
    if center_coef:
        loss = loss + center_coef * ((r_chosen + r_rejected) ** 2).mean()
    both = torch.cat([r_chosen, r_rejected]).detach()
    metrics = {
        "accuracy": (diff > 0).float().mean().item(),  # strict, as TRL: ties count as wrong
        "margin": diff.mean().item(),
        "mean_reward": both.mean().item(),
        "min_reward": both.min().item(),
        "max_reward": both.max().item(),
    }
    return loss, metrics


# ---- preference data -------------------------------------------------------------------------------------


@dataclass
class PrefPair:
    prompt: list[int]
    chosen: list[int]  # completion ids, ending with the stop token
    rejected: list[int]
    margin: float | None = None


def encode_prompt(tok, prompt, template: str = "chat") -> list[int]:
    """A text prompt or a message list -> ids ending where the completion starts."""
    from chinwag.tokenizer.chat import render

    if template not in TEMPLATES:
        raise ValueError(f"template must be one of {', '.join(TEMPLATES)}, got {template!r}")
    if isinstance(prompt, list):  # messages: always the chat template
        return render(prompt, tok, add_generation_prompt=True).ids
    if template == "chat":
        return render([{"role": "user", "content": prompt}], tok, add_generation_prompt=True).ids
    return [tok.bos_id, *tok.encode(prompt)]


def encode_completion(tok, completion, template: str = "chat") -> list[int]:
    """Completion text -> ids + the stop token (<|end|> in chat, <|eos|> raw): the RM reads that token."""
    if isinstance(completion, dict):
        completion = completion["content"]
    return [*tok.encode(completion), tok.end_id if template == "chat" else tok.eos_id]


def _as_completion(v, field: str, where: str):
    """A completion field: a string, or a messages list whose last message is the assistant's answer."""
    if isinstance(v, str):
        return v, None
    if isinstance(v, list) and v and all(isinstance(m, dict) for m in v):
        last = v[-1]
        if last.get("role") != "assistant" or not isinstance(last.get("content"), str):
            raise PreferenceFileError(f"{where}: field {field!r}: last message must be an assistant message")
        return last["content"], v[:-1]
    raise PreferenceFileError(f"{where}: field {field!r} must be a string or a non-empty list of messages")


def parse_preference(rec, where: str = "<record>") -> tuple[object, str, str, float | None]:
    """One JSON record -> (prompt: str | messages, chosen text, rejected text, margin or None)."""
    from chinwag.tokenizer.chat import validate_messages

    if not isinstance(rec, dict):
        raise PreferenceFileError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    for f in ("chosen", "rejected"):
        if f not in rec:
            raise PreferenceFileError(f"{where}: missing field {f!r}")
    chosen, c_ctx = _as_completion(rec["chosen"], "chosen", where)
    rejected, r_ctx = _as_completion(rec["rejected"], "rejected", where)
    if "prompt" in rec:
        prompt = rec["prompt"]
        if not isinstance(prompt, (str, list)):
            raise PreferenceFileError(f"{where}: field 'prompt' must be a string or a list of messages")
        ctx = c_ctx or []
        if isinstance(prompt, list):
            prompt = prompt + ctx
        elif ctx:
            raise PreferenceFileError(f"{where}: field 'chosen': a text prompt needs a text/1-message answer")
    else:  # implicit prompt: the shared conversation before the final assistant message
        if c_ctx is None or r_ctx is None:
            raise PreferenceFileError(
                f"{where}: missing field 'prompt' (needed unless chosen/rejected are chats)"
            )
        if c_ctx != r_ctx:
            raise PreferenceFileError(f"{where}: 'chosen' and 'rejected' differ before their last message")
        prompt = c_ctx
    if isinstance(prompt, list):
        try:
            validate_messages(prompt)
        except ValueError as e:
            raise PreferenceFileError(f"{where}: field 'prompt': {e}") from None
    margin = rec.get("margin")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))):
        raise PreferenceFileError(f"{where}: field 'margin' must be a number")
    return prompt, chosen, rejected, (float(margin) if margin is not None else None)


def read_preference_records(path: str | os.PathLike) -> list[tuple]:
    """Parse a preference JSONL file (blank lines skipped) -> [(prompt, chosen, rejected, margin)]."""
    from chinwag.utils import iter_jsonl

    out = [parse_preference(rec, where) for where, rec in iter_jsonl(path, PreferenceFileError)]
    if not out:
        raise PreferenceFileError(f"{path}: no preference pairs")
    return out


def read_preferences(path: str | os.PathLike, tok, template: str = "chat") -> list[PrefPair]:
    """Read and tokenize a preference JSONL file."""
    return [
        PrefPair(
            encode_prompt(tok, p, template),
            encode_completion(tok, c, template),
            encode_completion(tok, r, template),
            m,
        )
        for p, c, r, m in read_preference_records(path)
    ]


def write_preferences(path: str | os.PathLike, records: list[dict]) -> None:
    """Atomically write preference records as JSONL."""
    from chinwag.utils import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


# ---- training --------------------------------------------------------------------------------------------


@dataclass
class RMConfig:
    steps: int = 400
    batch_size: int = 64  # pairs per step
    lr: float = 1e-3
    weight_decay: float = 0.0
    center_coef: float | None = None  # TRL center_rewards_coefficient; 0.01 is its documented choice
    use_margin: bool = True  # use per-pair margins where the data has them
    max_len: int | None = None  # pairs longer than this are dropped (as TRL), not truncated
    seed: int = 0
    log_every: int = 50


def _batch(pairs: list[PrefPair], pad_id: int):
    seqs = [p.prompt + p.chosen for p in pairs] + [p.prompt + p.rejected for p in pairs]
    ids, mask = pad_batch(seqs, pad_id)
    margin = None
    if any(p.margin is not None for p in pairs):
        margin = torch.tensor([p.margin or 0.0 for p in pairs], dtype=torch.float32)
    return ids, mask, margin


def train_reward_model(
    rm: RewardModel, pairs: list[PrefPair], cfg: RMConfig, log=None, progress: bool = False
) -> list[dict]:
    """Bradley–Terry training, random minibatches (seeded). Returns the logged metrics history."""
    import random

    if cfg.max_len is not None:
        pairs = [p for p in pairs if len(p.prompt) + max(len(p.chosen), len(p.rejected)) <= cfg.max_len]
    if not pairs:
        raise ValueError("no preference pairs to train on (all longer than max_len?)")
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    pad = rm.tok.pad_id if rm.tok is not None else 0
    opt = torch.optim.AdamW(rm.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rm.train()
    history, acc = [], []
    steps = range(cfg.steps)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="rm", unit="step")
    for step in steps:
        batch = [pairs[rng.randrange(len(pairs))] for _ in range(min(cfg.batch_size, len(pairs)))]
        ids, mask, margin = _batch(batch, pad)
        ids, mask = ids.to(rm.device), mask.to(rm.device)
        r = rm(ids, mask)
        n = len(batch)
        loss, m = bradley_terry_loss(
            r[:n],
            r[n:],
            margin.to(rm.device) if (margin is not None and cfg.use_margin) else None,
            cfg.center_coef,
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        acc.append(m)
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            rec = {"step": step + 1, "loss": loss.item()}
            rec |= {k: sum(a[k] for a in acc) / len(acc) for k in acc[0]}
            acc = []
            history.append(rec)
            if log is not None:
                log(rec)
    rm.eval()
    return history


@torch.no_grad()
def pairwise_accuracy(rm: RewardModel, pairs: list[PrefPair], batch_size: int = 128) -> float:
    """Fraction of pairs where r(chosen) > r(rejected)."""
    p = [x.prompt for x in pairs]
    rc = rm.score_ids(p, [x.chosen for x in pairs], batch_size)
    rr = rm.score_ids(p, [x.rejected for x in pairs], batch_size)
    return sum(c > r for c, r in zip(rc, rr, strict=True)) / max(1, len(pairs))
