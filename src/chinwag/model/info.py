"""Parameter, FLOP and memory accounting for a model config, computed on the meta device (no memory used,
instant even for billions of parameters)."""

from __future__ import annotations

import os
from pathlib import Path

from chinwag.model.config import ConfigError, ModelConfig

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1}


def resolve_config(spec: str | os.PathLike) -> ModelConfig:
    """A preset name, a folder holding config.json (e.g. a run), or a config.json path."""
    from chinwag.model.presets import PRESETS, get_config

    if str(spec) in PRESETS:
        return get_config(str(spec))
    p = Path(spec)
    if p.is_dir() or p.is_file():
        return ModelConfig.load(p)
    raise ConfigError(f"{spec!r} is neither a preset ({', '.join(PRESETS)}) nor a folder with config.json")


def meta_model(cfg: ModelConfig):
    import torch

    from chinwag.model.model import ChinwagLM

    with torch.device("meta"):
        return ChinwagLM(cfg)


def param_breakdown(cfg: ModelConfig) -> dict[str, int]:
    """Unique parameters by component; a tied lm_head shows as 0 (it is the embedding matrix)."""
    model = meta_model(cfg)
    parts = {"embeddings": 0, "attention": 0, "mlp": 0, "norms": 0, "lm_head": 0, "other": 0}
    seen = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        if "embed_" in name:
            key = "embeddings"
        elif "norm" in name:
            key = "norms"
        elif ".self_attn." in name:
            key = "attention"
        elif ".mlp." in name:
            key = "mlp"
        elif name.startswith("lm_head"):
            key = "lm_head"
        else:
            key = "other"  # learnable RoPE frequencies
        parts[key] += p.numel()
    parts["total"] = sum(parts.values())
    return parts


def activation_bytes_per_token_layer(cfg: ModelConfig, act_bytes: int) -> int:
    """Saved-for-backward activations of one decoder layer, per token (bytes). Approximate, counting what
    autograd keeps with a fused (flash / memory-efficient) SDPA that stores no T x T matrix:
        2 d      norm inputs (attention and MLP)
        2 d      normalised inputs to q/k/v and gate/up
        2 dq + 2 dkv   rotated q, k, v and the attention output (dq = n_heads*hd, dkv = n_kv_heads*hd)
        m F      MLP hidden: SwiGLU m=4 (gate, silu(gate), up, product), others m=2 (pre/post activation)
    total elements (4 d + 2 dq + 2 dkv + m F), times the activation dtype's bytes."""
    dq, dkv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    m = 4 if cfg.activation == "swiglu" else 2
    return (4 * cfg.d_model + 2 * dq + 2 * dkv + m * cfg.ffn_hidden) * act_bytes


def memory_estimate(cfg: ModelConfig, batch: int, seq: int, dtype: str = "bf16") -> dict[str, float]:
    """Bytes for training and inference.

    Training (mixed precision, AdamW): fp32 master weights 4N + fp32 grads 4N + AdamW m and v 8N = 16N,
    plus activations:
        no checkpointing:  B T (L * A + d b) + logits
        checkpointing:     B T (L * d b + A) + logits     (block inputs kept; one block recomputed at a time)
        logits:            B T V (b + 4)                   (compute-dtype logits + the fp32 copy for the loss)
    with A = activation_bytes_per_token_layer, b = bytes of `dtype`.
    Inference: weights N x {4, 2, 1} bytes (fp32 / bf16 / int8); KV cache 2 L n_kv hd b per token, times
    max_seq_len for one full-context sequence.
    """
    if dtype not in DTYPE_BYTES or dtype == "int8":
        raise ConfigError(f"dtype {dtype!r}: choose one of fp32, bf16, fp16")
    b = DTYPE_BYTES[dtype]
    n = param_breakdown(cfg)["total"]
    a = activation_bytes_per_token_layer(cfg, b)
    tokens = batch * seq
    logits = tokens * cfg.vocab_size * (b + 4)
    kv_tok = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * b
    out = {
        "weights_fp32": 4 * n,
        "grads_fp32": 4 * n,
        "adamw_state": 8 * n,
        "activations": tokens * (cfg.n_layers * a + cfg.d_model * b) + logits,
        "activations_ckpt": tokens * (cfg.n_layers * cfg.d_model * b + a) + logits,
        "infer_fp32": 4 * n,
        "infer_bf16": 2 * n,
        "infer_int8": n,
        "kv_per_token": kv_tok,
        "kv_full_context": kv_tok * cfg.max_seq_len,
    }
    static = out["weights_fp32"] + out["grads_fp32"] + out["adamw_state"]
    out["train_total"] = static + out["activations"]
    out["train_total_ckpt"] = static + out["activations_ckpt"]
    return out


def model_info(cfg: ModelConfig, batch: int = 8, seq: int = 1024, dtype: str = "bf16") -> dict:
    model = meta_model(cfg)
    return {
        "params": param_breakdown(cfg),
        "params_non_embedding": model.num_params(exclude_embeddings=True),
        "flops_per_token": model.estimate_flops_per_token(seq),
        "memory": memory_estimate(cfg, batch, seq, dtype),
    }


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"  # pragma: no cover


def human_count(n: float) -> str:
    for div, suf in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f} {suf}"
    return str(int(n))
