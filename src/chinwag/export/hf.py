"""Export a run (or any model folder) to a Hugging Face `LlamaForCausalLM` folder.

Our parameter names and RoPE layout already are HF Llama's, so the weights are a plain safetensors save.
What needs care is config.json: transformers 5 reads `rope_parameters`/`dtype`, transformers 4 and
llama.cpp's converter read `rope_theta`/`rope_scaling`/`torch_dtype`, so we write both.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from chinwag.model.config import ModelConfig
from chinwag.model.io import CONFIG, WEIGHTS, export_state_dict, load_model, save_safetensors
from chinwag.utils import write_json

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


class ExportError(ValueError):
    """The model cannot be represented by the target format (the message names the config field)."""


def check_hf_compatible(cfg: ModelConfig) -> None:
    """Raise ExportError naming the first config field HF `LlamaForCausalLM` cannot represent."""
    problems = []
    if cfg.activation != "swiglu":
        problems.append(f"activation={cfg.activation!r} (Llama's MLP is SwiGLU only)")
    if cfg.position != "rope":
        problems.append(f"position={cfg.position!r} (Llama has no learned position embeddings)")
    if cfg.qk_norm:
        problems.append("qk_norm=true (Llama has no q/k norms)")
    if cfg.learnable_rope_freqs:
        problems.append("learnable_rope_freqs=true (HF recomputes RoPE frequencies from rope_theta)")
    if problems:
        raise ExportError("cannot export to HF Llama: unsupported model config field " + "; ".join(problems))


def rope_fields(cfg: ModelConfig) -> tuple[dict, dict | None, int]:
    """(rope_parameters [v5], rope_scaling [v4] or None, max_position_embeddings)."""
    rs = cfg.rope_scaling
    params: dict = {"rope_theta": float(cfg.rope_theta), "rope_type": "default"}
    max_pos = cfg.max_seq_len
    if rs is None:
        return params, None, max_pos
    kind = rs["type"]
    scaling: dict = {"rope_type": kind, "type": kind, "factor": float(rs["factor"])}
    if kind == "dynamic":
        # HF's dynamic NTK treats max_position_embeddings as the trained length it scales beyond
        max_pos = rs["original_max_seq_len"]
    if kind == "yarn":
        scaling["original_max_position_embeddings"] = rs["original_max_seq_len"]
        for k in ("beta_fast", "beta_slow", "attention_factor", "truncate"):
            if k in rs:
                scaling[k] = rs[k]
    params.update({k: v for k, v in scaling.items() if k != "type"})
    return params, scaling, max_pos


def hf_config(cfg: ModelConfig, dtype: torch.dtype, tok=None) -> dict:
    check_hf_compatible(cfg)
    rope_parameters, rope_scaling, max_pos = rope_fields(cfg)
    name = _DTYPE_NAMES[dtype]
    ids = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    if tok is not None:
        # eos = end of turn: a chat model stops when it closes its turn (matches the tokenizer files)
        ids = {"bos_token_id": tok.bos_id, "eos_token_id": tok.end_id, "pad_token_id": tok.pad_id}
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ffn_hidden,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": max_pos,
        "rms_norm_eps": cfg.norm_eps,
        "rope_parameters": rope_parameters,  # transformers >= 5
        "rope_theta": float(cfg.rope_theta),  # transformers 4, llama.cpp
        "rope_scaling": rope_scaling,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": cfg.tie_embeddings,
        **ids,
        "initializer_range": cfg.init_std,
        "pretraining_tp": 1,
        "use_cache": True,
        "dtype": name,  # transformers >= 5
        "torch_dtype": name,  # transformers 4
    }


def export_hf(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    dtype: str | None = None,
    tokenizer: bool = True,
    overwrite: bool = False,
) -> list[Path]:
    """Write `out_dir/` = config.json, generation_config.json, model.safetensors (+ tokenizer files).

    `dtype`: float32 | bfloat16 | float16 (default: the stored weights' dtype). `tokenizer=False` skips
    the tokenizer (and the bos/eos/pad ids). Returns the written paths.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if dtype is not None and dtype not in DTYPES:
        raise ExportError(f"dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    cfg = ModelConfig.load(run_dir / CONFIG)
    check_hf_compatible(cfg)  # before loading GBs of weights
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ExportError(f"{out_dir}: folder exists and is not empty (use --overwrite)")
    tok = None
    if tokenizer:
        tok_path = run_dir / "tokenizer.json"
        if not tok_path.is_file():
            raise ExportError(f"{tok_path}: not found (export with --no-tokenizer to skip the tokenizer)")
        from chinwag.tokenizer import Tokenizer

        tok = Tokenizer.load(tok_path)
        if tok.vocab_size > cfg.vocab_size:
            raise ExportError(
                f"{tok_path}: tokenizer has {tok.vocab_size} ids; the model's vocab_size is {cfg.vocab_size}"
            )
    model = load_model(run_dir)
    torch_dtype = DTYPES[dtype] if dtype else next(model.parameters()).dtype
    if torch_dtype not in _DTYPE_NAMES:
        raise ExportError(f"weights dtype {torch_dtype} has no HF name; pass --dtype")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [save_safetensors(export_state_dict(model, torch_dtype), out_dir / WEIGHTS)]
    config = hf_config(cfg, torch_dtype, tok)
    write_json(out_dir / "config.json", config)
    gen = {"_from_model_config": True}
    if tok is not None:
        gen.update(bos_token_id=tok.bos_id, eos_token_id=[tok.end_id, tok.eos_id], pad_token_id=tok.pad_id)
    write_json(out_dir / "generation_config.json", gen)
    written += [out_dir / "config.json", out_dir / "generation_config.json"]
    if tok is not None:
        from chinwag.tokenizer.hf import save_hf_tokenizer_files

        written += save_hf_tokenizer_files(tok, out_dir, model_max_length=config["max_position_embeddings"])
    return written
