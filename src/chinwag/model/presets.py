"""Named model shapes. vocab_size here is a default; the trainer overrides it from the tokenizer.

Parameter counts (tied embeddings count once) are checked in tests/model/test_presets.py.
"""

from __future__ import annotations

from chinwag.model.config import ConfigError, ModelConfig

# name -> (one-line description, ModelConfig kwargs)
_SPECS: dict[str, tuple[str, dict]] = {
    "tiny": (
        "~1.0 M params: unit tests and smoke runs",
        dict(
            vocab_size=2048, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, ffn_hidden=384, max_seq_len=256
        ),
    ),
    "small": (
        "~12.6 M params: the 2-core CPU demo (quickstart)",
        dict(
            vocab_size=8192,
            d_model=384,
            n_layers=6,
            n_heads=6,
            n_kv_heads=2,
            ffn_hidden=1024,
            max_seq_len=512,
        ),
    ),
    "hrom": (
        "~35.7 M params: HROM-style chatbot (6 layers, 8 heads, SwiGLU, RoPE, 1024 context)",
        dict(vocab_size=32000, d_model=512, n_layers=6, n_heads=8, max_seq_len=1024),
    ),
    "neuraflux": (
        "~14.7 M params: NeuraFlux-style GPT (GELU MLP, learned absolute positions)",
        dict(
            vocab_size=10000,
            d_model=384,
            n_layers=6,
            n_heads=6,
            activation="gelu",
            position="learned",
            max_seq_len=512,
        ),
    ),
    "aeron-small": (
        "~114 M params",
        dict(
            vocab_size=50000,
            d_model=768,
            n_layers=12,
            n_heads=12,
            n_kv_heads=4,
            ffn_hidden=2048,
            max_seq_len=2048,
        ),
    ),
    "aeron-medium": (
        "~416 M params",
        dict(
            vocab_size=50000,
            d_model=1024,
            n_layers=24,
            n_heads=16,
            n_kv_heads=4,
            ffn_hidden=4096,
            max_seq_len=4096,
        ),
    ),
    "aeron-large": (
        "~1.50 B params",
        dict(
            vocab_size=50000,
            d_model=2048,
            n_layers=23,
            n_heads=32,
            n_kv_heads=8,
            ffn_hidden=8192,
            max_seq_len=8192,
            rope_theta=500000.0,
        ),
    ),
    "aeron": (
        "~3.87 B params: d 2048, 32 query / 8 KV heads, 62 layers, 32k context, RoPE theta 500k",
        dict(
            vocab_size=50000,
            d_model=2048,
            n_layers=62,
            n_heads=32,
            n_kv_heads=8,
            ffn_hidden=8192,
            max_seq_len=32768,
            rope_theta=500000.0,
        ),
    ),
}

PRESETS: dict[str, ModelConfig] = {name: ModelConfig(**kw) for name, (_, kw) in _SPECS.items()}
DESCRIPTIONS: dict[str, str] = {name: desc for name, (desc, _) in _SPECS.items()}


def get_config(name: str, **overrides) -> ModelConfig:
    """A fresh copy of preset `name` with `overrides` applied (e.g. vocab_size from the tokenizer)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of: {', '.join(PRESETS)}")
    kwargs = dict(_SPECS[name][1])
    unknown = sorted(set(overrides) - set(PRESETS[name].to_dict()))
    if unknown:
        raise ConfigError(f"unknown model config key(s): {', '.join(unknown)}")
    kwargs.update(overrides)  # from the spec, not the built config, so derived defaults (ffn_hidden) follow
    kwargs.setdefault("extra", {})
    kwargs["extra"] = {"preset": name, **kwargs["extra"]}
    return ModelConfig(**kwargs)
