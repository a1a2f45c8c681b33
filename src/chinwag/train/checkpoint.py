"""Checkpoints: `runs/NAME/checkpoints/step_XXXXXXX/` (+ `best/`), written atomically and verifiable.

A checkpoint folder holds
- `model.safetensors` + `config.json`: the weights (via `chinwag.model.io.save_model`),
- `optimizer.safetensors` + `optimizer.json`: AdamW state flattened to tensors, the rest as JSON,
- `trainer_state.json`: step, tokens, data position, best val loss, RNG states, ...,
- `DONE`: a manifest (size + sha256 of every file above), written last.

Every checkpoint is built in a temp folder and renamed into place, so a crash never leaves a half-written
`step_*` folder; the manifest also catches later damage (truncation, bit rot) before we resume from it.
Nothing is pickled.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from chinwag.utils import atomic_path, read_json, write_json

MARKER = "DONE"
PREFIX = "step_"


def step_name(step: int) -> str:
    return f"{PREFIX}{step:07d}"


# ---- optimizer state <-> safetensors + JSON --------------------------------------------------------------
def optimizer_to_tensors(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split `optimizer.state_dict()` into flat tensors (`state.{param}.{key}`) and a JSON-able rest."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in sd["state"].items():
        for key, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"state.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_from_tensors(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for pid, extra in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(extra)
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else dict(g) for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


# ---- RNG states as JSON ------------------------------------------------------------------------------------
def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def rng_state() -> dict:
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(mt), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": _b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_unb64(state["torch"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])


# ---- manifest ----------------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(folder: Path) -> None:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != MARKER)
    manifest = {"files": {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)} for p in files}}
    write_json(folder / MARKER, manifest)


def checkpoint_problem(folder: Path) -> str | None:
    """Why `folder` is not a usable checkpoint, or None if every file matches its manifest."""
    marker = folder / MARKER
    if not marker.is_file():
        return f"missing {MARKER} marker (partial write?)"
    try:
        files = json.loads(marker.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return f"unreadable {MARKER} manifest"
    for required in ("model.safetensors", "optimizer.safetensors", "trainer_state.json"):
        if required not in files:
            return f"manifest lists no {required}"
    for name, info in files.items():
        p = folder / name
        if not p.is_file():
            return f"{name} is missing"
        if p.stat().st_size != info["size"]:
            return f"{name} has {p.stat().st_size} bytes, expected {info['size']} (truncated?)"
        if _sha256(p) != info["sha256"]:
            return f"{name} does not match its sha256 (corrupt)"
    return None


# ---- save / load -------------------------------------------------------------------------------------------
def save_checkpoint(
    folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> Path:
    """Write a complete checkpoint to `folder` atomically (temp folder, then rename) and return it."""
    from chinwag.model.io import save_model

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".tmp-{folder.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_model(model, tmp)
        tensors, meta = optimizer_to_tensors(optimizer.state_dict())
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        write_json(tmp / "optimizer.json", meta)
        write_json(tmp / "trainer_state.json", state)
        write_manifest(tmp)
        # A folder cannot be renamed over a non-empty one: move the old one aside first, then drop it.
        old = folder.parent / f".old-{folder.name}-{os.getpid()}"
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def load_checkpoint(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> dict:
    """Load weights (and optimizer state) from `folder` into the given objects; return trainer_state."""
    folder = Path(folder)
    weights = load_file(str(folder / "model.safetensors"))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # Tied weights (lm_head = embed_tokens) may be stored once; anything else missing is an error.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise ValueError(f"{folder}/model.safetensors: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if optimizer is not None:
        sd = optimizer_from_tensors(
            load_file(str(folder / "optimizer.safetensors")), read_json(folder / "optimizer.json")
        )
        optimizer.load_state_dict(sd)
    return read_json(folder / "trainer_state.json")


def list_checkpoints(run_dir: Path) -> list[Path]:
    """`step_*` folders of a run, oldest first."""
    ckdir = Path(run_dir) / "checkpoints"
    if not ckdir.is_dir():
        return []
    found = [p for p in ckdir.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def latest_valid_checkpoint(run_dir: Path) -> Path:
    """The newest checkpoint whose manifest checks out; warn about (and skip) broken newer ones."""
    candidates = list_checkpoints(run_dir)
    for folder in reversed(candidates):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        warnings.warn(f"skipping checkpoint {folder}: {problem}; trying the previous one", stacklevel=2)
    if not candidates:
        raise FileNotFoundError(f"{run_dir}: no checkpoints to resume from (run without --resume to start)")
    raise FileNotFoundError(f"{run_dir}: none of the {len(candidates)} checkpoints is valid; cannot resume")


def rotate_checkpoints(run_dir: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` step_* folders (best/ is separate and kept). Returns deleted."""
    old = list_checkpoints(run_dir)[:-keep_last]
    for folder in old:
        shutil.rmtree(folder, ignore_errors=True)
    return old


def publish_weights(ckpt: Path, run_dir: Path) -> None:
    """Copy a checkpoint's weights + model config to the run root, where inference loads them."""
    for name in ("model.safetensors", "config.json"):
        with atomic_path(Path(run_dir) / name) as tmp:
            shutil.copyfile(Path(ckpt) / name, tmp)
