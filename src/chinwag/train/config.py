"""`TrainConfig`: every knob of a training run, saved as `train_config.json` in the run folder.

One dataclass serves pretraining and SFT; the two differ only in their data (packed documents vs one
conversation per row with a loss mask) and a few defaults (SFT uses a lower learning rate).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODES = ("pretrain", "sft")
DTYPES = ("fp32", "bf16", "fp16")


@dataclass
class TrainConfig:
    # what to train on
    mode: str = "pretrain"  # pretrain | sft
    data: str = ""  # a folder written by `chinwag data prepare`, or raw text/jsonl we prepare into the run
    val_data: str | None = None  # optional separate validation set (prepared folder, or raw with raw `data`)
    tokenizer: str | None = None  # tokenizer spec (path or "cl100k_base"); needed only to prepare raw data
    val_fraction: float = 0.01  # used when we prepare raw data ourselves
    # the model
    preset: str = "tiny"
    model_overrides: dict[str, Any] = field(default_factory=dict)  # passed to get_config(preset, **...)
    seq_len: int | None = None  # training window; None = the model's max_seq_len
    init_from: str | None = None  # a run (or model folder) to start from, e.g. SFT on top of pretraining
    # where and how
    out: str = "runs/default"
    seed: int = 1337
    resume: bool = False  # continue from the newest valid checkpoint in `out`
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "fp32"  # fp32 | bf16 | fp16 (fp16 only on CUDA, with a GradScaler)
    compile: bool = False  # torch.compile the model
    threads: int | None = None  # torch CPU threads (None = torch default)
    # how long (the first limit reached stops the run; at least one must be set)
    max_steps: int | None = None
    max_tokens: int | None = None
    max_minutes: float | None = None  # wall-clock budget of this invocation; stops cleanly and saves
    epochs: float | None = None  # convenience: max_steps = epochs over the training rows
    stop_at_step: int | None = None  # pause here (save + exit) but keep the schedule of the full run
    # the optimisation
    batch_size: int = 8  # micro-batch rows per device
    tokens_per_step: int | None = (
        None  # grad accumulation = ceil(tokens_per_step / (batch * seq_len * world))
    )
    lr: float | None = None  # peak learning rate; None = 6e-4 for pretrain, 1e-4 for SFT
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0  # 0 disables clipping (the norm is still logged)
    # evaluation, checkpoints, logging
    eval_every: int = 250
    eval_batches: int = 20
    early_stopping_patience: int | None = None  # evals without val-loss improvement before stopping
    save_every: int = 500
    keep_last: int = 3
    log_every: int = 10
    tensorboard: bool = False
    progress: bool = True  # show a progress bar

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        if self.lr is None:
            self.lr = 1e-4 if self.mode == "sft" else 6e-4

    def validate(self) -> None:
        """Raise ValueError naming the field for anything that cannot work."""

        def bad(name: str, why: str) -> None:
            raise ValueError(f"train config: {name}: {why}")

        if self.mode not in MODES:
            bad("mode", f"must be one of {MODES}, got {self.mode!r}")
        if self.dtype not in DTYPES:
            bad("dtype", f"must be one of {DTYPES}, got {self.dtype!r}")
        if not self.data and not self.resume:
            bad("data", "no training data given")
        if all(v is None for v in (self.max_steps, self.max_tokens, self.max_minutes, self.epochs)):
            bad("max_steps", "set at least one of max_steps, max_tokens, max_minutes or epochs")
        for name in ("max_steps", "max_tokens", "batch_size", "eval_every", "save_every", "log_every"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                bad(name, f"must be positive, got {v}")
        for name in ("max_minutes", "epochs", "lr", "tokens_per_step", "seq_len", "threads"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                bad(name, f"must be positive, got {v}")
        if self.keep_last < 1:
            bad("keep_last", f"must be at least 1, got {self.keep_last}")
        if not 0 <= self.min_lr_ratio <= 1:
            bad("min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.grad_clip < 0 or self.eval_batches < 0:
            bad("warmup_steps/weight_decay/grad_clip/eval_batches", "must not be negative")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            bad("betas", f"must be two numbers in [0, 1), got {self.betas}")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            bad("early_stopping_patience", "must be at least 1")

    def grad_accum(self, seq_len: int, world_size: int = 1) -> int:
        """Micro-steps per optimizer step so one step sees about `tokens_per_step` tokens."""
        if not self.tokens_per_step:
            return 1
        return max(1, math.ceil(self.tokens_per_step / (self.batch_size * seq_len * world_size)))

    # ---- (de)serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"train config: unknown field(s) {unknown}")
        return cls(**d)

    def save(self, path: str | Path) -> None:
        from chinwag.utils import write_json

        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        from chinwag.utils import read_json

        return cls.from_dict(read_json(path))
