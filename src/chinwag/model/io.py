"""Save / load a ChinwagLM as `model.safetensors` + `config.json` (a run folder works as-is)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from chinwag.model.config import ModelConfig
from chinwag.model.model import ChinwagLM
from chinwag.utils import atomic_path

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


class ModelFileError(ValueError):
    """A model folder whose files are missing, corrupt, or do not match its config."""


def export_state_dict(model: ChinwagLM, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """HF-named tensors ready for safetensors: tied lm_head dropped (safetensors refuses shared storage, and
    HF re-ties from `tie_word_embeddings`), contiguous, optionally cast."""
    sd = model.state_dict()
    if model.config.tie_embeddings:
        sd.pop("lm_head.weight", None)
    out = {}
    for k, v in sd.items():
        v = v.detach()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        out[k] = v.contiguous()
    return out


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    return path


def save_model(model: ChinwagLM, folder: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
    """Write `folder/model.safetensors` and `folder/config.json` (each atomically). Returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_safetensors(export_state_dict(model, dtype), folder / WEIGHTS)
    model.config.save(folder / CONFIG)
    return folder


def load_state_file(path: str | os.PathLike, device="cpu") -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: weights file not found")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelFileError(
            f"{path}: not a readable safetensors file (truncated or corrupt?): {e}"
        ) from None


def load_model(folder: str | os.PathLike, device="cpu", dtype: torch.dtype | None = None) -> ChinwagLM:
    """Build the model from `folder/config.json` and load `folder/model.safetensors` (strict names/shapes).

    The model is built on the meta device and the loaded tensors are assigned in, so nothing is randomly
    initialised and then overwritten (matters for multi-GB models).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFileError(f"{folder}: model folder not found")
    cfg_path = folder / CONFIG
    if not cfg_path.is_file():
        raise ModelFileError(f"{cfg_path}: config file not found")
    cfg = ModelConfig.load(cfg_path)
    sd = load_state_file(folder / WEIGHTS, device)
    with torch.device("meta"):
        model = ChinwagLM(cfg)
    expected = model.state_dict()
    if cfg.tie_embeddings:
        expected.pop("lm_head.weight")
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise ModelFileError(
            f"{folder / WEIGHTS}: does not match {cfg_path}: "
            f"missing {_short(missing)}, unexpected {_short(unexpected)}"
        )
    for k, v in sd.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise ModelFileError(
                f"{folder / WEIGHTS}: tensor {k} has shape {tuple(v.shape)}, "
                f"config expects {tuple(expected[k].shape)}"
            )
        if dtype is not None and v.is_floating_point():
            sd[k] = v.to(dtype)
    if cfg.tie_embeddings:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    model.load_state_dict(sd, strict=True, assign=True)
    if cfg.tie_embeddings:  # assign=True wraps each entry in its own Parameter; re-tie to one
        model.lm_head.weight = model.model.embed_tokens.weight
    return model


def _short(names: list[str], n: int = 5) -> str:
    return (
        ", ".join(names[:n]) + (f" (+{len(names) - n} more)" if len(names) > n else "") if names else "none"
    )
