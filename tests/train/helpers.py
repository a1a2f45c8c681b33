"""Small helpers shared by the training tests."""

from __future__ import annotations

import json
from pathlib import Path

from chinwag.train.config import TrainConfig

# 2 layers of the tiny preset: a few ms per step on one thread
SMALL_MODEL = {"n_layers": 2}


def make_cfg(out, data, **kw) -> TrainConfig:
    base = dict(
        data=str(data),
        out=str(out),
        preset="tiny",
        model_overrides=dict(SMALL_MODEL),
        seq_len=32,
        batch_size=4,
        max_steps=6,
        warmup_steps=2,
        lr=3e-3,
        eval_every=3,
        eval_batches=2,
        save_every=3,
        log_every=1,
        progress=False,
        seed=0,
    )
    base.update(kw)
    return TrainConfig(**base)


def metrics(run) -> tuple[list[dict], list[dict]]:
    lines = [json.loads(x) for x in (Path(run) / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [x for x in lines if "loss" in x], [x for x in lines if "val_loss" in x]


def weights(path):
    from safetensors.torch import load_file

    path = Path(path)
    return load_file(str(path / "model.safetensors" if path.is_dir() else path))
